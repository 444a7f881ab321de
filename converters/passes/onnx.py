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

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgerec.runtime.manifest import TensorSpec

from ..errors import ConversionError, ConverterConfigError, expected
from ..keras_io import flat_serving_function, load_keras_model, walk_layers
from ..pipeline import ExportedArtifact, Pass
from .onnx_standins import convert_with_stand_ins

logger = logging.getLogger(__name__)

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
        free_axes: ``(input name, axis, dim name)`` triples exported as the symbolic dimension
            ``dim name`` besides the batch (e.g. a scorer's user-state positions, so a runtime can
            feed one user's history without its padding). A model whose graph cannot be traced
            length-free there is exported with its own sizes (``details["free_axes"]`` says which
            it got).
    """

    opset: int = MAX_TF2ONNX_OPSET
    lift_to_opset: int | None = None
    custom_objects_module: str | None = None
    output_names: tuple[str, ...] | None = None
    stand_in_min_bytes: int | None = 1 << 20
    free_axes: tuple[tuple[str, int, str], ...] = ()

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
        for entry in self.free_axes:
            if not (isinstance(entry, tuple) and len(entry) == 3 and isinstance(entry[0], str)
                    and isinstance(entry[1], int) and not isinstance(entry[1], bool) and entry[1] >= 1
                    and isinstance(entry[2], str) and entry[2] and entry[2] != BATCH_DIM):
                raise ConverterConfigError(expected(
                    f"free_axes as (input name, axis >= 1, dim name other than {BATCH_DIM!r}) triples", entry))


class OnnxExportPass(Pass):
    name = "onnx_export"
    version = 4
    Config = OnnxExportConfig
    accepts = ("keras", "savedmodel")

    def _run_impl(self, source: ExportedArtifact, config: OnnxExportConfig, out_dir: Path) -> ExportedArtifact:
        import onnx

        model = with_onnx_twins(load_keras_model(source.path, config.custom_objects_module), source.part)
        names = list(config.output_names) if config.output_names else None
        free = config.free_axes
        refused = None
        if free:
            try:
                proto, stand_ins, specs, out_names = _convert(model, source.part, names, config, free)
            except ConverterConfigError:
                raise
            except Exception as err:  # noqa: BLE001 - a layer that needs its sizes fails in many ways
                refused = f"{type(err).__name__}: {str(err)[:300]}"
                logger.warning("%s: exported with fixed sizes (not length-free at %s): %s",
                               source.part, [f"{n}[{a}]" for n, a, _ in free], refused)
                free = ()
        if not free:
            try:
                proto, stand_ins, specs, out_names = _convert(model, source.part, names, config)
            except Exception as err:  # noqa: BLE001 - tf2onnx raises many types
                raise ConversionError(expected(f"a tf2onnx conversion at opset {config.opset}",
                                               f"{type(err).__name__}: {str(err)[:400]}"), mode="onnx") from None
        canonicalize_io(proto, [s.name for s in specs], out_names, free)
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
                                         "free_axes": [list(f) for f in free],
                                         **({"free_axes_refused": refused} if refused else {}),
                                         "size_bytes": out.stat().st_size})


def _convert(model, part: str, names, config: OnnxExportConfig, free=()) -> tuple:
    """tf2onnx on ``model``'s serving function: ``(proto, stand-ins, input specs, output names)``."""
    import tf2onnx

    flat, specs = flat_serving_function(model, part, names, [(name, axis) for name, axis, _ in free])
    out_names = sorted(flat.get_concrete_function().structured_outputs)
    proto, stand_ins = None, []
    if config.stand_in_min_bytes is not None:
        proto, stand_ins = convert_with_stand_ins(flat, specs, config.opset, config.stand_in_min_bytes)
    if proto is None:
        proto, _ = tf2onnx.convert.from_function(flat, input_signature=specs, opset=config.opset)
    return proto, stand_ins, specs, out_names


def with_onnx_twins(model, part: str | None = None):
    """``model`` with every layer whose ``onnx_twin(part)`` gives a layer replaced by that twin
    (same function, same weight layout, an ONNX-friendlier graph; e.g. `ProjectedGRU` → one ONNX
    ``GRU`` node, `TargetAttention` in a scorer → a one-user branch). ``part``: the model part
    exported (a twin may serve one part only; None where unknown).

    Returns the model itself when no layer has a twin. Outputs are unchanged: each twin takes its
    layer's weights, and the validator compares the exported graph with the original model.
    """
    from edgerec.converters.tfenv import import_tf

    twins = {id(layer): layer.onnx_twin(part) for layer in walk_layers(model) if hasattr(layer, "onnx_twin")}
    if not any(t is not None for t in twins.values()):
        return model

    _, tf_keras = import_tf()

    def clone(layer):
        if twins.get(id(layer)) is not None:
            return twins.pop(id(layer))
        return layer.__class__.from_config(layer.get_config())

    twin = tf_keras.models.clone_model(model, clone_function=clone)
    originals = {layer.name: layer for layer in walk_layers(model)}
    for layer in walk_layers(twin):
        if layer.weights and layer.name in originals:
            layer.set_weights(originals[layer.name].get_weights())
    return twin


def canonicalize_io(proto, input_names: list[str], output_names: list[str], free_axes=()) -> None:
    """Rename graph inputs (``hist_items:0`` → ``hist_items``) and outputs (in order) in place;
    make the first dimension of every input/output the symbolic ``batch`` and name the
    ``(input, axis, dim name)`` dimensions of ``free_axes``."""
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
    named = {(name, axis): dim for name, axis, dim in free_axes}
    for value in graph.input:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if (value.name, axis) in named:
                dim.Clear()
                dim.dim_param = named[(value.name, axis)]


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
    version = 3
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
