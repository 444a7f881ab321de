"""edgerec.converters.passes: typed, cacheable model transformations (heavy imports happen inside run).

| pass | input → output | config |
|---|---|---|
| `PrunePass` ("prune") | tf_keras model → pruned tf_keras .keras | `PruneConfig` |
| `PrunedPartPass` ("pruned_part") | split part → part with the pruned fused weights | `PrunedPartConfig` |
| `TFLitePass` ("tflite") | Keras model → .tflite fp32/fp16/dynamic/int8 | `TFLiteConfig` |
| `OnnxExportPass` ("onnx_export") | Keras model → fp32 .onnx | `OnnxExportConfig` |
| `OrtOptimizePass` ("ort_optimize") | .onnx → ORT-optimised .onnx | `OrtOptimizeConfig` |
| `OrtQuantizePass` ("ort_quantize") | fp32 .onnx → dynamic / static QDQ / TensorRT-ready int8 | `OrtQuantizeConfig` |
| `TensorRTEnginePass` ("tensorrt_engine") | TensorRT-ready .onnx → serialized engine (.plan) | `EngineConfig` |

`check_tensorrt_ready(onnx_path)` lists every TensorRT violation of a graph; `is_tensorrt_ready(artifact)`
reads the verdict recorded on an artifact.
"""
from .onnx import OnnxExportConfig, OnnxExportPass, OrtOptimizeConfig, OrtOptimizePass
from .onnx_quant import OrtQuantizeConfig, OrtQuantizePass
from .prune import PruneConfig, PrunedPartConfig, PrunedPartPass, PrunePass
from .tensorrt import Violation, check_tensorrt_ready, dedicate_qdq_pairs, is_tensorrt_ready
from .tflite import TFLiteConfig, TFLitePass
from .trt_engine import EngineConfig, TensorRTEnginePass

__all__ = ["PrunePass", "PruneConfig", "PrunedPartPass", "PrunedPartConfig", "TFLitePass", "TFLiteConfig",
           "OnnxExportPass", "OnnxExportConfig", "OrtOptimizePass", "OrtOptimizeConfig", "OrtQuantizePass",
           "OrtQuantizeConfig", "TensorRTEnginePass", "EngineConfig", "Violation", "check_tensorrt_ready",
           "dedicate_qdq_pairs", "is_tensorrt_ready"]
