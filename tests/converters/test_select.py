"""Variant selection: budget, slower-than-fp32 and failed-validation rejections, full table kept."""
from __future__ import annotations

import pytest

from edgerec.converters.select import LatencyConfig, latency_feeds, select_variants
from edgerec.converters.validate import ArtifactResult, ValidationError, ValidationReport
from edgerec.runtime.manifest import TensorSpec


def _res(file, precision, fmt="tflite", delta=0.0, failures=()):
    metrics = {"max_abs_diff": 0.0, "mean_abs_diff": 0.0, "auc": 0.8 + delta, "delta_auc": delta,
               "mean_abs_dp": abs(delta)}
    return ArtifactResult(file, f"/nonexistent/{file}", fmt, precision, "fused",
                          "litert" if fmt == "tflite" else "onnxruntime", metrics, list(failures))


def test_fastest_within_budget_wins_and_every_rejection_has_a_reason():
    report = ValidationReport(results=[
        _res("f32.tflite", "fp32"), _res("dyn.tflite", "dynamic", delta=-0.001),
        _res("int8.tflite", "int8", delta=-0.004), _res("f16.tflite", "fp16", delta=0.0),
        _res("f32.onnx", "fp32", "onnx"), _res("q.onnx", "int8", "onnx", delta=0.0005),
        _res("bad.onnx", "dynamic", "onnx", failures=["max_abs_diff 1 > tolerance 0.03"])])
    lat = {"f32.tflite": {1: 0.02, 256: 4.0}, "dyn.tflite": {1: 0.015, 256: 2.0},
           "int8.tflite": {1: 0.01, 256: 1.0}, "f16.tflite": {1: 0.03, 256: 5.0},
           "f32.onnx": {1: 0.05, 256: 3.0}, "q.onnx": {1: 0.06, 256: 3.5}, "bad.onnx": {1: 0.01, 256: 0.1}}
    sel = select_variants(report, lat, budget=0.003, sizes={k: 100 for k in lat})
    assert sel.selected == {"litert": {"fused": "dyn.tflite"}, "onnxruntime": {"fused": "f32.onnx"}}
    reasons = {r["file"]: r["reason"] for r in sel.rejected}
    assert set(reasons) == {"int8.tflite", "f16.tflite", "q.onnx", "bad.onnx"}
    assert "exceeds the budget 0.003" in reasons["int8.tflite"]
    assert "slower than fp32 at batch 256" in reasons["f16.tflite"]
    assert "slower than fp32" in reasons["q.onnx"]
    assert reasons["bad.onnx"].startswith("failed validation")
    assert len(sel.table) == 7 and sel.row("f32.tflite")["status"] == "accepted"
    assert sel.row("dyn.tflite")["latency_ms_b1"] == 0.015 and sel.row("dyn.tflite")["size_ratio"] == 1.0


def test_budget_is_configurable_and_fp32_never_needs_labels():
    report = ValidationReport(results=[_res("f32.tflite", "fp32"), _res("int8.tflite", "int8", delta=-0.004)])
    lat = {"f32.tflite": {1: 0.02, 256: 4.0}, "int8.tflite": {1: 0.01, 256: 1.0}}
    assert select_variants(report, lat, budget=0.01).selected["litert"]["fused"] == "int8.tflite"
    no_labels = ValidationReport(results=[_res("f32.tflite", "fp32"), _res("int8.tflite", "int8")])
    for res in no_labels.results:
        res.metrics.pop("delta_auc")
    sel = select_variants(no_labels, lat)
    assert sel.selected["litert"]["fused"] == "f32.tflite"
    assert "no labelled rows" in sel.rejected[0]["reason"]


def test_user_encoder_is_judged_by_its_composition():
    ue32, uedyn, ue8 = (_res(f, p) for f, p in (("u32.tflite", "fp32"), ("udyn.tflite", "dynamic"),
                                                ("u8.tflite", "int8")))
    for res in (ue32, uedyn, ue8):
        res.part = "user_encoder"
        res.metrics = {"max_abs_diff": 0.01, "mean_abs_diff": 0.001}
    report = ValidationReport(results=[ue32, uedyn, ue8], compositions=[
        {"user_encoder": "udyn.tflite", "scorer": "sdyn.tflite", "metrics": {"delta_auc": -0.001}, "failures": []},
        {"user_encoder": "u8.tflite", "scorer": "s8.tflite", "metrics": {"delta_auc": -0.02}, "failures": []},
        {"user_encoder": "user_encoder_trt.onnx", "scorer": "scorer_qdq.onnx", "metrics": {"delta_auc": -0.02},
         "failures": []},
        {"user_encoder": "user_encoder_trt.onnx", "scorer": "scorer_trt.onnx", "metrics": {"delta_auc": 0.0},
         "failures": []}])
    lat = {"u32.tflite": {256: 3.0}, "udyn.tflite": {256: 2.0}, "u8.tflite": {256: 1.0}}
    sel = select_variants(report, lat)
    assert sel.selected == {"litert": {"user_encoder": "udyn.tflite"}}
    assert sel.row("udyn.tflite")["delta_auc_source"] == "composition"
    assert "exceeds the budget" in sel.row("u8.tflite")["reason"]
    from edgerec.converters.select import _composition_deltas

    assert _composition_deltas(report)["user_encoder_trt.onnx"] == 0.0  # its own scorer variant counts


def test_bad_arguments():
    report = ValidationReport(results=[_res("f32.tflite", "fp32")])
    with pytest.raises(ValidationError, match="accuracy budget"):
        select_variants(report, {}, budget=-1)
    with pytest.raises(ValidationError, match="backends among"):
        select_variants(report, {}, backends=["tensorrt-x"])
    with pytest.raises(ValidationError, match="batch_sizes"):
        LatencyConfig(batch_sizes=(0,))


def test_latency_feeds_tile_real_rows_and_fill_missing():
    import numpy as np

    specs = [TensorSpec("cand_item", "int32", [None]), TensorSpec("user_state", "float32", [None, 4, None])]
    feeds = latency_feeds(specs, {"cand_item": np.array([5, 6, 7])}, 8)
    assert feeds["cand_item"].tolist() == [5, 6, 7, 5, 6, 7, 5, 6]
    assert feeds["user_state"].shape == (8, 4, 1) and feeds["user_state"].dtype == np.float32


@pytest.mark.slow
def test_measure_latencies_on_real_backends(tmp_path, model_dir):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("validate_support_s", Path(__file__).with_name("test_validate_support.py"))
    S = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(S)
    from edgerec.converters.select import measure_latencies

    fp32 = S.tflite(model_dir / "gru.keras", "fp32", tmp_path / "a")
    dyn = S.tflite(model_dir / "gru.keras", "dynamic", tmp_path / "b")
    rows = S.rows_for({"hist_items": ("int32", (None, 8)), "cand_item": ("int32", (None,))}, 50)
    lat = measure_latencies([fp32, dyn], {"fused": rows}, LatencyConfig(batch_sizes=(1, 16), rounds=3,
                                                                          min_time_s=0.002, warmup=1))
    assert set(lat) == {"fused.fp32.tflite", "fused.dynamic.tflite"}
    assert all(0 < ms < 1000 for by_batch in lat.values() for ms in by_batch.values())
    assert all(set(by_batch) == {1, 16} for by_batch in lat.values())


def test_unverified_artifacts_are_gated_by_their_source(tmp_path):
    """Engines that cannot run here: selected when their source ONNX passed and is within budget,
    rejected (with both reasons) otherwise; rows say verified False."""
    from edgerec.converters.select import select_unverified
    from edgerec.converters.validate import DeployableArtifact

    report = ValidationReport(results=[_res("f32.onnx", "fp32", "onnx"), _res("trt.onnx", "int8", "onnx", delta=0.001),
                                       _res("far.onnx", "int8", "onnx", delta=0.01)])
    lat = {"f32.onnx": {256: 1.0}, "trt.onnx": {256: 2.0}, "far.onnx": {256: 0.5}}
    sel = select_variants(report, lat, budget=0.003, sizes={k: 100 for k in lat})
    assert "slower than fp32" in sel.row("trt.onnx")["reason"]        # slow on ORT CPU, fine for TensorRT
    engines = []
    for name, source in (("good.plan", "trt.onnx"), ("far.plan", "far.onnx"), ("lost.plan", "gone.onnx")):
        (tmp_path / name).write_bytes(b"plan")
        engines.append(DeployableArtifact(str(tmp_path / name), "trt_engine", "int8", "fused",
                                          details={"source": source}))
    reasons = {e.file: "the tensorrt backend is not installed" for e in engines}
    select_unverified(sel, engines, reasons, budget=0.003)
    assert sel.selected["tensorrt"] == {"fused": "good.plan"}
    good = sel.row("good.plan")
    assert good["verified"] is False and good["status"] == "selected" and good["delta_auc"] == 0.001
    assert "not installed" in good["reason"]
    rejected = {r["file"]: r["reason"] for r in sel.rejected if r["backend"] == "tensorrt"}
    assert set(rejected) == {"far.plan", "lost.plan"}
    assert "over the budget" in rejected["far.plan"] and "not installed" in rejected["far.plan"]
    assert "not produced" in rejected["lost.plan"]


def test_candidates_table_lists_every_row_with_its_reason():
    from edgerec.converters.select import candidates_table

    rows = [{"file": "a.tflite", "backend": "litert", "size_bytes": 2048, "size_ratio": 1.0, "delta_auc": 0.0,
             "latency_ms_b1": 0.02, "latency_ms_b256": 1.5, "status": "selected", "reason": ""},
            {"file": "b.plan", "backend": "tensorrt", "size_bytes": 1024, "size_ratio": None, "delta_auc": None,
             "status": "rejected", "reason": "no engine"}]
    text = candidates_table(rows).splitlines()
    assert "ms@1" in text[0] and "ms@256" in text[0] and len(text) == 4
    assert text[2].startswith("a.tflite") and "2.0" in text[2] and text[2].endswith("selected")
    assert text[3].endswith("rejected: no engine") and " - " in text[3]


def test_coarse_scores_are_refused_with_the_measured_resolution_and_so_are_their_split_parts():
    """A compressed variant whose 1,000 sweep scores collapse (quantized activations before the head) is
    rejected with its figures, whatever the objective; fp32 never is; the same variant's scorer goes too."""
    from edgerec.converters.select import resolution_problem

    fine = {"candidates": 1000, "distinct_fraction": 1.0, "top10_tied": 0}
    results = [_res("fused_fp32.onnx", "fp32", "onnx"), _res("fused_qdq_t4.onnx", "int4", "onnx", delta=0.001),
               _res("fused_dynamic_t4.onnx", "int4", "onnx", delta=0.001),
               _res("fused_int8.onnx", "int8", "onnx", delta=0.001)]
    resolutions = [dict(fine, distinct_fraction=0.97),
                   {"candidates": 1000, "distinct_fraction": 0.886, "top10_tied": 3}, fine, dict(fine, top10_tied=2)]
    for res, resolution in zip(results, resolutions):
        res.metrics["score_resolution"] = resolution
    scorers = [_res(f, p, "onnx", delta=0.001) for f, p in
               (("scorer_fp32.onnx", "fp32"), ("scorer_qdq_t4.onnx", "int4"), ("scorer_dynamic_t4.onnx", "int4"))]
    for res in scorers:
        res.part = "scorer"
    lat = {r.file: {1: 0.1, 256: 1.0} for r in results + scorers}
    sizes = {"fused_fp32.onnx": 1000, "fused_qdq_t4.onnx": 100, "fused_dynamic_t4.onnx": 150, "fused_int8.onnx": 90,
             "scorer_fp32.onnx": 1000, "scorer_qdq_t4.onnx": 100, "scorer_dynamic_t4.onnx": 150}
    sel = select_variants(ValidationReport(results=results + scorers), lat, sizes=sizes, objective="size")
    assert sel.selected == {"onnxruntime": {"fused": "fused_dynamic_t4.onnx", "scorer": "scorer_dynamic_t4.onnx"}}
    reasons = {r["file"]: r["reason"] for r in sel.rejected}
    assert set(reasons) == {"fused_qdq_t4.onnx", "fused_int8.onnx", "scorer_qdq_t4.onnx"}
    assert reasons["fused_qdq_t4.onnx"] == ("score resolution: 886 distinct scores among 1000 candidates "
                                            "(88.6% < 99%), 3 of the top 10 tied")
    assert reasons["fused_int8.onnx"] == "score resolution: 2 of the top 10 tied"
    assert reasons["scorer_qdq_t4.onnx"] == "its fused variant fused_qdq_t4.onnx: " + reasons["fused_qdq_t4.onnx"]
    assert sel.row("fused_fp32.onnx")["distinct_fraction"] == 0.97          # fp32 is reported, never refused
    assert resolution_problem(fine) == "" and resolution_problem(None) == ""


def test_a_compressed_variant_whose_sweep_did_not_run_is_refused_when_others_were_swept():
    fine = {"candidates": 1000, "distinct_fraction": 1.0, "top10_tied": 0}
    results = [_res("fused_fp32.onnx", "fp32", "onnx"), _res("fused_dynamic.onnx", "dynamic", "onnx", delta=0.001),
               _res("fused_dynamic_t4.onnx", "int4", "onnx", delta=0.001)]
    results[0].metrics["score_resolution"] = results[2].metrics["score_resolution"] = fine
    lat = {r.file: {1: 0.1, 256: 1.0} for r in results}
    sel = select_variants(ValidationReport(results=results), lat, objective="size",
                          sizes={"fused_fp32.onnx": 1000, "fused_dynamic.onnx": 100, "fused_dynamic_t4.onnx": 150})
    assert sel.selected["onnxruntime"]["fused"] == "fused_dynamic_t4.onnx"
    assert sel.row("fused_dynamic.onnx")["reason"].startswith("no score resolution measured")
    for res in results:                               # rows without groups: nothing swept, nothing refused for it
        res.metrics.pop("score_resolution", None)
    assert select_variants(ValidationReport(results=results), lat, objective="size", sizes={
        "fused_fp32.onnx": 1000, "fused_dynamic.onnx": 100, "fused_dynamic_t4.onnx": 150}).selected == {
        "onnxruntime": {"fused": "fused_dynamic.onnx"}}


def test_a_scorer_is_timed_with_one_users_state_where_it_broadcasts_it():
    import numpy as np

    from edgerec.converters.latency import _serving_call

    class Scorer:
        inputs = [TensorSpec("cand_item", "int32", [None]), TensorSpec("user_state", "float32", [None, 4])]

        def __init__(self, broadcasts):
            self.broadcasts, self.probed = broadcasts, []

        def run_validated(self, feeds):
            shapes = {k: v.shape for k, v in feeds.items()}
            self.probed.append(shapes)
            if not self.broadcasts and len({len(v) for v in feeds.values()}) > 1:
                raise ValueError("Expected one batch size, received: {16, 1}")
            return {"score": (feeds["cand_item"][:, None] * feeds["user_state"][:, :1]).astype(np.float32)}

        run = run_validated

    arrays = {"cand_item": np.arange(2, 12, dtype=np.int32), "user_state": np.ones((10, 4), np.float32)}
    scorer = Scorer(True)
    run, served = _serving_call(scorer, "scorer", arrays, 16)
    assert run == scorer.run_validated
    assert served["cand_item"].shape == (16,) and served["user_state"].shape == (1, 4)
    older = Scorer(False)
    run, repeated = _serving_call(older, "scorer", arrays, 16)
    assert repeated["user_state"].shape == (16, 4) and run == older.run
    assert {"cand_item": (16,), "user_state": (1, 4)} in older.probed
    for part, batch in (("fused", 16), ("scorer", 1)):
        assert _serving_call(Scorer(True), part, arrays, batch)[1]["user_state"].shape == (batch, 4)


def test_a_length_free_scorer_is_timed_with_the_median_users_state_without_padding():
    """As the runtime serves it: the user with the median history (3 of 5 positions here), cut to
    its valid positions where the scores stay the same; a scorer of fixed sizes gets it whole."""
    import numpy as np

    from edgerec.converters.latency import _serving_call

    class Scorer:
        def __init__(self, length):
            self.inputs = [TensorSpec("cand_item", "int32", [None]), TensorSpec("user_mask", "float32", [None, length]),
                           TensorSpec("user_state", "float32", [None, length, 2])]

        def run_validated(self, feeds):
            mask, state = feeds["user_mask"], feeds["user_state"][..., 0]
            pooled = (mask * state).sum(axis=1, keepdims=True) / np.maximum(mask.sum(axis=1, keepdims=True), 1)
            return {"score": (feeds["cand_item"][:, None] * pooled).astype(np.float32)}

        run = run_validated

    mask = np.zeros((3, 5), np.float32)
    for row, valid in enumerate((5, 1, 3)):
        mask[row, 5 - valid:] = 1.0
    arrays = {"cand_item": np.arange(2, 12, dtype=np.int32), "user_mask": mask,
              "user_state": np.random.default_rng(0).normal(size=(3, 5, 2)).astype(np.float32)}
    run, served = _serving_call(Scorer(None), "scorer", arrays, 16)
    assert served["user_mask"].tolist() == [[1.0, 1.0, 1.0]] and served["user_state"].shape == (1, 3, 2)
    np.testing.assert_array_equal(served["user_state"], arrays["user_state"][2:3, 2:])
    _, whole = _serving_call(Scorer(5), "scorer", arrays, 16)
    assert whole["user_mask"].shape == (1, 5) and whole["user_mask"].sum() == 3
