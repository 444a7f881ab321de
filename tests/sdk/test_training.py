"""fit / evaluate / MODEL_DIR on a tiny synthetic dataset (see tests/conftest.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgerec.runtime.errors import BundleError, SpecError

pytest.importorskip("tf_keras")


def _model_config(**kw):
    from edgerec.sdk.models import ModelConfig

    return ModelConfig(embedding_dim=16, hidden_units=(32,), attention_units=(16,), content_dim=16,
                       text_ff_dim=16, content_epochs=1, **kw)


def _train_config(**kw):
    from edgerec.sdk.training import TrainConfig

    return TrainConfig(**{"epochs": 2, "batch_size": 256, "learning_rate": 3e-3, "verbose": 0,
                          "max_train_rows": 6000, **kw})


@pytest.fixture(scope="module")
def trained(tiny_synthetic_dataset):
    from edgerec.sdk.training import train_model

    parts, history, metrics = train_model(tiny_synthetic_dataset, "context", _model_config(), _train_config())
    return tiny_synthetic_dataset, parts, history, metrics


@pytest.mark.slow
def test_training_learns_and_reports_metrics(trained):
    dataset, parts, history, metrics = trained
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert history["train_rows"] == 6000
    assert history["epochs"][1]["loss"] < history["epochs"][0]["loss"]
    assert set(metrics["test"]) == {"auc", "gauc", "logloss", "recall@10", "ndcg@10", "coverage@10"}
    assert set(metrics["baseline"]) == {"auc", "recall@10", "ndcg@10"}
    assert metrics["test"]["auc"] > 0.6                     # learned something real
    assert 0 < metrics["test"]["coverage@10"] <= 1
    assert parts.spec.text is not None and parts.content_encoder is not None


@pytest.mark.slow
def test_early_stopping_restores_best_weights(tiny_synthetic_dataset):
    from edgerec.sdk.models import build_model
    from edgerec.sdk.training import fit, predict_scores
    from edgerec.runtime.metrics import auc

    dataset = tiny_synthetic_dataset
    parts = build_model("din", dataset.spec, _model_config())
    # a huge learning rate makes validation AUC get worse after the first epoch
    history = fit(parts, dataset, _train_config(epochs=6, patience=0, learning_rate=0.5,
                                                max_train_rows=3000))
    aucs = [e["valid_auc"] for e in history["epochs"]]
    assert history["best_epoch"] == int(np.argmax(aucs)) + 1
    if history["stopped_early"]:
        assert len(aucs) == history["best_epoch"] + 1
    restored = auc(dataset.valid.labels, predict_scores(parts, dataset.valid.inputs))
    assert restored == pytest.approx(max(aucs), abs=1e-6)


def test_train_config_checks():
    from edgerec.sdk.training import TrainConfig

    with pytest.raises(SpecError, match="Expected monitor among \\['auc', 'loss'\\], received: 'acc'"):
        TrainConfig(monitor="acc")
    with pytest.raises(SpecError, match="epochs as a positive int"):
        TrainConfig(epochs=0)
    assert TrainConfig.from_dict(TrainConfig(seed=3).to_dict()) == TrainConfig(seed=3)


@pytest.mark.slow
def test_model_dir_layout_and_load_round_trip(trained, tmp_path):
    from edgerec.runtime.preprocess import Preprocessor
    from edgerec.runtime.spec import FeatureSpec
    from edgerec.sdk.training import load_model_dir, predict_scores, save_model_dir

    dataset, parts, history, metrics = trained
    out = save_model_dir(parts, dataset, tmp_path / "model", metrics, _train_config(), history,
                         data_source="synthetic")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["edgerec_model.json", "fused.keras", "user_encoder.keras", "scorer.keras",
                            "content_encoder.keras", "feature_spec.json", "calibration.npz",
                            "validation.npz", "heldout_users.npz", "examples.jsonl", "metrics.json", "item_text.json"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp dirs left
    manifest = json.loads((out / "edgerec_model.json").read_text())
    assert manifest["format_version"] == 1 and manifest["family"] == "context"
    assert manifest["keras"] == "tf_keras"
    assert manifest["custom_objects_module"] == "edgerec.sdk.models.layers"
    assert manifest["parts"]["content_encoder"] == "content_encoder.keras"
    assert manifest["content_encoder"] == {"item_text": "item_text.json"}
    assert json.loads((out / "item_text.json").read_text()) == list(dataset.item_text)
    assert manifest["data"] == {"calibration": "calibration.npz", "validation": "validation.npz",
                                "heldout_users": "heldout_users.npz"}
    saved_metrics = json.loads((out / "metrics.json").read_text())
    table = parts.content_table
    content = {"encoder": "small", "dims": table.shape[1], "items": table.shape[0] - 2, "table_bytes": table.nbytes}
    assert saved_metrics == {"model": "context", "data": dataset.name, **json.loads(json.dumps(metrics)),
                             "content": content}
    assert FeatureSpec.load(out / "feature_spec.json") == parts.spec

    with np.load(out / "calibration.npz", allow_pickle=False) as cal:
        assert cal["labels"].shape == (2000,)
        assert set(parts.input_names) <= set(cal.files)
    with np.load(out / "validation.npz", allow_pickle=False) as val:
        np.testing.assert_array_equal(val["groups"], dataset.test.groups)
        np.testing.assert_array_equal(val["cand_item"], dataset.test.inputs["cand_item"])

    examples = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    assert len(examples) == len(dataset.examples) > 0
    requests = [{k: v for k, v in e.items() if k != "expected"} for e in examples]
    encoded = Preprocessor(parts.spec).encode_requests(requests)
    np.testing.assert_allclose([e["expected"] for e in examples], predict_scores(parts, encoded), atol=1e-6)

    loaded = load_model_dir(out)
    assert loaded.family == "context" and loaded.config == parts.config
    np.testing.assert_allclose(predict_scores(loaded, encoded), predict_scores(parts, encoded), atol=1e-6)
    np.testing.assert_array_equal(loaded.content_table, parts.content_table)

    # saving again replaces the directory atomically
    save_model_dir(parts, dataset, out, metrics)
    assert sorted(p.name for p in out.iterdir()) == names


def test_load_model_dir_errors(tmp_path):
    from edgerec.sdk.training import load_model_dir

    with pytest.raises(BundleError, match="Expected a model dir containing edgerec_model.json"):
        load_model_dir(tmp_path)
    (tmp_path / "edgerec_model.json").write_text('{"format_version": 1, "family": "din"}')
    with pytest.raises(BundleError, match="missing \\['parts', 'feature_spec'\\]"):
        load_model_dir(tmp_path)
