"""`Predictor.recommend_batch`: `recommend` for many users at once, the model calls batched.

For B user requests it runs the user tower on the users whose vector is not cached, `USER_CHUNK`
users per call, searches the index per user (the same search as `recommend`), runs the ranker's
user encoder the same way on the users whose state is not cached, and scores all users'
retrieved items together, at most `RANK_CHUNK_ROWS` rows per scorer call, each row fed its own
user's state. Results are those of ``[recommend(r) for r in requests]`` (scores equal up to the
float rounding of batched kernels, so items can differ only where two scores nearly tie;
`benchmarks.recommend.recommend_batch_rows` measures the share of identical top k) — what
changes is the number of model calls: 2·ceil(B / 256) + ceil(B·m / 4096) instead of 3·B, which
is what a GPU provider needs to be worth its launch cost.

A part whose artifact is dynamically quantized (precision ``dynamic``: ONNX Runtime's
``DynamicQuantizeLinear`` takes one activation scale over the whole input tensor) would score a
user differently beside other users than alone, so such a part runs one user per call, as
`recommend` does (measured on a 10^4-item DIN bundle: 6 of 16 users' top 10 reordered by ~1e-4
score differences when batched).

Examples:
    >>> with load("bundle/") as predictor:                                        # doctest: +SKIP
    ...     found = predictor.recommend_batch([{"history": ["318"]}, {"history": ["296", "1"]}], k=3)
    >>> [r.items for r in found]                                                  # doctest: +SKIP
    [['593', '2571', '260'], ['318', '593', '50']]
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .cache import result_keys, user_state_key
from .contract import CAND_ITEM, HIST_ITEMS, SCORE
from .errors import BundleError, RequestError, expected
from .recommend import (DEFAULT_K, DEFAULT_M, RANK_CHUNK_ROWS, Recommendations, UserRow, _count, allowed_rows,
                        best_k, retrieve, retriever_for, score_rows)
from .selection import selected_files
from .scores import as_scores

# users per user-tower / user-encoder call: within the default batch bucket of a TensorRT engine
USER_CHUNK = 256


def recommend_batch(model, predictor, user_requests: Sequence[Mapping], k: int = DEFAULT_K, m: int = DEFAULT_M,
                    exclude_seen: bool = True, filter=None, use_cache: bool = True) -> list[Recommendations]:
    """`Predictor.recommend_batch` on the pinned bundle ``model`` (see the module docstring).

    Every request is checked before any model runs; a bad one raises `RequestError` naming its
    position. ``filter`` applies to every user.
    """
    if isinstance(user_requests, (str, bytes, Mapping)) or not isinstance(user_requests, Sequence):
        raise RequestError(expected("a sequence of user requests (dicts)", type(user_requests).__name__))
    if not user_requests:
        raise RequestError(expected("at least one user request", "an empty sequence"))
    k, m = _count(k, "k"), _count(m, "m")
    m = max(m, k)
    pre = predictor._preprocessor(model)
    requests, users = [], []
    for position, raw in enumerate(user_requests):
        try:
            request = pre.check_request(raw, need_item=False)
            users.append(UserRow.encode(pre, request))
        except RequestError as err:
            raise RequestError(f"request {position}: {err}") from None
        requests.append(request)
    allowed = allowed_rows(pre, filter)
    retriever = retriever_for(model, predictor._options)
    batch = _stack(users)
    tower_file = (retriever.index.meta.get("user_tower") or {}).get(model.backend_name)
    vectors = _vectors(predictor, model, retriever, batch, use_cache, _batch_invariant(model, tower_file))
    found = []
    for request, vector in zip(requests, vectors):
        history = request["history"]
        exclude = pre.encode_items(history) if exclude_seen and len(history) else None
        found.append(retrieve(retriever.index, vector, m, exclude, allowed))
    fusion = retriever.fusion
    ranked = _rank_all(predictor, model, requests, batch, [rows for rows, _ in found], use_cache) \
        if fusion.needs_ranker else [None] * len(found)
    out = []
    for (rows, retrieved), scores in zip(found, ranked):
        if rows.size == 0:
            out.append(Recommendations([], np.zeros(0, np.float32)))
            continue
        order, best = best_k(fusion.combine(scores, retrieved), k)
        out.append(Recommendations(retriever.index.ids[rows[order]].tolist(), best))
    return out


def _stack(users: list[UserRow]) -> UserRow:
    """B one-row `UserRow`s as one B-row `UserRow`."""
    context = {name: np.concatenate([u.context[name] for u in users]) for name in users[0].context}
    dense = None if users[0].dense is None else np.concatenate([u.dense for u in users])
    return UserRow(np.concatenate([u.hist for u in users]), context, dense)


def _batch_invariant(model, file: str | None) -> bool:
    """Whether the artifact ``file`` gives a row the same output whatever rows share its call."""
    if file is None:
        return True
    try:
        return model.manifest.artifact(file).precision != "dynamic"
    except BundleError:          # an unlisted file: assume the conservative answer
        return False


def _rows(run, feeds: dict, rows: list[int], one_by_one: bool) -> dict:
    """``run`` on the given rows of ``feeds``: calls of up to `USER_CHUNK` rows, or one call per
    row; outputs stacked (copies: a cached row must not keep a whole batch's buffer alive)."""
    step = 1 if one_by_one else USER_CHUNK
    outs = [run({name: value[rows[i:i + step]] for name, value in feeds.items()}) for i in range(0, len(rows), step)]
    return {name: np.concatenate([out[name] for out in outs]) for name in outs[0]}


def _vectors(predictor, model, retriever, batch: UserRow, use_cache: bool, invariant: bool) -> np.ndarray:
    """[B, D] user vectors: cached ones reused, the rest from user-tower calls of `USER_CHUNK`
    users (one per user for a batch-variant tower)."""
    feeds = retriever.feeds_of(batch)
    n = len(batch.hist)
    cache = predictor.user_cache
    cached = use_cache and cache.enabled
    keys = [("user_tower",) + key for key in result_keys(model.version, feeds)] if cached else [None] * n
    known = [cache.get(key) if cached else None for key in keys]
    missing = [i for i, vector in enumerate(known) if vector is None]
    if missing:
        computed = _rows(lambda f: {"v": retriever.vectors(f)}, feeds, missing, not invariant)["v"]
        for i, vector in zip(missing, computed):
            known[i] = vector.copy()
            if cached:
                cache.put(keys[i], known[i])
    return np.stack(known)


def _states(predictor, model, requests, hist: np.ndarray, use_cache: bool, invariant: bool) -> dict:
    """The ranker's user-encoder outputs for every user, [B, …] per output: cached states
    reused, the rest from user-encoder calls of `USER_CHUNK` users (one per user for a
    batch-variant encoder)."""
    cache = predictor.user_cache
    cached = use_cache and cache.enabled
    keys = [user_state_key(model.version, r.get("user_id"), hist[i:i + 1]) if cached else None
            for i, r in enumerate(requests)]
    known = [cache.get(key) if cached else None for key in keys]
    missing = [i for i, state in enumerate(known) if state is None]
    if missing:
        computed = _rows(lambda f: model.run("user_encoder", f), {HIST_ITEMS: hist}, missing, not invariant)
        for j, i in enumerate(missing):
            known[i] = {name: value[j:j + 1].copy() for name, value in computed.items()}
            if cached:
                cache.put(keys[i], known[i])
    return {name: np.concatenate([state[name] for state in known]) for name in known[0]}


def _rank_all(predictor, model, requests, batch: UserRow, rows_per_user: list[np.ndarray],
              use_cache: bool) -> list[np.ndarray]:
    """Ranker scores of every user's retrieved rows, all users' rows in shared scorer calls."""
    counts = np.asarray([rows.size for rows in rows_per_user], np.int64)
    total = int(counts.sum())
    if total == 0:
        return [np.zeros(0, np.float32) for _ in rows_per_user]
    files = selected_files(model.manifest, model.backend_name)
    if "scorer" in model.parts and "user_encoder" in model.parts:
        part = "scorer"
        per_user = _states(predictor, model, requests, batch.hist, use_cache,
                           _batch_invariant(model, files.get("user_encoder")))
    else:
        part, per_user = "fused", {HIST_ITEMS: batch.hist}
    columns = batch.columns                                             # one value per candidate row
    if not _batch_invariant(model, files.get(part)):
        # one user per call, its 1-row state fed once: `recommend`'s own scorer calls
        return [score_rows(model, part, rows, _row(columns, u), _row(per_user, u))
                for u, rows in enumerate(rows_per_user)]
    per_user = {**per_user, **columns}
    owner = np.repeat(np.arange(len(counts)), counts)          # the user of each ranked row
    items = np.concatenate(rows_per_user).astype(np.int32)
    scores = np.empty(total, np.float32)
    for begin in range(0, total, RANK_CHUNK_ROWS):
        end = min(total, begin + RANK_CHUNK_ROWS)
        who = owner[begin:end]
        feeds = {name: value[who] for name, value in per_user.items()}
        feeds[CAND_ITEM] = items[begin:end]
        scores[begin:end] = as_scores(model.run(part, feeds)[SCORE], end - begin)
    return np.split(scores, np.cumsum(counts)[:-1])


def _row(arrays: dict, u: int) -> dict:
    """User ``u``'s 1-row slice of every [B, …] array."""
    return {name: value[u:u + 1] for name, value in arrays.items()}
