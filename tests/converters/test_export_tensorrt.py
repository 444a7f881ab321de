"""`export_bundle(targets=(..., "tensorrt"))`: the engine build is a cached pass whose engines land in the
manifest (format trt_engine, selected for the tensorrt backend) and that the runtime's loader finds.

Where TensorRT is not installed the builder is faked (`tensorrt_engine.build_engine` monkeypatched): the
flow around it is what is under test; test_tensorrt_engine covers a real build on a GPU machine."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                                 reason="tensorrt installed: engines are built for real (GPU tests)")]


def _support():
    spec = importlib.util.spec_from_file_location("validate_support_t", Path(__file__).with_name("test_validate_support.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


S = _support()


def _fast():
    from edgerec.converters.select import LatencyConfig

    return LatencyConfig(batch_sizes=(1, 64), rounds=2, min_time_s=0.001, warmup=1)


@pytest.fixture(scope="module")
def engine_export(model_dir, tmp_path_factory):
    from edgerec.converters import tensorrt_engine
    from edgerec.converters.export import export_bundle
    from edgerec.converters.keras_io import load_keras_model
    from edgerec.runtime.io import atomic_write_bytes, sha256_file

    calls = []

    def fake_build(onnx_path, engine_path, *, config=None, part=None, inputs=None):
        calls.append(part)
        data = b"FAKE-TRT-PLAN:" + Path(onnx_path).read_bytes()[:256]
        atomic_write_bytes(engine_path, data)
        return tensorrt_engine.EngineBuildResult("built", "", Path(engine_path), Path(onnx_path),
                                                 sha256_file(engine_path), len(data), [], "10.0-fake", ["faked"])

    root = tmp_path_factory.mktemp("trt")
    mdir = S.write_model_dir(root / "model", load_keras_model(model_dir / "din.keras"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tensorrt_engine, "build_engine", fake_build)
        options = dict(quantize=("int8",), targets=("tflite", "tensorrt"), cache_dir=root / "cache", latency=_fast(),
                       budget=0.05)
        result = export_bundle(mdir, root / "bundle", **options)
        builds = len(calls)
        again = export_bundle(mdir, root / "bundle2", **options)
    return {"result": result, "again": again, "builds": builds, "calls": calls, "root": root, "mdir": mdir}


def test_engines_are_manifest_artifacts_selected_for_tensorrt(engine_export):
    from edgerec.runtime.io import sha256_file

    result = engine_export["result"]
    m, bundle = result.manifest, result.bundle
    engine = m.artifact("fused_trt_int8.plan")
    assert (engine.format, engine.precision, engine.part) == ("trt_engine", "int8", "fused")
    assert engine.sha256 == sha256_file(bundle / engine.file) and engine.size_bytes == (bundle / engine.file).stat().st_size
    assert (bundle / engine.file).read_bytes().startswith(b"FAKE-TRT-PLAN:")
    assert {t.name for t in engine.inputs} == {"hist_items", "cand_item", "hour", "dense"}
    assert engine.details["source"] == "fused_trt_int8.onnx" and engine.details["tensorrt_version"] == "10.0-fake"
    assert engine.validation["verified"] is False and "tensorrt" in engine.validation["reason"]
    assert engine.validation["source_validation"]["passed"] is True
    assert m.selected["tensorrt"] == {"fused": "fused_trt_int8.plan"}
    row = next(r for r in m.candidates if r["file"] == engine.file)
    assert row["status"] == "selected" and row["verified"] is False
    assert result.summary()["tensorrt"] == {"fused": {"status": "built", "reason": engine.validation["reason"],
                                                      "engine": "fused_trt_int8.plan"}}


def test_runtime_manifest_loader_accepts_and_finds_the_engine(engine_export):
    from edgerec.runtime.errors import MissingDependencyError
    from edgerec.runtime.selection import choose_backend, selected_files
    from edgerec.runtime.manifest import load_manifest
    from edgerec.runtime.predictor import load

    bundle = engine_export["result"].bundle
    manifest = load_manifest(bundle, verify=True)            # sha256 of the engine checked too
    assert selected_files(manifest, "tensorrt") == {"fused": "fused_trt_int8.plan"}
    with pytest.raises(MissingDependencyError, match="tensorrt"):   # found; only the package is missing here
        choose_backend(manifest, "tensorrt")
    with pytest.raises(MissingDependencyError, match="tensorrt"):
        load(bundle, backend="tensorrt")


def test_engine_pass_is_cached_and_lineage_keeps_pass_order(engine_export):
    assert engine_export["builds"] == 1 and engine_export["calls"] == ["fused"]   # the rerun built nothing
    m = engine_export["result"].manifest
    assert m.lineage["passes"] == ["tflite", "onnx_export", "ort_optimize", "ort_quantize", "tensorrt_engine"]
    steps = m.lineage["steps"]
    seen = set()
    for step in steps:                                     # parents come before their children
        assert step["parent"] is None or step["parent"] in seen
        seen.add(step["id"])
    assert sum(s["pass"] == "onnx_export" for s in steps) == 1     # every ONNX variant shares one export
    chain = [s["pass"] for s in m.artifact("fused_trt_int8.plan").lineage]
    assert chain == ["onnx_export", "ort_quantize", "tensorrt_engine"]
    again = engine_export["again"].manifest.artifact("fused_trt_int8.plan")
    assert again.sha256 == m.artifact("fused_trt_int8.plan").sha256


def test_validate_says_the_engine_is_not_verified_here(engine_export):
    from edgerec.converters.revalidate import validate_bundle

    bundle = engine_export["result"].bundle
    result = validate_bundle(bundle, examples_only=True)
    assert result.status == "not_verified" and result.exit_code == 1
    assert any("tensorrt backend is not installed" in r and "fused_trt_int8.plan" in r for r in result.not_verified)
    scoped = validate_bundle(bundle, examples_only=True, backends=["litert", "onnxruntime"])
    assert scoped.status == "ok" and scoped.replays and all(r.passed for r in scoped.replays)


def test_tensorrt_without_int8_says_what_is_missing(engine_export):
    from edgerec.converters.export import export_bundle

    result = export_bundle(engine_export["mdir"], engine_export["root"] / "noint8", quantize=("dynamic",),
                           targets=("tensorrt",), cache_dir=engine_export["root"] / "cache", latency=_fast())
    assert not result.manifest.find(format="trt_engine") and "tensorrt" not in result.manifest.selected
    assert result.summary()["tensorrt"]["fused"]["status"] == "skipped"
    assert "int8" in result.summary()["tensorrt"]["fused"]["reason"]
