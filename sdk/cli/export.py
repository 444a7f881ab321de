"""Prune, quantize and compile a model into a validated, selected bundle.

Prints the selection table (size, ΔAUC, latency and status of every artifact) and, last, one JSON
line: the bundle, what was selected per backend, the rejected count and the serving targets.

Examples:
  edgerec export runs/din --out runs/din-bundle
  edgerec export runs/din --prune 0.5 --quantize int8 --targets tflite,onnx --out runs/din-bundle
  edgerec export runs/din --targets onnx,triton,tensorrt --out runs/din-serving
  edgerec export my_model.keras --data rows.npz --out my-bundle     # bring your own Keras model
  edgerec export runs/din --quantize int8,int4 --targets onnx --objective size --out runs/din-small
  edgerec export runs/din --latency-from phone/bench.json --out runs/din-phone   # timings from the target
  edgerec export runs/din --retrieval runs/retrieval --out runs/cascade   # + user tower and item index
"""
from __future__ import annotations

import json


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def configure(parser) -> None:
    parser.add_argument("model_dir", help="MODEL_DIR written by `edgerec train`, or a saved Keras model "
                                          "(.keras/.h5/SavedModel) with --data")
    parser.add_argument("--out", required=True, help="bundle directory to write")
    parser.add_argument("--prune", type=float, default=None,
                        help="target sparsity in (0, 1) (tf_keras models only; the pruned Keras models are "
                             "kept in OUT.pruned for `edgerec validate --keras`)")
    parser.add_argument("--quantize", type=_csv, default=["int8"],
                        help="comma list of none,fp16,dynamic,int8,int4 (int8 implies dynamic too; int4 adds the "
                             "row-wise 4-bit embedding-table variants)")
    parser.add_argument("--targets", type=_csv, default=["tflite", "onnx"],
                        help="comma list of tflite,onnx,tensorrt,triton: tensorrt builds engines from the "
                             "TensorRT-ready int8 ONNX into the bundle (needs the tensorrt package), triton writes "
                             "a checked model repository in OUT/triton; both imply onnx")
    parser.add_argument("--data", default=None, help=".npz of held-out rows (inputs + labels [+ groups])")
    parser.add_argument("--budget", type=float, default=0.003, help="largest |ΔAUC| of a selectable variant")
    parser.add_argument("--archive", action="store_true", help="also write OUT.tar.gz")
    parser.add_argument("--max-groups", type=int, default=None, help="validate on the first N ranking groups (default 2000: paired ΔAUC standard error ~1.5e-4; 0 = all)")
    parser.add_argument("--cache-dir", default=None, help="pass cache (default $EDGEREC_CACHE or ~/.cache/edgerec)")
    parser.add_argument("--retrieval", default=None,
                        help="retrieval MODEL_DIR (edgerec train --model retrieval): adds its user tower and an item "
                             "index, for `edgerec recommend` over the whole catalogue")
    parser.add_argument("--retrieval-weight", type=float, default=None, metavar="W",
                        help="cascade score weight of the retrieval score in [0, 1] (recommend() orders the retrieved "
                             "items by W*z(retrieval) + (1-W)*z(ranker)); default: fitted on validation events")
    parser.add_argument("--index", choices=("auto", "exact", "hnsw"), default="auto",
                        help="item index: exact int8 search, HNSW (pip install 'edgerec[index]'), or auto "
                             "(exact up to 50,000 items)")
    parser.add_argument("--ef-search", type=int, default=256, help="HNSW search width (recall vs latency)")
    parser.add_argument("--index-dtype", choices=("f16", "f32", "i8"), default="f16",
                        help="how the HNSW graph stores item vectors: f16 (half of f32's bytes), f32 (faster than "
                             "f16 on some CPUs, slower on others: measure on the target), i8 (smallest, lowest "
                             "recall)")
    parser.add_argument("--index-connectivity", type=int, default=None, metavar="M",
                        help="HNSW graph degree (default 32: at 10^6 items it reached recall@200 0.95 at half the "
                             "search width of 16, for 25%% more build time and 128 bytes more per item)")
    parser.add_argument("--m", type=int, default=200, help="items retrieved per user before ranking (recall@M "
                                                            "of the index is measured at this M)")
    parser.add_argument("--eval-users", type=int, default=500,
                        help="held-out users for the index recall and full-catalogue metrics (ranker alone: "
                             "at most 100, it scores every item)")
    parser.add_argument("--objective", choices=("balanced", "size", "latency"), default="balanced",
                        help="what selection optimises among the variants within --budget: balanced = the smallest "
                             "that is not slower than fp32 by more than 1.10x at batch 1 and 256; size = the "
                             "smallest; latency = the fastest (at batch 256)")
    parser.add_argument("--latency-from", metavar="BENCH_JSON", default=None,
                        help="bench.json of `edgerec bench` run on the target device: its fused timings (matched "
                             "by file name, every fused candidate needed) replace this machine's")
    parser.add_argument("--quiet", action="store_true", help="no progress lines (warnings still show)")


def run(args) -> int:
    from edgerec.converters.export import export_bundle
    from edgerec.converters.select import candidates_table

    cascade = None
    if args.retrieval is not None:
        from edgerec.converters.cascade import CascadeSettings
        from edgerec.runtime.index_config import IndexConfig

        graph = {} if args.index_connectivity is None else {"connectivity": args.index_connectivity}
        cascade = CascadeSettings(IndexConfig(kind=args.index, ef_search=args.ef_search, ann_dtype=args.index_dtype,
                                              **graph),
                                  m=args.m,
                                  eval_users=args.eval_users, ranker_users=min(100, args.eval_users),
                                  retrieval_weight=args.retrieval_weight)
    result = export_bundle(args.model_dir, args.out, prune=args.prune, quantize=args.quantize, targets=args.targets,
                           data=args.data, budget=args.budget, archive=args.archive, cache_dir=args.cache_dir,
                           max_groups=args.max_groups, retrieval=args.retrieval, cascade=cascade,
                           objective=args.objective, latency_from=args.latency_from,
                           progress=(lambda _line: None) if args.quiet else None)
    print(candidates_table(result.manifest.candidates))
    print(json.dumps(result.summary()))
    return 0
