"""Warm-start a model on new events (online update), optionally export a new bundle version.

    edgerec update MODEL_DIR --events NEW.csv --out NEW_MODEL_DIR [--history PAST.csv]
                   [--steps 4 --events-per-batch 256 --replay 20000 --replay-policy reservoir]
                   [--export BUNDLE --quantize int8 --targets tflite,onnx]

NEW.csv has a header with ``user_id,item_id,timestamp`` (unix seconds) and optionally
``device``. The vocabulary is FROZEN: items and devices the model has never seen map to OOV.
A user's history is what ``--history`` (same columns: past events) and the earlier rows of
NEW.csv contain. The replay buffer starts with MODEL_DIR/calibration.npz (past training rows).

The new MODEL_DIR records ``bundle_version`` = parent's + 1 and an ``online`` section
(parent, events, prequential AUC of the updated vs the frozen model on the new events, AUC on
the parent's validation set before/after); ``--export`` runs `export_model` on it and stamps
the bundle manifest with the same ``bundle_version``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def configure(parser) -> None:
    parser.add_argument("model_dir", help="MODEL_DIR to warm-start from (written by `edgerec train`/`update`)")
    parser.add_argument("--events", required=True, help="CSV of new events: user_id,item_id,timestamp[,device]")
    parser.add_argument("--out", required=True, help="new MODEL_DIR to write (replaced atomically)")
    parser.add_argument("--history", default=None, help="CSV of past events (same columns) for user histories")
    parser.add_argument("--steps", type=int, default=4, help="gradient steps per batch of new events")
    parser.add_argument("--events-per-batch", type=int, default=256, help="new events per update batch")
    parser.add_argument("--batch-size", type=int, default=512, help="rows per gradient step")
    parser.add_argument("--replay", type=int, default=20000, help="replay buffer capacity (rows)")
    parser.add_argument("--replay-policy", choices=("reservoir", "fifo"), default="reservoir")
    parser.add_argument("--replay-fraction", type=float, default=0.5, help="share of each step from replay")
    parser.add_argument("--negatives", type=int, default=4, help="sampled negatives per new event")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export", default=None, help="also export the updated model into this bundle")
    parser.add_argument("--quantize", default="int8", help="export: comma list of none,fp16,dynamic,int8")
    parser.add_argument("--targets", default="tflite,onnx", help="export: comma list of tflite,onnx")
    parser.add_argument("--max-groups", type=int, default=None, help="export: validate on N ranking groups")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def _npz_split(path: Path, input_names, with_groups: bool):
    """A MODEL_DIR .npz (fused inputs + labels [+ groups]) as a `Split` (no pickle)."""
    import numpy as np

    from edgerec.runtime.errors import BundleError, expected

    from edgerec.sdk.data.dataset import Split

    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    need = ("labels", "groups") if with_groups else ("labels",)
    missing = [k for k in (*need, *input_names) if k not in arrays]
    if missing:
        raise BundleError(expected(f"{path.name} with the fused inputs and {' and '.join(need)}", f"missing {missing}"))
    return Split({k: arrays[k] for k in input_names}, arrays["labels"].astype(np.float32),
                 arrays["groups"] if with_groups else None)


def update_model_dir(model_dir, events, out, config=None, *, history=None, export=None,
                     export_options: dict | None = None, progress=None) -> dict:
    """Warm-start ``model_dir`` on ``events`` (CSV path or `EventLog`) and write ``out``.

    Args:
        model_dir: the MODEL_DIR to start from.
        events: new events, a CSV path or an `EventLog`.
        out: the new MODEL_DIR.
        config: an `OnlineConfig`.
        history: past events (CSV path or `EventLog`) that seed the user histories.
        export: bundle directory; when set, `export_model(out, export, **export_options)` runs.
        progress: ``callable(str)`` for progress lines.

    Returns:
        The summary recorded as ``online`` in the new ``edgerec_model.json`` (+ ``bundle``).
    """
    import numpy as np

    from edgerec.runtime import metrics as M
    from edgerec.runtime.io import atomic_write_json
    from edgerec.runtime.spec import NUM_RESERVED

    from edgerec.sdk.data.dataset import RecDataset, Split
    from .metrics import evaluate_scores
    from edgerec.sdk.training.fit import predict_scores
    from edgerec.sdk.training.model_dir import MANIFEST, load_model_dir, read_manifest, save_model_dir
    from edgerec.sdk.training.online import (EventLog, HistoryStore, OnlineConfig, OnlineUpdater, ReplayBuffer,
                                  encode_events, read_events_csv, with_negatives)

    say = progress or (lambda _m: None)
    config = config or OnlineConfig()
    source = Path(model_dir)
    manifest = read_manifest(source)
    events = events if isinstance(events, EventLog) else read_events_csv(events)
    parts = load_model_dir(source)
    spec = parts.spec
    store = HistoryStore(spec.max_seq_len)
    if history is not None:
        store.observe_all(history if isinstance(history, EventLog) else read_events_csv(history))
    encoded = encode_events(spec, events, store)
    rng = np.random.default_rng(config.seed)
    rows = with_negatives(encoded, config.negatives, spec.item_vocab.size, rng)
    names = list(parts.fused.input_names)
    validation = _npz_split(source / manifest["data"]["validation"], names, True)
    calibration = _npz_split(source / manifest["data"]["calibration"], names, False)
    say(f"{len(events)} new events -> {len(rows)} rows ({encoded.oov_item.mean():.1%} OOV items, "
        f"{1 - encoded.known_user.mean():.1%} events without history)")

    frozen = predict_scores(parts, rows.inputs)
    valid_before = M.auc(validation.labels, predict_scores(parts, validation.inputs))
    replay = ReplayBuffer(config.replay_capacity, config.replay_policy, config.seed)
    replay.add(calibration.inputs, calibration.labels)
    updater = OnlineUpdater(parts, config, replay)
    result = updater.stream(rows)
    valid_scores = predict_scores(parts, validation.inputs)
    summary = {
        "parent": str(source.absolute()), "events": len(events), "rows": len(rows),
        "oov_item_share": float(encoded.oov_item.mean()), "config": config.to_dict(),
        "steps": result["steps"], "batches": result["batches"],
        "prequential_auc": M.auc(rows.labels, result["scores"]), "frozen_auc": M.auc(rows.labels, frozen),
        "validation_auc_before": valid_before, "validation_auc_after": M.auc(validation.labels, valid_scores),
        "vocabulary": "frozen (unknown items/devices -> OOV)"}
    say(f"prequential AUC {summary['prequential_auc']:.4f} (frozen {summary['frozen_auc']:.4f}); validation AUC "
        f"{valid_before:.4f} -> {summary['validation_auc_after']:.4f}")

    metrics_path = source / "metrics.json"
    old_metrics = json.loads(metrics_path.read_text("utf-8")) if metrics_path.is_file() else {}
    catalog = spec.item_vocab.size - NUM_RESERVED
    metrics = {"test": evaluate_scores(validation, valid_scores, catalog),
               "baseline": old_metrics.get("baseline") or {"auc": float("nan"), "recall@10": float("nan"),
                                                          "ndcg@10": float("nan")}}
    keep = rng.choice(len(rows), min(len(rows), 1000), replace=False)
    recent = replay.contents()
    train = Split({k: np.concatenate([rows.inputs[k][keep], recent.inputs[k]]) for k in names},
                  np.concatenate([rows.labels[keep], recent.labels]))
    examples_path = source / manifest.get("examples", "examples.jsonl")
    examples = [json.loads(line) for line in examples_path.read_text("utf-8").splitlines() if line.strip()] \
        if examples_path.is_file() else []
    dataset = RecDataset(old_metrics.get("data", "online"), spec, train, validation, validation, [],
                         np.zeros(spec.item_vocab.size, np.int64), examples)
    version = int(manifest.get("bundle_version", 1)) + 1
    written = save_model_dir(parts, dataset, out, metrics, history={"online": summary},
                             data_source=manifest.get("data_source"), seed=config.seed)
    new_manifest = json.loads((written / MANIFEST).read_text("utf-8"))
    new_manifest.update(bundle_version=version, online=summary)
    atomic_write_json(written / MANIFEST, new_manifest)
    summary = {**summary, "bundle_version": version, "model_dir": str(written)}
    if export is not None:
        summary["bundle"] = _export(written, export, version, export_options or {}, say)
    return summary


def _export(model_dir: Path, bundle, version: int, options: dict, say) -> dict:
    """`export_model` the updated dir, then stamp ``bundle_version`` into the bundle manifest."""
    from edgerec.converters.export import export_model
    from edgerec.runtime.manifest import load_manifest, write_manifest

    manifest = export_model(model_dir, bundle, progress=say, **options)
    manifest.bundle_version = version
    write_manifest(bundle, manifest)
    load_manifest(bundle, verify=True)
    return {"path": str(bundle), "bundle_version": version, "selected": manifest.selected}


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def run(args) -> int:
    from edgerec.runtime.errors import SpecError, expected

    from edgerec.sdk.training.online import OnlineConfig

    if not Path(args.model_dir).is_dir():
        raise SpecError(expected("an existing MODEL_DIR", args.model_dir))
    export_options = None
    if args.export is not None:
        from edgerec.converters.export import check_options

        quantize, targets = _csv(args.quantize), _csv(args.targets)
        check_options(None, quantize, targets, 0.003)            # fail fast, before training
        export_options = {"quantize": quantize, "targets": targets, "max_groups": args.max_groups}
    config = OnlineConfig(events_per_batch=args.events_per_batch, steps_per_batch=args.steps,
                          batch_size=args.batch_size, replay_fraction=args.replay_fraction,
                          replay_capacity=args.replay, replay_policy=args.replay_policy,
                          negatives=args.negatives, learning_rate=args.learning_rate, seed=args.seed)
    say = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    summary = update_model_dir(args.model_dir, args.events, args.out, config, history=args.history,
                               export=args.export, export_options=export_options, progress=say)
    print(json.dumps(summary))
    return 0
