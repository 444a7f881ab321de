"""The shapes of log lines that native libraries write straight to file descriptor 2.

TensorFlow and absl (C++ logging, some start-up lines ignore ``TF_CPP_MIN_LOG_LEVEL``), the
TFLite converter (MLIR), LiteRT (delegate notices) and ONNX Runtime (its C++ logger, coloured)
print these below Python, where logging levels cannot reach. Two places drop or reroute them:
the `edgerec` command's stderr filter (`edgerec.sdk.cli.native_logs`) and the converters'
capture around conversion calls (`edgerec.converters.native_log`). One pattern serves both.

Examples:
    >>> bool(LIBRARY_LINE.match("INFO: Created TensorFlow Lite XNNPACK delegate for CPU."))
    True
    >>> bool(LIBRARY_LINE.match("edgerec: wrote bundle"))
    False
"""
from __future__ import annotations

import re

LIBRARY_LINE_PATTERNS = (
    r"[IWEF]\d{4} \d+:\d+:\d+\.\d+\s+\d+ \S+:\d+\]",                 # absl / TF C++ logging
    r"WARNING: All log messages before absl::InitializeLog\(\)",
    r"To enable the following instructions: ",                       # cpu_feature_guard's second line
    r"INFO: Created TensorFlow Lite",                                 # LiteRT delegates
    r"INFO: Initialized TensorFlow Lite",
    r"fully_quantize: \d",                                           # TFLite converter (MLIR)
    r"Quantization parameters for tensor:",                          # onnxruntime.quantization
    r"(?:\x1b\[[0-9;]*m)?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \[[WI]:onnxruntime:",   # ORT C++ logger
)
LIBRARY_LINE = re.compile("^(?:" + "|".join(LIBRARY_LINE_PATTERNS) + ")")
