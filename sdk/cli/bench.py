"""Benchmark a bundle beside the raw backends and Keras: latency, throughput, memory, size, ΔAUC.

Examples:
  edgerec bench demo-out/bundle --out demo-out/bench
  edgerec bench runs/din-bundle --out runs/bench --batches 1,64,256 --no-keras
"""
from __future__ import annotations

import importlib

_IMPL = "edgerec.benchmarks.commands"


def configure(parser) -> None:
    importlib.import_module(_IMPL).configure("bench", parser)


def run(args) -> int:
    return importlib.import_module(_IMPL).run("bench", args)
