"""Native libraries' log lines routed into the converters' log instead of the user's terminal.

TensorFlow, the TFLite converter, LiteRT and ONNX Runtime's quantizer write from C++ straight to
file descriptor 2 (absl lines such as ``failed call to cuInit … UNKNOWN ERROR (303)`` on a machine
without a GPU, which reads as a failure; ``fully_quantize: 0, inference_type: 6 …``; ``Created
TensorFlow Lite XNNPACK delegate``), and the quantizer logs INFO lines on the root logger. No
environment variable silences all of them once absl is initialised, so `native_output_logged`
captures fd 2 around the calls that produce them: known library lines go to the logger at DEBUG
(shown with ``edgerec --verbose``), anything else is written back to stderr unchanged, and when
the block fails every captured line is logged as a WARNING. With DEBUG enabled nothing is captured.

Examples:
    >>> with native_output_logged(logger, "tflite conversion"):     # doctest: +SKIP
    ...     flat = converter.convert()
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile

from edgerec.runtime.native_lines import LIBRARY_LINE


@contextlib.contextmanager
def native_output_logged(logger: logging.Logger, what: str):
    """Capture what is written to fd 2 inside the block (see the module doc)."""
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):   # no real fd 2 (embedded interpreters)
        yield
        return
    failed = False
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            _replay(capture.read().decode("utf-8", "replace"), logger, what, failed)


def _replay(text: str, logger: logging.Logger, what: str, failed: bool) -> None:
    library, other = [], []
    for line in text.splitlines():
        if line.strip():
            (library if LIBRARY_LINE.match(line) else other).append(line)
    if library:
        logger.log(logging.WARNING if failed else logging.DEBUG, "%s (native log):\n%s", what, "\n".join(library))
    if other:
        sys.stderr.write("\n".join(other) + "\n")
        sys.stderr.flush()
