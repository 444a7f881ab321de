"""Item vectors on a budget and as a picture: PCA fitted on the catalogue, and a 2-D genre map.

`fit_pca` reduces content vectors (e.g. the 384-dim MiniLM vectors) to ``d`` dimensions for the
device's item table; `reduction_report` says what each ``d`` keeps (explained variance, cosine of
the reconstruction, how many of each item's 10 nearest neighbours survive) and what the table
costs in bytes. `draw_item_map` writes the catalogue as a PNG: the first two principal
components, one colour per genre. matplotlib is imported only when drawing.

Examples:
    >>> pca = fit_pca(vectors, 32)                                    # doctest: +SKIP
    >>> small = pca.transform(vectors)                                # [N, 32] float32
    >>> rows = reduction_report(vectors, dims=(16, 32, 64, 384))      # doctest: +SKIP
    >>> draw_item_map(vectors, genres, "item_map.png")                # doctest: +SKIP
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgerec.runtime.errors import SpecError, expected
from edgerec.runtime.io import atomic_output

MAX_GENRES = 10       # colours on the map; the rest are drawn grey as "other"


@dataclass(frozen=True)
class PCA:
    """A fitted PCA: ``transform(x) = (x - mean) @ components.T``.

    Attributes:
        mean: ``[D]`` float32 catalogue mean.
        components: ``[d, D]`` float32 orthonormal rows, by decreasing variance (sign fixed so
            each row's largest-magnitude loading is positive, so refits give the same table).
        explained_variance_ratio: ``[d]`` share of the total variance per component.
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray

    @property
    def dims(self) -> int:
        return int(self.components.shape[0])

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        x = _matrix(vectors, self.mean.shape[0])
        return ((x - self.mean) @ self.components.T).astype(np.float32)

    def inverse_transform(self, reduced: np.ndarray) -> np.ndarray:
        return (np.asarray(reduced, np.float32) @ self.components + self.mean).astype(np.float32)


def _matrix(vectors, width: int | None = None) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 2 or not np.all(np.isfinite(x)):
        raise SpecError(expected("a finite [N >= 2, D] array of item vectors", getattr(x, "shape", None)))
    if width is not None and x.shape[1] != width:
        raise SpecError(expected(f"vectors of width {width}", x.shape[1]))
    return x


def fit_pca(vectors: np.ndarray, dims: int) -> PCA:
    """PCA of ``vectors`` (``[N, D]``) keeping ``dims`` components (1 <= dims <= min(N, D))."""
    x = _matrix(vectors)
    if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= min(x.shape):
        raise SpecError(expected(f"dims as an int in 1..{min(x.shape)}", dims))
    mean = x.mean(axis=0)
    _, singular, rows = np.linalg.svd((x - mean).astype(np.float64), full_matrices=False)
    rows = rows[:dims]
    rows *= np.sign(rows[np.arange(dims), np.abs(rows).argmax(axis=1)])[:, None]
    variance = singular ** 2
    return PCA(mean.astype(np.float32), rows.astype(np.float32),
               (variance[:dims] / max(variance.sum(), 1e-30)).astype(np.float32))


def _neighbours(x: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Indices of each row's ``k`` nearest rows by cosine (itself excluded)."""
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    out = np.empty((len(x), k), dtype=np.int64)
    for start in range(0, len(x), chunk):
        sims = unit[start:start + chunk] @ unit.T
        sims[np.arange(len(sims)), np.arange(start, start + len(sims))] = -np.inf
        out[start:start + chunk] = np.argpartition(-sims, k, axis=1)[:, :k]
    return out


def reduction_report(vectors: np.ndarray, dims: Sequence[int] = (16, 32, 64, 384), k: int = 10,
                     bytes_per_value: int = 4) -> list[dict]:
    """What a ``d``-dim PCA table keeps of the catalogue's vectors, for each ``d`` in ``dims``.

    Returns one row per ``d``: ``dims, table_bytes`` (items × d × bytes_per_value, plus the PCA
    mean and components a device needs to project a new item's vector), ``explained_variance``,
    ``reconstruction_cosine`` (mean cosine of the reconstructed to the original vectors) and
    ``neighbour_overlap@k`` (share of each item's k nearest items, by cosine, that stay among its
    k nearest in the reduced space).
    """
    x = _matrix(vectors)
    base = _neighbours(x, k)
    rows = []
    for d in dims:
        pca = fit_pca(x, min(int(d), min(x.shape)))
        reduced = pca.transform(x)
        rebuilt = pca.inverse_transform(reduced)
        cosine = (rebuilt * x).sum(1) / np.maximum(np.linalg.norm(rebuilt, axis=1) * np.linalg.norm(x, axis=1), 1e-12)
        near = _neighbours(rebuilt, k)        # the d-dim table + the mean back: cosine as the device sees it
        overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(base, near)])
        projection = (pca.components.size + pca.mean.size) * 4
        rows.append({"dims": pca.dims, "table_bytes": int(x.shape[0] * pca.dims * bytes_per_value),
                     "projection_bytes": int(projection),
                     "explained_variance": float(pca.explained_variance_ratio.sum()),
                     "reconstruction_cosine": float(cosine.mean()), f"neighbour_overlap@{k}": float(overlap)})
    return rows


def primary_genres(genre_lists: Sequence[Sequence[str]]) -> list[str]:
    """One label per item: its rarest genre in the catalogue (the most specific; "" when none)."""
    counts = Counter(g for genres in genre_lists for g in genres)
    return [min(genres, key=lambda g: (counts[g], g)) if genres else "" for genres in genre_lists]


def draw_item_map(vectors: np.ndarray, labels: Sequence[str], path: str | Path, title: str = "Item vectors (PCA)",
                  max_labels: int = MAX_GENRES) -> Path:
    """A PNG scatter of the items' first two principal components, coloured by ``labels``.

    Args:
        vectors: ``[N, D]`` item vectors.
        labels: one label per item (e.g. `primary_genres`); the ``max_labels`` most frequent get a
            colour, the rest are drawn grey as "other".
        path: the PNG to write (atomically).
        title: the figure title.

    Raises:
        SpecError: ``labels`` does not have one entry per vector.
        MissingDependencyError: matplotlib is not installed.
    """
    x = _matrix(vectors)
    if len(labels) != len(x):
        raise SpecError(expected(f"one label per vector ({len(x)})", len(labels)))
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib import pyplot as plt
    except ImportError as err:
        from edgerec.runtime.errors import MissingDependencyError

        raise MissingDependencyError("matplotlib", "bench", "drawing the item map") from err
    pca = fit_pca(x, 2)
    xy = pca.transform(x)
    top = [g for g, _ in Counter(l for l in labels if l).most_common(max_labels)]
    figure, axes = plt.subplots(figsize=(9, 7), dpi=120)
    other = np.array([l not in top for l in labels])
    axes.scatter(xy[other, 0], xy[other, 1], s=4, c="0.8", alpha=0.5, label="other", linewidths=0)
    colours = plt.get_cmap("tab10" if len(top) <= 10 else "tab20")
    for i, genre in enumerate(top):
        mask = np.array([l == genre for l in labels])
        axes.scatter(xy[mask, 0], xy[mask, 1], s=5, color=colours(i), alpha=0.7, label=f"{genre} ({mask.sum()})",
                     linewidths=0)
    ratio = pca.explained_variance_ratio
    axes.set_xlabel(f"PC 1 ({ratio[0]:.1%} of variance)")
    axes.set_ylabel(f"PC 2 ({ratio[1]:.1%} of variance)")
    axes.set_title(title)
    axes.legend(markerscale=3, fontsize=8, loc="best", frameon=False)
    figure.tight_layout()
    path = Path(path)
    with atomic_output(path, ".png") as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return path
