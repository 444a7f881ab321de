"""Train a recommendation model on synthetic or MovieLens data into a MODEL_DIR (docs/contracts.md).

Examples:
    edgerec train --model din --out runs/din                   # synthetic data
    edgerec train --data movielens:../shared/data/movielens-latest-small --model gru --out runs/gru --epochs 5
"""
from __future__ import annotations

import json

from edgerec.runtime.contract import FAMILIES


def configure(parser) -> None:
    parser.add_argument("--data", default="synthetic",
                        help="'synthetic' (default) or 'movielens:PATH' (ml-latest-small CSV folder)")
    parser.add_argument("--model", default="din", help=f"model family: {', '.join(FAMILIES)}")
    parser.add_argument("--out", required=True, help="model directory to write (replaced atomically)")
    parser.add_argument("--epochs", type=int, default=5, help="maximum epochs (early stopping may end sooner)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--patience", type=int, default=2, help="epochs without improvement before stopping")
    parser.add_argument("--monitor", choices=("auc", "loss"), default="auc",
                        help="validation metric for early stopping")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--negatives", type=int, default=4, help="sampled negatives per training positive")
    parser.add_argument("--max-seq-len", type=int, default=50)
    parser.add_argument("--embedding-dim", type=int, default=32)
    parser.add_argument("--max-train-rows", type=int, default=None,
                        help="train on a seeded subset of this many rows (quick runs)")
    parser.add_argument("--data-option", action="append", default=[], metavar="KEY=INT",
                        help="synthetic generator option, e.g. num_users=500 (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    from edgerec.sdk.training.adversarial import add_train_arguments
    from edgerec.sdk.training.distributed import add_arguments as add_distributed_arguments

    add_train_arguments(parser)
    add_distributed_arguments(parser)


def _format(metrics: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def _data_options(pairs: list[str]) -> dict:
    from edgerec.runtime.errors import SpecError, expected

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            options[key.strip()] = int(value)
        except ValueError:
            raise SpecError(expected("--data-option as KEY=INT", pair)) from None
        if not sep or not key.strip():
            raise SpecError(expected("--data-option as KEY=INT", pair))
    return options


def run(args) -> int:
    from edgerec.runtime.errors import SpecError, expected

    if args.model not in FAMILIES:
        raise SpecError(expected(f"--model among {list(FAMILIES)}", args.model))
    if getattr(args, "strategy", None):
        if getattr(args, "adversarial", None):
            raise SpecError(expected("--adversarial without --strategy (not combined yet)", args.strategy))
        from edgerec.sdk.training.distributed import run_train

        return run_train(args)
    options = _data_options(args.data_option)
    from edgerec.sdk.data import load_dataset
    from edgerec.sdk.models import ModelConfig
    from edgerec.sdk.training import TrainConfig, save_model_dir, train_model

    verbose = 0 if args.quiet else 1
    dataset = load_dataset(args.data, max_seq_len=args.max_seq_len, negatives=args.negatives,
                           seed=args.seed, progress=not args.quiet, **options)
    if verbose:
        print(f"data {dataset.name}: {len(dataset.train)} train / {len(dataset.valid)} valid / "
              f"{len(dataset.test)} test rows, {dataset.spec.item_vocab.size - 2} items", flush=True)
    model_config = ModelConfig(embedding_dim=args.embedding_dim)
    train_config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                               learning_rate=args.learning_rate, patience=args.patience,
                               monitor=args.monitor, seed=args.seed, verbose=verbose,
                               max_train_rows=args.max_train_rows)
    from edgerec.sdk.training.adversarial import config_from_args, train_adversarial_model

    adversarial = config_from_args(args)
    if adversarial is None:
        parts, history, metrics = train_model(dataset, args.model, model_config, train_config)
    else:
        parts, history, metrics = train_adversarial_model(dataset, args.model, model_config, train_config,
                                                          adversarial)
    out = save_model_dir(parts, dataset, args.out, metrics, train_config, history,
                         data_source=args.data, seed=args.seed)
    seconds = [e["seconds"] for e in history["epochs"]]
    print(f"{args.model} on {dataset.name}: best epoch {history['best_epoch']} of {len(seconds)} "
          f"({sum(seconds) / len(seconds):.1f} s per epoch)")
    print(f"test      {_format(metrics['test'])}")
    print(f"baseline  {_format(metrics['baseline'])}  (popularity)")
    print(f"wrote {out}")
    if not verbose:
        print(json.dumps({"model": args.model, "data": dataset.name, **metrics}))
    return 0
