"""Custom tf_keras layers of the edgerec models (registered under package ``edgerec``).

Converters import this module by name (``custom_objects_module`` in ``edgerec_model.json``)
before loading a ``.keras`` part. Every layer is a plain subclass (no ``Lambda``), has a
``get_config`` round trip and uses only ops that convert to TFLite builtins.

TensorFlow is imported through `edgerec.converters.tfenv.import_tf` when this module is
imported; import it lazily (``edgerec.sdk.models`` does not import it at package import).
"""
from __future__ import annotations

from edgerec.converters.tfenv import import_tf
from edgerec.runtime.errors import SpecError, expected

tf, tf_keras = import_tf()
_register = tf_keras.saving.register_keras_serializable(package="edgerec")

# Masked attention logits are pushed this far below the row's smallest logit (exp(-20) ~ 2e-9:
# zero weight in fp32). The penalty is the row's logit spread + this margin, not a huge
# constant: full-integer int8 gives the penalised tensor ONE scale, and a constant 1e4 made
# that scale ~39, collapsing every valid logit to one level (uniform attention; MovieLens DIN
# int8 ΔAUC -0.012, max |Δp| 0.85). The adaptive penalty keeps the range ~2 spreads + 20.
MASK_MARGIN = 20.0


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(expected(f"{name} as a positive int", value))
    return value


def _units(name: str, value) -> tuple[int, ...]:
    if isinstance(value, (int, str)) or not hasattr(value, "__iter__"):
        raise SpecError(expected(f"{name} as a list of positive ints", value))
    return tuple(_positive_int(name, v) for v in value)


def _rate(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise SpecError(expected(f"{name} in [0, 1)", value))
    return float(value)


def _is_shape_list(shape) -> bool:
    """Whether a layer's ``input_shape`` is a list of shapes (a list of inputs), not one shape."""
    return isinstance(shape, (list, tuple)) and bool(shape) and isinstance(shape[0], (list, tuple, tf.TensorShape))


@_register
class SequenceMask(tf_keras.layers.Layer):
    """Float mask of a padded id sequence: 1.0 where ``ids != 0`` (0 is padding).

    Args:
        **kwargs: standard layer arguments (``name`` …).

    Examples:
        >>> SequenceMask()(tf.constant([[0, 0, 5, 7]])).numpy().tolist()
        [[0.0, 0.0, 1.0, 1.0]]
    """

    def call(self, ids):
        return tf.cast(tf.not_equal(ids, 0), tf.float32)

    def compute_output_shape(self, input_shape):
        return input_shape


@_register
class PositionalEmbedding(tf_keras.layers.Layer):
    """Adds a learned position embedding to a ``[batch, length, dim]`` sequence.

    Args:
        max_length: longest sequence the layer accepts (the table's row count).
        initializer_stddev: stddev of the normal initializer of the position table.

    Examples:
        >>> layer = PositionalEmbedding(max_length=50)
        >>> layer(tf.zeros([2, 50, 16])).shape
        TensorShape([2, 50, 16])
    """

    def __init__(self, max_length: int, initializer_stddev: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.max_length = _positive_int("max_length", max_length)
        self.initializer_stddev = float(initializer_stddev)

    def build(self, input_shape):
        length, dim = input_shape[-2], input_shape[-1]
        if length is None or length > self.max_length:
            raise SpecError(expected(f"a static sequence length <= {self.max_length}", length))
        self.positions = self.add_weight(
            name="positions", shape=(self.max_length, int(dim)),
            initializer=tf_keras.initializers.RandomNormal(stddev=self.initializer_stddev))
        super().build(input_shape)

    def call(self, inputs):
        length = inputs.shape[-2]
        return inputs + self.positions[None, :length, :]

    def get_config(self):
        return {**super().get_config(), "max_length": self.max_length,
                "initializer_stddev": self.initializer_stddev}


@_register
class MaskedMeanPooling(tf_keras.layers.Layer):
    """Mean of a ``[batch, length, dim]`` sequence over the positions where ``mask == 1``.

    Rows with an empty mask pool to zeros (never NaN).

    Examples:
        >>> pooled = MaskedMeanPooling()([tf.ones([1, 3, 2]), tf.constant([[0.0, 1.0, 1.0]])])
        >>> pooled.numpy().tolist()
        [[1.0, 1.0]]
    """

    def call(self, inputs):
        values, mask = inputs
        total = tf.reduce_sum(values * mask[:, :, None], axis=1)
        count = tf.reduce_sum(mask, axis=1, keepdims=True)
        return total / tf.maximum(count, 1.0)


@_register
class ClsPooling(tf_keras.layers.Layer):
    """The first position (the ``[CLS]`` token) of a ``[batch, length, dim]`` sequence.

    Examples:
        >>> ClsPooling()(tf.reshape(tf.range(6.0), [1, 3, 2])).numpy().tolist()
        [[0.0, 1.0]]
    """

    def call(self, inputs):
        return inputs[:, 0, :]


@_register
class TargetAttention(tf_keras.layers.Layer):
    """DIN target attention: pools a behaviour sequence by its relevance to a candidate.

    An MLP scores ``[query, key, query - key, query * key]`` per position; masked positions
    get zero weight; weights are softmax-normalised over the valid positions. Masked logits
    are lowered by the row's logit spread + `MASK_MARGIN` (not a huge constant), so the
    masked-logit tensor keeps a narrow range under full-integer int8 quantization.

    The first hidden layer's kernel ``W = [W_q; W_k; W_d; W_p]`` (one block per feature) is
    applied as ``q (W_q + W_d) + k (W_k - W_d) + (q * k) W_p + b``: the same function with the
    same weights, whose key half ``k (W_k - W_d) + b`` does not depend on the candidate. Called
    with ``keys_only=True`` the layer returns that half, so a user encoder can compute it once
    per user and a scorer take it as a fourth input. Keys, mask and key half may have a batch of
    1 against a batch of N queries: they broadcast (one user's history, N candidates).

    Args:
        hidden_units: sizes of the scoring MLP's hidden layers.
        activation: activation of the hidden layers.

    Call args:
        inputs: ``[query [N, D], keys [B, L, D], mask [B, L]]`` (mask 1.0 = valid), optionally
            with the key half ``[B, L, hidden_units[0]]`` as a fourth entry; with
            ``keys_only=True``, ``keys [B, L, D]`` alone. ``B`` is ``N`` or 1.
        keys_only: return the key half of the first hidden layer instead of the pooled keys.

    Returns:
        ``[N, D]``: attention-weighted sum of the keys (zeros when the mask is empty); with
        ``keys_only=True``, the key half ``[B, L, hidden_units[0]]``.

    Examples:
        >>> att = TargetAttention(hidden_units=(16,))
        >>> att([tf.zeros([2, 8]), tf.zeros([2, 5, 8]), tf.ones([2, 5])]).shape
        TensorShape([2, 8])
        >>> key_half = att(tf.zeros([1, 5, 8]), keys_only=True)        # once per user
        >>> att([tf.zeros([3, 8]), tf.zeros([1, 5, 8]), tf.ones([1, 5]), key_half]).shape
        TensorShape([3, 8])
    """

    def __init__(self, hidden_units=(64, 32), activation: str = "sigmoid", **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = _units("hidden_units", hidden_units)
        self.activation = tf_keras.activations.serialize(tf_keras.activations.get(activation))
        self.hidden = [tf_keras.layers.Dense(u, activation=self.activation, name=f"att_{i}")
                       for i, u in enumerate(self.hidden_units)]
        self.logit = tf_keras.layers.Dense(1, name="att_logit")

    def build(self, input_shape):
        if not _is_shape_list(input_shape):          # keys_only
            keys_shape = tf.TensorShape(input_shape)
        else:
            query_shape, keys_shape = tf.TensorShape(input_shape[0]), tf.TensorShape(input_shape[1])
            if query_shape[-1] != keys_shape[-1]:
                raise SpecError(expected("query and keys with the same last dimension",
                                         (query_shape[-1], keys_shape[-1])))
            if len(input_shape) == 4 and tf.TensorShape(input_shape[3])[-1] != self.hidden_units[0]:
                raise SpecError(expected(f"a key half of width {self.hidden_units[0]}",
                                         tf.TensorShape(input_shape[3])[-1]))
        width = 4 * int(keys_shape[-1])
        for layer in self.hidden:
            layer.build((None, None, width))
            width = layer.units
        self.logit.build((None, None, width))
        super().build(input_shape)

    def _blocks(self):
        """``(W_q + W_d, W_k - W_d, W_p)`` of the first hidden layer's kernel."""
        w_q, w_k, w_d, w_p = tf.split(self.hidden[0].kernel, 4, axis=0)
        return w_q + w_d, w_k - w_d, w_p

    def key_half(self, keys):
        """``k (W_k - W_d) + b``: the first hidden layer's candidate-independent term."""
        return tf.matmul(keys, self._blocks()[1]) + self.hidden[0].bias

    def call(self, inputs, keys_only: bool = False):
        if keys_only:
            return self.key_half(inputs)
        query, keys, mask = inputs[:3]
        key_half = inputs[3] if len(inputs) == 4 else self.key_half(keys)
        w_query, _, w_product = self._blocks()
        product = query[:, None, :] * keys                                   # [N, L, D]
        # The full-size term first: each add then broadcasts one operand along one axis (a
        # [1, L, U] + [N, 1, U] sum would take the backends' slow general broadcast).
        hidden = tf.matmul(product, w_product) + key_half + tf.matmul(query, w_query)[:, None, :]
        return self.pooled(self.hidden[0].activation(hidden), keys, mask)

    def pooled(self, first, keys, mask):
        """The keys pooled by the weights the MLP gives ``first``, the first hidden layer's
        activations ``[N, L, U]`` (or ``[N, L * U]``)."""
        length = keys.shape[1] if keys.shape[1] is not None else tf.shape(keys)[1]
        # [N * L, U] rows: each further Dense is one matrix product with its bias and activation
        features = tf.reshape(first, [-1, self.hidden_units[0]])
        for layer in self.hidden[1:]:
            features = layer(features)
        # The logit's bias is added to every position alike, which the softmax over positions
        # cancels (the mask penalty is the logits' spread, also unchanged): it is left out.
        logits = tf.reshape(tf.matmul(features, self.logit.kernel), [-1, length])
        spread = tf.reduce_max(logits, axis=-1, keepdims=True) - tf.reduce_min(logits, axis=-1, keepdims=True)
        penalty = tf.stop_gradient(spread) + MASK_MARGIN
        weights = tf.nn.softmax(logits - (1.0 - mask) * penalty, axis=-1) * mask
        return _rows_times(weights, keys)

    def onnx_twin(self, part=None):
        """For a ``scorer`` export: the same function with a one-user branch (weights copied),
        whose keys of a batch of 1 (one user's state against N candidates) take the first hidden
        layer as ONE matrix product (`attention_twin.one_user_twin`). None (keep this layer) for
        other parts, which always get N users' keys."""
        if part != "scorer":
            return None
        from .attention_twin import one_user_twin

        return one_user_twin(self)

    def compute_output_shape(self, input_shape):
        if not _is_shape_list(input_shape):
            return tf.TensorShape(input_shape)[:-1].concatenate([self.hidden_units[0]])
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "hidden_units": list(self.hidden_units),
                "activation": self.activation}


def _rows_times(weights, values):
    """``sum_l weights[n, l] * values[b, l, :]`` as ``[N, D]`` for values of a batch B = 1 or N:
    the N rows are grouped as ``[B, N / B, L]``, so one user's values (B = 1) take one matrix
    product for all N rows instead of an elementwise product the size of N histories."""
    batch = tf.shape(values)[0]
    grouped = tf.reshape(weights, tf.stack([batch, -1, tf.shape(weights)[-1]]))
    return tf.reshape(tf.matmul(grouped, values), [-1, values.shape[-1]])


@_register
class BroadcastRows(tf_keras.layers.Layer):
    """Broadcasts ``x`` ``[1 or N, …]`` to the batch of ``like`` ``[N, …]`` (one user's state to
    N candidates; a batch of N stays as it is).

    Lets a scorer take the user state once instead of repeated N times; converts to
    ``BROADCAST_TO`` in TFLite and ``Expand`` in ONNX.

    Args:
        **kwargs: standard layer arguments (``name`` …).

    Examples:
        >>> BroadcastRows()([tf.constant([[1.0, 2.0]]), tf.zeros([3])]).numpy().tolist()
        [[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]]
    """

    def call(self, inputs):
        x, like = inputs
        return tf.broadcast_to(x, tf.concat([tf.shape(like)[:1], tf.shape(x)[1:]], axis=0))

    def compute_output_shape(self, input_shape):
        x_shape, like_shape = (tf.TensorShape(s) for s in input_shape)
        return like_shape[:1].concatenate(x_shape[1:])


@_register
class TransformerEncoder(tf_keras.layers.Layer):
    """Post-norm transformer encoder block (self-attention + feed-forward) with a padding mask.

    Args:
        num_heads: attention heads.
        ff_dim: width of the feed-forward hidden layer.
        dropout: dropout rate after attention and feed-forward (training only).

    Call args:
        inputs: ``[sequence [B, L, D], mask [B, L]]`` (mask 1.0 = valid token).

    Examples:
        >>> block = TransformerEncoder(num_heads=2, ff_dim=32)
        >>> block([tf.zeros([2, 6, 16]), tf.ones([2, 6])]).shape
        TensorShape([2, 6, 16])
    """

    def __init__(self, num_heads: int = 2, ff_dim: int = 64, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = _positive_int("num_heads", num_heads)
        self.ff_dim = _positive_int("ff_dim", ff_dim)
        self.dropout = _rate("dropout", dropout)

    def build(self, input_shape):
        seq_shape = tf.TensorShape(input_shape[0])
        dim = int(seq_shape[-1])
        if dim % self.num_heads:
            raise SpecError(expected(f"a model dimension divisible by num_heads={self.num_heads}", dim))
        self.attention = tf_keras.layers.MultiHeadAttention(
            self.num_heads, dim // self.num_heads, dropout=self.dropout, name="attention")
        self.attention._build_from_signature(seq_shape, seq_shape)
        self.ff_hidden = tf_keras.layers.Dense(self.ff_dim, activation="relu", name="ff_hidden")
        self.ff_out = tf_keras.layers.Dense(dim, name="ff_out")
        self.norm_attention = tf_keras.layers.LayerNormalization(epsilon=1e-6, name="norm_attention")
        self.norm_ff = tf_keras.layers.LayerNormalization(epsilon=1e-6, name="norm_ff")
        self.drop = tf_keras.layers.Dropout(self.dropout)
        self.ff_hidden.build(seq_shape)
        self.ff_out.build(seq_shape[:-1].concatenate([self.ff_dim]))
        self.norm_attention.build(seq_shape)
        self.norm_ff.build(seq_shape)
        super().build(input_shape)

    def call(self, inputs, training=None):
        sequence, mask = inputs
        key_mask = tf.zeros_like(mask)[:, :, None] + mask[:, None, :]  # [B, L, L]: valid keys
        attended = self.attention(sequence, sequence, attention_mask=key_mask > 0.5, training=training)
        sequence = self.norm_attention(sequence + self.drop(attended, training=training))
        hidden = self.ff_out(self.ff_hidden(sequence))
        return self.norm_ff(sequence + self.drop(hidden, training=training))

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "ff_dim": self.ff_dim,
                "dropout": self.dropout}


@_register
class AppendCandidate(tf_keras.layers.Layer):
    """Appends the candidate id to the behaviour ids: ``[B, L]`` ++ ``[B]`` -> ``[B, L + 1]``.

    Lets one ``Embedding`` call look up history and candidate together, so the converted
    model holds (and, in full-integer int8, quantizes) the item table once.

    Args:
        **kwargs: standard layer arguments (``name`` …).

    Examples:
        >>> AppendCandidate()([tf.constant([[0, 3, 4]]), tf.constant([9])]).numpy().tolist()
        [[0, 3, 4, 9]]
    """

    def call(self, inputs):
        history, candidate = inputs
        return tf.concat([history, tf.reshape(tf.cast(candidate, history.dtype), [-1, 1])], axis=1)

    def compute_output_shape(self, input_shape):
        history_shape = tf.TensorShape(input_shape[0])
        length = history_shape[1]
        return history_shape[:1].concatenate([None if length is None else length + 1])


@_register
class SplitLast(tf_keras.layers.Layer):
    """Splits ``[B, L + 1, …]`` into the first ``L`` steps ``[B, L, …]`` and the last step ``[B, …]``.

    The inverse of `AppendCandidate` after a shared lookup: ``(history, candidate)``.

    Args:
        **kwargs: standard layer arguments (``name`` …).

    Examples:
        >>> history, last = SplitLast()(tf.reshape(tf.range(6.0), [1, 3, 2]))
        >>> history.numpy().tolist(), last.numpy().tolist()
        ([[[0.0, 1.0], [2.0, 3.0]]], [[4.0, 5.0]])
    """

    def build(self, input_shape):
        length = tf.TensorShape(input_shape)[1]
        if length is None or length < 2:
            raise SpecError(expected("a static time dimension of at least 2", length))
        super().build(input_shape)

    def call(self, inputs):
        length = inputs.shape[1]
        return inputs[:, : length - 1], inputs[:, length - 1]

    def compute_output_shape(self, input_shape):
        shape = tf.TensorShape(input_shape)
        return [shape[:1].concatenate([shape[1] - 1]).concatenate(shape[2:]),
                shape[:1].concatenate(shape[2:])]


from .recurrent import ProjectedGRU, ProjectedLSTM  # noqa: E402 - registered with the others for model loading

CUSTOM_OBJECTS = {cls.__name__: cls for cls in (
    SequenceMask, PositionalEmbedding, MaskedMeanPooling, ClsPooling, TargetAttention, BroadcastRows,
    TransformerEncoder, AppendCandidate, SplitLast, ProjectedGRU, ProjectedLSTM)}
