"""check_tensorrt_ready on hand-built graphs (each rule) and on real quantized graphs (good and bad)."""
from __future__ import annotations

import numpy as np
import pytest

from edgerec.converters.errors import ConverterConfigError


def qdq_graph(zero_point=0, zp_dtype=np.int8, shared=False, quantized_table=False, qoperator=False):
    """x[B,4] → Q → DQ → MatMul(W) → y; optional second consumer of the DQ, a Gather on a
    quantized table, and a QOperator MatMulInteger."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "scale"),
             numpy_helper.from_array(np.array(zero_point, zp_dtype), "zp"),
             numpy_helper.from_array(np.ones((4, 2), np.float32), "W")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "scale", "zp"], ["xdq"], name="dq_x"),
             helper.make_node("MatMul", ["xdq", "W"], ["y"], name="matmul")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])]
    if shared:
        nodes.append(helper.make_node("Relu", ["xdq"], ["r"], name="relu"))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["batch", 4]))
    if quantized_table:
        inits += [numpy_helper.from_array(np.ones((10, 4), np.int8), "table_q"),
                  numpy_helper.from_array(np.array(0, np.int8), "zp_t")]
        nodes += [helper.make_node("DequantizeLinear", ["table_q", "scale", "zp_t"], ["table"], name="dq_table"),
                  helper.make_node("Gather", ["table", "ids"], ["emb"], name="embedding_lookup")]
        inputs.append(helper.make_tensor_value_info("ids", TensorProto.INT32, ["batch"]))
        outputs.append(helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["batch", 4]))
    if qoperator:
        inits += [numpy_helper.from_array(np.ones((4, 2), np.int8), "Wq")]
        nodes += [helper.make_node("DynamicQuantizeLinear", ["x"], ["xu", "xs", "xz"], name="dql"),
                  helper.make_node("MatMulInteger", ["xu", "Wq", "xz"], ["yi"], name="mmi")]
        outputs.append(helper.make_tensor_value_info("yi", TensorProto.INT32, ["batch", 2]))
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def rules(model):
    from edgerec.converters.passes.tensorrt import check_tensorrt_ready

    return sorted((v.rule, v.node) for v in check_tensorrt_ready(model))


def test_clean_symmetric_graph_has_no_violation(tmp_path):
    import onnx

    path = tmp_path / "good.onnx"
    onnx.save(qdq_graph(), str(path))
    assert rules(qdq_graph()) == [] and rules(path) == []


def test_every_violation_is_reported():
    found = rules(qdq_graph(zero_point=128, zp_dtype=np.uint8, shared=True, quantized_table=True, qoperator=True))
    assert ("nonzero_zero_point", "q_x") in found and ("nonzero_zero_point", "dq_x") in found
    assert ("uint8_quantization", "q_x") in found
    assert ("shared_qdq", "dq_x") in found
    assert ("quantized_gather", "embedding_lookup") in found
    assert ("qoperator_op", "dql") in found and ("qoperator_op", "mmi") in found


def test_violation_messages_follow_house_style():
    from edgerec.converters.passes.tensorrt import check_tensorrt_ready

    for violation in check_tensorrt_ready(qdq_graph(zero_point=3)):
        assert violation.message.startswith("Expected ") and ", received: " in violation.message
        assert violation.to_dict()["severity"] == "error"


def test_dedicate_qdq_pairs_fixes_shared_dq():
    import onnx

    from edgerec.converters.passes.tensorrt import dedicate_qdq_pairs

    model = qdq_graph(shared=True)
    assert ("shared_qdq", "dq_x") in rules(model)
    assert dedicate_qdq_pairs(model) == 1
    onnx.checker.check_model(model)
    assert rules(model) == []
    assert [n.op_type for n in model.graph.node].count("QuantizeLinear") == 2


def test_missing_file_is_a_typed_error(tmp_path):
    from edgerec.converters.passes.tensorrt import check_tensorrt_ready

    with pytest.raises(ConverterConfigError, match="existing .onnx file"):
        check_tensorrt_ready(tmp_path / "none.onnx")


@pytest.mark.slow
def test_real_graphs_good_and_bad(model_dir, rows_npz, tmp_path):
    from edgerec.converters.passes.onnx import OnnxExportConfig, OnnxExportPass
    from edgerec.converters.passes.onnx_quant import OrtQuantizeConfig, OrtQuantizePass
    from edgerec.converters.passes.tensorrt import check_tensorrt_ready
    from edgerec.converters.pipeline import PassRunner

    runner = PassRunner(tmp_path / "cache")
    fp32 = runner.run(OnnxExportPass(), model_dir / "mha.keras", OnnxExportConfig())
    good = runner.run(OrtQuantizePass(), fp32, OrtQuantizeConfig(mode="tensorrt", data=str(rows_npz)))
    assert [v for v in check_tensorrt_ready(good.path) if v.severity == "error"] == []
    static = runner.run(OrtQuantizePass(), fp32, OrtQuantizeConfig(mode="static_qdq", data=str(rows_npz)))
    bad = {v.rule for v in check_tensorrt_ready(static.path)}
    assert {"nonzero_zero_point", "uint8_quantization", "quantized_gather"} <= bad
    dynamic = runner.run(OrtQuantizePass(), fp32, OrtQuantizeConfig(mode="dynamic"))
    assert "qoperator_op" in {v.rule for v in check_tensorrt_ready(dynamic.path)}
