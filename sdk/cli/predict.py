"""Score JSON-lines requests with a bundle (one output line per input line).

A line is a raw request {"history": [...], "item": ...} -> {"score": p}; with "candidates": [...]
-> {"scores": [...]}; a tensor row {"inputs": {...}} (bring-your-own model) -> {"outputs": {...}}.
Lines of examples.jsonl work as they are ("expected" is ignored). A line that cannot be scored
gets {"error": ...}; exit code 1 when any line failed, 2 for a usage or environment error.

Examples:
  edgerec predict demo-out/bundle --input demo-out/bundle/examples.jsonl
  edgerec predict demo-out/bundle --input requests.jsonl --output scores.jsonl --backend litert
  cat requests.jsonl | edgerec predict demo-out/bundle --input -
"""
from __future__ import annotations

import json
import sys

BACKEND_CHOICES = ("auto", "onnxruntime", "litert", "tensorrt")


def configure(parser) -> None:
    parser.add_argument("bundle", help="bundle directory or .tar.gz")
    parser.add_argument("--input", required=True, help="JSON-lines requests ('-' = standard input)")
    parser.add_argument("--output", default="-", help="JSON-lines results ('-' = standard output)")
    parser.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                        help="backend to score with ('auto': onnxruntime if installed, else litert)")
    parser.add_argument("--batch-size", type=int, default=256, help="raw requests per model call")
    parser.add_argument("--num-threads", type=int, default=None, help="backend threads (default: the backend's)")


def run(args) -> int:
    from edgerec.runtime.errors import RequestError, expected
    from edgerec.runtime.io import atomic_write_text
    from edgerec.runtime.predictor import load
    from edgerec.runtime.requests_io import predict_lines, read_jsonl

    if args.batch_size < 1:
        raise RequestError(expected("--batch-size >= 1", args.batch_size))
    options = {"num_threads": args.num_threads} if args.num_threads else {}
    rows = read_jsonl(args.input)
    with load(args.bundle, backend=args.backend, **options) as predictor:
        results = predict_lines(predictor, rows, args.batch_size)
    text = "".join(json.dumps(r) + "\n" for r in results)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        atomic_write_text(args.output, text)
    errors = sum("error" in r for r in results)
    if errors:
        print(f"edgerec predict: {errors} of {len(rows)} lines failed", file=sys.stderr)
    return 1 if errors else 0
