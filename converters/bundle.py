"""Write a deployable bundle directory atomically (and optionally a single-file .tar.gz).

The bundle is built in a temp folder next to the target and put in place with
`edgerec.runtime.io.replace_folder` (an atomic exchange, or a symlink flip), so readers always see
either the old bundle or the complete new one, never neither. Everything is JSON, JSON-lines,
.tflite or .onnx: no pickle. Layout::

    BUNDLE/manifest.json        edgerec.runtime.manifest schema (sha256 + size of every file)
    BUNDLE/feature_spec.json    edgerec models only (vocabularies, context, dense, tokenizer vocab)
    BUNDLE/examples.jsonl       ~32 raw requests + `expected` (Keras fused probability);
                                BYOM: {"inputs": {name: rows}, "expected": {output: rows}}
    BUNDLE/<artifact files>     selected artifacts and every other one that passed validation
    BUNDLE/shared-<sha256>.bin  large constants several artifacts hold (the item table of every
                                part and variant), stored once (`shared_tables`, manifest
                                ``shared_tables``); the artifacts name them

Examples:
    >>> manifest = write_bundle("out/bundle", artifacts=staged, report=report, selection=selection,
    ...                         feature_spec_path="model/feature_spec.json", examples=examples)
    >>> load_manifest("out/bundle").selected["litert"]["fused"]
    'fused_int8.tflite'
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from edgerec.runtime.errors import BundleError, expected
from edgerec.runtime.io import atomic_write_text, replace_folder, sha256_file, write_archive
from edgerec.runtime.manifest import Artifact, Manifest, TensorSpec, file_entry, load_manifest, write_manifest

from .select import Selection
from .shared_tables import MIN_SHARED_BYTES, share_tables
from .validate import BACKEND_FOR_FORMAT, ValidationReport, as_deployable

EXAMPLES_NAME = "examples.jsonl"
FEATURE_SPEC_NAME = "feature_spec.json"
TOOLS = ("edgerec", "tensorflow", "tf-keras", "tensorflow-model-optimization", "tf2onnx", "onnx",
         "onnxruntime", "ai-edge-litert", "numpy")


def tool_versions() -> dict[str, str | None]:
    """Installed versions of the tools that shaped the artifacts (read from metadata, no imports)."""
    versions = {}
    for dist in TOOLS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


# -- examples.jsonl ------------------------------------------------------------------------
def read_raw_examples(path: str | os.PathLike, limit: int = 32) -> list[dict]:
    """Raw requests from MODEL_DIR/examples.jsonl (any old ``expected`` is dropped)."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(expected("an examples.jsonl file in the model directory", str(path)))
    requests = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise BundleError(expected(f"a JSON object on line {number} of {path}", str(err))) from None
        if not isinstance(row, dict):
            raise BundleError(expected(f"a JSON object on line {number} of {path}", type(row).__name__))
        row.pop("expected", None)
        requests.append(row)
        if len(requests) >= limit:
            break
    if not requests:
        raise BundleError(expected(f"at least one request in {path}", 0))
    return requests


def examples_with_expected(requests: Sequence[dict], fused_model, feature_spec) -> list[dict]:
    """Each raw request plus ``expected`` = the Keras fused model's probability for it."""
    from edgerec.runtime.preprocess import Preprocessor

    from .validate import keras_outputs

    arrays = Preprocessor(feature_spec).encode_requests(list(requests))
    outputs = keras_outputs(fused_model, arrays)
    score = outputs.get("score", next(iter(outputs.values())))
    probs = np.asarray(score, dtype=np.float64).reshape(len(requests), -1)[:, 0]
    return [{**req, "expected": float(p)} for req, p in zip(requests, probs)]


def byom_examples(inputs: Mapping[str, np.ndarray], model, n: int = 32) -> list[dict]:
    """Tensor-row examples for a bring-your-own model: inputs and the Keras outputs, as lists."""
    from .validate import keras_outputs

    rows = {k: np.asarray(v)[:n] for k, v in inputs.items()}
    outputs = keras_outputs(model, rows)
    if len(outputs) == 1:  # artifacts name a single output canonically
        outputs = {"score": next(iter(outputs.values()))}
    count = len(next(iter(rows.values())))
    return [{"inputs": {k: v[i].tolist() for k, v in rows.items()},
             "expected": {k: np.asarray(v[i], dtype=np.float64).tolist() for k, v in outputs.items()}}
            for i in range(count)]


# -- bundle --------------------------------------------------------------------------------
def artifact_signature(path: str, fmt: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs/outputs as the backend sees them (the names the runtime will feed)."""
    from edgerec.runtime.backends import create_backend

    with create_backend(BACKEND_FOR_FORMAT[fmt], path) as backend:
        return list(backend.inputs), list(backend.outputs)


def write_bundle(out: str | os.PathLike, *, artifacts: Sequence, report: ValidationReport, selection: Selection,
                 examples: Sequence[dict], feature_spec_path: str | os.PathLike | None = None,
                 model_info: Mapping | None = None, lineage: Mapping | None = None,
                 extra_files: Mapping[str, str | os.PathLike] | None = None, overwrite: bool = True,
                 archive: str | os.PathLike | None = None, unverified: Mapping[str, str] | None = None,
                 share_min_bytes: int | None = MIN_SHARED_BYTES) -> Manifest:
    """Write the bundle directory atomically and return its manifest.

    Args:
        out: target directory (replaced atomically when ``overwrite``).
        artifacts: every produced artifact (objects with path/format/precision/part).
        report: their `ValidationReport` (failed artifacts are left out of the bundle).
        selection: the `Selection` (selected per backend/part, rejected with reasons, full table).
        examples: lines for examples.jsonl (raw requests + expected, or BYOM tensor rows).
        feature_spec_path: the FeatureSpec JSON (None for BYOM bundles).
        model_info: family, source, Keras flavour, metrics … (``manifest.model``).
        lineage: passes, configs (``manifest.lineage``; tool versions are added here).
        extra_files: ``{bundle name: source path}`` copied in and listed (e.g. tokenizer data).
        archive: also write a single-file ``.tar.gz`` of the bundle at this path.
        unverified: ``{file: reason}`` of artifacts whose backend cannot run here (not in ``report``):
            kept when selected, with their recorded signature and ``validation: {verified: false, reason}``.
        share_min_bytes: constants of at least this many bytes held by two or more artifacts are
            stored once (`shared_tables.share_tables`); None keeps every artifact whole.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise BundleError(expected(f"no existing bundle at {out} (pass overwrite=True)", "it exists"))
    if out.exists() and not (out / "manifest.json").is_file() and any(out.iterdir()):
        raise BundleError(expected(f"an empty folder or an existing bundle at {out}", "a non-bundle folder"))
    arts = [as_deployable(a) for a in artifacts]
    unverified = dict(unverified or {})
    names = [a.file for a in arts]
    if len(set(names)) != len(names):
        raise BundleError(expected("unique artifact file names", sorted(n for n in names if names.count(n) > 1)))
    if not examples:
        raise BundleError(expected("at least one example line for examples.jsonl", 0))
    chosen = {f for parts in selection.selected.values() for f in parts.values()}
    keep = [a for a in arts if a.file in chosen or (a.file not in unverified and report.result(a.file).passed)]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        records = []
        for art in keep:
            shutil.copyfile(art.path, tmp / art.file)
        shared = {} if share_min_bytes is None else share_tables(tmp, [(a.file, a.format) for a in keep],
                                                                  share_min_bytes)
        for art in keep:
            if art.file in unverified:
                inputs, outputs = list(art.inputs), list(art.outputs)
                validation = {"verified": False, "reason": unverified[art.file]}
                source = art.details.get("source")
                if source in {r.file for r in report.results}:
                    validation["source_validation"] = report.result(source).manifest_validation()
            else:
                inputs, outputs = artifact_signature(str(tmp / art.file), art.format)
                validation = report.result(art.file).manifest_validation()
            records.append(Artifact(
                file=art.file, format=art.format, precision=art.precision, part=art.part,
                sha256=sha256_file(tmp / art.file), size_bytes=(tmp / art.file).stat().st_size,
                inputs=inputs, outputs=outputs, validation=_json_safe(validation),
                lineage=_json_safe(art.lineage), details=_json_safe(art.details)))
        files = [file_entry(tmp, table["file"], "shared_table") for table in shared.get("tables", ())]
        spec_name = None
        if feature_spec_path is not None:
            shutil.copyfile(feature_spec_path, tmp / FEATURE_SPEC_NAME)
            spec_name = FEATURE_SPEC_NAME
            files.append(file_entry(tmp, FEATURE_SPEC_NAME, "feature_spec"))
        atomic_write_text(tmp / EXAMPLES_NAME,
                          "".join(json.dumps(_json_safe(e), sort_keys=True) + "\n" for e in examples))
        files.append(file_entry(tmp, EXAMPLES_NAME, "examples"))
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, tmp / name)
            files.append(file_entry(tmp, name, "extra"))
        in_bundle = {a.file for a in records}
        rejected = [{**r, "in_bundle": r["file"] in in_bundle} for r in selection.rejected]
        manifest = Manifest(
            artifacts=records, selected=selection.selected, rejected=_json_safe(rejected), files=files,
            model=_json_safe(dict(model_info or {})), feature_spec=spec_name,
            lineage=_json_safe({**dict(lineage or {}), "tools": tool_versions(),
                                "validation": {"rows": report.rows, "reference": report.reference,
                                               "compositions": report.compositions}}),
            candidates=_json_safe(selection.table), shared_tables=shared,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        write_manifest(tmp, manifest)
        load_manifest(tmp, verify=True)  # what we wrote must read back and verify
        replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if archive is not None:
        archive_bundle(out, archive)
    return manifest


def archive_bundle(bundle_dir: str | os.PathLike, archive: str | os.PathLike) -> Path:
    """A single-file ``.tar.gz`` of a verified bundle (regular files only, deterministic order)."""
    bundle_dir, archive = Path(bundle_dir), Path(archive)
    load_manifest(bundle_dir, verify=True)
    write_archive(bundle_dir, archive)
    return archive


def _json_safe(value):
    """Round-trip through JSON so numpy scalars and tuples become plain JSON values."""
    return json.loads(json.dumps(value, default=_default))


def _default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, TensorSpec):
        return {"name": obj.name, "dtype": obj.dtype, "shape": obj.shape}
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")
