"""Users' histories without their padding: a scorer fed user states drops the positions
``user_mask`` marks empty in every row (one user's 1-row state, or a batch of users' states).

A target-attention scorer gives a masked position no weight, so its cost per candidate grows with
the history length it is fed while its answer depends only on the valid positions. Where the
artifact's user-state inputs have a free position axis (ONNX exports of edgerec scorers,
`edgerec.converters.specs.position_axes`) and a probe at open shows the outputs unchanged,
`LoadedBundle.run` feeds only the valid positions: on the 10^4-item scale
benchmark's DIN ranker (50 positions, 27 valid on average) the 1 x 200 scorer call went from
4.3-5.1 ms to 2.3-2.5 ms (ONNX Runtime, 1 thread, 2-core VM). A scorer that reads its padding (position embeddings, a recurrent state) fails the
probe and is fed the full state.

Examples:
    >>> names = position_inputs(scorer.inputs, shared)                  # doctest: +SKIP
    >>> feeds = trim_positions(feeds, names) if names else feeds         # doctest: +SKIP
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from .contract import USER_MASK
from .errors import EdgeRecError
from .spec import NUM_RESERVED, PAD_INDEX


def position_inputs(inputs, shared) -> tuple[str, ...]:
    """The ``shared`` inputs (fed as 1 row) with a free axis 1, ``user_mask`` ``[B, L]`` first,
    taken as the history positions (whether they are is `trim_matches`'s to find out); ``()``
    without a shared ``user_mask`` of free length. ``inputs``: the part's `TensorSpec`s."""
    specs = {t.name: t for t in inputs}
    mask = specs.get(USER_MASK)
    if mask is None or USER_MASK not in shared or len(mask.shape) != 2 or mask.shape[1] is not None:
        return ()
    sequences = sorted(name for name in shared if name != USER_MASK and name in specs
                       and len(specs[name].shape) >= 2 and specs[name].shape[1] is None)
    return (USER_MASK, *sequences) if sequences else ()


def trim_positions(feeds: Mapping, names: tuple[str, ...]) -> dict:
    """``feeds`` with the ``names`` inputs (`position_inputs`) cut to the positions where any
    row of ``user_mask`` is non-zero (one user's 1-row state, or N rows of users' states): a slice
    (no copy) when they are contiguous, as left padding leaves them; one masked position is kept
    for empty histories (a zero-length axis is not something every backend runs). Feeds of other
    shapes come back as they are."""
    mask = feeds.get(USER_MASK)
    if mask is None or mask.ndim != 2 or mask.shape[1] < 2:
        return dict(feeds)
    rows, length = mask.shape
    valid = np.flatnonzero(mask[0] if rows == 1 else mask.any(axis=0))
    if valid.size == length:
        return dict(feeds)
    if valid.size == 0:
        take = slice(length - 1, length)
    elif valid[-1] - valid[0] + 1 == valid.size:
        take = slice(int(valid[0]), int(valid[-1]) + 1)
    else:
        take = valid
    out = dict(feeds)
    for name in names:
        value = feeds.get(name)
        if value is None or value.ndim < 2 or value.shape[0] != rows or value.shape[1] != length:
            return dict(feeds)
        out[name] = value[:, take] if rows == 1 or isinstance(take, np.ndarray) \
            else np.ascontiguousarray(value[:, take])
    return out


def probe_history(spec, limit: int) -> np.ndarray | None:
    """A 1-row history for the probe: its first half padding, then distinct item ids below
    ``limit`` (None when the table holds no real item or the history has under 2 positions)."""
    shape = [1 if d is None else d for d in spec.shape]
    if len(shape) != 2 or shape[1] < 2 or limit <= NUM_RESERVED:
        return None
    history = np.full(shape, PAD_INDEX, dtype=spec.dtype)
    valid = shape[1] - shape[1] // 2
    history[0, shape[1] // 2:] = NUM_RESERVED + np.arange(valid) % (limit - NUM_RESERVED)
    return history


def trim_matches(run: Callable[[dict], dict], feeds: dict, names: tuple[str, ...]) -> bool:
    """Whether ``run`` gives the same outputs for ``feeds`` (a state with masked positions, 1 row
    or N) with and without those positions (False when the cut state fails to run or cuts
    nothing)."""
    trimmed = trim_positions(feeds, names)
    if trimmed[USER_MASK].shape == feeds[USER_MASK].shape:
        return False
    try:
        full, cut = run(feeds), run(trimmed)
    except EdgeRecError:
        return False
    for name, want in full.items():
        got = cut.get(name)
        if got is None or np.shape(got) != np.shape(want) or not np.allclose(got, want, rtol=1e-5, atol=1e-6):
            return False
    return True
