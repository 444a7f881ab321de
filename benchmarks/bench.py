"""`benchmark_bundle`: plan → time → profile → report (JSON, Markdown, PNG) for one bundle.

Examples:
    >>> report = benchmark_bundle("out/bundle", "out/bench", budget_s=0.5, batches=(1, 256))
    >>> report["comparisons"]["overhead"][0]["ratio"]      # edgerec p50 / raw backend p50
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from edgerec.runtime.errors import BundleError, expected

from .harness import CaseSpec, Harness, HarnessConfig
from .machine import machine_info
from .stats import LoopLimits


def _positive_ints(name: str, values: Sequence[int]) -> tuple[int, ...]:
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(expected(f"{name} as a non-empty list of positive ints", values))
    return values


def profile_paths(specs: Sequence[CaseSpec], seconds: float = 1.0) -> dict:
    """cProfile the edgerec raw-request and tensor paths at batch 1 (first variant of each)."""
    from .profiling import profile_calls
    from .scenarios import build_case

    out = {}
    for scenario in ("raw_request", "tensor"):
        spec = next((s for s in specs if s.scenario == scenario and s.backend.startswith("edgerec_")
                     and s.batch == 1), None)
        if spec is None:
            continue
        try:
            ready = build_case(spec)
        except Exception as err:
            out[f"{scenario} {spec.backend} {spec.variant}"] = {"error": f"{type(err).__name__}: {err}"}
            continue
        try:
            for _ in range(20):
                ready.call()
            out[f"{scenario} {spec.backend} {spec.variant}"] = profile_calls(ready.call, calls=5000, max_seconds=seconds)
        finally:
            ready.close()
    return out


def benchmark_bundle(bundle: str | Path, out_dir: str | Path, *, keras_dir: str | Path | None = None,
                     keras: bool = True, keras_predict: bool = True, budget_s: float = 1.0, max_iters: int = 5000,
                     warmup_iters: int = 10, batches: Sequence[int] = (1, 256), threads: Sequence[int] = (1,),
                     candidates: Sequence[int] = (100, 1000), backends: Sequence[str] | None = None,
                     isolate: bool = False, profile: bool = True, plots: bool = True, progress: bool = True) -> dict:
    """Benchmark every variant of ``bundle`` and write ``out_dir``/bench.json, bench.md and *.png.

    Args:
        bundle: bundle directory (manifest.json, artifacts, feature_spec.json, examples.jsonl).
        out_dir: report folder (created).
        keras_dir: the Keras model directory for the baselines; default the bundle's recorded source.
        keras: run the Keras baselines at all; keras_predict: include ``model.predict`` (~50 ms/call).
        budget_s / max_iters / warmup_iters: per-configuration loop limits (whichever ends first).
        batches, threads, candidates: grid of batch sizes, thread counts and candidate counts N.
        backends: restrict to these backends (default every backend with artifacts in the bundle).
        isolate: one subprocess per configuration group (clean peak RSS).
        profile: cProfile the edgerec paths and put the top functions in the report.

    Returns:
        the report dict (also written as bench.json).
    """
    from .plots import write_plots
    from .report import build_report, write_report
    from .scenarios import bundle_data, plan_cases

    bundle = Path(bundle)
    if not (bundle / "manifest.json").is_file():
        raise BundleError(expected("a bundle directory holding manifest.json", str(bundle)))
    batches, threads = _positive_ints("batches", batches), _positive_ints("threads", threads)
    candidates = _positive_ints("candidates", candidates) if candidates else ()
    limits = LoopLimits(budget_s=budget_s, max_iters=max_iters, warmup_iters=warmup_iters)
    specs = plan_cases(bundle, batches, threads, keras_dir=keras_dir, keras=keras, candidates=candidates,
                       backends=backends, keras_predict=keras_predict)
    if not specs:
        raise BundleError(expected("at least one runnable configuration in the bundle", "none"))
    harness = Harness(HarnessConfig(limits=limits, isolate=isolate, progress=progress))
    records = harness.run(specs, description=f"bench {bundle.name}")
    data = bundle_data(str(bundle.resolve()))
    manifest = data.manifest
    bundle_info = {"path": str(data.path), "model": manifest.model, "selected": manifest.selected,
                   "artifacts": [{"file": a.file, "format": a.format, "precision": a.precision, "part": a.part,
                                  "size_bytes": a.size_bytes, **{k: a.validation.get(k) for k in
                                                                 ("auc", "delta_auc", "max_abs_diff")}}
                                 for a in manifest.artifacts]}
    config = {"budget_s": budget_s, "max_iters": max_iters, "warmup_iters": warmup_iters, "batches": list(batches),
              "threads": list(threads), "candidates": list(candidates), "isolate": isolate,
              "keras_dir": str(keras_dir) if keras_dir else None, "limits": asdict(limits)}
    profiled = profile_paths(specs) if profile else {}
    report = build_report(records, machine_info(), bundle_info, config, profiled)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        report["plots"] = [p.name for p in write_plots(report, out)]
    write_report(report, out)
    return report
