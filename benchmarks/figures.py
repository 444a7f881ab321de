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
