"""Online learning: warm-started incremental updates from a stream of new interactions.

Events become rows with the model's frozen feature spec (`edgerec.sdk.training.events`). Every
batch of ``events_per_batch`` new events is first SCORED (prequential: the model has not seen it
yet), then trained on for ``steps_per_batch`` gradient steps whose mini-batches mix new rows with
rows drawn from a bounded `ReplayBuffer` of past rows (against forgetting); the batch then enters
the buffer. This is a single pass over a stream, not an epoch loop: there is no validation split
to stop on, so ``patience`` does not apply (the base model it starts from is trained by the
shared loop).

`time_slice_evaluation` splits a log by time into a base period + K slices and reports, per
slice, the AUC of the frozen base model and of the online model before / after its update.
`edgerec.sdk.training.update.update_model_dir` (``edgerec update``) updates a MODEL_DIR from an
events CSV into a new MODEL_DIR (bundle_version + 1) and optionally exports it.

Examples:
    >>> updater = OnlineUpdater(load_model_dir("runs/din"), OnlineConfig(steps_per_batch=4))
    >>> rows = encode_events(updater.parts.spec, read_events_csv("new.csv"), HistoryStore(50))
    >>> report = updater.stream(rows)          # prequential scores, then updates
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from edgerec.runtime.errors import expected

from ..data.dataset import Split
from ..data.log import DataError
from .events import (EVENT_COLUMNS, OPTIONAL_COLUMNS, EncodedEvents, EventLog, HistoryStore,  # noqa: F401
                     encode_events, read_events_csv, with_negatives)
from .replay import POLICIES, ReplayBuffer

logger = logging.getLogger(__name__)


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
        from .loop import compile_model

        self.parts, self.config = parts, config or OnlineConfig()
        self.replay = replay or ReplayBuffer(self.config.replay_capacity, self.config.replay_policy, self.config.seed)
        self.rng = np.random.default_rng(self.config.seed)
        self.names = list(parts.fused.input_names)
        compile_model(parts.fused, self.config.learning_rate)
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
                          negatives: int = 4, seed: int = 0) -> dict:
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
    cfg = online_config or OnlineConfig(seed=seed)
    order = np.lexsort((log.item_ids, log.user_ids, log.timestamps))
    cut = int(len(order) * base_fraction)
    if cut < 1 or len(order) - cut < num_slices:
        raise DataError(expected(f"enough events for a base period and {num_slices} slices", len(order)))
    base_idx, slices = order[:cut], np.array_split(order[cut:], num_slices)
    base_log = InteractionLog(log.user_ids[base_idx], log.item_ids[base_idx], log.timestamps[base_idx], log.items,
                              None if log.devices is None else log.devices[base_idx], f"{log.name}-base", log.meta)
    dataset = build_dataset(base_log, max_seq_len=max_seq_len, negatives=negatives, seed=seed, progress=False)
    logger.info(f"base period: {cut} events, {len(dataset.train)} training rows")
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
        logger.info(f"slice {fact['slice']}: frozen {fact['frozen_auc']:.4f}  online before {fact['online_before_auc']:.4f}"
            f"  after {fact['online_after_auc']:.4f}")
    return {"base": {"events": cut, "metrics": metrics, "history": history}, "slices": facts,
            "config": {"family": family, "base_fraction": base_fraction, "num_slices": num_slices,
                       "eval_negatives": eval_negatives, "max_eval_events": max_eval_events,
                       "online": cfg.to_dict(), "vocabulary": "frozen at the base period (new items -> OOV)"},
            "parts": parts}
