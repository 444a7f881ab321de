"""One call from "what to train" (`TrainJob`) to a written MODEL_DIR (`train_and_save`), in any mode.

`edgerec train` turns its arguments into a `TrainJob` and calls `train_and_save`; the workers of
a local multi-worker cluster receive the same job as JSON (`edgerec.sdk.training.worker`).

Examples:
    >>> job = TrainJob(out="runs/din", family="din", train=TrainConfig(epochs=3, patience=1))
    >>> outcome = train_and_save(job)
    >>> outcome.model_dir, outcome.metrics["test"]["auc"]          # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgerec.runtime.contract import BASELINE_FULL_CATALOGUE, FAMILIES, FULL_CATALOGUE, RETRIEVAL
from edgerec.runtime.errors import MissingDependencyError, SpecError, expected

from ..models.config import ModelConfig
from ..models.retrieval import RetrievalConfig
from .adversarial import AdversarialConfig
from .distributed import RESULT_PREFIX, DistributedConfig
from .fit import TrainConfig

logger = logging.getLogger(__name__)

# Families `edgerec train` builds: the ranking families and the retrieval family.
TRAIN_FAMILIES = FAMILIES + (RETRIEVAL,)
# What training imports; checked before any data is built, so a missing extra fails in a second.
TRAIN_MODULES = ("tensorflow", "tf_keras")
WORKER_MODULE = "edgerec.sdk.training.worker"
# Share of the timeline whose new items a content model holds out and scores as cold-start items.
DEFAULT_COLD_START_FRACTION = 0.1
ITEM_MAP_FILE = "item_map.png"


def require_train_extra() -> None:
    """Raise `MissingDependencyError` naming the ``train`` extra when TensorFlow is not installed."""
    for module in TRAIN_MODULES:
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(module, "train", "training")


@dataclass(frozen=True)
class TrainJob:
    """Everything one training run needs.

    Args:
        out: the MODEL_DIR to write (replaced atomically).
        family: a ranking family among `FAMILIES`, or ``"retrieval"``.
        data: ``"synthetic"`` or ``"movielens:PATH"``.
        data_options: synthetic generator options (``{"num_users": 500}``).
        max_seq_len: history length L.
        negatives: sampled negatives per training positive.
        model: the `ModelConfig` (a `RetrievalConfig` for the retrieval family).
        train: the `TrainConfig` (its ``seed`` also seeds the data; ``verbose`` the progress lines).
        adversarial: an `AdversarialConfig` for adversarial training, or None.
        distributed: a `DistributedConfig` for `tf.distribute` training, or None.
        cold_start_fraction: for a family with item content, the items first seen in this last
            share of the events are held out of training and scored as new items
            (metrics.json ``"cold_start"``); 0 keeps every item.
        hard_negatives_from: a retrieval MODEL_DIR trained on the same data: half of each ranking
            model's training negatives are drawn from that retriever's top 200 for the row's user
            (`edgerec.sdk.training.retrieval.with_retrieved_negatives`), so the ranker learns to
            order what a cascade will hand it; None keeps uniform negatives.
    """

    out: str
    family: str = "din"
    data: str = "synthetic"
    data_options: dict = field(default_factory=dict)
    max_seq_len: int = 50
    negatives: int = 4
    model: ModelConfig | RetrievalConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    adversarial: AdversarialConfig | None = None
    distributed: DistributedConfig | None = None
    cold_start_fraction: float = DEFAULT_COLD_START_FRACTION
    hard_negatives_from: str | None = None

    def __post_init__(self):
        if not isinstance(self.out, (str, Path)) or not str(self.out):
            raise SpecError(expected("out as a folder path", self.out))
        object.__setattr__(self, "out", str(self.out))
        if self.family not in TRAIN_FAMILIES:
            raise SpecError(expected(f"a model family among {list(TRAIN_FAMILIES)}", self.family))
        if self.family == RETRIEVAL and isinstance(self.model, ModelConfig) and self.model == ModelConfig():
            object.__setattr__(self, "model", RetrievalConfig())
        if not isinstance(self.data_options, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                for k, v in self.data_options.items()):
            raise SpecError(expected("data_options as {name: int}", self.data_options))
        model_kind = RetrievalConfig if self.family == RETRIEVAL else ModelConfig
        for name, kind in (("model", model_kind), ("train", TrainConfig), ("adversarial", AdversarialConfig),
                           ("distributed", DistributedConfig)):
            value = getattr(self, name)
            if not isinstance(value, kind) and not (value is None and name in ("adversarial", "distributed")):
                raise SpecError(expected(f"{name} as a {kind.__name__}", type(value).__name__))
        if isinstance(self.cold_start_fraction, bool) or not isinstance(self.cold_start_fraction, (int, float)) \
                or not 0.0 <= self.cold_start_fraction < 0.5:
            raise SpecError(expected("cold_start_fraction in [0, 0.5)", self.cold_start_fraction))
        if self.adversarial is not None and self.distributed is not None:
            raise SpecError(expected("adversarial or distributed training, not both (they do not combine)",
                                     self.distributed.strategy))
        if self.hard_negatives_from is not None:
            if not isinstance(self.hard_negatives_from, (str, Path)) or not str(self.hard_negatives_from):
                raise SpecError(expected("hard_negatives_from as a retrieval MODEL_DIR path", self.hard_negatives_from))
            if self.family == RETRIEVAL:
                raise SpecError(expected("hard negatives for a ranking family (a retriever trains on in-batch "
                                         "negatives)", self.family))
            object.__setattr__(self, "hard_negatives_from", str(self.hard_negatives_from))
        if self.family == RETRIEVAL and (self.adversarial is not None or self.distributed is not None):
            raise SpecError(expected("plain training for the retrieval family (no adversarial or distributed mode)",
                                     "adversarial" if self.adversarial is not None else self.distributed.strategy))

    def to_dict(self) -> dict:
        return {"out": self.out, "family": self.family, "data": self.data, "data_options": dict(self.data_options),
                "max_seq_len": self.max_seq_len, "negatives": self.negatives, "model": self.model.to_dict(),
                "train": self.train.to_dict(),
                "adversarial": None if self.adversarial is None else self.adversarial.to_dict(),
                "distributed": None if self.distributed is None else self.distributed.to_dict(),
                "cold_start_fraction": self.cold_start_fraction, "hard_negatives_from": self.hard_negatives_from}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainJob":
        if not isinstance(data, dict):
            raise SpecError(expected("a train-job object", type(data).__name__))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(expected(f"train-job keys among {sorted(known)}", unknown))
        data = dict(data)
        model_kind = RetrievalConfig if data.get("family") == RETRIEVAL else ModelConfig
        data["model"] = model_kind.from_dict(data.get("model") or {})
        data["train"] = TrainConfig.from_dict(data.get("train") or {})
        for name, kind in (("adversarial", AdversarialConfig), ("distributed", DistributedConfig)):
            data[name] = None if data.get(name) is None else kind.from_dict(data[name])
        return cls(**data)


@dataclass
class TrainOutcome:
    """What `train_and_save` did.

    Attributes:
        family, data: the model family and the dataset's name.
        model_dir: the written MODEL_DIR (None on a worker that is not the chief).
        history: the training history (per-epoch rows, best epoch; distributed facts).
        metrics: ``{"test": …, "baseline": …, "full_catalogue": …, "baseline_full_catalogue": …}``
            as `evaluate` returns them.
        record: a distributed worker's facts (place in the cluster, weights sha256), else None.
        workers: the `WorkerResult` of each local worker when this process launched a cluster.
    """

    family: str
    data: str
    model_dir: Path | None
    history: dict
    metrics: dict
    record: dict | None = None
    workers: list = field(default_factory=list)

    def summary(self) -> dict:
        """``{"model", "data", "test", "baseline", "full_catalogue", …}`` (the JSON line of a quiet run)."""
        return {"model": self.family, "data": self.data, **self.metrics}

    def report_lines(self) -> list[str]:
        """The lines a command prints: per-run summary, or the local cluster's outputs."""
        if self.workers:
            lines = self.workers[0].output.splitlines()
            for result in self.workers[1:]:
                lines += [line for line in result.output.splitlines() if line.startswith(RESULT_PREFIX)]
            seconds = max(r.seconds for r in self.workers)
            return lines + [f"{len(self.workers)} local workers finished in {seconds:.1f} s"]
        lines = []
        if self.model_dir is not None:
            seconds = [e["seconds"] for e in self.history["epochs"]]
            head = (f"{self.family} on {self.data}: best epoch {self.history['best_epoch']} of {len(seconds)} "
                    f"({sum(seconds) / len(seconds):.1f} s per epoch)")
            if "strategy" in self.history:
                head += (f"; {self.history['strategy']} strategy, {self.history['replicas']} replicas, "
                         f"{self.history['workers']} workers, global batch {self.history['global_batch']}")
            lines += [head, "sampled (1 held-out item vs 100 negatives per user)",
                      f"  test      {_format(self.metrics['test'])}",
                      f"  baseline  {_format(self.metrics['baseline'])}  (popularity)"]
            if self.metrics.get(FULL_CATALOGUE):
                users = self.metrics.get("full_catalogue_users") or {}
                sample = (f", a seeded sample of {users['evaluated']} of {users['held_out']} users"
                          if users.get("sampled") else "")
                lines += [f"full catalogue ({users.get('items', '?')} items, seen items excluded{sample})",
                          f"  test      {_format(self.metrics[FULL_CATALOGUE])}",
                          f"  baseline  {_format(self.metrics[BASELINE_FULL_CATALOGUE])}  (popularity)"]
            lines.append(f"wrote {self.model_dir}")
        if self.record is not None:
            lines.append(RESULT_PREFIX + json.dumps(self.record))
        return lines


def _format(metrics: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def train_and_save(job: TrainJob) -> TrainOutcome:
    """Build the dataset, train ``job.family`` in the job's mode, evaluate, write ``job.out``.

    Checks the ``train`` extra first. With ``job.distributed`` set to a multiworker strategy with
    ``workers`` and no ``TF_CONFIG``, this process launches the local workers instead and waits.

    Raises:
        MissingDependencyError: TensorFlow is not installed (before any data is built).
        DistributedError: a local worker failed or timed out.
    """
    if not isinstance(job, TrainJob):
        raise SpecError(expected("a TrainJob", type(job).__name__))
    require_train_extra()
    if job.distributed is not None and job.distributed.launches_local_cluster:
        return _launch_local_cluster(job)
    from ..data import load_dataset

    strategy, train_config = None, job.train
    if job.distributed is not None:
        from .distributed import make_strategy, task_info

        strategy = make_strategy(job.distributed.strategy, cpu_devices=job.distributed.cpu_devices)
        if not task_info(strategy).is_chief:
            train_config = dataclasses.replace(train_config, verbose=0)
    verbose = bool(train_config.verbose)
    content = isinstance(job.model, ModelConfig) and job.model.uses_content(job.family)
    dataset = load_dataset(job.data, max_seq_len=job.max_seq_len, negatives=job.negatives, seed=train_config.seed,
                           progress=verbose, cold_start_fraction=job.cold_start_fraction if content else 0.0,
                           **job.data_options)
    if verbose:
        logger.info(f"data {dataset.name}: {len(dataset.train)} train / {len(dataset.valid)} valid / "
                    f"{len(dataset.test)} test rows, {dataset.spec.item_vocab.size - 2} items")
    if job.hard_negatives_from is not None:
        dataset = with_hard_negatives(dataset, job.hard_negatives_from, seed=train_config.seed)
    record = None
    if strategy is not None:
        from .distributed import train_model_distributed, worker_record, write_model_dir

        parts, history, metrics = train_model_distributed(dataset, job.family, job.model, train_config, strategy)
        history = _with_data_facts(history, dataset)
        out = write_model_dir(strategy, parts, dataset, job.out, metrics, train_config, history,
                              data_source=job.data, seed=train_config.seed)
        record = worker_record(strategy, parts, history, out)
    else:
        from .model_dir import save_model_dir

        if job.family == RETRIEVAL:
            from .retrieval import train_retrieval_model

            parts, history, metrics = train_retrieval_model(dataset, job.model, train_config)
        elif job.adversarial is not None:
            from .adversarial import train_adversarial_model

            parts, history, metrics = train_adversarial_model(dataset, job.family, job.model, train_config,
                                                              job.adversarial)
        else:
            from .pipeline import train_model

            parts, history, metrics, dataset = train_model(dataset, job.family, job.model, train_config,
                                                           return_dataset=True)
        history = _with_data_facts(history, dataset)
        out = save_model_dir(parts, dataset, job.out, metrics, train_config, history, data_source=job.data,
                             seed=train_config.seed)
        if getattr(parts, "content_table", None) is not None:
            write_content_reports(out, parts, dataset, metrics)
    return TrainOutcome(job.family, dataset.name, out, history, metrics, record)


def _with_data_facts(history: dict, dataset) -> dict:
    """The history a MODEL_DIR records, with how the training negatives were drawn when they were hard."""
    hard = dataset.meta.get("hard_negatives")
    return history if hard is None else {**history, "hard_negatives": hard}


def with_hard_negatives(dataset, retrieval_dir: str, seed: int = 0):
    """``dataset`` with half its training negatives drawn from the retriever in ``retrieval_dir``.

    Raises:
        SpecError: the folder is not a retrieval MODEL_DIR, or its item vocabulary is not this
            dataset's (a retriever trained on other data would rank other items).
    """
    from .model_dir import load_model_dir, read_manifest
    from .retrieval import HARD_NEGATIVE_M, with_retrieved_negatives

    family = read_manifest(retrieval_dir)["family"]          # before loading any Keras part
    if family != RETRIEVAL:
        raise SpecError(expected("--hard-negatives-from a retrieval MODEL_DIR (edgerec train --model retrieval)",
                                 f"{retrieval_dir}: family {family!r}"))
    retriever = load_model_dir(retrieval_dir)
    items = int(np.asarray(retriever.item_vectors).shape[0])
    if items != dataset.spec.item_vocab.size:
        raise SpecError(expected(f"a retriever over this dataset's {dataset.spec.item_vocab.size} item ids",
                                 f"{retrieval_dir}: {items} item vectors"))
    hard = with_retrieved_negatives(dataset, retriever.user_vectors, retriever.item_vectors, m=HARD_NEGATIVE_M,
                                    seed=seed)
    hard.meta["hard_negatives"]["retrieval"] = str(retrieval_dir)
    logger.info("hard negatives from %s: %s", retrieval_dir, hard.meta["hard_negatives"])
    return hard


def write_content_reports(model_dir, parts, dataset, metrics: dict) -> None:
    """``item_map.png`` of a content model: the catalogue's content vectors in 2-D (PCA), coloured
    by genre (`edgerec.sdk.metrics.maps.draw_item_map`; skipped with a warning without matplotlib).
    The ``cold_start`` and ``content`` metrics and the encoder's custom-objects module are
    written by `save_model_dir`."""
    from edgerec.runtime.spec import NUM_RESERVED

    from ..metrics.maps import draw_item_map, primary_genres

    table = np.asarray(parts.content_table, np.float32)
    encoder = (parts.meta.get("content") or {}).get("encoder", "small")
    genres = dataset.meta.get("item_genres")
    if genres is not None and len(genres) == table.shape[0] and table.shape[0] - NUM_RESERVED >= 2:
        try:
            draw_item_map(table[NUM_RESERVED:], primary_genres(genres[NUM_RESERVED:]), Path(model_dir) / ITEM_MAP_FILE,
                          title=f"{dataset.name} item content vectors ({encoder}, {table.shape[1]} dims), by genre")
        except MissingDependencyError as err:
            logger.warning("no %s: %s", ITEM_MAP_FILE, err)


def _launch_local_cluster(job: TrainJob) -> TrainOutcome:
    """Run ``job`` on ``workers`` local processes (worker 0 is the chief and writes ``job.out``)."""
    from .launch import launch_local_workers
    from .model_dir import read_manifest

    out = Path(job.out).absolute()
    worker_job = dataclasses.replace(job, out=str(out), distributed=dataclasses.replace(job.distributed, workers=0))
    argv = [sys.executable, "-m", WORKER_MODULE, json.dumps(worker_job.to_dict())]
    results = launch_local_workers(job.distributed.workers, argv, timeout=job.distributed.worker_timeout)
    metrics = json.loads((out / "metrics.json").read_text("utf-8"))
    history = (read_manifest(out).get("config") or {}).get("history") or {}
    keep = ("test", "baseline", FULL_CATALOGUE, BASELINE_FULL_CATALOGUE, "full_catalogue_users")
    return TrainOutcome(job.family, metrics.get("data", job.data), out, history,
                        {k: metrics[k] for k in keep if k in metrics}, workers=results)
