"""Model families: fused == scorer(user_encoder(x)), custom layers round trip, part save/load."""
from __future__ import annotations

import re

import numpy as np
import pytest

from edgerec.runtime.errors import SpecError
from edgerec.runtime.spec import ContextField, DenseField, FeatureSpec, TextSpec, Vocabulary

pytest.importorskip("tf_keras")

L_SEQ = 12
N_ITEMS = 30
CONTENT_DIM = 16
# what each family's user encoder hands the scorer: everything that does not depend on the candidate
USER_OUTPUTS = {"din": {"user_state", "user_mask", "user_keys", "user_pooled"},
                "bst": {"user_state", "user_mask", "user_keys", "user_pooled"},
                "context": {"user_state", "user_mask", "user_keys", "user_pooled"},
                "gru": {"user_state"}, "lstm": {"user_state"}}


def _spec() -> FeatureSpec:
    return FeatureSpec(
        L_SEQ, Vocabulary("item", tuple(str(i) for i in range(N_ITEMS))),
        (ContextField("hour", "hour"),
         ContextField("device", "categorical", Vocabulary("device", ("ios", "android")))),
        (DenseField("price", 1.0, 2.0),),
        TextSpec(("red", "blue", "comedy", "drama", "space"), max_tokens=8))


def _arrays(spec: FeatureSpec, n: int = 24, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    hist = rng.integers(0, spec.item_vocab.size, (n, L_SEQ)).astype(np.int32)
    hist[0] = 0                      # empty history
    hist[1, : L_SEQ - 2] = 0         # two items, left-padded
    return {"hist_items": hist,
            "cand_item": rng.integers(1, spec.item_vocab.size, n).astype(np.int32),
            "hour": rng.integers(0, 25, n).astype(np.int32),
            "device": rng.integers(0, 4, n).astype(np.int32),
            "dense": rng.normal(size=(n, 1)).astype(np.float32),
            "cand_content": np.zeros((n, CONTENT_DIM), np.float32)}


def _item_text(spec):
    words = ["red", "blue", "comedy", "drama", "space", "unknownword"]
    return ["", ""] + [f"{words[i % 6]} {words[(i * 7) % 6]} item {i}" for i in range(spec.item_vocab.size - 2)]


@pytest.fixture(scope="module")
def content():
    from edgerec.sdk.models import (ContentParts, ModelConfig, build_content_encoder, content_table,
                                    tokenize_items)

    spec = _spec()
    config = ModelConfig(content_dim=16, text_ff_dim=16, content_epochs=1)
    encoder = build_content_encoder(spec, config)
    return ContentParts(encoder, content_table(encoder, tokenize_items(spec, _item_text(spec))))


def _small_config(**kw):
    from edgerec.sdk.models import ModelConfig

    return ModelConfig(embedding_dim=16, hidden_units=(16,), attention_units=(8,), gru_units=8,
                       lstm_units=8, ff_dim=16, content_dim=CONTENT_DIM, text_ff_dim=16, **kw)


@pytest.fixture(scope="module", params=["din", "gru", "lstm", "bst", "context"])
def parts(request, content):
    from edgerec.sdk.models import build_model

    return build_model(request.param, _spec(), _small_config(), content)


def test_fused_equals_scorer_of_user_encoder(parts):
    arrays = _arrays(parts.spec)
    fused = parts.fused(parts.select_inputs(arrays), training=False).numpy()
    user = {k: v.numpy() for k, v in parts.user_encoder(parts.select_inputs(arrays, "user_encoder")).items()}
    assert sorted(user) == sorted(parts.user_encoder.output_names)
    assert set(user) == USER_OUTPUTS[parts.family]
    split = parts.scorer(parts.select_inputs({**arrays, **user}, "scorer"), training=False).numpy()
    assert fused.shape == (len(arrays["cand_item"]), 1)
    assert np.all((fused > 0) & (fused < 1))
    np.testing.assert_allclose(split, fused, rtol=0, atol=1e-6)
    assert np.std(fused) > 0          # the candidate changes the score


def test_scorer_takes_one_user_state_for_many_candidates(parts):
    """A 1-row user state against N candidates scores as the state repeated N times, and as the
    fused model on N full rows of that user."""
    arrays = _arrays(parts.spec, seed=5)
    n = len(arrays["cand_item"])
    for user_row in (1, 2, 7):              # short, empty-padded and full histories
        row = {"hist_items": arrays["hist_items"][user_row:user_row + 1]}
        user = {k: v.numpy() for k, v in parts.user_encoder(row).items()}
        assert all(v.shape[0] == 1 for v in user.values())
        once = parts.scorer(parts.select_inputs({**arrays, **user}, "scorer"), training=False).numpy()
        repeated = {k: np.repeat(v, n, axis=0) for k, v in user.items()}
        each = parts.scorer(parts.select_inputs({**arrays, **repeated}, "scorer"), training=False).numpy()
        full_rows = {**arrays, "hist_items": np.repeat(row["hist_items"], n, axis=0)}
        fused = parts.fused(parts.select_inputs(full_rows), training=False).numpy()
        assert once.shape == (n, 1)
        np.testing.assert_allclose(once, each, rtol=0, atol=1e-6)
        np.testing.assert_allclose(once, fused, rtol=0, atol=1e-6)


def test_contract_names(parts):
    spec = parts.spec
    assert parts.user_encoder.input_names == ["hist_items"]
    assert parts.fused.output_names == ["score"] and parts.scorer.output_names == ["score"]
    signature = spec.input_signature("fused")
    assert set(parts.fused.input_names) <= set(signature)
    assert {"hist_items", "cand_item"} <= set(parts.fused.input_names)
    if parts.family == "context":
        assert set(parts.fused.input_names) == set(signature)      # every context field + dense
        assert parts.content_encoder.input_names == ["item_tokens"]
        assert parts.content_encoder.output_names == ["item_vector"]
    scorer_extra = set(parts.scorer.input_names) - set(signature)
    assert scorer_extra == set(parts.user_encoder.output_names)


def test_parts_save_and_load_identically(parts, tmp_path):
    from edgerec.converters.tfenv import import_tf

    _, keras = import_tf()
    arrays = _arrays(parts.spec, seed=3)
    user = {k: v.numpy() for k, v in parts.user_encoder(parts.select_inputs(arrays, "user_encoder")).items()}
    feeds = {"fused": arrays, "user_encoder": arrays, "scorer": {**arrays, **user}}
    if parts.content_encoder is not None:
        feeds["content_encoder"] = {"item_tokens": np.array([[2, 4, 5, 3, 0, 0, 0, 0]], np.int32)}
    for name, model in parts.parts().items():
        model.save(tmp_path / f"{name}.keras")
        loaded = keras.models.load_model(tmp_path / f"{name}.keras", compile=False)
        inputs = {k: feeds[name][k] for k in model.input_names}
        before, after = model(inputs, training=False), loaded(inputs, training=False)
        if not isinstance(before, dict):
            before, after = {"out": before}, {"out": after}
        assert sorted(before) == sorted(after)
        for key in before:
            np.testing.assert_array_equal(after[key].numpy(), before[key].numpy())


def test_content_table_is_frozen_in_the_ranking_model(content):
    from edgerec.sdk.models import build_model

    parts = build_model("context", _spec(), _small_config(), content)
    layer = parts.fused.get_layer("item_content")
    assert not layer.trainable
    np.testing.assert_array_equal(layer.get_weights()[0], content.table)
    assert np.all(content.table[:2] == 0)      # padding and OOV rows


def test_unknown_family_lists_the_families():
    from edgerec.sdk.models import build_model

    from edgerec.runtime.contract import FAMILIES

    with pytest.raises(SpecError, match=re.escape(f"Expected a model family among {list(FAMILIES)}, "
                                                  "received: 'wide_deep'")):
        build_model("wide_deep", _spec())


def test_context_model_needs_content_or_opt_out():
    from edgerec.sdk.models import build_model

    with pytest.raises(SpecError, match="content encoder"):
        build_model("context", _spec(), _small_config())
    parts = build_model("context", _spec(), _small_config(use_content=False))
    assert parts.content_encoder is None
    assert "item_content" not in [layer.name for layer in parts.fused.layers]


def test_model_config_checks_and_round_trip():
    from edgerec.sdk.models import ModelConfig

    config = ModelConfig(hidden_units=[32, 16], use_content=True)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(SpecError, match="Expected embedding_dim as a positive int, received: 0"):
        ModelConfig(embedding_dim=0)
    with pytest.raises(SpecError, match="hidden_units"):
        ModelConfig(hidden_units=(32, -1))
    with pytest.raises(SpecError, match="model-config keys"):
        ModelConfig.from_dict({"embeding_dim": 8})
