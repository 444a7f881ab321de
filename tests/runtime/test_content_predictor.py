"""item_vectors and add_items through an exported content bundle, on both backends, and hot swap."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgerec.runtime.errors import BundleError, RequestError

pytestmark = pytest.mark.slow
BACKENDS = ("litert", "onnxruntime")
NEW_TEXT = "space cowboy dragon (2001)"


def _support():
    path = Path(__file__).resolve().parents[1] / "converters" / "test_content_support.py"
    spec = importlib.util.spec_from_file_location("content_support_r", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


S = _support()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("content-bundle")
    model_dir = S.write_model_dir(root / "model")
    S.export(model_dir, root / "bundle", quantize=("dynamic",))
    return {"root": root, "model_dir": model_dir, "bundle": root / "bundle"}


@pytest.fixture(scope="module")
def keras_vectors(bundle):
    from edgerec.converters.keras_io import load_keras_model
    from edgerec.runtime.text import tokenizer_for

    encoder = load_keras_model(bundle["model_dir"] / "content_encoder.keras", S.CUSTOM_MODULE)
    tokenizer = tokenizer_for(S.feature_spec().text)

    def encode(texts):
        return np.asarray(encoder(tokenizer.encode_batch(texts), training=False)["item_vector"], np.float64)
    return encode


@pytest.mark.parametrize("backend", BACKENDS)
def test_item_vectors_match_the_keras_encoder(bundle, keras_vectors, backend):
    import edgerec.runtime as er
    from edgerec.converters.content_export import cosine_rows

    texts = [S.item_text(i) for i in range(S.ITEMS)] + [NEW_TEXT, "unknown words only"]
    with er.load(bundle["bundle"], backend=backend) as predictor:
        assert "content_encoder" in predictor.parts
        vectors = predictor.item_vectors(texts)
        precision = predictor.manifest.artifact(predictor.manifest.selected[backend]["content_encoder"]).precision
    reference = keras_vectors(texts)
    assert vectors.shape == (len(texts), S.CONTENT_DIM) and vectors.dtype == np.float32
    if precision == "fp32":
        np.testing.assert_allclose(vectors, reference, atol=1e-5)
    else:
        assert cosine_rows(vectors, reference).min() >= 0.99


@pytest.mark.parametrize("backend", BACKENDS)
def test_added_item_is_scored_by_its_content_not_as_plain_oov(bundle, backend):
    """Exact comparisons use batches of the same rows: a dynamic-range ONNX artifact quantizes its
    activations per batch, so one row's score moves slightly with the other rows of its batch."""
    import edgerec.runtime as er

    user = {"user_id": "u1", "history": ["i3", "i7", "i9"]}
    rows = [{**user, "item": item} for item in ("new-1", "never-added", "i5")]
    with er.load(bundle["bundle"], backend=backend) as predictor:
        before = predictor.predict(rows[:1], return_oov=True)
        assert before.oov.tolist() == [True]
        assert predictor.add_items({"new-1": NEW_TEXT}) == ["new-1"]
        assert predictor.added_items == {"new-1": NEW_TEXT} and predictor.stats()["added_items"] == 1
        added = predictor.predict(rows[:1], return_oov=True)
        assert added.oov.tolist() == [False]
        assert abs(float(added.scores[0]) - float(before.scores[0])) > 1e-4      # not the generic OOV score
        np.testing.assert_allclose(predictor.predict(rows[1:2]), before.scores, atol=1e-6)
        # exactly what feeding the item's vector with the OOV id gives
        hist = np.zeros((1, S.SEQ), np.int32)
        hist[0, -3:] = [predictor.spec.item_vocab.lookup(i) for i in user["history"]]
        direct = predictor.predict_arrays({"hist_items": hist, "cand_item": np.array([1], np.int32),
                                           "cand_content": predictor.item_vectors([NEW_TEXT])})["score"]
        np.testing.assert_allclose(added.scores[0], np.asarray(direct).reshape(-1)[0], atol=1e-6)
        # a batch, candidates and top-k score it the same way
        batch = predictor.predict(rows, return_oov=True)
        assert batch.oov.tolist() == [False, True, False]
        np.testing.assert_allclose(batch.scores[0], added.scores[0], atol=5e-3)
        scores, oov = predictor.score_candidates(user, ["new-1", "never-added", "i5"], return_oov=True)
        np.testing.assert_allclose(scores, batch.scores, atol=5e-3)
        assert oov.tolist() == [False, True, False]
        top = predictor.top_k(user, ["new-1", "never-added", "i5"], k=3)
        assert dict(top)["new-1"] == pytest.approx(float(scores[0]), abs=1e-6)
        predictor.remove_items(["new-1"])
        np.testing.assert_allclose(predictor.predict(rows[:1]), before.scores, atol=1e-6)


def test_add_items_refuses_bad_input(bundle):
    import edgerec.runtime as er

    with er.load(bundle["bundle"], backend="onnxruntime") as predictor:
        for bad, match in (({}, "non-empty dict"), ("i1", "non-empty dict"), ({"i1": "a known item"}, "does not know"),
                           ({"n": None}, "non-blank str"), ({"n": ""}, "non-blank str"), ({1.5: "x"}, "item ids")):
            with pytest.raises(RequestError, match=match):
                predictor.add_items(bad)
        assert predictor.added_items == {}
        with pytest.raises(RequestError, match="item texts as str"):
            predictor.item_vectors(["ok", 3])


def _without_content_encoder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["part"] != "content_encoder"]
    for parts in manifest["selected"].values():
        parts.pop("content_encoder", None)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def _retagged(src: Path, dst: Path) -> Path:
    """A copy with a different manifest (so a different version), same artifacts."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["created"] = "2000-01-01T00:00:00+00:00"
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_added_items_survive_a_swap_or_block_a_bundle_that_cannot_encode_them(bundle):
    import edgerec.runtime as er

    request = [{"history": ["i2"], "item": "new-2"}]
    plain = _without_content_encoder(bundle["bundle"], bundle["root"] / "no-content")
    other = _retagged(bundle["bundle"], bundle["root"] / "retagged")
    with er.load(bundle["bundle"], backend="onnxruntime") as predictor:
        predictor.add_items({"new-2": NEW_TEXT})
        scored = predictor.predict(request)
        version = predictor.version
        with pytest.raises(BundleError, match="clear_items"):
            predictor.swap(plain)
        assert predictor.version == version and predictor.stats()["failed_swaps"] == 1
        np.testing.assert_allclose(predictor.predict(request), scored, atol=1e-6)
        assert predictor.swap(other) != version
        np.testing.assert_allclose(predictor.predict(request, use_cache=False), scored, atol=1e-6)
        assert predictor.predict(request, return_oov=True).oov.tolist() == [False]
        predictor.clear_items()
        predictor.swap(plain)
        assert "content_encoder" not in predictor.parts
        with pytest.raises(RequestError, match="content_encoder"):
            predictor.add_items({"new-2": NEW_TEXT})
