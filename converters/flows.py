"""The export's variants as a declared table, each one a `Pipeline` of cached passes.

`VARIANTS` lists every artifact an export can produce for a model part: the target, the
conversion mode, the bundle file name, the precision, which ``quantize`` options ask for it and
whether it needs calibration rows. `variant_pipeline` turns one row into its `Pipeline`
(variants that share a prefix, such as every ONNX variant's tf2onnx export, share its cache
entry, so the prefix runs once). `convert_parts` runs the wanted rows for every part and stages
each result under its bundle name; what cannot be produced becomes a `Rejection` with the
converter's specific reason (op or layer that blocked it) — never dropped silently.
`prune_parts` runs tfmot pruning on the fused model and gives the split parts its weights.

| target | mode | file | precision | asked by |
|---|---|---|---|---|
| tflite | fp32 / fp16 / dynamic / int8 | ``<part>_<mode>.tflite`` | same as mode | always / fp16 / dynamic, int8 / int8 |
| tflite | dynamic_int4 (int4 tables + int4 FULLY_CONNECTED weights) / int8_int4 (int4 tables) | ``<part>_<mode>.tflite`` | int4 | int4 |
| onnx | fp32 (ORT basic optimisation) | ``<part>_fp32.onnx`` | fp32 | always |
| onnx | dynamic / static_qdq / tensorrt | ``_dynamic`` / ``_qdq_int8`` / ``_trt_int8.onnx`` | dynamic / int8 / int8 | dynamic, int8 / int8 / int8 |
| tensorrt | engine from the TensorRT-ready ONNX | ``<part>_trt_int8.plan`` | int8 | int8 |
| onnx | fp32 / dynamic (+ 4-bit ``MatMulNBits`` weights) / static_qdq graph + row-wise 4-bit tables | ``_fp32_t4`` / ``_dynamic_t4`` / ``_qdq_t4.onnx`` | int4 | int4 |
| onnx | dynamic graph + row-wise 8-bit tables | ``_dynamic_t8.onnx`` | dynamic | int4 |

Row-wise tables (``tables``: 4 or 8 bits) come from `OnnxEmbeddingPass` (``GatherBlockQuantized``, a
shared table stored once) before the graph's own quantization; those variants also run the
accuracy-aware fallback (`OrtQuantizeConfig.accuracy_budget` = the export budget), which keeps the
most sensitive nodes float until the budget holds on the calibration rows.

ONNX has no fp16 variant: ORT's CPU provider has no fp16 kernels.

Examples:
    >>> [v.file("fused") for v in wanted_variants(("tflite",), ("dynamic",))]
    ['fused_fp32.tflite', 'fused_dynamic.tflite']
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from edgerec.runtime.contract import BACKEND_FOR_FORMAT
from edgerec.runtime.errors import EdgeRecError, expected

from .errors import ConverterConfigError
from .pipeline import PassRunner, Pipeline, Step
from .select import Rejection
from .specs import DEFAULT_BUDGET
from .tensorrt_engine import EngineConfig
from .validate import DeployableArtifact, keras_outputs

logger = logging.getLogger(__name__)

ARTIFACT_TARGETS = ("tflite", "onnx", "tensorrt")     # targets that produce bundle artifacts
FORMAT_OF_TARGET = {"tflite": "tflite", "onnx": "onnx", "tensorrt": "trt_engine"}
EXTENSION = {"tflite": ".tflite", "onnx": ".onnx", "trt_engine": ".plan"}


@dataclass(frozen=True)
class Variant:
    """One artifact kind of the export.

    Args:
        target: ``tflite``, ``onnx`` or ``tensorrt``.
        mode: the conversion mode of the target's last pass.
        suffix: bundle file name ``<part>_<suffix><extension>``.
        precision: the artifact's precision.
        asked_by: ``quantize`` options that ask for this variant (empty: always produced).
        calibrated: needs calibration rows (full-integer quantization).
        tables: bits of row-wise embedding tables written before the mode's own pass (0: none).
        dense: ONNX: bits of dense weights written with the tables (4: ``MatMulNBits``; 0: none).
    """

    target: str
    mode: str
    suffix: str
    precision: str
    asked_by: frozenset = frozenset()
    calibrated: bool = False
    tables: int = 0
    dense: int = 0

    @property
    def format(self) -> str:
        return FORMAT_OF_TARGET[self.target]

    @property
    def backend(self) -> str:
        return BACKEND_FOR_FORMAT[self.format]

    def file(self, part: str) -> str:
        return f"{part}_{self.suffix}{EXTENSION[self.format]}"

    def wanted(self, quantize: Sequence[str]) -> bool:
        return not self.asked_by or bool(self.asked_by & set(quantize))


INT8 = frozenset({"int8"})
INT4 = frozenset({"int4"})
VARIANTS = (
    Variant("tflite", "fp32", "fp32", "fp32"),
    Variant("tflite", "fp16", "fp16", "fp16", frozenset({"fp16"})),
    Variant("tflite", "dynamic", "dynamic", "dynamic", frozenset({"dynamic", "int8"})),
    Variant("tflite", "int8", "int8", "int8", INT8, calibrated=True),
    Variant("tflite", "dynamic_int4", "dynamic_int4", "int4", frozenset({"int4"}), calibrated=True),
    Variant("tflite", "int8_int4", "int8_int4", "int4", frozenset({"int4"}), calibrated=True),
    Variant("onnx", "fp32", "fp32", "fp32"),
    Variant("onnx", "dynamic", "dynamic", "dynamic", frozenset({"dynamic", "int8"})),
    Variant("onnx", "static_qdq", "qdq_int8", "int8", INT8, calibrated=True),
    Variant("onnx", "tensorrt", "trt_int8", "int8", INT8, calibrated=True),
    Variant("tensorrt", "engine", "trt_int8", "int8", INT8, calibrated=True),
    Variant("onnx", "fp32", "fp32_t4", "int4", INT4, calibrated=True, tables=4),
    Variant("onnx", "dynamic", "dynamic_t4", "int4", INT4, calibrated=True, tables=4, dense=4),
    Variant("onnx", "static_qdq", "qdq_t4", "int4", INT4, calibrated=True, tables=4),
    Variant("onnx", "dynamic", "dynamic_t8", "dynamic", INT4, calibrated=True, tables=8),
)
ENGINE_SOURCE = next(v for v in VARIANTS if v.target == "onnx" and v.mode == "tensorrt")


def wanted_variants(targets: Sequence[str], quantize: Sequence[str]) -> list[Variant]:
    """The table's rows an export with these options produces, in table order."""
    return [v for v in VARIANTS if v.target in targets and v.wanted(quantize)]


def variant_pipeline(variant: Variant, runner: PassRunner, calibration: str | None,
                     custom_objects_module: str | None, engine: EngineConfig | None = None,
                     budget: float = DEFAULT_BUDGET, free_axes: tuple = ()) -> Pipeline:
    """The passes that produce ``variant`` (calibration is used only where the variant needs it;
    ``budget`` is the |ΔAUC| the accuracy-aware fallback of row-wise-table variants aims for).
    ``free_axes`` (`OnnxExportConfig.free_axes`) reach every ONNX variant except the TensorRT
    ones, whose engines are built for fixed sizes."""
    from .passes import (OnnxExportConfig, OnnxExportPass, OrtOptimizeConfig, OrtOptimizePass, OrtQuantizeConfig,
                         OrtQuantizePass, TensorRTEnginePass, TFLitePass)
    from .passes.tflite import variant_config

    data = calibration if variant.calibrated else None
    if variant.target == "tflite":
        return Pipeline([Step(TFLitePass(), variant_config(variant.mode, data, custom_objects_module, budget))], runner)
    for_tensorrt = variant.target == "tensorrt" or variant.mode == ENGINE_SOURCE.mode
    free = () if for_tensorrt else tuple(free_axes)
    steps = [Step(OnnxExportPass(), OnnxExportConfig(custom_objects_module=custom_objects_module, free_axes=free))]
    if variant.tables:
        from .passes.onnx_embedding import OnnxEmbeddingConfig, OnnxEmbeddingPass

        # the 4-bit weights get half the budget: the activation quantization's error comes on top
        steps.append(Step(OnnxEmbeddingPass(), OnnxEmbeddingConfig(
            bits=variant.tables, data=data, dense_bits=variant.dense or None,
            dense_budget=budget / 2 if variant.dense and data else None)))
        if variant.mode == "fp32":
            return Pipeline(steps, runner)
        steps.append(Step(OrtQuantizePass(), OrtQuantizeConfig(
            mode=variant.mode, data=data, accuracy_budget=budget if data else None)))
        return Pipeline(steps, runner)
    if variant.target == "onnx" and variant.mode == "fp32":
        # the optimised graph is only smaller/faster: an ORT that cannot optimise it ships the plain one
        steps.append(Step(OrtOptimizePass(), OrtOptimizeConfig(level="basic"), optional=True))
        return Pipeline(steps, runner)
    mode = ENGINE_SOURCE.mode if variant.target == "tensorrt" else variant.mode
    steps.append(Step(OrtQuantizePass(), OrtQuantizeConfig(mode=mode, data=data)))
    if variant.target == "tensorrt":
        steps.append(Step(TensorRTEnginePass(), engine or EngineConfig()))
    return Pipeline(steps, runner)


@dataclass
class Conversions:
    """What `convert_parts` produced: staged artifacts (bundle names) and rejected variants."""

    artifacts: list = field(default_factory=list)      # DeployableArtifact
    rejections: list = field(default_factory=list)     # Rejection


def convert_parts(sources: Mapping[str, str], targets: Sequence[str], quantize: Sequence[str],
                  calibration: Mapping[str, str], runner: PassRunner, stage_dir: Path, *,
                  custom_objects_module: str | None = None, engine: EngineConfig | None = None,
                  budget: float = DEFAULT_BUDGET, free_axes: Mapping[str, tuple] | None = None,
                  say: Callable[[str], None] = logger.info) -> Conversions:
    """Run every wanted variant for every part (``sources``: part -> Keras model) and stage the results.

    Args:
        sources: the Keras model of each part (pruned ones after pruning).
        targets / quantize: the export options (see `wanted_variants`).
        calibration: part -> calibration ``.npz`` (see `part_calibration`).
        runner: the pass runner (its cache makes a re-export redo only what changed).
        stage_dir: where artifacts are copied under their bundle names.
        custom_objects_module: module registering the model's custom layers.
        engine: how TensorRT engines are built.
        budget: the |ΔAUC| budget the accuracy-aware fallback of row-wise-table variants aims for.
        free_axes: part -> `OnnxExportConfig.free_axes` of its ONNX variants (see `variant_pipeline`).
        say: progress lines.
    """
    stage_dir.mkdir(parents=True, exist_ok=True)
    result = Conversions()
    variants = wanted_variants(targets, quantize)
    for part, source in sources.items():
        for target in (t for t in ARTIFACT_TARGETS if t in targets and not any(v.target == t for v in variants)):
            needed = sorted({q for v in VARIANTS if v.target == target for q in v.asked_by})
            result.rejections.append(Rejection(f"{part} ({target})", BACKEND_FOR_FORMAT[FORMAT_OF_TARGET[target]],
                                               f"{target} artifacts need quantize {' or '.join(needed)}", part))
        for variant in variants:
            name = variant.file(part)
            if variant.calibrated and not calibration.get(part):
                result.rejections.append(Rejection(name, variant.backend, "no calibration rows for this part", part,
                                                   variant.mode))
                continue
            say(f"converting {part} → {variant.target} {variant.mode}")
            pipeline = variant_pipeline(variant, runner, calibration.get(part), custom_objects_module, engine, budget,
                                        (free_axes or {}).get(part, ()))
            try:
                art = pipeline.run(source, part=part)
            except (EdgeRecError, RuntimeError, ValueError) as err:
                reason = f"{type(err).__name__}: {err}"
                result.rejections.append(Rejection(name, variant.backend, reason[:600], part, variant.mode,
                                                   tuple(getattr(err, "blocked_by", []) or [])))
                say(f"  impossible: {reason[:200]}")
                continue
            result.artifacts.append(_stage(art, stage_dir / name, variant, part))
    return result


def _stage(art, path: Path, variant: Variant, part: str) -> DeployableArtifact:
    shutil.copyfile(art.path, path)
    details = dict(art.details)
    if variant.target == "tensorrt":
        details["source"] = ENGINE_SOURCE.file(part)     # the bundle's name for the engine's ONNX
    return DeployableArtifact(str(path), art.format, art.precision, art.part, list(art.inputs), list(art.outputs),
                              details, list(art.lineage))


def part_calibration(calibration: str | None, references: Mapping, work: Path) -> dict[str, str]:
    """Calibration ``.npz`` per part: fused/user_encoder use the fused rows; the scorer also needs the
    user-encoder outputs, computed here with the Keras user encoder."""
    if not calibration:
        return {}
    out = {"fused": calibration, "user_encoder": calibration}
    if "scorer" in references and "user_encoder" in references:
        with np.load(calibration, allow_pickle=False) as npz:
            rows = {k: np.asarray(npz[k]) for k in npz.files}
        rows.update(keras_outputs(references["user_encoder"], rows))
        path = work / "calibration_scorer.npz"
        np.savez(path, **rows)
        out["scorer"] = str(path)
    return out


# -- pruning --------------------------------------------------------------------------------------
@dataclass
class PrunedParts:
    """The Keras models after pruning: ``sources`` (part -> file), loaded ``models``, the
    ``info`` recorded as ``manifest.lineage["prune"]``, and parts that stayed unpruned."""

    sources: dict
    models: dict
    info: dict
    rejections: list = field(default_factory=list)


def prune_parts(job, runner: PassRunner, references: Mapping, *, sparsity: float, epochs: int = 2, seed: int = 0,
                say: Callable[[str], None] = logger.info) -> PrunedParts:
    """Prune and fine-tune the fused model; the split parts take its weights by layer name.

    Args:
        job: the `ExportJob` (its calibration rows carry the labels fine-tuning needs).
        runner: the pass runner.
        references: part -> the unpruned Keras model (for the before/after AUC).
        sparsity / epochs / seed: the pruning target and fine-tuning.
    """
    from .keras_io import load_keras_model
    from .passes.prune import PrunedPartConfig, PrunedPartPass, PruneConfig, PrunePass

    if not job.calibration:
        raise ConverterConfigError(expected("calibration rows with labels to fine-tune pruning", None))
    module = job.custom_objects_module
    say(f"pruning fused model to {sparsity:.0%} sparsity (tfmot, {epochs} fine-tune epochs)")
    pruned = runner.run(PrunePass(), job.keras_paths["fused"], PruneConfig(
        sparsity=sparsity, data=job.calibration, epochs=epochs, seed=seed, custom_objects_module=module), part="fused")
    model = load_keras_model(pruned.path, module)
    info = {"target_sparsity": sparsity, "achieved_sparsity": pruned.details.get("achieved_sparsity"),
            "skipped_layers": pruned.details.get("skipped_layers", []), "layers": pruned.details.get("layers", {})}
    info.update(_auc_change(job.validation, references["fused"], model))
    say(f"  achieved sparsity {info['achieved_sparsity']:.3f}" +
        (f", ΔAUC {info['delta_auc']:+.4f} vs unpruned" if "delta_auc" in info else ""))
    result = PrunedParts({"fused": pruned.path}, {"fused": model}, info)
    info["parts"] = {}
    unpruned = tuple(s["layer"] for s in info["skipped_layers"])
    for part, path in job.keras_paths.items():
        if part == "fused":
            continue
        try:
            art = runner.run(PrunedPartPass(), path, PrunedPartConfig(
                pruned_model=pruned.path, custom_objects_module=module, unpruned_layers=unpruned), part=part)
        except ConverterConfigError as err:
            result.rejections.append(Rejection(f"{part} (pruned)", "all", f"{part} exported unpruned: {err}"[:600],
                                               part, stage="pruning"))
            say(f"  {part}: exported unpruned ({err})")
            continue
        result.sources[part], result.models[part] = art.path, load_keras_model(art.path, module)
        info["parts"][part] = art.details["achieved_sparsity"]
        say(f"  {part}: pruned weights of the fused model, sparsity {art.details['achieved_sparsity']:.3f}")
    return result


def _auc_change(validation, before_model, after_model) -> dict:
    if validation.labels is None:
        return {}
    from edgerec.runtime.metrics import auc

    def score(model):
        outputs = keras_outputs(model, validation.inputs)
        return np.asarray(next(iter(outputs.values()))).reshape(validation.rows, -1)[:, 0]

    before, after = auc(validation.labels, score(before_model)), auc(validation.labels, score(after_model))
    return {"auc_before": before, "auc_after": after, "delta_auc": after - before}
