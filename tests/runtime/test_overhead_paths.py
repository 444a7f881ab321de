"""The batch-1 overhead cuts of issue 5 keep their guarantees: the one-pass feed + id-range check
agrees with the full checks, requests are encoded only into the inputs a model declares (the
rest still validated), Preprocessor arrays skip the second check only where the signature is the
spec's, ONNX Runtime's direct session call equals the public one, and lock-free call counting
loses nothing across threads."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edgerec.runtime as er
from edgerec.runtime.backends import create_backend
from edgerec.runtime.backends.base import Backend, feeds_match
from edgerec.runtime.backends.ort import OrtBackend
from edgerec.runtime.errors import RequestError
from edgerec.runtime.loaded import LoadedBundle
from edgerec.runtime.tensor_checks import check_tensor_ranges, encoded_fits
from edgerec.runtime.manifest import TensorSpec
from edgerec.runtime.preprocess import Preprocessor
from edgerec.runtime.spec import FeatureSpec

from .conftest import make_requests, make_spec

LIMIT = 50


@pytest.fixture(scope="module", params=["onnxruntime", "litert"])
def tiny_backend(request):
    path = request.getfixturevalue("tiny_onnx" if request.param == "onnxruntime" else "tiny_tflite")
    with create_backend(request.param, path, num_threads=1) as backend:
        yield backend


def _full_checks_pass(backend, feeds) -> bool:
    try:
        check_tensor_ranges(None, feeds, {"hist_items": LIMIT, "cand_item": LIMIT})
        backend.check_feeds(feeds)
    except RequestError:
        return False
    return True


@settings(max_examples=150, deadline=None)
@given(batch=st.integers(0, 3), cand_batch=st.sampled_from([None, 1, 2]), seq=st.sampled_from([3, 4]),
       dtype=st.sampled_from(["int32", "int64", "uint32", "float32"]),
       low=st.sampled_from([-3, 0]), high=st.sampled_from([1, LIMIT, LIMIT + 5, 2**31 - 1]),
       extra=st.booleans(), strided=st.booleans())
def test_one_pass_check_agrees_with_full_checks(tiny_backend, batch, cand_batch, seq, dtype, low, high, extra,
                                                strided):
    rng = np.random.default_rng(batch * 7 + seq)
    hist = rng.integers(low, high, size=(batch, seq * (2 if strided else 1)), endpoint=True).astype(dtype)
    feeds = {"hist_items": hist[:, ::2] if strided else hist,
             "cand_item": rng.integers(low, high, size=batch if cand_batch is None else cand_batch,
                                       endpoint=True).astype(np.int32)}
    if extra:
        feeds["hour"] = np.zeros(batch, np.int32)
    plan = tiny_backend.feed_plan({"hist_items": LIMIT, "cand_item": LIMIT}, finite=True)
    fast = feeds_match(plan, feeds)
    full = _full_checks_pass(tiny_backend, feeds)
    assert fast == full        # no false accept, and exact well-formed feeds take the fast path
    if fast:
        assert tiny_backend.run_validated(feeds)["score"].shape[0] == batch


def test_one_pass_check_refuses_non_finite_floats():
    backend = Backend("none")
    backend.inputs = [TensorSpec("dense", "float32", [None, 2])]
    plan = backend.feed_plan({}, finite=True)
    for value in (np.nan, np.inf, -np.inf):
        bad = np.ones((2, 2), np.float32)
        bad[1, 0] = value
        assert not feeds_match(plan, {"dense": bad})
    assert feeds_match(plan, {"dense": np.full((2, 2), 3e38, np.float32)})
    assert feeds_match(backend.feed_plan(), {"dense": np.full((1, 2), np.nan, np.float32)})   # unchecked plan


def test_fast_path_off_where_check_feeds_adds_checks(tiny_onnx):
    class Bounded(OrtBackend):
        def check_feeds(self, feeds):
            checked = super().check_feeds(feeds)
            if checked["cand_item"].shape[0] > 2:
                raise RequestError("Expected at most 2 rows, received: more")
            return checked

    feeds = {"hist_items": np.zeros((3, 4), np.int32), "cand_item": np.zeros(3, np.int32)}
    with Bounded(tiny_onnx, num_threads=1) as backend:
        assert not backend.fast_checks and not backend._feeds_match(feeds)
        with pytest.raises(RequestError, match="at most 2 rows"):
            backend.run(feeds)
    with OrtBackend(tiny_onnx, num_threads=1) as plain:
        assert plain.fast_checks and plain._feeds_match(feeds)


def test_ort_direct_call_equals_public_run(tiny_onnx):
    feeds = {"hist_items": np.array([[0, 3, 7, 9], [1, 1, 2, 40]], np.int32), "cand_item": np.array([5, 6], np.int32)}
    with OrtBackend(tiny_onnx, num_threads=1) as backend:
        assert backend.info["direct_run"] and backend.strided_inputs
        public = backend._session.run(None, feeds)[0]
        np.testing.assert_array_equal(backend.run(feeds)["score"], public)
        with pytest.raises(RequestError, match="InvalidArgument|INVALID_ARGUMENT"):   # ORT's own error, typed
            backend.run_validated({**feeds, "cand_item": feeds["cand_item"].astype(np.int64)})
    with OrtBackend(tiny_onnx, num_threads=1, io_binding=True) as bound:
        assert not bound.info["direct_run"] and not bound.strided_inputs
        np.testing.assert_array_equal(bound.run(feeds)["score"], public)


def test_requests_encode_only_declared_inputs_but_validate_all():
    spec = make_spec()
    pre = Preprocessor(spec)
    requests = make_requests(5, seed=11)
    full = pre.encode_requests(requests)
    for inputs in (frozenset({"hist_items", "cand_item"}), frozenset({"hist_items", "cand_item", "device"}),
                   {"hist_items", "cand_item", "dense", "hour"}):
        part = pre.encode_checked(requests, inputs)
        assert set(part) == {"hist_items", "cand_item"} | (set(inputs) & set(full))
        for name, value in part.items():
            np.testing.assert_array_equal(value, full[name])
        assert pre.encode_checked(requests[:1], inputs).keys() == part.keys()     # the single-request path
    lean = frozenset({"hist_items", "cand_item"})
    for bad, fragment in [({"context": {"hour": 24}}, "context.hour as an int"),
                          ({"context": {"timestamp": -1}}, "non-negative unix seconds"),
                          ({"context": {"device": ["ios"]}}, "context.device as str or int"),
                          ({"context": "noon"}, "context as a JSON object"),
                          ({"dense": {"price": float("nan")}}, "finite dense.price"),
                          ({"dense": {"price": "3"}}, "dense.price as a number")]:
        request = {**requests[0], **bad}
        with pytest.raises(RequestError, match=fragment):
            pre.encode_checked([request], lean)
        with pytest.raises(RequestError, match=fragment):
            pre.encode_checked([requests[1], request], lean)


def test_encoded_fits_only_the_spec_signature(tiny_onnx):
    with OrtBackend(tiny_onnx, num_threads=1) as backend:                 # hist_items [None, 4], cand_item [None]
        def signature(seq):
            return FeatureSpec.from_dict({**make_spec().to_dict(), "max_seq_len": seq}).input_signature("fused")

        assert encoded_fits(signature(4), backend) and not encoded_fits(signature(5), backend)
        assert not encoded_fits({"hist_items": ("int32", (None, 4))}, backend)           # cand_item not produced
        assert not encoded_fits({"hist_items": ("int64", (None, 4)), "cand_item": ("int32", (None,))}, backend)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "litert"])
def test_encoded_rows_skip_the_second_check_with_equal_scores(bundle, backend):
    model = LoadedBundle.open(bundle, backend, share_sessions=False)
    try:
        assert model._encoded_fits == {"fused": True}
        assert model.request_inputs == {t.name for t in model.parts["fused"].inputs}
        arrays = model.preprocessor.encode_checked(make_requests(4, seed=2), model.request_inputs)
        fused = model.parts["fused"]
        checked = []
        original = fused.check_feeds
        fused.check_feeds = lambda feeds: checked.append(1) or original(feeds)
        fused._plan = (fused.inputs, fused.feed_plan(), False)      # force the checked route for `run`
        np.testing.assert_array_equal(model.run_encoded("fused", arrays)["score"], model.run("fused", arrays)["score"])
        assert checked == [1]                                       # only `run` checked again
    finally:
        model.close()


@pytest.mark.slow
def test_lock_free_counting_across_threads(bundle):
    rows = make_requests(2, seed=5)
    with er.load(bundle, backend="onnxruntime", num_threads=1, cache=False) as predictor:
        feeds = predictor._model.preprocessor.encode_requests(rows)
        errors = []

        def worker(i):
            for k in range(400):
                if k % 50 == 0:
                    try:
                        predictor.predict_arrays({**feeds, "cand_item": np.array([-1, 0], np.int32)})
                    except RequestError:
                        errors.append(1)
                elif k % 2:
                    predictor.predict(rows, use_cache=False)
                else:
                    predictor.predict_arrays(feeds)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = predictor.stats()
        assert len(errors) == 4 * 8
        assert stats["calls"] == 4 * 400 and stats["errors"] == 4 * 8       # more than one fold (1,024 calls)
        assert stats["predict_rows"] == 4 * 200 * 2 and stats["seconds"] > 0
        assert predictor._model.inflight == 0


@pytest.mark.slow
def test_tensor_path_pins_the_bundle_through_a_swap(bundle, bundle_v2):
    rows = make_requests(3, seed=8)
    with er.load(bundle, backend="litert", cache={"share_sessions": False}) as p:
        feeds = p._model.preprocessor.encode_requests(rows)
        want_v1 = p.predict_arrays(feeds)["score"]
        old = p._model
        fused = old.parts["fused"]
        entered, release = threading.Event(), threading.Event()
        original = fused._run_impl

        def slow(f):
            entered.set()
            release.wait(30)
            return original(f)

        fused._run_impl = slow
        result = {}
        thread = threading.Thread(target=lambda: result.setdefault("score", p.predict_arrays(feeds)["score"]))
        thread.start()
        assert entered.wait(30)
        p.swap(bundle_v2, check_examples=False)
        assert p._model is not old and old.inflight == 1 and not fused._closed
        after = p.predict_arrays(feeds)["score"]                  # a call after swap() returned: new model
        assert not np.allclose(after, want_v1)
        release.set()
        thread.join(30)
        np.testing.assert_array_equal(result["score"], want_v1)   # the in-flight call finished on the old one
        assert old.inflight == 0 and fused._closed
    with pytest.raises(RequestError, match="an open Predictor"):
        p.predict_arrays(feeds)
