"""Ranking and CTR metrics in numpy (no TensorFlow), shared by sdk, converters and benchmarks.

Grouped metrics take a ``groups`` array (one group = one user's impressions). The next-item
ranking metrics expect each group to hold exactly one positive (the held-out item) and its
sampled negatives; ties between the positive and a negative count against the positive, so a
constant model never gets credit.
"""
from __future__ import annotations

import math
from typing import NamedTuple

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


# -- full-catalogue ranking -------------------------------------------------------------------
# Sampled metrics (one positive against 100 sampled negatives) overstate quality and can reorder
# models (Krichene & Rendle, KDD 2020); these rank the held-out item against EVERY item of the
# catalogue the user has not interacted with yet.
FULL_CATALOGUE_KEYS = ("hr@10", "ndcg@10", "recall@100")
FULL_CATALOGUE_KS = (10, 100)
EXCLUDED_INDICES = (0, 1)         # padding and out-of-vocabulary rows are never recommendable
CHUNK_CELLS = 1 << 24             # users x items per chunk: ~130 MB of float64 scores at most


class SeenItems(NamedTuple):
    """Each user's seen item indices in CSR form: user ``u`` saw ``items[indptr[u]:indptr[u + 1]]``.

    Examples:
        >>> seen = SeenItems.from_lists([[2, 5], [], [3]])
        >>> seen.indptr.tolist(), seen.items.tolist()
        ([0, 2, 2, 3], [2, 5, 3])
    """

    indptr: np.ndarray
    items: np.ndarray

    @classmethod
    def from_lists(cls, lists) -> "SeenItems":
        arrays = [np.asarray(s, np.int64).reshape(-1) for s in lists]
        indptr = np.concatenate(([0], np.cumsum([a.size for a in arrays]))).astype(np.int64)
        items = np.concatenate(arrays).astype(np.int32) if arrays else np.zeros(0, np.int32)
        return cls(indptr, items)

    @property
    def num_users(self) -> int:
        return int(self.indptr.size - 1)

    def take(self, users) -> "SeenItems":
        """The seen lists of ``users`` (indices into this one), in that order."""
        users = np.asarray(users, np.int64).reshape(-1)
        return SeenItems.from_lists([self.items[self.indptr[u]:self.indptr[u + 1]] for u in users.tolist()])


def seen_rows(seen, start: int, stop: int, num_items: int) -> np.ndarray:
    """Boolean ``[stop - start, num_items]`` mask of the items users ``start..stop`` have seen.

    Args:
        seen: a `SeenItems`, a sequence of per-user index arrays, or None (nothing seen).
    """
    mask = np.zeros((stop - start, num_items), dtype=bool)
    if seen is None:
        return mask
    if isinstance(seen, SeenItems):
        indptr = np.asarray(seen.indptr, np.int64)
        rows = np.repeat(np.arange(stop - start), np.diff(indptr[start:stop + 1]))
        cols = np.asarray(seen.items[indptr[start]:indptr[stop]], np.int64)
    else:
        chunk = [np.asarray(s, np.int64).reshape(-1) for s in seen[start:stop]]
        rows = np.repeat(np.arange(len(chunk)), [c.size for c in chunk])
        cols = np.concatenate(chunk) if chunk else np.zeros(0, np.int64)
    keep = (cols >= 0) & (cols < num_items)
    mask[rows[keep], cols[keep]] = True
    return mask


def full_catalogue_ranks(scores, positives, seen=None, *, excluded=EXCLUDED_INDICES,
                         chunk_cells: int = CHUNK_CELLS) -> np.ndarray:
    """0-based rank of each user's held-out item among all items it has not seen.

    Ties count against the positive (a constant model gets the worst rank); a NaN score ranks
    below everything; a positive that is itself padding/OOV (an item first seen at test time, or
    an unscored index) gets the worst rank ``num_items``, i.e. it is a miss at every cut-off.
    The held-out item is never treated as seen, even if ``seen`` lists it.

    Args:
        scores: ``[U, N]`` scores of every item index for every user (higher is better), or a
            callable ``scores(start, stop) -> [stop - start, N]`` so that memory stays bounded by
            one chunk of users (``chunk_cells`` scores).
        positives: ``[U]`` item index of each user's held-out item.
        seen: each user's seen item indices (see `seen_rows`), excluded from its ranking.
        excluded: item indices no user can be recommended (padding, OOV).

    Returns:
        int64 ``[U]`` ranks.
    """
    positives = np.asarray(positives, np.int64).reshape(-1)
    users = positives.size
    if users == 0:
        raise ValueError(expected("at least one held-out user", 0))
    if callable(scores):
        probe = None
        score_chunk = scores
    else:
        probe = np.asarray(scores)
        if probe.ndim != 2 or probe.shape[0] != users:
            raise ValueError(expected(f"scores of shape [{users}, num_items]", probe.shape))

        def score_chunk(start, stop):
            return probe[start:stop]
    ranks = np.empty(users, np.int64)
    start, step = 0, 1
    while start < users:
        stop = min(users, start + step)
        block = np.asarray(score_chunk(start, stop), np.float64)
        if block.ndim != 2 or block.shape[0] != stop - start:
            raise ValueError(expected(f"a [{stop - start}, num_items] score block", block.shape))
        num_items = block.shape[1]
        if start == 0:
            step = max(1, chunk_cells // max(num_items, 1))
        ranks[start:stop] = _block_ranks(block, positives[start:stop], seen_rows(seen, start, stop, num_items),
                                         excluded)
        start = stop
    return ranks


def _block_ranks(block: np.ndarray, positives: np.ndarray, seen: np.ndarray, excluded) -> np.ndarray:
    rows = np.arange(block.shape[0])
    num_items = block.shape[1]
    valid = (positives >= 0) & (positives < num_items) & ~np.isin(positives, np.asarray(excluded))
    safe = np.where(valid, positives, 0)
    candidate = ~seen
    candidate[:, [e for e in excluded if e < num_items]] = False
    candidate[rows, safe] = False                      # the positive does not compete with itself
    pos_score = block[rows, safe]
    beats = candidate & (block >= pos_score[:, None])  # NaN >= x is False: NaN items never beat it
    ranks = beats.sum(axis=1)
    worst = candidate.sum(axis=1)
    ranks = np.where(np.isnan(pos_score), worst, ranks)
    return np.where(valid, ranks, num_items).astype(np.int64)


def topk_ranks(topk, positives) -> np.ndarray:
    """Ranks from recommended lists: position of the held-out item in each user's ``topk`` row,
    or the row length when it is not there (a miss at every cut-off up to that length).

    ``topk`` rows must already exclude seen items, as a retrieval index with ``exclude_seen`` does.
    """
    topk = np.asarray(topk, np.int64)
    positives = np.asarray(positives, np.int64).reshape(-1)
    if topk.ndim != 2 or topk.shape[0] != positives.size:
        raise ValueError(expected(f"top-k item lists of shape [{positives.size}, K]", topk.shape))
    hit = topk == positives[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), topk.shape[1]).astype(np.int64)


def metrics_from_ranks(ranks, ks=FULL_CATALOGUE_KS, *, max_rank: int | None = None) -> dict[str, float]:
    """``{"hr@k", "ndcg@k", "recall@k"}`` for every k in ``ks`` from 0-based positive ranks.

    With one held-out item per user, recall@k equals hr@k; both are reported because the
    full-catalogue contract names ``hr@10`` and ``recall@100``.

    Args:
        max_rank: the length of top-k lists the ranks came from (`topk_ranks`); a cut-off above it
            cannot be measured and is refused.
    """
    ranks = np.asarray(ranks, np.int64).reshape(-1)
    if ranks.size == 0:
        raise ValueError(expected("at least one rank", 0))
    out = {}
    for k in ks:
        _check_k(k)
        if max_rank is not None and k > max_rank:
            raise ValueError(expected(f"cut-offs <= the top-k length {max_rank}", k))
        hits = ranks < k
        out[f"hr@{k}"] = float(np.mean(hits))
        out[f"ndcg@{k}"] = float(np.mean(np.where(hits, 1.0 / np.log2(ranks + 2.0), 0.0)))
        out[f"recall@{k}"] = out[f"hr@{k}"]
    return out


def full_catalogue_metrics(scores_or_topk, positives, seen=None, ks=FULL_CATALOGUE_KS, *, topk: bool = False,
                           excluded=EXCLUDED_INDICES, chunk_cells: int = CHUNK_CELLS) -> dict[str, float]:
    """HR@k, NDCG@k and recall@k of held-out items ranked against the whole catalogue.

    Args:
        scores_or_topk: ``[U, N]`` scores (or a chunk callable, see `full_catalogue_ranks`), or
            with ``topk=True`` ``[U, K]`` recommended item indices best first (seen items already
            left out by whoever made the lists).
        positives: ``[U]`` held-out item index per user.
        seen: items each user has seen (scores only; ignored for top-k lists).
        ks: cut-offs.

    Returns:
        ``{"hr@k", "ndcg@k", "recall@k"}`` for each k; `FULL_CATALOGUE_KEYS` is the subset the
        metrics.json / manifest ``full_catalogue`` blocks record.

    Examples:
        >>> scores = np.array([[0., 0., .9, .8, .1], [0., 0., .2, .5, .4]])
        >>> full_catalogue_metrics(scores, [3, 2], seen=[[2], []], ks=(1,))["hr@1"]
        0.5
    """
    if topk:
        lists = np.asarray(scores_or_topk)
        return metrics_from_ranks(topk_ranks(lists, positives), ks, max_rank=lists.shape[1])
    return metrics_from_ranks(full_catalogue_ranks(scores_or_topk, positives, seen, excluded=excluded,
                                                   chunk_cells=chunk_cells), ks)


def user_recalls(found, truth) -> np.ndarray:
    """Per user, the share of its ``truth`` rows in ``found`` (1.0 where the truth is empty: there
    was nothing to miss)."""
    return np.asarray([len(np.intersect1d(f, t)) / len(t) if len(t) else 1.0 for f, t in zip(found, truth)],
                      np.float64)


def recall_at(found, truth) -> float:
    """Mean of `user_recalls` (both [U, M]); NaN when there are no users."""
    hits = user_recalls(found, truth)
    return float(hits.mean()) if hits.size else math.nan
