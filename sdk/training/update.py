"""Warm-start a MODEL_DIR on new events into a new MODEL_DIR (``edgerec update``), optionally exported.

The vocabulary is FROZEN: items and devices the model has never seen map to OOV. A user's
history is what ``history`` (past events) and the earlier new events contain. The replay buffer
starts with the parent's ``calibration.npz`` (past training rows).

The new MODEL_DIR records ``bundle_version`` = parent's + 1 and an ``online`` section (parent,
events, prequential AUC of the updated vs the frozen model on the new events, AUC on the parent's
validation set before/after); with ``export`` the new dir is exported into a bundle stamped with
the same ``bundle_version``.

Examples:
    >>> summary = update_model_dir("runs/din", "new.csv", "runs/din-v2", OnlineConfig(steps_per_batch=4))
    >>> summary["bundle_version"], summary["prequential_auc"] > summary["frozen_auc"]   # doctest: +SKIP
    (2, True)
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from edgerec.runtime.errors import BundleError, SpecError, expected

from ..data.dataset import RecDataset, Split
from .events import EventLog, HistoryStore, encode_events, read_events_csv, with_negatives
from .online import OnlineConfig, OnlineUpdater
from .replay import ReplayBuffer

logger = logging.getLogger(__name__)

EXPORT_OPTIONS = ("quantize", "targets", "max_groups")


def _npz_split(path: Path, input_names, with_groups: bool) -> Split:
    """A MODEL_DIR .npz (fused inputs + labels [+ groups]) as a `Split` (no pickle)."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    need = ("labels", "groups") if with_groups else ("labels",)
    missing = [k for k in (*need, *input_names) if k not in arrays]
    if missing:
        raise BundleError(expected(f"{path.name} with the fused inputs and {' and '.join(need)}",
                                   f"missing {missing}"))
    return Split({k: arrays[k] for k in input_names}, arrays["labels"].astype(np.float32),
                 arrays["groups"] if with_groups else None)


def _check_export_options(options: dict) -> dict:
    from edgerec.converters.export import check_options

    unknown = sorted(set(options) - set(EXPORT_OPTIONS))
    if unknown:
        raise SpecError(expected(f"export options among {list(EXPORT_OPTIONS)}", unknown))
    _, quantize, targets = check_options(None, options.get("quantize", ("int8",)),
                                         options.get("targets", ("tflite", "onnx")), 0.003)
    return {**options, "quantize": list(quantize), "targets": list(targets)}


def update_model_dir(model_dir, events, out, config: OnlineConfig | None = None, *, history=None, export=None,
                     export_options: dict | None = None, verbose: bool = True) -> dict:
    """Warm-start ``model_dir`` on ``events`` and write ``out``.

    Export options are checked before any training, so a bad one fails in a second.

    Args:
        model_dir: the MODEL_DIR to start from.
        events: new events, a CSV path (``user_id,item_id,timestamp[,device]``) or an `EventLog`.
        out: the new MODEL_DIR (replaced atomically).
        config: an `OnlineConfig`.
        history: past events (CSV path or `EventLog`) that seed the user histories.
        export: bundle directory; when set, `export_model(out, export, **export_options)` runs.
        export_options: ``quantize``, ``targets``, ``max_groups`` for the export.
        verbose: log progress lines.

    Returns:
        The summary recorded as ``online`` in the new ``edgerec_model.json``, plus
        ``bundle_version``, ``model_dir`` (and ``bundle`` when exported).
    """
    from edgerec.runtime import metrics as M
    from edgerec.runtime.io import atomic_write_json
    from edgerec.runtime.spec import NUM_RESERVED

    from ..metrics import evaluate_scores
    from .fit import predict_scores
    from .model_dir import MANIFEST, load_model_dir, read_manifest, save_model_dir

    say = logger.info if verbose else (lambda _m: None)
    source = Path(model_dir)
    if not source.is_dir():
        raise SpecError(expected("an existing MODEL_DIR", str(model_dir)))
    export_options = _check_export_options(export_options or {}) if export is not None else None
    config = config or OnlineConfig()
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
    result = OnlineUpdater(parts, config, replay).stream(rows)
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
    no_baseline = {"auc": float("nan"), "recall@10": float("nan"), "ndcg@10": float("nan")}
    metrics = {"test": evaluate_scores(validation, valid_scores, catalog),
               "baseline": old_metrics.get("baseline") or no_baseline}
    keep = rng.choice(len(rows), min(len(rows), 1000), replace=False)
    recent = replay.contents()
    train = Split({k: np.concatenate([rows.inputs[k][keep], recent.inputs[k]]) for k in names},
                  np.concatenate([rows.labels[keep], recent.labels]))
    dataset = RecDataset(old_metrics.get("data", "online"), spec, train, validation, validation, [],
                         np.zeros(spec.item_vocab.size, np.int64), _examples(source, manifest))
    version = int(manifest.get("bundle_version", 1)) + 1
    written = save_model_dir(parts, dataset, out, metrics, history={"online": summary},
                             data_source=manifest.get("data_source"), seed=config.seed)
    new_manifest = json.loads((written / MANIFEST).read_text("utf-8"))
    new_manifest.update(bundle_version=version, online=summary)
    atomic_write_json(written / MANIFEST, new_manifest)
    summary = {**summary, "bundle_version": version, "model_dir": str(written)}
    if export is not None:
        summary["bundle"] = _export(written, export, version, export_options, say if verbose else None)
    return summary


def _examples(model_dir: Path, manifest: dict) -> list[dict]:
    """The parent's example requests (their expected scores are recomputed for the new model)."""
    from edgerec.runtime.requests_io import parse_jsonl

    path = model_dir / manifest.get("examples", "examples.jsonl")
    if not path.is_file():
        return []
    return parse_jsonl(path.read_text("utf-8"), str(path), error=BundleError)


def _export(model_dir: Path, bundle, version: int, options: dict, progress) -> dict:
    """`export_model` the updated dir, then stamp ``bundle_version`` into the bundle manifest."""
    from edgerec.converters.export import export_model
    from edgerec.runtime.manifest import load_manifest, write_manifest

    manifest = export_model(model_dir, bundle, progress=progress, **options)
    manifest.bundle_version = version
    write_manifest(bundle, manifest)
    load_manifest(bundle, verify=True)
    return {"path": str(bundle), "bundle_version": version, "selected": manifest.selected}
