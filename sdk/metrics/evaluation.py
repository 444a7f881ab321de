"""Dataset-level evaluation: the metrics.json "test" block and the popularity baseline."""
from __future__ import annotations

import numpy as np

from edgerec.runtime.errors import expected
from edgerec.runtime.metrics import auc, coverage_at_k, gauc, logloss, ndcg_at_k, recall_at_k
from edgerec.runtime.spec import CAND_ITEM

K = 10


def _check_ranking_split(split) -> None:
    if split is None or not hasattr(split, "inputs") or not hasattr(split, "labels"):
        raise ValueError(expected("a Split with inputs and labels", type(split).__name__))
    if split.groups is None:
        raise ValueError(expected("a ranking split with groups (the test split)", None))
    if CAND_ITEM not in split.inputs:
        raise ValueError(expected(f"a '{CAND_ITEM}' input in the split", sorted(split.inputs)))


def evaluate_scores(split, scores, catalog_size: int, k: int = K) -> dict[str, float]:
    """Metrics of predicted probabilities on a ranking split (1 positive + negatives per group).

    Args:
        split: `RecDataset.test` (or any `Split` with ``groups`` and ``cand_item``).
        scores: probabilities, one per row (any shape that flattens to [N]).
        catalog_size: number of recommendable items (``spec.item_vocab.size - 2``) for coverage.
        k: cut-off of the ranking metrics.

    Returns:
        ``{"auc", "gauc", "logloss", "recall@k", "ndcg@k", "coverage@k"}`` as floats.
    """
    _check_ranking_split(split)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.size != len(split):
        raise ValueError(expected(f"{len(split)} scores (one per row)", scores.size))
    labels, groups, items = split.labels, split.groups, split.inputs[CAND_ITEM]
    return {
        "auc": auc(labels, scores),
        "gauc": gauc(labels, scores, groups),
        "logloss": logloss(labels, scores),
        f"recall@{k}": recall_at_k(labels, scores, groups, k),
        f"ndcg@{k}": ndcg_at_k(labels, scores, groups, k),
        f"coverage@{k}": coverage_at_k(scores, groups, items, catalog_size, k),
    }


def popularity_scores(dataset, split=None) -> np.ndarray:
    """Train interaction count of each row's candidate (OOV and padding score 0)."""
    split = dataset.test if split is None else split
    popularity = np.asarray(dataset.item_popularity, dtype=np.float64)
    return popularity[np.asarray(split.inputs[CAND_ITEM], dtype=np.int64)]


def popularity_baseline(dataset, k: int = K) -> dict[str, float]:
    """Rank the test rows by training popularity: ``{"auc", "recall@k", "ndcg@k"}``.

    Ties (e.g. two items with the same count) count against the held-out item, as for models.
    """
    split = dataset.test
    _check_ranking_split(split)
    scores = popularity_scores(dataset, split)
    return {"auc": auc(split.labels, scores),
            f"recall@{k}": recall_at_k(split.labels, scores, split.groups, k),
            f"ndcg@{k}": ndcg_at_k(split.labels, scores, split.groups, k)}
