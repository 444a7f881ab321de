"""Benchmark a bundle beside the raw backends and Keras: latency, throughput, runtime memory, size, ΔAUC.

Writes OUT/bench.json, OUT/bench.md and PNG plots. Exit status 0 when it ran, 1 when the load test
failed or every configuration did, 2 on a usage or environment error.

Examples:
  edgerec bench demo-out/bundle --out demo-out/bench
  edgerec bench runs/din-bundle --out runs/bench --batches 1,64,256 --no-keras
  edgerec bench runs/v1 --out runs/load --load-test --swap-to runs/v2 --load-only
  edgerec bench --scale 1e4,1e5,1e6 --out runs/scale    # cost vs catalogue size: scale.json + scale.png
"""
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


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", nargs="?", default=None,
                        help="bundle directory (manifest.json + artifacts); omitted with --scale")
    parser.add_argument("--out", required=True, help="report folder: bench.json, bench.md, *.png (scale.json, "
                                                     "scale.png with --scale)")
    parser.add_argument("--scale", metavar="SIZES", default=None,
                        help="instead of a bundle: train, export and serve synthetic cascades of these catalogue "
                             "sizes, e.g. 1e4,1e5,1e6 (benchmarks.scale)")
    parser.add_argument("--keras", metavar="MODEL_DIR", default=None,
                        help="Keras model directory for the baselines (default: the bundle's recorded source)")
    parser.add_argument("--no-keras", action="store_true", help="skip the Keras baselines")
    parser.add_argument("--no-predict", action="store_true", help="skip the slow model.predict baseline")
    parser.add_argument("--budget-s", type=float, default=1.0, help="time budget per configuration (s)")
    parser.add_argument("--max-iters", type=int, default=5000, help="iteration cap per configuration")
    parser.add_argument("--warmup", type=int, default=10, help="untimed warm-up calls per configuration")
    parser.add_argument("--batches", type=_int_list, default=[1, 256], help="batch sizes, e.g. 1,256")
    parser.add_argument("--threads", type=_int_list, default=[1], help="thread counts, e.g. 1,2")
    parser.add_argument("--candidates", type=_int_list, default=[200, 1000], help="candidate counts N for 1 user × N")
    parser.add_argument("--backend", action="append", choices=["litert", "onnxruntime"],
                        help="restrict to a backend (repeatable)")
    parser.add_argument("--isolate", action="store_true", help="one subprocess per configuration group")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile section")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the runtime-memory probe (a runtime-only process per backend)")
    parser.add_argument("--no-plots", action="store_true", help="write bench.json and bench.md only")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, no summary")
    load = parser.add_argument_group("load test with a hot swap (bench.json 'load_test')")
    load.add_argument("--load-test", action="store_true", help="run the threaded load test with a swap to --swap-to")
    load.add_argument("--swap-to", metavar="BUNDLE_B", default=None, help="bundle swapped in halfway (--load-test)")
    load.add_argument("--load-requests", type=int, default=50_000, help="calls in total over all threads")
    load.add_argument("--load-threads", type=int, default=8, help="load threads")
    load.add_argument("--load-swap-at", type=float, default=0.5, help="fraction of calls done when swap() runs")
    load.add_argument("--load-bad-swap", action="store_true", help="first try a swap to a corrupted copy of BUNDLE_B")
    load.add_argument("--load-only", action="store_true", help="skip the latency grid, run only the load test")


def run(args: argparse.Namespace) -> int:
    from edgerec.benchmarks.bench import BenchOptions, LoadTestOptions, run_bench
    from edgerec.benchmarks.loadtest import load_test_markdown
    from edgerec.benchmarks.summary import summary_table
    from edgerec.runtime.errors import expected

    if args.scale is not None:
        from edgerec.benchmarks.scale import parse_sizes, run_scale, scale_lines

        if args.bundle is not None:
            print("edgerec bench: " + expected("a BUNDLE or --scale, not both", args.bundle), file=sys.stderr)
            return 2
        say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
        report = run_scale(parse_sizes(args.scale), args.out, say=say)
        if not args.quiet:
            print("\n".join(scale_lines(report, args.out)))
        return 0
    if args.bundle is None:
        print("edgerec bench: " + expected("a BUNDLE directory or --scale SIZES", "neither"), file=sys.stderr)
        return 2
    wants_load = args.load_test or args.load_only
    if wants_load and not args.swap_to:
        print("edgerec bench: " + expected("--swap-to BUNDLE_B with --load-test", "none"), file=sys.stderr)
        return 2
    options = BenchOptions(keras_dir=args.keras, keras=not args.no_keras, keras_predict=not args.no_predict,
                           budget_s=args.budget_s, max_iters=args.max_iters, warmup_iters=args.warmup,
                           batches=args.batches, threads=args.threads, candidates=args.candidates,
                           backends=args.backend, isolate=args.isolate, profile=not args.no_profile,
                           memory=not args.no_memory, plots=not args.no_plots, progress=not args.quiet)
    load = LoadTestOptions(args.swap_to, requests=args.load_requests, threads=args.load_threads,
                           swap_at=args.load_swap_at, bad_swap_first=args.load_bad_swap) if wants_load else None
    outcome = run_bench(args.bundle, args.out, options, load_test=load, load_only=args.load_only)
    if not args.quiet:
        if args.load_only:
            print("\n".join(load_test_markdown(outcome.report["load_test"])))
        else:
            print(summary_table(outcome.report))
            if args.load_test and outcome.report["load_test"]["passed"]:
                print("load test with a hot swap: passed (figures in bench.md)")
            plots = f"{len(outcome.plots)} plots" if outcome.plots else \
                "no plots" + ("" if args.no_plots else " (see the notes above)")
            print(f"\nwrote {args.out}/bench.json, {args.out}/bench.md and {plots}")
    for failure in outcome.failures:
        print(f"edgerec bench: {failure}", file=sys.stderr)
    return 0 if outcome.passed else 1
