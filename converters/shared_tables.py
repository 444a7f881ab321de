"""Store each large constant once per bundle: the item table every part and variant repeats.

A bundle holds the same item table in many artifacts: fused, user_encoder, scorer and user_tower
each look it up, in each precision variant, in TFLite and in ONNX — ~1.4 KB per item at 10^5
items where one copy per precision is ~0.4 KB. Equal precision gives equal bytes (the fp32
table, the row-wise int8/int4 data and their scales), and often across formats too (both
converters keep the Keras weights; both 4-bit passes pack the low nibble first).

`share_tables` finds constants of at least ``min_bytes`` whose bytes occur in two or more places
of a bundle folder, writes each once as ``shared-<sha256>.bin`` and strips it from the artifacts:

- ONNX: the initializer becomes external data (``location`` = the blob file, offset 0), the
  standard form, so ONNX Runtime loads the artifact by path as it is; from verified bytes the
  runtime hands ORT the blob (`edgerec.runtime.shared_tables`).
- TFLite: the buffer takes the flatbuffer's offset/size form (data outside the flatbuffer, at an
  offset from its start, as the schema allows for large models) and the stored file is the
  flatbuffer plus a trailer naming each blob and its offset; loading splices the blobs in after
  the flatbuffer. LiteRT 2.3 runs it with bit-identical outputs.

It returns the manifest's ``shared_tables`` record (which artifact's tensor reads which blob).

Examples:
    >>> record = share_tables(tmp, [("fused_fp32.onnx", "onnx"), ("scorer_fp32.tflite", "tflite")])  # doctest: +SKIP
    >>> record["tables"][0]["file"]                                                            # doctest: +SKIP
    'shared-3867ecd5…bin'
"""
from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from edgerec.runtime.errors import BundleError, expected
from edgerec.runtime.io import atomic_write_bytes
from edgerec.runtime.shared_tables import ALIGNMENT, RAM_NOTE, blob_name, pack_tflite_trailer, tflite_layout

logger = logging.getLogger(__name__)

# Smaller constants (biases, a 64-wide layer) save little and would add a file each.
MIN_SHARED_BYTES = 64 << 10
# A placeholder offset while the flatbuffer is sized: large, so the field is written (a zero
# offset is a default flatbuffers leave out, which would change the size once filled in).
_UNSET_OFFSET = 1 << 40


def share_tables(folder: str | Path, artifacts: Sequence[tuple[str, str]],
                 min_bytes: int = MIN_SHARED_BYTES, existing: dict | None = None) -> dict:
    """Store repeated large constants of ``artifacts`` once in ``folder``; rewrite the artifacts.

    Args:
        folder: the bundle folder being written (artifacts already copied in).
        artifacts: ``(file, format)`` pairs, format "onnx" or "tflite" (others are left alone).
        min_bytes: smallest constant considered.
        existing: the folder's current ``shared_tables`` record: a constant equal to one of its
            blobs is stripped to that blob (artifacts added to a written bundle).

    Returns:
        The manifest's ``shared_tables`` record, ``{}`` when nothing repeats: ``{"min_bytes",
        "bytes_saved", "ram", "tables": [{"file", "sha256", "size_bytes", "uses": [{"artifact",
        "tensor", "onnx_type"?, "shape"?}]}]}``.
    """
    if isinstance(min_bytes, bool) or not isinstance(min_bytes, int) or min_bytes < 1:
        raise BundleError(expected("min_bytes as a positive int", min_bytes))
    folder = Path(folder)
    existing = dict(existing or {})
    known = {t["sha256"]: t for t in existing.get("tables", ())}
    models, uses = {}, defaultdict(list)
    for file, fmt in artifacts:
        reader = _READERS.get(fmt)
        if reader is None:
            continue
        model, constants = reader(folder / file, min_bytes)
        models[file] = (fmt, model, constants)
        for key, use in constants:
            uses[key].append({"artifact": file, **use})
    shared = {key: found for key, found in uses.items() if len(found) > 1 or key in known}
    if not shared:
        return existing
    blobs = {}
    for key, found in shared.items():
        blobs[key] = name = blob_name(key)
        if key not in known:
            atomic_write_bytes(folder / name, found[0]["data"])
    saved = int(existing.get("bytes_saved", 0))
    for file, (fmt, model, constants) in models.items():
        mine = [(key, use) for key, use in constants if key in shared]
        if not mine:
            continue
        before = (folder / file).stat().st_size
        _WRITERS[fmt](folder / file, model, mine, blobs)
        saved += before - (folder / file).stat().st_size
    tables = {t["file"]: dict(t) for t in existing.get("tables", ())}
    for key, found in shared.items():
        listed = [{k: v for k, v in use.items() if k != "data"} for use in found]
        if key in known:
            tables[blobs[key]]["uses"] = [*tables[blobs[key]]["uses"], *listed]
        else:
            saved -= len(found[0]["data"])
            tables[blobs[key]] = {"file": blobs[key], "sha256": key, "size_bytes": len(found[0]["data"]),
                                  "uses": listed}
    logger.info("shared %d constants across %d artifacts: %d bytes saved", len(tables), len(models), saved)
    return {"min_bytes": min_bytes, "bytes_saved": saved, "ram": dict(RAM_NOTE),
            "tables": [tables[name] for name in sorted(tables)]}


def share_bundle(bundle: str | Path, min_bytes: int = MIN_SHARED_BYTES) -> dict:
    """`share_tables` over a written bundle in place (e.g. after artifacts were added to it): the
    artifacts' sha256/size, the blob files and the ``shared_tables`` record are rewritten in its
    manifest, which is then read back verified. Returns the record."""
    import dataclasses

    from edgerec.runtime.io import sha256_file
    from edgerec.runtime.manifest import file_entry, load_manifest, write_manifest

    bundle = Path(bundle)
    manifest = load_manifest(bundle, verify=True)
    record = share_tables(bundle, [(a.file, a.format) for a in manifest.artifacts], min_bytes,
                          existing=manifest.shared_tables)
    manifest.artifacts = [dataclasses.replace(a, sha256=sha256_file(bundle / a.file),
                                              size_bytes=(bundle / a.file).stat().st_size)
                          for a in manifest.artifacts]
    blob_files = {t["file"] for t in record.get("tables", ())}
    manifest.files = [f for f in manifest.files if f.get("file") not in blob_files] + \
        [file_entry(bundle, name, "shared_table") for name in sorted(blob_files)]
    manifest.shared_tables = record
    write_manifest(bundle, manifest)
    load_manifest(bundle, verify=True)
    return record


# -- ONNX ----------------------------------------------------------------------------------
def _onnx_constants(path: Path, min_bytes: int):
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    constants = []
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.raw_data) < min_bytes:
            continue
        data = tensor.raw_data
        constants.append((hashlib.sha256(data).hexdigest(),
                          {"tensor": tensor.name, "onnx_type": int(tensor.data_type),
                           "shape": [int(d) for d in tensor.dims], "data": data}))
    return model, constants


def _onnx_strip(path: Path, model, mine, blobs) -> None:
    import onnx

    by_name = {use["tensor"]: key for key, use in mine}
    for tensor in model.graph.initializer:
        key = by_name.get(tensor.name)
        if key is None:
            continue
        size = len(tensor.raw_data)
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        for field, value in (("location", blobs[key]), ("offset", "0"), ("length", str(size))):
            entry = tensor.external_data.add()
            entry.key, entry.value = field, value
    atomic_write_bytes(path, model.SerializeToString())


# -- TFLite --------------------------------------------------------------------------------
def _tflite_constants(path: Path, min_bytes: int):
    from tensorflow.lite.tools import flatbuffer_utils

    flat = path.read_bytes()
    if tflite_layout(flat) is not None:
        # Already stripped: the flatbuffer object API drops buffer offsets on reading, so writing
        # this file again would lose the blobs it reads. Its remaining constants stay in it.
        return None, []
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flat))
    constants = []
    for index, buffer in enumerate(model.buffers):
        if buffer.data is None or len(buffer.data) < min_bytes:
            continue
        data = bytes(buffer.data)
        constants.append((hashlib.sha256(data).hexdigest(), {"tensor": f"buffer {index}", "data": data}))
    return model, constants


def _tflite_strip(path: Path, model, mine, blobs) -> None:
    from .passes.tflite_compact import serialize_model

    order, sizes = [], {}
    for key, use in mine:
        index = int(use["tensor"].split()[1])
        buffer = model.buffers[index]
        sizes[key] = len(buffer.data)
        buffer.data, buffer.offset, buffer.size = None, _UNSET_OFFSET, sizes[key]
        if key not in order:
            order.append(key)
    head_size = len(serialize_model(model))
    offsets, at = {}, _aligned(head_size)
    for key in order:
        offsets[key] = at
        at = _aligned(at + sizes[key])
    for key, use in mine:
        model.buffers[int(use["tensor"].split()[1])].offset = offsets[key]
    head = serialize_model(model)
    if len(head) != head_size:
        raise BundleError(expected(f"a flatbuffer of {head_size} bytes once its offsets are set", len(head)))
    layout = [{"file": blobs[key], "sha256": key, "offset": offsets[key], "size": sizes[key]} for key in order]
    atomic_write_bytes(path, head + pack_tflite_trailer(len(head), layout))


def _aligned(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


_READERS = {"onnx": _onnx_constants, "tflite": _tflite_constants}
_WRITERS = {"onnx": _onnx_strip, "tflite": _tflite_strip}
