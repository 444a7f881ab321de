"""edgerec's own call paths for the harness: the `Predictor` exactly as an app uses it.

The Predictor serves the bundle's *selected* artifacts. To time every variant through it, a
variant is served from a *view* of the bundle: a temp folder of hard links (copies across file
systems) to the same files with ``selected`` pointing at that variant. Every file keeps its
sha256, so the Predictor's integrity check runs as usual.
"""
from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile
from pathlib import Path

from edgerec.runtime.errors import BundleError, expected
from edgerec.runtime.manifest import confined_path, write_manifest

from .harness import Prepared

_VIEWS: dict[tuple, Path] = {}


def variant_view(data, backend: str, selected: dict) -> Path:
    """A bundle folder identical to ``data``'s but with ``selected[backend] = selected``."""
    key = (str(data.path), backend, tuple(sorted(selected.items())))
    if key in _VIEWS and (_VIEWS[key] / "manifest.json").is_file():
        return _VIEWS[key]
    if data.manifest.selected.get(backend) == selected:
        return data.path
    root = Path(tempfile.mkdtemp(prefix="edgerec-bench-view-"))
    atexit.register(shutil.rmtree, root, True)
    for entry in data.manifest.all_files():
        src = confined_path(data.path, entry["file"])
        dst = root / entry["file"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    manifest = type(data.manifest).from_dict(data.manifest.to_dict())
    manifest.selected = {backend: dict(selected)}
    write_manifest(root, manifest)
    _VIEWS[key] = root
    return root


def _load(path, backend: str, threads: int, cache):
    from edgerec.runtime.predictor import load

    return load(path, backend=backend, warmup=True, cache=cache, num_threads=threads)


def tensor_path(data, art, backend: str, batch: int, threads: int) -> Prepared:
    """``Predictor.predict_arrays`` on encoded arrays, the artifact served as the fused part."""
    predictor = _load(variant_view(data, backend, {art.part: art.file}), backend, threads, cache=False)
    feeds = data.rows(batch, [t.name for t in art.inputs])
    return Prepared(lambda: predictor.predict_arrays(feeds, part=art.part), close=predictor.close)


def request_path(data, art, backend: str, batch: int, threads: int) -> Prepared:
    """``Predictor.predict`` on raw request dicts (validation + preprocessing + backend), no caches."""
    predictor = _load(variant_view(data, backend, {art.part: art.file}), backend, threads, cache=False)
    requests = data.request_batch(batch)
    return Prepared(lambda: predictor.predict(requests, use_cache=False), close=predictor.close)


def user_request(data) -> dict:
    """The first example request with a history, without its item: the user of the candidate scenarios."""
    request = next((r for r in data.requests if r.get("history")), data.requests[0] if data.requests else None)
    if request is None:
        raise BundleError(expected("raw example requests for the candidate scenarios", "none"))
    user = {k: v for k, v in request.items() if k != "item"}
    user.setdefault("user_id", "bench-user")
    return user


def candidate_items(data, n: int) -> list:
    """``n`` raw item ids from the bundle's vocabulary (cycled when it has fewer)."""
    from edgerec.runtime.spec import FeatureSpec

    spec = FeatureSpec.load(confined_path(data.path, data.manifest.feature_spec))
    tokens = spec.item_vocab.tokens
    return [tokens[i % len(tokens)] for i in range(n)]


def candidates_path(data, backend: str, n: int, threads: int, mode: str) -> Prepared:
    """1 user × ``n`` candidates. mode ``warm``: user-state cache hit; ``cold``: cache cleared
    before every call (the user encoder runs each time); ``fused``: the same n rows sent as n full
    raw requests through the fused model (what an app without the split would do)."""
    if mode not in ("warm", "cold", "fused"):
        raise ValueError(expected("mode warm | cold | fused", mode))
    selected = dict(data.manifest.selected.get(backend) or {})
    user, items = user_request(data), candidate_items(data, n)
    if mode == "fused":
        if "fused" not in selected:
            raise BundleError(expected(f"a selected fused artifact for {backend}", sorted(selected)))
        predictor = _load(variant_view(data, backend, {"fused": selected["fused"]}), backend, threads, cache=False)
        requests = [dict(user, item=item) for item in items]
        return Prepared(lambda: predictor.predict(requests, use_cache=False), close=predictor.close,
                        extra={"parts": "fused"})
    split = {p: selected[p] for p in ("user_encoder", "scorer") if p in selected}
    if len(split) != 2:
        raise BundleError(expected(f"selected user_encoder + scorer artifacts for {backend}", sorted(selected)))
    predictor = _load(variant_view(data, backend, split), backend, threads, cache={"result_entries": 0})
    if mode == "warm":
        call = lambda: predictor.score_candidates(user, items)  # noqa: E731
    else:
        def call():
            predictor.user_cache.clear()
            return predictor.score_candidates(user, items)
    return Prepared(call, close=predictor.close, extra={"parts": "user_encoder+scorer",
                                                        "user_cache": mode})


def result_cache_path(data, backend: str, threads: int, hit: bool) -> Prepared:
    """``predict`` of one raw request with the result cache on: the same request (hit) or a new
    one every call (miss: the timestamp moves by one second, so the key changes)."""
    predictor = _load(data.path, backend, threads, cache={"result_entries": 100_000, "result_ttl_s": None})
    base = dict(data.request_batch(1)[0])
    context = dict(base.get("context") or {})
    if hit:
        request = [base]
        predictor.predict(request)
        return Prepared(lambda: predictor.predict(request), close=predictor.close, extra={"result_cache": "hit"})
    start = int(context.get("timestamp", 1_000_000_000))
    counter = itertools.count(1)

    def call():
        fresh = dict(base, context=dict(context, timestamp=start + next(counter)))
        return predictor.predict([fresh])
    return Prepared(call, close=predictor.close, extra={"result_cache": "miss"})
