"""What scoring returns (float32 scores, which rows scored an out-of-vocabulary candidate) and
how one user's state meets N candidate rows: `score_in_chunks` passes the 1-row state as it is,
and the helpers here repeat it (`spread_rows`) for a part that cannot broadcast it, which
`probe_scorer` finds out once per artifact."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .errors import BundleError, EdgeRecError, expected
from .spec import OOV_INDEX

# backends a scorer's batch-1 state is probed on (a throwaway TensorRT engine would take minutes)
PROBED_BACKENDS = ("litert", "onnxruntime")
# (backend, artifact sha256) -> how that scorer takes a 1-row user state (`ScorerProbe`)
_BROADCAST_PROBES: dict = {}
_MAX_PROBES = 256


class Scores(NamedTuple):
    """Scores with the out-of-vocabulary flag of each row (``return_oov=True``).

    ``oov[i]`` is True when row i's candidate item is not in the bundle's vocabulary: the model
    scored the shared OOV embedding (the same score for every unknown item), not that item.

    Examples:
        >>> scores, oov = predictor.predict(requests, return_oov=True)
        >>> known = scores[~oov]
    """

    scores: np.ndarray
    oov: np.ndarray

    @property
    def oov_count(self) -> int:
        return int(np.count_nonzero(self.oov))


def count_oov(items: np.ndarray) -> int:
    """How many encoded candidate ids are the OOV index."""
    if len(items) == 1:
        return int(items.item() == OOV_INDEX)
    return int(np.count_nonzero(items == OOV_INDEX))


def score_in_chunks(run, arrays: dict, shared: dict, n: int, chunk_rows: int) -> np.ndarray:
    """Scores of ``n`` rows: ``run(feeds)`` on at most ``chunk_rows`` rows of ``arrays`` at a
    time, with the 1-row arrays of ``shared`` (user state, history) as they are: ``run`` takes
    them once for all rows (`edgerec.runtime.loaded.LoadedBundle.run` broadcasts them in the
    graph where the part can, and repeats them where it cannot)."""
    scores = np.empty(n, np.float32)
    for begin in range(0, n, chunk_rows):
        end = min(n, begin + chunk_rows)
        feeds = {k: v[begin:end] for k, v in arrays.items()} if n > chunk_rows else dict(arrays)
        feeds.update(shared)
        scores[begin:end] = as_scores(run(feeds), end - begin)
    return scores


def rows_of(value) -> int | None:
    """The batch (first) dimension of an array feed, None for anything else."""
    shape = getattr(value, "shape", None)
    return shape[0] if shape else None


def has_state_row(feeds, shared) -> bool:
    """Whether ``feeds`` (a dict of arrays) holds a 1-row array of a ``shared`` input beside an
    array of more rows (one user's state for N candidates)."""
    if not isinstance(feeds, dict) or not any(rows_of(feeds.get(name)) == 1 for name in shared):
        return False
    return any((rows_of(value) or 0) > 1 for value in feeds.values())


def spread_rows(feeds: dict, n: int, keep=frozenset()) -> dict:
    """``feeds`` with every 1-row array not in ``keep`` repeated to ``n`` rows (C-contiguous)."""
    return {name: np.repeat(value, n, axis=0) if name not in keep and rows_of(value) == 1 else value
            for name, value in feeds.items()}


def probe_feeds(inputs, shared: dict, limits: dict, rows: int = 2) -> dict:
    """Feeds for a ``rows``-row probe of a scorer: ``shared`` (1-row user outputs) as they are,
    every other declared input (``inputs``: `TensorSpec`s) filled with distinct valid rows (ids
    ``0, 1, …`` below their table sizes in ``limits``, floats ``0, 1, …``)."""
    feeds = {}
    for spec in inputs:
        if spec.name in shared:
            feeds[spec.name] = shared[spec.name]
            continue
        tail = [1 if d is None else d for d in spec.shape[1:]]
        values = np.arange(rows).reshape([rows] + [1] * len(tail))
        if np.dtype(spec.dtype).kind in "iu":
            values = np.minimum(values, max(limits.get(spec.name, rows) - 1, 0))
        feeds[spec.name] = np.ascontiguousarray(np.broadcast_to(values, [rows] + tail).astype(spec.dtype))
    return feeds


def broadcast_matches(run, feeds: dict, shared_names, rows: int) -> bool:
    """Whether ``run`` on ``feeds`` with the ``shared_names`` inputs as 1 row gives the outputs of
    the same feeds with those inputs repeated: ``rows`` rows each, equal values (False when it
    fails to run)."""
    try:
        repeated = run(spread_rows(feeds, rows))
        once = run(feeds)
    except EdgeRecError:
        return False
    for name, want in repeated.items():
        got = once.get(name)
        if got is None or rows_of(want) != rows or np.shape(got) != np.shape(want) \
                or not np.allclose(got, want, rtol=1e-5, atol=1e-6):
            return False
    return bool(shared_names)


def as_scores(scores: np.ndarray, n: int) -> np.ndarray:
    """A model's score output as float32 [n] (BundleError when it has another row count)."""
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if scores.shape[0] != n:
        raise BundleError(expected(f"{n} scores from the model", scores.shape[0]))
    return scores


class ScorerProbe(NamedTuple):
    """How a scorer takes one user's state: ``shared``, the user-encoder outputs it takes as 1
    row for all rows (empty: they are repeated); ``positions``, the shared inputs it takes cut to
    the valid history positions (`edgerec.runtime.positions`; empty: fed whole)."""

    shared: frozenset = frozenset()
    positions: tuple = ()


def probe_scorer(bundle, file: str, model_bytes: bytes, options: dict) -> ScorerProbe:
    """How ``bundle``'s scorer (``file``) takes one user's state, probed once per artifact and
    backend on a throwaway backend loaded from ``model_bytes``, so a failed probe leaves the
    serving sessions untouched. The broadcast probe feeds the user encoder's state of an empty
    history; the position probe one of a half-padded history (`positions.probe_history`)."""
    from .backends.registry import create_backend
    from .positions import position_inputs, probe_history, trim_matches

    scorer_inputs = {t.name for t in bundle.parts["scorer"].inputs}
    shared = frozenset(bundle.output_names["user_encoder"].values()) & scorer_inputs
    if not shared or bundle.backend_name not in PROBED_BACKENDS:
        return ScorerProbe()
    key = (bundle.backend_name, bundle.manifest.artifact(file).sha256)
    if key not in _BROADCAST_PROBES:
        encoder = bundle.parts["user_encoder"]
        empty = {t.name: np.zeros([1 if d is None else d for d in t.shape], t.dtype) for t in encoder.inputs}
        state = bundle.run("user_encoder", empty)
        probe = create_backend(bundle.backend_name, bundle.dir / file, model_bytes=model_bytes, **options)
        def feeds_of(state: dict) -> dict:
            return probe_feeds(probe.inputs, {k: v for k, v in state.items() if k in shared}, bundle.id_limits)

        try:
            run = _quiet(probe)
            feeds = feeds_of(state)
            found = ScorerProbe(shared if broadcast_matches(run, feeds, shared, rows=2) else frozenset())
            names = position_inputs(probe.inputs, found.shared)
            histories = {t.name: probe_history(t, bundle.id_limits.get(t.name, 0)) for t in encoder.inputs
                         if np.dtype(t.dtype).kind in "iu"}
            if names and len(histories) == 1 and all(h is not None for h in histories.values()):
                feeds = feeds_of(bundle.run("user_encoder", {**empty, **histories}))
                # the one-user path and the N-row path (both rows one user's state)
                if trim_matches(run, feeds, names) and trim_matches(run, spread_rows(feeds, 2), names):
                    found = found._replace(positions=names)
        finally:
            probe.close()
        if len(_BROADCAST_PROBES) >= _MAX_PROBES:
            _BROADCAST_PROBES.clear()
        _BROADCAST_PROBES[key] = found
    return _BROADCAST_PROBES[key]


def _quiet(probe):
    """``probe.run_validated``, for ONNX Runtime without the error line its executor logs when a
    scorer refuses the 1-row state: that refusal is an expected answer of the probe (an older
    export), not a fault to show the app."""
    session = getattr(probe, "_session", None)
    names = getattr(probe, "_output_names", None)
    if session is None or names is None or type(probe).__module__ != "edgerec.runtime.backends.ort":
        return probe.run_validated
    import onnxruntime

    options = onnxruntime.RunOptions()
    options.log_severity_level = 4          # fatal only

    def run(feeds):
        try:
            return dict(zip(names, session.run(names, feeds, options)))
        except Exception as err:  # noqa: BLE001 - ORT raises several types for a refused shape
            raise BundleError(expected("a scorer that runs on a 1-row user state", type(err).__name__)) from None
    return run
