"""How a cascade orders the items it retrieved: the retrieval score and the ranker's, each
standardised over one user's retrieved items, mixed by a weight the export fits on validation
events and records in the manifest's ``index.cascade_score`` (`CascadeScore`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .errors import BundleError, expected

CASCADE_SCORE = "cascade_score"     # key of the manifest's index section
RANKER_TRANSFORMS = ("identity", "logit")
PROBABILITY_EPS = 1e-6


@dataclass(frozen=True)
class CascadeScore:
    """How `recommend` orders the retrieved items: ``w * z(retrieval) + (1 - w) * z(ranker)``.

    ``z`` standardises a score over one user's retrieved items (mean 0, std 1; a constant score
    gives 0), so the weight does not depend on either model's score scale.

    Args:
        retrieval_weight: ``w`` in [0, 1]; 0 returns the ranker's own scores, 1 never runs the ranker.
        ranker_transform: ``"logit"`` for a ranker that outputs probabilities (a sigmoid squashes
            the differences among likely items), else ``"identity"``.

    Examples:
        >>> CascadeScore(0.5).combine(np.array([0.1, 0.9]), np.array([2.0, 1.0])).tolist()
        [0.0, 0.0]
    """

    retrieval_weight: float = 0.0
    ranker_transform: str = "identity"

    def __post_init__(self):
        w = self.retrieval_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= float(w) <= 1.0:
            raise BundleError(expected("a cascade retrieval_weight in [0, 1]", w))
        if self.ranker_transform not in RANKER_TRANSFORMS:
            raise BundleError(expected(f"a cascade ranker_transform in {RANKER_TRANSFORMS}", self.ranker_transform))

    @classmethod
    def of(cls, manifest) -> "CascadeScore":
        """The bundle's recorded cascade score (the ranker alone when none is recorded)."""
        record = (manifest.index or {}).get(CASCADE_SCORE)
        if record is None:
            return cls()
        if not isinstance(record, Mapping):
            raise BundleError(expected(f"index.{CASCADE_SCORE} as an object", type(record).__name__))
        return cls(record.get("retrieval_weight", 0.0), record.get("ranker_transform", "identity"))

    @property
    def needs_ranker(self) -> bool:
        return self.retrieval_weight < 1.0

    def to_dict(self) -> dict:
        return {"retrieval_weight": float(self.retrieval_weight), "ranker_transform": self.ranker_transform,
                "formula": "w * z(retrieval) + (1 - w) * z(ranker), z standardised over the m retrieved items"}

    def combine(self, ranker, retrieval) -> np.ndarray:
        """float32 cascade scores of one user's retrieved items (``ranker`` may be None when w = 1)."""
        w = float(self.retrieval_weight)
        if w == 0.0:
            return np.asarray(ranker, np.float32)
        out = w * _standardise(retrieval)
        if w < 1.0:
            ranked = np.asarray(ranker, np.float64)
            if self.ranker_transform == "logit":
                p = np.clip(ranked, PROBABILITY_EPS, 1.0 - PROBABILITY_EPS)
                ranked = np.log(p) - np.log1p(-p)
            out = out + (1.0 - w) * _standardise(ranked)
        return out.astype(np.float32)


def _standardise(values) -> np.ndarray:
    x = np.asarray(values, np.float64)
    if not x.size:
        return x
    centred = x - x.mean()
    spread = math.sqrt(float(np.dot(centred, centred)) / x.size)        # x.std(), one pass fewer
    return centred / spread if spread > 0 else np.zeros_like(x)
