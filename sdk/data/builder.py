"""InteractionLog → `RecDataset`: the standard next-item CTR task.

Per user, events are put in time order (ties broken by item id). For each event the history is
the up-to-L previous items (most recent last, left-padded with 0).

* train — every event except each user's last two, plus ``negatives`` uniformly sampled items
  the user never interacted with (shuffled, seeded);
* valid — each user's second-to-last event plus ``negatives`` negatives (early stopping);
* test  — leave-last-out: each user's last event plus ``test_negatives`` (100) distinct
  negatives, ``groups`` = user index (the ranking set).

Users with fewer than 3 events contribute training rows only. Context = hour and weekday of
the event timestamp (+ ``device`` when the log has devices). Dense = log1p(seconds since the
previous event) and log1p(history length), standardised with train mean/std; a raw request
carries the log1p values (``dense: {"log_seconds_since_prev": …, "log_history_len": …}``) and a
user's first event leaves the gap out (→ the field default = train mean → 0 after scaling).
Vocabularies come from training events only (item tokens ordered by training count, then id;
an item first seen in valid/test is out-of-vocabulary, index 1).

Every array is produced by `edgerec.runtime.preprocess.Preprocessor` (items, context, dense are
encoded once per event and histories are windows over the per-event encoded items, which is
element-wise identical to ``Preprocessor.encode_history`` of the raw history) so training and
serving encode a raw request identically; `BuildTrace.raw_request` rebuilds a row's raw request.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from edgerec.runtime.errors import expected
from edgerec.runtime.preprocess import Preprocessor
from edgerec.runtime.progress import Progress
from edgerec.runtime.spec import (CAND_ITEM, DENSE, HIST_ITEMS, NUM_RESERVED, ContextField, DenseField, FeatureSpec,
                                  TextSpec, Vocabulary)
from edgerec.runtime.text import build_text_vocab

from .cold_start import ColdStartRows, cold_start_rows, late_items, with_candidate_content  # noqa: F401  (re-exported)
from .dataset import DENSE_GAP, DENSE_HIST, RecDataset, Split
from .log import DataError, InteractionLog
from .negatives import NegativeSampler

NUM_EXAMPLES = 32


@dataclass
class BuildTrace:
    """How each row was made, for parity checks and debugging (indices into the sorted log)."""

    log: InteractionLog          # the log sorted by (user, timestamp, item)
    event_user: np.ndarray       # user index per sorted event
    event_pos: np.ndarray        # position of the event in its user's timeline
    user_start: np.ndarray       # first sorted event of each user index
    max_seq_len: int
    rows: dict                   # split -> (event index per row, raw candidate id per row)

    def raw_request(self, split: str, row: int) -> dict:
        """The raw request (runtime format) whose encoding is row ``row`` of ``split``."""
        events, candidates = self.rows[split]
        e = int(events[row])
        start = int(self.user_start[self.event_user[e]])
        history = [str(i) for i in self.log.item_ids[max(start, e - self.max_seq_len):e].tolist()]
        context = {"timestamp": int(self.log.timestamps[e])}
        if self.log.devices is not None:
            context["device"] = str(self.log.devices[e])
        dense = {DENSE_HIST: math.log1p(e - start)}
        if e > start:
            dense[DENSE_GAP] = math.log1p(int(self.log.timestamps[e] - self.log.timestamps[e - 1]))
        return {"user_id": str(self.log.user_ids[e]), "history": history, "item": str(candidates[row]),
                "context": context, "dense": dense}


def build_dataset(log: InteractionLog, *, max_seq_len: int = 50, negatives: int = 4,
                  test_negatives: int = 100, seed: int = 0, text_max_tokens: int = 16,
                  progress: bool = True, return_trace: bool = False, cold_start_fraction: float = 0.0):
    """Build the next-item CTR `RecDataset` from a raw log (see the module docstring).

    With ``cold_start_fraction`` f > 0 the items first seen in the last f of the log's events (by
    time) are held out: their events are left out of the dataset (so they are in no vocabulary,
    history or split) and become ``meta["cold_start"]``, a `ColdStartRows` (see `late_items`).
    """
    if isinstance(cold_start_fraction, bool) or not isinstance(cold_start_fraction, (int, float)) \
            or not 0.0 <= cold_start_fraction < 0.5:
        raise DataError(expected("cold_start_fraction in [0, 0.5)", cold_start_fraction))
    if cold_start_fraction > 0:
        cold = late_items(log, cold_start_fraction)
        warm = ~np.isin(log.item_ids, cold)
        warm_log = InteractionLog(log.user_ids[warm], log.item_ids[warm], log.timestamps[warm], log.items,
                                  None if log.devices is None else log.devices[warm], log.name, log.meta)
        built = build_dataset(warm_log, max_seq_len=max_seq_len, negatives=negatives,
                              test_negatives=test_negatives, seed=seed, text_max_tokens=text_max_tokens,
                              progress=progress, return_trace=return_trace)
        dataset = built[0] if return_trace else built
        dataset.meta["cold_start"] = cold_start_rows(log, cold, dataset.spec, negatives=negatives, seed=seed)
        dataset.meta["cold_start_fraction"] = float(cold_start_fraction)
        return built
    if not isinstance(max_seq_len, int) or max_seq_len < 1:
        raise DataError(expected("max_seq_len as a positive int", max_seq_len))
    if not isinstance(negatives, int) or negatives < 0:
        raise DataError(expected("negatives as a non-negative int", negatives))
    if not isinstance(test_negatives, int) or test_negatives < 1:
        raise DataError(expected("test_negatives as a positive int", test_negatives))
    timings, t0 = {}, time.perf_counter()
    bar = Progress(total=6, desc=f"building {log.name} dataset", unit="step", enabled=progress)

    def step(name: str) -> None:
        bar.update(1, postfix=name)

    rng = np.random.default_rng(seed)

    # 1. sort: user, time, item id (deterministic tie-break)
    order = np.lexsort((log.item_ids, log.timestamps, log.user_ids))
    log = InteractionLog(log.user_ids[order], log.item_ids[order], log.timestamps[order], log.items,
                         None if log.devices is None else log.devices[order], log.name, log.meta)
    n = len(log)
    users, event_user, user_counts = np.unique(log.user_ids, return_inverse=True, return_counts=True)
    user_start = np.concatenate(([0], np.cumsum(user_counts)[:-1]))
    event_pos = np.arange(n) - user_start[event_user]
    from_end = user_counts[event_user] - event_pos          # 1 = last event of the user
    evaluable = user_counts[event_user] >= 3
    is_test = evaluable & (from_end == 1)
    is_valid = evaluable & (from_end == 2)
    is_train = ~(is_test | is_valid)
    step("sorted")

    # 2. vocabularies and dense statistics from training events only
    train_items, train_counts = np.unique(log.item_ids[is_train], return_counts=True)
    rank = np.lexsort((train_items, -train_counts))
    item_vocab = Vocabulary("item", tuple(str(i) for i in train_items[rank].tolist()))
    context = [ContextField("hour", "hour"), ContextField("weekday", "weekday")]
    if log.devices is not None:
        devices, device_counts = np.unique(log.devices[is_train], return_counts=True)
        device_tokens = devices[np.lexsort((devices, -device_counts))]
        context.append(ContextField("device", "categorical", Vocabulary("device", tuple(device_tokens.tolist()))))
    has_prev = event_pos > 0
    gap = np.zeros(n)
    gap[1:] = np.log1p(np.maximum(np.diff(log.timestamps), 0))
    hist_len = np.log1p(event_pos.astype(np.float64))
    dense_fields = (_dense_field(DENSE_GAP, gap[is_train & has_prev]), _dense_field(DENSE_HIST, hist_len[is_train]))
    text_by_id = log.items.text_by_id()
    item_text = ["", ""] + [text_by_id[int(t)] for t in item_vocab.tokens]
    text = TextSpec(build_text_vocab(item_text[NUM_RESERVED:], max_size=5000), max_tokens=text_max_tokens)
    spec = FeatureSpec(max_seq_len, item_vocab, tuple(context), dense_fields, text)
    pre = Preprocessor(spec)
    step("vocabularies")

    # 3. encode every event once with the Preprocessor
    event_item, event_context, event_dense = _encode_events(pre, log, hist_len, gap, has_prev)
    history = np.zeros((n, max_seq_len), dtype=np.int32)
    for back in range(1, max_seq_len + 1):   # column L-back holds the item `back` events earlier
        ok = event_pos >= back
        history[ok, max_seq_len - back] = event_item[np.flatnonzero(ok) - back]
    step("encoded")

    # 4. negatives: uniform over known items, never interacted with by the user
    num_known = item_vocab.size - NUM_RESERVED
    sampler = NegativeSampler(event_user, event_item, user_start, user_counts, item_vocab.size, rng, users)
    train_rows = sampler.pointwise(np.flatnonzero(is_train), negatives, shuffle=True)
    valid_rows = sampler.pointwise(np.flatnonzero(is_valid), negatives, shuffle=False)
    step("train/valid negatives")
    if not is_test.any():
        raise DataError(expected("at least one user with 3 or more events", int(user_counts.max())))
    test_events, test_cands, test_labels = sampler.ranking(np.flatnonzero(is_test), test_negatives)
    step("test negatives")

    def make_split(events, candidates, labels) -> Split:
        inputs = {HIST_ITEMS: history[events], CAND_ITEM: candidates.astype(np.int32)}
        inputs.update({name: column[events] for name, column in event_context.items()})
        inputs[DENSE] = event_dense[events]
        return Split(inputs, labels.astype(np.float32), event_user[events].astype(np.int64))

    train = make_split(*train_rows)
    valid = make_split(*valid_rows)
    test = make_split(test_events, test_cands, test_labels)
    popularity = np.bincount(event_item[is_train], minlength=item_vocab.size).astype(np.int64)
    popularity[:NUM_RESERVED] = 0
    step("splits")

    index_to_raw = np.asarray(["", ""] + list(item_vocab.tokens), dtype=object)
    genres_by_id = item_genres(log.items)

    def raw_candidates(events, candidates, labels):
        # a positive's raw id comes from the log: an item first seen after training is OOV (index
        # 1) in the arrays, but its request still names the real item
        raw = index_to_raw[candidates]
        positive = labels > 0.5
        raw[positive] = log.item_ids[events[positive]].astype(str)
        return raw

    # the examples need the test rows' raw candidates only; train/valid ones (a Python str per
    # row: ~10^7 of them at 10^6 items) are made only for a caller that asked for the trace
    rows = {"test": (test_events, raw_candidates(test_events, test_cands, test_labels))}
    if return_trace:
        rows.update(train=(train_rows[0], raw_candidates(*train_rows)), valid=(valid_rows[0], raw_candidates(*valid_rows)))
    trace = BuildTrace(log, event_user, event_pos, user_start, max_seq_len, rows)
    examples = _examples(trace, test, rng)
    bar.close()
    timings["build_seconds"] = round(time.perf_counter() - t0, 3)
    meta = {"source": log.name, "source_meta": log.meta, "num_events": n, "num_users": int(users.size),
            "num_items_logged": int(np.unique(log.item_ids).size), "num_items_vocab": num_known,
            "rows": {"train": len(train), "valid": len(valid), "test": len(test)},
            "negatives": negatives, "test_negatives": test_negatives, "seed": seed,
            "user_ids": [str(u) for u in users.tolist()], "timings": timings,
            "item_genres": [[], []] + [genres_by_id.get(int(t), []) for t in item_vocab.tokens]}
    dataset = RecDataset(log.name, spec, train, valid, test, item_text, popularity, examples, meta)
    return (dataset, trace) if return_trace else dataset


def _encode_events(pre: Preprocessor, log: InteractionLog, hist_len: np.ndarray, gap: np.ndarray,
                   has_prev: np.ndarray) -> tuple:
    """``(items int32 [n], context {field: int32 [n]}, dense float32 [n, F])`` of every event,
    each made by the Preprocessor from raw values — once per DISTINCT raw value, then spread over
    the events holding it (a Python dict per event cost minutes at 3 x 10^6 events):

    * items: the distinct raw item ids;
    * context: hour and weekday depend only on the hour of the week (``timestamp // 3600 mod
      168``: a week is 168 whole hours), so one real event per (hour of week, device) is encoded;
    * dense: each field is scaled on its own, so each field's distinct values are encoded apart
      (a missing gap — a user's first event — takes the field default, like a request without it).
    """
    items, item_of = np.unique(log.item_ids, return_inverse=True)
    event_item = pre.encode_items([str(i) for i in items.tolist()])[item_of.reshape(-1)]
    key = (log.timestamps // 3600) % 168
    if log.devices is not None:
        devices, device_of = np.unique(log.devices, return_inverse=True)
        key = key * devices.size + device_of.reshape(-1)
    _, first, key_of = np.unique(key, return_index=True, return_inverse=True)
    timestamps = log.timestamps[first].tolist()
    contexts = [{"timestamp": int(ts)} for ts in timestamps]
    if log.devices is not None:
        for context, device in zip(contexts, log.devices[first].tolist()):
            context["device"] = device
    event_context = {name: column[key_of.reshape(-1)] for name, column in pre.encode_context(contexts).items()}
    event_dense = np.empty((len(log), len(pre.spec.dense)), np.float32)
    for col, field in enumerate(pre.spec.dense):
        values, present = (hist_len, np.ones(len(log), bool)) if field.name == DENSE_HIST else (gap, has_prev)
        distinct, value_of = np.unique(values[present], return_inverse=True)
        encoded = pre.encode_dense([{field.name: v} for v in distinct.tolist()])[:, col]
        event_dense[present, col] = encoded[value_of.reshape(-1)]
        if not present.all():
            event_dense[~present, col] = pre.encode_dense([{}])[0, col]
    return event_item, event_context, event_dense


def item_genres(items) -> dict[int, list[str]]:
    """Raw item id -> its genres: the item's tags that are some item's primary category (for
    MovieLens its genres, without the user tags that follow them)."""
    known = {c for c in items.categories if c}
    return {int(i): [t for t in tags if t in known] for i, tags in zip(items.item_ids.tolist(), items.tags)}


def _dense_field(name: str, values: np.ndarray) -> DenseField:
    if values.size == 0:
        return DenseField(name)
    mean, std = float(values.mean()), float(values.std())
    return DenseField(name, mean=mean, std=std if std > 1e-8 else 1.0, default=mean)


def _examples(trace: BuildTrace, test: Split, rng: np.random.Generator) -> list[dict]:
    """32 raw requests from distinct test users: alternately the held-out item and a negative."""
    starts = np.flatnonzero(np.diff(np.concatenate(([-1], trace.rows["test"][0]))) != 0)
    ends = np.concatenate((starts[1:], [len(test)]))
    picks = np.sort(rng.choice(starts.size, size=min(NUM_EXAMPLES, starts.size), replace=False))
    out = []
    for k, g in enumerate(picks.tolist()):
        row = int(starts[g]) if k % 2 == 0 else int(rng.integers(starts[g] + 1, ends[g]))
        out.append(trace.raw_request("test", row))
    return out


SOURCES = ("synthetic", "movielens:PATH")


def load_dataset(source: str, *, max_seq_len: int = 50, negatives: int = 4, seed: int = 0,
                 progress: bool = True, cold_start_fraction: float = 0.0, **generator_options) -> RecDataset:
    """Load a data source and build the next-item CTR `RecDataset`.

    Args:
        source: ``"synthetic"`` (the embedded generator; ``generator_options`` are
            `SyntheticConfig` fields such as ``num_users``) or ``"movielens:PATH"`` (a folder
            in the ml-latest-small CSV layout; ``"movielens"`` alone uses $EDGEREC_MOVIELENS).
        max_seq_len: history length L.
        negatives: sampled negatives per training / validation positive.
        seed: seeds the generator and the negative sampling.
        cold_start_fraction: hold out the items first seen in this last share of the events
            (`build_dataset`; ``meta["cold_start"]``).

    Examples:
        >>> ds = load_dataset("synthetic", num_users=200, num_items=300, num_events=6000)
        >>> ds.test.inputs["hist_items"].shape[1]
        50
    """
    if not isinstance(source, str) or not source:
        raise DataError(expected(f"a data source among {SOURCES}", source))
    kind, _, path = source.partition(":")
    if kind == "synthetic" and not path:
        from .synthetic import SyntheticConfig, generate_log
        log = generate_log(SyntheticConfig.from_options(seed=seed, **generator_options))
    elif kind == "movielens":
        from .movielens import load_movielens
        if generator_options:
            raise DataError(expected("no generator options for MovieLens", sorted(generator_options)))
        log = load_movielens(path or None)
    else:
        raise DataError(expected(f"a data source among {SOURCES}", source))
    return build_dataset(log, max_seq_len=max_seq_len, negatives=negatives, seed=seed, progress=progress,
                         cold_start_fraction=cold_start_fraction)
