"""ONNX export with free axes (`OnnxExportConfig.free_axes`): a model written outside edgerec's
builders exports length-free along its history and runs shorter (unpadded) histories with the
scores of the padded ones; a layer that needs its sizes gets the fixed-size export instead, said in
the artifact's details; bad configs get typed errors."""
from __future__ import annotations

import numpy as np
import pytest

from edgerec.converters.errors import ConverterConfigError

from .byom_models import HISTORY, TARGET, build_byom

pytest.importorskip("tf2onnx")
ort = pytest.importorskip("onnxruntime")

SEQ, VOCAB = 8, 60
POSITIONS = ((HISTORY, 1, "positions"),)


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _rows(valid: int, n: int = 16, seed: int = 0) -> dict:
    """Left-padded histories with ``valid`` items each, and one target per row."""
    rng = np.random.default_rng(seed)
    history = np.zeros((n, SEQ), np.int32)
    history[:, SEQ - valid:] = rng.integers(1, VOCAB, (n, valid))
    return {HISTORY: history, TARGET: rng.integers(1, VOCAB, (n, 1)).astype(np.int32)}


@pytest.mark.slow
def test_a_byom_attention_model_exports_length_free(tmp_path):
    """The app-written DIN (custom attention masking ids == 0, ``[B, 1]`` target, one table for
    history and candidate): symbolic ``positions``, Keras's scores at the full length, and the
    same scores for the histories cut to their 3 valid items."""
    import onnx

    from edgerec.converters.passes.onnx import OnnxExportConfig, OnnxExportPass

    model = build_byom("din", VOCAB, SEQ, dim=8)
    model.save(tmp_path / "byom.keras")
    art = OnnxExportPass().run(tmp_path / "byom.keras", OnnxExportConfig(free_axes=POSITIONS), tmp_path / "out")
    assert art.details["free_axes"] == [list(POSITIONS[0])] and "free_axes_refused" not in art.details
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in onnx.load(art.path).graph.input}
    assert dims[HISTORY] == ["batch", "positions"] and dims[TARGET] == ["batch", 1]
    assert next(t for t in art.inputs if t.name == HISTORY).shape == [None, None]
    rows = _rows(valid=3)
    want = model(rows, training=False).numpy()
    session = _session(art.path)
    full = session.run(None, rows)[0]
    cut = session.run(None, {HISTORY: rows[HISTORY][:, SEQ - 3:], TARGET: rows[TARGET]})[0]
    np.testing.assert_allclose(full, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(cut, want, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_a_layer_that_needs_its_sizes_gets_the_fixed_size_export(tmp_path):
    from edgerec.converters.passes.onnx import OnnxExportConfig, OnnxExportPass
    from edgerec.converters.tfenv import import_tf

    tf, k = import_tf()

    class SizedFlatten(k.layers.Layer):
        def call(self, x):
            return tf.reshape(x, [-1, int(x.shape[1]) * int(x.shape[2])])      # int(None) fails

    history = k.Input((SEQ,), dtype="int32", name=HISTORY)
    flat = SizedFlatten(name="sized_flatten")(k.layers.Embedding(VOCAB, 4)(history))
    model = k.Model({HISTORY: history}, k.layers.Dense(1, activation="sigmoid")(flat))
    model.save(tmp_path / "sized.keras")
    with k.utils.custom_object_scope({"SizedFlatten": SizedFlatten}):
        art = OnnxExportPass().run(tmp_path / "sized.keras", OnnxExportConfig(free_axes=POSITIONS), tmp_path / "out")
    assert art.details["free_axes"] == [] and "TypeError" in art.details["free_axes_refused"]
    assert art.inputs[0].shape == [None, SEQ]
    rows = _rows(valid=SEQ)
    np.testing.assert_allclose(_session(art.path).run(None, {HISTORY: rows[HISTORY]})[0],
                               model(rows[HISTORY], training=False).numpy(), rtol=0, atol=1e-6)


def test_free_axes_config_checks(tmp_path):
    from edgerec.converters.keras_io import relaxed_specs
    from edgerec.converters.passes.onnx import OnnxExportConfig

    for bad in ((HISTORY, 0, "positions"), (HISTORY, 1, "batch"), (HISTORY, True, "p"), (HISTORY, 1, ""),
                (HISTORY, 1)):
        with pytest.raises(ConverterConfigError, match="free_axes as"):
            OnnxExportConfig(free_axes=(bad,))
    specs = {HISTORY: ("int32", (None, SEQ))}
    assert relaxed_specs(specs, [(HISTORY, 1)]) == {HISTORY: ("int32", (None, None))}
    with pytest.raises(ConverterConfigError, match="free axes of inputs among"):
        relaxed_specs(specs, [("other", 1)])
    with pytest.raises(ConverterConfigError, match="a free axis of"):
        relaxed_specs(specs, [(HISTORY, 2)])


def test_position_axes_follow_the_user_mask():
    from edgerec.converters.specs import position_axes

    signature = {"cand_item": ("int32", (None,)), "user_mask": ("float32", (None, 50)),
                 "user_state": ("float32", (None, 50, 32)), "user_keys": ("float32", (None, 50, 64)),
                 "user_pooled": ("float32", (None, 50)), "user_other": ("float32", (None, 7, 50))}
    # user_pooled [B, 50] is as long as the mask but one vector, not one row per position
    assert position_axes(signature) == tuple((n, 1, "positions") for n in ("user_mask", "user_state", "user_keys"))
    assert position_axes({"user_state": ("float32", (None, 50, 32))}) == ()
    assert position_axes({"user_mask": ("float32", (None, None))}) == ()
