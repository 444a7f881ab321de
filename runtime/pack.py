"""An app bundle: one backend's selected artifacts and the files they need (`edgerec pack`).

A bundle holds every variant the exporter built (all formats, precisions and parts, a few MB)
while an app serving one backend loads only what the manifest selected for it (a few hundred
KB). `pack_bundle` copies those artifacts plus the bundle's other listed files (feature spec,
examples.jsonl, vocabularies) and the shared tables those artifacts read, checks each copied
file's sha256 against the source manifest, and writes a manifest listing only them. The result is
an ordinary verified bundle: `rt.load`, `edgerec check` and `edgerec info` work on it.

Examples:
    >>> pack_bundle("demo-out/bundle", "litert", "app-bundle")                # doctest: +SKIP
    PosixPath('app-bundle')
    >>> pack_bundle("demo-out/bundle", "onnxruntime", "app.tar.gz")           # doctest: +SKIP
    PosixPath('app.tar.gz')
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import uuid
from pathlib import Path

from .contract import BACKENDS, FORMAT_FOR_BACKEND
from .describe import backend_files
from .errors import BundleError, IntegrityError, expected
from .io import replace_folder, sha256_file, write_archive
from .selection import selected_files
from .shared_tables import SharedTables
from .manifest import (ARCHIVE_SUFFIXES, MANIFEST_NAME, Manifest, bundle_directory, confined_path, file_entry,
                       load_manifest, read_manifest, read_verified, verify_files, write_manifest)

logger = logging.getLogger(__name__)


def pack_bundle(src, backend: str, out) -> Path:
    """Write the app bundle of ``backend`` for bundle ``src`` to ``out``.

    Args:
        src: bundle directory or .tar.gz (verified before anything is copied).
        backend: "litert" | "onnxruntime" | "tensorrt": whose selected artifacts to keep.
        out: a directory, or a path ending in .tar.gz/.tgz/.tar for a single-file archive. An
            existing ``out`` is replaced only when it is a bundle or empty, without a moment where
            readers find it missing (`io.replace_folder`).

    Returns:
        ``out``.

    Raises:
        BundleError: unknown backend, nothing selected for it, or an unusable ``out``.
        IntegrityError: a source file differs from its manifest entry.
    """
    if backend not in BACKENDS:
        raise BundleError(expected(f"a backend among {BACKENDS}", backend))
    out = Path(out)
    archive = out.name.endswith(ARCHIVE_SUFFIXES)
    with bundle_directory(src) as source:
        if source.resolve() == out.resolve() or source.resolve() in out.resolve().parents:
            raise BundleError(expected("an output outside the source bundle", str(out)))
        _check_replaceable(out, archive)
        manifest, manifest_bytes = read_manifest(source)
        verify_files(source, manifest)
        fmt = FORMAT_FOR_BACKEND[backend]
        if not manifest.find(format=fmt):
            raise BundleError(expected(f"{fmt} artifacts in the bundle for {backend}",
                                       sorted({a.format for a in manifest.artifacts})))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.pack-{uuid.uuid4().hex[:8]}"
        try:
            packed = _copy(source, manifest, manifest_bytes, backend, tmp)
            if archive:
                write_archive(tmp, out)
            else:
                replace_folder(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    logger.info("packed %d of %d artifacts for %s into %s", len(packed.artifacts), len(manifest.artifacts),
                backend, out)
    return out


def _check_replaceable(out: Path, archive: bool) -> None:
    if archive:
        if out.exists() and not out.is_file():
            raise BundleError(expected("an archive path that is a file or absent", str(out)))
        return
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_NAME).is_file()):
            raise BundleError(expected("an output that is absent, empty or a bundle (it is replaced)", str(out)))


def _copy(source: Path, manifest: Manifest, manifest_bytes: bytes, backend: str, tmp: Path) -> Manifest:
    """Copy what ``backend`` needs into ``tmp`` (sha256 checked) and write its manifest there."""
    source_version = hashlib.sha256(manifest_bytes).hexdigest()[:16]
    chosen = selected_files(manifest, backend)
    towers = _index_towers(source, manifest, backend)
    served = list(dict.fromkeys([*chosen.values(), *towers]))
    # backend_files names the selected artifacts' shared tables; the towers may read others
    keep = list(dict.fromkeys(backend_files(manifest, backend) + towers + SharedTables.files_for(manifest, served)))
    listed = {entry["file"]: entry for entry in manifest.all_files()}
    tmp.mkdir(parents=True)
    for name in keep:
        target = tmp / confined_path(source, name).relative_to(source.resolve())
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(confined_path(source, name), target)
        digest = sha256_file(target)
        if digest != listed[name]["sha256"]:        # changed after the source was verified
            raise IntegrityError(expected(f"{name} with sha256 {listed[name]['sha256']}", digest))
    artifacts = [dataclasses.replace(manifest.artifact(name), sha256=sha256_file(tmp / name),
                                     size_bytes=(tmp / name).stat().st_size)
                 for name in served]
    kept = {a.file for a in artifacts}
    files = [file_entry(tmp, entry["file"], entry.get("role", "")) for entry in manifest.files
             if isinstance(entry, dict) and entry.get("file") in keep and entry["file"] not in kept]
    lineage = dict(manifest.lineage)
    lineage["packed"] = {"backend": backend, "source_version": source_version, "artifacts_kept": len(artifacts),
                         "artifacts_dropped": len(manifest.artifacts) - len(artifacts)}
    # The selection table (every variant's measurements) stays with the source bundle: an app
    # needs to know what it runs, not what was measured against it.
    packed = dataclasses.replace(
        manifest, artifacts=artifacts, selected={backend: dict(chosen)}, files=files, lineage=lineage,
        rejected=[r for r in manifest.rejected if isinstance(r, dict) and r.get("file") in kept], candidates=[],
        shared_tables=_shared_record(manifest.shared_tables, kept))
    write_manifest(tmp, packed)
    load_manifest(tmp, verify=True)       # what we wrote must read back and verify
    return packed


def _shared_record(record: dict, kept: set) -> dict:
    """The ``shared_tables`` record of the packed bundle: the tables its artifacts read, their uses."""
    tables = []
    for table in record.get("tables", ()):
        uses = [use for use in table["uses"] if use["artifact"] in kept]
        if uses:
            tables.append({**table, "uses": uses})
    if not tables:
        return {}
    return {**{k: v for k, v in record.items() if k not in ("tables", "bytes_saved")}, "tables": tables}


def _index_towers(source: Path, manifest: Manifest, backend: str) -> list[str]:
    """The user-tower artifact a cascade bundle's item index names for ``backend`` (none for
    bundles without an index); it is served beside the selected parts, not as one of them."""
    from .index import META_FILE

    if not any(isinstance(f, dict) and f.get("file") == META_FILE for f in manifest.files):
        return []
    try:
        meta = json.loads(read_verified(source, manifest, META_FILE))
    except ValueError as err:
        raise BundleError(expected(f"JSON in {META_FILE}", str(err)[:200])) from None
    tower = (meta.get("user_tower") or {}).get(backend) if isinstance(meta, dict) else None
    if tower is None:
        return []
    manifest.artifact(tower)          # BundleError unless the manifest lists it
    return [tower]
