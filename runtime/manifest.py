"""Bundle manifest: schema, atomic write, and verification before anything is loaded.

A bundle is a directory::

    BUNDLE/manifest.json      this schema (JSON only: no pickle, no code)
    BUNDLE/feature_spec.json  optional (absent for bring-your-own models)
    BUNDLE/*.tflite|*.onnx    artifacts
    BUNDLE/examples.jsonl     raw requests with the trained model's `expected` output

Every file is listed with its sha256 and size; `load_manifest(verify=True)` refuses a bundle
whose files are missing, truncated, altered, or resolve outside the bundle directory.
"""
from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .contract import FORMATS, PARTS, PRECISIONS  # noqa: F401  (re-exported)
from .errors import BundleError, IntegrityError, expected
from .io import atomic_write_json, sha256_file

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "Manifest":
        if not isinstance(data, dict):
            raise BundleError(expected("manifest.json holding a JSON object", type(data).__name__))
        version = data.get("schema_version")
        if version != MANIFEST_SCHEMA_VERSION:
            raise BundleError(expected(f"manifest schema_version {MANIFEST_SCHEMA_VERSION}", version))
        _need(data, ("artifacts",), "manifest")
        return cls(
            artifacts=[Artifact.from_dict(a) for a in data["artifacts"]],
            selected=dict(data.get("selected", {})), rejected=list(data.get("rejected", [])),
            files=list(data.get("files", [])), model=dict(data.get("model", {})),
            feature_spec=data.get("feature_spec"), lineage=dict(data.get("lineage", {})),
            candidates=list(data.get("candidates", [])), created=str(data.get("created", "")),
            bundle_version=int(data.get("bundle_version", 1)), schema_version=version,
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


def verify_files(bundle_dir: str | os.PathLike, manifest: Manifest) -> None:
    """Check every listed file exists inside the bundle with the recorded size and sha256."""
    problems = []
    for entry in manifest.all_files():
        try:
            path = confined_path(bundle_dir, entry.get("file"))
        except BundleError as err:
            problems.append(str(err))
            continue
        if not path.is_file():
            problems.append(f"{entry['file']}: missing")
            continue
        size = path.stat().st_size
        if size != int(entry.get("size_bytes", -1)):
            problems.append(f"{entry['file']}: expected {entry.get('size_bytes')} bytes, received: {size}")
            continue
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            problems.append(f"{entry['file']}: expected sha256 {entry.get('sha256')}, received: {digest}")
    if problems:
        raise IntegrityError("Bundle integrity check failed: " + "; ".join(problems))


def load_manifest(bundle_dir: str | os.PathLike, verify: bool = True) -> Manifest:
    bundle = Path(bundle_dir)
    if not bundle.is_dir():
        raise BundleError(expected("a bundle directory", str(bundle)))
    path = bundle / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(expected(f"{MANIFEST_NAME} in {bundle}", "no such file"))
    try:
        data = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(expected(f"valid JSON in {path}", str(err))) from None
    try:
        manifest = Manifest.from_dict(data)
    except (TypeError, ValueError, KeyError) as err:
        raise BundleError(expected("a well-formed manifest", str(err))) from None
    if manifest.feature_spec is not None:
        confined_path(bundle, manifest.feature_spec)
    if verify:
        verify_files(bundle, manifest)
    return manifest


def write_manifest(bundle_dir: str | os.PathLike, manifest: Manifest) -> Path:
    return atomic_write_json(Path(bundle_dir) / MANIFEST_NAME, manifest.to_dict())


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a bundle archive (.tar/.tar.gz), refusing absolute, ``..``, link and device members."""
    dest = Path(dest)
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as err:
        raise BundleError(expected("a readable .tar or .tar.gz bundle archive", str(err))) from None
    with tar:
        members = tar.getmembers()
        for member in members:
            name = member.name
            if not (member.isfile() or member.isdir()):
                raise BundleError(expected("only regular files and folders in the archive", name))
            if name.startswith(("/", "\\")) or ".." in PurePosixPath(name).parts or ":" in name:
                raise BundleError(expected("archive member paths inside the bundle", name))
        dest.mkdir(parents=True, exist_ok=True)
        tar.extractall(dest, members=members, filter="data")
    return dest


def extract_bundle(bundle_path) -> tuple[Path, str | None]:
    """A bundle's directory: the path itself, or for a .tar/.tar.gz archive the folder holding its
    manifest inside a new temp folder, returned second so the caller removes it (else None)."""
    if not isinstance(bundle_path, (str, os.PathLike)):
        raise BundleError(expected("a bundle directory or .tar.gz path", type(bundle_path).__name__))
    path = Path(bundle_path)
    if path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES):
        tmp = tempfile.mkdtemp(prefix="edgerec-bundle-")
        try:
            safe_extract(path, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        inner = [p for p in Path(tmp).iterdir() if p.is_dir()]
        return (Path(tmp) if (Path(tmp) / MANIFEST_NAME).is_file() or len(inner) != 1 else inner[0]), tmp
    if not path.exists():
        raise BundleError(expected("an existing bundle directory or .tar.gz", str(bundle_path)))
    return path, None


@contextmanager
def bundle_directory(bundle_path):
    """``with bundle_directory("bundle.tar.gz") as directory:`` -- archives are extracted into a
    temp folder removed on exit; a directory is used as it is."""
    directory, tmp = extract_bundle(bundle_path)
    try:
        yield directory
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _need(data: Any, keys: tuple, what: str) -> None:
    if not isinstance(data, dict):
        raise BundleError(expected(f"a JSON object for the {what}", type(data).__name__))
    missing = [k for k in keys if k not in data]
    if missing:
        raise BundleError(expected(f"keys {list(keys)} in the {what}", f"missing {missing}"))
