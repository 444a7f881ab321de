"""Inspect an ONNX graph for what keeps TensorRT from building an explicit-precision int8 engine.

`check_tensorrt_ready(path)` returns EVERY violation (empty list = ready):

* ``qoperator_op``        — QOperator / dynamic-quantization ops TensorRT does not import
                            (QLinearMatMul, MatMulInteger, DynamicQuantizeLinear, QGemm, …);
* ``nonzero_zero_point``  — a Q/DQ zero point that is not 0 (TensorRT is symmetric only);
* ``uint8_quantization``  — a uint8 Q/DQ (TensorRT quantizes to int8, zero point 0);
* ``quantized_gather``    — a Gather whose data (embedding table) comes out of a DequantizeLinear
                            or is stored as an integer initializer;
* ``shared_qdq``          — one QuantizeLinear/DequantizeLinear output feeding several consumers
                            (quantize with ``DedicatedQDQPair``);
* ``int64_weights`` (warning) — int64 initializers larger than a shape vector: TensorRT casts
                            int64 to int32 and may refuse values out of int32 range.

`is_tensorrt_ready(artifact)` reads the verdict recorded on a manifest artifact (no graph walk).

Examples:
    >>> [v.rule for v in check_tensorrt_ready("fused.tensorrt.onnx")]   # doctest: +SKIP
    []
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ConverterConfigError, expected

QOPERATOR_OPS = frozenset({
    "QLinearMatMul", "QLinearConv", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
    "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearReduceMean",
    "QLinearSoftmax", "QLinearWhere", "QGemm", "QAttention", "QEmbedLayerNormalization",
    "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat", "DynamicQuantizeLinear",
    "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QuantizeBFP", "DequantizeBFP",
})
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
GATHER_OPS = ("Gather", "GatherElements", "GatherND")


@dataclass(frozen=True)
class Violation:
    """One reason TensorRT would refuse (or mis-build) the graph.

    Args:
        rule: short rule id (``nonzero_zero_point`` …).
        node: node name (or tensor name for initializer rules).
        op_type: the node's op type.
        message: what is wrong, house style.
        severity: ``error`` or ``warning``.
    """

    rule: str
    node: str
    op_type: str
    message: str
    severity: str = "error"

    def to_dict(self) -> dict:
        return asdict(self)


def is_tensorrt_ready(artifact) -> bool:
    """True for a symmetric-QDQ ONNX artifact from the ``tensorrt`` quantization mode with no
    error-severity ``details["tensorrt_violations"]`` (or one flagged ``details["tensorrt_ready"]``).

    Args:
        artifact: anything with ``format`` and ``details`` (a manifest `Artifact`, an `ExportedArtifact`).
    """
    details = artifact.details
    if artifact.format != "onnx":
        return False
    if "tensorrt_ready" in details:
        return bool(details["tensorrt_ready"])
    violations = details.get("tensorrt_violations", [])
    return details.get("quantization") == "tensorrt" and not any(
        v.get("severity", "error") == "error" for v in violations if isinstance(v, dict))


def check_tensorrt_ready(onnx_path: str | os.PathLike | object) -> list[Violation]:
    """All TensorRT-readiness violations of an ONNX model (path or ``ModelProto``)."""
    import onnx
    from onnx import numpy_helper

    if isinstance(onnx_path, (str, os.PathLike)):
        if not Path(onnx_path).is_file():
            raise ConverterConfigError(expected("an existing .onnx file", str(onnx_path)))
        proto = onnx.load(str(onnx_path))
    else:
        proto = onnx_path
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}
    producer, consumers = _graph_index(graph)
    graph_outputs = {o.name for o in graph.output}

    def value(name):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            for attr in consts[name].attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    found: list[Violation] = []
    for index, node in enumerate(graph.node):
        label = node.name or f"{node.op_type}_{index}"
        if node.op_type in QOPERATOR_OPS:
            found.append(Violation("qoperator_op", label, node.op_type, expected(
                "QDQ (QuantizeLinear/DequantizeLinear) quantization that TensorRT imports", node.op_type)))
        if node.op_type in QDQ_OPS:
            found.extend(_check_qdq(node, label, value, consumers, graph_outputs))
        if node.op_type in GATHER_OPS:
            found.extend(_check_gather(node, label, producer, inits))
    for init in graph.initializer:
        if init.data_type == onnx.TensorProto.INT64 and int(np.prod(init.dims or [1])) > 64:
            found.append(Violation("int64_weights", init.name, "initializer", expected(
                "int32 index/weight tensors (TensorRT casts int64 down)",
                f"int64 tensor of shape {list(init.dims)}"), severity="warning"))
    return found


def _check_qdq(node, label, value, consumers, graph_outputs) -> list[Violation]:
    found = []
    zero_point = value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if zero_point is not None:
        if np.any(zero_point != 0):
            found.append(Violation("nonzero_zero_point", label, node.op_type, expected(
                "zero point 0 (symmetric quantization)", f"{np.unique(zero_point).tolist()[:4]}")))
        if zero_point.dtype == np.uint8:
            found.append(Violation("uint8_quantization", label, node.op_type,
                                   expected("int8 quantization", "uint8")))
    users = consumers.get(node.output[0], []) if node.output else []
    fan_out = len(users) + (1 if node.output and node.output[0] in graph_outputs else 0)
    if fan_out > 1:
        found.append(Violation("shared_qdq", label, node.op_type, expected(
            "a dedicated Q/DQ pair per consumer (DedicatedQDQPair=True)",
            f"{fan_out} consumers: {[u.name or u.op_type for u in users][:4]}")))
    return found


def _check_gather(node, label, producer, inits) -> list[Violation]:
    import onnx

    found = []
    table = node.input[0] if node.input else ""
    source = producer.get(table)
    quantized_table = source is not None and source.op_type == "DequantizeLinear"
    if table in inits and inits[table].data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
        quantized_table = True
    if quantized_table:
        found.append(Violation("quantized_gather", label, node.op_type, expected(
            "a float embedding table for Gather (keep Gather out of op_types_to_quantize)",
            f"table '{table}' is quantized")))
    return found


def dedicate_qdq_pairs(proto) -> int:
    """Give every consumer of a shared DequantizeLinear its own Q→DQ pair (in place).

    ORT's ``DedicatedQDQPair`` only splits pairs among quantized consumers; float consumers of
    the same activation still share one DQ, which TensorRT's Q/DQ placement rules dislike.
    Returns the number of pairs added.
    """
    graph = proto.graph
    producer, consumers = _graph_index(graph)
    added = 0
    new_nodes = []
    for node in list(graph.node):
        if node.op_type != "DequantizeLinear" or not node.output:
            continue
        users = consumers.get(node.output[0], [])
        if len(users) < 2:
            continue
        quant = producer.get(node.input[0])
        duplicate_q = quant is not None and quant.op_type == "QuantizeLinear" and \
            len(consumers.get(quant.output[0], [])) == 1
        for index, user in enumerate(users[1:], start=1):
            dq = _copy_node(node, f"{node.name or node.output[0]}_dedicated_{index}")
            if duplicate_q:
                q = _copy_node(quant, f"{quant.name or quant.output[0]}_dedicated_{index}")
                q.output[0] = f"{quant.output[0]}_dedicated_{index}"
                dq.input[0] = q.output[0]
                new_nodes.append((quant, q))
            dq.output[0] = f"{node.output[0]}_dedicated_{index}"
            new_nodes.append((node, dq))
            user.input[:] = [dq.output[0] if n == node.output[0] else n for n in user.input]
            added += 1
    for anchor, extra in new_nodes:  # keep topological order: insert right after the original
        position = list(graph.node).index(anchor) + 1
        graph.node.insert(position, extra)
    return added


def _copy_node(node, name):
    from onnx import NodeProto

    copy = NodeProto()
    copy.CopyFrom(node)
    copy.name = name
    return copy


def _graph_index(graph):
    """``(producer, consumers)``: tensor name -> the node writing it / the nodes reading it."""
    producer = {out: node for node in graph.node for out in node.output}
    consumers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                consumers[name].append(node)
    return producer, consumers
