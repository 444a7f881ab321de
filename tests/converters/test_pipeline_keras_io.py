"""keras_io: flavour detection, loading every saved form, canonical serving names, clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from edgerec.converters.errors import ConverterConfigError, ModelLoadError


def test_missing_and_unreadable_paths(tmp_path):
    from edgerec.converters.keras_io import keras_flavour, load_keras_model

    with pytest.raises(ModelLoadError, match="Expected an existing Keras model path"):
        load_keras_model(tmp_path / "nope.keras")
    (tmp_path / "junk.keras").write_text("not a zip")
    with pytest.raises(ModelLoadError, match="zip archive"):
        keras_flavour(tmp_path / "junk.keras")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ModelLoadError, match="saved_model.pb"):
        keras_flavour(tmp_path / "folder")


@pytest.mark.slow
def test_every_saved_form_loads_with_the_same_outputs(model_dir, tmp_path, rows_for):
    from edgerec.converters.keras_io import (KERAS3, TF_KERAS, input_specs, keras_flavour, load_keras_model,
                                             model_flavour)

    model = load_keras_model(model_dir / "gru.keras")
    assert keras_flavour(model_dir / "gru.keras") == TF_KERAS and model_flavour(model) == TF_KERAS
    model.save(tmp_path / "gru.h5")
    model.save(tmp_path / "gru_sm", save_format="tf")
    rows = rows_for(8)
    feed = {"hist_items": rows["hist_items"], "cand_item": rows["cand_item"]}
    want = np.asarray(model(feed))
    for path in (tmp_path / "gru.h5", tmp_path / "gru_sm"):
        assert keras_flavour(path) == TF_KERAS
        assert np.allclose(np.asarray(load_keras_model(path)(feed)), want, atol=1e-6), path
    k3 = load_keras_model(model_dir / "keras3.keras")
    assert model_flavour(k3) == KERAS3
    assert input_specs(k3) == {"hist_items": ("int32", (None, 8)), "cand_item": ("int32", (None,))}


@pytest.mark.slow
def test_custom_objects_module_is_imported_by_name(model_dir):
    from edgerec.converters.keras_io import load_keras_model

    with pytest.raises(ModelLoadError, match="importable custom_objects_module 'edgerec_no_such_module'"):
        load_keras_model(model_dir / "din.keras", "edgerec_no_such_module")
    model = load_keras_model(model_dir / "din.keras", "json")   # any importable module is accepted
    assert model.get_layer("pool_scale").__class__.__name__ == "LearnedScale"
    with pytest.raises(ConverterConfigError):
        load_keras_model(model_dir / "din.keras", 42)


@pytest.mark.slow
def test_serving_function_uses_canonical_names(model_dir):
    from edgerec.converters.keras_io import load_keras_model, output_names, serving_function

    din = load_keras_model(model_dir / "din.keras")
    assert output_names(din, "fused") == ["score"]
    user = load_keras_model(model_dir / "user_encoder.keras")
    assert output_names(user, "user_encoder") is None   # dict outputs keep their names
    serve, signature = serving_function(user, "user_encoder")
    assert list(signature) == ["hist_items"]
    assert sorted(serve.get_concrete_function().structured_outputs) == ["user_mask", "user_state"]
