"""Run the whole pipeline on the embedded synthetic data: train, compress, export, validate, benchmark.

Examples:
  edgerec demo                                   # synthetic data, report in demo-out/
  edgerec demo --data movielens:../shared/data/movielens-latest-small --out ml-demo
  edgerec demo --tiny --out /tmp/demo            # a few hundred users, 1 epoch, short bench
"""
from __future__ import annotations

import importlib

_IMPL = "edgerec.sdk.demo"


def configure(parser) -> None:
    importlib.import_module(_IMPL).configure("demo", parser)


def run(args) -> int:
    return importlib.import_module(_IMPL).run("demo", args)
