"""The one place that decides the Keras flavour before TensorFlow is first imported.

tfmot pruning needs tf_keras (Keras 2): TF_USE_LEGACY_KERAS=1 must be set before TF loads,
so `edgerec.sdk` and `edgerec.converters` call `prefer_legacy_keras()` at package import.
Keras 3 models (bring-your-own) are still loadable through `import keras` explicitly.
"""
from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)


def prefer_legacy_keras() -> None:
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def import_tf():
    """Return ``(tensorflow, tf_keras)``, raising `MissingDependencyError` naming the extra."""
    from .native_log import native_output_logged

    prefer_legacy_keras()
    try:
        with native_output_logged(logger, "TensorFlow start-up"):   # absl/oneDNN/CUDA probing lines
            import tensorflow as tf
            import tf_keras
    except ImportError as err:
        from edgerec.runtime.errors import MissingDependencyError

        raise MissingDependencyError(getattr(err, "name", None) or "tensorflow", "train",
                                     "training and conversion") from err
    return tf, tf_keras
