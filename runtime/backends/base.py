"""The backend interface: the public `run` validates feeds against the declared signature,
then hands them to a small per-backend `_run_impl` (Polygraphy-runner style).
"""
from __future__ import annotations

import sys
import threading
from math import isfinite
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
    # True when `_run_impl` reads non-contiguous arrays correctly (the fast feed check then skips
    # the contiguity test; `check_feeds` still hands over contiguous copies).
    strided_inputs = False

    def __init__(self, model_path):
        self.model_path = str(model_path)
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.info: dict = {}
        self._closed = False
        self._plan: tuple | None = None      # (inputs, `feed_plan()`, fast_checks), built on first use
        # LiteRT interpreters are not re-entrant: one call at a time unless the backend says otherwise.
        self._lock = threading.Lock() if self.serialize_calls else None

    # -- public ----------------------------------------------------------------------------
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. ``feeds``: input name -> array of the declared dtype and rank."""
        if self._closed:
            raise RequestError(expected(f"an open {self.name} backend", "closed"))
        return self.run_validated(feeds if self._feeds_match(feeds) else self.check_feeds(feeds))

    def run_validated(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`run` for feeds that already passed `check_feeds` (or `feeds_match` on `feed_plan`)."""
        if self._closed:
            raise RequestError(expected(f"an open {self.name} backend", "closed"))
        try:
            if self._lock is None:
                outputs = self._run_impl(feeds)
            else:
                with self._lock:
                    outputs = self._run_impl(feeds)
        except EdgeRecError:
            raise
        except Exception as err:  # noqa: BLE001 - e.g. an id outside an embedding table
            raise RequestError(expected(f"inputs the {self.name} model can run (ids inside its tables)",
                                        f"{type(err).__name__}: {str(err)[:300]}")) from None
        if self.fresh_outputs:
            return outputs
        return {name: np.array(value, copy=True) for name, value in outputs.items()}

    @property
    def fast_checks(self) -> bool:
        """Whether `feeds_match` may stand in for `check_feeds`: not when a subclass adds checks of
        its own there (e.g. TensorRT's engine-profile bounds)."""
        return type(self).check_feeds is Backend.check_feeds

    def feed_plan(self, limits: Mapping[str, int] | None = None, finite: bool = False) -> tuple:
        """Rows for `feeds_match`, one per declared input; with ``limits`` (input name -> table
        size) integer inputs must also lie in ``[0, limit)``, with ``finite`` float inputs must be
        finite (the checks of `tensor_checks.check_tensor_ranges`)."""
        limits = limits or {}
        rows = []
        for spec in self.inputs:
            dtype = np.dtype(spec.dtype)
            shape = list(spec.shape)
            fixed = tuple((i, want) for i, want in enumerate(shape) if want is not None and want >= 0)
            dynamic = bool(shape) and (shape[0] is None or shape[0] == -1)
            # the usual signature: dynamic batch, every other dim static -> one tuple comparison
            tail = tuple(shape[1:]) if dynamic and all(d is not None and d >= 0 for d in shape[1:]) else None
            # elements per batch row (so a row's size needs no array attribute), else None
            row_size = int(np.prod(tail, dtype=np.int64)) if tail is not None else None
            limit = limits.get(spec.name) if dtype.kind in "iu" else None
            if limit is None and dtype.kind == "i":
                # No table size known (bring-your-own models): still refuse negative ids, which ONNX
                # Runtime's Gather wraps to a valid row while LiteRT refuses them.
                limit = int(np.iinfo(dtype).max) + 1
            unsigned = UNSIGNED_VIEW[dtype.itemsize] if limit is not None and dtype.kind == "i" else None
            rows.append((spec.name, dtype, tail, row_size, (len(shape), fixed, dynamic), not self.strided_inputs,
                         limit, unsigned, finite and dtype.kind == "f"))
        return tuple(rows)

    def _make_plan(self) -> tuple:
        self._plan = (self.inputs, self.feed_plan(), self.fast_checks)
        return self._plan

    def _feeds_match(self, feeds) -> bool:
        """Fast path: `feeds_match` on this backend's signature (False where `fast_checks` is off)."""
        plan = self._plan if self._plan is not None and self._plan[0] is self.inputs else self._make_plan()
        return plan[2] and feeds_match(plan[1], feeds)

    def check_feeds(self, feeds, shared=frozenset()) -> dict[str, np.ndarray]:
        """Validate names, dtypes, ranks, static dims and a shared batch size; collect every problem.

        ``shared``: inputs that may also come as 1 row beside N-row others (one user's state for N
        candidates, where the model broadcasts it: `edgerec.runtime.scores.probe_scorer`)."""
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
                if not value.dtype.isnative and value.dtype.newbyteorder("=") == np.dtype(spec.dtype):
                    problems.append(byte_order_problem(name, value.dtype))
                else:
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
            if value.dtype.kind == "i" and value.size and int(value.min()) < 0:
                problems.append(expected(f"'{name}' ids >= 0", f"min {int(value.min())}"))
                continue
            if value.ndim and (spec.shape[0] is None or spec.shape[0] == -1):
                batch[name] = value.shape[0]
            checked[name] = np.ascontiguousarray(value)
        sizes = {rows for name, rows in batch.items() if not (rows == 1 and name in shared)}
        if len(sizes) > 1:
            problems.append(expected("one batch size across inputs" + (
                f" (1 row allowed for {sorted(shared)})" if shared else ""), batch))
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


def byte_order_problem(name: str, dtype: np.dtype) -> str:
    """The message for an array in the other byte order (e.g. big-endian int32 from a network
    buffer): models read native-order numbers, so its values would be misread."""
    native = dtype.newbyteorder("=")
    order = "big" if dtype.byteorder == ">" else "little"
    return expected(f"'{name}' as {native.name} in native ({sys.byteorder}-endian) byte order "
                    f"(convert with .astype({native.name!r}))", f"{dtype.str} ({order}-endian {native.name})")


def dims(shape) -> list:
    """Normalise a backend's shape to ints with None for dynamic (-1, 0-sized symbols, strings)."""
    out = []
    for dim in shape:
        if isinstance(dim, (int, np.integer)) and dim > 0:
            out.append(int(dim))
        else:
            out.append(None)
    return out


# the unsigned dtype of each integer width: ids viewed as unsigned wrap negatives above any table size
UNSIGNED_VIEW = {1: np.dtype(np.uint8), 2: np.dtype(np.uint16), 4: np.dtype(np.uint32), 8: np.dtype(np.uint64)}


def feeds_match(plan: tuple, feeds) -> bool:
    """True when ``feeds`` is a plain dict holding exactly the inputs of ``plan`` (`Backend.feed_plan`)
    as arrays of the declared dtype, rank and static dims (C-contiguous unless the backend takes
    strided arrays), one batch size of at least 1, and (where the plan says so) ids inside their
    tables and finite floats.

    This is the hot path's only check: cheap comparisons, one ``argmax`` per id array (ids read
    as unsigned, so a negative id wraps above every table size) and ``argmax``/``argmin`` per
    checked float array (both propagate NaN). False never raises: the caller then runs the full
    checks, which collect every problem into the typed error.
    """
    if type(feeds) is not dict or len(feeds) != len(plan):
        return False
    batch = -1
    for name, dtype, tail, row_size, general, contiguous, limit, unsigned, finite in plan:
        value = feeds.get(name)
        if type(value) is not _ndarray or value.dtype is not dtype:
            return False
        shape = value.shape
        if tail is not None:
            if not shape or shape[1:] != tail:
                return False
            size = shape[0]
            if size != batch:
                if batch >= 0 or size == 0:
                    return False
                batch = size
            n = size * row_size
        else:
            batch = _general_shape(shape, general, batch)
            if batch == -2:
                return False
            n = value.size
        if contiguous and not value.flags.c_contiguous:
            return False
        if limit is not None:
            if n == 1:
                if not 0 <= value.item() < limit:
                    return False
            elif n:
                ids = value if unsigned is None else value.view(unsigned)
                if ids.item(ids.argmax()) >= limit:
                    return False
        elif finite and n and not (isfinite(value.item(value.argmax()))
                                            and isfinite(value.item(value.argmin()))):
            return False
    return True


def _general_shape(shape: tuple, general: tuple, batch: int) -> int:
    """Shape check of a row without a static tail: the shared batch size, or -2 on a mismatch."""
    rank, fixed, dynamic = general
    if len(shape) != rank:
        return -2
    for axis, want in fixed:
        if shape[axis] != want:
            return -2
    if rank:
        if shape[0] == 0:
            return -2
        if dynamic:
            if batch >= 0 and shape[0] != batch:
                return -2
            return shape[0]
    return batch


_ndarray = np.ndarray
