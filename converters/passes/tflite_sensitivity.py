"""Which int8 TFLite nodes cost the accuracy, and the paired ΔAUC of a candidate file.

`rank_nodes` quantizes the calibrated model with NumericVerify ops (TF's MLIR quantizer debug
mode) and runs TF's QuantizationDebugger over sample rows: each quantized node is fed the same
input in float and in int8 (per-layer, so errors do not accumulate) and scored by its relative
error ``rmse(float - int8) / rms(float)``. Nodes come back worst first, for
`edgerec.converters.mixed_precision.fallback_until_within`.

Examples:
    >>> rank_nodes(calibrated_bytes, rows, specs, exclude=["StatefulPartitionedCall:0"])  # doctest: +SKIP
    ['din/att_hidden/Relu;din/att_hidden/BiasAdd', ...]
"""
from __future__ import annotations

import numpy as np

from ..errors import ConversionError, expected

VERIFY_PREFIX = "NumericVerify/"


def _relative_error(float_tensors, dequantized, scale, zero_point) -> float:
    ref = np.concatenate([np.ravel(t) for t in float_tensors]).astype(np.float64)
    got = np.concatenate([np.ravel(t) for t in dequantized]).astype(np.float64)
    return float(np.sqrt(np.mean((ref - got) ** 2)) / (np.sqrt(np.mean(ref ** 2)) + 1e-12))


def node_names(calibrated: bytes) -> list[str]:
    """Output tensor names of every op of the calibrated model (the names the quantizer denylists)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
    return [sg.tensors[int(o)].name.decode() for sg in model.subgraphs for op in sg.operators for o in op.outputs
            if sg.tensors[int(o)].name]


def rank_nodes(calibrated: bytes, rows: dict, specs: dict, exclude=(), sample_rows: int = 64) -> list[str]:
    """Quantized nodes of ``calibrated`` (its output names), largest per-layer int8 error first.

    Args:
        calibrated: the converter's calibrate-only output.
        rows: input rows by name (the part's inputs).
        specs: ``{name: (dtype, shape)}`` of the inputs.
        exclude: nodes already kept float (not ranked).
        sample_rows: rows the debugger runs (one at a time).
    """
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.python.convert import mlir_quantize

    from edgerec.converters.tfenv import import_tf

    tf, _ = import_tf()
    debug = mlir_quantize(calibrated, input_data_type=tf.float32, output_data_type=tf.float32,
                          enable_numeric_verify=True, denylisted_nodes=list(exclude) or None)
    order = [d["name"] for d in Interpreter(model_content=debug).get_input_details()]
    by_input = {}
    for name in order:
        match = [n for n in specs if name in (n, f"serving_default_{n}:0") or name.startswith(f"serving_default_{n}:")]
        if not match:
            raise ConversionError(expected(f"a model input named like one of {sorted(specs)}", name),
                                  mode="sensitivity")
        by_input[name] = match[0]
    count = min(sample_rows, len(next(iter(rows.values()))))

    def dataset():
        for i in range(count):
            yield [np.ascontiguousarray(rows[by_input[n]][i:i + 1]) for n in order]

    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_debug_metrics={}, layer_direct_compare_metrics={"relative_error": _relative_error})
    debugger = tf.lite.experimental.QuantizationDebugger(quant_debug_model_content=debug, debug_dataset=dataset,
                                                         debug_options=options)
    debugger.run()
    known = sorted(set(node_names(calibrated)) - set(exclude), key=len, reverse=True)
    scores: dict[str, float] = {}
    for key, stats in debugger.layer_statistics.items():
        label = key[len(VERIFY_PREFIX):] if key.startswith(VERIFY_PREFIX) else key
        node = next((n for n in known if label.startswith(n)), None)   # the debugger appends an index
        value = float(stats.get("relative_error", 0.0))
        if node is not None and np.isfinite(value) and value > 0:
            scores[node] = max(scores.get(node, 0.0), value)
    return sorted(scores, key=lambda n: -scores[n])


def scores_of(flat: bytes, rows: dict, names: list[str], batch: int = 256) -> np.ndarray:
    """The first output (``score`` when present) of ``flat`` over ``rows``, as a 1-D array."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=flat).get_signature_runner("serving_default")
    total, outs = len(rows[names[0]]), []
    for start in range(0, total, batch):
        result = runner(**{n: np.ascontiguousarray(rows[n][start:start + batch]) for n in names})
        key = "score" if "score" in result else sorted(result)[0]
        outs.append(np.asarray(result[key]).reshape(len(rows[names[0]][start:start + batch]), -1)[:, 0])
    return np.concatenate(outs)


def delta_auc_on_rows(flat: bytes, rows: dict, labels: np.ndarray, reference: np.ndarray) -> float:
    """AUC(labels, scores of ``flat``) − AUC(labels, ``reference`` scores), paired on the same rows."""
    from edgerec.runtime.metrics import auc

    return float(auc(labels, scores_of(flat, rows, sorted(rows))) - auc(labels, reference))
