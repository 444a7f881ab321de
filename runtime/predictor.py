"""`Predictor`: raw requests in, probabilities out, over a verified bundle (TF-free).

    import edgerec.runtime as er
    with er.load("bundle/", backend="auto") as predictor:
        predictor.predict([{"history": ["10", "31"], "item": "99", "context": {"timestamp": 964982703}}])
        predictor.score_candidates({"user_id": "42", "history": ["10", "31"]}, ["99", "7", "12"])
        predictor.top_k({"user_id": "42", "history": ["10"]}, candidates, k=10)
        predictor.swap("bundle_v2/")      # hot swap: validate fully, then switch atomically
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any, Mapping, Sequence

import numpy as np

from .cache import CacheConfig, LRUCache, SESSIONS, request_key, user_state_key
from .errors import BundleError, RequestError, expected
from .loaded import LoadedBundle, id_limits
from .spec import CAND_ITEM, HIST_ITEMS, SCORE

ITEM_TOKENS, ITEM_VECTOR = "item_tokens", "item_vector"


def load(bundle_path, backend: str = "auto", warmup: bool = True, cache=None, **backend_options) -> "Predictor":
    """Verify and load a bundle directory or .tar.gz; see `Predictor`."""
    return Predictor(bundle_path, backend=backend, warmup=warmup, cache=cache, **backend_options)


class Predictor:
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
        self._swap_lock = threading.Lock()     # guards the reference to the serving bundle
        self._counts_lock = threading.Lock()
        self._counts = {"predict_rows": 0, "candidate_rows": 0, "calls": 0, "errors": 0, "swaps": 0,
                        "failed_swaps": 0, "seconds": 0.0}
        self._closed = False
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

    # The swap protocol without a context manager on the hot path: `_enter` pins the serving
    # bundle (under the swap lock, so a swap either happens before and we get the new bundle, or
    # after and the old one stays open until our `_leave`); `_leave` unpins and books the call.
    def _enter(self) -> LoadedBundle:
        if self._closed:
            raise RequestError(expected("an open Predictor", "closed"))
        with self._swap_lock:
            model = self._model
            model.enter()
        return model

    def _leave(self, model: LoadedBundle, start: float, failed: bool) -> None:
        model.exit()
        elapsed = time.perf_counter() - start
        counts = self._counts
        with self._counts_lock:
            counts["calls"] += 1
            counts["seconds"] += elapsed
            if failed:
                counts["errors"] += 1

    def _count(self, key: str, n: int) -> None:
        with self._counts_lock:
            self._counts[key] += n

    def _serve(self, impl, *args):
        """Run ``impl(model, *args)`` on the pinned serving bundle, booking the call."""
        model = self._enter()
        start = time.perf_counter()
        try:
            result = impl(model, *args)
        except BaseException:
            self._leave(model, start, True)
            raise
        self._leave(model, start, False)
        return result

    # -- raw requests ---------------------------------------------------------------------------
    def predict(self, requests: Sequence[Mapping], use_cache: bool = True) -> np.ndarray:
        """Probabilities (float32, one per request) for a batch of raw request dicts."""
        return self._serve(self._predict, requests, use_cache)

    def _predict(self, model: LoadedBundle, requests, use_cache: bool) -> np.ndarray:
        pre = self._preprocessor(model)
        if type(requests) is not list and (isinstance(requests, Mapping) or not isinstance(requests, Sequence)):
            raise RequestError(expected("a list of request objects", type(requests).__name__))
        if len(requests) == 0:
            raise RequestError(expected("at least one request", 0))
        check = pre.check_request
        for request in requests:
            check(request)
        if not (use_cache and self.result_cache.enabled):
            out = self._score_rows(model, pre.encode_checked(requests), requests, use_cache)
            self._count("predict_rows", len(requests))
            return out
        keys = [request_key(model.version, r) for r in requests]
        out = np.empty(len(requests), dtype=np.float32)
        todo = []
        for i in range(len(requests)):
            hit = self.result_cache.get(keys[i])
            if hit is None:
                todo.append(i)
            else:
                out[i] = hit
        if todo:
            rows = [requests[i] for i in todo]
            scores = self._score_rows(model, pre.encode_checked(rows), rows, use_cache)
            out[todo] = scores
            for i, s in zip(todo, scores):
                self.result_cache.put(keys[i], np.float32(s))
        self._count("predict_rows", len(requests))
        return out

    def score_candidates(self, user_request: Mapping, candidates: Sequence[Any], context: Mapping | None = None,
                         dense: Mapping | None = None, use_cache: bool = True) -> np.ndarray:
        """Scores of N candidates for one user: the user encoder runs once (cached), the scorer
        runs on the N candidates in one batch. ``context``/``dense`` default to the request's."""
        return self._serve(self._score_candidates, user_request, candidates, context, dense, use_cache)

    def _score_candidates(self, model: LoadedBundle, user_request, candidates, context, dense, use_cache):
        pre = self._preprocessor(model)
        request = pre.check_request(user_request, need_item=False)
        context = request.get("context") if context is None else context
        dense = request.get("dense") if dense is None else dense
        arrays = pre.encode_candidates(candidates, context, dense)
        n = len(arrays[CAND_ITEM])
        hist = pre.encode_history([request["history"]])
        if "scorer" in model.parts and "user_encoder" in model.parts:
            state = self._user_state(model, request.get("user_id"), hist, use_cache)
            arrays.update({k: np.repeat(v, n, axis=0) for k, v in state.items()})
            scores = model.run("scorer", arrays)[SCORE]
        else:
            arrays[HIST_ITEMS] = np.repeat(hist, n, axis=0)
            scores = model.run("fused", arrays)[SCORE]
        self._count("candidate_rows", n)
        return _as_scores(scores, n)

    def top_k(self, user_request: Mapping, candidates: Sequence[Any], k: int, context: Mapping | None = None,
              dense: Mapping | None = None, use_cache: bool = True) -> list[tuple[Any, float]]:
        """The ``k`` best ``(candidate, score)`` pairs, best first (ties keep candidate order)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise RequestError(expected("k as a positive int", k))
        scores = self.score_candidates(user_request, candidates, context, dense, use_cache)
        order = np.argsort(-scores, kind="stable")[: int(k)]
        return [(candidates[i], float(scores[i])) for i in order]

    def item_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """Content-encoder vectors [N, D] for item texts, tokenised exactly as in training."""
        return self._serve(self._item_vectors, texts)

    def _item_vectors(self, model: LoadedBundle, texts) -> np.ndarray:
        spec = self._preprocessor(model).spec
        if spec.text is None or "content_encoder" not in model.parts:
            raise RequestError(expected("a bundle with a text spec and a content_encoder part",
                                        sorted(model.parts)))
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence) or len(texts) == 0:
            raise RequestError(expected("a non-empty list of item texts", type(texts).__name__))
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise RequestError(expected("item texts as str", bad[:3]))
        from .text import Tokenizer
        tokens = Tokenizer(spec.text.vocab, spec.text.max_tokens).encode_batch(list(texts))
        return model.run("content_encoder", {ITEM_TOKENS: tokens})[ITEM_VECTOR]

    # -- tensors ----------------------------------------------------------------------------------
    def predict_arrays(self, feeds: Mapping[str, np.ndarray], part: str | None = None) -> dict[str, np.ndarray]:
        """Run one part on already-encoded tensors (no preprocessing); default part: fused, else scorer."""
        # `_serve` written out: this is the latency-critical path (see issue 5, `tensor` scenario).
        model = self._enter()
        start = time.perf_counter()
        try:
            parts = model.parts
            part = part or ("fused" if "fused" in parts else "scorer")
            if part not in parts:
                raise RequestError(expected(f"a part among {sorted(parts)}", part))
            if type(feeds) is not dict:
                if not isinstance(feeds, Mapping):
                    raise RequestError(expected("feeds as a dict of name -> numpy array", type(feeds).__name__))
                feeds = dict(feeds)
            if model.spec is not None:
                check_tensor_ranges(model.spec, feeds, model.id_limits)
            result = model.run(part, feeds)
        except BaseException:
            self._leave(model, start, True)
            raise
        self._leave(model, start, False)
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
            return _as_scores(model.run("fused", arrays)[SCORE], n)
        states = [self._user_state(model, r.get("user_id"), arrays[HIST_ITEMS][i:i + 1], use_cache)
                  for i, r in enumerate(requests)]
        for name in states[0]:
            arrays[name] = np.concatenate([s[name] for s in states], axis=0)
        return _as_scores(model.run("scorer", arrays)[SCORE], n)

    # -- hot swap -----------------------------------------------------------------------------------
    def swap(self, new_bundle, check_examples: bool = True, tolerance: float = 1e-3) -> str:
        """Replace the serving bundle; returns the new version.

        The new bundle is verified, loaded, warmed up and (``check_examples``) its
        examples.jsonl replayed against ``expected`` BEFORE the switch; any failure raises and
        the old bundle keeps serving. In-flight calls finish on the old bundle, which is closed
        after them; caches are cleared (their keys carry the version as well).
        """
        if self._closed:
            raise RequestError(expected("an open Predictor", "closed"))
        try:
            new = self._open(new_bundle)
        except BaseException:
            self._count("failed_swaps", 1)
            raise
        try:
            if check_examples:
                from .commands import replay_examples
                report = replay_examples(new)
                if report["worst"] is not None and not report["worst"] <= tolerance:
                    raise BundleError(expected(f"examples.jsonl within {tolerance} of expected",
                                               f"worst |diff| {report['worst']}"))
        except BaseException:
            new.close()
            self._count("failed_swaps", 1)
            raise
        with self._swap_lock:
            old, self._model = self._model, new
            self.user_cache.clear()
            self.result_cache.clear()
        old.retire()
        self._count("swaps", 1)
        return new.version

    # -- bookkeeping ------------------------------------------------------------------------------
    def stats(self) -> dict:
        model = self._model
        with self._counts_lock:
            counts = dict(self._counts)
        return {**counts, "backend": model.backend_name, "version": model.version,
                "parts": sorted(model.parts), "backend_info": {p: b.info for p, b in model.parts.items()},
                "caches": {"user_state": self.user_cache.stats(), "result": self.result_cache.stats(),
                           "sessions": SESSIONS.stats()}}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with self._swap_lock:
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


def check_tensor_ranges(spec, feeds: Mapping, limits: Mapping[str, int] | None = None) -> None:
    """Encoded ids must index the spec's tables and dense values must be finite (else RequestError).

    ``limits`` (input name -> table size) defaults to the spec's (`loaded.id_limits`); pass it
    precomputed on hot paths. Each array costs one or two ``argmax``/``argmin`` calls (a
    fraction of a ufunc reduction's dispatch on request-sized arrays): ids are read as unsigned,
    so a negative id wraps above every table size and the largest value bounds both ends;
    ``argmax``/``argmin`` propagate NaN, so finite extremes mean every value is finite.
    """
    if limits is None:
        limits = id_limits(spec)
    problems = []
    for name, value in feeds.items():
        if not isinstance(value, np.ndarray) or value.size == 0:
            continue
        kind = value.dtype.kind
        limit = limits.get(name)
        if limit is not None and kind in "iu":
            if value.size == 1:
                ok = 0 <= value.item() < limit
            else:
                unsigned = value.view(_UNSIGNED[value.dtype.itemsize]) if kind == "i" else value
                ok = unsigned.item(unsigned.argmax()) < limit
            if not ok:
                low, high = int(value.min()), int(value.max())
                problems.append(expected(f"'{name}' ids in [0, {limit})", f"range [{low}, {high}]"))
        elif kind == "f":
            if not (math.isfinite(value.item(value.argmax())) and math.isfinite(value.item(value.argmin()))):
                problems.append(expected(f"finite values in '{name}'", "NaN or inf"))
    if problems:
        raise RequestError("; ".join(problems))


_UNSIGNED = {1: np.dtype(np.uint8), 2: np.dtype(np.uint16), 4: np.dtype(np.uint32), 8: np.dtype(np.uint64)}


def _as_scores(scores: np.ndarray, n: int) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if scores.shape[0] != n:
        raise BundleError(expected(f"{n} scores from the model", scores.shape[0]))
    return scores
