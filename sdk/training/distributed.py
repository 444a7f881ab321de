"""Distributed training with `tf.distribute`: ``--strategy mirrored|multiworker``.

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

    python -m edgerec.sdk.training.distributed --strategy multiworker --workers 2 \\
        --data synthetic --model din --out runs/din_mw
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgerec.runtime.errors import SpecError, expected

from ..models.config import FAMILIES, ModelConfig, ModelParts
from .fit import TrainConfig, evaluate, seeded_training_rows
from .launch import (DistributedError, WorkerResult, free_ports, launch_local_workers,  # noqa: F401 (re-exported)
                     local_tf_config)

STRATEGIES = ("mirrored", "multiworker")
TF_CONFIG = "TF_CONFIG"
SCORE_BATCH = 4096


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
        raise SpecError(expected(f"--strategy among {list(STRATEGIES)}", name))
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
    """Train ``parts.fused`` (built under ``strategy``) like `fit`, with early stopping.

    ``config.batch_size`` is per replica. Returns `fit`'s history plus ``strategy``,
    ``replicas``, ``per_replica_batch``, ``global_batch`` and ``steps_per_epoch``.
    """
    from edgerec.converters.tfenv import import_tf
    from edgerec.runtime import metrics as M

    tf, keras = import_tf()
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
        parts.fused.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                            loss=keras.losses.BinaryCrossentropy())
    valid_inputs = parts.select_inputs(dataset.valid.inputs)
    history, best, best_weights, waited = [], None, None, 0
    sign = 1.0 if config.monitor == "auc" else -1.0
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        result = parts.fused.fit(data, epochs=1, verbose=0)
        seconds = time.perf_counter() - start
        scores = _scores(parts.fused, valid_inputs)
        valid = {"auc": M.auc(dataset.valid.labels, scores), "logloss": M.logloss(dataset.valid.labels, scores)}
        row = {"epoch": epoch, "loss": float(result.history["loss"][-1]), "valid_auc": valid["auc"],
               "valid_logloss": valid["logloss"], "seconds": round(seconds, 2)}
        history.append(row)
        if config.verbose and info.is_chief:
            print(f"epoch {epoch}/{config.epochs}  loss {row['loss']:.4f}  valid auc {row['valid_auc']:.4f}  "
                  f"valid logloss {row['valid_logloss']:.4f}  ({seconds:.1f} s, {info.replicas} replicas)", flush=True)
        value = sign * (valid["auc"] if config.monitor == "auc" else valid["logloss"])
        if math.isnan(value):
            raise SpecError(expected("a finite validation metric (does valid hold both labels?)", value))
        if best is None or value > best[0]:
            best, best_weights, waited = (value, epoch), parts.fused.get_weights(), 0
        else:
            waited += 1
            if waited > config.patience:
                break
    with strategy.scope():
        parts.fused.set_weights(best_weights)
    return {"epochs": history, "best_epoch": best[1], "stopped_early": len(history) < config.epochs,
            "train_rows": len(train), "monitor": config.monitor, "strategy": strategy_name(strategy),
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
    return plain, history, evaluate(plain, dataset)


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


# -- command line (`edgerec train --strategy …` and `python -m edgerec.sdk.training.distributed`) --
RESULT_PREFIX = "EDGEREC_WORKER_RESULT "


def add_arguments(parser) -> None:
    """The distributed options of ``edgerec train``."""
    parser.add_argument("--strategy", choices=STRATEGIES, default=None,
                        help="tf.distribute strategy: mirrored (local GPUs, else logical CPUs) or "
                             "multiworker (TF_CONFIG); --batch-size is then per replica")
    parser.add_argument("--cpu-devices", type=int, default=2, help="logical CPU devices for mirrored without GPU")
    parser.add_argument("--workers", type=int, default=0,
                        help="multiworker without TF_CONFIG: launch this many local workers on loopback")
    parser.add_argument("--worker-timeout", type=float, default=3600.0, help="seconds for the local cluster")


def _json_arg(text, what):
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise SpecError(expected(f"{what} as a JSON object", str(err))) from None
    if not isinstance(value, dict):
        raise SpecError(expected(f"{what} as a JSON object", value))
    return value


def run_train(args, worker_argv: list[str] | None = None) -> int:
    """``edgerec train`` with ``args.strategy`` set (the train command's args namespace).

    With ``--strategy multiworker --workers N`` and no ``TF_CONFIG`` it launches N local workers
    running ``worker_argv`` (default: this ``edgerec`` command line again) and echoes the chief.
    """
    import sys

    from ..data import load_dataset

    if args.model not in FAMILIES:
        raise SpecError(expected(f"--model among {list(FAMILIES)}", args.model))
    if args.strategy not in STRATEGIES:
        raise SpecError(expected(f"--strategy among {list(STRATEGIES)}", args.strategy))
    if isinstance(args.workers, bool) or not isinstance(args.workers, int) or args.workers < 0:
        raise SpecError(expected("--workers as an int >= 0", args.workers))
    if args.workers and args.strategy != "multiworker":
        raise SpecError(expected("--workers only with --strategy multiworker", args.strategy))
    if args.strategy == "multiworker" and args.workers and TF_CONFIG not in os.environ:
        argv = worker_argv or [sys.executable, "-m", "edgerec.sdk.cli", *sys.argv[1:]]
        results = launch_local_workers(args.workers, argv, timeout=args.worker_timeout)
        print(results[0].output, end="")
        for result in results[1:]:
            print("".join(l + "\n" for l in result.output.splitlines() if l.startswith(RESULT_PREFIX)), end="")
        print(f"{len(results)} local workers finished in {max(r.seconds for r in results):.1f} s")
        return 0
    strategy = make_strategy(args.strategy, cpu_devices=args.cpu_devices)
    info = task_info(strategy)
    verbose = 0 if args.quiet or not info.is_chief else 1
    from ..cli.train import _data_options

    dataset = load_dataset(args.data, max_seq_len=args.max_seq_len, negatives=args.negatives, seed=args.seed,
                           progress=bool(verbose), **_data_options(getattr(args, "data_option", None) or []))
    model_config = ModelConfig.from_dict({"embedding_dim": args.embedding_dim,
                                          **_json_arg(getattr(args, "model_config", None), "--model-config")})
    train_config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                               patience=args.patience, monitor=args.monitor, seed=args.seed, verbose=verbose,
                               max_train_rows=args.max_train_rows)
    parts, history, metrics = train_model_distributed(dataset, args.model, model_config, train_config, strategy)
    out = write_model_dir(strategy, parts, dataset, args.out, metrics, train_config, history,
                          data_source=args.data, seed=args.seed)
    if info.is_chief:
        print(f"{args.model} on {dataset.name}, {history['strategy']} strategy ({history['replicas']} replicas, "
              f"{history['workers']} workers, global batch {history['global_batch']}): best epoch "
              f"{history['best_epoch']}, test auc {metrics['test']['auc']:.4f}  wrote {out}")
    print(RESULT_PREFIX + json.dumps({
        "task_type": info.task_type, "task_index": info.task_index, "is_chief": info.is_chief,
        "replicas": history["replicas"], "workers": history["workers"], "global_batch": history["global_batch"],
        "steps_per_epoch": history["steps_per_epoch"], "epochs": len(history["epochs"]),
        "weights_sha256": weights_sha256(parts.fused), "out": str(out) if out else None}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from ..cli.train import configure

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m edgerec.sdk.training.distributed",
                                     description="edgerec train under a tf.distribute strategy")
    configure(parser)   # includes the distributed options (add_arguments)
    parser.add_argument("--model-config", default=None, help="JSON: ModelConfig fields")
    args = parser.parse_args(argv)
    if args.strategy is None:
        parser.error("--strategy is required here")
    return run_train(args, [sys.executable, "-m", "edgerec.sdk.training.distributed", *argv])


if __name__ == "__main__":
    raise SystemExit(main())
