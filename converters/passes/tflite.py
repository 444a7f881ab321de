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

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConverterConfigError, expected
from ..keras_io import input_specs, load_keras_model, save_serving_savedmodel
from ..mixed_precision import DEFAULT_SHIFT_BUDGET, check_shift_budget
from ..pipeline import ExportedArtifact, Pass
from .data import batches, cast_like, load_rows
from .tflite_build import FlatbufferBuilder
from .tflite_checks import SIGNATURE, compacted, conversion_error, sanity_check

MODES = ("fp32", "fp16", "dynamic", "int8")
PRECISION = {"fp32": "fp32", "fp16": "fp16", "dynamic": "dynamic", "int8": "int8"}
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
        evaluation_rows: rows of ``data`` (evenly spread) the accuracy fallbacks measure ΔAUC on (as
            the ONNX passes' ``fit_rows``: a ΔAUC on a few thousand ranking rows is noise).
        sensitivity_rows: of those, the evenly spread rows each 4-bit weight's sensitivity (mean |Δp|
            with that weight alone rewritten) is scored on.
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
    evaluation_rows: int = 32768
    sensitivity_rows: int = 4096
    dense_bits: int | None = None
    dense_budget: float | None = None
    dense_shift_budget: float | None = DEFAULT_SHIFT_BUDGET

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConverterConfigError(expected(f"a TFLite mode in {MODES}", self.mode))
        if self.mode == "int8" and not self.data:
            raise ConverterConfigError(expected("data=<rows .npz> for full-integer int8 calibration", self.data))
        for name in ("calibration_rows", "evaluation_rows", "sensitivity_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConverterConfigError(expected(f"{name} >= 1", value))
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
    version = 12
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
        build = FlatbufferBuilder(flat, config, model, specs)
        mixed, skipped = None, build.fallback_skipped()
        if skipped is None:
            mixed = build.fallback(config.accuracy_budget)
            flat = mixed.artifact
        else:
            flat = build()
        out = out_dir / f"{source.part}.{config.mode}.tflite"
        converted_bytes = len(flat)
        if config.compact:
            flat = compacted(flat, rows, specs)
        out.write_bytes(flat)
        inputs, outputs, sample = sanity_check(out, rows, specs)
        calibrated = len(next(iter(rows.values()))) if rows and config.mode == "int8" else 0
        details = {**self.carried_details(source), "mode": config.mode, "calibration_rows": calibrated,
                   "sanity_output_mean": sample, "size_bytes": out.stat().st_size,
                   "converted_size_bytes": converted_bytes,
                   "float_fallback": config.allow_float_fallback if config.mode == "int8" else None,
                   **build.details}
        if mixed is not None:
            details["mixed_precision"] = {**mixed.to_dict(), "rows": build.fallback_rows}
        elif config.accuracy_budget is not None:
            details["mixed_precision"] = {"skipped": skipped}
        precision = "int4" if config.embedding_bits == 4 else PRECISION[config.mode]
        return ExportedArtifact(path=str(out), format="tflite", precision=precision, part=source.part,
                                inputs=inputs, outputs=outputs, details=details)


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
        # calibrate here, quantize in FlatbufferBuilder (nodes can then stay float); float I/O, int32 ids untouched
        converter._experimental_calibrate_only = True
