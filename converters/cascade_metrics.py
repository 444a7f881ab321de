"""What a cascade export measures through the finished bundle: index recall and full-catalogue metrics.

Everything runs on the bundle's own artifacts (the selected user tower and ranker for the
backend the runtime picks, the stored index), on R's held-out users:

* ``index``: recall@M of the served index (quantized rows or HNSW) against exact search over the
  fp32 item vectors, seen items excluded on both sides;
* ``full_catalogue.retrieval``: the index's top-100 (seen items excluded);
* ``full_catalogue.ranker``: the ranker scoring EVERY item for ``ranker_users`` users, fewer when
  users x items would pass the ``ranker_rows`` budget (`ranker_user_budget`; the block records
  its ``users`` and ``row_budget``);
* ``full_catalogue.cascade``: M retrieved items ordered by the bundle's `CascadeScore` (what
  `Predictor.recommend` returns), top 100 of them; the retrieval weight is fitted on validation
  events (`previous_event_users`), never on the held-out items, and recorded with its
  validation curve in ``index.cascade_score``;
* ``full_catalogue.cascade_ranker_order``: the same M items in the ranker's order alone (w = 0);
* ``full_catalogue.popularity``: items ranked by how many held-out users have seen them.

Each block is ``{"hr@10", "ndcg@10", "recall@100", "users"}`` (`runtime.metrics` definitions:
ties against the held-out item, padding/OOV never recommended).
"""
from __future__ import annotations

import numpy as np

from edgerec.runtime.cascade_score import CASCADE_SCORE, CascadeScore
from edgerec.runtime.contract import (CAND_ITEM, CASCADE, FULL_CATALOGUE, HIST_ITEMS, INDEX, POPULARITY, RANKER,
                                      RETRIEVAL, USER_TOWER)
from edgerec.runtime.errors import expected
from edgerec.runtime.metrics import FULL_CATALOGUE_KEYS, full_catalogue_metrics, recall_at, topk_ranks
from edgerec.runtime.recommend import retriever_for
from edgerec.runtime.spec import NUM_RESERVED

from .errors import ConverterConfigError

TOP = 100                 # the longest cut-off of the full-catalogue blocks
RANKER_CHUNK_ROWS = 8192
WEIGHT_GRID = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))
CASCADE_RANKER_ORDER = "cascade_ranker_order"     # the M retrieved items in the ranker's order alone
# a re-measurement through the same artifacts on the same users may differ only by score ties
# broken in another order (threads sum in another order): about two users in 500
REMEASURE_TOLERANCE = 0.005


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


def previous_event_users(users: dict) -> dict:
    """Validation events of held-out users: each user's previous event (the last item of its test
    history, the dataset's ``valid`` event) held out in turn, with the history before it.

    Neither model was trained on that event (it only steered early stopping) and the test item
    plays no part, so a weight fitted on these events is not fitted on the test. The context and
    dense features are the test row's (the only ones kept per user). Users whose previous item is
    out of vocabulary are left out.
    """
    hist = np.asarray(users["inputs"][HIST_ITEMS])
    keep = np.flatnonzero(hist[:, -1] >= NUM_RESERVED)
    shifted = np.zeros_like(hist[keep])
    shifted[:, 1:] = hist[keep, :-1]
    inputs = {k: np.asarray(v)[keep] for k, v in users["inputs"].items()}
    inputs[HIST_ITEMS] = shifted
    positives = hist[keep, -1].astype(np.int64)
    seen = [users["seen"][u][users["seen"][u] != p] for u, p in zip(keep, positives)]
    return {"inputs": inputs, "positives": positives, "seen": seen, "all_seen_items": users["all_seen_items"]}


def measure_cascade(bundle, vectors: np.ndarray, users: dict, heldout_path, settings, say) -> dict:
    """``{"index": …, "full_catalogue": …}`` for a bundle `cascade.write_cascade` completed; the
    index section holds the fitted `CascadeScore` (``cascade_score``) the runtime applies."""
    from edgerec.runtime.loaded import LoadedBundle

    model = LoadedBundle.open(bundle, share_sessions=False)
    try:
        retriever = retriever_for(model, {})
        index = retriever.index
        m = settings.m
        say(f"fitting the cascade score on the validation events of {len(users['positives'])} users")
        fusion, record = fit_cascade_score(model, retriever, previous_event_users(users), m, settings.retrieval_weight)
        say(f"  retrieval weight {fusion.retrieval_weight:.2f} ({fusion.ranker_transform} ranker scores)")
        stages = retrieve_and_rank(model, retriever, users, max(m, TOP), m, need_ranker=True)
        exact = np.asarray(vectors, np.float32)
        truth = [exact_top(exact, vector, m, seen) for vector, seen in zip(stages["vectors"], users["seen"])]
        served = [rows[:m] for rows in stages["rows"]]
        recall = recall_at(served, truth)
        say(f"  index recall@{m} vs exact: {recall:.4f} ({len(served)} users)")
        positives = users["positives"]
        blocks = {RETRIEVAL: _block(full_catalogue_metrics(retrieval_tops(stages), positives, topk=True), len(positives)),
                  CASCADE: cascade_block(stages, positives, fusion)}
        ranked = load_heldout(heldout_path, ranker_user_budget(settings, index.num_items), settings.seed + 1)
        blocks[RANKER] = {**_block(_ranker_all(model, ranked, index.num_items), len(ranked["positives"])),
                          "row_budget": int(settings.ranker_rows)}
        blocks[POPULARITY] = popularity_block(users, index.num_items)
        blocks[CASCADE_RANKER_ORDER] = cascade_block(stages, positives, CascadeScore())
        for name, block in blocks.items():
            say(f"  full catalogue {name}: " + ", ".join(f"{k} {block[k]:.4f}" for k in FULL_CATALOGUE_KEYS))
        summary = {k: index.meta[k] for k in ("kind", "num_items", "dim", "quantization", "score")}
        summary.update({"files": sorted({index.meta["arrays"], "item_index.json",
                                         *([index.meta["ann"]["file"]] if "ann" in index.meta else [])}),
                        "m": m, f"recall@{m}": recall, "recall_users": len(served), "eval_seed": int(settings.seed),
                        "backend": model.backend_name,
                        "recall_reference": "exact dot product over the fp32 item vectors, seen items excluded",
                        USER_TOWER: index.meta.get(USER_TOWER, {}), CASCADE_SCORE: record})
        if "ann" in index.meta:
            summary["ann"] = dict(index.meta["ann"])
        if "search_tuning" in index.meta:
            summary["search_tuning"] = index.meta["search_tuning"]
        return {INDEX: summary, FULL_CATALOGUE: blocks}
    finally:
        model.close()


def ranker_user_budget(settings, num_items: int) -> int:
    """Users the ranker-alone block scores EVERY item for: ``settings.ranker_users``, fewer when
    users x items would pass ``settings.ranker_rows`` (at least one)."""
    return int(max(1, min(settings.ranker_users, settings.ranker_rows // max(num_items, 1))))


def retrieve_and_rank(model, retriever, users: dict, depth: int, m: int, need_ranker: bool = True) -> dict:
    """Per user: the index's best ``depth`` rows (seen excluded) with their index scores, and the
    ranker's scores of the first ``m`` of them: ``{"vectors", "rows", "retrieval", "ranker"}``."""
    feeds = {n: users["inputs"][n] for n in retriever.input_names}
    vectors = retriever.vectors(feeds)
    out = {"vectors": vectors, "rows": [], "retrieval": [], "ranker": []}
    for u, vector in enumerate(vectors):
        rows, scores = retriever.index.search(vector, depth, exclude=users["seen"][u])
        out["rows"].append(rows)
        out["retrieval"].append(scores)
        out["ranker"].append(_scores(model, users["inputs"], u, rows[:m]) if need_ranker else None)
    return out


def cascade_tops(stages: dict, fusion) -> np.ndarray:
    """int64 ``[U, TOP]``: each user's first ``m`` retrieved rows ordered by ``fusion`` (-1 pads)."""
    tops = []
    for rows, retrieval, ranker in zip(stages["rows"], stages["retrieval"], stages["ranker"]):
        n = rows.size if ranker is None else ranker.size
        scores = fusion.combine(ranker, retrieval[:n])
        tops.append(_pad(rows[:n][np.lexsort((np.arange(n), -scores))][:TOP]))
    return np.stack(tops) if tops else np.zeros((0, TOP), np.int64)


def cascade_block(stages: dict, positives: np.ndarray, fusion) -> dict:
    """The full-catalogue block of the first ``m`` retrieved rows ordered by ``fusion``."""
    return _block(full_catalogue_metrics(cascade_tops(stages, fusion), positives, topk=True), len(positives))


def retrieval_tops(stages: dict) -> np.ndarray:
    return np.stack([_pad(r) for r in stages["rows"]]) if stages["rows"] else np.zeros((0, TOP), np.int64)


def per_user_metrics(tops: np.ndarray, positives: np.ndarray) -> dict:
    """``{"hr@10", "ndcg@10", "recall@100"}`` -> float ``[U]`` per user (means are the block's)."""
    ranks = topk_ranks(tops, positives)
    return {"hr@10": (ranks < 10).astype(np.float64),
            "ndcg@10": np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0),
            "recall@100": (ranks < 100).astype(np.float64)}


def fit_cascade_score(model, retriever, users: dict, m: int, weight: float | None = None) -> tuple:
    """The `CascadeScore` whose weight gives the best HR@10 (then NDCG@10) on ``users`` — the
    validation events of `previous_event_users` — over `WEIGHT_GRID`, and its manifest record
    (the whole validation curve). A given ``weight`` is recorded as is (``fitted_on``: null)."""
    stages = retrieve_and_rank(model, retriever, users, m, m)
    scores = np.concatenate([s for s in stages["ranker"] if s is not None and s.size] or [np.zeros(0)])
    transform = "logit" if scores.size and scores.min() >= 0.0 and scores.max() <= 1.0 else "identity"
    curve = []
    for w in (WEIGHT_GRID if weight is None else (float(weight),)):
        block = cascade_block(stages, users["positives"], CascadeScore(float(w), transform))
        curve.append({"retrieval_weight": float(w), **{k: block[k] for k in FULL_CATALOGUE_KEYS}})
    best = max(curve, key=lambda c: (round(c["hr@10"], 12), round(c["ndcg@10"], 12), -c["retrieval_weight"]))
    fusion = CascadeScore(best["retrieval_weight"], transform)
    fitted_on = None if weight is not None else {
        "users": int(len(users["positives"])), "objective": "hr@10, then ndcg@10",
        "events": "each held-out user's previous event (its test history's last item), history before it"}
    return fusion, {**fusion.to_dict(), "m": int(m), "fitted_on": fitted_on, "validation": curve}


def popularity_block(users: dict, num_items: int) -> dict:
    """Items ranked by how many held-out users have seen them."""
    popularity = np.bincount(users["all_seen_items"], minlength=num_items).astype(np.float64)
    popularity[:NUM_RESERVED] = -np.inf
    return _block(full_catalogue_metrics(lambda start, stop: np.broadcast_to(popularity, (stop - start, popularity.size)),
                                         users["positives"], users["seen"]), len(users["positives"]))


def remeasure(bundle, heldout_path, backends, say=None) -> dict:
    """Re-measure a cascade bundle's retrieval and cascade blocks through its artifacts.

    For each backend in ``backends`` and each of its user tower artifacts (the selected one and
    the other passing precisions), on the users the export measured (the manifest's user count and
    ``eval_seed``) with the bundle's recorded `CascadeScore`. Each row has the blocks, their
    difference from the manifest's figures, and for a compressed tower the paired Δ against the
    same backend's fp32 tower (mean per-user difference and its standard error). The ranker-alone
    block (every item scored per user) is not re-measured.

    Returns:
        ``{"users", "seed", "m", "cascade_score", "rows": […], "failures": […]}``; a failure is the
        selected tower of the backend the manifest was measured with differing from the manifest
        by more than `REMEASURE_TOLERANCE`.
    """
    from edgerec.runtime.backends.registry import create_backend
    from edgerec.runtime.contract import BACKEND_FOR_FORMAT, USER_VECTOR
    from edgerec.runtime.loaded import LoadedBundle
    from edgerec.runtime.manifest import load_manifest, read_verified
    from edgerec.runtime.recommend import Retriever

    say = say or (lambda line: None)
    manifest = load_manifest(bundle, verify=False)
    section, recorded = manifest.index or {}, manifest.full_catalogue or {}
    count = int((recorded.get(CASCADE) or {}).get("users") or section.get("recall_users") or 500)
    seed, m = int(section.get("eval_seed", 0)), int(section.get("m", 200))
    users = load_heldout(heldout_path, count, seed)
    fusion = CascadeScore.of(manifest)
    out = {"users": len(users["positives"]), "seed": seed, "m": m, "cascade_score": fusion.to_dict(), "rows": [],
           "failures": []}
    for backend in backends:
        towers = [a for a in manifest.artifacts if a.part == USER_TOWER and BACKEND_FOR_FORMAT[a.format] == backend]
        if not towers:
            continue
        model = LoadedBundle.open(bundle, backend=backend, share_sessions=False)
        try:
            index = retriever_for(model, {}).index
            chosen = (index.meta.get(USER_TOWER) or {}).get(backend)
            per_user, reference = {}, next((a.file for a in towers if a.precision == "fp32"), None)
            for art in sorted(towers, key=lambda a: a.precision != "fp32"):
                tower = create_backend(backend, model.dir / art.file, model_bytes=read_verified(model.dir, manifest, art.file))
                try:
                    names = [t.name for t in tower.outputs]
                    retriever = Retriever(index, tower, USER_VECTOR if USER_VECTOR in names else names[0])
                    stages = retrieve_and_rank(model, retriever, users, max(m, TOP), m, fusion.needs_ranker)
                finally:
                    tower.close()
                tops = {RETRIEVAL: retrieval_tops(stages), CASCADE: cascade_tops(stages, fusion)}
                per_user[art.file] = {k: per_user_metrics(v, users["positives"]) for k, v in tops.items()}
                row = {"backend": backend, USER_TOWER: art.file, "precision": art.precision,
                       "selected": art.file == chosen, "users": len(users["positives"])}
                for stage, metrics in per_user[art.file].items():
                    row[stage] = {k: float(v.mean()) for k, v in metrics.items()}
                    if recorded.get(stage):
                        row.setdefault("delta_vs_manifest", {})[stage] = {
                            k: row[stage][k] - float(recorded[stage][k]) for k in FULL_CATALOGUE_KEYS}
                if art.precision != "fp32" and reference in per_user:
                    row["paired_delta_vs_fp32"] = {stage: _paired(metrics, per_user[reference][stage])
                                                   for stage, metrics in per_user[art.file].items()}
                if row["selected"] and backend == section.get("backend"):
                    off = {f"{stage} {k}": d for stage, deltas in row.get("delta_vs_manifest", {}).items()
                           for k, d in deltas.items() if abs(d) > REMEASURE_TOLERANCE}
                    if off:
                        out["failures"].append(f"full catalogue through {art.file} ({backend}) differs from the "
                                               f"manifest: " + ", ".join(f"{k} {d:+.4f}" for k, d in off.items()))
                say(f"  full catalogue {backend} {art.file}: " + "; ".join(
                    f"{stage} " + ", ".join(f"{k} {row[stage][k]:.4f}" for k in FULL_CATALOGUE_KEYS)
                    for stage in (RETRIEVAL, CASCADE)))
                out["rows"].append(row)
        finally:
            model.close()
    return out


def _paired(metrics: dict, reference: dict) -> dict:
    out = {}
    for k, values in metrics.items():
        diff = values - reference[k]
        out[k] = float(diff.mean())
        out[f"{k}_se"] = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0
    return out


def exact_top(vectors: np.ndarray, vector: np.ndarray, m: int, seen) -> np.ndarray:
    """The ``m`` rows of ``vectors`` with the highest dot product with ``vector``, best first;
    padding/OOV and the ``seen`` rows left out."""
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


def _scores(model, inputs: dict, u: int, rows: np.ndarray) -> np.ndarray:
    if rows.size == 0:
        return np.zeros(0, np.float32)
    return np.asarray(model.score_rows(_user_rows(inputs, u, rows)), np.float32).reshape(-1)


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
