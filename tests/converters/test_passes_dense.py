"""4-bit dense weights: ONNX MatMulNBits (hand-built graphs) and TFLite int4 FULLY_CONNECTED weights,
each checked for values (within the dequantized weight), size, the float score head and the
accuracy-aware fallback (a deliberately sensitive weight stays unchanged)."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgerec.converters.passes.onnx_dense import (candidates, dequantize_blocks, int4_matmuls,  # noqa: E402
                                                   quantize_blocks, weight_block)

K, H = 64, 48


def _mlp(path, *, sensitive: bool = False, seed: int = 0):
    """x [B, K] -> MatMul W1 [K, H] -> Relu -> Gemm(W2 [H, H], bias) -> Relu -> MatMul head [H, 1] -> Sigmoid.

    ``sensitive``: W1 row 0 (input feature 0, always 0 in the rows) holds +-5: harmless in float and
    in int8, but it sets every 4-bit scale of W1, which then rounds most real weights to zero."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(scale=0.3, size=(K, H)).astype(np.float32)
    if sensitive:
        w1[0] = 5.0 * np.sign(rng.normal(size=H))
    w2 = rng.normal(scale=0.3, size=(H, H)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(rng.normal(size=H).astype(np.float32) * 0.1, "b2"),
             numpy_helper.from_array(rng.normal(scale=0.3, size=(H, H)).astype(np.float32), "w3"),
             numpy_helper.from_array(rng.normal(scale=0.5, size=(H, 1)).astype(np.float32), "head")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"]), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Gemm", ["r1", "w2", "b2"], ["h2"]), helper.make_node("Relu", ["h2"], ["r2a"]),
             helper.make_node("Gemm", ["r2a", "w3"], ["h3"], beta=0.0, transB=1),     # no C: beta means nothing
             helper.make_node("Relu", ["h3"], ["r2"]),
             helper.make_node("MatMul", ["r2", "head"], ["logit"]), helper.make_node("Sigmoid", ["logit"], ["score"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path, {"w1": w1, "w2": w2, "w3": numpy_helper.to_array(inits[3])}


def _run(path_or_proto, x):
    source = path_or_proto.SerializeToString() if hasattr(path_or_proto, "graph") else str(path_or_proto)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0].ravel()


def _rows(path, model, n=3000, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, K)).astype(np.float32)
    x[:, 0] = 0.0
    p = _run(model, x)
    labels = (rng.random(n) < p).astype(np.float32)
    np.savez(path, x=x, labels=labels)
    return x, labels


def test_blocks_round_trip_within_half_a_step():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(10, 40)).astype(np.float32)
    block = weight_block(40)
    packed, scales = quantize_blocks(weight, block)
    assert block == 32 and packed.shape == (10, 2, 16) and scales.shape == (20,)
    back = dequantize_blocks(packed, scales, 40)
    step = np.repeat(scales.reshape(10, 2), block, axis=1)[:, :40]
    assert np.all(np.abs(back - weight) <= 0.5 * step + 1e-6)
    assert [weight_block(k) for k in (8, 16, 48, 64, 96, 1024)] == [16, 16, 32, 64, 64, 128]


def test_matmul_and_gemm_weights_become_4bit_and_the_head_stays(tmp_path):
    path, weights = _mlp(tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    assert sorted(candidates(proto)) == ["h1", "h2", "h3"]      # the head MatMul -> Sigmoid is not one
    record = int4_matmuls(proto)
    onnx.checker.check_model(proto)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("MatMulNBits") == 3 and ops.count("MatMul") == 1 and "Gemm" not in ops
    assert {r["output"] for r in record["rewritten"]} == {"h1", "h2", "h3"}
    x = np.random.default_rng(2).normal(size=(64, K)).astype(np.float32)
    # the reference: the same MLP with each weight replaced by its dequantized 4-bit blocks
    w1 = dequantize_blocks(*quantize_blocks(weights["w1"].T, weight_block(K)), K).T
    w2 = dequantize_blocks(*quantize_blocks(weights["w2"].T, weight_block(H)), H).T
    w3 = dequantize_blocks(*quantize_blocks(weights["w3"], weight_block(H)), H)          # transB: [N, K] already
    ref = onnx.load(str(path))
    for init in ref.graph.initializer:
        if init.name in ("w1", "w2", "w3"):
            init.CopyFrom(numpy_helper.from_array({"w1": w1, "w2": w2, "w3": w3}[init.name], init.name))
    assert np.abs(_run(proto, x) - _run(ref, x)).max() < 1e-5
    assert np.abs(_run(proto, x) - _run(path, x)).max() > 0        # it really is quantized
    assert len(proto.SerializeToString()) < 0.25 * path.stat().st_size


def test_a_sensitive_weight_stays_float_until_the_budget_holds(tmp_path):
    from edgerec.runtime.metrics import auc

    path, _ = _mlp(tmp_path / "m.onnx", sensitive=True)
    x, labels = _rows(tmp_path / "rows.npz", path)
    plain = onnx.load(str(path))
    int4_matmuls(plain)
    assert abs(auc(labels, _run(plain, x)) - auc(labels, _run(path, x))) > 0.003   # W1's scales are ruined
    proto = onnx.load(str(path))
    record = int4_matmuls(proto, reference=path, data=str(tmp_path / "rows.npz"), budget=0.003)
    assert "h1" in record["kept"] and record["fallback"]["trials"][1]["kept_float"] == 1   # the ruined one first
    assert record["fallback"]["kept_float"][0] == "h1"
    assert record["fallback"]["within_budget"] and record["fallback"]["base_error"] > 0.003
    assert abs(auc(labels, _run(proto, x)) - auc(labels, _run(path, x))) <= 0.003



def test_the_score_shift_bound_keeps_a_weight_float_that_the_auc_budget_lets_through(tmp_path):
    """ΔAUC rests on the rows' few positives; mean |Δp| moves with every row. With a |ΔAUC| budget
    that nothing misses, only the shift bound keeps the ruined weight float."""
    path, _ = _mlp(tmp_path / "m.onnx", sensitive=True)
    x, _ = _rows(tmp_path / "rows.npz", path)
    data = str(tmp_path / "rows.npz")
    loose = onnx.load(str(path))
    record = int4_matmuls(loose, reference=path, data=data, budget=0.9, shift_budget=None)
    assert record["kept"] == [] and record["shift_budget"] is None
    assert record["mean_abs_dp"] > 0.01                                 # what the AUC budget let through
    bounded = onnx.load(str(path))
    record = int4_matmuls(bounded, reference=path, data=data, budget=0.9)
    assert "h1" in record["kept"] and record["shift_budget"] == 0.01
    assert record["fallback"]["within_budget"] and record["fallback"]["budget"] == 1.0
    assert record["mean_abs_dp"] <= 0.01
    assert np.abs(_run(bounded, x) - _run(path, x)).mean() <= 0.01

@pytest.mark.slow
def test_tflite_dynamic_int4_weights_half_the_bytes_and_keep_a_sensitive_layer(tmp_path, cache_dir):
    from ai_edge_litert.interpreter import Interpreter

    from edgerec.converters.passes.tflite import TFLiteConfig, TFLitePass
    from edgerec.converters.passes.tflite_dense import int4_candidates
    from edgerec.converters.pipeline import PassRunner
    from edgerec.converters.tfenv import import_tf
    from edgerec.runtime.metrics import auc

    _, k = import_tf()
    inputs = k.Input((K,), name="dense_features")
    first = k.layers.Dense(H, activation="relu", name="first")
    second = k.layers.Dense(H, activation="relu", name="second")
    head = k.layers.Dense(1, activation="sigmoid", name="score")
    model = k.Model(inputs, head(second(first(inputs))))
    path, _ = _mlp(tmp_path / "ref.onnx", sensitive=True)
    onnx_weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    first.set_weights([onnx_weights["w1"], np.zeros(H, np.float32)])
    second.set_weights([onnx_weights["w2"], onnx_weights["b2"]])
    head.set_weights([onnx_weights["head"], np.zeros(1, np.float32)])
    model.save(tmp_path / "mlp.keras")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, K)).astype(np.float32)
    x[:, 0] = 0.0
    p = np.asarray(model(x)).ravel()
    labels = (rng.random(len(p)) < p).astype(np.float32)
    np.savez(tmp_path / "rows.npz", dense_features=x, labels=labels)
    runner = PassRunner(cache_dir)
    dynamic = runner.run(TFLitePass(), tmp_path / "mlp.keras", TFLiteConfig(mode="dynamic"))
    assert len(int4_candidates(open(dynamic.path, "rb").read())) == 2
    plain = runner.run(TFLitePass(), tmp_path / "mlp.keras", TFLiteConfig(mode="dynamic", dense_bits=4))
    fitted = runner.run(TFLitePass(), tmp_path / "mlp.keras", TFLiteConfig(
        mode="dynamic", dense_bits=4, data=str(tmp_path / "rows.npz"), dense_budget=0.01, dense_shift_budget=None))
    shifted = runner.run(TFLitePass(), tmp_path / "mlp.keras", TFLiteConfig(
        mode="dynamic", dense_bits=4, data=str(tmp_path / "rows.npz"), dense_budget=0.01))

    def scores(art):
        runner_ = Interpreter(model_path=art.path).get_signature_runner("serving_default")
        return np.concatenate([runner_(dense_features=x[s:s + 500])["score"].ravel() for s in range(0, len(x), 500)])

    assert len(plain.details["dense_int4"]["rewritten"]) == 2
    assert plain.size_bytes < dynamic.size_bytes - 0.4 * (K * H + H * H)      # half of each int8 weight saved
    assert abs(auc(labels, scores(plain)) - auc(labels, p)) > 0.05            # the ruined first layer
    dense = fitted.details["dense_int4"]
    assert len(dense["kept"]) == 1 and len(dense["rewritten"]) == 1
    assert dense["rewritten"][0]["shape"] == [H, H]                           # the second layer, [out, in]
    assert abs(auc(labels, scores(fitted)) - auc(labels, p)) <= 0.01
    assert np.abs(scores(fitted) - p).mean() < 0.5 * np.abs(scores(plain) - p).mean()
    # the default shift bound (mean |Δp| <= 0.01 vs the dynamic-range file) keeps more, never less
    bounded = shifted.details["dense_int4"]
    assert set(dense["kept"]) <= set(bounded["kept"]) and bounded["shift_budget"] == 0.01
    assert bounded["mean_abs_dp"] <= 0.01 and bounded["fallback"]["within_budget"]
    assert np.abs(scores(shifted) - scores(dynamic)).mean() <= 0.01
    # every labelled row (3,000 < evaluation_rows) checks the budget; the ranking runs on all of them too
    assert dense["rows"] == len(labels) and dense["sensitivity_rows"] == len(labels)
    # ranked on an evenly spread tenth of the rows, the same weight is the one kept
    sampled = runner.run(TFLitePass(), tmp_path / "mlp.keras", TFLiteConfig(
        mode="dynamic", dense_bits=4, data=str(tmp_path / "rows.npz"), dense_budget=0.01, dense_shift_budget=None,
        sensitivity_rows=300)).details["dense_int4"]
    assert sampled["kept"] == dense["kept"] and sampled["sensitivity_rows"] == 300
    assert sampled["rows"] == len(labels)


def test_gru_weights_are_stored_int8_behind_a_dequantize(tmp_path):
    from edgerec.converters.passes.onnx_dense import int8_recurrent_weights

    rng = np.random.default_rng(0)
    hidden, dim, steps = 16, 8, 5
    w = rng.normal(scale=0.3, size=(1, 3 * hidden, dim)).astype(np.float32)
    r = rng.normal(scale=0.3, size=(1, 3 * hidden, hidden)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("GRU", ["x", "W", "R"], ["y", "state"], hidden_size=hidden)], "gru",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, "batch", dim])],
                              [helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, "batch", hidden])],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.normal(size=(steps, 4, dim)).astype(np.float32)

    def state(proto):
        return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    before, size = state(model), len(model.SerializeToString())
    records = int8_recurrent_weights(model)
    onnx.checker.check_model(model)
    assert [r_["weight"] for r_ in records] == ["W", "R"]
    assert not any(i.data_type == TensorProto.FLOAT and len(i.dims) == 3 for i in model.graph.initializer)
    assert len(model.SerializeToString()) < 0.55 * size
    assert np.abs(state(model) - before).max() < 0.02


def test_a_kernel_reshaped_from_3d_is_a_candidate_and_its_reshape_goes(tmp_path):
    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(K, 2, H // 2)).astype(np.float32)        # a multi-head [D, heads, d] kernel
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["kernel", "shape"], ["w"]), helper.make_node("MatMul", ["x", "w"], ["h"]),
         helper.make_node("Relu", ["h"], ["out"])], "mha",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", H])],
        [numpy_helper.from_array(kernel, "kernel"), numpy_helper.from_array(np.array([K, H], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    x = rng.normal(size=(8, K)).astype(np.float32)
    before = _run(model, x)
    assert list(candidates(model)) == ["h"]
    int4_matmuls(model)
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["MatMulNBits", "Relu"]
    assert not any(i.name == "kernel" for i in model.graph.initializer)
    assert np.abs(_run(model, x) - before).max() < 0.3 * np.abs(before).max()


def _converted_positions_model(tmp_path, positions, name):
    """A dynamic-range TFLite file of ``score = sigmoid(tanh(flatten(x + positions) @ W) @ v)``: the
    position table is a float ADD operand (no hybrid kernel reads it), W an int8 FULLY_CONNECTED weight."""
    from edgerec.converters.tfenv import import_tf

    tf, _ = import_tf()
    rng = np.random.default_rng(4)
    steps, width = positions.shape[1:]

    class Model(tf.Module):
        def __init__(self):
            super().__init__()
            self.positions = tf.Variable(positions)
            self.w = tf.Variable(rng.normal(scale=0.05, size=(steps * width, 16)).astype(np.float32))
            self.v = tf.Variable(rng.normal(scale=0.5, size=(16, 1)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, steps, width], tf.float32, name="x")])
        def serve(self, x):
            hidden = tf.tanh(tf.matmul(tf.reshape(x + self.positions, [-1, steps * width]), self.w))
            return {"score": tf.sigmoid(tf.matmul(hidden, self.v))}

    module = Model()
    tf.saved_model.save(module, str(tmp_path / name), signatures={"serving_default": module.serve})
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / name), ["serving_default"])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


@pytest.mark.slow
def test_a_float_constant_other_ops_read_is_stored_in_4_bits_behind_a_dequantize(tmp_path):
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    from edgerec.converters.passes.rowwise import symmetric_columns
    from edgerec.converters.passes.tflite_compact import compact_flatbuffer
    from edgerec.converters.passes.tflite_dense import int4_candidates, int4_fully_connected

    positions = np.random.default_rng(5).normal(scale=0.5, size=(1, 50, 32)).astype(np.float32)
    flat = _converted_positions_model(tmp_path, positions, "float")
    found = int4_candidates(flat)
    assert len(found) == 2                                  # the int8 FC weight first, then the position table
    small, records = int4_fully_connected(flat, found[1:])
    assert records[0]["shape"] == [1, 50, 32] and records[0]["kernel"] == "DEQUANTIZE at load"
    saved = len(compact_flatbuffer(flat)) - len(compact_flatbuffer(small))
    assert saved > 0.8 * (4 - 0.5) * positions.size        # 4 bytes -> half a byte per value, plus its scales
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(small))
    codes = [model.operatorCodes[op.opcodeIndex].builtinCode for op in model.subgraphs[0].operators]
    assert codes[0] == schema.BuiltinOperator.DEQUANTIZE
    assert model.subgraphs[0].tensors[int(model.subgraphs[0].operators[0].inputs[0])].type == schema.TensorType.INT4
    # the reference: the same model converted with the position table replaced by its 4-bit values
    q, scale = symmetric_columns(positions, 4, axis=1)
    reference = _converted_positions_model(tmp_path, (q * scale.reshape(1, -1, 1)).astype(np.float32), "int4")
    x = np.random.default_rng(6).normal(size=(64, 50, 32)).astype(np.float32)

    def run(data):
        return Interpreter(model_content=data).get_signature_runner("serving_default")(x=x)["score"].ravel()

    assert np.abs(run(small) - run(reference)).max() < 1e-5
    assert 0 < np.abs(run(small) - run(flat)).mean() < 0.02     # quantized, and close to the float table
    assert int4_candidates(small) == found[:1]             # the table is no float constant any more
