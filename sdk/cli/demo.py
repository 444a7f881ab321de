"""Run the whole pipeline on the embedded synthetic data: train, compress, export, validate, benchmark.

The report folder holds model/ (MODEL_DIR), bundle/ (the validated bundle), bench/ (bench.json,
bench.md, plots) and summary.txt. The command fails (exit 1) when the bundle does not answer its
own examples within tolerance on this machine.

Examples:
  edgerec demo                                   # synthetic data, report in demo-out/
  edgerec demo --data movielens:../shared/data/movielens-latest-small --out ml-demo
  edgerec demo --tiny --out /tmp/demo            # a few hundred users, 1 epoch, short bench
"""
from __future__ import annotations


def configure(parser) -> None:
    parser.add_argument("--data", default="synthetic",
                        help="'synthetic' (the embedded generator) or 'movielens:PATH'")
    parser.add_argument("--out", default="demo-out", help="report folder (model/, bundle/, bench/, summary.txt)")
    parser.add_argument("--tiny", action="store_true",
                        help="a few hundred users, 1 epoch, short benchmark (the CI end-to-end run)")
    parser.add_argument("--epochs", type=int, default=None, help="override the number of training epochs")
    parser.add_argument("--budget-s", type=float, default=None, help="override the bench budget per configuration")
    parser.add_argument("--seed", type=int, default=0, help="seeds data, training, pruning and export")


def run(args) -> int:
    from dataclasses import replace
    from pathlib import Path

    from edgerec.sdk.demo import DemoSettings, run_demo

    settings = DemoSettings.tiny() if args.tiny else DemoSettings()
    overrides = {name: value for name, value in (("epochs", args.epochs), ("budget_s", args.budget_s))
                 if value is not None}
    report = run_demo(args.data, Path(args.out), replace(settings, **overrides), seed=args.seed)
    print("\n" + report.summary)
    return 0 if report.passed else 1
