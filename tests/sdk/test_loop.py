"""The shared epoch loop: one early-stopping rule, so --patience means the same in every training mode."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from edgerec.runtime.errors import SpecError
from edgerec.sdk.training.loop import EarlyStopping, keras_verbosity, run_epochs

# Validation AUC per epoch: improves to epoch 2, dips for three epochs, peaks at epoch 6.
SCRIPT = [0.60, 0.70, 0.65, 0.66, 0.69, 0.90, 0.50, 0.55]
# patience -> (epochs run, best epoch) under SCRIPT with 8 epochs at most
EXPECTED = {0: (3, 2), 1: (3, 2), 2: (4, 2), 3: (5, 2), 4: (8, 6)}


class _Config:
    def __init__(self, epochs=8, patience=2, monitor="auc", verbose=0):
        self.epochs, self.patience, self.monitor, self.verbose = epochs, patience, monitor, verbose


class _FakeModel:
    """Weights = the number of the epoch that produced them."""

    def __init__(self):
        self.weights = [np.zeros(1)]

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        self.weights = [w.copy() for w in weights]


def _scripted(monkeypatch, values, key="valid_auc"):
    """Make the loop's validation metrics follow ``values`` (whatever the model scores)."""
    from edgerec.sdk.training import loop

    remaining = list(values)
    other = "valid_logloss" if key == "valid_auc" else "valid_auc"
    monkeypatch.setattr(loop, "validation_metrics", lambda labels, scores: {key: remaining.pop(0), other: 0.5})


@pytest.mark.parametrize("patience", sorted(EXPECTED))
def test_early_stopping_waits_patience_epochs(patience):
    stopper = EarlyStopping("auc", patience)
    ran = 0
    for epoch, value in enumerate(SCRIPT, start=1):
        ran = epoch
        stopper.observe(epoch, {"valid_auc": value, "valid_logloss": 0.5})
        if stopper.should_stop:
            break
    assert (ran, stopper.best_epoch) == EXPECTED[patience]


def test_early_stopping_on_loss_prefers_lower_and_rejects_nan():
    stopper = EarlyStopping("loss", 1)
    assert stopper.observe(1, {"valid_auc": 0.5, "valid_logloss": 0.7})
    assert stopper.observe(2, {"valid_auc": 0.5, "valid_logloss": 0.6})
    assert not stopper.observe(3, {"valid_auc": 0.9, "valid_logloss": 0.65}) and stopper.should_stop
    with pytest.raises(SpecError, match="finite validation metric"):
        stopper.observe(4, {"valid_auc": float("nan"), "valid_logloss": float("nan")})
    with pytest.raises(SpecError, match="monitor among"):
        EarlyStopping("acc")
    with pytest.raises(SpecError, match="patience as an int >= 0"):
        EarlyStopping("auc", -1)


def test_run_epochs_restores_the_best_epochs_weights_and_logs_one_line_each(monkeypatch, caplog):
    _scripted(monkeypatch, SCRIPT)
    model = _FakeModel()

    def train_epoch(epoch):
        model.weights = [np.full(1, float(epoch))]
        return {"loss": 1.0 / epoch}

    with caplog.at_level(logging.INFO, logger="edgerec.sdk.training.loop"):
        history = run_epochs(model, _Config(patience=2, verbose=1), train_epoch, lambda: None, None,
                             epoch_facts=lambda: {"scale": 1.0}, note=", fake")
    assert [row["epoch"] for row in history["epochs"]] == [1, 2, 3, 4]
    assert history["best_epoch"] == 2 and history["stopped_early"] and history["monitor"] == "auc"
    assert model.weights[0][0] == 2.0
    assert list(history["epochs"][0]) == ["epoch", "loss", "valid_auc", "valid_logloss", "scale", "seconds"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and lines[1].startswith("epoch 2/8  loss 0.5000  valid auc 0.7000") and ", fake)" in lines[1]


def test_keras_draws_its_bar_only_on_a_terminal(monkeypatch):
    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.setattr("sys.stdout", Stream(False))
    assert keras_verbosity(1) == 0
    monkeypatch.setattr("sys.stdout", Stream(True))
    assert keras_verbosity(1) == 1 and keras_verbosity(0) == 0


# -- every training mode through the same loop (real tiny runs, scripted validation metrics) ------
TINY_MODEL = dict(embedding_dim=8, hidden_units=(8,), attention_units=(8,))


def _train(mode, dataset, config):
    from edgerec.converters.tfenv import import_tf
    from edgerec.sdk.models import ModelConfig, build_model

    tf, keras = import_tf()
    keras.utils.set_random_seed(0)
    if mode == "distributed":
        from edgerec.sdk.training.distributed import build_model_distributed, fit_distributed

        strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
        parts = build_model_distributed(strategy, "din", dataset.spec, ModelConfig(**TINY_MODEL))
        return fit_distributed(parts, dataset, config, strategy)
    parts = build_model("din", dataset.spec, ModelConfig(**TINY_MODEL))
    if mode == "adversarial":
        from edgerec.sdk.training.adversarial import AdversarialConfig, adversarial_fit

        return adversarial_fit(parts, dataset, config, AdversarialConfig(eps=0.1))
    from edgerec.sdk.training import fit

    return fit(parts, dataset, config)


@pytest.mark.slow
@pytest.mark.parametrize("patience", [1, 2, 3])
def test_patience_stops_every_mode_at_the_same_epoch(tiny_synthetic_dataset, monkeypatch, patience):
    pytest.importorskip("tf_keras")
    from edgerec.sdk.training import TrainConfig

    config = TrainConfig(epochs=len(SCRIPT), patience=patience, batch_size=512, max_train_rows=512, verbose=0)
    stopped = {}
    for mode in ("plain", "adversarial", "distributed"):
        _scripted(monkeypatch, SCRIPT)
        history = _train(mode, tiny_synthetic_dataset, config)
        assert [row["valid_auc"] for row in history["epochs"]] == SCRIPT[:len(history["epochs"])]
        assert {"epoch", "loss", "valid_auc", "valid_logloss", "seconds"} <= set(history["epochs"][0])
        assert {"epochs", "best_epoch", "stopped_early", "train_rows", "monitor"} <= set(history)
        stopped[mode] = (len(history["epochs"]), history["best_epoch"], history["stopped_early"])
    assert set(stopped.values()) == {(*EXPECTED[patience], True)}, stopped


@pytest.mark.slow
def test_plain_training_writes_no_carriage_returns_to_a_file(tiny_synthetic_dataset, capfd, caplog):
    pytest.importorskip("tf_keras")
    from edgerec.sdk.training import TrainConfig

    with caplog.at_level(logging.INFO, logger="edgerec.sdk.training.loop"):
        history = _train("plain", tiny_synthetic_dataset, TrainConfig(epochs=2, patience=5, max_train_rows=2000,
                                                                      batch_size=128, verbose=1))
    captured = capfd.readouterr()
    assert "\r" not in captured.out and "\r" not in captured.err
    assert len(history["epochs"]) == 2
    assert [r.getMessage().split("  ")[0] for r in caplog.records] == ["epoch 1/2", "epoch 2/2"]
