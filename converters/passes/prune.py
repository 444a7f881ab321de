"""Magnitude pruning with tensorflow_model_optimization (tf_keras models only).

Each layer tfmot knows is wrapped with ``prune_low_magnitude`` through
``clone_model(clone_function=…)`` (nested models recursively); layers with weights that tfmot
cannot prune (custom layers, unknown built-ins) are kept as they are and LISTED in
``details["skipped_layers"]``. The model is fine-tuned on the ``.npz`` rows with
``UpdatePruningStep`` under a ``PolynomialDecay`` schedule whose ``end_step`` and ``frequency`` are
computed from the real number of fine-tuning steps (tfmot's default frequency of 100 silently
yields 0 % on short runs), scaled per layer by how often the layer is called per step (a shared
embedding advances its step counter once per call). After ``strip_pruning`` the achieved
sparsity is counted per layer (zeros / weights) and must match the target within ``tolerance``.

``pair_blocks`` prunes Dense kernels and Embedding tables in blocks of two neighbours along the
axis a packed 4-bit format stores in one byte (a Dense kernel's input axis: TFLite
FULLY_CONNECTED and ONNX MatMulNBits pack along it; an Embedding's row): every pruned byte of the
4-bit file is then 0x00 instead of half a byte beside a kept value, which is what gzip shrinks
(the element-wise pruned MovieLens DIN table packed at 4 bits: 5.5 bits of entropy per byte).

Examples:
    >>> PrunePass().run("m/fused.keras", PruneConfig(sparsity=0.5, data="m/calibration.npz"), "out")  # doctest: +SKIP
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConverterConfigError, PruningError, expected
from ..keras_io import input_specs, load_keras_model, require_tf_keras, walk_layers
from ..pipeline import ExportedArtifact, Pass
from .data import cast_like, load_rows


@dataclass(frozen=True)
class PruneConfig:
    """Args:
        sparsity: target fraction of zero weights in every prunable weight, strictly in (0, 1).
        data: ``.npz`` of training rows (model inputs + ``labels``) used for fine-tuning.
        epochs: fine-tuning epochs.
        batch_size: fine-tuning batch size.
        learning_rate: Adam learning rate of the fine-tuning.
        max_rows: rows read from ``data`` (``None`` = all).
        end_fraction: fraction of the fine-tuning steps after which the target is reached
            (the rest recovers accuracy at full sparsity).
        skip_layers: layer names never pruned (listed as skipped).
        tolerance: allowed |achieved − target| of the prunable weights, in fraction (0.01 = 1 point).
        custom_objects_module: module registering custom layers, imported before loading.
        seed: seed for the fine-tuning shuffle.
        pair_blocks: prune Dense kernels ``(2, 1)`` and Embedding tables ``(1, 2)`` in pairs of
            neighbours packed into one byte at 4 bits (weights with a dimension < 2 stay element-wise).
    """

    sparsity: float = 0.5
    data: str | None = None
    epochs: int = 2
    batch_size: int = 64
    learning_rate: float = 1e-3
    max_rows: int | None = None
    end_fraction: float = 0.7
    skip_layers: tuple[str, ...] = ()
    tolerance: float = 0.01
    custom_objects_module: str | None = None
    seed: int = 0
    pair_blocks: bool = True

    def __post_init__(self):
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) \
                or not 0.0 < float(self.sparsity) < 1.0:
            raise ConverterConfigError(expected("a pruning sparsity strictly between 0 and 1", self.sparsity))
        if not self.data:
            raise ConverterConfigError(expected("data=<training rows .npz with labels> for pruning fine-tuning",
                                                self.data))
        if self.epochs < 1 or self.batch_size < 1:
            raise ConverterConfigError(expected("epochs >= 1 and batch_size >= 1", (self.epochs, self.batch_size)))
        if not 0.0 < self.end_fraction <= 1.0:
            raise ConverterConfigError(expected("end_fraction in (0, 1]", self.end_fraction))


def schedule_steps(rows: int, config: PruneConfig) -> tuple[int, int, int]:
    """``(total_steps, end_step, frequency)`` in optimizer steps, such that the last mask update
    lands exactly on ``end_step`` (where PolynomialDecay reaches the target) before training ends."""
    total = config.epochs * math.ceil(rows / config.batch_size)
    if total < 2:
        raise ConverterConfigError(expected("at least 2 fine-tuning steps (more rows or epochs)", total))
    frequency = max(1, min(100, total // 10))
    end = max(frequency, int(total * config.end_fraction) // frequency * frequency)
    if end >= total:
        end = max(frequency, (total - 1) // frequency * frequency)
    return total, end, frequency


def pair_block(layer, enabled: bool = True) -> tuple[int, int]:
    """The tfmot ``block_size`` of ``layer``: two neighbours that share a byte at 4 bits, ``(1, 1)`` otherwise.

    Only a Dense kernel (pairs along the input axis) or an Embedding table (pairs along the row)
    whose every dimension is at least 2 gets a pair block (tfmot squeezes the weight first).
    """
    kind = type(layer).__name__
    weight = getattr(layer, "kernel", None) if kind == "Dense" else \
        getattr(layer, "embeddings", None) if kind == "Embedding" else None
    shape = tuple(getattr(weight, "shape", ()))
    if not enabled or len(shape) != 2 or min(shape) < 2:
        return (1, 1)
    return (2, 1) if kind == "Dense" else (1, 2)


class PrunePass(Pass):
    name = "prune"
    version = 2
    Config = PruneConfig
    path_fields = ("data",)
    accepts = ("keras", "savedmodel")

    def _run_impl(self, source: ExportedArtifact, config: PruneConfig, out_dir: Path) -> ExportedArtifact:
        import tensorflow_model_optimization as tfmot

        from edgerec.converters.tfenv import import_tf

        tf, tf_keras = import_tf()
        model = load_keras_model(source.path, config.custom_objects_module)
        require_tf_keras(model, "tfmot pruning")
        if len(model.outputs) != 1 or isinstance(model.output, dict):
            raise ConverterConfigError(expected("a single-output model (the fused model or scorer) to fine-tune "
                                                "against labels", f"{len(model.outputs)} outputs"))
        specs = input_specs(model)
        rows = load_rows(config.data, list(specs), limit=config.max_rows, need_labels=True)
        labels = rows.pop("labels").astype(np.float32).reshape(-1, 1)
        rows = cast_like(rows, {n: d for n, (d, _) in specs.items()})
        total, end, frequency = schedule_steps(len(labels), config)

        sparsity = tfmot.sparsity.keras
        skipped, wrapped, blocks = [], {}, {}

        def clone(layer):
            if isinstance(layer, tf_keras.Model):
                return tf_keras.models.clone_model(layer, clone_function=clone)
            if not layer.weights:
                return layer
            if callable(getattr(layer, "get_prunable_weights", None)) and \
                    not isinstance(layer, sparsity.PrunableLayer):
                sparsity.PrunableLayer.register(type(layer))     # duck-typed custom layer (ProjectedGRU)
            supported = isinstance(layer, sparsity.PrunableLayer) or \
                _registry().supports(layer)
            if layer.name in config.skip_layers or not supported:
                reason = "skip_layers" if layer.name in config.skip_layers else \
                    f"tfmot cannot prune {type(layer).__name__} (custom or unsupported layer)"
                skipped.append({"layer": layer.name, "class": type(layer).__name__, "reason": reason,
                                "weights": int(sum(np.prod(w.shape) for w in layer.weights))})
                return layer
            calls = max(1, len(getattr(layer, "_inbound_nodes", [])))  # shared layers step once per call
            schedule = sparsity.PolynomialDecay(initial_sparsity=0.0, final_sparsity=float(config.sparsity),
                                                begin_step=0, end_step=end * calls, frequency=frequency * calls)
            block = pair_block(layer, config.pair_blocks)
            wrapped[layer.name] = calls
            if block != (1, 1):
                blocks[layer.name] = list(block)
            # Wrap the loaded layer itself (as tfmot does): built, weights kept, MHA internals intact.
            return sparsity.prune_low_magnitude(layer, pruning_schedule=schedule, block_size=block)

        try:
            pruned = tf_keras.models.clone_model(model, clone_function=clone)
        except Exception as err:  # noqa: BLE001
            raise PruningError(expected(f"a model tfmot can wrap for pruning ({source.path})",
                                        f"{type(err).__name__}: {err}")) from None
        if not wrapped:
            raise PruningError(expected("at least one layer tfmot can prune", f"skipped: {skipped}"))
        tf_keras.utils.set_random_seed(config.seed)
        pruned.compile(optimizer=tf_keras.optimizers.Adam(config.learning_rate), loss="binary_crossentropy")
        pruned.fit(rows, labels, epochs=config.epochs, batch_size=config.batch_size, shuffle=True, verbose=0,
                   callbacks=[sparsity.UpdatePruningStep()])
        prunable = _prunable_indices(pruned)
        stripped = sparsity.strip_pruning(pruned)
        report = sparsity_report(stripped, prunable)
        achieved = report["prunable_sparsity"]
        if abs(achieved - float(config.sparsity)) > config.tolerance:
            raise PruningError(expected(
                f"{config.sparsity:.1%} zeros in the prunable weights (±{config.tolerance:.1%})",
                f"{achieved:.2%} after {total} steps (end_step {end}, frequency {frequency})"))
        out = out_dir / f"{source.part}.pruned.keras"
        stripped.save(str(out))
        details = {"target_sparsity": float(config.sparsity), "achieved_sparsity": achieved,
                   "model_sparsity": report["model_sparsity"], "layers": report["layers"],
                   "skipped_layers": skipped, "blocks": blocks, "steps": total, "end_step": end,
                   "frequency": frequency,
                   "fine_tune_rows": int(len(labels))}
        return ExportedArtifact(path=str(out), format="keras", precision="fp32", part=source.part, details=details)


def _registry():
    from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry

    return prune_registry.PruneRegistry


def _prunable_indices(pruned) -> dict[str, list[int]]:
    """``{layer name: indices into layer.weights}`` of the weights tfmot prunes."""
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

    out = {}
    for layer in walk_layers(pruned):
        if isinstance(layer, PruneLowMagnitude):
            chosen = {id(w) for w in layer.prunable_weights}
            out[layer.layer.name] = [i for i, w in enumerate(layer.layer.weights) if id(w) in chosen]
    return out


def sparsity_report(model, prunable: dict[str, list[int]]) -> dict:
    """Zeros counted per layer in ``model`` (a stripped model) for the listed weight indices."""
    layers, zeros_all, size_all, model_zeros, model_size = {}, 0, 0, 0, 0
    for layer in walk_layers(model):
        if hasattr(layer, "layers"):
            continue
        values = layer.get_weights()
        for v in values:
            model_zeros += int(np.sum(v == 0))
            model_size += int(v.size)
        if layer.name not in prunable:
            continue
        chosen = [values[i] for i in prunable[layer.name]]
        zeros = int(sum(np.sum(v == 0) for v in chosen))
        size = int(sum(v.size for v in chosen))
        layers[layer.name] = {"weights": size, "zeros": zeros, "sparsity": zeros / size if size else 0.0}
        zeros_all += zeros
        size_all += size
    return {"layers": layers, "prunable_sparsity": zeros_all / size_all if size_all else 0.0,
            "model_sparsity": model_zeros / model_size if model_size else 0.0}


@dataclass(frozen=True)
class PrunedPartConfig:
    """Args:
        pruned_model: the pruned fused model (output of `PrunePass`) whose weights the part takes.
        custom_objects_module: module registering custom layers, imported before loading.
        unpruned_layers: layers the prune pass skipped; copied, but left out of the sparsity report.
    """

    pruned_model: str | None = None
    custom_objects_module: str | None = None
    unpruned_layers: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.pruned_model:
            raise ConverterConfigError(expected("pruned_model=<pruned fused .keras>", self.pruned_model))


class PrunedPartPass(Pass):
    """Give a split part (user_encoder, scorer) the weights of the pruned fused model.

    edgerec families build ``fused``, ``user_encoder`` and ``scorer`` from the SAME layers, so
    tfmot prunes and fine-tunes the fused model (the only one with labels) and each part then
    takes the weights of its layers by name: ``scorer(user_encoder(x)) == pruned_fused(x)``.
    A part layer with weights that the fused model lacks (or with other shapes) is an error.
    """

    name = "pruned_part"
    version = 2
    Config = PrunedPartConfig
    path_fields = ("pruned_model",)
    accepts = ("keras", "savedmodel")

    def _run_impl(self, source: ExportedArtifact, config: PrunedPartConfig, out_dir: Path) -> ExportedArtifact:
        part = load_keras_model(source.path, config.custom_objects_module)
        fused = load_keras_model(config.pruned_model, config.custom_objects_module)
        require_tf_keras(part, "taking pruned weights")
        donors = {layer.name: layer for layer in walk_layers(fused) if not hasattr(layer, "layers")}
        copied, problems, prunable = [], [], {}
        for layer in walk_layers(part):
            if hasattr(layer, "layers") or not layer.weights:
                continue
            donor = donors.get(layer.name)
            shapes = [tuple(w.shape) for w in layer.weights]
            if donor is None or [tuple(w.shape) for w in donor.weights] != shapes:
                problems.append(layer.name)
                continue
            layer.set_weights(donor.get_weights())
            copied.append(layer.name)
            if layer.name not in config.unpruned_layers:
                prunable[layer.name] = [i for i, w in enumerate(donor.get_weights()) if w.ndim >= 2]
        if problems:
            raise ConverterConfigError(expected(f"every weighted layer of the {source.part} in the pruned fused "
                                                "model with the same shapes", f"missing or different: {problems}"))
        out = out_dir / f"{source.part}.pruned.keras"
        part.save(str(out))
        report = sparsity_report(part, prunable)
        return ExportedArtifact(path=str(out), format="keras", precision="fp32", part=source.part,
                                details={"achieved_sparsity": report["prunable_sparsity"],
                                         "model_sparsity": report["model_sparsity"], "layers": report["layers"],
                                         "copied_layers": copied})
