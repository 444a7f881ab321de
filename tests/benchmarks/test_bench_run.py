"""`run_bench` / `edgerec bench` check what they need before any configuration runs, measure the
runtime's memory in a runtime-only process, and print progress as plain lines when not on a TTY."""
import json
import logging
import sys

import numpy as np
import pytest

from edgerec.benchmarks.bench import BenchOptions, run_bench
from edgerec.benchmarks.edgerec_paths import candidate_items, user_request
from edgerec.benchmarks.harness import Harness, HarnessConfig
from edgerec.benchmarks.memory import STEPS, runtime_memory
from edgerec.benchmarks.scenarios import bundle_data
from edgerec.benchmarks.stats import LoopLimits
from edgerec.sdk.cli import main

from .test_harness_report import FakeClock, fake_builder, specs

QUICK = ["--budget-s", "0.02", "--max-iters", "40", "--batches", "1", "--candidates", "8", "--no-profile"]


@pytest.fixture()
def harness_calls(monkeypatch):
    """Records, for each Harness.run, which warnings had been logged before it started."""
    seen = []
    real = Harness.run
    handler = _Collect()
    logging.getLogger("edgerec.benchmarks").addHandler(handler)

    def run(self, specs, description="benchmark"):
        seen.append(list(handler.messages))
        return real(self, specs, description)
    monkeypatch.setattr(Harness, "run", run)
    yield seen
    logging.getLogger("edgerec.benchmarks").removeHandler(handler)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_without_matplotlib_the_report_is_written_and_only_plots_skipped(tiny_onnx_bundle, tmp_path, monkeypatch,
                                                                         capsys, harness_calls):
    monkeypatch.setitem(sys.modules, "matplotlib", None)          # import matplotlib -> ImportError
    out = tmp_path / "bench"
    assert main(["bench", str(tiny_onnx_bundle), "--out", str(out), "--no-memory", *QUICK]) == 0
    assert len(harness_calls) == 1 and any("matplotlib is not installed" in m for m in harness_calls[0])  # up front
    assert "no plots (see the notes above)" in capsys.readouterr().out
    report = json.loads((out / "bench.json").read_text())
    assert report["plots"] == [] and not list(out.glob("*.png"))
    assert report["results"] and not [r for r in report["results"] if r.get("error")]
    assert any("plots are skipped" in note for note in report["notes"])
    assert "matplotlib is not installed" in (out / "bench.md").read_text()


def test_without_psutil_rss_comes_from_proc(tiny_onnx_bundle, tmp_path, monkeypatch, harness_calls):
    if not __import__("os").path.exists("/proc/self/statm"):
        pytest.skip("needs /proc")
    monkeypatch.setitem(sys.modules, "psutil", None)
    options = BenchOptions(budget_s=0.02, max_iters=40, batches=(1,), candidates=(), keras=False, profile=False,
                           memory=False, plots=False, progress=False)
    outcome = run_bench(tiny_onnx_bundle, tmp_path / "bench", options)
    assert outcome.passed
    assert any("psutil is not installed: RSS is read from /proc/self/statm" in m for m in harness_calls[0])
    assert outcome.report["machine"]["rss_source"] == "/proc/self/statm"
    assert outcome.report["machine"]["memory_gb"] > 0
    assert all(r["rss_mb"] > 0 and r["peak_rss_mb"] > 0 for r in outcome.report["results"])


def test_a_backend_asked_for_but_missing_fails_before_anything_runs(tiny_onnx_bundle, tmp_path, monkeypatch, capsys,
                                                                    harness_calls):
    import edgerec.runtime.backends.registry as registry

    monkeypatch.setattr(registry, "is_available", lambda name: name != "onnxruntime")
    rc = main(["bench", str(tiny_onnx_bundle), "--out", str(tmp_path / "a"), "--backend", "onnxruntime", *QUICK])
    assert rc == 2 and "pip install 'edgerec[onnx]'" in capsys.readouterr().err
    # not asked for by name: skipped with a note; here nothing is left, which is a usage error too
    rc = main(["bench", str(tiny_onnx_bundle), "--out", str(tmp_path / "b"), *QUICK])
    err = capsys.readouterr().err
    assert rc == 2 and "onnxruntime is not installed" in err and "at least one runnable configuration" in err
    assert harness_calls == []                                      # no configuration ran


def test_runtime_memory_comes_from_a_runtime_only_process(tiny_onnx_bundle):
    data = bundle_data(str(tiny_onnx_bundle.resolve()))
    ballast = np.ones(400 * 2**20 // 8)                             # this process is big; the child must not be
    entry = runtime_memory(tiny_onnx_bundle, "onnxruntime", requests=data.requests, batch=8,
                           user_request=user_request(data), candidate_items=candidate_items(data, 10), calls=3)
    del ballast
    assert "error" not in entry, entry
    assert entry["heavy_modules"] == []                             # no TensorFlow, Keras, matplotlib, onnx
    figures = [entry[f"rss_{step}_mb"] for step in STEPS]
    assert all(f > 0 for f in figures) and figures[0] < figures[1]  # importing the backend costs memory
    assert entry["peak_rss_mb"] >= max(figures) and entry["peak_rss_mb"] < 350
    assert entry["load_mb"] == pytest.approx(entry["rss_after_load_mb"] - entry["rss_after_import_mb"], abs=0.11)
    assert entry["artifacts"] == data.manifest.selected["onnxruntime"] and entry["candidates"] == 10


def test_runtime_memory_failure_is_reported_not_raised(tmp_path):
    entry = runtime_memory(tmp_path, "onnxruntime", requests=[{"history": []}], calls=1)
    assert entry["error"].startswith("probe exited 1:") and "BundleError" in entry["error"]


def test_bench_report_has_the_runtime_memory_section(tiny_onnx_bundle, tmp_path):
    options = BenchOptions(budget_s=0.02, max_iters=40, batches=(1, 4), candidates=(6,), keras=False, profile=False,
                           plots=False, progress=False)
    outcome = run_bench(tiny_onnx_bundle, tmp_path, options)
    (entry,) = outcome.report["runtime_memory"]
    assert entry["backend"] == "onnxruntime" and entry["batch"] == 4 and entry["candidates"] == 6
    assert entry["heavy_modules"] == [] and entry["peak_rss_mb"] > 0
    md = (tmp_path / "bench.md").read_text()
    assert "## Runtime memory (what an app pays)" in md and "bench-process peak RSS MB" in md
    assert "It is not the memory an app pays" in md


def test_progress_in_a_file_is_plain_lines(capsys):
    clock = FakeClock()
    harness = Harness(HarnessConfig(limits=LoopLimits(budget_s=0.05, max_iters=20, min_iters=3, warmup_iters=1),
                                    progress=True), clock=clock, builder=fake_builder(clock))
    harness.run(specs(), description="bench tiny")
    err = capsys.readouterr().err                                   # pytest's stderr is no TTY
    assert "\r" not in err
    assert f"bench tiny: {len(specs())}/{len(specs())} cfgs done" in err
