"""Hard negatives from a retriever's top-M for ranker training (numpy only: a stand-in retriever)."""
from __future__ import annotations

import numpy as np
import pytest

from edgerec.runtime.contract import CAND_ITEM


def _retriever(dataset, dim: int = 8, seed: int = 1):
    vectors = np.random.default_rng(seed).normal(size=(dataset.spec.item_vocab.size, dim)).astype(np.float32)
    vectors[:2] = 0
    rows = []

    def user_vectors(inputs):
        assert CAND_ITEM not in inputs                     # the user side only
        hist = np.asarray(inputs["hist_items"])
        rows.append(len(hist))
        return vectors[hist].sum(axis=1)

    return user_vectors, vectors, rows


def test_half_of_the_negatives_come_from_the_retrievers_top_m(tiny_synthetic_dataset):
    from edgerec.sdk.training.retrieval import _user_items, with_retrieved_negatives

    ds = tiny_synthetic_dataset
    user_vectors, vectors, calls = _retriever(ds)
    hard = with_retrieved_negatives(ds, user_vectors, vectors, m=5, share=0.5, seed=0)
    before, after = ds.train, hard.train
    positives = int((before.labels > 0.5).sum())
    assert int((after.labels > 0.5).sum()) == positives and sum(calls) == positives
    per = hard.meta["hard_negatives"]["per_positive"]
    assert per == round(0.5 * (len(before) - positives) / positives)
    assert len(after) == positives + hard.meta["hard_negatives"]["uniform_kept"] + positives * per
    assert hard.valid is ds.valid and hard.test is ds.test
    items_of = _user_items(ds)
    negatives = np.flatnonzero(after.labels < 0.5)
    for row in negatives[:400]:
        user, item = int(after.groups[row]), int(after.inputs[CAND_ITEM][row])
        assert item >= 2 and item not in set(items_of[user].tolist())      # never an item of the user
    # the hard rows: the candidate is among the 5 best unseen items for the row's history
    hist = after.inputs["hist_items"]
    in_top = []
    for row in negatives[:400]:
        scores = vectors @ vectors[hist[row]].sum(axis=0)
        scores[:2] = -np.inf
        scores[items_of[int(after.groups[row])]] = -np.inf
        in_top.append(int(after.inputs[CAND_ITEM][row]) in set(np.argsort(-scores)[:5].tolist()))
    share = np.mean(in_top)
    assert 0.35 < share < 0.8                # about half, plus the uniform draws that land in the top 5


def test_hard_negative_options_are_checked(tiny_synthetic_dataset):
    from edgerec.runtime.errors import SpecError
    from edgerec.sdk.training.retrieval import with_retrieved_negatives

    user_vectors, vectors, _ = _retriever(tiny_synthetic_dataset)
    for bad in ({"share": 0.0}, {"share": 1.5}, {"m": 0}):
        with pytest.raises(SpecError, match="share"):
            with_retrieved_negatives(tiny_synthetic_dataset, user_vectors, vectors, **bad)
