"""Raw request -> model input arrays, driven by a `FeatureSpec`.

The sdk builds its training arrays with this same class, so serving and training encode a raw
row identically (ids -> indices with OOV, most-recent-L history left-padded with 0, context
buckets from the timestamp, standardised dense features).

A raw request is a dict::

    {"user_id": "42",                       # optional; keys the user-state cache
     "history": ["10", "31", "7"],           # raw item ids, oldest -> newest (may be empty)
     "item": "99",                           # candidate item (for predict / fused scoring)
     "context": {"timestamp": 964982703},    # or explicit {"hour": 13, "weekday": 2, "device": "ios"}
     "dense": {"price": 3.5}}                # only for specs with dense fields

Ids are non-empty strings or ints (a bool, "", a float or an int outside int64 is refused); keys
inside ``context``/``dense`` must be fields of the spec (a typo such as ``"timestmap"`` is refused).
An id the vocabulary does not know encodes to the OOV index (1): the Predictor flags such rows.

A spec with ``text.content_dim`` (content families) also yields ``cand_content`` float32
[B, content_dim]: zeros, except for candidates registered with ``Predictor.add_items`` (``added``:
raw id -> content vector), whose row holds their vector (`edgerec.runtime.cold_start`).
"""
from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import RequestError, expected
from .spec import CAND_CONTENT, CAND_ITEM, DENSE, HIST_ITEMS, OOV_INDEX, PAD_INDEX, FeatureSpec

REQUEST_KEYS = frozenset({"user_id", "history", "item", "context", "dense", "expected", "request_id"})
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT64 = 1 << 63
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 80, 80, 40


def is_raw_id(value: Any) -> bool:
    """A raw id: a non-empty str or an int within int64 (numpy ints too; bool is not an id)."""
    kind = type(value)
    if kind is str:
        return value != ""
    if kind is int:
        return -_INT64 <= value < _INT64
    if isinstance(value, str):
        return value != ""
    if isinstance(value, int) and not isinstance(value, bool):
        return -_INT64 <= value < _INT64
    return isinstance(value, np.integer)


class shown:
    """A received value as error messages print it: bounded in length and depth, and safe for
    values whose ``repr`` fails (a 5,000-digit int, nesting deeper than the recursion limit)."""

    __slots__ = ("text",)

    def __init__(self, value: Any):
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
            self.text = f"an int of {value.bit_length()} bits"
            return
        try:
            self.text = _REPR.repr(value)
        except Exception:  # noqa: BLE001 - any repr may fail; the type still says what was sent
            self.text = f"a {type(value).__name__}"

    def __repr__(self) -> str:
        return self.text


def _key_names(keys) -> list[str]:
    """Sorted printable names of (any) dict keys, for messages."""
    return sorted(k if type(k) is str and len(k) <= 80 else repr(shown(k)) for k in keys)[:10]


def hour_of(timestamp: int) -> int:
    return int(timestamp // 3600 % 24)


def weekday_of(timestamp: int) -> int:
    """Monday = 0 (1970-01-01, unix day 0, was a Thursday)."""
    return int((timestamp // 86400 + 3) % 7)


class Preprocessor:
    """Encodes raw requests for one `FeatureSpec`.

    Args:
        spec: the feature spec saved with the model / bundle.
        strict: reject unknown top-level request keys (catches typos such as ``"hist"``).

    Examples:
        >>> pre = Preprocessor(spec)
        >>> arrays = pre.encode_requests([{"history": ["1", "2"], "item": "3"}])
        >>> arrays["hist_items"].shape
        (1, spec.max_seq_len)
    """

    def __init__(self, spec: FeatureSpec, strict: bool = True):
        if not isinstance(spec, FeatureSpec):
            raise RequestError(expected("a FeatureSpec", type(spec).__name__))
        self.spec = spec
        self.strict = strict
        self._plans: dict = {}      # input-name set -> `_context_plan`
        # keys a request may use inside "context" / "dense" (anything else is a typo)
        self._context_keys = frozenset({"timestamp", *(c.name for c in spec.context)})
        self._dense_keys = frozenset(d.name for d in spec.dense)

    # -- single pieces -------------------------------------------------------------------
    def encode_history(self, histories: Sequence[Sequence[Any]]) -> np.ndarray:
        length = self.spec.max_seq_len
        hits = self.spec.item_vocab.hits
        rows = []
        try:
            for history in histories:
                recent = self._recent(history, length)
                codes = hits(recent) if recent else []
                pad = length - len(codes)
                rows.append([PAD_INDEX] * pad + codes if pad else codes)     # left-padded
            # a None (an id `hits` leaves to `lookup`) makes the conversion raise TypeError
            return np.array(rows, dtype=np.int32).reshape(len(rows), length)
        except TypeError:
            pass
        rows = []
        for history in histories:
            recent = self._recent(history, length)
            codes = self._item_indices(recent, "history item ids as non-empty str or int") if recent else []
            rows.append([PAD_INDEX] * (length - len(codes)) + codes)
        return np.array(rows, dtype=np.int32).reshape(len(rows), length)

    @staticmethod
    def _recent(history, length: int):
        if type(history) is not list and type(history) is not tuple:
            if isinstance(history, (str, bytes)) or not isinstance(history, (Sequence, np.ndarray)):
                raise RequestError(expected("history as a list of item ids", type(history).__name__))
            history = list(history)
        return history[-length:]

    def encode_items(self, items: Sequence[Any]) -> np.ndarray:
        if type(items) is not list and type(items) is not tuple:
            items = list(items)
        try:
            return np.array(self.spec.item_vocab.hits(items), dtype=np.int32).reshape(-1)
        except TypeError:     # an id for `lookup` (None from `hits`) or an unhashable one
            pass
        return np.array(self._item_indices(items, "a candidate item id as a non-empty str or int"),
                        dtype=np.int32).reshape(-1)

    def _item_indices(self, raws: Sequence[Any], what: str) -> list[int]:
        """Vocabulary indices of raw item ids. Known str ids take one dict probe each; only the
        rest are type-checked (RequestError naming the first bad id) and looked up one by one."""
        vocab = self.spec.item_vocab
        try:
            codes = vocab.hits(raws)
        except TypeError:                       # unhashable: certainly not a str/int id
            codes = [None] * len(raws)
        if None not in codes:
            return codes
        for item in raws:
            if not is_raw_id(item):
                raise RequestError(expected(what, shown(item)))
        lookup = vocab.lookup
        return [lookup(r) if c is None else c for r, c in zip(raws, codes)]

    def encode_context(self, contexts: Sequence[Mapping | None], names=None) -> dict[str, np.ndarray]:
        """Context arrays (int32 [B]) per field. ``names``: the fields to build arrays for (default
        all, e.g. the inputs an artifact declares); the other fields are still validated."""
        if names is not None and type(names) is not frozenset:
            names = frozenset(names)
        fields = self._context_plan(names)
        columns = [[] for _ in fields]
        allowed = self._context_keys
        for context in contexts:
            context = {} if context is None else context
            if type(context) is not dict and not isinstance(context, Mapping):
                raise RequestError(expected("context as a JSON object", type(context).__name__))
            if self.strict and context and not context.keys() <= allowed:
                raise RequestError(expected(f"context keys among {sorted(allowed)}",
                                            _key_names(set(context) - allowed)))
            timestamp = context.get("timestamp")
            if timestamp is not None and not (type(timestamp) is int and timestamp >= 0) and (
                    isinstance(timestamp, bool) or not isinstance(timestamp, (int, float, np.integer, np.floating))
                    or not math.isfinite(timestamp) or timestamp < 0):
                raise RequestError(expected("context.timestamp as non-negative unix seconds", shown(timestamp)))
            for (field, wanted, derive, limit), column in zip(fields, columns):
                value = context.get(field.name)
                if derive is None:                          # categorical ("" = missing, like None)
                    if value is not None and type(value) is not str and not is_raw_id(value):
                        raise RequestError(expected(f"context.{field.name} as str or int", shown(value)))
                    if wanted:
                        column.append(field.vocab.lookup(value))
                elif value is None:
                    if wanted:
                        column.append(0 if timestamp is None else derive(int(timestamp)) + 1)
                else:
                    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
                        raise RequestError(expected(f"context.{field.name} as an int in [0, {limit})", shown(value)))
                    if not 0 <= value < limit:
                        raise RequestError(expected(f"context.{field.name} as an int in [0, {limit})", shown(value)))
                    if wanted:
                        column.append(int(value) + 1)
        arrays = {}
        for (field, wanted, _, _), column in zip(fields, columns):
            if wanted:
                arrays[field.name] = np.array(column, dtype=np.int32).reshape(-1)
        return arrays

    def _context_plan(self, names) -> tuple:
        """Per context field, cached per ``names``: (field, build its array, timestamp -> value
        (None for categorical fields), exclusive upper bound of explicit values)."""
        plan = self._plans.get(names)
        if plan is None:
            plan = self._plans[names] = tuple(
                (field, names is None or field.name in names,
                 None if field.kind == "categorical" else hour_of if field.kind == "hour" else weekday_of,
                 24 if field.kind == "hour" else 7)
                for field in self.spec.context)
        return plan

    def encode_dense(self, dense_rows: Sequence[Mapping | None]) -> np.ndarray:
        fields = self.spec.dense
        return np.array(self._dense_rows(dense_rows), dtype=np.float32).reshape(len(dense_rows), len(fields))

    def _dense_rows(self, dense_rows: Sequence[Mapping | None]) -> list[list[float]]:
        """Validated, standardised dense values as lists (`encode_dense` without the array)."""
        fields = self.spec.dense
        allowed = self._dense_keys
        rows = []
        for values in dense_rows:
            values = {} if values is None else values
            if type(values) is not dict and not isinstance(values, Mapping):
                raise RequestError(expected("dense as a JSON object of numbers", type(values).__name__))
            if self.strict and values and not values.keys() <= allowed:
                raise RequestError(expected(f"dense keys among {sorted(allowed)}", _key_names(set(values) - allowed)))
            row = []
            for field in fields:
                value = values.get(field.name, field.default)
                if type(value) is not float:
                    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                        raise RequestError(expected(f"dense.{field.name} as a number", shown(value)))
                    try:
                        value = float(value)
                    except OverflowError:
                        raise RequestError(expected(f"dense.{field.name} within float range", shown(value))) from None
                if not math.isfinite(value):
                    raise RequestError(expected(f"a finite dense.{field.name}", value))
                scaled = (float(value) - field.mean) / field.std
                if not abs(scaled) <= _FLOAT32_MAX:
                    raise RequestError(expected(f"dense.{field.name} within float32 range once standardised", value))
                row.append(scaled)
            rows.append(row)
        return rows

    # -- whole requests ------------------------------------------------------------------
    def check_request(self, request: Any, need_item: bool = True) -> Mapping:
        if type(request) is not dict and not isinstance(request, Mapping):
            raise RequestError(expected("a request as a JSON object", type(request).__name__))
        if self.strict and not REQUEST_KEYS.issuperset(request):
            unknown = set(request) - REQUEST_KEYS
            if unknown:
                raise RequestError(expected(f"request keys among {sorted(REQUEST_KEYS)}", _key_names(unknown)))
        if "history" not in request:
            raise RequestError(expected("a 'history' list in the request", _key_names(request)))
        if need_item and "item" not in request:
            raise RequestError(expected("an 'item' (candidate id) in the request", _key_names(request)))
        return request

    def encode_requests(self, requests: Sequence[Mapping]) -> dict[str, np.ndarray]:
        """Fused-model inputs for a batch of raw requests (one row per request)."""
        if isinstance(requests, Mapping) or not isinstance(requests, Sequence):
            raise RequestError(expected("a list of request objects", type(requests).__name__))
        if len(requests) == 0:
            raise RequestError(expected("at least one request", 0))
        return self.encode_checked([self.check_request(r) for r in requests])

    def encode_checked(self, requests: Sequence[Mapping], inputs=None, added: Mapping | None = None
                       ) -> dict[str, np.ndarray]:
        """`encode_requests` for a non-empty list already passed through `check_request`.

        ``inputs``: the input names a model declares (a set); context and dense arrays it does not
        take are not built (their values are still validated). Default: every spec input.
        ``added``: raw id -> content vector of items added after training (see `encode_content`)."""
        if len(requests) == 1:      # the single-request case without four comprehensions
            request = requests[0]
            histories, items = [request["history"]], [request["item"]]
            contexts, dense = [request.get("context")], [request.get("dense")]
        else:
            histories, items = [r["history"] for r in requests], [r["item"] for r in requests]
            contexts, dense = [r.get("context") for r in requests], [r.get("dense") for r in requests]
        arrays = {HIST_ITEMS: self.encode_history(histories), CAND_ITEM: self.encode_items(items)}
        arrays.update(self.encode_context(contexts, inputs))
        if self.spec.dense:
            if inputs is None or DENSE in inputs:
                arrays[DENSE] = self.encode_dense(dense)
            else:
                self._dense_rows(dense)
        elif any(d is not None for d in dense):
            self._dense_rows(dense)         # refuses dense values a spec without dense fields would drop
        if self.spec.content_dim is not None and (inputs is None or CAND_CONTENT in inputs):
            arrays[CAND_CONTENT] = self.encode_content(items, arrays[CAND_ITEM], added)
        return arrays

    def encode_content(self, items: Sequence[Any], codes: np.ndarray, added: Mapping | None = None) -> np.ndarray:
        """``cand_content`` float32 [B, content_dim] for candidates ``items`` (encoded ``codes``):
        zeros, except where a candidate is out of vocabulary and ``added`` (raw id as str ->
        vector) holds it. Known ids keep zeros even if listed: their trained embedding wins."""
        out = np.zeros((len(codes), self.spec.content_dim), dtype=np.float32)
        if added:
            get = added.get
            for i in np.flatnonzero(codes == OOV_INDEX):
                vector = get(str(items[i]))
                if vector is not None:
                    out[i] = vector
        return out

    def encode_candidates(self, items: Sequence[Any], context: Mapping | None = None,
                          dense: Mapping | None = None, added: Mapping | None = None) -> dict[str, np.ndarray]:
        """Scorer inputs (minus user state) for N candidates sharing one context (``added``: see
        `encode_content`)."""
        if isinstance(items, (str, bytes)) or not isinstance(items, (Sequence, np.ndarray)) or len(items) == 0:
            raise RequestError(expected("a non-empty list of candidate ids", shown(items)))
        n = len(items)
        arrays = {CAND_ITEM: self.encode_items(list(items))}
        for name, column in self.encode_context([context]).items():
            arrays[name] = np.repeat(column, n)
        if self.spec.dense:
            arrays[DENSE] = np.repeat(self.encode_dense([dense]), n, axis=0)
        elif dense is not None:
            self._dense_rows([dense])
        if self.spec.content_dim is not None:
            arrays[CAND_CONTENT] = self.encode_content(items, arrays[CAND_ITEM], added)
        return arrays
