"""Online learning: events CSV, history store, replay buffer bound, drift adaptation, `edgerec update`."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from edgerec.sdk.data import DataError
from edgerec.sdk.training.online import (EventLog, HistoryStore, OnlineConfig, ReplayBuffer, encode_events,
                                         read_events_csv, with_negatives)

TINY = dict(embedding_dim=8, hidden_units=(16,), attention_units=(8,))


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# -- events CSV --------------------------------------------------------------------------------
def test_events_csv_parses_sorts_and_keeps_device(tmp_path):
    path = _write(tmp_path / "e.csv", "timestamp,item_id,user_id,device,rating\n"
                                      "200,i2,u1,ios,5\n100,i1,u1,ios,4\n150,i9,u2,web,3\n")
    events = read_events_csv(path)
    assert events.timestamps.tolist() == [100, 150, 200]
    assert events.item_ids.tolist() == ["i1", "i9", "i2"] and events.devices.tolist() == ["ios", "web", "ios"]
    assert read_events_csv(_write(tmp_path / "n.csv", "user_id,item_id,timestamp\n1,2,3.0\n")).devices is None


@pytest.mark.parametrize("text, needle", [
    ("user_id,item,timestamp\n1,2,3\n", "missing ['item_id']"),
    ("", "missing ['user_id', 'item_id', 'timestamp']"),
    ("user_id,item_id,timestamp\n", "at least one event row"),
    ("user_id,item_id,timestamp\n1,2,yesterday\n", "numeric unix-second timestamps"),
    ("user_id,item_id,timestamp\n1,2\n", "3 fields on line 2"),
    ("user_id,item_id,timestamp\n1,,5\n", "non-empty"),
    ("user_id,item_id,timestamp\n1,2,-5\n", "non-negative"),
])
def test_events_csv_errors_are_typed(tmp_path, text, needle):
    with pytest.raises(DataError, match="Expected") as err:
        read_events_csv(_write(tmp_path / "bad.csv", text))
    assert needle in str(err.value)
    with pytest.raises(DataError, match="Expected an events CSV file"):
        read_events_csv(tmp_path / "absent.csv")


# -- histories, encoding, negatives ---------------------------------------------------------------
def test_encode_events_uses_store_history_and_frozen_vocab(tiny_synthetic_dataset):
    spec = tiny_synthetic_dataset.spec
    known = list(spec.item_vocab.tokens[:3])
    store = HistoryStore(spec.max_seq_len).observe_all(EventLog(["u1"], [known[0]], [1000]))
    events = EventLog(["u1", "u1", "new"], [known[1], "never-seen", known[2]], [2000, 3000, 2500])
    enc = encode_events(spec, events, store)
    lookup = spec.item_vocab.lookup
    # time order: u1@2000, new@2500, u1@3000
    assert enc.positives.tolist() == [lookup(known[1]), lookup(known[2]), 1]
    assert enc.oov_item.tolist() == [False, False, True] and enc.known_user.tolist() == [True, False, True]
    hist = enc.inputs["hist_items"]
    assert hist[0, -1] == lookup(known[0]) and (hist[0, :-1] == 0).all()
    assert (hist[1] == 0).all()
    assert hist[2, -2:].tolist() == [lookup(known[0]), lookup(known[1])]
    assert store.state("u1")[1] == 3 and len(store) == 2

    rows = with_negatives(enc, 5, spec.item_vocab.size, np.random.default_rng(0))
    assert len(rows) == 18 and rows.labels.reshape(3, 6)[:, 0].tolist() == [1, 1, 1]
    cands = rows.inputs["cand_item"].reshape(3, 6)
    assert (cands[:, 1:] != cands[:, :1]).all() and (cands[:, 1:] >= 2).all()
    assert (cands[:, 1:] < spec.item_vocab.size).all() and rows.groups.tolist() == np.repeat([0, 1, 2], 6).tolist()


# -- replay buffer --------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["reservoir", "fifo"])
def test_replay_buffer_is_bounded(policy):
    buffer = ReplayBuffer(capacity=150, policy=policy, seed=0)
    for batch in range(10):
        ids = np.arange(batch * 100, (batch + 1) * 100)
        buffer.add({"cand_item": ids.astype(np.int32), "hist_items": np.tile(ids[:, None], (1, 4))}, ids % 2)
        assert len(buffer) == min(150, (batch + 1) * 100)
    held = buffer.contents()
    assert len(held) == 150 and buffer.offered == 1000 and buffer.arrays["cand_item"].shape[0] == 150
    ids = held.inputs["cand_item"]
    assert np.unique(ids).size == 150 and (held.inputs["hist_items"][:, 0] == ids).all()
    assert (held.labels == ids % 2).all()
    if policy == "fifo":
        assert sorted(ids.tolist()) == list(range(850, 1000))
    else:   # uniform over the stream: early and late rows both survive
        assert (ids < 500).sum() > 30 and (ids >= 500).sum() > 30
    x, y = buffer.sample(64)
    assert y.shape == (64,) and set(x) == {"cand_item", "hist_items"}
    with pytest.raises(DataError, match="Expected"):
        buffer.add({"cand_item": np.zeros(3, np.int32)}, np.zeros(3))


def test_online_config_checks():
    with pytest.raises(DataError, match="Expected"):
        OnlineConfig(replay_fraction=1.0)
    with pytest.raises(DataError, match="Expected"):
        OnlineConfig(steps_per_batch=0)
    with pytest.raises(DataError, match="Expected"):
        ReplayBuffer(capacity=0)


# -- drift adaptation and the update command ----------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_synthetic_dataset):
    pytest.importorskip("tf_keras")
    from edgerec.sdk.models import ModelConfig
    from edgerec.sdk.training import TrainConfig, save_model_dir, train_model

    config = TrainConfig(epochs=1, batch_size=256, verbose=0)
    parts, history, metrics = train_model(tiny_synthetic_dataset, "din", ModelConfig(**TINY), config)
    return save_model_dir(parts, tiny_synthetic_dataset, tmp_path_factory.mktemp("online") / "base", metrics,
                          config, history)


def _drift_events(dataset, n=600, seed=0) -> EventLog:
    """Every new event picks one of 3 formerly rare items: a trend the base model cannot know."""
    rng = np.random.default_rng(seed)
    trending = list(dataset.spec.item_vocab.tokens[-3:])
    users = rng.choice(dataset.meta["user_ids"], n)
    return EventLog(users, rng.choice(trending, n), 1_800_000_000 + np.arange(n) * 60)


@pytest.mark.slow
def test_online_update_adapts_to_drift_vs_frozen(model_dir, tiny_synthetic_dataset):
    from edgerec.runtime.metrics import auc
    from edgerec.sdk.training import load_model_dir, predict_scores
    from edgerec.sdk.training.online import OnlineUpdater

    parts = load_model_dir(model_dir)
    spec, rng = parts.spec, np.random.default_rng(1)
    encoded = encode_events(spec, _drift_events(tiny_synthetic_dataset), HistoryStore(spec.max_seq_len))
    train = with_negatives(encoded, 4, spec.item_vocab.size, rng, np.arange(400))
    evaluation = with_negatives(encoded, 20, spec.item_vocab.size, rng, np.arange(400, 600))
    frozen = auc(evaluation.labels, predict_scores(parts, evaluation.inputs))
    updater = OnlineUpdater(parts, OnlineConfig(events_per_batch=100, steps_per_batch=8, batch_size=256,
                                                learning_rate=3e-3, replay_capacity=2000))
    result = updater.stream(train)
    assert result["batches"] == 4 and result["steps"] == 32 and len(updater.replay) == 2000
    updated = auc(evaluation.labels, updater.scores(evaluation))
    assert updated > frozen + 0.1 and updated > 0.8, (frozen, updated)


@pytest.mark.slow
def test_update_command_end_to_end(model_dir, tiny_synthetic_dataset, tmp_path):
    from edgerec.sdk.cli import update as update_command
    from edgerec.sdk.training import load_model_dir, read_manifest

    events = _drift_events(tiny_synthetic_dataset, n=300)
    lines = ["user_id,item_id,timestamp,device"] + [f"{u},{i},{t},ios" for u, i, t in
                                                    zip(events.user_ids, events.item_ids, events.timestamps)]
    csv_path = _write(tmp_path / "new.csv", "\n".join(lines) + "\n")
    parser = argparse.ArgumentParser()
    update_command.configure(parser)
    out = tmp_path / "v2"
    args = parser.parse_args([str(model_dir), "--events", str(csv_path), "--out", str(out), "--steps", "3",
                              "--events-per-batch", "100", "--replay", "500", "--quiet"])
    assert update_command.run(args) == 0
    manifest = read_manifest(out)
    assert manifest["bundle_version"] == 2 and manifest["online"]["events"] == 300
    assert manifest["online"]["steps"] == 9 and manifest["online"]["parent"] == str(model_dir.absolute())
    assert 0.0 <= manifest["online"]["prequential_auc"] <= 1.0
    parent, child = load_model_dir(model_dir), load_model_dir(out)
    changed = [not np.allclose(a, b) for a, b in zip(parent.fused.get_weights(), child.fused.get_weights())]
    assert any(changed)
    assert parent.spec.item_vocab.tokens == child.spec.item_vocab.tokens          # vocabulary frozen
    assert json.loads((out / "metrics.json").read_text())["test"]["auc"] > 0.5

    bad = _write(tmp_path / "bad.csv", "user,item_id,timestamp\n1,2,3\n")
    args = parser.parse_args([str(model_dir), "--events", str(bad), "--out", str(tmp_path / "x")])
    with pytest.raises(DataError, match="missing \\['user_id'\\]"):
        update_command.run(args)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_update_exports_a_new_bundle_version(model_dir, tiny_synthetic_dataset, tmp_path):
    from edgerec.runtime.manifest import load_manifest
    from edgerec.sdk.training.update import update_model_dir

    summary = update_model_dir(model_dir, _drift_events(tiny_synthetic_dataset, n=100), tmp_path / "v2",
                               OnlineConfig(events_per_batch=100, steps_per_batch=2, replay_capacity=500),
                               export=tmp_path / "bundle",
                               export_options={"quantize": ["none"], "targets": ["tflite"], "max_groups": 20})
    manifest = load_manifest(tmp_path / "bundle", verify=True)
    assert manifest.bundle_version == 2 == summary["bundle_version"]
    assert manifest.model["source"] == str(tmp_path / "v2") and manifest.selected["litert"]["fused"]


def test_update_cli_reports_bad_events_as_typed_error(tmp_path, capsys):
    from edgerec.sdk import cli

    model = tmp_path / "m"
    model.mkdir()
    (model / "edgerec_model.json").write_text(json.dumps(
        {"format_version": 1, "family": "din", "parts": {}, "feature_spec": "feature_spec.json"}))
    bad = _write(tmp_path / "bad.csv", "uid,item_id,timestamp\n1,2,3\n")
    assert cli.main(["update", str(model), "--events", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "DataError" in err and "Expected columns ['user_id', 'item_id', 'timestamp']" in err
    assert cli.main(["update", str(tmp_path / "nowhere"), "--events", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "Expected an existing MODEL_DIR" in capsys.readouterr().err
    args = ["update", str(model), "--events", str(bad), "--out", str(tmp_path / "o"), "--export", str(tmp_path / "b")]
    assert cli.main([*args, "--quantize", "int3"]) == 2            # export options fail before the events are read
    assert "quantize modes among" in capsys.readouterr().err
