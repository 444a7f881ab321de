"""Accuracy-aware mixed precision for ONNX Runtime quantization (INC/Olive-style fallback).

When a quantized graph's |ΔAUC| against the float graph it came from, on the labelled calibration
rows, exceeds the budget, every quantizable node (`SENSITIVE_OPS`, graph order, at most
``max_candidates``) is dequantized alone and ranked by how much that brings the scores back (mean
|Δp| on ``sensitivity_rows`` evenly spread rows); the most sensitive are then kept float one by one
until the budget holds on ``fit_rows`` rows (or ``max_fallback`` nodes). The quantizer is passed
in (`OrtQuantizePass` hands its own), so this module holds no quantization code. `scoring_rows`
and `graph_scores` are shared with the 4-bit table and weight passes.

Examples:
    >>> record = fit_budget(float_graph, quantized, config, source, quantize)  # doctest: +SKIP
    >>> record["float_nodes"], record["delta_auc"]  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Callable

from .data import load_rows

logger = logging.getLogger(__name__)

# nodes whose quantization the fallback may undo, one at a time
SENSITIVE_OPS = ("MatMul", "Gemm", "Conv", "Add", "Sub", "Mul", "Div", "Softmax", "Where", "Concat", "Relu",
                 "Sigmoid", "Tanh", "ReduceMean", "ReduceSum", "LayerNormalization", "Einsum", "Transpose",
                 "Reshape", "Gather", "Tile", "Expand", "Max", "Min")


def scoring_rows(data: str, model_path: Path, limit: int) -> tuple[dict, object]:
    """``(inputs, labels)``: up to ``limit`` rows spread evenly over ``data`` (`load_rows` with ``spread``),
    cast to the graph's input dtypes."""
    import onnx
    from onnx import helper

    proto = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    dtypes = {v.name: helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
              for v in proto.graph.input if v.name not in inits}
    rows = load_rows(data, list(dtypes), limit=limit, need_labels=True, spread=True)
    return {n: rows[n].astype(dtypes[n]) for n in dtypes}, rows["labels"]


def graph_scores(model_path: Path, inputs: dict, batch: int = 1024):
    """The first output of the graph at ``model_path`` on ``inputs``, flat, via ORT's CPU provider."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    count = len(next(iter(inputs.values())))
    parts = [session.run(None, {n: a[s:s + batch] for n, a in inputs.items()})[0].reshape(-1)
             for s in range(0, count, batch)]
    return np.concatenate(parts).astype(np.float64)


def fit_budget(model_in: Path, out: Path, config, source, quantize: Callable) -> dict:
    """Keep the most accuracy-costly nodes float until |ΔAUC| vs the float graph fits the budget.

    Args:
        model_in: the float graph ``out`` was quantized from.
        out: the quantized graph, rewritten in place.
        config: the pass's `OrtQuantizeConfig` (``data``, ``accuracy_budget``, row counts, exclusions).
        source: the input artifact; ΔAUC counts what the embedding tables already cost when it records
            it (``details["table_delta_auc"]``).
        quantize: ``quantize(model_in, out, config, source)``, the pass's quantizer, rerun with more
            ``nodes_to_exclude`` for every trial.

    Returns:
        The record kept in ``details["mixed_precision"]``.
    """
    import numpy as np

    from edgerec.runtime.metrics import auc

    inputs, labels = scoring_rows(config.data, model_in, max(config.fit_rows, config.sensitivity_rows))
    reference = graph_scores(model_in, inputs)
    if reference.shape != labels.shape:          # not a score per row (a user encoder): no ΔAUC to fit
        return {"budget": float(config.accuracy_budget), "skipped": "the first output is not one score per row"}
    offset = float(source.details.get("table_delta_auc") or 0.0)
    base_auc = auc(labels, reference) - offset           # the AUC of the graph before any table quantization

    every = max(1, len(labels) // config.sensitivity_rows)
    sample = {n: a[::every] for n, a in inputs.items()}

    def measure(path: Path) -> tuple[float, float]:
        scores = graph_scores(path, inputs)
        return auc(labels, scores) - base_auc, float(np.mean(np.abs(scores - reference)))

    def sensitivity_of(path: Path) -> float:
        return float(np.mean(np.abs(graph_scores(path, sample) - reference[::every])))

    delta, _ = measure(out)
    error = sensitivity_of(out)
    quantized_size = out.stat().st_size
    record = {"budget": float(config.accuracy_budget), "rows": int(len(labels)), "delta_auc_quantized": delta,
              "mean_abs_dp_quantized": error, "float_nodes": [], "steps": [], "size_bytes_quantized": quantized_size}
    if abs(delta) <= config.accuracy_budget:
        record.update(fits=True, delta_auc=delta, size_cost_bytes=0)
        return record
    import onnx

    excluded = set(config.nodes_to_exclude)
    nodes = [n for n in onnx.load(str(model_in)).graph.node
             if n.op_type in SENSITIVE_OPS and n.name and n.name not in excluded][: config.max_candidates]
    trial = out.with_name(out.stem + ".trial.onnx")
    sensitivity = []
    for node in nodes:                                  # dequantize one node at a time
        quantize(model_in, trial, dataclasses.replace(config, nodes_to_exclude=tuple(excluded | {node.name})), source)
        sensitivity.append((sensitivity_of(trial), node.name, node.op_type))
    sensitivity.sort()
    record["sensitivity"] = [{"node": name, "op": op, "mean_abs_dp": err} for err, name, op in sensitivity[:16]]
    kept: list[str] = []
    for err, name, op in sensitivity[: config.max_fallback]:
        if err >= error:                                 # keeping it float does not help
            break
        kept.append(name)
        quantize(model_in, trial, dataclasses.replace(config, nodes_to_exclude=tuple(excluded | set(kept))), source)
        delta, now = measure(trial)[0], sensitivity_of(trial)
        record["steps"].append({"node": name, "op": op, "delta_auc": delta, "mean_abs_dp": now,
                                "size_bytes": trial.stat().st_size})
        os.replace(trial, out)
        if abs(delta) <= config.accuracy_budget:
            break
    trial.unlink(missing_ok=True)
    record.update(fits=abs(delta) <= config.accuracy_budget, delta_auc=delta, float_nodes=kept,
                  size_cost_bytes=out.stat().st_size - quantized_size)
    logger.info("mixed precision: %d node(s) kept float (%s), ΔAUC %+.4f, +%d bytes", len(kept), ", ".join(kept),
                delta, record["size_cost_bytes"])
    return record
