"""Constants a bundle stores once (``shared-<sha256>.bin``) and its artifacts read at load.

`edgerec.converters.shared_tables.share_tables` strips large constants that repeat across a
bundle's artifacts (the item table of every part and variant) into content-addressed blob files,
listed in the manifest's ``files`` with their sha256 and described by its ``shared_tables``
record. An artifact names its blobs itself, so it loads by path or from verified bytes alike:

- ONNX: the initializer is external data whose ``location`` is the blob. By path, ONNX Runtime
  reads it from beside the model. From bytes, the backend hands ORT the blob's verified bytes
  (``add_external_initializers_from_files_in_memory``) and, for every dtype numpy can hold, one
  OrtValue over them shared by every session (``add_initializer``): the table is in RAM once
  per bundle. 4-bit tables have no numpy dtype: each session copies those.
- TFLite: the flatbuffer's buffers point past its end (offset/size form) and the file ends with
  a trailer (`pack_tflite_trailer`) naming each blob and its offset. The backend splices the
  blobs in after the flatbuffer: the file shrinks, RAM does not (each interpreter owns its
  model bytes, as before).

A blob read from disk here is checked against the sha256 in its name; `LoadedBundle` passes the
bytes it verified against the manifest instead (`SharedTables`), so nothing is read twice.

Examples:
    >>> tables = SharedTables.from_manifest(manifest, verified)          # doctest: +SKIP
    >>> create_backend("onnxruntime", path, model_bytes=data, shared_tables=tables)  # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path
from typing import Mapping

import numpy as np

from .errors import BundleError, IntegrityError, expected

ALIGNMENT = 64            # TFLite blob offsets: what XNNPACK's packed weights like
BLOB_PATTERN = re.compile(rb"shared-[0-9a-f]{64}\.bin")
TRAILER_MAGIC = b"EDGERTBL"
_TRAILER_TAIL = struct.Struct("<Q8s")       # JSON length, magic
MAX_TRAILER_BYTES = 1 << 20
RAM_NOTE = {
    "onnxruntime": "one copy in RAM per bundle for tables numpy can hold (fp32, int8, uint8): every session "
                   "reads the same OrtValue; 4-bit tables are copied by each session",
    "litert": "the file shrinks, RAM does not: each interpreter splices the tables into its own model bytes",
}
# ONNX TensorProto data types numpy holds as they are (4-bit ones pack two values per byte).
ONNX_NUMPY = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
              9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


def blob_name(sha256: str) -> str:
    """The file name of the blob with these bytes."""
    return f"shared-{sha256}.bin"


def blob_sha256(name: str) -> str:
    """The sha256 a blob's name promises (BundleError for a name that is not a blob's)."""
    if not isinstance(name, str) or BLOB_PATTERN.fullmatch(name.encode()) is None:
        raise BundleError(expected("a shared table named shared-<sha256>.bin", name))
    return name[len("shared-"):-len(".bin")]


# -- TFLite trailer ------------------------------------------------------------------------
def pack_tflite_trailer(head_size: int, layout: list[dict]) -> bytes:
    """What follows a stripped flatbuffer: JSON ``{"head_bytes", "blobs": [{"file", "sha256",
    "offset", "size"}]}``, its length and `TRAILER_MAGIC`."""
    text = json.dumps({"head_bytes": head_size, "blobs": layout}, sort_keys=True).encode()
    return text + _TRAILER_TAIL.pack(len(text), TRAILER_MAGIC)


def tflite_layout(data: bytes | memoryview) -> dict | None:
    """The trailer of a stripped .tflite (None for a whole one)."""
    if len(data) < _TRAILER_TAIL.size or bytes(data[-len(TRAILER_MAGIC):]) != TRAILER_MAGIC:
        return None
    size, _ = _TRAILER_TAIL.unpack(bytes(data[-_TRAILER_TAIL.size:]))
    end = len(data) - _TRAILER_TAIL.size
    if size > min(end, MAX_TRAILER_BYTES):
        raise BundleError(expected(f"a shared-table trailer of at most {min(end, MAX_TRAILER_BYTES)} bytes", size))
    try:
        layout = json.loads(bytes(data[end - size:end]))
        head = layout["head_bytes"]
        blobs = [(str(b["file"]), int(b["offset"]), int(b["size"])) for b in layout["blobs"]]
    except (ValueError, KeyError, TypeError) as err:
        raise BundleError(expected("a JSON shared-table trailer with head_bytes and blobs", str(err)[:200])) from None
    if not isinstance(head, int) or not 0 < head <= end - size:
        raise BundleError(expected(f"head_bytes in (0, {end - size}]", head))
    at = head
    for name, offset, length in blobs:
        blob_sha256(name)
        if offset < at or length < 1:
            raise BundleError(expected(f"blob offsets past the flatbuffer and in order (>= {at})", offset))
        at = offset + length
    return {"head_bytes": head, "blobs": blobs}


def ends_with_trailer(path) -> bool:
    """Whether the file at ``path`` ends with a shared-table trailer (read: its last 8 bytes)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            if handle.tell() < len(TRAILER_MAGIC):
                return False
            handle.seek(-len(TRAILER_MAGIC), 2)
            return handle.read() == TRAILER_MAGIC
    except OSError:
        return False     # the interpreter names what is wrong with the path


def assemble_tflite(data: bytes, layout: dict, blobs: Mapping[str, bytes]) -> bytes:
    """The whole flatbuffer: ``data``'s head with each blob at its offset (zero padding between)."""
    parts, at = [memoryview(data)[:layout["head_bytes"]]], layout["head_bytes"]
    for name, offset, size in layout["blobs"]:
        blob = blobs[name]
        if len(blob) != size:
            raise IntegrityError(expected(f"{name} of {size} bytes", len(blob)))
        parts += [bytes(offset - at), blob]
        at = offset + size
    return b"".join(parts)


def whole_tflite(data: bytes, tables: "SharedTables | None" = None, directory: str | Path | None = None) -> bytes:
    """``data`` itself for a whole .tflite; for a stripped one, the flatbuffer with its blobs
    spliced in (from ``tables``, else read from ``directory`` and checked). What an interpreter
    built outside `LiteRTBackend` (a raw-LiteRT baseline) must be given as ``model_content``."""
    layout = tflite_layout(data)
    if layout is None:
        return data
    return assemble_tflite(data, layout, resolve([name for name, _, _ in layout["blobs"]], tables, directory))


# -- ONNX ----------------------------------------------------------------------------------
def onnx_blob_names(data: bytes) -> list[str]:
    """Blob files an ONNX model's external data names (found in its bytes; no onnx package)."""
    if b"shared-" not in data:
        return []
    return list(dict.fromkeys(m.decode() for m in BLOB_PATTERN.findall(data)))


# -- blobs ---------------------------------------------------------------------------------
def read_blob(directory: str | Path, name: str) -> bytes:
    """Blob ``name`` from ``directory``, checked against the sha256 in its name."""
    want = blob_sha256(name)
    path = Path(directory) / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(expected(f"the shared table {name} beside the artifact", "no such file")) from None
    except OSError as err:
        raise BundleError(expected(f"a readable shared table {name}", str(err))) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != want:
        raise IntegrityError(expected(f"{name} with sha256 {want}", digest))
    return data


class SharedTables:
    """The verified blobs of one bundle and who reads them (the manifest's ``shared_tables``).

    Args:
        record: the manifest's ``shared_tables`` record.
        blobs: ``{blob file: verified bytes}`` (those the caller's artifacts read).
    """

    def __init__(self, record: Mapping, blobs: Mapping[str, bytes]):
        self.blobs = dict(blobs)
        self._uses: dict = {}
        for table in record.get("tables", ()):
            for use in table.get("uses", ()):
                self._uses.setdefault(use["artifact"], []).append((table["file"], use))
        self._values: dict = {}

    @classmethod
    def from_manifest(cls, manifest, verified: Mapping[str, bytes]) -> "SharedTables | None":
        """The tables of ``manifest`` whose verified bytes are in ``verified`` (None without any)."""
        record = getattr(manifest, "shared_tables", None) or {}
        blobs = {t["file"]: verified[t["file"]] for t in record.get("tables", ()) if t["file"] in verified}
        return cls(record, blobs) if blobs else None

    @staticmethod
    def files_for(manifest, artifact_files) -> list[str]:
        """The blob files ``artifact_files`` read (what `verify_files` must keep)."""
        wanted = set(artifact_files)
        record = getattr(manifest, "shared_tables", None) or {}
        return [t["file"] for t in record.get("tables", ())
                if any(use.get("artifact") in wanted for use in t.get("uses", ()))]

    def blob(self, name: str, directory: str | Path | None) -> bytes:
        """The verified bytes of ``name``, else read from ``directory`` and checked (`read_blob`)."""
        data = self.blobs.get(name)
        if data is not None:
            return data
        if directory is None:
            raise BundleError(expected(f"the shared table {name}", "neither given nor a directory to read it from"))
        return read_blob(directory, name)

    def ort_initializers(self, artifact: str, ort) -> list[tuple[str, object]]:
        """(initializer name, OrtValue) for ``artifact``'s shared tables numpy can hold, one OrtValue
        per (blob, dtype, shape) for the whole bundle, so every session reads the same memory."""
        out = []
        for file, use in self._uses.get(artifact, ()):
            dtype = ONNX_NUMPY.get(use.get("onnx_type"))
            if dtype is None or file not in self.blobs:
                continue
            key = (file, use["onnx_type"], tuple(use.get("shape", ())))
            value = self._values.get(key)
            if value is None:
                array = np.frombuffer(self.blobs[file], dtype=dtype).reshape(key[2])
                value = self._values[key] = ort.OrtValue.ortvalue_from_numpy(array)
            out.append((use["tensor"], value))
        return out


def artifact_size(manifest, file: str) -> int:
    """Bytes of artifact ``file`` with the shared tables it reads: its size as one file, the figure
    to compare variants by (``size_bytes`` of a stripped artifact counts only what it stores)."""
    read = set(SharedTables.files_for(manifest, [file]))
    tables = manifest.shared_tables.get("tables", ())
    return manifest.artifact(file).size_bytes + sum(t["size_bytes"] for t in tables if t["file"] in read)


def resolve(names, tables: SharedTables | None, directory: str | Path | None) -> dict[str, bytes]:
    """``{blob: bytes}`` for ``names``: from ``tables`` where it has them, else read and checked."""
    if tables is None:
        return {name: read_blob(directory, name) for name in names}
    return {name: tables.blob(name, directory) for name in names}


def check_record(record: Mapping, files: list, artifacts: set) -> None:
    """A ``shared_tables`` record must name listed blob files (same sha256) and listed artifacts."""
    listed = {f.get("file"): f.get("sha256") for f in files if isinstance(f, dict)}
    for table in record.get("tables", ()):
        name = table["file"]
        if blob_sha256(name) != table["sha256"] or listed.get(name) != table["sha256"]:
            raise BundleError(expected(f"shared table {name} listed in files with the sha256 its name gives",
                                       listed.get(name, "not listed")))
        unknown = sorted({u["artifact"] for u in table["uses"]} - artifacts)
        if unknown:
            raise BundleError(expected(f"shared table {name} used by artifacts of the manifest", unknown))
