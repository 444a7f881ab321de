"""Selection objectives (size / latency / balanced) and latencies taken from `edgerec bench` on the target."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgerec.converters.select import OBJECTIVES, bench_latencies, select_variants
from edgerec.converters.validate import (ArtifactResult, DeployableArtifact, ValidationData, ValidationError,
                                         ValidationReport, candidate_sweep, score_resolution)


def _res(file, precision, delta=0.0):
    metrics = {"max_abs_diff": 0.0, "mean_abs_diff": 0.0, "auc": 0.8 + delta, "delta_auc": delta,
               "mean_abs_dp": abs(delta), "score_resolution": {"candidates": 1000, "distinct_fraction": 0.999,
                                                               "top10_tied": 0}}
    return ArtifactResult(file, f"/nonexistent/{file}", "onnx", precision, "fused", "onnxruntime", metrics, [])


REPORT = ValidationReport(results=[_res("fp32.onnx", "fp32"), _res("dyn.onnx", "dynamic", -0.001),
                                   _res("t4.onnx", "int4", -0.002), _res("t4fast.onnx", "int4", -0.0025),
                                   _res("over.onnx", "int4", -0.01)])
SIZES = {"fp32.onnx": 1000, "dyn.onnx": 260, "t4.onnx": 120, "t4fast.onnx": 140, "over.onnx": 50}
LAT = {"fp32.onnx": {1: 0.10, 256: 4.0}, "dyn.onnx": {1: 0.09, 256: 3.0},
       "t4.onnx": {1: 0.13, 256: 4.1},        # 1.30x slower at batch 1: not "balanced"
       "t4fast.onnx": {1: 0.105, 256: 4.3},   # within 1.10x at both batch sizes
       "over.onnx": {1: 0.05, 256: 1.0}}      # smallest and fastest, but over the budget


def _selected(objective, latencies=LAT):
    sel = select_variants(REPORT, latencies, budget=0.003, sizes=SIZES, objective=objective)
    return sel.selected["onnxruntime"]["fused"], sel


def test_each_objective_picks_its_variant_within_the_budget():
    assert _selected("size")[0] == "t4.onnx"
    assert _selected("latency")[0] == "dyn.onnx"
    chosen, sel = _selected("balanced")
    assert chosen == "t4fast.onnx"
    assert "1.30x > 1.10x" in sel.row("t4.onnx")["reason"] and "batch 1" in sel.row("t4.onnx")["reason"]
    for objective in OBJECTIVES:
        assert "exceeds the budget" in _selected(objective)[1].row("over.onnx")["reason"]
    assert sel.row("t4fast.onnx")["distinct_fraction"] == 0.999 and sel.row("t4fast.onnx")["top10_tied"] == 0
    with pytest.raises(ValidationError, match="selection objective"):
        select_variants(REPORT, LAT, objective="smallest")


def _bench(path, rows):
    path.write_text(json.dumps({"schema_version": 1, "results": rows}))
    return path


def _rec(variant, batch, p50, backend="edgerec_onnxruntime", threads=1, scenario="tensor"):
    return {"scenario": scenario, "backend": backend, "variant": variant, "batch": batch, "threads": threads,
            "p50_ms": p50, "error": None}


def test_bench_json_latencies_replace_this_machines_and_change_the_choice(tmp_path):
    arts = [DeployableArtifact(f"/b/{name}", "onnx", "fp32" if name == "fp32.onnx" else "int4", "fused")
            for name in SIZES]
    rows = []
    for name in SIZES:
        device = {"fp32.onnx": 1.0, "t4.onnx": 1.05}.get(name, 2.0)   # on the phone, only t4 keeps up with fp32
        rows += [_rec(name, 1, device), _rec(name, 256, 100 * device),
                 _rec(name, 1, 99.0, backend="raw_onnxruntime"),          # edgerec's row is preferred
                 _rec(name, 1, 99.0, threads=4), _rec(name, 1, 99.0, scenario="raw_request")]
    lat = bench_latencies(_bench(tmp_path / "bench.json", rows), arts)
    assert lat["t4.onnx"] == {1: 1.05, 256: 105.0} and lat["fp32.onnx"] == {1: 1.0, 256: 100.0}
    assert _selected("balanced", lat)[0] == "t4.onnx"                 # here t4fast was chosen
    missing = [r for r in rows if r["variant"] != "t4.onnx"]
    with pytest.raises(ValidationError, match=r"time every fused candidate.*t4\.onnx"):
        bench_latencies(_bench(tmp_path / "partial.json", missing), arts)
    with pytest.raises(ValidationError, match=r"t4\.onnx \(batch \[256\]\)"):
        bench_latencies(_bench(tmp_path / "b1.json", missing + [_rec("t4.onnx", 1, 1.0)]), arts, batch_sizes=(1, 256))
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValidationError, match="edgerec bench"):
        bench_latencies(tmp_path / "junk.json", arts)


def test_split_parts_are_left_to_local_timing(tmp_path):
    arts = [DeployableArtifact("/b/fused_fp32.onnx", "onnx", "fp32", "fused"),
            DeployableArtifact("/b/scorer_fp32.onnx", "onnx", "fp32", "scorer")]
    lat = bench_latencies(_bench(tmp_path / "bench.json", [_rec("fused_fp32.onnx", 1, 0.2)]), arts)
    assert lat == {"fused_fp32.onnx": {1: 0.2}}


def test_score_resolution_counts_distinct_scores_and_forced_ties():
    grid = np.round(np.linspace(0.1, 0.9, 1000) * 256) / 256          # a quantized sigmoid's 1/256 grid
    coarse = score_resolution(grid)
    assert coarse["distinct_fraction"] < 0.25 and coarse["top10_tied"] == 10
    fine = score_resolution(np.linspace(0.1, 0.9, 1000))
    assert fine == {"candidates": 1000, "distinct_fraction": 1.0, "top10_tied": 0}


def test_candidate_sweep_finds_the_candidate_input_of_any_model():
    hist = np.repeat(np.arange(1, 6, dtype=np.int32)[None], 6, axis=0)
    data = ValidationData({"clicked_ids": np.concatenate([hist, hist + 1]),
                           "target_id": np.arange(1, 13, dtype=np.int32).reshape(-1, 1)},
                          np.zeros(12, np.float32), np.repeat([0, 1], 6))
    sweep = candidate_sweep(data, count=1000)
    assert sweep["target_id"].shape == (12, 1)                        # only ids up to the largest seen
    assert sorted(sweep["target_id"].ravel().tolist()) == list(range(1, 13))
    assert np.all(sweep["clicked_ids"] == hist[0])
    assert candidate_sweep(ValidationData({"x": np.zeros((4, 2))}, None, None)) is None


def test_export_refuses_an_unknown_objective_or_a_missing_bench_file(tmp_path):
    from edgerec.converters.errors import ConverterConfigError
    from edgerec.converters.export import ExportOptions

    assert ExportOptions.checked().objective == "balanced"
    with pytest.raises(ConverterConfigError, match="selection objective"):
        ExportOptions.checked(objective="cheap")
    with pytest.raises(ConverterConfigError, match="latency-from"):
        ExportOptions.checked(latency_from=str(tmp_path / "none.json"))


def test_cli_passes_objective_and_latency_from(monkeypatch, tmp_path):
    import argparse

    from edgerec.sdk.cli import export as cli

    parser = argparse.ArgumentParser()
    cli.configure(parser)
    args = parser.parse_args(["m", "--out", "o", "--quantize", "int8,int4", "--objective", "size",
                              "--latency-from", "bench.json"])
    seen = {}

    class Result:
        manifest = type("M", (), {"candidates": []})()

        def summary(self):
            return {}

    def fake_export(*a, **kw):
        seen.update(kw)
        return Result()

    monkeypatch.setattr("edgerec.converters.export.export_bundle", fake_export)
    assert cli.run(args) == 0
    assert seen["objective"] == "size" and seen["latency_from"] == "bench.json"
    assert seen["quantize"] == ["int8", "int4"]
    assert "1.10x" in parser.format_help()


@pytest.mark.slow
def test_export_with_int4_tables_selects_by_size_and_takes_device_latency(byom_zoo, tmp_path):
    from edgerec.converters.export import export_bundle

    result = export_bundle(byom_zoo["din"], tmp_path / "b", data=byom_zoo["rows"], quantize=("int8", "int4"),
                           targets=("onnx",), objective="size", budget=0.01, max_groups=20)
    rows = {r["file"]: r for r in result.manifest.candidates}
    assert {"fused_fp32_t4.onnx", "fused_dynamic_t4.onnx", "fused_qdq_t4.onnx", "fused_dynamic_t8.onnx"} <= set(rows)
    chosen = result.manifest.selected["onnxruntime"]["fused"]
    within = [r for r in rows.values() if r["status"] in ("accepted", "selected")]
    assert rows[chosen]["size_bytes"] == min(r["size_bytes"] for r in within)
    assert rows["fused_qdq_t4.onnx"]["distinct_fraction"] >= 0.99 and rows["fused_qdq_t4.onnx"]["top10_tied"] == 0
    art = next(a for a in result.manifest.artifacts if a.file == "fused_qdq_t4.onnx")
    assert art.precision == "int4"
    bench = [_rec(name, b, 1.0 if name == "fused_fp32.onnx" else 5.0) for name in rows for b in (1, 256)]
    again = export_bundle(byom_zoo["din"], tmp_path / "b2", data=byom_zoo["rows"], quantize=("int8", "int4"),
                          targets=("onnx",), objective="balanced", budget=0.01, max_groups=20,
                          latency_from=_bench(tmp_path / "bench.json", bench))
    assert again.manifest.selected["onnxruntime"]["fused"] == "fused_fp32.onnx"   # on the "device" all are 5x slower
    assert again.manifest.lineage["options"]["latency_from"].endswith("bench.json")
    with pytest.raises(ValidationError, match="time every fused candidate"):
        export_bundle(byom_zoo["din"], tmp_path / "b3", data=byom_zoo["rows"], quantize=("int8", "int4"),
                      targets=("onnx",), max_groups=20,
                      latency_from=_bench(tmp_path / "few.json", bench[:2]))
