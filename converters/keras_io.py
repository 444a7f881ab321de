"""Load saved Keras models of either flavour and wrap them in a canonically named serving function.

Flavours: tf_keras (Keras 2: ``.keras``, ``.h5``, SavedModel folder) — everything works, pruning
included; Keras 3 ``.keras`` — export and quantization work, tfmot pruning does not (tfmot only
accepts tf_keras models).

Examples:
    >>> model = load_keras_model("model/fused.keras", "edgerec.sdk.models.layers")  # doctest: +SKIP
    >>> keras_flavour("model/fused.keras")                                         # doctest: +SKIP
    'tf_keras'
"""
from __future__ import annotations

import importlib
import json
import os
import zipfile
from pathlib import Path

from .errors import ConverterConfigError, ModelLoadError, expected
from .tfenv import import_tf

TF_KERAS = "tf_keras"
KERAS3 = "keras3"

# Default output name of a single-output model, per part (docs/contracts.md).
DEFAULT_OUTPUT = {"fused": "score", "scorer": "score", "content_encoder": "item_vector",
                  "user_encoder": "user_state"}


def keras_flavour(path: str | os.PathLike) -> str:
    """``"tf_keras"`` or ``"keras3"`` for a saved model, read from the file without loading it."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(expected("an existing Keras model path (.keras, .h5 or SavedModel folder)", str(path)))
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ModelLoadError(expected("a SavedModel folder holding saved_model.pb", str(path)))
        return TF_KERAS
    if path.suffix == ".h5":
        return TF_KERAS
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(expected("a .keras zip archive, a .h5 file or a SavedModel folder", str(path)))
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        meta = json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
    version = str(meta.get("keras_version", ""))
    return KERAS3 if version.startswith("3") else TF_KERAS


def import_custom_objects(module: str | None) -> None:
    """Import the module that registers custom layers (e.g. ``edgerec.sdk.models.layers``)."""
    if not module:
        return
    if not isinstance(module, str):
        raise ConverterConfigError(expected("a module name string for custom_objects_module", module))
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise ModelLoadError(expected(f"an importable custom_objects_module '{module}'", str(err))) from None


def load_keras_model(path: str | os.PathLike, custom_objects_module: str | None = None):
    """Load a saved Keras model; the flavour is detected from the file.

    Args:
        path: ``.keras`` (tf_keras or Keras 3), ``.h5`` or a SavedModel folder (tf_keras).
        custom_objects_module: module imported first so registered custom layers resolve.

    Returns:
        the model (a ``tf_keras.Model`` or a ``keras.Model``); see `model_flavour`.
    """
    flavour = keras_flavour(path)
    tf, tf_keras = import_tf()        # first, so a custom-layers module does not load TensorFlow un-quietened
    import_custom_objects(custom_objects_module)
    try:
        if flavour == KERAS3:
            import keras

            return keras.saving.load_model(str(path), compile=False)
        return tf_keras.models.load_model(str(path), compile=False)
    except Exception as err:  # noqa: BLE001 - every loader error becomes one typed error
        raise ModelLoadError(expected(f"a loadable {flavour} model at {path} (custom layers registered "
                                      f"by custom_objects_module={custom_objects_module!r})",
                                      f"{type(err).__name__}: {err}")) from None


def walk_layers(model):
    """Every layer of ``model``, nested models' layers included (each container before its layers)."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from walk_layers(layer)


def model_flavour(model) -> str:
    _, tf_keras = import_tf()
    return TF_KERAS if isinstance(model, tf_keras.Model) else KERAS3


def require_tf_keras(model, purpose: str) -> None:
    if model_flavour(model) != TF_KERAS:
        raise ModelLoadError(expected(f"a tf_keras (Keras 2) model for {purpose} — tfmot cannot handle "
                                      "Keras 3; re-save the model with tf_keras (TF_USE_LEGACY_KERAS=1)",
                                      "a Keras 3 model"))


def input_specs(model) -> dict[str, tuple[str, tuple]]:
    """``{name: (dtype, shape)}`` of the model's inputs, batch dimension as ``None``."""
    out = {}
    for tensor in model.inputs:
        name = tensor.name.split(":")[0]
        if "/" in name:  # tf_keras symbolic tensor names can carry a scope
            name = name.split("/")[0]
        dtype = getattr(tensor.dtype, "name", str(tensor.dtype))
        shape = tuple(None if d is None else int(d) for d in tensor.shape)
        out[name] = (dtype, (None,) + shape[1:])
    if model_flavour(model) == TF_KERAS and len(getattr(model, "input_names", [])) == len(out):
        out = dict(zip(model.input_names, out.values()))
    return out


def relaxed_specs(specs: dict[str, tuple[str, tuple]], free_axes=()) -> dict[str, tuple[str, tuple]]:
    """``specs`` (`input_specs`) with the ``(input name, axis)`` pairs of ``free_axes`` unknown.

    Examples:
        >>> relaxed_specs({"user_mask": ("float32", (None, 50))}, [("user_mask", 1)])
        {'user_mask': ('float32', (None, None))}
    """
    out = dict(specs)
    for name, axis in free_axes:
        if name not in out:
            raise ConverterConfigError(expected(f"free axes of inputs among {sorted(specs)}", name))
        dtype, shape = out[name]
        if isinstance(axis, bool) or not isinstance(axis, int) or not 0 < axis < len(shape):
            raise ConverterConfigError(expected(f"a free axis of {name} in 1..{len(shape) - 1}", axis))
        out[name] = (dtype, shape[:axis] + (None,) + shape[axis + 1:])
    return out


def output_names(model, part: str, names: list[str] | None = None) -> list[str] | None:
    """Canonical output names; ``None`` means the model already returns a dict."""
    if names:
        return list(names)
    if isinstance(model.output, dict):
        return None
    count = len(model.outputs)
    if count == 1:
        return [DEFAULT_OUTPUT.get(part, "score")]
    return [n for n in model.output_names]


def serving_function(model, part: str = "fused", names: list[str] | None = None, free_axes=()):
    """A ``tf.function`` taking canonical named inputs and returning ``{output name: tensor}``.

    Args:
        free_axes: ``(input name, axis)`` pairs traced as unknown sizes besides the batch (a
            length-free graph where the model's layers allow one).

    Returns:
        ``(function, input_signature_dict)`` where the function takes one dict argument.
    """
    tf, _ = import_tf()
    specs = relaxed_specs(input_specs(model), free_axes)
    signature = {n: tf.TensorSpec(shape, tf.as_dtype(dtype), name=n) for n, (dtype, shape) in specs.items()}
    outs = output_names(model, part, names)

    @tf.function(input_signature=[signature])
    def serve(inputs):
        result = model({n: inputs[n] for n in specs}, training=False)
        if outs is None:
            return {k: tf.identity(v, name=k) for k, v in result.items()}
        tensors = result if isinstance(result, (list, tuple)) else [result]
        if len(tensors) != len(outs):
            raise ConverterConfigError(expected(f"{len(outs)} model outputs", len(tensors)))
        return {n: tf.identity(t, name=n) for n, t in zip(outs, tensors)}

    return serve, signature


def flat_serving_function(model, part: str = "fused", names: list[str] | None = None, free_axes=()):
    """Like `serving_function` but with one positional argument per input (tf2onnx, SavedModel).

    Returns:
        ``(function, [TensorSpec …])`` in input order; outputs are a dict keyed by canonical name.
    """
    tf, _ = import_tf()
    serve, signature = serving_function(model, part, names, free_axes)
    concrete = serve.get_concrete_function()
    names_in = list(signature)
    specs = [signature[n] for n in names_in]
    flat = tf.function(lambda *args: concrete(dict(zip(names_in, args))), input_signature=specs)
    return flat, specs


def save_serving_savedmodel(model, folder: str | os.PathLike, part: str = "fused",
                            names: list[str] | None = None) -> Path:
    """Write a SavedModel whose ``serving_default`` signature uses the canonical tensor names."""
    tf, _ = import_tf()
    flat, _ = flat_serving_function(model, part, names)
    module = tf.Module()
    if model_flavour(model) == KERAS3:
        # Keras 3 layers are not tf.Module-tracked: without this the SavedModel has no weights (NaN out).
        module.keras_variables = [getattr(v, "value", v) for v in model.variables]
    else:
        module.model = model
    folder = Path(folder)
    tf.saved_model.save(module, str(folder), signatures={"serving_default": flat.get_concrete_function()})
    return folder
