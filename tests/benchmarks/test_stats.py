"""Harness statistics on an injected fake clock: exact durations, exact percentiles."""
import math

import numpy as np
import pytest

from edgerec.benchmarks.stats import (LoopLimits, interleaved_calls, percentile, ratio, summarize,
                                      timed_calls)


class FakeClock:
    """Integer-nanosecond clock that only moves when a fake workload advances it."""

    def __init__(self):
        self.now = 0

    def __call__(self):
        return self.now

    def work(self, durations_ns):
        it = iter(durations_ns)

        def call():
            self.now += next(it)
        return call


def test_percentile_matches_numpy_linear():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100, 1001):
        values = sorted(rng.integers(1, 10_000, n).tolist())
        for q in (0, 50, 90, 99, 99.9, 100):
            assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_percentile_rejects_bad_input():
    with pytest.raises(ValueError, match="Expected"):
        percentile([], 50)
    with pytest.raises(ValueError, match="Expected a percentile"):
        percentile([1, 2], 101)


def test_summarize_exact_values():
    # 1..100 ms: p50 = 50.5, p90 = 90.1, p99 = 99.01, p99.9 = 99.901 (linear interpolation)
    durations = [ms * 1_000_000 for ms in range(1, 101)]
    s = summarize(list(reversed(durations)), batch=4)
    assert s.iterations == 100
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.p999_ms == pytest.approx(99.901)
    assert s.mean_ms == pytest.approx(50.5)
    assert s.stdev_ms == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert (s.min_ms, s.max_ms) == (1.0, 100.0)
    # 100 calls of 4 rows in 5.05 s
    assert s.total_s == pytest.approx(5.05)
    assert s.rows_per_s == pytest.approx(400 / 5.05)


def test_summarize_validates():
    with pytest.raises(ValueError, match="at least one"):
        summarize([])
    with pytest.raises(ValueError, match="batch"):
        summarize([1], batch=0)
    with pytest.raises(ValueError, match="non-negative"):
        summarize([5, -1])


def test_timed_calls_stops_at_budget():
    clock = FakeClock()
    call = clock.work([1_000_000] * 1000)  # 1 ms per call
    durations = timed_calls(call, LoopLimits(budget_s=0.010, max_iters=1000, min_iters=1, warmup_iters=0), clock)
    assert durations == [1_000_000] * 10


def test_timed_calls_stops_at_iteration_count():
    clock = FakeClock()
    call = clock.work([2_000_000] * 100)
    durations = timed_calls(call, LoopLimits(budget_s=10.0, max_iters=7, min_iters=1), clock)
    assert durations == [2_000_000] * 7


def test_timed_calls_honours_min_iters_past_budget():
    clock = FakeClock()
    call = clock.work([50_000_000] * 100)  # each call alone overruns a 10 ms budget
    durations = timed_calls(call, LoopLimits(budget_s=0.010, max_iters=100, min_iters=5), clock)
    assert len(durations) == 5


def test_interleaved_calls_alternates_and_shares_budget():
    clock = FakeClock()
    order = []

    def make(name, ns):
        def call():
            order.append(name)
            clock.now += ns
        return call

    limits = LoopLimits(budget_s=0.012, max_iters=1000, min_iters=1)
    out = interleaved_calls({"a": make("a", 1_000_000), "b": make("b", 2_000_000)}, limits, chunk=2, clock=clock)
    assert set(out["a"]) == {1_000_000} and set(out["b"]) == {2_000_000}
    # rounds of 2+2 calls = 6 ms each; total budget 2 × 12 ms -> 4 rounds
    assert len(out["a"]) == len(out["b"]) == 8
    # the side that goes first rotates every round
    assert order[:4] == ["a", "a", "b", "b"] and order[4:8] == ["b", "b", "a", "a"]


def test_interleaved_calls_caps_each_side():
    clock = FakeClock()
    out = interleaved_calls({"a": clock.work([10] * 100), "b": clock.work([10] * 100)},
                            LoopLimits(budget_s=100.0, max_iters=5, min_iters=1), chunk=3, clock=clock)
    assert len(out["a"]) == len(out["b"]) == 5


def test_loop_limits_validate():
    with pytest.raises(ValueError, match="budget_s"):
        LoopLimits(budget_s=0)
    with pytest.raises(ValueError, match="min_iters"):
        LoopLimits(max_iters=2, min_iters=3)
    with pytest.raises(ValueError, match="warmup_iters"):
        LoopLimits(warmup_iters=-1)


def test_ratio():
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None and ratio(1.0, 0) is None
    assert math.isclose(ratio(1, 3), 1 / 3)


def test_cpu_time_is_collected_per_call_beside_wall_time():
    wall, cpu_clock = FakeClock(), FakeClock()

    def call():                      # 3 ms on the wall, 1 ms of it on a core (the rest waiting)
        wall.now += 3_000_000
        cpu_clock.now += 1_000_000

    cpu = []
    durations = timed_calls(call, LoopLimits(budget_s=10.0, max_iters=4, min_iters=1), wall, cpu=cpu,
                            cpu_clock=cpu_clock)
    assert durations == [3_000_000] * 4 and cpu == [1_000_000] * 4

    def slow():
        wall.now += 2_000_000
        cpu_clock.now += 2_000_000

    spent = {}
    out = interleaved_calls({"a": call, "b": slow}, LoopLimits(budget_s=100.0, max_iters=3, min_iters=1), chunk=2,
                            clock=wall, cpu=spent, cpu_clock=cpu_clock)
    assert out["a"] == [3_000_000] * 3 and spent["a"] == [1_000_000] * 3 and spent["b"] == [2_000_000] * 3
