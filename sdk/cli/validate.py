"""Re-validate a bundle: sha256 of every file, examples replay, and (with --keras) the trained model.

Exit code 0 only when every check in scope ran and passed; 1 when one failed, or could not run
(status "not_verified" with the reason: no --keras, no TensorFlow, a backend not installed, or
Keras models that are not the ones the bundle was converted from). Nothing the bundle names is
imported or loaded: the Keras model is the one given with --keras. The last line printed is JSON.

Examples:
  edgerec validate runs/din-bundle --keras runs/din
  edgerec validate runs/din-bundle --keras runs/din-bundle.pruned      # a bundle exported with --prune
  edgerec validate runs/din-bundle --examples-only --backends onnxruntime
  edgerec validate my-bundle --keras my_model.keras --data rows.npz
  edgerec validate runs/cascade --keras runs/din --heldout runs/din/heldout_users.npz   # cascade re-measured
"""
from __future__ import annotations

import argparse
import json
import sys


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def configure(parser) -> None:
    parser.add_argument("bundle", help="bundle directory (or .tar.gz archive)")
    parser.add_argument("--keras", default=None, metavar="MODEL_DIR",
                        help="the trained model to compare with: a MODEL_DIR (for a pruned bundle, the BUNDLE.pruned "
                             "folder its export wrote), or a saved Keras model with --data")
    parser.add_argument("--model-dir", dest="keras", help=argparse.SUPPRESS)   # older name of --keras
    parser.add_argument("--data", default=None, help=".npz of held-out rows replacing the model dir's validation rows")
    parser.add_argument("--max-groups", type=int, default=None, help="Keras comparison on the first N ranking groups")
    parser.add_argument("--heldout", default=None, metavar="HELDOUT_NPZ",
                        help="held-out users (a model dir's heldout_users.npz) for re-measuring a cascade bundle's "
                             "full-catalogue metrics (default: the --keras MODEL_DIR's)")
    parser.add_argument("--examples-only", action="store_true",
                        help="check sha256 and the examples replay only (ok without --keras)")
    parser.add_argument("--backends", type=_csv, default=None,
                        help="comma list of backends to check (default: every backend with artifacts in the bundle)")


def run(args) -> int:
    from edgerec.converters.revalidate import validate_bundle

    result = validate_bundle(args.bundle, keras=args.keras, data=args.data, max_groups=args.max_groups,
                             examples_only=args.examples_only, backends=args.backends,
                             heldout=args.heldout)
    for failure in result.failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    for reason in result.not_verified:
        print(f"not verified: {reason}", file=sys.stderr)
    print(json.dumps(result.to_dict()))
    return result.exit_code
