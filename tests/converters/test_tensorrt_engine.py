"""TensorRT engines: profile computation, readiness gate, the skip path without TensorRT, and the runtime
backend's availability errors. Building and running a real engine needs TensorRT + a GPU (last test)."""
from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest

from edgerec.converters.errors import ConverterConfigError
from edgerec.converters.tensorrt_engine import (EngineConfig, ShapeRange, bucket_ranges, build_engine,
                                                compute_profiles, onnx_inputs, tensorrt_skip_reason)
from edgerec.runtime.errors import BackendUnavailableError
from edgerec.runtime.manifest import TensorSpec

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
FUSED = [TensorSpec("hist_items", "int32", [None, 50]), TensorSpec("cand_item", "int32", [None]),
         TensorSpec("hour", "int32", [None]), TensorSpec("dense", "float32", [None, 3])]


def _onnx_model(path, zero_point: int = 0):
    """[B, 4] float -> Q/DQ (zero point given) -> MatMul -> [B, 2]; hist-like int input [B, 6] passed through."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(4, 2) / 10, "w")
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "scale")
    zp = numpy_helper.from_array(np.array(zero_point, np.int8), "zp")
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "scale", "zp"], ["xd"]),
             helper.make_node("MatMul", ["xd", "w"], ["y"]),
             helper.make_node("Identity", ["ids"], ["ids_out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4]),
                                           helper.make_tensor_value_info("ids", TensorProto.INT32, ["B", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 2]),
                               helper.make_tensor_value_info("ids_out", TensorProto.INT32, ["B", 6])], [w, scale, zp])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_bucket_ranges():
    assert bucket_ranges((1, 16, 256)) == [(1, 1, 1), (2, 16, 16), (17, 256, 256)]
    assert bucket_ranges((8, 64)) == [(1, 8, 8), (9, 64, 64)]
    assert bucket_ranges((1, 16, 256), "single") == [(1, 16, 256)]
    assert bucket_ranges((1, 16, 256), "single", opt=200) == [(1, 200, 256)]
    with pytest.raises(ConverterConfigError, match="opt_batch"):
        bucket_ranges((1, 16), "single", opt=64)


def test_profiles_cover_every_bucket_and_keep_static_dims():
    profiles = compute_profiles(FUSED, EngineConfig(batch_buckets=(1, 32, 256)))
    assert len(profiles) == 3
    assert profiles[1]["hist_items"] == ShapeRange((2, 50), (32, 50), (32, 50))
    assert profiles[2]["cand_item"] == ShapeRange((33,), (256,), (256,))
    assert profiles[2]["dense"] == ShapeRange((33, 3), (256, 3), (256, 3))
    for profile in profiles:                     # every input in every profile shares the batch range
        assert {r.min[0] for r in profile.values()} == {profile["hour"].min[0]}
    # a batch size is served by exactly one profile
    covered = [b for p in profiles for b in range(p["hour"].min[0], p["hour"].max[0] + 1)]
    assert covered == list(range(1, 257))


def test_scorer_uses_candidate_buckets_and_declared_dynamic_dims():
    scorer = [TensorSpec("cand_item", "int32", [None]), TensorSpec("user_state", "float32", [None, None, 8])]
    config = EngineConfig(batch_buckets=(1, 8), candidate_buckets=(100, 1000), profile_mode="single",
                          dynamic_dims={"user_state": {1: (1, 20, 50)}})
    (profile,) = compute_profiles(scorer, config, part="scorer")
    assert profile["cand_item"] == ShapeRange((100,), (1000,), (1000,))     # median of (100, 1000) is 1000
    assert profile["user_state"] == ShapeRange((100, 1, 8), (1000, 20, 8), (1000, 50, 8))
    (fused_profile,) = compute_profiles(scorer, config, part="fused")       # not the scorer: batch buckets
    assert fused_profile["cand_item"] == ShapeRange((1,), (8,), (8,))
    with pytest.raises(ConverterConfigError, match=r"user_state\[1\]"):
        compute_profiles(scorer, EngineConfig(), part="scorer")
    with pytest.raises(ConverterConfigError, match="nope"):
        compute_profiles(scorer, EngineConfig(dynamic_dims={"nope": {1: (1, 1, 1)}}))


def test_static_model_gets_empty_profiles():
    static = [TensorSpec("x", "float32", [4, 3])]
    assert compute_profiles(static, EngineConfig(batch_buckets=(1, 8))) == [{}, {}]


def test_engine_config_collects_every_problem():
    with pytest.raises(ConverterConfigError) as err:
        EngineConfig(batch_buckets=(16, 4), candidate_buckets=(0,), profile_mode="many", workspace_bytes=10,
                     dynamic_dims={"x": {0: (1, 2, 3)}})
    message = str(err.value)
    for word in ("batch_buckets", "candidate_buckets", "profile_mode", "workspace_bytes", "dynamic_dims"):
        assert word in message
    assert EngineConfig().get_config()["batch_buckets"] == (1, 16, 256)


def test_onnx_inputs_reads_graph_signature(tmp_path):
    specs = onnx_inputs(_onnx_model(tmp_path / "m.onnx"))
    assert specs == [TensorSpec("x", "float32", [None, 4]), TensorSpec("ids", "int32", [None, 6])]


@pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed: the skip path does not apply")
def test_build_is_skipped_with_reason_without_tensorrt(tmp_path):
    model = _onnx_model(tmp_path / "m.onnx")
    result = build_engine(model, tmp_path / "m.plan", config=EngineConfig(batch_buckets=(1, 64), int8=False))
    assert result.skipped and result.status == "skipped"
    assert result.reason.startswith("tensorrt not importable")
    assert result.engine_path is None and not (tmp_path / "m.plan").exists()
    assert [sorted(p) for p in result.profiles] == [["ids", "x"], ["ids", "x"]]
    assert result.details()["profiles"][1]["x"] == {"min": (2, 4), "opt": (64, 4), "max": (64, 4)}


def test_old_tensorrt_is_reported_by_version(monkeypatch, tmp_path):
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "8.6.1"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    reason = tensorrt_skip_reason()
    assert "8.6.1" in reason and "older" in reason
    result = build_engine(_onnx_model(tmp_path / "m.onnx"), tmp_path / "m.plan", config=EngineConfig(int8=False))
    assert result.skipped and "8.6.1" in result.reason
    from edgerec.runtime.backends.tensorrt import TensorRTBackend

    with pytest.raises(BackendUnavailableError, match="8.6.1"):
        TensorRTBackend(tmp_path / "m.plan")


def test_readiness_gate_refuses_asymmetric_qdq(tmp_path):
    pytest.importorskip("edgerec.converters.passes.tensorrt")
    bad = _onnx_model(tmp_path / "bad.onnx", zero_point=3)
    with pytest.raises(ConverterConfigError, match="nonzero_zero_point"):
        build_engine(bad, tmp_path / "bad.plan", config=EngineConfig(int8=True))
    good = _onnx_model(tmp_path / "good.onnx", zero_point=0)
    result = build_engine(good, tmp_path / "good.plan", config=EngineConfig(int8=True))
    assert result.status in ("built", "skipped")
    with pytest.raises(ConverterConfigError, match="existing ONNX"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "x.plan")


@pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed")
def test_backend_without_tensorrt_names_what_is_missing(tmp_path):
    from edgerec.runtime.backends.tensorrt import TensorRTBackend

    with pytest.raises(BackendUnavailableError, match="'tensorrt' Python package"):
        TensorRTBackend(tmp_path / "m.plan")


def test_backend_without_device_memory_names_torch_and_cuda_python(monkeypatch, tmp_path):
    if importlib.util.find_spec("torch") or importlib.util.find_spec("cuda"):
        pytest.skip("torch or cuda-python installed here")
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.13.0"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    from edgerec.runtime.backends.tensorrt import TensorRTBackend

    with pytest.raises(BackendUnavailableError) as err:
        TensorRTBackend(tmp_path / "m.plan")
    assert "torch" in str(err.value) and "cuda-python" in str(err.value)
    with pytest.raises(BackendUnavailableError, match="device"):
        TensorRTBackend(tmp_path / "m.plan", device=-1)


def test_backend_picks_the_profile_that_holds_the_batch(tmp_path):
    """Profile choice is pure bookkeeping over the engine's min/max shapes: exercised without a GPU."""
    from edgerec.runtime.backends.base import Backend
    from edgerec.runtime.backends.tensorrt import TensorRTBackend
    from edgerec.runtime.errors import RequestError

    backend = object.__new__(TensorRTBackend)
    Backend.__init__(backend, tmp_path / "m.plan")
    backend.inputs = [TensorSpec("x", "float32", [None, 4]), TensorSpec("ids", "int32", [None, 6])]
    ranges = [(1, 4), (5, 32)]
    backend._bounds = [{"x": ((lo, 4), (hi, 4)), "ids": ((lo, 6), (hi, 6))} for lo, hi in ranges]
    backend._allowed = [0, 1]

    def feeds(batch):
        return {"x": np.zeros((batch, 4), np.float32), "ids": np.zeros((batch, 6), np.int32)}

    assert backend._fitting_profile({k: v.shape for k, v in feeds(3).items()}) == 0
    assert backend._fitting_profile({k: v.shape for k, v in feeds(20).items()}) == 1
    assert set(backend.check_feeds(feeds(32))) == {"x", "ids"}
    with pytest.raises(RequestError, match="engine profile"):
        backend.check_feeds(feeds(33))
    backend._allowed = [0]                                   # profile=0 pinned by the caller
    with pytest.raises(RequestError, match=r"\[20, 4\]"):
        backend.check_feeds(feeds(20))


def _gpu_ready() -> bool:
    if not HAVE_TRT:
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return importlib.util.find_spec("cuda") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _gpu_ready(), reason="needs tensorrt and a CUDA GPU (torch or cuda-python)")
def test_engine_builds_and_runs_on_gpu(tmp_path):
    """GPU machines only: build fp32 + QDQ engines with two profiles and compare with ONNX Runtime on CPU."""
    import onnxruntime as ort

    from edgerec.runtime.backends.tensorrt import TensorRTBackend
    from edgerec.runtime.errors import RequestError

    model = _onnx_model(tmp_path / "m.onnx")
    result = build_engine(model, tmp_path / "m.plan", config=EngineConfig(batch_buckets=(4, 32), int8=True))
    assert result.status == "built", result.reason
    assert result.size_bytes > 0 and len(result.profiles) == 2
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    with TensorRTBackend(tmp_path / "m.plan") as backend:          # profile picked per call
        assert {t.name for t in backend.inputs} == {"x", "ids"}
        for batch in (3, 20, 1, 32):
            feeds = {"x": rng.normal(size=(batch, 4)).astype(np.float32),
                     "ids": rng.integers(0, 100, (batch, 6)).astype(np.int32)}
            out = backend.run(feeds)
            want = dict(zip(["y", "ids_out"], sess.run(["y", "ids_out"], feeds)))
            np.testing.assert_allclose(out["y"], want["y"], atol=2e-2)
            np.testing.assert_array_equal(out["ids_out"], want["ids_out"])
        with pytest.raises(RequestError, match="profile"):
            backend.run({k: np.repeat(v, 2, axis=0) for k, v in feeds.items()})   # 64 > 32


@pytest.mark.parametrize("memory", ["torch", "cuda-python"])
def test_device_memory_round_trip(memory):
    """GPU machines only: the backend's device-memory helpers copy host -> device -> host exactly."""
    from edgerec.runtime.backends.tensorrt import _device_memory

    try:
        mem = _device_memory(0, memory)
    except BackendUnavailableError as err:
        pytest.skip(f"{memory} device memory unavailable here: {err}")
    try:
        for array in (np.arange(12, dtype=np.float32).reshape(3, 4), np.arange(5, dtype=np.int32)):
            buffer = mem.to_device(array)
            mem.synchronize()
            np.testing.assert_array_equal(mem.to_host(buffer, array.dtype), array)
            mem.free(buffer)
        empty = mem.empty((2, 3), np.float32)
        assert mem.address(empty) != 0 and mem.to_host(empty, np.float32).shape == (2, 3)
        mem.free(empty)
    finally:
        mem.close()


def test_bundle_engines_pick_tensorrt_ready_artifacts(tmp_path):
    from edgerec.converters.tensorrt_engine import build_bundle_engines
    from edgerec.runtime.manifest import Artifact, Manifest, file_entry, write_manifest

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    _onnx_model(bundle / "scorer_trt_int8.onnx")
    _onnx_model(bundle / "fused_fp32.onnx")
    ins = [TensorSpec("x", "float32", [None, 4]), TensorSpec("ids", "int32", [None, 6])]
    outs = [TensorSpec("y", "float32", [None, 2]), TensorSpec("ids_out", "int32", [None, 6])]
    arts = []
    for name, part, precision, details in (("scorer_trt_int8.onnx", "scorer", "int8",
                                            {"quantization": "tensorrt", "tensorrt_violations": []}),
                                           ("fused_fp32.onnx", "fused", "fp32", {})):
        entry = file_entry(bundle, name)
        arts.append(Artifact(name, "onnx", precision, part, entry["sha256"], entry["size_bytes"], ins, outs,
                             details=details))
    write_manifest(bundle, Manifest(arts))
    results = build_bundle_engines(bundle, tmp_path / "engines", config=EngineConfig(candidate_buckets=(10, 100)),
                                   parts=("scorer", "fused"))
    assert results["fused"].skipped and "no TensorRT-ready" in results["fused"].reason
    scorer = results["scorer"]
    if HAVE_TRT and scorer.status == "built":
        assert scorer.artifact.format == "trt_engine" and scorer.artifact.part == "scorer"
    else:
        assert scorer.skipped and "tensorrt" in scorer.reason
        assert scorer.profiles[1]["x"] == ShapeRange((11, 4), (100, 4), (100, 4))   # candidate buckets
