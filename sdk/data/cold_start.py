"""Cold-start rows (items held out of training, scored as new items) and candidate content.

`build_dataset(..., cold_start_fraction=f)` holds out the items first seen in the last f of the
log (`late_items`) and records their rows (`cold_start_rows`) in ``meta["cold_start"]``;
`with_candidate_content` gives a dataset's splits the ``cand_content`` input with content dropout.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from edgerec.runtime.contract import CAND_CONTENT
from edgerec.runtime.errors import expected
from edgerec.runtime.preprocess import Preprocessor
from edgerec.runtime.spec import CAND_ITEM, NUM_RESERVED, OOV_INDEX, FeatureSpec

from .dataset import DENSE_GAP, DENSE_HIST, RecDataset, Split
from .log import DataError, InteractionLog


@dataclass
class ColdStartRows:
    """Rows of items held out of training, to score them as new items (cold start).

    Attributes:
        split: model inputs (``cand_item`` = the OOV index on every row: the items are in no
            vocabulary), labels (each held-out event is a positive, with ``negatives`` held-out items
            its user never interacted with) and groups (user index).
        item_rows: ``[N]`` int64: row of each input row's candidate in ``item_ids``/``texts``.
        item_ids: the held-out items' raw ids.
        texts: their item texts (what a device would encode with the content encoder).
        requests: the raw request of each row (its ``item`` names the held-out item).
    """

    split: Split
    item_rows: np.ndarray
    item_ids: list
    texts: list
    requests: list

    def __len__(self) -> int:
        return len(self.split)


def late_items(log: InteractionLog, fraction: float) -> np.ndarray:
    """Raw ids of the items whose first event is among the last ``fraction`` of the log's events
    in time order (ties broken by item id), sorted."""
    order = np.lexsort((log.item_ids, log.timestamps))
    rank = np.empty(len(log), dtype=np.int64)
    rank[order] = np.arange(len(log))
    items, inverse = np.unique(log.item_ids, return_inverse=True)
    first = np.full(items.size, len(log), dtype=np.int64)
    np.minimum.at(first, inverse, rank)
    return items[first >= int(np.floor((1.0 - fraction) * len(log)))]


def cold_start_rows(log: InteractionLog, cold_items: np.ndarray, spec: FeatureSpec, *, negatives: int = 4,
                    seed: int = 0) -> ColdStartRows:
    """`ColdStartRows` of ``cold_items``: one positive per event of a cold item, whose request has
    the user's history of other (warm) items before it, plus ``negatives`` cold items the user
    never interacted with; encoded by the `Preprocessor` of ``spec`` (the held-out ids are OOV)."""
    rng = np.random.default_rng(seed + 1)
    order = np.lexsort((log.item_ids, log.timestamps, log.user_ids))
    users, items, times = log.user_ids[order], log.item_ids[order], log.timestamps[order]
    devices = None if log.devices is None else log.devices[order]
    cold_items = np.asarray(cold_items)
    cold_set = set(cold_items.tolist())
    row_of = {int(i): r for r, i in enumerate(cold_items.tolist())}
    text_by_id = log.items.text_by_id()
    user_index = {u: k for k, u in enumerate(np.unique(users).tolist())}
    seen_by_user: dict = {}
    for u, i in zip(users.tolist(), items.tolist()):
        if i in cold_set:
            seen_by_user.setdefault(u, set()).add(row_of[i])
    requests, item_rows, labels, groups = [], [], [], []
    history: list = []
    last_time = None
    for e, (u, i, t) in enumerate(zip(users.tolist(), items.tolist(), times.tolist())):
        if e == 0 or u != users[e - 1]:
            history, last_time = [], None
        if i not in cold_set:
            history.append(str(i))
            last_time = t
            continue
        context = {"timestamp": int(t)} if devices is None else {"timestamp": int(t), "device": str(devices[e])}
        dense = {DENSE_HIST: math.log1p(len(history))}
        if last_time is not None:
            dense[DENSE_GAP] = math.log1p(max(int(t - last_time), 0))
        seen = seen_by_user.get(u, set())
        pool = np.setdiff1d(np.arange(cold_items.size), np.fromiter(seen, np.int64, len(seen)))
        picks = rng.choice(pool, size=min(negatives, pool.size), replace=False) if pool.size else []
        for row, label in [(row_of[i], 1.0)] + [(int(r), 0.0) for r in picks]:
            requests.append({"user_id": str(u), "history": history[-spec.max_seq_len:],
                             "item": str(int(cold_items[row])), "context": context, "dense": dense})
            item_rows.append(row)
            labels.append(label)
            groups.append(user_index[u])
    inputs = Preprocessor(spec).encode_requests(requests) if requests else {}
    split = Split(inputs, np.asarray(labels, np.float32), np.asarray(groups, np.int64))
    return ColdStartRows(split, np.asarray(item_rows, np.int64), [str(int(i)) for i in cold_items.tolist()],
                         [text_by_id[int(i)] for i in cold_items.tolist()], requests)


def with_candidate_content(dataset: RecDataset, table: np.ndarray, dropout: float = 0.0,
                           seed: int = 0) -> RecDataset:
    """``dataset`` whose splits carry ``cand_content`` (zeros: known ids), with content dropout.

    A ``dropout`` share of the training rows (known candidates only, seeded) get ``cand_item`` =
    the OOV index and ``cand_content`` = their item's row of ``table``, as a new item is scored
    on the device, so the model learns to score an item from its content alone.

    Args:
        dataset: the dataset (not changed).
        table: ``[item_vocab.size, Dc]`` content vectors of the item indices.
        dropout: share of training rows to turn into content-only rows, in [0, 1).
        seed: seeds the choice of rows.
    """
    table = np.asarray(table, np.float32)
    if table.ndim != 2 or table.shape[0] != dataset.spec.item_vocab.size:
        raise DataError(expected(f"a content table of shape [{dataset.spec.item_vocab.size}, Dc]", table.shape))
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise DataError(expected("content dropout in [0, 1)", dropout))

    def with_zeros(split: Split) -> Split:
        inputs = dict(split.inputs)
        inputs[CAND_CONTENT] = np.zeros((len(split), table.shape[1]), np.float32)
        return Split(inputs, split.labels, split.groups)

    train = with_zeros(dataset.train)
    cand = train.inputs[CAND_ITEM]
    known = np.flatnonzero(cand >= NUM_RESERVED)
    rows = np.sort(np.random.default_rng(seed).choice(known, int(round(dropout * known.size)), replace=False))
    if rows.size:
        train.inputs[CAND_CONTENT][rows] = table[cand[rows]]
        train.inputs[CAND_ITEM] = cand.copy()
        train.inputs[CAND_ITEM][rows] = OOV_INDEX
    meta = dict(dataset.meta, content_dropout_rows=int(rows.size))
    return dataclasses.replace(dataset, train=train, valid=with_zeros(dataset.valid), test=with_zeros(dataset.test),
                               meta=meta)
