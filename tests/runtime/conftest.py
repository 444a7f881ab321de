"""Fixtures for the runtime tests: hand-made ONNX/TFLite models and a small real bundle.

TensorFlow is used here only to MAKE fixtures (never by the runtime under test). The bundle is
built once per test session: tiny tf_keras DIN-like model (fused + user_encoder + scorer) ->
.tflite (TFLiteConverter) and .onnx (tf2onnx) + feature_spec.json + examples.jsonl + manifest.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from edgerec.runtime.manifest import Artifact, Manifest, TensorSpec, file_entry, write_manifest
from edgerec.runtime.io import atomic_write_bytes, sha256_file
from edgerec.runtime.spec import ContextField, DenseField, FeatureSpec, Vocabulary

SEQ = 5
ITEMS = [str(i) for i in range(10, 30)]     # raw ids "10".."29" -> indices 2..21


def tiny_onnx_bytes(seq: int = 4) -> bytes:
    """score = sigmoid(0.01 * (sum(hist_items) + cand_item)) as [B, 1]; opset 17."""
    import onnx
    from onnx import TensorProto, helper

    hist = helper.make_tensor_value_info("hist_items", TensorProto.INT32, ["batch", seq])
    cand = helper.make_tensor_value_info("cand_item", TensorProto.INT32, ["batch"])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])
    inits = [helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
             helper.make_tensor("scale", TensorProto.FLOAT, [], [0.01])]
    nodes = [
        helper.make_node("Cast", ["hist_items"], ["hist_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["hist_f", "axis1"], ["hist_sum"], keepdims=0),
        helper.make_node("Cast", ["cand_item"], ["cand_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["hist_sum", "cand_f"], ["total"]),
        helper.make_node("Mul", ["total", "scale"], ["scaled"]),
        helper.make_node("Sigmoid", ["scaled"], ["prob"]),
        helper.make_node("Unsqueeze", ["prob", "axis1"], ["score"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [hist, cand], [score], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def tiny_expected(hist: np.ndarray, cand: np.ndarray) -> np.ndarray:
    total = hist.astype(np.float64).sum(axis=1) + cand
    return (1 / (1 + np.exp(-0.01 * total))).reshape(-1, 1)


def _tf():
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from edgerec.converters.tfenv import import_tf
    return import_tf()


def tiny_tflite_bytes(seq: int = 4) -> bytes:
    tf, _ = _tf()

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, seq], tf.int32, name="hist_items"),
                                      tf.TensorSpec([None], tf.int32, name="cand_item")])
        def serve(self, hist_items, cand_item):
            total = tf.reduce_sum(tf.cast(hist_items, tf.float32), axis=1) + tf.cast(cand_item, tf.float32)
            return {"score": tf.expand_dims(tf.sigmoid(0.01 * total), 1)}

    module = Tiny()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    return converter.convert()


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    path.write_bytes(tiny_onnx_bytes())
    return path


@pytest.fixture(scope="session")
def tiny_tflite(tmp_path_factory) -> Path:
    pytest.importorskip("tensorflow")
    path = tmp_path_factory.mktemp("tiny") / "tiny.tflite"
    path.write_bytes(tiny_tflite_bytes())
    return path


# -- a small real bundle -------------------------------------------------------------------
def make_spec() -> FeatureSpec:
    return FeatureSpec(max_seq_len=SEQ, item_vocab=Vocabulary("item", tuple(ITEMS)),
                       context=(ContextField("hour", "hour"),
                                ContextField("device", "categorical", Vocabulary("device", ("ios", "android")))),
                       dense=(DenseField("price", mean=5.0, std=2.0),))


def make_requests(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(0, SEQ + 3))
        history = [str(x) for x in rng.integers(8, 32, size=length)]   # some OOV ids (8, 9, 30, 31)
        out.append({"user_id": f"u{i % 7}", "history": history, "item": str(int(rng.integers(9, 31))),
                    "context": {"timestamp": int(rng.integers(0, 2_000_000_000)),
                                "device": ["ios", "android", "web"][i % 3]},
                    "dense": {"price": float(rng.normal(5, 2))}})
    return out


def _keras_parts(spec: FeatureSpec):
    """Flat fused model + user_encoder + scorer built from the SAME layer objects (so the three
    agree exactly and each saves/loads on its own)."""
    tf, keras = _tf()
    keras.utils.set_random_seed(7)
    item_emb = keras.layers.Embedding(spec.item_vocab.size, 8, name="item_emb")
    pool = keras.layers.GlobalAveragePooling1D(name="pool")
    to_state = keras.layers.Dense(8, activation="tanh", name="user_state")
    hour_emb = keras.layers.Embedding(25, 3, name="hour_emb")
    device_emb = keras.layers.Embedding(4, 2, name="device_emb")
    concat = keras.layers.Concatenate(name="concat")
    multiply = keras.layers.Multiply(name="interaction")
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")
    head = keras.layers.Dense(1, activation="sigmoid", name="score")

    def user_side(hist):
        return to_state(pool(item_emb(hist)))

    def score_side(cand, hour, device, dense, state):
        cand_vec = item_emb(cand)
        feats = concat([cand_vec, hour_emb(hour), device_emb(device), dense, state, multiply([cand_vec, state])])
        return head(hidden(feats))

    def inputs():
        return (keras.Input((), dtype="int32", name="cand_item"), keras.Input((), dtype="int32", name="hour"),
                keras.Input((), dtype="int32", name="device"), keras.Input((1,), dtype="float32", name="dense"))

    hist = keras.Input((SEQ,), dtype="int32", name="hist_items")
    user_encoder = keras.Model(hist, user_side(hist), name="user_encoder")
    scorer_inputs = inputs()
    state_in = keras.Input((8,), dtype="float32", name="user_state")
    scorer = keras.Model([*scorer_inputs, state_in], score_side(*scorer_inputs, state_in), name="scorer")
    hist_f = keras.Input((SEQ,), dtype="int32", name="hist_items")
    fused_inputs = inputs()
    fused = keras.Model([hist_f, *fused_inputs], score_side(*fused_inputs, user_side(hist_f)), name="fused")
    return tf, fused, user_encoder, scorer


def _signature(tf, model):
    return [tf.TensorSpec([None, *inp.shape[1:]], inp.dtype, name=inp.name.split(":")[0]) for inp in model.inputs]


def _tensor_specs(tf, model) -> tuple[list, list]:
    inputs = [TensorSpec(s.name, s.dtype.name, [None, *[int(d) for d in s.shape[1:]]]) for s in _signature(tf, model)]
    outputs = [TensorSpec(name, "float32", [None, int(t.shape[-1])]) for name, t in zip(model.output_names, model.outputs)]
    return inputs, outputs


def build_bundle(directory: Path, seed: int = 7, scale: float = 1.0) -> Path:
    """Write a complete bundle (tflite + onnx for fused/user_encoder/scorer) into ``directory``."""
    import tf2onnx

    tf, fused, user_encoder, scorer = _keras_parts(make_spec())
    if scale != 1.0:    # a visibly different "new version" of the same model
        for layer in fused.layers:
            weights = layer.get_weights()
            if weights:
                layer.set_weights([w * scale for w in weights])
    directory.mkdir(parents=True, exist_ok=True)
    spec = make_spec()
    spec.save(directory / "feature_spec.json")
    artifacts, selected = [], {"litert": {}, "onnxruntime": {}}
    for part, model in (("fused", fused), ("user_encoder", user_encoder), ("scorer", scorer)):
        inputs, outputs = _tensor_specs(tf, model)
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        atomic_write_bytes(directory / f"{part}.tflite", converter.convert())
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=_signature(tf, model), opset=17)
        atomic_write_bytes(directory / f"{part}.onnx", proto.SerializeToString())
        for fmt, backend in (("tflite", "litert"), ("onnx", "onnxruntime")):
            name = f"{part}.{fmt}"
            artifacts.append(Artifact(file=name, format=fmt, precision="fp32", part=part,
                                      sha256=sha256_file(directory / name),
                                      size_bytes=(directory / name).stat().st_size,
                                      inputs=inputs, outputs=outputs))
            selected[backend][part] = name
    pre_requests = make_requests(32, seed=3)
    from edgerec.runtime.preprocess import Preprocessor
    arrays = Preprocessor(spec).encode_requests(pre_requests)
    expected = fused.predict({k: arrays[k] for k in ("hist_items", "cand_item", "hour", "device", "dense")},
                             verbose=0).reshape(-1)
    lines = [json.dumps({**r, "expected": float(e)}) for r, e in zip(pre_requests, expected)]
    atomic_write_bytes(directory / "examples.jsonl", ("\n".join(lines) + "\n").encode())
    manifest = Manifest(artifacts=artifacts, selected=selected,
                        files=[file_entry(directory, "feature_spec.json", "feature_spec"),
                               file_entry(directory, "examples.jsonl", "examples")],
                        model={"family": "tiny_din", "keras": "tf_keras"}, feature_spec="feature_spec.json")
    write_manifest(directory, manifest)
    np.savez(directory.parent / f"{directory.name}_reference.npz", expected=expected)
    return directory


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    """A read-only-by-convention bundle; copy it (copy_bundle) before tampering."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    return build_bundle(tmp_path_factory.mktemp("bundles") / "v1")


@pytest.fixture(scope="session")
def bundle_v2(tmp_path_factory) -> Path:
    pytest.importorskip("tensorflow")
    return build_bundle(tmp_path_factory.mktemp("bundles") / "v2", scale=1.5)


@pytest.fixture
def copy_bundle(bundle, tmp_path):
    import shutil

    def _copy(name: str = "copy") -> Path:
        return Path(shutil.copytree(bundle, tmp_path / name))
    return _copy


# -- hand-made ONNX bundles (no TensorFlow) ------------------------------------------------------
SMALL_ITEMS = [str(i) for i in range(100, 120)]     # raw ids "100".."119" -> indices 2..21


def scored_onnx_bytes(slope: float = 0.4, centre: float = 11.0, seq: int = 4) -> bytes:
    """score = sigmoid(slope * (cand_item - centre)) as [B, 1]: scores spread over (0, 1) with the
    candidate, as a trained model's do; ``slope=0`` is a constant-output (0.5) model."""
    import onnx
    from onnx import TensorProto, helper

    hist = helper.make_tensor_value_info("hist_items", TensorProto.INT32, ["batch", seq])
    cand = helper.make_tensor_value_info("cand_item", TensorProto.INT32, ["batch"])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])
    inits = [helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
             helper.make_tensor("centre", TensorProto.FLOAT, [], [centre]),
             helper.make_tensor("slope", TensorProto.FLOAT, [], [slope]),
             helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    nodes = [
        helper.make_node("Cast", ["hist_items"], ["hist_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["hist_f", "axis1"], ["hist_sum"], keepdims=0),
        helper.make_node("Mul", ["hist_sum", "zero"], ["hist_zero"]),      # hist_items is read, not used
        helper.make_node("Cast", ["cand_item"], ["cand_f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["cand_f", "centre"], ["centred"]),
        helper.make_node("Mul", ["centred", "slope"], ["logit0"]),
        helper.make_node("Add", ["logit0", "hist_zero"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
        helper.make_node("Unsqueeze", ["prob", "axis1"], ["score"]),
    ]
    graph = helper.make_graph(nodes, "scored", [hist, cand], [score], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def scored_expected(items, slope: float = 0.4, centre: float = 11.0) -> list[float]:
    """What `scored_onnx_bytes` answers for raw candidate ids of SMALL_ITEMS (float64)."""
    index = {raw: i + 2 for i, raw in enumerate(SMALL_ITEMS)}
    return [float(1 / (1 + np.exp(-slope * (index[str(raw)] - centre)))) for raw in items]


def small_requests(n: int = 32, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"history": [str(x) for x in rng.choice(SMALL_ITEMS, size=int(rng.integers(0, 6)))],
             "item": SMALL_ITEMS[i % len(SMALL_ITEMS)]} for i in range(n)]


def make_onnx_bundle(directory: Path, model: bytes | None = None, precision: str = "fp32",
                     lines: list | None = None, validation: dict | None = None) -> Path:
    """A bundle with one fused ONNX artifact, a feature spec over SMALL_ITEMS and examples.jsonl
    (default: `small_requests` with the exact scores of the default `scored_onnx_bytes`)."""
    directory.mkdir(parents=True, exist_ok=True)
    FeatureSpec(max_seq_len=4, item_vocab=Vocabulary("item", tuple(SMALL_ITEMS))).save(directory / "feature_spec.json")
    name = f"fused_{precision}.onnx"
    atomic_write_bytes(directory / name, model if model is not None else scored_onnx_bytes())
    if lines is None:
        requests = small_requests()
        lines = [{**r, "expected": e} for r, e in zip(requests, scored_expected([r["item"] for r in requests]))]
    atomic_write_bytes(directory / "examples.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode())
    artifact = Artifact(file=name, format="onnx", precision=precision, part="fused",
                        sha256=sha256_file(directory / name), size_bytes=(directory / name).stat().st_size,
                        inputs=[TensorSpec("hist_items", "int32", [None, 4]), TensorSpec("cand_item", "int32", [None])],
                        outputs=[TensorSpec("score", "float32", [None, 1])], validation=dict(validation or {}))
    manifest = Manifest(artifacts=[artifact], selected={"onnxruntime": {"fused": name}},
                        files=[file_entry(directory, "feature_spec.json", "feature_spec"),
                               file_entry(directory, "examples.jsonl", "examples")],
                        model={"family": "din", "version": "test"}, feature_spec="feature_spec.json")
    write_manifest(directory, manifest)
    return directory


def relist(directory: Path) -> None:
    """Recompute the manifest's sha256/size of every listed file (after a test edited one)."""
    from edgerec.runtime.manifest import load_manifest

    manifest = load_manifest(directory, verify=False)
    for art in manifest.artifacts:
        art.sha256, art.size_bytes = sha256_file(directory / art.file), (directory / art.file).stat().st_size
    manifest.files = [file_entry(directory, f["file"], f.get("role", "")) for f in manifest.files
                      if (directory / f["file"]).is_file()]
    write_manifest(directory, manifest)
