"""Atomic file and folder writes, hashing, and bounded strict JSON parsing.

A crash mid-write never leaves a half-written file behind, and a folder is replaced without a
moment where readers find it missing (`replace_folder`).
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import EdgeRecError, expected

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
# JSON nesting deeper than this is refused before parsing (the parser recurses once per level);
# edgerec's manifests nest about 8 deep.
MAX_JSON_DEPTH = 64
# a version the link stopped pointing at is kept this long after its successor arrived: a reader
# that had resolved the link may still be opening files inside it (a plain open() of
# TARGET/manifest.json resolves the link, then the file: a reader descheduled between the two for
# three quick swaps found the file gone, with the two newest old versions kept and no grace)
RETIRED_GRACE_S = 10.0
# ...and no more than this many old versions are kept, however quick the swaps (disk)
MAX_OLD_VERSIONS = 16
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# 0o666 minus the umask (what a plain open() creates); read once at import, as os.umask is process-wide.
_FILE_MODE = 0o666 & ~_read_umask()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: str | os.PathLike) -> None:
    """Make renames inside folder ``path`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temp file in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)   # mkstemp creates 0600; bundles are read by other users
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    return atomic_write_bytes(dst, Path(src).read_bytes())


@contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """``with atomic_output("plot.png", ".png") as tmp: figure.savefig(tmp)``: whatever is written
    to ``tmp`` replaces ``path`` in one rename when the block succeeds (and is removed if it fails).
    ``suffix`` keeps writers that pick the format from the extension working."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{suffix}"
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_archive(folder: str | os.PathLike, archive: str | os.PathLike) -> Path:
    """A .tar.gz (or .tar) of ``folder``'s files, written atomically (`atomic_output`); members are
    relative paths with no owner names, in sorted order."""
    folder, archive = Path(folder), Path(archive)
    mode = "w" if archive.name.endswith(".tar") else "w:gz"
    with atomic_output(archive) as tmp:
        with tarfile.open(tmp, mode) as tar:
            for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
                info = tar.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
    return archive


# -- replacing a folder without a window -------------------------------------------------------
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange_paths(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE). False where the
    platform, libc or file system cannot; the paths are then untouched."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    done = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return done == 0


def versions_dir(target: str | os.PathLike) -> Path:
    """Where `replace_folder` keeps the versions of a symlinked ``target``: ``TARGET.versions/``."""
    target = Path(target)
    return target.parent / f"{target.name}.versions"


def replace_folder(staged: str | os.PathLike, target: str | os.PathLike, keep_versions: int = 2) -> Path:
    """Put the complete folder ``staged`` at ``target`` so a reader always finds either the old
    or the new folder, never neither.

    - ``target`` absent: one rename.
    - ``target`` a symlink (the versioned layout: ``TARGET -> TARGET.versions/<id>``): ``staged``
      becomes a new version and the link is flipped with one rename of a temp link over it; the
      older versions beyond the newest ``keep_versions`` are removed once retired for
      `RETIRED_GRACE_S` (a reader that had resolved the link finishes its read), and beyond
      `MAX_OLD_VERSIONS` at once.
    - ``target`` a folder: exchanged with ``staged`` in one atomic rename (Linux), then the old
      folder is removed. Elsewhere it is converted to the versioned layout, the one time a
      reader can find it missing.

    The parent folder is fsynced after the renames. ``staged`` must sit in ``target``'s folder
    (renames do not cross file systems).
    """
    staged, target = Path(staged), Path(target)
    parent = target.parent
    if target.is_symlink():
        _flip_link(staged, target, keep_versions)
    elif not target.exists():
        os.replace(staged, target)
    elif target.is_dir() and exchange_paths(staged, target):
        shutil.rmtree(staged, ignore_errors=True)     # now holds the old folder
    elif target.is_dir():
        logger.warning("atomic exchange unavailable here: moving %s to the versioned symlink layout", target)
        old = parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
        try:
            _flip_link(staged, target, keep_versions)
        except BaseException:
            os.replace(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        raise EdgeRecError(expected(f"a folder, a symlink or nothing at {target}", "a file"))
    fsync_dir(parent)
    return target


def _flip_link(staged: Path, target: Path, keep_versions: int) -> None:
    versions = versions_dir(target)
    versions.mkdir(exist_ok=True)
    version = f"{uuid.uuid1().int >> 64:016x}-{uuid.uuid4().hex[:6]}"   # sortable by time
    os.replace(staged, versions / version)
    fsync_dir(versions)
    link = target.parent / f".{target.name}.link-{uuid.uuid4().hex[:8]}"
    os.symlink(os.path.join(versions.name, version), link)
    try:
        os.replace(link, target)
    except BaseException:
        os.unlink(link)
        raise
    current = Path(os.readlink(target)).name
    ordered = sorted(versions.iterdir(), key=lambda p: (p.name == current, p.stat().st_mtime))
    now = time.time()
    old = ordered[:-1]
    for position, stale in enumerate(old[:max(0, len(old) - keep_versions)]):
        retired = ordered[position + 1].stat().st_mtime       # when its successor arrived
        if now - retired >= RETIRED_GRACE_S or len(old) - position > MAX_OLD_VERSIONS:
            shutil.rmtree(stale, ignore_errors=True)


# -- strict JSON ---------------------------------------------------------------------------------
def json_depth(text: str) -> int:
    """The deepest nesting of arrays/objects in JSON ``text`` (brackets inside strings ignored)."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(_STRINGS.sub("", text)):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _unique_keys(pairs: list) -> dict:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen, dupes = set(), []
        for key, _ in pairs:
            if key in seen:
                dupes.append(key)
            seen.add(key)
        raise ValueError(f"duplicate keys {sorted(set(dupes))[:5]}")
    return data


def strict_json_loads(data: bytes | str, what: str, error: type = EdgeRecError, max_bytes: int | None = None,
                      max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON that came from outside: bounded in size and nesting depth (checked before
    parsing), UTF-8, duplicate object keys refused. Every failure is ``error`` naming ``what``.

    Args:
        data: the JSON text or its UTF-8 bytes.
        what: what the text is, for messages ("manifest.json").
        error: the EdgeRecError subclass to raise.
        max_bytes: refuse longer input (None: no limit).
        max_depth: refuse deeper nesting.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise error(expected(f"{what} of at most {max_bytes} bytes", f"{len(data)} bytes"))
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as err:
            raise error(expected(f"UTF-8 text in {what}", str(err))) from None
    depth = json_depth(data)
    if depth > max_depth:
        raise error(expected(f"JSON nested at most {max_depth} deep in {what}", f"{depth} levels"))
    try:
        return json.loads(data, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as err:    # JSONDecodeError, duplicates, over-long ints
        raise error(expected(f"valid JSON in {what}", str(err)[:300])) from None
