"""RecDataset: what every data source produces and every model/trainer consumes.

Arrays are named like the model inputs (see docs/contracts.md) and were encoded by
`edgerec.runtime.preprocess.Preprocessor`, so training and serving agree by construction.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgerec.runtime.spec import FeatureSpec

# the dense features every built dataset has (raw request ``dense`` keys, log1p values)
DENSE_GAP = "log_seconds_since_prev"
DENSE_HIST = "log_history_len"


@dataclass
class Split:
    """Model-input arrays plus `labels` (float32 [N]) and optionally `groups` (int64 [N], user index)."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, index) -> "Split":
        return Split({k: v[index] for k, v in self.inputs.items()}, self.labels[index],
                     None if self.groups is None else self.groups[index])

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        out = dict(self.inputs, labels=self.labels)
        if self.groups is not None:
            out["groups"] = self.groups
        return out


@dataclass
class RecDataset:
    """A next-item CTR task built from interaction logs.

    Attributes:
        name: ``"synthetic"`` or ``"movielens"``.
        spec: feature spec (vocabularies, context fields, dense fields, text spec).
        train: pointwise training rows (positives + sampled negatives).
        valid: pointwise rows for early stopping (held out by time, not used for training).
        test: ranking rows: per user the held-out last item + 100 sampled negatives, `groups` set.
        item_text: text of every item index (``""`` for padding/OOV), length ``spec.item_vocab.size``.
        item_popularity: training interaction count per item index (popularity baseline).
        examples: raw request dicts (as an app would send them) drawn from the test users.
    """

    name: str
    spec: FeatureSpec
    train: Split
    valid: Split
    test: Split
    item_text: list[str]
    item_popularity: np.ndarray
    examples: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
