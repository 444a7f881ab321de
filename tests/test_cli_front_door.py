"""The `edgerec` front door: --version, help with defaults and examples, quiet native logs."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from edgerec.sdk import cli

NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796161534.539686   25834 port.cc:153] oneDNN custom operations are on.",
    "E0000 00:00:1796161534.540018   25834 cuda_executor.cc:1309] failed call to cuInit: "
    "UNKNOWN ERROR (303)",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
    "\x1b[0;93m2026-12-01 21:30:00.123456 [W:onnxruntime:, graph.cc:123 Foo] an ORT warning\x1b[m",
]


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_version_names_the_installed_distribution(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"edgerec {cli.version()}"
    assert cli.version()[0].isdigit()


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_help_has_examples_and_defaults(name):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[name]
    text = sub.format_help()
    assert "Examples:" in text and f"edgerec {name}" in text.split("Examples:", 1)[1], text
    documented = [a for a in sub._actions if a.option_strings and a.help and a.dest != "help"]
    assert all(a.help for a in sub._actions if a.option_strings), "an option without help text"
    with_default = [a for a in documented if a.default not in (None, False, [], ()) and not a.required
                    and "%(default)" not in a.help]
    for action in with_default:
        assert "(default: " in sub.formatter_class("x")._get_help_string(action), action.dest


def test_native_library_lines_are_dropped_and_the_rest_passes():
    result = _run_python(f"""
        import os, sys
        from edgerec.sdk.cli.logs import configure_logging
        configure_logging(False)
        for line in {NOISE!r}:
            os.write(2, (line + "\\n").encode())
        print("edgerec: a real message", file=sys.stderr, flush=True)
        os.write(2, b"Traceback (most recent call last):\\n")
        os.write(2, b"a partial line without newline")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ("edgerec: a real message\nTraceback (most recent call last):\n"
                             "a partial line without newline"), repr(result.stderr)


def test_verbose_keeps_the_native_lines():
    result = _run_python(f"""
        import os
        from edgerec.sdk.cli.logs import configure_logging
        configure_logging(True)
        for line in {NOISE!r}:
            os.write(2, (line + "\\n").encode())
    """)
    assert result.stderr.splitlines() == NOISE


def test_a_crashing_process_still_gets_its_last_lines_out():
    result = _run_python("""
        import os
        from edgerec.sdk.cli.logs import configure_logging
        configure_logging(False)
        os.write(2, b"last words before the crash\\n")
        os._exit(3)
    """)
    assert result.returncode == 3
    assert "last words before the crash" in result.stderr


def test_stderr_captured_by_a_test_runner_is_left_alone(capsys):
    from edgerec.sdk.cli.native_logs import filter_native_stderr

    assert filter_native_stderr() is False     # sys.stderr is pytest's capture here, not fd 2


@pytest.mark.slow
def test_a_real_training_run_prints_no_native_library_lines(tmp_path):
    """`edgerec train` as a user runs it (a subprocess with its own stderr): TensorFlow loads, trains
    and saves, and stderr carries edgerec's own lines only, with no carriage-return redraws."""
    pytest.importorskip("tf_keras")
    args = ["train", "--model", "din", "--out", str(tmp_path / "din"), "--data-option", "num_users=120",
            "--data-option", "num_items=150", "--data-option", "num_events=3000", "--max-seq-len", "10",
            "--max-train-rows", "2000", "--epochs", "1", "--embedding-dim", "8", "--batch-size", "256"]
    result = subprocess.run([sys.executable, "-m", "edgerec.sdk.cli", *args], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    from edgerec.runtime.native_lines import LIBRARY_LINE

    native = [line for line in result.stderr.splitlines() if LIBRARY_LINE.match(line)]
    assert native == [] and "cuInit" not in result.stderr and "oneDNN" not in result.stderr
    assert "\r" not in result.stderr and "\r" not in result.stdout
    assert (tmp_path / "din" / "metrics.json").is_file()
