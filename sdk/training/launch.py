"""Local multi-worker launcher: N training processes on loopback, each with its own TF_CONFIG.

`launch_local_workers` picks free ports on 127.0.0.1, starts every worker, stops the others as
soon as one fails, and stops stragglers at the deadline (terminate, then kill).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edgerec.runtime.errors import EdgeRecError, SpecError, expected

TF_CONFIG = "TF_CONFIG"


class DistributedError(EdgeRecError, RuntimeError):
    """A strategy cannot be set up here, or a worker of a local cluster failed or timed out."""


@dataclass(frozen=True)
class WorkerResult:
    """One local worker's exit: ``returncode`` is None when it was killed at the deadline."""

    index: int
    returncode: int | None
    output: str
    seconds: float
    timed_out: bool
    killed: bool


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free TCP ports on ``host`` (bound together, then released)."""
    import socket

    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    except OSError as err:
        raise DistributedError(expected(f"{count} free TCP ports on {host}", str(err))) from None
    finally:
        for sock in sockets:
            sock.close()


def local_tf_config(ports: list[int], index: int, host: str = "127.0.0.1") -> dict:
    """``TF_CONFIG`` of worker ``index`` in a worker-only cluster on ``host`` (worker 0 is chief)."""
    return {"cluster": {"worker": [f"{host}:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}


def _stop(proc) -> None:
    import signal
    import subprocess

    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)          # its own session: the worker and its children only
        except (ProcessLookupError, PermissionError):
            proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:      # escalate to SIGKILL
            continue


def launch_local_workers(count: int, argv: list[str], *, timeout: float = 600.0, env: dict | None = None,
                         cwd=None, host: str = "127.0.0.1", check: bool = True) -> list[WorkerResult]:
    """Run ``argv`` as ``count`` worker processes of one local cluster and wait for them.

    Each worker gets ``TF_CONFIG`` for its index (ports chosen free on ``host``). When one worker
    fails the others are stopped (they would wait on collectives forever); at ``timeout`` seconds
    every worker still running is stopped (SIGTERM, then SIGKILL).

    Args:
        count: number of workers (>= 1).
        argv: the full command of one worker, e.g. ``[sys.executable, "-m", "edgerec.sdk.training.worker", JOB_JSON]``.
        timeout: seconds for the whole cluster.
        env: base environment (default ``os.environ``).
        check: raise `DistributedError` (with each worker's output tail) unless all exit 0.

    Examples:
        >>> results = launch_local_workers(2, [sys.executable, "train.py"], timeout=120)
        >>> [r.returncode for r in results]
        [0, 0]
    """
    import subprocess

    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SpecError(expected("a worker count >= 1", count))
    if not isinstance(argv, (list, tuple)) or not argv or not all(isinstance(a, str) for a in argv):
        raise SpecError(expected("argv as a non-empty list of strings", argv))
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise SpecError(expected("a positive timeout in seconds", timeout))
    ports = free_ports(count, host)
    base = dict(os.environ if env is None else env)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgerec-workers-") as logs:
        procs, handles, ended = [], [], {}
        try:
            for index in range(count):
                worker_env = dict(base, **{TF_CONFIG: json.dumps(local_tf_config(ports, index, host))})
                handle = open(Path(logs) / f"worker{index}.log", "w+b")
                handles.append(handle)
                procs.append(subprocess.Popen(list(argv), env=worker_env, cwd=cwd, stdout=handle,
                                              stderr=subprocess.STDOUT, start_new_session=True))
            failed = timed_out = False
            while len(ended) < count:
                for index, proc in enumerate(procs):
                    if index not in ended and proc.poll() is not None:
                        ended[index] = time.monotonic() - start
                        failed = failed or proc.returncode != 0
                timed_out = time.monotonic() - start > timeout
                if failed or timed_out:
                    break
                time.sleep(0.1)
        finally:
            running = [i for i, p in enumerate(procs) if p.poll() is None]
            for index in running:
                _stop(procs[index])
        results = []
        for index, (proc, handle) in enumerate(zip(procs, handles)):
            handle.seek(0)
            output = handle.read().decode("utf-8", "replace")
            handle.close()
            killed = index in running
            results.append(WorkerResult(index, None if killed else proc.returncode, output,
                                        round(ended.get(index, time.monotonic() - start), 2),
                                        timed_out and killed, killed))
    if check and any(r.returncode != 0 for r in results):
        summary = "; ".join(f"worker {r.index}: " + ("timed out" if r.timed_out else "stopped" if r.killed
                                                      else f"exit {r.returncode}") + f" …{r.output[-600:]!r}"
                            for r in results if r.returncode != 0)
        raise DistributedError(expected(f"all {count} local workers to exit 0 within {timeout} s", summary))
    return results
