"""Prune, quantize and compile a model into a validated, selected bundle.

Examples:
  edgerec export runs/din --out runs/din-bundle
  edgerec export runs/din --prune 0.5 --quantize int8 --targets tflite,onnx --out runs/din-bundle
  edgerec export my_model.keras --data rows.npz --out my-bundle     # bring your own Keras model
"""
from __future__ import annotations

import importlib

_IMPL = "edgerec.converters.commands"


def configure(parser) -> None:
    importlib.import_module(_IMPL).configure("export", parser)


def run(args) -> int:
    return importlib.import_module(_IMPL).run("export", args)
