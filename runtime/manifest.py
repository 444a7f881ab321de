"""Bundle manifest: schema, atomic write, and verification before anything is loaded.

A bundle is a directory::

    BUNDLE/manifest.json      this schema (JSON only: no pickle, no code); docs/manifest.schema.json
    BUNDLE/feature_spec.json  optional (absent for bring-your-own models)
    BUNDLE/*.tflite|*.onnx    artifacts
    BUNDLE/examples.jsonl     raw requests with the trained model's `expected` output
    BUNDLE/shared-<sha256>.bin  constants several artifacts read, stored once (`shared_tables`)
    BUNDLE/manifest.sig       optional Ed25519 signature of manifest.json (`signing`)

Every file is listed with its sha256 and size; `load_manifest(verify=True)` refuses a bundle
whose files are missing, truncated, altered, or resolve outside the bundle directory, and
`verify_files(..., keep=...)` hands back the verified bytes of the files a caller goes on to use,
so nothing is read twice by path.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .archives import (ARCHIVE_SUFFIXES, MANIFEST_NAME, ArchiveLimits, bundle_directory,  # noqa: F401  (re-exported)
                       extract_bundle, safe_extract)
from .contract import FORMATS, PARTS, PRECISIONS  # noqa: F401  (re-exported)
from .errors import BundleError, IntegrityError, expected
from .io import atomic_write_json, sha256_file, strict_json_loads
from .manifest_schema import manifest_problems
from .shared_tables import check_record

MANIFEST_SCHEMA_VERSION = 1
# manifest.json is read whole before parsing: real ones are tens of KB.
MAX_MANIFEST_BYTES = 16 << 20


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: list  # ints, None for dynamic dimensions

    @classmethod
    def from_dict(cls, data: dict) -> "TensorSpec":
        _need(data, ("name", "dtype", "shape"), "tensor spec")
        return cls(str(data["name"]), str(data["dtype"]), list(data["shape"]))


@dataclass
class Artifact:
    file: str
    format: str
    precision: str
    part: str
    sha256: str
    size_bytes: int
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    validation: dict = field(default_factory=dict)   # max_abs_diff, mean_abs_diff, auc, delta_auc, …
    lineage: list = field(default_factory=list)      # [{"pass": name, "config": {...}}, …]
    details: dict = field(default_factory=dict)      # sparsity, opset, quantization scheme, …

    def __post_init__(self):
        if self.format not in FORMATS:
            raise BundleError(expected(f"artifact format in {FORMATS}", self.format))
        if self.precision not in PRECISIONS:
            raise BundleError(expected(f"artifact precision in {PRECISIONS}", self.precision))
        if self.part not in PARTS:
            raise BundleError(expected(f"artifact part in {PARTS}", self.part))

    @classmethod
    def from_dict(cls, data: dict) -> "Artifact":
        _need(data, ("file", "format", "precision", "part", "sha256", "size_bytes"), "artifact")
        return cls(
            file=data["file"], format=data["format"], precision=data["precision"], part=data["part"],
            sha256=data["sha256"], size_bytes=int(data["size_bytes"]),
            inputs=[TensorSpec.from_dict(t) for t in data.get("inputs", [])],
            outputs=[TensorSpec.from_dict(t) for t in data.get("outputs", [])],
            validation=dict(data.get("validation", {})), lineage=list(data.get("lineage", [])),
            details=dict(data.get("details", {})),
        )


@dataclass
class Manifest:
    artifacts: list[Artifact]
    selected: dict = field(default_factory=dict)   # {backend: {part: file}}
    rejected: list = field(default_factory=list)   # [{"file": …, "reason": …}]
    files: list = field(default_factory=list)      # other files: [{"file", "sha256", "size_bytes", "role"}]
    model: dict = field(default_factory=dict)      # family, source, keras flavour, version
    feature_spec: str | None = None                # relative path, None for BYOM bundles
    lineage: dict = field(default_factory=dict)    # passes + configs + tool versions
    candidates: list = field(default_factory=list) # the full selection table
    created: str = ""
    bundle_version: int = 1
    schema_version: int = MANIFEST_SCHEMA_VERSION
    index: dict = field(default_factory=dict)            # cascade bundles: the item index
    full_catalogue: dict = field(default_factory=dict)   # cascade bundles: full-catalogue quality
    shared_tables: dict = field(default_factory=dict)    # constants stored once: who reads which blob

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("index", "full_catalogue", "shared_tables"):     # sections only some bundles have
            if not data[key]:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> "Manifest":
        """A manifest from parsed JSON; BundleError unless it matches `MANIFEST_SCHEMA` and its
        feature spec is one of the listed files."""
        if not isinstance(data, dict):
            raise BundleError(expected("manifest.json holding a JSON object", type(data).__name__))
        version = data.get("schema_version")
        if version != MANIFEST_SCHEMA_VERSION or isinstance(version, bool):
            raise BundleError(expected(f"manifest schema_version {MANIFEST_SCHEMA_VERSION}", version))
        problems = manifest_problems(data)
        if problems:
            raise BundleError("Expected a manifest matching docs/manifest.schema.json, received: "
                              + "; ".join(problems))
        spec = data.get("feature_spec")
        if spec is not None and spec not in {f["file"] for f in data.get("files", [])}:
            raise BundleError(expected(f"the feature spec {spec!r} listed with its sha256 in the manifest's files",
                                       "not listed"))
        shared = dict(data.get("shared_tables", {}))
        check_record(shared, data.get("files", []), {a["file"] for a in data["artifacts"]})
        return cls(
            artifacts=[Artifact.from_dict(a) for a in data["artifacts"]],
            selected=dict(data.get("selected", {})), rejected=list(data.get("rejected", [])),
            files=list(data.get("files", [])), model=dict(data.get("model", {})),
            feature_spec=data.get("feature_spec"), lineage=dict(data.get("lineage", {})),
            candidates=list(data.get("candidates", [])), created=str(data.get("created", "")),
            bundle_version=int(data.get("bundle_version", 1)), schema_version=version,
            index=dict(data.get("index", {})), full_catalogue=dict(data.get("full_catalogue", {})),
            shared_tables=shared,
        )

    def artifact(self, file: str) -> Artifact:
        for art in self.artifacts:
            if art.file == file:
                return art
        raise BundleError(expected(f"an artifact named {file!r} in the manifest",
                                   [a.file for a in self.artifacts]))

    def find(self, format: str | None = None, precision: str | None = None,
             part: str | None = None) -> list[Artifact]:
        return [a for a in self.artifacts if (format is None or a.format == format)
                and (precision is None or a.precision == precision) and (part is None or a.part == part)]

    def all_files(self) -> list[dict]:
        """Every file the manifest vouches for: artifacts and the other files."""
        listed = [{"file": a.file, "sha256": a.sha256, "size_bytes": a.size_bytes} for a in self.artifacts]
        return listed + [dict(f) for f in self.files]


def confined_path(bundle_dir: str | os.PathLike, relative: str) -> Path:
    """Resolve ``relative`` inside ``bundle_dir``; refuse absolute paths, ``..`` and escaping links."""
    if not isinstance(relative, str) or not relative:
        raise BundleError(expected("a relative file name in the manifest", relative))
    pure = PurePosixPath(relative)
    if pure.is_absolute() or relative.startswith(("/", "\\")) or ".." in pure.parts or ":" in relative:
        raise BundleError(expected("a path inside the bundle directory", relative))
    root = Path(bundle_dir).resolve()
    target = (root / pure).resolve()
    if root != target and root not in target.parents:
        raise BundleError(expected("a path that resolves inside the bundle directory", relative))
    return target


def file_entry(bundle_dir: str | os.PathLike, relative: str, role: str = "") -> dict:
    """A `files` entry for a file already written into the bundle."""
    path = confined_path(bundle_dir, relative)
    entry = {"file": relative, "sha256": sha256_file(path), "size_bytes": path.stat().st_size}
    if role:
        entry["role"] = role
    return entry


def listed_entry(manifest: Manifest, relative: str) -> dict:
    """The manifest's entry (sha256, size) for file ``relative``; IntegrityError when unlisted."""
    for entry in manifest.all_files():
        if entry.get("file") == relative:
            return entry
    raise IntegrityError(expected(f"{relative!r} listed with its sha256 in the manifest", "not listed"))


def verify_files(bundle_dir: str | os.PathLike, manifest: Manifest, keep=()) -> dict[str, bytes]:
    """Check every listed file exists inside the bundle with the recorded size and sha256.

    Args:
        bundle_dir: the bundle directory.
        manifest: its manifest.
        keep: files whose verified bytes are returned, so that what a caller hands on (to a
            backend, a parser) is exactly what was hashed, never a second read of the path.

    Returns:
        ``{file: bytes}`` for ``keep``.

    Raises:
        IntegrityError: a file is missing, resized, altered, unlisted (in ``keep``) or resolves
            outside the bundle.
    """
    keep = set(keep)
    unlisted = sorted(keep - {entry.get("file") for entry in manifest.all_files()})
    if unlisted:
        raise IntegrityError(expected("every file the runtime reads listed with its sha256 in the manifest",
                                      f"unlisted {unlisted}"))
    problems, kept = [], {}
    for entry in manifest.all_files():
        problem, data = _check_entry(bundle_dir, entry, entry.get("file") in keep)
        if problem:
            problems.append(problem)
        elif data is not None:
            kept[entry["file"]] = data
    if problems:
        raise IntegrityError("Bundle integrity check failed: " + "; ".join(problems))
    return kept


def read_verified(bundle_dir: str | os.PathLike, manifest: Manifest, relative: str) -> bytes:
    """The bytes of listed file ``relative``, read once and checked against its manifest entry."""
    problem, data = _check_entry(bundle_dir, listed_entry(manifest, relative), True)
    if problem:
        raise IntegrityError("Bundle integrity check failed: " + problem)
    return data


def _check_entry(bundle_dir, entry: dict, read: bool) -> tuple[str, bytes | None]:
    """("", bytes if ``read``) when the entry's file matches its size and sha256, else (problem, None)."""
    name, want_size = entry.get("file"), entry.get("size_bytes")
    try:
        path = confined_path(bundle_dir, name)
    except BundleError as err:
        return str(err), None
    if not path.is_file():
        return f"{name}: missing", None
    data = None
    try:
        if read:
            with open(path, "rb") as handle:
                data = handle.read(want_size + 1)
            size, digest = len(data), hashlib.sha256(data).hexdigest()
        else:
            size = path.stat().st_size
            digest = sha256_file(path) if size == want_size else ""
    except OSError as err:
        return f"{name}: unreadable ({err})", None
    if size != want_size:
        return f"{name}: expected {want_size} bytes, received: {size}", None
    if digest != entry.get("sha256"):
        return f"{name}: expected sha256 {entry.get('sha256')}, received: {digest}", None
    return "", data


def read_manifest(bundle_dir: str | os.PathLike) -> tuple[Manifest, bytes]:
    """Parse ``bundle_dir``/manifest.json (files not checked): the manifest and the exact bytes
    it was parsed from (what a signature covers and a bundle version is hashed from).

    The bytes are read once and bounded (`MAX_MANIFEST_BYTES`, nesting depth), duplicate keys
    are refused, and the structure must match `manifest_schema.MANIFEST_SCHEMA`; every failure
    is a BundleError.
    """
    bundle = Path(bundle_dir)
    if not bundle.is_dir():
        raise BundleError(expected("a bundle directory", str(bundle)))
    path = bundle / MANIFEST_NAME
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise BundleError(expected(f"{MANIFEST_NAME} in {bundle}", "no such file")) from None
    except OSError as err:
        raise BundleError(expected(f"a readable {MANIFEST_NAME} in {bundle}", str(err))) from None
    data = strict_json_loads(raw, str(path), error=BundleError, max_bytes=MAX_MANIFEST_BYTES)
    return Manifest.from_dict(data), raw


def load_manifest(bundle_dir: str | os.PathLike, verify: bool = True) -> Manifest:
    """`read_manifest`, then (with ``verify``) `verify_files`."""
    manifest, _ = read_manifest(bundle_dir)
    if verify:
        verify_files(bundle_dir, manifest)
    return manifest


def write_manifest(bundle_dir: str | os.PathLike, manifest: Manifest) -> Path:
    return atomic_write_json(Path(bundle_dir) / MANIFEST_NAME, manifest.to_dict())


def _need(data: Any, keys: tuple, what: str) -> None:
    if not isinstance(data, dict):
        raise BundleError(expected(f"a JSON object for the {what}", type(data).__name__))
    missing = [k for k in keys if k not in data]
    if missing:
        raise BundleError(expected(f"keys {list(keys)} in the {what}", f"missing {missing}"))
