"""One validator for every format, precision, part and backend.

`validate_artifacts` runs the Keras reference and each artifact (through
`edgerec.runtime.backends`, the same code apps use) on the same held-out rows, then reports per
output max/mean |Δ|, the artifact's AUC, ΔAUC vs Keras (paired, same rows), mean |Δp| and the
top-10 overlap per user when the rows carry ``groups``, and the score resolution of fused artifacts
(`score_resolution`: distinct scores among 1,000 candidates of one user, forced ties in the top
10 — a quantized sigmoid rounds scores to a 1/256 grid). A ``user_encoder`` artifact is compared
with the Keras user encoder, a ``scorer`` with the Keras scorer fed the Keras user state, and every
(user_encoder, scorer) pair of the same format and precision is also composed and compared with
the Keras fused model. Every failure is collected; `ValidationReport.raise_if_failed` raises one
`ValidationError` listing all of them.

Examples:
    >>> data = ValidationData.load("MODEL_DIR/validation.npz", max_groups=200)
    >>> art = DeployableArtifact("m.tflite", "tflite", "fp32", "fused")
    >>> report = validate_artifacts({"fused": keras_model}, [art], data, {"fused": spec})
    >>> report.results[0].metrics["max_abs_diff"] < 1e-4
    True
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgerec.runtime import metrics as rmetrics
from edgerec.runtime.contract import BACKEND_FOR_FORMAT, PARTS, PRECISIONS, SCORE
from edgerec.runtime.errors import EdgeRecError, expected

from .errors import ValidationError
from .pipeline import ExportedArtifact
from .specs import RECALL_K, TOLERANCES, PartSpec

CHUNK = 1024
SWEEP_CANDIDATES = 1000


class DeployableArtifact(ExportedArtifact):
    """An `ExportedArtifact` in a format a runtime backend runs (``tflite``, ``onnx``, ``trt_engine``):
    what the validator, the selector and the bundle writer take. Bad fields raise `ValidationError`.

    Examples:
        >>> DeployableArtifact("m.tflite", "tflite", "fp32", "fused").file
        'm.tflite'
    """

    def __post_init__(self):
        if self.format not in BACKEND_FOR_FORMAT:
            raise ValidationError(expected(f"artifact format in {sorted(BACKEND_FOR_FORMAT)}", self.format))
        if self.precision not in PRECISIONS:
            raise ValidationError(expected(f"precision in {PRECISIONS}", self.precision))
        if self.part not in PARTS:
            raise ValidationError(expected(f"part in {PARTS}", self.part))
        super().__post_init__()


Candidate = DeployableArtifact   # the name older code and tests use


def as_deployable(obj: Any) -> DeployableArtifact:
    """``obj`` (anything with path/format/precision/part) as a `DeployableArtifact`."""
    if isinstance(obj, DeployableArtifact):
        return obj
    try:
        return DeployableArtifact(str(obj.path), obj.format, obj.precision, obj.part,
                                  list(getattr(obj, "inputs", []) or []), list(getattr(obj, "outputs", []) or []),
                                  dict(getattr(obj, "details", {}) or {}), list(getattr(obj, "lineage", []) or []))
    except AttributeError:
        raise ValidationError(expected("an artifact with path/format/precision/part", type(obj).__name__)) from None



@dataclass
class ValidationData:
    """Held-out rows: model inputs plus optional ``labels`` and ``groups`` (user per row)."""

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
        """Read an ``.npz`` (no pickle). Subsampling keeps whole groups so ranking metrics hold."""
        path = Path(path)
        if not path.is_file():
            raise ValidationError(expected("an existing validation .npz file", str(path)))
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: np.asarray(npz[k]) for k in npz.files}
        except (ValueError, OSError) as err:
            raise ValidationError(expected(f"a numeric .npz without pickled objects at {path}", str(err))) from None
        labels, groups = arrays.pop("labels", None), arrays.pop("groups", None)
        data = cls(arrays, labels, groups, str(path))
        return data.subset(max_groups=max_groups, max_rows=max_rows)

    def subset(self, max_groups: int | None = None, max_rows: int | None = None) -> "ValidationData":
        keep = np.arange(self.rows)
        if max_groups is not None and self.groups is not None:
            first = np.unique(self.groups)[:max_groups]
            keep = keep[np.isin(self.groups, first)]
        if max_rows is not None and len(keep) > max_rows:
            keep = keep[:max_rows]
        if len(keep) == self.rows:
            return self
        take = lambda a: None if a is None else a[keep]  # noqa: E731
        return ValidationData({k: v[keep] for k, v in self.inputs.items()}, take(self.labels),
                              take(self.groups), self.source)


@dataclass
class ArtifactResult:
    file: str
    path: str
    format: str
    precision: str
    part: str
    backend: str
    metrics: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def manifest_validation(self) -> dict:
        """The `validation` block of the manifest entry (JSON-safe floats)."""
        out = {k: v for k, v in self.metrics.items() if not isinstance(v, dict)}
        out["passed"] = self.passed
        if self.failures:
            out["failures"] = list(self.failures)
        return out


@dataclass
class ValidationReport:
    reference: dict = field(default_factory=dict)   # part -> {auc, rows, …} of the Keras model
    results: list = field(default_factory=list)     # ArtifactResult
    compositions: list = field(default_factory=list)  # {user_encoder, scorer, metrics, failures}
    rows: int = 0

    @property
    def failures(self) -> list[str]:
        found = [f"{r.file}: {msg}" for r in self.results for msg in r.failures]
        found += [f"{c['user_encoder']} -> {c['scorer']}: {msg}" for c in self.compositions for msg in c["failures"]]
        return found

    @property
    def passed(self) -> bool:
        return not self.failures

    def result(self, file: str) -> ArtifactResult:
        for res in self.results:
            if res.file == file:
                return res
        raise ValidationError(expected(f"a validated artifact named {file!r}", [r.file for r in self.results]))

    def raise_if_failed(self) -> "ValidationReport":
        if self.failures:
            raise ValidationError(f"Expected every artifact within its tolerance, received: "
                                  f"{len(self.failures)} failure(s):\n  - " + "\n  - ".join(self.failures))
        return self


# -- running models ------------------------------------------------------------------------
def keras_outputs(model, feeds: Mapping[str, np.ndarray], chunk: int = 4096) -> dict[str, np.ndarray]:
    """Run a Keras model on named feeds in chunks; outputs keyed by the model's output names."""
    input_names = list(getattr(model, "input_names", None) or [t.name.split(":")[0] for t in model.inputs])
    missing = [n for n in input_names if n not in feeds]
    if missing:
        raise ValidationError(expected(f"validation arrays for the Keras inputs {input_names}", f"missing {missing}"))
    output_names = list(getattr(model, "output_names", None) or [f"output_{i}" for i in range(len(model.outputs))])
    rows = len(feeds[input_names[0]])
    pieces: dict[str, list] = {}
    for start in range(0, rows, chunk):
        batch = {n: feeds[n][start:start + chunk] for n in input_names}
        out = model(batch if len(input_names) > 1 else batch[input_names[0]], training=False)
        if isinstance(out, Mapping):
            named = {k: np.asarray(v) for k, v in out.items()}
        else:
            out = list(out) if isinstance(out, (list, tuple)) else [out]
            named = {name: np.asarray(v) for name, v in zip(output_names, out)}
        for name, value in named.items():
            pieces.setdefault(name, []).append(value)
    return {k: np.concatenate(v, axis=0) for k, v in pieces.items()}


def backend_outputs(artifact: ExportedArtifact, feeds: Mapping[str, np.ndarray], backend_options: Mapping | None = None,
                    chunk: int = CHUNK) -> tuple[dict[str, np.ndarray], list]:
    """Run an artifact through the shared backend API; returns (outputs, declared inputs)."""
    from edgerec.runtime.backends import create_backend

    name = BACKEND_FOR_FORMAT[artifact.format]
    with create_backend(name, artifact.path, **dict(backend_options or {})) as backend:
        declared = list(backend.inputs)
        missing = [t.name for t in declared if t.name not in feeds]
        if missing:
            raise ValidationError(expected(f"validation arrays for the artifact inputs {[t.name for t in declared]}",
                                           f"missing {missing}"))
        rows = len(feeds[declared[0].name])
        pieces: dict[str, list] = {}
        for start in range(0, rows, chunk):
            batch = {t.name: np.ascontiguousarray(feeds[t.name][start:start + chunk], dtype=t.dtype) for t in declared}
            for key, value in backend.run(batch).items():
                pieces.setdefault(key, []).append(np.asarray(value))
    return {k: np.concatenate(v, axis=0) for k, v in pieces.items()}, declared


def match_outputs(reference: Mapping[str, np.ndarray], produced: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Pair reference output names with artifact output names (exact name, else the single one)."""
    pairs = {name: name for name in reference if name in produced}
    left = [n for n in reference if n not in pairs]
    spare = [n for n in produced if n not in pairs.values()]
    if len(left) == 1 and len(spare) == 1:
        pairs[left[0]] = spare[0]
    return pairs


# -- the validator -------------------------------------------------------------------------
def validate_artifacts(reference: Mapping[str, Any] | Any, artifacts: Sequence[Any], data: ValidationData,
                       specs: Mapping[str, PartSpec] | None = None, *, backend_options: Mapping | None = None,
                       k: int = RECALL_K, raise_on_failure: bool = True, progress=None) -> ValidationReport:
    """Validate every artifact against its Keras reference part on the same held-out rows.

    Args:
        reference: ``{part: keras model}`` (a bare model means ``{"fused": model}``).
        artifacts: `ExportedArtifact`s (or objects with ``path/format/precision/part``).
        data: `ValidationData` with the fused inputs, ``labels`` for AUC, ``groups`` for recall overlap.
        specs: ``{part: PartSpec}`` for tolerances and the score output; default tolerances otherwise.
        backend_options: forwarded to ``create_backend`` (e.g. ``num_threads``).
        k: the K of the top-K overlap.
        raise_on_failure: raise one `ValidationError` listing all failures (else only report them).
        progress: optional ``callable(str)`` for progress lines.
    """
    if not isinstance(reference, Mapping):
        reference = {"fused": reference}
    if not isinstance(data, ValidationData):
        raise ValidationError(expected("ValidationData", type(data).__name__))
    specs = dict(specs or {})
    artifacts = [as_deployable(a) for a in artifacts]
    needed = {a.part for a in artifacts}
    if any(a.part == "scorer" for a in artifacts):
        needed.add("user_encoder")
    missing = sorted(p for p in needed if p not in reference)
    if missing:
        raise ValidationError(expected(f"Keras reference models for parts {sorted(needed)}", f"missing {missing}"))

    feeds = {part: dict(data.inputs) for part in PARTS}
    ref_out: dict[str, dict] = {}
    for part in ("fused", "user_encoder", "scorer"):
        if part not in reference or part not in needed | {"fused"}:
            continue
        if part == "scorer":
            feeds[part].update(ref_out["user_encoder"])
        ref_out[part] = keras_outputs(reference[part], feeds[part])
    report = ValidationReport(rows=data.rows)
    for part, outputs in ref_out.items():
        report.reference[part] = _reference_metrics(outputs, data, _score_name(specs, part), k)

    for art in artifacts:
        if progress:
            progress(f"validating {art.file} ({art.format}/{art.precision}/{art.part})")
        report.results.append(_validate_one(art, ref_out[art.part], feeds[art.part], data, specs,
                                            report.reference.get(art.part, {}), backend_options, k))
    report.compositions = _validate_compositions(artifacts, report, ref_out, feeds, data, specs,
                                                 backend_options, k)
    if raise_on_failure:
        report.raise_if_failed()
    return report


def _score_name(specs: Mapping[str, PartSpec], part: str) -> str | None:
    if part in specs:
        return specs[part].score_output
    return None if part in ("user_encoder", "content_encoder") else SCORE


def _tolerance(specs: Mapping[str, PartSpec], part: str, precision: str):
    return specs[part].tolerance(precision) if part in specs else TOLERANCES[precision]


def _reference_metrics(outputs: Mapping[str, np.ndarray], data: ValidationData, score: str | None, k: int) -> dict:
    result = {"rows": data.rows}
    if score and data.labels is not None:
        probs = _score_of(outputs, score)
        if probs is not None:
            result["auc"] = rmetrics.auc(data.labels, probs)
            if data.groups is not None:
                result.update(_recall(data, probs, k))
    return result


def _recall(data: ValidationData, probs: np.ndarray, k: int) -> dict:
    """recall@k when every group holds exactly one positive (a ranking set), else nothing."""
    try:
        return {f"recall@{k}": rmetrics.recall_at_k(data.labels, probs, data.groups, k)}
    except ValueError:
        return {}


def _score_of(outputs: Mapping[str, np.ndarray], score: str) -> np.ndarray | None:
    if score in outputs:
        return np.asarray(outputs[score], dtype=np.float64).reshape(len(outputs[score]), -1)[:, 0]
    if len(outputs) == 1:
        only = next(iter(outputs.values()))
        return np.asarray(only, dtype=np.float64).reshape(len(only), -1)[:, 0]
    return None


def _validate_one(art: DeployableArtifact, ref: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray],
                  data: ValidationData, specs, ref_metrics: dict, backend_options, k: int) -> ArtifactResult:
    res = ArtifactResult(art.file, art.path, art.format, art.precision, art.part, BACKEND_FOR_FORMAT[art.format])
    try:
        produced, _ = backend_outputs(art, feeds, backend_options)
    except (EdgeRecError, RuntimeError, ValueError, OSError) as err:
        res.failures.append(f"could not run on {res.backend}: {type(err).__name__}: {err}")
        return res
    _compare(res.metrics, res.failures, ref, produced, data, _tolerance(specs, art.part, art.precision),
             _score_name(specs, art.part), ref_metrics, k)
    sweep = candidate_sweep(data) if art.part == "fused" and not res.failures else None
    if sweep is not None:
        try:
            swept, _ = backend_outputs(art, sweep, backend_options)
        except (EdgeRecError, RuntimeError, ValueError, OSError):
            return res
        scores = _score_of(swept, _score_name(specs, art.part) or SCORE)
        if scores is not None:
            res.metrics["score_resolution"] = score_resolution(scores, k)
    return res


def candidate_sweep(data: ValidationData, count: int = SWEEP_CANDIDATES) -> dict[str, np.ndarray] | None:
    """Feeds scoring ``count`` distinct candidates for the first user of ``data`` (None when not a ranking set).

    The candidate input is found generically: the one integer input that varies within the first
    group (every other input is the user's and repeats). Candidates are the distinct values of that
    input over all rows, topped up with the other ids up to the largest one seen (never beyond: the
    model's vocabulary is unknown here), so a small catalogue gives fewer candidates.
    """
    if data.groups is None or not data.rows:
        return None
    first = np.flatnonzero(data.groups == data.groups[0])
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
    feeds = {n: np.repeat(a[first[:1]], count, axis=0) for n, a in data.inputs.items() if n != name}
    feeds[name] = ids.astype(column.dtype).reshape((count,) + column.shape[1:])
    return feeds


def score_resolution(scores: np.ndarray, k: int = RECALL_K) -> dict:
    """``distinct_fraction`` of the scores and ``top{k}_tied``: how many of the top ``k`` share their score
    with another candidate (a tie the app must break arbitrarily)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    values, counts = np.unique(scores, return_counts=True)
    top = np.sort(scores)[::-1][:k]
    shared = set(values[counts > 1].tolist())
    return {"candidates": int(scores.size), "distinct_fraction": float(len(values) / max(scores.size, 1)),
            f"top{k}_tied": int(sum(1 for v in top.tolist() if v in shared))}


def _compare(metrics: dict, failures: list, ref: Mapping[str, np.ndarray], produced: Mapping[str, np.ndarray],
             data: ValidationData, tol, score: str | None, ref_metrics: dict, k: int) -> None:
    pairs = match_outputs(ref, produced)
    for name in ref:
        if name not in pairs:
            failures.append(f"output {name!r} missing; artifact has {sorted(produced)}")
    per_output, worst, total, count = {}, 0.0, 0.0, 0
    for ref_name, art_name in pairs.items():
        a = np.asarray(produced[art_name], dtype=np.float64)
        r = np.asarray(ref[ref_name], dtype=np.float64)
        if a.size != r.size:
            failures.append(f"output {ref_name!r}: expected shape {r.shape}, received: {a.shape}")
            continue
        diff = np.abs(a.reshape(r.shape) - r)
        if not np.all(np.isfinite(a)):
            failures.append(f"output {ref_name!r}: non-finite values (NaN/inf) in {int((~np.isfinite(a)).sum())} elements")
            continue
        per_output[ref_name] = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}
        worst, total, count = max(worst, float(diff.max())), total + float(diff.sum()), count + diff.size
    if count:
        metrics["max_abs_diff"], metrics["mean_abs_diff"] = worst, total / count
        metrics["outputs"] = per_output
        if tol.max_abs_diff is not None and worst > tol.max_abs_diff:
            failures.append(f"max_abs_diff {worst:.3g} > tolerance {tol.max_abs_diff:g}")
        if total / count > tol.mean_abs_diff:
            failures.append(f"mean_abs_diff {total / count:.3g} > tolerance {tol.mean_abs_diff:g}")
    if score and data.labels is not None and "auc" in ref_metrics and count:
        ref_name = score if score in pairs else next(iter(pairs))
        probs = np.asarray(produced[pairs[ref_name]], dtype=np.float64).reshape(data.rows, -1)[:, 0]
        ref_probs = np.asarray(ref[ref_name], dtype=np.float64).reshape(data.rows, -1)[:, 0]
        metrics["auc"] = rmetrics.auc(data.labels, probs)
        metrics["delta_auc"] = metrics["auc"] - ref_metrics["auc"]
        metrics["mean_abs_dp"] = float(np.mean(np.abs(probs - ref_probs)))
        if abs(metrics["delta_auc"]) > tol.delta_auc:
            failures.append(f"|delta_auc| {abs(metrics['delta_auc']):.4f} > tolerance {tol.delta_auc:g}")
        if data.groups is not None:
            # rows, not item ids, identify the ranked candidates (a group may repeat an item id)
            overlap = rmetrics.recall_overlap_at_k(probs, ref_probs, data.groups, np.arange(data.rows), k)
            metrics[f"recall_overlap@{k}"] = overlap
            metrics.update(_recall(data, probs, k))
            if tol.min_recall_overlap is not None and overlap < tol.min_recall_overlap:
                failures.append(f"recall_overlap@{k} {overlap:.3f} < tolerance {tol.min_recall_overlap:g}")


def _validate_compositions(artifacts, report, ref_out, feeds, data, specs, backend_options, k) -> list:
    users = [a for a in artifacts if a.part == "user_encoder" and report.result(a.file).passed]
    scorers = [a for a in artifacts if a.part == "scorer" and report.result(a.file).passed]
    composed = []
    target = ref_out.get("fused") or ref_out.get("scorer")
    target_part = "fused" if "fused" in ref_out else "scorer"
    for ue in users:
        for sc in scorers:
            if (ue.format, ue.precision) != (sc.format, sc.precision):
                continue
            entry = {"user_encoder": ue.file, "scorer": sc.file, "metrics": {}, "failures": []}
            try:
                user_state, _ = backend_outputs(ue, feeds["user_encoder"], backend_options)
                scorer_feeds = dict(feeds["scorer"])
                scorer_feeds.update({n: user_state[n] for n in user_state})
                produced, _ = backend_outputs(sc, scorer_feeds, backend_options)
            except (EdgeRecError, RuntimeError, ValueError, OSError) as err:
                entry["failures"].append(f"composition could not run: {type(err).__name__}: {err}")
            else:
                _compare(entry["metrics"], entry["failures"], target, produced, data,
                         _tolerance(specs, "scorer", sc.precision), _score_name(specs, "scorer"),
                         report.reference.get(target_part, {}), k)
            composed.append(entry)
    return composed
