"""Validation specs: per model family and part, which tensors go in and out, how rows are drawn,
and how close each precision must stay to the Keras reference (optimum-style).

Tolerances are declared here, once, and read by the validator, the selector and the tests:

* ``fp32``  – numerical equality up to float noise (max |Δ| 1e-4).
* ``fp16``  – half-precision weights (max |Δ| 1e-2).
* ``dynamic`` / ``int8`` – quantization moves individual probabilities; they are bounded by a
  mean |Δp|, a loose sanity bound on ΔAUC (a corrupted or weightless artifact lands far
  outside it) and, separately, by the selection budget (`DEFAULT_BUDGET`, ΔAUC ≤ 0.003).

Examples:
    >>> spec = spec_for_part("din", "fused", feature_spec)
    >>> spec.tolerance("int8").mean_abs_diff
    0.1
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Mapping

from edgerec.runtime.contract import BUNDLE_FAMILIES as FAMILIES
from edgerec.runtime.contract import PARTS, PRECISIONS, SCORE, TOLERANCES, Tolerance  # noqa: F401  (re-exported)
from edgerec.runtime.contract import USER_MASK, USER_OUTPUT_PREFIX
from edgerec.runtime.errors import SpecError, expected
from edgerec.runtime.manifest import TensorSpec
from edgerec.runtime.spec import FeatureSpec

DEFAULT_BUDGET = 0.003            # selection: |ΔAUC| allowed for a compressed variant
RECALL_K = 10
# selection: a compressed fused variant needs this share of distinct scores among the validator's
# candidate sweep and no tie inside the top RECALL_K (a quantized sigmoid or quantized activations
# before the head collapse candidates onto the same score: the app would break ties arbitrarily)
MIN_DISTINCT_SCORES = 0.99


@dataclass(frozen=True)
class PartSpec:
    """What the validator feeds one model part and compares on the way out.

    Args:
        family: model family (``din``, ``gru``, ``bst``, ``context``, ``byom`` …).
        part: ``fused``, ``user_encoder``, ``scorer`` or ``content_encoder``.
        inputs: input tensors (canonical names) with dtypes and shapes (None = dynamic).
        score_output: the probability output used for AUC / ranking metrics (None: no task metric).
        tolerances: per precision; defaults to `TOLERANCES`.
    """

    family: str
    part: str
    inputs: tuple[TensorSpec, ...]
    score_output: str | None = SCORE
    tolerances: Mapping[str, Tolerance] = field(default_factory=lambda: dict(TOLERANCES))

    def __post_init__(self):
        if self.part not in PARTS:
            raise SpecError(expected(f"part in {PARTS}", self.part))
        if not self.inputs:
            raise SpecError(expected(f"at least one input for part {self.part!r}", []))
        missing = [p for p in PRECISIONS if p not in self.tolerances]
        if missing:
            raise SpecError(expected(f"tolerances for every precision {PRECISIONS}", f"missing {missing}"))

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def tolerance(self, precision: str) -> Tolerance:
        if precision not in self.tolerances:
            raise SpecError(expected(f"precision in {sorted(self.tolerances)}", precision))
        return self.tolerances[precision]

    def with_tolerances(self, **overrides: Tolerance) -> "PartSpec":
        merged = dict(self.tolerances)
        merged.update(overrides)
        return replace(self, tolerances=merged)

    def to_dict(self) -> dict:
        return {"family": self.family, "part": self.part,
                "inputs": [asdict(t) for t in self.inputs], "score_output": self.score_output,
                "tolerances": {k: v.to_dict() for k, v in self.tolerances.items()}}


def _tensor_specs(signature: Mapping[str, tuple]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(name, dtype, list(shape)) for name, (dtype, shape) in signature.items())


def spec_for_part(family: str, part: str, feature_spec: FeatureSpec,
                  user_outputs: Mapping[str, tuple] | None = None) -> PartSpec:
    """The validation spec of one part of an edgerec model.

    Args:
        family: edgerec model family (recorded; every family shares the tensor contract).
        part: which part.
        feature_spec: the model's FeatureSpec (gives the inputs).
        user_outputs: for ``scorer``: the user encoder's outputs ``{name: (dtype, shape)}``,
            which are extra scorer inputs.
    """
    if family not in FAMILIES:
        raise SpecError(expected(f"model family in {FAMILIES}", family))
    if not isinstance(feature_spec, FeatureSpec):
        raise SpecError(expected("a FeatureSpec", type(feature_spec).__name__))
    if part == "content_encoder":
        raise SpecError(expected("a part with a probability output (fused, user_encoder, scorer)", part))
    signature = dict(feature_spec.input_signature(part))
    if part == "scorer":
        signature.update(user_outputs or {})
    score = None if part == "user_encoder" else SCORE
    return PartSpec(family, part, _tensor_specs(signature), score_output=score)


POSITIONS_DIM = "positions"


def position_axes(signature: Mapping[str, tuple]) -> tuple[tuple[str, int, str], ...]:
    """The history-position axis of a scorer's user-state inputs, for `OnnxExportConfig.free_axes`:
    axis 1 of ``user_mask`` ``[B, L]`` and of every ``user_*`` input of shape ``[B, L, ...]`` (a
    per-position tensor), so one user's state can be fed without its padded positions. Empty when
    the inputs (``{name: (dtype, shape)}``) have no ``user_mask`` of a fixed length.

    Examples:
        >>> position_axes({"user_mask": ("float32", (None, 50)), "user_state": ("float32", (None, 50, 32)),
        ...                "user_pooled": ("float32", (None, 32)), "cand_item": ("int32", (None,))})
        (('user_mask', 1, 'positions'), ('user_state', 1, 'positions'))
    """
    mask = signature.get(USER_MASK)
    if mask is None or len(mask[1]) != 2 or not isinstance(mask[1][1], int):
        return ()
    length = mask[1][1]
    return tuple((name, 1, POSITIONS_DIM) for name, (_, shape) in signature.items()
                 if name == USER_MASK or (name.startswith(USER_OUTPUT_PREFIX) and len(shape) >= 3
                                          and shape[1] == length))


def spec_for_byom(inputs: list[TensorSpec], score_output: str | None = None) -> PartSpec:
    """Spec of a bring-your-own model: only its tensor signature is known."""
    return PartSpec("byom", "fused", tuple(inputs), score_output=score_output)
