"""The content encoder in the bundle: both backends, cosine validation, selection, int8 refused."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _support():
    spec = importlib.util.spec_from_file_location("content_support_c", Path(__file__).with_name("test_content_support.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


S = _support()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("content-export")
    model_dir = S.write_model_dir(root / "model")
    manifest = S.export(model_dir, root / "bundle", quantize=("int8",))
    return {"root": root, "model_dir": model_dir, "bundle": root / "bundle", "manifest": manifest}


def test_content_encoder_artifacts_for_both_backends_with_cosine(exported):
    from edgerec.converters.content_export import MIN_COSINE

    arts = {a.file: a for a in exported["manifest"].artifacts if a.part == "content_encoder"}
    assert set(arts) == {"content_encoder_fp32.tflite", "content_encoder_dynamic.tflite",
                         "content_encoder_fp32.onnx", "content_encoder_dynamic.onnx"}
    for art in arts.values():
        v = art.validation
        assert v["rows"] == S.ITEMS                       # every catalogue text (rows 0/1 skipped)
        assert v["cosine_min"] <= v["cosine_mean"] <= 1.0 + 1e-9
        assert v["cosine_min"] >= MIN_COSINE[art.precision] == v["min_cosine_required"]
        assert [t.name for t in art.inputs] == ["item_tokens"]
        assert art.inputs[0].shape[1] == S.TOKENS
    lineage = exported["manifest"].lineage["content_encoder"]
    assert lineage["rows"] == S.ITEMS and lineage["rows_source"].startswith("catalogue")
    assert "not_exported" not in exported["manifest"].model


def test_the_smallest_passing_artifact_is_selected_per_backend(exported):
    manifest = exported["manifest"]
    for backend, fmt in (("litert", "tflite"), ("onnxruntime", "onnx")):
        chosen = manifest.artifact(manifest.selected[backend]["content_encoder"])
        assert chosen.format == fmt
        sizes = [a.size_bytes for a in manifest.find(format=fmt, part="content_encoder")]
        assert chosen.size_bytes == min(sizes)


def test_full_int8_is_rejected_with_the_measured_reason(exported):
    rejected = [r for r in exported["manifest"].rejected if r.get("part") == "content_encoder"]
    files = {r["file"]: r for r in rejected}
    assert set(files) == {"content_encoder_int8.tflite", "content_encoder_qdq_int8.onnx"}
    for row in files.values():
        assert "-1e9" in row["reason"] and "0.14" in row["reason"] and row["in_bundle"] is False
    assert not [a for a in exported["manifest"].artifacts if a.part == "content_encoder" and a.precision == "int8"]


def test_bundle_reads_back_strictly_and_its_examples_replay(exported):
    from edgerec.runtime.examples import check_bundle
    from edgerec.runtime.manifest import load_manifest
    from edgerec.runtime.manifest_schema import manifest_problems

    raw = json.loads((exported["bundle"] / "manifest.json").read_text())
    assert manifest_problems(raw) == []
    load_manifest(exported["bundle"], verify=True)
    results = check_bundle(exported["bundle"])
    assert results and all(r.passed for r in results), [r.describe() for r in results if not r.passed]


def test_a_broken_fp32_encoder_stops_the_export(exported):
    from edgerec.converters.content_export import validate_encoders, validation_tokens
    from edgerec.converters.errors import ValidationError
    from edgerec.converters.jobs import load_job
    from edgerec.converters.validate import DeployableArtifact

    job = load_job(exported["model_dir"])
    tokens, _ = validation_tokens(job, exported["model_dir"])
    art = DeployableArtifact(str(exported["bundle"] / "content_encoder_fp32.onnx"), "onnx", "fp32", "content_encoder")
    reference = np.random.default_rng(0).normal(size=(len(tokens), S.CONTENT_DIM))
    with pytest.raises(ValidationError, match="content_encoder_fp32.onnx: cosine_min"):
        validate_encoders(reference, [art], tokens, lambda m: None)


def test_without_item_text_the_vocabulary_is_sampled(tmp_path, exported):
    from edgerec.converters.content_export import validation_tokens
    from edgerec.runtime.text import tokenizer_for

    spec = S.feature_spec()
    job = SimpleNamespace(feature_spec=spec, model_json={"parts": {}})
    tokens, source = validation_tokens(job, tmp_path, rows=50)
    again, _ = validation_tokens(job, tmp_path, rows=50)
    assert source.startswith("vocabulary sample") and tokens.shape == (50, S.TOKENS)
    np.testing.assert_array_equal(tokens, again)                # seeded
    assert (tokens[:, 1] >= 4).all()                           # real words, never [UNK]
    named = SimpleNamespace(feature_spec=spec, model_json={"content_encoder": {"item_text": "item_text.json"}})
    texts, source = validation_tokens(named, exported["model_dir"])
    assert source == "catalogue (item_text.json)"
    expected = tokenizer_for(spec.text).encode_batch([S.item_text(i) for i in range(S.ITEMS)])
    np.testing.assert_array_equal(texts, expected)


def test_models_without_a_content_encoder_are_left_alone():
    from edgerec.converters.content_export import add_content_encoder, content_quantize, cosine_rows

    job = SimpleNamespace(model_json={"parts": {"fused": "fused.keras"}})
    assert add_content_encoder(job, result=None, options=None, runner=None) is None
    assert content_quantize(("int8",)) == content_quantize(("dynamic",)) == ("dynamic",)
    assert content_quantize(("none",)) == content_quantize(("fp16",)) == ()
    cos = cosine_rows(np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]),
                      np.array([[2.0, 0.0], [0.0, 0.0], [1.0, 0.0], [-1.0, -1.0]]))
    np.testing.assert_allclose(cos, [1.0, 1.0, 0.0, -1.0])


def test_fp32_only_when_no_compression_is_asked(exported, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(exported["model_dir"], model_dir)
    manifest = S.export(model_dir, tmp_path / "bundle", quantize=("none",), targets=("onnx",))
    content = [a for a in manifest.artifacts if a.part == "content_encoder"]
    assert [a.file for a in content] == ["content_encoder_fp32.onnx"]
    assert manifest.selected["onnxruntime"]["content_encoder"] == "content_encoder_fp32.onnx"
    assert not [r for r in manifest.rejected if r.get("part") == "content_encoder"]


def test_recheck_against_the_model_dir_and_a_different_encoder(exported, tmp_path):
    from edgerec.converters.content_export import recheck_content

    manifest = exported["manifest"]
    checks = recheck_content(exported["model_dir"], exported["bundle"], manifest)
    assert len(checks) == 4 and all(not c["failure"] for c in checks)
    assert {c["backend"] for c in recheck_content(exported["model_dir"], exported["bundle"], manifest,
                                                   backends=("litert",))} == {"litert"}
    other = tmp_path / "model"
    shutil.copytree(exported["model_dir"], other)
    S.build_encoder(S.feature_spec(), seed=1).save(other / "content_encoder.keras")
    failures = [c["failure"] for c in recheck_content(other, exported["bundle"], manifest)]
    assert len(failures) == 4 and all("cosine_min" in f for f in failures)


def test_edgerec_validate_checks_the_content_encoder_by_cosine(exported, tmp_path):
    from edgerec.converters.revalidate import validate_bundle

    result = validate_bundle(exported["bundle"], keras=exported["model_dir"], max_groups=20)
    assert result.status == "ok", (result.failures, result.not_verified)
    compared = {r.file for r in result.keras.results}
    assert compared and not any("content_encoder" in f for f in compared)

    other = tmp_path / "model"
    shutil.copytree(exported["model_dir"], other)
    S.build_encoder(S.feature_spec(), seed=1).save(other / "content_encoder.keras")
    failed = validate_bundle(exported["bundle"], keras=other, max_groups=20, backends=("litert",))
    assert failed.status == "failed"
    assert any("content_encoder" in f and "cosine_min" in f for f in failed.failures), failed.failures
