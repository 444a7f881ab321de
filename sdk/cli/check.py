"""Replay a bundle's examples.jsonl on this machine, per backend, against the trained model's outputs.

Examples:
  edgerec check demo-out/bundle
  edgerec check demo-out/bundle --backend onnxruntime
"""
from __future__ import annotations

import importlib

_IMPL = "edgerec.runtime.commands"


def configure(parser) -> None:
    importlib.import_module(_IMPL).configure("check", parser)


def run(args) -> int:
    return importlib.import_module(_IMPL).run("check", args)
