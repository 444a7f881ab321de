"""`export_model`: prune → convert every part to every format/precision → validate → select → bundle.

Variants produced per part (fp32 always, the baseline):

* TFLite: ``fp32``; ``fp16`` (quantize "fp16"); ``dynamic`` (int8 weights, quantize "dynamic" or
  "int8"); full-integer ``int8`` with the calibration rows (quantize "int8").
* ONNX: ``fp32`` (tf2onnx, then onnxruntime "basic" graph optimisation); ``dynamic`` (ORT dynamic
  int8, quantize "dynamic"/"int8"); static ``QDQ`` int8 and the TensorRT-ready symmetric QDQ
  int8 (quantize "int8"). ONNX has no fp16 variant here: ORT's CPU provider has no fp16 kernels.

A mode that cannot be produced for a model is recorded with the converter's specific reason
(op/layer that blocked it) in ``manifest.rejected`` (``stage: "conversion"``) — never dropped
silently. Every pass runs through C1's `PassRunner`, so a re-export with one changed option only
redoes what changed.

Examples:
    >>> manifest = export_model("runs/din", "bundles/din", prune=0.5, quantize=("int8",))  # doctest: +SKIP
    >>> manifest.selected                                                                   # doctest: +SKIP
    {'litert': {'fused': 'fused_dynamic.tflite', ...}, 'onnxruntime': {...}}
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from edgerec.runtime.errors import EdgeRecError, expected
from edgerec.runtime.manifest import Manifest

from .errors import ConverterConfigError, ConverterError
from .select import LatencyConfig, measure_latencies, select_variants
from .specs import DEFAULT_BUDGET
from .validate import Candidate, ValidationData, ValidationError, keras_outputs, validate_artifacts

TARGETS = ("tflite", "onnx")
QUANTIZE = ("none", "fp16", "dynamic", "int8")
MODEL_JSON = "edgerec_model.json"
EXPORT_PARTS = ("fused", "user_encoder", "scorer")
# (format, mode) -> (bundle file suffix, precision)
VARIANTS = {("tflite", "fp32"): ("fp32", "fp32"), ("tflite", "fp16"): ("fp16", "fp16"),
            ("tflite", "dynamic"): ("dynamic", "dynamic"), ("tflite", "int8"): ("int8", "int8"),
            ("onnx", "fp32"): ("fp32", "fp32"), ("onnx", "dynamic"): ("dynamic", "dynamic"),
            ("onnx", "static_qdq"): ("qdq_int8", "int8"), ("onnx", "tensorrt"): ("trt_int8", "int8")}


def modes_for(target: str, quantize: Sequence[str]) -> list[str]:
    """Conversion modes of one target for the requested quantization kinds (fp32 first)."""
    q = set(quantize)
    if target == "tflite":
        wanted = ["fp32", "fp16" if "fp16" in q else None, "dynamic" if q & {"dynamic", "int8"} else None,
                  "int8" if "int8" in q else None]
    else:
        wanted = ["fp32", "dynamic" if q & {"dynamic", "int8"} else None,
                  "static_qdq" if "int8" in q else None, "tensorrt" if "int8" in q else None]
    return [m for m in wanted if m]


@dataclass
class ExportJob:
    """Everything the export core needs, for edgerec model dirs and bring-your-own models alike."""

    keras_paths: dict                      # {part: path of the saved Keras model}
    calibration: str | None                # .npz of fused rows (+ labels for pruning)
    validation: ValidationData
    examples: list                         # examples.jsonl lines (filled after pruning if empty)
    feature_spec_path: str | None = None
    feature_spec: object = None            # FeatureSpec for raw examples, None for BYOM
    raw_examples: list = field(default_factory=list)
    custom_objects_module: str | None = None
    model_info: dict = field(default_factory=dict)
    specs: dict = field(default_factory=dict)   # {part: PartSpec}


def check_options(prune, quantize, targets, budget) -> tuple[float | None, tuple, tuple]:
    """Validate the user-facing options; every problem in one typed error."""
    problems = []
    if prune is not None and (isinstance(prune, bool) or not isinstance(prune, (int, float))
                              or not 0.0 < float(prune) < 1.0):
        problems.append(expected("a pruning sparsity strictly between 0 and 1", prune))
    quantize = tuple([quantize] if isinstance(quantize, str) else (quantize or ()))
    bad_q = [q for q in quantize if q not in QUANTIZE]
    if bad_q:
        problems.append(expected(f"quantize modes among {QUANTIZE}", bad_q))
    targets = tuple([targets] if isinstance(targets, str) else (targets or ()))
    bad_t = [t for t in targets if t not in TARGETS]
    if bad_t or not targets:
        problems.append(expected(f"targets among {TARGETS}", bad_t or list(targets)))
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 <= budget < 1.0:
        problems.append(expected("an accuracy budget (|ΔAUC|) in [0, 1)", budget))
    if problems:
        raise ConverterConfigError("; ".join(problems))
    return (float(prune) if prune is not None else None), quantize, targets


def export_model(model_dir: str | os.PathLike, out: str | os.PathLike | None = None, *, prune: float | None = None,
                 sparsity: float | None = None, quantize: Sequence[str] = ("int8",),
                 targets: Sequence[str] = TARGETS, data: str | os.PathLike | None = None,
                 budget: float = DEFAULT_BUDGET, archive: bool | str | os.PathLike = False,
                 cache_dir: str | os.PathLike | None = None, max_groups: int | None = None,
                 latency: LatencyConfig | None = None, prune_epochs: int = 2, seed: int = 0,
                 progress: Callable[[str], None] | None = None) -> Manifest:
    """Export an edgerec model directory (or, with ``data``, any saved Keras model) into a bundle.

    Args:
        model_dir: MODEL_DIR per docs/contracts.md, or a ``.keras``/``.h5``/SavedModel (see `byom`).
        out: the bundle directory (default ``<model_dir>/bundle``).
        prune: target sparsity in (0, 1) for tfmot magnitude pruning of the fused model (``sparsity``
            is an alias).
        quantize: any of ``fp16``, ``dynamic``, ``int8`` (``int8`` implies dynamic too), or ``none``.
        targets: ``tflite`` and/or ``onnx``.
        data: ``.npz`` of held-out rows (fused inputs + ``labels`` [+ ``groups``]) replacing
            MODEL_DIR/validation.npz; required for bring-your-own models.
        budget: largest |ΔAUC| vs the Keras model for a compressed variant to be selectable.
        archive: also write a single-file ``<out>.tar.gz`` (or this path).
        cache_dir: pass cache (default ``$EDGEREC_CACHE`` or ``~/.cache/edgerec``).
        max_groups: validate on the first N ranking groups only (speed; default all rows).
        latency: how selection measures latency (default batch 1 and 256, 7 interleaved rounds).
        prune_epochs: fine-tuning epochs of the pruning pass.
        seed: pruning fine-tune seed.
        progress: ``callable(str)`` receiving one line per step.
    """
    if prune is None:
        prune = sparsity
    prune, quantize, targets = check_options(prune, quantize, targets, budget)
    source = Path(model_dir)
    if not source.exists():
        raise ConverterConfigError(expected("an existing model directory (or saved Keras model)", str(source)))
    if not (source / MODEL_JSON).is_file():
        from .byom import byom_job, check_prunable

        if prune is not None:
            check_prunable(source)
        job = byom_job(source, data, max_groups=max_groups)
    else:
        job = edgerec_job(source, data, max_groups=max_groups)
    out = Path(out) if out is not None else (source if source.is_dir() else source.parent) / "bundle"
    return run_export(job, out, prune=prune, quantize=quantize, targets=targets, budget=budget, archive=archive,
                      cache_dir=cache_dir, latency=latency, prune_epochs=prune_epochs, seed=seed, progress=progress)


def edgerec_job(model_dir: Path, data=None, max_groups: int | None = None) -> ExportJob:
    """Read MODEL_DIR/edgerec_model.json and the files it names."""
    from edgerec.runtime.spec import FeatureSpec

    from .bundle import read_raw_examples
    from .specs import spec_for_part

    try:
        meta = json.loads((model_dir / MODEL_JSON).read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConverterConfigError(expected(f"a readable {MODEL_JSON}", str(err))) from None
    missing = [k for k in ("parts", "feature_spec", "data") if k not in meta]
    if missing or "fused" not in meta.get("parts", {}):
        raise ConverterConfigError(expected(f"{MODEL_JSON} with parts.fused, feature_spec and data",
                                            f"missing {missing or ['parts.fused']}"))
    paths = {part: model_dir / name for part, name in meta["parts"].items() if part in EXPORT_PARTS}
    absent = [str(p) for p in paths.values() if not p.exists()]
    if absent:
        raise ConverterConfigError(expected("every Keras part named in edgerec_model.json", f"missing {absent}"))
    validation = Path(data) if data is not None else model_dir / meta["data"]["validation"]
    spec_path = model_dir / meta["feature_spec"]
    spec = FeatureSpec.load(spec_path)
    family = meta.get("family", "din")
    info = {"family": family, "source": str(model_dir), "keras": meta.get("keras", "tf_keras"),
            "config": meta.get("config", {}), "data_source": meta.get("data_source"),
            "parts": sorted(paths)}
    metrics_path = model_dir / "metrics.json"
    if metrics_path.is_file():
        info["metrics"] = json.loads(metrics_path.read_text("utf-8"))
    if "content_encoder" in meta["parts"]:
        info["not_exported"] = {"content_encoder": "export_model exports fused/user_encoder/scorer only"}
    specs = {"fused": spec_for_part(family if family in ("din", "gru", "bst", "context", "two_tower") else "din",
                                    "fused", spec)}
    return ExportJob(
        keras_paths={k: str(v) for k, v in paths.items()},
        calibration=str(model_dir / meta["data"]["calibration"]),
        validation=ValidationData.load(validation, max_groups=max_groups), examples=[],
        feature_spec_path=str(spec_path), feature_spec=spec,
        raw_examples=read_raw_examples(model_dir / meta.get("examples", "examples.jsonl")),
        custom_objects_module=meta.get("custom_objects_module"), model_info=info, specs=specs)


def run_export(job: ExportJob, out: Path, *, prune, quantize, targets, budget, archive=False, cache_dir=None,
               latency=None, prune_epochs=2, seed=0, progress=None) -> Manifest:
    """The shared core: prune, convert, validate, select, bundle."""
    from .bundle import examples_with_expected, write_bundle
    from .keras_io import load_keras_model
    from .pipeline import PassRunner

    say = progress or (lambda _msg: None)
    runner = PassRunner(cache_dir)
    work = Path(tempfile.mkdtemp(prefix="edgerec-export-"))
    lineage: dict = {"passes": [], "options": {"prune": prune, "quantize": list(quantize), "targets": list(targets),
                                               "budget": budget}, "impossible": []}
    try:
        refs = {part: load_keras_model(path, job.custom_objects_module) for part, path in job.keras_paths.items()}
        paths = dict(job.keras_paths)
        if prune is not None:
            paths.update(_prune(job, runner, prune, prune_epochs, seed, lineage, refs, say))
        calibration = _part_calibration(job, refs, work)
        produced = []
        for part, path in paths.items():
            for target in targets:
                produced += _convert(part, path, target, quantize, calibration.get(part), job, runner, lineage, say)
        staged = _stage(produced, work / "stage")
        say(f"validating {len(staged)} artifact(s) on {job.validation.rows} held-out rows")
        report = validate_artifacts(refs, staged, job.validation, job.specs, raise_on_failure=False,
                                    progress=lambda m: say("  " + m))
        broken = [r for r in report.results if r.precision == "fp32" and not r.passed]
        if broken:
            raise ValidationError(expected("every fp32 artifact to match Keras (a broken export otherwise)",
                                           "; ".join(f"{r.file}: {', '.join(r.failures)}" for r in broken)))
        passing = [c for c in staged if report.result(c.file).passed]
        say(f"measuring latency of {len(passing)} validated artifact(s)")
        latencies = measure_latencies(passing, _latency_arrays(job, refs), latency or LatencyConfig(),
                                      progress=lambda m: say("  " + m))
        selection = select_variants(report, latencies, budget=budget)
        for item in lineage["impossible"]:
            selection.rejected.append({"file": item["file"], "backend": item["backend"], "stage": "conversion",
                                       "reason": item["reason"]})
        examples = job.examples or examples_with_expected(job.raw_examples, refs["fused"], job.feature_spec)
        lineage["passes"] = sorted({step["pass"] for c in staged for step in c.lineage})
        archive_path = None
        if archive:
            archive_path = Path(archive) if not isinstance(archive, bool) else out.with_name(out.name + ".tar.gz")
        say(f"writing bundle {out}")
        manifest = write_bundle(out, candidates=staged, report=report, selection=selection, examples=examples,
                                feature_spec_path=job.feature_spec_path, model_info=job.model_info,
                                lineage=lineage, archive=archive_path)
        for backend, parts in manifest.selected.items():
            say(f"selected for {backend}: " + ", ".join(f"{p}={f}" for p, f in sorted(parts.items())))
        return manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _prune(job, runner, sparsity, epochs, seed, lineage, refs, say):
    from .keras_io import load_keras_model
    from .passes.prune import PrunedPartConfig, PrunedPartPass, PruneConfig, PrunePass

    if not job.calibration:
        raise ConverterConfigError(expected("calibration rows with labels to fine-tune pruning", None))
    say(f"pruning fused model to {sparsity:.0%} sparsity (tfmot, {epochs} fine-tune epochs)")
    pruned = runner.run(PrunePass(), job.keras_paths["fused"],
                        PruneConfig(sparsity=sparsity, data=job.calibration, epochs=epochs, seed=seed,
                                    custom_objects_module=job.custom_objects_module), part="fused")
    model = load_keras_model(pruned.path, job.custom_objects_module)
    before = keras_outputs(refs["fused"], job.validation.inputs)
    after = keras_outputs(model, job.validation.inputs)
    info = {"target_sparsity": sparsity, "achieved_sparsity": pruned.details.get("achieved_sparsity"),
            "skipped_layers": pruned.details.get("skipped_layers", []), "layers": pruned.details.get("layers", {})}
    if job.validation.labels is not None:
        from edgerec.runtime.metrics import auc

        score = lambda o: np.asarray(next(iter(o.values()))).reshape(job.validation.rows, -1)[:, 0]  # noqa: E731
        info["auc_before"], info["auc_after"] = auc(job.validation.labels, score(before)), \
            auc(job.validation.labels, score(after))
        info["delta_auc"] = info["auc_after"] - info["auc_before"]
    lineage["prune"] = info
    paths = {"fused": pruned.path}
    refs["fused"] = model
    say(f"  achieved sparsity {info['achieved_sparsity']:.3f}" +
        (f", ΔAUC {info['delta_auc']:+.4f} vs unpruned" if "delta_auc" in info else ""))
    info["parts"] = {}
    for part, path in job.keras_paths.items():
        if part == "fused":
            continue
        try:   # the parts share the fused model's layers: they take its pruned weights by layer name
            art = runner.run(PrunedPartPass(), path, PrunedPartConfig(
                pruned_model=pruned.path, custom_objects_module=job.custom_objects_module,
                unpruned_layers=tuple(s["layer"] for s in info["skipped_layers"])), part=part)
        except ConverterConfigError as err:
            lineage["impossible"].append({"file": f"{part} (pruned)", "backend": "all",
                                          "reason": f"{part} exported unpruned: {err}"[:600]})
            say(f"  {part}: exported unpruned ({err})")
            continue
        paths[part], refs[part] = art.path, load_keras_model(art.path, job.custom_objects_module)
        info["parts"][part] = art.details["achieved_sparsity"]
        say(f"  {part}: pruned weights of the fused model, sparsity {art.details['achieved_sparsity']:.3f}")
    return paths


def _part_calibration(job: ExportJob, refs: Mapping, work: Path) -> dict:
    """Calibration .npz per part: fused/user_encoder use the fused rows; the scorer also needs
    the user-encoder outputs, computed here with the Keras user encoder."""
    if not job.calibration:
        return {}
    out = {"fused": job.calibration, "user_encoder": job.calibration}
    if "scorer" in refs and "user_encoder" in refs:
        with np.load(job.calibration, allow_pickle=False) as npz:
            rows = {k: np.asarray(npz[k]) for k in npz.files}
        rows.update(keras_outputs(refs["user_encoder"], rows))
        path = work / "calibration_scorer.npz"
        np.savez(path, **rows)
        out["scorer"] = str(path)
    return out


def _convert(part, path, target, quantize, calibration, job, runner, lineage, say) -> list:
    from .passes.onnx import OnnxExportConfig, OnnxExportPass, OrtOptimizeConfig, OrtOptimizePass
    from .passes.onnx_quant import OrtQuantizeConfig, OrtQuantizePass
    from .passes.tflite import TFLiteConfig, TFLitePass

    results = []
    module = job.custom_objects_module
    backend = "litert" if target == "tflite" else "onnxruntime"
    fp32_onnx = None
    for mode in modes_for(target, quantize):
        suffix, _ = VARIANTS[(target, mode)]
        name = f"{part}_{suffix}.{target}"
        needs_data = mode in ("int8", "static_qdq", "tensorrt")
        if needs_data and not calibration:
            lineage["impossible"].append({"file": name, "backend": backend, "part": part, "mode": mode,
                                          "reason": "no calibration rows for this part"})
            continue
        say(f"converting {part} → {target} {mode}")
        try:
            if target == "tflite":
                art = runner.run(TFLitePass(), path, TFLiteConfig(mode=mode, data=calibration if needs_data else None,
                                                                 custom_objects_module=module), part=part)
            elif mode == "fp32":
                fp32_onnx = runner.run(OnnxExportPass(), path, OnnxExportConfig(custom_objects_module=module),
                                       part=part)
                try:
                    art = runner.run(OrtOptimizePass(), fp32_onnx, OrtOptimizeConfig(level="basic"))
                except (ConverterError, RuntimeError, ValueError) as err:
                    say(f"  ORT graph optimisation failed ({err}); shipping the unoptimised graph")
                    art = fp32_onnx
            else:
                if fp32_onnx is None:
                    raise ConverterError("no fp32 ONNX graph to quantize (its export failed)")
                art = runner.run(OrtQuantizePass(), fp32_onnx,
                                 OrtQuantizeConfig(mode=mode, data=calibration if needs_data else None))
        except (EdgeRecError, RuntimeError, ValueError) as err:
            blocked = getattr(err, "blocked_by", [])
            reason = f"{type(err).__name__}: {err}"
            lineage["impossible"].append({"file": name, "backend": backend, "part": part, "mode": mode,
                                          "reason": reason[:600], "blocked_by": blocked})
            say(f"  impossible: {reason[:200]}")
            continue
        results.append((name, art))
    return results


def _stage(produced, folder: Path) -> list[Candidate]:
    folder.mkdir(parents=True, exist_ok=True)
    staged = []
    for name, art in produced:
        dst = folder / name
        shutil.copyfile(art.path, dst)
        precision = art.precision
        staged.append(Candidate(str(dst), art.format, precision, art.part, list(art.lineage), dict(art.details)))
    return staged


def _latency_arrays(job: ExportJob, refs: Mapping) -> dict:
    rows = {k: v[:256] for k, v in job.validation.inputs.items()}
    arrays = {"fused": rows, "user_encoder": rows}
    if "user_encoder" in refs:
        arrays["scorer"] = {**rows, **keras_outputs(refs["user_encoder"], rows)}
    return arrays
