"""Bring-your-own recommenders written WITHOUT edgerec's builders, as an app team would write them.

Both models are tf_keras, saved as SavedModel folders (loadable without their Python classes),
take ``clicked_ids`` ``[B, L]`` and ``target_id`` ``[B, 1]`` (int32, 0 = padding) and return one
sigmoid score. ONE item table (``item_table``) is read by two Gathers: history and candidate.

* ``din`` — DIN-style: `TargetAttention` (custom layer: local activation unit over
  ``[q, k, q - k, q * k]``, masked softmax with a -1e9 fill on padding), MLP 64-32 -> logit -> sigmoid.
* ``bst`` — BST-style transformer: history + candidate embeddings, `PositionEmbedding` (custom,
  learned), one `SelfAttentionBlock` (custom: multi-head self-attention, additive -1e9 key padding mask,
  residual + LayerNorm, FFN), flattened, MLP 64-32 -> sigmoid.

`train_byom` fits one briefly on next-item rows (MovieLens when given, else a small synthetic
log) and saves it; `write_rows` writes the rows ``.npz`` that ``edgerec export MODEL --data`` takes
(arrays ``clicked_ids``, ``target_id``, ``labels``, ``groups``). `byom_zoo` is a session fixture
(re-exported by tests/converters/conftest.py) with both models trained on synthetic rows.

Examples:
    >>> rows = next_item_rows("movielens:/work/shared/data/movielens-latest-small")   # doctest: +SKIP
    >>> path = train_byom("din", rows, "/tmp/byom-din")                                # doctest: +SKIP
    >>> write_rows(rows["test"], "/tmp/byom-rows.npz")                                 # doctest: +SKIP
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

HISTORY = "clicked_ids"
TARGET = "target_id"
KINDS = ("din", "bst")
PACKAGE = "byom"


def _tf():
    from edgerec.converters.tfenv import import_tf

    return import_tf()


_LAYERS: dict = {}


def custom_layers() -> dict:
    """Define and register (once per process) the custom layers; returns ``{name: class}``."""
    if _LAYERS:
        return _LAYERS
    tf, k = _tf()
    known = k.saving.get_registered_object(f"{PACKAGE}>TargetAttention")
    if known is not None:       # this file imported twice under different module names
        for name in ("TargetAttention", "PositionEmbedding", "SelfAttentionBlock"):
            _LAYERS[name] = k.saving.get_registered_object(f"{PACKAGE}>{name}")
        return _LAYERS

    @k.saving.register_keras_serializable(package=PACKAGE)
    class TargetAttention(k.layers.Layer):
        """DIN local activation unit: weights from ``[q, k, q-k, q*k]``, masked softmax, weighted sum.

        Call args: ``[query [B, 1, D], keys [B, L, D], ids [B, L]]`` -> ``[B, D]``.
        """

        def __init__(self, hidden: int = 32, **kwargs):
            super().__init__(**kwargs)
            self.hidden = int(hidden)

        def build(self, input_shape):
            dim = int(input_shape[1][-1])
            self.w1 = self.add_weight(name="w1", shape=(4 * dim, self.hidden), initializer="glorot_uniform")
            self.b1 = self.add_weight(name="b1", shape=(self.hidden,), initializer="zeros")
            self.w2 = self.add_weight(name="w2", shape=(self.hidden, 1), initializer="glorot_uniform")
            super().build(input_shape)

        def call(self, inputs):
            query, keys, ids = inputs
            q = tf.broadcast_to(query, tf.shape(keys))
            feats = tf.concat([q, keys, q - keys, q * keys], axis=-1)
            hidden = tf.nn.relu(tf.tensordot(feats, self.w1, axes=1) + self.b1)
            logits = tf.squeeze(tf.tensordot(hidden, self.w2, axes=1), -1)          # [B, L]
            logits = tf.where(tf.not_equal(ids, 0), logits, tf.fill(tf.shape(logits), -1e9))
            weights = tf.nn.softmax(logits, axis=-1)
            return tf.reduce_sum(keys * weights[..., None], axis=1)

        def get_config(self):
            return {**super().get_config(), "hidden": self.hidden}

    @k.saving.register_keras_serializable(package=PACKAGE)
    class PositionEmbedding(k.layers.Layer):
        """Adds a learned ``[T, D]`` position table to a ``[B, T, D]`` sequence."""

        def build(self, input_shape):
            self.table = self.add_weight(name="positions", shape=(int(input_shape[1]), int(input_shape[2])),
                                         initializer=k.initializers.RandomNormal(stddev=0.02))
            super().build(input_shape)

        def call(self, x):
            return x + self.table[None]

    @k.saving.register_keras_serializable(package=PACKAGE)
    class SelfAttentionBlock(k.layers.Layer):
        """Transformer encoder block: multi-head self-attention (key padding mask), residual + LayerNorm,
        ReLU FFN, residual + LayerNorm. Call args: ``[x [B, T, D], ids [B, T]]``."""

        def __init__(self, heads: int = 2, ffn: int = 64, **kwargs):
            super().__init__(**kwargs)
            self.heads, self.ffn = int(heads), int(ffn)

        def build(self, input_shape):
            dim = int(input_shape[0][-1])
            self.dim, self.steps = dim, int(input_shape[0][1])
            weight = lambda name, shape: self.add_weight(name=name, shape=shape,  # noqa: E731
                                                         initializer="glorot_uniform")
            self.wq, self.wk, self.wv, self.wo = (weight(n, (dim, dim)) for n in ("wq", "wk", "wv", "wo"))
            self.w_ffn_in = weight("ffn_in", (dim, self.ffn))
            self.b_ffn_in = self.add_weight(name="ffn_in_bias", shape=(self.ffn,), initializer="zeros")
            self.w_ffn_out = weight("ffn_out", (self.ffn, dim))
            self.norm1 = k.layers.LayerNormalization(epsilon=1e-6, name="norm1")
            self.norm2 = k.layers.LayerNormalization(epsilon=1e-6, name="norm2")
            super().build(input_shape)

        def _split(self, x):
            x = tf.reshape(x, [-1, self.steps, self.heads, self.dim // self.heads])
            return tf.transpose(x, [0, 2, 1, 3])                                   # [B, H, T, d]

        def call(self, inputs):
            x, ids = inputs
            q, kk, v = (self._split(tf.tensordot(x, w, axes=1)) for w in (self.wq, self.wk, self.wv))
            logits = tf.matmul(q, kk, transpose_b=True) / float(np.sqrt(self.dim // self.heads))
            padding = tf.cast(tf.equal(ids, 0), logits.dtype)[:, None, None, :]
            logits = logits + padding * -1e9                                       # additive key mask
            att = tf.matmul(tf.nn.softmax(logits, axis=-1), v)                     # [B, H, T, d]
            att = tf.reshape(tf.transpose(att, [0, 2, 1, 3]), [-1, self.steps, self.dim])
            x = self.norm1(x + tf.tensordot(att, self.wo, axes=1))
            ffn = tf.tensordot(tf.nn.relu(tf.tensordot(x, self.w_ffn_in, axes=1) + self.b_ffn_in),
                               self.w_ffn_out, axes=1)
            return self.norm2(x + ffn)

        def get_config(self):
            return {**super().get_config(), "heads": self.heads, "ffn": self.ffn}

    _LAYERS.update(TargetAttention=TargetAttention, PositionEmbedding=PositionEmbedding,
                   SelfAttentionBlock=SelfAttentionBlock)
    return _LAYERS


def build_byom(kind: str, vocab: int, seq_len: int, dim: int = 32):
    """An untrained bring-your-own model: ``kind`` is ``"din"`` or ``"bst"``."""
    _, k = _tf()
    layers = custom_layers()
    clicked = k.Input((seq_len,), dtype="int32", name=HISTORY)
    target = k.Input((1,), dtype="int32", name=TARGET)
    table = k.layers.Embedding(vocab, dim, name="item_table")
    history, candidate = table(clicked), table(target)                     # two Gathers of one table
    if kind == "din":
        pooled = layers["TargetAttention"](hidden=32, name="target_attention")([candidate, history, clicked])
        cand = k.layers.Flatten(name="candidate_vector")(candidate)
        x = k.layers.Concatenate()([cand, pooled, k.layers.Multiply()([cand, pooled])])
    elif kind == "bst":
        ids = k.layers.Concatenate(axis=1, name="sequence_ids")([clicked, target])
        seq = k.layers.Concatenate(axis=1, name="sequence")([history, candidate])
        seq = layers["PositionEmbedding"](name="positions")(seq)
        seq = layers["SelfAttentionBlock"](heads=2, ffn=64, name="transformer")([seq, ids])
        x = k.layers.Flatten(name="flat_sequence")(seq)
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    x = k.layers.Dense(64, activation="relu", name="mlp_1")(x)
    x = k.layers.Dense(32, activation="relu", name="mlp_2")(x)
    logit = k.layers.Dense(1, name="logit")(x)
    out = k.layers.Activation("sigmoid", name="score")(logit)
    return k.Model({HISTORY: clicked, TARGET: target}, out, name=f"byom_{kind}")


def next_item_rows(source: str = "synthetic", *, max_seq_len: int = 20, negatives: int = 4, seed: int = 0,
                   **synthetic_options) -> dict:
    """Next-item rows renamed to the bring-your-own inputs.

    Args:
        source: ``"movielens:PATH"`` or ``"synthetic"`` (``synthetic_options`` size the generated log).

    Returns:
        ``{"train": rows, "test": rows, "vocab": int, "seq_len": int}``; rows hold ``clicked_ids``,
        ``target_id`` ``[N, 1]``, ``labels`` and (test: ranking rows, user per row) ``groups``.
    """
    from edgerec.sdk.data import load_dataset

    options = synthetic_options if source == "synthetic" else {}
    if source == "synthetic" and not options:
        options = dict(num_users=300, num_items=400, num_events=9000)
    ds = load_dataset(source, max_seq_len=max_seq_len, negatives=negatives, seed=seed, progress=False, **options)

    def rename(split):
        rows = {HISTORY: split.inputs["hist_items"].astype(np.int32),
                TARGET: split.inputs["cand_item"].astype(np.int32).reshape(-1, 1),
                "labels": split.labels.astype(np.float32)}
        if split.groups is not None:
            rows["groups"] = split.groups.astype(np.int64)
        return rows

    return {"train": rename(ds.train), "test": rename(ds.test), "vocab": int(ds.spec.item_vocab.size),
            "seq_len": int(max_seq_len)}


def limit_groups(rows: dict, max_groups: int) -> dict:
    """The rows of the first ``max_groups`` users (whole groups, so ranking metrics hold)."""
    keep = np.isin(rows["groups"], np.unique(rows["groups"])[:max_groups])
    return {name: value[keep] for name, value in rows.items()}


def train_byom(kind: str, rows: dict, out: str | Path, *, epochs: int = 1, max_train_rows: int = 200_000,
               batch_size: int = 256, seed: int = 0) -> Path:
    """Build ``kind``, fit it briefly on ``rows["train"]`` and save it as a SavedModel folder ``out``."""
    tf, _ = _tf()
    tf.random.set_seed(seed)
    model = build_byom(kind, rows["vocab"], rows["seq_len"])
    train = rows["train"]
    n = min(len(train["labels"]), max_train_rows)
    order = np.random.default_rng(seed).permutation(len(train["labels"]))[:n]
    model.compile(optimizer="adam", loss="binary_crossentropy")
    start = time.perf_counter()
    model.fit({HISTORY: train[HISTORY][order], TARGET: train[TARGET][order]}, train["labels"][order],
              epochs=epochs, batch_size=batch_size, verbose=0)
    out = Path(out)
    model.save(str(out), save_format="tf")
    (out / "train_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
    return out


def write_rows(rows: dict, path: str | Path) -> Path:
    """Write rows as the ``.npz`` ``edgerec export MODEL --data`` reads (no pickle)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{name: np.asarray(value) for name, value in rows.items()})
    return path


def build_zoo(folder: str | Path, source: str = "synthetic", *, max_groups: int = 60, **options) -> dict:
    """Train both models on ``source`` into ``folder``: ``{"din": path, "bst": path, "rows": npz path}``."""
    folder = Path(folder)
    rows = next_item_rows(source, **options)
    zoo = {kind: train_byom(kind, rows, folder / f"byom_{kind}") for kind in KINDS}
    zoo["rows"] = write_rows(limit_groups(rows["test"], max_groups), folder / "byom_rows.npz")
    return zoo


@pytest.fixture(scope="session")
def byom_zoo(tmp_path_factory) -> dict:
    """Both bring-your-own models trained on synthetic rows (paths), and the rows ``.npz`` of all 300
    test users: on 60 users (300 rows) the paired ΔAUC of the 4-bit table alone swung between 0.0005 and
    0.0057 from one training to the next, and the dense fallback, over its 0.0015 budget on that noise,
    kept 8 and 3 of BST's 8 weights float in two runs of three (0 of 8 in each run on 300 users)."""
    return build_zoo(tmp_path_factory.mktemp("byom"), max_groups=300)


if __name__ == "__main__":          # python tests/converters/byom_models.py OUT [movielens:PATH]
    import sys

    target = Path(sys.argv[1])
    data = sys.argv[2] if len(sys.argv) > 2 else "synthetic"
    opts = {"max_seq_len": 50} if data != "synthetic" else {}
    print(build_zoo(target, data, max_groups=10_000, **opts))
