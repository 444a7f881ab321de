"""Row-wise int4/int8 ONNX embedding tables, one stored table, float score head, accuracy-aware fallback.

Hand-built ONNX graphs (no TensorFlow) except the bring-your-own export at the end.
"""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgerec.converters.passes import OrtQuantizeConfig, OrtQuantizePass  # noqa: E402
from edgerec.converters.pipeline import ExportedArtifact  # noqa: E402
from edgerec.converters.passes.onnx_embedding import (OnnxEmbeddingConfig, OnnxEmbeddingPass, block_size,  # noqa: E402
                                                       quantize_rows)
from edgerec.converters.passes.onnx_quant_prep import score_head_nodes  # noqa: E402

VOCAB, DIM, SEQ = 2000, 24, 6


def _model(path, *, shared: bool = True, seed: int = 0, sensitive: bool = False):
    """ids [B, SEQ] + cand [B, 1] -> mean(history) · W + cand · W -> Dense(1) -> sigmoid.

    ``shared``: one table read by two Gathers, else two initializers with the same content (an exporter
    that copies the table per lookup). ``sensitive``: a Where that fills padding with -1e9 and a
    softmax over it (activation quantization wipes the real logits out)."""
    rng = np.random.default_rng(seed)
    table = rng.normal(scale=0.5, size=(VOCAB, DIM)).astype(np.float32)
    inits = [numpy_helper.from_array(table, "table"),
             numpy_helper.from_array(rng.normal(size=(DIM, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(16, 1)).astype(np.float32) * 0.5, "w2"),
             numpy_helper.from_array(np.array([0.1], np.float32), "b2"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    second = "table"
    if not shared:
        inits.append(numpy_helper.from_array(table.copy(), "table_copy"))
        second = "table_copy"
    nodes = [helper.make_node("Gather", ["table", "ids"], ["hist"], axis=0),            # [B, L, D]
             helper.make_node("Gather", [second, "cand"], ["cand_e"], axis=0)]          # [B, 1, D]
    if sensitive:
        inits += [numpy_helper.from_array(np.array(-1e9, np.float32), "neg"),
                  numpy_helper.from_array(np.array(0, np.int32), "zero")]
        nodes += [helper.make_node("Mul", ["hist", "cand_e"], ["prod"]),
                  helper.make_node("ReduceSum", ["prod", "axis2"], ["logits"], keepdims=0),  # [B, L]
                  helper.make_node("Greater", ["ids", "zero"], ["keep"]),
                  helper.make_node("Where", ["keep", "logits", "neg"], ["masked"]),
                  helper.make_node("Softmax", ["masked"], ["att"], axis=-1),
                  helper.make_node("Unsqueeze", ["att", "axis2"], ["att3"]),
                  helper.make_node("Mul", ["hist", "att3"], ["weighted"]),
                  helper.make_node("ReduceSum", ["weighted", "axis1"], ["pooled"], keepdims=0)]
        inits.append(numpy_helper.from_array(np.array([2], np.int64), "axis2"))
    else:
        nodes.append(helper.make_node("ReduceMean", ["hist", "axis1"], ["pooled"], keepdims=0))
    nodes += [helper.make_node("Squeeze", ["cand_e", "axis1"], ["cand_v"]),
              helper.make_node("Add", ["pooled", "cand_v"], ["x"]),
              helper.make_node("MatMul", ["x", "w1"], ["h"], name="hidden"),
              helper.make_node("Relu", ["h"], ["hr"]),
              helper.make_node("MatMul", ["hr", "w2"], ["logit"], name="head_matmul"),
              helper.make_node("Add", ["logit", "b2"], ["logit_b"], name="head_bias"),
              helper.make_node("Sigmoid", ["logit_b"], ["score"], name="head_sigmoid")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("ids", TensorProto.INT32, ["batch", SEQ]),
                                               helper.make_tensor_value_info("cand", TensorProto.INT32, ["batch", 1])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path, table


def _rows(n=2000, seed=1, path=None, model=None):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(n, SEQ)).astype(np.int32)
    ids[: n // 2, :2] = 0                                    # padding
    rows = {"ids": ids, "cand": rng.integers(1, VOCAB, size=(n, 1)).astype(np.int32)}
    if model is not None:                                    # labels the float model ranks well
        p = _run(model, rows).reshape(-1)
        rows["labels"] = (rng.random(n) < p).astype(np.float32)
    if path is not None:
        np.savez(path, **rows)
    return rows


def _onnx(path):
    return ExportedArtifact(str(path), "onnx")


def _run(path, rows):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"ids": rows["ids"], "cand": rows["cand"]})[0]


def _lookup_model(path, table_path):
    """The table lookups alone: outputs of the rewritten graph are the dequantized rows."""
    src = onnx.load(str(table_path))
    table = next(t for t in src.graph.initializer if t.name == "table")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0)], "lookup",
                              [helper.make_tensor_value_info("ids", TensorProto.INT32, ["batch"])],
                              [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", DIM])], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("bits", [4, 8])
def test_rows_within_half_a_step_and_the_file_shrinks(tmp_path, bits):
    src, table = _model(tmp_path / "m.onnx")
    lookup = _lookup_model(tmp_path / "lookup.onnx", src)
    art = OnnxEmbeddingPass().run(_onnx(lookup), OnnxEmbeddingConfig(bits=bits, scale_type="float32"), tmp_path / "o")
    ids = np.arange(VOCAB, dtype=np.int32)
    got = ort.InferenceSession(art.path, providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    _, scales, _ = quantize_rows(table, bits)
    step = scales.reshape(-1, 1).astype(np.float64)
    assert got.shape == (VOCAB, DIM)                       # the padding to block_size(24) = 32 is sliced off
    assert np.all(np.abs(got - table) <= 0.5 * step + 1e-6)
    assert np.abs(got - table).max() > 0                   # it really is quantized
    ratio = (tmp_path / "o").joinpath(art.path.split("/")[-1]).stat().st_size / lookup.stat().st_size
    per_row = block_size(DIM) * bits / 8 + 4 + bits / 8     # packed row (24 -> 32 columns) + fp32 scale + zero point
    assert ratio == pytest.approx(per_row / (DIM * 4), abs=0.01)
    assert ratio < (0.22 if bits == 4 else 0.39)
    assert art.precision == ("int4" if bits == 4 else "int8")
    op_types = {n.op_type for n in onnx.load(art.path).graph.node}
    assert "GatherBlockQuantized" in op_types and "Gather" not in op_types
    zero_points = [i for i in onnx.load(art.path).graph.initializer if i.name.endswith("_zero_point")]
    assert len(zero_points) == 1                           # always explicit for the unsigned types


@pytest.mark.parametrize("bits", [4, 8])
def test_log_coded_scales_one_byte_per_row_within_half_a_step(tmp_path, bits):
    from edgerec.converters.passes.rowwise import quantize_rows as symmetric_rows, row_scales

    src, table = _model(tmp_path / "m.onnx")
    lookup = _lookup_model(tmp_path / "lookup.onnx", src)
    art = OnnxEmbeddingPass().run(_onnx(lookup), OnnxEmbeddingConfig(bits=bits), tmp_path / "o")   # log8 default
    ids = np.arange(VOCAB, dtype=np.int32)
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC):
        options = ort.SessionOptions()
        options.graph_optimization_level = level             # computed at run time or folded at load
        got = ort.InferenceSession(art.path, options, providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
        padded = np.zeros((VOCAB, block_size(DIM)), np.float32)
        padded[:, :DIM] = table
        _, codes, base, step = symmetric_rows(padded, bits)
        half = 0.5 * row_scales(codes, base, step)[:, None]
        assert got.shape == (VOCAB, DIM) and np.all(np.abs(got - table) <= half * (1 + 1e-5) + 1e-7)
    proto = onnx.load(art.path)
    assert not any(i.name.endswith("_zero_point") for i in proto.graph.initializer)   # int4: signed, zero point 0
    assert not any(i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16) and VOCAB in i.dims
                   for i in proto.graph.initializer)          # no stored float scale per row
    size = (tmp_path / "o").joinpath(art.path.split("/")[-1]).stat().st_size
    per_row = block_size(DIM) * bits / 8 + 1                  # packed row (24 -> 32 columns) + one scale code
    assert size / lookup.stat().st_size == pytest.approx(per_row / (DIM * 4), abs=0.01)


@pytest.mark.parametrize("mode", ["dynamic", "static_qdq"])
def test_quantization_keeps_the_scale_codes(tmp_path, mode):
    src, _ = _model(tmp_path / "m.onnx")
    calib = tmp_path / "rows.npz"
    rows = _rows(path=calib)
    tables = OnnxEmbeddingPass().run(_onnx(src), OnnxEmbeddingConfig(bits=4), tmp_path / "t")
    art = OrtQuantizePass().run(tables, OrtQuantizeConfig(mode=mode, data=str(calib)), tmp_path / "q")
    proto = onnx.load(art.path)
    # the scales ORT's pre-processing folded come back computed: int8 codes, not a float [V, 1] initializer,
    # and nothing quantizes the scale computation itself
    assert not any(i.data_type == TensorProto.FLOAT and VOCAB in i.dims for i in proto.graph.initializer)
    assert any(i.data_type == TensorProto.INT8 and list(i.dims) == [VOCAB, 1] for i in proto.graph.initializer)
    assert "Exp" in {n.op_type for n in proto.graph.node}
    assert np.abs(_run(art.path, rows) - _run(tables.path, rows)).mean() < 0.02


def test_block_size_is_a_power_of_two_of_at_least_16():
    assert [block_size(d) for d in (4, 16, 24, 32, 33, 64)] == [16, 16, 32, 32, 64, 64]


@pytest.mark.parametrize("shared", [True, False])
def test_two_gathers_of_one_table_store_it_once(tmp_path, shared):
    src, table = _model(tmp_path / "m.onnx", shared=shared)
    rows = _rows()
    art = OnnxEmbeddingPass().run(_onnx(src), OnnxEmbeddingConfig(bits=4), tmp_path / "o")
    proto = onnx.load(art.path)
    quantized = [i for i in proto.graph.initializer if i.data_type == TensorProto.INT4 and len(i.dims) == 2
                 and i.dims[0] == VOCAB and i.dims[1] > 1]
    assert len(quantized) == 1                             # one stored table, whichever way it was shared
    assert not any(i.name in ("table", "table_copy") for i in proto.graph.initializer)
    assert sum(n.op_type == "GatherBlockQuantized" for n in proto.graph.node) == 2
    record = art.details["embedding_tables"]
    assert len(record) == 1 and record[0]["gathers"] == 2
    table_bytes = table.nbytes * (2 if not shared else 1)
    saved = src.stat().st_size - (tmp_path / "o" / art.path.split("/")[-1]).stat().st_size
    assert saved > 0.75 * table_bytes
    float_scores, int4_scores = _run(src, rows), _run(art.path, rows)
    assert np.abs(float_scores - int4_scores).mean() < 0.03     # symmetric 4-bit rows of a random table
    assert np.corrcoef(float_scores.ravel(), int4_scores.ravel())[0, 1] > 0.99


def test_score_head_stays_float_in_static_qdq(tmp_path):
    src, _ = _model(tmp_path / "m.onnx")
    calib = tmp_path / "rows.npz"
    rows = _rows(path=calib)
    assert score_head_nodes(onnx.load(str(src))) == ["head_sigmoid", "head_bias", "head_matmul"]
    tables = OnnxEmbeddingPass().run(_onnx(src), OnnxEmbeddingConfig(bits=4), tmp_path / "t")
    results = {}
    for head in (False, True):
        art = OrtQuantizePass().run(tables, OrtQuantizeConfig(mode="static_qdq", data=str(calib), float_head=head,
                                                              compact=False), tmp_path / f"q{head}")
        assert art.precision == "int4"                     # the int4 tables name the precision
        sweep = {"ids": np.repeat(rows["ids"][:1], 1000, axis=0), "cand": np.arange(1, 1001, dtype=np.int32)[:, None]}
        scores = _run(art.path, sweep).ravel()
        top = np.sort(scores)[::-1][:10]
        results[head] = (len(np.unique(scores)) / 1000, int(sum(np.sum(scores == v) > 1 for v in top)))
        if head:
            # found after quant_pre_process, which fuses MatMul + Add into one Gemm
            assert art.details["float_head"][0] == "head_sigmoid" and len(art.details["float_head"]) >= 2
            consumers = {i for n in onnx.load(art.path).graph.node if n.op_type == "QuantizeLinear" for i in n.input}
            assert "score" not in consumers and "logit_b" not in consumers
    assert results[False][0] < 0.5                        # a quantized sigmoid: a 1/256 grid
    assert results[True][0] >= 0.99 and results[True][1] == 0


def test_score_head_stays_float_in_dynamic_quantization(tmp_path):
    src, _ = _model(tmp_path / "m.onnx")
    rows = _rows()
    art = OrtQuantizePass().run(_onnx(src), OrtQuantizeConfig(mode="dynamic"), tmp_path / "q")
    proto = onnx.load(art.path)
    # pre-processing fuses the head into a Gemm, which the dynamic quantizer splits and renames: still float
    assert art.details["float_head"][-1].endswith("MatMulAddFusion")
    assert sum(n.op_type == "MatMulInteger" for n in proto.graph.node) == 1          # the hidden layer only
    sweep = {"ids": np.repeat(rows["ids"][:1], 1000, axis=0), "cand": np.arange(1, 1001, dtype=np.int32)[:, None]}
    scores = _run(art.path, sweep).ravel()
    assert len(np.unique(scores)) >= 990


def test_a_sensitive_op_stays_float_until_the_budget_holds(tmp_path):
    src, _ = _model(tmp_path / "m.onnx", sensitive=True)
    calib = tmp_path / "rows.npz"
    rows = _rows(path=calib, model=src)
    plain = OrtQuantizePass().run(_onnx(src), OrtQuantizeConfig(mode="static_qdq", data=str(calib), compact=False),
                                  tmp_path / "plain")
    from edgerec.runtime.metrics import auc

    base = auc(rows["labels"], _run(src, rows).ravel())
    loss = abs(auc(rows["labels"], _run(plain.path, rows).ravel()) - base)
    assert loss > 0.003                                    # the -1e9 fill ruins the attention in uint8
    fitted = OrtQuantizePass().run(_onnx(src), OrtQuantizeConfig(mode="static_qdq", data=str(calib), compact=False,
                                                               accuracy_budget=0.003), tmp_path / "fit")
    mixed = fitted.details["mixed_precision"]
    assert mixed["fits"] and abs(mixed["delta_auc"]) <= 0.003
    assert mixed["float_nodes"] and mixed["sensitivity"]
    ops = {s["op"] for s in mixed["steps"]}
    assert ops & {"Where", "Softmax", "ReduceSum", "Mul"}  # the masking chain, not the dense layers
    assert mixed["size_cost_bytes"] == (tmp_path / "fit").joinpath(fitted.path.split("/")[-1]).stat().st_size \
        - mixed["size_bytes_quantized"]
    assert abs(auc(rows["labels"], _run(fitted.path, rows).ravel()) - base) <= 0.003


def test_bad_configs_and_graphs_without_tables_are_refused(tmp_path):
    from edgerec.converters.errors import ConverterConfigError

    with pytest.raises(ConverterConfigError, match="embedding bits"):
        OnnxEmbeddingConfig(bits=2)
    with pytest.raises(ConverterConfigError, match="scale type"):
        OnnxEmbeddingConfig(scale_type="bfloat16")
    for shift in (0, 1.5, True):
        with pytest.raises(ConverterConfigError, match=r"dense_shift_budget in \(0, 1\) or None"):
            OnnxEmbeddingConfig(dense_bits=4, dense_budget=0.003, dense_shift_budget=shift)
    src, _ = _model(tmp_path / "m.onnx")
    with pytest.raises(ConverterConfigError, match="Gather of a constant 2-D float table"):
        OnnxEmbeddingPass().run(_onnx(src), OnnxEmbeddingConfig(min_rows=VOCAB + 1), tmp_path / "o")
    with pytest.raises(ConverterConfigError, match="accuracy_budget"):
        OrtQuantizeConfig(mode="dynamic", accuracy_budget=0.003)


@pytest.mark.slow
def test_bring_your_own_models_store_their_shared_table_once(byom_zoo, tmp_path):
    from edgerec.converters.passes import OnnxExportConfig, OnnxExportPass

    for kind in ("din", "bst"):
        fp32 = OnnxExportPass().run(str(byom_zoo[kind]), OnnxExportConfig(), tmp_path / kind)
        art = OnnxEmbeddingPass().run(fp32, OnnxEmbeddingConfig(bits=4, data=str(byom_zoo["rows"])), tmp_path / f"{kind}4")
        tables = art.details["embedding_tables"]
        assert len(tables) == 1 and tables[0]["gathers"] == 2      # history and candidate, one table
        assert abs(art.details["table_delta_auc"]) < 0.02


def test_a_graph_without_a_score_per_row_skips_the_budget_but_still_quantizes(tmp_path):
    src, _ = _model(tmp_path / "m.onnx")
    lookup = _lookup_model(tmp_path / "lookup.onnx", src)          # rows [B, D]: like a user encoder's state
    calib = tmp_path / "rows.npz"
    np.savez(calib, ids=np.arange(1, 501, dtype=np.int32), labels=np.zeros(500, np.float32))
    art = OnnxEmbeddingPass().run(_onnx(lookup), OnnxEmbeddingConfig(bits=8, data=str(calib)), tmp_path / "o")
    assert art.details["table_delta_auc"] is None
    q = OrtQuantizePass().run(art, OrtQuantizeConfig(mode="dynamic", data=str(calib), accuracy_budget=0.003),
                              tmp_path / "q")
    assert "skipped" in q.details["mixed_precision"]


def _narrow_model(path, width: int, seed: int = 0):
    """ids [B] -> table row · w + sum(narrow row) -> sigmoid, ``narrow`` a ``[VOCAB, width]`` table
    (a per-item bias when ``width`` is 1)."""
    rng = np.random.default_rng(seed)
    narrow = rng.normal(scale=0.7, size=(VOCAB, width)).astype(np.float32)
    inits = [numpy_helper.from_array(rng.normal(scale=0.5, size=(VOCAB, DIM)).astype(np.float32), "table"),
             numpy_helper.from_array(narrow, "narrow"),
             numpy_helper.from_array(rng.normal(size=(DIM, 1)).astype(np.float32) * 0.3, "w"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0),
             helper.make_node("Gather", ["narrow", "ids"], ["narrow_rows"], axis=0, name="narrow_lookup"),
             helper.make_node("MatMul", ["rows", "w"], ["logit"]),
             helper.make_node("ReduceSum", ["narrow_rows", "axis1"], ["bias"], keepdims=1),
             helper.make_node("Add", ["logit", "bias"], ["logit_b"]),
             helper.make_node("Sigmoid", ["logit_b"], ["score"])]
    graph = helper.make_graph(nodes, "narrow", [helper.make_tensor_value_info("ids", TensorProto.INT32, ["batch"])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1]),
                               helper.make_tensor_value_info("narrow_rows", TensorProto.FLOAT, ["batch", width])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path, narrow


@pytest.mark.parametrize("width", [1, 4])
def test_a_narrow_table_is_stored_as_int8_columns_not_padded_blocks(tmp_path, width):
    from edgerec.converters.passes.onnx_embedding import is_narrow

    assert is_narrow(1, 4) and is_narrow(8, 4) and not is_narrow(9, 4) and not is_narrow(DIM, 4)
    assert is_narrow(15, 8) and not is_narrow(16, 8)
    src, narrow = _narrow_model(tmp_path / "m.onnx", width)
    art = OnnxEmbeddingPass().run(_onnx(src), OnnxEmbeddingConfig(bits=4), tmp_path / "o")
    proto = onnx.load(art.path)
    stored = {i.name: i for i in proto.graph.initializer}
    assert stored["narrow_c8"].data_type == TensorProto.INT8 and list(stored["narrow_c8"].dims) == [VOCAB, width]
    assert not any(VOCAB in i.dims and i.data_type in (TensorProto.FLOAT, TensorProto.INT4) and len(i.dims) == 2
                   and i.dims[1] < DIM for i in proto.graph.initializer)   # no padded 16-column block copy
    assert sum(n.op_type == "GatherBlockQuantized" for n in proto.graph.node) == 1       # the wide table only
    record = next(r for r in art.details["embedding_tables"] if r["table"] == "narrow")
    assert record["scale_type"] == "int8_per_column" and record["bits"] == 8
    assert record["bytes_quantized"] <= VOCAB * width + 8 * width
    ids = np.arange(VOCAB, dtype=np.int32)
    session = ort.InferenceSession(art.path, providers=["CPUExecutionProvider"])
    rows = session.run(["narrow_rows"], {"ids": ids})[0]
    half_step = np.abs(narrow).max(axis=0) / 127 / 2
    assert rows.shape == (VOCAB, width) and np.all(np.abs(rows - narrow) <= half_step * (1 + 1e-5))
    assert np.abs(rows - narrow).max() > 0
    # the bytes a [V, width] int4 block table would take: 16 padded columns + a scale code per row
    blocks = VOCAB * (block_size(width) * 4 // 8 + 1)
    size = (tmp_path / "o").joinpath(art.path.split("/")[-1]).stat().st_size
    wide = VOCAB * (block_size(DIM) // 2 + 1)                    # the 4-bit wide table
    assert size < wide + VOCAB * width + 2048                    # + 1 byte per narrow value + graph
    assert record["bytes_quantized"] < blocks
    calib = tmp_path / "rows.npz"
    np.savez(calib, ids=np.random.default_rng(2).integers(1, VOCAB, 800).astype(np.int32))
    want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(["score"], {"ids": ids})[0]
    for mode in ("dynamic", "static_qdq"):            # the quantize pass leaves the int8 lookup as it is
        q = OrtQuantizePass().run(art, OrtQuantizeConfig(mode=mode, data=str(calib)), tmp_path / mode)
        got = ort.InferenceSession(q.path, providers=["CPUExecutionProvider"]).run(["score"], {"ids": ids})[0]
        assert np.abs(got - want).mean() < 0.02, mode
        assert any(i.data_type == TensorProto.INT8 and list(i.dims) == [VOCAB, width]
                   for i in onnx.load(q.path).graph.initializer), mode
