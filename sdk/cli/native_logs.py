"""Keep the native libraries' log lines out of the `edgerec` command's stderr (unless --verbose).

TensorFlow 2.21 logs through absl from C++ and ignores ``TF_CPP_MIN_LOG_LEVEL`` for some of its
start-up lines (``port.cc`` oneDNN notice, ``cudart_stub.cc``, ``failed call to cuInit`` — which
reads like a failure on a machine without a GPU); LiteRT prints ``INFO: Created TensorFlow Lite
XNNPACK delegate`` for every interpreter; ONNX Runtime colours its warnings with ANSI codes. None of
that goes through Python, so logging levels cannot stop it: only the file descriptor can.

`filter_native_stderr` points fd 2 at a pipe read by a small filter *process* (a thread would die
with a crashing interpreter and lose the last lines, a crash report included), which drops lines of
those shapes and passes everything else through unchanged. Child processes inherit the filtered
fd 2, so benchmark workers and distributed-training workers are quiet too.
"""
from __future__ import annotations

import atexit
import os
import subprocess
import sys

from edgerec.runtime.native_lines import LIBRARY_LINE

NOISE = LIBRARY_LINE

# The filter process: reads bytes, drops noise lines, forwards the rest at once (partial lines too,
# so a progress line without a newline still appears).
_FILTER = r"""
import os, re, sys
noise = re.compile(sys.argv[1].encode())
out = int(sys.argv[2])
pending = b""
while True:
    chunk = os.read(0, 65536)
    if not chunk:
        break
    pending += chunk
    *lines, pending = pending.split(b"\n")
    kept = [l for l in lines if not noise.match(l)]
    if kept:
        os.write(out, b"\n".join(kept) + b"\n")
if pending and not noise.match(pending):
    os.write(out, pending)
"""

FILTERED_ENV = "EDGEREC_STDERR_FILTERED"
_state: dict = {}


def filter_native_stderr() -> bool:
    """Route fd 2 through the noise filter for the rest of this process; idempotent.

    Does nothing (returns False) when stderr is not the process's own fd 2 stream — under a test
    runner that captures it, for example — so library users and tests keep their stderr.
    """
    if _state or os.environ.get(FILTERED_ENV) == "1":     # already filtered (here or by a parent)
        return bool(_state)
    stream = sys.stderr
    if stream is not sys.__stderr__ or stream is None:
        return False
    try:
        if stream.fileno() != 2:
            return False
    except (AttributeError, OSError, ValueError):
        return False
    stream.flush()
    original = os.dup(2)
    os.set_inheritable(original, True)
    proc = subprocess.Popen([sys.executable, "-c", _FILTER, NOISE.pattern, str(original)],
                            stdin=subprocess.PIPE, pass_fds=(original,), close_fds=True)
    os.dup2(proc.stdin.fileno(), 2)
    proc.stdin.close()
    _state.update(proc=proc, original=original)
    os.environ[FILTERED_ENV] = "1"
    atexit.register(restore_native_stderr)
    return True


def restore_native_stderr() -> None:
    """Point fd 2 back at the real stderr and let the filter drain what it still holds."""
    if not _state:
        return
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(_state["original"], 2)     # closes our end of the pipe: the filter reads EOF
    proc = _state["proc"]
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
    os.close(_state["original"])
    os.environ.pop(FILTERED_ENV, None)
    _state.clear()
