"""Calibration / training rows from an ``.npz`` of arrays named like the model inputs (+ ``labels``)."""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from ..errors import ConverterConfigError, expected

LABELS = "labels"


def load_rows(path: str | os.PathLike, names: list[str], limit: int | None = None,
              need_labels: bool = False, spread: bool = False) -> dict[str, np.ndarray]:
    """Arrays ``names`` (and ``labels`` if asked) from ``path``: the first ``limit`` rows, or with
    ``spread`` ``limit`` rows evenly spread over the file (ranking files are grouped by user: the
    first rows would be a few users only).

    Raises:
        ConverterConfigError: the file is unreadable, lacks a name, or row counts differ.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            present = set(data.files)
            wanted = list(names) + ([LABELS] if need_labels else [])
            missing = [n for n in wanted if n not in present]
            if missing:
                raise ConverterConfigError(expected(f"arrays {wanted} in {path}",
                                                    f"missing {missing} (has {sorted(present)})"))
            rows = {n: np.asarray(data[n]) for n in wanted}
    except ConverterConfigError:
        raise
    except (OSError, ValueError) as err:
        raise ConverterConfigError(expected(f"a readable .npz of model inputs at {path}", str(err))) from None
    counts = {n: len(a) for n, a in rows.items()}
    if len(set(counts.values())) != 1 or not counts or next(iter(counts.values())) == 0:
        raise ConverterConfigError(expected("the same non-zero row count for every array", counts))
    if limit is not None and spread:
        count = next(iter(counts.values()))
        pick = np.unique(np.linspace(0, count - 1, num=min(count, int(limit))).astype(int))
        rows = {n: a[pick] for n, a in rows.items()}
    elif limit is not None:
        rows = {n: a[:limit] for n, a in rows.items()}
    return rows


def cast_like(rows: dict[str, np.ndarray], dtypes: dict[str, str]) -> dict[str, np.ndarray]:
    return {n: rows[n].astype(dtypes[n], copy=False) for n in dtypes}


def batches(rows: dict[str, np.ndarray], batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
    count = len(next(iter(rows.values())))
    for start in range(0, count, batch_size):
        yield {n: a[start:start + batch_size] for n, a in rows.items()}


def sample_inputs(specs: dict[str, tuple[str, tuple]], batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs when no rows are given: ids 1..3 (valid for any vocabulary), small floats."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (dtype, shape) in specs.items():
        full = (batch,) + tuple(1 if d is None else d for d in shape[1:])
        if "int" in dtype:
            out[name] = rng.integers(1, 4, size=full).astype(dtype)
        else:
            out[name] = rng.normal(size=full).astype(dtype)
    return out
