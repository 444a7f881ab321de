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
    assert "Expected --model among ['din', 'gru', 'bst', 'context', 'lstm', 'retrieval'], received: 'wide_deep'" in err
    assert not (tmp_path / "x").exists()


def test_bad_data_option_is_a_clear_error(tmp_path, capsys):
    from edgerec.sdk.cli import main

    code = main(["train", "--out", str(tmp_path / "x"), "--data-option", "num_users", "--quiet"])
    assert code == 2
    assert "Expected --data-option as KEY=INT, received: 'num_users'" in capsys.readouterr().err


def test_train_says_tensorflow_is_missing_before_building_data(tmp_path, monkeypatch, capsys):
    import edgerec.sdk.data as data
    from edgerec.sdk.cli import main
    from edgerec.sdk.training import job

    def must_not_run(*args, **kwargs):
        raise AssertionError("the dataset was built before the train extra was checked")

    monkeypatch.setattr(job, "TRAIN_MODULES", ("edgerec_test_no_such_module",))
    monkeypatch.setattr(data, "load_dataset", must_not_run)
    assert main(["train", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "'edgerec_test_no_such_module'" in err and "pip install 'edgerec[train]'" in err
    assert not (tmp_path / "x").exists()


def test_train_job_round_trips_through_json_and_checks_its_fields():
    from edgerec.runtime.errors import SpecError
    from edgerec.sdk.models import ModelConfig
    from edgerec.sdk.training import TrainConfig, TrainJob
    from edgerec.sdk.training.adversarial import AdversarialConfig
    from edgerec.sdk.training.distributed import DistributedConfig

    job = TrainJob(out="runs/x", family="gru", data_options={"num_users": 50}, model=ModelConfig(gru_units=8),
                   train=TrainConfig(patience=1, seed=4), distributed=DistributedConfig("multiworker", workers=2))
    assert TrainJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    adversarial = TrainJob(out="x", adversarial=AdversarialConfig(attack="pgd"))
    assert TrainJob.from_dict(adversarial.to_dict()) == adversarial
    for bad, fragment in [({"family": "two_tower"}, "model family among"),
                          ({"data_options": {"num_users": "many"}}, "data_options"),
                          ({"train": {"epochs": 2}}, "train as a TrainConfig"),
                          ({"adversarial": AdversarialConfig(), "distributed": DistributedConfig()}, "not both")]:
        with pytest.raises(SpecError, match=fragment):
            TrainJob(out="x", **bad)
    with pytest.raises(SpecError, match="train-job keys"):
        TrainJob.from_dict({"out": "x", "gpus": 1})


@pytest.mark.slow
def test_hard_negatives_from_a_retriever_reach_the_ranker_and_its_model_dir(tmp_path, capsys):
    from edgerec.sdk.cli import main

    retriever, ranker = tmp_path / "retrieval", tmp_path / "din"
    small = [a for a in SMALL if a != "--quiet"] + ["--quiet", "--epochs", "1"]
    assert main(["train", "--model", "retrieval", "--encoder", "pooling", "--out", str(retriever), *small]) == 0
    assert main(["train", "--model", "din", "--hard-negatives-from", str(retriever), "--out", str(ranker),
                 *small]) == 0
    capsys.readouterr()
    history = json.loads((ranker / "edgerec_model.json").read_text())["config"]["history"]
    hard = history["hard_negatives"]
    assert hard["retrieval"] == str(retriever) and hard["m"] == 200 and hard["hard"] > 0
    assert hard["per_positive"] >= 1

    # a ranking model dir is not a retriever: refused before training, nothing written
    code = main(["train", "--model", "din", "--hard-negatives-from", str(ranker), "--out", str(tmp_path / "x"),
                 *small])
    assert code == 2
    assert "Expected --hard-negatives-from a retrieval MODEL_DIR" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_hard_negatives_are_refused_for_the_retrieval_family(tmp_path):
    from edgerec.runtime.errors import SpecError
    from edgerec.sdk.training.job import TrainJob

    with pytest.raises(SpecError, match="hard negatives for a ranking family"):
        TrainJob(out=str(tmp_path / "r"), family="retrieval", hard_negatives_from=str(tmp_path))
    job = TrainJob(out=str(tmp_path / "d"), family="din", hard_negatives_from=tmp_path)
    assert TrainJob.from_dict(job.to_dict()) == job
