"""A bounded store of past training rows that online updates mix into every step (against forgetting)."""
from __future__ import annotations

import numpy as np

from edgerec.runtime.errors import expected

from ..data.dataset import Split
from ..data.log import DataError

POLICIES = ("reservoir", "fifo")


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
