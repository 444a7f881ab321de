"""Row-wise int4/int8 embedding tables in ONNX: every Gather of a constant 2-D float table becomes
ONNX Runtime's ``com.microsoft.GatherBlockQuantized`` (a narrow one an int8 Gather + DequantizeLinear),
and a table read by several Gathers is stored once.

Kernel facts (onnxruntime 1.32, CPU provider, measured): ``GatherBlockQuantized`` takes ``int4`` /
``uint4`` data (two values per byte, low nibble first) with ``bits=4``, or ``uint8`` data with
``bits=8`` (``int8`` data is refused); ``scales`` of the output type (fp32 or fp16); zero points
of the data type. Without zero points signed ``int4`` reads as zero point 0; for the unsigned types
the CPU and CUDA providers assume different defaults, so this pass writes them. ``block_size`` must
be a power of two >= 16: a row of ``D`` values is one block of ``D`` rounded up to such a power,
the table is padded with zero columns and a ``Slice`` cuts the padding off the looked-up rows.

Scale formats (``scale_type``):

* ``log8`` (default): symmetric rows (`rowwise.quantize_rows`), the per-row scale stored as one
  int8 code of its log; ``Exp(base + step * code)`` computes the fp32 scales from constants only,
  so ONNX Runtime folds it at session creation (file: 1 byte per row; RAM: the folded fp32 scales).
  4-bit rows are signed ``int4`` without zero points; 8-bit rows are ``uint8`` with the constant zero
  point 128 made by a ``ConstantOfShape`` (also folded). 32-wide int4 rows: 17 bytes (0.133x fp32).
* ``float16`` / ``float32``: asymmetric rows (per-row min/max, integer zero point), scales stored
  as such: 18.5 / 20.5 bytes per 32-wide int4 row.

Either way every element is within half a step of its row.

Narrow tables (a per-item bias ``[V, 1]``, a few context columns) would cost more as padded blocks
than as plain bytes — a ``[V, 1]`` int4 row padded to 16 columns is 9 bytes, twice its fp32 value —
so a table whose int8 row is no larger than its block row is stored int8 with one symmetric scale per
column (`narrow_table`): ``Gather`` of the int8 table, then ``DequantizeLinear`` of the looked-up rows
(1 byte per value in the file and in RAM, within half a step of its column). The kernel dequantizes the looked-up
rows only: the table stays packed in memory at run time (file size ≈ resident size of the table).

``dense_bits=4`` also writes every large constant MatMul/Gemm weight as ``com.microsoft.MatMulNBits``
(`onnx_dense`, with the float fallback of `onnx_dense.int4_matmuls` when rows are given) and the W / R
weights of GRU / RNN ops as int8 behind a DequantizeLinear (file int8, RAM fp32 after ORT folds it).

Float tables with identical content (an exporter that copies a shared table per lookup) are
merged first, so every Gather of one table reads the one quantized initializer.

Examples:
    >>> art = OnnxEmbeddingPass().run("fused.fp32.onnx", OnnxEmbeddingConfig(bits=4), "out")  # doctest: +SKIP
    >>> art.details["embedding_tables"][0]["gathers"]                                        # doctest: +SKIP
    2
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConverterConfigError, expected
from ..mixed_precision import DEFAULT_SHIFT_BUDGET, check_shift_budget
from ..pipeline import ExportedArtifact, Pass
from .onnx_dense import set_nodes

logger = logging.getLogger(__name__)

BITS = (4, 8)
SCALE_TYPES = ("log8", "float16", "float32")
MIN_BLOCK = 16
MS_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class OnnxEmbeddingConfig:
    """Args:
        bits: 4 (uint4 rows) or 8 (uint8 rows).
        scale_type: ``log8`` (symmetric rows, int8 log-coded scales; smallest), ``float16`` (asymmetric
            rows; the lookup is cast back to fp32) or ``float32`` (asymmetric rows).
        min_rows: tables with fewer rows stay float (a handful of hour-of-day rows is not worth a kernel).
        keep_float: initializer names of tables left in float (accuracy-aware fallback).
        data: optional rows ``.npz`` with ``labels``: the ΔAUC the tables cost (vs the input graph)
            is recorded as ``details["table_delta_auc"]`` (the quantize pass's fallback counts it).
        sensitivity_rows: rows (evenly spread over ``data``) scored for that ΔAUC.
        dense_bits: ``4``: large constant MatMul/Gemm weights become 4-bit ``MatMulNBits``, and the W / R
            weights of recurrent ops no ORT quantizer covers (GRU, RNN) int8 behind DequantizeLinear (`onnx_dense`).
        dense_budget: with ``data``: largest |ΔAUC| (tables + 4-bit weights vs the input graph); over
            it the most sensitive weights stay as they were (float, for the later int8 pass).
        dense_shift_budget: with ``dense_budget``: largest mean |Δp| of the same graph when it scores
            probabilities (``None``: ΔAUC alone); see `onnx_dense.int4_matmuls`.
    """

    bits: int = 4
    scale_type: str = "log8"
    min_rows: int = 32
    keep_float: tuple[str, ...] = ()
    data: str | None = None
    sensitivity_rows: int = 4096
    dense_bits: int | None = None
    dense_budget: float | None = None
    dense_shift_budget: float | None = DEFAULT_SHIFT_BUDGET

    def __post_init__(self):
        if self.bits not in BITS:
            raise ConverterConfigError(expected(f"embedding bits in {BITS}", self.bits))
        if self.scale_type not in SCALE_TYPES:
            raise ConverterConfigError(expected(f"a scale type in {SCALE_TYPES}", self.scale_type))
        if not isinstance(self.min_rows, int) or self.min_rows < 1:
            raise ConverterConfigError(expected("min_rows as an int >= 1", self.min_rows))
        if self.dense_bits not in (None, 4):
            raise ConverterConfigError(expected("dense_bits None or 4", self.dense_bits))
        if self.dense_budget is not None and (isinstance(self.dense_budget, bool) or
                                              not 0 <= float(self.dense_budget) < 1):
            raise ConverterConfigError(expected("dense_budget in [0, 1)", self.dense_budget))
        check_shift_budget(self.dense_shift_budget)


def block_size(dim: int) -> int:
    """The kernel's block: ``dim`` rounded up to a power of two, at least 16."""
    return max(MIN_BLOCK, 1 << (int(dim) - 1).bit_length())


def quantize_rows(table: np.ndarray, bits: int, scale_dtype=np.float32):
    """Row-wise asymmetric quantization of ``table [V, D]`` padded to ``block_size(D)`` columns.

    Returns:
        ``(q uint8 [V, B], scales [V, 1], zero_points uint8 [V, 1])`` with ``table ≈ (q - zp) * scale``.
    """
    table = np.asarray(table, dtype=np.float32)
    rows, dim = table.shape
    padded = np.zeros((rows, block_size(dim)), np.float32)
    padded[:, :dim] = table
    top = float(2 ** bits - 1)
    low = np.minimum(padded.min(axis=1), 0.0)         # 0 representable: the zero padding is exact
    high = np.maximum(padded.max(axis=1), 0.0)
    scale = ((high - low) / top).astype(scale_dtype).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    zero = np.clip(np.round(-low / scale), 0, top)
    q = np.clip(np.round(padded / scale[:, None]) + zero[:, None], 0, top).astype(np.uint8)
    return q, scale.reshape(rows, 1).astype(scale_dtype), zero.reshape(rows, 1).astype(np.uint8)


def dequantize_rows(q: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, dim: int) -> np.ndarray:
    """The float rows a `quantize_rows` result stands for (what the kernel returns), ``[V, dim]``."""
    return ((q.astype(np.float32) - zero_points.astype(np.float32)) * scales.astype(np.float32))[:, :dim]


def _int_tensor(name: str, values: np.ndarray, bits: int, signed: bool = False):
    from onnx import TensorProto, helper, numpy_helper

    if bits == 8:
        return numpy_helper.from_array(values.astype(np.uint8), name)
    flat = values.astype(np.int8 if signed else np.uint8).reshape(-1).view(np.uint8)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    packed = (flat[0::2] & 0x0F) | ((flat[1::2] & 0x0F) << 4)       # low nibble first
    kind = TensorProto.INT4 if signed else TensorProto.UINT4
    return helper.make_tensor(name, kind, list(values.shape), packed.tobytes(), raw=True)


def _log8_table(graph, name: str, array: np.ndarray, bits: int) -> tuple[list, list, int]:
    """``(GatherBlockQuantized inputs after the ids, nodes computing them, stored bytes)`` of a
    ``log8`` table (see the module doc); the table is padded to ``block_size`` columns."""
    from onnx import TensorProto, helper, numpy_helper

    from .rowwise import quantize_rows

    rows, dim = array.shape
    padded = np.zeros((rows, block_size(dim)), np.float32)
    padded[:, :dim] = array
    q, codes, base_log, step = quantize_rows(padded, bits)
    base = f"{name}_q{bits}"
    data = _int_tensor(base, q, 4, signed=True) if bits == 4 else \
        numpy_helper.from_array((q.astype(np.int16) + 128).astype(np.uint8), base)
    graph.initializer.extend([data, numpy_helper.from_array(codes.reshape(rows, 1), base + "_scale_code"),
                              numpy_helper.from_array(np.array(step, np.float32), base + "_scale_step"),
                              numpy_helper.from_array(np.array(base_log, np.float32), base + "_scale_base")])
    nodes = [helper.make_node("Cast", [base + "_scale_code"], [base + "_scale_f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", [base + "_scale_f", base + "_scale_step"], [base + "_scale_m"]),
             helper.make_node("Add", [base + "_scale_m", base + "_scale_base"], [base + "_scale_log"]),
             helper.make_node("Exp", [base + "_scale_log"], [base + "_scale"])]
    inputs = [base + "_scale"]
    if bits == 8:
        graph.initializer.append(numpy_helper.from_array(np.array([rows, 1], np.int64), base + "_zp_shape"))
        nodes.append(helper.make_node("ConstantOfShape", [base + "_zp_shape"], [base + "_zero_point"],
                                      value=helper.make_tensor("zp", TensorProto.UINT8, [1], [128])))
        inputs.append(base + "_zero_point")
    return inputs, nodes, int(q.size * bits // 8 + codes.size + 8)


def is_narrow(dim: int, bits: int) -> bool:
    """Whether a ``dim``-wide table, padded to a block, is smaller as int8 columns than as ``bits``-bit
    block rows with a one-byte scale code (a table as wide as a block keeps its per-row scales)."""
    return dim < MIN_BLOCK and dim * 8 < block_size(dim) * bits + 8


def narrow_table(graph, name: str, array: np.ndarray) -> tuple[str, list, int]:
    """Store ``array [V, D]`` as int8 columns (see the module doc): ``(data name, DequantizeLinear
    inputs after the looked-up rows, stored bytes)``. One column takes a scalar scale (per tensor)."""
    from onnx import numpy_helper

    from .rowwise import symmetric_columns

    q, scales = symmetric_columns(array, 8, axis=1)       # one scale per column
    base = f"{name}_c8"
    scale = scales.reshape(()) if scales.size == 1 else scales
    graph.initializer.extend([numpy_helper.from_array(q, base),
                              numpy_helper.from_array(scale, base + "_scale"),
                              numpy_helper.from_array(np.zeros(scale.shape, np.int8), base + "_zero_point")])
    return base, [base + "_scale", base + "_zero_point"], int(q.nbytes + scales.nbytes + scales.size)


def _merge_identical_tables(graph, candidates: dict) -> dict[str, str]:
    """Point every Gather at the first of identical float tables; returns ``{dropped: kept}``."""
    seen: dict[str, str] = {}
    merged: dict[str, str] = {}
    for name, array in candidates.items():
        digest = hashlib.sha256(array.tobytes() + str(array.shape).encode()).hexdigest()
        if digest in seen:
            merged[name] = seen[digest]
        else:
            seen[digest] = name
    for node in graph.node:
        node.input[:] = [merged.get(n, n) for n in node.input]
    return merged


def quantize_embedding_gathers(proto, config: OnnxEmbeddingConfig) -> list[dict]:
    """Rewrite ``proto`` in place; returns one record per quantized table (name, shape, gathers, bytes)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits
               and next((a.i for a in n.attribute if a.name == "axis"), 0) == 0]
    tables = {}
    for node in gathers:
        tensor = inits[node.input[0]]
        if tensor.data_type == TensorProto.FLOAT and len(tensor.dims) == 2 and tensor.name not in tables:
            tables[tensor.name] = numpy_helper.to_array(tensor)
    merged = _merge_identical_tables(graph, tables)
    scale_dtype = np.float16 if config.scale_type == "float16" else np.float32
    records, consts = [], {}
    new_nodes = []
    done: dict[str, tuple] = {}
    for node in graph.node:
        name = node.input[0] if node.op_type == "Gather" else None
        array = tables.get(name) if name and name not in merged else None
        if array is None or array.shape[0] < config.min_rows or name in config.keep_float or \
                next((a.i for a in node.attribute if a.name == "axis"), 0) != 0:
            new_nodes.append(node)
            continue
        rows, dim = array.shape
        block = block_size(dim)
        narrow = is_narrow(dim, config.bits)
        if narrow:
            if name not in done:
                base, extra, stored = narrow_table(graph, name, array)
                done[name] = (base, extra)
                records.append({"table": name, "rows": int(rows), "dim": int(dim), "block_size": None, "bits": 8,
                                "scale_type": "int8_per_column", "gathers": 0, "bytes_float": int(array.nbytes),
                                "bytes_quantized": stored})
            base, extra = done[name]
            next(r for r in records if r["table"] == name)["gathers"] += 1
            step = f"{node.output[0]}_c8"
            new_nodes.append(helper.make_node("Gather", [base, node.input[1]], [step], axis=0))
            new_nodes.append(helper.make_node("DequantizeLinear", [step] + list(extra), [node.output[0]],
                                              **({"axis": -1} if dim > 1 else {})))
            continue
        if name not in done:
            base = f"{name}_q{config.bits}"
            if config.scale_type == "log8":
                extra, scale_nodes, stored = _log8_table(graph, name, array, config.bits)
                new_nodes.extend(scale_nodes)
            else:
                q, scales, zeros = quantize_rows(array, config.bits, scale_dtype)
                graph.initializer.extend([_int_tensor(base, q, config.bits),
                                          numpy_helper.from_array(scales, base + "_scale"),
                                          _int_tensor(base + "_zero_point", zeros, config.bits)])
                extra = [base + "_scale", base + "_zero_point"]
                stored = int(q.size * config.bits // 8 + scales.nbytes + zeros.size * config.bits // 8)
            done[name] = (base, extra)
            records.append({"table": name, "rows": int(rows), "dim": int(dim), "block_size": block,
                            "bits": config.bits, "scale_type": config.scale_type, "gathers": 0,
                            "bytes_float": int(array.nbytes), "bytes_quantized": stored})
        base, extra = done[name]
        record = next(r for r in records if r["table"] == name)
        record["gathers"] += 1
        ids = node.input[1]
        out = node.output[0]
        step = f"{out}_gbq"
        new_nodes.append(helper.make_node("GatherBlockQuantized", [base, ids] + list(extra),
                                          [step], domain=MS_DOMAIN, gather_axis=0, quantize_axis=1,
                                          block_size=block, bits=config.bits))
        # contrib ops have no ONNX shape inference: typing their output lets it reach the ops downstream
        graph.value_info.append(helper.make_tensor_value_info(
            step, TensorProto.FLOAT16 if scale_dtype == np.float16 else TensorProto.FLOAT, None))
        if scale_dtype == np.float16:
            new_nodes.append(helper.make_node("Cast", [step], [step + "_f32"], to=TensorProto.FLOAT))
            step += "_f32"
        if block != dim:
            for key, value in (("starts", 0), ("ends", dim), ("axes", -1)):
                cname = f"edgerec_slice_{key}_{value}"
                if cname not in consts:
                    consts[cname] = numpy_helper.from_array(np.array([value], np.int64), cname)
            new_nodes.append(helper.make_node("Slice", [step, "edgerec_slice_starts_0", f"edgerec_slice_ends_{dim}",
                                                        "edgerec_slice_axes_-1"], [out]))
        else:
            new_nodes.append(helper.make_node("Identity", [step], [out]))
    graph.initializer.extend(consts.values())
    set_nodes(proto, new_nodes, microsoft_ops=bool(records))
    return records


class OnnxEmbeddingPass(Pass):
    """Row-wise int4/int8 tables through ``com.microsoft.GatherBlockQuantized`` (see the module doc)."""

    name = "onnx_embedding"
    version = 7
    Config = OnnxEmbeddingConfig
    path_fields = ("data",)
    accepts = ("onnx",)

    def _run_impl(self, source: ExportedArtifact, config: OnnxEmbeddingConfig, out_dir: Path) -> ExportedArtifact:
        import onnx

        from .onnx import graph_specs

        proto = onnx.load(source.path)
        records = quantize_embedding_gathers(proto, config)
        if not records:
            raise ConverterConfigError(expected(f"a Gather of a constant 2-D float table with >= {config.min_rows} "
                                                "rows to quantize", "none in the graph"))
        dense = None
        if config.dense_bits:
            from .onnx_dense import int4_matmuls, int8_recurrent_weights

            dense = int4_matmuls(proto, reference=Path(source.path), data=config.data, budget=config.dense_budget,
                                 shift_budget=config.dense_shift_budget)
            dense["recurrent_int8"] = int8_recurrent_weights(proto)
        onnx.checker.check_model(proto)
        out = out_dir / f"{source.part}.tables{config.bits}.onnx"
        out.write_bytes(proto.SerializeToString())
        inputs, outputs = graph_specs(proto)
        for r in records:
            logger.info("table %s [%d x %d]: %d Gather(s) -> one %d-bit table (%.1f%% of its fp32 bytes)",
                        r["table"], r["rows"], r["dim"], r["gathers"], r["bits"],
                        100.0 * r["bytes_quantized"] / r["bytes_float"])
        details = {**self.carried_details(source), **{k: v for k, v in source.details.items() if k == "opset"},
                   "embedding_bits": config.bits, "embedding_tables": records,
                   "embedding_kernel": "com.microsoft.GatherBlockQuantized (table stays packed at run time)",
                   "size_bytes": out.stat().st_size}
        if dense is not None:
            details["dense_int4"] = dense
            details["dense_kernel"] = "com.microsoft.MatMulNBits (weights stay packed at run time)"
        if config.data:
            details["table_delta_auc"] = _table_delta_auc(Path(source.path), out, config)
        return ExportedArtifact(path=str(out), format="onnx", precision="int4" if config.bits == 4 else "int8",
                                part=source.part, inputs=inputs, outputs=outputs, details=details)


def _table_delta_auc(before: Path, after: Path, config: OnnxEmbeddingConfig) -> float | None:
    """AUC(after) - AUC(before) on the labelled rows of ``config.data`` (None: the graph scores no rows)."""
    from edgerec.runtime.metrics import auc

    from .onnx_fallback import graph_scores, scoring_rows

    inputs, labels = scoring_rows(config.data, before, config.sensitivity_rows)
    reference = graph_scores(before, inputs)
    if reference.shape != labels.shape:          # not a score per row (a user encoder): nothing to rank
        return None
    return float(auc(labels, graph_scores(after, inputs)) - auc(labels, reference))
