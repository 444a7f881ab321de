"""onnxruntime int8 quantization: dynamic, static QDQ, and a TensorRT-ready QDQ variant.

* ``dynamic`` — int8 weights, activations quantized at run time (DynamicQuantizeLinear +
  MatMulInteger). Smallest and simplest; CPU only (TensorRT cannot build it).
* ``static_qdq`` — QuantizeLinear/DequantizeLinear pairs with calibrated activation ranges
  (``minmax``, ``percentile`` or ``entropy``) over the ``.npz`` rows, per-channel weights.
  Embedding tables (Gather) are quantized too — that is where the size goes.
* ``tensorrt`` — static QDQ that TensorRT accepts: int8 symmetric activations and weights (zero
  point 0), Gather/embeddings left in float, a dedicated Q/DQ pair per consumer, no bias
  quantization. Check the result with `check_tensorrt_ready`.

Every mode keeps the score head float (``float_head``): the chain from each graph output back to
the last MatMul/Gemm (bias Add, Sigmoid, reshapes) is excluded, so scores are not rounded to the
1/256 grid of a quantized sigmoid. Row-wise embedding tables (`OnnxEmbeddingPass`, run before this
pass) are left as they are; an artifact with 4-bit tables has precision ``int4``.

Accuracy-aware mixed precision (``accuracy_budget``, `onnx_fallback.fit_budget`): when the
quantized graph's |ΔAUC| against the float input graph on the calibration rows (labels needed)
exceeds the budget, the most sensitive nodes are kept float one by one until the budget holds.
``details["mixed_precision"]`` records the float nodes, the ΔAUC after each step and the size cost.

``quant_pre_process`` (shape inference + optimisation) runs first inside a temp dir with
``skip_symbolic_shape=True`` (symbolic inference fails on these graphs and litters the cwd).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConversionError, ConverterConfigError, expected
from ..pipeline import ExportedArtifact, Pass
from .data import batches, load_rows
from .onnx import graph_specs
from .onnx_compact import subgraphs
from .onnx_fallback import SENSITIVE_OPS, fit_budget, graph_scores, scoring_rows  # noqa: F401 - public here too
from .onnx_quant_prep import CWD_LOCK, constant_nodes, named_nodes, preprocess, score_head_nodes

logger = logging.getLogger(__name__)

MODES = ("dynamic", "static_qdq", "tensorrt")
CALIBRATION = ("minmax", "percentile", "entropy")
TRT_OP_TYPES = ("MatMul", "Gemm", "Conv", "ConvTranspose")


@dataclass(frozen=True)
class OrtQuantizeConfig:
    """Args:
        mode: ``dynamic``, ``static_qdq`` or ``tensorrt``.
        data: ``.npz`` rows named like the graph inputs; required for the static modes.
        calibrate_method: ``minmax``, ``percentile`` or ``entropy`` (static modes).
        percentile: the percentile kept by ``percentile`` calibration.
        per_channel: per-channel weight scales.
        reduce_range: 7-bit weights for the CPU modes (``dynamic``, ``static_qdq``). x86 CPUs without
            VNNI (AVX2, AVX-512F) multiply u8 activations by s8 weights with an instruction that
            saturates 16-bit pair sums: on a 2-core AMD EPYC (AVX2) a small BERT-style content
            encoder's dynamic int8 file had cosine 0.913 to fp32 with 8-bit weights and 0.9999
            with 7-bit ones. ``tensorrt`` keeps 8-bit (TensorRT does not use those kernels), and so
            do tables only Gathers read (`gather_tables`).
        calibration_rows: rows read for calibration.
        calibration_batch: rows per calibration batch.
        symmetric_activations: ``static_qdq`` only; ``tensorrt`` always uses symmetric int8.
        nodes_to_exclude: node names left in float.
        preprocess: run ``quant_pre_process`` first.
        compact: short internal tensor names, no node names or value_info in the result
            (`compact_onnx_names`; ``nodes_to_exclude`` still names the input graph's nodes).
        float_head: keep the chain from each output back to the last MatMul/Gemm float (every mode:
            TensorRT runs a float MatMul, and int8 inputs to the logit's MatMul tie the scores).
        accuracy_budget: largest |ΔAUC| vs the float graph on the calibration rows before the
            sensitivity fallback keeps nodes float (None: no fallback; needs ``labels`` in ``data``).
        sensitivity_rows: calibration rows (evenly spread) each one-node trial is scored on (mean |Δp|).
        fit_rows: calibration rows (evenly spread) the ΔAUC against the budget is measured on (a
            paired ΔAUC on a few thousand ranking rows is noise at the 0.003 scale).
        max_fallback: most nodes the fallback keeps float.
        max_candidates: most nodes whose sensitivity is measured (graph order).
    """

    mode: str = "dynamic"
    data: str | None = None
    calibrate_method: str = "minmax"
    percentile: float = 99.999
    per_channel: bool = True
    reduce_range: bool = True
    calibration_rows: int = 256
    calibration_batch: int = 32
    symmetric_activations: bool = False
    nodes_to_exclude: tuple[str, ...] = ()
    preprocess: bool = True
    compact: bool = True
    float_head: bool = True
    accuracy_budget: float | None = None
    sensitivity_rows: int = 4096
    fit_rows: int = 32768
    max_fallback: int = 8
    max_candidates: int = 64

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConverterConfigError(expected(f"an ORT quantization mode in {MODES}", self.mode))
        if self.calibrate_method not in CALIBRATION:
            raise ConverterConfigError(expected(f"a calibration method in {CALIBRATION}", self.calibrate_method))
        if self.mode != "dynamic" and not self.data:
            raise ConverterConfigError(expected(f"data=<rows .npz> for {self.mode} calibration", self.data))
        if not 50.0 < float(self.percentile) <= 100.0:
            raise ConverterConfigError(expected("a percentile in (50, 100]", self.percentile))
        if self.accuracy_budget is not None and (not self.data or not 0 <= float(self.accuracy_budget) < 1):
            raise ConverterConfigError(expected("accuracy_budget in [0, 1) with data=<rows .npz with labels>",
                                                (self.accuracy_budget, self.data)))
        if self.calibration_rows < 1 or self.calibration_batch < 1:
            raise ConverterConfigError(expected("calibration_rows and calibration_batch >= 1",
                                                (self.calibration_rows, self.calibration_batch)))


class OrtQuantizePass(Pass):
    name = "ort_quantize"
    version = 9
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
            model_in = named_nodes(model_in, Path(tmp))
            proto_in = onnx.load(str(model_in))
            head = score_head_nodes(proto_in) if config.float_head else []
            config = dataclasses.replace(config, nodes_to_exclude=tuple(dict.fromkeys(
                tuple(config.nodes_to_exclude) + tuple(head) + tuple(constant_nodes(proto_in)))))
            try:
                _quantize(model_in, out, config, source)
                mixed = fit_budget(model_in, out, config, source, _quantize) \
                    if config.accuracy_budget is not None else None
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
        if any(True for node in proto.graph.node for _ in subgraphs(node)):
            crash = load_crash(out)
            if crash:
                raise ConversionError(expected(f"an ORT {config.mode} quantization of {source.path} that onnxruntime "
                                               "loads", crash), mode=config.mode)
        inputs, outputs = graph_specs(proto)
        ops = sorted({n.op_type for n in proto.graph.node})
        details = {k: v for k, v in source.details.items()
                   if k in ("opset", "tf2onnx_opset", "ort_optimization", "embedding_bits", "embedding_tables",
                            "embedding_kernel")}
        details.update(self.carried_details(source))
        details.update({"quantization": config.mode, "per_channel": config.per_channel,
                        "calibrate_method": None if config.mode == "dynamic" else config.calibrate_method,
                        "op_types": ops, "float_head": head, "size_bytes": out.stat().st_size})
        if mixed is not None:
            details["mixed_precision"] = mixed
        if config.mode == "tensorrt":
            from .tensorrt import check_tensorrt_ready

            details["tensorrt_violations"] = [v.to_dict() for v in check_tensorrt_ready(out)]
        precision = "int4" if source.details.get("embedding_bits") == 4 else \
            "dynamic" if config.mode == "dynamic" else "int8"
        return ExportedArtifact(path=str(out), format="onnx", precision=precision, part=source.part, inputs=inputs,
                                outputs=outputs, details=details)


def load_crash(path: Path, timeout_s: float = 300.0) -> str | None:
    """How a child interpreter died opening ``path`` in an onnxruntime CPU session, or None when
    it opened it. Quantized graphs with If/Loop bodies get this check: onnxruntime 1.32 aborts the
    whole process (a C++ assertion, not an exception) on a dynamically quantized DIN whose
    attention holds an If, which in the export's own process would end it without a word."""
    code = ("import sys, onnxruntime as o; o.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])")
    try:
        done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"no session within {timeout_s:.0f} s"
    if done.returncode == 0:
        return None
    tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:] or [""]
    return f"exit {done.returncode}: {tail[0][:300]}"


def _quantize(model_in: Path, out: Path, config: OrtQuantizeConfig, source: ExportedArtifact) -> None:
    if config.mode == "dynamic":
        _dynamic(model_in, out, config)
    else:
        _static(model_in, out, config, source)


def _dynamic(model_in: Path, out: Path, config: OrtQuantizeConfig) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # contrib ops (GatherBlockQuantized, MatMulNBits) have no ONNX shape inference: their outputs are float
    # the dynamic quantizer first splits every Gemm into "<name>_MatMul" + "<name>_Add": an excluded Gemm
    # (a fused score head) must stay excluded under its new names
    excluded = [n for name in config.nodes_to_exclude for n in (name, f"{name}_MatMul", f"{name}_Add")]
    quantize_dynamic(str(model_in), str(out), per_channel=config.per_channel, weight_type=QuantType.QInt8,
                     reduce_range=config.reduce_range, nodes_to_exclude=excluded,
                     extra_options={"DefaultTensorType": _float_type()})


def gather_tables(graph) -> list[str]:
    """Constant float tables of ``graph`` (an ONNX GraphProto) only top-level ``Gather`` nodes read
    (as their data). ``reduce_range`` exists for the u8 x s8 multiply kernels; a looked-up row is
    only dequantized, so such a table keeps all 8 bits, as the dynamic quantizer stores it, and the
    two int8 variants hold the same table bytes (one stored copy per bundle, `shared_tables`). A
    table a MatMul also reads (tied output weights) keeps the default."""
    import onnx

    tables = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2}
    gathered = {n.input[0] for n in graph.node if n.op_type == "Gather" and n.input and n.input[0] in tables}
    other = {x for n in graph.node for i, x in enumerate(n.input) if n.op_type != "Gather" or i > 0}
    other |= {x for n in graph.node for g in subgraphs(n) for m in g.node for x in m.input}
    return sorted(gathered - other)


def _float_type() -> int:
    from onnx import TensorProto

    return TensorProto.FLOAT


class NpzReader:
    """`CalibrationDataReader` over the ``.npz`` rows, batches cast to the input dtypes of ``graph``."""

    def __init__(self, graph, data: str, rows: int, batch: int):
        from onnx import helper

        inits = {i.name for i in graph.initializer}
        dtypes = {v.name: helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
                  for v in graph.input if v.name not in inits}
        loaded = load_rows(data, list(dtypes), limit=rows)
        self._batches = [{n: a.astype(dtypes[n]) for n, a in b.items()} for b in batches(loaded, batch)]
        self._iter = iter(self._batches)

    def get_next(self):
        return next(self._iter, None)

    def rewind(self):
        self._iter = iter(self._batches)


def _static(model_in: Path, out: Path, config: OrtQuantizeConfig, source: ExportedArtifact) -> None:
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    graph = onnx.load(str(model_in), load_external_data=False).graph     # names and types only
    reader_cls = type("EdgerecNpzReader", (NpzReader, CalibrationDataReader), {})
    reader = reader_cls(graph, config.data, config.calibration_rows, config.calibration_batch)
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
        if config.reduce_range:
            extra["TensorQuantOverrides"] = {name: [{"reduce_range": False}] for name in gather_tables(graph)}
    target = str(out.resolve())
    with tempfile.TemporaryDirectory(prefix="edgerec-calib-") as calib_tmp, CWD_LOCK:
        previous = os.getcwd()
        os.chdir(calib_tmp)  # calibrators write augmented models next to the cwd
        try:
            quantize_static(str(model_in), target, reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=op_types, per_channel=config.per_channel,
                            reduce_range=config.reduce_range and config.mode != "tensorrt",
                            activation_type=activation, weight_type=QuantType.QInt8,
                            nodes_to_exclude=list(config.nodes_to_exclude), calibrate_method=method,
                            extra_options=extra)
        finally:
            os.chdir(previous)
