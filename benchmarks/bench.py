"""`run_bench`: plan → time → measure runtime memory → profile → report (JSON, Markdown, PNG) for
one bundle, plus the optional load test with a hot swap; what `edgerec bench` calls.

What the run needs is checked before any configuration runs: a backend or Keras that is not
installed is left out with a note (or refused, when asked for by name); without matplotlib the
report is still written and only the plots are skipped; without psutil RSS is read from /proc.
bench.json and bench.md are written before the plots, so a plotting failure loses no figures.

Examples:
    >>> outcome = run_bench("out/bundle", "out/bench", BenchOptions(budget_s=0.5, batches=(1, 256)))
    >>> outcome.passed, outcome.report["comparisons"]["overhead"][0]["ratio"]
    >>> report = benchmark_bundle("out/bundle", "out/bench", budget_s=0.5)    # the report dict only
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

from edgerec.runtime.errors import BundleError, MissingDependencyError, expected

from .harness import CaseSpec, Harness, HarnessConfig
from .machine import machine_info, rss_source
from .stats import LoopLimits

logger = logging.getLogger(__name__)
BENCH_EXTRA = "pip install 'edgerec[bench]'"


def _positive_ints(name: str, values: Sequence[int]) -> tuple[int, ...]:
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(expected(f"{name} as a non-empty list of positive ints", values))
    return values


@dataclass(frozen=True)
class BenchOptions:
    """What to time and how long.

    Args:
        keras_dir: the Keras model directory for the baselines; default the bundle's recorded source.
        keras: run the Keras baselines at all; keras_predict: include ``model.predict`` (~50 ms/call).
        budget_s / max_iters / warmup_iters: per-configuration loop limits (whichever ends first).
        batches, threads, candidates: grid of batch sizes, thread counts and candidate counts N.
        backends: restrict to these backends (default every installed backend with artifacts).
        isolate: one subprocess per configuration group (a clean bench-process peak RSS per group).
        profile: cProfile the edgerec paths and put the top functions in the report.
        memory: measure the runtime's memory in a runtime-only child process per backend.
        plots: write the PNG plots (needs matplotlib); progress: progress lines on stderr.
    """

    keras_dir: str | Path | None = None
    keras: bool = True
    keras_predict: bool = True
    budget_s: float = 1.0
    max_iters: int = 5000
    warmup_iters: int = 10
    batches: Sequence[int] = (1, 256)
    threads: Sequence[int] = (1,)
    candidates: Sequence[int] = (200, 1000)
    backends: Sequence[str] | None = None
    isolate: bool = False
    profile: bool = True
    memory: bool = True
    plots: bool = True
    progress: bool = True

    def __post_init__(self):
        object.__setattr__(self, "batches", _positive_ints("batches", self.batches))
        object.__setattr__(self, "threads", _positive_ints("threads", self.threads))
        object.__setattr__(self, "candidates", _positive_ints("candidates", self.candidates)
                           if self.candidates else ())
        if self.backends is not None:
            object.__setattr__(self, "backends", tuple(self.backends))

    @property
    def limits(self) -> LoopLimits:
        return LoopLimits(budget_s=self.budget_s, max_iters=self.max_iters, warmup_iters=self.warmup_iters)


@dataclass(frozen=True)
class LoadTestOptions:
    """The threaded load test with a hot swap to ``swap_to`` (see `edgerec.benchmarks.loadtest`).
    ``backend`` None: the first of `BenchOptions.backends`, else "auto"."""

    swap_to: str | Path
    requests: int = 50_000
    threads: int = 8
    swap_at: float = 0.5
    bad_swap_first: bool = False
    backend: str | None = None


@dataclass
class BenchOutcome:
    """What a run produced: the report (also in bench.json), the files written, what was skipped
    (``notes``) and what failed (``failures``: the load test, or every configuration)."""

    report: dict
    out_dir: Path
    written: dict = field(default_factory=dict)
    plots: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    failures: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def check_environment(options: BenchOptions, bundle_backends: Sequence[str]) -> tuple[BenchOptions, list[str]]:
    """Before anything runs: drop what cannot run here (with a note each), refuse a backend asked
    for by name that is not installed. Returns the options to run with and the notes."""
    import importlib.util

    from edgerec.runtime.backends.registry import BACKEND_EXTRAS, is_available

    notes, changes = [], {}
    if options.backends is not None:
        for name in options.backends:
            if not is_available(name):
                raise MissingDependencyError(name, BACKEND_EXTRAS.get(name, name), f"the {name} benchmarks")
    else:
        missing = [b for b in bundle_backends if not is_available(b)]
        for name in missing:
            notes.append(f"{name} is not installed: its configurations are skipped "
                         f"(pip install 'edgerec[{BACKEND_EXTRAS.get(name, name)}]').")
        changes["backends"] = tuple(b for b in bundle_backends if b not in missing)
    if options.keras and importlib.util.find_spec("tensorflow") is None:
        notes.append("TensorFlow is not installed: the Keras baselines are skipped (pip install 'edgerec[train]').")
        changes["keras"] = False
    if options.plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            notes.append(f"matplotlib is not installed: the plots are skipped; bench.json and bench.md are "
                         f"still written ({BENCH_EXTRA}).")
            changes["plots"] = False
    source = rss_source()
    if source != "psutil":
        notes.append(f"psutil is not installed: RSS is read from {source} ({BENCH_EXTRA})." if source else
                     f"psutil is not installed and this system has no /proc: only peak RSS (resource) is "
                     f"reported ({BENCH_EXTRA}).")
    for note in notes:
        logger.warning("edgerec bench: %s", note)
    return replace(options, **changes), notes


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


def measure_memory(data, options: BenchOptions) -> list[dict]:
    """Runtime-only memory of each selected backend (`edgerec.benchmarks.memory`)."""
    from .edgerec_paths import candidate_items, user_request
    from .memory import runtime_memory

    batch = max(options.batches)
    n = max(options.candidates) if options.candidates else 0
    entries = []
    for backend, parts in data.manifest.selected.items():
        if options.backends is not None and backend not in options.backends:
            continue
        split = bool(data.requests) and "user_encoder" in parts and "scorer" in parts and n > 0
        entries.append(runtime_memory(data.path, backend, requests=data.requests,
                                      arrays=None if data.requests else data.rows(batch), batch=batch,
                                      user_request=user_request(data) if split else None,
                                      candidate_items=candidate_items(data, n) if split else ()))
    return entries


def _bundle_info(data) -> dict:
    from edgerec.runtime.shared_tables import artifact_size

    manifest = data.manifest
    status = {row.get("file"): row.get("status") for row in manifest.candidates if isinstance(row, dict)}
    return {"path": str(data.path), "model": manifest.model, "selected": manifest.selected,
            "budget": (manifest.lineage.get("options") or {}).get("budget"),
            "artifacts": [{"file": a.file, "format": a.format, "precision": a.precision, "part": a.part,
                           "size_bytes": artifact_size(manifest, a.file), "status": status.get(a.file),
                           **{k: a.validation.get(k) for k in ("auc", "delta_auc", "max_abs_diff")}}
                          for a in manifest.artifacts]}


def _bundle_backends(manifest) -> list[str]:
    from .scenarios import FORMAT_BACKEND

    return sorted({FORMAT_BACKEND[a.format] for a in manifest.artifacts if a.format in FORMAT_BACKEND})


def run_bench(bundle: str | Path, out_dir: str | Path, options: BenchOptions = BenchOptions(), *,
              load_test: LoadTestOptions | None = None, load_only: bool = False) -> BenchOutcome:
    """Benchmark ``bundle`` and write ``out_dir``/bench.json, bench.md and the plots.

    Args:
        bundle: bundle directory (manifest.json, artifacts, feature_spec.json, examples.jsonl).
        out_dir: report folder (created).
        options: the grid and limits (`BenchOptions`).
        load_test: also run the load test with a hot swap (its section lands in the report).
        load_only: skip the latency grid, memory probe and plots; run only ``load_test``.

    Returns:
        a `BenchOutcome`; ``passed`` is False when the load test failed or every configuration did.
    """
    from edgerec.runtime.manifest import load_manifest

    from .report import build_report, write_report

    bundle, out = Path(bundle), Path(out_dir)
    if not (bundle / "manifest.json").is_file():
        raise BundleError(expected("a bundle directory holding manifest.json", str(bundle)))
    if load_only and load_test is None:
        raise ValueError(expected("load_test options with load_only", None))
    manifest = load_manifest(bundle, verify=True)
    if load_only:
        options = replace(options, keras=False, plots=False, memory=False, profile=False)
    options, notes = check_environment(options, _bundle_backends(manifest))
    outcome = BenchOutcome(report={}, out_dir=out, notes=notes)
    if load_only:
        info = {"path": str(bundle), "model": manifest.model, "selected": manifest.selected}
        outcome.report = build_report([], machine_info(), info, {"load_only": True})
    else:
        outcome.report = _latency_report(bundle, options)
        _recommend_rows(bundle, manifest, options, outcome.report)
        records = outcome.report["results"]
        if records and all(r.get("error") for r in records):
            outcome.failures.append("every configuration failed; see bench.md")
    outcome.report.update(notes=list(notes), plots=[])
    outcome.written = write_report(outcome.report, out)
    if load_test is not None:
        _load_test(bundle, load_test, options, outcome)
        outcome.written = write_report(outcome.report, out)
    if not load_only and options.plots:
        _plots(outcome)
        outcome.written = write_report(outcome.report, out)
    return outcome


def _latency_report(bundle: Path, options: BenchOptions) -> dict:
    from .report import build_report
    from .scenarios import bundle_data, plan_cases

    specs = plan_cases(bundle, options.batches, options.threads, keras_dir=options.keras_dir,
                       keras=options.keras, candidates=options.candidates, backends=options.backends,
                       keras_predict=options.keras_predict)
    if not specs:
        raise BundleError(expected("at least one runnable configuration in the bundle", "none"))
    harness = Harness(HarnessConfig(limits=options.limits, isolate=options.isolate, progress=options.progress))
    records = harness.run(specs, description=f"bench {bundle.name}")
    data = bundle_data(str(bundle.resolve()))
    config = {"budget_s": options.budget_s, "max_iters": options.max_iters, "warmup_iters": options.warmup_iters,
              "batches": list(options.batches), "threads": list(options.threads),
              "candidates": list(options.candidates), "isolate": options.isolate,
              "keras_dir": str(options.keras_dir) if options.keras_dir else None,
              "limits": asdict(options.limits)}
    profiled = profile_paths(specs) if options.profile else {}
    report = build_report(records, machine_info(), _bundle_info(data), config, profiled)
    if options.memory:
        report["runtime_memory"] = measure_memory(data, options)
    return report


def _recommend_rows(bundle: Path, manifest, options: BenchOptions, report: dict) -> None:
    """A cascade bundle (item index) gets ``report["recommend"]``: `recommend()` p50/p99 at 1
    thread, and ``report["full_catalogue"]``: its full-catalogue quality (`full_catalogue_section`;
    re-measured when the model dir, ``keras_dir`` or the recorded source, holds the held-out users)."""
    from edgerec.runtime.contract import HELDOUT_USERS_FILE
    from edgerec.runtime.recommend import has_index

    from .recommend import full_catalogue_section, recommend_rows

    if has_index(manifest):
        backends = list(options.backends or _bundle_backends(manifest))
        report["recommend"] = recommend_rows(bundle, backends)
        source = options.keras_dir or (manifest.model or {}).get("source")
        heldout = Path(source) / HELDOUT_USERS_FILE if source else None
        report["full_catalogue"] = full_catalogue_section(bundle, manifest, backends, heldout)


def _load_test(bundle: Path, load: LoadTestOptions, options: BenchOptions, outcome: BenchOutcome) -> None:
    from .loadtest import run_load_test

    backend = load.backend or (options.backends[0] if options.backends else "auto")
    section = run_load_test(bundle, load.swap_to, threads=load.threads, requests=load.requests,
                            swap_at=load.swap_at, backend=backend, bad_swap_first=load.bad_swap_first)
    outcome.report["load_test"] = section
    if not section["passed"]:
        outcome.failures.append("load test failed: " + "; ".join(section["failures"]))


def _plots(outcome: BenchOutcome) -> None:
    from .plots import write_plots

    try:
        outcome.plots = write_plots(outcome.report, outcome.out_dir)
    except Exception as err:  # noqa: BLE001 - the figures are written already; say what is missing
        note = f"the plots could not be drawn ({type(err).__name__}: {err}); bench.json and bench.md hold every figure."
        logger.warning("edgerec bench: %s", note)
        outcome.notes.append(note)
        outcome.report["notes"].append(note)
    outcome.report["plots"] = [p.name for p in outcome.plots]


def benchmark_bundle(bundle: str | Path, out_dir: str | Path, **options) -> dict:
    """`run_bench` without a load test, returning the report dict; ``options`` are the fields of
    `BenchOptions` (e.g. ``budget_s=0.5, batches=(1, 256), keras_dir=...``)."""
    return run_bench(bundle, out_dir, BenchOptions(**options)).report
