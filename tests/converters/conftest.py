"""Tiny tf_keras models that follow docs/contracts.md, and calibration rows for them.

Models (saved once per session as tf_keras .keras files):
  din     — Embedding shared by history and candidate, DIN-style attention pooling, hour + dense
  mha     — MultiHeadAttention over the history
  gru     — GRU(unroll=True)
  user_encoder / scorer — a split model: user_encoder returns {"user_state", "user_mask"};
            scorer takes cand_item + hour + user_state + user_mask.
"""
from __future__ import annotations

import numpy as np
import pytest

VOCAB = 1000
SEQ = 8
EMB = 16
DENSE = 3


def _tf():
    from edgerec.converters.tfenv import import_tf

    return import_tf()


_LAYERS = {}


def custom_layers():
    """Register (once) and return the custom test layers: NonPadMask, LearnedScale."""
    if _LAYERS:
        return _LAYERS
    _TF, _K = _tf()

    @_K.saving.register_keras_serializable(package="edgerec_tests")
    class NonPadMask(_K.layers.Layer):
        """Custom layer (tfmot cannot prune it): 1.0 where the id is not padding.

        Args:
            expand: add a trailing axis of size 1.
        """

        def __init__(self, expand: bool = False, **kwargs):
            super().__init__(**kwargs)
            self.expand = bool(expand)

        def call(self, ids):
            mask = _TF.cast(_TF.not_equal(ids, 0), _TF.float32)
            return mask[..., None] if self.expand else mask

        def get_config(self):
            return {**super().get_config(), "expand": self.expand}

    @_K.saving.register_keras_serializable(package="edgerec_tests")
    class LearnedScale(_K.layers.Layer):
        """Custom layer WITH a weight (tfmot does not know it: pruning must list it as skipped)."""

        def build(self, input_shape):
            self.scale = self.add_weight(name="scale", shape=(int(input_shape[-1]),), initializer="ones")
            super().build(input_shape)

        def call(self, x):
            return x * self.scale

    _LAYERS.update(NonPadMask=NonPadMask, LearnedScale=LearnedScale)
    return _LAYERS


def _inputs(k, with_context=True):
    hist = k.Input((SEQ,), dtype="int32", name="hist_items")
    cand = k.Input((), dtype="int32", name="cand_item")
    ins = [hist, cand]
    if with_context:
        ins += [k.Input((), dtype="int32", name="hour"), k.Input((DENSE,), dtype="float32", name="dense")]
    return ins


def build_din():
    tf, k = _tf()
    hist, cand, hour, dense = _inputs(k)
    emb = k.layers.Embedding(VOCAB, EMB, name="item_embedding")
    h = emb(hist)                                   # [B, L, E]
    c = emb(cand)                                   # [B, E]
    c_rep = k.layers.RepeatVector(SEQ)(c)
    att_in = k.layers.Concatenate()([h, c_rep, k.layers.Multiply()([h, c_rep])])
    w = k.layers.Dense(8, activation="relu", name="att_hidden")(att_in)
    w = k.layers.Dense(1, name="att_logit")(w)      # [B, L, 1]
    mask = custom_layers()["NonPadMask"](expand=True, name="pad_mask")(hist)
    w = k.layers.Multiply()([w, mask])
    pooled = k.layers.Dot(axes=1)([w, h])           # [B, 1, E]
    pooled = custom_layers()["LearnedScale"](name="pool_scale")(k.layers.Flatten()(pooled))
    hour_e = k.layers.Flatten()(k.layers.Embedding(25, 4, name="hour_embedding")(hour))
    x = k.layers.Concatenate()([pooled, c, hour_e, dense])
    x = k.layers.Dense(16, activation="relu", name="mlp_1")(x)
    x = k.layers.Dense(8, activation="relu", name="mlp_2")(x)
    out = k.layers.Dense(1, activation="sigmoid", name="score")(x)
    return k.Model([hist, cand, hour, dense], out, name="din")


def build_mha():
    tf, k = _tf()
    hist, cand = _inputs(k, with_context=False)
    emb = k.layers.Embedding(VOCAB, EMB, name="item_embedding")
    h = emb(hist)
    h = k.layers.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(h, h)
    pooled = k.layers.GlobalAveragePooling1D()(h)
    x = k.layers.Concatenate()([pooled, emb(cand)])
    x = k.layers.Dense(16, activation="relu", name="mlp_1")(x)
    out = k.layers.Dense(1, activation="sigmoid", name="score")(x)
    return k.Model([hist, cand], out, name="mha")


def build_gru():
    tf, k = _tf()
    hist, cand = _inputs(k, with_context=False)
    emb = k.layers.Embedding(VOCAB, EMB, name="item_embedding")
    state = k.layers.GRU(8, unroll=True, name="gru")(emb(hist))
    x = k.layers.Concatenate()([state, emb(cand)])
    x = k.layers.Dense(16, activation="relu", name="mlp_1")(x)
    out = k.layers.Dense(1, activation="sigmoid", name="score")(x)
    return k.Model([hist, cand], out, name="gru")


def build_split():
    """``(user_encoder, scorer)`` with the user_* tensors named per the contract."""
    tf, k = _tf()
    hist = k.Input((SEQ,), dtype="int32", name="hist_items")
    h = k.layers.Embedding(VOCAB, EMB, name="item_embedding")(hist)
    state = k.layers.Dense(EMB, activation="tanh", name="user_proj")(h)
    mask = custom_layers()["NonPadMask"](name="user_mask")(hist)
    user = k.Model(hist, {"user_state": state, "user_mask": mask}, name="user_encoder")
    cand = k.Input((), dtype="int32", name="cand_item")
    hour = k.Input((), dtype="int32", name="hour")
    s_in = k.Input((SEQ, EMB), dtype="float32", name="user_state")
    m_in = k.Input((SEQ,), dtype="float32", name="user_mask")
    c = k.layers.Embedding(VOCAB, EMB, name="cand_embedding")(cand)
    pooled = k.layers.Dot(axes=1)([m_in, s_in])
    x = k.layers.Concatenate()([pooled, c, k.layers.Flatten()(k.layers.Embedding(25, 2)(hour))])
    x = k.layers.Dense(16, activation="relu", name="mlp_1")(x)
    out = k.layers.Dense(1, activation="sigmoid", name="score")(x)
    scorer = k.Model({"cand_item": cand, "hour": hour, "user_state": s_in, "user_mask": m_in}, out, name="scorer")
    return user, scorer


def build_shared_split():
    """``(fused, user_encoder, scorer)`` built from the SAME layers, as edgerec families are."""
    tf, k = _tf()
    emb = k.layers.Embedding(VOCAB, EMB, name="item_embedding")
    proj = k.layers.Dense(EMB, activation="tanh", name="user_proj")
    mlp = k.layers.Dense(16, activation="relu", name="mlp_1")
    head = k.layers.Dense(1, activation="sigmoid", name="score")

    def user(hist):
        return {"user_state": k.layers.GlobalAveragePooling1D()(proj(emb(hist)))}

    def score(state, cand):
        return head(mlp(k.layers.Concatenate()([state, emb(cand)])))

    hist = k.Input((SEQ,), dtype="int32", name="hist_items")
    user_encoder = k.Model(hist, user(hist), name="user_encoder")
    state = k.Input((EMB,), dtype="float32", name="user_state")
    cand = k.Input((), dtype="int32", name="cand_item")
    scorer = k.Model({"user_state": state, "cand_item": cand}, score(state, cand), name="scorer")
    f_hist = k.Input((SEQ,), dtype="int32", name="hist_items")
    f_cand = k.Input((), dtype="int32", name="cand_item")
    fused = k.Model({"hist_items": f_hist, "cand_item": f_cand}, score(user(f_hist)["user_state"], f_cand),
                    name="fused")
    return fused, user_encoder, scorer


def build_keras3():
    """A small Keras 3 (not tf_keras) model: for bring-your-own-model paths."""
    _tf()
    import keras

    hist = keras.Input((SEQ,), dtype="int32", name="hist_items")
    cand = keras.Input((), dtype="int32", name="cand_item")
    emb = keras.layers.Embedding(VOCAB, EMB)
    pooled = keras.layers.GlobalAveragePooling1D()(emb(hist))
    x = keras.layers.Concatenate()([pooled, emb(cand)])
    x = keras.layers.Dense(8, activation="relu")(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="score")(x)
    return keras.Model({"hist_items": hist, "cand_item": cand}, out, name="keras3_model")


def make_rows(n=256, seed=0):
    """Calibration/training rows named like the fused inputs, with learnable labels."""
    rng = np.random.default_rng(seed)
    hist = rng.integers(2, VOCAB, size=(n, SEQ)).astype(np.int32)
    lengths = rng.integers(1, SEQ + 1, size=n)
    for i, length in enumerate(lengths):
        hist[i, : SEQ - length] = 0
    cand = rng.integers(2, VOCAB, size=n).astype(np.int32)
    labels = ((cand % 2) == (hist[:, -1] % 2)).astype(np.float32)
    return {"hist_items": hist, "cand_item": cand, "hour": rng.integers(0, 25, size=n).astype(np.int32),
            "dense": rng.normal(size=(n, DENSE)).astype(np.float32), "labels": labels}


def _fit_briefly(model, rows):
    names = [t.name.split(":")[0] for t in model.inputs]
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit({n: rows[n] for n in model.input_names if n in rows}, rows["labels"], epochs=1,
              batch_size=64, verbose=0)
    return names


@pytest.fixture(scope="session")
def rows_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "calibration.npz"
    np.savez(path, **make_rows())
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """din/mha/gru/user_encoder/scorer.keras and shared_{fused,user_encoder,scorer}.keras (tf_keras, the
    shared_* ones built from the same layers) and keras3.keras (Keras 3). Seeded: tolerance checks
    on converted outputs (e.g. dynamic int8 within 0.05) must not depend on the run's weights."""
    from edgerec.converters.tfenv import import_tf

    import_tf()[1].utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("models")
    rows = make_rows()
    for name, builder in (("din", build_din), ("mha", build_mha), ("gru", build_gru)):
        model = builder()
        _fit_briefly(model, rows)
        model.save(folder / f"{name}.keras")
    user, scorer = build_split()
    user.save(folder / "user_encoder.keras")
    scorer.save(folder / "scorer.keras")
    build_keras3().save(folder / "keras3.keras")
    fused, user, scorer = build_shared_split()
    _fit_briefly(fused, rows)
    for name, model in (("fused", fused), ("user_encoder", user), ("scorer", scorer)):
        model.save(folder / f"shared_{name}.keras")
    return folder


def _sibling(name: str):
    """A support module next to this conftest (not importable by name under --import-mode=importlib)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(f"_converters_{Path(name).stem}", Path(__file__).with_name(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


byom_zoo = _sibling("byom_models.py").byom_zoo      # bring-your-own DIN/BST SavedModels + rows .npz


@pytest.fixture()
def cache_dir(tmp_path):
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def rows_for():
    """``rows_for(n, seed)`` → fresh rows (conftest is not importable under --import-mode=importlib)."""
    return make_rows
