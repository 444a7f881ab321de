"""BERT-style item content encoder: item text -> ``item_vector`` (part ``content_encoder``).

Text is tokenised by the pure-Python tokenizer ``spec.text`` names (`runtime.text.tokenizer_for`: the word
vocabulary of this encoder, or the WordPiece vocabulary of the pretrained MiniLM encoder of
`edgerec.sdk.models.minilm`), so a device encodes a new item's text exactly as training did. This
small encoder is
pre-trained on the item corpus by denoising bag-of-words prediction: 15 % of each title's words
are replaced by ``[UNK]`` and the ``[CLS]`` vector must predict every word of the full text
(genres and tags included). Its vectors, precomputed per item index, become a frozen item
feature of the ranking models.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from edgerec.runtime.contract import ITEM_TOKENS, ITEM_VECTOR  # noqa: F401  (re-exported)
from edgerec.runtime.errors import SpecError, expected
from edgerec.runtime.spec import NUM_RESERVED, FeatureSpec, TextSpec
from edgerec.runtime.text import SPECIAL_TOKENS, UNK, build_text_vocab, tokenizer_for

from .config import ModelConfig



def attach_text_spec(spec: FeatureSpec, item_text, config: ModelConfig) -> FeatureSpec:
    """``spec`` with ``text`` set (kept when already present; else built from ``item_text``)."""
    if spec.text is not None:
        return spec
    if len(item_text) != spec.item_vocab.size:
        raise SpecError(expected(f"item_text with one entry per item index ({spec.item_vocab.size})",
                                 len(item_text)))
    vocab = build_text_vocab(item_text, max_size=config.text_vocab_size)
    if not vocab:
        raise SpecError(expected("item text with at least one word", "an empty corpus"))
    return dataclasses.replace(spec, text=TextSpec(vocab, config.text_max_tokens))


def tokenize_items(spec: FeatureSpec, item_text) -> np.ndarray:
    """``[item_vocab.size, max_tokens]`` int32 token ids of every item index."""
    if spec.text is None:
        raise SpecError(expected("a feature spec with a text spec", None))
    return tokenizer_for(spec.text).encode_batch(list(item_text))


def encode_item_texts(encoder, spec: FeatureSpec, texts, batch_size: int = 256) -> np.ndarray:
    """``[len(texts), Dc]`` float32 content vectors of new items' texts, tokenised as a device
    does (`runtime.text.tokenizer_for` of ``spec.text``) and encoded by the content ``encoder``."""
    if spec.text is None:
        raise SpecError(expected("a feature spec with a text spec", None))
    texts = list(texts)
    width = int(encoder.output_shape[ITEM_VECTOR][-1])
    if not texts:
        return np.zeros((0, width), np.float32)
    tokens = tokenizer_for(spec.text).encode_batch(texts)
    return np.asarray(encoder.predict(tokens, batch_size=batch_size, verbose=0)[ITEM_VECTOR], np.float32)


def build_content_encoder(spec: FeatureSpec, config: ModelConfig):
    """``item_tokens`` [B, T] int32 -> ``item_vector`` [B, content_dim] float32."""
    from . import layers as L

    if spec.text is None:
        raise SpecError(expected("a feature spec with a text spec", None))
    keras = L.tf_keras
    vocab_size = len(spec.text.vocab) + len(SPECIAL_TOKENS)
    tokens = keras.Input(shape=(spec.text.max_tokens,), dtype="int32", name=ITEM_TOKENS)
    mask = L.SequenceMask(name="token_mask")(tokens)
    x = keras.layers.Embedding(vocab_size, config.content_dim, name="token_embedding")(tokens)
    x = L.PositionalEmbedding(spec.text.max_tokens, name="token_position")(x)
    for block in range(config.text_blocks):
        x = L.TransformerEncoder(config.text_heads, config.text_ff_dim, config.dropout,
                                 name=f"text_block_{block}")([x, mask])
    cls = L.ClsPooling(name="cls")(x)
    # a layer norm, not a tanh: pre-training drives the [CLS] projection large, and a tanh then
    # saturated every item to nearly the same vector. Even normalised, the vectors share one large
    # common part, so a frozen per-dimension standardisation (identity while pre-training, set
    # from the catalogue by `standardize_content_encoder`) makes the differences between items
    # the table's scale.
    vector = keras.layers.Dense(config.content_dim, name="cls_projection")(cls)
    vector = keras.layers.LayerNormalization(name="cls_norm")(vector)
    vector = keras.layers.Dense(config.content_dim, trainable=False, kernel_initializer="identity",
                                name=ITEM_VECTOR)(vector)
    return keras.Model(tokens, {ITEM_VECTOR: vector}, name="content_encoder")


def _bag_of_words(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    target = np.zeros((tokens.shape[0], vocab_size), dtype=np.float32)
    rows, cols = np.nonzero(tokens >= len(SPECIAL_TOKENS))
    target[rows, tokens[rows, cols]] = 1.0
    return target[:, len(SPECIAL_TOKENS):]


def pretrain_content_encoder(encoder, tokens: np.ndarray, config: ModelConfig, seed: int = 0,
                             batch_size: int = 128, verbose: int = 0) -> dict:
    """Denoising bag-of-words pre-training of ``encoder`` on the item corpus (in place).

    Returns ``{"loss": [...per epoch], "recall@5": fraction of true words in the top 5}``.
    """
    from . import layers as L

    keras, tf = L.tf_keras, L.tf
    rows = tokens[np.any(tokens >= len(SPECIAL_TOKENS), axis=1)]
    if rows.shape[0] == 0:
        raise SpecError(expected("item texts with known words to pre-train on", 0))
    n_words = encoder.get_layer("token_embedding").input_dim - len(SPECIAL_TOKENS)
    target = _bag_of_words(rows, n_words + len(SPECIAL_TOKENS))
    head = keras.layers.Dense(n_words, name="bow_logits")
    inputs = keras.Input(shape=(rows.shape[1],), dtype="int32")
    trainer = keras.Model(inputs, head(encoder(inputs)[ITEM_VECTOR]))
    trainer.compile(optimizer=keras.optimizers.Adam(2e-3),
                    loss=keras.losses.BinaryCrossentropy(from_logits=True))
    rng = np.random.default_rng(seed)
    tf.random.set_seed(seed)
    losses = []
    for _ in range(config.content_epochs):
        corrupt = rows.copy()
        words = corrupt >= len(SPECIAL_TOKENS)
        corrupt[words & (rng.random(corrupt.shape) < 0.15)] = UNK
        history = trainer.fit(corrupt, target, batch_size=batch_size, epochs=1, shuffle=True,
                              verbose=verbose)
        losses.append(float(history.history["loss"][0]))
    logits = trainer.predict(rows, batch_size=1024, verbose=0)
    top = np.argsort(-logits, axis=1)[:, :5]
    hits = np.take_along_axis(target, top, axis=1).sum(axis=1)
    recall = float(np.mean(hits / np.minimum(target.sum(axis=1), 5).clip(min=1)))
    return {"loss": losses, "recall@5": recall}


def standardize_content_encoder(encoder, tokens: np.ndarray) -> None:
    """Set the encoder's final ``item_vector`` layer (a frozen Dense) so that the catalogue's
    vectors have mean 0 and standard deviation 1 per dimension (in place)."""
    layer = encoder.get_layer(ITEM_VECTOR)
    items = tokens[NUM_RESERVED:]
    layer.set_weights([np.eye(layer.units, dtype=np.float32), np.zeros(layer.units, np.float32)])
    raw = np.asarray(encoder.predict(items, batch_size=1024, verbose=0)[ITEM_VECTOR], np.float64)
    if raw.shape[0] < 2:
        raise SpecError(expected("at least two items to standardise the content vectors on", raw.shape[0]))
    mean, std = raw.mean(axis=0), np.maximum(raw.std(axis=0), 1e-6)
    layer.set_weights([np.diag(1.0 / std).astype(np.float32), (-mean / std).astype(np.float32)])


def content_table(encoder, tokens: np.ndarray) -> np.ndarray:
    """``[items, content_dim]`` float32 vectors; the padding and OOV rows (0, 1) are zeros."""
    vectors = np.asarray(encoder.predict(tokens, batch_size=1024, verbose=0)[ITEM_VECTOR],
                         dtype=np.float32)
    vectors[:NUM_RESERVED] = 0.0
    return vectors
