"""From the converter's output to the final TFLite flatbuffer for one set of float nodes:
full-integer quantization with the score head and chosen nodes kept float, row-wise int8/int4
embedding lookups, packed int4 dense weights, and the accuracy fallback that keeps the most
sensitive nodes float until the paired ΔAUC fits the budget (`FlatbufferBuilder`)."""
from __future__ import annotations

import logging

import numpy as np

from .data import cast_like, load_rows
from .tflite_checks import SIGNATURE, conversion_error

logger = logging.getLogger(__name__)


class FlatbufferBuilder:
    """Turns the converter's output into the final flatbuffer for a set of float nodes: quantize
    (int8: the calibrated model, with the score head and ``float_nodes`` kept float), then
    rewrite embedding lookups. Facts land in ``details``.

    Args:
        converted: the converter's flatbuffer (int8: calibrated, not yet quantized).
        config: the pass's `tflite.TFLiteConfig`.
        model: the Keras model converted (its rank-2 weights for the embedding rewrite).
        specs: input name -> (dtype, shape) of the model.
    """

    def __init__(self, converted: bytes, config, model, specs):
        self.converted, self.config, self.specs = converted, config, specs
        self.details: dict = {}
        self.fallback_rows = 0          # labelled rows the accuracy fallback measured ΔAUC on
        self.tables = embedding_weights(model) if config.embedding_bits else []
        self.head = score_head_nodes(converted) if config.mode == "int8" and config.float_head else []
        if config.mode == "int8":
            self.details["float_head"] = bool(self.head)

    def __call__(self, float_nodes=()) -> bytes:
        flat = self.converted
        if self.config.mode == "int8":
            from tensorflow.lite.python.convert import mlir_quantize
            from edgerec.converters.tfenv import import_tf

            tf, _ = import_tf()
            nodes = list(dict.fromkeys(list(self.head) + list(self.config.float_nodes) + list(float_nodes)))
            try:
                flat = mlir_quantize(flat, input_data_type=tf.float32, output_data_type=tf.float32,
                                     denylisted_nodes=nodes or None)
            except Exception as err:  # noqa: BLE001 - the quantizer raises many types
                raise conversion_error("int8", err) from None
            self.details["float_nodes"] = nodes
        if self.config.embedding_bits:
            from .tflite_embedding import quantize_embedding_lookups

            flat, info = quantize_embedding_lookups(flat, self.config.embedding_bits, self.tables)
            self.details["embedding"] = info
        if self.config.dense_bits:
            flat = self.dense_int4(flat)
        # compaction comes after, in the pass, where it is checked to keep outputs bit-identical
        return flat

    def dense_int4(self, flat: bytes) -> bytes:
        """4-bit FULLY_CONNECTED weights; with a budget and labelled rows, accuracy-aware (`tflite_dense`)."""
        from .tflite_dense import fit_int4_weights, int4_fully_connected

        rows = None
        if self.config.dense_budget is not None and self.config.data:
            with np.load(self.config.data, allow_pickle=False) as data:
                labelled = "labels" in data.files
            if labelled:
                rows = load_rows(self.config.data, list(self.specs), limit=self.config.evaluation_rows,
                                 need_labels=True, spread=True)
        if rows is None:
            flat, records = int4_fully_connected(flat)
            self.details["dense_int4"] = {"rewritten": records, "kept": []}
        else:
            labels = np.asarray(rows.pop("labels")).reshape(-1)
            rows = cast_like(rows, {n: d for n, (d, _) in self.specs.items()})
            from .tflite_sensitivity import scores_of

            reference = scores_of(self.converted, rows, sorted(self.specs))
            if reference.shape != labels.shape:          # not one score per row: nothing to rank
                flat, records = int4_fully_connected(flat)
                self.details["dense_int4"] = {"rewritten": records, "kept": [], "skipped": "no score per row"}
            else:
                flat, self.details["dense_int4"] = fit_int4_weights(
                    flat, rows, labels, reference, self.config.dense_budget, self.config.dense_shift_budget,
                    sensitivity_rows=self.config.sensitivity_rows)
        self.details["dense_kernel"] = "FULLY_CONNECTED hybrid, packed int4 weights (RAM ≈ file); other large float constants packed int4 behind a load-time DEQUANTIZE (float in RAM)"
        return flat

    def fallback_skipped(self) -> str | None:
        """Why the accuracy fallback does not run (None: it runs)."""
        if self.config.mode != "int8" or self.config.accuracy_budget is None:
            return "no accuracy budget"
        from ai_edge_litert.interpreter import Interpreter

        outputs = Interpreter(model_content=self.converted).get_signature_runner(SIGNATURE).get_output_details()
        if "score" not in outputs:
            return "no score output to measure AUC on"
        with np.load(self.config.data, allow_pickle=False) as data:
            if "labels" not in data.files:
                return "no labels in the calibration rows"
        return None

    def fallback(self, budget: float):
        """`mixed_precision.fallback_until_within` over the nodes ranked by their per-layer int8 error,
        ΔAUC paired against the float (calibrated) model on the labelled rows of ``data``."""
        from ..mixed_precision import fallback_until_within
        from .tflite_sensitivity import delta_auc_on_rows, rank_nodes, scores_of

        rows = load_rows(self.config.data, list(self.specs) + ["labels"], limit=self.config.evaluation_rows,
                         spread=True)
        labels = np.asarray(rows.pop("labels")).reshape(-1)
        rows = cast_like(rows, {n: d for n, (d, _) in self.specs.items()})
        reference = scores_of(self.converted, rows, sorted(self.specs))
        self.fallback_rows = int(len(labels))

        def ranked() -> list:
            # TF's QuantizationDebugger runs the reference kernels, which refuse some inputs LiteRT
            # serves (an int8 DIV by zero on an empty history's mask sum): without a ranking the
            # fully quantized file stays, over budget, for the selector to reject with its ΔAUC.
            try:
                return rank_nodes(self.converted, rows, self.specs, exclude=self.head)
            except Exception as err:  # noqa: BLE001 - the debugger's interpreter raises many types
                self.details["sensitivity_error"] = f"{type(err).__name__}: {str(err).splitlines()[-1][:300]}"
                logger.warning("int8 sensitivity ranking failed (%s); no op kept float beyond the score head",
                               self.details["sensitivity_error"])
                return []

        def written_size(flat: bytes) -> int:      # sizes compared are those of the files written
            if not self.config.compact:
                return len(flat)
            from .tflite_compact import compact_flatbuffer

            return len(compact_flatbuffer(flat))

        result = fallback_until_within(
            ranked, self, lambda flat: (abs(delta_auc_on_rows(flat, rows, labels, reference)), written_size(flat)),
            budget)
        self.details["float_nodes"] = list(dict.fromkeys(list(self.head) + list(self.config.float_nodes) +
                                                          list(result.kept_float)))
        return result


def embedding_weights(model) -> list:
    """The Keras model's rank-2 weights (embedding tables are among them) as float arrays."""
    return [np.asarray(w.numpy() if hasattr(w, "numpy") else w, np.float32)
            for w in model.weights if len(getattr(w, "shape", ())) == 2]


def score_head_nodes(calibrated: bytes) -> list[str]:
    """Output names of the final LOGISTIC of each graph output and of the op producing its logit
    (through reshapes), in the calibrated model: the nodes kept float for unquantized scores."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
    ops = schema.BuiltinOperator
    passthrough = {ops.RESHAPE, ops.SQUEEZE, ops.EXPAND_DIMS, ops.DEQUANTIZE, ops.QUANTIZE}
    names = []
    for subgraph in model.subgraphs:
        producer = {int(o): op for op in subgraph.operators for o in op.outputs}

        def code(op):
            opcode = model.operatorCodes[op.opcodeIndex]
            return max(opcode.builtinCode, opcode.deprecatedBuiltinCode)

        def name(op):
            return subgraph.tensors[int(op.outputs[0])].name.decode()

        for out in subgraph.outputs:
            chain, op = [], producer.get(int(out))
            while op is not None and code(op) in passthrough:
                chain.append(op)
                op = producer.get(int(op.inputs[0]))
            if op is None or code(op) != ops.LOGISTIC:
                continue
            chain.append(op)
            logit = producer.get(int(op.inputs[0]))
            if logit is not None:
                chain.append(logit)
            names += [name(o) for o in chain]
    return list(dict.fromkeys(names))
