"""Train a recommendation model on synthetic or MovieLens data into a MODEL_DIR (docs/contracts.md).

Examples:
    edgerec train --model din --out runs/din                   # synthetic data
    edgerec train --data movielens:../shared/data/movielens-latest-small --model gru --out runs/gru --epochs 5
    edgerec train --model din --out runs/din_adv --adversarial pgd --eps 0.25
    edgerec train --model din --out runs/din_mw --strategy multiworker --workers 2
    edgerec train --model retrieval --encoder transformer --out runs/retrieval   # two-tower retrieval
    edgerec train --model din --hard-negatives-from runs/retrieval --out runs/din_cascade   # a cascade's ranker
    edgerec train --data movielens:PATH --model context --content-encoder minilm --content-dim 32 --out runs/ctx
"""
from __future__ import annotations

import json

from edgerec.runtime.contract import FAMILIES, RETRIEVAL
from edgerec.sdk.models.config import CONTENT_ENCODERS
from edgerec.sdk.training.catalogue import MAX_SCORED_ROWS

MODELS = FAMILIES + (RETRIEVAL,)


def configure(parser) -> None:
    from edgerec.sdk.training.adversarial import ATTACKS, NORMS
    from edgerec.sdk.training.distributed import STRATEGIES
    from edgerec.sdk.training.job import DEFAULT_COLD_START_FRACTION

    parser.add_argument("--data", default="synthetic",
                        help="'synthetic' or 'movielens:PATH' (ml-latest-small CSV folder)")
    from edgerec.sdk.models.retrieval import ENCODERS

    parser.add_argument("--model", default="din", help=f"model family: {', '.join(MODELS)}")
    parser.add_argument("--encoder", choices=ENCODERS, default=None,
                        help="retrieval only: the user tower's history encoder (default gru)")
    parser.add_argument("--out", required=True, help="model directory to write (replaced atomically)")
    parser.add_argument("--epochs", type=int, default=5, help="maximum epochs (early stopping may end sooner)")
    parser.add_argument("--batch-size", type=int, default=512, help="rows per step (per replica with --strategy)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--patience", type=int, default=2,
                        help="stop after this many epochs in a row without improvement (every mode)")
    parser.add_argument("--monitor", choices=("auc", "loss"), default="auc",
                        help="validation metric for early stopping")
    parser.add_argument("--seed", type=int, default=0, help="seeds data generation, sampling and training")
    parser.add_argument("--negatives", type=int, default=4, help="sampled negatives per training positive")
    parser.add_argument("--max-seq-len", type=int, default=50, help="history length L")
    parser.add_argument("--embedding-dim", type=int, default=32, help="item embedding width")
    parser.add_argument("--content-encoder", choices=CONTENT_ENCODERS, default=None,
                        help="content families (context): the item-text encoder, 'small' (trained from scratch on "
                             "the item corpus) or 'minilm' (pretrained all-MiniLM-L6-v2; its vectors are computed "
                             "once per catalogue and cached) (default small)")
    parser.add_argument("--content-dim", type=int, default=None,
                        help="content vector width: the small encoder's width, or the PCA components the 384-dim "
                             "MiniLM vectors are reduced to (384 = no reduction) (default 32)")
    parser.add_argument("--content-dropout", type=float, default=None,
                        help="share of training rows scored from content alone (candidate id -> OOV, cand_content "
                             "= its content vector), for cold-start items (default 0.05)")
    parser.add_argument("--cold-start-fraction", type=float, default=DEFAULT_COLD_START_FRACTION,
                        help="content families: hold out the items first seen in this last share of the events and "
                             "report their AUC as new items with and without content (0 keeps every item)")
    parser.add_argument("--hard-negatives-from", default=None, metavar="RETRIEVAL_DIR",
                        help="draw half of a ranking model's training negatives from this retriever's top 200 "
                             "(a retrieval MODEL_DIR trained on the same data)")
    parser.add_argument("--model-config", default=None, metavar="JSON",
                        help='more ModelConfig (RetrievalConfig for --model retrieval) fields as a JSON object, '
                             'e.g. \'{"hidden_units": [64]}\'')
    parser.add_argument("--max-train-rows", type=int, default=None,
                        help="train on a seeded subset of this many rows (quick runs)")
    parser.add_argument("--full-catalogue-rows", type=int, default=MAX_SCORED_ROWS,
                        help="user x item rows a ranking model scores for the full-catalogue metrics (a seeded "
                             "user sample beyond; 0 skips them)")
    parser.add_argument("--data-option", action="append", default=[], metavar="KEY=INT",
                        help="synthetic generator option, e.g. num_users=500 (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress output; a JSON summary at the end")
    parser.add_argument("--adversarial", choices=ATTACKS, default=None,
                        help="adversarial training on the item-embedding outputs (fgsm or pgd)")
    parser.add_argument("--eps", type=float, default=0.5,
                        help="perturbation radius relative to the mean item-embedding L2 norm")
    parser.add_argument("--adv-weight", type=float, default=1.0, help="loss = clean + W x adversarial")
    parser.add_argument("--adv-norm", choices=NORMS, default="l2", help="l2 (eps*g/||g||) or linf (eps*sign g)")
    parser.add_argument("--pgd-steps", type=int, default=3, help="PGD steps")
    parser.add_argument("--strategy", choices=STRATEGIES, default=None,
                        help="tf.distribute strategy: mirrored (local GPUs, else logical CPUs) or "
                             "multiworker (TF_CONFIG); --batch-size is then per replica")
    parser.add_argument("--cpu-devices", type=int, default=2, help="logical CPU devices for mirrored without GPU")
    parser.add_argument("--workers", type=int, default=0,
                        help="multiworker without TF_CONFIG: launch this many local workers on loopback")
    parser.add_argument("--worker-timeout", type=float, default=3600.0, help="seconds for the local cluster")


def data_options(pairs: list[str]) -> dict:
    """``["num_users=500", …]`` as ``{"num_users": 500, …}``."""
    from edgerec.runtime.errors import SpecError, expected

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SpecError(expected("--data-option as KEY=INT", pair))
        try:
            options[key.strip()] = int(value)
        except ValueError:
            raise SpecError(expected("--data-option as KEY=INT", pair)) from None
    return options


def _json_object(text: str | None, flag: str) -> dict:
    from edgerec.runtime.errors import SpecError, expected

    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise SpecError(expected(f"{flag} as a JSON object", str(err))) from None
    if not isinstance(value, dict):
        raise SpecError(expected(f"{flag} as a JSON object", value))
    return value


def job_from_args(args):
    """The `TrainJob` the arguments describe (every flag checked before anything runs)."""
    from edgerec.runtime.errors import SpecError, expected
    from edgerec.sdk.models import ModelConfig
    from edgerec.sdk.training import TrainConfig
    from edgerec.sdk.training.adversarial import AdversarialConfig
    from edgerec.sdk.training.distributed import DistributedConfig
    from edgerec.sdk.training.job import TrainJob

    if args.model not in MODELS:
        raise SpecError(expected(f"--model among {list(MODELS)}", args.model))
    if args.encoder is not None and args.model != RETRIEVAL:
        raise SpecError(expected("--encoder only with --model retrieval", args.model))
    if args.adversarial and args.strategy:
        raise SpecError(expected("--adversarial or --strategy, not both", [args.adversarial, args.strategy]))
    if args.workers and args.strategy != "multiworker":
        raise SpecError(expected("--workers only with --strategy multiworker", args.strategy))
    options = data_options(args.data_option)
    fields = {"embedding_dim": args.embedding_dim, **_json_object(args.model_config, "--model-config")}
    content = {"content_encoder": args.content_encoder, "content_dim": args.content_dim,
               "content_dropout": args.content_dropout}
    given = {k: v for k, v in content.items() if v is not None}
    if given and args.model == RETRIEVAL:
        raise SpecError(expected("--content-encoder/--content-dim/--content-dropout only with a ranking family",
                                 args.model))
    fields.update(given)
    if args.model == RETRIEVAL:
        from edgerec.sdk.models.retrieval import RetrievalConfig

        model = RetrievalConfig.from_dict({**({"encoder": args.encoder} if args.encoder else {}), **fields})
    else:
        model = ModelConfig.from_dict(fields)
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                        patience=args.patience, monitor=args.monitor, seed=args.seed,
                        verbose=0 if args.quiet else 1, max_train_rows=args.max_train_rows,
                        full_catalogue_rows=args.full_catalogue_rows)
    adversarial = None if args.adversarial is None else AdversarialConfig(
        attack=args.adversarial, eps=args.eps, weight=args.adv_weight, norm=args.adv_norm, steps=args.pgd_steps)
    distributed = None if args.strategy is None else DistributedConfig(
        strategy=args.strategy, cpu_devices=args.cpu_devices, workers=args.workers,
        worker_timeout=args.worker_timeout)
    return TrainJob(out=args.out, family=args.model, data=args.data, data_options=options,
                    max_seq_len=args.max_seq_len, negatives=args.negatives, model=model, train=train,
                    adversarial=adversarial, distributed=distributed,
                    cold_start_fraction=args.cold_start_fraction, hard_negatives_from=args.hard_negatives_from)


def run(args) -> int:
    from edgerec.sdk.training.job import train_and_save

    outcome = train_and_save(job_from_args(args))
    for line in outcome.report_lines():
        print(line)
    if args.quiet:
        print(json.dumps(outcome.summary()))
    return 0
