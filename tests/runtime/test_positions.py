"""Cutting one user's state to its valid history positions (`runtime.positions`): which inputs
are cut, slices for left padding, a gathered copy otherwise, one position kept for an empty
history, anything else left as it is; the probe accepts only a scorer whose scores do not move."""
from __future__ import annotations

import numpy as np
import pytest

from edgerec.runtime.errors import RequestError
from edgerec.runtime.manifest import TensorSpec
from edgerec.runtime.positions import position_inputs, probe_history, trim_matches, trim_positions

L = 6
SHARED = frozenset({"user_mask", "user_state", "user_keys", "user_pooled"})


def _inputs(length=None):
    return [TensorSpec("cand_item", "int32", [None]), TensorSpec("user_mask", "float32", [None, length]),
            TensorSpec("user_state", "float32", [None, length, 4]), TensorSpec("user_keys", "float32", [None, length, 3]),
            TensorSpec("user_pooled", "float32", [None, 4])]


def _state(valid) -> dict:
    mask = np.zeros((1, L), np.float32)
    mask[0, list(valid)] = 1.0
    rng = np.random.default_rng(0)
    return {"cand_item": np.arange(5, dtype=np.int32), "user_mask": mask,
            "user_state": rng.normal(size=(1, L, 4)).astype(np.float32),
            "user_keys": rng.normal(size=(1, L, 3)).astype(np.float32),
            "user_pooled": rng.normal(size=(1, 4)).astype(np.float32)}


def test_position_inputs_need_a_shared_mask_of_free_length():
    assert position_inputs(_inputs(), SHARED) == ("user_mask", "user_keys", "user_state")
    assert position_inputs(_inputs(L), SHARED) == ()                    # fixed sizes (LiteRT, TensorRT)
    assert position_inputs(_inputs(), SHARED - {"user_mask"}) == ()
    assert position_inputs(_inputs(), frozenset({"user_mask", "user_pooled"})) == ()


def test_left_padding_is_cut_to_a_slice():
    feeds = _state(range(3, L))
    names = position_inputs(_inputs(), SHARED)
    cut = trim_positions(feeds, names)
    assert cut["user_mask"].shape == (1, 3) and np.all(cut["user_mask"] == 1)
    np.testing.assert_array_equal(cut["user_state"], feeds["user_state"][:, 3:])
    assert np.shares_memory(cut["user_state"], feeds["user_state"]) and cut["user_state"].flags.c_contiguous
    assert cut["user_pooled"] is feeds["user_pooled"] and cut["cand_item"] is feeds["cand_item"]


def test_scattered_positions_are_gathered_and_an_empty_history_keeps_one():
    names = position_inputs(_inputs(), SHARED)
    feeds = _state([0, 2, 5])
    cut = trim_positions(feeds, names)
    np.testing.assert_array_equal(cut["user_keys"], feeds["user_keys"][:, [0, 2, 5]])
    empty = trim_positions(_state([]), names)
    assert empty["user_mask"].shape == (1, 1) and empty["user_mask"][0, 0] == 0
    assert empty["user_state"].shape == (1, 1, 4)


def test_full_histories_and_other_shapes_are_left_alone():
    names = position_inputs(_inputs(), SHARED)
    full = _state(range(L))
    assert all(trim_positions(full, names)[k] is v for k, v in full.items())
    odd = _state([4, 5])
    odd["user_keys"] = odd["user_keys"][:, :4]                          # not as long as the mask
    assert all(trim_positions(odd, names)[k] is v for k, v in odd.items())


def test_n_users_states_keep_the_positions_any_row_holds():
    names = position_inputs(_inputs(), SHARED)
    rows = {k: np.repeat(v, 2, 0) for k, v in _state([4, 5]).items()}
    rows["user_mask"][1, 3] = 1.0                                        # the second user has 3 items
    cut = trim_positions(rows, names)
    assert cut["user_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
    np.testing.assert_array_equal(cut["user_state"], rows["user_state"][:, 3:])
    assert cut["user_state"].flags.c_contiguous and cut["user_pooled"] is rows["user_pooled"]
    one_row_state = {**rows, "user_state": rows["user_state"][:1]}      # rows disagree: left alone
    assert all(trim_positions(one_row_state, names)[k] is v for k, v in one_row_state.items())


def test_probe_history_is_half_padding_then_real_items():
    history = probe_history(TensorSpec("hist_items", "int32", [None, 7]), limit=5)
    assert history.tolist() == [[0, 0, 0, 2, 3, 4, 2]]
    assert probe_history(TensorSpec("hist_items", "int32", [None, 7]), limit=2) is None
    assert probe_history(TensorSpec("hist_items", "int32", [None]), limit=50) is None


def _attention(feeds):
    """Mask-weighted mean of the state's first channel: ignores masked positions."""
    mask, state = feeds["user_mask"], feeds["user_state"][..., 0]
    return {"score": np.full(len(feeds["cand_item"]), (mask * state).sum() / max(mask.sum(), 1), np.float32)}


def _positional(feeds):
    """Reads the first position whatever the mask: moves when the padding is cut."""
    return {"score": np.full(len(feeds["cand_item"]), feeds["user_state"][0, 0, 0], np.float32)}


def test_trim_matches_only_a_scorer_that_ignores_masked_positions():
    names = position_inputs(_inputs(), SHARED)
    feeds = _state(range(3, L))
    assert trim_matches(_attention, feeds, names)
    assert not trim_matches(_positional, feeds, names)
    assert not trim_matches(_attention, _state(range(L)), names)          # nothing to cut: no evidence

    def refuses_short(f):
        if f["user_mask"].shape[1] != L:
            raise RequestError("Expected 6 positions")
        return _attention(f)

    assert not trim_matches(refuses_short, feeds, names)
