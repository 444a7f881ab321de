"""scores.py: chunked scoring with a 1-row shared state, and the helpers that decide between
feeding that state once (a broadcasting scorer) and repeating it (an older one)."""
from __future__ import annotations

import numpy as np
import pytest

from edgerec.runtime.errors import BundleError, RequestError
from edgerec.runtime.manifest import TensorSpec
from edgerec.runtime.scores import (as_scores, broadcast_matches, probe_feeds, rows_of, score_in_chunks,
                                    spread_rows)


def _broadcasting_model(feeds):
    """score = cand_item * 0.1 + sum(user_state): broadcasts a 1-row state like the exported scorers."""
    state = feeds["user_state"].sum(axis=1)
    return {"score": (feeds["cand_item"] * 0.1 + state)[:, None].astype(np.float32)}


def _strict_model(feeds):
    """The same function, refusing inputs of different batch sizes (an older export)."""
    if len({v.shape[0] for v in feeds.values()}) > 1:
        raise RequestError("one batch size across inputs")
    return _broadcasting_model(feeds)


def test_score_in_chunks_passes_the_shared_row_once_per_chunk():
    seen = []

    def run(feeds):
        seen.append({k: v.shape for k, v in feeds.items()})
        return _broadcasting_model(feeds)["score"]

    cand = np.arange(7, dtype=np.int32)
    state = np.array([[1.0, 2.0]], np.float32)
    scores = score_in_chunks(run, {"cand_item": cand}, {"user_state": state}, 7, chunk_rows=3)
    np.testing.assert_allclose(scores, cand * 0.1 + 3.0, rtol=1e-6)
    assert scores.dtype == np.float32
    assert seen == [{"cand_item": (3,), "user_state": (1, 2)}, {"cand_item": (3,), "user_state": (1, 2)},
                    {"cand_item": (1,), "user_state": (1, 2)}]


def test_score_in_chunks_refuses_a_wrong_score_count():
    with pytest.raises(BundleError, match="Expected 4 scores from the model, received: 1"):
        score_in_chunks(lambda feeds: np.zeros(1), {"cand_item": np.zeros(4, np.int32)}, {}, 4, 10)
    assert as_scores(np.ones((2, 1)), 2).shape == (2,)


def test_spread_rows_repeats_one_row_arrays_except_kept_ones():
    feeds = {"cand_item": np.arange(3, dtype=np.int32), "user_state": np.ones((1, 2), np.float32),
             "hour": np.array([5], np.int32)}
    spread = spread_rows(feeds, 3, keep=frozenset({"user_state"}))
    assert spread["user_state"] is feeds["user_state"] and spread["cand_item"] is feeds["cand_item"]
    np.testing.assert_array_equal(spread["hour"], [5, 5, 5])
    assert spread_rows(feeds, 3)["user_state"].shape == (3, 2)
    assert rows_of(np.zeros((4, 2))) == 4 and rows_of(np.float32(1.0)) is None and rows_of([1, 2]) is None


def test_probe_feeds_are_distinct_valid_rows_beside_the_shared_state():
    inputs = [TensorSpec("cand_item", "int32", [None]), TensorSpec("device", "int32", [None]),
              TensorSpec("dense", "float32", [None, 2]), TensorSpec("user_state", "float32", [None, 3])]
    state = np.full((1, 3), 0.5, np.float32)
    feeds = probe_feeds(inputs, {"user_state": state}, {"cand_item": 10, "device": 1})
    assert feeds["user_state"] is state
    np.testing.assert_array_equal(feeds["cand_item"], [0, 1])
    np.testing.assert_array_equal(feeds["device"], [0, 0])          # a table of one row: id 0 only
    np.testing.assert_array_equal(feeds["dense"], [[0, 0], [1, 1]])
    assert feeds["cand_item"].dtype == np.int32 and feeds["dense"].flags.c_contiguous


def test_broadcast_matches_only_for_a_model_that_broadcasts_correctly():
    feeds = {"cand_item": np.array([0, 1], np.int32), "user_state": np.array([[1.0, 2.0]], np.float32)}
    assert broadcast_matches(_broadcasting_model, feeds, {"user_state"}, rows=2)
    assert not broadcast_matches(_strict_model, feeds, {"user_state"}, rows=2)

    def first_row_only(feeds):               # runs, but gives one score for two rows
        return {"score": _broadcasting_model(feeds)["score"][:1]}

    assert not broadcast_matches(first_row_only, feeds, {"user_state"}, rows=2)

    def other_values(feeds):                 # runs, but the 1-row state changes the result
        out = _broadcasting_model(feeds)
        return {"score": out["score"] + (feeds["user_state"].shape[0] == 1)}

    assert not broadcast_matches(other_values, feeds, {"user_state"}, rows=2)
    assert not broadcast_matches(_broadcasting_model, feeds, set(), rows=2)
