"""Online learning: warm-started incremental updates from a stream of new interactions.

A stream of events ``(user_id, item_id, timestamp[, device])`` is turned into training rows
with the model's FROZEN feature spec: items (and devices) outside the vocabulary map to OOV
(index 1) — the vocabulary, and so the embedding table shape, never changes, which keeps the
updated model exportable into a bundle with the same feature spec. Each event's history is the
user's previous items known to a `HistoryStore` (seeded from past events, then updated as the
stream goes). Every batch of ``events_per_batch`` new events is first SCORED (prequential:
the model has not seen it yet), then trained on for ``steps_per_batch`` gradient steps whose
mini-batches mix new rows with rows drawn from a bounded `ReplayBuffer` of past rows (against
forgetting); the batch then enters the buffer.

`time_slice_evaluation` splits a log by time into a base period + K slices and reports, per
slice, the AUC of the frozen base model and of the online model before / after its update.
`edgerec.sdk.cli.update.update_model_dir` (``edgerec update``) updates a MODEL_DIR from an
events CSV into a new MODEL_DIR (bundle_version + 1) and optionally exports it.

Examples:
    >>> updater = OnlineUpdater(load_model_dir("runs/din"), OnlineConfig(steps_per_batch=4))
    >>> rows = encode_events(updater.parts.spec, read_events_csv("new.csv"), HistoryStore(50))
    >>> report = updater.stream(rows)          # prequential scores, then updates
"""
from __future__ import annotations

import csv
import math
import os
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgerec.runtime.errors import expected
from edgerec.runtime.preprocess import Preprocessor
from edgerec.runtime.spec import CAND_ITEM, DENSE, NUM_RESERVED, FeatureSpec

from ..data.dataset import Split
from ..data.log import DataError

EVENT_COLUMNS = ("user_id", "item_id", "timestamp")
OPTIONAL_COLUMNS = ("device",)
POLICIES = ("reservoir", "fifo")
DENSE_GAP, DENSE_HIST = "log_seconds_since_prev", "log_history_len"


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


class ReplayBuffer:
    """A bounded store of past training rows (``reservoir``: uniform over everything offered;
    ``fifo``: the most recent ``capacity`` rows).

    Args:
        capacity: maximum rows held (≥ 1).
        policy: ``"reservoir"`` or ``"fifo"``.
        seed: seeds reservoir replacement and sampling.
    """

    def __init__(self, capacity: int = 20000, policy: str = "reservoir", seed: int = 0):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise DataError(expected("replay capacity as a positive int", capacity))
        if policy not in POLICIES:
            raise DataError(expected(f"replay policy among {list(POLICIES)}", policy))
        self.capacity, self.policy = capacity, policy
        self.rng = np.random.default_rng(seed)
        self.arrays: dict | None = None
        self.size = 0
        self.offered = 0
        self._next = 0

    def __len__(self) -> int:
        return self.size

    def add(self, inputs: dict, labels) -> None:
        labels = np.asarray(labels, np.float32).reshape(-1)
        n = labels.size
        if any(np.asarray(v).shape[0] != n for v in inputs.values()):
            raise DataError(expected(f"input arrays of {n} rows (one per label)",
                                     {k: np.asarray(v).shape[0] for k, v in inputs.items()}))
        if self.arrays is None:
            self.arrays = {k: np.zeros((self.capacity,) + np.asarray(v).shape[1:], np.asarray(v).dtype)
                           for k, v in {**inputs, "labels": labels}.items()}
        elif set(self.arrays) != set(inputs) | {"labels"}:
            raise DataError(expected(f"rows with arrays {sorted(self.arrays)}", sorted(set(inputs) | {"labels"})))
        rows = {**inputs, "labels": labels}
        if self.policy == "fifo":
            slots = (self._next + np.arange(n)) % self.capacity
            keep = np.arange(n)[-self.capacity:]
            slots = slots[-self.capacity:]
            self._next = int((self._next + n) % self.capacity)
            self.size = min(self.capacity, self.size + n)
        else:
            seen = self.offered + np.arange(n)                     # 0-based stream position
            fill = seen < self.capacity
            slots = np.where(fill, seen, self.rng.integers(0, np.maximum(seen + 1, 1)))
            keep = np.flatnonzero(fill | (slots < self.capacity))
            slots = slots[keep]
            self.size = min(self.capacity, self.size + n)
        for k, v in rows.items():
            self.arrays[k][slots] = np.asarray(v)[keep]
        self.offered += n

    def sample(self, n: int) -> tuple[dict, np.ndarray]:
        """``n`` rows drawn uniformly (with replacement) from the buffer."""
        if self.size == 0:
            raise DataError(expected("a non-empty replay buffer", 0))
        pick = self.rng.integers(0, self.size, size=n)
        out = {k: v[pick] for k, v in self.arrays.items()}
        return out, out.pop("labels")

    def contents(self) -> Split:
        arrays = {k: v[:self.size] for k, v in (self.arrays or {}).items()}
        labels = arrays.pop("labels", np.zeros(0, np.float32))
        return Split(arrays, labels)


@dataclass(frozen=True)
class OnlineConfig:
    """How the stream updates the model.

    Args:
        events_per_batch: new events scored then trained on together.
        steps_per_batch: gradient steps per batch of new events.
        batch_size: rows per gradient step.
        replay_fraction: share of each step's rows drawn from the replay buffer.
        replay_capacity: replay buffer bound (rows).
        replay_policy: ``"reservoir"`` or ``"fifo"``.
        negatives: sampled negatives per new positive.
        learning_rate: Adam learning rate of the updates.
        seed: seeds sampling.
    """

    events_per_batch: int = 256
    steps_per_batch: int = 4
    batch_size: int = 512
    replay_fraction: float = 0.5
    replay_capacity: int = 20000
    replay_policy: str = "reservoir"
    negatives: int = 4
    learning_rate: float = 5e-4
    seed: int = 0

    def __post_init__(self):
        for name in ("events_per_batch", "steps_per_batch", "batch_size", "replay_capacity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(expected(f"{name} as a positive int", value))
        if not isinstance(self.replay_fraction, (int, float)) or not 0 <= self.replay_fraction < 1:
            raise DataError(expected("replay_fraction in [0, 1)", self.replay_fraction))
        if self.replay_policy not in POLICIES:
            raise DataError(expected(f"replay_policy among {list(POLICIES)}", self.replay_policy))
        if isinstance(self.negatives, bool) or not isinstance(self.negatives, int) or self.negatives < 0:
            raise DataError(expected("negatives as a non-negative int", self.negatives))
        if not isinstance(self.learning_rate, (int, float)) or not 0 < self.learning_rate < 1:
            raise DataError(expected("learning_rate in (0, 1)", self.learning_rate))

    def to_dict(self) -> dict:
        return asdict(self)


class OnlineUpdater:
    """Warm-started incremental training of ``parts.fused`` (the parts share its weights).

    Args:
        parts: a trained `ModelParts` (e.g. from `load_model_dir`).
        config: an `OnlineConfig`.
        replay: a `ReplayBuffer` (default: a fresh one sized by the config).
    """

    def __init__(self, parts, config: OnlineConfig | None = None, replay: ReplayBuffer | None = None):
        from edgerec.converters.tfenv import import_tf

        _, keras = import_tf()
        self.parts, self.config = parts, config or OnlineConfig()
        self.replay = replay or ReplayBuffer(self.config.replay_capacity, self.config.replay_policy, self.config.seed)
        self.rng = np.random.default_rng(self.config.seed)
        self.names = list(parts.fused.input_names)
        parts.fused.compile(optimizer=keras.optimizers.Adam(self.config.learning_rate),
                            loss=keras.losses.BinaryCrossentropy())
        self.steps_done = 0

    def scores(self, split: Split) -> np.ndarray:
        from .fit import predict_scores

        return predict_scores(self.parts, split.inputs)

    def update(self, rows: Split) -> list[float]:
        """``steps_per_batch`` steps on new rows mixed with replayed rows; then buffer the rows."""
        cfg = self.config
        n_old = int(round(cfg.batch_size * cfg.replay_fraction)) if len(self.replay) else 0
        n_new = cfg.batch_size - n_old
        new_inputs = self.parts.select_inputs(rows.inputs)
        losses = []
        for _ in range(cfg.steps_per_batch):
            pick = self.rng.integers(0, len(rows), size=min(n_new, len(rows)))
            x = {k: new_inputs[k][pick] for k in self.names}
            y = rows.labels[pick]
            if n_old:
                old_x, old_y = self.replay.sample(n_old)
                x = {k: np.concatenate([x[k], old_x[k]]) for k in self.names}
                y = np.concatenate([y, old_y])
            losses.append(float(self.parts.fused.train_on_batch(x, y.reshape(-1, 1))))
            self.steps_done += 1
        self.replay.add(new_inputs, rows.labels)
        return losses

    def stream(self, rows: Split, events_per_group: int | None = None) -> dict:
        """Prequential pass over time-ordered rows grouped by event (``rows.groups``).

        Each batch of ``events_per_batch`` events is scored BEFORE it is trained on.

        Returns:
            ``{"scores": prequential scores [N], "batches", "steps", "loss_first", "loss_last"}``.
        """
        if rows.groups is None or len(rows) == 0:
            raise DataError(expected("non-empty rows with groups (event numbers)", len(rows)))
        groups = np.asarray(rows.groups)
        bounds = np.flatnonzero(np.diff(groups) != 0) + 1
        starts = np.concatenate(([0], bounds))[::self.config.events_per_batch]
        ends = np.concatenate((starts[1:], [len(rows)]))
        scores = np.empty(len(rows), np.float64)
        losses = []
        for s, e in zip(starts.tolist(), ends.tolist()):
            batch = rows.take(np.arange(s, e))
            scores[s:e] = self.scores(batch)
            losses += self.update(batch)
        return {"scores": scores, "batches": int(starts.size), "steps": len(losses),
                "loss_first": losses[0], "loss_last": losses[-1]}


def time_slice_evaluation(log, family: str = "din", *, base_fraction: float = 0.8, num_slices: int = 4,
                          model_config=None, train_config=None, online_config: OnlineConfig | None = None,
                          eval_negatives: int = 50, max_eval_events: int = 2000, max_seq_len: int = 50,
                          negatives: int = 4, seed: int = 0, progress=None) -> dict:
    """Base period + K time slices of an `InteractionLog`: online updates vs a frozen model.

    The log (sorted by time) is cut at ``base_fraction`` of its events; the base period is
    built into a `RecDataset` and a model trained on it (`train_model`); the rest is split
    into ``num_slices`` slices of equal event count. For slice k, a ranking set (up to
    ``max_eval_events`` events, each positive + ``eval_negatives`` negatives, histories from
    everything before the event) is scored by the frozen base model, by the online model
    BEFORE it sees slice k (trained on slices < k: prequential), and AFTER its update on
    slice k (in-sample, optimistic). Vocabulary frozen: items new after the base period are OOV.

    Returns:
        ``{"base": {"events", "metrics", "history"}, "slices": [{"slice", "start", "end",
        "events", "eval_rows", "new_user_share", "oov_item_share", "frozen_auc",
        "online_before_auc", "online_after_auc", "prequential_auc", "steps"}, …], "config": {…},
        "parts": the online-updated `ModelParts`}`` (``parts`` is not JSON: pop it before dumping).
    """
    from edgerec.runtime import metrics as M

    from ..data.builder import build_dataset
    from ..data.log import InteractionLog
    from .fit import predict_scores
    from .pipeline import train_model

    if not isinstance(base_fraction, (int, float)) or not 0 < base_fraction < 1:
        raise DataError(expected("base_fraction in (0, 1)", base_fraction))
    if isinstance(num_slices, bool) or not isinstance(num_slices, int) or num_slices < 1:
        raise DataError(expected("num_slices as a positive int", num_slices))
    say = progress or (lambda _m: None)
    cfg = online_config or OnlineConfig(seed=seed)
    order = np.lexsort((log.item_ids, log.user_ids, log.timestamps))
    cut = int(len(order) * base_fraction)
    if cut < 1 or len(order) - cut < num_slices:
        raise DataError(expected(f"enough events for a base period and {num_slices} slices", len(order)))
    base_idx, slices = order[:cut], np.array_split(order[cut:], num_slices)
    base_log = InteractionLog(log.user_ids[base_idx], log.item_ids[base_idx], log.timestamps[base_idx], log.items,
                              None if log.devices is None else log.devices[base_idx], f"{log.name}-base", log.meta)
    dataset = build_dataset(base_log, max_seq_len=max_seq_len, negatives=negatives, seed=seed, progress=False)
    say(f"base period: {cut} events, {len(dataset.train)} training rows")
    parts, history, metrics = train_model(dataset, family, model_config, train_config)
    spec, rng = parts.spec, np.random.default_rng(seed)
    store = HistoryStore(spec.max_seq_len).observe_all(EventLog.from_interactions(log, base_idx))
    rows, facts = [], []
    for k, idx in enumerate(slices):
        events = EventLog.from_interactions(log, idx)
        enc = encode_events(spec, events, store)
        pick = np.sort(rng.choice(len(enc), min(max_eval_events, len(enc)), replace=False))
        rows.append((with_negatives(enc, cfg.negatives, spec.item_vocab.size, rng),
                     with_negatives(enc, eval_negatives, spec.item_vocab.size, rng, pick)))
        facts.append({"slice": k + 1, "start": int(events.timestamps[0]), "end": int(events.timestamps[-1]),
                      "events": len(enc), "eval_rows": len(rows[-1][1]),
                      "new_user_share": float(1 - enc.known_user.mean()),
                      "oov_item_share": float(enc.oov_item.mean())})
    for fact, (_, evaluation) in zip(facts, rows):
        fact["frozen_auc"] = M.auc(evaluation.labels, predict_scores(parts, evaluation.inputs))
    replay = ReplayBuffer(cfg.replay_capacity, cfg.replay_policy, cfg.seed)
    replay.add(parts.select_inputs(dataset.train.inputs), dataset.train.labels)
    updater = OnlineUpdater(parts, cfg, replay)
    for fact, (train_rows, evaluation) in zip(facts, rows):
        fact["online_before_auc"] = M.auc(evaluation.labels, updater.scores(evaluation))
        result = updater.stream(train_rows)
        fact["online_after_auc"] = M.auc(evaluation.labels, updater.scores(evaluation))
        fact["prequential_auc"] = M.auc(train_rows.labels, result["scores"])
        fact["steps"] = result["steps"]
        say(f"slice {fact['slice']}: frozen {fact['frozen_auc']:.4f}  online before {fact['online_before_auc']:.4f}"
            f"  after {fact['online_after_auc']:.4f}")
    return {"base": {"events": cut, "metrics": metrics, "history": history}, "slices": facts,
            "config": {"family": family, "base_fraction": base_fraction, "num_slices": num_slices,
                       "eval_negatives": eval_negatives, "max_eval_events": max_eval_events,
                       "online": cfg.to_dict(), "vocabulary": "frozen at the base period (new items -> OOV)"},
            "parts": parts}
