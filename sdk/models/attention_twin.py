"""`one_user_twin(layer)`: a `TargetAttention` with a branch for one user's keys, swapped in by
the ONNX exporter (`edgerec.converters.passes.onnx.with_onnx_twins`). The twin class is made
from the layer's own class, so this module does not import `layers` (which calls it).

Ranking M candidates for one user feeds the scorer keys of a batch of 1 against N queries. The
general form of the first hidden layer, ``(q * k) W_p + k W_k' + q W_q' + b``, then builds the
``[N, L, D]`` product and adds two broadcast ``[N, L, U]`` terms: memory-bound passes that took
~45 % of a DIN scorer call in ONNX Runtime (1 x 200 candidates, 27 positions). With one user's
keys ``k [L, D]`` the layer is one matrix product instead::

    hidden[n, l, u] = sum_d q[n, d] * A[d, l, u] + c[l, u]
    A[d, l, u] = k[l, d] * W_p[d, u] + W_q'[d, u]        c = k W_k' + b (the key half)

``A`` (``D x L x U``) is built once per call, and the product with ``q`` plus the bias ``c`` is a
single GEMM (``c`` as one more row of ``A`` against a column of ones). Keys of N rows (training, validation, several users per call) take the general
form: ``A`` per row would be ``L x U`` times larger than the row's keys.
"""
from __future__ import annotations

import tensorflow as tf

_TWINS: dict = {}


def one_user_twin(layer):
    """A twin of ``layer`` (a `TargetAttention`) whose scorer call (key half given) takes one GEMM
    for keys of batch 1; same arguments and weight layout, outputs equal up to float rounding. Its
    class, ``OneUserTargetAttention``, subclasses the layer's; only the ONNX export uses it, so it
    is not registered for saving.

    Examples:
        >>> att = TargetAttention(hidden_units=(16,))
        >>> key_half = att(tf.zeros([1, 5, 8]), keys_only=True)
        >>> twin = att.onnx_twin("scorer")                      # one_user_twin(att)
        >>> twin([tf.zeros([3, 8]), tf.zeros([1, 5, 8]), tf.ones([1, 5]), key_half]).shape
        TensorShape([3, 8])
    """
    base = type(layer)
    if base not in _TWINS:
        _TWINS[base] = _twin_class(base)
    return _TWINS[base](**layer.get_config())


def _twin_class(base):
    class OneUserTargetAttention(base):
        __doc__ = one_user_twin.__doc__

        def call(self, inputs, keys_only: bool = False):
            if keys_only or len(inputs) != 4:
                return super().call(inputs, keys_only=keys_only)
            keys = inputs[1]
            return tf.cond(tf.equal(tf.shape(keys)[0], 1), lambda: _one_user(self, inputs),
                           lambda: super(OneUserTargetAttention, self).call(inputs))

    return OneUserTargetAttention


def _one_user(self, inputs):
    query, keys, mask, key_half = inputs
    w_query, _, w_product = self._blocks()
    width = int(keys.shape[-1])
    per_position = tf.transpose(keys[0])[:, :, None] * w_product[:, None, :] + w_query[:, None, :]
    # the key half as one more row of A against a column of ones: the bias inside the GEMM
    weights = tf.concat([tf.reshape(per_position, [width, -1]), tf.reshape(key_half[0], [1, -1])], axis=0)
    ones = tf.ones_like(query[:, :1])
    hidden = tf.matmul(tf.concat([query, ones], axis=1), weights)                # [N, L * U]
    return self.pooled(self.hidden[0].activation(hidden), keys, mask)
