"""4-bit dense weights in a dynamic-range TFLite flatbuffer.

Dynamic-range conversion stores every large FULLY_CONNECTED weight as int8 with one scale per
output channel and runs LiteRT's hybrid kernel (float input, quantized weight, float output).
That kernel also takes packed int4 weights (``TensorType.INT4``, two values per byte, low nibble
first; measured with ai-edge-litert 2.3, XNNPACK included), so `int4_fully_connected` re-quantizes
each such weight per output channel to ``[-7, 7]`` from its dequantized int8 values: half the
bytes, each weight within half a 4-bit step (+ the int8 step it came from). The weight stays
packed in memory at run time.

Float constants of at least ``MIN_ELEMENTS`` values that no hybrid kernel reads (a position table
added to a sequence, a constant an ADD or MUL takes; the converter leaves them fp32) become
per-slice int4 constants behind a ``DEQUANTIZE``, which LiteRT runs once, when the interpreter is
prepared: an eighth of the file bytes, the float values in RAM. FULLY_CONNECTED operands the
converter kept float (the score head, biases) stay float.

With labelled rows it is accuracy-aware (`fit_int4_weights`): weights are ranked by the mean |Δp|
each costs alone, and the most sensitive stay as converted (int8 or float;
`mixed_precision.fallback_until_within`) until
|ΔAUC| against the reference scores fits the budget.

Examples:
    >>> small, record = int4_fully_connected(open("m.dynamic.tflite", "rb").read())  # doctest: +SKIP
"""
from __future__ import annotations

import logging

import numpy as np

from ..mixed_precision import DEFAULT_SHIFT_BUDGET
from .rowwise import pack_int4, symmetric_columns

logger = logging.getLogger(__name__)

MIN_ELEMENTS = 1024


def _read(flat: bytes):
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(flat))


def _code(model, op) -> int:
    opcode = model.operatorCodes[op.opcodeIndex]
    return max(opcode.builtinCode, opcode.deprecatedBuiltinCode)


def int4_candidates(flat: bytes) -> list[str]:
    """``"subgraph:tensor"`` keys of the weights `int4_fully_connected` can store in 4 bits: the int8
    per-channel FULLY_CONNECTED weights of hybrid ops, then the float constants of at least
    ``MIN_ELEMENTS`` values other ops read (e.g. a position table added to a sequence)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = _read(flat)
    T, fc = schema.TensorType, schema.BuiltinOperator.FULLY_CONNECTED
    found, constants, fc_operands = [], [], set()
    for s, subgraph in enumerate(model.subgraphs):
        outputs = {int(t) for t in subgraph.outputs}
        for op in subgraph.operators:
            for position, index in enumerate(int(i) for i in op.inputs):
                if index < 0:
                    continue
                tensor = subgraph.tensors[index]
                data = model.buffers[tensor.buffer].data
                if data is None or tensor.isVariable or index in outputs:
                    continue
                key = f"{s}:{index}"
                if _code(model, op) == fc:
                    fc_operands.add(key)
                    if position == 1 and key not in found and \
                            _hybrid_weight(subgraph.tensors[int(op.inputs[0])], tensor, data, T):
                        found.append(key)
                elif tensor.type == T.FLOAT32 and len(data) >= 4 * MIN_ELEMENTS and key not in constants:
                    constants.append(key)
    # FULLY_CONNECTED operands the converter left float (the score head's, biases) stay as they are
    return found + [k for k in constants if k not in fc_operands]


def _hybrid_weight(source, weight, data, T) -> bool:
    q = weight.quantization
    return source.type == T.FLOAT32 and weight.type == T.INT8 and len(data) >= MIN_ELEMENTS and \
        q is not None and q.scale is not None and len(weight.shape) == 2 and \
        len(q.scale) in (1, int(weight.shape[0])) and \
        (q.zeroPoint is None or not np.any(np.asarray(q.zeroPoint) != 0))


def int4_fully_connected(flat: bytes, keys=None) -> tuple[bytes, list[dict]]:
    """``flat`` with the weights ``keys`` (default: every `int4_candidates` key) in packed int4.

    An int8 FULLY_CONNECTED weight is re-quantized per output channel for the hybrid kernel; a float
    constant becomes a per-slice int4 constant (along its first axis longer than one that is not
    the last) read through a ``DEQUANTIZE`` the interpreter runs once, at load time (the file
    shrinks, RAM keeps the float values)."""
    from tensorflow.lite.python import schema_py_generated as schema

    from .tflite_compact import serialize_model

    keys = int4_candidates(flat) if keys is None else list(keys)
    if not keys:
        return flat, []
    model = _read(flat)
    records, dequantize = [], []
    for key in keys:
        s, t = (int(v) for v in key.split(":"))
        weight = model.subgraphs[s].tensors[t]
        shape = [int(d) for d in weight.shape]
        if weight.type == schema.TensorType.FLOAT32:
            dequantize.append((s, t, _int4_constant(model, schema, s, t)))
            records.append({"tensor": key, "shape": shape, "bytes_float": 4 * int(np.prod(shape)),
                            "bytes_int4": int(-(-int(np.prod(shape)) // 2)), "kernel": "DEQUANTIZE at load"})
            continue
        q8 = np.frombuffer(np.asarray(model.buffers[weight.buffer].data, np.uint8).tobytes(), np.int8).reshape(shape)
        scale8 = np.asarray(weight.quantization.scale, np.float32).reshape(-1, 1)
        q4, scale4 = symmetric_columns(q8.astype(np.float32) * scale8, 4, axis=0)
        model.buffers[weight.buffer].data = pack_int4(q4)
        weight.type = schema.TensorType.INT4
        weight.quantization.scale = scale4
        weight.quantization.zeroPoint = np.zeros(len(scale4), np.int64)
        weight.quantization.quantizedDimension = 0
        records.append({"tensor": key, "shape": shape, "bytes_int8": int(q8.size), "bytes_int4": int(-(-q8.size // 2))})
    _insert_dequantize(model, schema, dequantize)
    return serialize_model(model), records


def _int4_constant(model, schema, s: int, t: int) -> int:
    """A new packed int4 tensor holding float constant ``t`` (per-slice scales); ``t`` becomes data-less."""
    subgraph, tensor = model.subgraphs[s], model.subgraphs[s].tensors[t]
    shape = [int(d) for d in tensor.shape]
    values = np.frombuffer(np.asarray(model.buffers[tensor.buffer].data, np.uint8).tobytes(), np.float32).reshape(shape)
    long = [a for a, d in enumerate(shape[:-1]) if d > 1]
    axis = long[0] if long else None
    if axis is None:
        q, scale = symmetric_columns(values.reshape(1, -1), 4, axis=0)
        q = q.reshape(shape)
    else:
        q, scale = symmetric_columns(values, 4, axis=axis)
    buffer = schema.BufferT()
    buffer.data = pack_int4(q)
    model.buffers.append(buffer)
    packed = schema.TensorT()
    packed.shape, packed.type, packed.buffer = np.asarray(shape, np.int32), schema.TensorType.INT4, len(model.buffers) - 1
    packed.quantization = schema.QuantizationParametersT()
    packed.quantization.scale = np.asarray(scale, np.float32)
    packed.quantization.zeroPoint = np.zeros(len(scale), np.int64)
    packed.quantization.quantizedDimension = 0 if axis is None else axis
    subgraph.tensors.append(packed)
    empty = next((i for i, b in enumerate(model.buffers) if b.data is None or len(b.data) == 0), None)
    if empty is None:
        model.buffers.append(schema.BufferT())
        empty = len(model.buffers) - 1
    tensor.buffer = empty
    return len(subgraph.tensors) - 1


def _insert_dequantize(model, schema, rewritten) -> None:
    """A DEQUANTIZE(packed) -> original tensor op at the start of each subgraph for every rewritten constant."""
    if not rewritten:
        return
    code = next((i for i, c in enumerate(model.operatorCodes)
                 if max(c.builtinCode, c.deprecatedBuiltinCode) == schema.BuiltinOperator.DEQUANTIZE), None)
    if code is None:
        opcode = schema.OperatorCodeT()
        opcode.builtinCode = schema.BuiltinOperator.DEQUANTIZE
        opcode.deprecatedBuiltinCode = schema.BuiltinOperator.DEQUANTIZE
        opcode.version = 1
        model.operatorCodes.append(opcode)
        code = len(model.operatorCodes) - 1
    for s, t, packed in reversed(rewritten):
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = code, np.asarray([packed], np.int32), np.asarray([t], np.int32)
        model.subgraphs[s].operators.insert(0, op)


def fit_int4_weights(flat: bytes, rows: dict, labels: np.ndarray, reference: np.ndarray, budget: float,
                     shift_budget: float | None = DEFAULT_SHIFT_BUDGET,
                     sensitivity_rows: int = 4096) -> tuple[bytes, dict]:
    """`int4_fully_connected` keeping the most sensitive weights as converted until the scores of ``rows``
    fit ``budget`` (|ΔAUC| vs ``reference``, the scores of the same rows) and, for probability scores,
    ``shift_budget`` (mean |Δp|; `mixed_precision.ScoreBudget`); returns the flatbuffer and the record.
    Weights are ranked by their mean |Δp| alone on ``sensitivity_rows`` of ``rows`` (evenly spread):
    one scoring per weight, so on far fewer rows than the budget is checked on."""
    from ..mixed_precision import ScoreBudget, fallback_until_within
    from .tflite_sensitivity import scores_of

    found = int4_candidates(flat)
    if not found:
        return flat, {"rewritten": [], "kept": []}
    names = sorted(rows)
    labels = np.asarray(labels).reshape(-1)
    bound = ScoreBudget(labels, np.asarray(reference).reshape(-1), float(budget), shift_budget)
    every = max(1, len(labels) // max(1, int(sensitivity_rows)))
    sample = {n: a[::every] for n, a in rows.items()}
    measured: dict[int, dict] = {}

    def build(kept: tuple) -> bytes:
        return int4_fully_connected(flat, [k for k in found if k not in kept])[0]

    def ranked() -> list:
        start = scores_of(flat, sample, names)
        cost = {k: float(np.mean(np.abs(scores_of(int4_fully_connected(flat, [k])[0], sample, names) - start)))
                for k in found}
        return sorted(cost, key=lambda k: -cost[k])

    def measure(candidate: bytes) -> tuple[float, int]:
        error, measured[id(candidate)] = bound.error(scores_of(candidate, rows, names))
        return error, len(candidate)

    result = fallback_until_within(ranked, build, measure, bound.fallback_budget)
    kept = set(result.kept_float)
    small, records = int4_fully_connected(flat, [k for k in found if k not in kept])
    return small, {"rewritten": records, "kept": sorted(kept), "fallback": result.to_dict(),
                   "rows": int(len(labels)), "sensitivity_rows": int(len(next(iter(sample.values())))),
                   **measured[id(result.artifact)], **bound.to_dict()}
