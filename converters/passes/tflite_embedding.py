"""Row-wise int8/int4 embedding tables in a TFLite flatbuffer, each table stored once.

A Keras ``Embedding`` converts to ``GATHER(table, ids)``. GATHER copies rows in the table's own
type, so a quantized table needs either a ``DEQUANTIZE`` of the whole table at load time (what
dynamic-range conversion writes: the file shrinks, RAM still holds the fp32 table) or a per-tensor
int8 table whose output feeds int8 kernels (full-integer conversion, one scale for every row and
one copy of the table per GATHER, each with its own scale).

`quantize_embedding_lookups` rewrites every GATHER of a constant table (axis 0, rank-2 table of at
least ``min_elements`` values) into LiteRT's hybrid ``EMBEDDING_LOOKUP`` kernel, which reads int8
or packed int4 rows straight from the model buffer and returns float::

    ids [B, L] ─RESHAPE[-1]─┬─ EMBEDDING_LOOKUP(q table, int8 / int4, scale 1) ── values [N, D] ─┐
                            └─ EMBEDDING_LOOKUP(scale codes, int8, scale=step) ─ADD(base)─EXP─ s [N,1] ─MUL─RESHAPE→ [B, L, D]

Rows are quantized symmetrically with their own scale (`rowwise.quantize_rows`: the signed range
``[-qmax - 1, qmax]``, qmax 127 or 7), so every value is within half of its row's step. The per-row scale is stored as one int8 code of
``log(s_r)`` (``s_r = exp(base + step * code)``, rounded up so no value clips): one byte per row
instead of the fp32 scale plus int64 zero point LiteRT's per-axis quantization would need. The
kernel's own per-row scales (``quantized_dimension 0``) cost 12 bytes per row; a 32-wide int4 row
would then weigh 28 bytes instead of 17.

A one-column table (a per-item bias) has nothing to share a row scale with: its scale code would
cost more than its 4-bit value, so it is stored int8 with one symmetric scale for the table (the
kernel's per-tensor scale: 1 byte per row, no scale lookup), every value within half of that step.

Tables read by several GATHERs (a history and a candidate lookup of one Keras layer, split parts
sharing weights) become one stored table: GATHERs group by their source tensor and, across tensors,
by equal values once each source is matched to its float original (``float_tables``: the Keras
weights; a full-int8 file has one per-tensor int8 copy per GATHER, equal to the float table up to
requantization). In a full-int8 graph the float rows are re-quantized (``QUANTIZE``) to the scale
the original GATHER output had, so downstream kernels are unchanged.

Examples:
    >>> small, info = quantize_embedding_lookups(open("m.tflite", "rb").read(), bits=4)  # doctest: +SKIP
    >>> info["tables"][0]["lookups"]                                                    # doctest: +SKIP
    2
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConversionError, expected
from .rowwise import BITS, QMAX, pack_int4, quantize_rows, row_scales  # noqa: F401 - public here too

logger = logging.getLogger(__name__)

MIN_ELEMENTS = 1024           # smaller tables (hours, categories) are not worth extra ops


@dataclass
class _Table:
    """One stored table: its float values and the GATHERs reading it."""

    values: np.ndarray
    source: int                               # the constant tensor it came from (first seen)
    gathers: list = field(default_factory=list)   # operator objects
    tensors: tuple | None = None              # (q table, scale codes, base) tensor indices once written


def quantize_embedding_lookups(flat: bytes, bits: int, float_tables=(), min_elements: int = MIN_ELEMENTS
                               ) -> tuple[bytes, dict]:
    """Rewrite the GATHERs of constant tables into row-wise ``bits``-bit EMBEDDING_LOOKUPs.

    Args:
        flat: a converted ``.tflite`` (fp32, dynamic-range or full-integer).
        bits: 8 or 4.
        float_tables: float originals (the Keras embedding weights) that quantized tables are
            matched to (same shape, equal within half a step of the file's quantization).
        min_elements: tables with fewer values keep their GATHER.

    Returns:
        ``(new flatbuffer, info)`` with ``info["tables"]``: per stored table its shape, lookups,
        bytes and the bytes it replaced.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    if bits not in BITS:
        raise ConversionError(expected(f"embedding bits in {BITS}", bits))
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flat))
    rewriter = _Rewriter(model, schema, bits, [np.asarray(t, np.float32) for t in float_tables], min_elements)
    info = {"bits": bits, "tables": [], "kernel": "EMBEDDING_LOOKUP (hybrid, rows read from the model buffer)"}
    for subgraph in model.subgraphs:
        info["tables"] += rewriter.rewrite(subgraph)
    from .tflite_compact import compact_flatbuffer, serialize_model

    return compact_flatbuffer(serialize_model(model)), info


class _Rewriter:
    def __init__(self, model, schema, bits, float_tables, min_elements):
        self.model, self.schema, self.bits = model, schema, bits
        self.float_tables, self.min_elements = float_tables, min_elements
        self.op = schema.BuiltinOperator

    # -- graph helpers ----------------------------------------------------------------------------
    def code(self, builtin: int) -> int:
        for index, opcode in enumerate(self.model.operatorCodes):
            if max(opcode.builtinCode, opcode.deprecatedBuiltinCode) == builtin:
                return index
        opcode = self.schema.OperatorCodeT()
        opcode.builtinCode, opcode.deprecatedBuiltinCode, opcode.version = builtin, min(builtin, 127), 1
        self.model.operatorCodes.append(opcode)
        return len(self.model.operatorCodes) - 1

    def opname(self, op) -> int:
        opcode = self.model.operatorCodes[op.opcodeIndex]
        return max(opcode.builtinCode, opcode.deprecatedBuiltinCode)

    def constant(self, subgraph, index):
        """The tensor's constant data as an array of its type, or None."""
        tensor = subgraph.tensors[index]
        data = self.model.buffers[tensor.buffer].data
        if data is None or len(data) == 0:
            return None
        dtype = {self.schema.TensorType.FLOAT32: np.float32, self.schema.TensorType.INT8: np.int8,
                 self.schema.TensorType.FLOAT16: np.float16}.get(tensor.type)
        if dtype is None:
            return None
        return np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype).reshape([int(d) for d in tensor.shape])

    def add_tensor(self, subgraph, shape, ttype, data=None, scale=None, signature=None) -> int:
        tensor = self.schema.TensorT()
        tensor.shape = np.asarray(shape, np.int32)
        tensor.type = ttype
        if signature is not None:
            tensor.shapeSignature = np.asarray(signature, np.int32)
        if scale is not None:
            tensor.quantization = self.schema.QuantizationParametersT()
            tensor.quantization.scale = np.asarray([scale], np.float32)
            tensor.quantization.zeroPoint = np.asarray([0], np.int64)
        tensor.buffer = 0
        if data is not None:
            buffer = self.schema.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.model.buffers.append(buffer)
            tensor.buffer = len(self.model.buffers) - 1
        subgraph.tensors.append(tensor)
        return len(subgraph.tensors) - 1

    def new_op(self, builtin, inputs, outputs, options_type=0, options=None):
        op = self.schema.OperatorT()
        op.opcodeIndex = self.code(builtin)
        op.inputs, op.outputs = np.asarray(inputs, np.int32), np.asarray(outputs, np.int32)
        op.builtinOptionsType, op.builtinOptions = options_type, options
        return op

    # -- the rewrite ------------------------------------------------------------------------------
    def table_of(self, subgraph, producers, gather):
        """``(source tensor, float values)`` of a GATHER of a constant table, or None."""
        if self.opname(gather) != self.op.GATHER or len(gather.inputs) != 2:
            return None
        options = gather.builtinOptions
        if options is not None and (options.axis != 0 or options.batchDims != 0):
            return None
        source = int(gather.inputs[0])
        ids = subgraph.tensors[int(gather.inputs[1])]
        if ids.type != self.schema.TensorType.INT32:
            return None
        values = self.constant(subgraph, source)
        tensor = subgraph.tensors[source]
        if values is None and source in producers and self.opname(producers[source]) == self.op.DEQUANTIZE:
            source = int(producers[source].inputs[0])
            values, tensor = self.constant(subgraph, source), subgraph.tensors[source]
        if values is None or values.ndim != 2 or values.size < self.min_elements:
            return None
        step = None
        if values.dtype == np.int8:
            q = tensor.quantization
            if q is None or q.scale is None or len(q.scale) not in (1, values.shape[0]):
                return None
            scale = np.asarray(q.scale, np.float32).reshape(-1, 1) if len(q.scale) > 1 else np.float32(q.scale[0])
            zero = np.asarray(q.zeroPoint if q.zeroPoint is not None else [0], np.float32)
            zero = zero.reshape(-1, 1) if zero.size > 1 else zero[0]
            inside = (values > -128) & (values < 127)
            values, step = (values.astype(np.float32) - zero) * scale, np.max(scale)
            return source, self.match_float(values.astype(np.float32), step, inside)
        return source, values.astype(np.float32)

    def match_float(self, values, step, inside):
        """The float original of a dequantized table (equal up to requantization), else ``values``."""
        # a full-int8 table's scale comes from the calibrated activation range: values beyond it clip
        for table in self.float_tables:
            if table.shape == values.shape and inside.mean() > 0.5 and \
                    np.max(np.abs(table - values)[inside]) <= 0.5 * step * 1.01 + 1e-7:
                return table
        return values

    def rewrite(self, subgraph) -> list[dict]:
        producers = {int(o): op for op in subgraph.operators for o in op.outputs}
        tables: list[_Table] = []
        for op in subgraph.operators:
            found = self.table_of(subgraph, producers, op)
            if found is None:
                continue
            source, values = found
            table = next((t for t in tables if t.source == source or
                          (t.values.shape == values.shape and np.array_equal(t.values, values))), None)
            if table is None:
                table = _Table(values, source)
                tables.append(table)
            table.gathers.append(op)
        if not tables:
            return []
        replaced = {id(g): t for t in tables for g in t.gathers}
        consumers: dict[int, list] = {}
        for op in subgraph.operators:
            for i in op.inputs:
                consumers.setdefault(int(i), []).append(op)
        outputs = {int(o) for o in subgraph.outputs}
        operators, absorbed = [], set()
        for op in subgraph.operators:
            if id(op) in absorbed:
                continue
            table = replaced.get(id(op))
            if table is None:
                operators.append(op)
                continue
            readers = consumers.get(int(op.outputs[0]), [])
            # an int8 lookup read only by a DEQUANTIZE (dynamic range): write the float rows there
            if len(readers) == 1 and self.opname(readers[0]) == self.op.DEQUANTIZE and \
                    int(op.outputs[0]) not in outputs:
                absorbed.add(id(readers[0]))
                operators += self.lookup(subgraph, table, op, int(readers[0].outputs[0]))
            else:
                operators += self.lookup(subgraph, table, op)
        subgraph.operators = _without_dead_dequantize(self, subgraph, operators)
        return [self.describe(subgraph, t) for t in tables]

    def write_table(self, subgraph, table: _Table) -> tuple:
        T = self.schema.TensorType
        rows, width = table.values.shape
        if width == 1:
            q, scale = column_int8(table.values)
            table.tensors = (self.add_tensor(subgraph, [rows, 1], T.INT8, q, scale=scale), None, None)
            return table.tensors
        q, codes, base, step = quantize_rows(table.values, self.bits)
        if self.bits == 4:
            qt = self.add_tensor(subgraph, [rows, width], T.INT4, pack_int4(q), scale=1.0)
        else:
            qt = self.add_tensor(subgraph, [rows, width], T.INT8, q, scale=1.0)
        ct = self.add_tensor(subgraph, [rows, 1], T.INT8, codes.reshape(rows, 1), scale=step)
        bt = self.add_tensor(subgraph, [1], T.FLOAT32, np.asarray([base], np.float32))
        table.tensors = (qt, ct, bt)
        return table.tensors

    def lookup(self, subgraph, table: _Table, gather, out: int | None = None) -> list:
        """The ops replacing one GATHER (see the module doc), writing ``out`` (default its output)."""
        T, B = self.schema.TensorType, self.op
        qt, ct, bt = table.tensors or self.write_table(subgraph, table)
        width = table.values.shape[1]
        ids, out = int(gather.inputs[1]), int(gather.outputs[0]) if out is None else out
        out_tensor = subgraph.tensors[out]
        n = int(np.prod([int(d) for d in out_tensor.shape])) // width
        ops = []
        flat_ids = self.add_tensor(subgraph, [n], T.INT32, signature=[-1])
        shape_1d = self.add_tensor(subgraph, [1], T.INT32, np.asarray([-1], np.int32))
        ops.append(self.new_op(B.RESHAPE, [ids, shape_1d], [flat_ids]))
        values = self.add_tensor(subgraph, [n, width], T.FLOAT32, signature=[-1, width])
        ops.append(self.new_op(B.EMBEDDING_LOOKUP, [flat_ids, qt], [values]))
        if ct is None:                  # one scale for the table: the kernel applies it
            return ops + self.reshaped(subgraph, values, ids, width, out)
        logs = self.add_tensor(subgraph, [n, 1], T.FLOAT32, signature=[-1, 1])
        ops.append(self.new_op(B.EMBEDDING_LOOKUP, [flat_ids, ct], [logs]))
        shifted = self.add_tensor(subgraph, [n, 1], T.FLOAT32, signature=[-1, 1])
        ops.append(self.new_op(B.ADD, [logs, bt], [shifted], self.schema.BuiltinOptions.AddOptions,
                               self.schema.AddOptionsT()))
        scales = self.add_tensor(subgraph, [n, 1], T.FLOAT32, signature=[-1, 1])
        ops.append(self.new_op(B.EXP, [shifted], [scales]))
        rows = self.add_tensor(subgraph, [n, width], T.FLOAT32, signature=[-1, width])
        ops.append(self.new_op(B.MUL, [values, scales], [rows], self.schema.BuiltinOptions.MulOptions,
                               self.schema.MulOptionsT()))
        return ops + self.reshaped(subgraph, rows, ids, width, out)

    def reshaped(self, subgraph, rows: int, ids: int, width: int, out: int) -> list:
        """The ops reshaping looked-up ``rows [N, width]`` to ``ids.shape + [width]`` into ``out``
        (re-quantized when ``out`` is an int8 tensor of a full-integer graph)."""
        T, B = self.schema.TensorType, self.op
        out_tensor = subgraph.tensors[out]
        ops = []
        # the output shape is ids.shape + [width], read at run time: the batch is resizable
        rank = len(subgraph.tensors[ids].shape)
        ids_shape = self.add_tensor(subgraph, [rank], T.INT32)
        ops.append(self.new_op(B.SHAPE, [ids], [ids_shape], self.schema.BuiltinOptions.ShapeOptions,
                               _options(self.schema.ShapeOptionsT(), outType=T.INT32)))
        tail = self.add_tensor(subgraph, [1], T.INT32, np.asarray([width], np.int32))
        shape = self.add_tensor(subgraph, [rank + 1], T.INT32)
        ops.append(self.new_op(B.CONCATENATION, [ids_shape, tail], [shape],
                               self.schema.BuiltinOptions.ConcatenationOptions,
                               _options(self.schema.ConcatenationOptionsT(), axis=0)))
        if out_tensor.type == T.FLOAT32:
            ops.append(self.new_op(B.RESHAPE, [rows, shape], [out]))
            return ops
        floats = self.add_tensor(subgraph, [int(d) for d in out_tensor.shape], T.FLOAT32)
        ops.append(self.new_op(B.RESHAPE, [rows, shape], [floats]))
        ops.append(self.new_op(B.QUANTIZE, [floats], [out]))
        return ops

    def describe(self, subgraph, table: _Table) -> dict:
        rows, width = table.values.shape
        stored = sum(len(self.model.buffers[subgraph.tensors[t].buffer].data) for t in table.tensors if t is not None)
        sources = {int(g.inputs[0]) for g in table.gathers}
        return {"shape": [rows, width], "lookups": len(table.gathers), "bits": 8 if width == 1 else self.bits,
                "stored_bytes": stored,
                "fp32_bytes": rows * width * 4, "copies_before": len(sources)}


def column_int8(values: np.ndarray) -> tuple[np.ndarray, float]:
    """Symmetric int8 of a one-column table with one scale: ``(q int8, scale)``, ``values ≈ q * scale``."""
    values = np.asarray(values, np.float32)
    scale = float(np.abs(values).max()) / 127.0 or 1.0
    return np.clip(np.round(values / scale), -127, 127).astype(np.int8), scale


def _options(options, **values):
    for name, value in values.items():
        setattr(options, name, value)
    return options


def _without_dead_dequantize(rewriter, subgraph, operators) -> list:
    """Drop DEQUANTIZE ops of constant tables nothing reads any more, and the data of constant tables
    no kept op reads (compaction then removes their buffers)."""
    read = {int(i) for op in operators for i in op.inputs if i >= 0} | {int(o) for o in subgraph.outputs}
    kept = [op for op in operators
            if not (rewriter.opname(op) == rewriter.op.DEQUANTIZE and int(op.outputs[0]) not in read)]
    live = {int(i) for op in kept for i in op.inputs if i >= 0}
    dead = {int(i) for op in subgraph.operators for i in op.inputs if i >= 0} - live
    live_buffers = {subgraph.tensors[i].buffer for i in live}
    for index in dead:
        tensor = subgraph.tensors[index]
        data = rewriter.model.buffers[tensor.buffer].data
        if tensor.buffer and data is not None and len(data) and tensor.buffer not in live_buffers:
            rewriter.model.buffers[tensor.buffer].data = None
            tensor.buffer = 0
    return kept
