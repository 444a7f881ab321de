"""What an export works on: `ExportJob`, read from an edgerec MODEL_DIR or a bring-your-own model.

* `edgerec_job(MODEL_DIR)` reads ``MODEL_DIR/edgerec_model.json`` (docs/contracts.md) and the files
  it names: the Keras parts, the FeatureSpec, calibration/validation rows and raw example requests.
* `byom_job(model, rows.npz)`: any saved Keras model plus an ``.npz`` of rows named like its inputs.
  Accepted: tf_keras ``.keras`` / ``.h5`` / SavedModel folder (everything, pruning included) and
  Keras 3 ``.keras`` (conversion, quantization and validation — **not pruning**: tfmot only prunes
  tf_keras models). The ``.npz`` holds one array per model input, optionally ``labels`` (needed for
  ΔAUC, the selection budget and pruning) and ``groups``; it serves as calibration and validation
  rows. No FeatureSpec exists: the bundle carries only the tensor signature and its examples.jsonl
  holds tensor rows ``{"inputs": {...}, "expected": {...}}``.
* `load_job(path, data)` picks one of the two.
* `save_reference_models(job, sources, folder)` writes the Keras models a bundle was converted from
  (the pruned ones after pruning) as a folder `load_job` reads again, so a pruned bundle can be
  re-validated against the model it really came from.

Examples:
    >>> job = load_job("runs/din", max_groups=200)            # doctest: +SKIP
    >>> sorted(job.keras_paths)                                # doctest: +SKIP
    ['fused', 'scorer', 'user_encoder']
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from edgerec.runtime.contract import FAMILIES, RANKING_PARTS
from edgerec.runtime.errors import expected
from edgerec.runtime.io import atomic_write_json
from edgerec.runtime.manifest import TensorSpec

from .errors import ConverterConfigError, ModelLoadError
from .specs import PartSpec, spec_for_byom
from .validation_data import DEFAULT_MAX_GROUPS, ValidationData

MODEL_JSON = "edgerec_model.json"
EXPORT_PARTS = RANKING_PARTS
BYOM_EXAMPLES = 32
PRUNED_SUFFIX = ".pruned"


@dataclass(frozen=True)
class ExportJob:
    """Everything the export core needs, for edgerec model dirs and bring-your-own models alike.

    Args:
        keras_paths: ``{part: saved Keras model}`` to convert.
        calibration: ``.npz`` of fused rows (+ ``labels`` for pruning), or None.
        validation: held-out rows the artifacts are compared on.
        examples: examples.jsonl lines already complete (BYOM tensor rows); empty for edgerec jobs,
            whose ``raw_examples`` get their ``expected`` from the (possibly pruned) fused model.
        feature_spec_path / feature_spec: the model's FeatureSpec (None for BYOM).
        raw_examples: raw requests from MODEL_DIR/examples.jsonl.
        custom_objects_module: module registering custom layers (from the user's own model dir).
        model_info: ``manifest.model``.
        specs: ``{part: PartSpec}`` (tolerances, score output).
        model_json: the edgerec_model.json content (None for BYOM).
    """

    keras_paths: Mapping[str, str]
    calibration: str | None
    validation: ValidationData
    examples: tuple = ()
    feature_spec_path: str | None = None
    feature_spec: object = None
    raw_examples: tuple = ()
    custom_objects_module: str | None = None
    model_info: Mapping = field(default_factory=dict)
    specs: Mapping[str, PartSpec] = field(default_factory=dict)
    model_json: Mapping | None = None


def load_job(path: str | os.PathLike, data: str | os.PathLike | None = None, *, max_groups: int | None = None,
             prune: bool = False) -> ExportJob:
    """The job for a MODEL_DIR (``edgerec_model.json`` inside) or a saved Keras model with ``data``.

    ``max_groups``: validation ranking groups kept (None: `DEFAULT_MAX_GROUPS`; 0: all of them)."""
    max_groups = resolve_max_groups(max_groups)
    source = Path(path)
    if not source.exists():
        raise ConverterConfigError(expected("an existing model directory (or saved Keras model)", str(source)))
    if (source / MODEL_JSON).is_file():
        return edgerec_job(source, data, max_groups=max_groups)
    if prune:
        check_prunable(source)
    return byom_job(source, data, max_groups=max_groups)


def resolve_max_groups(max_groups: int | None) -> int | None:
    """None -> `DEFAULT_MAX_GROUPS`, 0 -> None (every group), N >= 1 -> N."""
    if max_groups is None:
        return DEFAULT_MAX_GROUPS
    if isinstance(max_groups, bool) or not isinstance(max_groups, int) or max_groups < 0:
        raise ConverterConfigError(expected("max_groups as an int >= 0 (0: every validation group)", max_groups))
    return max_groups or None


def edgerec_job(model_dir: Path, data=None, max_groups: int | None = None) -> ExportJob:
    """Read MODEL_DIR/edgerec_model.json and the files it names."""
    from edgerec.runtime.spec import FeatureSpec

    from .bundle import read_raw_examples
    from .specs import spec_for_part

    model_dir = Path(model_dir)
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
        raise ConverterConfigError(expected(f"every Keras part named in {MODEL_JSON}", f"missing {absent}"))
    validation = Path(data) if data is not None else model_dir / meta["data"]["validation"]
    spec_path = model_dir / meta["feature_spec"]
    spec = FeatureSpec.load(spec_path)
    family = meta.get("family", "din")
    info = {"family": family, "source": str(model_dir), "keras": meta.get("keras", "tf_keras"),
            "config": meta.get("config", {}), "data_source": meta.get("data_source"), "parts": sorted(paths)}
    metrics_path = model_dir / "metrics.json"
    if metrics_path.is_file():
        info["metrics"] = json.loads(metrics_path.read_text("utf-8"))
    # every family shares the tensor contract: a family edgerec does not build validates like din
    specs = {"fused": spec_for_part(family if family in FAMILIES else "din", "fused", spec)}
    return ExportJob(
        keras_paths={k: str(v) for k, v in paths.items()},
        calibration=str(model_dir / meta["data"]["calibration"]),
        validation=ValidationData.load(validation, max_groups=max_groups),
        feature_spec_path=str(spec_path), feature_spec=spec,
        raw_examples=tuple(read_raw_examples(model_dir / meta.get("examples", "examples.jsonl"))),
        custom_objects_module=meta.get("custom_objects_module"), model_info=info, specs=specs, model_json=meta)


def byom_job(model_path: Path, data, max_groups: int | None = None) -> ExportJob:
    """An `ExportJob` for a saved Keras model and its rows ``.npz``."""
    from .bundle import byom_examples
    from .keras_io import input_specs, keras_flavour, load_keras_model

    model_path = Path(model_path)
    if model_path.is_dir() and not (model_path / "saved_model.pb").is_file():
        raise ConverterConfigError(expected(f"a model directory with {MODEL_JSON}, or a saved Keras model "
                                            "(.keras, .h5, SavedModel folder)", str(model_path)))
    if data is None:
        raise ConverterConfigError(expected("--data FILE.npz (arrays named like the model inputs, plus labels) for "
                                            "a bring-your-own model", None))
    flavour = keras_flavour(model_path)
    model = load_keras_model(model_path)
    specs = input_specs(model)
    rows = ValidationData.load(data, max_groups=max_groups)
    missing = [n for n in specs if n not in rows.inputs]
    if missing:
        raise ConverterConfigError(expected(f"arrays named like the model inputs {sorted(specs)} in {data}",
                                            f"missing {missing} (has {sorted(rows.inputs)})"))
    inputs = {n: np.asarray(rows.inputs[n]).astype(dtype, copy=False) for n, (dtype, _) in specs.items()}
    validation = ValidationData(inputs, rows.labels, rows.groups, str(data))
    signature = [TensorSpec(n, d, list(s)) for n, (d, s) in specs.items()]
    spec = spec_for_byom(signature, score_output=None if len(model.outputs) > 1 else "score")
    info = {"family": "byom", "source": str(model_path), "keras": flavour,
            "inputs": [{"name": t.name, "dtype": t.dtype, "shape": t.shape} for t in signature],
            "pruning": "supported" if flavour == "tf_keras" else
            "not supported: tfmot prunes only tf_keras (Keras 2) models; re-save with tf_keras to prune"}
    return ExportJob(keras_paths={"fused": str(model_path)}, calibration=str(data), validation=validation,
                     examples=tuple(byom_examples(inputs, model, BYOM_EXAMPLES)), model_info=info,
                     specs={"fused": spec})


def check_prunable(model_path: Path) -> None:
    """Raise a clear error before any work when pruning a Keras 3 model is requested."""
    from .keras_io import KERAS3, keras_flavour

    if keras_flavour(model_path) == KERAS3:
        raise ModelLoadError(expected("a tf_keras (Keras 2) model for --prune: tfmot cannot prune Keras 3 "
                                      "models (export/quantize work without --prune)", "a Keras 3 .keras file"))


def pruned_model_dir(bundle: str | os.PathLike) -> Path:
    """Where an export keeps the pruned Keras models of ``bundle``: ``BUNDLE.pruned`` next to it."""
    bundle = Path(bundle)
    return bundle.with_name(bundle.name + PRUNED_SUFFIX)


def save_reference_models(job: ExportJob, sources: Mapping[str, str], folder: str | os.PathLike) -> Path:
    """Write the Keras models an export converted (``sources``: part -> file) into ``folder``, atomically.

    For an edgerec job the folder is a MODEL_DIR (its ``edgerec_model.json`` names these parts and
    the source's feature spec, rows and examples, linked or copied), so ``load_job(folder)`` reads
    it back. For a bring-your-own model it holds ``fused.keras`` (or ``fused.h5``/``fused/``), to be
    read with the same ``--data`` rows as the export.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        names = {}
        for part, path in sources.items():
            path = Path(path)
            names[part] = part + ("" if path.is_dir() else path.suffix)
            _link_or_copy(path, tmp / names[part])
        if job.model_json is not None:
            source = Path(job.model_info["source"])
            meta = json.loads(json.dumps(job.model_json))
            for key in ("feature_spec", "examples"):
                if meta.get(key) and (source / meta[key]).is_file():
                    _link_or_copy(source / meta[key], tmp / meta[key])
            for name in dict(meta.get("data", {})).values():
                _link_or_copy(source / name, tmp / name)
            meta["parts"] = {**{p: n for p, n in meta["parts"].items() if p not in EXPORT_PARTS}, **names}
            meta["parts"] = {p: n for p, n in meta["parts"].items() if (tmp / n).exists()}
            meta["converted_from"] = str(source.resolve())
            atomic_write_json(tmp / MODEL_JSON, meta)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the filesystem allows (validation rows can be large), else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
