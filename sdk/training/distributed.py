"""Distributed training with `tf.distribute` (``edgerec train --strategy mirrored|multiworker``).

* ``mirrored``: `tf.distribute.MirroredStrategy` over the local GPUs, or, on a machine without
  one, over ``cpu_devices`` logical CPU devices (`configure_logical_cpus`, which must run before
  TensorFlow initialises its runtime).
* ``multiworker``: `tf.distribute.MultiWorkerMirroredStrategy` configured by ``TF_CONFIG``.
  `launch_local_workers` starts N local workers on loopback, each with its own ``TF_CONFIG``.

The model is built and compiled inside ``strategy.scope()``; ``TrainConfig.batch_size`` is the
per-replica batch (global batch = per-replica x replicas in sync); the in-memory training
arrays become a `tf.data` pipeline sharded with ``AutoShardPolicy.DATA``. After training the
weights are copied into a freshly built, strategy-free `ModelParts` (`unwrap_parts`), so
evaluation, saving and export never run collectives. In a cluster only the chief writes the
model dir; the other workers write theirs to a temporary folder and delete it (TF docs).

Examples:
    >>> strategy = make_strategy("mirrored", cpu_devices=2)      # before any TF op
    >>> parts, history, metrics = train_model_distributed(dataset, "din", strategy=strategy)
    >>> write_model_dir(strategy, parts, dataset, "runs/din", metrics, history=history)

    edgerec train --strategy multiworker --workers 2 --data synthetic --model din --out runs/din_mw
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgerec.runtime.contract import FAMILIES
from edgerec.runtime.errors import SpecError, expected

from ..models.config import ModelConfig, ModelParts
from ..models.config import config_from_dict
from .fit import TrainConfig, evaluate, seeded_training_rows
from .loop import compile_model, run_epochs
from .launch import (DistributedError, WorkerResult, free_ports, launch_local_workers,  # noqa: F401 (re-exported)
                     local_tf_config)

STRATEGIES = ("mirrored", "multiworker")
TF_CONFIG = "TF_CONFIG"
SCORE_BATCH = 4096
RESULT_PREFIX = "EDGEREC_WORKER_RESULT "


@dataclass(frozen=True)
class DistributedConfig:
    """Which strategy trains, and how a local cluster is launched.

    Args:
        strategy: ``"mirrored"`` (local GPUs, else ``cpu_devices`` logical CPUs) or
            ``"multiworker"`` (the cluster in ``TF_CONFIG``).
        cpu_devices: logical CPU devices to mirror over when there is no GPU.
        workers: with ``multiworker`` and no ``TF_CONFIG``: launch this many local workers on
            loopback (0 = this process is a worker of a cluster configured elsewhere).
        worker_timeout: seconds the local cluster may run.
    """

    strategy: str = "mirrored"
    cpu_devices: int = 2
    workers: int = 0
    worker_timeout: float = 3600.0

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise SpecError(expected(f"strategy among {list(STRATEGIES)}", self.strategy))
        if isinstance(self.cpu_devices, bool) or not isinstance(self.cpu_devices, int) or self.cpu_devices < 1:
            raise SpecError(expected("cpu_devices as a positive int", self.cpu_devices))
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise SpecError(expected("workers as an int >= 0", self.workers))
        if self.workers and self.strategy != "multiworker":
            raise SpecError(expected("workers only with the multiworker strategy", self.strategy))
        if isinstance(self.worker_timeout, bool) or not isinstance(self.worker_timeout, (int, float)) \
                or not self.worker_timeout > 0:
            raise SpecError(expected("worker_timeout as a positive number of seconds", self.worker_timeout))

    @property
    def launches_local_cluster(self) -> bool:
        """True when this process should start ``workers`` local workers instead of training."""
        return self.strategy == "multiworker" and self.workers > 0 and TF_CONFIG not in os.environ

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DistributedConfig":
        return config_from_dict(cls, data, "distributed-config")


# -- devices and strategies -------------------------------------------------------------------
def configure_logical_cpus(count: int = 2) -> int:
    """Split the first physical CPU into ``count`` logical devices; returns the number present.

    Must run before TensorFlow initialises its runtime (before the first op). When the runtime is
    already up with at least ``count`` logical CPUs this is a no-op; with fewer it raises.
    """
    from edgerec.converters.tfenv import import_tf

    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SpecError(expected("cpu_devices as a positive int", count))
    tf, _ = import_tf()
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        present = len(tf.config.list_logical_devices("CPU"))
        if present < count:
            raise DistributedError(expected(
                f"{count} logical CPU devices configured before TensorFlow initialised "
                "(call configure_logical_cpus/make_strategy first)", f"{present} already initialised")) from None
        return present
    return len(tf.config.list_logical_devices("CPU"))


def parse_tf_config(text: str | None = None) -> dict:
    """``TF_CONFIG`` (from ``text`` or the environment), checked for a worker cluster and a task."""
    text = os.environ.get(TF_CONFIG) if text is None else text
    if not text:
        raise DistributedError(expected(f"${TF_CONFIG} set for --strategy multiworker "
                                        "(or use --workers N to launch local workers)", text))
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise DistributedError(expected(f"JSON in ${TF_CONFIG}", str(err))) from None
    config = config if isinstance(config, dict) else {}
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster or not all(isinstance(v, list) and v for v in cluster.values()):
        raise DistributedError(expected(f"a 'cluster' of host:port lists in ${TF_CONFIG}", cluster))
    if (not isinstance(task, dict) or task.get("type") not in cluster
            or not isinstance(task.get("index"), int) or not 0 <= task["index"] < len(cluster[task["type"]])):
        raise DistributedError(expected(f"a 'task' {{type, index}} inside the cluster in ${TF_CONFIG}", task))
    return config


def make_strategy(name: str, *, cpu_devices: int = 2):
    """Create the `tf.distribute` strategy ``name`` (call it before any other TensorFlow op).

    Args:
        name: ``"mirrored"`` or ``"multiworker"``.
        cpu_devices: logical CPU devices to mirror over when there is no GPU (``mirrored``).
    """
    from edgerec.converters.tfenv import import_tf

    if name not in STRATEGIES:
        raise SpecError(expected(f"strategy among {list(STRATEGIES)}", name))
    tf, _ = import_tf()
    if name == "multiworker":
        parse_tf_config()
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    configure_logical_cpus(cpu_devices)
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:cpu_devices]
    return tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


@dataclass(frozen=True)
class TaskInfo:
    """Where this process sits in the cluster (a single process is its own chief)."""

    task_type: str | None
    task_index: int
    is_chief: bool
    num_workers: int
    replicas: int


def task_info(strategy) -> TaskInfo:
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None) if resolver is not None else None
    task_index = int(getattr(resolver, "task_id", 0) or 0) if resolver is not None else 0
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    workers = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker")) or 1
    chief = (task_type in (None, "chief") or (task_type == "worker" and task_index == 0 and "chief" not in cluster))
    return TaskInfo(task_type, task_index, bool(chief), workers, int(strategy.num_replicas_in_sync))


def strategy_name(strategy) -> str:
    """``"multiworker"``, ``"mirrored"`` or the class name of another strategy."""
    cls = type(strategy).__name__
    if "MultiWorker" in cls or "CollectiveAllReduce" in cls:
        return "multiworker"
    return "mirrored" if cls == "MirroredStrategy" else cls


def global_batch_size(per_replica: int, strategy) -> int:
    """``per_replica`` x the strategy's replicas in sync."""
    return int(per_replica) * int(strategy.num_replicas_in_sync)


def make_train_dataset(inputs: dict, labels: np.ndarray, global_batch: int, seed: int, drop_remainder: bool):
    """Shuffled, batched `tf.data` pipeline over in-memory arrays, auto-sharded by DATA."""
    from edgerec.converters.tfenv import import_tf

    tf, _ = import_tf()
    rows = len(labels)
    data = tf.data.Dataset.from_tensor_slices((dict(inputs), labels))
    data = data.shuffle(rows, seed=seed, reshuffle_each_iteration=True)
    data = data.batch(global_batch, drop_remainder=drop_remainder).prefetch(2)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return data.with_options(options)


# -- building, training, unwrapping -----------------------------------------------------------
def build_model_distributed(strategy, family: str, spec, model_config: ModelConfig | None = None, content=None):
    """`build_model` inside ``strategy.scope()`` (variables mirrored across replicas/workers)."""
    from ..models import build_model

    with strategy.scope():
        return build_model(family, spec, model_config, content)


def _scores(model, inputs: dict) -> np.ndarray:
    """Fused probabilities by direct calls (no `predict`, so no collectives under a cluster)."""
    n = len(next(iter(inputs.values())))
    out = [np.asarray(model({k: v[i:i + SCORE_BATCH] for k, v in inputs.items()}, training=False))
           for i in range(0, n, SCORE_BATCH)]
    return np.concatenate(out).astype(np.float64).reshape(-1)


def fit_distributed(parts: ModelParts, dataset, config: TrainConfig | None, strategy) -> dict:
    """Train ``parts.fused`` (built under ``strategy``) in the shared epoch loop, with early stopping.

    ``config.batch_size`` is per replica. Returns `fit`'s history plus ``strategy``,
    ``replicas``, ``workers``, ``per_replica_batch``, ``global_batch`` and ``steps_per_epoch``.
    """
    from edgerec.converters.tfenv import import_tf

    _, keras = import_tf()
    config = TrainConfig() if config is None else config
    train = seeded_training_rows(dataset, config, keras)
    info = task_info(strategy)
    batch = global_batch_size(config.batch_size, strategy)
    # Several workers must run the same number of steps: drop the ragged last batch there.
    drop = info.num_workers > 1 and len(train) >= batch
    data = make_train_dataset(parts.select_inputs(train.inputs), np.asarray(train.labels, np.float32).reshape(-1, 1),
                              batch, config.seed, drop)
    steps = len(train) // batch if drop else math.ceil(len(train) / batch)
    with strategy.scope():
        compile_model(parts.fused, config.learning_rate)
    valid_inputs = parts.select_inputs(dataset.valid.inputs)

    def train_epoch(_epoch: int) -> dict:
        result = parts.fused.fit(data, epochs=1, verbose=0)
        return {"loss": float(result.history["loss"][-1])}

    history = run_epochs(parts.fused, config, train_epoch, lambda: _scores(parts.fused, valid_inputs),
                         dataset.valid.labels, log=bool(config.verbose) and info.is_chief,
                         note=f", {info.replicas} replicas", scope=strategy.scope)
    return {**history, "train_rows": len(train), "strategy": strategy_name(strategy),
            "replicas": info.replicas, "workers": info.num_workers, "per_replica_batch": config.batch_size,
            "global_batch": batch, "steps_per_epoch": steps}


def unwrap_parts(parts: ModelParts) -> ModelParts:
    """A strategy-free copy of ``parts`` (rebuilt outside any scope, same weights)."""
    from ..models import ContentParts, build_model

    content = None
    if parts.content_table is not None:
        content = ContentParts(parts.content_encoder, parts.content_table)
    plain = build_model(parts.family, parts.spec, parts.config, content)
    plain.fused.set_weights(parts.fused.get_weights())
    plain.meta = dict(parts.meta)
    return plain


def weights_sha256(model) -> str:
    """sha256 over a model's weights (shapes, dtypes and bytes, in order)."""
    digest = hashlib.sha256()
    for array in model.get_weights():
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def worker_record(strategy, parts: ModelParts, history: dict, out: Path | None) -> dict:
    """What one worker reports after training (a ``RESULT_PREFIX`` line): its place in the
    cluster, the batch layout, and the sha256 of its final weights (equal on every worker)."""
    info = task_info(strategy)
    return {"task_type": info.task_type, "task_index": info.task_index, "is_chief": info.is_chief,
            "replicas": history["replicas"], "workers": history["workers"], "global_batch": history["global_batch"],
            "steps_per_epoch": history["steps_per_epoch"], "epochs": len(history["epochs"]),
            "weights_sha256": weights_sha256(parts.fused), "out": str(out) if out else None}


def train_model_distributed(dataset, family: str, model_config: ModelConfig | None = None,
                            train_config: TrainConfig | None = None, strategy="mirrored", cpu_devices: int = 2):
    """`train_model` under a `tf.distribute` strategy (a strategy object or its name).

    Returns:
        ``(parts, history, metrics)`` like `train_model`; ``parts`` are strategy-free.
    """
    from .pipeline import prepare_training

    if family not in FAMILIES:     # before the strategy configures devices (prepare_training checks it too)
        raise SpecError(expected(f"a model family among {list(FAMILIES)}", family))
    if isinstance(strategy, str):
        strategy = make_strategy(strategy, cpu_devices=cpu_devices)
    model_config, train_config, spec, content, content_info = prepare_training(dataset, family, model_config,
                                                                               train_config)
    parts = build_model_distributed(strategy, family, spec, model_config, content)
    parts.meta["content"] = content_info
    history = fit_distributed(parts, dataset, train_config, strategy)
    plain = unwrap_parts(parts)
    return plain, history, evaluate(plain, dataset, config=train_config)


def write_model_dir(strategy, parts, dataset, out_dir, metrics: dict, train_config=None,
                    history: dict | None = None, data_source: str | None = None, seed: int = 0) -> Path | None:
    """`save_model_dir` on the chief; other workers write to a temp folder and delete it.

    Returns the model dir on the chief, ``None`` elsewhere.
    """
    from .model_dir import save_model_dir

    info = task_info(strategy)
    if info.is_chief:
        return save_model_dir(parts, dataset, out_dir, metrics, train_config, history, data_source, seed)
    scratch = Path(tempfile.mkdtemp(prefix=f"edgerec-worker{info.task_index}-"))
    try:
        save_model_dir(parts, dataset, scratch / "model", metrics, train_config, history, data_source, seed)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return None
