"""edgerec.runtime: the lightweight package apps embed. Imports numpy and, lazily, one backend.

It never imports TensorFlow, Keras or tf2onnx (tests/runtime/test_import_boundary.py proves it).
"""
from .errors import (BackendUnavailableError, BundleError, EdgeRecError, IntegrityError,
                     MissingDependencyError, RequestError, SpecError)
from .recommend import Recommendations
from .scores import Scores
from .spec import ContextField, DenseField, FeatureSpec, TextSpec, Vocabulary

__all__ = [
    "BackendUnavailableError", "BundleError", "ContextField", "DenseField", "EdgeRecError",
    "FeatureSpec", "IntegrityError", "MissingDependencyError", "RequestError", "SpecError",
    "TextSpec", "Vocabulary", "load",
]


def load(bundle_path, backend: str = "auto", **options):
    """Load a bundle into a `Predictor` (see `edgerec.runtime.predictor.load`)."""
    from .predictor import load as _load

    return _load(bundle_path, backend=backend, **options)
