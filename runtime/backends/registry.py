"""Backend name -> import string, and the factory every caller uses."""
from __future__ import annotations

import importlib
import importlib.util

from ..contract import FORMAT_FOR_BACKEND
from ..errors import BackendUnavailableError, BundleError, EdgeRecError, expected

BACKENDS: dict[str, str] = {
    "litert": "edgerec.runtime.backends.litert:LiteRTBackend",
    "onnxruntime": "edgerec.runtime.backends.ort:OrtBackend",
    "tensorrt": "edgerec.runtime.backends.tensorrt:TensorRTBackend",   # serialized engines, GPU only
}
# Which artifact format each backend runs, and the module(s) that must be importable.
BACKEND_FORMATS = FORMAT_FOR_BACKEND
BACKEND_MODULES = {"litert": ("ai_edge_litert", "tflite_runtime"), "onnxruntime": ("onnxruntime",),
                   "tensorrt": ("tensorrt",)}
BACKEND_EXTRAS = {"litert": "litert", "onnxruntime": "onnx", "tensorrt": "gpu"}


def backend_class(name: str):
    if name not in BACKENDS:
        raise BackendUnavailableError(expected(f"a backend name in {sorted(BACKENDS)}", name))
    module_name, _, attr = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def is_available(name: str) -> bool:
    """True when the backend's Python module is installed (found without importing it)."""
    if name not in BACKENDS:
        return False
    for module in BACKEND_MODULES[name]:
        try:
            if importlib.util.find_spec(module) is not None:
                return True
        except (ImportError, ValueError):
            continue
    return False


def available_backends() -> list[str]:
    """Names of the backends whose module is installed here."""
    return [name for name in BACKENDS if is_available(name)]


def create_backend(name: str, model_path, model_bytes: bytes | None = None, **options):
    """Load a model into backend ``name`` ("litert" | "onnxruntime" | "tensorrt").

    Args:
        name: the backend.
        model_path: the model file (read by the backend unless ``model_bytes`` is given; always
            named in messages).
        model_bytes: the model itself, already read (and verified): the backend loads these
            bytes and never opens ``model_path``.
        **options: backend options (num_threads, providers, ...).

    Unknown name -> BackendUnavailableError; module not installed -> MissingDependencyError
    (naming the pip extra); unknown option -> BackendUnavailableError; a model the backend
    cannot load (corrupt, unsupported) -> BundleError naming the file.
    """
    cls = backend_class(name)
    if model_bytes is not None:
        options["model_bytes"] = model_bytes
    try:
        return cls(model_path, **options)
    except EdgeRecError:
        raise
    except TypeError as err:
        if "unexpected keyword" in str(err) or "positional argument" in str(err):
            raise BackendUnavailableError(expected(f"options accepted by the {name} backend", str(err))) from None
        raise BundleError(expected(f"a model file {name} can load: {model_path}",
                                   f"TypeError: {str(err)[:300]}")) from None
    except Exception as err:  # noqa: BLE001 - backends raise their own types on corrupt models
        raise BundleError(expected(f"a model file {name} can load: {model_path}",
                                   f"{type(err).__name__}: {str(err)[:300]}")) from None
