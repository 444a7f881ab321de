"""Recommend the top k items of the whole catalogue for each JSON-lines request (cascade bundles).

Each input line is a request {"user_id", "history", "context", "dense"} (optionally with its own
"k" and "m"); each output line is {"line", "items", "scores"} or {"line", "error"}, one per input
line, in order. Exit 0 when every line was answered, 1 when some line failed, 2 for a usage error.

Examples:
  edgerec recommend runs/cascade --input requests.jsonl --k 10
  edgerec recommend runs/cascade --input - --k 5 --m 400 --output top5.jsonl < requests.jsonl
"""
from __future__ import annotations


def configure(parser) -> None:
    parser.add_argument("bundle", help="cascade bundle directory or archive (edgerec export --retrieval)")
    parser.add_argument("--input", required=True, help="JSON-lines requests ('-': standard input)")
    parser.add_argument("--output", default="-", help="JSON-lines results ('-': standard output)")
    parser.add_argument("--k", type=int, default=10, help="items per request")
    parser.add_argument("--m", type=int, default=200, help="items retrieved from the index before ranking")
    parser.add_argument("--backend", default="auto", help="auto, onnxruntime or litert")
    parser.add_argument("--threads", type=int, default=1, help="backend threads")


def run(args) -> int:
    from edgerec.runtime import load
    from edgerec.runtime.recommend import recommend_file

    lines, failed = recommend_file(lambda: load(args.bundle, backend=args.backend, num_threads=args.threads),
                                   args.input, args.output, k=args.k, m=args.m)
    return 1 if failed else 0
