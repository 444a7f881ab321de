"""Every family's parts convert to TFLite builtins only and run in LiteRT with the Keras outputs."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tf_keras")
pytest.importorskip("ai_edge_litert")


def _load_helpers():
    """The tiny spec/arrays helpers of test_models.py (pytest runs with --import-mode=importlib)."""
    import importlib.util
    from pathlib import Path

    location = Path(__file__).with_name("test_models.py")
    module_spec = importlib.util.spec_from_file_location("_edgerec_test_models_helpers", location)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


_helpers = _load_helpers()
_arrays, _item_text, _small_config, _spec = (_helpers._arrays, _helpers._item_text,
                                             _helpers._small_config, _helpers._spec)


def _tflite_runner(model):
    from ai_edge_litert.interpreter import Interpreter

    from edgerec.converters.tfenv import import_tf

    tf, _ = import_tf()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]   # no Flex ops
    return Interpreter(model_content=converter.convert()).get_signature_runner()


@pytest.mark.slow
@pytest.mark.parametrize("family", ["din", "gru", "bst", "context"])
def test_parts_convert_to_builtins_and_match(family):
    from edgerec.sdk.models import (ContentParts, build_content_encoder, build_model, content_table,
                                    tokenize_items)

    spec, config = _spec(), _small_config()
    content = None
    if family == "context":
        encoder = build_content_encoder(spec, config)
        content = ContentParts(encoder, content_table(encoder, tokenize_items(spec, _item_text(spec))))
    parts = build_model(family, spec, config, content)
    row = {k: v[1:2] for k, v in _arrays(spec).items()}          # batch 1, short history
    user = {k: v.numpy() for k, v in parts.user_encoder(parts.select_inputs(row, "user_encoder")).items()}
    feeds = {"fused": parts.select_inputs(row), "user_encoder": parts.select_inputs(row, "user_encoder"),
             "scorer": parts.select_inputs({**row, **user}, "scorer")}
    if content is not None:
        feeds["content_encoder"] = {"item_tokens": np.array([[2, 4, 5, 3, 0, 0, 0, 0]], np.int32)}
    # fused covers the shared ops; the split parts' extra inputs/outputs and the scorer's in-graph
    # broadcast of the user state are checked once per kind (attention: din, recurrent: gru)
    checked = ["fused", "content_encoder"] + (["user_encoder", "scorer"] if family in ("din", "gru") else [])
    runners = {}
    for name, model in parts.parts().items():
        if name not in checked:
            continue
        runners[name] = _tflite_runner(model)
        got = runners[name](**feeds[name])
        want = model(feeds[name], training=False)
        want = want if isinstance(want, dict) else {"score": want}
        assert sorted(got) == sorted(want), name
        for key in want:
            np.testing.assert_allclose(got[key], want[key].numpy(), atol=2e-5, err_msg=f"{family}/{name}/{key}")
    if "scorer" in runners:              # one user's 1-row state against 6 candidates
        many = {k: v[:6] for k, v in _arrays(spec).items()}
        state_once = parts.select_inputs({**many, **user}, "scorer")
        got = runners["scorer"](**state_once)["score"]
        repeated = {**many, **{k: np.repeat(v, 6, axis=0) for k, v in user.items()}}
        want = parts.scorer(parts.select_inputs(repeated, "scorer"), training=False).numpy()
        assert got.shape == (6, 1)
        np.testing.assert_allclose(got, want, atol=2e-5, err_msg=f"{family}/scorer with a 1-row state")


def _item_tables(path, shape):
    """``(dtype, scale)`` of every tensor shaped like the item-embedding table in a .tflite file."""
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(path)).get_tensor_details()
    return [(d["dtype"], tuple(d["quantization_parameters"]["scales"].tolist()))
            for d in details if tuple(d["shape"]) == tuple(shape)]


@pytest.mark.slow
@pytest.mark.parametrize("family, seq, items, units", [
    ("din", 10, 2400, 64),
    # the MovieLens shape (50 unrolled steps, ~9.7k items): per-step activation metadata takes
    # most of the margin
    ("gru", 50, 9700, 64),
])
def test_fused_full_int8_stores_the_item_table_once(tmp_path, family, seq, items, units):
    """One shared lookup -> one int8 item table, int8 file small against the fp32 one (both
    compacted); for the GRU that needs `ProjectedGRU` (no per-step int32 biases) and the compaction."""
    from ai_edge_litert.interpreter import Interpreter

    from edgerec.converters.passes.tflite import TFLiteConfig, TFLitePass
    from edgerec.runtime.spec import FeatureSpec, Vocabulary
    from edgerec.sdk.models import ModelConfig, build_model

    spec = FeatureSpec(seq, Vocabulary("item", tuple(str(i) for i in range(items))))
    parts = build_model(family, spec, ModelConfig(embedding_dim=32, gru_units=units, dropout=0.0))
    if family == "gru":            # trained biases are not zero (zero ones let the converter drop them)
        gru = parts.fused.get_layer("user_state")
        kernel, recurrent, bias = gru.get_weights()
        gru.set_weights([kernel, recurrent, np.random.default_rng(1).normal(scale=0.1, size=bias.shape)])
    model_path = tmp_path / "fused.keras"
    parts.fused.save(model_path)
    rng = np.random.default_rng(0)
    hist = rng.integers(2, spec.item_vocab.size, (256, seq)).astype(np.int32)
    hist[np.arange(seq)[None, :] < rng.integers(0, seq, 256)[:, None]] = 0   # left padding
    rows = {"hist_items": hist, "cand_item": rng.integers(2, spec.item_vocab.size, 256).astype(np.int32),
            "labels": rng.integers(0, 2, 256).astype(np.float32)}
    np.savez(tmp_path / "calibration.npz", **rows)
    module = "edgerec.sdk.models.layers"
    fp32 = TFLitePass().run(model_path, TFLiteConfig(mode="fp32", custom_objects_module=module), tmp_path / "fp32")
    int8 = TFLitePass().run(model_path, TFLiteConfig(mode="int8", data=str(tmp_path / "calibration.npz"),
                                                     custom_objects_module=module), tmp_path / "int8")
    table_shape = (spec.item_vocab.size, 32)
    fp32_tables, int8_tables = _item_tables(fp32.path, table_shape), _item_tables(int8.path, table_shape)
    assert [dtype for dtype, _ in fp32_tables] == [np.float32]
    assert len(int8_tables) == 1 and int8_tables[0][0] == np.int8, int8_tables
    ratio = int8.details["size_bytes"] / fp32.details["size_bytes"]
    assert ratio <= 0.30, (ratio, int8.details["size_bytes"], fp32.details["size_bytes"])
    runner = Interpreter(model_path=int8.path).get_signature_runner("serving_default")
    feed = {k: rows[k][:64] for k in ("cand_item", "hist_items")}
    got = runner(**feed)["score"]
    want = parts.fused(feed, training=False).numpy()
    assert np.max(np.abs(got - want)) <= 0.02


def test_loop_plan_covers_every_step_in_a_few_iterations():
    from edgerec.sdk.models.recurrent import LOOP_ITERATIONS, MIN_LOOP_STEPS, loop_plan

    for steps in range(1, 130):
        unrolled, iterations, chunk = loop_plan(steps)
        assert unrolled + iterations * chunk == steps
        if steps < MIN_LOOP_STEPS:
            assert (iterations, chunk) == (0, 0)
        else:
            assert 2 <= iterations <= LOOP_ITERATIONS and unrolled < chunk


def _subgraph_ops(flat: bytes) -> list[list[int]]:
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flat))
    return [[max(model.operatorCodes[op.opcodeIndex].builtinCode, model.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)
             for op in subgraph.operators] for subgraph in model.subgraphs]


@pytest.mark.slow
@pytest.mark.parametrize("steps", [23, 50])
def test_a_long_gru_is_a_while_loop_of_unrolled_chunks_with_the_same_outputs(steps, monkeypatch):
    """At inference a long `ProjectedGRU` runs as a WHILE over chunks of unrolled steps (the first
    ``steps mod chunk`` unrolled before it): Keras' GRU outputs, in Keras and in LiteRT, with the
    operators of those steps and one chunk instead of all steps; training stays unrolled."""
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.python import schema_py_generated as schema

    from edgerec.converters.tfenv import import_tf
    from edgerec.sdk.models import recurrent as R

    tf, keras = import_tf()
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, steps, 8)).astype(np.float32)
    reference = keras.layers.GRU(16, reset_after=True)
    reference(x)
    reference.set_weights([rng.normal(scale=0.4, size=w.shape).astype(np.float32) for w in reference.get_weights()])
    inputs = keras.Input((steps, 8))
    model = keras.Model(inputs, keras.layers.Dense(1)(R.ProjectedGRU(16, name="gru")(inputs)))
    model.get_layer("gru").set_weights(reference.get_weights())
    gru = model.get_layer("gru")
    np.testing.assert_allclose(gru(x, training=False).numpy(), reference(x).numpy(), atol=1e-5)
    np.testing.assert_allclose(gru(x, training=True).numpy(), gru(x, training=False).numpy(), atol=1e-6)
    want = model(x, training=False).numpy()

    def convert():
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return converter.convert()

    looped = convert()
    unrolled_steps, iterations, chunk = R.loop_plan(steps)
    assert iterations >= 2 and chunk < steps
    monkeypatch.setattr(R, "MIN_LOOP_STEPS", 10 ** 6)          # the fully unrolled form, for comparison
    unrolled = convert()
    while_op = schema.BuiltinOperator.WHILE
    loop_ops, flat_ops = _subgraph_ops(looped), _subgraph_ops(unrolled)
    assert [ops.count(while_op) for ops in loop_ops][0] == 1 and len(loop_ops) == 3      # main, cond, body
    assert len(flat_ops) == 1 and while_op not in flat_ops[0]
    share = (unrolled_steps + chunk) / steps + 0.1       # the operators of those steps only (+ loop plumbing)
    assert sum(map(len, loop_ops)) < share * len(flat_ops[0]), (list(map(len, loop_ops)), len(flat_ops[0]))
    assert len(looped) < len(unrolled)
    for flat in (looped, unrolled):
        runner = Interpreter(model_content=flat).get_signature_runner()
        got = next(iter(runner(**{next(iter(runner.get_input_details())): x}).values()))
        np.testing.assert_allclose(got, want, atol=2e-5)
