"""Row-wise int8/int4 embedding tables in TFLite: values within half a row step, one stored copy of a
shared table, a float score head, all run with ai_edge_litert."""
from __future__ import annotations

import numpy as np
import pytest

from edgerec.converters.pipeline import PassRunner

VOCAB, WIDTH, SEQ = 4000, 32, 6


def test_rows_are_within_half_a_step_of_their_own_scale():
    from edgerec.converters.passes.tflite_embedding import quantize_rows, row_scales

    rng = np.random.default_rng(0)
    table = rng.normal(size=(300, 16)).astype(np.float32) * rng.uniform(0.001, 3.0, size=(300, 1)).astype(np.float32)
    table[0] = 0.0                                             # padding row
    for bits, qmax in ((8, 127), (4, 7)):
        q, codes, base, step = quantize_rows(table, bits)
        scales = row_scales(codes, base, step)
        assert q.dtype == np.int8 and q.max() <= qmax and q.min() >= -qmax - 1 and not q[0].any()
        error = np.abs(q * scales[:, None] - table)
        assert np.all(error[1:] <= 0.5 * scales[1:, None] * (1 + 1e-5))
        need = np.maximum(table[1:].max(axis=1) / qmax, -table[1:].min(axis=1) / (qmax + 1))
        assert np.all(scales[1:] < need * (1 + 2 * step))           # scales rounded up by at most one code


def test_int4_packing_is_low_nibble_first():
    from edgerec.converters.passes.tflite_embedding import pack_int4

    assert pack_int4(np.array([1, -1, 7, -8], np.int8)).tolist() == [0xF1, 0x87]


def _save(tmp_path, name, build):
    from edgerec.converters.tfenv import import_tf

    _, k = import_tf()
    model = build(k)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    return path, model


def _lookup_model(k):
    ids = k.Input((SEQ,), dtype="int32", name="hist_items")
    emb = k.layers.Embedding(VOCAB, WIDTH, name="items",
                             embeddings_initializer=k.initializers.RandomNormal(stddev=0.3, seed=1))
    return k.Model(ids, k.layers.Activation("linear", name="user_state")(emb(ids)))


def _shared_model(k):
    hist = k.Input((SEQ,), dtype="int32", name="hist_items")
    cand = k.Input((), dtype="int32", name="cand_item")
    emb = k.layers.Embedding(VOCAB, WIDTH, name="items",
                             embeddings_initializer=k.initializers.RandomNormal(stddev=0.3, seed=2))
    x = k.layers.Concatenate()([k.layers.GlobalAveragePooling1D()(emb(hist)), emb(cand)])
    x = k.layers.Dense(16, activation="relu", name="mlp")(x)
    return k.Model({"hist_items": hist, "cand_item": cand}, k.layers.Dense(1, activation="sigmoid", name="score")(x))


def _rows(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"hist_items": rng.integers(0, VOCAB, size=(n, SEQ)).astype(np.int32),
            "cand_item": rng.integers(0, VOCAB, size=n).astype(np.int32),
            "labels": rng.integers(0, 2, size=n).astype(np.float32)}


def _run(path, rows, names, batch=64):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    outs = [runner(**{n: np.ascontiguousarray(rows[n][s:s + batch]) for n in names})
            for s in range(0, len(rows[names[0]]), batch)]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


@pytest.mark.slow
@pytest.mark.parametrize("bits,ratio", [(8, 0.30), (4, 0.16)])
def test_lookup_rewrite_values_size_and_litert(tmp_path, cache_dir, bits, ratio):
    from edgerec.converters.passes.tflite import TFLiteConfig, TFLitePass
    from edgerec.converters.passes.tflite_embedding import quantize_rows, row_scales

    path, model = _save(tmp_path, "lookup", _lookup_model)
    runner = PassRunner(cache_dir)
    fp32 = runner.run(TFLitePass(), path, TFLiteConfig(mode="fp32"))
    art = runner.run(TFLitePass(), path, TFLiteConfig(mode="dynamic", embedding_bits=bits))
    assert art.precision == ("int4" if bits == 4 else "dynamic")
    table = model.get_layer("items").get_weights()[0]
    assert art.details["embedding"]["tables"][0]["shape"] == [VOCAB, WIDTH]
    assert art.size_bytes <= ratio * fp32.size_bytes, (art.size_bytes, fp32.size_bytes)
    rows = _rows(200)
    for batch in (1, 200):                                 # the batch is resizable
        got = next(iter(_run(art.path, rows, ["hist_items"], batch).values()))
        ids = rows["hist_items"]
        _, codes, base, step = quantize_rows(table, bits)
        half = 0.5 * row_scales(codes, base, step)[ids][..., None]
        assert got.shape == (200, SEQ, WIDTH)
        assert np.all(np.abs(got - table[ids]) <= half * (1 + 1e-4) + 1e-7)


@pytest.mark.slow
def test_shared_table_is_stored_once_in_int8(tmp_path, cache_dir):
    from edgerec.converters.passes.tflite import TFLiteConfig, TFLitePass

    path, model = _save(tmp_path, "shared", _shared_model)
    rows = _rows(256, seed=1)
    np.savez(tmp_path / "rows.npz", **rows)
    runner = PassRunner(cache_dir)
    plain = runner.run(TFLitePass(), path, TFLiteConfig(mode="int8", data=str(tmp_path / "rows.npz")))
    fp32 = runner.run(TFLitePass(), path, TFLiteConfig(mode="fp32"))
    one = runner.run(TFLitePass(), path, TFLiteConfig(mode="int8", data=str(tmp_path / "rows.npz"), embedding_bits=8))
    tables = one.details["embedding"]["tables"]
    assert len(tables) == 1 and tables[0]["lookups"] == 2 and tables[0]["copies_before"] == 2
    assert plain.size_bytes > 0.45 * fp32.size_bytes          # the converter's two int8 copies
    assert one.size_bytes < 0.30 * fp32.size_bytes            # one row-wise copy
    names = ["cand_item", "hist_items"]
    want = np.asarray(model({n: rows[n] for n in names}))
    got = _run(one.path, rows, names)["score"]
    assert np.max(np.abs(got - want)) < 0.03


@pytest.mark.slow
def test_float_head_gives_distinct_scores(tmp_path, cache_dir):
    from edgerec.converters.passes.tflite import TFLiteConfig, TFLitePass

    path, _ = _save(tmp_path, "shared", _shared_model)
    calib = _rows(256, seed=2)
    np.savez(tmp_path / "rows.npz", **calib)
    runner = PassRunner(cache_dir)
    one_user = {"hist_items": np.repeat(calib["hist_items"][:1], 1000, axis=0),
                "cand_item": np.arange(1000, dtype=np.int32) + 1}
    names = ["cand_item", "hist_items"]

    def scores(**options):
        art = runner.run(TFLitePass(), path, TFLiteConfig(mode="int8", data=str(tmp_path / "rows.npz"), **options))
        return art, _run(art.path, one_user, names, batch=1000)["score"].ravel()

    head, floats = scores(embedding_bits=4)
    assert head.details["float_head"] is True
    assert len(np.unique(floats)) >= 990
    top = np.sort(floats)[::-1][:11]
    assert len(np.unique(top)) == 11                            # no tie in (or at the edge of) the top 10
    _, quantized = scores(embedding_bits=4, float_head=False)
    assert len(np.unique(quantized)) <= 256                     # the int8 LOGISTIC's 1/256 grid


def _bias_model(k):
    """The shared model plus a per-item bias (a one-column table) added to the candidate's logit."""
    hist = k.Input((SEQ,), dtype="int32", name="hist_items")
    cand = k.Input((), dtype="int32", name="cand_item")
    emb = k.layers.Embedding(VOCAB, WIDTH, name="items",
                             embeddings_initializer=k.initializers.RandomNormal(stddev=0.3, seed=2))
    bias = k.layers.Embedding(VOCAB, 1, name="item_bias",
                              embeddings_initializer=k.initializers.RandomNormal(stddev=0.5, seed=3))
    x = k.layers.Concatenate()([k.layers.GlobalAveragePooling1D()(emb(hist)), emb(cand)])
    logit = k.layers.Add()([k.layers.Dense(1, name="logit")(k.layers.Dense(16, activation="relu")(x)), bias(cand)])
    return k.Model({"hist_items": hist, "cand_item": cand}, k.layers.Activation("sigmoid", name="score")(logit))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dynamic", "int8"])
def test_a_one_column_table_is_int8_with_one_scale(tmp_path, cache_dir, mode):
    from edgerec.converters.passes.tflite import TFLiteConfig, TFLitePass

    path, model = _save(tmp_path, "bias", _bias_model)
    rows = _rows(256, seed=4)
    np.savez(tmp_path / "rows.npz", **rows)
    art = PassRunner(cache_dir).run(TFLitePass(), path, TFLiteConfig(
        mode=mode, embedding_bits=4, data=str(tmp_path / "rows.npz") if mode == "int8" else None))
    tables = {tuple(t["shape"]): t for t in art.details["embedding"]["tables"]}
    assert set(tables) == {(VOCAB, WIDTH), (VOCAB, 1)}
    assert tables[(VOCAB, 1)]["bits"] == 8 and tables[(VOCAB, 1)]["stored_bytes"] == VOCAB   # no scale codes
    assert tables[(VOCAB, WIDTH)]["stored_bytes"] == VOCAB * (WIDTH // 2 + 1) + 4           # int4 + codes + base
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    flat = flatbuffer_utils.read_model_from_bytearray(bytearray(open(art.path, "rb").read()))
    stored = [t for t in flat.subgraphs[0].tensors if [int(d) for d in t.shape] == [VOCAB, 1]
              and flat.buffers[t.buffer].data is not None and len(flat.buffers[t.buffer].data)]
    assert [t.type for t in stored] == [schema.TensorType.INT8] * 2                      # the bias + the codes
    bias = model.get_layer("item_bias").get_weights()[0]
    scale = np.abs(bias).max() / 127
    assert sum(list(t.quantization.scale) == [pytest.approx(scale)] for t in stored) == 1
    names = ["cand_item", "hist_items"]
    want = np.asarray(model({n: rows[n] for n in names})).reshape(-1)
    got = _run(art.path, rows, names)["score"].reshape(-1)
    assert np.abs(got - want).mean() < 0.01 and np.abs(got - want).max() < 0.05   # 4-bit items, int8 layers
    if mode == "dynamic":               # the bias rows alone: within half of the table's one step
        ids = np.arange(VOCAB // SEQ * SEQ, dtype=np.int32).reshape(-1, SEQ)
        lookup, _ = _save(tmp_path, "bias_lookup", lambda k: _bias_lookup(k, bias))
        art = PassRunner(cache_dir).run(TFLitePass(), lookup, TFLiteConfig(mode="dynamic", embedding_bits=4))
        got = next(iter(_run(art.path, {"hist_items": ids}, ["hist_items"]).values()))
        assert np.all(np.abs(got - bias[ids]) <= 0.5 * scale * (1 + 1e-4)) and np.abs(got - bias[ids]).max() > 0


def _bias_lookup(k, bias):
    ids = k.Input((SEQ,), dtype="int32", name="hist_items")
    emb = k.layers.Embedding(VOCAB, 1, name="item_bias", embeddings_initializer=k.initializers.Constant(bias))
    return k.Model(ids, k.layers.Activation("linear", name="user_state")(emb(ids)))
