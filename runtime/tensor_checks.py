"""Checks on encoded tensors before they reach a backend: ids inside their tables, finite dense
values, native byte order (`check_tensor_ranges`), and whether a part's signature takes the
Preprocessor's arrays as they are (`encoded_fits`)."""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from .backends.base import UNSIGNED_VIEW, byte_order_problem
from .errors import RequestError, expected
from .spec import CAND_ITEM, HIST_ITEMS, FeatureSpec


def id_limits(spec: FeatureSpec) -> dict[str, int]:
    """Encoded id inputs of ``spec`` -> their table sizes (valid ids are in ``[0, size)``)."""
    limits = {HIST_ITEMS: spec.item_vocab.size, CAND_ITEM: spec.item_vocab.size}
    limits.update({field.name: field.size for field in spec.context})
    return limits


def check_tensor_ranges(spec, feeds: Mapping, limits: Mapping[str, int] | None = None) -> None:
    """Encoded ids must index the spec's tables and dense values must be finite (else RequestError).

    ``limits`` (input name -> table size) defaults to the spec's (`id_limits`). The hot path runs
    the same checks inside `backends.base.feeds_match`; this is the full version that names every
    problem. Ids are read as unsigned, so a negative id wraps above every table size and the largest
    value bounds both ends; ``argmax``/``argmin`` propagate NaN, so finite extremes mean every value
    is finite.
    """
    if limits is None:
        limits = id_limits(spec)
    problems = []
    for name, value in feeds.items():
        if not isinstance(value, np.ndarray) or value.size == 0:
            continue
        kind = value.dtype.kind
        limit = limits.get(name)
        if not value.dtype.isnative:
            problems.append(byte_order_problem(name, value.dtype))
        elif limit is not None and kind in "iu":
            if value.size == 1:
                ok = 0 <= value.item() < limit
            else:
                unsigned = value.view(UNSIGNED_VIEW[value.dtype.itemsize]) if kind == "i" else value
                ok = unsigned.item(unsigned.argmax()) < limit
            if not ok:
                low, high = int(value.min()), int(value.max())
                problems.append(expected(f"'{name}' ids in [0, {limit})", f"range [{low}, {high}]"))
        elif kind == "f":
            if not (math.isfinite(value.item(value.argmax())) and math.isfinite(value.item(value.argmin()))):
                problems.append(expected(f"finite values in '{name}'", "NaN or inf"))
    if problems:
        raise RequestError("; ".join(problems))


def encoded_fits(produced: Mapping[str, tuple], backend) -> bool:
    """Whether every input ``backend`` declares is one the Preprocessor produces (``produced``:
    `FeatureSpec.input_signature`) with the same dtype, rank and dims, and a dynamic batch."""
    for spec in backend.inputs:
        if spec.name not in produced:
            return False
        dtype, shape = produced[spec.name]
        if np.dtype(spec.dtype) != np.dtype(dtype) or len(spec.shape) != len(shape) or not shape:
            return False
        if spec.shape[0] is not None or any(want is not None and want != got
                                            for want, got in zip(spec.shape[1:], shape[1:])):
            return False
    return True
