"""Typed errors raised by edgerec. Every message says what was expected and what was received."""


class EdgeRecError(Exception):
    """Base class of every error edgerec raises on purpose."""


class SpecError(EdgeRecError, ValueError):
    """A feature spec or vocabulary is malformed."""


class RequestError(EdgeRecError, ValueError):
    """A request (raw dict or tensor) does not match what the model expects."""


class BundleError(EdgeRecError):
    """A bundle is missing, malformed, tampered with, or points outside itself."""


class IntegrityError(BundleError):
    """A bundle file's sha256 or size differs from its manifest entry."""


class BackendUnavailableError(EdgeRecError, RuntimeError):
    """A backend or execution provider was requested but cannot be used here."""


class MissingDependencyError(EdgeRecError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, module: str, extra: str, purpose: str = ""):
        self.module, self.extra = module, extra
        what = f" for {purpose}" if purpose else ""
        super().__init__(
            f"Expected the optional module '{module}'{what}, received: not installed. "
            f"Install it with: pip install 'edgerec[{extra}]'"
        )


def expected(what: str, received: object) -> str:
    """Format the house style: 'Expected …, received: …'."""
    return f"Expected {what}, received: {received!r}"
