"""`edgerec bench BUNDLE --out DIR`: time a bundle against the raw backends and Keras, write a report."""
from __future__ import annotations

import argparse
import sys


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"Expected a comma-separated list of ints, received: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"Expected positive ints, received: {text!r}")
    return values


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="bundle directory (manifest.json + artifacts)")
    parser.add_argument("--out", required=True, help="report folder: bench.json, bench.md, *.png")
    parser.add_argument("--keras", metavar="MODEL_DIR", default=None,
                        help="Keras model directory for the baselines (default: the bundle's recorded source)")
    parser.add_argument("--no-keras", action="store_true", help="skip the Keras baselines")
    parser.add_argument("--no-predict", action="store_true", help="skip the slow model.predict baseline")
    parser.add_argument("--budget-s", type=float, default=1.0, help="time budget per configuration (s)")
    parser.add_argument("--max-iters", type=int, default=5000, help="iteration cap per configuration")
    parser.add_argument("--warmup", type=int, default=10, help="untimed warm-up calls per configuration")
    parser.add_argument("--batches", type=_int_list, default=[1, 256], help="batch sizes, e.g. 1,256")
    parser.add_argument("--threads", type=_int_list, default=[1], help="thread counts, e.g. 1,2")
    parser.add_argument("--candidates", type=_int_list, default=[100, 1000], help="candidate counts N for 1 user × N")
    parser.add_argument("--backend", action="append", choices=["litert", "onnxruntime"],
                        help="restrict to a backend (repeatable)")
    parser.add_argument("--isolate", action="store_true", help="one subprocess per configuration group")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile section")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no summary")


def run(name: str, args: argparse.Namespace) -> int:
    from .bench import benchmark_bundle
    from .summary import summary_table

    report = benchmark_bundle(args.bundle, args.out, keras_dir=args.keras, keras=not args.no_keras,
                              keras_predict=not args.no_predict, budget_s=args.budget_s, max_iters=args.max_iters,
                              warmup_iters=args.warmup, batches=args.batches, threads=args.threads,
                              candidates=args.candidates, backends=args.backend, isolate=args.isolate,
                              profile=not args.no_profile, progress=not args.quiet)
    if not args.quiet:
        print(summary_table(report))
        print(f"\nwrote {args.out}/bench.json, {args.out}/bench.md and {len(report.get('plots', []))} plots")
    failed = [r for r in report["results"] if r.get("error")]
    if failed and len(failed) == len(report["results"]):
        print("edgerec bench: every configuration failed; see bench.md", file=sys.stderr)
        return 1
    return 0
