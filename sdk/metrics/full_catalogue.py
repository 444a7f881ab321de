"""The held-out users of a dataset and full-catalogue evaluation over them (numpy only).

Each user with a test row holds out its last item; its *seen* items are every earlier item it
interacted with (train and valid positives, and the test row's history). A model is scored on
every item index for each held-out user, the seen items are left out, and the held-out item's rank
gives HR@10, NDCG@10 and recall@100 (`edgerec.runtime.metrics.full_catalogue_metrics`).

The held-out users are written into every MODEL_DIR as ``heldout_users.npz``
(`edgerec.runtime.contract.HELDOUT_USERS_FILE`) so that export, validate and bench measure the
same users through the artifacts:

================  ========  =============  ====================================================
array             dtype     shape          meaning
================  ========  =============  ====================================================
hist_items        int32     [U, L]         the test row's history (left-padded, latest last)
<context field>   int32     [U]            each ``spec.context`` field of the test row
dense             float32   [U, F]         the test row's dense features (when the spec has any)
positive          int32     [U]            item index of the held-out item (1 = OOV: a miss)
user              int64     [U]            user index (the test split's ``groups``)
seen_indptr       int64     [U + 1]        CSR row pointers of the seen items
seen_items        int32     [nnz]          seen item indices (user u: items[indptr[u]:indptr[u+1]])
================  ========  =============  ====================================================

Examples:
    >>> users = held_out_users(dataset)
    >>> popularity_full_catalogue(dataset, users)        # {"hr@10", "ndcg@10", "recall@100"}
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgerec.runtime.contract import CAND_ITEM
from edgerec.runtime.errors import SpecError, expected
from edgerec.runtime.metrics import FULL_CATALOGUE_KEYS, SeenItems, full_catalogue_metrics

POSITIVE, USER, SEEN_INDPTR, SEEN_ITEMS = "positive", "user", "seen_indptr", "seen_items"
DEFAULT_SEED = 0


@dataclass
class HeldOutUsers:
    """One row per held-out user: its user-side model inputs, held-out item and seen items.

    Attributes:
        inputs: user-side arrays named like the model inputs (no ``cand_item``).
        positives: int32 ``[U]`` held-out item index.
        users: int64 ``[U]`` user index.
        seen: `SeenItems` of the U users.
    """

    inputs: dict
    positives: np.ndarray
    users: np.ndarray
    seen: SeenItems

    def __len__(self) -> int:
        return int(self.positives.size)

    def take(self, rows) -> "HeldOutUsers":
        rows = np.asarray(rows, np.int64)
        return HeldOutUsers({k: v[rows] for k, v in self.inputs.items()}, self.positives[rows], self.users[rows],
                            self.seen.take(rows))

    def sample(self, max_users: int | None, seed: int = DEFAULT_SEED) -> "HeldOutUsers":
        """At most ``max_users`` users, a seeded sample in user order (all of them when None or fewer)."""
        if max_users is None or len(self) <= max_users:
            return self
        rng = np.random.default_rng(seed)
        return self.take(np.sort(rng.choice(len(self), max_users, replace=False)))

    def to_npz_dict(self) -> dict:
        return {**self.inputs, POSITIVE: self.positives.astype(np.int32), USER: self.users.astype(np.int64),
                SEEN_INDPTR: self.seen.indptr.astype(np.int64), SEEN_ITEMS: self.seen.items.astype(np.int32)}

    @classmethod
    def from_npz_dict(cls, arrays) -> "HeldOutUsers":
        missing = [k for k in (POSITIVE, USER, SEEN_INDPTR, SEEN_ITEMS) if k not in arrays]
        if missing:
            raise SpecError(expected("held-out user arrays positive/user/seen_indptr/seen_items", f"missing {missing}"))
        reserved = {POSITIVE, USER, SEEN_INDPTR, SEEN_ITEMS}
        inputs = {k: np.asarray(arrays[k]) for k in arrays if k not in reserved}
        return cls(inputs, np.asarray(arrays[POSITIVE], np.int32), np.asarray(arrays[USER], np.int64),
                   SeenItems(np.asarray(arrays[SEEN_INDPTR], np.int64), np.asarray(arrays[SEEN_ITEMS], np.int32)))

    @classmethod
    def load(cls, path) -> "HeldOutUsers":
        with np.load(Path(path), allow_pickle=False) as data:
            return cls.from_npz_dict({k: data[k] for k in data.files})


def held_out_users(dataset) -> HeldOutUsers:
    """The held-out users of ``dataset`` (one per test group), in user-index order."""
    test = dataset.test
    if test.groups is None or len(test) == 0:
        raise SpecError(expected("a non-empty test ranking split with groups", len(test)))
    rows = np.flatnonzero(test.labels > 0.5)
    rows = rows[np.argsort(test.groups[rows], kind="stable")]
    users = test.groups[rows].astype(np.int64)
    if np.unique(users).size != users.size:
        raise SpecError(expected("exactly one positive per test group", "a group with several"))
    inputs = {k: np.asarray(v[rows]) for k, v in test.inputs.items() if k != CAND_ITEM}
    positives = np.asarray(test.inputs[CAND_ITEM][rows], np.int32)
    return HeldOutUsers(inputs, positives, users, _seen_items(dataset, users, inputs))


def _seen_items(dataset, users: np.ndarray, inputs: dict) -> SeenItems:
    """Train and valid positives of each user, plus its test history (unique, sorted)."""
    user_parts, item_parts = [], []
    for split in (dataset.train, dataset.valid):
        if split.groups is None or len(split) == 0:
            continue
        positive = split.labels > 0.5
        user_parts.append(split.groups[positive].astype(np.int64))
        item_parts.append(np.asarray(split.inputs[CAND_ITEM][positive], np.int64))
    history = np.asarray(inputs["hist_items"], np.int64)
    hist_rows, hist_cols = np.nonzero(history)
    user_parts.append(users[hist_rows])
    item_parts.append(history[hist_rows, hist_cols])
    all_users, all_items = np.concatenate(user_parts), np.concatenate(item_parts)
    # rank each user among the held-out ones; users without a test row drop out
    position = np.searchsorted(users, all_users)
    position = np.minimum(position, users.size - 1)
    keep = users[position] == all_users
    width = int(all_items.max(initial=0)) + 1
    keys = np.unique(position[keep] * width + all_items[keep])
    rows, items = keys // width, (keys % width).astype(np.int32)
    indptr = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=users.size)))).astype(np.int64)
    return SeenItems(indptr, items)


def catalogue_size(dataset) -> int:
    """Item indices a model scores (``item_vocab.size``: padding and OOV included, never recommended)."""
    return int(dataset.spec.item_vocab.size)


def popularity_full_catalogue(dataset, users: HeldOutUsers) -> dict[str, float]:
    """Full-catalogue metrics of ranking every item by its training popularity."""
    popularity = np.asarray(dataset.item_popularity, np.float64)

    def scores(start, stop):
        return np.broadcast_to(popularity, (stop - start, popularity.size))

    return pick(full_catalogue_metrics(scores, users.positives, users.seen))


def pick(metrics: dict) -> dict[str, float]:
    """The `FULL_CATALOGUE_KEYS` of a `full_catalogue_metrics` result (the metrics.json block)."""
    return {k: metrics[k] for k in FULL_CATALOGUE_KEYS}
