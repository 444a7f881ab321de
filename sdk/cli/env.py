"""Show versions, backends (with the ONNX Runtime providers they list) and the pip extras still missing here.

TensorFlow is never imported, so this is quick and works without the train extra.

Examples:
  edgerec env
  edgerec env --json
"""
from __future__ import annotations

import json


def configure(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    from edgerec.runtime.environment import environment_report, render_environment

    report = environment_report()
    print(json.dumps(report, indent=2) if args.json else render_environment(report))
    return 0
