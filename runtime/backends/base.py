"""The backend interface: the public `run` validates feeds against the declared signature,
then hands them to a small per-backend `_run_impl` (Polygraphy-runner style).
"""
from __future__ import annotations

import threading
from typing import Mapping

import numpy as np

from ..errors import EdgeRecError, RequestError, expected
from ..manifest import TensorSpec


class Backend:
    """One loaded model file. Subclasses fill `inputs`/`outputs` and implement `_run_impl`.

    Args:
        model_path: the .tflite / .onnx file.

    Examples:
        >>> with create_backend("onnxruntime", "scorer.onnx", num_threads=1) as backend:
        ...     out = backend.run({"cand_item": np.array([3], np.int32), ...})
        ...     out["score"].shape
        (1, 1)
    """

    name = "base"
    model_format = ""
    serialize_calls = True
    # True when `_run_impl` returns arrays nobody else holds (no copy needed before handing them out).
    fresh_outputs = False

    def __init__(self, model_path):
        self.model_path = str(model_path)
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.info: dict = {}
        self._closed = False
        self._plan: tuple | None = None      # precomputed per-input checks (see `_feed_plan`)
        # LiteRT interpreters are not re-entrant: one call at a time unless the backend says otherwise.
        self._lock = threading.Lock() if self.serialize_calls else None

    # -- public ----------------------------------------------------------------------------
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. ``feeds``: input name -> array of the declared dtype and rank."""
        if self._closed:
            raise RequestError(expected(f"an open {self.name} backend", "closed"))
        checked = feeds if self._feeds_match(feeds) else self.check_feeds(feeds)
        try:
            if self._lock is None:
                outputs = self._run_impl(checked)
            else:
                with self._lock:
                    outputs = self._run_impl(checked)
        except EdgeRecError:
            raise
        except Exception as err:  # noqa: BLE001 - e.g. an id outside an embedding table
            raise RequestError(expected(f"inputs the {self.name} model can run (ids inside its tables)",
                                        f"{type(err).__name__}: {str(err)[:300]}")) from None
        if self.fresh_outputs:
            return outputs
        return {name: np.array(value, copy=True) for name, value in outputs.items()}

    def _feed_plan(self) -> tuple:
        """Per input, computed once: (name, dtype, rank, [(axis, fixed size)], batch axis dynamic)."""
        if self._plan is None or self._plan[0] is not self.inputs:
            rows = tuple((spec.name, np.dtype(spec.dtype), len(spec.shape),
                          tuple((i, want) for i, want in enumerate(spec.shape) if want is not None and want >= 0),
                          bool(spec.shape) and (spec.shape[0] is None or spec.shape[0] == -1))
                         for spec in self.inputs)
            self._plan = (self.inputs, rows)
        return self._plan[1]

    def _feeds_match(self, feeds) -> bool:
        """Fast path: a plain dict whose arrays already match the signature exactly (same checks as
        `check_feeds`, by cheap comparisons); anything else goes to `check_feeds` for the error."""
        if type(feeds) is not dict:
            return False
        plan = self._feed_plan()
        if len(feeds) != len(plan):
            return False
        batch = -1
        for name, dtype, rank, fixed, dynamic in plan:
            value = feeds.get(name)
            if type(value) is not np.ndarray or value.dtype is not dtype or value.ndim != rank:
                return False
            shape = value.shape
            for axis, want in fixed:
                if shape[axis] != want:
                    return False
            if rank:
                if shape[0] == 0:
                    return False
                if dynamic:
                    if batch < 0:
                        batch = shape[0]
                    elif shape[0] != batch:
                        return False
            if not value.flags.c_contiguous:
                return False
        return True

    def check_feeds(self, feeds) -> dict[str, np.ndarray]:
        """Validate names, dtypes, ranks, static dims and a shared batch size; collect every problem."""
        if not isinstance(feeds, Mapping):
            raise RequestError(expected("feeds as a dict of name -> numpy array", type(feeds).__name__))
        declared = {spec.name: spec for spec in self.inputs}
        problems = []
        missing = sorted(set(declared) - set(feeds))
        extra = sorted(set(feeds) - set(declared))
        if missing:
            problems.append(expected(f"inputs {sorted(declared)}", f"missing {missing}"))
        if extra:
            problems.append(expected(f"only inputs {sorted(declared)}", f"unknown {extra}"))
        checked, batch = {}, {}
        for name, spec in declared.items():
            if name not in feeds:
                continue
            value = feeds[name]
            if not isinstance(value, np.ndarray):
                problems.append(expected(f"'{name}' as a numpy array", type(value).__name__))
                continue
            if value.dtype != np.dtype(spec.dtype):
                problems.append(expected(f"'{name}' of dtype {spec.dtype}", str(value.dtype)))
                continue
            if value.ndim != len(spec.shape):
                problems.append(expected(f"'{name}' of rank {len(spec.shape)} (shape {spec.shape})",
                                         f"shape {list(value.shape)}"))
                continue
            bad = [i for i, (want, got) in enumerate(zip(spec.shape, value.shape))
                   if want is not None and want >= 0 and want != got]
            if bad:
                problems.append(expected(f"'{name}' of shape {spec.shape}", f"shape {list(value.shape)}"))
                continue
            if value.ndim and value.shape[0] == 0:
                problems.append(expected(f"'{name}' with a batch of at least 1", f"shape {list(value.shape)}"))
                continue
            if value.ndim and (spec.shape[0] is None or spec.shape[0] == -1):
                batch[name] = value.shape[0]
            checked[name] = np.ascontiguousarray(value)
        if len(set(batch.values())) > 1:
            problems.append(expected("one batch size across inputs", batch))
        if problems:
            raise RequestError("; ".join(problems))
        return checked

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close_impl()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return f"{type(self).__name__}({self.model_path!r}, inputs={[t.name for t in self.inputs]})"

    # -- per backend -------------------------------------------------------------------------
    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _close_impl(self) -> None:
        pass


def dims(shape) -> list:
    """Normalise a backend's shape to ints with None for dynamic (-1, 0-sized symbols, strings)."""
    out = []
    for dim in shape:
        if isinstance(dim, (int, np.integer)) and dim > 0:
            out.append(int(dim))
        else:
            out.append(None)
    return out
