"""The one epoch loop and early-stopping rule of every training mode (plain, adversarial, distributed).

A mode says how to train one epoch and how to score the validation split; `run_epochs` times the
epoch, computes validation AUC and logloss, logs one line, asks `EarlyStopping` whether to go on,
and restores the best epoch's weights at the end. Because every mode runs this loop, ``patience``
means the same everywhere: stop after ``patience`` epochs in a row without improvement (0 and 1
both stop at the first such epoch, as Keras' ``EarlyStopping`` does).

Examples:
    >>> stopper = EarlyStopping(monitor="auc", patience=2)
    >>> [stopper.observe(e, {"valid_auc": a, "valid_logloss": 0.5}) for e, a in enumerate([.7, .8, .75], 1)]
    [True, True, False]
    >>> stopper.should_stop, stopper.best_epoch
    (False, 2)
"""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from typing import Callable

from edgerec.runtime import metrics as M
from edgerec.runtime.errors import SpecError, expected
from edgerec.runtime.progress import is_terminal

logger = logging.getLogger(__name__)

MONITORS = ("auc", "loss")


class EarlyStopping:
    """Tracks the best epoch by validation AUC (higher is better) or logloss (lower is better).

    Args:
        monitor: ``"auc"`` or ``"loss"``.
        patience: epochs in a row without improvement before `should_stop` (0 acts as 1).
    """

    def __init__(self, monitor: str = "auc", patience: int = 2):
        if monitor not in MONITORS:
            raise SpecError(expected(f"monitor among {list(MONITORS)}", monitor))
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise SpecError(expected("patience as an int >= 0", patience))
        self.monitor, self.patience = monitor, patience
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.waited = 0

    def observe(self, epoch: int, row: dict) -> bool:
        """Record one epoch's ``valid_auc`` / ``valid_logloss``; True when it is the best so far."""
        value = row["valid_auc"] if self.monitor == "auc" else -row["valid_logloss"]
        if math.isnan(value):
            raise SpecError(expected("a finite validation metric (does valid hold both labels?)", value))
        if self.best_value is None or value > self.best_value:
            self.best_value, self.best_epoch, self.waited = value, epoch, 0
            return True
        self.waited += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.waited >= max(1, self.patience)


def validation_metrics(labels, scores) -> dict:
    """``{"valid_auc", "valid_logloss"}`` of validation scores."""
    return {"valid_auc": M.auc(labels, scores), "valid_logloss": M.logloss(labels, scores)}


def keras_verbosity(verbose: int) -> int:
    """Keras ``fit`` verbosity: its redrawn bar on a terminal; nothing in a file or pipe, where a
    redrawn bar turns into carriage-return runs and the loop's own line per epoch says enough."""
    return 1 if verbose and is_terminal(sys.stdout) else 0


def compile_model(model, learning_rate: float) -> None:
    """Compile for CTR training: Adam at ``learning_rate``, binary cross-entropy on ``score``."""
    from edgerec.converters.tfenv import import_tf

    _, keras = import_tf()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=keras.losses.BinaryCrossentropy())


def _epoch_line(row: dict, epochs: int, note: str) -> str:
    text = f"epoch {row['epoch']}/{epochs}  loss {row['loss']:.4f}"
    if "adversarial_loss" in row:
        text += f"  adv loss {row['adversarial_loss']:.4f}"
    return (text + f"  valid auc {row['valid_auc']:.4f}  valid logloss {row['valid_logloss']:.4f}"
            f"  ({row['seconds']:.1f} s{note})")


def run_epochs(model, config, train_epoch: Callable[[int], dict], valid_scores: Callable[[], object],
               valid_labels, *, epoch_facts: Callable[[], dict] | None = None, log: bool | None = None,
               note: str = "", scope: Callable[[], contextlib.AbstractContextManager] | None = None) -> dict:
    """Train epoch by epoch with early stopping; the best epoch's weights are in ``model`` at the end.

    Args:
        model: the Keras model trained (its ``get_weights`` / ``set_weights`` keep the best epoch).
        config: a `TrainConfig` (``epochs``, ``patience``, ``monitor``, ``verbose``).
        train_epoch: ``callable(epoch) -> {"loss": …, …}``, one pass over the training rows.
        valid_scores: ``callable() -> [N]`` probabilities on the validation split.
        valid_labels: the validation labels ``[N]``.
        epoch_facts: ``callable() -> dict`` of more per-epoch facts, recorded after validation.
        log: log one line per epoch (default: ``config.verbose``).
        note: appended inside the line's parentheses (e.g. ``", 2 replicas"``).
        scope: context restoring the weights is done in (a strategy's ``scope``).

    Returns:
        ``{"epochs": [{"epoch", <train_epoch's keys>, "valid_auc", "valid_logloss",
        <epoch_facts' keys>, "seconds"}, …], "best_epoch", "stopped_early", "monitor"}``.
    """
    stopper = EarlyStopping(config.monitor, config.patience)
    log = bool(config.verbose) if log is None else log
    rows, best_weights = [], None
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        trained = train_epoch(epoch)
        seconds = time.perf_counter() - start
        row = {"epoch": epoch, **trained, **validation_metrics(valid_labels, valid_scores()),
               **(epoch_facts() if epoch_facts is not None else {}), "seconds": round(seconds, 2)}
        rows.append(row)
        if log:
            logger.info(_epoch_line(row, config.epochs, note))
        if stopper.observe(epoch, row):
            best_weights = model.get_weights()
        elif stopper.should_stop:
            break
    with (scope() if scope is not None else contextlib.nullcontext()):
        model.set_weights(best_weights)
    return {"epochs": rows, "best_epoch": stopper.best_epoch, "stopped_early": len(rows) < config.epochs,
            "monitor": config.monitor}
