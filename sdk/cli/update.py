"""Warm-start a model on new events (online update), optionally export a new bundle version.

NEW.csv has a header with user_id,item_id,timestamp (unix seconds) and optionally device. The
vocabulary stays frozen: items and devices the model has never seen map to OOV. The new
MODEL_DIR records bundle_version = parent's + 1 and the update's figures (prequential AUC of the
updated vs the frozen model, validation AUC before/after); --export stamps the bundle with the
same bundle_version.

Examples:
    edgerec update runs/din --events new.csv --out runs/din-v2
    edgerec update runs/din --events new.csv --history past.csv --out runs/din-v2 --steps 8
    edgerec update runs/din --events new.csv --out runs/din-v2 --export bundles/din-v2 --quantize int8
"""
from __future__ import annotations

import json


def configure(parser) -> None:
    parser.add_argument("model_dir", help="MODEL_DIR to warm-start from (written by `edgerec train`/`update`)")
    parser.add_argument("--events", required=True, help="CSV of new events: user_id,item_id,timestamp[,device]")
    parser.add_argument("--out", required=True, help="new MODEL_DIR to write (replaced atomically)")
    parser.add_argument("--history", default=None, help="CSV of past events (same columns) for user histories")
    parser.add_argument("--steps", type=int, default=4, help="gradient steps per batch of new events")
    parser.add_argument("--events-per-batch", type=int, default=256, help="new events per update batch")
    parser.add_argument("--batch-size", type=int, default=512, help="rows per gradient step")
    parser.add_argument("--replay", type=int, default=20000, help="replay buffer capacity (rows)")
    parser.add_argument("--replay-policy", choices=("reservoir", "fifo"), default="reservoir",
                        help="reservoir: uniform over all past rows; fifo: the most recent ones")
    parser.add_argument("--replay-fraction", type=float, default=0.5, help="share of each step from replay")
    parser.add_argument("--negatives", type=int, default=4, help="sampled negatives per new event")
    parser.add_argument("--learning-rate", type=float, default=5e-4, help="Adam learning rate of the updates")
    parser.add_argument("--seed", type=int, default=0, help="seeds negative sampling and replay")
    parser.add_argument("--export", default=None, help="also export the updated model into this bundle")
    parser.add_argument("--quantize", default="int8", help="export: comma list of none,fp16,dynamic,int8")
    parser.add_argument("--targets", default="tflite,onnx", help="export: comma list of tflite,onnx")
    parser.add_argument("--max-groups", type=int, default=None, help="export: validate on N ranking groups")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def run(args) -> int:
    from edgerec.sdk.training.online import OnlineConfig
    from edgerec.sdk.training.update import update_model_dir

    config = OnlineConfig(events_per_batch=args.events_per_batch, steps_per_batch=args.steps,
                          batch_size=args.batch_size, replay_fraction=args.replay_fraction,
                          replay_capacity=args.replay, replay_policy=args.replay_policy,
                          negatives=args.negatives, learning_rate=args.learning_rate, seed=args.seed)
    export_options = {"quantize": _csv(args.quantize), "targets": _csv(args.targets), "max_groups": args.max_groups}
    summary = update_model_dir(args.model_dir, args.events, args.out, config, history=args.history,
                               export=args.export, export_options=export_options, verbose=not args.quiet)
    print(json.dumps(summary))
    return 0
