"""Bundle archives: bounded extraction (members, bytes, sparse members), limits a caller can
raise, and no temp folder left behind when a Predictor is dropped without close()."""
from __future__ import annotations

import gc
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

import edgerec.runtime as er
from edgerec.runtime.archives import ArchiveLimits, extract_bundle, safe_extract
from edgerec.runtime.errors import BundleError
from edgerec.runtime.pack import pack_bundle

from .conftest import make_onnx_bundle, small_requests

pytest.importorskip("onnxruntime")


class _Zeros(io.RawIOBase):
    """``n`` zero bytes, produced as they are read (a big member without holding it in memory)."""

    def __init__(self, n: int):
        self.left = n

    def readable(self):
        return True

    def readinto(self, buffer):
        k = min(len(buffer), self.left)
        buffer[:k] = bytes(k)
        self.left -= k
        return k


def _archive_with(tmp_path, name: str, members: dict) -> Path:
    """A .tar.gz holding a real small bundle plus ``members`` ({name: size of zeros})."""
    folder = make_onnx_bundle(tmp_path / "src")
    path = tmp_path / name
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for file in sorted(folder.iterdir()):
            tar.add(file, arcname=file.name)
        for member, size in members.items():
            info = tarfile.TarInfo(member)
            info.size = size
            tar.addfile(info, _Zeros(size))
    return path


def test_a_real_archive_extracts_within_the_default_limits(tmp_path):
    archive = pack_bundle(make_onnx_bundle(tmp_path / "b"), "onnxruntime", tmp_path / "app.tar.gz")
    with er.load(archive, backend="onnxruntime") as predictor:
        assert predictor.predict(small_requests(2)).shape == (2,)


def test_thousands_of_members_are_refused(tmp_path):
    archive = _archive_with(tmp_path, "many.tar.gz", {f"pad/{i}.txt": 1 for i in range(5000)})
    with pytest.raises(BundleError, match="archive members"):
        extract_bundle(archive)
    directory, tmp = extract_bundle(archive, ArchiveLimits(max_members=6000))   # a caller may raise it
    shutil.rmtree(tmp)


def test_a_gzip_bomb_is_refused_before_it_is_written(tmp_path):
    archive = _archive_with(tmp_path, "bomb.tar.gz", {"weights.bin": 200 << 20})
    assert archive.stat().st_size < 1 << 20           # 200 MB of zeros compress to well under 1 MB
    dest = tmp_path / "out"
    with pytest.raises(BundleError, match="extracted bytes"):
        safe_extract(archive, dest)
    assert not (dest / "weights.bin").exists()
    with pytest.raises(BundleError, match="extracted bytes"):
        er.load(archive, backend="onnxruntime")


def test_the_byte_limit_can_be_raised_through_load(tmp_path):
    archive = _archive_with(tmp_path, "big.tar.gz", {"extra.bin": 70 << 20})
    with pytest.raises(BundleError, match="extracted bytes"):
        er.load(archive, backend="onnxruntime")
    with er.load(archive, backend="onnxruntime", archive_limits={"max_bytes": 100 << 20}) as predictor:
        assert predictor.predict(small_requests(1)).shape == (1,)


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar makes the sparse member")
def test_a_sparse_member_is_refused(tmp_path):
    folder = make_onnx_bundle(tmp_path / "src")
    with open(folder / "hole.bin", "wb") as handle:
        handle.truncate(200 << 20)
    archive = tmp_path / "sparse.tar.gz"
    subprocess.run(["tar", "--sparse", "-czf", str(archive), "-C", str(folder), "."], check=True)
    with pytest.raises(BundleError, match="regular files|extracted bytes"):
        safe_extract(archive, tmp_path / "out", ArchiveLimits(max_bytes=1 << 40))


def test_bad_limits_are_typed_errors():
    for bad in ({"max_members": 0}, {"max_bytes": -1}, {"ratio": "8"}, {"colour": 1}, 5):
        with pytest.raises(BundleError):
            ArchiveLimits.coerce(bad)


def test_a_dropped_predictor_removes_its_archive_folder(tmp_path):
    archive = pack_bundle(make_onnx_bundle(tmp_path / "b"), "onnxruntime", tmp_path / "app.tar.gz")
    predictor = er.load(archive, backend="onnxruntime", cache={"share_sessions": False})
    folder = Path(predictor._model._tmp)
    assert folder.is_dir()
    del predictor
    gc.collect()
    assert not folder.exists()
