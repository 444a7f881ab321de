"""Bring your own model: any saved Keras model plus an ``.npz`` of rows named like its inputs.

Accepted: tf_keras ``.keras`` / ``.h5`` / SavedModel folder (everything, pruning included) and
Keras 3 ``.keras`` (conversion, quantization and validation — **not pruning**: tfmot only
prunes tf_keras models). The ``.npz`` holds one array per model input (named like the input),
optionally ``labels`` (needed for ΔAUC, the selection budget and pruning) and ``groups``.
It serves as calibration and validation rows. No edgerec feature spec exists: the bundle
carries only the tensor signature (``manifest.feature_spec`` is null) and its examples.jsonl
holds tensor rows ``{"inputs": {...}, "expected": {...}}``.

Examples:
    >>> export_model("my_model.keras", "bundle", data="rows.npz", quantize=("dynamic",))  # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgerec.runtime.errors import expected
from edgerec.runtime.manifest import TensorSpec

from .errors import ConverterConfigError, ModelLoadError
from .specs import spec_for_byom
from .validate import ValidationData

EXAMPLES = 32


def byom_job(model_path: Path, data, max_groups: int | None = None):
    """An `ExportJob` for a saved Keras model and its rows ``.npz``."""
    from .bundle import byom_examples
    from .export import ExportJob
    from .keras_io import input_specs, keras_flavour, load_keras_model

    model_path = Path(model_path)
    if model_path.is_dir() and not (model_path / "saved_model.pb").is_file():
        raise ConverterConfigError(expected("a model directory with edgerec_model.json, or a saved Keras model "
                                            "(.keras, .h5, SavedModel folder)", str(model_path)))
    if data is None:
        raise ConverterConfigError(expected("--data FILE.npz (arrays named like the model inputs, plus labels) for "
                                            "a bring-your-own model", None))
    flavour = keras_flavour(model_path)
    model = load_keras_model(model_path)
    specs = input_specs(model)
    rows = ValidationData.load(data, max_groups=max_groups)
    missing = [n for n in specs if n not in rows.inputs]
    if missing:
        raise ConverterConfigError(expected(f"arrays named like the model inputs {sorted(specs)} in {data}",
                                            f"missing {missing} (has {sorted(rows.inputs)})"))
    inputs = {n: np.asarray(rows.inputs[n]).astype(dtype, copy=False) for n, (dtype, _) in specs.items()}
    validation = ValidationData(inputs, rows.labels, rows.groups, str(data))
    signature = [TensorSpec(n, d, list(s)) for n, (d, s) in specs.items()]
    spec = spec_for_byom(signature, score_output=None if len(model.outputs) > 1 else "score")
    info = {"family": "byom", "source": str(model_path), "keras": flavour,
            "inputs": [{"name": t.name, "dtype": t.dtype, "shape": t.shape} for t in signature],
            "pruning": "supported" if flavour == "tf_keras" else
            "not supported: tfmot prunes only tf_keras (Keras 2) models; re-save with tf_keras to prune"}
    return ExportJob(keras_paths={"fused": str(model_path)}, calibration=str(data), validation=validation,
                     examples=byom_examples(inputs, model, EXAMPLES), feature_spec_path=None,
                     model_info=info, specs={"fused": spec})


def check_prunable(model_path: Path) -> None:
    """Raise a clear error before any work when pruning a Keras 3 model is requested."""
    from .keras_io import KERAS3, keras_flavour

    if keras_flavour(model_path) == KERAS3:
        raise ModelLoadError(expected("a tf_keras (Keras 2) model for --prune: tfmot cannot prune Keras 3 "
                                      "models (export/quantize work without --prune)", "a Keras 3 .keras file"))
