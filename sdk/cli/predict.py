"""Score JSON-lines requests with a bundle (one output line per input line).

Examples:
  edgerec predict demo-out/bundle --input demo-out/bundle/examples.jsonl
  edgerec predict demo-out/bundle --input requests.jsonl --output scores.jsonl --backend litert
"""
from __future__ import annotations

import importlib

_IMPL = "edgerec.runtime.commands"


def configure(parser) -> None:
    importlib.import_module(_IMPL).configure("predict", parser)


def run(args) -> int:
    return importlib.import_module(_IMPL).run("predict", args)
