"""Cold-start quality: items held out of training, scored as new items with and without content.

The rows come from `edgerec.sdk.data.builder.cold_start_rows` (items first seen in the last
part of the timeline, left out of the training data; each of their events is a positive, with
held-out items the user never touched as negatives). Every row's ``cand_item`` is the OOV index,
as a device sees an item added after training. Each row is scored twice by the fused model:

* with content: ``cand_content`` = the item's content vector (its text through the model's
  content encoder, as ``Predictor.add_items`` would encode it);
* without content: ``cand_content`` = zeros, so every held-out item looks the same (the OOV id
  embedding) and only the user and context differ.

The AUC over the rows of each says how much the content tower lets the model rank items it
never saw; without content it stays near 0.5 (a user's candidates tie).

Examples:
    >>> vectors = encode_item_texts(parts.content_encoder, parts.spec, rows.texts)   # doctest: +SKIP
    >>> cold_start_metrics(parts, rows, vectors)                                       # doctest: +SKIP
    {'auc_with_content': 0.71, 'auc_without_content': 0.50, 'rows': 7455, 'items': 1138, ...}
"""
from __future__ import annotations

import numpy as np

from edgerec.runtime.contract import CAND_CONTENT
from edgerec.runtime.errors import SpecError, expected
from edgerec.runtime.metrics import auc, gauc


def score_cold_rows(parts, rows, vectors: np.ndarray | None, batch_size: int = 4096) -> np.ndarray:
    """Fused-model probabilities ``[N]`` of ``rows`` with ``cand_content`` = ``vectors[item_rows]``
    (zeros when ``vectors`` is None)."""
    width = int(dict(zip(parts.fused.input_names, parts.fused.inputs))[CAND_CONTENT].shape[-1]) \
        if CAND_CONTENT in parts.fused.input_names else None
    if width is None:
        raise SpecError(expected(f"a content model with the {CAND_CONTENT} input", parts.fused.input_names))
    if vectors is None:
        content = np.zeros((len(rows), width), np.float32)
    else:
        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim != 2 or vectors.shape != (len(rows.item_ids), width):
            raise SpecError(expected(f"content vectors of shape [{len(rows.item_ids)}, {width}]", vectors.shape))
        content = vectors[rows.item_rows]
    arrays = {**rows.split.inputs, CAND_CONTENT: content}
    inputs = parts.select_inputs(arrays)
    return np.asarray(parts.fused.predict(inputs, batch_size=batch_size, verbose=0), np.float64).reshape(-1)


def cold_start_metrics(parts, rows, vectors: np.ndarray) -> dict:
    """``{"auc_with_content", "auc_without_content", "gauc_with_content", "gauc_without_content",
    "rows", "positives", "items"}`` of the held-out ``rows`` (see the module docstring).

    Args:
        parts: a trained content model (`ModelParts` with the ``cand_content`` input).
        rows: a `ColdStartRows`.
        vectors: ``[len(rows.item_ids), Dc]`` content vectors of the held-out items.

    Raises:
        SpecError: no rows, a model without ``cand_content``, or vectors of the wrong shape.
    """
    if len(rows) == 0:
        raise SpecError(expected("at least one cold-start row", 0))
    labels = np.asarray(rows.split.labels, np.float64)
    with_content = score_cold_rows(parts, rows, vectors)
    without = score_cold_rows(parts, rows, None)
    groups = rows.split.groups
    return {"auc_with_content": float(auc(labels, with_content)),
            "auc_without_content": float(auc(labels, without)),
            "gauc_with_content": float(gauc(labels, with_content, groups)),
            "gauc_without_content": float(gauc(labels, without, groups)),
            "rows": int(len(rows)), "positives": int((labels > 0.5).sum()), "items": int(len(rows.item_ids))}
