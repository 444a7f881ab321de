"""`attention_twin.one_user_twin`, the scorer's ONNX twin of `TargetAttention`: the same outputs for one
user's keys against N queries (its one-GEMM branch) and for N users' keys (the general form), the
same weights; other parts keep the layer itself."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tf_keras")


def _layer_and_twin():
    import tensorflow as tf

    from edgerec.sdk.models.layers import TargetAttention

    tf.random.set_seed(0)
    layer = TargetAttention(hidden_units=(8, 4), name="target_attention")
    layer.build([tf.TensorShape([None, 6]), tf.TensorShape([None, 5, 6]), tf.TensorShape([None, 5]),
                 tf.TensorShape([None, 5, 8])])
    # non-zero biases, so the key half's bias term is exercised
    layer.set_weights([w + np.random.default_rng(i).normal(scale=0.3, size=w.shape).astype(np.float32)
                       for i, w in enumerate(layer.get_weights())])
    twin = layer.onnx_twin("scorer")
    twin.build([tf.TensorShape([None, 6]), tf.TensorShape([None, 5, 6]), tf.TensorShape([None, 5]),
                tf.TensorShape([None, 5, 8])])
    twin.set_weights(layer.get_weights())
    return layer, twin


def _inputs(batch: int, queries: int = 7):
    rng = np.random.default_rng(batch)
    keys = rng.normal(size=(batch, 5, 6)).astype(np.float32)
    mask = np.ones((batch, 5), np.float32)
    mask[:, :2] = 0.0
    return rng.normal(size=(queries if batch == 1 else batch, 6)).astype(np.float32), keys, mask


@pytest.mark.parametrize("batch", [1, 7])
def test_twin_gives_the_layers_outputs(batch):
    import tensorflow as tf

    layer, twin = _layer_and_twin()
    query, keys, mask = _inputs(batch)
    key_half = layer(tf.constant(keys), keys_only=True)
    np.testing.assert_allclose(twin(tf.constant(keys), keys_only=True).numpy(), key_half.numpy(), atol=1e-6)
    want = layer([query, keys, mask, key_half]).numpy()
    got = tf.function(lambda *a: twin(list(a)))(query, keys, mask, key_half).numpy()   # traced, as exported
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(twin([query, keys, mask]).numpy(), layer([query, keys, mask]).numpy(), atol=1e-6)


def test_only_a_scorer_gets_the_twin():
    layer, twin = _layer_and_twin()
    assert type(twin).__name__ == "OneUserTargetAttention" and isinstance(twin, type(layer))
    assert twin.get_config() == layer.get_config() and type(layer.onnx_twin("scorer")) is type(twin)
    assert layer.onnx_twin("fused") is None and layer.onnx_twin(None) is None
