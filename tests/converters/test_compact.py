"""Compaction of converted files: smaller, public names kept, outputs bit-identical (TFLite at
two batch sizes, so intermediate shapes are re-inferred without their dropped signatures)."""
from __future__ import annotations

import numpy as np
import pytest

from edgerec.converters.pipeline import PassRunner

from .test_passes_tflite import FUSED_INPUTS, litert_predict


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fp32", "int8"])
def test_tflite_compaction_keeps_outputs_and_signature(model_dir, rows_npz, cache_dir, rows_for, mode):
    from ai_edge_litert.interpreter import Interpreter

    from edgerec.converters.passes.tflite import TFLiteConfig, TFLitePass

    runner = PassRunner(cache_dir)
    plain = runner.run(TFLitePass(), model_dir / "gru.keras", TFLiteConfig(mode=mode, data=str(rows_npz), compact=False))
    small = runner.run(TFLitePass(), model_dir / "gru.keras", TFLiteConfig(mode=mode, data=str(rows_npz)))
    assert small.details["size_bytes"] < plain.details["size_bytes"]
    assert small.details["converted_size_bytes"] == plain.details["size_bytes"]
    assert [(t.name, t.dtype, t.shape) for t in small.inputs] == [(t.name, t.dtype, t.shape) for t in plain.inputs]
    assert [(t.name, t.dtype, t.shape) for t in small.outputs] == [(t.name, t.dtype, t.shape) for t in plain.outputs]
    rows = rows_for(40, seed=5)
    for batch in (1, 40):
        want = litert_predict(plain.path, rows, FUSED_INPUTS["gru"], batch=batch)["score"]
        got = litert_predict(small.path, rows, FUSED_INPUTS["gru"], batch=batch)["score"]
        np.testing.assert_array_equal(got, want)
    details = Interpreter(model_path=small.path).get_tensor_details()
    named = [d["name"] for d in details if d["name"]]
    assert set(FUSED_INPUTS["gru"]) <= {n.split(":")[0].split("serving_default_")[-1] for n in named}
    assert len(named) < len(details)                     # intermediates lost their names


def _onnx_graph():
    from onnx import TensorProto, helper

    weight = helper.make_tensor("StatefulPartitionedCall/model/dense/MatMul/ReadVariableOp:0", TensorProto.FLOAT,
                                [3, 2], np.arange(6, dtype=np.float32).tolist())
    nodes = [helper.make_node("MatMul", ["x", weight.name], ["StatefulPartitionedCall/model/dense/MatMul:0"],
                              name="StatefulPartitionedCall/model/dense/MatMul"),
             helper.make_node("Relu", ["StatefulPartitionedCall/model/dense/MatMul:0"], ["y"],
                              name="StatefulPartitionedCall/model/dense/Relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])], [weight],
                              value_info=[helper.make_tensor_value_info(
                                  "StatefulPartitionedCall/model/dense/MatMul:0", TensorProto.FLOAT, ["batch", 2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_compaction_renames_internals_only():
    ort = pytest.importorskip("onnxruntime")
    from edgerec.converters.passes.onnx_compact import compact_onnx_names

    proto = _onnx_graph()
    before = proto.SerializeToString()
    assert compact_onnx_names(proto)
    after = proto.SerializeToString()
    assert len(after) < len(before) and not proto.graph.value_info
    assert [v.name for v in proto.graph.input] == ["x"] and [v.name for v in proto.graph.output] == ["y"]
    assert all(len(n) <= 3 for node in proto.graph.node for n in list(node.input) + list(node.output)
               if n not in ("x", "y"))
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    run = lambda data: ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_array_equal(run(after), run(before))


def _if_graph():
    """``y = relu(x @ W)`` when ``sum(x) > 0`` else ``x @ W``: both branches read outer names."""
    from onnx import TensorProto, helper

    weight = helper.make_tensor("StatefulPartitionedCall/model/dense/kernel:0", TensorProto.FLOAT, [3, 2],
                                np.arange(6, dtype=np.float32).tolist())
    product = "StatefulPartitionedCall/model/dense/MatMul:0"

    def branch(name, op):
        out = f"StatefulPartitionedCall/model/cond/{name}/out:0"
        return helper.make_graph([helper.make_node(op, [product], [out], name=f"cond/{name}/{op}")], name, [],
                                 [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", 2])])

    nodes = [helper.make_node("MatMul", ["x", weight.name], [product], name="dense/MatMul"),
             helper.make_node("ReduceSum", ["x"], ["StatefulPartitionedCall/model/sum:0"], keepdims=0),
             helper.make_node("Greater", ["StatefulPartitionedCall/model/sum:0", "StatefulPartitionedCall/zero:0"],
                              ["StatefulPartitionedCall/model/cond/pred:0"]),
             helper.make_node("If", ["StatefulPartitionedCall/model/cond/pred:0"], ["y"], name="cond",
                              then_branch=branch("then", "Relu"), else_branch=branch("else", "Identity"))]
    zero = helper.make_tensor("StatefulPartitionedCall/zero:0", TensorProto.FLOAT, [], [0.0])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])], [weight, zero])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_compaction_renames_inside_subgraphs_and_their_outer_references():
    import onnx

    ort = pytest.importorskip("onnxruntime")
    from edgerec.converters.passes.onnx_compact import compact_onnx_names

    proto = _if_graph()
    before = proto.SerializeToString()
    assert compact_onnx_names(proto)
    onnx.checker.check_model(proto)
    after = proto.SerializeToString()
    assert len(after) < len(before) and b"StatefulPartitionedCall" not in after
    assert [v.name for v in proto.graph.input] == ["x"] and [v.name for v in proto.graph.output] == ["y"]
    run = lambda data, x: ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    for sign in (1.0, -1.0):                      # each branch once
        x = sign * np.abs(np.random.default_rng(0).normal(size=(4, 3))).astype(np.float32)
        np.testing.assert_array_equal(run(after, x), run(before, x))
