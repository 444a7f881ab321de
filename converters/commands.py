"""`edgerec export` and `edgerec validate` (heavy imports happen inside `run`).

    edgerec export MODEL_DIR --prune 0.5 --quantize int8 --targets tflite,onnx --out BUNDLE \\
                   [--data FILE.npz] [--budget 0.003] [--archive]
    edgerec validate BUNDLE [--model-dir MODEL_DIR] [--max-groups N]

`validate` always checks every file's sha256 and replays examples.jsonl through every artifact
whose backend is installed (no TensorFlow needed); when TensorFlow and the source model directory
are available it also re-runs the full validator against the Keras model on validation.npz.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "export":
        parser.add_argument("model_dir", help="MODEL_DIR written by `edgerec train`, or a saved Keras model "
                                              "(.keras/.h5/SavedModel) with --data")
        parser.add_argument("--out", required=True, help="bundle directory to write")
        parser.add_argument("--prune", type=float, default=None, help="target sparsity in (0, 1) (tf_keras only)")
        parser.add_argument("--quantize", type=_csv, default=["int8"],
                            help="comma list of none,fp16,dynamic,int8 (int8 implies dynamic too)")
        parser.add_argument("--targets", type=_csv, default=["tflite", "onnx"],
                            help="comma list of tflite,onnx and, after the bundle, triton (a Triton model "
                                 "repository in OUT/triton, implies onnx) and tensorrt (engines in "
                                 "OUT/tensorrt when the tensorrt package is importable)")
        parser.add_argument("--data", default=None, help=".npz of held-out rows (inputs + labels [+ groups])")
        parser.add_argument("--budget", type=float, default=0.003, help="largest |ΔAUC| of a selectable variant")
        parser.add_argument("--archive", action="store_true", help="also write BUNDLE.tar.gz")
        parser.add_argument("--max-groups", type=int, default=None, help="validate on the first N ranking groups")
        parser.add_argument("--cache-dir", default=None, help="pass cache (default $EDGEREC_CACHE or ~/.cache/edgerec)")
        parser.add_argument("--quiet", action="store_true", help="no progress output")
    else:
        parser.add_argument("bundle", help="bundle directory (or .tar.gz archive)")
        parser.add_argument("--model-dir", default=None,
                            help="source MODEL_DIR for the full Keras re-validation (default: the manifest's source)")
        parser.add_argument("--max-groups", type=int, default=None, help="Keras re-validation on N groups only")
        parser.add_argument("--examples-only", action="store_true", help="skip the Keras re-validation")


def run(name: str, args: argparse.Namespace) -> int:
    return _export(args) if name == "export" else _validate(args)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


SERVING_TARGETS = ("triton", "tensorrt")   # built from the written bundle's ONNX artifacts


def _export(args) -> int:
    from .export import check_options, export_model

    serving = [t for t in args.targets if t in SERVING_TARGETS]
    formats = [t for t in args.targets if t not in SERVING_TARGETS]
    if serving and "onnx" not in formats:
        formats.append("onnx")
    check_options(args.prune, args.quantize, formats, args.budget)  # fail fast, before TF loads
    if not Path(args.model_dir).exists():
        from .errors import ConverterConfigError, expected

        raise ConverterConfigError(expected("an existing MODEL_DIR (or saved Keras model)", args.model_dir))
    manifest = export_model(args.model_dir, args.out, prune=args.prune, quantize=args.quantize,
                            targets=formats, data=args.data, budget=args.budget, archive=args.archive,
                            cache_dir=args.cache_dir, max_groups=args.max_groups,
                            progress=None if args.quiet else _say)
    print(candidates_table(manifest.candidates))
    summary = {"bundle": str(args.out), "selected": manifest.selected, "rejected": len(manifest.rejected)}
    summary.update(_serving_targets(serving, Path(args.out)))
    print(json.dumps(summary))
    return 0


def _serving_targets(targets: list[str], bundle: Path) -> dict:
    """Triton repository and TensorRT engines next to the bundle (``BUNDLE/triton``, ``BUNDLE/tensorrt``)."""
    out = {}
    if "triton" in targets:
        from .triton import write_triton_repository
        from .triton_check import check_triton_repository

        repo = write_triton_repository(bundle, bundle / "triton", overwrite=True)
        problems = check_triton_repository(repo.path, bundle)
        if problems:
            from .errors import ConverterConfigError

            raise ConverterConfigError("Triton repository failed its check: " + "; ".join(map(str, problems)))
        out["triton"] = {"path": str(repo.path), "models": sorted(repo.models)}
        _say(f"wrote Triton repository {repo.path} ({', '.join(sorted(repo.models))})")
    if "tensorrt" in targets:
        from .tensorrt_engine import build_bundle_engines

        results = build_bundle_engines(bundle, bundle / "tensorrt")
        out["tensorrt"] = {part: {"status": r.status, "reason": r.reason,
                                  "engine": str(r.engine_path) if r.engine_path else None}
                           for part, r in results.items()}
        for part, r in results.items():
            _say(f"tensorrt {part}: {r.status}{' — ' + r.reason if r.reason else ''}")
    return out


def candidates_table(rows: list[dict]) -> str:
    """The selection table as fixed-width text (size, ratio, ΔAUC, latency per batch, status)."""
    lat_keys = sorted({k for r in rows for k in r if k.startswith("latency_ms_b")},
                      key=lambda k: int(k[len("latency_ms_b"):]))
    head = f"{'file':<30} {'backend':<11} {'KB':>8} {'x fp32':>7} {'ΔAUC':>8} " + \
        " ".join(f"{'ms@' + k[len('latency_ms_b'):]:>9}" for k in lat_keys) + "  status"
    lines = [head, "-" * len(head)]
    for r in rows:
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        lines.append(f"{r['file']:<30} {r['backend']:<11} {fmt((r.get('size_bytes') or 0) / 1024, '8.1f')} "
                     f"{fmt(r.get('size_ratio'), '7.2f')} {fmt(r.get('delta_auc'), '+8.4f')} " +
                     " ".join(f"{fmt(r.get(k), '9.4f')}" for k in lat_keys) +
                     f"  {r['status']}{': ' + r['reason'] if r.get('reason') else ''}")
    return "\n".join(lines)


# -- validate --------------------------------------------------------------------------------
def _validate(args) -> int:
    import shutil
    import tempfile

    from edgerec.runtime.manifest import load_manifest, safe_extract

    from .validate import ValidationError

    bundle = Path(args.bundle)
    tmp = None
    if bundle.is_file():
        tmp = Path(tempfile.mkdtemp(prefix="edgerec-validate-"))
        bundle = safe_extract(bundle, tmp)
    try:
        manifest = load_manifest(bundle, verify=True)
        _say(f"sha256 ok: {len(manifest.all_files())} files")
        failures = replay_examples(bundle, manifest, _say)
        if not args.examples_only:
            failures += _keras_revalidation(manifest, args, bundle)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        raise ValidationError(f"Expected every bundle artifact to reproduce its expected outputs, received: "
                              f"{len(failures)} failure(s):\n  - " + "\n  - ".join(failures))
    print(json.dumps({"bundle": str(args.bundle), "status": "ok"}))
    return 0


def _example_feeds(bundle: Path, manifest) -> tuple[dict, np.ndarray, dict]:
    """Encoded example inputs, the expected score per line, and raw expected dicts (BYOM)."""
    lines = [json.loads(x) for x in (bundle / "examples.jsonl").read_text("utf-8").splitlines() if x.strip()]
    if manifest.feature_spec is not None:
        from edgerec.runtime.preprocess import Preprocessor
        from edgerec.runtime.spec import FeatureSpec

        spec = FeatureSpec.load(bundle / manifest.feature_spec)
        requests = [{k: v for k, v in line.items() if k != "expected"} for line in lines]
        feeds = Preprocessor(spec).encode_requests(requests)
        return feeds, np.asarray([line["expected"] for line in lines], dtype=np.float64), {}
    feeds = {k: np.asarray([line["inputs"][k] for line in lines]) for k in lines[0]["inputs"]}
    expected_out = {k: np.asarray([line["expected"][k] for line in lines], dtype=np.float64)
                    for k in lines[0]["expected"]}
    return feeds, None, expected_out


def replay_examples(bundle: Path, manifest, say=_say) -> list[str]:
    """Run examples.jsonl through every artifact (composing split parts) whose backend is installed."""
    from edgerec.runtime.backends import is_available

    from .specs import TOLERANCES
    from .validate import BACKEND_FOR_FORMAT, Candidate, backend_outputs

    feeds, expected_score, expected_out = _example_feeds(bundle, manifest)
    failures = []

    def check(label, art, produced, target):
        tol = TOLERANCES[art.precision]
        worst = mean = 0.0
        for name, want in target.items():
            got = produced.get(name)
            if got is None and len(produced) == 1 and len(target) == 1:
                got = next(iter(produced.values()))
            if got is None:
                failures.append(f"{label}: output {name!r} missing (has {sorted(produced)})")
                return
            diff = np.abs(np.asarray(got, dtype=np.float64).reshape(want.shape) - want)
            worst, mean = max(worst, float(diff.max())), max(mean, float(diff.mean()))
        bad = (tol.max_abs_diff is not None and worst > tol.max_abs_diff) or mean > tol.mean_abs_diff
        say(f"  {label:<48} worst |Δ| {worst:.2e}  mean |Δ| {mean:.2e}  {'FAIL' if bad else 'ok'}")
        if bad:
            failures.append(f"{label}: worst |Δ| {worst:.3g}, mean |Δ| {mean:.3g} beyond the {art.precision} "
                            f"tolerance (max {tol.max_abs_diff}, mean {tol.mean_abs_diff})")

    target = ({"score": expected_score.reshape(-1, 1)} if expected_score is not None else expected_out)
    by_part = {}
    for art in manifest.artifacts:
        backend = BACKEND_FOR_FORMAT.get(art.format)
        if backend is None or not is_available(backend):
            say(f"  {art.file}: skipped ({backend or art.format} not installed)")
            continue
        cand = Candidate(str(bundle / art.file), art.format, art.precision, art.part)
        by_part.setdefault(art.part, []).append((art, cand))
        if art.part == "fused":
            produced, _ = backend_outputs(cand, feeds)
            check(f"{art.file} ({backend})", art, produced, target)
    for ue_art, ue in by_part.get("user_encoder", []):
        for sc_art, sc in by_part.get("scorer", []):
            if (ue_art.format, ue_art.precision) != (sc_art.format, sc_art.precision):
                continue
            state, _ = backend_outputs(ue, feeds)
            produced, _ = backend_outputs(sc, {**feeds, **state})
            check(f"{ue_art.file} -> {sc_art.file}", sc_art, produced, target)
    return failures


def _keras_revalidation(manifest, args, bundle: Path) -> list[str]:
    """Re-run the validator against Keras when TensorFlow and the source model dir exist."""
    import importlib.util

    source = Path(args.model_dir or manifest.model.get("source") or "")
    if importlib.util.find_spec("tensorflow") is None:
        _say("Keras re-validation skipped: TensorFlow not installed (sha256 + examples replay done)")
        return []
    if not (source / "edgerec_model.json").is_file():
        _say(f"Keras re-validation skipped: no source model directory at {source!s} (use --model-dir)")
        return []
    from .export import edgerec_job
    from .keras_io import load_keras_model
    from .validate import Candidate, validate_artifacts

    job = edgerec_job(source, max_groups=args.max_groups)
    refs = {p: load_keras_model(path, job.custom_objects_module) for p, path in job.keras_paths.items()}
    if manifest.lineage.get("prune"):
        _say("Keras re-validation skipped: the bundle was pruned and the pruned Keras model is not kept")
        return []
    cands = [Candidate(str(bundle / a.file), a.format, a.precision, a.part) for a in manifest.artifacts]
    _say(f"re-validating {len(cands)} artifact(s) against Keras on {job.validation.rows} rows")
    report = validate_artifacts(refs, cands, job.validation, job.specs, raise_on_failure=False)
    for res in report.results:
        _say(f"  {res.file:<30} max |Δ| {res.metrics.get('max_abs_diff', float('nan')):.2e}  "
             f"ΔAUC {res.metrics.get('delta_auc', float('nan')):+.4f}  {'ok' if res.passed else 'FAIL'}")
    return report.failures
