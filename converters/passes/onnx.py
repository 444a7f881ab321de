"""ONNX export through tf2onnx, and onnxruntime graph optimisation.

`OnnxExportPass` converts the canonical serving function (tf2onnx ``from_function``), renames graph
inputs/outputs to the canonical names, marks the batch dimension dynamic (``batch``) and checks the
model with ``onnx.checker``. tf2onnx 1.17 refuses opset ≥ 19, so the default is 18; ``lift_to_opset``
runs ``onnx.version_converter`` afterwards (e.g. 18 → 21).
`OrtOptimizePass` saves the model onnxruntime produces after its graph optimisations.

Examples:
    >>> onnx_fp32 = OnnxExportPass().run("m/fused.keras", OnnxExportConfig(opset=18), "out")  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgerec.runtime.manifest import TensorSpec

from ..errors import ConversionError, ConverterConfigError, expected
from ..keras_io import flat_serving_function, load_keras_model, walk_layers
from ..pipeline import ExportedArtifact, Pass
from .onnx_standins import convert_with_stand_ins

MAX_TF2ONNX_OPSET = 18
MIN_OPSET = 13
BATCH_DIM = "batch"
ORT_LEVELS = ("basic", "extended", "all")


@dataclass(frozen=True)
class OnnxExportConfig:
    """Args:
        opset: tf2onnx target opset, 13..18 (tf2onnx 1.17 refuses 19+).
        lift_to_opset: optional higher opset reached with ``onnx.version_converter`` afterwards.
        custom_objects_module: module registering custom layers, imported before loading.
        output_names: override the canonical output names of a single/list-output model.
        stand_in_min_bytes: lookup tables of at least this many bytes read only by axis-0 Gathers
            are converted as tiny placeholders and their rows written into the ONNX file afterwards
            (`onnx_standins`: tf2onnx's copies of a 10^6-row table cost GBs); ``None`` converts
            every constant through tf2onnx.
    """

    opset: int = MAX_TF2ONNX_OPSET
    lift_to_opset: int | None = None
    custom_objects_module: str | None = None
    output_names: tuple[str, ...] | None = None
    stand_in_min_bytes: int | None = 1 << 20

    def __post_init__(self):
        if not isinstance(self.opset, int) or not MIN_OPSET <= self.opset <= MAX_TF2ONNX_OPSET:
            raise ConverterConfigError(expected(
                f"an opset between {MIN_OPSET} and {MAX_TF2ONNX_OPSET} (tf2onnx 1.17 refuses 19+; "
                "use lift_to_opset for a higher one)", self.opset))
        if self.lift_to_opset is not None and (not isinstance(self.lift_to_opset, int)
                                               or self.lift_to_opset <= self.opset):
            raise ConverterConfigError(expected(f"lift_to_opset > opset {self.opset}", self.lift_to_opset))
        if self.stand_in_min_bytes is not None and (not isinstance(self.stand_in_min_bytes, int)
                                                    or self.stand_in_min_bytes < 1):
            raise ConverterConfigError(expected("stand_in_min_bytes ≥ 1 or None", self.stand_in_min_bytes))


class OnnxExportPass(Pass):
    name = "onnx_export"
    version = 3
    Config = OnnxExportConfig
    accepts = ("keras", "savedmodel")

    def _run_impl(self, source: ExportedArtifact, config: OnnxExportConfig, out_dir: Path) -> ExportedArtifact:
        import onnx
        import tf2onnx

        model = with_onnx_twins(load_keras_model(source.path, config.custom_objects_module))
        flat, specs = flat_serving_function(model, source.part,
                                            list(config.output_names) if config.output_names else None)
        out_names = sorted(flat.get_concrete_function().structured_outputs)
        try:
            proto, stand_ins = None, []
            if config.stand_in_min_bytes is not None:
                proto, stand_ins = convert_with_stand_ins(flat, specs, config.opset, config.stand_in_min_bytes)
            if proto is None:
                proto, _ = tf2onnx.convert.from_function(flat, input_signature=specs, opset=config.opset)
        except Exception as err:  # noqa: BLE001 - tf2onnx raises many types
            raise ConversionError(expected(f"a tf2onnx conversion at opset {config.opset}",
                                           f"{type(err).__name__}: {str(err)[:400]}"), mode="onnx") from None
        canonicalize_io(proto, [s.name for s in specs], out_names)
        opset = config.opset
        if config.lift_to_opset:
            from onnx import version_converter

            try:
                proto = version_converter.convert_version(proto, config.lift_to_opset)
            except Exception as err:  # noqa: BLE001
                raise ConversionError(expected(f"onnx.version_converter to lift opset {opset} → "
                                               f"{config.lift_to_opset}", str(err)[:400]), mode="onnx") from None
            opset = config.lift_to_opset
        onnx.checker.check_model(proto)
        out = out_dir / f"{source.part}.fp32.onnx"
        out.write_bytes(proto.SerializeToString())
        inputs, outputs = graph_specs(proto)
        return ExportedArtifact(path=str(out), format="onnx", precision="fp32", part=source.part,
                                inputs=inputs, outputs=outputs,
                                details={**self.carried_details(source), "opset": opset,
                                         "tf2onnx_opset": config.opset, "nodes": len(proto.graph.node),
                                         "table_stand_ins": [list(t.real.shape) for t in stand_ins],
                                         "size_bytes": out.stat().st_size})


def with_onnx_twins(model):
    """``model`` with every layer that offers ``onnx_twin()`` replaced by that twin (same function,
    same weight layout, an ONNX-friendlier graph; e.g. `ProjectedGRU` → one ONNX ``GRU`` node).

    Returns the model itself when no layer has a twin. Outputs are unchanged: each twin takes its
    layer's weights, and the validator compares the exported graph with the original model.
    """
    from edgerec.converters.tfenv import import_tf

    if not any(hasattr(layer, "onnx_twin") for layer in walk_layers(model)):
        return model

    _, tf_keras = import_tf()

    def clone(layer):
        if hasattr(layer, "onnx_twin"):
            return layer.onnx_twin()
        return layer.__class__.from_config(layer.get_config())

    twin = tf_keras.models.clone_model(model, clone_function=clone)
    originals = {layer.name: layer for layer in walk_layers(model)}
    for layer in walk_layers(twin):
        if layer.weights and layer.name in originals:
            layer.set_weights(originals[layer.name].get_weights())
    return twin


def canonicalize_io(proto, input_names: list[str], output_names: list[str]) -> None:
    """Rename graph inputs (``hist_items:0`` → ``hist_items``) and outputs (in order) in place;
    make the first dimension of every input/output the symbolic ``batch``."""
    graph = proto.graph
    renames = {}
    for value in graph.input:
        base = value.name.split(":")[0]
        if base in input_names and base != value.name:
            renames[value.name] = base
    if len(graph.output) != len(output_names):
        raise ConversionError(expected(f"{len(output_names)} graph outputs", len(graph.output)))
    for value, name in zip(graph.output, output_names):
        if value.name != name:
            renames[value.name] = name
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in list(graph.input) + list(graph.output):
        value.name = renames.get(value.name, value.name)
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = BATCH_DIM


def graph_specs(proto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    from onnx import helper

    def spec(value):
        tensor = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        shape = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        return TensorSpec(value.name, dtype, shape)

    initializers = {i.name for i in proto.graph.initializer}
    return ([spec(v) for v in proto.graph.input if v.name not in initializers],
            [spec(v) for v in proto.graph.output])


@dataclass(frozen=True)
class OrtOptimizeConfig:
    """Args:
        level: onnxruntime graph optimisation level: ``basic`` (portable, constant folding and
            redundancy removal), ``extended`` (adds fusions into ORT contrib ops), ``all``
            (adds layout changes; the file then only runs on the same ORT build and CPU).
        compact: short internal tensor names, no node names or value_info (`compact_onnx_names`).
    """

    level: str = "basic"
    compact: bool = True

    def __post_init__(self):
        if self.level not in ORT_LEVELS:
            raise ConverterConfigError(expected(f"an ORT optimisation level in {ORT_LEVELS}", self.level))


class OrtOptimizePass(Pass):
    name = "ort_optimize"
    version = 2
    Config = OrtOptimizeConfig
    accepts = ("onnx",)

    def _run_impl(self, source: ExportedArtifact, config: OrtOptimizeConfig, out_dir: Path) -> ExportedArtifact:
        import onnx
        import onnxruntime as ort

        from .onnx_compact import compact_onnx_file

        levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        out = out_dir / f"{source.part}.{source.precision}.opt.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[config.level]
        options.optimized_model_filepath = str(out)
        ort.InferenceSession(source.path, options, providers=["CPUExecutionProvider"])
        if config.compact:
            compact_onnx_file(out)
        proto = onnx.load(str(out))
        inputs, outputs = graph_specs(proto)
        before = len(onnx.load(source.path).graph.node)
        return ExportedArtifact(path=str(out), format="onnx", precision=source.precision, part=source.part,
                                inputs=inputs, outputs=outputs,
                                details={**source.details, "ort_optimization": config.level,
                                         "nodes_before": before, "nodes": len(proto.graph.node),
                                         "size_bytes": out.stat().st_size})
