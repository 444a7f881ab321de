"""Latency statistics and timing loops, independent of any backend.

Every loop takes an injectable ``clock`` (a zero-argument callable returning integer
nanoseconds, `time.perf_counter_ns` by default) so the statistics are testable exactly with a
fake clock.

Percentiles use linear interpolation between closest ranks (numpy's default ``"linear"``
method): for ``n`` sorted samples, percentile ``q`` sits at rank ``q / 100 * (n - 1)``.

Examples:
    >>> summarize([1_000_000, 2_000_000, 3_000_000], batch=2).p50_ms
    2.0
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

from edgerec.runtime.errors import expected

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
Clock = Callable[[], int]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 ≤ q ≤ 100) of already sorted values, linearly interpolated."""
    if not 0 <= q <= 100:
        raise ValueError(expected("a percentile between 0 and 100", q))
    n = len(sorted_values)
    if n == 0:
        raise ValueError(expected("at least one sample", 0))
    rank = q / 100 * (n - 1)
    low = math.floor(rank)
    high = min(low + 1, n - 1)
    frac = rank - low
    return float(sorted_values[low]) + (float(sorted_values[high]) - float(sorted_values[low])) * frac


@dataclass(frozen=True)
class LatencySummary:
    """Steady-state latency of one configuration (milliseconds per call) and its throughput."""

    iterations: int
    batch: int
    mean_ms: float
    stdev_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    rows_per_s: float
    total_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(durations_ns: Sequence[int], batch: int = 1) -> LatencySummary:
    """Summarise per-call durations in nanoseconds; ``batch`` rows are scored per call."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(expected("batch as a positive int", batch))
    values = [int(d) for d in durations_ns]
    if not values:
        raise ValueError(expected("at least one timed call", 0))
    if min(values) < 0:
        raise ValueError(expected("non-negative durations", min(values)))
    n = len(values)
    ordered = sorted(values)
    total = sum(values)
    mean = total / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    ms = lambda ns: ns / NS_PER_MS  # noqa: E731
    return LatencySummary(
        iterations=n, batch=batch, mean_ms=ms(mean), stdev_ms=ms(math.sqrt(variance)),
        min_ms=ms(ordered[0]), max_ms=ms(ordered[-1]),
        p50_ms=ms(percentile(ordered, 50)), p90_ms=ms(percentile(ordered, 90)),
        p99_ms=ms(percentile(ordered, 99)), p999_ms=ms(percentile(ordered, 99.9)),
        rows_per_s=(batch * n * NS_PER_S / total) if total > 0 else float("inf"),
        total_s=total / NS_PER_S,
    )


@dataclass(frozen=True)
class LoopLimits:
    """When a steady-state loop stops: after ``budget_s`` or ``max_iters``, whichever comes first.

    Args:
        budget_s: wall-clock budget of the timed loop (per configuration).
        max_iters: most timed calls per configuration.
        min_iters: fewest timed calls, even past the budget (percentiles need samples).
        warmup_iters: untimed calls after the first call, before timing starts.
    """

    budget_s: float = 1.0
    max_iters: int = 5000
    min_iters: int = 5
    warmup_iters: int = 10

    def __post_init__(self):
        if not (isinstance(self.budget_s, (int, float)) and self.budget_s > 0 and math.isfinite(self.budget_s)):
            raise ValueError(expected("budget_s as a positive number of seconds", self.budget_s))
        for name in ("max_iters", "min_iters", "warmup_iters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "warmup_iters" else 1):
                raise ValueError(expected(f"{name} as a {'non-negative' if name == 'warmup_iters' else 'positive'} int", value))
        if self.min_iters > self.max_iters:
            raise ValueError(expected("min_iters <= max_iters", (self.min_iters, self.max_iters)))


def timed_calls(fn: Callable[[], object], limits: LoopLimits, clock: Clock = time.perf_counter_ns,
                cpu: list | None = None, cpu_clock: Clock = time.process_time_ns) -> list[int]:
    """Call ``fn`` repeatedly and return each call's duration in ns (budget or count, first wins).

    ``cpu``, when given, receives each call's process CPU time in ns (every thread of the process):
    on a shared machine wall time includes waiting for a core, CPU time does not.
    """
    deadline = clock() + int(limits.budget_s * NS_PER_S)
    durations: list[int] = []
    while len(durations) < limits.max_iters:
        cpu_start = cpu_clock() if cpu is not None else 0
        start = clock()
        fn()
        end = clock()
        if cpu is not None:
            cpu.append(cpu_clock() - cpu_start)
        durations.append(end - start)
        if end >= deadline and len(durations) >= limits.min_iters:
            break
    return durations


def interleaved_calls(fns: Mapping[str, Callable[[], object]], limits: LoopLimits, chunk: int = 8,
                      clock: Clock = time.perf_counter_ns, cpu: dict | None = None,
                      cpu_clock: Clock = time.process_time_ns) -> dict[str, list[int]]:
    """Time several callables A/B style: rounds of ``chunk`` calls each, rotating who goes first.

    Sub-millisecond timings drift by up to 2× between runs (CPU frequency, neighbours), so a
    comparison is only fair when both sides share the same moments. The budget is
    ``limits.budget_s`` per callable; each side stops at ``max_iters``. ``cpu``, when given, is
    filled with ``{name: [process CPU ns per call]}``.
    """
    if not fns:
        raise ValueError(expected("at least one callable to time", 0))
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(expected("chunk as a positive int", chunk))
    names = list(fns)
    durations: dict[str, list[int]] = {name: [] for name in names}
    deadline = clock() + int(limits.budget_s * NS_PER_S * len(names))
    round_index = 0
    while True:
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            fn, bucket = fns[name], durations[name]
            cpu_bucket = cpu.setdefault(name, []) if cpu is not None else None
            for _ in range(min(chunk, limits.max_iters - len(bucket))):
                cpu_start = cpu_clock() if cpu_bucket is not None else 0
                start = clock()
                fn()
                end = clock()
                if cpu_bucket is not None:
                    cpu_bucket.append(cpu_clock() - cpu_start)
                bucket.append(end - start)
        round_index += 1
        if all(len(b) >= limits.max_iters for b in durations.values()):
            break
        if clock() >= deadline and all(len(b) >= limits.min_iters for b in durations.values()):
            break
    return durations


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return float(numerator) / float(denominator)
