"""Bundle archives (.tar / .tar.gz): bounded, confined extraction into a temp folder.

An archive is untrusted until its manifest verifies, so extraction refuses what no bundle holds:
links, devices, sparse members, paths outside the folder, more members than `ArchiveLimits`
allows, or more bytes than a few times the archive's own size (with a floor), checked from the
member headers as they are read, before anything is written.

Examples:
    >>> with bundle_directory("app.tar.gz") as folder:                          # doctest: +SKIP
    ...     manifest = load_manifest(folder)
    >>> extract_bundle("big.tar.gz", ArchiveLimits(max_bytes=4 << 30))          # doctest: +SKIP
"""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath

from .errors import BundleError, expected

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MANIFEST_NAME = "manifest.json"   # the bundle layout is described in `manifest`


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on what extracting a bundle archive may write.

    Args:
        max_members: files and folders in the archive (real bundles hold a few dozen).
        max_bytes: total extracted bytes; None: ``ratio`` times the archive's size, at least
            ``floor_bytes`` (model weights compress little, so real bundles stay well inside).
        ratio: see ``max_bytes``.
        floor_bytes: see ``max_bytes``.
    """

    max_members: int = 256
    max_bytes: int | None = None
    ratio: float = 8.0
    floor_bytes: int = 64 << 20

    def __post_init__(self):
        for name in ("max_members", "floor_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BundleError(expected(f"ArchiveLimits.{name} as a positive int", value))
        if self.max_bytes is not None and (isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int)
                                           or self.max_bytes < 1):
            raise BundleError(expected("ArchiveLimits.max_bytes as a positive int or None", self.max_bytes))
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not self.ratio > 0:
            raise BundleError(expected("ArchiveLimits.ratio as a positive number", self.ratio))

    @classmethod
    def coerce(cls, value) -> "ArchiveLimits":
        """None -> defaults; an ArchiveLimits; or a dict of its fields."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise BundleError(expected(f"archive limit keys among {sorted(known)}", unknown))
            return cls(**value)
        raise BundleError(expected("archive_limits as None, a dict or an ArchiveLimits", type(value).__name__))

    def byte_budget(self, archive_bytes: int) -> int:
        if self.max_bytes is not None:
            return self.max_bytes
        return max(self.floor_bytes, int(self.ratio * archive_bytes))


def is_archive(path) -> bool:
    return Path(path).is_file() and Path(path).name.endswith(ARCHIVE_SUFFIXES)


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike,
                 limits: ArchiveLimits | dict | None = None) -> Path:
    """Extract a bundle archive into ``dest`` within ``limits`` (`ArchiveLimits`), refusing
    absolute, ``..``, link, device and sparse members; every refusal is a BundleError."""
    limits = ArchiveLimits.coerce(limits)
    dest = Path(dest)
    try:
        budget = limits.byte_budget(os.stat(archive).st_size)
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as err:
        raise BundleError(expected("a readable .tar or .tar.gz bundle archive", str(err))) from None
    with tar:
        members, total = [], 0
        try:
            for member in tar:      # headers are read lazily: stop at the first one over a limit
                if len(members) >= limits.max_members:
                    raise BundleError(expected(f"at most {limits.max_members} archive members "
                                               "(raise ArchiveLimits.max_members)", "more"))
                name = member.name
                if not (member.isfile() or member.isdir()) or member.issparse():
                    raise BundleError(expected("only regular files and folders in the archive", name))
                if name.startswith(("/", "\\")) or ".." in PurePosixPath(name).parts or ":" in name:
                    raise BundleError(expected("archive member paths inside the bundle", name))
                total += member.size
                if total > budget:
                    raise BundleError(expected(f"at most {budget} extracted bytes (raise ArchiveLimits.max_bytes)",
                                               f"more, at member {name!r}"))
                members.append(member)
        except (tarfile.TarError, OSError, EOFError) as err:   # truncated or corrupt stream
            raise BundleError(expected("a readable .tar or .tar.gz bundle archive", str(err))) from None
        dest.mkdir(parents=True, exist_ok=True)
        try:
            tar.extractall(dest, members=members, filter="data")
        except (tarfile.TarError, OSError, EOFError) as err:
            raise BundleError(expected("an archive that extracts cleanly", str(err))) from None
    return dest


def extract_bundle(bundle_path, limits: ArchiveLimits | dict | None = None) -> tuple[Path, str | None]:
    """A bundle's directory: the path itself, or for a .tar/.tar.gz archive the folder holding its
    manifest inside a new temp folder, returned second so the caller removes it (else None)."""
    if not isinstance(bundle_path, (str, os.PathLike)):
        raise BundleError(expected("a bundle directory or .tar.gz path", type(bundle_path).__name__))
    path = Path(bundle_path)
    if is_archive(path):
        tmp = tempfile.mkdtemp(prefix="edgerec-bundle-")
        try:
            safe_extract(path, tmp, limits)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        inner = [p for p in Path(tmp).iterdir() if p.is_dir()]
        return (Path(tmp) if (Path(tmp) / MANIFEST_NAME).is_file() or len(inner) != 1 else inner[0]), tmp
    if not path.exists():
        raise BundleError(expected("an existing bundle directory or .tar.gz", str(bundle_path)))
    return path, None


@contextmanager
def bundle_directory(bundle_path, limits: ArchiveLimits | dict | None = None):
    """``with bundle_directory("bundle.tar.gz") as directory:`` -- archives are extracted into a
    temp folder removed on exit; a directory is used as it is."""
    directory, tmp = extract_bundle(bundle_path, limits)
    try:
        yield directory
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
