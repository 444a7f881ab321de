"""Tiny hand-built ONNX bundles (no TensorFlow): fused, user_encoder and scorer parts of a
mean-pooled dot-product recommender, with a real feature spec and example requests."""
import json
from pathlib import Path

import numpy as np
import pytest

from edgerec.runtime.io import sha256_file
from edgerec.runtime.manifest import Artifact, Manifest, TensorSpec, file_entry, write_manifest
from edgerec.runtime.spec import ContextField, FeatureSpec, Vocabulary

ITEMS, DIM, SEQ = 40, 8, 6


def _onnx_parts(seed=0):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    item_emb = numpy_helper.from_array(rng.normal(0, 0.5, (ITEMS + 2, DIM)).astype(np.float32), "item_emb")
    hour_emb = numpy_helper.from_array(rng.normal(0, 0.5, (25, DIM)).astype(np.float32), "hour_emb")
    axes1 = numpy_helper.from_array(np.array([1], np.int64), "axes1")

    def model(nodes, inputs, outputs, inits):
        graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m.SerializeToString()

    hist = helper.make_tensor_value_info("hist_items", TensorProto.INT32, ["batch", SEQ])
    cand = helper.make_tensor_value_info("cand_item", TensorProto.INT32, ["batch"])
    hour = helper.make_tensor_value_info("hour", TensorProto.INT32, ["batch"])
    state_in = helper.make_tensor_value_info("user_state", TensorProto.FLOAT, ["batch", DIM])
    state_out = helper.make_tensor_value_info("user_state", TensorProto.FLOAT, ["batch", DIM])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])
    user_nodes = [helper.make_node("Gather", ["item_emb", "hist_items"], ["h"]),
                  helper.make_node("ReduceMean", ["h"], ["user_state"], axes=[1], keepdims=0)]
    score_nodes = [helper.make_node("Gather", ["item_emb", "cand_item"], ["c"]),
                   helper.make_node("Gather", ["hour_emb", "hour"], ["t"]),
                   helper.make_node("Add", ["user_state", "t"], ["u"]),
                   helper.make_node("Mul", ["u", "c"], ["p"]),
                   helper.make_node("ReduceSum", ["p", "axes1"], ["s"], keepdims=1),
                   helper.make_node("Sigmoid", ["s"], ["score"])]
    return {"fused": model(user_nodes + score_nodes, [hist, cand, hour], [score], [item_emb, hour_emb, axes1]),
            "user_encoder": model(user_nodes, [hist], [state_out], [item_emb]),
            "scorer": model(score_nodes, [cand, hour, state_in], [score], [item_emb, hour_emb, axes1])}


SIGNATURES = {
    "fused": ([TensorSpec("cand_item", "int32", [None]), TensorSpec("hist_items", "int32", [None, SEQ]),
               TensorSpec("hour", "int32", [None])], [TensorSpec("score", "float32", [None, 1])]),
    "user_encoder": ([TensorSpec("hist_items", "int32", [None, SEQ])], [TensorSpec("user_state", "float32", [None, DIM])]),
    "scorer": ([TensorSpec("cand_item", "int32", [None]), TensorSpec("hour", "int32", [None]),
                TensorSpec("user_state", "float32", [None, DIM])], [TensorSpec("score", "float32", [None, 1])]),
}


def write_tiny_onnx_bundle(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    spec = FeatureSpec(max_seq_len=SEQ, item_vocab=Vocabulary("item", tuple(str(i) for i in range(100, 100 + ITEMS))),
                       context=(ContextField("hour", "hour"),))
    spec.save(out / "feature_spec.json")
    rng = np.random.default_rng(1)
    lines = []
    for i in range(32):
        history = [str(x) for x in rng.integers(100, 100 + ITEMS, int(rng.integers(0, 9)))]
        lines.append(json.dumps({"user_id": f"u{i % 8}", "history": history, "item": str(int(rng.integers(100, 140))),
                                 "context": {"timestamp": 964982703 + 3600 * i}, "expected": 0.5}))
    (out / "examples.jsonl").write_text("\n".join(lines) + "\n")
    artifacts = []
    parts = _onnx_parts()
    for part, blob in parts.items():
        for precision, delta in (("fp32", 0.0), ("dynamic", -0.0015)):
            if part != "fused" and precision != "fp32":
                continue
            name = f"{part}_{precision}.onnx"
            (out / name).write_bytes(blob if precision == "fp32" else blob + b"")
            inputs, outputs = SIGNATURES[part]
            artifacts.append(Artifact(name, "onnx", precision, part, sha256_file(out / name), (out / name).stat().st_size,
                                      inputs, outputs, {"delta_auc": delta, "auc": 0.7 + delta}))
    manifest = Manifest(artifacts=artifacts,
                        selected={"onnxruntime": {"fused": "fused_fp32.onnx", "user_encoder": "user_encoder_fp32.onnx",
                                                  "scorer": "scorer_fp32.onnx"}},
                        files=[file_entry(out, "feature_spec.json", "feature_spec"),
                               file_entry(out, "examples.jsonl", "examples")],
                        model={"family": "tiny", "source": str(out / "no-such-model")},
                        feature_spec="feature_spec.json")
    write_manifest(out, manifest)
    return out


@pytest.fixture(scope="session")
def tiny_onnx_bundle(tmp_path_factory):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    return write_tiny_onnx_bundle(tmp_path_factory.mktemp("bundle") / "tiny")
