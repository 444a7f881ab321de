"""edgerec: train a recommender, shrink and compile it, prove it still ranks well, embed and measure it.

Start with `edgerec demo` (synthetic data end to end), then `edgerec info demo-out/bundle`.
Each command's own `--help` lists its options with their defaults and examples.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .logs import configure_logging

# name -> module under edgerec.sdk.cli. A command module defines ``configure(parser)`` and
# ``run(args) -> int``; its docstring's first line is the one-line help, the rest (examples) the
# epilog. Heavy imports happen inside ``run``, so `--help` works without the extras.
COMMANDS: dict[str, str] = {
    "demo": "edgerec.sdk.cli.demo",
    "train": "edgerec.sdk.cli.train",
    "update": "edgerec.sdk.cli.update",
    "export": "edgerec.sdk.cli.export",
    "validate": "edgerec.sdk.cli.validate",
    "info": "edgerec.sdk.cli.info",
    "check": "edgerec.sdk.cli.check",
    "predict": "edgerec.sdk.cli.predict",
    "recommend": "edgerec.sdk.cli.recommend",
    "pack": "edgerec.sdk.cli.pack",
    "sign": "edgerec.sdk.cli.sign",
    "bench": "edgerec.sdk.cli.bench",
    "env": "edgerec.sdk.cli.env",
}

# Top-level module of a missing import -> the extra that provides it.
EXTRAS = {
    "tensorflow": "train", "tf_keras": "train", "tensorflow_model_optimization": "train",
    "tf2onnx": "train", "onnx": "train", "onnxruntime": "onnx", "ai_edge_litert": "litert",
    "tflite_runtime": "litert", "matplotlib": "bench", "psutil": "bench", "tqdm": "train",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (where it has a meaningful one); descriptions and examples keep
    their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or not action.option_strings or action.required:
            return text
        if default is None or default is False or default is argparse.SUPPRESS or default == []:
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {str(shown).replace('%', '%%')})"


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("edgerec")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _split_doc(doc: str | None) -> tuple[str, str]:
    lines = (doc or "").strip().splitlines()
    return (lines[0].strip() if lines else ""), "\n".join(lines[1:]).strip()


def build_parser() -> argparse.ArgumentParser:
    summary, rest = _split_doc(__doc__)
    parser = argparse.ArgumentParser(prog="edgerec", description=summary, epilog=rest,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"edgerec {version()}")
    parser.add_argument("--verbose", action="store_true",
                        help="also show TensorFlow, ONNX Runtime and converter logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        help_text, epilog = _split_doc(module.__doc__)
        command_parser = sub.add_parser(name, help=help_text, description=help_text, epilog=epilog,
                                        formatter_class=HelpFormatter)
        module.configure(command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from edgerec.runtime.errors import EdgeRecError, MissingDependencyError

    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    module = importlib.import_module(COMMANDS[args.command])
    try:
        return int(module.run(args) or 0)
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
