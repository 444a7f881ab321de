"""The MiniLM content tower of the context model: the catalogue PCA folded into the encoder gives
the table's vectors, the WordPiece text spec tokenises as the checkpoint's tokenizer, vectors are
cached by catalogue, and `edgerec train --content-encoder minilm` writes a loadable model dir.

Skips (with the install line) when the checkpoint package is not installed."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgerec.runtime.contract import CAND_CONTENT
from edgerec.runtime.errors import SpecError

T = 16
TEXTS = ["", "", "Toy Story (1995) Adventure Animation Children Comedy Fantasy", "Heat (1995) Action Crime Thriller",
         "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001) Comedy Romance", "a [MASK] film about space",
         "Jumanji (1995) Adventure Children Fantasy", "Grumpier Old Men (1995) Comedy Romance",
         "Waiting to Exhale (1995) Comedy Drama Romance", "Sabrina (1995) Comedy Romance"]


@pytest.fixture(scope="module")
def spec():
    from edgerec.runtime.spec import FeatureSpec, Vocabulary

    return FeatureSpec(5, Vocabulary("item", tuple(str(i) for i in range(len(TEXTS) - 2))))


@pytest.fixture(scope="module")
def tower(checkpoint, spec, tmp_path_factory):
    from edgerec.sdk.models.minilm import minilm_content

    cache = tmp_path_factory.mktemp("minilm-cache")
    return (*minilm_content(spec, TEXTS, dims=4, max_tokens=T, cache_dir=cache), cache)


def test_the_folded_pca_encoder_outputs_the_tables_vectors(tower):
    from edgerec.sdk.models.content import tokenize_items

    spec, encoder, table, info, _ = tower
    assert table.shape == (len(TEXTS), 4) and not table[:2].any()
    assert encoder.output_shape["item_vector"] == (None, 4)
    vectors = encoder.predict(tokenize_items(spec, TEXTS[2:]), verbose=0)["item_vector"]
    np.testing.assert_allclose(vectors, table[2:], atol=2e-5)
    assert info["dims"] == 4 and 0 < info["explained_variance"] <= 1 and info["encoder"] == "minilm"
    assert info["weights_sha256"] and info["cache_hit"] is False


def test_the_wordpiece_text_spec_tokenises_as_the_checkpoint(tower, checkpoint):
    from edgerec.runtime.spec import TextSpec
    from edgerec.runtime.text import tokenizer_for

    spec = tower[0]
    assert spec.text.tokenizer == "wordpiece" and spec.text.max_tokens == T
    assert spec.text.vocab[:1] == ("[PAD]",) and spec.text.vocab[101:103] == ("[CLS]", "[SEP]")
    reference = checkpoint.tokenizer(T)
    assert len(spec.text.vocab) == reference.vocab_size
    np.testing.assert_array_equal(tokenizer_for(spec.text).encode_batch(TEXTS), reference.encode_batch(TEXTS))
    again = TextSpec.from_dict(json.loads(json.dumps(spec.text.to_dict())))
    assert again == spec.text


def test_vectors_are_cached_by_catalogue(tower, checkpoint, spec):
    from edgerec.sdk.models.minilm import minilm_content

    _, _, table, _, cache = tower
    files = sorted(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"
    _, _, again, info = minilm_content(spec, TEXTS, dims=4, max_tokens=T, cache_dir=cache)
    assert info["cache_hit"] is True
    np.testing.assert_allclose(again, table, atol=1e-6)
    changed = TEXTS[:-1] + ["Sabrina (1954) Comedy Romance"]
    _, _, _, info = minilm_content(spec, changed, dims=4, max_tokens=T, cache_dir=cache)
    assert info["cache_hit"] is False and len(list(cache.iterdir())) == 2
    _, _, full, _ = minilm_content(spec, TEXTS, dims=384, max_tokens=T, cache_dir=cache)
    np.testing.assert_allclose(np.linalg.norm(full[2:], axis=1), 1.0, atol=1e-5)     # no PCA: the sentence vectors
    with pytest.raises(SpecError, match="content dims"):
        minilm_content(spec, TEXTS, dims=385, max_tokens=T, cache_dir=cache)


@pytest.mark.slow
def test_train_with_the_minilm_content_encoder_writes_a_loadable_model_dir(checkpoint, tmp_path):
    from edgerec.sdk.models import ModelConfig
    from edgerec.sdk.training import TrainConfig
    from edgerec.sdk.training.job import ITEM_MAP_FILE, TrainJob, train_and_save
    from edgerec.sdk.training.model_dir import load_model_dir

    pytest.importorskip("matplotlib")
    job = TrainJob(out=str(tmp_path / "ctx"), family="context", max_seq_len=8,
                   data_options={"num_users": 60, "num_items": 80, "num_events": 1500},
                   model=ModelConfig(embedding_dim=8, hidden_units=(8,), attention_units=(8,), content_encoder="minilm",
                                     content_dim=8, minilm_max_tokens=T),
                   train=TrainConfig(epochs=1, verbose=0, full_catalogue_rows=0))
    outcome = train_and_save(job)
    root = outcome.model_dir
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["content"] == {"encoder": "minilm", "dims": 8, "items": 80, "table_bytes": 82 * 8 * 4}
    assert (root / ITEM_MAP_FILE).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((root / "edgerec_model.json").read_text())["custom_objects_module"] == "edgerec.sdk.models.minilm"
    parts = load_model_dir(root)
    assert parts.spec.text.tokenizer == "wordpiece" and parts.spec.text.content_dim == 8
    assert parts.content_encoder.output_shape["item_vector"] == (None, 8)
    from edgerec.sdk.models.content import encode_item_texts

    vectors = encode_item_texts(parts.content_encoder, parts.spec, ["Toy Story (1995)"])
    assert vectors.shape == (1, 8)
    validation = np.load(root / "validation.npz")
    assert validation[CAND_CONTENT].shape[1] == 8 and not validation[CAND_CONTENT].any()
