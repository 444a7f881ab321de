"""Re-validate a bundle: sha256 of every file, examples replay, and (with --keras) the trained model.

Examples:
  edgerec validate runs/din-bundle
  edgerec validate runs/din-bundle --examples-only
"""
from __future__ import annotations

import importlib

_IMPL = "edgerec.converters.commands"


def configure(parser) -> None:
    importlib.import_module(_IMPL).configure("validate", parser)


def run(args) -> int:
    return importlib.import_module(_IMPL).run("validate", args)
