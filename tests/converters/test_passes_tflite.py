"""TFLite pass: every mode on tiny contract models, run with ai_edge_litert against Keras."""
from __future__ import annotations

import numpy as np
import pytest

from edgerec.converters.errors import ConversionError, ConverterConfigError
from edgerec.converters.pipeline import ExportedArtifact, PassRunner

# Declared tolerances (max |p_litert - p_keras|) per precision for these tiny models.
TOLERANCE = {"fp32": 1e-5, "fp16": 5e-3, "dynamic": 5e-2, "int8": 8e-2}
FUSED_INPUTS = {"din": ["cand_item", "dense", "hist_items", "hour"], "mha": ["cand_item", "hist_items"],
                "gru": ["cand_item", "hist_items"]}


def keras_predict(path, rows, names):
    from edgerec.converters.keras_io import load_keras_model

    model = load_keras_model(path)
    out = model({n: rows[n] for n in names}, training=False)
    return {k: np.asarray(v) for k, v in out.items()} if isinstance(out, dict) else np.asarray(out)


def litert_predict(path, rows, names, batch=16):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner("serving_default")
    outs = []
    for start in range(0, len(rows[names[0]]), batch):  # resizes to the batch through the signature
        outs.append(runner(**{n: np.ascontiguousarray(rows[n][start:start + batch]) for n in names}))
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fp32", "fp16", "dynamic", "int8"])
def test_din_every_mode_matches_keras(model_dir, rows_npz, cache_dir, mode, rows_for):
    from edgerec.converters.passes.tflite import TFLiteConfig, TFLitePass

    art = PassRunner(cache_dir).run(TFLitePass(), model_dir / "din.keras", TFLiteConfig(mode=mode, data=str(rows_npz)))
    assert art.format == "tflite" and art.precision == mode and art.part == "fused"
    assert [t.name for t in art.inputs] == FUSED_INPUTS["din"]
    assert {t.name: t.dtype for t in art.inputs}["hist_items"] == "int32"
    assert [(t.name, t.dtype, t.shape) for t in art.outputs] == [("score", "float32", [None, 1])]
    rows = rows_for(64, seed=7)
    want = keras_predict(model_dir / "din.keras", rows, FUSED_INPUTS["din"])
    got = litert_predict(art.path, rows, FUSED_INPUTS["din"])["score"]
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= TOLERANCE[mode]
    assert art.lineage[-1]["pass"] == "tflite" and art.lineage[-1]["config"]["mode"] == mode


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mha", "gru"])
def test_attention_and_unrolled_gru_convert_to_int8(model_dir, rows_npz, cache_dir, name, rows_for):
    from edgerec.converters.passes.tflite import TFLiteConfig, TFLitePass

    runner = PassRunner(cache_dir)
    rows = rows_for(32, seed=3)
    want = keras_predict(model_dir / f"{name}.keras", rows, FUSED_INPUTS[name])
    for mode in ("fp32", "int8"):
        art = runner.run(TFLitePass(), model_dir / f"{name}.keras", TFLiteConfig(mode=mode, data=str(rows_npz)))
        got = litert_predict(art.path, rows, FUSED_INPUTS[name])["score"]
        assert np.max(np.abs(got - want)) <= TOLERANCE[mode], (name, mode)


@pytest.mark.slow
def test_split_parts_keep_canonical_names(model_dir, tmp_path, cache_dir, rows_for):
    from edgerec.converters.passes.tflite import TFLiteConfig, TFLitePass

    runner = PassRunner(cache_dir)
    user = runner.run(TFLitePass(), ExportedArtifact.from_keras(model_dir / "user_encoder.keras", "user_encoder"),
                      TFLiteConfig(mode="fp32"))
    assert [t.name for t in user.inputs] == ["hist_items"]
    assert [t.name for t in user.outputs] == ["user_mask", "user_state"] and user.part == "user_encoder"
    rows = rows_for(8)
    states = litert_predict(user.path, rows, ["hist_items"])
    want = keras_predict(model_dir / "user_encoder.keras", rows, ["hist_items"])
    assert np.allclose(states["user_state"], want["user_state"], atol=1e-5)
    scorer_rows = {**rows, **states, "labels": rows["labels"]}
    np.savez(tmp_path / "scorer_rows.npz", **scorer_rows)
    scorer = runner.run(TFLitePass(), ExportedArtifact.from_keras(model_dir / "scorer.keras", "scorer"),
                        TFLiteConfig(mode="int8", data=str(tmp_path / "scorer_rows.npz")))
    assert sorted(t.name for t in scorer.inputs) == ["cand_item", "hour", "user_mask", "user_state"]
    assert [t.name for t in scorer.outputs] == ["score"] and scorer.precision == "int8"


@pytest.mark.slow
def test_keras3_model_exports_with_weights(model_dir, cache_dir, rows_for):
    from edgerec.converters.keras_io import KERAS3, keras_flavour
    from edgerec.converters.passes.tflite import TFLiteConfig, TFLitePass

    assert keras_flavour(model_dir / "keras3.keras") == KERAS3
    art = PassRunner(cache_dir).run(TFLitePass(), model_dir / "keras3.keras", TFLiteConfig(mode="fp32"))
    rows = rows_for(16)
    want = keras_predict(model_dir / "keras3.keras", rows, ["cand_item", "hist_items"])
    got = litert_predict(art.path, rows, ["cand_item", "hist_items"])["score"]
    assert art.size_bytes > 16 * 1000 * 4   # the embedding table is in the file (not a weightless model)
    assert np.max(np.abs(got - want)) <= TOLERANCE["fp32"]


@pytest.mark.slow
def test_masked_lstm_failure_names_the_blocking_op(tmp_path, cache_dir):
    from edgerec.converters.passes.tflite import TFLiteConfig, TFLitePass
    from edgerec.converters.tfenv import import_tf

    _, k = import_tf()
    hist = k.Input((6,), dtype="int32", name="hist_items")
    x = k.layers.Embedding(50, 4, mask_zero=True)(hist)
    x = k.layers.LSTM(4, name="masked_lstm")(x)
    k.Model(hist, k.layers.Dense(1, activation="sigmoid")(x)).save(tmp_path / "lstm.keras")
    with pytest.raises(ConversionError) as info:
        PassRunner(cache_dir).run(TFLitePass(), tmp_path / "lstm.keras", TFLiteConfig(mode="fp32"))
    blocked = info.value.blocked_by
    assert "tf.TensorListReserve" in blocked and "layer:masked_lstm" in blocked, str(info.value)
    assert "blocked by" in str(info.value) and info.value.mode == "fp32"


def test_conversion_error_parses_ops_and_layers():
    from edgerec.converters.passes.tflite_checks import conversion_error

    message = ('<unknown>:0: error: loc(callsite(fused["TensorListReserve:", "TensorArrayV2_1@__inference_lstm_3"] at '
               'callsite(fused["PartitionedCall:", "model/masked_lstm/PartitionedCall@__inference_serve_4"]))): '
               "'tf.TensorListReserve' op is neither a custom op nor a flex op\n"
               "<unknown>:0: error: failed to legalize operation 'tfl.custom_tf'")
    err = conversion_error("int8", RuntimeError(message))
    assert err.blocked_by[:2] == ["tf.TensorListReserve", "tfl.custom_tf"]
    assert "layer:masked_lstm" in err.blocked_by
    assert str(err).startswith("Expected a TFLite int8 conversion, received:")


def test_bad_configs():
    from edgerec.converters.passes.tflite import TFLiteConfig

    with pytest.raises(ConverterConfigError, match="TFLite mode"):
        TFLiteConfig(mode="int4")
    with pytest.raises(ConverterConfigError, match="data=<rows .npz>"):
        TFLiteConfig(mode="int8")
    with pytest.raises(ConverterConfigError, match="calibration_rows"):
        TFLiteConfig(mode="dynamic", calibration_rows=0)
    with pytest.raises(ConverterConfigError, match="evaluation_rows >= 1"):
        TFLiteConfig(mode="dynamic", evaluation_rows=True)
    with pytest.raises(ConverterConfigError, match="sensitivity_rows >= 1"):
        TFLiteConfig(mode="dynamic", sensitivity_rows=0)
