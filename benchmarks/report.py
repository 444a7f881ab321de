"""bench.json and bench.md: every figure of a run, the machine it ran on, and the headline ratios.

`comparisons(records)` derives the figures a reader looks for first:

* ``overhead``  – edgerec's p50 over the raw backend's p50 on the same artifact, batch, threads and
  call path, measured interleaved (goal ≤ 1.10× for ``tensor``, ≤ 2× for ``raw_request``),
* ``speedup_vs_keras`` – the Keras ``tf.function`` p50 over each edgerec configuration's p50 (the
  honest Keras baseline; eager and ``model.predict`` ratios are given beside it),
* ``candidates`` – 1 user × N candidates: user-state cache cold / warm vs N full fused rows,
* ``result_cache`` – miss p50 over hit p50.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Iterable, Sequence

from edgerec.runtime.errors import expected
from edgerec.runtime.io import atomic_write_json, atomic_write_text

from .loadtest import load_test_markdown
from .recommend import full_catalogue_markdown, recommend_markdown
from .stats import ratio
from .tables import markdown_table

REPORT_SCHEMA_VERSION = 1
OVERHEAD_GOALS = {"tensor": 1.10, "raw_request": 2.0}
KERAS_BACKENDS = ("keras_tf_function", "keras_eager", "keras_predict")
TABLE_COLUMNS = (("scenario", "scenario"), ("backend", "backend"), ("variant", "variant"), ("batch", "batch"),
                 ("threads", "thr"), ("p50_ms", "p50 ms"), ("p90_ms", "p90 ms"), ("p99_ms", "p99 ms"),
                 ("p999_ms", "p99.9 ms"), ("mean_ms", "mean ms"), ("cpu_p50_ms", "CPU p50 ms"), ("rows_per_s", "rows/s"), ("load_ms", "load ms"),
                 ("first_ms", "first ms"), ("peak_rss_mb", "bench-process peak RSS MB"), ("size_bytes", "size KB"),
                 ("delta_auc", "ΔAUC"), ("iterations", "iters"))


def ok_records(records: Iterable[dict]) -> list[dict]:
    """The records that ran and were timed."""
    return [r for r in records if not r.get("error") and r.get("p50_ms") is not None]


def _find(records: Sequence[dict], **match) -> dict | None:
    for record in records:
        if all(record.get(k) == v for k, v in match.items()):
            return record
    return None


def comparisons(records: Sequence[dict]) -> dict:
    """Headline ratios derived from the records (see the module docstring)."""
    ok = ok_records(records)
    overhead = []
    for rec in ok:
        if not rec["backend"].startswith("edgerec_") or rec["scenario"] not in OVERHEAD_GOALS:
            continue
        name = rec["backend"][len("edgerec_"):]
        for raw_backend in (f"raw_{name}", f"raw_{name}_direct"):
            raw = _find(ok, scenario=rec["scenario"], backend=raw_backend, variant=rec["variant"],
                        batch=rec["batch"], threads=rec["threads"])
            if raw is None:
                continue
            value = ratio(rec["p50_ms"], raw["p50_ms"])
            goal = OVERHEAD_GOALS[rec["scenario"]]
            overhead.append({"scenario": rec["scenario"], "backend": rec["backend"], "raw": raw_backend,
                             "variant": rec["variant"], "batch": rec["batch"], "threads": rec["threads"],
                             "edgerec_p50_ms": rec["p50_ms"], "raw_p50_ms": raw["p50_ms"], "ratio": value,
                             "goal": goal, "meets_goal": value is not None and value <= goal,
                             "interleaved": bool(rec.get("interleaved") and raw.get("interleaved"))})
    speedup = []
    for rec in ok:
        if not rec["backend"].startswith("edgerec_") or rec["scenario"] != "tensor":
            continue
        row = {"backend": rec["backend"], "variant": rec["variant"], "batch": rec["batch"],
               "threads": rec["threads"], "edgerec_p50_ms": rec["p50_ms"]}
        for keras in KERAS_BACKENDS:
            base = _find(ok, scenario="tensor", backend=keras, batch=rec["batch"], threads=rec["threads"])
            row[f"vs_{keras}"] = ratio(base["p50_ms"], rec["p50_ms"]) if base else None
        if any(row[f"vs_{k}"] is not None for k in KERAS_BACKENDS):
            speedup.append(row)
    candidates = []
    for rec in ok:
        if rec["scenario"] != "candidates_warm":
            continue
        match = dict(backend=rec["backend"], batch=rec["batch"], threads=rec["threads"])
        cold = _find(ok, scenario="candidates_cold", **match)
        fused = _find(ok, scenario="candidates_fused", **match)
        candidates.append({"backend": rec["backend"], "variant": rec["variant"], "candidates": rec["batch"],
                           "threads": rec["threads"], "warm_p50_ms": rec["p50_ms"],
                           "cold_p50_ms": cold["p50_ms"] if cold else None,
                           "fused_rows_p50_ms": fused["p50_ms"] if fused else None,
                           "fused_over_warm": ratio(fused["p50_ms"], rec["p50_ms"]) if fused else None,
                           "cold_over_warm": ratio(cold["p50_ms"], rec["p50_ms"]) if cold else None,
                           "fused_over_warm_cpu": ratio(fused.get("cpu_p50_ms"), rec.get("cpu_p50_ms"))
                           if fused else None})
    result_cache = []
    for rec in ok:
        if rec["scenario"] != "result_cache_hit":
            continue
        miss = _find(ok, scenario="result_cache_miss", backend=rec["backend"], batch=rec["batch"],
                     threads=rec["threads"])
        result_cache.append({"backend": rec["backend"], "variant": rec["variant"], "batch": rec["batch"],
                             "hit_p50_ms": rec["p50_ms"], "miss_p50_ms": miss["p50_ms"] if miss else None,
                             "miss_over_hit": ratio(miss["p50_ms"], rec["p50_ms"]) if miss else None})
    return {"overhead": overhead, "speedup_vs_keras": speedup, "candidates": candidates,
            "result_cache": result_cache}


def build_report(records: Sequence[dict], machine: dict, bundle: dict | None = None, config: dict | None = None,
                 profile: dict | None = None) -> dict:
    if not isinstance(records, Sequence) or isinstance(records, (str, bytes)):
        raise ValueError(expected("a list of benchmark records", type(records).__name__))
    return {"schema_version": REPORT_SCHEMA_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine, "bundle": bundle or {}, "config": config or {},
            "results": [_clean(r) for r in records], "comparisons": comparisons(records),
            "profile": profile or {}}


def write_json(report: dict, out_dir: str | Path) -> Path:
    return atomic_write_json(Path(out_dir) / "bench.json", _clean(report))


def render_markdown(report: dict) -> str:
    machine = report.get("machine", {})
    packages = ", ".join(f"{k} {v}" for k, v in machine.get("packages", {}).items())
    lines = ["# edgerec benchmark", "",
             f"Created {report.get('created', '')} on **{machine.get('cpu_model', '?')}** "
             f"({machine.get('cores_usable', '?')} usable of {machine.get('cores_logical', '?')} logical cores, "
             f"{machine.get('memory_gb', '?')} GB), {machine.get('os', '?')}, Python {machine.get('python', '?')}.",
             f"Packages: {packages}.", ""]
    config = report.get("config", {})
    if config:
        lines += ["Settings: " + ", ".join(f"{k}={v}" for k, v in config.items() if not isinstance(v, dict)), ""]
    if report.get("notes"):
        lines += ["Skipped or measured differently on this machine:", ""]
        lines += [f"* {note}" for note in report["notes"]] + [""]
    lines += memory_markdown(report.get("runtime_memory") or [], config)
    lines += ["Latency is per call (one batch); p50 ratios of configurations in the same group were measured "
              "interleaved (A/B rounds), because sub-millisecond timings drift by up to 2× between runs.", ""]
    comp = report.get("comparisons", {})
    if comp.get("overhead"):
        lines += ["## edgerec overhead over the raw backend (same artifact, interleaved, p50)", "",
                  markdown_table(comp["overhead"], (("scenario", "path"), ("backend", "backend"), ("raw", "vs"),
                                                    ("variant", "variant"), ("batch", "batch"), ("threads", "thr"),
                                                    ("edgerec_p50_ms", "edgerec p50 ms"), ("raw_p50_ms", "raw p50 ms"),
                                                    ("ratio", "ratio ×"), ("goal", "goal ×"),
                                                    ("meets_goal", "meets goal"))), ""]
    if comp.get("speedup_vs_keras"):
        lines += ["## Speedup over Keras (p50 ratio; tf.function is the honest baseline)", "",
                  markdown_table(comp["speedup_vs_keras"], (("backend", "backend"), ("variant", "variant"),
                                                            ("batch", "batch"), ("threads", "thr"),
                                                            ("edgerec_p50_ms", "edgerec p50 ms"),
                                                            ("vs_keras_tf_function", "× vs tf.function"),
                                                            ("vs_keras_eager", "× vs eager"),
                                                            ("vs_keras_predict", "× vs predict"))), ""]
    if comp.get("candidates"):
        lines += ["## 1 user × N candidates", "",
                  markdown_table(comp["candidates"], (("backend", "backend"), ("variant", "variant"),
                                                      ("candidates", "N"), ("warm_p50_ms", "user cache warm ms"),
                                                      ("cold_p50_ms", "user cache cold ms"),
                                                      ("fused_rows_p50_ms", "N full rows ms"),
                                                      ("fused_over_warm", "full rows / warm ×"),
                                                      ("fused_over_warm_cpu", "same, CPU time ×"),
                                                      ("cold_over_warm", "cold / warm ×"))), ""]
    if comp.get("result_cache"):
        lines += ["## Result cache", "",
                  markdown_table(comp["result_cache"], (("backend", "backend"), ("variant", "variant"),
                                                        ("batch", "batch"), ("hit_p50_ms", "hit p50 ms"),
                                                        ("miss_p50_ms", "miss p50 ms"),
                                                        ("miss_over_hit", "miss / hit ×"))), ""]
    if report.get("load_test"):
        lines += load_test_markdown(report["load_test"])
    if report.get("recommend"):
        lines += recommend_markdown(report["recommend"]) + [""]
    if report.get("full_catalogue"):
        lines += full_catalogue_markdown(report["full_catalogue"]) + [""]
    results = report.get("results", [])
    ok = ok_records(results)
    if ok:
        lines += ["## All configurations", "", markdown_table(ok, TABLE_COLUMNS), ""]
    failed = [r for r in results if r.get("error")]
    if failed:
        lines += ["## Configurations that did not run", "",
                  markdown_table(failed, (("scenario", "scenario"), ("backend", "backend"), ("variant", "variant"),
                                          ("batch", "batch"), ("error", "error"))), ""]
    profile = report.get("profile") or {}
    for name, entry in profile.items():
        if not isinstance(entry, dict) or not entry.get("top"):
            continue
        lines += [f"## Where the time goes: {name} (cProfile, {entry.get('calls', '?')} calls, "
                  f"{entry.get('total_ms', 0):.1f} ms profiled)", "",
                  markdown_table(entry["top"], (("function", "function"), ("ncalls", "calls"),
                                                ("tottime_ms", "own ms"), ("cumtime_ms", "cumulative ms"),
                                                ("share", "share of total"))), ""]
    plots = report.get("plots") or []
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(lines)


MEMORY_COLUMNS = (("backend", "backend"), ("served", "artifacts served"), ("rss_start_mb", "start MB"),
                  ("rss_after_import_mb", "after import MB"), ("rss_after_load_mb", "after load MB"),
                  ("rss_after_calls_mb", "after calls MB"), ("peak_rss_mb", "peak MB"), ("load_mb", "load Δ MB"),
                  ("heavy", "other heavy modules"))


def memory_markdown(entries: Sequence[dict], config: dict) -> list[str]:
    """The runtime-memory section, and what the bench-process RSS column below does (not) mean."""
    shared = "each group of configurations in its own process" if config.get("isolate") else \
        "all configurations in one process, Keras baselines last"
    caveat = (f"The 'bench-process peak RSS' column further down is the benchmark process ({shared}): it holds "
              "the harness, the raw baselines and, once they have run, TensorFlow. It is not the memory an app pays.")
    if not entries:
        return [caveat, ""]
    rows, failed = [], []
    for entry in entries:
        if entry.get("error"):
            failed.append(f"* {entry['backend']}: {entry['error']}")
            continue
        rows.append({**entry, "served": ", ".join(f"{p}: {f}" for p, f in sorted((entry.get("artifacts") or {}).items())),
                     "heavy": ", ".join(entry.get("heavy_modules") or []) or "none"})
    first = next(iter(entries))
    calls = (f"{first.get('calls', '?')} `predict` calls each at batch 1 and batch {first.get('batch', '?')}"
             + (f", and {first.get('calls', '?')} × 1 user × {first['candidates']} candidates"
                if first.get("candidates") else ""))
    lines = ["## Runtime memory (what an app pays)", "",
             "Measured in a fresh process that imports only `edgerec.runtime` and the backend, loads the bundle's "
             f"selected artifacts (verified, warmed up) and runs {calls}. RSS in MiB; 'load Δ' = after load − "
             "after import.", ""]
    if rows:
        lines += [markdown_table(rows, MEMORY_COLUMNS), ""]
    if failed:
        lines += ["Not measured:", "", *failed, ""]
    return lines + [caveat, ""]


def write_markdown(report: dict, out_dir: str | Path) -> Path:
    return atomic_write_text(Path(out_dir) / "bench.md", render_markdown(report))


def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {"json": write_json(report, out), "markdown": write_markdown(report, out)}


def load_report(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(expected(f"a readable bench.json at {path}", str(err))) from None
    if not isinstance(data, dict) or "results" not in data:
        raise ValueError(expected("a bench.json object with 'results'", type(data).__name__))
    return data


def _clean(value):
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None, tracebacks kept as text."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
