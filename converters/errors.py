"""Typed errors of the converters. Messages follow the house style "Expected …, received: …"."""
from __future__ import annotations

from edgerec.runtime.errors import EdgeRecError, expected

__all__ = ["ConverterError", "ConverterConfigError", "ModelLoadError", "ConversionError",
           "PruningError", "CacheError", "ValidationError", "expected"]


class ConverterError(EdgeRecError):
    """Base class of every converter failure."""


class ConverterConfigError(ConverterError, ValueError):
    """A pass configuration or a pass input is invalid (bad sparsity, unknown mode, missing file)."""


class ModelLoadError(ConverterError):
    """A Keras model cannot be found or loaded, or has the wrong Keras flavour for a pass."""


class ConversionError(ConverterError, RuntimeError):
    """A conversion mode cannot be produced. ``blocked_by`` names the ops/layers that blocked it.

    Args:
        message: what failed.
        mode: the conversion mode (``"int8"``, ``"static_qdq"`` …).
        blocked_by: op or layer names parsed from the tool's error, most specific first.
    """

    def __init__(self, message: str, mode: str = "", blocked_by: list[str] | None = None):
        self.mode = mode
        self.blocked_by = list(blocked_by or [])
        super().__init__(message)


class PruningError(ConverterError, RuntimeError):
    """Pruning ran but did not reach its target (or could not run)."""


class CacheError(ConverterError):
    """A cached pass result is unreadable or fails its sha256 check."""


class ValidationError(ConverterError, ValueError):
    """An artifact differs from its Keras reference beyond the declared tolerance."""
