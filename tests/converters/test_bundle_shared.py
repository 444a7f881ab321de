"""write_bundle stores a constant that several artifacts hold once (converters.shared_tables): each
bundled artifact answers exactly as the file it was copied from, on a model edgerec built and on a
bring-your-own one, and the bundle shrinks by the copies it no longer holds."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("tf2onnx")


def _sibling(name: str, alias: str):
    spec = importlib.util.spec_from_file_location(alias, Path(__file__).with_name(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


S = _sibling("test_validate_support.py", "validate_support_s")
BACKEND = {"onnx": "onnxruntime", "tflite": "litert"}


def _rows(backend, n: int = 16, seed: int = 3) -> dict:
    """Random feeds for a backend's inputs (ids 0-2: inside every test table)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in backend.inputs:
        shape = [n if d is None else d for d in spec.shape]
        if spec.dtype.startswith("int"):
            feeds[spec.name] = rng.integers(0, 3, size=shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds


def _same_outputs(source: Path, bundled: Path, fmt: str, model_bytes: bytes | None = None) -> None:
    from edgerec.runtime.backends.registry import create_backend

    with create_backend(BACKEND[fmt], source) as want, \
            create_backend(BACKEND[fmt], bundled, model_bytes=model_bytes) as got:
        feeds = _rows(want)
        expected, received = want.run(feeds), got.run(feeds)
        assert expected.keys() == received.keys()
        for name in expected:
            np.testing.assert_array_equal(received[name], expected[name], err_msg=f"{bundled.name} {name}")


@pytest.fixture(scope="module")
def staged(model_dir, tmp_path_factory):
    return S.staged_din_bundle_inputs(model_dir, tmp_path_factory.mktemp("shared_bundle"))


def _write(staged, out: Path, share_min_bytes):
    from edgerec.converters.bundle import write_bundle

    return write_bundle(out, artifacts=staged["cands"], report=staged["report"], selection=staged["selection"],
                        examples=staged["examples"], feature_spec_path=staged["spec_path"],
                        model_info={"family": "din"}, share_min_bytes=share_min_bytes)


def test_write_bundle_shares_the_table_and_every_artifact_answers_as_its_source(staged):
    from edgerec.runtime.manifest import load_manifest, read_verified

    whole = _write(staged, staged["root"] / "whole", None)
    assert whole.shared_tables == {} and not list((staged["root"] / "whole").glob("shared-*"))
    out = staged["root"] / "shared"
    manifest = _write(staged, out, 1024)
    assert load_manifest(out, verify=True).to_dict() == manifest.to_dict()
    tables = manifest.shared_tables["tables"]
    assert tables and all(len(t["uses"]) >= 2 for t in tables)
    users = {u["artifact"] for t in tables for u in t["uses"]}
    assert {"fused.fp32.tflite", "fused.fp32.onnx"} <= users       # the fp32 table, across formats
    sources = {Path(c.path).name: (Path(c.path), c.format) for c in staged["cands"]}
    for art in manifest.artifacts:
        source, fmt = sources[art.file]
        _same_outputs(source, out / art.file, fmt)                                        # by path
        _same_outputs(source, out / art.file, fmt, read_verified(out, manifest, art.file))  # verified bytes
    sizes = {a.file: a.size_bytes for a in whole.artifacts}
    blobs = sum(t["size_bytes"] for t in tables)
    saved = sum(sizes.values()) - sum(a.size_bytes for a in manifest.artifacts) - blobs
    assert saved == manifest.shared_tables["bytes_saved"] > 0
    copies = sum((len(t["uses"]) - 1) * t["size_bytes"] for t in tables)
    # each stripped constant leaves a reference (external-data entry, trailer line) of < 400 bytes
    assert copies - 400 * sum(len(t["uses"]) for t in tables) <= saved <= copies


def test_a_bring_your_own_model_shares_its_table_across_formats(tmp_path):
    """A DIN written without edgerec's builders (one table read by two Gathers), in TFLite and ONNX:
    the 512 KB fp32 table is stored once for both, at the default threshold."""
    import tensorflow as tf
    import tf2onnx

    from edgerec.converters.shared_tables import MIN_SHARED_BYTES, share_tables

    build_byom = _sibling("byom_models.py", "byom_models_s").build_byom
    model = build_byom("din", vocab=4000, seq_len=10, dim=32)
    whole = tmp_path / "whole"
    whole.mkdir()
    (whole / "fused.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    signature = [tf.TensorSpec([None, *i.shape[1:]], i.dtype, name=i.name) for i in model.inputs]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=17)
    (whole / "fused.onnx").write_bytes(proto.SerializeToString())
    folder = Path(shutil.copytree(whole, tmp_path / "bundle"))
    record = share_tables(folder, [("fused.tflite", "tflite"), ("fused.onnx", "onnx")])
    assert record["min_bytes"] == MIN_SHARED_BYTES
    table, = [t for t in record["tables"] if t["size_bytes"] == 4000 * 32 * 4]
    assert sorted(u["artifact"] for u in table["uses"]) == ["fused.onnx", "fused.tflite"]
    onnx_use = next(u for u in table["uses"] if u["artifact"] == "fused.onnx")
    assert onnx_use["onnx_type"] == 1 and onnx_use["shape"] == [4000, 32]
    for fmt in ("tflite", "onnx"):
        _same_outputs(whole / f"fused.{fmt}", folder / f"fused.{fmt}", fmt)
        _same_outputs(whole / f"fused.{fmt}", folder / f"fused.{fmt}", fmt, (folder / f"fused.{fmt}").read_bytes())
    before = sum(p.stat().st_size for p in whole.iterdir())
    after = sum(p.stat().st_size for p in folder.iterdir())
    assert before - after == record["bytes_saved"] >= table["size_bytes"] - 2048


def test_nothing_repeated_leaves_the_artifacts_whole(tmp_path):
    from edgerec.converters.shared_tables import share_tables
    from edgerec.runtime.errors import BundleError

    onnx_path = tmp_path / "fused.onnx"
    onnx_path.write_bytes(b"")       # never read: no tflite/onnx artifact listed twice means no work
    assert share_tables(tmp_path, [("engine.plan", "tensorrt")]) == {}
    with pytest.raises(BundleError, match="min_bytes"):
        share_tables(tmp_path, [], min_bytes=0)


def _gather_tables(path: Path) -> dict:
    """``{table name: (uint8 bytes, scale, zero point)}`` of the quantized tables Gathers read: a
    DequantizeLinear feeding the Gather (QDQ) or one the Gather feeds (dynamic)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    dq = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    readers = {x: n for n in graph.node for x in n.input}
    found = {}
    for gather in (n for n in graph.node if n.op_type == "Gather"):
        source = gather.input[0]
        if source in dq and dq[source].input[0] in init:                      # DQ(table) -> Gather
            node, table = dq[source], dq[source].input[0]
        elif source in init and init[source].dtype == np.uint8:                # Gather(table) -> DQ
            node, table = readers[gather.output[0]], source
        else:
            continue
        found[table] = (init[table], float(init[node.input[1]]), int(init[node.input[2]]))
    return found


def test_the_dynamic_and_static_int8_variants_store_one_table(tmp_path):
    """A bring-your-own DIN (one table read by two Gathers) quantized by ORT dynamically and with
    QDQ calibration: both keep the full 8 bits per table value (``reduce_range`` is for the matmul
    kernels, not a lookup), so their table bytes are equal and a bundle stores them once."""
    import tensorflow as tf
    import tf2onnx

    from edgerec.converters.passes.onnx_quant import OrtQuantizeConfig, OrtQuantizePass, gather_tables
    from edgerec.converters.pipeline import ExportedArtifact
    from edgerec.converters.shared_tables import share_tables

    byom = _sibling("byom_models.py", "byom_models_t")
    model = byom.build_byom("din", vocab=3000, seq_len=10, dim=32)
    signature = [tf.TensorSpec([None, *i.shape[1:]], i.dtype, name=i.name) for i in model.inputs]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=17)
    fp32 = tmp_path / "fused.fp32.onnx"
    fp32.write_bytes(proto.SerializeToString())
    float_table, = [np.asarray(w) for w in model.weights if tuple(w.shape) == (3000, 32)]
    assert len(gather_tables(proto.graph)) == 1
    rng = np.random.default_rng(0)
    rows = {byom.HISTORY: rng.integers(0, 3000, (64, 10)).astype(np.int32),
            byom.TARGET: rng.integers(0, 3000, (64, 1)).astype(np.int32)}
    np.savez(tmp_path / "rows.npz", **rows)
    source = ExportedArtifact(path=str(fp32), format="onnx", precision="fp32", part="fused", inputs=[], outputs=[])
    folder = tmp_path / "bundle"
    folder.mkdir()
    tables = {}
    for mode, name in (("dynamic", "fused_dynamic.onnx"), ("static_qdq", "fused_qdq_int8.onnx")):
        art = OrtQuantizePass().run(source, OrtQuantizeConfig(mode=mode, data=str(tmp_path / "rows.npz")),
                                    tmp_path / mode)
        shutil.copy(art.path, folder / name)
        (data, scale, zero), = _gather_tables(folder / name).values()
        assert data.shape == (3000, 32) and data.max() - data.min() > 128, (mode, data.min(), data.max())
        step_error = np.abs((data.astype(np.float32) - zero) * scale - float_table).max()
        assert step_error <= scale / 2 + 1e-7, (mode, step_error, scale)
        tables[mode] = data
    np.testing.assert_array_equal(tables["static_qdq"], tables["dynamic"])
    record = share_tables(folder, [("fused_dynamic.onnx", "onnx"), ("fused_qdq_int8.onnx", "onnx")])
    table, = [t for t in record["tables"] if t["size_bytes"] == 3000 * 32]
    assert sorted(u["artifact"] for u in table["uses"]) == ["fused_dynamic.onnx", "fused_qdq_int8.onnx"]


def test_a_table_a_matmul_also_reads_keeps_the_default_range():
    """Tied output weights: the table a Gather looks up is also a MatMul's weight, whose kernel is
    what ``reduce_range`` protects, so it is not among the lookup-only tables."""
    from onnx import TensorProto, helper, numpy_helper

    from edgerec.converters.passes.onnx_quant import gather_tables

    rng = np.random.default_rng(0)
    tied = numpy_helper.from_array(rng.normal(size=(50, 8)).astype(np.float32), "tied")
    lookup = numpy_helper.from_array(rng.normal(size=(40, 8)).astype(np.float32), "lookup")
    nodes = [helper.make_node("Gather", ["tied", "ids"], ["h"]),
             helper.make_node("Gather", ["lookup", "ids"], ["g"]),
             helper.make_node("Add", ["h", "g"], ["hg"]),
             helper.make_node("MatMul", ["hg", "tied_t"], ["logits"]),
             helper.make_node("Transpose", ["tied"], ["tied_t"], perm=[1, 0])]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 50])],
                              initializer=[tied, lookup])
    assert gather_tables(graph) == ["lookup"]
