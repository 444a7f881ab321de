"""export_model end to end on tiny models: every variant, split parts, pruning, BYOM, bad options."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _support():
    spec = importlib.util.spec_from_file_location("validate_support_e", Path(__file__).with_name("test_validate_support.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


S = _support()


def _fast():
    from edgerec.converters.select import LatencyConfig

    return LatencyConfig(batch_sizes=(1, 64), rounds=3, min_time_s=0.002, warmup=1)


@pytest.fixture(scope="module")
def din_export(model_dir, tmp_path_factory):
    from edgerec.converters.export import export_model
    from edgerec.converters.keras_io import load_keras_model
    from edgerec.converters.passes.tflite import TFLitePass

    root = tmp_path_factory.mktemp("export")
    mdir = S.write_model_dir(root / "model", load_keras_model(model_dir / "din.keras"))
    lines = []
    manifest = export_model(mdir, root / "bundle", quantize=("int8", "fp16"), cache_dir=root / "cache",
                            latency=_fast(), progress=lines.append)
    calls = TFLitePass.calls
    again = export_model(mdir, root / "bundle2", quantize=("int8", "fp16"), cache_dir=root / "cache",
                         latency=_fast())
    return {"manifest": manifest, "again": again, "tflite_calls_on_rerun": TFLitePass.calls - calls,
            "lines": lines, "root": root, "mdir": mdir}


def test_every_variant_is_produced_validated_or_explained(din_export):
    m = din_export["manifest"]
    files = {a.file for a in m.artifacts}
    conversion_rejects = {r["file"] for r in m.rejected if r.get("stage") == "conversion"}
    expected = {"fused_fp32.tflite", "fused_fp16.tflite", "fused_dynamic.tflite", "fused_int8.tflite",
                "fused_fp32.onnx", "fused_dynamic.onnx", "fused_qdq_int8.onnx", "fused_trt_int8.onnx"}
    assert expected <= files | conversion_rejects
    assert {"fused_fp32.tflite", "fused_fp32.onnx"} <= files
    for art in m.artifacts:
        assert art.validation["passed"] and art.sha256 and art.size_bytes > 0
        assert {t.name for t in art.inputs} == {"hist_items", "cand_item", "hour", "dense"}
        assert {"max_abs_diff", "auc", "delta_auc"} <= set(art.validation)
        assert art.lineage and art.lineage[0]["pass"] in ("tflite", "onnx_export")
    assert set(m.selected) == {"litert", "onnxruntime"} and all("fused" in v for v in m.selected.values())
    chosen = {f for v in m.selected.values() for f in v.values()}
    table = {row["file"]: row for row in m.candidates}
    for row in table.values():
        assert row["status"] in ("selected", "accepted", "rejected")
        if row["status"] == "rejected":
            assert row["reason"] and row["file"] not in chosen
        if row["precision"] != "fp32" and row["status"] == "selected":
            assert abs(row["delta_auc"]) <= 0.003
    assert table["fused_dynamic.tflite"]["size_ratio"] < 0.6  # int8 weights really shrink the file
    assert m.lineage["tools"]["tf2onnx"] and m.lineage["options"]["quantize"] == ["int8", "fp16"]
    assert any("validating" in line for line in din_export["lines"])  # progress reported


def test_lineage_keeps_the_order_the_passes_ran(din_export):
    m = din_export["manifest"]
    assert m.lineage["passes"] == ["tflite", "onnx_export", "ort_optimize", "ort_quantize"]   # run order, not sorted
    ids = [s["id"] for s in m.lineage["steps"]]
    assert len(ids) == len(set(ids))
    for art in m.artifacts:                      # each artifact's chain is a path through the merged steps
        for parent, child in zip([None] + art.lineage[:-1], art.lineage):
            assert child["parent"] == (parent["id"] if parent else None) and child["id"] in ids
    export_ids = {s["id"] for s in m.lineage["steps"] if s["pass"] == "onnx_export"}
    quantized = [a for a in m.artifacts if a.format == "onnx" and a.precision != "fp32"]
    assert len(export_ids) == 1 and quantized and all(a.lineage[0]["id"] in export_ids for a in quantized)


def test_rerun_hits_the_pass_cache(din_export):
    assert din_export["tflite_calls_on_rerun"] == 0
    first = {a.file: a.sha256 for a in din_export["manifest"].artifacts}
    second = {a.file: a.sha256 for a in din_export["again"].artifacts}
    assert {f: first[f] for f in second} == second


def test_split_parts_exported_and_composed(tmp_path):
    from edgerec.converters.export import export_model
    from edgerec.converters.tfenv import import_tf

    tf, k = import_tf()
    C = S.conftest_module()

    user, scorer = C.build_split()
    hist = k.Input((C.SEQ,), dtype="int32", name="hist_items")
    cand = k.Input((), dtype="int32", name="cand_item")
    hour = k.Input((), dtype="int32", name="hour")
    state = user(hist)
    fused = k.Model([hist, cand, hour], scorer({"cand_item": cand, "hour": hour, **state}), name="fused")
    mdir = S.write_model_dir(tmp_path / "model", fused, user, scorer, n_val=200, groups=10)
    m = export_model(mdir, tmp_path / "bundle", quantize=("dynamic",), targets=("tflite",),
                     cache_dir=tmp_path / "cache", latency=_fast())
    parts = {a.part for a in m.artifacts}
    assert parts == {"fused", "user_encoder", "scorer"}
    assert set(m.selected["litert"]) == {"fused", "user_encoder", "scorer"}
    ue = next(a for a in m.artifacts if a.part == "user_encoder")
    assert {t.name for t in ue.outputs} == {"user_state", "user_mask"}
    comps = m.lineage["validation"]["compositions"]
    assert comps and all(not c["failures"] for c in comps)


def test_prune_records_sparsity_and_delta(din_export, tmp_path):
    from edgerec.converters.export import export_bundle
    from edgerec.converters.pipeline import sha256_path
    from edgerec.converters.revalidate import validate_bundle

    result = export_bundle(din_export["mdir"], tmp_path / "pruned", prune=0.5, quantize=("none",),
                           targets=("tflite",), cache_dir=din_export["root"] / "cache", latency=_fast())
    m = result.manifest
    info = m.lineage["prune"]
    assert abs(info["achieved_sparsity"] - 0.5) <= 0.01
    assert "delta_auc" in info and m.lineage["options"]["prune"] == 0.5
    assert [a.file for a in m.artifacts] == ["fused_fp32.tflite"]
    # the pruned Keras model is kept next to the bundle, so the bundle can be checked against it
    kept = result.pruned_models
    assert kept == tmp_path / "pruned.pruned" and (kept / "edgerec_model.json").is_file()
    assert m.lineage["keras_sha256"]["fused"] == sha256_path(kept / "fused.keras")
    checked = validate_bundle(result.bundle, keras=kept, max_groups=5)
    assert checked.status == "ok", checked.failures
    assert checked.keras.passed and len(checked.keras.results) == 1
    unpruned = validate_bundle(result.bundle, keras=din_export["mdir"], max_groups=5)
    assert unpruned.status == "not_verified" and unpruned.keras is None
    assert "sha256" in unpruned.not_verified[0] and "pruned.pruned" in unpruned.not_verified[0]
    assert validate_bundle(result.bundle, examples_only=True).status == "ok"


@pytest.mark.parametrize("kwargs, match", [
    ({"prune": 1.5}, "strictly between 0 and 1"), ({"prune": 0.0}, "strictly between 0 and 1"),
    ({"targets": ("tflite", "coreml")}, "targets among"), ({"quantize": ("int3",)}, "quantize modes"),
    ({"budget": 2}, "budget"),
])
def test_bad_options_fail_fast(tmp_path, kwargs, match):
    from edgerec.converters.errors import ConverterConfigError
    from edgerec.converters.export import export_model

    with pytest.raises(ConverterConfigError, match=match):
        export_model(tmp_path, tmp_path / "out", **kwargs)


def test_missing_model_dir_and_byom_without_data(tmp_path):
    from edgerec.converters.errors import ConverterConfigError
    from edgerec.converters.export import export_model

    with pytest.raises(ConverterConfigError, match="existing model directory"):
        export_model(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(ConverterConfigError, match="edgerec_model.json, or a saved Keras model"):
        export_model(tmp_path, tmp_path / "out")


def test_pruning_reaches_the_split_parts(tmp_path):
    """The parts take the pruned fused weights by layer name: every part is as sparse as the fused
    model and scorer(user_encoder(x)) == pruned fused(x) (the validator's composition check)."""
    from edgerec.converters.export import export_model

    C = S.conftest_module()
    fused, user, scorer = C.build_shared_split()
    mdir = S.write_model_dir(tmp_path / "model", fused, user, scorer, n_val=200, groups=10)
    m = export_model(mdir, tmp_path / "bundle", prune=0.5, quantize=("none",), targets=("tflite",),
                     cache_dir=tmp_path / "cache", latency=_fast())
    info = m.lineage["prune"]
    assert set(info["parts"]) == {"user_encoder", "scorer"}
    assert all(abs(s - 0.5) <= 0.01 for s in info["parts"].values()), info["parts"]
    assert not [i for i in m.lineage["impossible"] if "pruned" in i["file"]]
    comps = m.lineage["validation"]["compositions"]
    assert comps and all(not c["failures"] for c in comps)
    assert {a.part for a in m.artifacts} == {"fused", "user_encoder", "scorer"}
