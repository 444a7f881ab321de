"""What a user would otherwise run: Keras (eager, tf.function, model.predict) and the raw backends.

Every function returns a `Prepared` (the call to time). TensorFlow/Keras is imported only in
the Keras baselines, through `edgerec.converters` (which decides the Keras flavour first);
onnxruntime and ai_edge_litert only in their own raw baselines.

* ``keras_eager``       – ``model(x, training=False)`` called eagerly,
* ``keras_tf_function`` – the same call compiled once with ``tf.function`` (the honest baseline),
* ``keras_predict``     – ``model.predict(x, verbose=0)`` (~40–50 ms fixed cost per call),
* ``raw_onnxruntime``   – ``InferenceSession.run`` on the artifact, CPU provider, same threads,
* ``raw_litert``        – the LiteRT signature runner ``runner(**feeds)``,
* ``raw_litert_direct`` – LiteRT ``set_tensor``/``invoke``/``get_tensor`` (the cheapest Python path).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np

from edgerec.runtime.errors import BundleError, MissingDependencyError, expected

from .harness import Prepared

KERAS_MODES = ("keras_eager", "keras_tf_function", "keras_predict")
MODEL_INFO = "edgerec_model.json"


def resolve_keras_dir(explicit: str | Path | None, manifest_model: Mapping | None, bundle_dir: str | Path) -> Path | None:
    """The Keras model directory: ``--keras`` if given, else the bundle's recorded source (or None)."""
    candidates = []
    if explicit:
        candidates.append(Path(explicit))
    elif manifest_model and manifest_model.get("source"):
        source = Path(str(manifest_model["source"]))
        candidates += [source] if source.is_absolute() else [Path(bundle_dir) / source, source]
    for path in candidates:
        if (path / MODEL_INFO).is_file():
            return path.resolve()
        if explicit:
            raise BundleError(expected(f"a model directory holding {MODEL_INFO}", str(path)))
    return None


def load_fused_keras(model_dir: str | Path):
    """Load the fused Keras model of an edgerec model directory (custom layers registered first)."""
    model_dir = Path(model_dir)
    try:
        info = json.loads((model_dir / MODEL_INFO).read_text("utf-8"))
        fused = info["parts"]["fused"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise BundleError(expected(f"{MODEL_INFO} with parts.fused in {model_dir}", str(err))) from None
    from edgerec.converters.keras_io import load_keras_model

    return load_keras_model(model_dir / fused, info.get("custom_objects_module"))


def keras_input_names(model) -> list[str]:
    return [t.name.split(":")[0] for t in model.inputs] if hasattr(model, "inputs") else list(model.input_names)


def keras_baseline(mode: str, model_dir: str | Path, feeds: Mapping[str, np.ndarray], threads: int) -> Prepared:
    """Time the Keras model of ``model_dir`` called in ``mode`` (one of `KERAS_MODES`)."""
    if mode not in KERAS_MODES:
        raise ValueError(expected(f"a Keras mode in {KERAS_MODES}", mode))
    from edgerec.converters.tfenv import import_tf

    tf, _ = import_tf()
    _set_tf_threads(tf, threads)
    model = load_fused_keras(model_dir)
    names = keras_input_names(model)
    missing = [n for n in names if n not in feeds]
    if missing:
        raise BundleError(expected(f"bench inputs for the Keras model's inputs {names}", f"missing {missing}"))
    x = {n: tf.constant(feeds[n]) for n in names}
    batch = int(next(iter(feeds.values())).shape[0])
    if mode == "keras_eager":
        call = lambda: model(x, training=False).numpy()  # noqa: E731
    elif mode == "keras_tf_function":
        compiled = tf.function(lambda inputs: model(inputs, training=False), reduce_retracing=True)
        call = lambda: compiled(x).numpy()  # noqa: E731
    else:
        host = {n: feeds[n] for n in names}
        call = lambda: model.predict(host, batch_size=batch, verbose=0)  # noqa: E731
    return Prepared(call, close=lambda: None, extra={"keras_model": str(model_dir),
                                                     "tf_threads": tf.config.threading.get_intra_op_parallelism_threads()})


def _set_tf_threads(tf, threads: int) -> None:
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # TF already initialised in this process: the first setting stays (recorded as tf_threads)


def raw_onnxruntime(model_path: str | Path, feeds: Mapping[str, np.ndarray], threads: int) -> Prepared:
    """``InferenceSession.run`` with the same session settings edgerec uses (CPU, all graph optimisations)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependencyError("onnxruntime", "onnx", "the raw ONNX Runtime baseline") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    x = {n: np.ascontiguousarray(feeds[n]) for n in names}
    outputs = [o.name for o in session.get_outputs()]
    return Prepared(lambda: session.run(outputs, x), extra={"providers": ",".join(session.get_providers())})


def _litert_interpreter(model_path, threads):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise MissingDependencyError("ai_edge_litert", "litert", "the raw LiteRT baseline") from None
    from edgerec.runtime.shared_tables import ends_with_trailer, whole_tflite

    path = Path(model_path)
    if not ends_with_trailer(path):
        return Interpreter(model_path=str(path), num_threads=threads)
    # a bundle's stripped .tflite: its shared tables spliced back in, as LiteRTBackend does
    return Interpreter(model_content=whole_tflite(path.read_bytes(), None, path.parent), num_threads=threads)


def raw_litert(model_path: str | Path, feeds: Mapping[str, np.ndarray], threads: int) -> Prepared:
    """The LiteRT signature runner, fed by name (converted input order is alphabetical)."""
    interpreter = _litert_interpreter(model_path, threads)
    runner = interpreter.get_signature_runner()
    x = {n: np.ascontiguousarray(feeds[n]) for n in runner.get_input_details()}
    return Prepared(lambda: runner(**x))


def raw_litert_direct(model_path: str | Path, feeds: Mapping[str, np.ndarray], threads: int) -> Prepared:
    """LiteRT's tensor API: resize + allocate once, then set_tensor / invoke / get_tensor per call."""
    interpreter = _litert_interpreter(model_path, threads)
    signature = interpreter.get_signature_list()
    key = next(iter(signature))
    runner = interpreter.get_signature_runner(key)
    inputs = {n: d["index"] for n, d in runner.get_input_details().items()}
    outputs = [d["index"] for d in runner.get_output_details().values()]
    del runner  # a live runner blocks allocate_tensors()
    for name, index in inputs.items():
        interpreter.resize_tensor_input(index, list(feeds[name].shape), strict=False)
    interpreter.allocate_tensors()
    x = [(inputs[n], np.ascontiguousarray(feeds[n])) for n in inputs]

    def call():
        for index, value in x:
            interpreter.set_tensor(index, value)
        interpreter.invoke()
        return [interpreter.get_tensor(i) for i in outputs]
    return Prepared(call)


RAW_BASELINES = {"raw_onnxruntime": raw_onnxruntime, "raw_litert": raw_litert, "raw_litert_direct": raw_litert_direct}
