"""The timing harness: one record per (scenario × backend × variant × batch × threads).

A configuration is declared as a JSON-able `CaseSpec`; a *builder* (import string
``"module:function"``, default `edgerec.benchmarks.scenarios.build_case`) turns it into a
`Prepared` callable. For every case the harness measures

* ``load_ms``  – the builder's time (model/session load, input preparation),
* ``first_ms`` – the first call (lazy allocations, graph tracing),
* warm-up calls (untimed), then steady-state calls timed with `time.perf_counter_ns` until the
  time budget or the iteration count ends, whichever comes first,
* ``cpu_p50_ms`` / ``cpu_mean_ms`` – the same calls' process CPU time (all threads): on a shared
  machine wall time includes the wait for a core, CPU time does not,
* ``peak_rss_mb`` – the benchmark process's peak RSS after the case (with ``isolate=True`` each
  group runs in its own subprocess, so the figure belongs to that group alone). It includes the
  harness, the raw baseline and, once they have run, TensorFlow's Keras baselines: the memory an
  app pays is measured separately, in a runtime-only process (`edgerec.benchmarks.memory`).

Cases sharing a ``group`` are timed interleaved (A/B rounds) so their ratio is fair.

Examples:
    >>> harness = Harness(HarnessConfig(limits=LoopLimits(budget_s=0.2)))
    >>> records = harness.run(specs)        # list of dicts, see `RECORD_KEYS`
"""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

from edgerec.runtime.errors import expected
from edgerec.runtime.progress import Progress

from .machine import current_rss_mb, peak_rss_mb
from .stats import NS_PER_MS, Clock, LoopLimits, interleaved_calls, summarize, timed_calls

DEFAULT_BUILDER = "edgerec.benchmarks.scenarios:build_case"
RECORD_KEYS = ("scenario", "backend", "variant", "batch", "threads", "p50_ms", "p90_ms", "p99_ms", "p999_ms",
               "mean_ms", "stdev_ms", "rows_per_s", "load_ms", "first_ms", "peak_rss_mb", "size_bytes", "delta_auc")


@dataclass(frozen=True)
class CaseSpec:
    """One configuration to time. ``params`` must be JSON-serialisable (it crosses processes)."""

    scenario: str
    backend: str
    variant: str
    batch: int = 1
    threads: int = 1
    group: str = ""
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("scenario", "backend", "variant"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(expected(f"{name} as a non-empty string", getattr(self, name)))
        for name in ("batch", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(expected(f"{name} as a positive int", value))

    @property
    def key(self) -> str:
        return f"{self.scenario}/{self.backend}/{self.variant}/b{self.batch}/t{self.threads}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CaseSpec":
        return cls(**data)


@dataclass
class Prepared:
    """What a builder returns: the call to time plus facts for the record."""

    call: Callable[[], object]
    close: Callable[[], None] = lambda: None
    size_bytes: int | None = None
    delta_auc: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class HarnessConfig:
    """Args:
        limits: loop limits per configuration (budget, iterations, warm-up).
        isolate: run each group in a fresh subprocess (clean peak RSS, no cross-talk).
        builder: ``"module:function"`` turning a `CaseSpec` into a `Prepared`.
        chunk: calls per side per round when a group is timed interleaved.
        progress: report progress on stderr (a bar on a terminal, plain periodic lines elsewhere).
    """

    limits: LoopLimits = LoopLimits()
    isolate: bool = False
    builder: str = DEFAULT_BUILDER
    chunk: int = 8
    progress: bool = True
    subprocess_timeout_s: float = 900.0


def resolve_builder(path: str) -> Callable[[CaseSpec], Prepared]:
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(expected("a builder as 'module:function'", path))
    return getattr(importlib.import_module(module), name)


def group_specs(specs: Iterable[CaseSpec]) -> list[list[CaseSpec]]:
    """Cases with the same non-empty ``group`` form one interleaved group; the rest run alone."""
    groups: dict[str, list[CaseSpec]] = {}
    order: list[list[CaseSpec]] = []
    for spec in specs:
        if not spec.group:
            order.append([spec])
        elif spec.group in groups:
            groups[spec.group].append(spec)
        else:
            groups[spec.group] = [spec]
            order.append(groups[spec.group])
    return order


class Harness:
    """Runs `CaseSpec`s and returns flat records (dicts with `RECORD_KEYS` and more)."""

    def __init__(self, config: HarnessConfig = HarnessConfig(), clock: Clock = time.perf_counter_ns,
                 builder: Callable[[CaseSpec], Prepared] | None = None):
        if not isinstance(config, HarnessConfig):
            raise ValueError(expected("a HarnessConfig", type(config).__name__))
        self.config = config
        self.clock = clock
        self._builder = builder

    @property
    def builder(self) -> Callable[[CaseSpec], Prepared]:
        if self._builder is None:
            self._builder = resolve_builder(self.config.builder)
        return self._builder

    def run(self, specs: Sequence[CaseSpec], description: str = "benchmark") -> list[dict]:
        specs = list(specs)
        for spec in specs:
            if not isinstance(spec, CaseSpec):
                raise ValueError(expected("CaseSpec items", type(spec).__name__))
        groups = group_specs(specs)
        records: list[dict] = []
        with Progress(total=len(specs), desc=description, unit="cfg", enabled=self.config.progress) as bar:
            for group in groups:
                if self.config.isolate:
                    records.extend(self._run_isolated(group))
                else:
                    records.extend(self.run_group(group))
                bar.update(len(group), postfix=group[0].key[:60])
        return records

    # -- one group, in this process --------------------------------------------------------
    def run_group(self, group: Sequence[CaseSpec]) -> list[dict]:
        clock, limits = self.clock, self.config.limits
        prepared: dict[str, Prepared] = {}
        records: dict[str, dict] = {}
        try:
            for spec in group:
                record = _base_record(spec)
                records[spec.key] = record
                try:
                    start = clock()
                    ready = self.builder(spec)
                    record["load_ms"] = (clock() - start) / NS_PER_MS
                    start = clock()
                    ready.call()
                    record["first_ms"] = (clock() - start) / NS_PER_MS
                    for _ in range(limits.warmup_iters):
                        ready.call()
                except Exception as err:  # one failing configuration must not sink the report
                    record["error"] = f"{type(err).__name__}: {err}"
                    record["traceback"] = traceback.format_exc(limit=6)
                    continue
                prepared[spec.key] = ready
                record.update(size_bytes=ready.size_bytes, delta_auc=ready.delta_auc, **ready.extra)
            if not prepared:
                return list(records.values())
            try:
                cpu: dict[str, list[int]] = {}
                if len(prepared) == 1:
                    (key, ready), = prepared.items()
                    timings = {key: timed_calls(ready.call, limits, clock, cpu=cpu.setdefault(key, []))}
                else:
                    timings = interleaved_calls({k: p.call for k, p in prepared.items()}, limits,
                                                self.config.chunk, clock, cpu=cpu)
            except Exception as err:
                for key in prepared:
                    records[key]["error"] = f"{type(err).__name__}: {err}"
                return list(records.values())
            for key, durations in timings.items():
                record = records[key]
                record.update(summarize(durations, record["batch"]).to_dict())
                if cpu.get(key):
                    spent = summarize(cpu[key], record["batch"])
                    record.update(cpu_p50_ms=spent.p50_ms, cpu_mean_ms=spent.mean_ms)
                record["interleaved"] = len(timings) > 1
        finally:
            for ready in prepared.values():
                try:
                    ready.close()
                except Exception:
                    pass
        peak, rss = peak_rss_mb(), current_rss_mb()
        for record in records.values():
            record["peak_rss_mb"] = None if peak is None else round(peak, 1)
            record["rss_mb"] = None if rss is None else round(rss, 1)
            record["isolated"] = self.config.isolate
        return list(records.values())

    # -- one group, in a fresh interpreter -------------------------------------------------
    def _run_isolated(self, group: Sequence[CaseSpec]) -> list[dict]:
        payload = {"specs": [s.to_dict() for s in group], "limits": asdict(self.config.limits),
                   "builder": self.config.builder, "chunk": self.config.chunk}
        try:
            done = subprocess.run([sys.executable, "-m", "edgerec.benchmarks.harness"], input=json.dumps(payload),
                                  capture_output=True, text=True, timeout=self.config.subprocess_timeout_s)
        except subprocess.TimeoutExpired:
            return [dict(_base_record(s), error=f"timed out after {self.config.subprocess_timeout_s:.0f} s",
                         isolated=True) for s in group]
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return [dict(_base_record(s), error=f"subprocess exited {done.returncode}: {reason}", isolated=True)
                    for s in group]
        return json.loads(lines[-1])["records"]


def _base_record(spec: CaseSpec) -> dict:
    record = {key: None for key in RECORD_KEYS}
    record.update(scenario=spec.scenario, backend=spec.backend, variant=spec.variant, batch=spec.batch,
                  threads=spec.threads, group=spec.group or None)
    record.update({k: v for k, v in spec.params.items() if isinstance(v, (int, float, str, bool)) and k not in record
                   and k not in ("bundle", "keras_dir", "model_path")})
    return record


def _child_main() -> int:
    """Entry of an isolated group: JSON payload on stdin, one JSON line of records on stdout."""
    payload = json.loads(sys.stdin.read())
    config = HarnessConfig(limits=LoopLimits(**payload["limits"]), builder=payload["builder"],
                           chunk=int(payload["chunk"]), progress=False, isolate=True)
    harness = Harness(config)
    records = harness.run_group([CaseSpec.from_dict(s) for s in payload["specs"]])
    sys.stdout.write("\n" + json.dumps({"records": records}, default=_json_default) + "\n")
    return 0


def _json_default(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
    except ImportError:
        pass
    return str(value)


if __name__ == "__main__":
    sys.exit(_child_main())
