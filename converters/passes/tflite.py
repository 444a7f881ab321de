"""TFLite export: fp32, fp16, dynamic-range int8 and full-integer int8, with row-wise int8/int4
embedding tables, a float score head and accuracy-aware float fallback.

The Keras model is first written as a SavedModel whose ``serving_default`` signature uses the
canonical tensor names (hist_items, cand_item, … → score / user_state …), then converted with
``TFLiteConverter.from_saved_model`` (never Keras 3 ``from_concrete_functions``, which writes a
weightless model). Full-integer int8 calibrates on the ``.npz`` training rows; int32 id inputs stay
int32 and float inputs/outputs stay float. Each produced file is run once with ai_edge_litert
(finite outputs) before it is returned.

Full-integer int8 is calibrated first and quantized second (TF's MLIR quantizer), so named nodes
can stay float: the score head (the final LOGISTIC and the op producing its logit — the int8
LOGISTIC kernel fixes its output scale at 1/256, so int8 scores would take at most 256 values),
``float_nodes`` chosen by the caller, and, with ``accuracy_budget``, the nodes
`edgerec.converters.mixed_precision` keeps float until the paired ΔAUC on the labelled
calibration rows fits the budget. ``embedding_bits`` rewrites every lookup of a constant table
into row-wise int8/int4 EMBEDDING_LOOKUPs (`tflite_embedding`), one stored table per shared one;
``dense_bits=4`` (dynamic-range only) stores the FULLY_CONNECTED weights in packed int4 (`tflite_dense`),
keeping the most sensitive ones int8 while ``dense_budget`` is missed on the labelled rows of ``data``.

Examples:
    >>> TFLitePass().run("m/fused.keras", TFLiteConfig(mode="int8", data="m/calibration.npz"), "out")  # doctest: +SKIP
"""
from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgerec.runtime.manifest import TensorSpec

from ..errors import ConversionError, ConverterConfigError, expected
from ..keras_io import input_specs, load_keras_model, save_serving_savedmodel
from ..mixed_precision import DEFAULT_SHIFT_BUDGET, check_shift_budget
from ..pipeline import ExportedArtifact, Pass
from .data import batches, cast_like, load_rows, sample_inputs

MODES = ("fp32", "fp16", "dynamic", "int8")
PRECISION = {"fp32": "fp32", "fp16": "fp16", "dynamic": "dynamic", "int8": "int8"}
SIGNATURE = "serving_default"
logger = logging.getLogger(__name__)
# export variant -> (conversion mode, embedding table bits): quantized variants read row-wise tables
# through EMBEDDING_LOOKUP (one stored copy of a shared table); int8 also keeps its score head float
# and falls back to float nodes when it misses the default accuracy budget
# dynamic_int4 also writes 4-bit FULLY_CONNECTED weights (`tflite_dense`), int8 where accuracy needs it
VARIANT_MODES = {"fp32": ("fp32", None), "fp16": ("fp16", None), "dynamic": ("dynamic", None),
                 "int8": ("int8", 8), "dynamic_int4": ("dynamic", 4), "int8_int4": ("int8", 4)}
DENSE_INT4 = ("dynamic_int4",)


@dataclass(frozen=True)
class TFLiteConfig:
    """Args:
        mode: ``fp32``, ``fp16``, ``dynamic`` (int8 weights) or ``int8`` (full integer).
        data: ``.npz`` of rows named like the part's inputs; required for ``int8``.
        calibration_rows: representative rows used for ``int8``.
        custom_objects_module: module registering custom layers, imported before loading.
        allow_float_fallback: ``int8`` only — keep float kernels for ops without an int8 kernel
            (otherwise such an op fails the conversion and is named in the error).
        output_names: override the canonical output names of a single/list-output model.
        compact: drop intermediate tensor names, empty buffers and shape signatures
            (`compact_flatbuffer`); outputs must stay bit-identical or the pass fails.
        embedding_bits: ``8`` or ``4``: row-wise quantized tables read by EMBEDDING_LOOKUP for every
            lookup of a constant table (``None``: the converter's own treatment of GATHER tables).
        float_head: ``int8`` only — keep the final LOGISTIC and its producer float.
        float_nodes: ``int8`` only — more nodes (output tensor names of the calibrated model) kept float.
        accuracy_budget: ``int8`` only — largest |ΔAUC| vs the Keras model on the labelled rows of
            ``data``; over it, the most sensitive nodes are kept float until it fits.
        evaluation_rows: rows of ``data`` (evenly spread) the accuracy fallbacks measure ΔAUC on.
        dense_bits: ``dynamic`` only — ``4``: FULLY_CONNECTED weights in packed int4 and other float
            constants of >= 1,024 values packed int4 behind a load-time DEQUANTIZE (`tflite_dense`).
        dense_budget: with ``dense_bits`` and labelled ``data``: largest |ΔAUC| vs the dynamic-range
            file; over it the most sensitive weights stay int8.
        dense_shift_budget: with ``dense_budget``: largest mean |Δp| vs the same file when it scores
            probabilities (``None``: ΔAUC alone; `mixed_precision.ScoreBudget`).
    """

    mode: str = "fp32"
    data: str | None = None
    calibration_rows: int = 200
    custom_objects_module: str | None = None
    allow_float_fallback: bool = False
    output_names: tuple[str, ...] | None = None
    compact: bool = True
    embedding_bits: int | None = None
    float_head: bool = True
    float_nodes: tuple[str, ...] = ()
    accuracy_budget: float | None = None
    evaluation_rows: int = 4000
    dense_bits: int | None = None
    dense_budget: float | None = None
    dense_shift_budget: float | None = DEFAULT_SHIFT_BUDGET

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConverterConfigError(expected(f"a TFLite mode in {MODES}", self.mode))
        if self.mode == "int8" and not self.data:
            raise ConverterConfigError(expected("data=<rows .npz> for full-integer int8 calibration", self.data))
        if not isinstance(self.calibration_rows, int) or self.calibration_rows < 1:
            raise ConverterConfigError(expected("calibration_rows >= 1", self.calibration_rows))
        if self.embedding_bits not in (None, 4, 8):
            raise ConverterConfigError(expected("embedding_bits None, 8 or 4", self.embedding_bits))
        if self.accuracy_budget is not None and (self.mode != "int8" or isinstance(self.accuracy_budget, bool) or
                                                 not 0 <= float(self.accuracy_budget) < 1):
            raise ConverterConfigError(expected("accuracy_budget in [0, 1) with mode int8",
                                                (self.accuracy_budget, self.mode)))
        if self.dense_bits is not None and (self.dense_bits != 4 or self.mode != "dynamic"):
            raise ConverterConfigError(expected("dense_bits 4 with mode dynamic", (self.dense_bits, self.mode)))
        if self.dense_budget is not None and (isinstance(self.dense_budget, bool) or
                                              not 0 <= float(self.dense_budget) < 1):
            raise ConverterConfigError(expected("dense_budget in [0, 1)", self.dense_budget))
        check_shift_budget(self.dense_shift_budget)
        if not isinstance(self.float_nodes, tuple) or not all(isinstance(n, str) for n in self.float_nodes):
            raise ConverterConfigError(expected("float_nodes as a tuple of node names", self.float_nodes))


def variant_config(variant_mode: str, data: str | None, custom_objects_module: str | None = None,
                   budget: float | None = None) -> "TFLiteConfig":
    """The `TFLiteConfig` of one export variant (see ``VARIANT_MODES``).

    Args:
        variant_mode: a key of ``VARIANT_MODES``.
        data: calibration rows (full-integer variants).
        budget: the int8 variants' accuracy budget for float fallback (default: the export default).
    """
    if variant_mode not in VARIANT_MODES:
        raise ConverterConfigError(expected(f"a TFLite variant among {sorted(VARIANT_MODES)}", variant_mode))
    from ..specs import DEFAULT_BUDGET

    mode, bits = VARIANT_MODES[variant_mode]
    budget = DEFAULT_BUDGET if budget is None else budget
    dense = variant_mode in DENSE_INT4
    # the 4-bit weights get half the budget: the tables' error comes on top
    return TFLiteConfig(mode=mode, data=data if mode == "int8" or dense else None, embedding_bits=bits,
                        accuracy_budget=budget if mode == "int8" else None, custom_objects_module=custom_objects_module,
                        dense_bits=4 if dense else None, dense_budget=budget / 2 if dense and data else None)


class TFLitePass(Pass):
    name = "tflite"
    version = 11
    Config = TFLiteConfig
    path_fields = ("data",)
    accepts = ("keras", "savedmodel")

    def _run_impl(self, source: ExportedArtifact, config: TFLiteConfig, out_dir: Path) -> ExportedArtifact:
        from edgerec.converters.tfenv import import_tf

        tf, _ = import_tf()
        model = load_keras_model(source.path, config.custom_objects_module)
        specs = input_specs(model)
        rows = None
        if config.data:
            rows = cast_like(load_rows(config.data, list(specs), limit=config.calibration_rows),
                             {n: d for n, (d, _) in specs.items()})
        with tempfile.TemporaryDirectory(prefix="edgerec-sm-") as tmp:
            save_serving_savedmodel(model, Path(tmp) / "sm", source.part,
                                    list(config.output_names) if config.output_names else None)
            converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "sm"), [SIGNATURE])
            _configure(tf, converter, config, rows)
            try:
                flat = converter.convert()
            except Exception as err:  # noqa: BLE001 - converter raises many types; all become ConversionError
                raise conversion_error(config.mode, err) from None
        build = _Builder(flat, config, model, specs)
        mixed, skipped = None, build.fallback_skipped()
        if skipped is None:
            mixed = build.fallback(config.accuracy_budget)
            flat = mixed.artifact
        else:
            flat = build()
        out = out_dir / f"{source.part}.{config.mode}.tflite"
        converted_bytes = len(flat)
        if config.compact:
            flat = _compacted(flat, rows, specs)
        out.write_bytes(flat)
        inputs, outputs, sample = sanity_check(out, rows, specs)
        calibrated = len(next(iter(rows.values()))) if rows and config.mode == "int8" else 0
        details = {**self.carried_details(source), "mode": config.mode, "calibration_rows": calibrated,
                   "sanity_output_mean": sample, "size_bytes": out.stat().st_size,
                   "converted_size_bytes": converted_bytes,
                   "float_fallback": config.allow_float_fallback if config.mode == "int8" else None,
                   **build.details}
        if mixed is not None:
            details["mixed_precision"] = mixed.to_dict()
        elif config.accuracy_budget is not None:
            details["mixed_precision"] = {"skipped": skipped}
        precision = "int4" if config.embedding_bits == 4 else PRECISION[config.mode]
        return ExportedArtifact(path=str(out), format="tflite", precision=precision, part=source.part,
                                inputs=inputs, outputs=outputs, details=details)


class _Builder:
    """Turns the converter's output into the final flatbuffer for a set of float nodes: quantize
    (int8: the calibrated model, with the score head and ``float_nodes`` kept float), then
    rewrite embedding lookups. Facts land in ``details``."""

    def __init__(self, converted: bytes, config: TFLiteConfig, model, specs):
        self.converted, self.config, self.specs = converted, config, specs
        self.details: dict = {}
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
                flat, self.details["dense_int4"] = fit_int4_weights(flat, rows, labels, reference,
                                                                    self.config.dense_budget,
                                                                    self.config.dense_shift_budget)
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


def _compacted(flat: bytes, rows, specs) -> bytes:
    """`compact_flatbuffer` of ``flat``, refused unless it gives bit-identical outputs on sample rows."""
    from .tflite_compact import compact_flatbuffer

    small = compact_flatbuffer(flat)
    feed = {n: np.ascontiguousarray(a[:4]) for n, a in rows.items()} if rows else sample_inputs(specs, batch=4)
    before, after = _run_bytes(flat, feed, sorted(specs)), _run_bytes(small, feed, sorted(specs))
    for name, value in before.items():
        if not np.array_equal(value, after.get(name)):
            raise ConversionError(expected(f"identical output '{name}' after compacting the flatbuffer",
                                           "different values"), mode="compact")
    return small


def _run_bytes(flat: bytes, feed: dict, names: list[str]) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=flat).get_signature_runner(SIGNATURE)
    return runner(**{n: feed[n] for n in names})


def _configure(tf, converter, config: TFLiteConfig, rows) -> None:
    if config.mode == "fp32":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if config.mode == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif config.mode == "int8":
        def representative():
            for batch in batches(rows, 1):
                yield batch

        converter.representative_dataset = representative
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if config.allow_float_fallback:
            ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
        converter.target_spec.supported_ops = ops
        # calibrate here, quantize in _Builder (nodes can then stay float); float I/O, int32 ids untouched
        converter._experimental_calibrate_only = True


_OP = re.compile(r"'((?:tfl?|mhlo|stablehlo)\.[A-Za-z0-9_]+)'")
_LOC = re.compile(r'"([^"@\s]+)@')  # "model/<layer>/...@__inference_…" inside converter locations


def conversion_error(mode: str, err: Exception) -> ConversionError:
    """A `ConversionError` naming the ops (and, when the converter says, layers) that blocked ``mode``."""
    text = str(err)
    ops = list(dict.fromkeys(_OP.findall(text)))
    layers = []
    for loc in _LOC.findall(text):
        parts = [p for p in loc.split("/") if p]
        if len(parts) >= 2 and not parts[0].startswith(("StatefulPartitionedCall", "PartitionedCall")):
            layers.append(parts[1])  # "<model name>/<layer name>/…"
    layers = list(dict.fromkeys(layers))
    first = next((ln.strip() for ln in text.splitlines() if "error" in ln.lower()), text.strip()[:300])
    blocked = ops + [f"layer:{ln}" for ln in layers]
    what = ", ".join(blocked) if blocked else "unknown op (see converter message)"
    return ConversionError(expected(f"a TFLite {mode} conversion", f"blocked by {what}: {first[:400]}"),
                           mode=mode, blocked_by=blocked)


def _spec(detail: dict) -> TensorSpec:
    sig = detail.get("shape_signature", detail["shape"])
    shape = [None if int(d) < 0 else int(d) for d in sig]
    if shape:
        shape[0] = None
    return TensorSpec(detail["name"], np.dtype(detail["dtype"]).name, shape)


def signature_specs(interpreter) -> tuple[list[TensorSpec], list[TensorSpec]]:
    runner = interpreter.get_signature_runner(SIGNATURE)
    ins = runner.get_input_details()
    outs = runner.get_output_details()
    return ([_spec({**d, "name": n}) for n, d in sorted(ins.items())],
            [_spec({**d, "name": n}) for n, d in sorted(outs.items())])


def sanity_check(path: Path, rows, specs) -> tuple[list[TensorSpec], list[TensorSpec], float]:
    """Run the file once with ai_edge_litert through its signature; outputs must be finite."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    inputs, outputs = signature_specs(interpreter)
    expected_names = sorted(specs)
    if sorted(t.name for t in inputs) != expected_names:
        raise ConversionError(expected(f"signature inputs {expected_names}", [t.name for t in inputs]))
    feed = {n: a[:2] for n, a in rows.items()} if rows else sample_inputs(specs, batch=2)
    runner = interpreter.get_signature_runner(SIGNATURE)
    result = runner(**{n: np.ascontiguousarray(feed[n][:1]) for n in expected_names})
    for name, value in result.items():
        if not np.all(np.isfinite(value)):
            raise ConversionError(expected(f"finite values from {path.name} output '{name}'", "NaN/inf"),
                                  mode="sanity")
    return inputs, outputs, float(np.mean([np.mean(v) for v in result.values()]))
