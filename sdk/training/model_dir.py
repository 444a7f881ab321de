"""MODEL_DIR writer/reader (layout: docs/contracts.md, "Model directory").

`save_model_dir` writes everything into a hidden temp folder next to the target and renames
it into place at the end, so a crash never leaves a half-written model dir; an existing dir
of the same name is replaced only after the new one is complete.

Every model dir holds ``heldout_users.npz`` (`HELDOUT_USERS_FILE`, layout in
`edgerec.sdk.metrics.full_catalogue`; listed as ``data.heldout_users`` in ``edgerec_model.json``)
when its dataset has held-out users, and its ``metrics.json`` has the ``full_catalogue`` and
``baseline_full_catalogue`` blocks (``{"hr@10", "ndcg@10", "recall@100"}``) when they were measured.

A retrieval model dir (family ``"retrieval"``) holds instead of the three ranking parts:

* ``user_tower.keras`` (part `USER_TOWER`): user-side inputs (``hist_items`` int32 [B, L], and the
  spec's context fields int32 [B] and ``dense`` float32 [B, F] when the tower uses context) ->
  ``user_vector`` float32 [B, D];
* ``item_vectors.npy`` (`ITEM_VECTORS_FILE`): float32 [item_vocab.size, D], row i = item index i,
  rows 0/1 (padding/OOV) zero; a user's score for item i is ``user_vector · item_vectors[i]``;
* ``edgerec_model.json`` ``"retrieval": {"dim", "normalized", "temperature", "encoder", "score": "dot",
  "item_vectors"}``; ``examples.jsonl`` ``expected`` = that score for the example's ``item``.
"""
from __future__ import annotations

import importlib
import json
import shutil
import uuid
from pathlib import Path

import numpy as np

from edgerec.runtime.contract import (BASELINE_FULL_CATALOGUE, FULL_CATALOGUE, HELDOUT_USERS_FILE, ITEM_VECTORS_FILE,
                                      RETRIEVAL, USER_TOWER)
from edgerec.runtime.errors import BundleError, SpecError, expected
from edgerec.runtime.io import atomic_write_json, atomic_write_text
from edgerec.runtime.preprocess import Preprocessor
from edgerec.runtime.spec import FeatureSpec

FORMAT_VERSION = 1
MANIFEST = "edgerec_model.json"
CUSTOM_OBJECTS_MODULE = "edgerec.sdk.models.layers"
CALIBRATION_ROWS = 2000
ITEM_TEXT_FILE = "item_text.json"     # a content model's catalogue texts, one per item index
TEST_KEYS = ("auc", "gauc", "logloss", "recall@10", "ndcg@10", "coverage@10")
# a retrieval model's scores are dot products, not probabilities: no logloss
RETRIEVAL_TEST_KEYS = ("auc", "gauc", "recall@10", "ndcg@10", "coverage@10")
BASELINE_KEYS = ("auc", "recall@10", "ndcg@10")
# metrics.json sections copied from the metrics when present
OPTIONAL_SECTIONS = (FULL_CATALOGUE, BASELINE_FULL_CATALOGUE, "full_catalogue_users", "cold_start", "content")


def _check_metrics(metrics: dict, test_keys=TEST_KEYS) -> None:
    problems = []
    for section, keys in (("test", test_keys), ("baseline", BASELINE_KEYS)):
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


def _metrics_json(family: str, dataset, metrics: dict) -> dict:
    out = {"model": family, "data": dataset.name, "test": dict(metrics["test"]),
           "baseline": dict(metrics["baseline"])}
    out.update({k: metrics[k] for k in OPTIONAL_SECTIONS if metrics.get(k) is not None})
    return out


def _held_out_users(dataset):
    """The dataset's held-out users, or None when its test split is not a ranking split
    (an online update's rows)."""
    from ..metrics.full_catalogue import held_out_users

    test = dataset.test
    if test.groups is None or len(test) == 0 or "cand_item" not in test.inputs:
        return None
    positives = test.labels > 0.5
    if np.unique(test.groups[positives]).size != int(positives.sum()) or \
            np.unique(test.groups).size != np.unique(test.groups[positives]).size:
        return None
    return held_out_users(dataset)


def _write_data(tmp: Path, dataset, seed: int) -> dict:
    """calibration.npz, validation.npz and heldout_users.npz; returns the manifest's ``data`` block."""
    rng = np.random.default_rng(seed)
    n = len(dataset.train)
    rows = np.sort(rng.choice(n, min(CALIBRATION_ROWS, n), replace=False))
    _npz(tmp / "calibration.npz", dataset.train.take(rows).to_npz_dict())
    _npz(tmp / "validation.npz", dataset.test.to_npz_dict())
    data = {"calibration": "calibration.npz", "validation": "validation.npz"}
    users = _held_out_users(dataset)
    if users is not None:
        _npz(tmp / HELDOUT_USERS_FILE, users.to_npz_dict())
        data["heldout_users"] = HELDOUT_USERS_FILE
    return data


def _prepare_out(out_dir) -> tuple[Path, Path]:
    out = Path(out_dir).absolute()
    if out.exists() and (not out.is_dir() or (not (out / MANIFEST).is_file() and any(out.iterdir()))):
        raise BundleError(expected("an empty folder or an existing model dir as --out", str(out)))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return out, tmp


def _write_examples(tmp: Path, spec, dataset, expected_of) -> None:
    examples = [dict(e) for e in dataset.examples]
    if examples:
        encoded = Preprocessor(spec).encode_requests(
            [{k: v for k, v in e.items() if k != "expected"} for e in examples])
        for example, value in zip(examples, expected_of(encoded)):
            example["expected"] = float(value)
    atomic_write_text(tmp / "examples.jsonl", "".join(json.dumps(e) + "\n" for e in examples))


def _with_content(parts, dataset, metrics: dict):
    """A content model's data files carry ``cand_content`` (the converters feed every input the
    model declares) and its metrics the content table's description."""
    table = getattr(parts, "content_table", None)
    if table is None:
        return dataset, metrics
    from edgerec.runtime.contract import CAND_CONTENT
    from edgerec.runtime.spec import NUM_RESERVED

    from ..data.builder import with_candidate_content

    if CAND_CONTENT in parts.fused.input_names and CAND_CONTENT not in dataset.train.inputs:
        dataset = with_candidate_content(dataset, table)
    info = parts.meta.get("content") or {}
    content = {"encoder": info.get("encoder", "small"), "dims": int(table.shape[1]),
               "items": int(table.shape[0] - NUM_RESERVED), "table_bytes": int(np.asarray(table, np.float32).nbytes)}
    return dataset, {**metrics, "content": {**content, **(metrics.get("content") or {})}}


def _custom_objects_module(parts) -> str:
    """The module that registers every custom layer of ``parts`` (MiniLM's GELU too)."""
    if ((parts.meta.get("content") or {}).get("encoder")) == "minilm":
        from ..models.minilm import CUSTOM_OBJECTS_MODULE as MINILM_MODULE

        return MINILM_MODULE
    return CUSTOM_OBJECTS_MODULE


def save_model_dir(parts, dataset, out_dir, metrics: dict, train_config=None, history: dict | None = None,
                   data_source: str | None = None, seed: int = 0) -> Path:
    """Write a complete MODEL_DIR for ``parts`` trained on ``dataset``; returns its path.

    Args:
        parts: the trained `ModelParts` (or `RetrievalParts`: see `save_retrieval_dir`).
        dataset: the `RecDataset` it was trained on (calibration, validation, held-out users and
            examples come from it).
        out_dir: target folder (replaced atomically when it exists).
        metrics: `evaluate`'s result (``test`` and ``baseline`` sections; the full-catalogue
            sections are copied into metrics.json when present).
        train_config: the `TrainConfig` used (recorded in ``edgerec_model.json``).
        history: `fit`'s result (recorded in ``edgerec_model.json``).
        data_source: what ``--data`` was (``"synthetic"``, ``"movielens:PATH"``).
        seed: seeds the choice of calibration rows.
    """
    if getattr(parts, "family", None) == RETRIEVAL:
        return save_retrieval_dir(parts, dataset, out_dir, metrics, train_config, history, data_source, seed)
    from .fit import predict_scores

    _check_metrics(metrics)
    dataset, metrics = _with_content(parts, dataset, metrics)
    out, tmp = _prepare_out(out_dir)
    try:
        part_files = {}
        for name, model in parts.parts().items():
            part_files[name] = f"{name}.keras"
            model.save(tmp / part_files[name])
        parts.spec.save(tmp / "feature_spec.json")
        data = _write_data(tmp, dataset, seed)
        _write_examples(tmp, parts.spec, dataset, lambda encoded: predict_scores(parts, encoded))
        atomic_write_json(tmp / "metrics.json", _metrics_json(parts.family, dataset, metrics))
        content = {}
        if "content_encoder" in part_files and getattr(dataset, "item_text", None):
            # the catalogue's texts: export validates the encoder's artifacts on them (cosine)
            atomic_write_json(tmp / ITEM_TEXT_FILE, list(dataset.item_text))
            content = {"content_encoder": {"item_text": ITEM_TEXT_FILE}}
        atomic_write_json(tmp / MANIFEST, {
            "format_version": FORMAT_VERSION, "family": parts.family, "keras": "tf_keras",
            "parts": part_files, "custom_objects_module": _custom_objects_module(parts),
            "feature_spec": "feature_spec.json", "data": data, "examples": "examples.jsonl",
            "config": {"model": parts.config.to_dict(),
                       "train": train_config.to_dict() if train_config is not None else None,
                       "history": history, "content": parts.meta.get("content")},
            "data_source": data_source or dataset.name, **content})
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def save_retrieval_dir(parts, dataset, out_dir, metrics: dict, train_config=None, history: dict | None = None,
                       data_source: str | None = None, seed: int = 0) -> Path:
    """Write a retrieval MODEL_DIR: ``user_tower.keras`` + ``item_vectors.npy`` (see the module docstring)."""
    _check_metrics(metrics, RETRIEVAL_TEST_KEYS)
    vectors = parts.item_vectors if parts.item_vectors is not None else parts.compute_item_vectors()
    vectors = np.asarray(vectors, np.float32)
    if vectors.shape[0] != parts.spec.item_vocab.size:
        raise SpecError(expected(f"item vectors with {parts.spec.item_vocab.size} rows", vectors.shape))
    out, tmp = _prepare_out(out_dir)
    try:
        part_files = {USER_TOWER: f"{USER_TOWER}.keras"}
        parts.user_tower.save(tmp / part_files[USER_TOWER])
        with open(tmp / ITEM_VECTORS_FILE, "wb") as handle:
            np.save(handle, vectors, allow_pickle=False)
        parts.spec.save(tmp / "feature_spec.json")
        data = _write_data(tmp, dataset, seed)
        _write_examples(tmp, parts.spec, dataset,
                        lambda encoded: parts.scores(encoded, encoded["cand_item"]))
        atomic_write_json(tmp / "metrics.json", _metrics_json(RETRIEVAL, dataset, metrics))
        config = parts.config
        atomic_write_json(tmp / MANIFEST, {
            "format_version": FORMAT_VERSION, "family": RETRIEVAL, "keras": "tf_keras",
            "parts": part_files, "custom_objects_module": CUSTOM_OBJECTS_MODULE,
            "feature_spec": "feature_spec.json", "data": data, "examples": "examples.jsonl",
            "retrieval": {"item_vectors": ITEM_VECTORS_FILE, "dim": int(vectors.shape[1]),
                          "normalized": config.normalize, "temperature": config.temperature,
                          "encoder": config.encoder, "score": "dot",
                          "inputs": list(parts.user_tower.input_names)},
            "config": {"model": config.to_dict(),
                       "train": train_config.to_dict() if train_config is not None else None,
                       "history": history, "content": parts.meta.get("content")},
            "data_source": data_source or dataset.name})
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Put the finished model dir at ``out`` with no moment where a reader finds neither the old
    nor the new one (`edgerec.runtime.io.replace_folder`: an atomic exchange on Linux)."""
    from edgerec.runtime.io import replace_folder

    replace_folder(tmp, out)


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
    """Load a MODEL_DIR back into `ModelParts` (parts loaded with tf_keras, uncompiled); a
    retrieval model dir loads into `RetrievalParts` (user tower + item vectors, no item tower)."""
    from edgerec.converters.tfenv import import_tf

    from ..models.config import ModelConfig, ModelParts

    _, keras = import_tf()
    root = Path(model_dir)
    manifest = read_manifest(root)
    importlib.import_module(manifest.get("custom_objects_module", CUSTOM_OBJECTS_MODULE))
    loaded = {}
    for name, file in manifest["parts"].items():
        loaded[name] = keras.models.load_model(_inside(root, file, f"part '{name}'"), compile=False)
    if manifest["family"] == RETRIEVAL:
        return _retrieval_parts(root, manifest, loaded)
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


def _inside(root: Path, file, what: str) -> Path:
    path = (root / str(file)).resolve()
    if root.resolve() not in path.parents or not path.is_file():
        raise BundleError(expected(f"{what} as a file inside the model dir", file))
    return path


def _retrieval_parts(root: Path, manifest: dict, loaded: dict):
    from ..models.retrieval import RetrievalConfig, RetrievalParts

    if USER_TOWER not in loaded:
        raise BundleError(expected(f"part '{USER_TOWER}' in {MANIFEST}", sorted(loaded)))
    spec = FeatureSpec.load(root / manifest["feature_spec"])
    file = (manifest.get("retrieval") or {}).get("item_vectors", ITEM_VECTORS_FILE)
    vectors = np.load(_inside(root, file, "the item vectors"), allow_pickle=False)
    if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[0] != spec.item_vocab.size:
        raise BundleError(expected(f"float32 item vectors of shape [{spec.item_vocab.size}, D]",
                                   f"{vectors.dtype} {vectors.shape}"))
    config = RetrievalConfig.from_dict((manifest.get("config") or {}).get("model") or {})
    return RetrievalParts(RETRIEVAL, spec, config, loaded[USER_TOWER], item_vectors=vectors,
                          meta={"manifest": manifest, "path": str(root)})
