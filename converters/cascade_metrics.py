"""What a cascade export measures through the finished bundle: index recall and full-catalogue metrics.

Everything runs on the bundle's own artifacts (the selected user tower and ranker for the
backend the runtime picks, the stored index), on R's held-out users:

* ``index``: recall@M of the served index (quantized rows or HNSW) against exact search over the
  fp32 item vectors, seen items excluded on both sides;
* ``full_catalogue.retrieval``: the index's top-100 (seen items excluded);
* ``full_catalogue.ranker``: the ranker scoring EVERY item for ``ranker_users`` users;
* ``full_catalogue.cascade``: M retrieved items ranked by the ranker (what `Predictor.recommend`
  returns), top 100 of them;
* ``full_catalogue.popularity``: items ranked by how many held-out users have seen them.

Each block is ``{"hr@10", "ndcg@10", "recall@100", "users"}`` (`runtime.metrics` definitions:
ties against the held-out item, padding/OOV never recommended).
"""
from __future__ import annotations

import numpy as np

from edgerec.runtime.contract import (CAND_ITEM, CASCADE, FULL_CATALOGUE, INDEX, POPULARITY, RANKER, RETRIEVAL,
                                      USER_TOWER)
from edgerec.runtime.errors import expected
from edgerec.runtime.metrics import FULL_CATALOGUE_KEYS, full_catalogue_metrics
from edgerec.runtime.spec import NUM_RESERVED

from .errors import ConverterConfigError

TOP = 100                 # the longest cut-off of the full-catalogue blocks
RANKER_CHUNK_ROWS = 8192


def load_heldout(path, max_users: int | None = None, seed: int = 0) -> dict:
    """Held-out user arrays (layout: edgerec.sdk.metrics.full_catalogue), a seeded sample of at
    most ``max_users`` users in their order: ``{"inputs", "positives", "seen": [index arrays]}``."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: np.asarray(npz[k]) for k in npz.files}
    missing = [k for k in ("positive", "seen_indptr", "seen_items") if k not in arrays]
    if missing:
        raise ConverterConfigError(expected(f"held-out user arrays in {path}", f"missing {missing}"))
    users = arrays["positive"].size
    rows = np.arange(users)
    if max_users is not None and users > max_users:
        rows = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    indptr, items = arrays["seen_indptr"], arrays["seen_items"]
    inputs = {k: v[rows] for k, v in arrays.items()
              if k not in ("positive", "user", "seen_indptr", "seen_items")}
    return {"inputs": inputs, "positives": arrays["positive"][rows].astype(np.int64),
            "seen": [items[indptr[r]:indptr[r + 1]].astype(np.int64) for r in rows],
            "all_seen_items": items}


def measure_cascade(bundle, vectors: np.ndarray, users: dict, heldout_path, settings, say) -> dict:
    """``{"index": …, "full_catalogue": …}`` for a bundle `cascade.write_cascade` completed."""
    from edgerec.runtime.loaded import LoadedBundle
    from edgerec.runtime.recommend import retriever_for

    model = LoadedBundle.open(bundle, share_sessions=False)
    try:
        retriever = retriever_for(model, {})
        index = retriever.index
        feeds = {n: users["inputs"][n] for n in retriever.input_names}
        user_vectors = retriever.vectors(feeds)
        m = settings.m
        exact = np.asarray(vectors, np.float32)
        served, truth, cascade, retrieval = [], [], [], []
        for u, vector in enumerate(user_vectors):
            seen = users["seen"][u]
            rows, _ = index.search(vector, max(m, TOP), exclude=seen)
            served.append(rows[:m])
            truth.append(_exact_top(exact, vector, m, seen))
            retrieval.append(_pad(rows[:TOP]))
            cascade.append(_pad(_rank(model, users["inputs"], u, rows[:m])[:TOP]))
        positives = users["positives"]
        recall = float(np.mean([len(np.intersect1d(s, t)) / max(len(t), 1) for s, t in zip(served, truth)]))
        say(f"  index recall@{m} vs exact: {recall:.4f} ({len(served)} users)")
        blocks = {RETRIEVAL: _block(full_catalogue_metrics(np.stack(retrieval), positives, topk=True), len(positives)),
                  CASCADE: _block(full_catalogue_metrics(np.stack(cascade), positives, topk=True), len(positives))}
        ranked = load_heldout(heldout_path, settings.ranker_users, settings.seed + 1)
        blocks[RANKER] = _block(_ranker_all(model, ranked, index.num_items), len(ranked["positives"]))
        popularity = np.bincount(users["all_seen_items"], minlength=index.num_items).astype(np.float64)
        popularity[:NUM_RESERVED] = -np.inf
        blocks[POPULARITY] = _block(full_catalogue_metrics(
            lambda start, stop: np.broadcast_to(popularity, (stop - start, popularity.size)),
            positives, users["seen"]), len(positives))
        for name, block in blocks.items():
            say(f"  full catalogue {name}: " + ", ".join(f"{k} {block[k]:.4f}" for k in FULL_CATALOGUE_KEYS))
        summary = {k: index.meta[k] for k in ("kind", "num_items", "dim", "quantization", "score")}
        summary.update({"files": sorted({index.meta["arrays"], "item_index.json",
                                         *([index.meta["ann"]["file"]] if "ann" in index.meta else [])}),
                        "m": m, f"recall@{m}": recall, "recall_users": len(served), "backend": model.backend_name,
                        "recall_reference": "exact dot product over the fp32 item vectors, seen items excluded",
                        USER_TOWER: index.meta.get(USER_TOWER, {})})
        if "ann" in index.meta:
            summary["ann"] = dict(index.meta["ann"])
        return {INDEX: summary, FULL_CATALOGUE: blocks}
    finally:
        model.close()


def _exact_top(vectors: np.ndarray, vector: np.ndarray, m: int, seen) -> np.ndarray:
    scores = vectors @ vector
    scores[:NUM_RESERVED] = -np.inf
    scores[np.asarray(seen, np.int64)] = -np.inf
    m = min(m, int(np.isfinite(scores).sum()))
    top = np.argpartition(-scores, m - 1)[:m]
    return top[np.argsort(-scores[top], kind="stable")]


def _user_rows(inputs: dict, u: int, items: np.ndarray) -> dict:
    n = len(items)
    arrays = {k: np.repeat(v[u:u + 1], n, axis=0) for k, v in inputs.items()}
    arrays[CAND_ITEM] = np.asarray(items, np.int32)
    return arrays


def _rank(model, inputs: dict, u: int, rows: np.ndarray) -> np.ndarray:
    if rows.size == 0:
        return rows
    scores = model.score_rows(_user_rows(inputs, u, rows))
    return rows[np.lexsort((rows, -scores))]


def _ranker_all(model, users: dict, num_items: int) -> dict:
    items = np.arange(num_items, dtype=np.int32)

    def scores(start, stop):
        block = np.empty((stop - start, num_items), np.float32)
        for row, u in enumerate(range(start, stop)):
            for begin in range(0, num_items, RANKER_CHUNK_ROWS):
                chunk = items[begin:begin + RANKER_CHUNK_ROWS]
                block[row, begin:begin + chunk.size] = model.score_rows(_user_rows(users["inputs"], u, chunk))
        return block

    return full_catalogue_metrics(scores, users["positives"], users["seen"])


def _pad(rows: np.ndarray) -> np.ndarray:
    """A top list of exactly `TOP` entries (-1: nothing recommended there, a miss)."""
    out = np.full(TOP, -1, np.int64)
    out[:min(TOP, rows.size)] = rows[:TOP]
    return out


def _block(metrics: dict, users: int) -> dict:
    return {**{k: float(metrics[k]) for k in FULL_CATALOGUE_KEYS}, "users": int(users)}
