"""Export a model into a bundle: prune → convert every part to every variant → validate → select →
bundle → serving targets.

`export_bundle` is the whole of ``edgerec export``; `export_model` is the same returning only the
manifest. The variants come from the table in `flows` (TFLite fp32/fp16/dynamic/int8, ONNX
fp32/dynamic/static-QDQ/TensorRT-ready QDQ, TensorRT engines); each is a cached `Pipeline`, so a
re-export with one changed option only redoes what changed. A variant that cannot be produced is
recorded with the converter's specific reason in ``manifest.rejected`` and
``manifest.lineage["impossible"]`` — never dropped silently.

Targets: ``tflite`` and ``onnx`` produce artifacts; ``tensorrt`` builds engines from the
TensorRT-ready int8 ONNX (needs ``quantize`` int8 and, to build, the ``tensorrt`` package) that land
in the bundle as ``trt_engine`` artifacts selected for the ``tensorrt`` backend; ``triton`` writes a
checked Triton model repository into ``BUNDLE/triton`` from the finished bundle. Both imply
``onnx``. An artifact whose backend cannot run on the exporting machine (an engine built on a
machine without the GPU runtime) is kept only when its source ONNX passed validation and
selection, and is marked ``verified: false`` with the reason; `edgerec validate` / `edgerec check`
on a machine with that backend verify it.

After pruning, the pruned Keras models the artifacts were converted from are written next to the
bundle, ``BUNDLE.pruned/`` (a MODEL_DIR for edgerec models; ``fused.keras`` for bring-your-own
ones): ``edgerec validate BUNDLE --keras BUNDLE.pruned`` checks the bundle against them.
``manifest.lineage["keras_sha256"]`` records the sha256 of those source models.

Examples:
    >>> result = export_bundle("runs/din", "bundles/din", prune=0.5, quantize=("int8",))   # doctest: +SKIP
    >>> result.manifest.selected                                                          # doctest: +SKIP
    {'litert': {'fused': 'fused_dynamic.tflite', ...}, 'onnxruntime': {...}}
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from edgerec.runtime.errors import BackendUnavailableError, MissingDependencyError, expected
from edgerec.runtime.manifest import Manifest

from .errors import ConverterConfigError
from .flows import ARTIFACT_TARGETS, convert_parts, part_calibration, prune_parts
from .jobs import (EXPORT_PARTS, MODEL_JSON, ExportJob, byom_job, edgerec_job, load_job,  # noqa: F401  (re-exported)
                   pruned_model_dir)
from .select import OBJECTIVES, LatencyConfig, bench_latencies, measure_latencies, select_unverified, select_variants
from .specs import DEFAULT_BUDGET
from .tensorrt_engine import EngineConfig
from .validate import ValidationError, keras_outputs, validate_artifacts

logger = logging.getLogger(__name__)

TARGETS = ("tflite", "onnx", "tensorrt", "triton")
QUANTIZE = ("none", "fp16", "dynamic", "int8", "int4")


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


@dataclass(frozen=True)
class ExportOptions:
    """The checked options of one export (see `export_bundle` for their meaning)."""

    prune: float | None = None
    quantize: tuple = ("int8",)
    targets: tuple = ("tflite", "onnx")
    budget: float = DEFAULT_BUDGET
    prune_epochs: int = 2
    seed: int = 0
    engine: EngineConfig = field(default_factory=EngineConfig)
    objective: str = "balanced"
    latency_from: str | None = None

    @classmethod
    def checked(cls, prune=None, quantize=("int8",), targets=("tflite", "onnx"), budget=DEFAULT_BUDGET,
                **rest) -> "ExportOptions":
        prune, quantize, targets = check_options(prune, quantize, targets, budget)
        if rest.get("objective", "balanced") not in OBJECTIVES:
            raise ConverterConfigError(expected(f"a selection objective in {OBJECTIVES}", rest["objective"]))
        if rest.get("latency_from") is not None and not Path(rest["latency_from"]).is_file():
            raise ConverterConfigError(expected("--latency-from: an existing `edgerec bench` bench.json",
                                                str(rest["latency_from"])))
        return cls(prune, quantize, targets, float(budget), **rest)

    @property
    def artifact_targets(self) -> tuple:
        """Targets that produce bundle artifacts (the serving targets need ONNX)."""
        wanted = set(self.targets) | ({"onnx"} if {"triton", "tensorrt"} & set(self.targets) else set())
        return tuple(t for t in ARTIFACT_TARGETS if t in wanted)

    def to_lineage(self) -> dict:
        return {"prune": self.prune, "quantize": list(self.quantize), "targets": list(self.targets),
                "budget": self.budget, "objective": self.objective, "latency_from": self.latency_from}


@dataclass
class ExportResult:
    """What an export wrote: the bundle and its manifest, plus the optional extras next to it."""

    manifest: Manifest
    bundle: Path
    archive: Path | None = None
    pruned_models: Path | None = None
    triton: object = None          # triton.TritonRepository
    cascade: dict | None = None    # the manifest's "index" and "full_catalogue" (export --retrieval)

    def engines(self) -> dict[str, dict]:
        """Part -> ``{status, reason, engine}`` for every part a TensorRT engine was asked for."""
        out = {a.part: {"status": "built", "reason": a.validation.get("reason", ""), "engine": a.file}
               for a in self.manifest.artifacts if a.format == "trt_engine"}
        for item in self.manifest.rejected:
            if item.get("backend") == "tensorrt" and item.get("part") and item["part"] not in out:
                out[item["part"]] = {"status": "skipped", "reason": item["reason"], "engine": None}
        return out

    def summary(self) -> dict:
        """The JSON line ``edgerec export`` prints."""
        out = {"bundle": str(self.bundle), "selected": self.manifest.selected, "rejected": len(self.manifest.rejected)}
        if self.archive:
            out["archive"] = str(self.archive)
        if self.pruned_models:
            out["pruned_models"] = str(self.pruned_models)
        if self.triton is not None:
            out["triton"] = {"path": str(self.triton.path), "models": sorted(self.triton.models)}
        if "tensorrt" in self.manifest.lineage.get("options", {}).get("targets", []):
            out["tensorrt"] = self.engines()
        if self.cascade is not None:
            index = self.cascade["index"]
            out["index"] = {k: index[k] for k in index if k in ("kind", "num_items", "m") or k.startswith("recall@")}
            out["full_catalogue"] = self.cascade["full_catalogue"]
        return out


def export_model(model_dir: str | os.PathLike, out: str | os.PathLike | None = None, **options) -> Manifest:
    """`export_bundle`, returning only the written manifest."""
    return export_bundle(model_dir, out, **options).manifest


def export_bundle(model_dir: str | os.PathLike, out: str | os.PathLike | None = None, *, prune: float | None = None,
                  sparsity: float | None = None, quantize: Sequence[str] = ("int8",),
                  targets: Sequence[str] = ("tflite", "onnx"), data: str | os.PathLike | None = None,
                  budget: float = DEFAULT_BUDGET, archive: bool | str | os.PathLike = False,
                  cache_dir: str | os.PathLike | None = None, max_groups: int | None = None,
                  latency: LatencyConfig | None = None, prune_epochs: int = 2, seed: int = 0,
                  engine: EngineConfig | None = None, retrieval: str | os.PathLike | None = None,
                  cascade=None, objective: str = "balanced", latency_from: str | os.PathLike | None = None,
                  progress: Callable[[str], None] | None = None) -> ExportResult:
    """Export an edgerec model directory (or, with ``data``, any saved Keras model) into a bundle.

    Args:
        model_dir: MODEL_DIR per docs/contracts.md, or a ``.keras``/``.h5``/SavedModel (see `jobs`).
        out: the bundle directory (default ``<model_dir>/bundle``).
        prune: target sparsity in (0, 1) for tfmot magnitude pruning (``sparsity`` is an alias).
        quantize: any of ``fp16``, ``dynamic``, ``int8`` (``int8`` implies dynamic too), or ``none``.
        targets: any of ``tflite``, ``onnx``, ``tensorrt``, ``triton`` (see the module doc).
        data: ``.npz`` of held-out rows (fused inputs + ``labels`` [+ ``groups``]) replacing
            MODEL_DIR/validation.npz; required for bring-your-own models.
        budget: largest |ΔAUC| vs the Keras model for a compressed variant to be selectable.
        archive: also write a single-file ``<out>.tar.gz`` (or this path).
        cache_dir: pass cache (default ``$EDGEREC_CACHE`` or ``~/.cache/edgerec``).
        max_groups: validate on the first N ranking groups only (default
            `validation_data.DEFAULT_MAX_GROUPS`, enough for ΔAUC's precision; 0: every group).
            Validation streams its rows, so memory does not grow with them.
        latency: how selection measures latency (default batch 1 and 256, 7 interleaved rounds).
        prune_epochs / seed: fine-tuning epochs and seed of the pruning pass.
        engine: how TensorRT engines are built (default `EngineConfig()`).
        retrieval: a retrieval MODEL_DIR: its user tower and item index are added, making a cascade
            bundle (`cascade.add_retrieval`; the archive, if asked, is written after).
        cascade: `cascade.CascadeSettings` (index kind, M, evaluation users).
        objective: ``balanced`` (smallest variant within budget not slower than fp32 by more than
            1.10x at any timed batch size), ``size`` (smallest within budget) or ``latency`` (fastest
            within budget); see `select`.
        latency_from: an ``edgerec bench`` bench.json measured on the target device: its timings of
            the fused artifacts replace this machine's (it must cover every fused candidate).
        progress: ``callable(str)`` receiving one line per step (default: this module's logger, INFO).

    Examples:
        >>> export_bundle("runs/din", "bundles/din", targets=("tflite", "triton")).summary()  # doctest: +SKIP
    """
    options = ExportOptions.checked(prune if prune is not None else sparsity, quantize, targets, budget,
                                    prune_epochs=prune_epochs, seed=seed, engine=engine or EngineConfig(),
                                    objective=objective, latency_from=None if latency_from is None else str(latency_from))
    source = Path(model_dir)
    job = load_job(source, data, max_groups=max_groups, prune=options.prune is not None)
    out = Path(out) if out is not None else (source if source.is_dir() else source.parent) / "bundle"
    if retrieval is None:
        return run_export(job, out, options, archive=archive, cache_dir=cache_dir, latency=latency, progress=progress)
    from .bundle import archive_bundle
    from .cascade import RetrievalSource, add_retrieval

    RetrievalSource.read(retrieval)          # a wrong --retrieval fails before the ranker's export
    result = run_export(job, out, options, cache_dir=cache_dir, latency=latency, progress=progress)
    result.cascade = add_retrieval(out, retrieval, targets=options.artifact_targets, quantize=options.quantize,
                                   settings=cascade, cache_dir=cache_dir, say=progress or logger.info)
    if archive:
        result.archive = Path(archive) if not isinstance(archive, bool) else out.with_name(out.name + ".tar.gz")
        archive_bundle(out, result.archive)
    return result


def run_export(job: ExportJob, out: str | os.PathLike, options: ExportOptions, *, archive=False, cache_dir=None,
               latency: LatencyConfig | None = None, progress: Callable[[str], None] | None = None) -> ExportResult:
    """The core shared by every model source: prune, convert, validate, select, bundle, serve."""
    from .bundle import examples_with_expected, write_bundle
    from .content_export import add_content_encoder
    from .keras_io import input_specs, load_keras_model
    from .pipeline import PassRunner, merged_lineage, sha256_path
    from .specs import position_axes

    say = progress or logger.info
    out = Path(out)
    runner = PassRunner(cache_dir)
    work = Path(tempfile.mkdtemp(prefix="edgerec-export-"))
    try:
        refs = {part: load_keras_model(path, job.custom_objects_module) for part, path in job.keras_paths.items()}
        sources, rejections, prune_info = dict(job.keras_paths), [], None
        if options.prune is not None:
            pruned = prune_parts(job, runner, refs, sparsity=options.prune, epochs=options.prune_epochs,
                                 seed=options.seed, say=say)
            sources.update(pruned.sources)
            refs.update(pruned.models)
            rejections += pruned.rejections
            prune_info = pruned.info
        # a scorer's user-state positions stay free in ONNX: the runtime feeds one user's history
        # without its padding (`edgerec.runtime.positions`)
        free = {"scorer": position_axes(input_specs(refs["scorer"]))} if "scorer" in refs else {}
        produced = convert_parts(sources, options.artifact_targets, options.quantize,
                                 part_calibration(job.calibration, refs, work), runner, work / "stage",
                                 custom_objects_module=job.custom_objects_module, engine=options.engine,
                                 budget=options.budget, free_axes=free, say=say)
        rejections += produced.rejections
        unverified = _unrunnable(produced.artifacts)
        runnable = [a for a in produced.artifacts if a.file not in unverified]
        say(f"validating {len(runnable)} artifact(s) on {job.validation.rows} held-out rows")
        report = validate_artifacts(refs, runnable, job.validation, job.specs, raise_on_failure=False,
                                    progress=lambda m: say("  " + m))
        broken = [r for r in report.results if r.precision == "fp32" and not r.passed]
        if broken:
            raise ValidationError(expected("every fp32 artifact to match Keras (a broken export otherwise)",
                                           "; ".join(f"{r.file}: {', '.join(r.failures)}" for r in broken)))
        passing = [a for a in runnable if report.result(a.file).passed]
        say(f"measuring latency of {len(passing)} validated artifact(s)")
        latencies = measure_latencies(passing, _latency_arrays(job, refs), latency or LatencyConfig(),
                                      progress=lambda m: say("  " + m))
        if options.latency_from:
            say(f"fused latencies from {options.latency_from} (measured on the target)")
            latencies.update(bench_latencies(options.latency_from, passing))
        selection = select_variants(report, latencies, budget=options.budget, objective=options.objective)
        select_unverified(selection, [a for a in produced.artifacts if a.file in unverified], unverified,
                          budget=options.budget)
        for file, reason in unverified.items():
            say(f"  {file}: not verified here ({reason})")
        selection.rejected.extend(r.to_dict() for r in rejections)
        examples = job.examples or examples_with_expected(job.raw_examples, refs["fused"], job.feature_spec)
        steps = merged_lineage(produced.artifacts)
        lineage = {"passes": list(dict.fromkeys(s["pass"] for s in steps)), "steps": steps,
                   "options": options.to_lineage(), "impossible": [r.to_dict() for r in rejections],
                   "keras_sha256": {part: sha256_path(path) for part, path in sources.items()}}
        if prune_info is not None:
            lineage["prune"] = prune_info
        archive_path = None
        if archive:
            archive_path = Path(archive) if not isinstance(archive, bool) else out.with_name(out.name + ".tar.gz")
        say(f"writing bundle {out}")
        manifest = write_bundle(out, artifacts=produced.artifacts, report=report, selection=selection,
                                examples=examples, feature_spec_path=job.feature_spec_path,
                                model_info=job.model_info, lineage=lineage, archive=archive_path,
                                unverified=unverified)
        for backend, parts in manifest.selected.items():
            say(f"selected for {backend}: " + ", ".join(f"{p}={f}" for p, f in sorted(parts.items())))
        result = ExportResult(manifest, out, archive_path)
        add_content_encoder(job, result, options, runner, say)      # content families: no-op otherwise
        if options.prune is not None:
            from .jobs import save_reference_models

            result.pruned_models = save_reference_models(job, sources, pruned_model_dir(out))
            say(f"pruned Keras models kept in {result.pruned_models} (edgerec validate {out} --keras "
                f"{result.pruned_models})")
        if "triton" in options.targets:
            result.triton = _write_triton(out, say)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _unrunnable(artifacts) -> dict[str, str]:
    """file -> why its backend cannot run it on this machine (an engine without the GPU runtime)."""
    from edgerec.runtime.backends import create_backend, is_available
    from edgerec.runtime.contract import BACKEND_FOR_FORMAT

    found = {}
    for art in artifacts:
        backend = BACKEND_FOR_FORMAT[art.format]
        if not is_available(backend):
            found[art.file] = f"the {backend} backend is not installed"
            continue
        if art.format in ("tflite", "onnx"):
            continue
        try:
            create_backend(backend, art.path).close()
        except (BackendUnavailableError, MissingDependencyError) as err:
            found[art.file] = f"the {backend} backend cannot run here: {err}"
    return found


def _write_triton(bundle: Path, say) -> object:
    from .triton import check_triton_repository, write_triton_repository

    repo = write_triton_repository(bundle, bundle / "triton", overwrite=True)
    problems = check_triton_repository(repo.path, bundle)
    if problems:
        raise ConverterConfigError("Triton repository failed its check: " + "; ".join(map(str, problems)))
    say(f"wrote Triton repository {repo.path} ({', '.join(sorted(repo.models))})")
    return repo


def _latency_arrays(job: ExportJob, refs: Mapping) -> dict:
    rows = {k: v[:256] for k, v in job.validation.inputs.items()}
    arrays = {"fused": rows, "user_encoder": rows}
    if "user_encoder" in refs:
        arrays["scorer"] = {**rows, **keras_outputs(refs["user_encoder"], rows)}
    return arrays
