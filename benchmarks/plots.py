"""PNG plots of a benchmark report (matplotlib, Agg backend, imported only here).

* ``latency_percentiles.png`` – p50/p90/p99/p99.9 per backend × variant on the tensor path, one
  panel per batch size, log-scaled milliseconds.
* ``size_auc_latency.png`` – the trade-off: artifact size vs ΔAUC, marker colour = p50 latency at
  the smallest batch, one marker shape per backend; points carry numbers (placed so they do not
  overlap) keyed in a legend under the plot.
* ``overhead.png`` – edgerec p50 / raw backend p50 with the goal lines (1.10× tensor, 2× raw request).

Examples:
    >>> paths = write_plots(report, "bench-out")   # list of written PNG paths
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .report import OVERHEAD_GOALS, _ok

PERCENTILES = (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p999_ms", "p99.9"))
MARKERS = {"onnxruntime": "o", "litert": "s"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _label(record: dict) -> str:
    return f"{record['backend']}\n{record['variant']}"


def plot_latency_percentiles(records: Sequence[dict], path: Path, scenario: str = "tensor") -> Path | None:
    rows = [r for r in _ok(records) if r["scenario"] == scenario]
    if not rows:
        return None
    plt = _pyplot()
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(len(batches), 1, figsize=(max(7.0, 1.1 * max(len([r for r in rows if r["batch"] == b])
                                                                          for b in batches) + 2), 3.6 * len(batches)),
                             squeeze=False)
    width = 0.8 / len(PERCENTILES)
    for ax, batch in zip(axes[:, 0], batches):
        subset = sorted([r for r in rows if r["batch"] == batch], key=lambda r: (r["backend"], r["variant"]))
        for i, (key, name) in enumerate(PERCENTILES):
            xs = [j + (i - (len(PERCENTILES) - 1) / 2) * width for j in range(len(subset))]
            ax.bar(xs, [r[key] for r in subset], width=width, label=name)
        ax.set_xticks(range(len(subset)))
        ax.set_xticklabels([_label(r) for r in subset], fontsize=7, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("latency per call (ms, log)")
        ax.set_title(f"{scenario} path, batch {batch}, threads "
                     f"{','.join(str(t) for t in sorted({r['threads'] for r in subset}))}: latency percentiles")
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(title="percentile", fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_tradeoff(records: Sequence[dict], path: Path) -> Path | None:
    built = tradeoff_figure(records)
    if built is None:
        return None
    fig, _, _ = built
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def tradeoff_figure(records: Sequence[dict]):
    """The size-vs-ΔAUC-vs-latency scatter as ``(figure, axes, number labels)``, or None.

    Each artifact is a marker (shape = backend, colour = p50) with a short number beside it; the
    legend under the plot keys the numbers to variant, size, ΔAUC and p50. Numbers are placed by
    `place_labels` so they overlap neither each other nor the markers, even when variants sit on
    top of each other (fp32 ONNX and TFLite files have almost the same size and ΔAUC)."""
    rows = [r for r in _ok(records) if r["scenario"] == "tensor" and r["backend"].startswith(("edgerec_", "raw_"))
            and r.get("size_bytes")]
    if not rows:
        return None
    batch = min(r["batch"] for r in rows)
    rows = [r for r in rows if r["batch"] == batch]
    # one point per artifact: prefer the edgerec record, fall back to the raw one
    points: dict[tuple, dict] = {}
    for r in sorted(rows, key=lambda r: not r["backend"].startswith("edgerec_")):
        points.setdefault((r["backend"].split("_", 1)[1].removesuffix("_direct"), r["variant"]), r)
    keys = sorted(points, key=lambda k: (k[0], points[k]["size_bytes"], k[1]))
    plt = _pyplot()
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(9, 5.2))
    latencies = [points[k]["p50_ms"] for k in keys]
    low, high = min(latencies), max(latencies)
    norm = plt.Normalize(vmin=low, vmax=high if high > low else low * 1.01)
    scatter, xy, handles = None, [], []
    for backend in sorted({k[0] for k in keys}):
        subset = [points[k] for k in keys if k[0] == backend]
        scatter = ax.scatter([p["size_bytes"] / 1024 for p in subset], [_delta(p) for p in subset],
                             c=[p["p50_ms"] for p in subset], cmap="viridis", norm=norm,
                             s=110 if backend == "litert" else 70,     # a square stays visible under a circle
                             marker=MARKERS.get(backend, "^"), edgecolors="black", label=backend, zorder=3)
    for number, key in enumerate(keys, start=1):
        p = points[key]
        xy.append((p["size_bytes"] / 1024, _delta(p)))
        delta = "n/a" if p.get("delta_auc") is None else f"{p['delta_auc']:+.4f}"
        handles.append(Line2D([], [], linestyle="none", marker=f"${number}$", color="black", markersize=8,
                              label=f"{p['variant']} ({key[0]}): {p['size_bytes'] / 1024:,.0f} KB, "
                                    f"ΔAUC {delta}, p50 {p['p50_ms']:.3g} ms"))
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:.2g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.margins(x=0.12, y=0.15)          # room for the numbers of points on the edges
    ax.set_xlabel("artifact size (KB, log)")
    ax.set_ylabel("ΔAUC vs the Keras model (paired, higher is better)")
    ax.set_title(f"Size vs accuracy vs latency (batch {batch}; colour = p50 ms, lower is better)")
    fig.colorbar(scatter, ax=ax, label="p50 latency (ms)")
    shapes = ax.legend(title="backend (marker)", fontsize=8, loc="best")
    ax.add_artist(shapes)
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.45, 0.0), ncol=1 if len(handles) < 5 else 2,
               fontsize=7.5, title="artifacts (numbers in the plot)", title_fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    labels = place_labels(ax, xy, [str(n) for n in range(1, len(keys) + 1)])
    return fig, ax, labels


def _delta(point: dict) -> float:
    return point["delta_auc"] if point.get("delta_auc") is not None else 0.0


# Offsets (points) tried in turn around a marker: right, above, left, below, then further out.
_OFFSETS = [(7, -4), (-4, 7), (-15, -4), (-4, -16), (7, 7), (-15, 7), (-15, -16), (7, -16)]
_OFFSETS += [(dx * 2, dy * 2) for dx, dy in _OFFSETS] + [(dx * 3, dy * 3) for dx, dy in _OFFSETS]


def place_labels(ax, xy: Sequence[tuple], texts: Sequence[str], fontsize: float = 8) -> list:
    """Annotate each data point ``xy[i]`` with ``texts[i]`` at the first offset in `_OFFSETS`
    whose text box overlaps no earlier label and no marker (greedy, in display pixels); a
    label that finds no free spot takes the last offset and a connecting line."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_pixels = ax.transData.transform
    scale = fig.dpi / 72.0
    markers = []
    for x, y in xy:
        px, py = to_pixels((x, y))
        markers.append((px - 6 * scale, py - 6 * scale, px + 6 * scale, py + 6 * scale))
    taken: list[tuple] = []
    labels = []
    for (x, y), text in zip(xy, texts):
        chosen = None
        for dx, dy in _OFFSETS:
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                                fontweight="bold", zorder=4)
            box = label.get_window_extent(renderer)
            rect = (box.x0 - 1, box.y0 - 1, box.x1 + 1, box.y1 + 1)
            if not any(_overlap(rect, other) for other in taken + markers):
                chosen = (label, rect)
                break
            label.remove()
        if chosen is None:
            dx, dy = _OFFSETS[-1]
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                                fontweight="bold", zorder=4, arrowprops={"arrowstyle": "-", "linewidth": 0.6})
            box = label.get_window_extent(renderer)
            chosen = (label, (box.x0, box.y0, box.x1, box.y1))
        taken.append(chosen[1])
        labels.append(chosen[0])
    return labels


def _overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def plot_overhead(comparison: dict, path: Path) -> Path | None:
    rows = [r for r in comparison.get("overhead") or [] if r.get("ratio") is not None
            and not str(r.get("raw", "")).endswith("_direct")]
    if not rows:
        return None
    rows.sort(key=lambda r: (r["scenario"], r["backend"], r["batch"], r["variant"]))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.32 * len(rows)))
    labels = [f"{r['scenario']} · {r['backend'][len('edgerec_'):]} · {r['variant']} · batch {r['batch']}"
              for r in rows]
    colors = ["tab:green" if r["meets_goal"] else "tab:red" for r in rows]
    ys = list(range(len(rows)))[::-1]
    ax.barh(ys, [r["ratio"] for r in rows], color=colors)
    for y, r in zip(ys, rows):
        ax.annotate(f"{r['ratio']:.2f}×", (r["ratio"], y), textcoords="offset points", xytext=(3, -3), fontsize=7)
    for scenario, goal in OVERHEAD_GOALS.items():
        ax.axvline(goal, linestyle="--", linewidth=1, color="black" if scenario == "tensor" else "grey",
                   label=f"goal {scenario} ≤ {goal:g}×")
    ax.axvline(1.0, linewidth=0.8, color="tab:blue", label="raw backend = 1×")
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("edgerec p50 / raw backend p50 on the same artifact and inputs (×, lower is better)")
    ax.set_title("edgerec overhead over the raw backend (green = within goal)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(report: dict, out_dir: str | Path) -> list[Path]:
    """Write every plot the report has data for; returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = report.get("results", [])
    written = [plot_latency_percentiles(records, out / "latency_percentiles.png"),
               plot_tradeoff(records, out / "size_auc_latency.png"),
               plot_overhead(report.get("comparisons", {}), out / "overhead.png")]
    return [p for p in written if p is not None]
