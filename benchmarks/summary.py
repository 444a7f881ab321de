"""A plain-text summary of a report for the terminal (what `edgerec bench` and `edgerec demo` print)."""
from __future__ import annotations


def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def summary_table(report: dict) -> str:
    comp = report.get("comparisons", {})
    overhead = {(o["scenario"], o["backend"], o["variant"], o["batch"], o["threads"]): o
                for o in comp.get("overhead", []) if not o["raw"].endswith("_direct")}
    speed = {(s["backend"], s["variant"], s["batch"], s["threads"]): s for s in comp.get("speedup_vs_keras", [])}
    rows = [r for r in report.get("results", []) if not r.get("error") and r.get("p50_ms") is not None
            and r["scenario"] == "tensor"]
    header = (f"{'backend':<22} {'variant':<28} {'batch':>5} {'p50 ms':>9} {'p99 ms':>9} {'rows/s':>11} "
              f"{'size KB':>8} {'ΔAUC':>8} {'vs raw':>7} {'vs tf.fn':>9}")
    lines = ["tensor path (p50 per call; 'vs raw' = edgerec / raw backend, 'vs tf.fn' = speedup over Keras tf.function)",
             header, "-" * len(header)]
    for r in sorted(rows, key=lambda r: (r["batch"], r["threads"], r["backend"], r["variant"])):
        key = (r["backend"], r["variant"], r["batch"], r["threads"])
        over = next((o for k, o in overhead.items() if k[0] == "tensor" and k[1:] == key), None)
        lines.append(f"{r['backend']:<22} {r['variant'][:28]:<28} {r['batch']:>5} {_f(r['p50_ms'], '.4f'):>9} "
                     f"{_f(r['p99_ms'], '.4f'):>9} {_f(r['rows_per_s'], ',.0f'):>11} "
                     f"{_f(r['size_bytes'] / 1024 if r.get('size_bytes') else None, '.1f'):>8} "
                     f"{_f(r.get('delta_auc'), '+.4f'):>8} {_f(over['ratio'] if over else None, '.2f'):>7} "
                     f"{_f(speed.get(key, {}).get('vs_keras_tf_function'), '.1f'):>9}")
    requests = [o for k, o in overhead.items() if k[0] == "raw_request"]
    if requests:
        lines += ["", "raw request path (preprocessing + backend) vs raw backend on encoded arrays:"]
        lines += [f"  {o['backend']:<22} {o['variant'][:28]:<28} batch {o['batch']:>4}: {o['edgerec_p50_ms']:.4f} ms "
                  f"vs {o['raw_p50_ms']:.4f} ms = {o['ratio']:.2f}× (goal ≤ {o['goal']:g}×)" for o in requests]
    for c in comp.get("candidates", []):
        lines.append(f"1 user × {c['candidates']} candidates ({c['backend']}): warm {_f(c['warm_p50_ms'], '.3f')} ms, "
                     f"cold {_f(c['cold_p50_ms'], '.3f')} ms, {c['candidates']} full rows "
                     f"{_f(c['fused_rows_p50_ms'], '.3f')} ms ({_f(c['fused_over_warm'], '.2f')}× warm)")
    for c in comp.get("result_cache", []):
        lines.append(f"result cache ({c['backend']}): hit {_f(c['hit_p50_ms'], '.4f')} ms, miss "
                     f"{_f(c['miss_p50_ms'], '.4f')} ms ({_f(c['miss_over_hit'], '.1f')}× faster on a hit)")
    for m in report.get("runtime_memory") or []:
        if m.get("error"):
            lines.append(f"runtime memory ({m['backend']}): not measured: {m['error'][:120]}")
        else:
            lines.append(f"runtime memory ({m['backend']}, a runtime-only process): {_f(m.get('rss_after_calls_mb'), '.0f')} MB "
                         f"after the calls, peak {_f(m.get('peak_rss_mb'), '.0f')} MB, loading the bundle "
                         f"+{_f(m.get('load_mb'), '.1f')} MB")
    failed = [r for r in report.get("results", []) if r.get("error")]
    if failed:
        lines += ["", f"{len(failed)} configuration(s) did not run, e.g. {failed[0]['backend']} "
                      f"{failed[0]['scenario']}: {failed[0]['error'][:120]}"]
    if report.get("notes"):
        lines += [""] + [f"note: {note}" for note in report["notes"]]
    return "\n".join(lines)
