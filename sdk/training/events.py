"""New interactions as model rows with the model's FROZEN feature spec (online learning's input side).

An event ``(user_id, item_id, timestamp[, device])`` is encoded with the history a `HistoryStore`
holds for its user at that moment; items (and devices) outside the vocabulary map to OOV
(index 1), so the vocabulary, and the embedding table shape, never change and the updated
model stays exportable with the same feature spec.

Examples:
    >>> store = HistoryStore(50).observe_all(read_events_csv("past.csv"))
    >>> encoded = encode_events(spec, read_events_csv("new.csv"), store)
    >>> rows = with_negatives(encoded, 4, spec.item_vocab.size, np.random.default_rng(0))
"""
from __future__ import annotations

import csv
import math
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgerec.runtime.errors import expected
from edgerec.runtime.preprocess import Preprocessor
from edgerec.runtime.spec import CAND_ITEM, DENSE, NUM_RESERVED, FeatureSpec

from ..data.builder import DENSE_GAP, DENSE_HIST
from ..data.dataset import Split
from ..data.log import DataError

EVENT_COLUMNS = ("user_id", "item_id", "timestamp")
OPTIONAL_COLUMNS = ("device",)


@dataclass
class EventLog:
    """New interactions in time order (ties broken by user, then item). Ids stay raw strings."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray
    devices: np.ndarray | None = None

    def __post_init__(self):
        self.user_ids = np.asarray(self.user_ids, dtype=str).reshape(-1)
        self.item_ids = np.asarray(self.item_ids, dtype=str).reshape(-1)
        self.timestamps = np.asarray(self.timestamps, dtype=np.int64).reshape(-1)
        n = self.user_ids.size
        if n == 0:
            raise DataError(expected("at least one event", 0))
        sizes = [self.item_ids.size, self.timestamps.size] + ([] if self.devices is None else [len(self.devices)])
        if any(s != n for s in sizes):
            raise DataError(expected("columns of equal length", [n] + sizes))
        if (self.timestamps < 0).any():
            raise DataError(expected("non-negative unix timestamps", int(self.timestamps.min())))
        if self.devices is not None:
            self.devices = np.asarray(self.devices, dtype=str).reshape(-1)
        order = np.lexsort((self.item_ids, self.user_ids, self.timestamps))
        self.user_ids, self.item_ids, self.timestamps = self.user_ids[order], self.item_ids[order], self.timestamps[order]
        if self.devices is not None:
            self.devices = self.devices[order]

    def __len__(self) -> int:
        return int(self.user_ids.size)

    def take(self, index) -> "EventLog":
        return EventLog(self.user_ids[index], self.item_ids[index], self.timestamps[index],
                        None if self.devices is None else self.devices[index])

    @classmethod
    def from_interactions(cls, log, index=None) -> "EventLog":
        """Events of an `InteractionLog` (optionally the rows ``index``)."""
        index = slice(None) if index is None else index
        return cls(log.user_ids[index].astype(str), log.item_ids[index].astype(str), log.timestamps[index],
                   None if log.devices is None else log.devices[index])


def read_events_csv(path: str | os.PathLike) -> EventLog:
    """Read ``user_id,item_id,timestamp[,device]`` (header required, extra columns ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(expected("an events CSV file", str(path)))
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = [h.strip().lstrip("\ufeff") for h in next(reader, [])]
            missing = [c for c in EVENT_COLUMNS if c not in header]
            if missing:
                raise DataError(expected(f"columns {list(EVENT_COLUMNS)} (+ optional device) in {path}",
                                         f"header {header} (missing {missing})"))
            wanted = list(EVENT_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in header]
            index = [header.index(c) for c in wanted]
            columns = {c: [] for c in wanted}
            for line_no, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) <= max(index):
                    raise DataError(expected(f"{len(header)} fields on line {line_no} of {path}", row))
                for c, i in zip(wanted, index):
                    columns[c].append(row[i].strip())
    except UnicodeDecodeError as err:
        raise DataError(expected(f"UTF-8 text in {path}", str(err))) from None
    if not columns["user_id"]:
        raise DataError(expected(f"at least one event row in {path}", "a header only"))
    blank = [c for c in ("user_id", "item_id") if any(v == "" for v in columns[c])]
    if blank:
        raise DataError(expected(f"non-empty {blank} values in {path}", "an empty field"))
    try:
        stamps = np.asarray(columns["timestamp"], dtype=np.float64)
    except ValueError:
        bad = next(v for v in columns["timestamp"] if not _is_number(v))
        raise DataError(expected(f"numeric unix-second timestamps in {path}", bad)) from None
    if not np.isfinite(stamps).all():
        raise DataError(expected(f"finite timestamps in {path}", "nan/inf"))
    return EventLog(columns["user_id"], columns["item_id"], stamps.astype(np.int64), columns.get("device"))


def _is_number(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False


class HistoryStore:
    """Per-user recent items (raw ids, at most ``max_len``), event count and last timestamp."""

    def __init__(self, max_len: int):
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise DataError(expected("max_len as a positive int", max_len))
        self.max_len = max_len
        self._items: dict[str, deque] = {}
        self._count: dict[str, int] = {}
        self._last: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, user) -> bool:
        return str(user) in self._items

    def state(self, user: str) -> tuple[list[str], int, int | None]:
        """``(recent items, number of past events, last timestamp or None)``."""
        return list(self._items.get(user, ())), self._count.get(user, 0), self._last.get(user)

    def observe(self, user: str, item: str, timestamp: int) -> None:
        self._items.setdefault(user, deque(maxlen=self.max_len)).append(item)
        self._count[user] = self._count.get(user, 0) + 1
        self._last[user] = int(timestamp)

    def observe_all(self, events: EventLog) -> "HistoryStore":
        for u, i, t in zip(events.user_ids.tolist(), events.item_ids.tolist(), events.timestamps.tolist()):
            self.observe(u, i, t)
        return self


@dataclass
class EncodedEvents:
    """Event-level model inputs (no candidate), the positive item index and facts per event."""

    inputs: dict
    positives: np.ndarray
    known_user: np.ndarray
    oov_item: np.ndarray

    def __len__(self) -> int:
        return int(self.positives.size)


def encode_events(spec: FeatureSpec, events: EventLog, store: HistoryStore, update: bool = True) -> EncodedEvents:
    """Encode each event with the history the store holds at that moment (frozen vocabulary).

    Args:
        update: add each event to ``store`` after encoding it (later events see it).
    """
    pre = Preprocessor(spec)
    histories, contexts, dense, known = [], [], [], []
    devices = events.devices.tolist() if events.devices is not None else None
    for e, (u, i, t) in enumerate(zip(events.user_ids.tolist(), events.item_ids.tolist(), events.timestamps.tolist())):
        items, count, last = store.state(u)
        histories.append(items)
        contexts.append({"timestamp": t} if devices is None else {"timestamp": t, "device": devices[e]})
        row = {DENSE_HIST: math.log1p(count)}
        if last is not None:
            row[DENSE_GAP] = math.log1p(max(t - last, 0))
        dense.append({k: v for k, v in row.items() if k in {f.name for f in spec.dense}})
        known.append(count > 0)
        if update:
            store.observe(u, i, t)
    inputs = {"hist_items": pre.encode_history(histories), **pre.encode_context(contexts)}
    if spec.dense:
        inputs[DENSE] = pre.encode_dense(dense)
    positives = pre.encode_items(events.item_ids.tolist()).astype(np.int32)
    return EncodedEvents(inputs, positives, np.asarray(known), positives == 1)


def with_negatives(encoded: EncodedEvents, negatives: int, vocab_size: int, rng: np.random.Generator,
                   events=None) -> Split:
    """Pointwise rows: each event's positive + ``negatives`` uniform known items (≠ the positive).

    ``groups`` = event number, so a split with 1 positive + n negatives per group is a ranking set.
    """
    if isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 0:
        raise DataError(expected("negatives as a non-negative int", negatives))
    if vocab_size - NUM_RESERVED < 2:
        raise DataError(expected("a vocabulary with at least 2 known items", vocab_size - NUM_RESERVED))
    events = np.arange(len(encoded)) if events is None else np.asarray(events)
    per = negatives + 1
    rows = np.repeat(events, per)
    cands = np.empty((events.size, per), dtype=np.int32)
    cands[:, 0] = encoded.positives[events]
    if negatives:
        draw = rng.integers(NUM_RESERVED, vocab_size - 1, size=(events.size, negatives))
        cands[:, 1:] = draw + (draw >= cands[:, :1])       # skip the positive, stay uniform
    labels = np.zeros((events.size, per), dtype=np.float32)
    labels[:, 0] = 1.0
    inputs = {k: v[rows] for k, v in encoded.inputs.items()}
    inputs[CAND_ITEM] = cands.reshape(-1)
    return Split(inputs, labels.reshape(-1), rows.astype(np.int64))
