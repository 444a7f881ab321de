"""Accuracy-aware mixed precision: keep the most sensitive ops float until a variant fits its budget.

The loop is format-free (INC/Olive-style fallback): the caller ranks the quantized ops by
sensitivity (most harmful first), builds an artifact with a given set of ops kept float, and
measures it (error against the float model, size). `fallback_until_within` first tries no
fallback, then the top 1, 2, 4, … ranked ops until the error fits, then bisects down to the
smallest prefix that still fits, so a variant pays only for the ops it needs. The result records
which ops stayed float, every trial, and the size each cost.

TFLite ranks ops with TF's QuantizationDebugger per-layer error (`passes.tflite_sensitivity`);
an ONNX caller can rank nodes by its own per-node error and build with ``nodes_to_exclude``.

Examples:
    >>> errors = {(): 0.01, ("a",): 0.002}
    >>> result = fallback_until_within(["a", "b"], lambda nodes: nodes,
    ...                                lambda nodes: (errors.get(nodes, 0.0), 100 + 10 * len(nodes)), budget=0.003)
    >>> result.kept_float, result.size_bytes, result.within_budget
    (('a',), 110, True)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from edgerec.runtime.errors import expected

from .errors import ConverterConfigError

logger = logging.getLogger(__name__)


@dataclass
class FallbackResult:
    """What the fallback chose.

    Args:
        artifact: the built artifact of the chosen set (whatever ``build`` returns).
        kept_float: the ops kept float, in rank order.
        error / size_bytes: the chosen artifact's measured error and size.
        base_error / base_size_bytes: the same without fallback.
        within_budget: whether the chosen artifact fits (else it is the one with the least error).
        trials: ``[{"kept_float": n, "error", "size_bytes"}, …]`` in the order they ran.
    """

    artifact: Any
    kept_float: tuple
    error: float
    size_bytes: int
    base_error: float
    base_size_bytes: int
    within_budget: bool
    budget: float
    trials: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """The JSON recorded in an artifact's details (everything but the artifact)."""
        return {"budget": self.budget, "within_budget": self.within_budget, "kept_float": list(self.kept_float),
                "error": self.error, "size_bytes": self.size_bytes, "base_error": self.base_error,
                "base_size_bytes": self.base_size_bytes, "size_cost_bytes": self.size_bytes - self.base_size_bytes,
                "trials": list(self.trials)}


def fallback_until_within(ranked: Sequence[str] | Callable[[], Sequence[str]], build: Callable[[tuple], Any],
                          measure: Callable[[Any], tuple[float, int]], budget: float, *,
                          max_float: int | None = None) -> FallbackResult:
    """Keep the first ops of ``ranked`` float until ``measure`` says the error fits ``budget``.

    Args:
        ranked: op names, most sensitive first, or a callable returning them — called only when
            the fully quantized artifact misses the budget (ranking costs a debug run of the model).
        build: ``build(ops kept float) -> artifact``.
        measure: ``measure(artifact) -> (error, size_bytes)``; error is compared to ``budget``
            (e.g. |ΔAUC| against the float model on calibration rows).
        budget: the largest acceptable error.
        max_float: at most this many ops kept float (default all of ``ranked``).

    Returns:
        the `FallbackResult` of the smallest fitting prefix, or of the least-error trial when none fits.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget < 0:
        raise ConverterConfigError(expected("a fallback budget >= 0", budget))
    tried: dict[int, tuple] = {}
    trials: list[dict] = []

    def attempt(count: int) -> tuple:
        if count not in tried:
            artifact = build(tuple(ranked_ops[:count]))
            error, size = measure(artifact)
            tried[count] = (float(error), int(size), artifact)
            trials.append({"kept_float": count, "error": float(error), "size_bytes": int(size)})
            logger.info("mixed precision: %d op(s) float -> error %.5f, %d bytes", count, error, size)
        return tried[count]

    ranked_ops: list = []
    base_error, base_size, _ = attempt(0)
    fits, low = (0 if base_error <= budget else None), 0
    if fits is None:
        ranked_ops += dict.fromkeys(ranked() if callable(ranked) else ranked)
    limit = len(ranked_ops) if max_float is None else max(0, min(int(max_float), len(ranked_ops)))
    schedule, count = [], 1
    while count < limit:
        schedule.append(count)
        count *= 2
    schedule += [limit] if limit else []
    for count in (schedule if fits is None else ()):
        if attempt(count)[0] <= budget:
            fits = count
            break
        low = count
    if fits:
        while fits - low > 1:        # the smallest fitting prefix between the last miss and the fit
            middle = (low + fits) // 2
            if attempt(middle)[0] <= budget:
                fits = middle
            else:
                low = middle
    chosen = fits if fits is not None else min(tried, key=lambda c: (tried[c][0], c))
    error, size, artifact = tried[chosen]
    return FallbackResult(artifact, tuple(ranked_ops[:chosen]), error, size, base_error, base_size,
                          fits is not None, float(budget), trials)


DEFAULT_SHIFT_BUDGET = 0.01     # mean |Δp| a 4-bit weight rewrite may cost (probability outputs)


def check_shift_budget(value, name: str = "dense_shift_budget") -> None:
    """Raise `ConverterConfigError` unless ``value`` is None or a number in (0, 1)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1):
        raise ConverterConfigError(expected(f"{name} in (0, 1) or None", value))


@dataclass
class ScoreBudget:
    """The error a quantized artifact's scores may have against the reference scores of the same rows.

    |ΔAUC| rests on the rows' few positives (60 users' ranking rows hold 60); mean |Δp| moves with
    every row. A 4-bit layer that moved every score of a small BST by −0.02 passed a 0.0015 ΔAUC
    budget on 4,096 rows and missed it by 3× on all 6,060, so with probability scores (all of
    ``reference`` in [0, 1]) both bounds hold: the error is the larger of |ΔAUC| / ``budget`` and
    mean |Δp| / ``shift``, against a fallback budget of 1.

    Args:
        labels / reference: the rows' labels and the reference artifact's scores of them.
        budget: largest |ΔAUC|.
        shift: largest mean |Δp| (``None``, or scores that are not probabilities: ΔAUC alone).

    Examples:
        >>> b = ScoreBudget(np.array([0, 1.0]), np.array([0.25, 0.5]), budget=0.003, shift=0.0625)
        >>> b.error(np.array([0.375, 0.625]))[0], b.fallback_budget          # same AUC, twice the shift
        (2.0, 1.0)
    """

    labels: np.ndarray
    reference: np.ndarray
    budget: float
    shift: float | None = DEFAULT_SHIFT_BUDGET

    def __post_init__(self):
        if self.shift is not None and not np.all((self.reference >= 0) & (self.reference <= 1)):
            self.shift = None

    @property
    def fallback_budget(self) -> float:
        return 1.0 if self.shift else float(self.budget)

    def error(self, scores: np.ndarray) -> tuple[float, dict]:
        """``(error on the scale of fallback_budget, {"delta_auc", "mean_abs_dp"})`` of ``scores``."""
        from edgerec.runtime.metrics import auc

        scores = np.asarray(scores).reshape(-1)
        record = {"delta_auc": float(auc(self.labels, scores) - auc(self.labels, self.reference)),
                  "mean_abs_dp": float(np.mean(np.abs(scores - self.reference)))}
        if not self.shift:
            return abs(record["delta_auc"]), record
        miss = abs(record["delta_auc"])
        fraction = miss / self.budget if self.budget else (np.inf if miss else 0.0)
        return max(fraction, record["mean_abs_dp"] / self.shift), record

    def to_dict(self) -> dict:
        return {"budget": float(self.budget), "shift_budget": self.shift}
