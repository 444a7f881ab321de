"""Shared tables: constants several artifacts hold are stored once per bundle; every part gives the
same outputs on both backends (loaded from verified bytes or by path), the bundle shrinks by the
copies it no longer holds, and a tampered or missing blob is a typed error."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgerec.runtime.backends.registry import create_backend
from edgerec.runtime.errors import BundleError, IntegrityError
from edgerec.runtime.loaded import LoadedBundle
from edgerec.runtime.manifest import MANIFEST_NAME, load_manifest, read_manifest
from edgerec.runtime.shared_tables import SharedTables, artifact_size, read_blob, tflite_layout, whole_tflite

from .conftest import make_requests

pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")
shared_tables = pytest.importorskip("edgerec.converters.shared_tables")

# The test bundle's tables are a few hundred bytes; real ones start at 64 KB.
MIN_BYTES = 256


@pytest.fixture(scope="module")
def pair(bundle, tmp_path_factory) -> tuple[Path, Path]:
    """(the bundle as built, a copy whose repeated constants are shared)."""
    shared = Path(shutil.copytree(bundle, tmp_path_factory.mktemp("shared") / "b"))
    shared_tables.share_bundle(shared, min_bytes=MIN_BYTES)
    return bundle, shared


def _feeds(model: LoadedBundle, part: str, arrays: dict) -> dict:
    feeds = {t.name: arrays[t.name] for t in model.parts[part].inputs if t.name in arrays}
    if part == "scorer":
        feeds.update(model.run("user_encoder", {"hist_items": arrays["hist_items"]}))
    return feeds


@pytest.mark.parametrize("backend", ["onnxruntime", "litert"])
@pytest.mark.parametrize("share_sessions", [False, True])
def test_every_part_gives_identical_outputs_after_sharing(pair, backend, share_sessions):
    whole, shared = pair
    before = LoadedBundle.open(whole, backend, share_sessions=False)
    after = LoadedBundle.open(shared, backend, share_sessions=share_sessions)
    try:
        arrays = before.preprocessor.encode_requests(make_requests(16))
        assert set(after.parts) == {"fused", "user_encoder", "scorer"}
        for part in before.parts:
            feeds = _feeds(before, part, arrays)
            want, got = before.run(part, feeds), after.run(part, feeds)
            assert want.keys() == got.keys()
            for name in want:
                np.testing.assert_array_equal(got[name], want[name], err_msg=f"{backend} {part} {name}")
    finally:
        before.close()
        after.close()


def test_the_record_lists_each_blob_once_with_every_use(pair):
    _, shared = pair
    manifest = load_manifest(shared, verify=True)
    record = manifest.shared_tables
    assert record["min_bytes"] == MIN_BYTES and record["tables"]
    listed = {f["file"]: f for f in manifest.files}
    artifacts = {a.file: a for a in manifest.artifacts}
    formats = set()
    for table in record["tables"]:
        assert listed[table["file"]]["sha256"] == table["sha256"]
        assert listed[table["file"]]["role"] == "shared_table"
        assert (shared / table["file"]).stat().st_size == table["size_bytes"] >= MIN_BYTES
        assert len(table["uses"]) >= 2
        formats |= {artifacts[u["artifact"]].format for u in table["uses"]}
    assert formats == {"onnx", "tflite"}
    assert set(record["ram"]) == {"onnxruntime", "litert"}


def test_bundle_bytes_drop_by_the_copies_no_longer_stored(pair):
    whole, shared = pair
    record = load_manifest(shared).shared_tables
    copies = sum((len(t["uses"]) - 1) * t["size_bytes"] for t in record["tables"])

    def artifact_bytes(folder):
        return sum(a.size_bytes for a in load_manifest(folder).artifacts)

    blobs = sum(t["size_bytes"] for t in record["tables"])
    drop = artifact_bytes(whole) - artifact_bytes(shared) - blobs
    assert drop == record["bytes_saved"]
    before, after = load_manifest(whole), load_manifest(shared)
    for art in after.artifacts:     # as one file each, an artifact is about its old size again
        assert 0 <= artifact_size(after, art.file) - before.artifact(art.file).size_bytes <= 1024, art.file
    # each stripped constant leaves a reference behind (external-data entry, trailer line)
    uses = sum(len(t["uses"]) for t in record["tables"])
    assert copies - 200 * uses <= drop <= copies


@pytest.mark.parametrize("fmt,backend", [("onnx", "onnxruntime"), ("tflite", "litert")])
def test_an_artifact_loaded_by_path_reads_its_blobs_from_beside_it(pair, fmt, backend):
    whole, shared = pair
    rows = {"hist_items": np.array([[1, 2, 3, 0, 0]], np.int32)}
    with create_backend(backend, whole / f"user_encoder.{fmt}") as want, \
            create_backend(backend, shared / f"user_encoder.{fmt}") as got:
        np.testing.assert_array_equal(got.run(rows)["user_state"], want.run(rows)["user_state"])
    assert (shared / f"user_encoder.{fmt}").stat().st_size < (whole / f"user_encoder.{fmt}").stat().st_size


def test_a_stripped_tflite_names_its_blobs_in_a_trailer(pair):
    _, shared = pair
    layout = tflite_layout((shared / "fused.tflite").read_bytes())
    assert layout is not None and layout["blobs"]
    assert tflite_layout((pair[0] / "fused.tflite").read_bytes()) is None
    for name, offset, size in layout["blobs"]:
        assert offset >= layout["head_bytes"] and offset % 64 == 0
        assert len(read_blob(shared, name)) == size


def test_whole_tflite_gives_a_raw_interpreter_the_spliced_model(pair):
    from ai_edge_litert.interpreter import Interpreter

    whole, shared = pair
    original = (whole / "user_encoder.tflite").read_bytes()
    assert whole_tflite(original) is original
    rows = {"hist_items": np.array([[4, 2, 3, 0, 0]], np.int32)}
    outputs = []
    for content in (original, whole_tflite((shared / "user_encoder.tflite").read_bytes(), None, shared)):
        runner = Interpreter(model_content=content).get_signature_runner()
        outputs.append(runner(**rows)["user_state"])
    np.testing.assert_array_equal(outputs[1], outputs[0])


def test_onnx_sessions_share_one_value_per_table(pair):
    import onnxruntime as ort

    _, shared = pair
    manifest = load_manifest(shared)
    files = SharedTables.files_for(manifest, [a.file for a in manifest.artifacts])
    tables = SharedTables.from_manifest(manifest, {f: read_blob(shared, f) for f in files})
    fused = {id(value) for _, value in tables.ort_initializers("fused.onnx", ort)}
    scorer = {id(value) for _, value in tables.ort_initializers("scorer.onnx", ort)}
    assert fused & scorer, "the fused model and the scorer read one OrtValue for a table they share"


def assert_same_scores(reference, candidate, backend: str) -> None:
    """Both bundles (folders or archives) score the same 8 requests identically on ``backend``."""
    a, b = (LoadedBundle.open(reference, backend, share_sessions=False),
            LoadedBundle.open(candidate, backend, share_sessions=False))
    try:
        arrays = a.preprocessor.encode_requests(make_requests(8))
        np.testing.assert_array_equal(b.score_rows(arrays), a.score_rows(arrays))
    finally:
        a.close()
        b.close()


def _tamper(folder: Path) -> str:
    table = load_manifest(folder).shared_tables["tables"][0]
    path = folder / table["file"]
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    return table["file"]


def test_a_tampered_blob_is_refused(pair, tmp_path):
    folder = Path(shutil.copytree(pair[1], tmp_path / "b"))
    name = _tamper(folder)
    with pytest.raises(IntegrityError, match=name):
        load_manifest(folder, verify=True)
    for backend in ("onnxruntime", "litert"):
        with pytest.raises(BundleError, match=name):
            LoadedBundle.open(folder, backend, share_sessions=False)
    users = [u["artifact"] for u in load_manifest(folder, verify=False).shared_tables["tables"][0]["uses"]]
    with pytest.raises(IntegrityError, match="sha256"):    # by path too: the name is the content's sha256
        create_backend({"onnx": "onnxruntime", "tflite": "litert"}[Path(users[0]).suffix[1:]], folder / users[0])


@pytest.mark.parametrize("fmt,backend", [("onnx", "onnxruntime"), ("tflite", "litert")])
def test_a_missing_blob_is_a_typed_error(pair, tmp_path, fmt, backend):
    folder = Path(shutil.copytree(pair[1], tmp_path / "b"))
    table, user = next((t, u["artifact"]) for t in load_manifest(folder).shared_tables["tables"]
                       for u in t["uses"] if u["artifact"].endswith(f".{fmt}"))
    (folder / table["file"]).unlink()
    with pytest.raises(IntegrityError, match=f"{table['file']}: missing"):
        LoadedBundle.open(folder, backend, share_sessions=False)
    with pytest.raises(BundleError, match=f"shared table {table['file']} beside the artifact"):
        create_backend(backend, folder / user)


def test_a_record_naming_an_unlisted_blob_is_refused(pair, tmp_path):
    folder = Path(shutil.copytree(pair[1], tmp_path / "b"))
    data = json.loads((folder / MANIFEST_NAME).read_text())
    data["files"] = [f for f in data["files"] if f.get("role") != "shared_table"]
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="listed in files"):
        read_manifest(folder)


def test_a_bundle_without_the_record_loads_as_before(bundle):
    manifest, raw = read_manifest(bundle)
    assert manifest.shared_tables == {} and b"shared_tables" not in raw
    assert "shared_tables" not in manifest.to_dict()


@pytest.mark.parametrize("backend", ["litert", "onnxruntime"])
def test_pack_keeps_only_the_blobs_its_artifacts_read(pair, tmp_path, backend):
    from edgerec.runtime.pack import pack_bundle

    whole, shared = pair
    out = pack_bundle(shared, backend, tmp_path / "app")
    manifest = load_manifest(out, verify=True)
    kept = {a.file for a in manifest.artifacts}
    for table in manifest.shared_tables["tables"]:
        assert {u["artifact"] for u in table["uses"]} <= kept
    blobs = {f["file"] for f in manifest.files if f.get("role") == "shared_table"}
    assert blobs == {t["file"] for t in manifest.shared_tables["tables"]} == {p.name for p in out.glob("shared-*")}
    assert_same_scores(whole, out, backend)


def test_an_archive_of_a_shared_bundle_loads(pair, tmp_path):
    from edgerec.runtime.io import write_archive

    whole, shared = pair
    archive = write_archive(shared, tmp_path / "b.tar.gz")
    assert_same_scores(whole, archive, "litert")


def test_an_artifact_added_to_a_shared_bundle_is_stripped_to_the_blobs_it_repeats(pair, tmp_path):
    import dataclasses

    from edgerec.runtime.io import sha256_file
    from edgerec.runtime.manifest import write_manifest

    whole, shared = pair
    folder = Path(shutil.copytree(shared, tmp_path / "b"))
    before = load_manifest(folder).shared_tables
    assert shared_tables.share_bundle(folder, min_bytes=MIN_BYTES)["tables"] == before["tables"]   # idempotent
    added = folder / "user_encoder_copy.onnx"
    shutil.copyfile(whole / "user_encoder.onnx", added)
    manifest = load_manifest(folder)
    manifest.artifacts.append(dataclasses.replace(manifest.artifact("user_encoder.onnx"), file=added.name,
                                                  precision="dynamic", sha256=sha256_file(added),
                                                  size_bytes=added.stat().st_size))
    write_manifest(folder, manifest)
    record = shared_tables.share_bundle(folder, min_bytes=MIN_BYTES)
    assert {t["file"] for t in record["tables"]} == {t["file"] for t in before["tables"]}      # no new blob
    assert any(u["artifact"] == added.name for t in record["tables"] for u in t["uses"])
    assert added.stat().st_size < (whole / "user_encoder.onnx").stat().st_size
    rows = {"hist_items": np.array([[1, 2, 3, 0, 0]], np.int32)}
    with create_backend("onnxruntime", whole / "user_encoder.onnx") as want, create_backend("onnxruntime", added) as got:
        np.testing.assert_array_equal(got.run(rows)["user_state"], want.run(rows)["user_state"])


def _two_table_tflite(path: Path, tables: dict) -> Path:
    """A .tflite whose output sums a lookup in each of ``tables`` (name -> float32 [V, D])."""
    from .conftest import _tf

    tf, _ = _tf()

    class Lookups(tf.Module):
        def __init__(self):
            super().__init__()
            self.tables = {name: tf.constant(value) for name, value in tables.items()}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="ids")])
        def serve(self, ids):
            rows = [tf.gather(table, ids) for _, table in sorted(self.tables.items())]
            return {"out": tf.add_n(rows) if len(rows) > 1 else rows[0]}

    module = Lookups()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    path.write_bytes(converter.convert())
    return path


def test_sharing_again_leaves_a_stripped_tflite_whole_and_working(tmp_path):
    """A second `share_tables` (artifacts added to a shared bundle) must not rewrite a .tflite that
    already reads blobs: re-serialising it would drop them."""
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((64, 16)).astype(np.float32) for _ in range(2))
    both = _two_table_tflite(tmp_path / "both.tflite", {"a": a, "b": b})
    _two_table_tflite(tmp_path / "only_a.tflite", {"a": a})
    original = both.read_bytes()
    record = shared_tables.share_tables(tmp_path, [("both.tflite", "tflite"), ("only_a.tflite", "tflite")],
                                        min_bytes=1024)
    assert len(record["tables"]) == 1 and len(tflite_layout(both.read_bytes())["blobs"]) == 1
    stripped = both.read_bytes()
    _two_table_tflite(tmp_path / "only_b.tflite", {"b": b})          # b now repeats in a stripped file
    again = shared_tables.share_tables(tmp_path, [("both.tflite", "tflite"), ("only_a.tflite", "tflite"),
                                                  ("only_b.tflite", "tflite")], min_bytes=1024, existing=record)
    assert both.read_bytes() == stripped and again["tables"] == record["tables"]
    ids = np.array([0, 5, 63], np.int32)

    def run(content):
        return Interpreter(model_content=content).get_signature_runner()(ids=ids)["out"]

    np.testing.assert_array_equal(run(whole_tflite(both.read_bytes(), None, tmp_path)), run(original))
    np.testing.assert_allclose(run(original), a[ids] + b[ids], rtol=1e-6)
