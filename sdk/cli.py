"""The `edgerec` console script. Each subcommand's module is imported only when it runs.

A command module defines ``configure(name, parser)`` and ``run(name, args) -> int`` and
imports its heavy dependencies inside ``run``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("edgerec.sdk.commands", "train a recommendation model on synthetic or MovieLens data"),
    "update": ("edgerec.sdk.commands_update",
               "warm-start a model on new events (online update), optionally export a new bundle version"),
    "export": ("edgerec.converters.commands", "prune/quantize/export a model into a validated bundle"),
    "validate": ("edgerec.converters.commands", "re-validate a bundle's artifacts"),
    "predict": ("edgerec.runtime.commands", "score JSON-lines requests with a bundle"),
    "check": ("edgerec.runtime.commands", "replay a bundle's examples.jsonl on this machine"),
    "bench": ("edgerec.benchmarks.commands", "benchmark a bundle against raw backends and Keras"),
    "demo": ("edgerec.sdk.demo", "data -> train -> compress -> export -> validate -> benchmark"),
}

# Top-level module of a missing import -> the extra that provides it.
EXTRAS = {
    "tensorflow": "train", "tf_keras": "train", "tensorflow_model_optimization": "train",
    "tf2onnx": "train", "onnx": "train", "onnxruntime": "onnx", "ai_edge_litert": "litert",
    "tflite_runtime": "litert", "matplotlib": "bench", "psutil": "bench", "tqdm": "train",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgerec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        try:
            importlib.import_module(module).configure(name, command_parser)
        except ModuleNotFoundError as err:
            # A command whose module needs an extra that is not installed stays listed and
            # says which extra to install; the other commands keep working.
            top = (err.name or "").split(".")[0]
            hint = f"pip install 'edgerec[{EXTRAS[top]}]'" if top in EXTRAS else str(err)
            command_parser.set_defaults(_unavailable=f"needs the optional module '{top}': {hint}")
    return parser


def main(argv: list[str] | None = None) -> int:
    from edgerec.runtime.errors import EdgeRecError, MissingDependencyError

    args = build_parser().parse_args(argv)
    if getattr(args, "_unavailable", None):
        print(f"edgerec {args.command}: not available in this install ({args._unavailable})", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args.command, args) or 0)
    except MissingDependencyError as err:
        print(f"edgerec {args.command}: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        top = (err.name or "").split(".")[0]
        if top not in EXTRAS:
            raise
        print(f"edgerec {args.command}: needs the optional module '{top}', received: not installed. "
              f"Install it with: pip install 'edgerec[{EXTRAS[top]}]'", file=sys.stderr)
        return 2
    except EdgeRecError as err:
        print(f"edgerec {args.command}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
