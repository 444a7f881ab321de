"""Show what a bundle holds: parts, selected artifacts per backend, inputs, the request format, sizes, validation figures.

Reads the manifest, feature spec and examples only (no model is loaded; TensorFlow is not needed).
The sha256 of every file is checked and reported.

Examples:
  edgerec info demo-out/bundle
  edgerec info bundle.tar.gz --json
"""
from __future__ import annotations

import json


def configure(parser) -> None:
    parser.add_argument("bundle", help="bundle directory or .tar.gz")
    parser.add_argument("--json", action="store_true", help="print the description as JSON")


def run(args) -> int:
    from edgerec.runtime.describe import describe_bundle, render_info

    info = describe_bundle(args.bundle)
    print(json.dumps(info, indent=2) if args.json else render_info(info))
    return 0
