"""`edgerec bench` on a tiny hand-built ONNX bundle: every scenario runs, files are well-formed,
edgerec and the raw backend compute the same scores, isolation returns the same record shape."""
import json

import numpy as np
import pytest

from edgerec.benchmarks import edgerec_paths
from edgerec.benchmarks.harness import RECORD_KEYS, Harness, HarnessConfig
from edgerec.benchmarks.scenarios import build_case, bundle_data, plan_cases
from edgerec.benchmarks.stats import LoopLimits
from edgerec.runtime.errors import BundleError
from edgerec.runtime.manifest import load_manifest
from edgerec.sdk.cli import main


def test_plan_covers_every_scenario(tiny_onnx_bundle):
    specs = plan_cases(tiny_onnx_bundle, batches=(1, 8), threads=(1,), candidates=(10,))
    scenarios = {(s.scenario, s.backend) for s in specs}
    assert ("tensor", "raw_onnxruntime") in scenarios and ("tensor", "edgerec_onnxruntime") in scenarios
    assert ("raw_request", "edgerec_onnxruntime") in scenarios
    assert {"candidates_warm", "candidates_cold", "candidates_fused", "result_cache_hit",
            "result_cache_miss"} <= {s.scenario for s in specs}
    # the model source recorded in the manifest does not exist: no Keras baselines planned
    assert not any(s.backend.startswith("keras") for s in specs)
    # both fused variants, two batch sizes, raw/edgerec pairs share one interleaved group
    tensor = [s for s in specs if s.scenario == "tensor"]
    assert len(tensor) == 2 * 2 * 2
    assert all(len({s.group for s in tensor if s.variant == v and s.batch == b}) == 1
               for v in ("fused_fp32.onnx", "fused_dynamic.onnx") for b in (1, 8))


def test_edgerec_and_raw_compute_the_same_scores(tiny_onnx_bundle):
    specs = [s for s in plan_cases(tiny_onnx_bundle, batches=(8,), candidates=(10,))
             if s.variant == "fused_fp32.onnx" and s.scenario in ("tensor", "raw_request")]
    outputs = {}
    for spec in specs:
        ready = build_case(spec)
        try:
            out = ready.call()
            if isinstance(out, dict):
                out = out["score"]
            elif isinstance(out, list):
                out = out[0]
            outputs[(spec.scenario, spec.backend)] = np.asarray(out).reshape(-1)
        finally:
            ready.close()
    reference = outputs[("tensor", "raw_onnxruntime")]
    assert reference.shape == (8,)
    for key, value in outputs.items():
        np.testing.assert_allclose(value, reference, rtol=1e-6, err_msg=str(key))


def test_candidate_modes_agree(tiny_onnx_bundle):
    data = bundle_data(str(tiny_onnx_bundle.resolve()))
    scores = {}
    for mode in ("warm", "cold", "fused"):
        ready = edgerec_paths.candidates_path(data, "onnxruntime", 12, 1, mode)
        try:
            ready.call()
            scores[mode] = np.asarray(ready.call())
        finally:
            ready.close()
    np.testing.assert_allclose(scores["warm"], scores["fused"], rtol=1e-5)
    np.testing.assert_allclose(scores["cold"], scores["fused"], rtol=1e-5)


def test_variant_view_keeps_integrity(tiny_onnx_bundle):
    data = bundle_data(str(tiny_onnx_bundle.resolve()))
    view = edgerec_paths.variant_view(data, "onnxruntime", {"fused": "fused_dynamic.onnx"})
    manifest = load_manifest(view, verify=True)
    assert manifest.selected == {"onnxruntime": {"fused": "fused_dynamic.onnx"}}
    assert load_manifest(tiny_onnx_bundle).selected["onnxruntime"]["fused"] == "fused_fp32.onnx"


def test_unknown_case_is_a_typed_error(tiny_onnx_bundle):
    spec = plan_cases(tiny_onnx_bundle, batches=(1,), candidates=())[0]
    with pytest.raises(BundleError, match="Expected a known"):
        build_case(type(spec)("no_such_scenario", "raw_onnxruntime", spec.variant, params=spec.params))


def test_isolated_run_returns_records(tiny_onnx_bundle):
    specs = [s for s in plan_cases(tiny_onnx_bundle, batches=(1,), candidates=())
             if s.scenario == "tensor" and s.variant == "fused_fp32.onnx"]
    harness = Harness(HarnessConfig(limits=LoopLimits(budget_s=0.05, max_iters=200), isolate=True, progress=False))
    records = harness.run(specs)
    assert len(records) == 2
    for rec in records:
        assert not rec.get("error"), rec.get("error")
        assert rec["isolated"] is True and rec["interleaved"] is True
        assert rec["p50_ms"] > 0 and rec["peak_rss_mb"] > 10


def test_bench_command_writes_report(tiny_onnx_bundle, tmp_path, capsys):
    out = tmp_path / "bench"
    rc = main(["bench", str(tiny_onnx_bundle), "--out", str(out), "--budget-s", "0.05", "--max-iters", "300",
               "--batches", "1,8", "--candidates", "16"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "tensor path" in printed and "1 user × 16 candidates" in printed and "result cache" in printed
    report = json.loads((out / "bench.json").read_text())
    assert report["config"]["batches"] == [1, 8]
    errors = [r for r in report["results"] if r.get("error")]
    assert not errors, errors
    for rec in report["results"]:
        assert set(RECORD_KEYS) <= set(rec)
        assert rec["p50_ms"] <= rec["p90_ms"] <= rec["p99_ms"] <= rec["p999_ms"]
        assert rec["rows_per_s"] > 0
    tensor = [r for r in report["results"] if r["scenario"] == "tensor"]
    assert {r["size_bytes"] for r in tensor} == {(tiny_onnx_bundle / "fused_fp32.onnx").stat().st_size}
    assert {r["delta_auc"] for r in tensor} == {0.0, -0.0015}
    comp = report["comparisons"]
    assert len(comp["overhead"]) == 2 * 2 * 2  # (tensor, raw_request) × 2 variants × 2 batches
    assert {c["candidates"] for c in comp["candidates"]} == {16}
    # whether a hit is faster depends on the model's cost against hashing the encoded request (a
    # timing question for the benchmark itself); here: both scenarios ran and were paired
    cache = comp["result_cache"][0]
    assert cache["hit_p50_ms"] > 0 and cache["miss_p50_ms"] > 0
    assert cache["miss_over_hit"] == pytest.approx(cache["miss_p50_ms"] / cache["hit_p50_ms"], rel=1e-2)
    assert any(k.startswith("raw_request") for k in report["profile"])
    assert [m["backend"] for m in report["runtime_memory"]] == ["onnxruntime"]
    assert report["runtime_memory"][0]["heavy_modules"] == [] and "runtime memory (onnxruntime" in printed
    md = (out / "bench.md").read_text()
    assert "## edgerec overhead over the raw backend" in md and "## 1 user × N candidates" in md
    assert "Where the time goes" in md
    assert sorted(p.name for p in out.glob("*.png")) == ["latency_percentiles.png", "overhead.png",
                                                        "size_auc_latency.png"]


def test_bench_command_rejects_missing_bundle(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "Expected a bundle directory" in capsys.readouterr().err


def test_bench_command_rejects_bad_batches(tmp_path):
    with pytest.raises(SystemExit):
        main(["bench", str(tmp_path), "--out", str(tmp_path), "--batches", "0,x"])


def test_resolve_keras_dir(tmp_path):
    from edgerec.benchmarks.baselines import resolve_keras_dir

    model = tmp_path / "model"
    model.mkdir()
    assert resolve_keras_dir(None, {"source": str(model)}, tmp_path) is None  # no edgerec_model.json
    (model / "edgerec_model.json").write_text("{}")
    assert resolve_keras_dir(None, {"source": str(model)}, tmp_path) == model.resolve()
    assert resolve_keras_dir(None, {"source": "model"}, tmp_path) == model.resolve()  # relative to the bundle
    assert resolve_keras_dir(str(model), {}, tmp_path) == model.resolve()
    with pytest.raises(BundleError, match="Expected a model directory holding edgerec_model.json"):
        resolve_keras_dir(str(tmp_path / "elsewhere"), {"source": str(model)}, tmp_path)


def test_bench_command_rejects_bad_keras_dir(tiny_onnx_bundle, tmp_path, capsys):
    rc = main(["bench", str(tiny_onnx_bundle), "--out", str(tmp_path / "o"), "--keras", str(tmp_path / "none")])
    assert rc == 2
    assert "Expected a model directory holding edgerec_model.json" in capsys.readouterr().err
