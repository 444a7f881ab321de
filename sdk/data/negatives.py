"""Negative sampling for the next-item task: uniform over known items a user never interacted with.

Popularity-independent on purpose (the popularity baseline then measures how much popularity
alone explains). Exact: every sampled negative is checked against the user's whole log
(train, valid and test events), so no negative is an item the user interacted with.
"""
from __future__ import annotations

import numpy as np

from edgerec.runtime.errors import expected
from edgerec.runtime.spec import NUM_RESERVED

from .log import DataError


class NegativeSampler:
    """Seeded sampler over item indices ``[2, vocab_size)``.

    Args:
        event_user: user index of each event (events sorted by user, then time).
        event_item: encoded item index of each event (OOV items = 1 are never sampled).
        user_start, user_counts: first event and event count of each user index.
        vocab_size: item vocabulary size, reserved indices included.
        rng: the builder's generator (call order is part of the seeded output).
        user_ids: raw user ids, for error messages.

    Examples:
        >>> sampler = NegativeSampler(event_user, event_item, starts, counts, vocab.size, rng, users)
        >>> sampler.pointwise(np.flatnonzero(is_train), negatives=4, shuffle=True)
    """

    def __init__(self, event_user, event_item, user_start, user_counts, vocab_size: int,
                 rng: np.random.Generator, user_ids):
        self.event_user = np.asarray(event_user)
        self.event_item = np.asarray(event_item)
        self.user_start, self.user_counts = np.asarray(user_start), np.asarray(user_counts)
        self.vocab_size, self.rng = int(vocab_size), rng
        self.interacted = np.unique(self.event_user.astype(np.int64) * self.vocab_size + self.event_item)
        num_known = self.vocab_size - NUM_RESERVED
        known_seen = np.bincount(self.event_user[self.event_item >= NUM_RESERVED], minlength=len(user_ids))
        exhausted = np.flatnonzero(known_seen >= num_known)
        if exhausted.size:
            raise DataError(expected("for every user, some known item they never interacted with (for negatives)",
                                     f"users {[str(u) for u in np.asarray(user_ids)[exhausted[:5]]]} "
                                     f"interacted with all {num_known} training items"))

    def _seen(self, keys: np.ndarray) -> np.ndarray:
        where = np.minimum(np.searchsorted(self.interacted, keys), self.interacted.size - 1)
        return self.interacted[where] == keys

    def unseen_pool(self, user: int) -> np.ndarray:
        """Every known item index the user never interacted with."""
        allowed = np.ones(self.vocab_size, dtype=bool)
        allowed[:NUM_RESERVED] = False
        start = self.user_start[user]
        allowed[self.event_item[start:start + self.user_counts[user]]] = False
        return np.flatnonzero(allowed).astype(np.int32)

    def sample(self, events: np.ndarray) -> np.ndarray:
        """One negative per entry of ``events`` (for that event's user); repeats allowed."""
        user_keys = self.event_user[events].astype(np.int64) * self.vocab_size
        out = self.rng.integers(NUM_RESERVED, self.vocab_size, size=events.size)
        bad = self._seen(user_keys + out)
        for _ in range(50):                           # rejection sampling
            if not bad.any():
                break
            out[bad] = self.rng.integers(NUM_RESERVED, self.vocab_size, size=int(bad.sum()))
            bad[bad] = self._seen(user_keys[bad] + out[bad])
        for row in np.flatnonzero(bad).tolist():      # users near the catalog size: draw from what is left
            pool = self.unseen_pool(self.event_user[events[row]])
            out[row] = pool[self.rng.integers(pool.size)]
        return out.astype(np.int32)

    def pointwise(self, positives: np.ndarray, negatives: int, shuffle: bool):
        """Rows ``(event, candidate, label)``: each positive event then ``negatives`` sampled items."""
        events = np.repeat(positives, 1 + negatives)
        candidates = self.event_item[events].astype(np.int32)
        labels = np.zeros(events.size, dtype=np.float32)
        labels[:: 1 + negatives] = 1.0
        negative_slots = labels == 0
        candidates[negative_slots] = self.sample(events[negative_slots])
        if shuffle:
            perm = self.rng.permutation(events.size)
            events, candidates, labels = events[perm], candidates[perm], labels[perm]
        return events, candidates, labels

    def known_seen(self, user: int) -> np.ndarray:
        """The known item indices (>= 2) the user interacted with, sorted and distinct."""
        base = int(user) * self.vocab_size
        lo, hi = np.searchsorted(self.interacted, (base + NUM_RESERVED, base + self.vocab_size))
        return self.interacted[lo:hi] - base

    def ranking(self, positives: np.ndarray, negatives: int):
        """Per positive event: the positive first, then up to ``negatives`` distinct unseen items.

        The negatives are ``rng.choice(unseen_pool(user), k, replace=False)``; that draw consumes
        the generator by the pool's size alone, so the pool is never built: the picked ranks among
        the unseen items are mapped to item indices through the user's few seen items
        (`unseen_at`), which keeps this O(events per user) instead of O(catalogue) per user.
        """
        positives = np.asarray(positives)
        num_known = self.vocab_size - NUM_RESERVED
        sizes = np.empty(positives.size, np.int64)
        chosen_parts = []
        for row, e in enumerate(positives.tolist()):
            seen = self.known_seen(self.event_user[e])
            pool_size = num_known - seen.size
            ranks = self.rng.choice(pool_size, size=min(negatives, pool_size), replace=False)
            chosen_parts.append(np.concatenate(([self.event_item[e]], unseen_at(seen, ranks))).astype(np.int32))
            sizes[row] = chosen_parts[-1].size
        events = np.repeat(positives, sizes)
        candidates = np.concatenate(chosen_parts) if chosen_parts else np.zeros(0, np.int32)
        labels = np.zeros(candidates.size, np.float32)
        labels[np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)] = 1.0
        return events, candidates, labels


def unseen_at(seen: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Item index of each 0-based rank among the known items NOT in ``seen`` (sorted distinct
    indices >= 2): ``unseen_pool(user)[ranks]`` without building the pool.

    Examples:
        >>> unseen_at(np.array([2, 3, 5]), np.array([0, 1, 2])).tolist()
        [4, 6, 7]
    """
    ranks = np.asarray(ranks, np.int64)
    gaps = np.asarray(seen, np.int64) - NUM_RESERVED - np.arange(len(seen))   # unseen items before each seen one
    return NUM_RESERVED + ranks + np.searchsorted(gaps, ranks, side="right")
