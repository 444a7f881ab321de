"""Training of the retrieval family: a softmax over the catalogue with in-batch negatives.

Each training positive (a user-side row and the item the user interacted with next) is a query;
the other positives of its batch (plus ``sampled_negatives`` uniform catalogue items shared by
the batch) are its negatives, as in TensorFlow Recommenders' ``Retrieval`` task:

1. ``logits = user · candidate / temperature``  ([B, B + M]);
2. log-Q correction: ``logits -= log Q(candidate)``, where Q is the probability that a candidate
   slot holds that item — in-batch slots draw items at their frequency in the training stream,
   so popular items are over-represented as negatives and would otherwise be pushed down
   (Yi et al., "Sampling-bias-corrected neural modeling", RecSys 2019); with uniform extra
   negatives Q mixes both sources: ``(B p_item + M / N) / (B + M)``;
3. accidental hits: a candidate equal to the row's own positive, other than its label column,
   is masked (it is not a negative);
4. loss = mean softmax cross-entropy with the label on the diagonal.

Early stopping watches the validation AUC of the cosine/dot score on the pointwise valid rows.

`with_retrieved_negatives` goes the other way: it gives a RANKING model's training set hard
negatives from a trained retriever's top-M, so that the ranker of a cascade learns to order the
items the retriever hands it.

Examples:
    >>> parts, history, metrics = train_retrieval_model(dataset, RetrievalConfig(encoder="gru"))
    >>> metrics["full_catalogue"]["hr@10"] > metrics["baseline_full_catalogue"]["hr@10"]   # doctest: +SKIP
"""
from __future__ import annotations

import logging

import numpy as np

from edgerec.runtime.contract import CAND_ITEM, USER_VECTOR
from edgerec.runtime.errors import SpecError, expected
from edgerec.runtime.spec import NUM_RESERVED

from ..models.retrieval import ITEM_IDS, RetrievalConfig, build_retrieval_model
from .fit import TrainConfig
from .loop import run_epochs

logger = logging.getLogger(__name__)

# a masked logit: far below any real one, still finite so the softmax never sees -inf - -inf
MASKED_LOGIT = -1e9
MIN_PROBABILITY = 1e-12


def candidate_log_q(popularity, batch_size: int, sampled_negatives: int = 0) -> np.ndarray:
    """float32 ``[V]`` log-probability that one candidate slot of a batch holds each item index.

    Args:
        popularity: training interaction count per item index (the in-batch sampling frequency).
        batch_size: positives per batch (in-batch candidates).
        sampled_negatives: uniform candidates over the known items (index >= 2) per batch.

    Examples:
        >>> np.exp(candidate_log_q([0, 0, 3, 1], batch_size=4)).round(2).tolist()
        [0.0, 0.0, 0.75, 0.25]
    """
    counts = np.asarray(popularity, np.float64).reshape(-1)
    if counts.size <= NUM_RESERVED or counts.sum() <= 0:
        raise SpecError(expected("item popularity with at least one trained item", counts.size))
    share = counts / counts.sum()
    known = counts.size - NUM_RESERVED
    uniform = np.zeros_like(share)
    uniform[NUM_RESERVED:] = 1.0 / known
    q = (batch_size * share + sampled_negatives * uniform) / (batch_size + sampled_negatives)
    return np.log(np.maximum(q, MIN_PROBABILITY)).astype(np.float32)


def softmax_logits(tf, users, candidates, candidate_ids, positive_ids, log_q=None, temperature: float = 1.0,
                   remove_accidental_hits: bool = True):
    """The corrected ``[B, C]`` logits of B queries against C candidates (first B = the positives).

    Args:
        tf: the TensorFlow module.
        users: ``[B, D]`` query vectors; candidates: ``[C, D]`` candidate vectors (C >= B).
        candidate_ids, positive_ids: ``[C]`` and ``[B]`` item indices.
        log_q: ``[V]`` `candidate_log_q` table, or None for no correction.
    """
    logits = tf.matmul(users, candidates, transpose_b=True) / temperature
    if log_q is not None:
        logits = logits - tf.gather(log_q, candidate_ids)[None, :]
    if remove_accidental_hits:
        same = tf.equal(positive_ids[:, None], candidate_ids[None, :])
        rows, columns = tf.shape(logits)[0], tf.shape(logits)[1]
        label = tf.cast(tf.eye(rows, columns), tf.bool)
        logits = tf.where(tf.logical_and(same, tf.logical_not(label)), MASKED_LOGIT, logits)
    return logits


def softmax_loss(tf, logits):
    """Mean cross-entropy of ``[B, C]`` logits whose row b's label is column b."""
    labels = tf.range(tf.shape(logits)[0])
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))


class _Towers:
    """Both towers' weights as one list (the epoch loop keeps the best epoch's)."""

    def __init__(self, user_tower, item_tower):
        self.user_tower, self.item_tower = user_tower, item_tower

    def get_weights(self):
        return self.user_tower.get_weights() + self.item_tower.get_weights()

    def set_weights(self, weights):
        count = len(self.user_tower.get_weights())
        self.user_tower.set_weights(weights[:count])
        self.item_tower.set_weights(weights[count:])


def _positives(dataset, config: TrainConfig):
    train = dataset.train
    rows = np.flatnonzero(train.labels > 0.5)
    if rows.size == 0 or len(dataset.valid) == 0:
        raise SpecError(expected("training positives and a non-empty valid split",
                                 {"train positives": int(rows.size), "valid": len(dataset.valid)}))
    if config.max_train_rows is not None and config.max_train_rows < rows.size:
        rng = np.random.default_rng(config.seed)
        rows = np.sort(rng.choice(rows, config.max_train_rows, replace=False))
    return train.take(rows)


def fit_retrieval(parts, dataset, config: TrainConfig | None = None) -> dict:
    """Train both towers with the corrected in-batch softmax; the best epoch's weights are kept.

    Returns:
        ``{"epochs": [{"epoch", "loss", "valid_auc", "valid_logloss", "seconds"}, …], "best_epoch",
        "stopped_early", "monitor", "train_rows", "objective"}`` (valid metrics of sigmoid(score)).
    """
    from edgerec.converters.tfenv import import_tf

    tf, keras = import_tf()
    config = TrainConfig() if config is None else config
    model_config: RetrievalConfig = parts.config
    keras.utils.set_random_seed(config.seed)
    rows = _positives(dataset, config)
    inputs = parts.select_inputs(rows.inputs)
    positives = np.asarray(rows.inputs[CAND_ITEM], np.int32)
    log_q = None
    if model_config.logq_correction:
        log_q = tf.constant(candidate_log_q(dataset.item_popularity, config.batch_size,
                                            model_config.sampled_negatives))
    vocab = parts.spec.item_vocab.size
    optimizer = keras.optimizers.Adam(config.learning_rate)
    towers = [parts.user_tower, parts.item_tower]
    variables = []
    for tower in towers:
        variables += [v for v in tower.trainable_variables if all(v is not w for w in variables)]
    extra = model_config.sampled_negatives

    @tf.function(reduce_retracing=True)
    def step(batch_inputs, batch_items):
        with tf.GradientTape() as tape:
            users = parts.user_tower(batch_inputs, training=True)[USER_VECTOR]
            candidate_ids = batch_items
            if extra:
                sampled = tf.random.uniform([extra], NUM_RESERVED, vocab, dtype=tf.int32)
                candidate_ids = tf.concat([batch_items, sampled], 0)
            candidates = parts.item_tower({ITEM_IDS: candidate_ids}, training=True)
            logits = softmax_logits(tf, users, candidates, candidate_ids, batch_items, log_q,
                                    model_config.temperature, model_config.remove_accidental_hits)
            loss = softmax_loss(tf, logits)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    rng = np.random.default_rng(config.seed)

    def train_epoch(_epoch: int) -> dict:
        order = rng.permutation(positives.size)
        losses, weights = [], []
        for start in range(0, order.size, config.batch_size):
            index = order[start:start + config.batch_size]
            if index.size < 2:               # a one-row batch has no negatives
                continue
            batch = {k: tf.constant(v[index]) for k, v in inputs.items()}
            losses.append(float(step(batch, tf.constant(positives[index]))))
            weights.append(index.size)
        return {"loss": float(np.average(losses, weights=weights))}

    def valid_scores():
        return _sigmoid(parts_scores(parts, dataset.valid))

    history = run_epochs(_Towers(*towers), config, train_epoch, valid_scores, dataset.valid.labels)
    return {**history, "train_rows": int(positives.size),
            "objective": {"loss": "in-batch softmax", "temperature": model_config.temperature,
                          "logq_correction": model_config.logq_correction,
                          "remove_accidental_hits": model_config.remove_accidental_hits,
                          "sampled_negatives": extra, "normalize": model_config.normalize}}


def parts_scores(parts, split) -> np.ndarray:
    """Dot-product scores of a split's rows (user tower on the row, item tower on ``cand_item``)."""
    users = split_user_vectors(parts, split)
    items = np.asarray(parts.item_tower.predict({ITEM_IDS: np.asarray(split.inputs[CAND_ITEM], np.int32)},
                                                batch_size=65536, verbose=0), np.float32)
    return np.einsum("nd,nd->n", users, items).astype(np.float64)


def split_user_vectors(parts, split) -> np.ndarray:
    """float32 ``[N, D]`` user vector of each row of ``split``, the user tower run once per group.

    The valid and test splits hold one event per user (group): its positive and its negatives
    share every user-side input, so the tower runs on the group's first row (at 10^5 users x 101
    test rows that is 101 times less work). A split whose rows differ within a group (or without
    groups) is run row by row.
    """
    inputs = parts.select_inputs(split.inputs)
    if split.groups is None or len(split) == 0:
        return parts.user_vectors(inputs)
    _, first, group_of = np.unique(split.groups, return_index=True, return_inverse=True)
    group_of = group_of.reshape(-1)
    if not all(np.array_equal(v, v[first][group_of]) for v in inputs.values()):
        return parts.user_vectors(inputs)
    return parts.user_vectors({k: v[first] for k, v in inputs.items()})[group_of]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def evaluate_retrieval(parts, dataset, k: int = 10, max_scored_cells: int | None = None) -> dict:
    """Sampled test metrics (as ranking models', no logloss), popularity, and full-catalogue metrics.

    Args:
        max_scored_cells: user x item scores the full-catalogue metrics may compute (default
            `catalogue.MAX_VECTOR_CELLS`); beyond it the held-out users are a seeded sample, recorded
            in ``full_catalogue_users``. 0 skips the full-catalogue metrics.

    Returns:
        ``{"test": {auc, gauc, recall@10, ndcg@10, coverage@10}, "baseline": {…},
        "full_catalogue": {hr@10, ndcg@10, recall@100}, "baseline_full_catalogue": {…},
        "full_catalogue_users": {…}}``.
    """
    from ..metrics import evaluate_scores, popularity_baseline
    from .catalogue import MAX_VECTOR_CELLS, retrieval_full_catalogue

    if parts.item_vectors is None:
        parts.compute_item_vectors()
    test = dataset.test
    users = split_user_vectors(parts, test)
    raw = np.einsum("nd,nd->n", users, parts.item_vectors[np.asarray(test.inputs[CAND_ITEM], np.int64)])
    sampled = evaluate_scores(test, _sigmoid(raw.astype(np.float64)), parts.spec.item_vocab.size - NUM_RESERVED, k)
    sampled.pop("logloss")
    metrics = {"test": sampled, "baseline": popularity_baseline(dataset, k)}
    budget = MAX_VECTOR_CELLS if max_scored_cells is None else int(max_scored_cells)
    if budget > 0:
        metrics.update(retrieval_full_catalogue(parts, dataset, max_scored_cells=budget))
    return metrics


HARD_NEGATIVE_M = 200
HARD_SHARE = 0.5


def with_retrieved_negatives(dataset, user_vectors, item_vectors, *, m: int = HARD_NEGATIVE_M,
                             share: float = HARD_SHARE, seed: int = 0, chunk: int = 2048):
    """A copy of ``dataset`` whose training negatives are, for ``share`` of them, items the
    retriever ranks in its top ``m`` for the row's user side (hard negatives), the rest the
    dataset's uniform ones.

    A ranker trained against uniform negatives only learns to tell a user's items from random
    ones; in a cascade it ranks the retriever's best ``m``, which all look relevant, so it must
    learn to order items a retriever confuses. Keeping uniform negatives keeps it able to push
    random items down. Like the dataset's sampler, no item the user ever interacted with (any
    split) is a negative; only the ``train`` split changes (valid and test stay as built).

    Args:
        dataset: a `RecDataset`.
        user_vectors: ``callable(inputs) -> float [N, D]``, the retrieval user tower (e.g.
            `RetrievalParts.user_vectors`).
        item_vectors: float ``[item_vocab.size, D]`` of the same retriever.
        m: how deep in the retriever's list hard negatives are drawn (uniformly).
        share: the part of each positive's negatives that are hard (the rest stay uniform).
        seed: seeds which uniform negatives are replaced and the draws.

    Returns:
        the new `RecDataset`; its ``meta["hard_negatives"]`` says how it was made.
    """
    from dataclasses import replace

    from ..data.dataset import Split

    if not 0.0 < share <= 1.0 or m < 1:
        raise SpecError(expected("share in (0, 1] and m >= 1", {"share": share, "m": m}))
    train, rng = dataset.train, np.random.default_rng(seed)
    positive = train.labels > 0.5
    pos_rows, neg_rows = np.flatnonzero(positive), np.flatnonzero(~positive)
    if pos_rows.size == 0 or train.groups is None:
        raise SpecError(expected("training positives with groups (user index)", int(pos_rows.size)))
    per_positive = int(round(share * neg_rows.size / pos_rows.size))
    if per_positive < 1:
        raise SpecError(expected("training negatives to replace", int(neg_rows.size)))
    kept = neg_rows[rng.random(neg_rows.size) >= share]
    vectors = np.asarray(item_vectors, np.float32)
    items_of = _user_items(dataset)
    users = train.take(pos_rows)
    queries = np.asarray(user_vectors({k: v for k, v in users.inputs.items() if k != CAND_ITEM}), np.float32)
    hard = np.empty((pos_rows.size, per_positive), np.int32)
    for start in range(0, pos_rows.size, chunk):
        scores = queries[start:start + chunk] @ vectors.T
        scores[:, :NUM_RESERVED] = -np.inf
        for row, user in enumerate(users.groups[start:start + chunk]):
            scores[row, items_of.get(int(user), [])] = -np.inf
        depth = min(m, vectors.shape[0] - NUM_RESERVED)
        top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
        picks = np.argsort(rng.random(top.shape), axis=1)[:, :per_positive]
        hard[start:start + chunk] = np.take_along_axis(top, picks, axis=1)
    repeated = np.repeat(np.arange(pos_rows.size), per_positive)
    extra = users.take(repeated)
    extra.inputs[CAND_ITEM] = hard.reshape(-1)
    extra.labels = np.zeros(repeated.size, np.float32)
    base = train.take(np.concatenate([pos_rows, kept]))
    merged = Split({k: np.concatenate([base.inputs[k], extra.inputs[k]]) for k in base.inputs},
                   np.concatenate([base.labels, extra.labels]), np.concatenate([base.groups, extra.groups]))
    merged = merged.take(rng.permutation(len(merged)))
    meta = {**dataset.meta, "hard_negatives": {"m": int(m), "share": float(share), "per_positive": per_positive,
                                               "uniform_kept": int(kept.size), "hard": int(hard.size), "seed": seed}}
    return replace(dataset, train=merged, meta=meta)


def _user_items(dataset) -> dict:
    """user index -> every item index the user interacted with (positives of any split)."""
    users, items = [], []
    for split in (dataset.train, dataset.valid, dataset.test):
        if split.groups is None or len(split) == 0:
            continue
        positive = split.labels > 0.5
        users.append(split.groups[positive].astype(np.int64))
        items.append(np.asarray(split.inputs[CAND_ITEM], np.int64)[positive])
    users, items = np.concatenate(users), np.concatenate(items)
    order = np.argsort(users, kind="stable")
    users, items = users[order], items[order]
    bounds = np.flatnonzero(np.diff(users)) + 1
    return {int(u[0]): np.unique(i) for u, i in zip(np.split(users, bounds), np.split(items, bounds))}


def train_retrieval_model(dataset, model_config: RetrievalConfig | None = None,
                          train_config: TrainConfig | None = None):
    """Build, (content-pre-train,) fit and evaluate a retrieval model on ``dataset``.

    Returns:
        ``(parts, history, metrics)``: `RetrievalParts` with ``item_vectors`` computed, `fit_retrieval`'s
        history and `evaluate_retrieval`'s metrics.
    """
    from edgerec.converters.tfenv import import_tf

    model_config = RetrievalConfig() if model_config is None else model_config
    if not isinstance(model_config, RetrievalConfig):
        raise SpecError(expected("a RetrievalConfig", type(model_config).__name__))
    train_config = TrainConfig() if train_config is None else train_config
    spec, table, content_info = dataset.spec, None, None
    if model_config.use_content:
        from .pipeline import train_content_encoder

        if train_config.verbose:
            logger.info("pre-training the content encoder on the item corpus")
        spec, content, content_info = train_content_encoder(dataset, model_config.content_config(),
                                                            train_config.seed)
        table = content.table
    import_tf()[1].utils.set_random_seed(train_config.seed)
    parts = build_retrieval_model(spec, model_config, table)
    parts.meta["content"] = content_info
    history = fit_retrieval(parts, dataset, train_config)
    parts.compute_item_vectors()
    return parts, history, evaluate_retrieval(parts, dataset)
