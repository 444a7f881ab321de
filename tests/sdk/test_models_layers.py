"""Custom layers: hand-checked outputs, masking, get_config round trip, argument checks."""
from __future__ import annotations

import numpy as np
import pytest

from edgerec.runtime.errors import SpecError

pytest.importorskip("tf_keras")


@pytest.fixture(scope="module")
def L():
    from edgerec.sdk.models import layers

    return layers


def test_sequence_mask_and_masked_mean(L):
    mask = L.SequenceMask()(np.array([[0, 0, 5, 7], [0, 0, 0, 0]], np.int32)).numpy()
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 0, 0, 0]])
    values = np.arange(16, dtype=np.float32).reshape(2, 4, 2)
    pooled = L.MaskedMeanPooling()([values, mask]).numpy()
    np.testing.assert_allclose(pooled, [[5.0, 6.0], [0.0, 0.0]])


def test_cls_pooling_takes_first_position(L):
    x = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    np.testing.assert_array_equal(L.ClsPooling()(x).numpy(), x[:, 0, :])


def test_target_attention_ignores_masked_positions(L):
    att = L.TargetAttention(hidden_units=(8,))
    rng = np.random.default_rng(0)
    query = rng.normal(size=(2, 4)).astype(np.float32)
    keys = rng.normal(size=(2, 5, 4)).astype(np.float32)
    mask = np.array([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]], np.float32)
    out = att([query, keys, mask]).numpy()
    changed = keys.copy()
    changed[:, :2] = 100.0              # garbage in padded positions must not matter
    np.testing.assert_allclose(att([query, changed, mask]).numpy(), out, atol=1e-6)
    np.testing.assert_array_equal(out[1], 0.0)            # empty history pools to zeros
    single = np.array([[0, 0, 0, 0, 1]] * 2, np.float32)  # one valid key -> exactly that key
    np.testing.assert_allclose(att([query, keys, single]).numpy(), keys[:, 4], atol=1e-6)


def test_target_attention_masks_exactly_whatever_the_logit_spread(L):
    """The mask penalty adapts to the row's logit spread (no huge constant that int8 cannot hold)."""
    att = L.TargetAttention(hidden_units=(8,), activation="relu")
    rng = np.random.default_rng(2)
    query = rng.normal(size=(3, 4)).astype(np.float32)
    keys = (rng.normal(size=(3, 6, 4)) * np.array([1.0, 30.0, 300.0])[:, None, None]).astype(np.float32)
    mask = np.array([[0, 0, 0, 1, 1, 1]] * 3, np.float32)
    out = att([query, keys, mask]).numpy()
    for garbage in (-1e3, 1e3):
        changed = keys.copy()
        changed[:, :3] = garbage
        np.testing.assert_allclose(att([query, changed, mask]).numpy(), out, rtol=1e-5, atol=1e-5)
    logits = att.logit(att.hidden[0](np.concatenate(
        [np.broadcast_to(query[:, None], keys.shape), keys, query[:, None] - keys, query[:, None] * keys], -1)))
    logits = logits.numpy()[..., 0][:, 3:]
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, np.einsum("bl,bld->bd", weights, keys[:, 3:]), rtol=1e-4, atol=1e-4)


def _concatenated_attention(att, query, keys, mask):
    """The attention computed as first written: one Dense over [q, k, q - k, q * k] per position."""
    queries = np.broadcast_to(query[:, None], keys.shape)
    hidden = att.hidden[0](np.concatenate([queries, keys, queries - keys, queries * keys], -1))
    for layer in att.hidden[1:]:
        hidden = layer(hidden)
    logits = att.logit(hidden).numpy()[..., 0]
    spread = logits.max(-1, keepdims=True) - logits.min(-1, keepdims=True)
    logits = logits - (1.0 - mask) * (spread + 20.0)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights = weights / weights.sum(-1, keepdims=True) * mask
    return np.einsum("bl,bld->bd", weights, keys)


def test_target_attention_split_first_layer_is_the_concatenated_one(L):
    """Same weights, same function: trained models keep their scores; the key half alone is
    ``k (W_k - W_d) + b`` and can be fed back as a fourth input."""
    assert L.MASK_MARGIN == 20.0
    att = L.TargetAttention(hidden_units=(6, 3))
    rng = np.random.default_rng(4)
    query = rng.normal(size=(3, 4)).astype(np.float32)
    keys = rng.normal(size=(3, 5, 4)).astype(np.float32)
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], np.float32)
    att([query, keys, mask])                                         # builds the weights
    att.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in att.get_weights()])
    out = att([query, keys, mask]).numpy()
    np.testing.assert_allclose(out, _concatenated_attention(att, query, keys, mask), rtol=1e-5, atol=1e-5)
    kernel, bias = att.hidden[0].get_weights()
    w_q, w_k, w_d, w_p = np.split(kernel, 4, axis=0)
    half = att(keys, keys_only=True).numpy()
    np.testing.assert_allclose(half, keys @ (w_k - w_d) + bias, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(att([query, keys, mask, half]).numpy(), out, rtol=0, atol=1e-6)


def test_target_attention_logit_bias_cancels_in_the_softmax(L):
    """The logit's bias shifts every position's logit alike: the attention leaves it out and its
    value changes nothing (trained models keep their scores)."""
    att = L.TargetAttention(hidden_units=(6, 3))
    rng = np.random.default_rng(6)
    query = rng.normal(size=(3, 4)).astype(np.float32)
    keys = rng.normal(size=(3, 5, 4)).astype(np.float32)
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], np.float32)
    att([query, keys, mask])
    att.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in att.get_weights()])
    out = att([query, keys, mask]).numpy()
    kernel, bias = att.logit.get_weights()
    att.logit.set_weights([kernel, bias + 7.5])
    np.testing.assert_allclose(att([query, keys, mask]).numpy(), out, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out, _concatenated_attention(att, query, keys, mask), rtol=1e-5, atol=1e-5)


def test_target_attention_broadcasts_one_history_to_many_queries(L):
    att = L.TargetAttention(hidden_units=(6,))
    rng = np.random.default_rng(5)
    query = rng.normal(size=(4, 3)).astype(np.float32)
    keys = rng.normal(size=(1, 5, 3)).astype(np.float32)
    mask = np.array([[0, 1, 1, 1, 1]], np.float32)
    half = att(keys, keys_only=True).numpy()
    once = att([query, keys, mask, half]).numpy()
    repeated = att([query, np.repeat(keys, 4, 0), np.repeat(mask, 4, 0), np.repeat(half, 4, 0)]).numpy()
    assert once.shape == (4, 3)
    np.testing.assert_allclose(once, repeated, rtol=0, atol=1e-6)
    np.testing.assert_allclose(att([query, keys, mask]).numpy(), repeated, rtol=0, atol=1e-6)
    with pytest.raises(SpecError, match="key half of width 6"):
        L.TargetAttention(hidden_units=(6,))([query, keys, mask, np.zeros((1, 5, 2), np.float32)])


def test_broadcast_rows_to_the_batch_of_like(L):
    layer = L.BroadcastRows()
    state = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    out = layer([state, np.zeros(4, np.int32)]).numpy()
    assert out.shape == (4, 2, 3)
    np.testing.assert_array_equal(out, np.repeat(state, 4, 0))
    full = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(layer([full, np.zeros((4, 7), np.float32)]).numpy(), full)
    assert tuple(layer.compute_output_shape([(1, 2, 3), (None,)])) == (None, 2, 3)


def test_transformer_encoder_output_of_valid_tokens_ignores_padding(L):
    block = L.TransformerEncoder(num_heads=2, ff_dim=8)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 4, 6)).astype(np.float32)
    mask = np.array([[0, 0, 1, 1]], np.float32)
    out = block([x, mask]).numpy()
    changed = x.copy()
    changed[:, :2] = 50.0
    np.testing.assert_allclose(block([changed, mask]).numpy()[:, 2:], out[:, 2:], atol=1e-5)


def test_positional_embedding_adds_per_position(L):
    layer = L.PositionalEmbedding(max_length=5)
    out = layer(np.zeros((2, 3, 4), np.float32)).numpy()
    np.testing.assert_allclose(out[0], layer.positions.numpy()[:3])
    np.testing.assert_allclose(out[0], out[1])
    with pytest.raises(SpecError, match="static sequence length <= 5"):
        L.PositionalEmbedding(max_length=5)(np.zeros((1, 6, 4), np.float32))


@pytest.mark.parametrize("make", [
    lambda L: L.SequenceMask(name="m"),
    lambda L: L.PositionalEmbedding(7, initializer_stddev=0.1, name="p"),
    lambda L: L.MaskedMeanPooling(),
    lambda L: L.ClsPooling(),
    lambda L: L.TargetAttention(hidden_units=(6, 3), activation="relu"),
    lambda L: L.BroadcastRows(name="broadcast"),
    lambda L: L.TransformerEncoder(num_heads=4, ff_dim=12, dropout=0.1),
    lambda L: L.AppendCandidate(name="append"),
    lambda L: L.SplitLast(name="split"),
    lambda L: L.ProjectedGRU(5, kernel_initializer="he_normal", name="gru"),
])
def test_get_config_round_trip(L, make):
    layer = make(L)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    from edgerec.converters.tfenv import import_tf

    _, keras = import_tf()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == config


def test_append_candidate_then_split_last_inverts(L):
    hist = np.array([[0, 0, 4, 5], [1, 2, 3, 6]], np.int32)
    cand = np.array([9, 7], np.int32)
    ids = L.AppendCandidate()([hist, cand]).numpy()
    np.testing.assert_array_equal(ids, [[0, 0, 4, 5, 9], [1, 2, 3, 6, 7]])
    assert ids.dtype == np.int32
    table = np.arange(20, dtype=np.float32).reshape(10, 2)
    history, last = L.SplitLast()(table[ids])
    np.testing.assert_array_equal(history.numpy(), table[hist])
    np.testing.assert_array_equal(last.numpy(), table[cand])
    history, last = L.SplitLast()(ids)            # rank 2: the last step drops the time axis
    np.testing.assert_array_equal(history.numpy(), hist)
    np.testing.assert_array_equal(last.numpy(), cand)


def test_shared_lookup_layers_in_a_functional_model_keep_static_shapes(L):
    from edgerec.converters.tfenv import import_tf

    _, keras = import_tf()
    hist = keras.Input(shape=(6,), dtype="int32")
    cand = keras.Input(shape=(), dtype="int32")
    ids = L.AppendCandidate()([hist, cand])
    assert tuple(ids.shape) == (None, 7)
    history, last = L.SplitLast()(keras.layers.Embedding(10, 3)(ids))
    assert tuple(history.shape) == (None, 6, 3) and tuple(last.shape) == (None, 3)


def test_split_last_needs_a_static_time_axis_of_two(L):
    with pytest.raises(SpecError, match="static time dimension of at least 2, received: 1"):
        L.SplitLast()(np.zeros((2, 1, 3), np.float32))


@pytest.mark.parametrize("make, message", [
    (lambda L: L.PositionalEmbedding(0), "max_length as a positive int, received: 0"),
    (lambda L: L.TargetAttention(hidden_units=8), "hidden_units as a list of positive ints"),
    (lambda L: L.TargetAttention(hidden_units=(8, 0)), "hidden_units as a positive int, received: 0"),
    (lambda L: L.TransformerEncoder(num_heads=0), "num_heads as a positive int"),
    (lambda L: L.TransformerEncoder(dropout=1.5), r"dropout in \[0, 1\), received: 1.5"),
    (lambda L: L.ProjectedGRU(0), "units as a positive int, received: 0"),
    (lambda L: L.ProjectedGRU(4)(np.zeros((2, 3), np.float32)), "a \\[batch, steps, features\\] input"),
])
def test_argument_checks(L, make, message):
    with pytest.raises(SpecError, match=message):
        make(L)


def test_transformer_dimension_must_divide_heads(L):
    with pytest.raises(SpecError, match="divisible by num_heads=4"):
        L.TransformerEncoder(num_heads=4)([np.zeros((1, 3, 6), np.float32), np.ones((1, 3), np.float32)])


def test_projected_gru_computes_keras_gru_with_its_weights(L):
    """Same function as tf_keras GRU(reset_after=True) for any weights, incl. non-zero biases."""
    from edgerec.converters.tfenv import import_tf

    _, keras = import_tf()
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 7, 5)).astype(np.float32)
    reference = keras.layers.GRU(6, unroll=True)
    reference(x)
    reference.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in reference.get_weights()])
    projected = L.ProjectedGRU(6)
    projected(x)
    projected.set_weights(reference.get_weights())
    np.testing.assert_allclose(projected(x).numpy(), reference(x).numpy(), atol=1e-5)
    assert [w.name.split("/")[-1].split(":")[0] for w in projected.get_prunable_weights()] == \
        ["kernel", "recurrent_kernel"]
