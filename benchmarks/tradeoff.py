"""The size-vs-ΔAUC-vs-latency scatter (``size_auc_latency.png``) and its label placement.

Each artifact is a marker (shape = backend, colour = p50 latency at the smallest batch) with a
short number beside it, keyed in a legend under the plot. The band between ±budget is the
|ΔAUC| budget the export selected within; the variants the bundle serves are ringed.

Examples:
    >>> fig, ax, labels = tradeoff_figure(report["results"], report["bundle"])
"""
from __future__ import annotations

from typing import Sequence

from .figures import pyplot, save_png
from .report import ok_records

MARKERS = {"onnxruntime": "o", "litert": "s"}
SELECTED_COLOR = "tab:red"
# A budget further than this many times the largest |ΔAUC| off the points would squash them into
# a line; it is then named in the legend instead of drawn.
BUDGET_DRAW_FACTOR = 4.0


def plot_tradeoff(records: Sequence[dict], path, bundle: dict | None = None):
    """Write ``size_auc_latency.png`` to ``path``; None when there is nothing to plot."""
    built = tradeoff_figure(records, bundle)
    if built is None:
        return None
    return save_png(built[0], path, bbox_inches="tight")


def _delta(point: dict) -> float:
    return point["delta_auc"] if point.get("delta_auc") is not None else 0.0


def _points(records: Sequence[dict]) -> tuple[int, dict] | None:
    rows = [r for r in ok_records(records) if r["scenario"] == "tensor" and r["backend"].startswith(("edgerec_", "raw_"))
            and r.get("size_bytes")]
    if not rows:
        return None
    batch = min(r["batch"] for r in rows)
    points: dict[tuple, dict] = {}
    # one point per artifact: the edgerec record where there is one, else the raw backend's
    for r in sorted((r for r in rows if r["batch"] == batch), key=lambda r: not r["backend"].startswith("edgerec_")):
        points.setdefault((r["backend"].split("_", 1)[1].removesuffix("_direct"), r["variant"]), r)
    return batch, points


def tradeoff_figure(records: Sequence[dict], bundle: dict | None = None):
    """The scatter as ``(figure, axes, number labels)``, or None without tensor-path records.

    ``bundle`` is the report's bundle section: its ``selected`` files are ringed and its
    ``budget`` (the export's |ΔAUC| budget) is drawn as a band."""
    found = _points(records)
    if found is None:
        return None
    batch, points = found
    bundle = bundle or {}
    selected = {(backend, f) for backend, parts in (bundle.get("selected") or {}).items() for f in parts.values()}
    status = {a.get("file"): a.get("status") for a in bundle.get("artifacts") or []}
    budget = bundle.get("budget")
    keys = sorted(points, key=lambda k: (k[0], points[k]["size_bytes"], k[1]))
    plt = pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, LogLocator

    fig, ax = plt.subplots(figsize=(9, 5.2))
    latencies = [points[k]["p50_ms"] for k in keys]
    low, high = min(latencies), max(latencies)
    norm = plt.Normalize(vmin=low, vmax=high if high > low else low * 1.01)
    scatter, shapes = None, []
    for backend in sorted({k[0] for k in keys}):
        subset = [points[k] for k in keys if k[0] == backend]
        scatter = ax.scatter([p["size_bytes"] / 1024 for p in subset], [_delta(p) for p in subset],
                             c=[p["p50_ms"] for p in subset], cmap="viridis", norm=norm,
                             s=110 if backend == "litert" else 70,     # a square stays visible under a circle
                             marker=MARKERS.get(backend, "^"), edgecolors="black", zorder=3)
        shapes.append(Line2D([], [], linestyle="none", marker=MARKERS.get(backend, "^"), markersize=8,
                             markerfacecolor="lightgrey", markeredgecolor="black", label=backend))
    chosen = [k for k in keys if k in selected]
    if chosen:
        ax.scatter([points[k]["size_bytes"] / 1024 for k in chosen], [_delta(points[k]) for k in chosen], s=330,
                   facecolors="none", edgecolors=SELECTED_COLOR, linewidths=2.2, zorder=4)
        shapes.append(Line2D([], [], linestyle="none", marker="o", markersize=13, markerfacecolor="none",
                             markeredgecolor=SELECTED_COLOR, markeredgewidth=2.2, label="selected (served)"))
    spread = max(abs(_delta(points[k])) for k in keys)
    if budget is not None and budget <= BUDGET_DRAW_FACTOR * max(spread, 1e-6):
        ax.axhspan(-budget, budget, color="tab:green", alpha=0.08, zorder=0)
        for y in (-budget, budget):
            ax.axhline(y, color="tab:green", linewidth=1.2, linestyle="--", zorder=1)
        shapes.append(Patch(facecolor=(0.17, 0.63, 0.17, 0.15), edgecolor="tab:green", linestyle="--",
                            label=f"|ΔAUC| budget ≤ {budget:g}"))
    elif budget is not None:
        shapes.append(Patch(facecolor="none", edgecolor="none",
                            label=f"|ΔAUC| budget ≤ {budget:g} (beyond the plotted range)"))
    else:
        shapes.append(Patch(facecolor="none", edgecolor="none", label="no |ΔAUC| budget recorded"))
    handles, xy, sizes = [], [], []
    for number, key in enumerate(keys, start=1):
        p = points[key]
        xy.append((p["size_bytes"] / 1024, _delta(p)))
        sizes.append(11.0 if key in selected else 6.0)
        delta = "n/a" if p.get("delta_auc") is None else f"{p['delta_auc']:+.4f}"
        mark = "selected" if key in selected else status.get(key[1])
        handles.append(Line2D([], [], linestyle="none", marker=f"${number}$", color="black", markersize=8,
                              label=f"{p['variant']} ({key[0]}): {p['size_bytes'] / 1024:,.0f} KB, "
                                    f"ΔAUC {delta}, p50 {p['p50_ms']:.3g} ms" + (f" — {mark}" if mark else "")))
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0, 7.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:.2g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.margins(x=0.12, y=0.15)          # room for the numbers of points on the edges
    ax.set_xlabel("artifact size (KB, log)")
    ax.set_ylabel("ΔAUC vs the Keras model (paired, higher is better)")
    ax.set_title(f"Size vs accuracy vs latency (batch {batch}; colour = p50 ms, lower is better)")
    fig.colorbar(scatter, ax=ax, label="p50 latency (ms)")
    ax.add_artist(ax.legend(handles=shapes, title="marker", fontsize=8, loc="best"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.45, 0.0), ncol=1 if len(handles) < 5 else 2,
               fontsize=7.5, title="artifacts (numbers in the plot)", title_fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    labels = place_labels(ax, xy, [str(n) for n in range(1, len(keys) + 1)], marker_sizes=sizes)
    return fig, ax, labels


# Offsets (points) tried in turn around a marker: right, above, left, below, then further out.
_OFFSETS = [(7, -4), (-4, 7), (-15, -4), (-4, -16), (7, 7), (-15, 7), (-15, -16), (7, -16)]
_OFFSETS += [(dx * 2, dy * 2) for dx, dy in _OFFSETS] + [(dx * 3, dy * 3) for dx, dy in _OFFSETS]


def place_labels(ax, xy: Sequence[tuple], texts: Sequence[str], fontsize: float = 8,
                 marker_sizes: Sequence[float] | None = None) -> list:
    """Annotate each data point ``xy[i]`` with ``texts[i]`` at the first offset in `_OFFSETS`
    whose text box overlaps no earlier label and no marker (greedy, in display pixels); a
    label that finds no free spot takes the last offset and a connecting line.
    ``marker_sizes``: each marker's half-width in points (default 6)."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_pixels = ax.transData.transform
    scale = fig.dpi / 72.0
    halves = list(marker_sizes) if marker_sizes is not None else [6.0] * len(xy)
    markers = []
    for (x, y), half in zip(xy, halves):
        px, py = to_pixels((x, y))
        markers.append((px - half * scale, py - half * scale, px + half * scale, py + half * scale))
    taken: list[tuple] = []
    labels = []
    for (x, y), half, text in zip(xy, halves, texts):
        grow = max(1.0, half / 6.0)
        chosen = None
        for dx, dy in _OFFSETS:
            dx, dy = dx * grow, dy * grow
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                                fontweight="bold", zorder=5)
            box = label.get_window_extent(renderer)
            rect = (box.x0 - 1, box.y0 - 1, box.x1 + 1, box.y1 + 1)
            if not any(overlap(rect, other) for other in taken + markers):
                chosen = (label, rect)
                break
            label.remove()
        if chosen is None:
            dx, dy = _OFFSETS[-1]
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx * grow, dy * grow),
                                fontsize=fontsize, fontweight="bold", zorder=5,
                                arrowprops={"arrowstyle": "-", "linewidth": 0.6})
            box = label.get_window_extent(renderer)
            chosen = (label, (box.x0, box.y0, box.x1, box.y1))
        taken.append(chosen[1])
        labels.append(chosen[0])
    return labels


def overlap(a: tuple, b: tuple) -> bool:
    """Whether two (x0, y0, x1, y1) boxes overlap."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
