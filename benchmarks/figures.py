"""matplotlib for the benchmark plots: the Agg backend (no display needed), imported only when a
plot is drawn, and PNGs written atomically (a reader never sees half a file).

Examples:
    >>> plt = pyplot()
    >>> fig, ax = plt.subplots()
    >>> save_png(fig, "bench-out/plot.png")       # rendered in memory, then temp file + rename
"""
from __future__ import annotations

import io
from pathlib import Path

from edgerec.runtime.io import atomic_write_bytes

DPI = 110


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path, **savefig_options) -> Path:
    """Render ``fig`` to PNG bytes, write them atomically to ``path`` and close the figure."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=DPI, **savefig_options)
    finally:
        pyplot().close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


SCALE_PANELS = (("export_s", "export time (s)"), ("export_peak_rss_mb", "export peak RSS (MB)"),
                ("bundle_bytes", "bundle size (MB)"), ("load_s", "load time (s)"),
                ("runtime_rss_mb", "runtime RSS (MB)"), ("recommend_p50_ms", "recommend() p50 / p99 (ms)"))


def plot_scale(report: dict, path: str | Path) -> Path:
    """Six panels of cost against catalogue size (log x) from a ``scale.json`` report, written atomically."""
    plt = pyplot()
    sizes = sorted(report["sizes"], key=lambda entry: entry["items"])
    items = [entry["items"] for entry in sizes]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, (key, title) in zip(axes.reshape(-1), SCALE_PANELS):
        scale = 1 / 2**20 if key == "bundle_bytes" else 1.0
        values = [None if entry.get(key) is None else entry[key] * scale for entry in sizes]
        ax.plot(items, values, marker="o", label="p50" if key == "recommend_p50_ms" else None)
        if key == "recommend_p50_ms":
            ax.plot(items, [entry.get("recommend_p99_ms") for entry in sizes], marker="s", label="p99")
            ax.legend(fontsize=8)
        ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("catalogue items")
        ax.grid(True, alpha=0.3)
    recalls = ", ".join(f"{entry['items']:.0e}: " + ("n/a" if entry.get("index_recall_at_200") is None
                                                   else f"{entry['index_recall_at_200']:.3f}") for entry in sizes)
    fig.suptitle(f"edgerec cost vs catalogue size (index recall@200 {recalls})", fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)
