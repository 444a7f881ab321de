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


def _onnx_graph(with_loop: bool = False):
    from onnx import TensorProto, helper

    weight = helper.make_tensor("StatefulPartitionedCall/model/dense/MatMul/ReadVariableOp:0", TensorProto.FLOAT,
                                [3, 2], np.arange(6, dtype=np.float32).tolist())
    nodes = [helper.make_node("MatMul", ["x", weight.name], ["StatefulPartitionedCall/model/dense/MatMul:0"],
                              name="StatefulPartitionedCall/model/dense/MatMul"),
             helper.make_node("Relu", ["StatefulPartitionedCall/model/dense/MatMul:0"], ["y"],
                              name="StatefulPartitionedCall/model/dense/Relu")]
    if with_loop:
        body = helper.make_graph([helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
                                 [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                                  helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
                                 [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])])
        nodes.append(helper.make_node("Loop", ["", ""], [], body=body))
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


def test_onnx_compaction_leaves_graphs_with_subgraphs_alone():
    from edgerec.converters.passes.onnx_compact import compact_onnx_names

    proto = _onnx_graph(with_loop=True)
    before = proto.SerializeToString()
    assert not compact_onnx_names(proto)
    assert proto.SerializeToString() == before
