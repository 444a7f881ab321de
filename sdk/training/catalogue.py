"""Full-catalogue evaluation of a trained model: every item scored for each held-out user.

A ranking model (din, gru, bst, context) scores user x item rows through its fused model, so the
cost is users x catalogue rows; beyond `MAX_SCORED_ROWS` the users are a seeded sample (recorded
in metrics.json under ``full_catalogue_users``). A retrieval model scores every item with a
matrix product of user vectors and item vectors, about a thousand times cheaper per score, so its
budget is `MAX_VECTOR_CELLS` user x item scores: every held-out user up to catalogues of ~10^5
items, a seeded sample beyond (500 users at 10^6 items x 10^5 users, whose all-users product
would be 10^11 scores).

The popularity baseline is measured on the same users, so model and baseline are paired.

Examples:
    >>> block = ranker_full_catalogue(parts, dataset)
    >>> block["full_catalogue"]["hr@10"], block["baseline_full_catalogue"]["hr@10"]   # doctest: +SKIP
"""
from __future__ import annotations

import logging
import time

import numpy as np

from edgerec.runtime.contract import CAND_ITEM
from edgerec.runtime.metrics import full_catalogue_metrics

from ..metrics.full_catalogue import DEFAULT_SEED, catalogue_size, held_out_users, pick, popularity_full_catalogue

logger = logging.getLogger(__name__)

# users x items scored through a ranking model's fused graph. All of MovieLens-small (610 users x
# 9,744 item indices = 5.9 M rows) took DIN 395 s on the shared 2-core machine, longer than its
# training; 2 M rows (205 seeded users there) keeps evaluation near a minute. Pass
# max_scored_rows to ranker_full_catalogue for every user.
MAX_SCORED_ROWS = 2_000_000
PREDICT_BATCH = 8192
# user x item dot products of the retrieval full-catalogue metrics: MovieLens-small (610 x 9,744)
# and 10^4 users x 10^5 items are evaluated whole; 10^6 items get 500 seeded users (~30 s here)
MAX_VECTOR_CELLS = 500_000_000


def ranker_score_chunks(parts, users, num_items: int, batch_size: int = PREDICT_BATCH):
    """``scores(start, stop) -> [stop - start, num_items]``: the fused model on every item index.

    Each user's row (history, context, dense) is repeated once per item with ``cand_item`` =
    0..num_items-1; padding and OOV columns are scored too and left out by the metrics.
    """
    names = list(parts.fused.input_names)
    items = np.arange(num_items, dtype=np.int32)

    def scores(start, stop):
        count = stop - start
        feeds = {}
        for name in names:
            if name == CAND_ITEM:
                feeds[name] = np.tile(items, count)
            else:
                feeds[name] = np.repeat(users.inputs[name][start:stop], num_items, axis=0)
        out = parts.fused.predict(feeds, batch_size=batch_size, verbose=0)
        return np.asarray(out, np.float64).reshape(count, num_items)

    return scores


def ranker_full_catalogue(parts, dataset, *, max_scored_rows: int = MAX_SCORED_ROWS,
                          seed: int = DEFAULT_SEED) -> dict:
    """Full-catalogue metrics of a ranking model and of popularity on the same held-out users.

    Returns:
        ``{"full_catalogue": {"hr@10", "ndcg@10", "recall@100"}, "baseline_full_catalogue": {…},
        "full_catalogue_users": {"evaluated", "held_out", "items", "sampled", "seed", "seconds"}}``.
    """
    num_items = catalogue_size(dataset)
    everyone = held_out_users(dataset)
    max_users = max(1, max_scored_rows // num_items)
    users = everyone.sample(max_users, seed)
    start = time.perf_counter()
    # chunks of ~PREDICT_BATCH * 32 rows keep the repeated inputs small (L int32 per row)
    metrics = full_catalogue_metrics(ranker_score_chunks(parts, users, num_items), users.positives, users.seen,
                                     chunk_cells=PREDICT_BATCH * 32)
    return _block(metrics, dataset, users, len(everyone), num_items, seed, time.perf_counter() - start)


def retrieval_full_catalogue(parts, dataset, *, max_scored_cells: int = MAX_VECTOR_CELLS,
                             seed: int = DEFAULT_SEED) -> dict:
    """Full-catalogue metrics of a retrieval model (`vector_full_catalogue`) on the held-out users,
    a seeded sample of them when users x items exceeds ``max_scored_cells``."""
    num_items = int(parts.item_vectors.shape[0])
    everyone = held_out_users(dataset)
    users = everyone.sample(max(1, int(max_scored_cells) // num_items), seed)
    return vector_full_catalogue(parts.user_vectors(users.inputs), parts.item_vectors, dataset, users,
                                 held_out=len(everyone), seed=seed)


def vector_full_catalogue(user_vectors: np.ndarray, item_vectors: np.ndarray, dataset, users,
                          held_out: int | None = None, seed: int | None = None) -> dict:
    """Full-catalogue metrics of dot-product scores ``user_vectors @ item_vectors.T`` for ``users``
    (``held_out``: how many held-out users they were drawn from with ``seed``; default all of them)."""
    start = time.perf_counter()
    item_vectors = np.asarray(item_vectors, np.float32)
    user_vectors = np.asarray(user_vectors, np.float32)

    def scores(lo, hi):
        return user_vectors[lo:hi] @ item_vectors.T

    metrics = full_catalogue_metrics(scores, users.positives, users.seen)
    return _block(metrics, dataset, users, len(users) if held_out is None else held_out, item_vectors.shape[0],
                  seed, time.perf_counter() - start)


def _block(metrics, dataset, users, held_out: int, num_items: int, seed, seconds: float) -> dict:
    sampled = len(users) < held_out
    if sampled:
        logger.info(f"full-catalogue evaluation on a seeded sample of {len(users)} of {held_out} held-out users "
                    f"({num_items} items each)")
    return {"full_catalogue": pick(metrics),
            "baseline_full_catalogue": popularity_full_catalogue(dataset, users),
            "full_catalogue_users": {"evaluated": len(users), "held_out": held_out, "items": num_items - 2,
                                     "sampled": sampled, "seed": seed if sampled else None,
                                     "seconds": round(seconds, 2)}}
