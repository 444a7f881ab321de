"""A tiny cascade bundle without TensorFlow: the hand-made fused ONNX ranker of conftest
(score rises with the candidate's index), a hand-made ONNX user tower and an item index."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from .conftest import SMALL_ITEMS, make_onnx_bundle

DIM = 6
ITEM_ROWS = len(SMALL_ITEMS) + 2


def tower_onnx_bytes(seq: int = 4, dim: int = DIM) -> bytes:
    """user_vector = mean(hist_items) * w + b as [B, dim]: an empty history gives b."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(11)
    hist = helper.make_tensor_value_info("hist_items", TensorProto.INT32, ["batch", seq])
    out = helper.make_tensor_value_info("user_vector", TensorProto.FLOAT, ["batch", dim])
    inits = [helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
             helper.make_tensor("quarter", TensorProto.FLOAT, [], [1.0 / seq]),
             helper.make_tensor("w", TensorProto.FLOAT, [dim], rng.normal(size=dim).tolist()),
             helper.make_tensor("b", TensorProto.FLOAT, [dim], rng.normal(size=dim).tolist())]
    nodes = [helper.make_node("Cast", ["hist_items"], ["hist_f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["hist_f", "axis1"], ["total"], keepdims=1),
             helper.make_node("Mul", ["total", "quarter"], ["mean"]),
             helper.make_node("Mul", ["mean", "w"], ["scaled"]),
             helper.make_node("Add", ["scaled", "b"], ["user_vector"])]
    model = helper.make_model(helper.make_graph(nodes, "tower", [hist], [out], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def item_vectors(seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(ITEM_ROWS, DIM)).astype(np.float32)
    vectors[:2] = 0
    return vectors


def make_cascade_bundle(directory: Path, kind: str = "exact") -> Path:
    """`make_onnx_bundle` plus the user tower artifact and an item index over `item_vectors`."""
    from edgerec.converters.cascade import write_cascade
    from edgerec.runtime.index import ItemIndex
    from edgerec.runtime.index_config import IndexConfig

    make_onnx_bundle(directory)
    tower = directory.parent / f"{directory.name}_tower.onnx"
    tower.write_bytes(tower_onnx_bytes())
    index = ItemIndex.build(item_vectors(), ["", ""] + SMALL_ITEMS, IndexConfig(kind=kind))
    index.meta["user_tower"] = {"onnxruntime": "user_tower_fp32.onnx"}
    art = SimpleNamespace(path=str(tower.with_name("user_tower_fp32.onnx")), format="onnx", precision="fp32",
                          lineage=[], details={})
    Path(art.path).write_bytes(tower.read_bytes())
    write_cascade(directory, [{"artifact": art, "backend": "onnxruntime", "metrics": {"max_abs_diff": 0.0}}], index, [])
    return directory


@pytest.fixture
def cascade_bundle(tmp_path):
    pytest.importorskip("onnxruntime")
    return make_cascade_bundle(tmp_path / "cascade")
