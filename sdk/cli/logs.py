"""What the `edgerec` command prints: edgerec's own lines, and the libraries' logs only with --verbose.

TensorFlow's C++ logger (oneDNN notices, ``failed call to cuInit`` on a machine without a GPU),
absl, tf2onnx and ONNX Runtime all write to stderr; most of it is noise to a user and some of it
(the CUDA line) reads as a failure. Their levels must be set before those libraries are imported,
which is why this runs first, before any command module imports them.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings

# Loggers of libraries edgerec drives; quiet unless --verbose.
NOISY_LOGGERS = ("tensorflow", "absl", "tf2onnx", "onnx", "onnxruntime", "h5py", "matplotlib", "PIL")


def configure_logging(verbose: bool = False) -> None:
    """Send edgerec's logs to stderr as plain lines; silence the libraries unless ``verbose``."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        stream=sys.stderr, force=True)
    os.environ["EDGEREC_VERBOSE"] = "1" if verbose else "0"
    if verbose:
        return
    # 3 = errors from TensorFlow's C++ logger too (the cuInit "UNKNOWN ERROR (303)" is one).
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    from .native_logs import filter_native_stderr

    filter_native_stderr()
