"""Inference backends behind one interface; see `registry` for the name -> import-string map.

    from edgerec.runtime.backends import create_backend, available_backends
    with create_backend("litert", "model.tflite", num_threads=1) as backend:
        outputs = backend.run({"hist_items": hist, "cand_item": cand})
"""
from .base import Backend
from .registry import BACKEND_FORMATS, BACKENDS, available_backends, backend_class, create_backend, is_available

__all__ = ["BACKEND_FORMATS", "BACKENDS", "Backend", "available_backends", "backend_class",
           "create_backend", "is_available"]
