"""edgerec.sdk.metrics: the runtime's numpy metrics plus dataset-level evaluation helpers.

Examples:
    >>> from edgerec.sdk.metrics import evaluate_scores, popularity_baseline
    >>> popularity_baseline(dataset)            # {"auc", "recall@10", "ndcg@10"}
    >>> evaluate_scores(dataset.test, probabilities, dataset.spec.item_vocab.size - 2)
"""
from edgerec.runtime.metrics import (auc, coverage_at_k, gauc, logloss, ndcg_at_k, positive_ranks,
                                     recall_at_k, recall_overlap_at_k, top_k_per_group)

from .evaluation import evaluate_scores, popularity_baseline, popularity_scores

__all__ = ["auc", "gauc", "logloss", "recall_at_k", "ndcg_at_k", "coverage_at_k", "recall_overlap_at_k",
           "positive_ranks", "top_k_per_group", "evaluate_scores", "popularity_baseline", "popularity_scores"]
