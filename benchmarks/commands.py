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
    load = parser.add_argument_group("load test with a hot swap (bench.json 'load_test')")
    load.add_argument("--load-test", action="store_true", help="run the threaded load test with a swap to --swap-to")
    load.add_argument("--swap-to", metavar="BUNDLE_B", default=None, help="bundle swapped in halfway (--load-test)")
    load.add_argument("--load-requests", type=int, default=50_000, help="calls in total over all threads")
    load.add_argument("--load-threads", type=int, default=8, help="load threads")
    load.add_argument("--load-swap-at", type=float, default=0.5, help="fraction of calls done when swap() runs")
    load.add_argument("--load-bad-swap", action="store_true", help="first try a swap to a corrupted copy of BUNDLE_B")
    load.add_argument("--load-only", action="store_true", help="skip the latency grid, run only the load test")


def _load_test(args: argparse.Namespace, report: dict | None) -> dict:
    """Run the load test and write it into the report (a fresh one with --load-only)."""
    from .loadtest import run_load_test
    from .report import write_report

    if report is None:
        from edgerec.runtime.manifest import load_manifest

        from .machine import machine_info
        from .report import build_report
        manifest = load_manifest(args.bundle, verify=True)
        bundle = {"path": str(args.bundle), "model": manifest.model, "selected": manifest.selected}
        report = build_report([], machine_info(), bundle, {"load_only": True})
    backend = args.backend[0] if args.backend else "auto"
    report["load_test"] = run_load_test(args.bundle, args.swap_to, threads=args.load_threads,
                                        requests=args.load_requests, swap_at=args.load_swap_at, backend=backend,
                                        bad_swap_first=args.load_bad_swap)
    write_report(report, args.out)
    return report


def run(name: str, args: argparse.Namespace) -> int:
    from .bench import benchmark_bundle
    from .summary import summary_table

    if (args.load_test or args.load_only) and not args.swap_to:
        print("edgerec bench: Expected --swap-to BUNDLE_B with --load-test, received: none", file=sys.stderr)
        return 2
    if args.load_only:
        section = _load_test(args, None)["load_test"]
        if not args.quiet:
            from .loadtest import load_test_markdown
            print("\n".join(load_test_markdown(section)))
        if not section["passed"]:
            print("edgerec bench: load test failed: " + "; ".join(section["failures"]), file=sys.stderr)
        return 0 if section["passed"] else 1
    report = benchmark_bundle(args.bundle, args.out, keras_dir=args.keras, keras=not args.no_keras,
                              keras_predict=not args.no_predict, budget_s=args.budget_s, max_iters=args.max_iters,
                              warmup_iters=args.warmup, batches=args.batches, threads=args.threads,
                              candidates=args.candidates, backends=args.backend, isolate=args.isolate,
                              profile=not args.no_profile, progress=not args.quiet)
    if args.load_test:
        report = _load_test(args, report)
    if not args.quiet:
        print(summary_table(report))
        if args.load_test and report["load_test"]["passed"]:
            print("load test with a hot swap: passed (figures in bench.md)")
        print(f"\nwrote {args.out}/bench.json, {args.out}/bench.md and {len(report.get('plots', []))} plots")
    if args.load_test and not report["load_test"]["passed"]:
        print("edgerec bench: load test failed: " + "; ".join(report["load_test"]["failures"]), file=sys.stderr)
        return 1
    failed = [r for r in report["results"] if r.get("error")]
    if failed and len(failed) == len(report["results"]):
        print("edgerec bench: every configuration failed; see bench.md", file=sys.stderr)
        return 1
    return 0
