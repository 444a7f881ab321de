"""Re-validate a written bundle: sha256 of every file, the examples replay, and the trained model.

`validate_bundle` runs three checks and says which of them could not run:

1. every file's size and sha256 against the manifest (a mismatch fails the bundle);
2. examples.jsonl through every artifact whose backend is in scope, with the one replay rule of
   `edgerec.runtime.examples` (the same rule as ``edgerec check`` and ``Predictor.swap``);
3. unless ``examples_only``: every artifact against the Keras model the USER names (``keras``: a
   MODEL_DIR, or a saved Keras model with ``data``) on its held-out rows, through the converters'
   validator; and for a cascade bundle (an item index) its full-catalogue metrics re-measured
   through its artifacts on the held-out users (``heldout``, default the MODEL_DIR's
   ``heldout_users.npz``): retrieval and cascade per user tower artifact, the difference from the
   manifest's figures and, for compressed towers, the paired Δ against fp32
   (`cascade_metrics.remeasure`; the selected tower differing from the manifest fails). Nothing named inside the bundle is imported or loaded: the manifest's recorded
   ``model.source`` is never used, and ``lineage["keras_sha256"]`` only tells whether the given
   models are the ones the artifacts were converted from. A pruned bundle is checked against the
   pruned models its export kept next to it (``BUNDLE.pruned``; see `export`).

"Skipped" is never "ok": a check that could not run (no ``keras``, no TensorFlow, a backend that is
not installed, models that are not the bundle's own) makes the status ``not_verified`` with the
reason, unless the caller narrowed the scope (``examples_only``, ``backends``).

Examples:
    >>> result = validate_bundle("runs/din-bundle", keras="runs/din")          # doctest: +SKIP
    >>> result.status, result.exit_code                                        # doctest: +SKIP
    ('ok', 0)
"""
from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from edgerec.runtime.contract import BACKEND_FOR_FORMAT, CONTENT_ENCODER
from edgerec.runtime.errors import EdgeRecError, IntegrityError, expected

logger = logging.getLogger(__name__)

OK, FAILED, NOT_VERIFIED = "ok", "failed", "not_verified"


@dataclass
class BundleValidation:
    """What `validate_bundle` found.

    Args:
        bundle: the bundle path as given.
        files: files whose sha256 matched the manifest.
        replays: one `ReplayResult` per artifact (or user_encoder -> scorer pair) replayed.
        keras: the `ValidationReport` against the Keras model (None when it did not run).
        full_catalogue: a cascade bundle's re-measured full-catalogue rows (`cascade_metrics.remeasure`).
        failures: every check that ran and failed.
        not_verified: why a check in scope could not run.
    """

    bundle: str
    files: int = 0
    replays: list = field(default_factory=list)
    keras: object = None
    full_catalogue: dict | None = None
    failures: list = field(default_factory=list)
    not_verified: list = field(default_factory=list)

    @property
    def status(self) -> str:
        return FAILED if self.failures else NOT_VERIFIED if self.not_verified else OK

    @property
    def exit_code(self) -> int:
        """0 when everything in scope was checked and passed, else 1."""
        return 0 if self.status == OK else 1

    def to_dict(self) -> dict:
        out = {"bundle": self.bundle, "status": self.status, "files": self.files,
               "replays": [r.to_dict() for r in self.replays]}
        if self.keras is not None:
            out["keras"] = {"rows": self.keras.rows, "artifacts": len(self.keras.results),
                            "passed": self.keras.passed}
        if self.full_catalogue is not None:
            out["full_catalogue"] = self.full_catalogue
        if self.failures:
            out["failures"] = list(self.failures)
        if self.not_verified:
            out["reasons"] = list(self.not_verified)
        return out


def validate_bundle(bundle: str | os.PathLike, *, keras: str | os.PathLike | None = None,
                    data: str | os.PathLike | None = None, max_groups: int | None = None,
                    examples_only: bool = False, backends: Sequence[str] | None = None,
                    heldout: str | os.PathLike | None = None,
                    progress: Callable[[str], None] | None = None) -> BundleValidation:
    """Check a bundle directory or ``.tar.gz`` (see the module doc).

    Args:
        bundle: the bundle.
        keras: the trained model to compare with: a MODEL_DIR, or a saved Keras model with ``data``.
        data: held-out rows ``.npz`` replacing the MODEL_DIR's (required for a bare Keras model).
        max_groups: compare on the first N ranking groups only.
        examples_only: sha256 and examples replay only (no Keras comparison is required).
        backends: backends to check (default: every backend with artifacts in the bundle; one that
            is not installed leaves its artifacts not verified).
        heldout: held-out users ``.npz`` for a cascade bundle's full-catalogue re-measurement
            (default: ``heldout_users.npz`` of the ``keras`` MODEL_DIR).
        progress: ``callable(str)`` for one line per step (default: this module's logger, INFO).

    Raises:
        BundleError: ``bundle`` is not a readable bundle (no manifest, malformed manifest).
    """
    from edgerec.runtime.manifest import bundle_directory, load_manifest

    say = progress or logger.info
    result = BundleValidation(str(bundle))
    with bundle_directory(bundle) as directory:
        try:
            manifest = load_manifest(directory, verify=True)
        except IntegrityError as err:
            result.failures.append(str(err))
            return result
        result.files = len(manifest.all_files())
        say(f"sha256 ok: {result.files} files")
        in_scope = _backends_in_scope(manifest, backends, result)
        _replay(directory, manifest, in_scope, result, say)
        if examples_only:
            return result
        _full_catalogue(directory, manifest, keras, heldout, in_scope, result, say)
        if keras is None:
            result.not_verified.append("no Keras model given (--keras MODEL_DIR): the artifacts were not compared "
                                       "with the trained model (--examples-only checks sha256 and examples only)")
        elif importlib.util.find_spec("tensorflow") is None:
            result.not_verified.append("TensorFlow is not installed: the artifacts were not compared with the Keras "
                                       "model (pip install 'edgerec[train]', or --examples-only)")
        else:
            _compare_with_keras(directory, manifest, Path(keras), data, max_groups, in_scope, result, say,
                                bundle_path=Path(bundle))
    return result


def _backends_in_scope(manifest, backends, result: BundleValidation) -> list[str]:
    from edgerec.runtime.backends import is_available

    present = sorted({BACKEND_FOR_FORMAT[a.format] for a in manifest.artifacts})
    wanted = present if backends is None else [b for b in present if b in set(backends)]
    missing = [b for b in wanted if not is_available(b)]
    for name in missing:
        files = [a.file for a in manifest.artifacts if BACKEND_FOR_FORMAT[a.format] == name]
        result.not_verified.append(f"the {name} backend is not installed: {len(files)} artifact(s) not checked "
                                   f"({', '.join(files)}); install it or narrow --backends")
    return [b for b in wanted if b not in missing]


def _replay(directory: Path, manifest, backends: list[str], result: BundleValidation, say) -> None:
    from edgerec.runtime.examples import ExampleSet, replay_artifacts

    try:
        examples = ExampleSet.load(directory, manifest)
    except EdgeRecError as err:
        result.failures.append(f"examples.jsonl: {type(err).__name__}: {err}")
        return
    if not backends:
        return
    result.replays = replay_artifacts(directory, manifest, examples, backends=backends)
    for replay in result.replays:
        say("  " + replay.describe())
        if not replay.passed:
            result.failures.append(f"{replay.label} ({replay.backend}): {replay.reason}")
    replayed = {f for r in result.replays for f in r.files.values()}
    for art in manifest.artifacts:
        if BACKEND_FOR_FORMAT[art.format] in backends and art.file not in replayed:
            say(f"  {art.file}: no example chain runs it (checked against Keras only)")


def _full_catalogue(directory: Path, manifest, keras, heldout, backends: list[str], result: BundleValidation,
                    say) -> None:
    from edgerec.runtime.contract import HELDOUT_USERS_FILE
    from edgerec.runtime.recommend import has_index

    if not has_index(manifest):
        return
    path = Path(heldout) if heldout is not None else (
        Path(keras) / HELDOUT_USERS_FILE if keras is not None and Path(keras).is_dir() else None)
    if path is None or not path.is_file():
        result.not_verified.append(f"the cascade bundle's full-catalogue metrics were not re-measured: no held-out "
                                   f"users (--keras MODEL_DIR with {HELDOUT_USERS_FILE})"
                                   + (f"; {path} does not exist" if path is not None else ""))
        return
    from .cascade_metrics import remeasure

    say(f"re-measuring the full-catalogue metrics on the held-out users of {path}")
    try:
        result.full_catalogue = remeasure(directory, path, backends, say)
    except (EdgeRecError, ValueError, OSError) as err:
        result.failures.append(f"full-catalogue re-measurement: {type(err).__name__}: {err}"[:600])
        return
    result.failures += result.full_catalogue.pop("failures")


def _compare_with_keras(directory: Path, manifest, keras: Path, data, max_groups, backends, result, say, *,
                        bundle_path: Path) -> None:
    from .jobs import load_job, pruned_model_dir
    from .keras_io import load_keras_model
    from .pipeline import sha256_path
    from .validate import DeployableArtifact, ValidationError, validate_artifacts

    pruned = bool(manifest.lineage.get("prune"))
    recorded = manifest.lineage.get("keras_sha256")
    hint = (f" (a pruned bundle: pass the pruned models its export kept, --keras {pruned_model_dir(bundle_path)})"
            if pruned else "")
    if pruned and not isinstance(recorded, dict):
        result.not_verified.append("the bundle was pruned by an export that kept no record of its pruned Keras "
                                   "models: re-export it to get BUNDLE.pruned, or use --examples-only")
        return
    job = load_job(keras, data, max_groups=max_groups)
    if isinstance(recorded, dict):
        differ = sorted(p for p, sha in recorded.items()
                        if p in job.keras_paths and sha256_path(job.keras_paths[p]) != sha)
        absent = sorted(set(recorded) - set(job.keras_paths))
        if differ or absent:
            result.not_verified.append(str(expected(
                f"--keras models with the sha256 recorded in the bundle's lineage{hint}",
                f"different {differ}" + (f", missing {absent}" if absent else ""))))
            return
    in_scope = [a for a in manifest.artifacts if BACKEND_FOR_FORMAT[a.format] in backends]
    # a cascade bundle's user tower comes from the retrieval model, not the ranker dir --keras names:
    # the full-catalogue re-measurement checks it against the figures the export measured through it
    others = sorted(a.file for a in in_scope if a.part not in job.keras_paths)
    if others:
        say(f"  {', '.join(others)}: not a part of {keras} (checked by the full-catalogue re-measurement)")
    # the content encoder has no ranking rows to compare on: it is checked by cosine on item texts
    artifacts = [DeployableArtifact(str(directory / a.file), a.format, a.precision, a.part)
                 for a in in_scope if a.part in job.keras_paths and a.part != CONTENT_ENCODER]
    if any(a.part == CONTENT_ENCODER for a in in_scope):
        _recheck_content(directory, manifest, keras, backends, result, say)
    refs = {part: load_keras_model(path, job.custom_objects_module)
            for part, path in job.keras_paths.items() if part != CONTENT_ENCODER}
    say(f"re-validating {len(artifacts)} artifact(s) against Keras on {job.validation.rows} rows")
    try:
        report = validate_artifacts(refs, artifacts, job.validation, job.specs, raise_on_failure=False)
    except ValidationError as err:
        result.not_verified.append(f"the Keras comparison could not run: {err}")
        return
    result.keras = report
    for res in report.results:
        say(f"  {res.file:<30} max |Δ| {res.metrics.get('max_abs_diff', float('nan')):.2e}  "
            f"ΔAUC {res.metrics.get('delta_auc', float('nan')):+.4f}  {'ok' if res.passed else 'FAIL'}")
    result.failures += report.failures


def _recheck_content(directory: Path, manifest, keras: Path, backends, result: BundleValidation, say) -> None:
    from .content_export import recheck_content

    try:
        checks = recheck_content(keras, directory, manifest, backends, say=say)
    except EdgeRecError as err:
        result.not_verified.append(f"the content encoder could not be re-validated: {err}")
        return
    for check in checks:
        v = check["validation"]
        say(f"  {check['file']:<30} cosine min {v.get('cosine_min', float('nan')):.5f}  "
            f"{'FAIL' if check['failure'] else 'ok'}")
        if check["failure"]:
            result.failures.append(f"{check['file']}: {check['failure']}")
