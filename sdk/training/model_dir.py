"""MODEL_DIR writer/reader (layout: docs/contracts.md, "Model directory").

`save_model_dir` writes everything into a hidden temp folder next to the target and renames
it into place at the end, so a crash never leaves a half-written model dir; an existing dir
of the same name is replaced only after the new one is complete.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from edgerec.runtime.errors import BundleError, SpecError, expected
from edgerec.runtime.io import atomic_write_json, atomic_write_text
from edgerec.runtime.preprocess import Preprocessor
from edgerec.runtime.spec import FeatureSpec

FORMAT_VERSION = 1
MANIFEST = "edgerec_model.json"
CUSTOM_OBJECTS_MODULE = "edgerec.sdk.models.layers"
CALIBRATION_ROWS = 2000
TEST_KEYS = ("auc", "gauc", "logloss", "recall@10", "ndcg@10", "coverage@10")
BASELINE_KEYS = ("auc", "recall@10", "ndcg@10")


def _check_metrics(metrics: dict) -> None:
    problems = []
    for section, keys in (("test", TEST_KEYS), ("baseline", BASELINE_KEYS)):
        missing = [k for k in keys if k not in (metrics.get(section) or {})]
        if missing:
            problems.append(f"{section} missing {missing}")
    if problems:
        raise SpecError(expected("metrics shaped like evaluate()'s result", "; ".join(problems)))


def _npz(path: Path, arrays: dict) -> None:
    for name, array in arrays.items():
        if np.asarray(array).dtype == object:
            raise SpecError(expected(f"a numeric array for '{name}' (no pickled objects)", "dtype=object"))
    with open(path, "wb") as handle:
        np.savez(handle, **{k: np.asarray(v) for k, v in arrays.items()})


def save_model_dir(parts, dataset, out_dir, metrics: dict, train_config=None, history: dict | None = None,
                   data_source: str | None = None, seed: int = 0) -> Path:
    """Write a complete MODEL_DIR for ``parts`` trained on ``dataset``; returns its path.

    Args:
        parts: the trained `ModelParts`.
        dataset: the `RecDataset` it was trained on (calibration, validation and examples come from it).
        out_dir: target folder (replaced atomically when it exists).
        metrics: `evaluate`'s result (``test`` and ``baseline`` sections).
        train_config: the `TrainConfig` used (recorded in ``edgerec_model.json``).
        history: `fit`'s result (recorded in ``edgerec_model.json``).
        data_source: what ``--data`` was (``"synthetic"``, ``"movielens:PATH"``).
        seed: seeds the choice of calibration rows.
    """
    from .fit import predict_scores

    _check_metrics(metrics)
    out = Path(out_dir).absolute()
    if out.exists() and (not out.is_dir() or (not (out / MANIFEST).is_file() and any(out.iterdir()))):
        raise BundleError(expected("an empty folder or an existing model dir as --out", str(out)))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        part_files = {}
        for name, model in parts.parts().items():
            part_files[name] = f"{name}.keras"
            model.save(tmp / part_files[name])
        parts.spec.save(tmp / "feature_spec.json")
        rng = np.random.default_rng(seed)
        n = len(dataset.train)
        rows = np.sort(rng.choice(n, min(CALIBRATION_ROWS, n), replace=False))
        _npz(tmp / "calibration.npz", dataset.train.take(rows).to_npz_dict())
        _npz(tmp / "validation.npz", dataset.test.to_npz_dict())
        examples = [dict(e) for e in dataset.examples]
        if examples:
            encoded = Preprocessor(parts.spec).encode_requests(
                [{k: v for k, v in e.items() if k != "expected"} for e in examples])
            for example, prob in zip(examples, predict_scores(parts, encoded)):
                example["expected"] = float(prob)
        atomic_write_text(tmp / "examples.jsonl", "".join(json.dumps(e) + "\n" for e in examples))
        atomic_write_json(tmp / "metrics.json", {"model": parts.family, "data": dataset.name,
                                                 "test": dict(metrics["test"]),
                                                 "baseline": dict(metrics["baseline"])})
        atomic_write_json(tmp / MANIFEST, {
            "format_version": FORMAT_VERSION, "family": parts.family, "keras": "tf_keras",
            "parts": part_files, "custom_objects_module": CUSTOM_OBJECTS_MODULE,
            "feature_spec": "feature_spec.json",
            "data": {"calibration": "calibration.npz", "validation": "validation.npz"},
            "examples": "examples.jsonl",
            "config": {"model": parts.config.to_dict(),
                       "train": train_config.to_dict() if train_config is not None else None,
                       "history": history, "content": parts.meta.get("content")},
            "data_source": data_source or dataset.name})
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_manifest(model_dir) -> dict:
    """``edgerec_model.json`` of a model dir, checked for the contract's keys."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise BundleError(expected(f"a model dir containing {MANIFEST}", str(model_dir)))
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(expected(f"valid JSON in {path}", str(err))) from None
    missing = [k for k in ("format_version", "family", "parts", "feature_spec") if k not in manifest]
    if missing:
        raise BundleError(expected(f"keys format_version/family/parts/feature_spec in {MANIFEST}", f"missing {missing}"))
    if manifest["format_version"] != FORMAT_VERSION:
        raise BundleError(expected(f"format_version {FORMAT_VERSION}", manifest["format_version"]))
    return manifest


def load_model_dir(model_dir):
    """Load a MODEL_DIR back into `ModelParts` (parts loaded with tf_keras, uncompiled)."""
    from edgerec.converters.tfenv import import_tf

    from ..models.config import ModelConfig, ModelParts

    _, keras = import_tf()
    root = Path(model_dir)
    manifest = read_manifest(root)
    importlib.import_module(manifest.get("custom_objects_module", CUSTOM_OBJECTS_MODULE))
    loaded = {}
    for name, file in manifest["parts"].items():
        path = (root / file).resolve()
        if root.resolve() not in path.parents or not path.is_file():
            raise BundleError(expected(f"part '{name}' as a file inside the model dir", file))
        loaded[name] = keras.models.load_model(path, compile=False)
    for name in ("fused", "user_encoder", "scorer"):
        if name not in loaded:
            raise BundleError(expected(f"part '{name}' in {MANIFEST}", sorted(loaded)))
    config = ModelConfig.from_dict((manifest.get("config") or {}).get("model") or {})
    table = None
    if "item_content" in [layer.name for layer in loaded["fused"].layers]:
        table = loaded["fused"].get_layer("item_content").get_weights()[0]
    return ModelParts(manifest["family"], FeatureSpec.load(root / manifest["feature_spec"]), config,
                      loaded["fused"], loaded["user_encoder"], loaded["scorer"],
                      content_encoder=loaded.get("content_encoder"), content_table=table,
                      meta={"manifest": manifest, "path": str(root)})
