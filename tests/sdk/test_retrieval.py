"""The retrieval family: log-Q corrected in-batch softmax (vs numpy), its config checks, training
that beats popularity over the full catalogue, and the retrieval MODEL_DIR contract."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgerec.runtime.contract import HELDOUT_USERS_FILE, ITEM_VECTORS_FILE, RETRIEVAL, USER_TOWER, USER_VECTOR
from edgerec.runtime.errors import SpecError
from edgerec.sdk.models.retrieval import ENCODERS, RetrievalConfig
from edgerec.sdk.training.retrieval import MASKED_LOGIT, candidate_log_q


def _reference_loss(users, items, ids, positives, log_q, temperature, remove_hits):
    """Sampled softmax with log-Q correction and accidental-hit removal, written out in numpy."""
    logits = users @ items.T / temperature
    if log_q is not None:
        logits = logits - log_q[ids][None, :]
    if remove_hits:
        for b in range(len(positives)):
            for c in range(len(ids)):
                if c != b and ids[c] == positives[b]:
                    logits[b, c] = MASKED_LOGIT
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -np.mean([log_softmax[b, b] for b in range(len(positives))]), logits


def test_candidate_log_q_mixes_in_batch_frequency_and_uniform_negatives():
    popularity = np.array([0, 0, 6, 3, 1, 0])
    np.testing.assert_allclose(np.exp(candidate_log_q(popularity, 4)[2:5]), [0.6, 0.3, 0.1], rtol=1e-6)
    q = np.exp(candidate_log_q(popularity, batch_size=4, sampled_negatives=4).astype(np.float64))
    np.testing.assert_allclose(q[2:], (4 * np.array([0.6, 0.3, 0.1, 0.0]) + 4 * 0.25) / 8, rtol=1e-6)
    assert q[0] < 1e-9 and q[1] < 1e-9                    # padding / OOV are never candidates
    with pytest.raises(SpecError, match="at least one trained item"):
        candidate_log_q([0, 0, 0], 4)


tf_keras = pytest.importorskip("tf_keras")


@pytest.mark.parametrize("log_q_on, remove_hits", [(True, True), (True, False), (False, True)])
def test_corrected_logits_and_loss_match_numpy(log_q_on, remove_hits):
    import tensorflow as tf

    from edgerec.sdk.training.retrieval import softmax_logits, softmax_loss

    rng = np.random.default_rng(0)
    users = rng.normal(size=(4, 3)).astype(np.float32)
    positives = np.array([5, 2, 5, 7], np.int32)            # rows 0 and 2 share a positive: an accidental hit
    ids = np.concatenate([positives, [2, 9]]).astype(np.int32)   # + two sampled negatives, one equal to row 1's
    items = rng.normal(size=(ids.size, 3)).astype(np.float32)
    log_q = candidate_log_q(rng.integers(1, 20, 10), batch_size=4, sampled_negatives=2) if log_q_on else None
    expected_loss, expected_logits = _reference_loss(users, items, ids, positives, log_q, 0.5, remove_hits)
    logits = softmax_logits(tf, tf.constant(users), tf.constant(items), tf.constant(ids), tf.constant(positives),
                            None if log_q is None else tf.constant(log_q), 0.5, remove_hits)
    np.testing.assert_allclose(logits.numpy(), expected_logits, rtol=1e-5)
    assert float(softmax_loss(tf, logits)) == pytest.approx(expected_loss, rel=1e-5)
    if remove_hits:
        assert logits.numpy()[0, 2] == MASKED_LOGIT and logits.numpy()[2, 0] == MASKED_LOGIT
        assert logits.numpy()[1, 4] == MASKED_LOGIT and logits.numpy()[0, 0] > MASKED_LOGIT
    if log_q_on:   # a frequent item's logit is lowered more than a rare one's
        plain = users @ items.T / 0.5
        np.testing.assert_allclose(plain[:, 3] - logits.numpy()[:, 3], log_q[ids[3]], rtol=1e-5)


@pytest.mark.parametrize("fields, message", [
    ({"encoder": "rnn"}, "encoder among"),
    ({"temperature": 0}, "temperature in"),
    ({"sampled_negatives": -1}, "sampled_negatives"),
    ({"hidden_units": 3}, "hidden_units"),
    ({"normalize": "yes"}, "normalize as true or false"),
    ({"embedding_dimm": 3}, "embedding_dimm"),
])
def test_retrieval_config_checks(fields, message):
    with pytest.raises(SpecError, match=message):
        RetrievalConfig.from_dict(fields)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_every_encoder_builds_a_flat_user_tower(tiny_synthetic_dataset, encoder):
    from edgerec.sdk.models.retrieval import build_retrieval_model

    spec = tiny_synthetic_dataset.spec
    parts = build_retrieval_model(spec, RetrievalConfig(encoder=encoder, embedding_dim=8, hidden_units=(8,),
                                                        gru_units=8, ff_dim=8))
    tower = parts.user_tower
    assert tower.name == USER_TOWER and tower.output_names == [USER_VECTOR]
    assert not [layer for layer in tower.layers if isinstance(layer, tf_keras.Model)]     # flat
    assert set(tower.input_names) == {"hist_items", "dense", *(f.name for f in spec.context)}
    vectors = parts.user_vectors({k: v[:5] for k, v in tiny_synthetic_dataset.test.inputs.items()})
    assert vectors.shape == (5, 8) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    no_context = build_retrieval_model(spec, RetrievalConfig(encoder=encoder, embedding_dim=8, use_context=False,
                                                             gru_units=8, ff_dim=8))
    assert no_context.user_tower.input_names == ["hist_items"]


def _small_config(**kw):
    return RetrievalConfig(**{"encoder": "pooling", "embedding_dim": 16, "hidden_units": (32,), "normalize": False,
                              "temperature": 1.0, **kw})


@pytest.fixture(scope="module")
def trained(tiny_synthetic_dataset):
    from edgerec.sdk.training import TrainConfig
    from edgerec.sdk.training.retrieval import train_retrieval_model

    config = TrainConfig(epochs=4, batch_size=128, learning_rate=0.01, patience=4, verbose=0)
    return train_retrieval_model(tiny_synthetic_dataset, _small_config(), config)


@pytest.mark.slow
def test_in_batch_softmax_learns_and_beats_popularity_over_the_full_catalogue(trained):
    parts, history, metrics = trained
    losses = [epoch["loss"] for epoch in history["epochs"]]
    assert losses[-1] < losses[0]
    assert history["objective"]["logq_correction"] and history["train_rows"] > 0
    full, popularity = metrics["full_catalogue"], metrics["baseline_full_catalogue"]
    assert full["hr@10"] > popularity["hr@10"]
    assert full["recall@100"] > popularity["recall@100"]
    assert metrics["full_catalogue_users"]["evaluated"] == 300 and not metrics["full_catalogue_users"]["sampled"]
    assert set(metrics["test"]) == {"auc", "gauc", "recall@10", "ndcg@10", "coverage@10"}
    assert metrics["test"]["auc"] > 0.6


@pytest.mark.slow
def test_evaluation_scores_each_test_user_once_and_samples_users_beyond_its_budget(trained, tiny_synthetic_dataset):
    from edgerec.sdk.training.retrieval import evaluate_retrieval, split_user_vectors
    parts, _, metrics = trained
    test = tiny_synthetic_dataset.test
    assert np.allclose(split_user_vectors(parts, test), parts.user_vectors(test.inputs), atol=1e-5)
    items = parts.item_vectors.shape[0]
    budgeted = evaluate_retrieval(parts, tiny_synthetic_dataset, max_scored_cells=40 * items)
    assert budgeted["test"] == pytest.approx(metrics["test"])
    users = budgeted["full_catalogue_users"]
    assert users["evaluated"] == 40 and users["held_out"] == 300 and users["sampled"] and users["seed"] == 0
    assert "full_catalogue" not in evaluate_retrieval(parts, tiny_synthetic_dataset, max_scored_cells=0)


@pytest.mark.slow
def test_retrieval_model_dir_contract_and_round_trip(trained, tiny_synthetic_dataset, tmp_path):
    from edgerec.runtime.preprocess import Preprocessor
    from edgerec.sdk.metrics.full_catalogue import HeldOutUsers
    from edgerec.sdk.training import load_model_dir, save_model_dir

    parts, history, metrics = trained
    out = save_model_dir(parts, tiny_synthetic_dataset, tmp_path / "retrieval", metrics, history=history)
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "edgerec_model.json", f"{USER_TOWER}.keras", ITEM_VECTORS_FILE, "feature_spec.json", "calibration.npz",
        "validation.npz", HELDOUT_USERS_FILE, "examples.jsonl", "metrics.json"])
    manifest = json.loads((out / "edgerec_model.json").read_text())
    assert manifest["family"] == RETRIEVAL and manifest["parts"] == {USER_TOWER: f"{USER_TOWER}.keras"}
    assert manifest["retrieval"]["dim"] == 16 and manifest["retrieval"]["score"] == "dot"
    vectors = np.load(out / ITEM_VECTORS_FILE)
    assert vectors.dtype == np.float32 and vectors.shape == (tiny_synthetic_dataset.spec.item_vocab.size, 16)
    assert not vectors[:2].any() and np.abs(vectors[2:]).sum(axis=1).min() > 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["full_catalogue"] == metrics["full_catalogue"]
    assert saved["baseline_full_catalogue"] == metrics["baseline_full_catalogue"]

    loaded = load_model_dir(out)
    assert loaded.family == RETRIEVAL and loaded.config == parts.config
    np.testing.assert_array_equal(loaded.item_vectors, vectors)
    users = HeldOutUsers.load(out / HELDOUT_USERS_FILE)
    np.testing.assert_allclose(loaded.user_vectors(users.inputs), parts.user_vectors(users.inputs), atol=1e-5)
    examples = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    encoded = Preprocessor(loaded.spec).encode_requests([{k: v for k, v in e.items() if k != "expected"}
                                                         for e in examples])
    np.testing.assert_allclose(loaded.scores(encoded, encoded["cand_item"]), [e["expected"] for e in examples],
                               atol=1e-4)


def test_train_job_takes_a_retrieval_config_and_refuses_other_modes():
    from edgerec.sdk.training import TrainJob
    from edgerec.sdk.training.adversarial import AdversarialConfig

    job = TrainJob(out="r", family=RETRIEVAL)
    assert isinstance(job.model, RetrievalConfig)
    again = TrainJob.from_dict(json.loads(json.dumps(TrainJob(out="r", family=RETRIEVAL,
                                                              model=_small_config()).to_dict())))
    assert again.model == _small_config()
    with pytest.raises(SpecError, match="plain training for the retrieval family"):
        TrainJob(out="r", family=RETRIEVAL, adversarial=AdversarialConfig())


def test_cli_builds_a_retrieval_job_and_checks_encoder_use():
    import argparse

    from edgerec.sdk.cli import train as command

    parser = argparse.ArgumentParser()
    command.configure(parser)
    job = command.job_from_args(parser.parse_args(["--model", "retrieval", "--encoder", "transformer", "--out", "r",
                                                   "--model-config", '{"temperature": 0.1}']))
    assert job.family == RETRIEVAL and job.model.encoder == "transformer" and job.model.temperature == 0.1
    with pytest.raises(SpecError, match="--encoder only with --model retrieval"):
        command.job_from_args(parser.parse_args(["--model", "din", "--encoder", "gru", "--out", "d"]))
