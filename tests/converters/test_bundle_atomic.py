"""Replacing a bundle folder never leaves a moment where readers find it missing
(`edgerec.runtime.io.replace_folder`, used by the bundle writer and `edgerec pack`)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import edgerec.runtime.io as io_module
from edgerec.runtime.io import replace_folder, versions_dir

ROUNDS = 150


def _stage(parent: Path, i: int) -> Path:
    staged = parent / f".stage-{i}"
    staged.mkdir()
    (staged / "manifest.json").write_text(json.dumps({"round": i}))
    (staged / "model.bin").write_bytes(os.urandom(64))
    return staged


_READER = """
import json, os, sys, time
target, stop = sys.argv[1], sys.argv[2]
seen = {"reads": 0, "missing": 0, "torn": 0}
print("ready", flush=True)
while not os.path.exists(stop):
    try:
        with open(os.path.join(target, "manifest.json")) as handle:
            json.loads(handle.read())
        seen["reads"] += 1
    except FileNotFoundError:
        seen["missing"] += 1
    except ValueError:
        seen["torn"] += 1
print(json.dumps(seen), flush=True)
"""


class Reader:
    """Another process polling TARGET/manifest.json (as an app would), counting misses."""

    def __init__(self, target: Path):
        self.stop = target.parent / "stop-reader"
        self.proc = subprocess.Popen([sys.executable, "-c", _READER, str(target), str(self.stop)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def finish(self) -> dict:
        self.stop.touch()
        out, _ = self.proc.communicate(timeout=60)
        self.stop.unlink()
        return json.loads(out)


def _replace_while_polling(target: Path, rounds: int = ROUNDS, replace=replace_folder) -> dict:
    reader = Reader(target)
    try:
        for i in range(rounds):
            replace(_stage(target.parent, i), target)
    finally:
        seen = reader.finish()
    return seen


@pytest.mark.parametrize("layout", ["folder", "symlink", "no_exchange"])
def test_a_reader_never_finds_the_manifest_missing(tmp_path, monkeypatch, layout):
    target = tmp_path / "bundle"
    if layout == "symlink":
        versions = versions_dir(target)
        versions.mkdir()
        replace_folder(_stage(tmp_path, -1), versions / "first")
        target.symlink_to(Path(versions.name) / "first")
    else:
        replace_folder(_stage(tmp_path, -1), target)
    if layout == "no_exchange":           # platforms without renameat2: converted once, then flipped
        monkeypatch.setattr(io_module, "exchange_paths", lambda a, b: False)
        replace_folder(_stage(tmp_path, -2), target)
        assert target.is_symlink()
    elif layout == "folder" and not io_module.exchange_paths(tmp_path, tmp_path):
        pytest.skip("no atomic exchange on this file system")
    seen = _replace_while_polling(target)
    assert seen["missing"] == 0 and seen["torn"] == 0
    assert seen["reads"] > 0
    assert json.loads((target / "manifest.json").read_text()) == {"round": ROUNDS - 1}
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    if target.is_symlink():      # quick swaps: the retired versions are kept, up to the cap
        assert len(list(versions_dir(target).iterdir())) <= 1 + io_module.MAX_OLD_VERSIONS


def test_retired_versions_go_after_their_grace_and_the_newest_two_stay(tmp_path):
    target = tmp_path / "bundle"
    versions = versions_dir(target)
    versions.mkdir()
    replace_folder(_stage(tmp_path, -1), versions / "first")
    target.symlink_to(Path(versions.name) / "first")
    for i in range(4):
        replace_folder(_stage(tmp_path, i), target)
    assert len(list(versions.iterdir())) == 5              # all retired within the grace: kept
    old = time.time() - 2 * io_module.RETIRED_GRACE_S
    for version in versions.iterdir():                      # as if those swaps were long ago, in order
        made = old + json.loads((version / "manifest.json").read_text())["round"]
        os.utime(version, (made, made))
    replace_folder(_stage(tmp_path, 9), target)
    names = sorted(versions.iterdir(), key=lambda p: p.stat().st_mtime)
    # the newest old one retired just now (its successor is the new version): kept with the one before
    assert len(names) == 3 and json.loads((target / "manifest.json").read_text()) == {"round": 9}
    assert [json.loads((p / "manifest.json").read_text())["round"] for p in names] == [2, 3, 9]


def test_the_old_two_rename_replace_has_the_window_this_closes(tmp_path):
    """The defect itself, measured the same way (so the test above can fail). The window between
    the two renames is microseconds here; a short sleep stands in for a loaded machine."""
    def two_renames(staged, target):
        old = target.parent / f".old-{staged.name}"
        os.replace(target, old)
        time.sleep(0.002)
        os.replace(staged, target)
        shutil.rmtree(old)

    target = tmp_path / "bundle"
    replace_folder(_stage(tmp_path, -1), target)
    assert _replace_while_polling(target, replace=two_renames)["missing"] > 0


def test_pack_replaces_an_app_bundle_without_a_window(tmp_path):
    pytest.importorskip("onnx")
    from edgerec.runtime.pack import pack_bundle

    from tests.runtime.conftest import make_onnx_bundle

    source = make_onnx_bundle(tmp_path / "src")
    out = tmp_path / "app"
    pack_bundle(source, "onnxruntime", out)
    reader = Reader(out)
    try:
        for _ in range(20):
            pack_bundle(source, "onnxruntime", out)
    finally:
        seen = reader.finish()
    assert seen["missing"] == 0 and seen["reads"] > 0
