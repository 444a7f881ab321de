"""Held-out rows the validator compares artifacts on, read without loading the whole file.

A MODEL_DIR's ``validation.npz`` holds every held-out ranking group (1 positive + 100 sampled
negatives per user): 10^5 users are 10^7 rows, gigabytes of histories. `ValidationData.load`
therefore maps each stored (uncompressed) ``.npz`` member read-only in place and copies only the
rows of the groups it keeps; compressed members are read whole (numpy cannot map them).
`DEFAULT_MAX_GROUPS` bounds how many groups an export validates on; the validator then streams
those rows in chunks (`ValidationData.chunks`), so its memory does not grow with them either.

Why 2,000 groups: the standard error of the paired ΔAUC (artifact minus Keras on the same rows)
shrinks as 1/sqrt(groups). Measured on MovieLens (DIN, 610 groups, 61,610 rows; ONNX int8 QDQ vs
fp32): ΔAUC -5.13e-4, bootstrap SE over groups 2.65e-4, so ~1.5e-4 at 2,000 groups (dynamic-range
variant: 2.27e-4 -> 1.25e-4), under a tenth of the default 0.002 budget. MovieLens itself keeps
all 610 groups under this default.

Examples:
    >>> data = ValidationData.load("MODEL_DIR/validation.npz", max_groups=200)   # doctest: +SKIP
    >>> sum(stop - start for start, stop, _ in data.chunks(4096)) == data.rows    # doctest: +SKIP
    True
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from edgerec.runtime import metrics as rmetrics
from edgerec.runtime.errors import expected

from .errors import ValidationError

DEFAULT_MAX_GROUPS = 2000
SWEEP_CANDIDATES = 1000


@dataclass
class ValidationData:
    """Held-out rows: model inputs plus optional ``labels`` and ``groups`` (user per row).

    The arrays may be read-only memory maps of the source file (see `load`)."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    groups: np.ndarray | None = None
    source: str = ""

    def __post_init__(self):
        if not self.inputs:
            raise ValidationError(expected("at least one input array in the validation data", []))
        rows = {len(v) for v in self.inputs.values()}
        for extra in (self.labels, self.groups):
            if extra is not None:
                rows.add(len(extra))
        if len(rows) != 1:
            raise ValidationError(expected("the same number of rows in every validation array", sorted(rows)))

    @property
    def rows(self) -> int:
        return len(next(iter(self.inputs.values())))

    @classmethod
    def load(cls, path: str | os.PathLike, max_groups: int | None = None,
             max_rows: int | None = None) -> "ValidationData":
        """Read an ``.npz`` (no pickle), mapping its stored members; subsampling keeps whole groups
        (the first ``max_groups`` by id) so ranking metrics hold."""
        path = Path(path)
        if not path.is_file():
            raise ValidationError(expected("an existing validation .npz file", str(path)))
        arrays = read_npz(path)
        labels, groups = arrays.pop("labels", None), arrays.pop("groups", None)
        data = cls(arrays, labels, groups, str(path))
        return data.subset(max_groups=max_groups, max_rows=max_rows)

    def subset(self, max_groups: int | None = None, max_rows: int | None = None) -> "ValidationData":
        """The rows of the first ``max_groups`` groups (then at most ``max_rows`` rows), copied in memory."""
        keep = np.arange(self.rows)
        if max_groups is not None and self.groups is not None:
            groups = np.asarray(self.groups)
            first = np.unique(groups)[:max_groups]
            keep = keep[np.isin(groups, first)]
        if max_rows is not None and len(keep) > max_rows:
            keep = keep[:max_rows]
        if len(keep) == self.rows:
            return self
        take = lambda a: None if a is None else np.asarray(a[keep])  # noqa: E731
        return ValidationData({k: np.asarray(v[keep]) for k, v in self.inputs.items()}, take(self.labels),
                              take(self.groups), self.source)

    def chunks(self, size: int) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """``(start, stop, {input: rows start:stop})`` over all rows, ``size`` rows at a time."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValidationError(expected("a chunk size as an int >= 1", size))
        for start in range(0, self.rows, size):
            stop = min(start + size, self.rows)
            yield start, stop, {k: np.asarray(v[start:stop]) for k, v in self.inputs.items()}


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{name: array}`` of an ``.npz``: stored members as read-only memory maps, compressed ones read.

    Raises `ValidationError` for a file that is not a numeric ``.npz`` (pickled objects refused)."""
    path = Path(path)
    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if info.filename.endswith(".npy")]
            for info in members:
                name = info.filename[:-4]
                mapped = _mapped_member(path, archive, info) if info.compress_type == zipfile.ZIP_STORED else None
                arrays[name] = mapped if mapped is not None else _read_member(archive, info)
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise ValidationError(expected(f"a numeric .npz without pickled objects at {path}", str(err))) from None
    return arrays


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with archive.open(info) as handle:
        return np.lib.format.read_array(handle, allow_pickle=False)


def _mapped_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray | None:
    """A read-only memory map of one stored ``.npy`` member, or None when it cannot be mapped."""
    with archive.open(info) as handle:
        version = np.lib.format.read_magic(handle)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if reader is None:
            return None
        shape, fortran, dtype = reader(handle)
        header_bytes = handle.tell()
    if dtype.hasobject:
        raise ValueError(f"member {info.filename} holds Python objects (pickle refused)")
    with open(path, "rb") as raw:
        raw.seek(info.header_offset)
        local = raw.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
    offset = info.header_offset + 30 + name_len + extra_len + header_bytes
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape), order="F" if fortran else "C")


def candidate_sweep(data: ValidationData, count: int = SWEEP_CANDIDATES) -> dict[str, np.ndarray] | None:
    """Feeds scoring ``count`` distinct candidates for the first user of ``data`` (None when not a ranking set).

    The candidate input is found generically: the one integer input that varies within the first
    group (every other input is the user's and repeats). Candidates are the distinct values of that
    input over all rows, topped up with the other ids up to the largest one seen (never beyond: the
    model's vocabulary is unknown here), so a small catalogue gives fewer candidates.
    """
    if data.groups is None or not data.rows:
        return None
    groups = np.asarray(data.groups)
    first = np.flatnonzero(groups == groups[0])
    varying = [n for n, a in data.inputs.items() if np.issubdtype(np.asarray(a).dtype, np.integer)
               and a[first].reshape(len(first), -1).shape[1] == 1 and len(np.unique(a[first])) > 1]
    constant = all(np.all(a[first] == a[first[0]]) for n, a in data.inputs.items() if n not in varying)
    if len(varying) != 1 or not constant:
        return None
    name = varying[0]
    column = np.asarray(data.inputs[name])
    seen = np.unique(column.reshape(-1))
    seen = seen[seen > 0]
    if not len(seen):
        return None
    rest = np.setdiff1d(np.arange(1, int(seen.max()) + 1), seen)
    ids = np.concatenate([seen, rest])[:count]
    count = len(ids)
    feeds = {n: np.repeat(np.asarray(a[first[:1]]), count, axis=0) for n, a in data.inputs.items() if n != name}
    feeds[name] = ids.astype(column.dtype).reshape((count,) + column.shape[1:])
    return feeds


def match_outputs(reference: Mapping[str, np.ndarray], produced: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Pair reference output names with artifact output names (exact name, else the single one)."""
    pairs = {name: name for name in reference if name in produced}
    left = [n for n in reference if n not in pairs]
    spare = [n for n in produced if n not in pairs.values()]
    if len(left) == 1 and len(spare) == 1:
        pairs[left[0]] = spare[0]
    return pairs


class OutputDiff:
    """Running comparison of an artifact's outputs with its reference over streamed chunks: per
    output max and summed |Δ| and non-finite counts, plus the score columns (kept whole: one float
    per row) for AUC, ΔAUC and the top-k overlap. `finish` writes the validator's metrics."""

    def __init__(self, score: str | None):
        self.score, self.pairs, self.failures = score, None, []
        self.stats: dict[str, list] = {}     # reference output -> [max |Δ|, sum |Δ|, count]
        self.nonfinite: dict[str, int] = {}
        self.broken: set = set()
        self.probs: list = []
        self.ref_probs: list = []

    def add(self, ref: Mapping[str, np.ndarray], produced: Mapping[str, np.ndarray]) -> None:
        if self.pairs is None:
            self.pairs = match_outputs(ref, produced)
            self.failures += [f"output {n!r} missing; artifact has {sorted(produced)}" for n in ref if n not in self.pairs]
        for ref_name, art_name in self.pairs.items():
            a = np.asarray(produced[art_name], dtype=np.float64)
            r = np.asarray(ref[ref_name], dtype=np.float64)
            if ref_name in self.broken:
                continue
            if a.size != r.size:
                self.failures.append(f"output {ref_name!r}: expected shape {r.shape}, received: {a.shape}")
                self.broken.add(ref_name)
                continue
            bad = int((~np.isfinite(a)).sum())
            if bad or ref_name in self.nonfinite:
                self.nonfinite[ref_name] = self.nonfinite.get(ref_name, 0) + bad
                continue
            diff = np.abs(a.reshape(r.shape) - r)
            stat = self.stats.setdefault(ref_name, [0.0, 0.0, 0])
            stat[0], stat[1], stat[2] = max(stat[0], float(diff.max(initial=0.0))), stat[1] + float(diff.sum()), \
                stat[2] + diff.size
        name = self.score if self.score in self.pairs else next(iter(self.pairs), None)
        if name is not None and name not in self.broken:
            rows = len(ref[name])
            self.probs.append(np.asarray(produced[self.pairs[name]], dtype=np.float64).reshape(rows, -1)[:, 0])
            self.ref_probs.append(np.asarray(ref[name], dtype=np.float64).reshape(rows, -1)[:, 0])

    def finish(self, metrics: dict, failures: list, data: ValidationData, tol, ref_metrics: dict, k: int) -> None:
        """Add the metrics and the failures against ``tol`` (a `Tolerance`) over everything added."""
        failures += self.failures
        failures += [f"output {n!r}: non-finite values (NaN/inf) in {c} elements" for n, c in self.nonfinite.items()]
        stats = {n: s for n, s in self.stats.items() if n not in self.nonfinite and n not in self.broken and s[2]}
        count = sum(s[2] for s in stats.values())
        if count:
            worst, total = max(s[0] for s in stats.values()), sum(s[1] for s in stats.values())
            metrics["max_abs_diff"], metrics["mean_abs_diff"] = worst, total / count
            metrics["outputs"] = {n: {"max_abs_diff": s[0], "mean_abs_diff": s[1] / s[2]} for n, s in stats.items()}
            if tol.max_abs_diff is not None and worst > tol.max_abs_diff:
                failures.append(f"max_abs_diff {worst:.3g} > tolerance {tol.max_abs_diff:g}")
            if total / count > tol.mean_abs_diff:
                failures.append(f"mean_abs_diff {total / count:.3g} > tolerance {tol.mean_abs_diff:g}")
        if not (self.score and data.labels is not None and "auc" in ref_metrics and count and self.probs):
            return
        probs, ref_probs = np.concatenate(self.probs), np.concatenate(self.ref_probs)
        metrics["auc"] = rmetrics.auc(data.labels, probs)
        metrics["delta_auc"] = metrics["auc"] - ref_metrics["auc"]
        metrics["mean_abs_dp"] = float(np.mean(np.abs(probs - ref_probs)))
        if abs(metrics["delta_auc"]) > tol.delta_auc:
            failures.append(f"|delta_auc| {abs(metrics['delta_auc']):.4f} > tolerance {tol.delta_auc:g}")
        if data.groups is not None:
            # rows, not item ids, identify the ranked candidates (a group may repeat an item id)
            overlap = rmetrics.recall_overlap_at_k(probs, ref_probs, data.groups, np.arange(data.rows), k)
            metrics[f"recall_overlap@{k}"] = overlap
            metrics.update(recall_metric(data, probs, k))
            if tol.min_recall_overlap is not None and overlap < tol.min_recall_overlap:
                failures.append(f"recall_overlap@{k} {overlap:.3f} < tolerance {tol.min_recall_overlap:g}")


def recall_metric(data: ValidationData, probs: np.ndarray, k: int) -> dict:
    """recall@k when every group holds exactly one positive (a ranking set), else nothing."""
    try:
        return {f"recall@{k}": rmetrics.recall_at_k(data.labels, probs, data.groups, k)}
    except ValueError:
        return {}
