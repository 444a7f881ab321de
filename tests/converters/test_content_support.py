"""Support for the content-encoder tests (no tests here): a tiny content-family MODEL_DIR.

The content encoder is edgerec's own (`build_content_encoder`, small dims, random weights). The
ranking model is a tiny context-like Keras model reading ``cand_content`` as the contract says:
for a candidate whose id is the OOV index the projected content comes from ``cand_content``,
for a known id from the frozen item-content table (the encoder's vectors of the catalogue).
Only builtin layers: the OOV switch is two frozen one-column Embeddings (1 on the OOV row / 1
everywhere else) multiplied in.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ITEMS = 40
SEQ = 6
TOKENS = 8
CONTENT_DIM = 8
EMB = 8
WORDS = ("space", "cowboy", "love", "story", "war", "toy", "night", "city", "dream", "ghost", "river", "king",
         "queen", "robot", "dragon", "winter", "summer", "comedy", "drama", "action", "horror", "music",
         "school", "family", "island", "mystery", "western", "crime", "animation", "adventure")
CUSTOM_MODULE = "edgerec.sdk.models.layers"


def item_text(index: int) -> str:
    rng = np.random.default_rng(1000 + index)
    return " ".join(rng.choice(WORDS, size=int(rng.integers(2, 5)))) + f" ({1990 + index % 30})"


def feature_spec(tokenizer: str = "basic"):
    from edgerec.runtime.spec import FeatureSpec, TextSpec, Vocabulary

    vocab = WORDS + tuple(str(1990 + i) for i in range(30))
    if tokenizer == "wordpiece":
        vocab = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "(", ")") + vocab
    return FeatureSpec(max_seq_len=SEQ, item_vocab=Vocabulary("item", tuple(f"i{i}" for i in range(ITEMS))),
                       text=TextSpec(vocab, TOKENS, tokenizer, CONTENT_DIM))


def build_encoder(spec, seed: int = 0):
    from edgerec.converters.tfenv import import_tf
    from edgerec.sdk.models.config import ModelConfig
    from edgerec.sdk.models.content import build_content_encoder

    _, keras = import_tf()
    keras.utils.set_random_seed(seed)
    config = ModelConfig(content_dim=CONTENT_DIM, text_heads=1, text_ff_dim=16, text_blocks=1,
                         text_max_tokens=TOKENS, text_vocab_size=len(spec.text.vocab) + 4)
    return build_content_encoder(spec, config)


def build_ranker(table: np.ndarray, seed: int = 0):
    """hist_items, cand_item, cand_content -> score; cand_content used only for OOV candidates."""
    from edgerec.converters.tfenv import import_tf

    _, k = import_tf()
    k.utils.set_random_seed(seed)
    vocab = table.shape[0]
    hist = k.Input((SEQ,), dtype="int32", name="hist_items")
    cand = k.Input((), dtype="int32", name="cand_item")
    content = k.Input((CONTENT_DIM,), dtype="float32", name="cand_content")
    emb = k.layers.Embedding(vocab, EMB, name="item_embedding")
    pooled = k.layers.GlobalAveragePooling1D()(emb(hist))
    oov_rows = np.zeros((vocab, 1), np.float32)
    oov_rows[1] = 1.0
    is_oov = k.layers.Embedding(vocab, 1, trainable=False, name="is_oov")
    is_known = k.layers.Embedding(vocab, 1, trainable=False, name="is_known")
    lookup = k.layers.Embedding(vocab, CONTENT_DIM, trainable=False, name="item_content")
    cand_vector = k.layers.Add()([k.layers.Multiply()([lookup(cand), is_known(cand)]),
                                  k.layers.Multiply()([content, is_oov(cand)])])
    projected = k.layers.Dense(EMB, activation="tanh", name="content_projection")(cand_vector)
    x = k.layers.Concatenate()([pooled, emb(cand), projected])
    x = k.layers.Dense(16, activation="relu", name="mlp_0")(x)
    out = k.layers.Dense(1, activation="sigmoid", name="score")(x)
    model = k.Model({"hist_items": hist, "cand_item": cand, "cand_content": content}, out, name="fused")
    is_oov.set_weights([oov_rows])
    is_known.set_weights([1.0 - oov_rows])
    lookup.set_weights([table])
    return model


def rows(n: int, seed: int, groups: int | None = None) -> dict:
    rng = np.random.default_rng(seed)
    out = {"hist_items": rng.integers(0, ITEMS + 2, size=(n, SEQ)).astype(np.int32),
           "cand_item": rng.integers(1, ITEMS + 2, size=n).astype(np.int32),
           "cand_content": np.zeros((n, CONTENT_DIM), np.float32),
           "labels": (rng.random(n) < 0.3).astype(np.float32)}
    if groups:
        out["groups"] = np.repeat(np.arange(groups), n // groups).astype(np.int64)
    return out


def write_model_dir(folder: Path, tokenizer: str = "basic", with_item_text: bool = True) -> Path:
    """A content-family MODEL_DIR: fused.keras (reads cand_content), content_encoder.keras,
    feature_spec.json (text with content_dim), item_text.json, rows and raw examples."""
    from edgerec.runtime.text import tokenizer_for

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = feature_spec(tokenizer)
    spec.save(folder / "feature_spec.json")
    texts = ["", ""] + [item_text(i) for i in range(ITEMS)]
    encoder = build_encoder(spec)
    table = np.asarray(encoder.predict(tokenizer_for(spec.text).encode_batch(texts), verbose=0)["item_vector"],
                       np.float32)
    table[:2] = 0.0
    build_ranker(table).save(folder / "fused.keras")
    encoder.save(folder / "content_encoder.keras")
    (folder / "item_text.json").write_text(json.dumps(texts))
    for name, data in (("calibration.npz", rows(300, 2)), ("validation.npz", rows(400, 3, groups=20))):
        np.savez(folder / name, **data)
    rng = np.random.default_rng(4)
    with open(folder / "examples.jsonl", "w") as handle:
        for _ in range(24):
            handle.write(json.dumps({"history": [f"i{i}" for i in rng.integers(0, ITEMS, size=4)],
                                     "item": f"i{int(rng.integers(0, ITEMS))}"}) + "\n")
    meta = {"format_version": 1, "family": "context", "keras": "tf_keras",
            "parts": {"fused": "fused.keras", "content_encoder": "content_encoder.keras"},
            "custom_objects_module": CUSTOM_MODULE, "feature_spec": "feature_spec.json",
            "data": {"calibration": "calibration.npz", "validation": "validation.npz"},
            "examples": "examples.jsonl", "config": {"tiny": True}, "data_source": "content-test"}
    if with_item_text:
        meta["content_encoder"] = {"item_text": "item_text.json"}
    (folder / "edgerec_model.json").write_text(json.dumps(meta))
    return folder


def fast_latency():
    from edgerec.converters.select import LatencyConfig

    return LatencyConfig(batch_sizes=(1, 64), rounds=3, min_time_s=0.002, warmup=1)


def export(folder: Path, bundle: Path, quantize=("dynamic",), targets=("tflite", "onnx")):
    from edgerec.converters.export import export_model

    return export_model(folder, bundle, quantize=quantize, targets=targets, latency=fast_latency())
