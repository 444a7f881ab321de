"""The HNSW graph behind a large item index: usearch, imported only when a graph is built or loaded.

`ann_rows` turns item vectors into the unit rows the graph stores (augmented with
``sqrt(max_norm² - |v|²)`` when their norms differ, so that nearest unit neighbours are the largest
dot products); `new_usearch` makes an empty inner-product graph; `ann_available` says whether the
``index`` extra is installed.
"""
from __future__ import annotations

import numpy as np

from .errors import MissingDependencyError


def ann_rows(vectors: np.ndarray, norms: np.ndarray, augmented: bool, max_norm: float) -> np.ndarray:
    """Unit rows the graph stores: augmented to equal norms (then scaled), else normalised."""
    if augmented:
        extra = np.sqrt(np.maximum(max_norm ** 2 - norms.astype(np.float64) ** 2, 0.0)).astype(np.float32)
        return np.concatenate([vectors, extra[:, None]], axis=1) / np.float32(max_norm)
    return vectors / np.maximum(norms, 1e-30)[:, None]


def usearch_module():
    # With the usearch 2.26 and onnxruntime 1.32 Linux wheels, `import onnxruntime` after usearch's
    # compiled module crashes the interpreter (segfault at import); onnxruntime imported first is
    # safe, so it is loaded here before usearch whenever it is installed.
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        pass
    try:
        import usearch.index as usearch_index
    except ImportError:
        raise MissingDependencyError("usearch", "index", "the approximate (HNSW) item index") from None
    return usearch_index


def ann_available() -> bool:
    """Whether the HNSW index can be built and loaded here (the ``index`` extra is installed)."""
    try:
        usearch_module()
    except MissingDependencyError:
        return False
    return True


def new_usearch(ndim: int, dtype: str, connectivity: int, expansion_add: int):
    """An empty usearch inner-product index."""
    return usearch_module().Index(ndim=ndim, metric="ip", dtype=dtype, connectivity=connectivity,
                                  expansion_add=expansion_add)
