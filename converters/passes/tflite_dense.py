"""4-bit dense weights in a dynamic-range TFLite flatbuffer.

Dynamic-range conversion stores every large FULLY_CONNECTED weight as int8 with one scale per
output channel and runs LiteRT's hybrid kernel (float input, quantized weight, float output).
That kernel also takes packed int4 weights (``TensorType.INT4``, two values per byte, low nibble
first; measured with ai-edge-litert 2.3, XNNPACK included), so `int4_fully_connected` re-quantizes
each such weight per output channel to ``[-7, 7]`` from its dequantized int8 values: half the
bytes, each weight within half a 4-bit step (+ the int8 step it came from). The weight stays
packed in memory at run time.

With labelled rows it is accuracy-aware (`fit_int4_weights`): weights are ranked by the mean |Δp|
each costs alone, and the most sensitive stay int8 (`mixed_precision.fallback_until_within`) until
|ΔAUC| against the reference scores fits the budget.

Examples:
    >>> small, record = int4_fully_connected(open("m.dynamic.tflite", "rb").read())  # doctest: +SKIP
"""
from __future__ import annotations

import logging

import numpy as np

from .rowwise import pack_int4, symmetric_columns

logger = logging.getLogger(__name__)

MIN_ELEMENTS = 1024


def _read(flat: bytes):
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(flat))


def int4_candidates(flat: bytes) -> list[str]:
    """``"subgraph:tensor"`` keys of the int8 per-channel FULLY_CONNECTED weights of hybrid ops."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = _read(flat)
    T, fc = schema.TensorType, schema.BuiltinOperator.FULLY_CONNECTED
    found = []
    for s, subgraph in enumerate(model.subgraphs):
        for op in subgraph.operators:
            opcode = model.operatorCodes[op.opcodeIndex]
            if max(opcode.builtinCode, opcode.deprecatedBuiltinCode) != fc or len(op.inputs) < 2:
                continue
            source, weight = subgraph.tensors[int(op.inputs[0])], subgraph.tensors[int(op.inputs[1])]
            data = model.buffers[weight.buffer].data
            q = weight.quantization
            if source.type != T.FLOAT32 or weight.type != T.INT8 or data is None or len(data) < MIN_ELEMENTS or \
                    q is None or q.scale is None or len(weight.shape) != 2 or \
                    len(q.scale) not in (1, int(weight.shape[0])) or \
                    (q.zeroPoint is not None and np.any(np.asarray(q.zeroPoint) != 0)):
                continue
            key = f"{s}:{int(op.inputs[1])}"
            if key not in found:
                found.append(key)
    return found


def int4_fully_connected(flat: bytes, keys=None) -> tuple[bytes, list[dict]]:
    """``flat`` with the weights ``keys`` (default: every `int4_candidates` key) in packed int4."""
    from tensorflow.lite.python import schema_py_generated as schema

    from .tflite_compact import serialize_model

    keys = int4_candidates(flat) if keys is None else list(keys)
    if not keys:
        return flat, []
    model = _read(flat)
    records = []
    for key in keys:
        s, t = (int(v) for v in key.split(":"))
        weight = model.subgraphs[s].tensors[t]
        shape = [int(d) for d in weight.shape]
        q8 = np.frombuffer(np.asarray(model.buffers[weight.buffer].data, np.uint8).tobytes(), np.int8).reshape(shape)
        scale8 = np.asarray(weight.quantization.scale, np.float32).reshape(-1, 1)
        q4, scale4 = symmetric_columns(q8.astype(np.float32) * scale8, 4, axis=0)
        model.buffers[weight.buffer].data = pack_int4(q4)
        weight.type = schema.TensorType.INT4
        weight.quantization.scale = scale4
        weight.quantization.zeroPoint = np.zeros(len(scale4), np.int64)
        weight.quantization.quantizedDimension = 0
        records.append({"tensor": key, "shape": shape, "bytes_int8": int(q8.size), "bytes_int4": int(-(-q8.size // 2))})
    return serialize_model(model), records


def fit_int4_weights(flat: bytes, rows: dict, labels: np.ndarray, reference: np.ndarray, budget: float
                     ) -> tuple[bytes, dict]:
    """`int4_fully_connected` keeping the most sensitive weights int8 until |ΔAUC| vs ``reference``
    (scores of the same ``rows``) fits ``budget``; returns the flatbuffer and the record."""
    from ..mixed_precision import fallback_until_within
    from .tflite_sensitivity import delta_auc_on_rows, scores_of

    found = int4_candidates(flat)
    if not found:
        return flat, {"rewritten": [], "kept": []}
    names = sorted(rows)

    def build(kept: tuple) -> bytes:
        return int4_fully_connected(flat, [k for k in found if k not in kept])[0]

    def ranked() -> list:
        start = scores_of(flat, rows, names)
        cost = {k: float(np.mean(np.abs(scores_of(int4_fully_connected(flat, [k])[0], rows, names) - start)))
                for k in found}
        return sorted(cost, key=lambda k: -cost[k])

    result = fallback_until_within(ranked, build, lambda f: (abs(delta_auc_on_rows(f, rows, labels, reference)),
                                                             len(f)), float(budget))
    kept = set(result.kept_float)
    small, records = int4_fully_connected(flat, [k for k in found if k not in kept])
    return small, {"rewritten": records, "kept": sorted(kept), "fallback": result.to_dict()}
