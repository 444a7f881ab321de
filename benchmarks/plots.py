"""PNG plots of a benchmark report (matplotlib, imported only when drawing; files written atomically).

* ``latency_percentiles.png`` – tensor path, one row per (artifact, call path): the bar is p50,
  the markers p90 / p99 / p99.9; each artifact's edgerec row sits right under its raw backend
  rows; one panel per batch size, log-scaled milliseconds.
* ``overhead.png`` – edgerec p50 / raw backend p50 on the same artifact, every row of the report
  (signature runner and direct tensor API alike), one panel per call path with its own goal
  (≤ 1.10× tensor, ≤ 2× raw request); bars green within the goal, red over it; the ratios in a
  column right of the panel, clear of the goal line.
* ``size_auc_latency.png`` – the size / ΔAUC / latency trade-off (`edgerec.benchmarks.tradeoff`).

Examples:
    >>> paths = write_plots(report, "bench-out")   # list of written PNG paths
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .figures import pyplot, save_png
from .report import OVERHEAD_GOALS, ok_records
from .tradeoff import place_labels, plot_tradeoff, tradeoff_figure  # noqa: F401 - public here too

PERCENTILE_MARKERS = (("p90_ms", "p90", "o"), ("p99_ms", "p99", "D"), ("p999_ms", "p99.9", "X"))
PATHS = {"raw": ("raw backend", "0.55"), "raw direct": ("raw backend, direct tensor API", "0.78"),
         "edgerec": ("edgerec", "tab:blue"), "keras": ("Keras (TensorFlow)", "tab:orange")}
KERAS_ORDER = {"keras_tf_function": 0, "keras_eager": 1, "keras_predict": 2}
KERAS_NAMES = {"keras_tf_function": "tf.function", "keras_eager": "eager", "keras_predict": "model.predict"}
PATH_ORDER = {"raw": 0, "raw direct": 1, "edgerec": 2}
WITHIN, OVER = "tab:green", "tab:red"
FONT = 10


def _path(backend: str) -> str:
    if backend.startswith("edgerec_"):
        return "edgerec"
    if backend.startswith("keras"):
        return "keras"
    return "raw direct" if backend.endswith("_direct") else "raw"


def _family(backend: str) -> str:
    return backend.split("_", 1)[1].removesuffix("_direct") if "_" in backend else backend


def wrap_name(name: str, width: int = 26) -> str:
    """A file name on two lines when longer than ``width``, broken after an underscore or dot."""
    if len(name) <= width:
        return name
    cuts = [i + 1 for i, ch in enumerate(name) if ch in "_." and 0 < i < len(name) - 1]
    if not cuts:
        return name
    cut = min(cuts, key=lambda i: abs(i - len(name) / 2))
    return name[:cut] + "\n" + name[cut:]


def latency_rows(records: Sequence[dict]) -> list[tuple]:
    """Row layout shared by every batch panel: ``("heading", text)`` then ``("row", variant,
    backend, label)`` for each call path, raw rows first and edgerec's right after them."""
    keys = {(r["variant"], r["backend"]) for r in records}
    artifacts = sorted({v for v, b in keys if not b.startswith("keras")},
                       key=lambda v: (min(_family(b) for vv, b in keys if vv == v), v))
    layout: list[tuple] = []
    for variant in artifacts:
        backends = sorted((b for v, b in keys if v == variant), key=lambda b: PATH_ORDER[_path(b)])
        layout.append(("heading", f"{variant} ({_family(backends[0])})"))
        layout += [("row", variant, b, _path(b)) for b in backends]
    keras = sorted((b for v, b in keys if b.startswith("keras")), key=lambda b: KERAS_ORDER.get(b, 9))
    if keras:
        layout.append(("heading", "Keras model (the baseline)"))
        layout += [("row", "keras", b, KERAS_NAMES.get(b, b)) for b in keras]
    return layout


def plot_latency_percentiles(records: Sequence[dict], path: Path, scenario: str = "tensor") -> Path | None:
    built = latency_figure(records, scenario)
    return None if built is None else save_png(built[0], path, bbox_inches="tight")


def latency_figure(records: Sequence[dict], scenario: str = "tensor"):
    """``(figure, axes, row layout)`` of the percentile plot, or None without records of ``scenario``."""
    rows = [r for r in ok_records(records) if r["scenario"] == scenario]
    if not rows:
        return None
    plt = pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    panels = sorted({(r["batch"], r["threads"]) for r in rows})
    layout = latency_rows(rows)
    height = 1.2 + 0.26 * len(layout)
    fig, axes = plt.subplots(1, len(panels), figsize=(2.8 + 3.7 * len(panels), height), sharey=True, squeeze=False)
    ys = list(range(len(layout)))[::-1]
    by_key = {(r["variant"], r["backend"], r["batch"], r["threads"]): r for r in rows}
    for ax, (batch, threads) in zip(axes[0], panels):
        shown = [r for r in rows if r["batch"] == batch and r["threads"] == threads]
        low = min(r["p50_ms"] for r in shown)
        high = max(r["p999_ms"] or r["p50_ms"] for r in shown)
        for y, entry in zip(ys, layout):
            if entry[0] == "heading":
                ax.axhline(y, color="0.85", linewidth=0.8, zorder=0)
                continue
            record = by_key.get((entry[1], entry[2], batch, threads))
            if record is None:
                continue
            kind = _path(entry[2])
            ax.barh(y, record["p50_ms"], height=0.7, color=PATHS[kind][1], zorder=2)
            tails = [record.get(key) for key, _, _ in PERCENTILE_MARKERS]
            ax.plot([record["p50_ms"], max(t or 0 for t in tails) or record["p50_ms"]], [y, y],
                    color="black", linewidth=0.6, zorder=3)
            for (key, _, marker), value in zip(PERCENTILE_MARKERS, tails):
                if value:
                    ax.plot([value], [y], marker=marker, markersize=4.5, color="black", linestyle="none", zorder=4)
            ax.annotate(f"{record['p50_ms']:.3g}", (max(t or 0 for t in tails + [record["p50_ms"]]), y),
                        xytext=(6, 0), textcoords="offset points", va="center", fontsize=FONT - 1.5)
        ax.set_xscale("log")
        ax.set_xlim(low / 2, high * 4.5)
        ax.set_title(f"batch {batch}, {threads} thread{'s' if threads > 1 else ''}", fontsize=FONT + 1)
        ax.set_xlabel("ms per call (log); number = p50", fontsize=FONT)
        ax.tick_params(axis="x", labelsize=FONT - 1)
        ax.grid(axis="x", which="major", alpha=0.3)
    axis = axes[0][0]
    axis.set_yticks(ys)
    axis.set_yticklabels([e[1] if e[0] == "heading" else f"{e[3]}" for e in layout], fontsize=FONT)
    for tick, entry in zip(axis.get_yticklabels(), layout):
        if entry[0] == "heading":
            tick.set_fontweight("bold")
    axis.set_ylim(-0.7, len(layout) - 0.3)
    kinds = [k for k in PATHS if any(_path(r["backend"]) == k for r in rows)]
    handles = [Patch(color=PATHS[k][1], label=f"p50, {PATHS[k][0]}") for k in kinds]
    handles += [Line2D([], [], marker=m, color="black", linestyle="none", markersize=5, label=name)
                for _, name, m in PERCENTILE_MARKERS]
    fig.suptitle(f"Latency percentiles on the {scenario} path (lower is better)", fontsize=FONT + 2)
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 3),
               fontsize=FONT - 0.5, frameon=False)
    return fig, axes[0], layout


def goal_text(goal: float) -> str:
    """1.1 -> "1.10", 2.0 -> "2": the goals as the docs write them."""
    return f"{goal:g}" if float(goal).is_integer() else f"{goal:.2f}"


def overhead_rows(group: Sequence[dict]) -> list[tuple]:
    """``("heading", artifact)`` then ``("row", record, label)`` per batch × raw call, per artifact."""
    many_threads = len({r["threads"] for r in group}) > 1
    layout: list[tuple] = []
    ordered = sorted(group, key=lambda r: (r["backend"], r["variant"], r["batch"], r["threads"], r["raw"]))
    for index, r in enumerate(ordered):
        if index == 0 or (r["backend"], r["variant"]) != (ordered[index - 1]["backend"], ordered[index - 1]["variant"]):
            layout.append(("heading", wrap_name(f"{r['variant']} ({r['backend'][len('edgerec_'):]})", 34)))
        raw = "vs raw, direct tensor API" if r["raw"].endswith("_direct") else "vs raw"
        threads = f", {r['threads']} threads" if many_threads else ""
        layout.append(("row", r, f"batch {r['batch']}{threads} {raw}"))
    return layout


def plot_overhead(comparison: dict, path: Path) -> Path | None:
    built = overhead_figure(comparison)
    return None if built is None else save_png(built[0], path, bbox_inches="tight")


def overhead_figure(comparison: dict):
    """``(figure, {scenario: axes}, {scenario: row layout})`` of the overhead plot, or None."""
    rows = [r for r in comparison.get("overhead") or [] if r.get("ratio") is not None]
    if not rows:
        return None
    plt = pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    scenarios = [s for s in OVERHEAD_GOALS if any(r["scenario"] == s for r in rows)]
    layouts = {s: overhead_rows([r for r in rows if r["scenario"] == s]) for s in scenarios}
    height = 0.8 + sum(0.26 * len(layout) + 0.8 for layout in layouts.values())
    fig, axes = plt.subplots(len(scenarios), 1, figsize=(8.5, height), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [len(layouts[s]) + 3 for s in scenarios]})
    right = max(max(r["ratio"] for r in rows), *(OVERHEAD_GOALS[s] for s in scenarios)) * 1.08
    titles = {"tensor": "tensor path: the same encoded arrays, edgerec vs the raw backend",
              "raw_request": "raw request path: request dicts through edgerec\nvs the raw backend on encoded arrays"}
    for ax, scenario in zip(axes[:, 0], scenarios):
        layout, goal = layouts[scenario], OVERHEAD_GOALS[scenario]
        ys = list(range(len(layout)))[::-1]
        bars = [(y, entry[1]) for y, entry in zip(ys, layout) if entry[0] == "row"]
        ax.barh([y for y, _ in bars], [r["ratio"] for _, r in bars], height=0.62, zorder=2,
                color=[WITHIN if r["meets_goal"] else OVER for _, r in bars])
        ax.axvline(goal, linestyle="--", linewidth=1.3, color="black", zorder=3)
        ax.axvline(1.0, linewidth=0.9, color="tab:blue", zorder=3)
        for y, r in bars:
            ax.annotate(f"{r['ratio']:.2f}×", (1.0, y), xycoords=("axes fraction", "data"), xytext=(6, 0),
                        textcoords="offset points", va="center", fontsize=FONT - 0.5,
                        color=WITHIN if r["meets_goal"] else OVER, fontweight="bold")
        for y, entry in zip(ys, layout):
            if entry[0] == "heading":
                ax.axhline(y, color="0.85", linewidth=0.8, zorder=0)
        ax.set_yticks(ys)
        ax.set_yticklabels([entry[1] if entry[0] == "heading" else entry[2] for entry in layout], fontsize=FONT - 0.5)
        for tick, entry in zip(ax.get_yticklabels(), layout):
            if entry[0] == "heading":
                tick.set_fontweight("bold")
        ax.set_ylim(-0.7, len(layout) - 0.3)
        met = sum(r["meets_goal"] for _, r in bars)
        ax.set_title(f"{titles.get(scenario, scenario)}\ngoal ≤ {goal_text(goal)}×: {met} of {len(bars)} within",
                     fontsize=FONT, loc="left")
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlim(0, right)
    axes[-1, 0].set_xlabel("edgerec p50 / raw backend p50 (×, lower is better)", fontsize=FONT)
    handles = [Patch(color=WITHIN, label="within the goal"), Patch(color=OVER, label="over the goal"),
               Line2D([], [], color="black", linestyle="--", label="goal of the panel"),
               Line2D([], [], color="tab:blue", label="raw backend = 1×")]
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, fontsize=FONT - 1,
               frameon=False)
    return fig, dict(zip(scenarios, axes[:, 0])), layouts


def write_plots(report: dict, out_dir: str | Path) -> list[Path]:
    """Write every plot the report has data for; returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = report.get("results", [])
    written = [plot_latency_percentiles(records, out / "latency_percentiles.png"),
               plot_tradeoff(records, out / "size_auc_latency.png", report.get("bundle")),
               plot_overhead(report.get("comparisons", {}), out / "overhead.png")]
    return [p for p in written if p is not None]
