"""4-bit dense weights in ONNX: constant MatMul / Gemm weights become ``com.microsoft.MatMulNBits``.

Kernel facts (onnxruntime 1.32, CPU provider, measured): ``MatMulNBits`` takes float ``A [..., K]``,
``B`` packed as ``uint8 [N, K / block, block / 2]`` (4-bit values along K, low nibble first),
fp32 ``scales [N * K / block]`` and, without ``zero_points``, the zero point 8. The weight stays
packed in memory and is dequantized block by block inside the kernel (file ≈ RAM for the weight).

Each block of ``block`` values along K (the largest power of two <= K, between 16 and 128) is
quantized symmetrically (``q = round(w / s) + 8``, ``s = max|block| / 7``): every weight is within
half a step of its block. Weights with fewer than ``MIN_ELEMENTS`` values and the score head's
MatMul/Gemm (the chain back from each output, see `onnx_quant_prep.score_head_nodes`) stay as they were.

`int4_matmuls` with labelled rows is accuracy-aware: it ranks the weights by the mean |Δp| each one
costs alone, then keeps the most sensitive ones unchanged (`mixed_precision.fallback_until_within`)
until |ΔAUC| against the reference graph fits the budget *and*, for probability outputs, the mean
|Δp| fits ``shift_budget`` (`mixed_precision.ScoreBudget` says why both).

Examples:
    >>> records = int4_matmuls(proto)                 # doctest: +SKIP
    >>> records["rewritten"][0]["shape"]              # doctest: +SKIP
    [128, 64]
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from ..mixed_precision import DEFAULT_SHIFT_BUDGET

logger = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"
MIN_ELEMENTS = 1024
MIN_BLOCK, MAX_BLOCK = 16, 128
ZERO_POINT = 8



def set_nodes(proto, nodes, microsoft_ops: bool = False) -> None:
    """Make ``nodes`` the graph's nodes, drop the initializers no node reads any more and, when
    ``microsoft_ops``, import the com.microsoft opset the contrib ops need."""
    from onnx import helper

    graph = proto.graph
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for nd in graph.node for i in nd.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if microsoft_ops and not any(o.domain == MS_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))

def weight_block(k: int) -> int:
    """The block along K: the largest power of two <= ``k``, clipped to [16, 128]."""
    return int(min(MAX_BLOCK, max(MIN_BLOCK, 1 << (max(int(k), 1).bit_length() - 1))))


def quantize_blocks(weight_nk: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """``(packed uint8 [N, blocks, block / 2], scales float32 [N * blocks])`` of ``weight_nk [N, K]``."""
    n, k = weight_nk.shape
    blocks = -(-k // block)
    padded = np.zeros((n, blocks * block), np.float32)
    padded[:, :k] = weight_nk
    grouped = padded.reshape(n, blocks, block)
    peak = np.abs(grouped).max(axis=2)
    scales = np.where(peak > 0, peak / 7.0, 1.0).astype(np.float32)
    q = (np.clip(np.rint(grouped / scales[..., None]), -7, 7) + ZERO_POINT).astype(np.uint8)
    packed = (q[..., 0::2] & 0x0F) | ((q[..., 1::2] & 0x0F) << 4)
    return packed.astype(np.uint8), scales.reshape(-1)


def dequantize_blocks(packed: np.ndarray, scales: np.ndarray, k: int) -> np.ndarray:
    """The ``[N, K]`` float weight `quantize_blocks` stands for."""
    n, blocks, half = packed.shape
    q = np.empty((n, blocks, half * 2), np.float32)
    q[..., 0::2], q[..., 1::2] = packed & 0x0F, packed >> 4
    return ((q - ZERO_POINT) * scales.reshape(n, blocks, 1)).reshape(n, -1)[:, :k]


def _attr(node, name, default):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _head_outputs(proto) -> set[str]:
    from .onnx_quant_prep import HEAD_OPS

    producer = {o: n for n in proto.graph.node for o in n.output}
    constant = {i.name for i in proto.graph.initializer}
    found = set()
    for output in proto.graph.output:
        node = producer.get(output.name)
        while node is not None and node.op_type in HEAD_OPS + ("MatMul", "Gemm"):
            if node.op_type in ("MatMul", "Gemm"):
                found.add(node.output[0])
                break
            moving = [i for i in node.input if i and i not in constant]
            node = producer.get(moving[0]) if len(moving) == 1 else None
    return found


def candidates(proto) -> dict[str, np.ndarray]:
    """``{output name: weight [N, K]}`` of every MatMul/Gemm a 4-bit weight can serve (see the module doc)."""
    inits = {t.name: t for t in proto.graph.initializer}
    head = _head_outputs(proto)
    # a weight may reach its MatMul through a constant Reshape (multi-head kernels [D, heads, d])
    reshaped = {n.output[0]: n for n in proto.graph.node if n.op_type == "Reshape" and n.input[0] in inits
                and len(n.input) > 1 and n.input[1] in inits}
    found = {}
    for node in proto.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.output[0] in head:
            continue
        weight = _constant_weight(node.input[1], inits, reshaped)
        if weight is None:
            continue
        has_bias = len(node.input) > 2 and bool(node.input[2])
        if node.op_type == "Gemm" and (_attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0 or
                                       has_bias and _attr(node, "beta", 1.0) != 1.0):   # beta scales C only
            continue
        weight_nk = weight if node.op_type == "Gemm" and _attr(node, "transB", 0) else weight.T
        if weight.size >= MIN_ELEMENTS and weight_nk.shape[1] >= MIN_BLOCK:
            found[node.output[0]] = weight_nk
    return found


def _constant_weight(name: str, inits: dict, reshaped: dict) -> np.ndarray | None:
    """The 2-D float value of ``name``: an initializer, or a Reshape of one to a constant 2-D shape."""
    from onnx import TensorProto, numpy_helper

    if name in reshaped:
        node = reshaped[name]
        tensor, shape = inits[node.input[0]], numpy_helper.to_array(inits[node.input[1]])
        if tensor.data_type != TensorProto.FLOAT or len(shape) != 2 or np.any(shape <= 0):
            return None
        value = numpy_helper.to_array(tensor).astype(np.float32)
        return value.reshape([int(d) for d in shape]) if value.size == int(np.prod(shape)) else None
    tensor = inits.get(name)
    if tensor is None or tensor.data_type != TensorProto.FLOAT or len(tensor.dims) != 2:
        return None
    return numpy_helper.to_array(tensor).astype(np.float32)


def rewrite(proto, weights: dict[str, np.ndarray]) -> list[dict]:
    """Replace the MatMul/Gemm writing each output of ``weights`` by ``MatMulNBits`` (+ ``Add`` of a
    Gemm bias), in place; unused float weights are dropped. Returns one record per weight."""
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    records, nodes = [], []
    for node in graph.node:
        weight = weights.get(node.output[0]) if node.op_type in ("MatMul", "Gemm") else None
        if weight is None:
            nodes.append(node)
            continue
        n, k = weight.shape
        block = weight_block(k)
        packed, scales = quantize_blocks(weight, block)
        base = f"{node.input[1]}_nbits_{len(records)}"
        graph.initializer.extend([numpy_helper.from_array(packed, base), numpy_helper.from_array(scales, base + "_scale")])
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        out = node.output[0] + "_nobias" if bias else node.output[0]
        nodes.append(helper.make_node("MatMulNBits", [node.input[0], base, base + "_scale"], [out], domain=MS_DOMAIN,
                                      K=int(k), N=int(n), bits=4, block_size=block))
        graph.value_info.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))   # see onnx_embedding
        if bias:
            nodes.append(helper.make_node("Add", [out, bias], [node.output[0]]))
        records.append({"output": node.output[0], "shape": [int(k), int(n)], "block_size": block,
                        "bytes_float": int(weight.size * 4), "bytes_quantized": int(packed.size + scales.nbytes)})
    used = {i for nd in nodes for i in nd.input} | {o.name for o in graph.output}
    constants = {t.name for t in graph.initializer}
    # the constant Reshapes that fed a rewritten weight are dead now
    nodes = [nd for nd in nodes if nd.op_type != "Reshape" or nd.output[0] in used or
             not all(i in constants for i in nd.input)]
    set_nodes(proto, nodes, microsoft_ops=bool(records))
    return records


def int4_matmuls(proto, *, reference: Path | None = None, data: str | None = None, budget: float | None = None,
                 rows: int = 4096, fit_rows: int = 32768, shift_budget: float | None = DEFAULT_SHIFT_BUDGET):
    """Rewrite ``proto``'s dense weights to 4 bits, in place; returns the details record.

    Args:
        proto: the graph (its tables may already be quantized).
        reference: the graph ΔAUC is measured against (with ``data`` and ``budget``).
        data: labelled rows ``.npz``; without it (or without a score per row) every candidate is rewritten.
        budget: largest |ΔAUC| of the rewritten graph vs ``reference`` on ``fit_rows`` rows of ``data``
            (evenly spread; as in `OrtQuantizeConfig`, a ΔAUC on a few thousand ranking rows is noise).
        rows: of those, the evenly spread rows each weight's sensitivity (mean |Δp| alone) is scored on.
        shift_budget: largest mean |Δp| on the ``fit_rows`` rows when ``reference`` scores probabilities (all in
            [0, 1]); ``None`` bounds ΔAUC alone (`mixed_precision.ScoreBudget`).
    """
    import onnx

    found = candidates(proto)
    if not found:
        return {"rewritten": [], "kept": []}
    if data is None or budget is None or reference is None:
        return {"rewritten": rewrite(proto, found), "kept": []}
    from ..mixed_precision import ScoreBudget, fallback_until_within
    from .onnx_fallback import graph_scores, scoring_rows

    inputs, labels = scoring_rows(data, Path(reference), max(rows, fit_rows))
    base_scores = graph_scores(Path(reference), inputs)
    every = max(1, len(labels) // rows)
    sample = {name: value[::every] for name, value in inputs.items()}
    if base_scores.shape != labels.shape:
        return {"rewritten": rewrite(proto, found), "kept": [], "skipped": "the first output is not one score per row"}
    original = proto.SerializeToString()
    with tempfile.TemporaryDirectory(prefix="edgerec-dense4-") as tmp:
        def build(kept: tuple) -> Path:
            trial = onnx.load_from_string(original)
            rewrite(trial, {name: w for name, w in found.items() if name not in kept})
            path = Path(tmp) / f"trial_{len(kept)}_{abs(hash(kept))}.onnx"
            path.write_bytes(trial.SerializeToString())
            return path

        start = graph_scores(build(tuple(found)), sample)     # nothing rewritten: the tables alone

        def ranked() -> list:
            cost = {name: float(np.mean(np.abs(graph_scores(build(tuple(n for n in found if n != name)), sample)
                                               - start))) for name in found}
            return sorted(cost, key=lambda name: -cost[name])

        bound = ScoreBudget(labels, base_scores, float(budget), shift_budget)
        measured: dict[str, dict] = {}

        def measure(path: Path) -> tuple[float, int]:
            error, measured[str(path)] = bound.error(graph_scores(path, inputs))
            return error, path.stat().st_size

        result = fallback_until_within(ranked, build, measure, bound.fallback_budget)
        chosen = measured[str(result.artifact)]
    kept = set(result.kept_float)
    records = rewrite(proto, {name: w for name, w in found.items() if name not in kept})
    return {"rewritten": records, "kept": sorted(kept), "fallback": result.to_dict(), **chosen, **bound.to_dict()}


RECURRENT_UNQUANTIZED = ("GRU", "RNN")     # ops no ORT quantizer rewrites (LSTM has DynamicQuantizeLSTM)


def int8_recurrent_weights(proto, op_types=RECURRENT_UNQUANTIZED) -> list[dict]:
    """Store the constant W / R weights of recurrent ops ORT cannot quantize as int8 behind a
    per-channel ``DequantizeLinear`` (symmetric, one scale per gate row), in place.

    The op still computes in float: ONNX Runtime folds the DequantizeLinear at session creation, so
    the file holds int8 but RAM holds the fp32 weights (a dequantize-on-load path). Returns one record
    per weight.
    """
    from onnx import TensorProto, helper, numpy_helper

    from .rowwise import symmetric_columns

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    records, nodes, done = [], [], {}
    for node in graph.node:
        if node.op_type in op_types:
            for position in (1, 2):                        # W, R: [directions, gates * hidden, inputs]
                name = node.input[position] if len(node.input) > position else ""
                tensor = inits.get(name)
                if tensor is None or tensor.data_type != TensorProto.FLOAT or len(tensor.dims) != 3:
                    continue
                if name not in done:
                    weight = numpy_helper.to_array(tensor).astype(np.float32)
                    flat = weight.reshape(-1, weight.shape[-1])
                    q, scales = symmetric_columns(flat, 8, axis=0)
                    base = f"{name}_int8"
                    graph.initializer.extend([
                        numpy_helper.from_array(q.reshape(weight.shape), base),
                        numpy_helper.from_array(scales, base + "_scale"),
                        numpy_helper.from_array(np.zeros(len(scales), np.int8), base + "_zero_point")])
                    # per-channel DequantizeLinear takes a 1-D scale on one axis: dequantize the [D*G, I]
                    # view, then restore the op's 3-D layout
                    shape = base + "_shape"
                    graph.initializer.append(numpy_helper.from_array(np.array(weight.shape, np.int64), shape))
                    flat_shape = base + "_flat_shape"
                    graph.initializer.append(numpy_helper.from_array(np.array(flat.shape, np.int64), flat_shape))
                    nodes += [helper.make_node("Reshape", [base, flat_shape], [base + "_flat"]),
                              helper.make_node("DequantizeLinear", [base + "_flat", base + "_scale", base + "_zero_point"],
                                               [base + "_deq"], axis=0),
                              helper.make_node("Reshape", [base + "_deq", shape], [base + "_float"])]
                    done[name] = base + "_float"
                    records.append({"weight": name, "op": node.op_type, "shape": [int(d) for d in weight.shape],
                                    "bytes_float": int(weight.nbytes), "bytes_int8": int(q.size + scales.nbytes)})
                node.input[position] = done[name]
        nodes.append(node)
    set_nodes(proto, nodes)
    return records
