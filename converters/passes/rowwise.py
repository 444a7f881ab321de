"""Symmetric 4/8-bit quantization shared by the TFLite and ONNX passes: rows of embedding tables
with log-coded per-row scales, and columns of dense weights with per-channel scales.

Rows use the whole signed range ``[-qmax - 1, qmax]`` (qmax 127 or 7): the scale is
``s_r >= max(max(row) / qmax, -min(row) / (qmax + 1))``, so a row whose largest magnitude is negative
gets a finer step. ``s_r`` is stored as one int8 code of ``log(s_r)``:
``s_r = exp(base + step * code)``, rounded up so no value clips. One byte per row instead of an fp32
(or fp16) scale and a zero point; every value stays within half of its row's step. The graphs that
read such a table compute the fp32 scale from the code (ONNX Runtime folds that at load time).

Examples:
    >>> q, codes, base, step = quantize_rows(np.array([[0.5, -1.0], [0.0, 0.0]], np.float32), 8)
    >>> q[0].tolist()
    [64, -128]
    >>> pack_int4(np.array([1, -1], np.int8)).tolist()
    [241]
"""
from __future__ import annotations

import numpy as np

from ..errors import ConversionError, expected

BITS = (4, 8)
QMAX = {8: 127, 4: 7}


def quantize_rows(values: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Symmetric per-row quantization with log-coded scales.

    Returns:
        ``(q, codes, base, step)``: ``q`` int8 ``[V, D]`` in ``[-qmax - 1, qmax]``, ``codes`` int8 ``[V]``
        with row scale ``exp(base + step * code)`` (rows of zeros get any code and q = 0).

    Examples:
        >>> q, codes, base, step = quantize_rows(np.array([[0.5, -1.0], [0.0, 0.0]], np.float32), 8)
        >>> q[0].tolist()
        [64, -128]
    """
    if bits not in BITS:
        raise ConversionError(expected(f"embedding bits in {BITS}", bits))
    values = np.asarray(values, dtype=np.float32)
    qmax = QMAX[bits]
    # the step the row needs: its positive side over qmax levels, its negative side over qmax + 1
    need = np.maximum(np.max(values, axis=1).astype(np.float64) / qmax,
                      -np.min(values, axis=1).astype(np.float64) / (qmax + 1))
    need = np.maximum(need, 0.0)
    live = need > 0
    wanted = np.log(np.where(live, need, 1.0))
    low, high = (float(wanted[live].min()), float(wanted[live].max())) if live.any() else (0.0, 0.0)
    step = max((high - low) / 254.0, 1e-6)
    base = (low + high) / 2.0
    codes = np.clip(np.ceil((wanted - base) / step - 1e-9), -127, 127).astype(np.int8)
    # the scale the graph computes (float32 EXP), nudged up where float rounding would clip a value
    scale = np.exp(np.float32(base) + np.float32(step) * codes.astype(np.float32)).astype(np.float32)
    scale = np.where(live, np.maximum(scale, need.astype(np.float32)), np.float32(1.0))
    q = np.clip(np.rint(values / scale[:, None]), -qmax - 1, qmax).astype(np.int8)
    q[~live] = 0
    return q, codes, base, step


def row_scales(codes: np.ndarray, base: float, step: float) -> np.ndarray:
    """The float32 per-row scales the rewritten graph computes from ``codes``."""
    return np.exp(np.float32(base) + np.float32(step) * np.asarray(codes, np.float32)).astype(np.float32)


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Two signed 4-bit values per byte, low nibble first (LiteRT's packed int4 layout)."""
    flat = (np.asarray(q, np.int8).reshape(-1) & 0x0F).astype(np.uint8)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def symmetric_columns(weights: np.ndarray, bits: int, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric quantization of a dense weight: one scale per slice along ``axis``.

    Returns:
        ``(q int8 in [-qmax, qmax], scales float32)`` with ``weights ≈ q * scale`` (scale broadcast along
        ``axis``); all-zero channels get scale 1.
    """
    if bits not in BITS:
        raise ConversionError(expected(f"weight bits in {BITS}", bits))
    weights = np.asarray(weights, np.float32)
    moved = np.moveaxis(weights, axis, 0).reshape(weights.shape[axis], -1)
    peak = np.max(np.abs(moved), axis=1)
    scale = np.where(peak > 0, peak / QMAX[bits], 1.0).astype(np.float32)
    q = np.clip(np.rint(moved / scale[:, None]), -QMAX[bits], QMAX[bits]).astype(np.int8)
    shape = (weights.shape[axis],) + tuple(np.delete(weights.shape, axis))
    return np.moveaxis(q.reshape(shape), 0, axis), scale
