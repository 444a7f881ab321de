"""The manifest's structure as a JSON Schema, and the runtime's own check against it.

`MANIFEST_SCHEMA` is the one definition: docs/manifest.schema.json is its JSON text (for other
runtimes and tools), and `manifest_problems` interprets it here with the small subset of JSON
Schema it uses, so the runtime needs no jsonschema package and cannot drift from the published
schema (tests/runtime/test_manifest_schema.py runs both over good and bad manifests).

One deliberate strictness: "integer" means a JSON number written as an integer (``3``, never
``3.0`` or ``3e0``), and booleans are never numbers.

Examples:
    >>> manifest_problems({"schema_version": True, "artifacts": []})
    ['schema_version: expected integer, received: True']
"""
from __future__ import annotations

import json
import re
from typing import Any

from .contract import BACKENDS, FORMATS, PARTS, PRECISIONS

SCHEMA_ID = "https://edgerec.dev/schemas/manifest-1.json"
DTYPES = ("float32", "float16", "float64", "bool", "int8", "int16", "int32", "int64",
          "uint8", "uint16", "uint32", "uint64")
MAX_FILES = 1000      # artifacts, and other files: real bundles list a few dozen
MAX_SIZE_BYTES = 1 << 40

_NAME = {"type": "string", "minLength": 1, "maxLength": 1024}
_SIZE = {"type": "integer", "minimum": 0, "maximum": MAX_SIZE_BYTES}
_SHA = {"type": "string", "pattern": "^[0-9a-f]{64}$"}

MANIFEST_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "title": "edgerec bundle manifest (manifest.json), schema_version 1",
    "description": "Lists every file of a bundle with its sha256 and size. Integers are written without "
                   "a fraction or exponent. Free-form objects (validation, details, model, lineage) "
                   "hold JSON values the runtime only reports.",
    "type": "object",
    "required": ["schema_version", "artifacts"],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"type": "integer", "const": 1},
        "artifacts": {"type": "array", "maxItems": MAX_FILES, "items": {"$ref": "#/$defs/artifact"}},
        "selected": {
            "description": "backend -> part -> artifact file",
            "type": "object", "propertyNames": {"enum": list(BACKENDS)},
            "additionalProperties": {"type": "object", "propertyNames": {"enum": list(PARTS)},
                                     "additionalProperties": {"$ref": "#/$defs/name"}}},
        "rejected": {"type": "array", "maxItems": 10 * MAX_FILES, "items": {"type": "object"}},
        "files": {"type": "array", "maxItems": MAX_FILES, "items": {"$ref": "#/$defs/file"}},
        "model": {"type": "object"},
        "feature_spec": {"description": "file name of the feature spec, listed in files; null for "
                                        "bring-your-own models", "type": ["string", "null"],
                         "minLength": 1, "maxLength": 1024},
        "lineage": {"type": "object"},
        "candidates": {"type": "array", "maxItems": 10 * MAX_FILES, "items": {"type": "object"}},
        "created": {"type": "string", "maxLength": 64},
        "bundle_version": {"type": "integer", "minimum": 0},
        "index": {"description": "the item index of a cascade bundle (kind, files, recall of the served "
                                 "index vs exact search)", "type": "object"},
        "full_catalogue": {"description": "retrieval / ranker / cascade / popularity blocks of hr@10, "
                                          "ndcg@10 and recall@100 measured through the bundle's artifacts",
                           "type": "object", "additionalProperties": {"type": "object"}},
        "shared_tables": {"description": "constants several artifacts read, each stored once as a file of "
                                         "`files` named shared-<sha256>.bin: ONNX initializers as external data, "
                                         "TFLite buffers past the flatbuffer (a trailer names each blob's offset)",
                          "type": "object", "required": ["tables"], "additionalProperties": False,
                          "properties": {
                              "min_bytes": {"type": "integer", "minimum": 1},
                              "bytes_saved": {"type": "integer"},
                              "ram": {"description": "backend -> what sharing does to runtime memory",
                                      "type": "object", "additionalProperties": {"type": "string", "maxLength": 512}},
                              "tables": {"type": "array", "maxItems": MAX_FILES,
                                         "items": {"$ref": "#/$defs/shared_table"}}}},
    },
    "$defs": {
        "name": _NAME,
        "sha256": _SHA,
        "size": _SIZE,
        "tensor": {
            "type": "object", "required": ["name", "dtype", "shape"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 256},
                "dtype": {"enum": list(DTYPES)},
                "shape": {"type": "array", "maxItems": 16,
                          "items": {"type": ["integer", "null"], "minimum": -1, "maximum": 1 << 31}},
            }},
        "artifact": {
            "type": "object", "additionalProperties": False,
            "required": ["file", "format", "precision", "part", "sha256", "size_bytes"],
            "properties": {
                "file": {"$ref": "#/$defs/name"},
                "format": {"enum": list(FORMATS)},
                "precision": {"enum": list(PRECISIONS)},
                "part": {"enum": list(PARTS)},
                "sha256": {"$ref": "#/$defs/sha256"},
                "size_bytes": {"$ref": "#/$defs/size"},
                "inputs": {"type": "array", "maxItems": 256, "items": {"$ref": "#/$defs/tensor"}},
                "outputs": {"type": "array", "maxItems": 256, "items": {"$ref": "#/$defs/tensor"}},
                "validation": {"type": "object"},
                "lineage": {"type": "array"},
                "details": {"type": "object"},
            }},
        "shared_table": {
            "type": "object", "required": ["file", "sha256", "size_bytes", "uses"], "additionalProperties": False,
            "properties": {
                "file": {"type": "string", "pattern": "^shared-[0-9a-f]{64}\\.bin$"},
                "sha256": {"$ref": "#/$defs/sha256"},
                "size_bytes": {"$ref": "#/$defs/size"},
                "uses": {"type": "array", "minItems": 1, "maxItems": 10 * MAX_FILES, "items": {
                    "type": "object", "required": ["artifact", "tensor"], "additionalProperties": False,
                    "properties": {
                        "artifact": {"$ref": "#/$defs/name"},
                        "tensor": {"description": "ONNX initializer name, or 'buffer N' of a TFLite flatbuffer",
                                   "type": "string", "minLength": 1, "maxLength": 1024},
                        "onnx_type": {"type": "integer", "minimum": 0, "maximum": 64},
                        "shape": {"type": "array", "maxItems": 16,
                                  "items": {"type": "integer", "minimum": 0, "maximum": 1 << 40}}}}}}},
        "file": {
            "type": "object", "required": ["file", "sha256", "size_bytes"], "additionalProperties": False,
            "properties": {"file": {"$ref": "#/$defs/name"}, "sha256": {"$ref": "#/$defs/sha256"},
                           "size_bytes": {"$ref": "#/$defs/size"},
                           "role": {"type": "string", "maxLength": 64}}},
    },
}


def schema_text() -> str:
    """The JSON text of docs/manifest.schema.json."""
    return json.dumps(MANIFEST_SCHEMA, indent=2) + "\n"


def manifest_problems(data: Any, limit: int = 10) -> list[str]:
    """Where ``data`` (a parsed manifest.json) departs from `MANIFEST_SCHEMA`: at most ``limit``
    lines of ``path: expected …, received: …``; empty when it conforms."""
    problems: list[str] = []
    _check(data, MANIFEST_SCHEMA, "", problems, limit)
    return problems[:limit]


_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _resolve(schema: dict) -> dict:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    return MANIFEST_SCHEMA["$defs"][ref.rsplit("/", 1)[-1]]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check(value: Any, schema: Any, path: str, problems: list, limit: int) -> None:
    if len(problems) >= limit:
        return
    where = path or "manifest"
    if schema is False:
        problems.append(f"{where}: expected no such key, received: {_short(value)}")
        return
    if schema is True:
        return
    schema = _resolve(schema)
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_TYPES[name](value) for name in names):
            problems.append(f"{where}: expected {' or '.join(names)}, received: {_short(value)}")
            return
    if "const" in schema and not _same(value, schema["const"]):
        problems.append(f"{where}: expected {schema['const']!r}, received: {_short(value)}")
        return
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
        problems.append(f"{where}: expected one of {schema['enum']}, received: {_short(value)}")
        return
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{where}: expected at least {schema['minimum']}, received: {_short(value)}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{where}: expected at most {schema['maximum']}, received: {_short(value)}")
    elif isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            problems.append(f"{where}: expected at least {schema['minLength']} characters, received: {_short(value)}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"{where}: expected at most {schema['maxLength']} characters, received: {len(value)}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{where}: expected a string matching {schema['pattern']}, received: {_short(value)}")
    elif isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problems.append(f"{where}: expected at most {schema['maxItems']} items, received: {len(value)}")
            return
        if len(value) < schema.get("minItems", 0):
            problems.append(f"{where}: expected at least {schema['minItems']} items, received: {len(value)}")
        if "items" in schema:
            for i, item in enumerate(value):
                _check(item, schema["items"], f"{path}[{i}]", problems, limit)
    elif isinstance(value, dict):
        missing = [key for key in schema.get("required", ()) if key not in value]
        if missing:
            problems.append(f"{where}: expected keys {missing}, received: keys {sorted(value)[:12]}")
        properties = schema.get("properties", {})
        names = schema.get("propertyNames")
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            if names is not None:
                _check(key, names, f"{where} key", problems, limit)
            if key in properties:
                _check(item, properties[key], here, problems, limit)
            elif "additionalProperties" in schema:
                _check(item, schema["additionalProperties"], here, problems, limit)


def _same(value: Any, option: Any) -> bool:
    """JSON equality: booleans are not the numbers 0/1."""
    if isinstance(value, bool) or isinstance(option, bool):
        return isinstance(value, bool) and isinstance(option, bool) and value == option
    return type(value) is type(option) and value == option if isinstance(option, str) else value == option
