"""edgerec.runtime.metrics against hand-computed values."""
import math

import numpy as np
import pytest

from edgerec.runtime import metrics as m


def test_auc_perfect_inverse_and_ties():
    assert m.auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert m.auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    # pairs (pos, neg): (.8,.8)=0.5 (.8,.1)=1 (.3,.8)=0 (.3,.1)=1 -> 2.5 / 4
    assert m.auc([1, 0, 1, 0], [0.8, 0.8, 0.3, 0.1]) == pytest.approx(0.625)
    assert m.auc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)


def test_auc_matches_brute_force_pairs():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200), 1)          # many ties
    pos, neg = s[y == 1], s[y == 0]
    brute = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert m.auc(y, s) == pytest.approx(brute)


def test_auc_one_class_or_nan_scores_is_nan():
    assert math.isnan(m.auc([1, 1], [0.2, 0.3]))
    assert math.isnan(m.auc([1, 0, 0], [0.9, np.nan, 0.1]))


def test_gauc_is_impression_weighted_and_skips_single_class_groups():
    labels = [1, 0, 0, 1, 0, 0, 0]
    scores = [0.9, 0.5, 0.95, 0.2, 0.1, 0.3, 0.4]
    groups = [7, 7, 7, 3, 3, 5, 5]
    # group 7: AUC 0.5 (3 rows); group 3: AUC 1.0 (2 rows); group 5: only negatives -> skipped
    assert m.gauc(labels, scores, groups) == pytest.approx((0.5 * 3 + 1.0 * 2) / 5)
    assert math.isnan(m.gauc([0, 0], [0.1, 0.2], [1, 1]))
    assert math.isnan(m.gauc(labels, [np.nan] + scores[1:], groups))


def test_logloss_hand_computed_and_clipped():
    assert m.logloss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert np.isfinite(m.logloss([1, 0], [0.0, 1.0]))          # clipped, not inf
    assert m.logloss([1, 0], [0.0, 1.0]) == pytest.approx(-math.log(1e-7), rel=1e-6)


def test_ranks_recall_and_ndcg_with_known_ranks():
    labels = [1, 0, 0, 0,   0, 1, 0,   1] + [0] * 11
    scores = [0.5, 0.9, 0.5, 0.1,   0.2, 0.8, 0.3,   0.0] + [0.5] * 11
    groups = [0] * 4 + [1] * 3 + [2] * 12
    # group 0: one higher + one tie (counts against) -> rank 2; group 1: rank 0; group 2: rank 11
    assert m.positive_ranks(labels, scores, groups).tolist() == [2, 0, 11]
    assert m.recall_at_k(labels, scores, groups, k=1) == pytest.approx(1 / 3)
    assert m.recall_at_k(labels, scores, groups, k=3) == pytest.approx(2 / 3)
    assert m.ndcg_at_k(labels, scores, groups, k=3) == pytest.approx((1 / math.log2(4) + 1.0) / 3)
    assert m.ndcg_at_k(labels, scores, groups, k=12) == pytest.approx(
        (1 / math.log2(4) + 1.0 + 1 / math.log2(13)) / 3)


def test_constant_and_nan_models_get_no_ranking_credit():
    labels, groups = [1, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 1]
    assert m.recall_at_k(labels, [0.5] * 6, groups, k=1) == 0.0
    assert m.recall_at_k(labels, [np.nan] * 6, groups, k=2) == 0.0
    # a NaN negative never beats the positive
    assert m.positive_ranks(labels, [0.1, np.nan, 0.0, 0.3, 0.2, np.nan], groups).tolist() == [0, 0]


def test_ranking_requires_exactly_one_positive_per_group():
    with pytest.raises(ValueError, match="exactly one positive"):
        m.positive_ranks([1, 1, 0], [0.1, 0.2, 0.3], [0, 0, 0])
    with pytest.raises(ValueError, match="k as a positive int"):
        m.recall_at_k([1, 0], [0.1, 0.2], [0, 0], k=0)
    with pytest.raises(ValueError, match="equal length"):
        m.auc([1, 0], [0.1])


def test_coverage_and_recall_overlap():
    scores = [0.9, 0.1, 0.5, 0.8, 0.7, 0.2]
    groups = [0, 0, 0, 1, 1, 1]
    items = [10, 11, 12, 10, 13, 14]
    assert m.coverage_at_k(scores, groups, items, catalog_size=10, k=1) == pytest.approx(1 / 10)  # {10}
    assert m.coverage_at_k(scores, groups, items, catalog_size=10, k=2) == pytest.approx(3 / 10)  # {10,12,13}
    with pytest.raises(ValueError, match="catalog_size"):
        m.coverage_at_k(scores, groups, items, catalog_size=0)
    other = [0.9, 0.6, 0.5, 0.1, 0.7, 0.8]   # group 0 top-2 {10,11} vs {10,12}; group 1 {14,13} vs {10,13}
    assert m.recall_overlap_at_k(scores, other, groups, items, k=2) == pytest.approx((0.5 + 0.5) / 2)
    assert m.recall_overlap_at_k(scores, scores, groups, items, k=2) == 1.0


# -- full catalogue -----------------------------------------------------------------------------
def _brute_force_ranks(scores, positives, seen, excluded=(0, 1)):
    """Rank of each positive among the items that are neither seen, excluded nor the positive."""
    ranks = []
    for row, pos, user_seen in zip(scores, positives, seen):
        if pos in excluded:
            ranks.append(len(row))
            continue
        others = [i for i in range(len(row)) if i != pos and i not in excluded and i not in set(user_seen)]
        ranks.append(sum(row[i] >= row[pos] for i in others))
    return np.asarray(ranks)


def test_full_catalogue_matches_brute_force_with_seen_exclusion_and_chunks():
    rng = np.random.default_rng(3)
    users, items = 37, 60
    scores = np.round(rng.random((users, items)), 2)               # ties between items
    positives = rng.integers(2, items, users)
    seen = [rng.choice(np.arange(2, items), rng.integers(0, 20), replace=False) for _ in range(users)]
    seen[0] = np.append(seen[0], positives[0])                     # a seen list naming the positive itself
    positives[1] = 1                                               # an OOV held-out item: always a miss
    expected_ranks = _brute_force_ranks(scores, positives, [[i for i in s if i != p] for s, p in zip(seen, positives)])
    for chunk_cells in (items, 7 * items, m.CHUNK_CELLS):           # 1 user, 7 users, all at once
        got = m.full_catalogue_ranks(lambda a, b: scores[a:b], positives, m.SeenItems.from_lists(seen),
                                     chunk_cells=chunk_cells)
        np.testing.assert_array_equal(got, expected_ranks)
    np.testing.assert_array_equal(m.full_catalogue_ranks(scores, positives, seen), expected_ranks)
    result = m.full_catalogue_metrics(scores, positives, seen, ks=(5, 10))
    assert result["hr@5"] == pytest.approx(np.mean(expected_ranks < 5))
    assert result["recall@10"] == result["hr@10"] == pytest.approx(np.mean(expected_ranks < 10))
    gains = np.where(expected_ranks < 10, 1 / np.log2(expected_ranks + 2.0), 0.0)
    assert result["ndcg@10"] == pytest.approx(gains.mean())


def test_seen_items_are_what_separates_a_hit_from_a_miss():
    scores = np.array([[0.0, 0.0, 0.9, 0.8, 0.1]])
    assert m.full_catalogue_metrics(scores, [3], seen=None, ks=(1,))["hr@1"] == 0.0
    assert m.full_catalogue_metrics(scores, [3], seen=[[2]], ks=(1,))["hr@1"] == 1.0


def test_full_catalogue_gives_constant_and_nan_models_no_credit():
    constant = np.ones((4, 30))
    assert m.full_catalogue_metrics(constant, [2, 5, 9, 29], ks=(10,))["hr@10"] == 0.0
    nan_positive = np.linspace(0, 1, 30)[None, :].repeat(2, 0)
    nan_positive[0, 29] = np.nan
    nan_positive[1, 28] = np.nan                                    # a NaN item never beats the positive
    ranks = m.full_catalogue_ranks(nan_positive, [29, 29])
    assert ranks.tolist() == [27, 0]                                # 28 unseen candidates but itself: worst


def test_topk_lists_and_their_limits():
    topk = np.array([[4, 7, 9], [3, 2, 8], [5, 6, 2]])
    ranks = m.topk_ranks(topk, [9, 3, 11])
    assert ranks.tolist() == [2, 0, 3]
    result = m.full_catalogue_metrics(topk, [9, 3, 11], ks=(1, 3), topk=True)
    assert result["hr@1"] == pytest.approx(1 / 3) and result["hr@3"] == pytest.approx(2 / 3)
    assert result["ndcg@3"] == pytest.approx((1 / np.log2(4) + 1) / 3)
    with pytest.raises(ValueError, match="cut-offs <= the top-k length 3"):
        m.full_catalogue_metrics(topk, [9, 3, 11], ks=(10,), topk=True)


def test_full_catalogue_rejects_bad_shapes():
    with pytest.raises(ValueError, match="scores of shape"):
        m.full_catalogue_ranks(np.zeros((2, 5)), [2, 3, 4])
    with pytest.raises(ValueError, match="at least one held-out user"):
        m.full_catalogue_ranks(np.zeros((0, 5)), [])
    assert m.FULL_CATALOGUE_KEYS == ("hr@10", "ndcg@10", "recall@100")
