"""Predictor over a small real bundle (tf_keras -> tflite/onnx), both backends."""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

import edgerec.runtime as er
from edgerec.runtime.cache import SESSIONS
from edgerec.runtime.errors import BackendUnavailableError, BundleError, IntegrityError, RequestError
from edgerec.runtime.preprocess import Preprocessor

from .conftest import make_requests, make_spec

pytestmark = pytest.mark.slow
BACKENDS = ["onnxruntime", "litert"]


def _examples(bundle):
    return [json.loads(line) for line in (bundle / "examples.jsonl").read_text().splitlines()]


@pytest.fixture(params=BACKENDS)
def predictor(request, bundle):
    with er.load(bundle, backend=request.param, num_threads=1) as p:
        yield p


def test_predict_matches_keras_expected(predictor, bundle):
    rows = _examples(bundle)
    got = predictor.predict(rows)
    want = np.array([r["expected"] for r in rows])
    assert got.dtype == np.float32 and got.shape == (32,)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_score_candidates_equals_fused_rows(predictor):
    user = {"user_id": "u1", "history": ["10", "11", "12", "99"],
            "context": {"timestamp": 964982703, "device": "ios"}, "dense": {"price": 7.5}}
    candidates = [str(i) for i in range(5, 35)]
    scores = predictor.score_candidates(user, candidates)
    fused = predictor.predict([{**user, "item": c} for c in candidates], use_cache=False)
    np.testing.assert_allclose(scores, fused, atol=1e-5)
    stats = predictor.stats()["caches"]["user_state"]
    assert stats["misses"] == 1 and stats["entries"] == 1
    again = predictor.score_candidates(user, candidates)
    np.testing.assert_array_equal(scores, again)
    assert predictor.stats()["caches"]["user_state"]["hits"] == 1
    # new behaviour: a different sequence misses the cache and changes the scores
    moved = predictor.score_candidates({**user, "history": user["history"] + ["20"]}, candidates)
    assert predictor.stats()["caches"]["user_state"]["misses"] == 2
    assert not np.allclose(moved, scores)
    # use_cache=False bypasses the cache entirely
    predictor.score_candidates(user, candidates, use_cache=False)
    assert predictor.stats()["caches"]["user_state"]["hits"] == 1


def test_top_k(predictor):
    user = {"user_id": "u2", "history": ["10", "12"], "context": {"device": "android"}}
    candidates = [str(i) for i in range(10, 30)]
    scores = predictor.score_candidates(user, candidates)
    top = predictor.top_k(user, candidates, k=5)
    assert [c for c, _ in top] == [candidates[i] for i in np.argsort(-scores, kind="stable")[:5]]
    assert all(a[1] >= b[1] for a, b in zip(top, top[1:]))
    assert len(predictor.top_k(user, candidates, k=100)) == 20
    with pytest.raises(RequestError):
        predictor.top_k(user, candidates, k=0)


def test_preprocessing_parity_indices(predictor):
    """The predictor encodes exactly like training (shared Preprocessor): OOV, padding, truncation,
    context buckets, standardised dense — and the model sees those arrays."""
    request = {"history": ["99", "10"], "item": "29",
               "context": {"timestamp": 4 * 86400 + 13 * 3600, "device": "web"}, "dense": {"price": 9.0}}
    long_request = {**request, "history": ["10", "99", "11", "12", "13", "14", "15"]}
    arrays = predictor._model.preprocessor.encode_requests([request, long_request])
    np.testing.assert_array_equal(arrays["hist_items"], [[0, 0, 0, 1, 2], [3, 4, 5, 6, 7]])
    np.testing.assert_array_equal(arrays["cand_item"], [21, 21])
    np.testing.assert_array_equal(arrays["hour"], [14, 14])          # hour 13 -> bucket 14
    np.testing.assert_array_equal(arrays["device"], [1, 1])          # "web" is OOV
    np.testing.assert_allclose(arrays["dense"], [[2.0], [2.0]])      # (9 - 5) / 2
    from edgerec.runtime.preprocess import Preprocessor
    training = Preprocessor(make_spec()).encode_requests([request, long_request])
    for name in arrays:
        np.testing.assert_array_equal(arrays[name], training[name])
    np.testing.assert_allclose(predictor.predict([request, long_request]),
                               predictor.predict_arrays(arrays)["score"].reshape(-1), atol=1e-6)


def test_predict_arrays_tensor_path(predictor, bundle):
    rows = _examples(bundle)
    arrays = Preprocessor(make_spec()).encode_requests(rows)
    out = predictor.predict_arrays(arrays)
    np.testing.assert_allclose(out["score"].reshape(-1), predictor.predict(rows), atol=1e-6)
    state = predictor.predict_arrays({"hist_items": arrays["hist_items"]}, part="user_encoder")
    assert state["user_state"].shape == (32, 8)
    with pytest.raises(RequestError, match="dtype int32"):
        predictor.predict_arrays({**arrays, "cand_item": arrays["cand_item"].astype(np.int64)})


def test_result_cache(bundle):
    with er.load(bundle, backend="onnxruntime", cache={"result_entries": 100}) as p:
        rows = make_requests(10, seed=5)
        first = p.predict(rows)
        second = p.predict(rows)
        np.testing.assert_array_equal(first, second)
        stats = p.stats()["caches"]["result"]
        assert stats["hits"] == 10 and stats["misses"] == 10
        p.predict(rows, use_cache=False)
        assert p.stats()["caches"]["result"]["hits"] == 10


@pytest.mark.parametrize("bad, fragment", [
    ({"history": ["10"]}, "'item'"),
    ({"item": "10"}, "'history'"),
    ({"history": ["10"], "item": "10", "hist": []}, "request keys"),
    ({"history": "10", "item": "10"}, "history as a list"),
    ({"history": ["10"], "item": 1.5}, "candidate item id"),
    ({"history": ["10"], "item": "10", "dense": {"price": float("nan")}}, "finite"),
    ({"history": ["10"], "item": "10", "context": {"hour": 25}}, "context.hour"),
])
def test_bad_requests_are_typed(predictor, bad, fragment):
    with pytest.raises(RequestError, match="Expected") as info:
        predictor.predict([bad])
    assert fragment in str(info.value)


def test_unknown_backend_and_bad_paths(bundle, tmp_path):
    with pytest.raises(BackendUnavailableError):
        er.load(bundle, backend="tensorflow")
    with pytest.raises(BundleError):
        er.load(tmp_path / "nope")
    with pytest.raises(BundleError):
        er.load(tmp_path)                       # a folder without manifest.json
    with pytest.raises(BundleError):
        er.load(12)


def test_tampered_bundle_refused(copy_bundle):
    path = copy_bundle()
    data = bytearray((path / "scorer.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "scorer.onnx").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="scorer.onnx"):
        er.load(path)


def test_archive_bundle_and_session_sharing(bundle, tmp_path):
    archive = tmp_path / "bundle.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname="v1")
    before = SESSIONS.stats()
    with er.load(archive, backend="onnxruntime") as a, er.load(bundle, backend="onnxruntime") as b:
        rows = make_requests(4, seed=9)
        np.testing.assert_array_equal(a.predict(rows), b.predict(rows))
        assert a._model.parts["fused"] is b._model.parts["fused"]     # same sha256 -> shared session
        assert SESSIONS.stats()["hits"] >= before["hits"] + 3
    with er.load(bundle, backend="onnxruntime", cache=False) as c:
        assert c._model.parts["fused"] is not None and SESSIONS.stats()["entries"] == before["entries"]


def test_byom_bundle_without_spec(copy_bundle):
    from edgerec.runtime.manifest import load_manifest, write_manifest
    path = copy_bundle("byom")
    manifest = load_manifest(path)
    manifest.feature_spec = None
    write_manifest(path, manifest)
    with er.load(path, backend="litert") as p:
        with pytest.raises(RequestError, match="feature spec"):
            p.predict([{"history": [], "item": "1"}])
        feeds = Preprocessor(make_spec()).encode_requests(make_requests(3))
        assert p.predict_arrays(feeds)["score"].shape == (3, 1)


def test_auto_backend_and_stats(bundle):
    with er.load(bundle) as p:
        assert p.backend == "onnxruntime"
        stats = p.stats()
        assert stats["parts"] == ["fused", "scorer", "user_encoder"] and len(stats["version"]) == 16
    with pytest.raises(RequestError, match="closed"):
        p.predict(make_requests(1))


def test_item_vectors_through_content_encoder(copy_bundle):
    """A content_encoder part gets item texts tokenised with the training Tokenizer."""
    import tf2onnx

    from edgerec.runtime.io import sha256_file
    from edgerec.runtime.manifest import Artifact, TensorSpec, file_entry, load_manifest, write_manifest
    from edgerec.runtime.spec import FeatureSpec, TextSpec
    from edgerec.runtime.text import Tokenizer

    from .conftest import _tf

    tf, keras = _tf()
    tokens = keras.Input((6,), dtype="int32", name="item_tokens")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(8, 4)(tokens))
    encoder = keras.Model(tokens, keras.layers.Dense(3, name="item_vector")(pooled))
    path = copy_bundle("text")
    proto, _ = tf2onnx.convert.from_keras(encoder, input_signature=[tf.TensorSpec([None, 6], tf.int32, name="item_tokens")],
                                          opset=17)
    (path / "content.onnx").write_bytes(proto.SerializeToString())
    spec_dict = make_spec().to_dict()
    spec_dict["text"] = TextSpec(("toy", "story", "war"), max_tokens=6).to_dict()
    FeatureSpec.from_dict(spec_dict).save(path / "feature_spec.json")
    manifest = load_manifest(path, verify=False)
    manifest.artifacts.append(Artifact("content.onnx", "onnx", "fp32", "content_encoder", sha256_file(path / "content.onnx"),
                                       (path / "content.onnx").stat().st_size, [TensorSpec("item_tokens", "int32", [None, 6])],
                                       [TensorSpec("item_vector", "float32", [None, 3])]))
    manifest.selected["onnxruntime"]["content_encoder"] = "content.onnx"
    manifest.files = [file_entry(path, f["file"], f.get("role", "")) for f in manifest.files]
    write_manifest(path, manifest)
    texts = ["Toy Story", "War of the Worlds", ""]
    with er.load(path, backend="onnxruntime") as p:
        vectors = p.item_vectors(texts)
        want = encoder.predict(Tokenizer(("toy", "story", "war"), 6).encode_batch(texts), verbose=0)
        np.testing.assert_allclose(vectors, want, atol=1e-5)
        with pytest.raises(RequestError):
            p.item_vectors(["ok", 3])
        with pytest.raises(RequestError):
            p.item_vectors("Toy Story")
    with er.load(path, backend="litert") as p:
        with pytest.raises(RequestError, match="content_encoder"):
            p.item_vectors(texts)
