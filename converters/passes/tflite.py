"""TFLite export: fp32, fp16, dynamic-range int8 and full-integer int8.

The Keras model is first written as a SavedModel whose ``serving_default`` signature uses the
canonical tensor names (hist_items, cand_item, … → score / user_state …), then converted with
``TFLiteConverter.from_saved_model`` (never Keras 3 ``from_concrete_functions``, which writes a
weightless model). Full-integer int8 calibrates on the ``.npz`` training rows; int32 id inputs stay
int32 and float inputs/outputs stay float. Each produced file is run once with ai_edge_litert
(finite outputs) before it is returned.

Examples:
    >>> TFLitePass().run("m/fused.keras", TFLiteConfig(mode="int8", data="m/calibration.npz"), "out")  # doctest: +SKIP
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgerec.runtime.manifest import TensorSpec

from ..errors import ConversionError, ConverterConfigError, expected
from ..keras_io import input_specs, load_keras_model, save_serving_savedmodel
from ..pipeline import ExportedArtifact, Pass
from .data import batches, cast_like, load_rows, sample_inputs

MODES = ("fp32", "fp16", "dynamic", "int8")
PRECISION = {"fp32": "fp32", "fp16": "fp16", "dynamic": "dynamic", "int8": "int8"}
SIGNATURE = "serving_default"


@dataclass(frozen=True)
class TFLiteConfig:
    """Args:
        mode: ``fp32``, ``fp16``, ``dynamic`` (int8 weights) or ``int8`` (full integer).
        data: ``.npz`` of rows named like the part's inputs; required for ``int8``.
        calibration_rows: representative rows used for ``int8``.
        custom_objects_module: module registering custom layers, imported before loading.
        allow_float_fallback: ``int8`` only — keep float kernels for ops without an int8 kernel
            (otherwise such an op fails the conversion and is named in the error).
        output_names: override the canonical output names of a single/list-output model.
        compact: drop intermediate tensor names, empty buffers and shape signatures
            (`compact_flatbuffer`); outputs must stay bit-identical or the pass fails.
    """

    mode: str = "fp32"
    data: str | None = None
    calibration_rows: int = 200
    custom_objects_module: str | None = None
    allow_float_fallback: bool = False
    output_names: tuple[str, ...] | None = None
    compact: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConverterConfigError(expected(f"a TFLite mode in {MODES}", self.mode))
        if self.mode == "int8" and not self.data:
            raise ConverterConfigError(expected("data=<rows .npz> for full-integer int8 calibration", self.data))
        if not isinstance(self.calibration_rows, int) or self.calibration_rows < 1:
            raise ConverterConfigError(expected("calibration_rows >= 1", self.calibration_rows))


class TFLitePass(Pass):
    name = "tflite"
    version = 3
    Config = TFLiteConfig
    path_fields = ("data",)
    accepts = ("keras", "savedmodel")

    def _run_impl(self, source: ExportedArtifact, config: TFLiteConfig, out_dir: Path) -> ExportedArtifact:
        from edgerec.converters.tfenv import import_tf

        tf, _ = import_tf()
        model = load_keras_model(source.path, config.custom_objects_module)
        specs = input_specs(model)
        rows = None
        if config.data:
            rows = cast_like(load_rows(config.data, list(specs), limit=config.calibration_rows),
                             {n: d for n, (d, _) in specs.items()})
        with tempfile.TemporaryDirectory(prefix="edgerec-sm-") as tmp:
            save_serving_savedmodel(model, Path(tmp) / "sm", source.part,
                                    list(config.output_names) if config.output_names else None)
            converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "sm"), [SIGNATURE])
            _configure(tf, converter, config, rows)
            try:
                flat = converter.convert()
            except Exception as err:  # noqa: BLE001 - converter raises many types; all become ConversionError
                raise conversion_error(config.mode, err) from None
        out = out_dir / f"{source.part}.{config.mode}.tflite"
        converted_bytes = len(flat)
        if config.compact:
            flat = _compacted(flat, rows, specs)
        out.write_bytes(flat)
        inputs, outputs, sample = sanity_check(out, rows, specs)
        calibrated = len(next(iter(rows.values()))) if rows and config.mode == "int8" else 0
        details = {**self.carried_details(source), "mode": config.mode, "calibration_rows": calibrated,
                   "sanity_output_mean": sample, "size_bytes": out.stat().st_size,
                   "converted_size_bytes": converted_bytes,
                   "float_fallback": config.allow_float_fallback if config.mode == "int8" else None}
        return ExportedArtifact(path=str(out), format="tflite", precision=PRECISION[config.mode], part=source.part,
                                inputs=inputs, outputs=outputs, details=details)


def _compacted(flat: bytes, rows, specs) -> bytes:
    """`compact_flatbuffer` of ``flat``, refused unless it gives bit-identical outputs on sample rows."""
    from .tflite_compact import compact_flatbuffer

    small = compact_flatbuffer(flat)
    feed = {n: np.ascontiguousarray(a[:4]) for n, a in rows.items()} if rows else sample_inputs(specs, batch=4)
    before, after = _run_bytes(flat, feed, sorted(specs)), _run_bytes(small, feed, sorted(specs))
    for name, value in before.items():
        if not np.array_equal(value, after.get(name)):
            raise ConversionError(expected(f"identical output '{name}' after compacting the flatbuffer",
                                           "different values"), mode="compact")
    return small


def _run_bytes(flat: bytes, feed: dict, names: list[str]) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=flat).get_signature_runner(SIGNATURE)
    return runner(**{n: feed[n] for n in names})


def _configure(tf, converter, config: TFLiteConfig, rows) -> None:
    if config.mode == "fp32":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if config.mode == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif config.mode == "int8":
        def representative():
            for batch in batches(rows, 1):
                yield batch

        converter.representative_dataset = representative
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if config.allow_float_fallback:
            ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
        converter.target_spec.supported_ops = ops
        # inference_input_type/output_type stay float32: float I/O, int32 ids untouched.


_OP = re.compile(r"'((?:tfl?|mhlo|stablehlo)\.[A-Za-z0-9_]+)'")
_LOC = re.compile(r'"([^"@\s]+)@')  # "model/<layer>/...@__inference_…" inside converter locations


def conversion_error(mode: str, err: Exception) -> ConversionError:
    """A `ConversionError` naming the ops (and, when the converter says, layers) that blocked ``mode``."""
    text = str(err)
    ops = list(dict.fromkeys(_OP.findall(text)))
    layers = []
    for loc in _LOC.findall(text):
        parts = [p for p in loc.split("/") if p]
        if len(parts) >= 2 and not parts[0].startswith(("StatefulPartitionedCall", "PartitionedCall")):
            layers.append(parts[1])  # "<model name>/<layer name>/…"
    layers = list(dict.fromkeys(layers))
    first = next((ln.strip() for ln in text.splitlines() if "error" in ln.lower()), text.strip()[:300])
    blocked = ops + [f"layer:{ln}" for ln in layers]
    what = ", ".join(blocked) if blocked else "unknown op (see converter message)"
    return ConversionError(expected(f"a TFLite {mode} conversion", f"blocked by {what}: {first[:400]}"),
                           mode=mode, blocked_by=blocked)


def _spec(detail: dict) -> TensorSpec:
    sig = detail.get("shape_signature", detail["shape"])
    shape = [None if int(d) < 0 else int(d) for d in sig]
    if shape:
        shape[0] = None
    return TensorSpec(detail["name"], np.dtype(detail["dtype"]).name, shape)


def signature_specs(interpreter) -> tuple[list[TensorSpec], list[TensorSpec]]:
    runner = interpreter.get_signature_runner(SIGNATURE)
    ins = runner.get_input_details()
    outs = runner.get_output_details()
    return ([_spec({**d, "name": n}) for n, d in sorted(ins.items())],
            [_spec({**d, "name": n}) for n, d in sorted(outs.items())])


def sanity_check(path: Path, rows, specs) -> tuple[list[TensorSpec], list[TensorSpec], float]:
    """Run the file once with ai_edge_litert through its signature; outputs must be finite."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    inputs, outputs = signature_specs(interpreter)
    expected_names = sorted(specs)
    if sorted(t.name for t in inputs) != expected_names:
        raise ConversionError(expected(f"signature inputs {expected_names}", [t.name for t in inputs]))
    feed = {n: a[:2] for n, a in rows.items()} if rows else sample_inputs(specs, batch=2)
    runner = interpreter.get_signature_runner(SIGNATURE)
    result = runner(**{n: np.ascontiguousarray(feed[n][:1]) for n in expected_names})
    for name, value in result.items():
        if not np.all(np.isfinite(value)):
            raise ConversionError(expected(f"finite values from {path.name} output '{name}'", "NaN/inf"),
                                  mode="sanity")
    return inputs, outputs, float(np.mean([np.mean(v) for v in result.values()]))
