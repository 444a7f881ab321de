"""GitHub Markdown tables for the benchmark reports (bench.md, the load-test section).

Examples:
    >>> print(markdown_table([{"backend": "litert", "p50_ms": 0.0123}], (("backend", "backend"), ("p50_ms", "p50 ms"))))
    | backend | p50 ms |
    |---|---|
    | litert | 0.0123 |
"""
from __future__ import annotations

import math
from typing import Sequence


def format_cell(key: str, value) -> str:
    """One cell: None as an en dash, booleans as yes/no, sizes in KB, ΔAUC signed, floats rounded
    to what the figure's precision supports."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key == "size_bytes":
        return f"{value / 1024:,.1f}"
    if key == "delta_auc":
        return f"{value:+.4f}"
    if key == "rows_per_s":
        return f"{value:,.0f}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4f}" if abs(value) < 1 else f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """A GitHub Markdown table; ``columns`` are (key, header) pairs."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(format_cell(k, row.get(k)) for k, _ in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])
