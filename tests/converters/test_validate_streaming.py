"""Streamed validation: the same metrics as one in-memory pass, and validation rows read lazily."""
from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import pytest


def _support():
    spec = importlib.util.spec_from_file_location("validate_support", Path(__file__).with_name("test_validate_support.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


S = _support()


def _flat(metrics: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _assert_same(a: dict, b: dict) -> None:
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        if isinstance(fa[key], float):
            assert fa[key] == pytest.approx(fb[key], abs=1e-6, rel=1e-6), key
        else:
            assert fa[key] == fb[key], key


@pytest.mark.slow
def test_streamed_validation_equals_in_memory(model_dir, tmp_path, monkeypatch):
    from edgerec.converters.keras_io import load_keras_model
    from edgerec.converters.validate import (ValidationData, _References, backend_outputs, keras_outputs,
                                             validate_artifacts)
    from edgerec.runtime import metrics as rmetrics

    user = load_keras_model(model_dir / "user_encoder.keras")
    scorer = load_keras_model(model_dir / "scorer.keras")
    specs = {**S.model_inputs(user), **{k: v for k, v in S.model_inputs(scorer).items() if not k.startswith("user_")}}
    rows = S.rows_for(specs, 200, seed=6, groups=10)
    labels, groups = rows.pop("labels"), rows.pop("groups")
    data = ValidationData(rows, labels, groups)
    ue = S.tflite(model_dir / "user_encoder.keras", "dynamic", tmp_path / "ue", part="user_encoder")
    sc = S.tflite(model_dir / "scorer.keras", "dynamic", tmp_path / "sc", part="scorer")
    refs = {"user_encoder": user, "scorer": scorer}

    whole = validate_artifacts(refs, [ue, sc], data, raise_on_failure=False, stream_rows=data.rows)
    streamed = validate_artifacts(refs, [ue, sc], data, raise_on_failure=False, stream_rows=7)
    monkeypatch.setattr(_References, "KEEP_BYTES", 0)        # every reference recomputed per chunk
    recomputed = validate_artifacts(refs, [ue, sc], data, raise_on_failure=False, stream_rows=13)
    for report in (streamed, recomputed):
        _assert_same(report.reference, whole.reference)
        for a, b in zip(whole.results, report.results):
            assert (a.file, a.failures) == (b.file, b.failures)
            _assert_same(a.metrics, b.metrics)
        assert len(report.compositions) == len(whole.compositions) == 1
        _assert_same(report.compositions[0]["metrics"], whole.compositions[0]["metrics"])

    # and the one-pass figures are what numpy computes on the whole arrays
    state = keras_outputs(user, rows)
    produced, _ = backend_outputs(ue, rows)
    diff = max(float(np.abs(produced[n].astype(np.float64) - state[n]).max()) for n in state)
    assert whole.result(Path(ue.path).name).metrics["max_abs_diff"] == pytest.approx(diff, abs=1e-6)
    ref_scores = keras_outputs(scorer, {**rows, **state})["score"].reshape(-1).astype(np.float64)
    scored, _ = backend_outputs(sc, {**rows, **state})
    auc = rmetrics.auc(labels, np.asarray(scored["score"], np.float64).reshape(-1))
    metrics = whole.result(Path(sc.path).name).metrics
    assert metrics["auc"] == pytest.approx(auc, abs=1e-6)
    assert metrics["delta_auc"] == pytest.approx(auc - rmetrics.auc(labels, ref_scores), abs=1e-6)


def test_npz_members_are_mapped_and_subset_by_groups(tmp_path):
    from edgerec.converters.validation_data import ValidationData

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30, 0, -1), 4).astype(np.int64)
    arrays = {"hist_items": rng.integers(2, 50, size=(120, 5)).astype(np.int32),
              "dense": rng.normal(size=(120, 2)).astype(np.float32),
              "labels": (rng.random(120) > 0.5).astype(np.float32), "groups": groups}
    np.savez(tmp_path / "stored.npz", **arrays)
    np.savez_compressed(tmp_path / "packed.npz", **arrays)
    stored = ValidationData.load(tmp_path / "stored.npz")
    assert isinstance(stored.inputs["hist_items"], np.memmap)
    packed = ValidationData.load(tmp_path / "packed.npz")
    for name in ("hist_items", "dense"):
        np.testing.assert_array_equal(stored.inputs[name], arrays[name])
        np.testing.assert_array_equal(packed.inputs[name], arrays[name])
    few = ValidationData.load(tmp_path / "stored.npz", max_groups=3)
    keep = np.isin(groups, [1, 2, 3])
    assert few.rows == 12 and not isinstance(few.inputs["dense"], np.memmap)
    np.testing.assert_array_equal(few.inputs["hist_items"], arrays["hist_items"][keep])
    np.testing.assert_array_equal(few.groups, groups[keep])
    chunks = list(few.chunks(5))
    assert [(a, b) for a, b, _ in chunks] == [(0, 5), (5, 10), (10, 12)]
    np.testing.assert_array_equal(np.concatenate([c["dense"] for _, _, c in chunks]), few.inputs["dense"])


def test_npz_with_objects_or_garbage_is_refused(tmp_path):
    from edgerec.converters.errors import ValidationError
    from edgerec.converters.validation_data import ValidationData

    np.savez(tmp_path / "objects.npz", hist_items=np.array([[1], [2]], dtype=object))
    with pytest.raises(ValidationError, match="pickle"):
        ValidationData.load(tmp_path / "objects.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValidationError, match="numeric .npz"):
        ValidationData.load(tmp_path / "junk.npz")
    with zipfile.ZipFile(tmp_path / "empty.npz", "w"):
        pass
    with pytest.raises(ValidationError, match="at least one input"):
        ValidationData.load(tmp_path / "empty.npz")
