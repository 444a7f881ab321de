"""Recurrent layers built for small full-integer int8 TFLite/ONNX files (weights compatible with
Keras' ``GRU`` / ``LSTM``).

Why not ``tf_keras.layers.GRU`` / ``LSTM``: with ``unroll=False`` they are while loops over tensor
lists that TFLite builtins cannot lower (toolchain note); with ``unroll=True`` every step has its own
input ``MatMul + BiasAdd``. In full-integer int8 a bias is stored as int32 with the scale
``input_scale × weight_scale[channel]``; each step's input has its own scale, so the converter
writes one bias tensor *and one per-channel scale array* per step and gate matrix; over 50
steps that metadata outweighs the int8 savings on the weights.

`ProjectedGRU` and `ProjectedLSTM` compute the same function as the Keras layers in a different
order: the input projection ``x·W + b`` runs once over the whole sequence (one FULLY_CONNECTED, one
bias), and each unrolled step does only ``h·U`` with no constant added right after it (an ``Add``
right after a MatMul is fused into a per-step int32 bias with per-channel scales) plus the gate
arithmetic: 12 builtin ops per step for either cell.

At inference `ProjectedGRU` runs a long sequence as a ``tf.while_loop`` over chunks of unrolled
steps (`run_steps`): TFLite stores one chunk as a WHILE body, which cuts the flatbuffer structure of
a 50-step recurrence five-fold with the same outputs. Dynamic-range, full-int8 and the 4-bit passes
convert it; LiteRT runs it at the unrolled speed at batch 256, and each loop iteration adds a few µs
at batch 1 (measured with TF 2.21 / ai-edge-litert 2.3). Training stays unrolled.
The weights have the shapes and order of the Keras layers' (GRU: ``kernel [E, 3H]``,
``recurrent_kernel [H, 3H]``, ``bias [2, 3H]``; LSTM: ``kernel [E, 4H]``, ``recurrent_kernel [H, 4H]``,
``bias [4H]``), so ``set_weights(keras_layer.get_weights())`` moves a trained layer over unchanged,
and each layer's ``onnx_twin()`` is the Keras layer that tf2onnx turns into one ONNX recurrent node.
"""
from __future__ import annotations

from edgerec.converters.tfenv import import_tf
from edgerec.runtime.errors import SpecError, expected

tf, tf_keras = import_tf()
_register = tf_keras.saving.register_keras_serializable(package="edgerec")


def _positive_units(units) -> int:
    if isinstance(units, bool) or not isinstance(units, int) or units < 1:
        raise SpecError(expected("units as a positive int", units))
    return units


def _sequence_shape(input_shape) -> tf.TensorShape:
    shape = tf.TensorShape(input_shape)
    if shape.rank != 3 or shape[1] is None or shape[2] is None:
        raise SpecError(expected("a [batch, steps, features] input with static steps and features", shape))
    return shape


# Sequences at least this long run at inference as a TFLite WHILE loop of at most LOOP_ITERATIONS
# iterations, each unrolled over a chunk of steps (see `run_steps`).
MIN_LOOP_STEPS = 16
LOOP_ITERATIONS = 5


def loop_plan(steps: int) -> tuple[int, int, int]:
    """``(unrolled, iterations, chunk)``: how `run_steps` splits ``steps`` at inference.

    The first ``unrolled`` steps stay unrolled, then a ``tf.while_loop`` runs ``iterations`` times
    over ``chunk`` unrolled steps each (``unrolled + iterations * chunk == steps``). Short sequences
    (< ``MIN_LOOP_STEPS``) are fully unrolled: ``(steps, 0, 0)``.

    Examples:
        >>> loop_plan(50)
        (0, 5, 10)
        >>> loop_plan(23)
        (3, 4, 5)
        >>> loop_plan(8)
        (8, 0, 0)
    """
    if steps < MIN_LOOP_STEPS:
        return steps, 0, 0
    chunk = -(-steps // LOOP_ITERATIONS)
    iterations = steps // chunk
    return steps - iterations * chunk, iterations, chunk


def run_steps(step, sequences, zero_state, training=None):
    """The last state of ``state = step(state, *xs_t)`` over axis 1 of the ``[B, L, ·]`` ``sequences``.

    ``step(None, ...)`` is the first step from the zero state; ``zero_state()`` builds that state as a
    tensor for a loop that starts at step 0, so ``step(zero_state(), ...)`` must equal
    ``step(None, ...)`` (it does when ``h·U`` of a zero ``h`` is 0). Build it from the batch size,
    ``tf.zeros([tf.shape(x)[0], units])``: TF 2.21's int8 calibrator segfaults on a loop started from
    ``tf.zeros_like`` of a slice.

    In training (``training=True``) every step is unrolled. At inference the steps after the first ``loop_plan(L)[0]`` run in a
    ``tf.while_loop`` over chunks of unrolled steps: TFLite stores the chunk once as a WHILE
    body, so a 50-step recurrence costs 10 steps of operators in the file instead of 50 (each
    unrolled step is ~13 operators and ~14 tensors of flatbuffer structure, ~50 bytes each, that no
    weight quantization removes). Chunks keep the loop to a few iterations (each costs a few µs in
    LiteRT at batch 1), and the body reads its chunk with one GATHER from the batch-major sequence:
    a transpose to time-major made the batch-256 call twice as slow.
    """
    steps = sequences[0].shape[1]
    unrolled, iterations, chunk = loop_plan(steps)
    if training is True or not iterations:
        unrolled = steps
    state = None
    if unrolled:
        heads = sequences if unrolled == steps else [s[:, :unrolled] for s in sequences]
        for xs in zip(*(tf.unstack(s, num=unrolled, axis=1) for s in heads)):
            state = step(state, *xs)
    if unrolled == steps:
        return state
    chunks = [tf.reshape(s[:, unrolled:] if unrolled else s, [-1, iterations, chunk, s.shape[-1]]) for s in sequences]
    if state is None:
        state = zero_state()

    def body(index, state):
        for xs in zip(*(tf.unstack(tf.gather(c, index, axis=1), num=chunk, axis=1) for c in chunks)):
            state = step(state, *xs)
        return index + 1, state

    _, state = tf.while_loop(lambda index, _: index < iterations, body, (tf.constant(0), state),
                             maximum_iterations=iterations)
    return state


@_register
class ProjectedGRU(tf_keras.layers.Layer):
    """GRU over a ``[B, L, E]`` sequence returning the last state ``[B, units]``, unrolled (at
    inference a long sequence is a loop over unrolled chunks, `run_steps`).

    Same gates as ``tf_keras.layers.GRU(units, reset_after=True)`` with its default
    activations (``tanh`` / ``sigmoid``) and a zero initial state.

    Args:
        units: state width, a positive int.
        kernel_initializer, recurrent_initializer: initializers of ``W`` and ``U``.
        **kwargs: standard layer arguments (``name`` …).

    Examples:
        >>> gru = tf_keras.layers.GRU(4)
        >>> x = tf.random.normal([2, 5, 3])
        >>> reference = gru(x)
        >>> projected = ProjectedGRU(4)
        >>> _ = projected(x)
        >>> projected.set_weights(gru.get_weights())
        >>> bool(tf.reduce_max(tf.abs(projected(x) - reference)) < 1e-5)
        True
    """

    def __init__(self, units: int, kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 **kwargs):
        super().__init__(**kwargs)
        self.units = _positive_units(units)
        self.kernel_initializer = tf_keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = tf_keras.initializers.get(recurrent_initializer)

    def build(self, input_shape):
        shape = _sequence_shape(input_shape)
        width = 3 * self.units
        self.kernel = self.add_weight(name="kernel", shape=(shape[2], width), initializer=self.kernel_initializer)
        self.recurrent_kernel = self.add_weight(name="recurrent_kernel", shape=(self.units, width),
                                                initializer=self.recurrent_initializer)
        self.bias = self.add_weight(name="bias", shape=(2, width), initializer="zeros")
        super().build(input_shape)

    def onnx_twin(self, part=None):
        """The same function as a layer tf2onnx turns into ONE ONNX ``GRU`` node (any ``part``).

        The ONNX exporter swaps it in (weights copied): ``GRU(unroll=False)`` is a while loop
        that TFLite builtins cannot lower, but tf2onnx rewrites it into ``GRU`` (``linear_before_reset=1``),
        which ONNX Runtime runs in one kernel instead of ~600 unrolled nodes (and its QDQ int8 file
        then keeps the small recurrent weights in float instead of ~1,800 Q/DQ nodes).
        """
        return tf_keras.layers.GRU(self.units, unroll=False, reset_after=True, name=self.name)

    def get_prunable_weights(self):
        """The two matrices (tfmot ``PrunableLayer`` protocol); biases stay dense."""
        return [self.kernel, self.recurrent_kernel]

    def call(self, inputs, training=None):
        units = self.units
        input_bias, recurrent_bias = self.bias[0], self.bias[1]
        # z and r add both biases outside any product: fold the recurrent ones into the input
        # projection; only the candidate's recurrent bias stays inside (r * (h·U_h + b_h)).
        folded = input_bias + tf.concat([recurrent_bias[:2 * units], tf.zeros_like(recurrent_bias[2 * units:])], 0)
        projected = tf.matmul(inputs, self.kernel) + folded                 # [B, L, 3H]: one op for all steps
        kernel_zr, kernel_h = self.recurrent_kernel[:, :2 * units], self.recurrent_kernel[:, 2 * units:]
        bias_h = recurrent_bias[2 * units:]

        def step(state, x_zr, x_h):
            if state is None:                                                # h0 = 0, so h·U = 0
                update, reset = tf.split(tf.sigmoid(x_zr), 2, axis=-1)
                candidate = tf.tanh(x_h + reset * bias_h)
                return candidate - update * candidate
            update, reset = tf.split(tf.sigmoid(x_zr + tf.matmul(state, kernel_zr)), 2, axis=-1)
            # r * (h·U_h + b_h) as r*(h·U_h) + r*b_h: an Add right after the MatMul would be fused
            # into a per-step int32 bias with per-channel scales (~1 KB of int8 metadata a step)
            candidate = tf.tanh(x_h + reset * bias_h + reset * tf.matmul(state, kernel_h))
            # u*h + (1-u)*c written as c + u*(h - c): one op fewer per step
            return candidate + update * (state - candidate)

        candidate_in = projected[..., 2 * units:]
        return run_steps(step, (projected[..., :2 * units], candidate_in),
                         lambda: tf.zeros([tf.shape(inputs)[0], units], inputs.dtype), training)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)[:1].concatenate([self.units])

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "kernel_initializer": tf_keras.initializers.serialize(self.kernel_initializer),
                "recurrent_initializer": tf_keras.initializers.serialize(self.recurrent_initializer)}


@_register
class ProjectedLSTM(tf_keras.layers.Layer):
    """Unrolled LSTM over a ``[B, L, E]`` sequence returning the last hidden state ``[B, units]``.

    Same gates (order ``i, f, c, o``) as ``tf_keras.layers.LSTM(units)`` with its default
    activations (``tanh`` / ``sigmoid``) and zero initial hidden and cell states. There is no
    mask: edgerec sequences are left-padded, so the state ends on the latest item and the
    padding steps (id 0, a learned embedding row) come before any real one.

    Args:
        units: state width, a positive int.
        kernel_initializer, recurrent_initializer: initializers of ``W`` and ``U``.
        unit_forget_bias: start the forget-gate bias at 1 (as Keras' ``LSTM``), a bool.
        **kwargs: standard layer arguments (``name`` …).

    Examples:
        >>> lstm = tf_keras.layers.LSTM(4)
        >>> x = tf.random.normal([2, 5, 3])
        >>> reference = lstm(x)
        >>> projected = ProjectedLSTM(4)
        >>> _ = projected(x)
        >>> projected.set_weights(lstm.get_weights())
        >>> bool(tf.reduce_max(tf.abs(projected(x) - reference)) < 1e-5)
        True
        >>> ProjectedLSTM(0)
        Traceback (most recent call last):
        ...
        edgerec.runtime.errors.SpecError: Expected units as a positive int, received: 0
    """

    def __init__(self, units: int, kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 unit_forget_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(unit_forget_bias, bool):
            raise SpecError(expected("unit_forget_bias as a bool", unit_forget_bias))
        self.units = _positive_units(units)
        self.unit_forget_bias = unit_forget_bias
        self.kernel_initializer = tf_keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = tf_keras.initializers.get(recurrent_initializer)

    def build(self, input_shape):
        shape = _sequence_shape(input_shape)
        units, width = self.units, 4 * self.units
        self.kernel = self.add_weight(name="kernel", shape=(shape[2], width), initializer=self.kernel_initializer)
        self.recurrent_kernel = self.add_weight(name="recurrent_kernel", shape=(units, width),
                                                initializer=self.recurrent_initializer)

        def bias_initializer(shape, dtype=None, **_):
            if not self.unit_forget_bias:
                return tf.zeros(shape, dtype)
            return tf.concat([tf.zeros([units], dtype), tf.ones([units], dtype), tf.zeros([2 * units], dtype)], 0)

        self.bias = self.add_weight(name="bias", shape=(width,), initializer=bias_initializer)
        super().build(input_shape)

    def onnx_twin(self, part=None):
        """The same function as a layer tf2onnx turns into ONE ONNX ``LSTM`` node (any ``part``).

        The ONNX exporter swaps it in (weights copied): ``LSTM(unroll=False)`` without a mask is a
        while loop that TFLite builtins cannot lower, but tf2onnx rewrites it into ``LSTM``, which
        ONNX Runtime runs in one kernel instead of hundreds of unrolled nodes (and its QDQ int8 file
        keeps the small recurrent weights in float instead of thousands of Q/DQ nodes).
        """
        return tf_keras.layers.LSTM(self.units, unroll=False, unit_forget_bias=self.unit_forget_bias,
                                    name=self.name)

    def get_prunable_weights(self):
        """The two matrices (tfmot ``PrunableLayer`` protocol); the bias stays dense."""
        return [self.kernel, self.recurrent_kernel]

    def call(self, inputs):
        # The one bias of a Keras LSTM cell sits outside every product: it joins the input
        # projection, done once for all steps, and no per-step MatMul is followed by a constant.
        projected = tf.matmul(inputs, self.kernel) + self.bias               # [B, L, 4H]
        state = cell = None
        for step in tf.unstack(projected, axis=1):
            gates = step if state is None else step + tf.matmul(state, self.recurrent_kernel)
            input_gate, forget_gate, candidate, output_gate = tf.split(gates, 4, axis=-1)
            new = tf.sigmoid(input_gate) * tf.tanh(candidate)
            cell = new if cell is None else tf.sigmoid(forget_gate) * cell + new    # c0 = 0
            state = tf.sigmoid(output_gate) * tf.tanh(cell)
        return state

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)[:1].concatenate([self.units])

    def get_config(self):
        return {**super().get_config(), "units": self.units, "unit_forget_bias": self.unit_forget_bias,
                "kernel_initializer": tf_keras.initializers.serialize(self.kernel_initializer),
                "recurrent_initializer": tf_keras.initializers.serialize(self.recurrent_initializer)}
