"""Replay a bundle's examples.jsonl on this machine, per backend, against the trained model's outputs.

Each artifact a backend serves (the fused model, and user_encoder -> scorer) must reproduce the
examples' expected outputs within the replay tolerance edgerec declares for its precision
(edgerec.runtime.contract.REPLAY_TOLERANCES); the bundle's recorded figures may only tighten it.
Exit code 1 when any artifact fails.

Examples:
  edgerec check demo-out/bundle
  edgerec check demo-out/bundle --backend onnxruntime --json
  edgerec check bundle.tar.gz --tolerance 0.05
"""
from __future__ import annotations

import json

BACKEND_CHOICES = ("all", "auto", "onnxruntime", "litert", "tensorrt")


def configure(parser) -> None:
    parser.add_argument("bundle", help="bundle directory or .tar.gz")
    parser.add_argument("--backend", default="all", choices=BACKEND_CHOICES,
                        help="'all': every installed backend with artifacts in the bundle")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="bound on worst and mean |diff| instead of the declared per-precision one")
    parser.add_argument("--num-threads", type=int, default=None, help="backend threads (default: the backend's)")
    parser.add_argument("--trusted-key", action="append", default=None, metavar="PUBLIC.pem",
                        help="refuse the bundle unless its manifest is signed by this Ed25519 key (repeatable; "
                             "see `edgerec sign`)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON document")


def run(args) -> int:
    from edgerec.runtime.examples import check_bundle

    options = {"num_threads": args.num_threads} if args.num_threads else {}
    if args.trusted_key:
        options["trusted_keys"] = args.trusted_key
    results = check_bundle(args.bundle, backend=args.backend, tolerance=args.tolerance, **options)
    if args.json:
        print(json.dumps({"bundle": str(args.bundle), "passed": all(r.passed for r in results),
                          "results": [r.to_dict() for r in results]}, indent=2))
    else:
        for result in results:
            print(result.describe())
    return 0 if all(r.passed for r in results) else 1
