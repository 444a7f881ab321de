"""The shared backend API on hand-made models: names, validation, resize-once, providers."""
from __future__ import annotations

import numpy as np
import pytest

from edgerec.runtime.backends import available_backends, create_backend
from edgerec.runtime.errors import BackendUnavailableError, BundleError, RequestError

from .conftest import tiny_expected


def _feeds(batch=3, seq=4, seed=0):
    rng = np.random.default_rng(seed)
    return {"hist_items": rng.integers(0, 50, size=(batch, seq)).astype(np.int32),
            "cand_item": rng.integers(0, 50, size=batch).astype(np.int32)}


@pytest.fixture(params=["onnxruntime", "litert"])
def backend(request, tiny_onnx, tmp_path_factory):
    if request.param == "litert":
        path = request.getfixturevalue("tiny_tflite")
    else:
        path = tiny_onnx
    with create_backend(request.param, path, num_threads=1) as b:
        yield b


def test_available_backends_lists_installed():
    assert set(available_backends()) == {"litert", "onnxruntime"}


def test_signature_uses_canonical_names(backend):
    assert {t.name for t in backend.inputs} == {"hist_items", "cand_item"}
    specs = {t.name: t for t in backend.inputs}
    assert specs["hist_items"].dtype == "int32" and specs["hist_items"].shape == [None, 4]
    assert specs["cand_item"].shape == [None]
    assert [t.name for t in backend.outputs] == ["score"]
    assert backend.outputs[0].dtype == "float32"


def test_run_matches_reference_and_copies(backend):
    feeds = _feeds(batch=5)
    out = backend.run(feeds)
    np.testing.assert_allclose(out["score"], tiny_expected(feeds["hist_items"], feeds["cand_item"]), rtol=1e-5)
    first = out["score"].copy()
    backend.run(_feeds(batch=5, seed=1))
    np.testing.assert_array_equal(out["score"], first)   # earlier result not overwritten


def test_feed_order_irrelevant_and_batch_changes(backend):
    feeds = _feeds(batch=2)
    reversed_feeds = dict(reversed(list(feeds.items())))
    np.testing.assert_array_equal(backend.run(feeds)["score"], backend.run(reversed_feeds)["score"])
    for batch in (1, 7, 1):
        f = _feeds(batch=batch, seed=batch)
        assert backend.run(f)["score"].shape == (batch, 1)


def test_litert_allocates_once_per_shape(tiny_tflite):
    with create_backend("litert", tiny_tflite) as backend:
        assert backend.info["direct"]
        for _ in range(5):
            backend.run(_feeds(batch=3))
        assert backend.info["allocations"] == 1
        backend.run(_feeds(batch=4))
        backend.run(_feeds(batch=4))
        assert backend.info["allocations"] == 2


@pytest.mark.parametrize("mutate, fragment", [
    (lambda f: f.pop("cand_item"), "missing ['cand_item']"),
    (lambda f: f.update(extra=np.zeros(3, np.int32)), "unknown ['extra']"),
    (lambda f: f.update(cand_item=f["cand_item"].astype(np.int64)), "dtype int32"),
    (lambda f: f.update(cand_item=f["cand_item"].astype(np.float32)), "dtype int32"),
    (lambda f: f.update(hist_items=f["hist_items"][:, :3]), "shape [None, 4]"),
    (lambda f: f.update(hist_items=f["hist_items"][0]), "rank 2"),
    (lambda f: f.update(cand_item=f["cand_item"][:2]), "one batch size"),
    (lambda f: f.update(cand_item=[1, 2, 3]), "numpy array"),
    (lambda f: f.update(hist_items=np.zeros((0, 4), np.int32), cand_item=np.zeros(0, np.int32)), "batch of at least 1"),
])
def test_bad_feeds_raise_request_error(backend, mutate, fragment):
    feeds = _feeds()
    mutate(feeds)
    with pytest.raises(RequestError, match="Expected") as info:
        backend.run(feeds)
    assert fragment in str(info.value)


def test_check_feeds_lets_shared_inputs_come_as_one_row(backend):
    """A 1-row input among N-row ones passes only when it is named shared (one user's state that
    the model broadcasts); the other inputs must still agree, and a shared input of another row
    count is refused."""
    feeds = _feeds(batch=5)
    one_row = {**feeds, "hist_items": feeds["hist_items"][:1]}
    with pytest.raises(RequestError, match="one batch size"):
        backend.check_feeds(one_row)
    checked = backend.check_feeds(one_row, shared=frozenset({"hist_items"}))
    assert checked["hist_items"].shape == (1, 4) and checked["cand_item"].shape == (5,)
    for bad in ({**feeds, "hist_items": feeds["hist_items"][:2]}, {**feeds, "cand_item": feeds["cand_item"][:3]}):
        with pytest.raises(RequestError, match=r"one batch size across inputs \(1 row allowed for \['hist_items'\]\)"):
            backend.check_feeds(bad, shared=frozenset({"hist_items"}))


def test_bad_feeds_collects_all_problems(backend):
    with pytest.raises(RequestError) as info:
        backend.run({"hist_items": np.zeros((2, 4), np.int64), "zzz": np.zeros(2)})
    text = str(info.value)
    assert "missing ['cand_item']" in text and "unknown ['zzz']" in text and "dtype int32" in text


def test_not_a_dict_and_closed(backend):
    with pytest.raises(RequestError):
        backend.run([np.zeros((1, 4), np.int32)])
    backend.close()
    with pytest.raises(RequestError, match="closed"):
        backend.run(_feeds())


def test_unknown_backend_and_option(tiny_onnx):
    with pytest.raises(BackendUnavailableError, match="Expected a backend name"):
        create_backend("tensorflow", tiny_onnx)
    with pytest.raises(BackendUnavailableError, match="options accepted"):
        create_backend("onnxruntime", tiny_onnx, bogus=1)
    with pytest.raises(BackendUnavailableError):
        create_backend("onnxruntime", tiny_onnx, graph_optimization_level="max")
    with pytest.raises(BackendUnavailableError):
        create_backend("litert", tiny_onnx.with_suffix(".tflite"), num_threads=0)


def test_unloadable_model_is_bundle_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(BundleError):
        create_backend("onnxruntime", bad)
    bad_tfl = tmp_path / "bad.tflite"
    bad_tfl.write_bytes(b"not a model at all, just bytes")
    with pytest.raises(BundleError):
        create_backend("litert", bad_tfl)


def test_ort_options(tiny_onnx, tmp_path):
    optimized = tmp_path / "opt.onnx"
    with create_backend("onnxruntime", tiny_onnx, num_threads=1, graph_optimization_level="extended",
                        optimized_model_path=optimized, io_binding=True) as b:
        feeds = _feeds()
        np.testing.assert_allclose(b.run(feeds)["score"], tiny_expected(feeds["hist_items"], feeds["cand_item"]), rtol=1e-5)
        assert b.info["providers"][-1] == "CPUExecutionProvider"
    assert optimized.is_file() and optimized.stat().st_size > 0


def test_ort_explicit_cuda_without_gpu_raises(tiny_onnx):
    import onnxruntime
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime lists CUDA; covered by test_providers with a fake session")
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
        create_backend("onnxruntime", tiny_onnx, providers=["cuda"])
    with create_backend("onnxruntime", tiny_onnx, providers="auto") as b:
        assert b.info["providers"] == ["CPUExecutionProvider"]
        assert any("CUDAExecutionProvider" in note for note in b.info["fallback"])
