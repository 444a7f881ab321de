"""What scoring returns: float32 scores, and which rows scored an out-of-vocabulary candidate."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .errors import BundleError, expected
from .spec import OOV_INDEX


class Scores(NamedTuple):
    """Scores with the out-of-vocabulary flag of each row (``return_oov=True``).

    ``oov[i]`` is True when row i's candidate item is not in the bundle's vocabulary: the model
    scored the shared OOV embedding (the same score for every unknown item), not that item.

    Examples:
        >>> scores, oov = predictor.predict(requests, return_oov=True)
        >>> known = scores[~oov]
    """

    scores: np.ndarray
    oov: np.ndarray

    @property
    def oov_count(self) -> int:
        return int(np.count_nonzero(self.oov))


def count_oov(items: np.ndarray) -> int:
    """How many encoded candidate ids are the OOV index."""
    if len(items) == 1:
        return int(items.item() == OOV_INDEX)
    return int(np.count_nonzero(items == OOV_INDEX))


def score_in_chunks(run, arrays: dict, shared: dict, n: int, chunk_rows: int) -> np.ndarray:
    """Scores of ``n`` rows: ``run(feeds)`` on at most ``chunk_rows`` rows of ``arrays`` at a
    time, each 1-row array of ``shared`` (user state, history) repeated to the chunk's length."""
    scores = np.empty(n, np.float32)
    for begin in range(0, n, chunk_rows):
        end = min(n, begin + chunk_rows)
        feeds = {k: v[begin:end] for k, v in arrays.items()} if n > chunk_rows else dict(arrays)
        feeds.update({k: np.repeat(v, end - begin, axis=0) for k, v in shared.items()})
        scores[begin:end] = as_scores(run(feeds), end - begin)
    return scores


def as_scores(scores: np.ndarray, n: int) -> np.ndarray:
    """A model's score output as float32 [n] (BundleError when it has another row count)."""
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if scores.shape[0] != n:
        raise BundleError(expected(f"{n} scores from the model", scores.shape[0]))
    return scores
