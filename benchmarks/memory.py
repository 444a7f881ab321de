"""Runtime memory: what an app pays, measured in a fresh process that imports only
``edgerec.runtime`` and one backend.

The benchmark process itself is no measure of that: it holds the harness, every raw baseline and,
once the Keras baselines ran, TensorFlow (gigabytes for a model of a few hundred KB). So
`runtime_memory` starts a child interpreter (``python -m edgerec.benchmarks.memory``) that

1. records its resident set size (RSS) at start,
2. imports ``edgerec.runtime`` and the backend's module (``onnxruntime`` / ``ai_edge_litert``),
3. loads the bundle's selected artifacts with `edgerec.runtime.load` (verification + warm-up),
4. runs the calls an app makes (``predict`` at batch 1 and batch B, 1 user × N candidates when the
   bundle has split parts, or ``predict_arrays`` for a bring-your-own model),

and reports RSS after each step, the peak RSS of its whole life, and which heavy modules
(TensorFlow, Keras, matplotlib, …) were imported: an empty list proves the figure is runtime-only.
The requests come from the parent on stdin, so the child reads nothing but the bundle.

Examples:
    >>> entry = runtime_memory("out/bundle", "litert", requests=examples, batch=256)
    >>> entry["rss_after_calls_mb"], entry["peak_rss_mb"], entry["heavy_modules"]
    (61.2, 63.0, [])
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

from .machine import current_rss_mb, peak_rss_mb, rss_source

HEAVY_MODULES = ("tensorflow", "keras", "tf_keras", "tf2onnx", "tensorflow_model_optimization", "onnx",
                 "matplotlib", "torch", "jax")
PROBE_CALLS = 20
STEPS = ("start", "after_import", "after_load", "after_calls")


def runtime_memory(bundle: str | Path, backend: str, *, requests: Sequence[Mapping] = (),
                   arrays: Mapping | None = None, batch: int = 1, user_request: Mapping | None = None,
                   candidate_items: Sequence = (), calls: int = PROBE_CALLS, timeout_s: float = 300.0) -> dict:
    """Measure ``bundle`` served by ``backend`` in a runtime-only child process.

    Args:
        bundle: bundle directory; its selected artifacts for ``backend`` are loaded.
        backend: "litert" or "onnxruntime".
        requests: raw example requests (cycled to fill ``batch`` rows); empty for a BYOM bundle.
        arrays: encoded input arrays (BYOM bundles without raw requests): ``{name: ndarray}``.
        batch: the larger batch size to call with (batch 1 is always called).
        user_request, candidate_items: 1 user × N candidates with ``score_candidates`` (split parts).
        calls: calls of each kind.
        timeout_s: the child's wall-clock limit.

    Returns:
        a JSON-ready dict: ``rss_<step>_mb`` for each of `STEPS`, ``peak_rss_mb``, ``load_mb``
        (after load - after import), ``heavy_modules``, ``artifacts``; or ``error`` on failure.
    """
    payload = {"bundle": str(bundle), "backend": backend, "requests": [dict(r) for r in requests],
               "arrays": _encode_arrays(arrays) if arrays else None, "batch": int(batch),
               "user_request": dict(user_request) if user_request else None,
               "candidate_items": list(candidate_items), "calls": int(calls)}
    entry = {"backend": backend, "calls": int(calls), "batch": int(batch), "candidates": len(candidate_items)}
    try:
        done = subprocess.run([sys.executable, "-m", "edgerec.benchmarks.memory"], input=json.dumps(payload),
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {**entry, "error": f"timed out after {timeout_s:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {**entry, "error": f"probe exited {done.returncode}: {reason[:300]}"}
    return {**entry, **json.loads(lines[-1])}


def _encode_arrays(arrays: Mapping) -> dict:
    return {name: {"dtype": str(value.dtype), "shape": list(value.shape), "data": value.reshape(-1).tolist()}
            for name, value in arrays.items()}


def _decode_arrays(encoded: Mapping) -> dict:
    import numpy as np

    return {name: np.asarray(v["data"], dtype=v["dtype"]).reshape(v["shape"]) for name, v in encoded.items()}


def _import_backend(backend: str) -> None:
    import importlib

    from edgerec.runtime.backends.registry import BACKEND_MODULES

    for module in BACKEND_MODULES.get(backend, ()):
        try:
            importlib.import_module(module)
            return
        except ImportError:
            continue


def probe(payload: Mapping) -> dict:
    """The child's work (see the module docstring); RSS figures in MiB."""
    rss = {"start": current_rss_mb()}
    from edgerec.runtime.predictor import load

    _import_backend(payload["backend"])
    rss["after_import"] = current_rss_mb()
    calls, batch = payload["calls"], payload["batch"]
    with load(payload["bundle"], backend=payload["backend"], warmup=True) as predictor:
        rss["after_load"] = current_rss_mb()
        requests = payload["requests"]
        if requests:
            one = requests[:1]
            rows = [requests[i % len(requests)] for i in range(batch)]
            for _ in range(calls):
                predictor.predict(one, use_cache=False)
                predictor.predict(rows, use_cache=False)
            if payload["user_request"] and payload["candidate_items"]:
                for _ in range(calls):
                    predictor.score_candidates(payload["user_request"], payload["candidate_items"])
        elif payload["arrays"]:
            feeds = _decode_arrays(payload["arrays"])
            first = {name: value[:1] for name, value in feeds.items()}
            for _ in range(calls):
                predictor.predict_arrays(first)
                predictor.predict_arrays(feeds)
        rss["after_calls"] = current_rss_mb()
        artifacts = dict(predictor.manifest.selected.get(payload["backend"], {}))
    result = {f"rss_{step}_mb": _round(rss[step]) for step in STEPS}
    load_mb = None if rss["after_load"] is None or rss["after_import"] is None \
        else rss["after_load"] - rss["after_import"]
    # the high-water mark is kept per page-fault batch and can trail the last reading by a few pages
    peak = max((v for v in (peak_rss_mb(), *rss.values()) if v is not None), default=None)
    result.update(peak_rss_mb=_round(peak), load_mb=_round(load_mb), artifacts=artifacts,
                  heavy_modules=sorted(m for m in HEAVY_MODULES if m in sys.modules), rss_source=rss_source())
    return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _child_main() -> int:
    payload = json.loads(sys.stdin.read())
    sys.stdout.write("\n" + json.dumps(probe(payload)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
