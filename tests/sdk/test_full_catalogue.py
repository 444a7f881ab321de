"""Full-catalogue evaluation on the training side: held-out users and their seen items, the
popularity baseline, ranking models scored on every item, and the metrics.json contract."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgerec.runtime.contract import HELDOUT_USERS_FILE
from edgerec.runtime.metrics import full_catalogue_ranks
from edgerec.sdk.metrics.full_catalogue import HeldOutUsers, held_out_users, popularity_full_catalogue


@pytest.fixture(scope="module")
def users(tiny_synthetic_dataset):
    return held_out_users(tiny_synthetic_dataset)


def test_one_held_out_user_per_test_group_with_its_whole_past_as_seen(tiny_synthetic_dataset, users):
    dataset = tiny_synthetic_dataset
    test = dataset.test
    assert len(users) == np.unique(test.groups).size
    assert np.all(np.diff(users.users) > 0)
    for row in (0, len(users) // 2, len(users) - 1):
        user = users.users[row]
        test_row = np.flatnonzero((test.groups == user) & (test.labels > 0.5))[0]
        assert users.positives[row] == test.inputs["cand_item"][test_row]
        np.testing.assert_array_equal(users.inputs["hist_items"][row], test.inputs["hist_items"][test_row])
        past = set()
        for split in (dataset.train, dataset.valid):
            mine = (split.groups == user) & (split.labels > 0.5)
            past |= set(split.inputs["cand_item"][mine].tolist())
        seen = users.seen.items[users.seen.indptr[row]:users.seen.indptr[row + 1]]
        assert set(seen.tolist()) == past | set(users.inputs["hist_items"][row][users.inputs["hist_items"][row] > 0])
        assert users.positives[row] not in past            # implicit feedback: no repeats
    assert "cand_item" not in users.inputs


def test_held_out_users_round_trip_and_sample(users, tmp_path):
    np.savez(tmp_path / HELDOUT_USERS_FILE, **users.to_npz_dict())
    again = HeldOutUsers.load(tmp_path / HELDOUT_USERS_FILE)
    np.testing.assert_array_equal(again.positives, users.positives)
    np.testing.assert_array_equal(again.seen.items, users.seen.items)
    assert sorted(again.inputs) == sorted(users.inputs)
    small = users.sample(50, seed=1)
    assert len(small) == 50 and np.all(np.diff(small.users) > 0)
    np.testing.assert_array_equal(small.users, users.sample(50, seed=1).users)
    row = int(np.flatnonzero(users.users == small.users[7])[0])
    np.testing.assert_array_equal(small.seen.items[small.seen.indptr[7]:small.seen.indptr[8]],
                                  users.seen.items[users.seen.indptr[row]:users.seen.indptr[row + 1]])
    assert users.sample(None) is users


def test_popularity_baseline_ranks_every_unseen_item_by_count(tiny_synthetic_dataset, users):
    popularity = tiny_synthetic_dataset.item_popularity.astype(float)
    result = popularity_full_catalogue(tiny_synthetic_dataset, users)
    assert set(result) == {"hr@10", "ndcg@10", "recall@100"}
    ranks = []
    for row in range(len(users)):
        seen = set(users.seen.items[users.seen.indptr[row]:users.seen.indptr[row + 1]].tolist())
        pos = int(users.positives[row])
        if pos < 2:
            ranks.append(popularity.size)
            continue
        others = [i for i in range(2, popularity.size) if i != pos and i not in seen]
        ranks.append(sum(popularity[i] >= popularity[pos] for i in others))
    ranks = np.asarray(ranks)
    assert result["hr@10"] == pytest.approx(np.mean(ranks < 10))
    assert result["recall@100"] == pytest.approx(np.mean(ranks < 100))
    assert 0 < result["recall@100"] < 1


pytest.importorskip("tf_keras")


@pytest.fixture(scope="module")
def din(tiny_synthetic_dataset):
    from edgerec.sdk.models import ModelConfig, build_model

    return build_model("din", tiny_synthetic_dataset.spec, ModelConfig(embedding_dim=8, hidden_units=(16,),
                                                                       attention_units=(8,)))


def test_ranker_scores_every_item_through_the_fused_model(tiny_synthetic_dataset, users, din):
    from edgerec.sdk.training import predict_scores
    from edgerec.sdk.training.catalogue import ranker_score_chunks

    num_items = tiny_synthetic_dataset.spec.item_vocab.size
    block = ranker_score_chunks(din, users, num_items)(3, 5)
    assert block.shape == (2, num_items)
    rows = {k: np.repeat(v[4:5], 3, axis=0) for k, v in users.inputs.items()}
    rows["cand_item"] = np.array([0, 17, num_items - 1], np.int32)
    np.testing.assert_allclose(block[1, [0, 17, num_items - 1]], predict_scores(din, rows), atol=1e-6)


def test_ranker_full_catalogue_samples_users_beyond_the_row_budget(tiny_synthetic_dataset, din):
    from edgerec.sdk.training.catalogue import ranker_full_catalogue

    num_items = tiny_synthetic_dataset.spec.item_vocab.size
    result = ranker_full_catalogue(din, tiny_synthetic_dataset, max_scored_rows=40 * num_items, seed=5)
    info = result["full_catalogue_users"]
    assert info["sampled"] and info["evaluated"] == 40 and info["held_out"] == 300 and info["seed"] == 5
    assert info["items"] == num_items - 2
    assert set(result["full_catalogue"]) == set(result["baseline_full_catalogue"]) == {"hr@10", "ndcg@10",
                                                                                          "recall@100"}
    again = ranker_full_catalogue(din, tiny_synthetic_dataset, max_scored_rows=40 * num_items, seed=5)
    assert again["full_catalogue"] == result["full_catalogue"]


@pytest.mark.slow
def test_ranking_model_dir_records_full_catalogue_metrics(tmp_path):
    from edgerec.sdk.models import ModelConfig
    from edgerec.sdk.training import TrainConfig, TrainJob, train_and_save

    job = TrainJob(out=str(tmp_path / "gru"), family="gru",
                   data_options={"num_users": 200, "num_items": 250, "num_events": 5000}, max_seq_len=10,
                   model=ModelConfig(embedding_dim=8, hidden_units=(16,), gru_units=8),
                   train=TrainConfig(epochs=1, batch_size=256, verbose=0, max_train_rows=3000))
    outcome = train_and_save(job)
    metrics = json.loads((outcome.model_dir / "metrics.json").read_text())
    assert set(metrics["full_catalogue"]) == {"hr@10", "ndcg@10", "recall@100"}
    assert set(metrics["baseline_full_catalogue"]) == {"hr@10", "ndcg@10", "recall@100"}
    assert metrics["full_catalogue_users"]["evaluated"] == metrics["full_catalogue_users"]["held_out"] == 200
    for value in (*metrics["full_catalogue"].values(), *metrics["baseline_full_catalogue"].values()):
        assert 0 <= value <= 1
    assert metrics["full_catalogue"]["hr@10"] <= metrics["full_catalogue"]["recall@100"]
    manifest = json.loads((outcome.model_dir / "edgerec_model.json").read_text())
    assert manifest["data"]["heldout_users"] == HELDOUT_USERS_FILE
    stored = HeldOutUsers.load(outcome.model_dir / HELDOUT_USERS_FILE)
    assert len(stored) == 200
    lines = "\n".join(outcome.report_lines())
    assert "full catalogue (" in lines and "hr@10" in lines and "recall@100" in lines
    # the stored users reproduce the recorded figure through the numpy metrics alone
    from edgerec.sdk.training import load_model_dir
    from edgerec.sdk.training.catalogue import ranker_score_chunks

    parts = load_model_dir(outcome.model_dir)
    ranks = full_catalogue_ranks(ranker_score_chunks(parts, stored, parts.spec.item_vocab.size), stored.positives,
                                 stored.seen)
    assert np.mean(ranks < 10) == pytest.approx(metrics["full_catalogue"]["hr@10"])
