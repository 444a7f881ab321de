"""Native libraries' fd-2 lines go to the converters' log; anything else still reaches stderr."""
from __future__ import annotations

import logging
import os

import pytest

from edgerec.converters.native_log import native_output_logged

LOGGER = "edgerec.converters.test_native_log"


def test_library_lines_are_logged_and_other_lines_pass(capfd, caplog):
    logger = logging.getLogger(LOGGER)
    caplog.set_level(logging.INFO, logger=LOGGER)
    with native_output_logged(logger, "conversion"):
        os.write(2, b"I0000 00:00:1796161524.430433   25578 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32\n")
        os.write(2, b"a line edgerec does not know\n")
    err = capfd.readouterr().err
    assert "oneDNN" not in err and "absl" not in err and "fully_quantize" not in err
    assert "a line edgerec does not know" in err
    caplog.set_level(logging.DEBUG, logger=LOGGER)          # --verbose: nothing is captured
    with native_output_logged(logger, "conversion"):
        os.write(2, b"fully_quantize: 1\n")
    assert "fully_quantize: 1" in capfd.readouterr().err


def test_a_failed_block_logs_the_library_lines_as_warnings(caplog):
    logger = logging.getLogger(LOGGER)
    caplog.set_level(logging.INFO, logger=LOGGER)
    with pytest.raises(RuntimeError, match="boom"):
        with native_output_logged(logger, "conversion"):
            os.write(2, b"E0000 00:00:1796161524.4 1 convert.cc:12] the op that blocked it\n")
            raise RuntimeError("boom")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "the op that blocked it" in warnings[0] and "conversion" in warnings[0]
