"""The pretrained all-MiniLM-L6-v2 content encoder: checkpoint verification, the tf_keras forward pass
against an independent numpy BERT written here from the same safetensors arrays, and sentence
similarity on pairs whose order any sentence encoder worth the name gets right.

Skips (with the install line) when the checkpoint package or safetensors is not installed.
"""
from __future__ import annotations

import dataclasses
import math
import zipfile

import numpy as np
import pytest

from edgerec.runtime.errors import SpecError

T = 32
TEXTS = ["Toy Story (1995) Adventure Animation Children Comedy Fantasy", "a film about space travel",
         "", "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)",
         "the longest title " * 20, "x"]


@pytest.fixture(scope="module")
def encoder(checkpoint):
    from edgerec.sdk.models.minilm import build_minilm_encoder

    return build_minilm_encoder(checkpoint, max_tokens=T)


# -- the checkpoint --------------------------------------------------------------------------------
def test_checkpoint_is_the_recorded_all_minilm_l6_v2(checkpoint):
    from edgerec.sdk.models import minilm

    facts = checkpoint.facts()
    assert facts["weights_sha256"] == minilm.WEIGHTS_SHA256
    assert (facts["num_hidden_layers"], facts["hidden_size"], facts["num_attention_heads"], facts["vocab_size"]) \
        == (6, 384, 12, 30522)
    assert facts["parameters"] == 22_713_216 and facts["encoder_parameters"] == 22_565_376
    assert checkpoint.pooling["pooling_mode_mean_tokens"] and checkpoint.normalize
    assert checkpoint.tokenizer(T).vocab_size == checkpoint.config["vocab_size"]


@pytest.mark.parametrize("change, match", [
    (lambda c: dataclasses.replace(c, sha256="0" * 64), "sha256"),
    (lambda c: dataclasses.replace(c, config={**c.config, "num_hidden_layers": 12}), "num_hidden_layers"),
    (lambda c: dataclasses.replace(c, pooling={**c.pooling, "pooling_mode_cls_token": True}), "mean-token pooling"),
    (lambda c: dataclasses.replace(c, normalize=False), "Normalize"),
    (lambda c: dataclasses.replace(c, weights={k: v for k, v in c.weights.items() if "layer.5.output.dense" not in k}),
     "exactly the BERT tensors"),
    (lambda c: dataclasses.replace(c, weights={**c.weights, "pooler.dense.bias": np.zeros(3, np.float32)}),
     "pooler.dense.bias of shape"),
])
def test_verification_refuses_a_different_checkpoint(checkpoint, change, match):
    from edgerec.sdk.models.minilm import verify_checkpoint

    with pytest.raises(SpecError, match=match):
        verify_checkpoint(change(checkpoint))


def test_an_archive_without_the_weights_is_refused(tmp_path):
    from edgerec.sdk.models.minilm import load_checkpoint

    pytest.importorskip("safetensors")
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("config.json", "{}")
    with pytest.raises(SpecError, match="model.safetensors"):
        load_checkpoint(archive)
    with pytest.raises(SpecError, match="readable"):
        load_checkpoint(tmp_path / "absent.zip")


def test_max_tokens_outside_the_position_table_is_refused(checkpoint):
    from edgerec.sdk.models.minilm import build_minilm_encoder

    for bad in (1, 513, 32.0, True):
        with pytest.raises(SpecError, match="max_tokens"):
            build_minilm_encoder(checkpoint, max_tokens=bad)


# -- the forward pass against an independent numpy BERT ------------------------------------------
def numpy_sentence_embedding(weights: dict, config: dict, ids: list[int]) -> np.ndarray:
    """BERT (post-norm, exact-erf GELU) over ``ids`` with no padding at all, then mean pooling and
    L2 normalisation: what sentence-transformers computes for one unpadded sentence."""
    w = {k: v.astype(np.float64) for k, v in weights.items() if k != "embeddings.position_ids"}
    eps, heads = config["layer_norm_eps"], config["num_attention_heads"]
    erf = np.vectorize(math.erf)

    def norm(x, name):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * w[name + ".weight"] + w[name + ".bias"]

    def linear(x, name):
        return x @ w[name + ".weight"].T + w[name + ".bias"]

    n = len(ids)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n] \
        + w["embeddings.token_type_embeddings.weight"][0]
    x = norm(x, "embeddings.LayerNorm")
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (linear(x, p + f"attention.self.{m}").reshape(n, heads, -1).transpose(1, 0, 2)
                   for m in ("query", "key", "value"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(1, 0, 2).reshape(n, -1)
        x = norm(x + linear(context, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        hidden = linear(x, p + "intermediate.dense")
        hidden = 0.5 * hidden * (1.0 + erf(hidden / math.sqrt(2.0)))
        x = norm(x + linear(hidden, p + "output.dense"), p + "output.LayerNorm")
    pooled = x.mean(0)
    return pooled / max(np.linalg.norm(pooled), 1e-12)


def test_keras_forward_equals_the_numpy_reference(checkpoint, encoder):
    from edgerec.sdk.models.minilm import encode_texts

    tokenizer = checkpoint.tokenizer(T)
    keras_vectors = encode_texts(encoder, tokenizer, TEXTS)
    assert keras_vectors.shape == (len(TEXTS), 384) and keras_vectors.dtype == np.float32
    for text, got in zip(TEXTS, keras_vectors):
        ids = [int(i) for i in tokenizer.encode(text) if i != tokenizer.pad_id]     # the unpadded sentence
        want = numpy_sentence_embedding(checkpoint.weights, checkpoint.config, ids)
        assert np.max(np.abs(got - want)) <= 1e-4, text
    np.testing.assert_allclose(np.linalg.norm(keras_vectors, axis=1), 1.0, atol=1e-5)
    # padding is invisible: a text alone and in a batch with longer texts gives the same vector
    np.testing.assert_allclose(encode_texts(encoder, tokenizer, TEXTS[1:2])[0], keras_vectors[1], atol=1e-6)


# -- sentence similarity ---------------------------------------------------------------------------
PAIRS = [  # (anchor, closer, farther)
    ("a film about space travel", "astronauts fly to Mars", "a recipe for bread"),
    ("a scary movie with ghosts", "a haunted house horror film", "a documentary about tax law"),
    ("Toy Story (1995) Animation Children Comedy", "Toy Story 2 (1999) Animation Children Comedy",
     "Schindler's List (1993) Drama War"),
    ("a romantic comedy in Paris", "two strangers fall in love in France", "a submarine war thriller"),
    ("The Godfather (1972) Crime Drama", "a mafia family saga", "cartoon animals sing songs"),
]


def test_similar_sentences_are_closer_than_unrelated_ones(checkpoint, encoder):
    from edgerec.sdk.models.minilm import encode_texts

    texts = [t for triple in PAIRS for t in triple]
    vectors = encode_texts(encoder, checkpoint.tokenizer(T), texts).reshape(len(PAIRS), 3, -1)
    for (anchor, closer, farther), (a, c, f) in zip(PAIRS, vectors):
        assert float(a @ c) > float(a @ f) + 0.1, (anchor, closer, farther, float(a @ c), float(a @ f))


# -- reducing and drawing the item vectors (edgerec.sdk.metrics.maps; synthetic vectors) ---------
def planted(n: int = 400, width: int = 48, rank: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(width, rank)))[0].T
    return (rng.normal(size=(n, rank)) * [5.0, 3.0, 2.0][:rank]) @ basis + 0.01 * rng.normal(size=(n, width)) + 1.0


def test_pca_recovers_a_planted_subspace_deterministically():
    from edgerec.sdk.metrics.maps import fit_pca

    x = planted()
    pca = fit_pca(x, 3)
    assert pca.transform(x).shape == (400, 3) and pca.transform(x).dtype == np.float32
    assert float(pca.explained_variance_ratio.sum()) > 0.999
    np.testing.assert_allclose(pca.inverse_transform(pca.transform(x)), x, atol=0.1)
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(3), atol=1e-5)
    np.testing.assert_array_equal(fit_pca(x[::-1].copy(), 3).components.round(4), pca.components.round(4))
    for bad in (0, 49, 2.0):
        with pytest.raises(SpecError, match="dims"):
            fit_pca(x, bad)
    with pytest.raises(SpecError, match="width"):
        pca.transform(x[:, :10])


def test_reduction_report_costs_and_what_each_width_keeps():
    from edgerec.sdk.metrics.maps import reduction_report

    x = planted(rank=3)
    rows = reduction_report(x, dims=(1, 3, 48), k=5)
    assert [r["dims"] for r in rows] == [1, 3, 48]
    assert [r["table_bytes"] for r in rows] == [400 * 4, 400 * 3 * 4, 400 * 48 * 4]
    assert rows[0]["explained_variance"] < rows[1]["explained_variance"] <= rows[2]["explained_variance"] + 1e-6
    assert rows[1]["reconstruction_cosine"] > 0.999 and rows[2]["neighbour_overlap@5"] == 1.0
    assert rows[0]["neighbour_overlap@5"] < rows[2]["neighbour_overlap@5"]


def test_item_map_png_is_written_with_one_label_per_item(tmp_path):
    pytest.importorskip("matplotlib")
    from edgerec.sdk.metrics.maps import draw_item_map, primary_genres

    x = planted()
    genres = [["Drama"], ["Comedy", "Drama"], ["Animation", "Comedy"], []] * 100
    labels = primary_genres(genres)
    assert labels[:4] == ["Drama", "Comedy", "Animation", ""]   # ties by count are broken by name
    path = draw_item_map(x, labels, tmp_path / "map.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["map.png"]   # no temp file left
    with pytest.raises(SpecError, match="one label per vector"):
        draw_item_map(x, labels[:-1], tmp_path / "bad.png")


# -- the device export (edgerec.sdk.models.minilm_export through the converters' passes) ----------
@pytest.mark.slow
def test_dynamic_range_tflite_is_a_quarter_of_the_weights_and_keeps_the_vectors(checkpoint, tmp_path):
    from edgerec.sdk.models import minilm
    from edgerec.sdk.models.minilm_export import measure_export

    texts = [t for triple in PAIRS for t in triple] + TEXTS
    report = measure_export(tmp_path, texts, max_tokens=16, rows=12, variants=[("tflite", "dynamic")], repeats=1,
                            checkpoint=checkpoint, cache_dir=tmp_path / "cache")
    entry = report["variants"]["tflite_dynamic"]
    assert "error" not in entry, entry
    assert entry["size_bytes"] <= 0.30 * 4 * minilm.ENCODER_PARAMETERS     # fp32 weights are 4 bytes each
    assert entry["cosine_min"] >= 0.99 and report["rows"] == 12
    assert (tmp_path / "minilm_export.json").is_file() and report["checkpoint"]["weights_sha256"] == minilm.WEIGHTS_SHA256
