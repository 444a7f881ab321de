"""Where the time goes: cProfile over a prepared call, summarised as the top functions.

Examples:
    >>> entry = profile_calls(prepared.call, calls=2000)
    >>> entry["top"][0]["function"]          # the function with the most own time
"""
from __future__ import annotations

import cProfile
import pstats
import time
from typing import Callable

from edgerec.runtime.errors import expected


def profile_calls(fn: Callable[[], object], calls: int = 1000, max_seconds: float = 2.0, top: int = 12) -> dict:
    """Profile ``calls`` calls of ``fn`` (fewer if ``max_seconds`` runs out); return the top entries.

    Each entry: ``function`` (file:line(name), shortened), ``ncalls``, ``tottime_ms`` (own time),
    ``cumtime_ms`` and ``share`` (own time / total profiled time).
    """
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
        raise ValueError(expected("calls as a positive int", calls))
    profiler = cProfile.Profile()
    done = 0
    deadline = time.perf_counter() + max_seconds
    profiler.enable()
    try:
        while done < calls:
            fn()
            done += 1
            if time.perf_counter() > deadline:
                break
    finally:
        profiler.disable()
    stats = pstats.Stats(profiler)
    total = sum(entry[2] for entry in stats.stats.values()) or 1e-12
    rows = []
    for (filename, line, name), (_, ncalls, tottime, cumtime, _) in stats.stats.items():
        rows.append({"function": _short(filename, line, name), "ncalls": ncalls,
                     "tottime_ms": tottime * 1e3, "cumtime_ms": cumtime * 1e3, "share": tottime / total})
    rows.sort(key=lambda r: r["tottime_ms"], reverse=True)
    return {"calls": done, "total_ms": total * 1e3, "per_call_ms": total * 1e3 / max(done, 1), "top": rows[:top]}


def _short(filename: str, line: int, name: str) -> str:
    if filename == "~":
        return name  # built-in
    parts = filename.replace("\\", "/").split("/")
    for anchor in ("site-packages", "edgerec", "work"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + 1:]
            break
    return f"{'/'.join(parts[-2:])}:{line}({name})"
