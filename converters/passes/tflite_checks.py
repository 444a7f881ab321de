"""Checks around a TFLite conversion: the typed error for a conversion the converter refused
(`conversion_error`, naming the blocking ops and layers), compaction that must keep outputs
bit-identical (`compacted`), and the one run with ai_edge_litert every written file gets
(`sanity_check`, which also reads the signature's tensor specs)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from edgerec.runtime.manifest import TensorSpec

from ..errors import ConversionError, expected
from .data import sample_inputs

SIGNATURE = "serving_default"


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


def compacted(flat: bytes, rows, specs) -> bytes:
    """`compact_flatbuffer` of ``flat``, refused unless it gives bit-identical outputs on sample rows."""
    from .tflite_compact import compact_flatbuffer

    small = compact_flatbuffer(flat)
    feed = {n: np.ascontiguousarray(a[:4]) for n, a in rows.items()} if rows else sample_inputs(specs, batch=4)
    before, after = run_bytes(flat, feed, sorted(specs)), run_bytes(small, feed, sorted(specs))
    for name, value in before.items():
        if not np.array_equal(value, after.get(name)):
            raise ConversionError(expected(f"identical output '{name}' after compacting the flatbuffer",
                                           "different values"), mode="compact")
    return small


def run_bytes(flat: bytes, feed: dict, names: list[str]) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=flat).get_signature_runner(SIGNATURE)
    return runner(**{n: feed[n] for n in names})
