"""The optimised hot path (issue 5, item 3) behaves exactly like the straightforward code it
replaced: bulk id lookup, list-built request arrays, argmax range checks, the backend's fast
feed check, fresh outputs and the lock-free in-flight count."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgerec.runtime.backends import create_backend
from edgerec.runtime.errors import RequestError
from edgerec.runtime.loaded import LoadedBundle
from edgerec.runtime.tensor_checks import id_limits
from edgerec.runtime.predictor import check_tensor_ranges
from edgerec.runtime.preprocess import Preprocessor
from edgerec.runtime.spec import OOV_INDEX, PAD_INDEX, Vocabulary

from .conftest import make_requests, make_spec

VOCAB = Vocabulary("item", ("10", "20", "7", "", "x"))
raw_ids = st.one_of(st.sampled_from(["10", "20", "7", "", "x", "99", "010"]), st.integers(-3, 30),
                    st.none(), st.booleans(), st.floats(allow_nan=False, width=32))


def reference_lookup_many(vocab, raws):
    """The pre-optimisation Vocabulary.lookup_many."""
    index = {t: i + 2 for i, t in enumerate(vocab.tokens)}
    return [PAD_INDEX if r is None or r == "" else index.get(str(r), OOV_INDEX) for r in raws]


@settings(max_examples=200, deadline=None)
@given(st.lists(raw_ids, max_size=12))
def test_lookup_many_matches_reference(raws):
    assert VOCAB.lookup_many(raws).tolist() == reference_lookup_many(VOCAB, raws)
    assert VOCAB.lookup_many(iter(raws)).dtype == np.int32


def test_lookup_many_odd_inputs():
    assert VOCAB.lookup_many([["10"], np.int64(7), np.str_("20")]).tolist() == [OOV_INDEX, 4, 3]
    assert VOCAB.lookup_many([]).shape == (0,)
    assert (VOCAB.lookup(""), VOCAB.lookup_many([""]).tolist()) == (PAD_INDEX, [PAD_INDEX])


def reference_history(spec, histories):
    length = spec.max_seq_len
    out = np.zeros((len(histories), length), np.int32)
    for row, history in enumerate(histories):
        recent = list(history)[-length:]
        if recent:
            out[row, length - len(recent):] = reference_lookup_many(spec.item_vocab, recent)
    return out


def test_history_and_items_match_reference():
    spec = make_spec()
    pre = Preprocessor(spec)
    histories = [[], ["10"], ["10", 11, np.int64(12), "nope"], [str(i) for i in range(40)],
                 tuple(["13", "14"]), np.array(["15", "16"])]
    np.testing.assert_array_equal(pre.encode_history(histories), reference_history(spec, histories))
    assert pre.encode_history([]).shape == (0, spec.max_seq_len)
    items = ["10", 11, "nope", np.int64(12)]
    assert pre.encode_items(items).tolist() == reference_lookup_many(spec.item_vocab, items)
    assert pre.encode_items(np.array(["10", "11"])).tolist() == reference_lookup_many(spec.item_vocab, ["10", "11"])
    for bad in ("", True):       # ids the reference encoded silently (padding / OOV) are refused
        with pytest.raises(RequestError, match="non-empty str or int"):
            pre.encode_history([["10", bad]])
        with pytest.raises(RequestError, match="non-empty str or int"):
            pre.encode_items(["10", bad])


@pytest.mark.parametrize("history, fragment", [([["10"]], r"history item ids as non-empty str or int, received: \['10'\]"),
                                               (["10", None], "received: None"),
                                               (["10", 1.5], "received: 1.5"),
                                               ("10", "history as a list of item ids")])
def test_history_errors_unchanged(history, fragment):
    with pytest.raises(RequestError, match=fragment):
        Preprocessor(make_spec()).encode_history([history])


def test_item_errors_name_the_value():
    with pytest.raises(RequestError, match=r"candidate item id as a non-empty str or int, received: \[1\]"):
        Preprocessor(make_spec()).encode_items(["10", [1]])


def test_request_arrays_types_and_values():
    spec = make_spec()
    pre = Preprocessor(spec)
    requests = make_requests(9, seed=3)
    arrays = pre.encode_requests(requests)
    assert {k: (v.dtype.name, v.shape) for k, v in arrays.items()} == {
        "hist_items": ("int32", (9, spec.max_seq_len)), "cand_item": ("int32", (9,)), "hour": ("int32", (9,)),
        "device": ("int32", (9,)), "dense": ("float32", (9, 1))}
    for i, r in enumerate(requests):
        assert arrays["hour"][i] == r["context"]["timestamp"] // 3600 % 24 + 1
        assert arrays["device"][i] == spec.context[1].vocab.lookup(r["context"]["device"])
        assert arrays["dense"][i, 0] == np.float32((r["dense"]["price"] - 5.0) / 2.0)
    empty = pre.encode_context([None, {}])
    assert empty["hour"].tolist() == [0, 0] and empty["device"].tolist() == [0, 0]
    with pytest.raises(RequestError, match="context.hour as an int in"):
        pre.encode_context([{"hour": 24}])
    with pytest.raises(RequestError, match="non-negative unix seconds"):
        pre.encode_context([{"timestamp": -1}])
    with pytest.raises(RequestError, match="dense.price as a number"):
        pre.encode_dense([{"price": True}])


def reference_ranges_ok(limits, feeds):
    for name, value in feeds.items():
        if value.size == 0:
            continue
        if name in limits and value.dtype.kind in "iu":
            if value.min() < 0 or value.max() >= limits[name]:
                return False
        elif value.dtype.kind == "f" and not np.isfinite(value).all():
            return False
    return True


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["int32", "int64", "uint8", "int8", "int16"]), st.integers(1, 300),
       st.integers(-200, 200), st.sampled_from([0.0, 1e38, math.inf, -math.inf, math.nan]))
def test_range_check_matches_reference(dtype, size, bad, float_value):
    spec = make_spec()
    limits = id_limits(spec)
    ids = np.arange(size) % limits["hist_items"]
    ids[size // 2] = bad % 256 if dtype == "uint8" else bad
    hist = ids.astype(dtype)
    dense = np.full((size, 2), 1.0, np.float32)
    dense[-1, -1] = float_value
    feeds = {"hist_items": hist, "dense": dense, "unknown": np.array([-5])}
    if reference_ranges_ok(limits, feeds):
        check_tensor_ranges(spec, feeds, limits)
    else:
        with pytest.raises(RequestError):
            check_tensor_ranges(spec, feeds, limits)


def test_range_check_messages_unchanged():
    spec = make_spec()
    with pytest.raises(RequestError, match=r"'cand_item' ids in \[0, \d+\), received: 'range \[-1, 3\]'"):
        check_tensor_ranges(spec, {"cand_item": np.array([3, -1], np.int32)})
    with pytest.raises(RequestError, match=r"finite values in 'dense', received: 'NaN or inf'"):
        check_tensor_ranges(spec, {"dense": np.array([[np.nan]], np.float32)})
    check_tensor_ranges(spec, {"cand_item": np.zeros(0, np.int32), "hour": np.array([24], np.int32)})
    with pytest.raises(RequestError, match="'hour' ids"):
        check_tensor_ranges(spec, {"hour": np.array([25], np.int32)})


@pytest.fixture(params=["onnxruntime", "litert"])
def backend(request, tiny_onnx):
    path = request.getfixturevalue("tiny_tflite") if request.param == "litert" else tiny_onnx
    with create_backend(request.param, path, num_threads=1) as b:
        yield b


def _feeds(batch=3):
    rng = np.random.default_rng(batch)
    return {"hist_items": rng.integers(0, 50, size=(batch, 4)).astype(np.int32),
            "cand_item": rng.integers(0, 50, size=batch).astype(np.int32)}


def test_fast_path_accepts_exact_feeds_only(backend):
    feeds = _feeds()
    assert backend._feeds_match(feeds)
    wide = {"hist_items": np.arange(24, dtype=np.int32).reshape(3, 8)[:, ::2], "cand_item": feeds["cand_item"]}
    assert not wide["hist_items"].flags.c_contiguous
    assert backend.strided_inputs and backend._feeds_match(wide)            # the backend copies it itself
    dense = {**wide, "hist_items": np.ascontiguousarray(wide["hist_items"])}
    np.testing.assert_array_equal(backend.run(wide)["score"], backend.run(dense)["score"])
    backend.strided_inputs, backend._plan = False, None                      # a backend that needs contiguous feeds
    assert not backend._feeds_match(wide)
    np.testing.assert_array_equal(backend.run(wide)["score"], backend.run(dense)["score"])   # check_feeds copies
    backend.strided_inputs, backend._plan = True, None
    assert not backend._feeds_match({**feeds, "cand_item": feeds["cand_item"].astype(np.int64)})
    assert not backend._feeds_match({**feeds, "cand_item": feeds["cand_item"][:2]})   # batch mismatch
    assert not backend._feeds_match({**feeds, "extra": feeds["cand_item"]})
    assert not backend._feeds_match({"hist_items": feeds["hist_items"], "cand": feeds["cand_item"]})
    assert not backend._feeds_match({**feeds, "hist_items": np.zeros((3, 5), np.int32)})
    assert not backend._feeds_match({**feeds, "hist_items": np.zeros((0, 4), np.int32)})
    assert not backend._feeds_match({**feeds, "hist_items": feeds["hist_items"].tolist()})
    for bad, fragment in [({**feeds, "cand_item": feeds["cand_item"][:2]}, "one batch size"),
                          ({**feeds, "hist_items": np.zeros((3, 5), np.int32)}, "of shape"),
                          ({**feeds, "cand_item": feeds["cand_item"].astype(np.float32)}, "dtype int32")]:
        with pytest.raises(RequestError, match=fragment):
            backend.run(bad)


def test_outputs_are_fresh_arrays(backend):
    first = backend.run(_feeds(2))["score"]
    kept = first.copy()
    second = backend.run(_feeds(5))["score"]
    backend.run(_feeds(2))
    np.testing.assert_array_equal(first, kept)
    assert not np.shares_memory(first, second)


def test_retire_closes_once_after_last_call():
    closed = []
    model = LoadedBundle()
    model.close = lambda: closed.append(1)
    model.enter()
    model.enter()
    model.retire()
    assert closed == [] and model.inflight == 2
    model.exit()
    assert closed == []
    model.exit()
    assert closed == [1] and model.inflight == 0
    idle = LoadedBundle()
    idle.close = lambda: closed.append(2)
    idle.retire()
    assert closed == [1, 2]
