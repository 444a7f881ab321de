"""Triton model repository: writer, pbtxt round trip, and the checker on good and tampered repositories.

Fast tests use ONNX graphs made with onnx.helper; the slow test exports tiny tf_keras parts with tf2onnx.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgerec.converters.errors import ConverterConfigError
from edgerec.converters.triton import (TritonConfig, TritonRepositoryError, format_pbtxt, tensor_dims,
                                       write_triton_repository, check_triton_repository)
from edgerec.converters.triton_check import parse_pbtxt
from edgerec.runtime.manifest import Artifact, Manifest, TensorSpec, file_entry, load_manifest, write_manifest

L, D = 5, 4
SPECS = {
    "user_encoder": ([TensorSpec("hist_items", "int32", [None, L])], [TensorSpec("user_state", "float32", [None, D])]),
    "scorer": ([TensorSpec("cand_item", "int32", [None]), TensorSpec("hour", "int32", [None]),
                TensorSpec("user_state", "float32", [None, D])], [TensorSpec("score", "float32", [None, 1])]),
    "fused": ([TensorSpec("hist_items", "int32", [None, L]), TensorSpec("cand_item", "int32", [None]),
               TensorSpec("hour", "int32", [None])], [TensorSpec("score", "float32", [None, 1])]),
}


def _helper_models():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def vi(name, dtype, shape):
        return helper.make_tensor_value_info(name, dtype, shape)

    def model(name, inputs, outputs, nodes, inits):
        m = helper.make_model(helper.make_graph(nodes, name, inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m

    emb = numpy_helper.from_array(np.random.RandomState(0).randn(20, D).astype(np.float32), "emb")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    hist, cand, hour = (vi("hist_items", TensorProto.INT32, ["B", L]), vi("cand_item", TensorProto.INT32, ["B"]),
                        vi("hour", TensorProto.INT32, ["B"]))
    score = vi("score", TensorProto.FLOAT, ["B", 1])
    pool = [helper.make_node("Gather", ["emb", "hist_items"], ["h"]),
            helper.make_node("ReduceMean", ["h"], ["user_state"], axes=[1], keepdims=0)]
    head = [helper.make_node("Gather", ["emb", "cand_item"], ["c"]), helper.make_node("Mul", ["c", "user_state"], ["p"]),
            helper.make_node("ReduceSum", ["p", "axes"], ["s"], keepdims=1), helper.make_node("Sigmoid", ["s"], ["score"])]
    state = vi("user_state", TensorProto.FLOAT, ["B", D])
    return {"user_encoder": model("user_encoder", [hist], [state], pool, [emb]),
            "scorer": model("scorer", [cand, hour, state], [score], head, [emb, axes]),
            "fused": model("fused", [hist, cand, hour], [score], pool + head, [emb, axes])}


def write_bundle(bundle: Path, files: dict, specs=SPECS, extra=()) -> Manifest:
    """files: part -> bytes of an ONNX model. ``extra``: (file, bytes, precision, part, details) rows."""
    bundle.mkdir(parents=True, exist_ok=True)
    artifacts = []
    rows = [(f"{part}_fp32.onnx", data, "fp32", part, {}) for part, data in files.items()] + list(extra)
    for name, data, precision, part, details in rows:
        (bundle / name).write_bytes(data)
        entry = file_entry(bundle, name)
        artifacts.append(Artifact(name, "onnx", precision, part, entry["sha256"], entry["size_bytes"],
                                  *specs[part], details=details))
    manifest = Manifest(artifacts, selected={"onnxruntime": {p: f"{p}_fp32.onnx" for p in files}})
    write_manifest(bundle, manifest)
    return manifest


@pytest.fixture
def bundle(tmp_path):
    models = _helper_models()
    write_bundle(tmp_path / "bundle", {p: m.SerializeToString() for p, m in models.items()})
    return tmp_path / "bundle"


def _edit(path: Path, old: str, new: str, count: int = 1):
    text = path.read_text()
    assert old in text, (old, text)
    path.write_text(text.replace(old, new, count))


def test_repository_layout_and_configs(bundle, tmp_path):
    repo = write_triton_repository(bundle, tmp_path / "repo", max_batch_size=64, preferred_batch_sizes=(8, 64),
                                   instance_count=2, kind="KIND_GPU", tensorrt_accelerator=True, precision_mode="FP16")
    root = tmp_path / "repo"
    assert sorted(p.name for p in root.iterdir()) == ["ensemble", "fused", "scorer", "user_encoder"]
    assert repo.ensemble == "ensemble" and set(repo.models) == {"fused", "scorer", "user_encoder"}
    manifest = load_manifest(bundle)
    for name in ("fused", "scorer", "user_encoder"):
        assert (root / name / "1" / "model.onnx").read_bytes() == (bundle / f"{name}_fp32.onnx").read_bytes()
        assert repo.models[name]["sha256"] == manifest.artifact(f"{name}_fp32.onnx").sha256
    assert (root / "ensemble" / "1").is_dir() and not any((root / "ensemble" / "1").iterdir())
    scorer = parse_pbtxt((root / "scorer" / "config.pbtxt").read_text())
    assert scorer["backend"] == ["onnxruntime"] and scorer["max_batch_size"] == [64]
    inputs = {b["name"][0]: b for b in scorer["input"]}
    assert inputs["cand_item"]["data_type"] == ["TYPE_INT32"] and inputs["cand_item"]["dims"] == [1]
    assert inputs["cand_item"]["reshape"] == [{"shape": []}]           # reshape { shape: [ ] }: [B] served as [B, 1]
    assert inputs["user_state"]["data_type"] == ["TYPE_FP32"] and inputs["user_state"]["dims"] == [D]
    assert "reshape" not in inputs["user_state"]
    assert scorer["output"][0]["name"] == ["score"] and scorer["output"][0]["dims"] == [1]
    assert scorer["dynamic_batching"][0]["preferred_batch_size"] == [8, 64]
    assert scorer["instance_group"] == [{"count": [2], "kind": ["KIND_GPU"]}]
    accel = scorer["optimization"][0]["execution_accelerators"][0]["gpu_execution_accelerator"][0]
    params = {p["key"][0]: p["value"][0] for p in accel["parameters"]}
    assert accel["name"] == ["tensorrt"] and params["precision_mode"] == "FP16"
    fused = parse_pbtxt((root / "fused" / "config.pbtxt").read_text())
    assert {b["name"][0]: b["dims"] for b in fused["input"]}["hist_items"] == [L]
    ensemble = parse_pbtxt((root / "ensemble" / "config.pbtxt").read_text())
    assert ensemble["platform"] == ["ensemble"]
    assert [s["model_name"][0] for s in ensemble["ensemble_scheduling"][0]["step"]] == ["user_encoder", "scorer"]
    assert sorted(b["name"][0] for b in ensemble["input"]) == ["cand_item", "hist_items", "hour"]
    assert all("reshape" not in b for b in ensemble["input"])   # ensembles pass [B, 1] through unchanged
    assert check_triton_repository(root, bundle) == []


def test_cpu_repository_without_batching_or_accelerator(bundle, tmp_path):
    write_triton_repository(bundle, tmp_path / "repo", max_batch_size=0, preferred_batch_sizes=(), ensemble=False)
    fused = parse_pbtxt((tmp_path / "repo" / "fused" / "config.pbtxt").read_text())
    assert {b["name"][0]: b["dims"] for b in fused["input"]} == {"hist_items": [-1, L], "cand_item": [-1], "hour": [-1]}
    assert "dynamic_batching" not in fused and "optimization" not in fused
    assert fused["instance_group"][0]["kind"] == ["KIND_CPU"]
    assert not (tmp_path / "repo" / "ensemble").exists()
    assert check_triton_repository(tmp_path / "repo", bundle) == []


def test_checker_reports_every_tampering(bundle, tmp_path):
    root = tmp_path / "repo"
    write_triton_repository(bundle, root)
    _edit(root / "scorer" / "config.pbtxt", f"dims: [ {D} ]", f"dims: [ {D + 1} ]")           # wrong dim
    _edit(root / "fused" / "config.pbtxt", "TYPE_INT32", "TYPE_FP32")                         # wrong dtype (first input)
    with open(root / "scorer" / "1" / "model.onnx", "ab") as handle:                          # altered model file
        handle.write(b"\0")
    shutil.rmtree(root / "user_encoder")                                                       # missing part
    problems = check_triton_repository(root, bundle)
    text = [str(p) for p in problems]
    assert any(p.model == "user_encoder" and p.field == "model" for p in problems), text
    assert any(p.model == "scorer" and p.field == "input user_state.dims" and f"[{D + 1}]" in p.message
               for p in problems), text
    assert any(p.model == "fused" and p.field == "input hist_items.data_type" and "TYPE_FP32" in p.message
               for p in problems), text
    assert any(p.model == "scorer" and p.field == "1/model.onnx" and "sha256" in p.message for p in problems), text
    assert any(p.model == "ensemble" and "user_encoder" in p.message for p in problems), text
    assert len({(p.model, p.field) for p in problems}) == len(problems)


def test_checker_finds_renamed_tensor_missing_version_and_bad_pbtxt(bundle, tmp_path):
    root = tmp_path / "repo"
    write_triton_repository(bundle, root)
    _edit(root / "fused" / "config.pbtxt", 'name: "hour"', 'name: "hour_of_day"')
    shutil.rmtree(root / "user_encoder" / "1")
    (root / "scorer" / "config.pbtxt").write_text('name: "scorer"\ninput { name: "cand_item" ')
    (root / "stray").mkdir()
    problems = {(p.model, p.field) for p in check_triton_repository(root, bundle)}
    assert ("fused", "input hour") in problems and ("fused", "input hour_of_day") in problems
    assert ("user_encoder", "version") in problems
    assert ("scorer", "config.pbtxt") in problems
    assert ("stray", "config.pbtxt") in problems


def test_checker_catches_reshape_and_batch_mismatch(bundle, tmp_path):
    root = tmp_path / "repo"
    write_triton_repository(bundle, root)
    text = (root / "scorer" / "config.pbtxt").read_text()
    (root / "scorer" / "config.pbtxt").write_text(text.replace("  reshape {\n    shape: [ ]\n  }\n", "", 1))
    _edit(root / "fused" / "config.pbtxt", "preferred_batch_size: [ 16, 64, 256 ]", "preferred_batch_size: [ 16, 512 ]")
    problems = {(p.model, p.field): p.message for p in check_triton_repository(root, bundle)}
    assert "reshape" in problems[("scorer", "input cand_item.dims")]
    assert ("fused", "dynamic_batching.preferred_batch_size") in problems


def test_checker_on_a_tampered_bundle_and_missing_repo(bundle, tmp_path):
    root = tmp_path / "repo"
    write_triton_repository(bundle, root)
    with open(bundle / "fused_fp32.onnx", "ab") as handle:
        handle.write(b"\0")
    problems = check_triton_repository(root, bundle)
    assert len(problems) == 1 and problems[0].model == "<bundle>" and "fused_fp32.onnx" in problems[0].message
    assert check_triton_repository(tmp_path / "nope", bundle)[0].field == "path"


def test_int8_accelerator_uses_tensorrt_ready_artifact(tmp_path):
    import onnx

    models = _helper_models()
    data = {p: m.SerializeToString() for p, m in models.items()}
    ready = onnx.ModelProto()
    ready.CopyFrom(models["scorer"])
    ready.doc_string = "tensorrt-ready"          # different bytes from the fp32 scorer
    write_bundle(tmp_path / "b", data, extra=[("scorer_trt_int8.onnx", ready.SerializeToString(), "int8", "scorer",
                                               {"quantization": "tensorrt", "tensorrt_violations": []})])
    with pytest.raises(TritonRepositoryError, match="TensorRT-ready"):      # fused/user_encoder have none
        write_triton_repository(tmp_path / "b", tmp_path / "r", kind="KIND_GPU", tensorrt_accelerator=True,
                                precision_mode="INT8")
    shutil.rmtree(tmp_path / "r", ignore_errors=True)
    repo = write_triton_repository(tmp_path / "b", tmp_path / "r", kind="KIND_GPU", tensorrt_accelerator=True,
                                   precision_mode="FP16", artifacts={"scorer": "scorer_trt_int8.onnx"})
    assert repo.models["scorer"]["artifact"] == "scorer_trt_int8.onnx"
    assert check_triton_repository(tmp_path / "r", tmp_path / "b") == []
    assert onnx.load(str(tmp_path / "r" / "scorer" / "1" / "model.onnx")).doc_string == "tensorrt-ready"
    _edit(tmp_path / "r" / "fused" / "config.pbtxt", 'value: "FP16"', 'value: "INT8"')
    problems = check_triton_repository(tmp_path / "r", tmp_path / "b")
    assert [(p.model, p.field) for p in problems] == [("fused", "optimization.precision_mode")]


def test_is_tensorrt_ready_reads_the_quantization_details():
    from edgerec.converters.triton import is_tensorrt_ready

    def art(details, fmt="onnx"):
        return Artifact("x", fmt, "int8", "scorer", "0" * 64, 1, details=details)

    warning = {"rule": "int64_weights", "severity": "warning"}
    assert is_tensorrt_ready(art({"quantization": "tensorrt", "tensorrt_violations": [warning]}))
    assert not is_tensorrt_ready(art({"quantization": "tensorrt",
                                      "tensorrt_violations": [{"rule": "nonzero_zero_point", "severity": "error"}]}))
    assert not is_tensorrt_ready(art({"quantization": "static_qdq"}))
    assert not is_tensorrt_ready(art({"quantization": "tensorrt"}, fmt="tflite"))


def test_bad_options_and_existing_output(bundle, tmp_path):
    with pytest.raises(ConverterConfigError) as err:
        write_triton_repository(bundle, tmp_path / "r", max_batch_size=8, preferred_batch_sizes=(4, 16),
                                kind="KIND_TPU", instance_count=0)
    message = str(err.value)
    assert "preferred_batch_sizes" in message and "kind" in message and "instance_count" in message
    with pytest.raises(ConverterConfigError, match="KIND_GPU"):
        TritonConfig(tensorrt_accelerator=True)
    config = TritonConfig(max_batch_size=32, preferred_batch_sizes=[8, 32], kind="KIND_GPU", prefix="din_")
    assert TritonConfig.from_config(config.get_config()) == config
    with pytest.raises(ConverterConfigError, match="TritonConfig options"):
        write_triton_repository(bundle, tmp_path / "r", max_batch=8)
    write_triton_repository(bundle, tmp_path / "r")
    with pytest.raises(TritonRepositoryError, match="overwrite"):
        write_triton_repository(bundle, tmp_path / "r")
    write_triton_repository(bundle, tmp_path / "r", overwrite=True, max_batch_size=0, preferred_batch_sizes=())
    assert parse_pbtxt((tmp_path / "r" / "fused" / "config.pbtxt").read_text())["max_batch_size"] == [0]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temp dirs left behind


def test_fixed_batch_dimension_is_refused(tmp_path):
    specs = dict(SPECS, fused=([TensorSpec("hist_items", "int32", [1, L]), TensorSpec("cand_item", "int32", [1]),
                                TensorSpec("hour", "int32", [1])], [TensorSpec("score", "float32", [1, 1])]))
    write_bundle(tmp_path / "b", {"fused": _helper_models()["fused"].SerializeToString()}, specs=specs)
    with pytest.raises(TritonRepositoryError, match="dynamic batch"):
        write_triton_repository(tmp_path / "b", tmp_path / "r")
    assert not (tmp_path / "r").exists()
    repo = write_triton_repository(tmp_path / "b", tmp_path / "r", max_batch_size=0, preferred_batch_sizes=())
    assert set(repo.models) == {"fused"} and repo.ensemble is None


def test_tensor_dims_rules():
    assert tensor_dims([None, 50], 8) == ([50], None)
    assert tensor_dims([None], 8) == ([1], [])
    assert tensor_dims([None, None, 16], 8) == ([-1, 16], None)
    assert tensor_dims([None, 50], 0) == ([-1, 50], None)
    with pytest.raises(TritonRepositoryError):
        tensor_dims([4, 50], 8)


def test_pbtxt_round_trip_and_errors():
    from edgerec.converters.triton import Ident

    msg = {"name": 'a "quoted" name', "max_batch_size": 4, "flag": True, "ratio": 0.5,
           "input": [{"name": "x", "data_type": Ident("TYPE_FP32"), "dims": [-1, 3]}, {"name": "y", "dims": [1],
                                                                                   "reshape": {"shape": []}}]}
    parsed = parse_pbtxt(format_pbtxt(msg) + "# trailing comment\n")
    assert parsed["name"] == ['a "quoted" name'] and parsed["flag"] == [True] and parsed["ratio"] == [0.5]
    assert parsed["input"][0] == {"name": ["x"], "data_type": ["TYPE_FP32"], "dims": [-1, 3]}
    assert parsed["input"][1]["reshape"] == [{"shape": []}]
    # Triton's hand-written forms: repeated scalars, `field: { }` and `field [ {…}, {…} ]`
    alt = parse_pbtxt('input [ { name: "a" dims: 1 dims: 2 }, { name: "b" } ]\nreshape: { shape: [ ] }')
    assert alt["input"] == [{"name": ["a"], "dims": [1, 2]}, {"name": ["b"]}] and alt["reshape"] == [{"shape": []}]
    for bad in ('name: "open', "input { name: 1", "dims: [ 1, 2", "}", "a b"):
        with pytest.raises(ValueError, match="Expected"):
            parse_pbtxt(bad)


@pytest.mark.slow
def test_tf2onnx_parts_repository_and_ensemble_semantics(tmp_path):
    """Real tf_keras parts exported with tf2onnx; the ensemble wiring (user_encoder -> scorer) reproduces fused."""
    import onnxruntime as ort
    import tf2onnx

    from edgerec.converters.tfenv import import_tf

    tf, k = import_tf()
    emb = k.layers.Embedding(30, D, name="item_embedding")
    pool = k.layers.GlobalAveragePooling1D(name="user_state")   # tf2onnx names outputs after layers
    hour_emb, concat = k.layers.Embedding(25, 2, name="hour_embedding"), k.layers.Concatenate()
    head = k.layers.Dense(1, activation="sigmoid", name="score")
    hist = k.Input((L,), dtype="int32", name="hist_items")
    cand, hour = k.Input((), dtype="int32", name="cand_item"), k.Input((), dtype="int32", name="hour")
    state_in = k.Input((D,), dtype="float32", name="user_state")
    state = pool(emb(hist))
    parts = {"user_encoder": k.Model(hist, {"user_state": state}),
             "scorer": k.Model([cand, hour, state_in], {"score": head(concat([emb(cand), state_in, hour_emb(hour)]))}),
             "fused": k.Model([hist, cand, hour], {"score": head(concat([emb(cand), state, hour_emb(hour)]))})}
    files = {}
    for part, model in parts.items():
        signature = [tf.TensorSpec(t.shape, t.dtype, name=t.name.split(":")[0]) for t in model.inputs]
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=17)
        files[part] = proto.SerializeToString()
    write_bundle(tmp_path / "b", files)
    repo = write_triton_repository(tmp_path / "b", tmp_path / "r", kind="KIND_GPU", tensorrt_accelerator=True)
    assert check_triton_repository(tmp_path / "r", tmp_path / "b") == []
    # Follow the ensemble config the way Triton would and compare with the fused model.
    rng = np.random.default_rng(0)
    feeds = {"hist_items": rng.integers(0, 30, (7, L)).astype(np.int32),
             "cand_item": rng.integers(0, 30, 7).astype(np.int32), "hour": rng.integers(0, 24, 7).astype(np.int32)}
    ens = parse_pbtxt((tmp_path / "r" / repo.ensemble / "config.pbtxt").read_text())
    tensors = dict(feeds)
    for step in ens["ensemble_scheduling"][0]["step"]:
        sess = ort.InferenceSession(str(tmp_path / "r" / step["model_name"][0] / "1" / "model.onnx"),
                                    providers=["CPUExecutionProvider"])
        ins = {m["key"][0]: tensors[m["value"][0]] for m in step["input_map"]}
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, ins)))
        tensors.update({m["value"][0]: outs[m["key"][0]] for m in step["output_map"]})
    fused = ort.InferenceSession(str(tmp_path / "r" / "fused" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    expected_score = fused.run(["score"], feeds)[0]
    assert tensors["score"].shape == (7, 1)
    np.testing.assert_allclose(tensors["score"], expected_score, atol=1e-6)
    keras_score = parts["fused"](feeds)["score"].numpy()
    np.testing.assert_allclose(expected_score, keras_score, atol=1e-5)


def test_a_shared_table_bundle_gives_models_onnx_runtime_loads(bundle, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from edgerec.converters.shared_tables import share_bundle

    record = share_bundle(bundle, min_bytes=64)              # the 20 x 4 table is read by all three parts
    assert record["tables"] and {u["artifact"] for t in record["tables"] for u in t["uses"]} >= {"scorer_fp32.onnx"}
    root = tmp_path / "repo"
    write_triton_repository(bundle, root)
    feeds = {"hist_items": np.array([[2, 3, 4, 0, 0]], np.int32), "cand_item": np.array([5], np.int32),
             "hour": np.array([1], np.int32)}
    whole = ort.InferenceSession(str(root / "fused" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert whole.run(["score"], feeds)[0].shape == (1, 1)
    for name in ("user_encoder", "scorer"):
        folder = root / name / "1"
        assert sorted(p.name for p in folder.iterdir() if p.name.startswith("shared-")), name
        ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert check_triton_repository(root, bundle) == []
