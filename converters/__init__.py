"""edgerec.converters: prune, quantize, export (TFLite, ONNX, TensorRT engines, Triton), validate, bundle."""
from .tfenv import prefer_legacy_keras

prefer_legacy_keras()
