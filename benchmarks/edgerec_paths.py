"""edgerec's own call paths, built for the harness (the counterpart of `baselines`).

Placeholder until the runtime Predictor lands: the tensor path through `create_backend`.
"""
from __future__ import annotations

from edgerec.runtime.errors import BackendUnavailableError, expected
from edgerec.runtime.manifest import confined_path

from .harness import Prepared


def tensor_path(data, art, backend: str, batch: int, threads: int) -> Prepared:
    from edgerec.runtime.backends import create_backend

    runner = create_backend(backend, confined_path(data.path, art.file), num_threads=threads)
    feeds = data.rows(batch, [t.name for t in runner.inputs])
    return Prepared(lambda: runner.run(feeds), close=runner.close)


def request_path(data, art, backend, batch, threads) -> Prepared:
    raise BackendUnavailableError(expected("edgerec.runtime.predictor", "not available yet"))


def candidates_path(data, backend, n, threads, mode) -> Prepared:
    raise BackendUnavailableError(expected("edgerec.runtime.predictor", "not available yet"))


def result_cache_path(data, backend, threads, hit) -> Prepared:
    raise BackendUnavailableError(expected("edgerec.runtime.predictor", "not available yet"))
