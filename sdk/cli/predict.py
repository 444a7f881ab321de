"""Score JSON-lines requests with a bundle (exactly one output line per input line).

A line is a raw request {"history": [...], "item": ...} -> {"line": N, "score": p, "oov": false};
with "candidates": [...] -> {"line": N, "scores": [...], "oov": [...]}; a tensor row
{"inputs": {...}} (bring-your-own model) -> {"line": N, "outputs": {...}}. "oov" is true where the
candidate id is not in the bundle's vocabulary (its score is the shared unknown-item score).
Lines of examples.jsonl work as they are ("expected" is ignored; "request_id" is echoed).
A line that cannot be scored (bad JSON or UTF-8, not a valid request) gets
{"line": N, "error": {"type": "RequestError", "message": "Expected ..., received: ..."}} and the
other lines are still scored; a blank line gets {"line": N, "skipped": "blank line"}. The input is
streamed; --output is written atomically and checked before any scoring.

Exit codes: 0 every line scored; 1 some lines failed (see their "error"); 2 usage or environment
error (missing bundle or input, unwritable --output, bad option): nothing is scored.

Examples:
  edgerec predict demo-out/bundle --input demo-out/bundle/examples.jsonl
  edgerec predict demo-out/bundle --input requests.jsonl --output scores.jsonl --backend litert
  cat requests.jsonl | edgerec predict demo-out/bundle --input -
"""
from __future__ import annotations

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
    parser.add_argument("--trusted-key", action="append", default=None, metavar="PUBLIC.pem",
                        help="refuse the bundle unless its manifest is signed by this Ed25519 key (repeatable; "
                             "see `edgerec sign`)")


def run(args) -> int:
    from edgerec.runtime.predictor import load
    from edgerec.runtime.requests_io import predict_file

    options = {"num_threads": args.num_threads} if args.num_threads else {}
    if args.trusted_key:
        options["trusted_keys"] = args.trusted_key
    lines, failed = predict_file(lambda: load(args.bundle, backend=args.backend, **options),
                                 args.input, args.output, args.batch_size)
    if failed:
        print(f"edgerec predict: {failed} of {lines} lines failed", file=sys.stderr)
    return 1 if failed else 0
