"""One call from a `RecDataset` to a trained, evaluated `ModelParts` (plain training)."""
from __future__ import annotations

import dataclasses
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
    from ..models.content import standardize_content_encoder
    from edgerec.converters.tfenv import import_tf

    _, keras = import_tf()
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    spec = attach_text_spec(dataset.spec, dataset.item_text, config)
    tokens = tokenize_items(spec, dataset.item_text)
    encoder = build_content_encoder(spec, config)
    info = pretrain_content_encoder(encoder, tokens, config, seed=seed, verbose=verbose)
    standardize_content_encoder(encoder, tokens)
    table = content_table(encoder, tokens)
    info["seconds"] = round(time.perf_counter() - start, 2)
    return spec, ContentParts(encoder, table), info


def minilm_content(dataset, config: ModelConfig, cache_dir=None):
    """The pretrained MiniLM content tower for ``dataset`` (`edgerec.sdk.models.minilm.minilm_content`:
    vectors of every item text, reduced to ``config.content_dim`` by a catalogue PCA folded into the
    encoder).

    Returns:
        ``(spec with the WordPiece text spec, ContentParts, info)``.
    """
    from ..models import ContentParts
    from ..models.minilm import minilm_content as build

    spec, encoder, table, info = build(dataset.spec, dataset.item_text, config.content_dim,
                                       config.minilm_max_tokens, cache_dir=cache_dir)
    return spec, ContentParts(encoder, table), info


def prepare_content(dataset, config: ModelConfig, seed: int = 0):
    """The content tower ``config.content_encoder`` names: ``(spec with text, ContentParts, info)``;
    the spec's ``text.content_dim`` is the table's width (the ``cand_content`` width)."""
    if config.content_encoder == "minilm":
        spec, content, info = minilm_content(dataset, config)
    else:
        spec, content, info = train_content_encoder(dataset, config, seed)
        info = {"encoder": "small", **info}
    text = dataclasses.replace(spec.text, content_dim=int(content.table.shape[1]))
    return dataclasses.replace(spec, text=text), content, info


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
            logger.info("pre-training the content encoder on the item corpus" if model_config.content_encoder == "small"
                        else "encoding the item corpus with the pretrained MiniLM encoder")
        spec, content, content_info = prepare_content(dataset, model_config, train_config.seed)
        if train_config.verbose and "recall@5" in content_info:
            logger.info(f"  bag-of-words recall@5 {content_info['recall@5']:.3f} ({content_info['seconds']:.1f} s)")
        elif train_config.verbose:
            variance = content_info["explained_variance"]
            logger.info(f"  {content_info['dims']}-dim item vectors"
                        + (f" (PCA keeps {variance:.1%} of the variance)" if variance is not None else "")
                        + f" ({content_info['seconds']:.1f} s{', cached' if content_info['cache_hit'] else ''})")
    from edgerec.converters.tfenv import import_tf

    import_tf()[1].utils.set_random_seed(train_config.seed)
    return model_config, train_config, spec, content, content_info


def train_model(dataset, family: str, model_config: ModelConfig | None = None,
                train_config: TrainConfig | None = None, return_dataset: bool = False):
    """Build, (content-pre-train,) fit and evaluate one family on ``dataset``.

    A content family trains on ``dataset`` with ``cand_content`` added (zeros, and content
    dropout: `edgerec.sdk.data.builder.with_candidate_content`); when ``dataset.meta`` holds
    held-out cold-start rows, metrics get ``"cold_start"`` (`edgerec.sdk.metrics.cold_start`).

    Args:
        return_dataset: also return the dataset the model was trained on (the one to save with
            it: its arrays carry every model input).

    Returns:
        ``(parts, history, metrics)`` with metrics shaped like `evaluate`'s result, and the
        dataset with ``return_dataset``.

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
    if content is not None:
        from ..data.builder import with_candidate_content

        dataset = with_candidate_content(dataset, content.table, model_config.content_dropout, train_config.seed)
        content_info["dropout_rows"] = dataset.meta["content_dropout_rows"]
    history = fit(parts, dataset, train_config)
    metrics = evaluate(parts, dataset, config=train_config)
    cold = dataset.meta.get("cold_start")
    if content is not None and cold is not None and len(cold):
        from ..metrics.cold_start import cold_start_metrics
        from ..models.content import encode_item_texts

        vectors = encode_item_texts(parts.content_encoder, parts.spec, cold.texts)
        metrics["cold_start"] = cold_start_metrics(parts, cold, vectors)
        if train_config.verbose:
            block = metrics["cold_start"]
            logger.info(f"cold start ({block['items']} held-out items, {block['rows']} rows): AUC "
                        f"{block['auc_with_content']:.4f} with content, {block['auc_without_content']:.4f} without")
    return (parts, history, metrics, dataset) if return_dataset else (parts, history, metrics)
