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

Rows are streamed (`STREAM_ROWS` at a time, read from a lazily mapped `ValidationData`): per
artifact the validator keeps running |Δ| statistics and one score per row, never whole user
states, so its memory is bounded by the chunk, not by rows × sequence length × embedding width.

Examples:
    >>> data = ValidationData.load("MODEL_DIR/validation.npz", max_groups=200)
    >>> art = DeployableArtifact("m.tflite", "tflite", "fp32", "fused")
    >>> report = validate_artifacts({"fused": keras_model}, [art], data, {"fused": spec})
    >>> report.results[0].metrics["max_abs_diff"] < 1e-4
    True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from edgerec.runtime import metrics as rmetrics
from edgerec.runtime.contract import BACKEND_FOR_FORMAT, PARTS, PRECISIONS, SCORE
from edgerec.runtime.errors import EdgeRecError, expected

from .errors import ValidationError
from .pipeline import ExportedArtifact
from .specs import RECALL_K, TOLERANCES, PartSpec
from .validation_data import (SWEEP_CANDIDATES, OutputDiff, ValidationData, candidate_sweep,  # noqa: F401
                              match_outputs, recall_metric)

CHUNK = 1024
# rows the validator holds at once (Keras references, artifact outputs): its memory is bounded by
# this, not by the validation set. User states are wide (L x D floats per row and more, compared
# in float64): 16,384 rows raised a 10^5-item DIN export's peak RSS by 3.3 GB
STREAM_ROWS = 2048


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
    with open_backend(artifact, backend_options) as backend:
        return run_backend(backend, feeds, chunk), list(backend.inputs)


def open_backend(artifact: ExportedArtifact, backend_options: Mapping | None = None):
    """The runtime backend of ``artifact`` (a context manager)."""
    from edgerec.runtime.backends import create_backend

    return create_backend(BACKEND_FOR_FORMAT[artifact.format], artifact.path, **dict(backend_options or {}))


def run_backend(backend, feeds: Mapping[str, np.ndarray], chunk: int = CHUNK) -> dict[str, np.ndarray]:
    """An open backend's outputs on ``feeds``, ``chunk`` rows per call."""
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
    return {k: np.concatenate(v, axis=0) for k, v in pieces.items()}


# -- the validator -------------------------------------------------------------------------
def validate_artifacts(reference: Mapping[str, Any] | Any, artifacts: Sequence[Any], data: ValidationData,
                       specs: Mapping[str, PartSpec] | None = None, *, backend_options: Mapping | None = None,
                       k: int = RECALL_K, raise_on_failure: bool = True, progress=None,
                       stream_rows: int = STREAM_ROWS) -> ValidationReport:
    """Validate every artifact against its Keras reference part on the same held-out rows.

    Rows are streamed ``stream_rows`` at a time: per artifact only the running |Δ| statistics and
    the score vectors (for AUC, ΔAUC and top-k overlap) are kept, never whole user states.

    Args:
        reference: ``{part: keras model}`` (a bare model means ``{"fused": model}``).
        artifacts: `ExportedArtifact`s (or objects with ``path/format/precision/part``).
        data: `ValidationData` with the fused inputs, ``labels`` for AUC, ``groups`` for recall overlap.
        specs: ``{part: PartSpec}`` for tolerances and the score output; default tolerances otherwise.
        backend_options: forwarded to ``create_backend`` (e.g. ``num_threads``).
        k: the K of the top-K overlap.
        raise_on_failure: raise one `ValidationError` listing all failures (else only report them).
        progress: optional ``callable(str)`` for progress lines.
        stream_rows: rows held at once (the same metrics for any value, to float rounding).
    """
    if not isinstance(reference, Mapping):
        reference = {"fused": reference}
    if not isinstance(data, ValidationData):
        raise ValidationError(expected("ValidationData", type(data).__name__))
    if isinstance(stream_rows, bool) or not isinstance(stream_rows, int) or stream_rows < 1:
        raise ValidationError(expected("stream_rows as an int >= 1", stream_rows))
    specs = dict(specs or {})
    artifacts = [as_deployable(a) for a in artifacts]
    needed = {a.part for a in artifacts}
    if any(a.part == "scorer" for a in artifacts):
        needed.add("user_encoder")
    missing = sorted(p for p in needed if p not in reference)
    if missing:
        raise ValidationError(expected(f"Keras reference models for parts {sorted(needed)}", f"missing {missing}"))
    refs = _References(reference, [p for p in ("fused", "user_encoder", "scorer")
                                   if p in reference and p in needed | {"fused"}], data, specs, stream_rows)
    report = ValidationReport(rows=data.rows)
    for part in refs.parts:
        report.reference[part] = _reference_metrics(refs.scores.get(part), data, k)

    for art in artifacts:
        if progress:
            progress(f"validating {art.file} ({art.format}/{art.precision}/{art.part})")
        report.results.append(_validate_one(art, refs, data, specs, report.reference.get(art.part, {}),
                                            backend_options, k))
    report.compositions = _validate_compositions(artifacts, report, refs, data, specs, backend_options, k)
    if raise_on_failure:
        report.raise_if_failed()
    return report


class _References:
    """Keras reference outputs chunk by chunk. Score columns are kept for all rows, and so is every
    output of a part whose outputs total at most `KEEP_BYTES`; larger ones (user states) are
    recomputed for each chunk an artifact needs."""

    KEEP_BYTES = 64 << 20

    def __init__(self, models: Mapping[str, Any], parts: list, data: ValidationData, specs, stream_rows: int):
        self.models, self.parts, self.data, self.stream_rows = models, parts, data, stream_rows
        self.scores: dict[str, np.ndarray] = {}
        self.kept: dict[str, dict] = {}
        pieces: dict[str, dict] = {p: {} for p in parts}
        columns: dict[str, list] = {p: [] for p in parts}
        for start, stop, inputs in data.chunks(stream_rows):
            for part, outputs in self._compute(parts, inputs).items():
                column = _score_of(outputs, _score_name(specs, part))
                columns[part].append(column)
                per_row = sum(v.nbytes for v in outputs.values()) / max(stop - start, 1)
                if per_row * data.rows <= self.KEEP_BYTES:
                    for name, value in outputs.items():
                        pieces[part].setdefault(name, []).append(value)
        for part in parts:
            if columns[part] and all(c is not None for c in columns[part]):
                self.scores[part] = np.concatenate(columns[part])
            if pieces[part]:
                self.kept[part] = {n: np.concatenate(v, axis=0) for n, v in pieces[part].items()}

    def _compute(self, parts, inputs: Mapping[str, np.ndarray]) -> dict[str, dict]:
        out = {}
        for part in parts:
            feeds = {**inputs, **out["user_encoder"]} if part == "scorer" else inputs
            out[part] = keras_outputs(self.models[part], feeds)
        return out

    def chunk(self, part: str, start: int, stop: int, inputs: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
        """``(feeds, reference outputs)`` of ``part`` for rows start:stop."""
        feeds = dict(inputs)
        if part == "scorer":
            feeds.update(self._outputs("user_encoder", start, stop, inputs))
        return feeds, self._outputs(part, start, stop, inputs, feeds)

    def _outputs(self, part, start, stop, inputs, feeds=None) -> dict:
        if part in self.kept:
            return {n: v[start:stop] for n, v in self.kept[part].items()}
        if part == "scorer" and feeds is None:
            feeds = {**inputs, **self._outputs("user_encoder", start, stop, inputs)}
        return keras_outputs(self.models[part], feeds if feeds is not None else inputs)


def _score_name(specs: Mapping[str, PartSpec], part: str) -> str | None:
    if part in specs:
        return specs[part].score_output
    return None if part in ("user_encoder", "content_encoder") else SCORE


def _tolerance(specs: Mapping[str, PartSpec], part: str, precision: str):
    return specs[part].tolerance(precision) if part in specs else TOLERANCES[precision]


def _reference_metrics(probs: np.ndarray | None, data: ValidationData, k: int) -> dict:
    result = {"rows": data.rows}
    if probs is not None and data.labels is not None:
        result["auc"] = rmetrics.auc(data.labels, probs)
        if data.groups is not None:
            result.update(recall_metric(data, probs, k))
    return result


def _score_of(outputs: Mapping[str, np.ndarray], score: str | None) -> np.ndarray | None:
    if score is None:
        return None
    if score in outputs:
        return np.asarray(outputs[score], dtype=np.float64).reshape(len(outputs[score]), -1)[:, 0]
    if len(outputs) == 1:
        only = next(iter(outputs.values()))
        return np.asarray(only, dtype=np.float64).reshape(len(only), -1)[:, 0]
    return None


RUN_ERRORS = (EdgeRecError, RuntimeError, ValueError, OSError)


def _validate_one(art: DeployableArtifact, refs: _References, data: ValidationData, specs, ref_metrics: dict,
                  backend_options, k: int) -> ArtifactResult:
    res = ArtifactResult(art.file, art.path, art.format, art.precision, art.part, BACKEND_FOR_FORMAT[art.format])
    diff = OutputDiff(_score_name(specs, art.part))
    try:
        with open_backend(art, backend_options) as backend:
            for start, stop, inputs in data.chunks(refs.stream_rows):
                feeds, ref = refs.chunk(art.part, start, stop, inputs)
                diff.add(ref, run_backend(backend, feeds))
    except RUN_ERRORS as err:
        res.failures.append(f"could not run on {res.backend}: {type(err).__name__}: {err}")
        return res
    diff.finish(res.metrics, res.failures, data, _tolerance(specs, art.part, art.precision), ref_metrics, k)
    sweep = candidate_sweep(data) if art.part == "fused" and not res.failures else None
    if sweep is not None:
        try:
            swept, _ = backend_outputs(art, sweep, backend_options)
        except RUN_ERRORS:
            return res
        scores = _score_of(swept, _score_name(specs, art.part) or SCORE)
        if scores is not None:
            res.metrics["score_resolution"] = score_resolution(scores, k)
    return res


def score_resolution(scores: np.ndarray, k: int = RECALL_K) -> dict:
    """``distinct_fraction`` of the scores and ``top{k}_tied``: how many of the top ``k`` share their score
    with another candidate (a tie the app must break arbitrarily)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    values, counts = np.unique(scores, return_counts=True)
    top = np.sort(scores)[::-1][:k]
    shared = set(values[counts > 1].tolist())
    return {"candidates": int(scores.size), "distinct_fraction": float(len(values) / max(scores.size, 1)),
            f"top{k}_tied": int(sum(1 for v in top.tolist() if v in shared))}


def _validate_compositions(artifacts, report, refs: _References, data, specs, backend_options, k) -> list:
    users = [a for a in artifacts if a.part == "user_encoder" and report.result(a.file).passed]
    scorers = [a for a in artifacts if a.part == "scorer" and report.result(a.file).passed]
    target = "fused" if "fused" in refs.parts else "scorer"
    composed = []
    for ue in users:
        for sc in scorers:
            if (ue.format, ue.precision) != (sc.format, sc.precision):
                continue
            entry = {"user_encoder": ue.file, "scorer": sc.file, "metrics": {}, "failures": []}
            diff = OutputDiff(_score_name(specs, "scorer"))
            try:
                with open_backend(ue, backend_options) as user_backend, open_backend(sc, backend_options) as scorer:
                    for start, stop, inputs in data.chunks(refs.stream_rows):
                        feeds, _ = refs.chunk("scorer", start, stop, inputs)
                        feeds.update(run_backend(user_backend, inputs))
                        _, ref = refs.chunk(target, start, stop, inputs)
                        diff.add(ref, run_backend(scorer, feeds))
            except RUN_ERRORS as err:
                entry["failures"].append(f"composition could not run: {type(err).__name__}: {err}")
            else:
                diff.finish(entry["metrics"], entry["failures"], data, _tolerance(specs, "scorer", sc.precision),
                            report.reference.get(target, {}), k)
            composed.append(entry)
    return composed
