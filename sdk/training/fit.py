"""Plain training (`fit`: Keras ``fit`` per epoch inside the shared loop) and test evaluation (`evaluate`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edgerec.runtime.errors import SpecError, expected
from edgerec.runtime.spec import NUM_RESERVED
from ..models.config import config_from_dict

from .catalogue import MAX_SCORED_ROWS
from .loop import MONITORS, compile_model, keras_verbosity, run_epochs


@dataclass(frozen=True)
class TrainConfig:
    """How `fit` trains the fused model (the parts share its weights).

    Args:
        epochs: maximum epochs.
        batch_size: rows per step.
        learning_rate: Adam learning rate.
        patience: epochs without improvement of ``monitor`` before stopping (as Keras'
            EarlyStopping: 0 and 1 both stop at the first epoch that does not improve).
        monitor: ``"auc"`` (validation AUC, higher is better) or ``"loss"`` (validation logloss).
        seed: seeds TensorFlow, numpy and Python (shuffling, initialisation).
        verbose: 0 silent; 1 logs one line per epoch (plus Keras' bar on a terminal).
        max_train_rows: train on a seeded random subset of this many rows (None = all).
        full_catalogue_rows: user x item rows a ranking model may score for the full-catalogue
            metrics (users beyond it are a seeded sample; 0 skips them). Each row is one forward
            pass of the fused model, so this bounds the evaluation's time.
    """

    epochs: int = 5
    batch_size: int = 512
    learning_rate: float = 1e-3
    patience: int = 2
    monitor: str = "auc"
    seed: int = 0
    verbose: int = 1
    max_train_rows: int | None = None
    full_catalogue_rows: int = MAX_SCORED_ROWS

    def __post_init__(self):
        for name in ("epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "patience" else 1):
                raise SpecError(expected(f"{name} as a positive int", value))
        if not isinstance(self.learning_rate, (int, float)) or not 0 < self.learning_rate < 1:
            raise SpecError(expected("learning_rate in (0, 1)", self.learning_rate))
        if self.monitor not in MONITORS:
            raise SpecError(expected(f"monitor among {list(MONITORS)}", self.monitor))
        if self.max_train_rows is not None and (not isinstance(self.max_train_rows, int) or self.max_train_rows < 1):
            raise SpecError(expected("max_train_rows as a positive int or None", self.max_train_rows))
        if isinstance(self.full_catalogue_rows, bool) or not isinstance(self.full_catalogue_rows, int) \
                or self.full_catalogue_rows < 0:
            raise SpecError(expected("full_catalogue_rows as an int >= 0", self.full_catalogue_rows))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return config_from_dict(cls, data, "train-config")


def predict_scores(parts, arrays: dict, batch_size: int = 4096) -> np.ndarray:
    """Fused-model probabilities ``[N]`` for model-input arrays (extra arrays are ignored)."""
    inputs = parts.select_inputs(arrays)
    return np.asarray(parts.fused.predict(inputs, batch_size=batch_size, verbose=0), np.float64).reshape(-1)


def seeded_training_rows(dataset, config: TrainConfig, keras):
    """Check both splits are non-empty, seed Keras, and return the (optionally subsampled) train split."""
    if len(dataset.train) == 0 or len(dataset.valid) == 0:
        raise SpecError(expected("non-empty train and valid splits",
                                 {"train": len(dataset.train), "valid": len(dataset.valid)}))
    keras.utils.set_random_seed(config.seed)
    train = dataset.train
    if config.max_train_rows is not None and config.max_train_rows < len(train):
        rng = np.random.default_rng(config.seed)
        train = train.take(np.sort(rng.choice(len(train), config.max_train_rows, replace=False)))
    return train


def fit(parts, dataset, config: TrainConfig | None = None) -> dict:
    """Train ``parts.fused`` on ``dataset.train`` with early stopping on ``dataset.valid``.

    The best epoch's weights (by ``config.monitor``) are restored at the end, so the
    user encoder, scorer and fused model all hold them (they share layers).

    Returns:
        ``{"epochs": [{"epoch", "loss", "valid_auc", "valid_logloss", "seconds"}, …],
        "best_epoch", "stopped_early", "monitor", "train_rows"}``.
    """
    from edgerec.converters.tfenv import import_tf

    _, keras = import_tf()
    config = TrainConfig() if config is None else config
    train = seeded_training_rows(dataset, config, keras)
    inputs = parts.select_inputs(train.inputs)
    labels = np.asarray(train.labels, np.float32).reshape(-1, 1)
    compile_model(parts.fused, config.learning_rate)
    verbose = keras_verbosity(config.verbose)

    def train_epoch(_epoch: int) -> dict:
        result = parts.fused.fit(inputs, labels, batch_size=config.batch_size, epochs=1, shuffle=True,
                                 verbose=verbose)
        return {"loss": float(result.history["loss"][-1])}

    history = run_epochs(parts.fused, config, train_epoch, lambda: predict_scores(parts, dataset.valid.inputs),
                         dataset.valid.labels)
    return {**history, "train_rows": len(train)}


def evaluate(parts, dataset, k: int = 10, full_catalogue: bool = True, config: TrainConfig | None = None) -> dict:
    """Test metrics of the model and of the popularity baseline computed in the same run.

    Args:
        full_catalogue: also rank every item for the held-out users (`ranker_full_catalogue`:
            a seeded sample of users when users x items exceeds ``config.full_catalogue_rows``).
        config: the training config (its full-catalogue budget; default `TrainConfig()`'s).

    Returns:
        ``{"test": {auc, gauc, logloss, recall@10, ndcg@10, coverage@10},
        "baseline": {auc, recall@10, ndcg@10}}`` (sampled: 100 negatives per held-out item), and with
        ``full_catalogue`` ``"full_catalogue": {hr@10, ndcg@10, recall@100}``,
        ``"baseline_full_catalogue"`` (popularity, same users) and ``"full_catalogue_users"``.
    """
    from ..metrics import evaluate_scores, popularity_baseline

    test = dataset.test
    if test.groups is None or len(test) == 0:
        raise SpecError(expected("a non-empty test ranking split with groups", len(test)))
    scores = predict_scores(parts, test.inputs)
    catalog = parts.spec.item_vocab.size - NUM_RESERVED
    metrics = {"test": evaluate_scores(test, scores, catalog, k), "baseline": popularity_baseline(dataset, k)}
    budget = (config or TrainConfig()).full_catalogue_rows
    if full_catalogue and budget:
        from .catalogue import ranker_full_catalogue

        metrics.update(ranker_full_catalogue(parts, dataset, max_scored_rows=budget))
    return metrics
