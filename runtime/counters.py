"""What a `Predictor` counts (calls, rows, errors, swaps, out-of-vocabulary rows, seconds).

The hot path appends its per-call figures to plain lists without a lock (``list.append`` is
atomic in CPython); `CallCounters.fold` moves them into the totals under the lock, every
`FOLD_EVERY` calls and whenever the totals are read.
"""
from __future__ import annotations

import threading

FOLD_EVERY = 1024   # calls between folds of the lock-free per-call figures into the totals
COUNTERS = ("predict_rows", "candidate_rows", "oov_rows", "calls", "errors", "swaps", "failed_swaps")


class CallCounters:
    """Totals of one predictor. ``call_seconds`` / ``predict_rows`` take lock-free appends."""

    def __init__(self):
        self._lock = threading.Lock()
        self._totals: dict = {**{name: 0 for name in COUNTERS}, "seconds": 0.0}
        self.call_seconds: list = []
        self.predict_rows: list = []

    def add(self, key: str, n) -> None:
        with self._lock:
            self._totals[key] += n

    def fold(self) -> None:
        """Move the appended figures into the totals (pop is atomic: nothing is lost or counted
        twice while other threads keep appending)."""
        with self._lock:
            totals = self._totals
            for source, calls_key, total_key in ((self.call_seconds, "calls", "seconds"),
                                                 (self.predict_rows, None, "predict_rows")):
                pop, n, total = source.pop, 0, 0
                try:
                    while True:
                        total += pop()
                        n += 1
                except IndexError:
                    pass
                if calls_key:
                    totals[calls_key] += n
                totals[total_key] += total

    def snapshot(self) -> dict:
        self.fold()
        with self._lock:
            return dict(self._totals)
