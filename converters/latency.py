"""Latency of exported artifacts for selection: measured here, or read from the target device's bench.

`measure_latencies` loads every candidate of a (backend, part) group once through
`edgerec.runtime.backends` (the code apps run), then runs them in interleaved rounds (A, B, C, A,
B, C, …) at each batch size so drift on a shared machine hits all of them alike, and keeps the
median per candidate and batch size. `bench_latencies` reads ``edgerec bench`` results measured on
the target (``edgerec export --latency-from BENCH.json``) instead.

Examples:
    >>> latencies = measure_latencies(artifacts, {"fused": data.inputs})  # doctest: +SKIP
    >>> latencies["fused_dynamic.tflite"]  # doctest: +SKIP
    {1: 0.015, 256: 2.0}
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from edgerec.runtime.contract import USER_KEYS, USER_MASK, USER_POOLED, USER_STATE
from edgerec.runtime.errors import expected

from .validate import BACKEND_FOR_FORMAT, DeployableArtifact, ValidationError, as_deployable


USER_OUTPUTS = frozenset({USER_STATE, USER_MASK, USER_KEYS, USER_POOLED})


@dataclass(frozen=True)
class LatencyConfig:
    """How latency is measured.

    Args:
        batch_sizes: batch sizes timed (the first is the "online" one, the last the scoring one).
        rounds: interleaved rounds; the median over rounds is reported.
        min_time_s: each timed sample repeats the call until at least this long (sub-ms calls).
        warmup: untimed calls per candidate and batch size before the rounds.
        num_threads: backend threads (1 = the phone-like setting).
    """

    batch_sizes: tuple[int, ...] = (1, 256)
    rounds: int = 7
    min_time_s: float = 0.01
    warmup: int = 3
    num_threads: int = 1

    def __post_init__(self):
        if not self.batch_sizes or any(not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            raise ValidationError(expected("batch_sizes as positive ints", self.batch_sizes))
        if self.rounds < 1 or self.warmup < 0 or self.min_time_s < 0:
            raise ValidationError(expected("rounds >= 1, warmup >= 0, min_time_s >= 0",
                                           (self.rounds, self.warmup, self.min_time_s)))


def latency_feeds(declared, arrays: Mapping[str, np.ndarray], batch: int, one_row=frozenset(),
                  state_row: int = 0) -> dict[str, np.ndarray]:
    """Feeds of ``batch`` rows for the declared inputs, taken from real rows (tiled if short).

    Inputs absent from ``arrays`` (none for edgerec parts when user outputs are given) get zeros;
    inputs in ``one_row`` get row ``state_row`` (one user's state, as the runtime feeds a scorer
    that broadcasts it: `edgerec.runtime.scores.probe_scorer`).
    """
    feeds = {}
    for spec in declared:
        if spec.name in one_row and spec.name in arrays and len(arrays[spec.name]):
            source = np.asarray(arrays[spec.name])
            row = min(state_row, len(source) - 1)
            feeds[spec.name] = np.ascontiguousarray(source[row:row + 1], dtype=spec.dtype)
        elif spec.name in arrays and len(arrays[spec.name]):
            source = np.asarray(arrays[spec.name])
            rows = np.resize(np.arange(len(source)), batch)
            feeds[spec.name] = np.ascontiguousarray(source[rows], dtype=spec.dtype)
        else:
            shape = [batch] + [d if d is not None else 1 for d in spec.shape[1:]]
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feeds


def measure_latencies(artifacts: Sequence, arrays_by_part: Mapping[str, Mapping[str, np.ndarray]],
                      config: LatencyConfig = LatencyConfig(), progress=None) -> dict[str, dict[int, float]]:
    """Median milliseconds per call, ``{file: {batch: ms}}``, interleaved within each (backend, part)."""
    from edgerec.runtime.backends import create_backend

    groups: dict[tuple, list[DeployableArtifact]] = {}
    for art in (as_deployable(a) for a in artifacts):
        groups.setdefault((BACKEND_FOR_FORMAT[art.format], art.part), []).append(art)
    result: dict[str, dict[int, float]] = {}
    for (backend_name, part), members in groups.items():
        if progress:
            progress(f"timing {len(members)} {part} artifact(s) on {backend_name}")
        loaded = [create_backend(backend_name, c.path, num_threads=config.num_threads) for c in members]
        try:
            arrays = arrays_by_part.get(part, {})
            calls = {(i, b): _serving_call(be, part, arrays, b) for i, be in enumerate(loaded)
                     for b in config.batch_sizes}
            samples = {key: [] for key in calls}
            for run, feed in calls.values():
                for _ in range(config.warmup):
                    run(feed)
            for _ in range(config.rounds):
                for b in config.batch_sizes:
                    for i in range(len(loaded)):
                        samples[(i, b)].append(_time_call(*calls[(i, b)], config.min_time_s))
            for i, art in enumerate(members):
                result[art.file] = {b: float(np.median(samples[(i, b)])) for b in config.batch_sizes}
        finally:
            for be in loaded:
                be.close()
    return result


def _serving_call(backend, part: str, arrays: Mapping[str, np.ndarray], batch: int) -> tuple:
    """``(run, feeds)`` timing a part as it serves: a scorer gets one user's state (the
    user-encoder outputs of the user with the median history length) as 1 row beside ``batch``
    candidates where it broadcasts that state to the same outputs (the runtime's own test,
    `scores.broadcast_matches`), else the state repeated (an older export), and that state without
    its padded positions where the runtime would cut them (`runtime.positions`), so a scorer of
    fixed sizes is not compared with a length-free one at the full length. 1-row-state feeds go
    through ``run_validated`` (``run`` takes one batch size)."""
    from edgerec.runtime.positions import position_inputs, trim_matches, trim_positions
    from edgerec.runtime.scores import broadcast_matches

    repeated = latency_feeds(backend.inputs, arrays, batch)
    state = {t.name for t in backend.inputs} & USER_OUTPUTS
    if part != "scorer" or batch == 1 or not state:
        return backend.run, repeated
    once = latency_feeds(backend.inputs, arrays, batch, one_row=state, state_row=_median_user(arrays))
    try:
        broadcasts = broadcast_matches(backend.run_validated, once, state, rows=batch)
    except Exception:  # noqa: BLE001 - a scorer that cannot take the 1-row state fails in its backend
        broadcasts = False
    if not broadcasts:
        return backend.run, repeated
    names = position_inputs(backend.inputs, state)
    if names and trim_matches(backend.run_validated, once, names):
        once = trim_positions(once, names)
    return backend.run_validated, once


def _median_user(arrays: Mapping[str, np.ndarray]) -> int:
    """The row whose ``user_mask`` holds the median number of valid positions (0 without one)."""
    mask = arrays.get(USER_MASK)
    if mask is None or np.ndim(mask) != 2 or not len(mask):
        return 0
    counts = np.count_nonzero(np.asarray(mask), axis=1)
    return int(np.argsort(counts, kind="stable")[len(counts) // 2])


def _time_call(run, feed, min_time_s: float) -> float:
    calls, start = 0, time.perf_counter()
    while True:
        run(feed)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time_s:
            return elapsed * 1000.0 / calls


def bench_latencies(bench_json, artifacts: Sequence, batch_sizes: Sequence[int] | None = None) -> dict:
    """``{file: {batch: p50 ms}}`` from an ``edgerec bench`` result (measured on the target device).

    Rows are matched to artifacts by file name (bench's ``variant``): the ``tensor`` scenario through
    edgerec's backend (``edgerec_<backend>``; a raw backend row when that is missing), fewest threads.
    Every ``fused`` artifact must be covered at every batch size in ``batch_sizes`` (default: the
    batch sizes the bench measured for all of them); split parts, which bench does not time, are
    absent from the result (time them here).

    Raises:
        ValidationError: the file is not a bench result, or it misses candidates (run
            ``edgerec bench BUNDLE`` on the target: it times every fused artifact).
    """
    import json

    path = Path(bench_json)
    try:
        data = json.loads(path.read_text("utf-8"))
        records = [r for r in data["results"] if isinstance(r, dict)]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValidationError(expected("an `edgerec bench` bench.json with a results list", f"{path}: {err}")) from None
    found: dict[str, dict[int, tuple]] = {}
    for rec in records:
        if rec.get("scenario") != "tensor" or rec.get("error") or rec.get("p50_ms") is None:
            continue
        file, backend = str(rec.get("variant")), str(rec.get("backend", ""))
        rank = (0 if backend.startswith("edgerec_") else 1, int(rec.get("threads") or 1))
        slot = found.setdefault(file, {})
        batch = int(rec["batch"])
        if batch not in slot or rank < slot[batch][0]:
            slot[batch] = (rank, float(rec["p50_ms"]))
    fused = [a for a in (as_deployable(x) for x in artifacts) if a.part == "fused"]
    wanted = set(batch_sizes) if batch_sizes else (set.intersection(*(set(found.get(a.file, {})) for a in fused))
                                                   if fused else set())
    missing = sorted(f"{a.file} (batch {sorted(wanted - set(found.get(a.file, {}))) or 'any'})" for a in fused
                     if a.file not in found or not wanted or wanted - set(found[a.file]))
    if missing:
        raise ValidationError(expected(f"{path} to time every fused candidate (run `edgerec bench BUNDLE` on the "
                                       "target on a bundle exported with the same variants)", f"missing {missing}"))
    return {a.file: {b: found[a.file][b][1] for b in sorted(wanted)} for a in fused}
