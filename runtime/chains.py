"""How a bundle's examples run through its models: which part sequences answer them, and running
a sequence (user_encoder outputs feed the scorer) on backends. The pass rule is in `examples`."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from .contract import FORMAT_FOR_BACKEND, FUSED, SCORER, USER_ENCODER
from .errors import BundleError, expected
from .manifest import Manifest


def _feeds_for(backend, arrays: Mapping) -> dict:
    """The inputs ``backend`` declares, in its dtypes (tensor rows are stacked without knowing them)."""
    feeds = {}
    for spec in backend.inputs:
        if spec.name not in arrays:
            raise BundleError(expected(f"input '{spec.name}' among the examples' arrays", sorted(arrays)))
        value = arrays[spec.name]
        feeds[spec.name] = value if value.dtype == np.dtype(spec.dtype) else value.astype(spec.dtype)
    return feeds


def _static_batch(backend) -> int | None:
    batches = {spec.shape[0] for spec in backend.inputs if spec.shape}
    return next(iter(batches)) if len(batches) == 1 and isinstance(next(iter(batches)), int) else None


def run_chain(steps: list, arrays: Mapping) -> dict:
    """Run ``steps`` (``(backend, output renames)``) in order; each one's outputs feed the next
    (user_encoder -> scorer). Models with a static batch size get the rows in chunks of it."""
    arrays = dict(arrays)
    outputs: dict = {}
    for backend, renames in steps:
        feeds = _feeds_for(backend, arrays)
        rows = len(next(iter(feeds.values()))) if feeds else 0
        chunk = _static_batch(backend) or rows or 1
        pieces = [backend.run({k: v[i:i + chunk] for k, v in feeds.items()}) for i in range(0, max(rows, 1), chunk)]
        outputs = {renames.get(name, name): np.concatenate([p[name] for p in pieces], axis=0) for name in pieces[0]}
        arrays.update(outputs)
    return outputs


def part_chains(parts: Mapping[str, object], kind: str, feed_names) -> list[tuple[str, ...]]:
    """Which part sequences answer the examples: fused alone, the user_encoder -> scorer pair,
    and (tensor rows without either) any single part the rows can feed."""
    chains = []
    if FUSED in parts:
        chains.append((FUSED,))
    if USER_ENCODER in parts and SCORER in parts:
        chains.append((USER_ENCODER, SCORER))
    if not chains and kind == "tensors":
        chains = [(part,) for part, backend in parts.items()
                  if {t.name for t in backend.inputs} <= set(feed_names)]
    return chains


def artifact_chains(manifest: Manifest, backend: str, kind: str, feed_names) -> list[list]:
    """Artifact sequences of ``backend`` that answer the examples: each fused artifact alone,
    user_encoder -> scorer pairs of one precision, the selected pair where its precisions differ,
    and (tensor rows without either) any single artifact the rows can feed."""
    fmt = FORMAT_FOR_BACKEND[backend]
    by_part: dict = {}
    for art in manifest.find(format=fmt):
        by_part.setdefault(art.part, []).append(art)
    chains = [[art] for art in by_part.get(FUSED, [])]
    pairs = [(ue, sc) for ue in by_part.get(USER_ENCODER, []) for sc in by_part.get(SCORER, [])
             if _variant(ue) == _variant(sc)]
    selected = manifest.selected.get(backend) or {}
    if USER_ENCODER in selected and SCORER in selected:
        chosen = (manifest.artifact(selected[USER_ENCODER]), manifest.artifact(selected[SCORER]))
        if chosen[0].format == chosen[1].format == fmt and chosen not in pairs:
            pairs.append(chosen)
    chains += [list(pair) for pair in pairs]
    if not chains and kind == "tensors":
        names = set(feed_names)
        chains = [[art] for arts in by_part.values() for art in arts if {t.name for t in art.inputs} <= names]
    return chains


def _variant(artifact) -> str:
    """What tells an artifact from its siblings of the same part: the file name after the part
    (``scorer_qdq_int8.onnx`` -> ``_qdq_int8.onnx``), else its precision. Split parts exported
    together share it, so a qdq user encoder is not composed with a TensorRT-int8 scorer."""
    if artifact.file.startswith(artifact.part):
        return artifact.file[len(artifact.part):]
    return artifact.precision
