"""`Predictor`: raw requests in, probabilities out, over a verified bundle (TF-free).

    import edgerec.runtime as er
    with er.load("bundle/", backend="auto") as predictor:
        predictor.predict([{"history": ["10", "31"], "item": "99", "context": {"timestamp": 964982703}}])
        scores, oov = predictor.predict(requests, return_oov=True)   # oov: candidate id unknown
        predictor.score_candidates({"user_id": "42", "history": ["10", "31"]}, ["99", "7", "12"])
        predictor.top_k({"user_id": "42", "history": ["10"]}, candidates, k=10)
        predictor.swap("bundle_v2/")      # hot swap: validate fully, then switch atomically
        predictor.item_vectors(["Toy Story (1995)"])             # content bundles: text -> vector
        predictor.add_items({"m-new": "Space Cowboys (2000)"})   # cold start: scored by its content
"""
from __future__ import annotations

import threading
import time
from typing import Any, Mapping, Sequence

import numpy as np

from .cache import CacheConfig, LRUCache, SESSIONS, result_keys, user_state_key
from .cold_start import ColdStartItems, ItemContentMethods, mark_added
from .contract import ITEM_TOKENS, ITEM_VECTOR  # noqa: F401  (public here too)
from .counters import FOLD_EVERY, CallCounters
from .errors import RequestError, expected
from .hot_swap import swap_bundle
from .loaded import LoadedBundle
from .scores import Scores, as_scores, count_oov, score_in_chunks
from .spec import CAND_ITEM, HIST_ITEMS, OOV_INDEX, SCORE
from .tensor_checks import check_tensor_ranges  # noqa: F401  (public here too)

_clock = time.perf_counter
# Rows per model call: a bigger batch is scored in chunks, so peak memory (the backend's
# intermediate tensors grow with the batch) is bounded whatever the caller sends.
CHUNK_ROWS = 4096


def load(bundle_path, backend: str = "auto", warmup: bool = True, cache=None, **backend_options) -> "Predictor":
    """Verify and load a bundle directory or .tar.gz; see `Predictor`."""
    return Predictor(bundle_path, backend=backend, warmup=warmup, cache=cache, **backend_options)


class Predictor(ItemContentMethods):
    """Scores raw requests with the bundle's selected artifacts for one backend.

    Args:
        bundle_path: bundle directory or .tar/.tar.gz archive (sha256 of every file verified).
        backend: "auto" (onnxruntime if installed, else litert) | "onnxruntime" | "litert".
        warmup: run every part once at load (first-call latency is paid here).
        cache: None (defaults), False (off), a dict of `CacheConfig` fields, or a CacheConfig.
        **backend_options: passed to the backend (num_threads, providers, …).

    Examples:
        >>> predictor = load("bundle/", num_threads=1)
        >>> predictor.predict([{"history": ["1"], "item": "2"}]).shape
        (1,)
    """

    def __init__(self, bundle_path, backend: str = "auto", warmup: bool = True, cache=None, **backend_options):
        self.cache_config = CacheConfig.coerce(cache)
        self._backend_request, self._warmup, self._options = backend, bool(warmup), dict(backend_options)
        c = self.cache_config
        self.user_cache = LRUCache(c.user_entries, c.user_bytes, c.user_ttl_s)
        self.result_cache = LRUCache(c.result_entries, c.result_bytes, c.result_ttl_s)
        self._swap_lock = threading.Lock()     # serialises swap/close (calls pin the bundle lock-free)
        self._counters = CallCounters()
        self._call_seconds = self._counters.call_seconds     # lock-free appends on the hot path
        self._predict_rows = self._counters.predict_rows
        self._fold, self._count = self._counters.fold, self._counters.add
        self._closed = False
        self._cold = ColdStartItems()
        self._model = self._open(bundle_path)

    def _open(self, bundle_path) -> LoadedBundle:
        model = LoadedBundle.open(bundle_path, self._backend_request,
                                  share_sessions=self.cache_config.share_sessions, **self._options)
        try:
            if self._warmup:
                model.warmup()
        except BaseException:
            model.close()
            raise
        return model

    # -- properties ---------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return self._model.backend_name

    @property
    def version(self) -> str:
        """Short hash of the serving manifest; changes with every swapped-in bundle."""
        return self._model.version

    @property
    def manifest(self):
        return self._model.manifest

    @property
    def spec(self):
        return self._model.spec

    @property
    def parts(self) -> list[str]:
        return sorted(self._model.parts)

    def input_specs(self, part: str) -> list:
        """The `TensorSpec` inputs of one part, as its backend declares them."""
        if part not in self._model.parts:
            raise RequestError(expected(f"a part among {self.parts}", part))
        return list(self._model.parts[part].inputs)

    # The swap protocol without a lock on the hot path: `_enter` pins the serving bundle (an entry
    # in its in-flight list), then re-reads `self._model`. If it is still the same, any swap assigns
    # the new bundle after our pin, so its `retire()` sees us in flight and the old bundle stays open
    # until our `_leave`; if a swap came in between, we unpin and take the new bundle. Calls that
    # start after `swap()` returned always see the new bundle.
    def _enter(self) -> LoadedBundle:
        model = self._model
        model._calls.append(None)                # `model.enter()`, inlined on the hot path
        if self._model is model and not self._closed:
            return model
        model.exit()
        return self._enter_slow()

    def _enter_slow(self) -> LoadedBundle:
        while True:
            if self._closed:
                raise RequestError(expected("an open Predictor", "closed"))
            model = self._model
            model.enter()
            if self._model is model and not self._closed:
                return model
            model.exit()

    def _leave(self, model: LoadedBundle, start: float, failed: bool) -> None:
        calls = model._calls                     # `model.exit()`, inlined on the hot path
        calls.pop()
        if model._retired and not calls:
            model.close()
        seconds = self._call_seconds
        seconds.append(_clock() - start)
        if failed:
            self._count("errors", 1)
        if len(seconds) >= FOLD_EVERY:
            self._fold()

    def _serve(self, impl, *args):
        """Run ``impl(model, *args)`` on the pinned serving bundle, booking the call."""
        model = self._enter()
        start = _clock()
        try:
            result = impl(model, *args)
        except BaseException:
            self._leave(model, start, True)
            raise
        self._leave(model, start, False)
        return result

    # -- raw requests ---------------------------------------------------------------------------
    def predict(self, requests: Sequence[Mapping], use_cache: bool = True, return_oov: bool = False):
        """Probabilities (float32, one per request) for a batch of raw request dicts.

        Args:
            requests: raw request dicts (see `edgerec.runtime.preprocess`).
            use_cache: use the result and user-state caches.
            return_oov: return `Scores` (``.scores`` and ``.oov``, True where the candidate item is
                out of vocabulary) instead of the bare array.
        """
        # `_serve` written out: the benchmark's `raw_request` scenario times this path.
        model = self._enter()
        start = _clock()
        try:
            result = self._predict(model, requests, use_cache, return_oov)
        except BaseException:
            self._leave(model, start, True)
            raise
        self._leave(model, start, False)
        return result

    def _predict(self, model: LoadedBundle, requests, use_cache: bool, return_oov: bool):
        pre = model.preprocessor
        if pre is None:
            pre = self._preprocessor(model)      # raises the typed error
        if type(requests) is not list and (isinstance(requests, Mapping) or not isinstance(requests, Sequence)):
            raise RequestError(expected("a list of request objects", type(requests).__name__))
        n = len(requests)
        if n == 0:
            raise RequestError(expected("at least one request", 0))
        check = pre.check_request
        for request in requests:
            check(request)
        if n <= CHUNK_ROWS:
            scores, items = self._predict_chunk(model, pre, requests, use_cache)
        else:
            scores, items = np.empty(n, np.float32), np.empty(n, np.int32)
            for begin in range(0, n, CHUNK_ROWS):
                end = min(n, begin + CHUNK_ROWS)
                scores[begin:end], items[begin:end] = self._predict_chunk(model, pre, requests[begin:end], use_cache)
        self._predict_rows.append(n)
        return self._flag_oov(scores, items, return_oov)

    def _predict_chunk(self, model: LoadedBundle, pre, requests, use_cache: bool) -> tuple:
        """(scores, encoded candidate ids) of at most `CHUNK_ROWS` checked requests."""
        added = self._cold.vectors(model)
        arrays = pre.encode_checked(requests, model.request_inputs, added)
        items = arrays[CAND_ITEM]
        if added:
            items = mark_added(items, [r["item"] for r in requests], added)
        if not (use_cache and self.result_cache.enabled):
            return self._score_rows(model, arrays, requests, use_cache), items
        keys = result_keys(model.version, arrays)
        hits, todo = self.result_cache.get_many(keys)
        out = np.array([0.0 if hit is None else hit for hit in hits], dtype=np.float32)
        if todo:
            if len(todo) < len(keys):
                arrays = {name: value[todo] for name, value in arrays.items()}
                requests = [requests[i] for i in todo]
            scores = self._score_rows(model, arrays, requests, use_cache)
            out[todo] = scores
            for i, s in zip(todo, scores):
                self.result_cache.put(keys[i], np.float32(s))
        return out, items

    def _flag_oov(self, scores: np.ndarray, items: np.ndarray, return_oov: bool):
        """Count rows whose candidate is out of vocabulary; `Scores` when the caller asked."""
        unknown = count_oov(items)
        if unknown:
            self._count("oov_rows", unknown)
        if return_oov:
            return Scores(scores, items == OOV_INDEX)
        return scores

    def score_candidates(self, user_request: Mapping, candidates: Sequence[Any], context: Mapping | None = None,
                         dense: Mapping | None = None, use_cache: bool = True, return_oov: bool = False):
        """Scores of N candidates for one user: the user encoder runs once (cached), the scorer
        runs on the candidates (in batches of at most `CHUNK_ROWS`). ``context``/``dense`` default
        to the request's; ``return_oov``: return `Scores` flagging unknown candidate ids."""
        return self._serve(self._score_candidates, user_request, candidates, context, dense, use_cache, return_oov)

    def _score_candidates(self, model: LoadedBundle, user_request, candidates, context, dense, use_cache, return_oov):
        pre = self._preprocessor(model)
        request = pre.check_request(user_request, need_item=False)
        context = request.get("context") if context is None else context
        dense = request.get("dense") if dense is None else dense
        added = self._cold.vectors(model)
        arrays = pre.encode_candidates(candidates, context, dense, added)
        n = len(arrays[CAND_ITEM])
        hist = pre.encode_history([request["history"]])
        if "scorer" in model.parts and "user_encoder" in model.parts:
            part, shared = "scorer", self._user_state(model, request.get("user_id"), hist, use_cache)
        else:
            part, shared = "fused", {HIST_ITEMS: hist}
        scores = score_in_chunks(lambda feeds: model.run(part, feeds)[SCORE], arrays, shared, n, CHUNK_ROWS)
        self._count("candidate_rows", n)
        items = arrays[CAND_ITEM]
        if added:
            items = mark_added(items, list(candidates), added)
        return self._flag_oov(scores, items, return_oov)

    def top_k(self, user_request: Mapping, candidates: Sequence[Any], k: int, context: Mapping | None = None,
              dense: Mapping | None = None, use_cache: bool = True, return_oov: bool = False) -> list[tuple]:
        """The ``k`` best ``(candidate, score)`` pairs, best first (ties keep candidate order);
        ``return_oov``: ``(candidate, score, oov)`` triples."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise RequestError(expected("k as a positive int", k))
        scores, oov = self.score_candidates(user_request, candidates, context, dense, use_cache, return_oov=True)
        order = np.argsort(-scores, kind="stable")[: int(k)]
        if return_oov:
            return [(candidates[i], float(scores[i]), bool(oov[i])) for i in order]
        return [(candidates[i], float(scores[i])) for i in order]

    def recommend(self, user_request: Mapping, k: int = 10, m: int = 200, exclude_seen: bool = True, filter=None,
                  use_cache: bool = True):
        """The ``k`` best items of the whole catalogue for one user (a cascade bundle): the user
        tower once (cached), ``m`` items from the item index, ranked by the bundle's ranker.
        ``filter``: a set/list of allowed raw ids, or a callable on raw ids. Returns
        `Recommendations` (``items``, ``scores``); details in `edgerec.runtime.recommend`."""
        from .recommend import recommend
        return self._serve(recommend, self, user_request, k, m, exclude_seen, filter, use_cache)

    def recommend_batch(self, user_requests: Sequence[Mapping], k: int = 10, m: int = 200, exclude_seen: bool = True,
                        filter=None, use_cache: bool = True) -> list:
        """`recommend` for many users with the model calls batched (user-tower and user-encoder
        calls of up to 256 users, scorer calls of up to 4,096 rows over all users' retrieved
        items): a list of `Recommendations` in request order; ``filter`` applies to every user.
        Details in `edgerec.runtime.recommend_batch`."""
        from .recommend_batch import recommend_batch
        return self._serve(recommend_batch, self, user_requests, k, m, exclude_seen, filter, use_cache)

    # -- tensors ----------------------------------------------------------------------------------
    def predict_arrays(self, feeds: Mapping[str, np.ndarray], part: str | None = None) -> dict[str, np.ndarray]:
        """Run one part on already-encoded tensors (no preprocessing); default part: fused, else scorer.

        A scorer that broadcasts the user state (``LoadedBundle.shared_inputs``) also takes the
        user-encoder outputs as 1 row beside N candidate rows: one user's state is fed once."""
        # `_serve` with `_enter`/`_leave` written out: this is the latency-critical path (the
        # benchmark's `tensor` scenario; each saved call is ~1 % of a batch-1 LiteRT call). Keep it in step.
        model = self._model
        calls = model._calls
        calls.append(None)
        if self._model is not model or self._closed:
            model.exit()
            model = self._enter_slow()
            calls = model._calls
        start = _clock()
        try:
            if not part:
                part = model.default_part
            elif part not in model.parts:
                raise RequestError(expected(f"a part among {sorted(model.parts)}", part))
            result = model.run_tensors(part, feeds)
        except BaseException:
            self._leave(model, start, True)
            raise
        calls.pop()
        if model._retired and not calls:
            model.close()
        seconds = self._call_seconds
        seconds.append(_clock() - start)
        if len(seconds) >= FOLD_EVERY:
            self._fold()
        return result

    # -- internals --------------------------------------------------------------------------------
    @staticmethod
    def _preprocessor(model: LoadedBundle):
        if model.preprocessor is None:
            raise RequestError(expected("a bundle with a feature spec for raw requests",
                                        "none (bring-your-own-model bundle: use predict_arrays)"))
        return model.preprocessor

    def _user_state(self, model: LoadedBundle, user_id, hist: np.ndarray, use_cache: bool) -> dict:
        cached = use_cache and self.user_cache.enabled
        key = user_state_key(model.version, user_id, hist) if cached else None
        state = self.user_cache.get(key) if cached else None
        if state is None:
            state = model.run("user_encoder", {HIST_ITEMS: hist})
            if cached:
                self.user_cache.put(key, state)
        return state

    def _score_rows(self, model: LoadedBundle, arrays: dict, requests, use_cache: bool) -> np.ndarray:
        n = len(arrays[CAND_ITEM])
        if "fused" in model.parts:
            return as_scores(model.run_encoded("fused", arrays)[SCORE], n)
        states = [self._user_state(model, r.get("user_id"), arrays[HIST_ITEMS][i:i + 1], use_cache)
                  for i, r in enumerate(requests)]
        for name in states[0]:
            arrays[name] = np.concatenate([s[name] for s in states], axis=0)
        return as_scores(model.run("scorer", arrays)[SCORE], n)

    # -- hot swap -----------------------------------------------------------------------------------
    def swap(self, new_bundle, check_examples: bool = True, tolerance: float | None = None) -> str:
        """Replace the serving bundle; returns the new version.

        The new bundle is verified, loaded, warmed up and its examples.jsonl replayed with the
        rule of `edgerec check` (`examples.replay_loaded`) BEFORE the switch; any failure (a
        bundle without examples too) raises and the old bundle keeps serving. In-flight calls
        finish on the old bundle, closed after them; caches are cleared. Items registered with
        `add_items` are re-encoded by the new bundle before the switch (ids its vocabulary knows
        are dropped); a new bundle that cannot encode them is refused (call `clear_items` first).

        Args:
            check_examples: False skips the replay (e.g. for a bundle without examples).
            tolerance: a bound on worst and mean |Δ| chosen by the caller instead of the declared one.
        """
        return swap_bundle(self, new_bundle, check_examples, tolerance)

    # -- bookkeeping ------------------------------------------------------------------------------
    def stats(self) -> dict:
        model = self._model
        counts = self._counters.snapshot()
        return {**counts, "backend": model.backend_name, "version": model.version,
                "parts": sorted(model.parts), "added_items": len(self._cold),
                "backend_info": {p: b.info for p, b in model.parts.items()},
                "caches": {"user_state": self.user_cache.stats(), "result": self.result_cache.stats(),
                           "sessions": SESSIONS.stats()}}

    def close(self) -> None:
        with self._swap_lock:       # a swap in progress sees the flag before it switches
            if self._closed:
                return
            self._closed = True
            model = self._model
        model.retire()
        self.user_cache.clear()
        self.result_cache.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return f"Predictor(backend={self.backend!r}, version={self.version!r}, parts={sorted(self._model.parts)})"
