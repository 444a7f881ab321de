"""Lookup tables converted as placeholders and restored: same ONNX function as the whole conversion."""
from __future__ import annotations

import numpy as np
import pytest

from edgerec.converters.errors import ConverterConfigError
from edgerec.converters.pipeline import ExportedArtifact


def _export(path, out, min_bytes, custom=None):
    from edgerec.converters.passes.onnx import OnnxExportConfig, OnnxExportPass

    out.mkdir(parents=True, exist_ok=True)
    config = OnnxExportConfig(stand_in_min_bytes=min_bytes, custom_objects_module=custom)
    return OnnxExportPass()._run_impl(ExportedArtifact.from_keras(str(path)), config, out)


def _random_feed(session, seed=0, batch=6):
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in session.get_inputs():
        shape = [batch if not isinstance(d, int) else d for d in spec.shape]
        feed[spec.name] = (rng.integers(0, 8, shape).astype(np.int32) if "int" in spec.type
                           else rng.standard_normal(shape).astype(np.float32))
    return feed


def _outputs(path, feed):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed))), session


def _assert_same_function(stood_in, whole):
    import onnx
    import onnxruntime as ort

    feed = _random_feed(ort.InferenceSession(whole.path, providers=["CPUExecutionProvider"]))
    got, _ = _outputs(stood_in.path, feed)
    ref, _ = _outputs(whole.path, feed)
    assert sorted(got) == sorted(ref)
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], atol=1e-6, err_msg=name)
    # the restored tables are the real ones, bit for bit
    tables = [onnx.numpy_helper.to_array(init) for init in onnx.load(whole.path).graph.initializer]
    restored = [init for init in onnx.load(stood_in.path).graph.initializer
                if list(init.dims) in stood_in.details["table_stand_ins"]]
    assert len(restored) >= len(stood_in.details["table_stand_ins"])
    for init in restored:
        values = onnx.numpy_helper.to_array(init)
        assert any(t.shape == values.shape and np.array_equal(t, values) for t in tables)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["din.keras", "gru.keras", "mha.keras", "user_encoder.keras", "scorer.keras",
                                  "keras3.keras"])
def test_stand_ins_give_the_same_onnx_function(model_dir, tmp_path, name):
    stood_in = _export(model_dir / name, tmp_path / "in", 1)
    whole = _export(model_dir / name, tmp_path / "whole", None)
    assert stood_in.details["table_stand_ins"], "every contract model has an item table"
    assert whole.details["table_stand_ins"] == []
    _assert_same_function(stood_in, whole)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["din", "bst"])
def test_byom_shared_table_stood_in_once(byom_zoo, tmp_path, kind):
    """The bring-your-own SavedModels (custom layers, [B, 1] target): their one table, read by the
    history and the candidate Gather, is one stand-in."""
    stood_in = _export(byom_zoo[kind], tmp_path / "in", 1)
    whole = _export(byom_zoo[kind], tmp_path / "whole", None)
    assert len(stood_in.details["table_stand_ins"]) == 1
    _assert_same_function(stood_in, whole)


def test_table_read_by_a_matmul_is_converted_whole():
    """A tied table (Gather for the input, MatMul for the logits) keeps its rows through tf2onnx;
    a Gather-only table beside it is stood in; the ONNX function equals TensorFlow's."""
    import onnxruntime as ort

    from edgerec.converters.passes.onnx_standins import convert_with_stand_ins
    from edgerec.converters.tfenv import import_tf

    tf, _ = import_tf()
    rng = np.random.default_rng(3)
    tied = tf.Variable(rng.standard_normal((64, 8)).astype(np.float32))
    lookup = tf.Variable(rng.standard_normal((50, 8)).astype(np.float32))
    spec = tf.TensorSpec([None, 4], tf.int32, name="ids")

    @tf.function(input_signature=[spec])
    def f(ids):
        pooled = tf.reduce_mean(tf.gather(tied, ids), axis=1)
        return {"logits": tf.matmul(pooled, tied, transpose_b=True),
                "other": tf.reduce_sum(tf.gather(lookup, ids), axis=1)}

    proto, stand_ins = convert_with_stand_ins(f, [spec], opset=18, min_bytes=1)
    assert [s.real.shape for s in stand_ins] == [(50, 8)]
    ids = rng.integers(0, 50, (5, 4)).astype(np.int32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: ids})
    ref = f(tf.constant(ids))
    np.testing.assert_allclose(got[0], ref["logits"].numpy(), atol=1e-5)
    np.testing.assert_allclose(got[1], ref["other"].numpy(), atol=1e-5)


def test_no_table_over_the_threshold_means_no_stand_in():
    from edgerec.converters.passes.onnx_standins import convert_with_stand_ins
    from edgerec.converters.tfenv import import_tf

    tf, _ = import_tf()
    table = tf.Variable(np.ones((20, 4), np.float32))
    spec = tf.TensorSpec([None, 3], tf.int32, name="ids")
    f = tf.function(lambda ids: {"out": tf.gather(table, ids)}, input_signature=[spec])
    assert convert_with_stand_ins(f, [spec], opset=18, min_bytes=20 * 4 * 4 + 1) == (None, [])


def test_restore_refuses_a_placeholder_read_by_anything_but_gather():
    from onnx import TensorProto, helper, numpy_helper

    from edgerec.converters.passes.onnx_standins import StandIn, StandInMismatch, _placeholder, restore_tables

    real = np.arange(40, dtype=np.float32).reshape(10, 4)
    placeholder = _placeholder(real, 0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "t"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(placeholder, "t")])
    with pytest.raises(StandInMismatch, match="read by"):
        restore_tables(helper.make_model(graph), [StandIn("t", real, placeholder)])
    with pytest.raises(StandInMismatch, match="not found"):
        restore_tables(helper.make_model(graph), [StandIn("u", real, _placeholder(real, 1))])


@pytest.mark.parametrize("bad", [0, -5, 1.5, "1"])
def test_stand_in_threshold_is_checked(bad):
    from edgerec.converters.passes.onnx import OnnxExportConfig

    with pytest.raises(ConverterConfigError, match="stand_in_min_bytes"):
        OnnxExportConfig(stand_in_min_bytes=bad)


def test_a_table_also_gathered_at_constant_indices_is_converted_whole():
    """grappler and tf2onnx fold a Gather whose indices are constant: from a placeholder that
    would be the placeholder's rows, so such a table is never stood in."""
    import onnxruntime as ort

    from edgerec.converters.passes.onnx_standins import convert_with_stand_ins
    from edgerec.converters.tfenv import import_tf

    tf, _ = import_tf()
    rng = np.random.default_rng(5)
    table = tf.Variable(rng.standard_normal((40, 6)).astype(np.float32))
    spec = tf.TensorSpec([None, 3], tf.int32, name="ids")

    @tf.function(input_signature=[spec])
    def f(ids):
        padding_row = tf.gather(table, tf.constant([0]))                 # folded at conversion
        return {"out": tf.reduce_sum(tf.gather(table, ids), axis=1) - padding_row}

    proto, stand_ins = convert_with_stand_ins(f, [spec], opset=18, min_bytes=1)
    assert proto is None and stand_ins == []
    import tf2onnx

    whole, _ = tf2onnx.convert.from_function(f, input_signature=[spec], opset=18)
    ids = rng.integers(0, 40, (4, 3)).astype(np.int32)
    session = ort.InferenceSession(whole.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: ids})[0],
                               f(tf.constant(ids))["out"].numpy(), atol=1e-5)


def test_restore_refuses_a_placeholder_of_another_dtype_or_copied_into_a_constant():
    from onnx import TensorProto, helper, numpy_helper

    from edgerec.converters.passes.onnx_standins import StandIn, StandInMismatch, _placeholder, restore_tables

    real = np.arange(40, dtype=np.float32).reshape(10, 4)
    placeholder = _placeholder(real, 0)
    gather = helper.make_node("Gather", ["t", "ids"], ["y"])
    io = ([helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    as_double = helper.make_graph([gather], "g", *io, [numpy_helper.from_array(placeholder.astype(np.float64), "t")])
    with pytest.raises(StandInMismatch, match="not found"):
        restore_tables(helper.make_model(as_double), [StandIn("t", real, placeholder)])
    copied = helper.make_graph(
        [gather, helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(placeholder, "c"))], "g",
        *io, [numpy_helper.from_array(placeholder, "t")])
    with pytest.raises(StandInMismatch, match="Constant"):
        restore_tables(helper.make_model(copied), [StandIn("t", real, placeholder)])
    fine = helper.make_graph([gather], "g", *io, [numpy_helper.from_array(placeholder, "t")])
    model = helper.make_model(fine)
    restore_tables(model, [StandIn("t", real, placeholder)])
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]), real)
