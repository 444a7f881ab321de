"""Ranking and CTR metrics in numpy (no TensorFlow), shared by sdk, converters and benchmarks.

Grouped metrics take a ``groups`` array (one group = one user's impressions). The next-item
ranking metrics expect each group to hold exactly one positive (the held-out item) and its
sampled negatives; ties between the positive and a negative count against the positive, so a
constant model never gets credit.
"""
from __future__ import annotations

import numpy as np

from .errors import expected


def _as_1d(name: str, values, dtype=np.float64) -> np.ndarray:
    arr = np.asarray(values, dtype=dtype).reshape(-1)
    if arr.size == 0:
        raise ValueError(expected(f"non-empty {name}", "an empty array"))
    return arr


def _check_same_length(**arrays) -> None:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(expected("arrays of equal length", lengths))


def auc(labels, scores) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores sharing their average rank).

    Returns NaN when only one class is present or any score is NaN (a broken model must not
    get an arbitrary AUC from the sort order of its NaNs).
    """
    y = _as_1d("labels", labels)
    s = _as_1d("scores", scores)
    _check_same_length(labels=y, scores=s)
    if np.isnan(s).any():
        return float("nan")
    positives = y > 0.5
    n_pos = int(positives.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # average rank (1-based) over runs of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [s.size]))
    run_rank = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(run_rank, ends - starts)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _split_by_group(groups, *arrays):
    g = np.asarray(groups).reshape(-1)
    order = np.argsort(g, kind="mergesort")
    g_sorted = g[order]
    cuts = np.flatnonzero(g_sorted[1:] != g_sorted[:-1]) + 1
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [g.size]))
    sorted_arrays = [np.asarray(a).reshape(-1)[order] for a in arrays]
    for start, end in zip(starts, ends):
        yield g_sorted[start], [a[start:end] for a in sorted_arrays]


def gauc(labels, scores, groups) -> float:
    """Group AUC: per-group AUC weighted by the group's impression count.

    Groups with a single class are skipped; NaN when no group has both classes or any score is NaN.
    """
    y, s = _as_1d("labels", labels), _as_1d("scores", scores)
    _check_same_length(labels=y, scores=s, groups=np.asarray(groups).reshape(-1))
    if np.isnan(s).any():
        return float("nan")
    total, weight = 0.0, 0
    for _, (gy, gs) in _split_by_group(groups, y, s):
        value = auc(gy, gs)
        if not np.isnan(value):
            total += value * gy.size
            weight += gy.size
    return float(total / weight) if weight else float("nan")


def logloss(labels, probabilities, eps: float = 1e-7) -> float:
    y = _as_1d("labels", labels)
    p = np.clip(_as_1d("probabilities", probabilities), eps, 1.0 - eps)
    _check_same_length(labels=y, probabilities=p)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def positive_ranks(labels, scores, groups) -> np.ndarray:
    """0-based rank of each group's single positive among its group.

    Ties count against the positive; a NaN score ranks below everything (a NaN positive gets the
    worst rank, a NaN negative never beats the positive).
    """
    y, s = _as_1d("labels", labels), _as_1d("scores", scores)
    _check_same_length(labels=y, scores=s, groups=np.asarray(groups).reshape(-1))
    ranks = []
    for group, (gy, gs) in _split_by_group(groups, y, s):
        pos = np.flatnonzero(gy > 0.5)
        if pos.size != 1:
            raise ValueError(expected(f"exactly one positive in group {group!r}", int(pos.size)))
        pos_score = gs[pos[0]]
        negatives = np.delete(gs, pos[0])
        ranks.append(negatives.size if np.isnan(pos_score) else int(np.sum(negatives >= pos_score)))
    return np.asarray(ranks, dtype=np.int64)


def recall_at_k(labels, scores, groups, k: int = 10) -> float:
    """Hit rate of the held-out positive in the top ``k`` of its group (= recall@K, one positive)."""
    _check_k(k)
    return float(np.mean(positive_ranks(labels, scores, groups) < k))


def ndcg_at_k(labels, scores, groups, k: int = 10) -> float:
    """NDCG@K with a single relevant item per group: 1 / log2(rank + 2) if it is in the top k."""
    _check_k(k)
    ranks = positive_ranks(labels, scores, groups)
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(np.mean(gains))


def top_k_per_group(scores, groups, items, k: int = 10) -> dict:
    """``{group: items of the k highest scores}`` (stable for ties)."""
    _check_k(k)
    result = {}
    for group, (gs, gi) in _split_by_group(groups, scores, items):
        order = np.argsort(-np.asarray(gs, dtype=np.float64), kind="mergesort")[:k]
        result[group] = gi[order]
    return result


def coverage_at_k(scores, groups, items, catalog_size: int, k: int = 10) -> float:
    """Fraction of the catalog that appears in at least one group's top ``k``."""
    if catalog_size < 1:
        raise ValueError(expected("catalog_size >= 1", catalog_size))
    shown = set()
    for top in top_k_per_group(scores, groups, items, k).values():
        shown.update(np.asarray(top).tolist())
    return float(len(shown) / catalog_size)


def recall_overlap_at_k(scores_a, scores_b, groups, items, k: int = 10) -> float:
    """Mean |top-k(a) ∩ top-k(b)| / k over groups: how much a converted model's ranking agrees."""
    top_a = top_k_per_group(scores_a, groups, items, k)
    top_b = top_k_per_group(scores_b, groups, items, k)
    overlaps = [len(set(top_a[g].tolist()) & set(top_b[g].tolist())) / min(k, len(top_a[g]))
                for g in top_a]
    return float(np.mean(overlaps))


def _check_k(k: int) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(expected("k as a positive int", k))
