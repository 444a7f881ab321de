"""One call from a `RecDataset` to a trained, evaluated `ModelParts` (plain training)."""
from __future__ import annotations

import logging
import time

from edgerec.runtime.contract import FAMILIES
from edgerec.runtime.errors import SpecError, expected

from ..models.config import ModelConfig
from .fit import TrainConfig, evaluate, fit

logger = logging.getLogger(__name__)


def train_content_encoder(dataset, config: ModelConfig, seed: int = 0, verbose: int = 0):
    """Pre-train the content encoder on ``dataset.item_text``.

    Returns:
        ``(spec with text, ContentParts, info)``; info has the pre-training loss per epoch,
        bag-of-words recall@5 and seconds.
    """
    from ..models import (ContentParts, attach_text_spec, build_content_encoder, content_table,
                          pretrain_content_encoder, tokenize_items)
    from edgerec.converters.tfenv import import_tf

    _, keras = import_tf()
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    spec = attach_text_spec(dataset.spec, dataset.item_text, config)
    tokens = tokenize_items(spec, dataset.item_text)
    encoder = build_content_encoder(spec, config)
    info = pretrain_content_encoder(encoder, tokens, config, seed=seed, verbose=verbose)
    table = content_table(encoder, tokens)
    info["seconds"] = round(time.perf_counter() - start, 2)
    return spec, ContentParts(encoder, table), info


def prepare_training(dataset, family: str, model_config: ModelConfig | None,
                     train_config: TrainConfig | None):
    """What every ``train_*`` entry point does before building its model: check the family, fill
    in default configs, pre-train the content encoder when the family uses it, seed TF.

    Returns:
        ``(model_config, train_config, spec, content, content_info)``; ``content`` is None (and
        ``spec`` the dataset's) for families without item content.
    """
    if family not in FAMILIES:
        raise SpecError(expected(f"a model family among {list(FAMILIES)}", family))
    model_config = ModelConfig() if model_config is None else model_config
    train_config = TrainConfig() if train_config is None else train_config
    spec, content, content_info = dataset.spec, None, None
    if model_config.uses_content(family):
        if train_config.verbose:
            logger.info("pre-training the content encoder on the item corpus")
        spec, content, content_info = train_content_encoder(dataset, model_config, train_config.seed)
        if train_config.verbose:
            logger.info(f"  bag-of-words recall@5 {content_info['recall@5']:.3f} ({content_info['seconds']:.1f} s)")
    from edgerec.converters.tfenv import import_tf

    import_tf()[1].utils.set_random_seed(train_config.seed)
    return model_config, train_config, spec, content, content_info


def train_model(dataset, family: str, model_config: ModelConfig | None = None,
                train_config: TrainConfig | None = None):
    """Build, (content-pre-train,) fit and evaluate one family on ``dataset``.

    Returns:
        ``(parts, history, metrics)`` with metrics shaped like `evaluate`'s result.

    Examples:
        >>> parts, history, metrics = train_model(load_dataset("synthetic"), "din")
        >>> metrics["test"]["auc"] > metrics["baseline"]["auc"]
        True
    """
    from ..models import build_model

    model_config, train_config, spec, content, content_info = prepare_training(dataset, family, model_config,
                                                                               train_config)
    parts = build_model(family, spec, model_config, content)
    parts.meta["content"] = content_info
    history = fit(parts, dataset, train_config)
    metrics = evaluate(parts, dataset, config=train_config)
    return parts, history, metrics
