"""The single validator: every format and part, tolerances from specs, corrupted artifacts caught."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _support():
    spec = importlib.util.spec_from_file_location("validate_support", Path(__file__).with_name("test_validate_support.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


S = _support()


@pytest.fixture(scope="module")
def din_setup(model_dir, tmp_path_factory):
    from edgerec.converters.keras_io import load_keras_model
    from edgerec.converters.validate import ValidationData

    out = tmp_path_factory.mktemp("din_artifacts")
    model = load_keras_model(model_dir / "din.keras")
    rows = S.rows_for(S.model_inputs(model), 420, seed=5, groups=20)
    labels, groups = rows.pop("labels"), rows.pop("groups")
    data = ValidationData(rows, labels, groups, "test")
    fp32 = S.tflite(model_dir / "din.keras", "fp32", out / "t32")
    dyn = S.tflite(model_dir / "din.keras", "dynamic", out / "tdyn")
    onnx = S.onnx_fp32(model, out / "fused.fp32.onnx")
    return {"model": model, "data": data, "fp32": fp32, "dynamic": dyn, "onnx": onnx, "out": out}


def test_fp32_and_dynamic_pass_with_metrics(din_setup):
    from edgerec.converters.validate import validate_artifacts

    s = din_setup
    report = validate_artifacts({"fused": s["model"]}, [s["fp32"], s["dynamic"], s["onnx"]], s["data"])
    assert report.passed, report.failures
    assert {r.format for r in report.results} == {"tflite", "onnx"}
    ref_auc = report.reference["fused"]["auc"]
    assert 0.0 < ref_auc < 1.0
    for res in report.results:
        m = res.metrics
        assert set(m) >= {"max_abs_diff", "mean_abs_diff", "auc", "delta_auc", "mean_abs_dp", "recall_overlap@10"}
        assert m["delta_auc"] == pytest.approx(m["auc"] - ref_auc)
        if res.precision == "fp32":
            assert m["max_abs_diff"] < 1e-4 and m["recall_overlap@10"] > 0.95
    dyn = report.result(Path(s["dynamic"].path).name)
    assert dyn.metrics["mean_abs_diff"] > 0  # quantization really changed something, and it was measured


def test_corrupted_artifacts_are_caught_in_one_error(din_setup):
    from edgerec.converters.validate import Candidate, ValidationError, validate_artifacts

    s = din_setup
    emb = s["model"].get_layer("item_embedding").get_weights()[0]
    bad_tfl = S.flip_weight_bytes_tflite(s["fp32"].path, s["out"] / "corrupt.tflite", emb)
    bad_onnx = S.zero_weights_onnx(s["onnx"].path, s["out"] / "corrupt.onnx")
    cands = [s["fp32"], Candidate(str(bad_tfl), "tflite", "fp32", "fused"),
             Candidate(str(bad_onnx), "onnx", "fp32", "fused")]
    with pytest.raises(ValidationError) as caught:
        validate_artifacts({"fused": s["model"]}, cands, s["data"])
    message = str(caught.value)
    assert "corrupt.tflite" in message and "corrupt.onnx" in message  # both listed in ONE error
    assert "max_abs_diff" in message and Path(s["fp32"].path).name not in message
    report = validate_artifacts({"fused": s["model"]}, cands, s["data"], raise_on_failure=False)
    assert [r.passed for r in report.results] == [True, False, False]


def test_tolerances_come_from_specs(din_setup):
    from edgerec.converters.specs import TOLERANCES, Tolerance, spec_for_byom
    from edgerec.converters.validate import validate_artifacts
    from edgerec.runtime.manifest import TensorSpec

    s = din_setup
    spec = spec_for_byom([TensorSpec(n, str(a.dtype), [None, *a.shape[1:]]) for n, a in s["data"].inputs.items()],
                         score_output="score")
    strict = spec.with_tolerances(dynamic=Tolerance(max_abs_diff=0.0, mean_abs_diff=0.0, delta_auc=0.0))
    report = validate_artifacts({"fused": s["model"]}, [s["dynamic"]], s["data"], {"fused": strict},
                                raise_on_failure=False)
    assert not report.passed and "tolerance 0" in report.failures[0]
    assert TOLERANCES["fp32"].max_abs_diff == 1e-4


def test_split_parts_and_composition(model_dir, tmp_path):
    from edgerec.converters.keras_io import load_keras_model
    from edgerec.converters.validate import ValidationData, validate_artifacts

    user = load_keras_model(model_dir / "user_encoder.keras")
    scorer = load_keras_model(model_dir / "scorer.keras")
    specs = {**S.model_inputs(user), **{k: v for k, v in S.model_inputs(scorer).items()
                                        if not k.startswith("user_")}}
    rows = S.rows_for(specs, 200, seed=6, groups=10)
    labels, groups = rows.pop("labels"), rows.pop("groups")
    data = ValidationData(rows, labels, groups)
    ue = S.tflite(model_dir / "user_encoder.keras", "fp32", tmp_path / "ue", part="user_encoder")
    sc = S.tflite(model_dir / "scorer.keras", "fp32", tmp_path / "sc", part="scorer")
    report = validate_artifacts({"user_encoder": user, "scorer": scorer}, [ue, sc], data)
    assert report.passed, report.failures
    assert set(report.result(Path(ue.path).name).metrics["outputs"]) == {"user_state", "user_mask"}
    assert len(report.compositions) == 1 and not report.compositions[0]["failures"]
    assert report.compositions[0]["metrics"]["max_abs_diff"] < 1e-4


def test_bad_inputs_raise_typed_errors(din_setup, tmp_path):
    from edgerec.converters.validate import Candidate, ValidationData, ValidationError, validate_artifacts

    s = din_setup
    with pytest.raises(ValidationError, match="Expected artifact format"):
        Candidate("x.bin", "pt", "fp32", "fused")
    with pytest.raises(ValidationError, match="Keras reference models"):
        validate_artifacts({"fused": s["model"]}, [Candidate(s["fp32"].path, "tflite", "fp32", "scorer")], s["data"])
    with pytest.raises(ValidationError, match="same number of rows"):
        ValidationData({"a": np.zeros(3)}, labels=np.zeros(2))
    with pytest.raises(ValidationError, match="existing validation .npz"):
        ValidationData.load(tmp_path / "missing.npz")
    path = tmp_path / "v.npz"
    np.savez(path, **{k: v for k, v in s["data"].inputs.items()}, labels=s["data"].labels, groups=s["data"].groups)
    sub = ValidationData.load(path, max_groups=3)
    assert len(np.unique(sub.groups)) == 3 and sub.rows == 3 * 21
