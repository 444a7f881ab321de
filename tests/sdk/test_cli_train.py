"""`edgerec train` end to end on a small synthetic dataset, and its bad-input errors."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("tf_keras")

SMALL = ["--data-option", "num_users=250", "--data-option", "num_items=300",
         "--data-option", "num_events=7000", "--max-seq-len", "20", "--max-train-rows", "5000",
         "--epochs", "2", "--embedding-dim", "16", "--batch-size", "128",
         "--learning-rate", "0.005", "--quiet"]


@pytest.mark.slow
def test_train_writes_the_contract_model_dir(tmp_path, capsys):
    from edgerec.sdk.cli import main

    out = tmp_path / "din"
    assert main(["train", "--data", "synthetic", "--model", "din", "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "baseline" in printed and f"wrote {out}" in printed
    summary = json.loads(printed.strip().splitlines()[-1])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "din" and metrics["data"] == "synthetic"
    assert metrics["test"] == summary["test"] and metrics["baseline"] == summary["baseline"]
    assert metrics["test"]["auc"] > 0.6
    manifest = json.loads((out / "edgerec_model.json").read_text())
    assert manifest["parts"] == {"fused": "fused.keras", "user_encoder": "user_encoder.keras",
                                 "scorer": "scorer.keras"}
    assert manifest["data_source"] == "synthetic"
    assert manifest["config"]["train"]["epochs"] == 2
    assert len(manifest["config"]["history"]["epochs"]) >= 1
    for name in ("feature_spec.json", "calibration.npz", "validation.npz", "examples.jsonl"):
        assert (out / name).is_file()


def test_unknown_model_is_a_clear_error(tmp_path, capsys):
    from edgerec.sdk.cli import main

    code = main(["train", "--model", "wide_deep", "--out", str(tmp_path / "x"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "Expected --model among ['din', 'gru', 'bst', 'context'], received: 'wide_deep'" in err
    assert not (tmp_path / "x").exists()


def test_bad_data_option_is_a_clear_error(tmp_path, capsys):
    from edgerec.sdk.cli import main

    code = main(["train", "--out", str(tmp_path / "x"), "--data-option", "num_users", "--quiet"])
    assert code == 2
    assert "Expected --data-option as KEY=INT, received: 'num_users'" in capsys.readouterr().err
