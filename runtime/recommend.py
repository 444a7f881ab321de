"""Recommend from the whole catalogue: user tower → item index → the bundle's ranker → top k.

A cascade bundle (``edgerec export RANKER_DIR --retrieval R``) carries, beside the ranker's
parts, the retrieval model's ``user_tower`` artifacts and the item index (`edgerec.runtime.index`).
`recommend` runs, for one user request:

1. the user tower once (its vector is kept in the Predictor's user-state cache, keyed on every
   encoded user input);
2. the index: the ``m`` best items by ``user_vector · item_vector`` (seen items excluded when
   asked, padding/OOV rows never returned, so results are out-of-vocabulary-free by construction);
3. the ranker on those ``m`` items with the user's cached state (`Predictor.score_candidates`'s
   path: user encoder once, scorer per candidate, or the fused model);
4. the ``k`` best by the cascade score (`CascadeScore`, recorded by the export in the manifest's
   ``index.cascade_score``): ``w * z(retrieval score) + (1 - w) * z(ranker score)``, both
   standardised over the ``m`` retrieved items, with the weight ``w`` the export fitted on
   validation events. A ranker trained against random negatives is a poor judge among the
   retriever's best ``m`` items (all of them look positive to it), and the retrieval score carries
   what it lacks; ``w = 0`` (bundles without the record) is the ranker's order and score alone,
   ``w = 1`` the index's order (the ranker is then not run).

``filter`` is either a collection (set, frozenset, list, tuple) of ALLOWED raw item ids — those
items alone are retrieved, scored exactly (ids not in the catalogue are ignored) — or a callable
``filter(item_id: str) -> bool`` applied to retrieved items, fetching more from the index until
``m`` pass or the catalogue is exhausted.

`recommend_file` is ``edgerec recommend``: one JSON line in (a request, optionally with its own
``"k"``/``"m"``), one line out ``{"line", "items", "scores"}`` or ``{"line", "error"}``, as
`requests_io` does for ``edgerec predict``.

Examples:
    >>> with load("bundle/") as predictor:                                        # doctest: +SKIP
    ...     predictor.recommend({"user_id": "42", "history": ["318", "296"]}, k=3)
    Recommendations(items=['593', '2571', '260'], scores=array([0.91, 0.88, 0.87], dtype=float32))
"""
from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

import numpy as np

from .cache import result_keys
from .cascade_score import CascadeScore
from .contract import CAND_ITEM, DENSE, HIST_ITEMS, SCORE, USER_VECTOR
from .errors import BundleError, EdgeRecError, RequestError, expected
from .index import META_FILE, ROLE, ItemIndex
from .requests_io import BLANK, answer_file, error_result
from .scores import score_in_chunks

DEFAULT_K, DEFAULT_M = 10, 200
LINE_OPTIONS = ("k", "m")       # per-line overrides `edgerec recommend` reads from a request line
# ranker rows per model call, so that a large m keeps the backend's intermediate tensors bounded
RANK_CHUNK_ROWS = 4096


class Recommendations(NamedTuple):
    """The ``k`` best items for one user, best first: raw ``items`` and their cascade ``scores``
    (`CascadeScore`; the ranker's scores when the bundle records no retrieval weight)."""

    items: list
    scores: np.ndarray

    def to_json(self) -> dict:
        return {"items": list(self.items), "scores": [float(s) for s in self.scores]}


def has_index(manifest) -> bool:
    """Whether the bundle described by ``manifest`` carries an item index (a cascade bundle)."""
    return any(f.get("role") == ROLE and f.get("file") == META_FILE for f in manifest.files)


class Retriever:
    """The retrieval half of one loaded bundle: its item index, user tower backend and the
    recorded `CascadeScore`."""

    def __init__(self, index: ItemIndex, tower, output: str, fusion: CascadeScore | None = None):
        self.index, self.tower, self._output = index, tower, output
        self.input_names = frozenset(t.name for t in tower.inputs)
        self.fusion = CascadeScore() if fusion is None else fusion

    @classmethod
    def open(cls, model, backend_options: Mapping) -> "Retriever":
        """The retriever of a `LoadedBundle`: index and user tower read from verified bytes."""
        from .backends.registry import create_backend
        from .manifest import read_verified

        if not has_index(model.manifest):
            raise RequestError(expected("a cascade bundle with an item index (edgerec export --retrieval)",
                                        "a bundle without one"))
        fusion = CascadeScore.of(model.manifest)
        index = ItemIndex.load(model.dir, model.manifest)
        towers = index.meta.get("user_tower") or {}
        file = towers.get(model.backend_name)
        if not isinstance(file, str):
            raise BundleError(expected(f"a user_tower artifact for the {model.backend_name} backend",
                                       sorted(towers)))
        tower = create_backend(model.backend_name, model.dir / file,
                               model_bytes=read_verified(model.dir, model.manifest, file), **dict(backend_options))
        outputs = [t.name for t in tower.outputs]
        output = USER_VECTOR if USER_VECTOR in outputs else outputs[0]
        if len(outputs) != 1 and USER_VECTOR not in outputs:
            tower.close()
            raise BundleError(expected(f"a user tower with one output or one named {USER_VECTOR!r}", outputs))
        return cls(index, tower, output, fusion)

    def vectors(self, feeds: Mapping) -> np.ndarray:
        """float32 [B, D] user vectors of encoded user-side inputs (the tower's declared names)."""
        out = np.asarray(self.tower.run(dict(feeds))[self._output], np.float32)
        return out.reshape(len(out), -1)

    def feeds_of(self, user: "UserRow") -> dict:
        """The tower's inputs from one encoded user row."""
        feeds = {HIST_ITEMS: user.hist, **user.columns}
        return {name: feeds[name] for name in self.input_names if name in feeds}

    def close(self) -> None:
        self.tower.close()


@dataclass(frozen=True)
class UserRow:
    """One request's user-side inputs, encoded once for the user tower and the ranker: history
    [1, L], every context field [1] and dense features [1, F] (None without dense fields)."""

    hist: np.ndarray
    context: dict
    dense: np.ndarray | None

    @classmethod
    def encode(cls, pre, request: Mapping) -> "UserRow":
        dense = pre.encode_dense([request.get("dense")]) if pre.spec.dense else None
        return cls(pre.encode_history([request["history"]]), pre.encode_context([request.get("context")]), dense)

    @property
    def columns(self) -> dict:
        """The user-side inputs a ranker takes once per candidate row: context fields and dense."""
        return self.context if self.dense is None else {**self.context, DENSE: self.dense}


_RETRIEVERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def retriever_for(model, backend_options: Mapping) -> Retriever:
    """The `Retriever` of a loaded bundle, opened on first use and closed with the bundle."""
    found = _RETRIEVERS.get(model)
    if found is not None:
        return found
    with _LOCK:
        found = _RETRIEVERS.get(model)
        if found is None:
            found = _RETRIEVERS[model] = Retriever.open(model, backend_options)
            weakref.finalize(model, found.close)
    return found


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise RequestError(expected(f"{name} as a positive int", value))
    return int(value)


class StageClock:
    """Wall and process-CPU seconds per stage of `recommend` calls (a profiling aid: pass one as
    ``stages``). Stages: ``encode`` (request checks and encoding), ``user_tower``, ``index``,
    ``user_state`` (the ranker's user encoder or cache), ``scorer``, ``combine`` (cascade score
    and top k), ``result``."""

    def __init__(self):
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}
        self._last = (0.0, 0.0)

    def start(self) -> None:
        self._last = (time.perf_counter(), time.process_time())

    def mark(self, stage: str) -> None:
        """Book the time since the previous mark (or `start`) to ``stage``."""
        now = (time.perf_counter(), time.process_time())
        self.wall.setdefault(stage, []).append(now[0] - self._last[0])
        self.cpu.setdefault(stage, []).append(now[1] - self._last[1])
        self._last = now


def _unclocked(stage: str) -> None:
    return None


def recommend(model, predictor, user_request: Mapping, k: int = DEFAULT_K, m: int = DEFAULT_M,
              exclude_seen: bool = True, filter=None, use_cache: bool = True,
              stages: StageClock | None = None) -> Recommendations:
    """`Predictor.recommend` on the pinned bundle ``model`` (see the module docstring).

    ``m`` is raised to ``k`` when smaller; fewer than ``k`` items come back when fewer can be
    recommended (a small catalogue, seen items, a narrow filter). ``stages``: a `StageClock`
    that books the call's time per stage.
    """
    mark = _unclocked if stages is None else stages.mark
    if stages is not None:
        stages.start()
    k, m = _count(k, "k"), _count(m, "m")
    m = max(m, k)
    pre = predictor._preprocessor(model)
    request = pre.check_request(user_request, need_item=False)
    retriever = retriever_for(model, predictor._options)
    index = retriever.index
    user = UserRow.encode(pre, request)
    history = request["history"]
    exclude = pre.encode_items(history) if exclude_seen and len(history) else None
    mark("encode")
    vector = _cached_vector(predictor, model, retriever, retriever.feeds_of(user), use_cache)
    mark("user_tower")
    rows, retrieved = retrieve(index, vector, m, exclude, allowed_rows(pre, filter))
    mark("index")
    if rows.size == 0:
        return Recommendations([], np.zeros(0, np.float32))
    fusion = retriever.fusion
    ranked = _rank(predictor, model, request, user, rows, use_cache, mark) if fusion.needs_ranker else None
    order, scores = best_k(fusion.combine(ranked, retrieved), k)
    mark("combine")
    found = Recommendations(index.ids[rows[order]].tolist(), scores)
    mark("result")
    return found


def allowed_rows(pre, filter):
    """``filter`` checked once: None, the callable itself, or the index rows of a set/list of ids."""
    if filter is None or callable(filter):
        return filter
    if isinstance(filter, Collection) and not isinstance(filter, (str, bytes, Mapping)):
        allowed = [i for i in filter if isinstance(i, (str, int)) and not isinstance(i, bool)]
        if len(allowed) != len(filter):
            raise RequestError(expected("filter ids as str or int", [i for i in filter if i not in allowed][:3]))
        return pre.encode_items(allowed) if allowed else np.zeros(0, np.int32)
    raise RequestError(expected("filter as None, a callable on item ids, or a set/list of allowed ids",
                                type(filter).__name__))


def retrieve(index: ItemIndex, vector, m: int, exclude, allowed) -> tuple[np.ndarray, np.ndarray]:
    """The ``m`` best index rows and their retrieval scores for one user vector; ``allowed`` as
    `allowed_rows` returns it."""
    if allowed is None:
        return index.search(vector, m, exclude=exclude)
    if callable(allowed):
        return _filtered(index, vector, m, exclude, allowed)
    return index.search(vector, m, exclude=exclude, allowed=allowed)


def best_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the ``k`` best scores, best first, ties in retrieval order (lexsort is stable
    on the index order), and those scores."""
    order = np.lexsort((np.arange(scores.size), -scores))[:k]
    return order, scores[order]


def _rank(predictor, model, request, user: UserRow, rows: np.ndarray, use_cache: bool,
          mark=_unclocked) -> np.ndarray:
    """Ranker scores of index rows for one user: `Predictor.score_candidates`'s path fed the row
    indices directly (raw ids would only be looked up again)."""
    if "scorer" in model.parts and "user_encoder" in model.parts:
        part, shared = "scorer", predictor._user_state(model, request.get("user_id"), user.hist, use_cache)
    else:
        part, shared = "fused", {HIST_ITEMS: user.hist}
    mark("user_state")
    scores = score_rows(model, part, rows, user.columns, shared)
    mark("scorer")
    return scores


def score_rows(model, part: str, rows: np.ndarray, columns: Mapping, shared: Mapping) -> np.ndarray:
    """``part``'s scores of index ``rows`` for one user: its 1-row ``columns`` (`UserRow.columns`)
    repeated per row, its 1-row ``shared`` inputs (user state or history) fed once."""
    n = rows.size
    arrays = {CAND_ITEM: rows.astype(np.int32), **{name: np.repeat(value, n, axis=0) for name, value in columns.items()}}
    return score_in_chunks(lambda feeds: model.run(part, feeds)[SCORE], arrays, dict(shared), n, RANK_CHUNK_ROWS)


def _cached_vector(predictor, model, retriever: Retriever, feeds: dict, use_cache: bool) -> np.ndarray:
    cache = predictor.user_cache
    if not (use_cache and cache.enabled):
        return retriever.vectors(feeds)[0]
    key = ("user_tower",) + result_keys(model.version, feeds)[0]
    vector = cache.get(key)
    if vector is None:
        vector = retriever.vectors(feeds)[0]
        cache.put(key, vector)
    return vector


def _filtered(index: ItemIndex, vector, m: int, exclude, keep: Callable) -> tuple[np.ndarray, np.ndarray]:
    """Rows passing ``keep(raw id)`` and their index scores: ask the index for ever more rows
    until ``m`` pass."""
    ask = m
    while True:
        rows, scores = index.search(vector, ask, exclude=exclude)
        passed = np.fromiter((bool(keep(i)) for i in index.ids[rows].tolist()), bool, rows.size)
        if passed.sum() >= m or rows.size < ask or ask >= index.recommendable:
            return rows[passed][:m], scores[passed][:m]
        ask = min(index.recommendable, 4 * ask)


# -- JSON lines ------------------------------------------------------------------------------
def recommend_stream(predictor, lines: Iterable[tuple[int, Any]], k: int = DEFAULT_K,
                     m: int = DEFAULT_M) -> Iterator[dict]:
    """One result per ``(line number, parsed value)`` (see `requests_io.iter_lines`): ``{"line",
    "items", "scores"}``, ``{"line", "error"}`` or ``{"line", "skipped"}`` (and ``request_id``
    echoed). A line's own ``"k"``/``"m"`` override the defaults."""
    _count(k, "k"), _count(m, "m")
    for number, row in lines:
        if row is BLANK:
            result = {"skipped": "blank line"}
        elif isinstance(row, EdgeRecError):
            result = error_result(row)
        else:
            result = _recommend_row(predictor, row, k, m)
        line = {"line": number, **result}
        if isinstance(row, dict) and "request_id" in row:
            line["request_id"] = row["request_id"]
        yield line


def _recommend_row(predictor, row, k: int, m: int) -> dict:
    try:
        if not isinstance(row, dict):
            raise RequestError(expected("a request as a JSON object", type(row).__name__))
        request = {key: value for key, value in row.items() if key not in LINE_OPTIONS}
        found = predictor.recommend(request, k=row.get("k", k), m=row.get("m", m))
    except EdgeRecError as err:
        return error_result(err)
    return found.to_json()


def recommend_file(open_predictor: Callable[[], Any], source, destination, k: int = DEFAULT_K,
                   m: int = DEFAULT_M) -> tuple[int, int]:
    """Recommend for every line of ``source`` (``"-"``: standard input) into ``destination``
    (``"-"``: standard output; a file is replaced atomically once every line is answered).
    Returns (lines, failed lines). ``k``/``m``, the input, the output and then the bundle
    (``open_predictor()``) are checked in that order before anything is written."""
    _count(k, "--k"), _count(m, "--m")
    return answer_file(open_predictor, source, destination,
                       lambda predictor, lines: recommend_stream(predictor, lines, k, m))
