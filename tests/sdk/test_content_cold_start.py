"""The content family's cold-start input: ``cand_content`` replaces the content vector of an OOV
candidate and is ignored for a known one (fused and split parts alike), content dropout turns
training rows into content-only rows, and a tiny model trains with it."""
from __future__ import annotations

import numpy as np
import pytest

from edgerec.runtime.contract import CAND_CONTENT, CAND_ITEM
from edgerec.runtime.errors import EdgeRecError, SpecError
from edgerec.runtime.spec import OOV_INDEX

DC = 6


def _tiny_config(**kw):
    from edgerec.sdk.models import ModelConfig

    return ModelConfig(embedding_dim=8, hidden_units=(16,), attention_units=(8,), content_dim=16,
                       text_ff_dim=16, content_epochs=1, **kw)


def _table(size: int, seed: int = 0) -> np.ndarray:
    table = np.random.default_rng(seed).normal(size=(size, DC)).astype(np.float32)
    table[:2] = 0.0
    return table


@pytest.fixture(scope="module")
def model(tiny_synthetic_dataset):
    from edgerec.sdk.models import ContentParts, build_model

    spec = tiny_synthetic_dataset.spec
    table = _table(spec.item_vocab.size)
    parts = build_model("context", spec, _tiny_config(), ContentParts(None, table))
    embedding = parts.fused.get_layer("item_embedding")
    weights = embedding.get_weights()[0]
    weights[OOV_INDEX] = weights[5]          # the OOV id embedding equal to item 5's: only content differs
    embedding.set_weights([weights])
    return parts, table


def _rows(dataset, items, content) -> dict:
    """One test row repeated, with the given candidate ids and cand_content rows."""
    n = len(items)
    arrays = {k: np.repeat(v[:1], n, axis=0) for k, v in dataset.test.inputs.items()}
    arrays[CAND_ITEM] = np.asarray(items, np.int32)
    arrays[CAND_CONTENT] = np.asarray(content, np.float32)
    return arrays


def _fused_and_split(parts, arrays):
    fused = parts.fused.predict(parts.select_inputs(arrays), verbose=0).reshape(-1)
    user = parts.user_encoder.predict(parts.select_inputs(arrays, "user_encoder"), verbose=0)
    split = parts.scorer.predict(parts.select_inputs({**arrays, **user}, "scorer"), verbose=0).reshape(-1)
    return fused, split


def test_an_oov_candidate_is_scored_with_the_fed_content_and_a_known_one_ignores_it(model, tiny_synthetic_dataset):
    parts, table = model
    assert CAND_CONTENT in parts.fused.input_names and CAND_CONTENT in parts.scorer.input_names
    assert CAND_CONTENT not in parts.user_encoder.input_names
    noise = np.random.default_rng(1).normal(size=DC)
    arrays = _rows(tiny_synthetic_dataset, [5, OOV_INDEX, 5, OOV_INDEX, 9],
                   [np.zeros(DC), table[5], noise, np.zeros(DC), table[5]])
    for scores in _fused_and_split(parts, arrays):
        # OOV + item 5's content == item 5 itself (same id embedding by construction)
        assert scores[1] == pytest.approx(scores[0], abs=1e-6)
        # a known id ignores whatever cand_content says
        assert scores[2] == pytest.approx(scores[0], abs=1e-6)
        # no content: the OOV row differs from the one with content
        assert abs(scores[3] - scores[1]) > 1e-5
    fused, split = _fused_and_split(parts, arrays)
    np.testing.assert_allclose(fused, split, atol=1e-5)


def test_missing_cand_content_is_zeros(model, tiny_synthetic_dataset):
    parts, table = model
    arrays = _rows(tiny_synthetic_dataset, [7, OOV_INDEX], np.zeros((2, DC)))
    without = {k: v for k, v in arrays.items() if k != CAND_CONTENT}
    np.testing.assert_array_equal(parts.select_inputs(without)[CAND_CONTENT], np.zeros((2, DC), np.float32))
    np.testing.assert_allclose(parts.fused.predict(parts.select_inputs(without), verbose=0),
                               parts.fused.predict(parts.select_inputs(arrays), verbose=0), atol=1e-7)


def test_a_content_table_with_a_nonzero_oov_row_is_refused(tiny_synthetic_dataset):
    from edgerec.sdk.models import ContentParts, build_model

    table = _table(tiny_synthetic_dataset.spec.item_vocab.size)
    table[OOV_INDEX] = 1.0
    with pytest.raises(SpecError, match="OOV row"):
        build_model("context", tiny_synthetic_dataset.spec, _tiny_config(), ContentParts(None, table))


def test_content_dropout_turns_a_share_of_training_rows_into_content_only_rows(tiny_synthetic_dataset):
    from edgerec.sdk.data.builder import with_candidate_content

    ds = tiny_synthetic_dataset
    table = _table(ds.spec.item_vocab.size)
    before = ds.train.inputs[CAND_ITEM].copy()
    out = with_candidate_content(ds, table, dropout=0.25, seed=3)
    np.testing.assert_array_equal(ds.train.inputs[CAND_ITEM], before)          # the input is not changed
    assert CAND_CONTENT not in ds.train.inputs
    cand, content = out.train.inputs[CAND_ITEM], out.train.inputs[CAND_CONTENT]
    dropped = (cand == OOV_INDEX) & (before != OOV_INDEX)
    assert dropped.sum() == out.meta["content_dropout_rows"]
    assert dropped.mean() == pytest.approx(0.25 * (before >= 2).mean(), abs=2e-3)
    np.testing.assert_array_equal(content[dropped], table[before[dropped]])
    np.testing.assert_array_equal(content[~dropped], 0.0)
    np.testing.assert_array_equal(cand[~dropped], before[~dropped])
    for split in (out.valid, out.test):
        assert split.inputs[CAND_CONTENT].shape == (len(split), DC) and not split.inputs[CAND_CONTENT].any()
    again = with_candidate_content(ds, table, dropout=0.25, seed=3)
    np.testing.assert_array_equal(again.train.inputs[CAND_ITEM], cand)
    with pytest.raises(EdgeRecError, match="content dropout"):
        with_candidate_content(ds, table, dropout=1.0)
    with pytest.raises(EdgeRecError, match="content table"):
        with_candidate_content(ds, table[:-1])


@pytest.mark.slow
def test_a_tiny_context_model_trains_with_content_dropout(tiny_synthetic_dataset):
    from edgerec.sdk.training import TrainConfig
    from edgerec.sdk.training.pipeline import train_model

    parts, history, metrics, dataset = train_model(
        tiny_synthetic_dataset, "context", _tiny_config(content_dropout=0.3),
        TrainConfig(epochs=1, batch_size=256, verbose=0, max_train_rows=4000, full_catalogue_rows=0),
        return_dataset=True)
    assert parts.spec.text.content_dim == parts.content_table.shape[1] == 16
    # the small encoder's vectors tell items apart (no saturated, near-constant table)
    assert parts.content_table[2:].std(axis=0).mean() > 0.1
    assert dataset.meta["content_dropout_rows"] > 0.25 * len(dataset.train)
    assert parts.meta["content"]["dropout_rows"] == dataset.meta["content_dropout_rows"]
    assert np.isfinite(metrics["test"]["auc"])
    item = int(np.flatnonzero(dataset.item_popularity)[0])
    arrays = _rows(dataset, [OOV_INDEX, OOV_INDEX], [parts.content_table[item], np.zeros(16)])
    with_content, without = parts.fused.predict(parts.select_inputs(arrays), verbose=0).reshape(-1)
    assert with_content != pytest.approx(without, abs=1e-6)


@pytest.mark.slow
def test_the_cold_start_input_converts_to_tflite_builtins_and_onnx(model, tiny_synthetic_dataset):
    """Fused and scorer with cand_content run on LiteRT (builtin ops only) and onnxruntime and
    agree with Keras on known, OOV-with-content and OOV-without-content rows."""
    pytest.importorskip("ai_edge_litert")
    ort = pytest.importorskip("onnxruntime")
    tf2onnx = pytest.importorskip("tf2onnx")
    from ai_edge_litert.interpreter import Interpreter

    from edgerec.converters.keras_io import flat_serving_function
    from edgerec.converters.tfenv import import_tf

    tf, _ = import_tf()
    parts, table = model
    arrays = _rows(tiny_synthetic_dataset, [5, OOV_INDEX, OOV_INDEX, 9], [np.zeros(DC), table[5], np.zeros(DC), table[3]])
    user = parts.user_encoder.predict(parts.select_inputs(arrays, "user_encoder"), verbose=0)
    feeds = {"fused": parts.select_inputs(arrays), "scorer": parts.select_inputs({**arrays, **user}, "scorer")}
    for name in ("fused", "scorer"):
        keras_model = parts.parts()[name]
        want = keras_model.predict(feeds[name], verbose=0).reshape(-1)
        converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        runner = Interpreter(model_content=converter.convert()).get_signature_runner()
        np.testing.assert_allclose(runner(**feeds[name])["score"].reshape(-1), want, atol=2e-5, err_msg=name)
        flat, specs = flat_serving_function(keras_model, name)
        proto, _ = tf2onnx.convert.from_function(flat, input_signature=specs, opset=17)
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        got = session.run(None, {n: feeds[name][n] for n in names})[0].reshape(-1)
        np.testing.assert_allclose(got, want, atol=2e-5, err_msg=f"{name} onnx")


def test_model_configs_written_before_the_content_fields_still_load():
    import json

    from edgerec.sdk.models import ModelConfig

    new = {"content_encoder", "content_dropout", "minilm_max_tokens"}
    old = {k: v for k, v in ModelConfig().to_dict().items() if k not in new}
    assert ModelConfig.from_dict(old) == ModelConfig()
    assert ModelConfig.from_dict(json.loads(json.dumps(ModelConfig(content_encoder="minilm").to_dict()))) \
        == ModelConfig(content_encoder="minilm")
    with pytest.raises(SpecError, match="content_encoder among"):
        ModelConfig(content_encoder="bert-large")
    with pytest.raises(SpecError, match="content_dropout in"):
        ModelConfig(content_dropout=1.0)
