"""Adversarial training and robustness evaluation on the item-embedding outputs (FGSM / PGD).

The perturbation ``r`` is added to the OUTPUTS of the shared ``item_embedding`` layer — every
behaviour-sequence position and the candidate — never to the ids. `EmbeddingForward` replays
a model family's graph from those embedding tensors with the fused model's own layers, so a
custom `tf.GradientTape` step can train on ``clean + weight × adversarial`` loss while the
saved / exported parts stay the plain ``fused`` / ``user_encoder`` / ``scorer`` graphs (the
attack exists only inside the training step).

ε is RELATIVE: ``eps × mean L2 norm of the item-embedding rows`` of the model being trained or
attacked (recomputed at every step), so a model cannot defeat a fixed ε by inflating its
embedding norms, and ε means the same for a plain and an adversarially trained model.

* ``l2`` (default): ``r = ε · g / ||g||`` per embedding vector (each of the L history vectors
  and the candidate vector has its own norm ε; padded positions get 0);
* ``linf``: ``r = ε · sign(g)`` per vector.
PGD takes ``steps`` ascent steps of size ``step_size·ε`` (default 2.5/steps) and projects back
onto the ε-ball of each vector after every step.

Examples:
    >>> adv = AdversarialConfig(attack="fgsm", eps=0.5, weight=1.0)
    >>> parts, history, metrics = train_adversarial_model(dataset, "din", adv_config=adv)
    >>> report = robustness_report(parts, dataset, [0.0, 0.25, 0.5], attack="pgd")
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from edgerec.runtime import metrics as M
from edgerec.runtime.contract import FAMILIES
from edgerec.runtime.errors import SpecError, expected
from edgerec.runtime.spec import CAND_ITEM, DENSE, HIST_ITEMS, NUM_RESERVED

from ..models.families import RECURRENT_FAMILIES
from ..models.config import config_from_dict

ATTACKS = ("fgsm", "pgd")
NORMS = ("l2", "linf")


@dataclass(frozen=True)
class AdversarialConfig:
    """How adversarial examples are made and mixed into training.

    Args:
        attack: ``"fgsm"`` (one gradient step) or ``"pgd"`` (``steps`` projected steps).
        eps: perturbation radius relative to the mean item-embedding L2 norm (> 0).
        weight: loss = clean + ``weight`` × adversarial (≥ 0).
        norm: ``"l2"`` (``ε·g/||g||`` per vector) or ``"linf"`` (``ε·sign(g)``).
        steps: PGD steps.
        step_size: PGD step as a fraction of ε (default ``2.5 / steps``).
    """

    attack: str = "fgsm"
    eps: float = 0.5
    weight: float = 1.0
    norm: str = "l2"
    steps: int = 3
    step_size: float | None = None

    def __post_init__(self):
        if self.attack not in ATTACKS:
            raise SpecError(expected(f"attack among {list(ATTACKS)}", self.attack))
        if self.norm not in NORMS:
            raise SpecError(expected(f"norm among {list(NORMS)}", self.norm))
        for name in ("eps", "weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (name == "eps" and value == 0):
                raise SpecError(expected(f"{name} as a {'positive' if name == 'eps' else 'non-negative'} number",
                                         value))
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise SpecError(expected("steps as a positive int", self.steps))
        if self.step_size is not None and (not isinstance(self.step_size, (int, float)) or self.step_size <= 0):
            raise SpecError(expected("step_size as a positive number or None", self.step_size))

    @property
    def pgd_step(self) -> float:
        return float(self.step_size) if self.step_size is not None else 2.5 / self.steps

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AdversarialConfig":
        return config_from_dict(cls, data, "adversarial-config")


class EmbeddingForward:
    """A family's fused graph replayed from item-embedding outputs, with the model's own layers.

    ``score(inputs, hist_emb, cand_emb)`` equals ``fused(inputs)`` when the embeddings are
    ``embed(inputs)`` (checked in the tests), and is differentiable w.r.t. the embeddings.

    Args:
        parts: a `ModelParts` of one of `FAMILIES`.
    """

    def __init__(self, parts):
        from edgerec.converters.tfenv import import_tf

        if parts.family not in FAMILIES:
            raise SpecError(expected(f"a model family among {list(FAMILIES)}", parts.family))
        self.tf, _ = import_tf()
        self.parts, self.family, self.config = parts, parts.family, parts.config
        names = {layer.name for layer in parts.fused.layers}
        self.layer = parts.fused.get_layer
        self.embedding = self.layer("item_embedding")
        self.has_content = "item_content" in names
        self.context_names = [f.name for f in parts.spec.context if f"context_{f.name}" in names]
        self.uses_dense = DENSE in parts.fused.input_names
        self.mlp = []
        for i in range(len(self.config.hidden_units)):
            self.mlp.append(self.layer(f"mlp_{i}"))
            if f"mlp_dropout_{i}" in names:
                self.mlp.append(self.layer(f"mlp_dropout_{i}"))

    def embed(self, inputs):
        """``(hist_emb [B, L, D], cand_emb [B, D])`` from the shared item embedding."""
        return self.embedding(inputs[HIST_ITEMS]), self.embedding(inputs[CAND_ITEM])

    def mask(self, inputs):
        """1.0 at real history positions, 0.0 at padding ``[B, L]``."""
        return self.tf.cast(self.tf.not_equal(inputs[HIST_ITEMS], 0), self.tf.float32)

    def embedding_scale(self):
        """Mean L2 norm of the item-embedding rows (padding and OOV rows excluded)."""
        table = self.embedding.embeddings[NUM_RESERVED:]
        return self.tf.reduce_mean(self.tf.norm(table, axis=-1))

    def _repr(self, ids, emb):
        if not self.has_content:
            return emb
        projected = self.layer("content_projection")(self.layer("item_content")(ids))
        return self.tf.concat([emb, projected], axis=-1)

    def score(self, inputs, hist_emb, cand_emb, training: bool = False):
        tf, layer = self.tf, self.layer
        hist, cand_ids = inputs[HIST_ITEMS], inputs[CAND_ITEM]
        if self.family in RECURRENT_FAMILIES:
            state = layer("user_state")(hist_emb, training=training)
            features = [state, cand_emb, state * layer("cand_projection")(cand_emb)]
        else:
            mask = layer("user_mask")(hist)
            sequence = self._repr(hist, hist_emb)
            if self.family == "bst":
                sequence = layer("positions")(sequence)
                for i in range(self.config.num_blocks):
                    sequence = layer(f"transformer_{i}")([sequence, mask], training=training)
            state = layer("user_state")(sequence)
            cand = self._repr(cand_ids, cand_emb)
            attended = layer("target_attention")([cand, state, mask])
            features = [cand, attended, cand * attended, layer("mean_pool")([state, mask])]
        features += [layer(f"context_{name}")(inputs[name]) for name in self.context_names]
        if self.uses_dense:
            features.append(inputs[DENSE])
        x = tf.concat(features, axis=-1)
        for dense in self.mlp:
            x = dense(x, training=training)
        return layer("score")(x)

    # -- attacks ------------------------------------------------------------------------------
    def _direction(self, grad, norm: str):
        tf = self.tf
        if norm == "linf":
            return tf.sign(grad)
        length = tf.norm(grad, axis=-1, keepdims=True)
        return tf.math.divide_no_nan(grad, length)

    def _project(self, delta, radius, norm: str):
        tf = self.tf
        if norm == "linf":
            return tf.clip_by_value(delta, -radius, radius)
        length = tf.norm(delta, axis=-1, keepdims=True)
        return delta * tf.minimum(1.0, tf.math.divide_no_nan(radius, length))

    def perturbation(self, inputs, labels, hist_emb, cand_emb, config: AdversarialConfig,
                     training: bool = False, eps=None):
        """``(r_hist, r_cand)`` that increase the logloss on ``labels`` (embeddings held fixed).

        ``||r||`` per vector is exactly ``eps × embedding_scale()`` for FGSM-l2 wherever the
        gradient is non-zero; PGD stays inside that ball. Padded history positions get 0.
        ``eps`` (a float or scalar tensor) overrides ``config.eps``.
        """
        tf = self.tf
        hist_emb, cand_emb = tf.stop_gradient(hist_emb), tf.stop_gradient(cand_emb)
        labels = tf.reshape(tf.cast(labels, tf.float32), [-1, 1])
        mask = self.mask(inputs)[:, :, None]
        eps = config.eps if eps is None else eps
        radius = tf.stop_gradient(eps * self.embedding_scale())
        steps = 1 if config.attack == "fgsm" else config.steps
        step = radius if config.attack == "fgsm" else config.pgd_step * radius
        r_hist, r_cand = tf.zeros_like(hist_emb), tf.zeros_like(cand_emb)
        for _ in range(steps):
            with tf.GradientTape() as tape:
                tape.watch([r_hist, r_cand])
                probs = self.score(inputs, hist_emb + r_hist, cand_emb + r_cand, training=training)
                loss = tf.reduce_sum(_logloss(tf, labels, probs))
            g_hist, g_cand = tape.gradient(loss, [r_hist, r_cand])
            r_hist = r_hist + step * self._direction(g_hist, config.norm) * mask
            r_cand = r_cand + step * self._direction(g_cand, config.norm)
            if config.attack == "pgd":
                r_hist = self._project(r_hist, radius, config.norm)
                r_cand = self._project(r_cand, radius, config.norm)
        return tf.stop_gradient(r_hist), tf.stop_gradient(r_cand)


def _logloss(tf, labels, probs):
    probs = tf.clip_by_value(probs, 1e-7, 1.0 - 1e-7)
    return -(labels * tf.math.log(probs) + (1.0 - labels) * tf.math.log(1.0 - probs))


def _batches(n: int, batch_size: int, rng=None):
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def adversarial_fit(parts, dataset, train_config=None, adv_config: AdversarialConfig | None = None) -> dict:
    """`fit` with the adversarial step: loss = clean + weight × loss at embeddings + r.

    Runs the shared epoch loop (same early stopping and best-weight restore as `fit`); returns
    the same history shape plus ``"adversarial"`` (the config), and per epoch
    ``"adversarial_loss"`` and ``"embedding_scale"``.
    """
    from edgerec.converters.tfenv import import_tf

    from .fit import TrainConfig, predict_scores, seeded_training_rows
    from .loop import run_epochs

    tf, keras = import_tf()
    config = TrainConfig() if train_config is None else train_config
    adv = AdversarialConfig() if adv_config is None else adv_config
    if not isinstance(adv, AdversarialConfig):
        raise SpecError(expected("an AdversarialConfig", type(adv).__name__))
    train = seeded_training_rows(dataset, config, keras)
    rng = np.random.default_rng(config.seed)
    inputs = parts.select_inputs(train.inputs)
    labels = np.asarray(train.labels, np.float32).reshape(-1, 1)
    forward = EmbeddingForward(parts)
    model = parts.fused
    optimizer = keras.optimizers.Adam(config.learning_rate)

    @tf.function(reduce_retracing=True)
    def step(x, y):
        hist_emb, cand_emb = forward.embed(x)
        r_hist, r_cand = forward.perturbation(x, y, hist_emb, cand_emb, adv, training=True)
        with tf.GradientTape() as tape:
            hist_emb, cand_emb = forward.embed(x)
            clean = tf.reduce_mean(_logloss(tf, y, forward.score(x, hist_emb, cand_emb, training=True)))
            attacked = tf.reduce_mean(_logloss(tf, y, forward.score(x, hist_emb + r_hist, cand_emb + r_cand,
                                                                   training=True)))
            loss = clean + adv.weight * attacked + tf.add_n([0.0] + model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return clean, attacked

    def train_epoch(_epoch: int) -> dict:
        total, total_adv, batches = 0.0, 0.0, 0
        for index in _batches(len(labels), config.batch_size, rng):
            clean, attacked = step({k: v[index] for k, v in inputs.items()}, labels[index])
            total, total_adv, batches = total + float(clean), total_adv + float(attacked), batches + 1
        return {"loss": total / batches, "adversarial_loss": total_adv / batches}

    history = run_epochs(model, config, train_epoch, lambda: predict_scores(parts, dataset.valid.inputs),
                         dataset.valid.labels,
                         epoch_facts=lambda: {"embedding_scale": float(forward.embedding_scale())})
    return {**history, "train_rows": len(train), "adversarial": adv.to_dict()}


def train_adversarial_model(dataset, family: str, model_config=None, train_config=None,
                            adv_config: AdversarialConfig | None = None):
    """`train_model` with `adversarial_fit`: build, (content-pre-train,) train, evaluate.

    Returns:
        ``(parts, history, metrics)`` — save with `save_model_dir` as usual.
    """
    from ..models import build_model
    from .fit import evaluate
    from .pipeline import prepare_training

    model_config, train_config, spec, content, content_info = prepare_training(dataset, family, model_config,
                                                                               train_config)
    parts = build_model(family, spec, model_config, content)
    parts.meta["content"] = content_info
    history = adversarial_fit(parts, dataset, train_config, adv_config)
    return parts, history, evaluate(parts, dataset, config=train_config)


class _Attacker:
    """One compiled attack per (model, attack, norm, steps); ε is a tensor argument (no retracing)."""

    def __init__(self, parts, attack: str, norm: str, steps: int):
        from edgerec.converters.tfenv import import_tf

        tf, _ = import_tf()
        self.parts, self.forward = parts, EmbeddingForward(parts)
        config = AdversarialConfig(attack=attack, norm=norm, steps=steps)
        forward = self.forward

        @tf.function(reduce_retracing=True)
        def run(x, y, eps):
            hist_emb, cand_emb = forward.embed(x)
            r_hist, r_cand = forward.perturbation(x, y, hist_emb, cand_emb, config, eps=eps)
            return forward.score(x, hist_emb + r_hist, cand_emb + r_cand)

        self.tf, self.run = tf, run

    def scores(self, inputs: dict, labels, eps: float, batch_size: int = 4096) -> np.ndarray:
        x_all = self.parts.select_inputs(inputs)
        y_all = np.asarray(labels, np.float32).reshape(-1, 1)
        eps_t = self.tf.constant(float(eps), self.tf.float32)
        out = [self.run({k: v[i] for k, v in x_all.items()}, y_all[i], eps_t).numpy().reshape(-1)
               for i in _batches(len(y_all), batch_size)]
        return np.concatenate(out).astype(np.float64)


def attacked_scores(parts, inputs: dict, labels, eps: float, attack: str = "fgsm", norm: str = "l2",
                    steps: int = 3, batch_size: int = 4096) -> np.ndarray:
    """Probabilities ``[N]`` after attacking each row's embeddings to raise its logloss.

    ``eps`` is relative to the mean item-embedding norm; ``eps == 0`` gives the clean scores.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise SpecError(expected("eps as a non-negative number", eps))
    return _Attacker(parts, attack, norm, steps).scores(inputs, labels, eps, batch_size)


def robustness_report(parts, dataset, eps_list=(0.0, 0.1, 0.25, 0.5, 1.0), attack: str = "fgsm",
                      norm: str = "l2", steps: int = 3, split: str = "test") -> dict:
    """AUC under attack at several ε on ``dataset.test`` (the ranking split).

    Returns:
        ``{"attack", "norm", "split", "rows", "embedding_scale", "clean_auc",
        "results": [{"eps", "eps_abs", "auc", "drop"}, …]}`` (``drop = clean_auc − auc``).
    """
    if attack not in ATTACKS:
        raise SpecError(expected(f"attack among {list(ATTACKS)}", attack))
    target = getattr(dataset, split, None) if isinstance(split, str) else None
    if target is None or len(target) == 0:
        raise SpecError(expected("a non-empty split name of the dataset (train/valid/test)", split))
    eps_values = [float(e) for e in eps_list]
    if not eps_values or any(not e >= 0 for e in eps_values):
        raise SpecError(expected("a non-empty list of non-negative eps values", list(eps_list)))
    from .fit import predict_scores

    clean = M.auc(target.labels, predict_scores(parts, target.inputs))
    attacker = _Attacker(parts, attack, norm, steps)
    scale = float(attacker.forward.embedding_scale())
    results = []
    for eps in eps_values:
        value = M.auc(target.labels, attacker.scores(target.inputs, target.labels, eps))
        results.append({"eps": eps, "eps_abs": eps * scale, "auc": value, "drop": clean - value})
    return {"attack": attack, "norm": norm, "split": split, "rows": len(target), "embedding_scale": scale,
            "clean_auc": clean, "results": results}


def compare_robustness(plain: dict, adversarial: dict) -> list[dict]:
    """Join two `robustness_report` results by ε: plain/adversarial AUC, drops, drop ratio."""
    rows = []
    for a, b in zip(plain["results"], adversarial["results"]):
        if a["eps"] != b["eps"]:
            raise SpecError(expected("reports over the same eps list", (a["eps"], b["eps"])))
        ratio = b["drop"] / a["drop"] if a["drop"] > 0 else float("nan")
        rows.append({"eps": a["eps"], "plain_auc": a["auc"], "adversarial_auc": b["auc"],
                     "plain_drop": a["drop"], "adversarial_drop": b["drop"], "drop_ratio": ratio})
    return rows


def format_comparison(rows: list[dict]) -> str:
    """The `compare_robustness` table as fixed-width text."""
    head = f"{'eps':>6} {'plain AUC':>10} {'adv AUC':>10} {'plain drop':>11} {'adv drop':>10} {'ratio':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['eps']:>6.3f} {r['plain_auc']:>10.4f} {r['adversarial_auc']:>10.4f} "
                     f"{r['plain_drop']:>11.4f} {r['adversarial_drop']:>10.4f} {r['drop_ratio']:>7.2f}")
    return "\n".join(lines)
