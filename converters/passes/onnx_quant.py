"""onnxruntime int8 quantization: dynamic, static QDQ, and a TensorRT-ready QDQ variant.

* ``dynamic`` — int8 weights, activations quantized at run time (DynamicQuantizeLinear +
  MatMulInteger). Smallest and simplest; CPU only (TensorRT cannot build it).
* ``static_qdq`` — QuantizeLinear/DequantizeLinear pairs with calibrated activation ranges
  (``minmax``, ``percentile`` or ``entropy``) over the ``.npz`` rows, per-channel weights.
  Embedding tables (Gather) are quantized too — that is where the size goes.
* ``tensorrt`` — static QDQ that TensorRT accepts: int8 symmetric activations and weights (zero
  point 0), Gather/embeddings left in float, a dedicated Q/DQ pair per consumer, no bias
  quantization. Check the result with `check_tensorrt_ready`.

``quant_pre_process`` (shape inference + optimisation) runs first inside a temp dir with
``skip_symbolic_shape=True`` (symbolic inference fails on these graphs and litters the cwd).
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConversionError, ConverterConfigError, expected
from ..pipeline import ExportedArtifact, Pass
from .data import batches, load_rows
from .onnx import graph_specs

logger = logging.getLogger(__name__)

MODES = ("dynamic", "static_qdq", "tensorrt")
CALIBRATION = ("minmax", "percentile", "entropy")
TRT_OP_TYPES = ("MatMul", "Gemm", "Conv", "ConvTranspose")
_CWD_LOCK = threading.Lock()


@dataclass(frozen=True)
class OrtQuantizeConfig:
    """Args:
        mode: ``dynamic``, ``static_qdq`` or ``tensorrt``.
        data: ``.npz`` rows named like the graph inputs; required for the static modes.
        calibrate_method: ``minmax``, ``percentile`` or ``entropy`` (static modes).
        percentile: the percentile kept by ``percentile`` calibration.
        per_channel: per-channel weight scales.
        calibration_rows: rows read for calibration.
        calibration_batch: rows per calibration batch.
        symmetric_activations: ``static_qdq`` only; ``tensorrt`` always uses symmetric int8.
        nodes_to_exclude: node names left in float.
        preprocess: run ``quant_pre_process`` first.
        compact: short internal tensor names, no node names or value_info in the result
            (`compact_onnx_names`; ``nodes_to_exclude`` still names the input graph's nodes).
    """

    mode: str = "dynamic"
    data: str | None = None
    calibrate_method: str = "minmax"
    percentile: float = 99.999
    per_channel: bool = True
    calibration_rows: int = 256
    calibration_batch: int = 32
    symmetric_activations: bool = False
    nodes_to_exclude: tuple[str, ...] = ()
    preprocess: bool = True
    compact: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConverterConfigError(expected(f"an ORT quantization mode in {MODES}", self.mode))
        if self.calibrate_method not in CALIBRATION:
            raise ConverterConfigError(expected(f"a calibration method in {CALIBRATION}", self.calibrate_method))
        if self.mode != "dynamic" and not self.data:
            raise ConverterConfigError(expected(f"data=<rows .npz> for {self.mode} calibration", self.data))
        if not 50.0 < float(self.percentile) <= 100.0:
            raise ConverterConfigError(expected("a percentile in (50, 100]", self.percentile))
        if self.calibration_rows < 1 or self.calibration_batch < 1:
            raise ConverterConfigError(expected("calibration_rows and calibration_batch >= 1",
                                                (self.calibration_rows, self.calibration_batch)))


class OrtQuantizePass(Pass):
    name = "ort_quantize"
    version = 2
    Config = OrtQuantizeConfig
    path_fields = ("data",)
    accepts = ("onnx",)

    def _run_impl(self, source: ExportedArtifact, config: OrtQuantizeConfig, out_dir: Path) -> ExportedArtifact:
        import onnx

        out = out_dir / f"{source.part}.{config.mode}.onnx"
        with tempfile.TemporaryDirectory(prefix="edgerec-ortq-") as tmp:
            model_in = Path(source.path).resolve()
            if config.preprocess:
                model_in = preprocess(model_in, Path(tmp))
            try:
                if config.mode == "dynamic":
                    _dynamic(model_in, out, config)
                else:
                    _static(model_in, out, config, source)
            except ConverterConfigError:
                raise
            except Exception as err:  # noqa: BLE001 - ORT quantizer raises many types
                raise ConversionError(expected(f"an ORT {config.mode} quantization of {source.path}",
                                               f"{type(err).__name__}: {str(err)[:400]}"),
                                      mode=config.mode) from None
        proto = onnx.load(str(out))
        changed = False
        if config.mode == "tensorrt":
            from .tensorrt import dedicate_qdq_pairs

            changed = dedicate_qdq_pairs(proto)
        if config.compact:
            from .onnx_compact import compact_onnx_names

            changed = compact_onnx_names(proto) or changed
        if changed:                                  # one check and one write for both rewrites
            onnx.checker.check_model(proto)
            out.write_bytes(proto.SerializeToString())
        inputs, outputs = graph_specs(proto)
        ops = sorted({n.op_type for n in proto.graph.node})
        details = {k: v for k, v in source.details.items() if k in ("opset", "tf2onnx_opset", "ort_optimization")}
        details.update(self.carried_details(source))
        details.update({"quantization": config.mode, "per_channel": config.per_channel,
                        "calibrate_method": None if config.mode == "dynamic" else config.calibrate_method,
                        "op_types": ops, "size_bytes": out.stat().st_size})
        if config.mode == "tensorrt":
            from .tensorrt import check_tensorrt_ready

            details["tensorrt_violations"] = [v.to_dict() for v in check_tensorrt_ready(out)]
        return ExportedArtifact(path=str(out), format="onnx", precision="dynamic" if config.mode == "dynamic"
                                else "int8", part=source.part, inputs=inputs, outputs=outputs, details=details)


def preprocess(model_path: Path, tmp: Path) -> Path:
    """``quant_pre_process`` run inside ``tmp`` (it drops temp files into the cwd on failure)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = tmp / "preprocessed.onnx"
    with _CWD_LOCK:
        previous = os.getcwd()
        os.chdir(tmp)
        try:
            quant_pre_process(str(model_path), str(out), skip_symbolic_shape=True)
        except Exception as err:  # noqa: BLE001 - pre-processing is an optimisation; fall back to the raw graph
            logger.debug("quant_pre_process of %s failed (%s: %s); quantizing the graph as it is",
                         model_path.name, type(err).__name__, err)
            return model_path
        finally:
            os.chdir(previous)
    return out if out.is_file() else model_path


def _dynamic(model_in: Path, out: Path, config: OrtQuantizeConfig) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(model_in), str(out), per_channel=config.per_channel, weight_type=QuantType.QInt8,
                     nodes_to_exclude=list(config.nodes_to_exclude))


class NpzReader:
    """`CalibrationDataReader` over the ``.npz`` rows, batches cast to the graph's input dtypes."""

    def __init__(self, model_path: Path, data: str, rows: int, batch: int):
        import onnx
        from onnx import helper

        proto = onnx.load(str(model_path))
        inits = {i.name for i in proto.graph.initializer}
        dtypes = {v.name: helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
                  for v in proto.graph.input if v.name not in inits}
        loaded = load_rows(data, list(dtypes), limit=rows)
        self._batches = [{n: a.astype(dtypes[n]) for n, a in b.items()} for b in batches(loaded, batch)]
        self._iter = iter(self._batches)

    def get_next(self):
        return next(self._iter, None)

    def rewind(self):
        self._iter = iter(self._batches)


def _static(model_in: Path, out: Path, config: OrtQuantizeConfig, source: ExportedArtifact) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    reader_cls = type("EdgerecNpzReader", (NpzReader, CalibrationDataReader), {})
    reader = reader_cls(model_in, config.data, config.calibration_rows, config.calibration_batch)
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[config.calibrate_method]
    extra = {"CalibPercentile": float(config.percentile)}
    if config.mode == "tensorrt":
        extra.update({"ActivationSymmetric": True, "WeightSymmetric": True, "DedicatedQDQPair": True,
                      "QuantizeBias": False, "QDQKeepRemovableActivations": True})
        op_types = list(TRT_OP_TYPES)  # no Gather: embeddings stay float for TensorRT
        activation = QuantType.QInt8
    else:
        extra.update({"ActivationSymmetric": bool(config.symmetric_activations), "WeightSymmetric": True})
        op_types = None
        activation = QuantType.QInt8 if config.symmetric_activations else QuantType.QUInt8
    target = str(out.resolve())
    with tempfile.TemporaryDirectory(prefix="edgerec-calib-") as calib_tmp, _CWD_LOCK:
        previous = os.getcwd()
        os.chdir(calib_tmp)  # calibrators write augmented models next to the cwd
        try:
            quantize_static(str(model_in), target, reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=op_types, per_channel=config.per_channel,
                            activation_type=activation, weight_type=QuantType.QInt8,
                            nodes_to_exclude=list(config.nodes_to_exclude), calibrate_method=method,
                            extra_options=extra)
        finally:
            os.chdir(previous)
