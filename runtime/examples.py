"""A bundle's examples.jsonl, read once, and the one rule that replays it.

Every bundle carries ~32 example lines with the trained (Keras) model's outputs: raw requests
plus an ``"expected"`` probability (edgerec bundles), or tensor rows ``{"inputs": {...},
"expected": {...}}`` (bring-your-own models). `edgerec check`, `edgerec validate`,
`Predictor.swap` and the demo all replay them here, with one pass rule: worst and mean
|output - expected| within the REPLAY tolerance edgerec declares for the artifact's precision
(`edgerec.runtime.contract.REPLAY_TOLERANCES`). A manifest's recorded figures may tighten that
bound (`replay_tolerance`), never loosen it; only the caller may choose another bound.

Examples:
    >>> results = check_bundle("demo-out/bundle")                              # doctest: +SKIP
    >>> [(r.label, r.passed) for r in results]
    [('fused_int8.tflite', True), ('user_encoder_fp32.tflite -> scorer_int8.tflite', True), ...]
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

import numpy as np

from .contract import (BACKEND_FOR_FORMAT, BACKENDS, FORMAT_FOR_BACKEND, FUSED, PRECISIONS,
                       QUANTIZED_RECORDED_MARGIN, RECORDED_FLOOR, RECORDED_MARGIN, SCORE, SCORER, USER_ENCODER,
                       Tolerance, replay_tolerance_for)
from .backends.registry import create_backend, is_available
from .errors import BundleError, EdgeRecError, IntegrityError, RequestError, expected
from .loaded import LoadedBundle
from .manifest import Manifest, bundle_directory, confined_path, load_manifest
from .preprocess import Preprocessor
from .chains import artifact_chains, part_chains, run_chain
from .requests_io import parse_jsonl
from .selection import check_signature, choose_backend, load_spec, selected_files

logger = logging.getLogger(__name__)

EXAMPLES_NAME = "examples.jsonl"
EXAMPLES_ROLE = "examples"
# Real bundles hold ~32 lines (~10 KB); the bounds keep a hostile file from exhausting memory.
MAX_EXAMPLES_BYTES = 8 << 20
MAX_EXAMPLE_LINES = 10_000


@dataclass(frozen=True)
class ExampleSet:
    """examples.jsonl of one bundle, read once and encoded for the models.

    Args:
        kind: ``"requests"`` (raw requests + ``expected`` score) or ``"tensors"`` (BYOM rows).
        lines: the parsed JSON objects.
        feeds: input name -> array of every line (requests encoded by the `Preprocessor`).
        expected: ``{"score": [N, 1] float64}`` for requests; output name -> array for tensors.
    """

    kind: str
    lines: list
    feeds: dict
    expected: dict

    @property
    def rows(self) -> int:
        return len(self.lines)

    @classmethod
    def load(cls, bundle_dir, manifest: Manifest, spec=None) -> "ExampleSet":
        """Read, verify (sha256 against the manifest's entry) and encode examples.jsonl.

        Args:
            bundle_dir: the bundle directory.
            manifest: its manifest; the file must be listed in ``manifest.files``.
            spec: the bundle's `FeatureSpec` when already loaded (else read from the manifest's).

        Raises:
            BundleError: missing, unlisted, too big, empty or malformed examples.
            IntegrityError: the file differs from its manifest entry.
        """
        text = _read_verified(Path(bundle_dir), manifest)
        lines = parse_jsonl(text, EXAMPLES_NAME, error=BundleError)
        if not lines:
            raise BundleError(expected(f"at least one example line in {EXAMPLES_NAME}", 0))
        if len(lines) > MAX_EXAMPLE_LINES:
            raise BundleError(expected(f"at most {MAX_EXAMPLE_LINES} lines in {EXAMPLES_NAME}", len(lines)))
        bad = [i + 1 for i, line in enumerate(lines) if not isinstance(line, dict)]
        if bad:
            raise BundleError(expected(f"a JSON object on every line of {EXAMPLES_NAME}", f"lines {bad[:5]}"))
        tensors = [isinstance(line.get("inputs"), dict) for line in lines]
        if all(tensors):
            return cls("tensors", lines, *_tensor_rows(lines, manifest))
        if any(tensors):
            raise BundleError(expected(f"one kind of line in {EXAMPLES_NAME} (raw requests or tensor rows)",
                                       f"{sum(tensors)} tensor rows among {len(lines)} lines"))
        return cls("requests", lines, *_request_rows(Path(bundle_dir), lines, manifest, spec))


def examples_entry(manifest: Manifest) -> dict:
    """The ``files`` entry of examples.jsonl (role "examples", else the file of that name)."""
    entries = [f for f in manifest.files if isinstance(f, dict)]
    for entry in entries:
        if entry.get("role") == EXAMPLES_ROLE:
            return entry
    for entry in entries:
        if entry.get("file") == EXAMPLES_NAME:
            return entry
    raise BundleError(expected(f"{EXAMPLES_NAME} listed (with its sha256) in the manifest's files",
                               "not listed"))


def _read_verified(bundle: Path, manifest: Manifest) -> str:
    """The text of examples.jsonl, from bytes read once and checked against the manifest."""
    entry = examples_entry(manifest)
    path = confined_path(bundle, entry.get("file"))
    if not path.is_file():
        raise BundleError(expected(f"{entry['file']} in the bundle", "missing"))
    with open(path, "rb") as handle:
        data = handle.read(MAX_EXAMPLES_BYTES + 1)
    if len(data) > MAX_EXAMPLES_BYTES:
        raise BundleError(expected(f"{entry['file']} of at most {MAX_EXAMPLES_BYTES} bytes", "larger"))
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != entry.get("size_bytes") or digest != entry.get("sha256"):
        raise IntegrityError(expected(f"{entry['file']} of {entry.get('size_bytes')} bytes with sha256 "
                                      f"{entry.get('sha256')}", f"{len(data)} bytes, sha256 {digest}"))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BundleError(expected(f"UTF-8 text in {entry['file']}", str(err))) from None


def _request_rows(bundle: Path, lines: list, manifest: Manifest, spec) -> tuple[dict, dict]:
    if spec is None:
        if manifest.feature_spec is None:
            raise BundleError(expected(f"a feature spec to encode the raw requests of {EXAMPLES_NAME}",
                                       "none (tensor rows {\"inputs\": ..., \"expected\": ...} need no spec)"))
        spec = load_spec(bundle, manifest)      # parsed from bytes checked against the manifest
    scores = [line.get("expected") for line in lines]
    bad = [i + 1 for i, s in enumerate(scores) if isinstance(s, bool) or not isinstance(s, (int, float))
           or not math.isfinite(s)]
    if bad:
        raise BundleError(expected(f"a finite 'expected' number on every line of {EXAMPLES_NAME}",
                                   f"lines {bad[:5]}"))
    try:
        feeds = Preprocessor(spec).encode_requests([{k: v for k, v in line.items() if k != "expected"}
                                                    for line in lines])
    except RequestError as err:
        raise BundleError(expected(f"raw requests in {EXAMPLES_NAME} that the feature spec encodes", str(err))) \
            from None
    return feeds, {SCORE: np.asarray(scores, dtype=np.float64).reshape(-1, 1)}


def _tensor_rows(lines: list, manifest: Manifest) -> tuple[dict, dict]:
    declared = {t.name: t.dtype for a in manifest.artifacts for t in a.inputs}
    first_inputs, first_expected = lines[0]["inputs"], lines[0].get("expected")
    if not isinstance(first_expected, dict) or not first_expected:
        raise BundleError(expected(f"an 'expected' object of outputs on each tensor row of {EXAMPLES_NAME}",
                                   first_expected))
    for number, line in enumerate(lines, 1):
        if set(line["inputs"]) != set(first_inputs) or not isinstance(line.get("expected"), dict) \
                or set(line["expected"]) != set(first_expected):
            raise BundleError(expected(f"the same inputs and expected outputs on every line of {EXAMPLES_NAME}",
                                       f"line {number} differs from line 1"))

    def stack(key, name, dtype):
        try:
            array = np.asarray([line[key][name] for line in lines], dtype=dtype)
        except (TypeError, ValueError, OverflowError) as err:
            raise BundleError(expected(f"'{key}.{name}' rows of one shape ({dtype or 'numbers'}) in "
                                       f"{EXAMPLES_NAME}", str(err)[:200])) from None
        if array.dtype.kind not in "biuf" or (array.dtype.kind == "f" and not np.isfinite(array).all()):
            raise BundleError(expected(f"finite numbers in '{key}.{name}' of {EXAMPLES_NAME}", str(array.dtype)))
        return array

    feeds = {name: stack("inputs", name, declared.get(name)) for name in first_inputs}
    want = {name: stack("expected", name, np.float64) for name in first_expected}
    return feeds, want


# -- the rule ----------------------------------------------------------------------------------
def replay_tolerance(precision: str, recorded: Mapping | None = None) -> Tolerance:
    """The replay bound of an artifact: declared per precision; ``recorded`` (the artifact's
    ``validation`` figures in the manifest) may only tighten the worst-line bound, to 2x that
    figure for float precisions and 10x for quantized ones (see `contract.RECORDED_MARGIN`).

    Examples:
        >>> replay_tolerance("int8").max_abs_diff
        0.25
        >>> replay_tolerance("fp16", {"max_abs_diff": 0.001}).max_abs_diff
        0.002
        >>> replay_tolerance("int8", {"max_abs_diff": 0.01}).max_abs_diff
        0.1
        >>> replay_tolerance("int8", {"max_abs_diff": 0.5}).max_abs_diff     # cannot loosen
        0.25
    """
    declared = replay_tolerance_for(precision)
    figure = (recorded or {}).get("max_abs_diff") if isinstance(recorded, Mapping) else None
    if isinstance(figure, bool) or not isinstance(figure, (int, float)) or not math.isfinite(figure) or figure < 0:
        return declared
    margin = RECORDED_MARGIN if precision in ("fp32", "fp16") else QUANTIZED_RECORDED_MARGIN
    bound = max(RECORDED_FLOOR, margin * float(figure))
    if declared.max_abs_diff is not None and bound >= declared.max_abs_diff:
        return declared
    return replace(declared, max_abs_diff=bound)


def looser_precision(*precisions: str) -> str:
    """The precision with the widest declared bound (composed parts get their looser one)."""
    return max(precisions, key=lambda p: (replay_tolerance_for(p).mean_abs_diff, PRECISIONS.index(p)))


@dataclass(frozen=True)
class ReplayResult:
    """One artifact (or user_encoder -> scorer pair) replayed on the examples.

    ``worst``/``mean``: |output - expected| over every output element (NaN when it did not run);
    ``reason``: why it failed (None when it passed).
    """

    label: str
    backend: str
    files: dict
    precision: str
    rows: int
    worst: float
    mean: float
    tolerance: Tolerance
    passed: bool
    reason: str | None

    def describe(self) -> str:
        """One line: what ran, the figures, the bound and the verdict."""
        bound = (f"tolerance max {self.tolerance.max_abs_diff:.3g} / mean {self.tolerance.mean_abs_diff:.3g} "
                 f"({self.precision})")
        verdict = "OK" if self.passed else f"FAIL: {self.reason}"
        return (f"{self.backend}: {self.rows} examples, {self.label}: worst |Δ| {self.worst:.3g}, "
                f"mean {self.mean:.3g}, {bound}: {verdict}")

    def to_dict(self) -> dict:
        return {"label": self.label, "backend": self.backend, "files": dict(self.files),
                "precision": self.precision, "rows": self.rows, "worst": _json_number(self.worst),
                "mean": _json_number(self.mean), "tolerance": self.tolerance.to_dict(),
                "passed": self.passed, "reason": self.reason}


def _json_number(value: float):
    return value if math.isfinite(value) else None


def judge(label: str, backend: str, files: Mapping, precision: str, examples: ExampleSet, outputs: Mapping | None,
          tolerance: Tolerance, error: str | None = None) -> ReplayResult:
    """Compare ``outputs`` with the examples' expected values under ``tolerance`` (the one rule)."""
    worst = mean = math.nan
    reason = error
    if reason is None:
        diffs = []
        for name, want in examples.expected.items():
            got = outputs.get(name)
            if got is None and len(outputs) == 1 and len(examples.expected) == 1:
                got = next(iter(outputs.values()))      # a single output, named otherwise
            if got is None:
                reason = f"no output {name!r} (outputs: {sorted(outputs)})"
                break
            got = np.asarray(got, dtype=np.float64)
            if got.size != want.size:
                reason = f"output {name!r} of {got.size} values, expected {want.size}"
                break
            diffs.append(np.abs(got.reshape(want.shape) - want).reshape(-1))
        if reason is None:
            diff = np.concatenate(diffs)
            if not np.isfinite(diff).all():
                reason = "non-finite outputs"
            else:
                worst, mean = float(diff.max()), float(diff.mean())
                if tolerance.max_abs_diff is not None and worst > tolerance.max_abs_diff:
                    reason = f"worst |Δ| {worst:.3g} > {tolerance.max_abs_diff:.3g}"
                elif mean > tolerance.mean_abs_diff:
                    reason = f"mean |Δ| {mean:.3g} > {tolerance.mean_abs_diff:.3g}"
    return ReplayResult(label, backend, dict(files), precision, examples.rows, worst, mean, tolerance,
                        reason is None, reason)


def replay_loaded(model, examples: ExampleSet | None = None, tolerance: float | None = None) -> list[ReplayResult]:
    """Replay the examples through what one `LoadedBundle` serves (what check and swap use).

    Args:
        model: a `LoadedBundle`.
        examples: the bundle's `ExampleSet` (read from the bundle when None).
        tolerance: a bound on worst |Δ| chosen by the caller, replacing the declared one.
    """
    if examples is None:
        examples = ExampleSet.load(model.dir, model.manifest, spec=model.spec)
    files = selected_files(model.manifest, model.backend_name)
    chains = part_chains(model.parts, examples.kind, examples.feeds)
    if not chains:
        raise BundleError(expected(f"parts that answer the examples ({FUSED}, or {USER_ENCODER} + {SCORER})",
                                   sorted(model.parts)))
    results = []
    for chain in chains:
        artifacts = [model.manifest.artifact(files[part]) for part in chain]
        steps = [(model.parts[part], model.output_names[part]) for part in chain]
        results.append(_replay(model.backend_name, artifacts, steps, examples, tolerance))
    return results


def _replay(backend: str, artifacts: list, steps: list, examples: ExampleSet, tolerance) -> ReplayResult:
    precision = looser_precision(*(a.precision for a in artifacts))
    bound = replay_tolerance(precision, artifacts[-1].validation)
    if tolerance is not None:
        bound = replace(bound, max_abs_diff=float(tolerance), mean_abs_diff=float(tolerance))
    label = " -> ".join(a.file for a in artifacts)
    files = {a.part: a.file for a in artifacts}
    try:
        outputs, error = run_chain(steps, examples.feeds), None
    except EdgeRecError as err:
        outputs, error = None, f"{type(err).__name__}: {err}"
    return judge(label, backend, files, precision, examples, outputs, bound, error)


def replay_artifacts(bundle_dir, manifest: Manifest, examples: ExampleSet | None = None, backends=None,
                     progress=None, backend_options: Mapping | None = None) -> list[ReplayResult]:
    """Replay the examples through every artifact of the manifest whose backend is installed:
    each fused artifact alone, user_encoder -> scorer composed per (format, precision), and each
    backend's selected pair where its precisions differ.

    Args:
        bundle_dir: the (verified) bundle directory.
        manifest: its manifest.
        examples: the bundle's `ExampleSet` (read when None).
        backends: backend names to replay (default: every installed one with artifacts); a
            named backend that is not installed raises MissingDependencyError.
        progress: a `Progress` (one step per replayed artifact or pair), or None.
        backend_options: options for every backend (num_threads, providers, ...).
    """
    bundle_dir = Path(bundle_dir)
    if examples is None:
        examples = ExampleSet.load(bundle_dir, manifest)
    if backends is None:
        names = [b for b in BACKENDS if is_available(b) and manifest.find(format=FORMAT_FOR_BACKEND[b])]
        skipped = sorted({BACKEND_FOR_FORMAT[a.format] for a in manifest.artifacts} - set(names))
        if skipped:
            logger.info("examples replay skips %s artifacts: backend not installed", ", ".join(skipped))
    else:
        names = [choose_backend(manifest, b) for b in ([backends] if isinstance(backends, str) else backends)]
    results, loaded = [], {}
    try:
        for name in names:
            for chain in artifact_chains(manifest, name, examples.kind, examples.feeds):
                steps, error = [], None
                try:
                    for art in chain:
                        if art.file not in loaded:
                            path = confined_path(bundle_dir, art.file)
                            loaded[art.file] = create_backend(name, path, **dict(backend_options or {}))
                        backend = loaded[art.file]
                        steps.append((backend, check_signature(art.part, art, backend)))
                except EdgeRecError as err:
                    error = f"{type(err).__name__}: {err}"
                if error is None:
                    result = _replay(name, chain, steps, examples, None)
                else:
                    result = judge(" -> ".join(a.file for a in chain), name, {a.part: a.file for a in chain},
                                   looser_precision(*(a.precision for a in chain)), examples, None,
                                   replay_tolerance(chain[-1].precision, chain[-1].validation), error)
                results.append(result)
                if progress is not None:
                    progress.update(1, postfix=result.label)
    finally:
        for backend in loaded.values():
            backend.close()
    return results


def check_bundle(bundle_path, backend: str = "all", tolerance: float | None = None,
                 **backend_options) -> list[ReplayResult]:
    """Load a bundle per backend and replay its examples through what each one serves.

    Args:
        bundle_path: bundle directory or .tar.gz.
        backend: "all" (every installed backend with artifacts), "auto", or a backend name.
        tolerance: a bound on worst |Δ| chosen by the caller (default: the declared rule).
        **backend_options: passed to the backends (num_threads, providers, ...).

    Raises:
        BundleError: no installed backend has artifacts in the bundle, or its examples are unusable.
    """
    with bundle_directory(bundle_path) as directory:
        manifest = load_manifest(directory, verify=True)
        examples = ExampleSet.load(directory, manifest)
        if backend == "all":
            names = [b for b in BACKENDS if is_available(b) and (manifest.selected.get(b)
                                                                 or manifest.find(format=FORMAT_FOR_BACKEND[b]))]
            if not names:
                raise BundleError(expected("an installed backend with artifacts in the bundle",
                                           {"installed": [b for b in BACKENDS if is_available(b)],
                                            "formats": sorted({a.format for a in manifest.artifacts})}))
        else:
            names = [choose_backend(manifest, backend)]
        results = []
        for name in names:
            model = LoadedBundle.open(directory, name, share_sessions=False, **backend_options)
            try:
                results += replay_loaded(model, examples, tolerance)
            finally:
                model.close()
    return results
