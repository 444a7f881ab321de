"""The pretrained all-MiniLM-L6-v2 sentence encoder as a tf_keras content encoder (no PyTorch).

The checkpoint (`edgerec.sdk.models.minilm_checkpoint`: found, read and verified with numpy
alone) becomes Keras weights here.

The Keras graph is the part ``content_encoder``: ``item_tokens`` int32 [B, T] (ids of
`edgerec.runtime.wordpiece.WordPieceTokenizer`, 0 = padding, from which the attention mask is
derived) -> ``item_vector`` float32 [B, 384], mean-pooled over the real tokens and L2-normalised
as sentence-transformers does. It uses builtin tf_keras layers, the registered layers of
`edgerec.sdk.models.layers` and `ExactGelu` below (pass this module, `CUSTOM_OBJECTS_MODULE`,
as ``custom_objects_module`` to the converters).

TensorFlow is imported when this module is imported (the layer classes need it).

Examples:
    >>> checkpoint = load_checkpoint()                                  # doctest: +SKIP
    >>> encoder = build_minilm_encoder(checkpoint, max_tokens=32)        # doctest: +SKIP
    >>> tokens = checkpoint.tokenizer(32).encode_batch(["Toy Story (1995)"])     # doctest: +SKIP
    >>> encoder(tokens)["item_vector"].shape                             # doctest: +SKIP
    TensorShape([1, 384])
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import numpy as np

from edgerec.runtime.errors import SpecError, expected
from edgerec.runtime.wordpiece import WordPieceTokenizer

from . import layers as L
from .content import ITEM_TOKENS, ITEM_VECTOR
from .minilm_checkpoint import (  # noqa: F401  (the checkpoint's public names stay importable here)
    ARCHIVE, CONFIG, DEFAULT_MAX_TOKENS, ENCODER_PARAMETERS, PACKAGE, PARAMETERS, PIP_REQUIREMENT, POOLER_PARAMETERS,
    WEIGHTS_FILE, WEIGHTS_SHA256, MiniLMCheckpoint, expected_shapes, load_checkpoint, locate_archive, verify_checkpoint)

logger = logging.getLogger(__name__)
tf, tf_keras = L.tf, L.tf_keras
_register = tf_keras.saving.register_keras_serializable(package="edgerec")

CUSTOM_OBJECTS_MODULE = "edgerec.sdk.models.minilm"     # registers ExactGelu and the layers module


@_register
class ExactGelu(tf_keras.layers.Layer):
    """BERT's GELU, ``x * Phi(x)`` with the exact normal CDF (not the tanh approximation).

    TFLite converts ``tf.nn.gelu`` to its GELU builtin; TensorFlow writes it with ``Erfc``,
    which ONNX has no operator for, so the ONNX export uses `ErfGelu` (`onnx_twin`).

    Examples:
        >>> round(float(ExactGelu()(tf.constant([1.0]))[0]), 4)
        0.8413
    """

    def call(self, inputs):
        return tf.nn.gelu(inputs, approximate=False)

    def onnx_twin(self, part=None):
        return ErfGelu(name=self.name)


@_register
class ErfGelu(tf_keras.layers.Layer):
    """``0.5 * x * (1 + erf(x / sqrt(2)))``: `ExactGelu` as ops ONNX has (``Erf``)."""

    def call(self, inputs):
        return 0.5 * inputs * (1.0 + tf.math.erf(inputs * 0.7071067811865476))




def keras_weights(checkpoint: MiniLMCheckpoint, max_tokens: int) -> dict[str, list[np.ndarray]]:
    """Layer name -> ``set_weights`` list of the encoder `build_minilm_encoder` makes.

    Torch ``Linear`` weights are ``[out, in]``: Dense kernels take their transpose, and the
    attention projections are split per head as ``MultiHeadAttention`` stores them.
    """
    w, cfg = checkpoint.weights, checkpoint.config
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head = d // heads
    out = {"word_embeddings": [w["embeddings.word_embeddings.weight"]],
           # every token has type 0: its embedding is folded into the position table
           "position_embeddings": [w["embeddings.position_embeddings.weight"][:max_tokens]
                                   + w["embeddings.token_type_embeddings.weight"][0]],
           "embeddings_norm": [w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"]]}
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        attention = []
        for name in ("query", "key", "value"):
            attention += [w[f"{p}attention.self.{name}.weight"].T.reshape(d, heads, head),
                          w[f"{p}attention.self.{name}.bias"].reshape(heads, head)]
        attention += [w[f"{p}attention.output.dense.weight"].T.reshape(heads, head, d),
                      w[f"{p}attention.output.dense.bias"]]
        out[f"layer_{i}_attention"] = attention
        out[f"layer_{i}_attention_norm"] = [w[f"{p}attention.output.LayerNorm.weight"],
                                            w[f"{p}attention.output.LayerNorm.bias"]]
        out[f"layer_{i}_intermediate"] = [w[f"{p}intermediate.dense.weight"].T, w[f"{p}intermediate.dense.bias"]]
        out[f"layer_{i}_output"] = [w[f"{p}output.dense.weight"].T, w[f"{p}output.dense.bias"]]
        out[f"layer_{i}_output_norm"] = [w[f"{p}output.LayerNorm.weight"], w[f"{p}output.LayerNorm.bias"]]
    return {name: [np.ascontiguousarray(a, dtype=np.float32) for a in arrays] for name, arrays in out.items()}


def build_minilm_encoder(checkpoint: MiniLMCheckpoint, max_tokens: int = DEFAULT_MAX_TOKENS, pca=None):
    """The tf_keras content encoder ``item_tokens`` [B, T] -> ``{item_vector: [B, 384]}`` with the weights.

    Args:
        checkpoint: a `load_checkpoint` result.
        max_tokens: T, the token length the graph takes (2..512; ids from ``checkpoint.tokenizer(T)``).
        pca: a `edgerec.sdk.metrics.maps.PCA` fitted on the 384-dim vectors: folded in as a final
            Dense (kernel = components.T, bias = -mean @ components.T), so ``item_vector`` is
            ``[B, pca.dims]`` in the reduced space of the item table.

    Raises:
        SpecError: ``max_tokens`` outside 2..max_position_embeddings.
    """
    cfg = checkpoint.config
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) \
            or not 2 <= max_tokens <= cfg["max_position_embeddings"]:
        raise SpecError(expected(f"max_tokens as an int in 2..{cfg['max_position_embeddings']}", max_tokens))
    keras = L.tf_keras
    d, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], float(cfg["layer_norm_eps"])
    tokens = keras.Input(shape=(max_tokens,), dtype="int32", name=ITEM_TOKENS)
    mask = L.SequenceMask(name="token_mask")(tokens)                      # 1.0 for real tokens, 0.0 for [PAD]
    key_mask = keras.layers.Reshape((1, max_tokens), name="key_mask")(mask)   # broadcast over queries and heads
    x = keras.layers.Embedding(cfg["vocab_size"], d, name="word_embeddings")(tokens)
    x = L.PositionalEmbedding(max_tokens, name="position_embeddings")(x)
    x = keras.layers.LayerNormalization(epsilon=eps, name="embeddings_norm")(x)
    for i in range(cfg["num_hidden_layers"]):
        attended = keras.layers.MultiHeadAttention(heads, d // heads, name=f"layer_{i}_attention")(
            x, x, attention_mask=key_mask)
        x = keras.layers.LayerNormalization(epsilon=eps, name=f"layer_{i}_attention_norm")(
            keras.layers.Add(name=f"layer_{i}_attention_residual")([x, attended]))
        hidden = keras.layers.Dense(cfg["intermediate_size"], name=f"layer_{i}_intermediate")(x)
        hidden = ExactGelu(name=f"layer_{i}_gelu")(hidden)
        hidden = keras.layers.Dense(d, name=f"layer_{i}_output")(hidden)
        x = keras.layers.LayerNormalization(epsilon=eps, name=f"layer_{i}_output_norm")(
            keras.layers.Add(name=f"layer_{i}_output_residual")([x, hidden]))
    pooled = L.MaskedMeanPooling(name="mean_pooling")([x, mask])
    if pca is not None and pca.mean.shape != (d,):
        raise SpecError(expected(f"a PCA fitted on {d}-dim vectors", pca.mean.shape))
    last = ITEM_VECTOR if pca is None else "sentence_vector"
    vector = keras.layers.UnitNormalization(name=last)(pooled) if checkpoint.normalize else pooled
    if pca is not None:
        reduce = keras.layers.Dense(pca.dims, name=ITEM_VECTOR)
        vector = reduce(vector)
    model = keras.Model(tokens, {ITEM_VECTOR: vector}, name="content_encoder")
    for name, arrays in keras_weights(checkpoint, max_tokens).items():
        model.get_layer(name).set_weights(arrays)
    if pca is not None:
        kernel = np.ascontiguousarray(pca.components.T, dtype=np.float32)
        reduce.set_weights([kernel, (-pca.mean @ kernel).astype(np.float32)])
    return model


def encode_texts(encoder, tokenizer: WordPieceTokenizer, texts, batch_size: int = 256) -> np.ndarray:
    """``[len(texts), 384]`` float32 vectors of ``texts`` through a Keras ``encoder`` (compiled call)."""
    tokens = tokenizer.encode_batch(list(texts))
    call = tf.function(lambda ids: encoder(ids, training=False)[ITEM_VECTOR], reduce_retracing=True)
    parts = [call(tf.constant(tokens[i:i + batch_size])).numpy() for i in range(0, len(tokens), batch_size)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, encoder.output_shape[ITEM_VECTOR][-1]),
                                                                            np.float32)


def wordpiece_text_spec(checkpoint: MiniLMCheckpoint, max_tokens: int):
    """The `TextSpec` a device tokenises new items with: the checkpoint's WordPiece vocabulary in id
    order, ``tokenizer = "wordpiece"``."""
    from edgerec.runtime.spec import TextSpec

    vocab = checkpoint.tokenizer(max_tokens).vocab
    ordered = sorted(vocab.items(), key=lambda item: item[1])
    if [i for _, i in ordered] != list(range(len(ordered))):
        raise SpecError(expected("WordPiece ids 0..V-1 without gaps", f"{len(ordered)} tokens"))
    return TextSpec(tuple(t for t, _ in ordered), max_tokens, tokenizer="wordpiece")


def cached_vectors(encoder, tokenizer: WordPieceTokenizer, texts, key: str, cache_dir: str | Path | None = None,
                   batch_size: int = 256) -> tuple[np.ndarray, bool]:
    """`encode_texts` of ``texts``, cached as ``<cache_dir>/minilm-<sha256>.npy``.

    The file name hashes ``key`` (the checkpoint's sha256 and T), the token length and every text,
    so a changed catalogue or checkpoint never reuses a stale file. ``cache_dir`` defaults to
    $EDGEREC_CACHE, else ``~/.cache/edgerec``.

    Returns:
        ``(vectors [len(texts), 384] float32, whether the cache had them)``.
    """
    import os

    from edgerec.runtime.io import atomic_output

    texts = list(texts)
    digest = hashlib.sha256("\x1f".join([key, str(tokenizer.max_tokens), *texts]).encode("utf-8")).hexdigest()
    folder = Path(cache_dir or os.environ.get("EDGEREC_CACHE") or Path.home() / ".cache" / "edgerec")
    path = folder / f"minilm-{digest[:32]}.npy"
    if path.is_file():
        try:
            vectors = np.load(path, allow_pickle=False)
            if vectors.dtype == np.float32 and vectors.shape[0] == len(texts):
                return vectors, True
        except (OSError, ValueError):
            pass
        logger.warning("ignoring the unreadable MiniLM vector cache %s", path)
    vectors = encode_texts(encoder, tokenizer, texts, batch_size=batch_size)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_output(path, ".npy") as tmp:
            np.save(tmp, vectors, allow_pickle=False)
    except OSError as err:          # a read-only cache must not fail training
        logger.warning("could not write the MiniLM vector cache %s: %s", path, err)
    return vectors, False


def minilm_content(spec, item_text, dims: int, max_tokens: int = DEFAULT_MAX_TOKENS,
                   cache_dir: str | Path | None = None, archive: str | Path | None = None):
    """The MiniLM content tower of a ranking model: encoder, item table, text spec.

    Every item index's text is encoded once (batched, cached by `cached_vectors`); with
    ``dims`` < 384 a PCA fitted on the catalogue's vectors reduces them and is folded into the
    encoder, so the encoder outputs exactly the table's vector space. Padding/OOV rows are zeros.

    Args:
        spec: the dataset's feature spec (its ``text`` is replaced by the WordPiece text spec).
        item_text: text of every item index (``""`` for padding/OOV).
        dims: content vector width (1..384; 384 keeps the sentence vectors).
        max_tokens: WordPiece tokens per text.
        cache_dir: where the 384-dim vectors are cached (`cached_vectors`).
        archive: a sentence-transformers ``model.zip`` (default: the installed package's).

    Returns:
        ``(spec with text, encoder, table [item_vocab.size, dims], info)``; info records the
        checkpoint facts, the PCA's explained variance, whether the cache hit and seconds.
    """
    import time

    from edgerec.runtime.spec import NUM_RESERVED

    from ..metrics.maps import fit_pca

    start = time.perf_counter()
    if len(item_text) != spec.item_vocab.size:
        raise SpecError(expected(f"item_text with one entry per item index ({spec.item_vocab.size})", len(item_text)))
    checkpoint = load_checkpoint(archive)
    hidden = checkpoint.hidden_size
    if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= hidden:
        raise SpecError(expected(f"content dims as an int in 1..{hidden}", dims))
    tokenizer = checkpoint.tokenizer(max_tokens)
    sentence_encoder = build_minilm_encoder(checkpoint, max_tokens)
    vectors, hit = cached_vectors(sentence_encoder, tokenizer, list(item_text)[NUM_RESERVED:],
                                  f"{checkpoint.sha256}:{max_tokens}", cache_dir)
    pca = fit_pca(vectors, dims) if dims < hidden else None
    encoder = sentence_encoder if pca is None else build_minilm_encoder(checkpoint, max_tokens, pca=pca)
    table = np.zeros((spec.item_vocab.size, dims), np.float32)
    table[NUM_RESERVED:] = vectors if pca is None else pca.transform(vectors)
    info = {"encoder": "minilm", **checkpoint.facts(), "max_tokens": max_tokens, "dims": dims,
            "explained_variance": None if pca is None else float(pca.explained_variance_ratio.sum()),
            "cache_hit": hit, "seconds": round(time.perf_counter() - start, 2)}
    return dataclasses.replace(spec, text=wordpiece_text_spec(checkpoint, max_tokens)), encoder, table, info
