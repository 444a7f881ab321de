"""The retrieval family: a user tower over the behaviour sequence (+ context) and an item tower.

Both towers end in vectors of width ``embedding_dim``; a user's score for item ``i`` is the dot
product ``user_vector · item_vectors[i]`` (with ``normalize`` both sides are L2-normalised, so it
is their cosine; training divides it by ``temperature``). The item tower is only needed while
training: afterwards every item's vector is precomputed into ``item_vectors`` and the device runs
the user tower once per request, then a nearest-neighbour search over the item vectors.

User tower (``user_tower``, a flat tf_keras model of builtin-convertible layers; the custom ones
are those of `edgerec.sdk.models.layers`, registered like the ranking parts'):

* inputs: ``hist_items`` int32 ``[B, L]`` and, with ``use_context`` (default: when the spec has
  context fields), one int32 ``[B]`` input per ``spec.context`` field and ``dense`` float32
  ``[B, F]`` when the spec has dense fields — the ranking models' user-side inputs;
* encoder over the history's item embeddings: ``pooling`` (masked mean), ``gru`` (`ProjectedGRU`),
  ``lstm`` (`ProjectedLSTM`), ``transformer`` (positions + encoder blocks; the latest position
  and the masked mean);
* MLP over [sequence summary, context embeddings, dense] -> ``user_vector`` float32 ``[B, D]``.

Item tower: the item embedding (shared with the user tower's history lookup, as in SASRec),
plus a projection of the frozen content vector when ``use_content`` (a pre-trained content
encoder's table), L2-normalised with ``normalize``.

Examples:
    >>> parts = build_retrieval_model(spec, RetrievalConfig(encoder="gru"))
    >>> parts.user_tower.output_names, parts.item_tower.output_names
    (['user_vector'], ['item_vector'])
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgerec.runtime.contract import DENSE, HIST_ITEMS, RETRIEVAL, USER_TOWER, USER_VECTOR
from edgerec.runtime.errors import SpecError, expected
from edgerec.runtime.spec import NUM_RESERVED, FeatureSpec

from .config import config_from_dict
from .config import is_positive_int as _is_pos_int

ENCODERS = ("pooling", "gru", "lstm", "transformer")
ITEM_IDS, ITEM_VECTOR, ITEM_TOWER = "item_ids", "item_vector", "item_tower"


@dataclass(frozen=True)
class RetrievalConfig:
    """Hyper-parameters of the retrieval family and of its softmax training.

    Args:
        encoder: the user tower's sequence encoder, one of `ENCODERS`.
        embedding_dim: item embedding width = vector width D.
        hidden_units: the user tower's MLP hidden layers (before the D-wide output).
        gru_units: recurrent state width (gru, lstm).
        num_heads, ff_dim, num_blocks: transformer blocks (transformer).
        context_dim: embedding width of each context field.
        use_context: feed the spec's context and dense fields to the user tower (None: when present).
        use_content: add a projection of the pre-trained content vector to the item tower.
        normalize: L2-normalise both towers (cosine scores); False: raw dot products.
        temperature: logits = score / temperature in the training softmax.
        logq_correction: subtract log(sampling probability) from each candidate's logit (the
            in-batch frequency of the item in the training stream; Yi et al., RecSys 2019).
        remove_accidental_hits: mask in-batch candidates equal to a row's positive (not the row's own).
        sampled_negatives: uniform catalogue negatives shared by the batch, on top of in-batch ones.
        dropout: dropout in the user tower MLP and transformer blocks.
        content_dim, text_heads, text_ff_dim, text_blocks, text_max_tokens, text_vocab_size,
            content_epochs: the content encoder (``use_content``), as in `ModelConfig`.
    """

    encoder: str = "gru"
    embedding_dim: int = 32
    hidden_units: tuple[int, ...] = (64,)
    gru_units: int = 64
    num_heads: int = 2
    ff_dim: int = 64
    num_blocks: int = 1
    context_dim: int = 8
    use_context: bool | None = None
    use_content: bool = False
    normalize: bool = True
    temperature: float = 0.1
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    sampled_negatives: int = 0
    dropout: float = 0.0
    content_dim: int = 32
    text_heads: int = 2
    text_ff_dim: int = 64
    text_blocks: int = 2
    text_max_tokens: int = 16
    text_vocab_size: int = 2000
    content_epochs: int = 6

    def __post_init__(self):
        if self.encoder not in ENCODERS:
            raise SpecError(expected(f"encoder among {list(ENCODERS)}", self.encoder))
        if isinstance(self.hidden_units, (str, int)) or not all(_is_pos_int(v) for v in self.hidden_units):
            raise SpecError(expected("hidden_units as a list of positive ints", self.hidden_units))
        object.__setattr__(self, "hidden_units", tuple(int(v) for v in self.hidden_units))
        for name in ("embedding_dim", "gru_units", "num_heads", "ff_dim", "num_blocks", "context_dim",
                     "content_dim", "text_heads", "text_ff_dim", "text_blocks", "text_vocab_size", "content_epochs"):
            if not _is_pos_int(getattr(self, name)):
                raise SpecError(expected(f"{name} as a positive int", getattr(self, name)))
        if not _is_pos_int(self.text_max_tokens) or self.text_max_tokens < 3:
            raise SpecError(expected("text_max_tokens as an int >= 3", self.text_max_tokens))
        for name in ("use_content", "normalize", "logq_correction", "remove_accidental_hits"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(expected(f"{name} as true or false", getattr(self, name)))
        if self.use_context is not None and not isinstance(self.use_context, bool):
            raise SpecError(expected("use_context as true, false or null", self.use_context))
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not 0 < self.temperature <= 10:
            raise SpecError(expected("temperature in (0, 10]", self.temperature))
        if isinstance(self.sampled_negatives, bool) or not isinstance(self.sampled_negatives, int) \
                or self.sampled_negatives < 0:
            raise SpecError(expected("sampled_negatives as an int >= 0", self.sampled_negatives))
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise SpecError(expected("dropout in [0, 1)", self.dropout))

    def uses_context(self, spec: FeatureSpec) -> bool:
        has = bool(spec.context) or bool(spec.dense)
        return has if self.use_context is None else (self.use_context and has)

    def content_config(self):
        """The `ModelConfig` the content encoder is pre-trained with (``use_content``)."""
        from .config import ModelConfig

        return ModelConfig(use_content=True, content_dim=self.content_dim, text_heads=self.text_heads,
                           text_ff_dim=self.text_ff_dim, text_blocks=self.text_blocks,
                           text_max_tokens=self.text_max_tokens, text_vocab_size=self.text_vocab_size,
                           content_epochs=self.content_epochs)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["hidden_units"] = list(self.hidden_units)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "RetrievalConfig":
        return config_from_dict(cls, data, "retrieval-config")


@dataclass
class RetrievalParts:
    """A retrieval model: the user tower the device runs and the item vectors it searches.

    Attributes:
        family: ``"retrieval"``.
        spec: the feature spec (with ``text`` set when the item tower uses content).
        config: the `RetrievalConfig`.
        user_tower: user-side inputs -> ``user_vector`` ``[B, D]``.
        item_tower: ``item_ids`` ``[B]`` -> ``item_vector`` ``[B, D]`` (None once loaded from a model dir).
        item_vectors: float32 ``[item_vocab.size, D]`` (rows 0/1, padding/OOV, are zero), or None
            before `compute_item_vectors`.
        content_table: the frozen content table of the item tower, or None.
        meta: free-form facts (training history, content pre-training).
    """

    family: str
    spec: FeatureSpec
    config: RetrievalConfig
    user_tower: Any
    item_tower: Any = None
    item_vectors: np.ndarray | None = None
    content_table: Any = None
    meta: dict = field(default_factory=dict)

    def parts(self) -> dict[str, Any]:
        """``{part name: keras model}`` of what a MODEL_DIR stores (the user tower)."""
        return {USER_TOWER: self.user_tower}

    @property
    def input_names(self) -> list[str]:
        return list(self.user_tower.input_names)

    def select_inputs(self, arrays: dict) -> dict:
        """The user tower's inputs out of ``arrays`` (extra arrays are ignored)."""
        names = self.input_names
        missing = [n for n in names if n not in arrays]
        if missing:
            raise SpecError(expected(f"arrays for the user tower inputs {names}", f"missing {missing}"))
        return {n: arrays[n] for n in names}

    def user_vectors(self, arrays: dict, batch_size: int = 4096) -> np.ndarray:
        """float32 ``[N, D]`` user vectors of model-input arrays."""
        out = self.user_tower.predict(self.select_inputs(arrays), batch_size=batch_size, verbose=0)
        return np.asarray(out[USER_VECTOR] if isinstance(out, dict) else out, np.float32)

    def compute_item_vectors(self, batch_size: int = 65536) -> np.ndarray:
        """Run the item tower over every item index into ``item_vectors`` (padding/OOV rows zero)."""
        if self.item_tower is None:
            raise SpecError(expected("a retrieval model with its item tower (a freshly built one)", None))
        ids = np.arange(self.spec.item_vocab.size, dtype=np.int32)
        vectors = np.asarray(self.item_tower.predict({ITEM_IDS: ids}, batch_size=batch_size, verbose=0), np.float32)
        vectors = vectors.reshape(ids.size, -1)
        vectors[:NUM_RESERVED] = 0.0
        self.item_vectors = vectors
        return vectors

    def scores(self, arrays: dict, items) -> np.ndarray:
        """float32 ``[N]`` dot-product scores of each row's user with the item index ``items[row]``."""
        if self.item_vectors is None:
            raise SpecError(expected("item vectors (compute_item_vectors)", None))
        users = self.user_vectors(arrays)
        return np.einsum("nd,nd->n", users, self.item_vectors[np.asarray(items, np.int64)])


def build_retrieval_model(spec: FeatureSpec, config: RetrievalConfig | None = None,
                          content_table: np.ndarray | None = None) -> RetrievalParts:
    """Build the user tower and the item tower (sharing the item embedding).

    Args:
        spec: feature spec (item vocabulary, sequence length, context and dense fields).
        config: a `RetrievalConfig` (defaults: GRU encoder, cosine scores at temperature 0.1).
        content_table: ``[item_vocab.size, content_dim]`` pre-trained content vectors, required
            when ``config.use_content``.
    """
    from . import layers as L
    from . import recurrent as R

    if not isinstance(spec, FeatureSpec):
        raise SpecError(expected("a FeatureSpec", type(spec).__name__))
    config = RetrievalConfig() if config is None else config
    if not isinstance(config, RetrievalConfig):
        raise SpecError(expected("a RetrievalConfig", type(config).__name__))
    if config.use_content and content_table is None:
        raise SpecError(expected("a pre-trained content table for use_content=True", None))
    keras = L.tf_keras
    layers = keras.layers
    dim = config.embedding_dim
    item_embedding = layers.Embedding(spec.item_vocab.size, dim, name="item_embedding")

    # -- user tower --------------------------------------------------------------------------
    hist = keras.Input(shape=(spec.max_seq_len,), dtype="int32", name=HIST_ITEMS)
    inputs = {HIST_ITEMS: hist}
    sequence = item_embedding(hist)
    if config.encoder in ("gru", "lstm"):
        layer_class = getattr(R, "ProjectedGRU" if config.encoder == "gru" else "ProjectedLSTM", None)
        if layer_class is None:
            raise SpecError(expected("a ProjectedLSTM layer in edgerec.sdk.models.recurrent", None))
        features = [layer_class(config.gru_units, name=f"{config.encoder}_encoder")(sequence)]
    else:
        mask = L.SequenceMask(name="history_mask")(hist)
        if config.encoder == "transformer":
            sequence = L.PositionalEmbedding(spec.max_seq_len, name="positions")(sequence)
            for i in range(config.num_blocks):
                sequence = L.TransformerEncoder(config.num_heads, config.ff_dim, config.dropout,
                                                name=f"transformer_{i}")([sequence, mask])
        features = [L.MaskedMeanPooling(name="history_pool")([sequence, mask])]
        if config.encoder == "transformer" and spec.max_seq_len >= 2:
            features.append(L.SplitLast(name="latest_position")(sequence)[1])   # left-padded: latest item last
    if config.uses_context(spec):
        for context_field in spec.context:
            ids = keras.Input(shape=(), dtype="int32", name=context_field.name)
            inputs[context_field.name] = ids
            features.append(layers.Embedding(context_field.size, config.context_dim,
                                             name=f"context_{context_field.name}")(ids))
        if spec.dense:
            dense = keras.Input(shape=(len(spec.dense),), dtype="float32", name=DENSE)
            inputs[DENSE] = dense
            features.append(dense)
    x = features[0] if len(features) == 1 else layers.Concatenate(axis=-1, name="user_features")(features)
    for i, units in enumerate(config.hidden_units):
        x = layers.Dense(units, activation="relu", name=f"user_mlp_{i}")(x)
        if config.dropout:
            x = layers.Dropout(config.dropout, name=f"user_dropout_{i}")(x)
    if config.normalize:
        x = layers.Dense(dim, name="user_projection")(x)
        user = layers.UnitNormalization(axis=-1, name=USER_VECTOR)(x)
    else:
        user = layers.Dense(dim, name=USER_VECTOR)(x)
    user_tower = keras.Model(inputs, {USER_VECTOR: user}, name=USER_TOWER)

    # -- item tower --------------------------------------------------------------------------
    item_ids = keras.Input(shape=(), dtype="int32", name=ITEM_IDS)
    item = item_embedding(item_ids)
    content_lookup = None
    if config.use_content:
        table = np.asarray(content_table, np.float32)
        if table.ndim != 2 or table.shape[0] != spec.item_vocab.size:
            raise SpecError(expected(f"a content table of shape [{spec.item_vocab.size}, dim]", table.shape))
        content_lookup = layers.Embedding(table.shape[0], table.shape[1], trainable=False, name="item_content")
        projected = layers.Dense(dim, name="content_projection")(content_lookup(item_ids))
        item = layers.Add(name="item_with_content")([item, projected])
    if config.normalize:
        item = layers.UnitNormalization(axis=-1, name=ITEM_VECTOR)(item)
    else:
        item = layers.Activation("linear", name=ITEM_VECTOR)(item)
    item_tower = keras.Model({ITEM_IDS: item_ids}, item, name=ITEM_TOWER)
    if content_lookup is not None:
        content_lookup.set_weights([np.asarray(content_table, np.float32)])
    return RetrievalParts(RETRIEVAL, spec, config, user_tower, item_tower,
                          content_table=None if content_table is None else np.asarray(content_table, np.float32))
