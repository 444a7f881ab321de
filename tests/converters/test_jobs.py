"""Export jobs: the kept reference models read back as a MODEL_DIR; bad model paths say what was expected."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgerec.converters.errors import ConverterConfigError
from edgerec.converters.jobs import ExportJob, load_job, pruned_model_dir, save_reference_models
from edgerec.converters.validate import ValidationData


def _model_dir(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    for name in ("fused.keras", "scorer.keras", "feature_spec.json", "examples.jsonl"):
        (src / name).write_text(name)
    np.savez(src / "validation.npz", x=np.zeros(3))
    np.savez(src / "calibration.npz", x=np.ones(3))
    meta = {"parts": {"fused": "fused.keras", "scorer": "scorer.keras", "content_encoder": "content.keras"},
            "feature_spec": "feature_spec.json", "data": {"validation": "validation.npz",
                                                          "calibration": "calibration.npz"},
            "examples": "examples.jsonl", "custom_objects_module": None}
    return src, meta


def test_reference_models_form_a_model_dir(tmp_path):
    src, meta = _model_dir(tmp_path)
    pruned = tmp_path / "cache" / "fused.pruned.keras"
    pruned.parent.mkdir()
    pruned.write_text("pruned weights")
    job = ExportJob({"fused": str(src / "fused.keras"), "scorer": str(src / "scorer.keras")}, None,
                    ValidationData({"x": np.zeros(3)}), model_info={"source": str(src)}, model_json=meta)
    folder = save_reference_models(job, {"fused": str(pruned), "scorer": str(src / "scorer.keras")},
                                   pruned_model_dir(tmp_path / "BUNDLE"))
    assert folder == tmp_path / "BUNDLE.pruned"
    written = json.loads((folder / "edgerec_model.json").read_text())
    assert written["parts"] == {"fused": "fused.keras", "scorer": "scorer.keras"}   # no content encoder kept
    assert (folder / "fused.keras").read_text() == "pruned weights"
    assert written["converted_from"] == str(src.resolve())
    for name in ("feature_spec.json", "examples.jsonl", "validation.npz", "calibration.npz"):
        assert (folder / name).read_bytes() == (src / name).read_bytes()
    assert not list(tmp_path.glob(".BUNDLE.pruned.tmp-*"))
    again = save_reference_models(job, {"fused": str(src / "fused.keras")}, folder)   # replaced, not merged
    assert (again / "fused.keras").read_text() == "fused.keras" and not (again / "scorer.keras").exists()


def test_bring_your_own_reference_is_the_model_file(tmp_path):
    model = tmp_path / "mine.h5"
    model.write_text("h5")
    job = ExportJob({"fused": str(model)}, None, ValidationData({"x": np.zeros(2)}), model_info={"source": str(model)})
    folder = save_reference_models(job, {"fused": str(model)}, tmp_path / "B.pruned")
    assert sorted(p.name for p in folder.iterdir()) == ["fused.h5"]


def test_load_job_refuses_what_is_not_a_model(tmp_path):
    with pytest.raises(ConverterConfigError, match="existing model directory"):
        load_job(tmp_path / "missing")
    with pytest.raises(ConverterConfigError, match="edgerec_model.json, or a saved Keras model"):
        load_job(tmp_path)
