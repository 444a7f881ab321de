"""`edgerec predict` on hostile input: one output line per input line (numbered), typed error
objects for bad lines, exit codes 0 / 1 / 2, unwritable output refused before scoring, the input
streamed. A hand-made ONNX bundle: no TensorFlow needed."""
from __future__ import annotations

import argparse
import io
import json
import sys

import pytest

import edgerec.runtime.predictor as predictor_module
from edgerec.runtime.errors import EdgeRecError, RequestError
from edgerec.runtime.requests_io import BLANK, iter_lines, parse_line
from edgerec.sdk.cli import predict

from .conftest import make_onnx_bundle

pytest.importorskip("onnxruntime")

GOOD = json.dumps({"history": ["100", "101"], "item": "102", "request_id": "r1"})


def _cli(*argv) -> int:
    """The predict command through its configure/run contract and the error mapping of edgerec.sdk.cli."""
    parser = argparse.ArgumentParser(prog="edgerec predict")
    predict.configure(parser)
    args = parser.parse_args(list(argv))
    try:
        return int(predict.run(args) or 0)
    except EdgeRecError as err:
        print(f"edgerec predict: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


@pytest.fixture
def bundle(tmp_path):
    return make_onnx_bundle(tmp_path / "bundle")


def _results(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_line_gets_one_numbered_result(bundle, tmp_path):
    lines = [GOOD.encode(), b"{not json", b"", b"   ", json.dumps({"history": [], "item": "unknown"}).encode(),
             b"[" * 100_000 + b"]" * 100_000, b'{"history": [], "item": ' + b"7" * 5000 + b"}",
             b"\xff\xfe not utf-8", json.dumps({"history": [], "item": "100", "context": {"timestmap": 1}}).encode(),
             json.dumps({"history": ["100"], "candidates": ["100", "zzz"]}).encode(), b'{"a": 1, "a": 2}', GOOD.encode()]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"
    assert _cli(str(bundle), "--input", str(source), "--output", str(out), "--batch-size", "3") == 1
    results = _results(out)
    assert [r["line"] for r in results] == list(range(1, len(lines) + 1))
    assert results[0]["request_id"] == "r1" and results[0]["oov"] is False and 0 < results[0]["score"] < 1
    assert results[11]["score"] == results[0]["score"]
    assert results[2] == {"line": 3, "skipped": "blank line"} and results[3]["skipped"] == "blank line"
    assert results[4]["oov"] is True
    assert results[9]["oov"] == [False, True] and len(results[9]["scores"]) == 2
    for index, words in ((1, "valid JSON"), (5, "nested at most"), (6, "valid JSON"), (7, "UTF-8"),
                         (8, "context keys"), (10, "duplicate keys")):
        error = results[index]["error"]
        assert error["type"] == "RequestError" and error["message"].startswith("Expected"), results[index]
        assert words in error["message"], error


def test_exit_code_zero_when_every_line_scores(bundle, tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text(GOOD + "\n\n" + GOOD + "\n")
    assert _cli(str(bundle), "--input", str(source)) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["line"] for r in printed] == [1, 2, 3]


def test_unwritable_output_fails_before_anything_is_scored(bundle, tmp_path, monkeypatch, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text(GOOD + "\n")
    loads = []
    real_load = predictor_module.load
    monkeypatch.setattr(predictor_module, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for target in (blocker / "out.jsonl", tmp_path):          # under a file; a folder
        assert _cli(str(bundle), "--input", str(source), "--output", str(target)) == 2
        assert "Expected" in capsys.readouterr().err
    assert loads == []                                        # the bundle was never even loaded
    assert _cli(str(bundle), "--input", str(tmp_path / "absent.jsonl")) == 2
    assert _cli(str(bundle), "--input", str(source), "--batch-size", "0") == 2


def test_a_failed_run_leaves_an_existing_output_untouched(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(GOOD + "\n")
    out = tmp_path / "out.jsonl"
    out.write_text("previous results\n")
    assert _cli(str(tmp_path / "no-bundle"), "--input", str(source), "--output", str(out)) == 2
    assert out.read_text() == "previous results\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []     # no temp file left


def test_help_documents_the_exit_codes(capsys):
    from edgerec.sdk.cli import main

    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "0 every line scored" in text and "1 some lines failed" in text and "2 usage or environment" in text


class _LinesOnly(io.RawIOBase):
    """A stream that hands out lines and fails if anyone reads it whole."""

    def __init__(self, lines):
        self._lines, self.reads = list(lines), 0

    def readline(self, size=-1):
        self.reads += 1
        return self._lines.pop(0) if self._lines else b""

    def read(self, size=-1):
        raise AssertionError("the input must be streamed line by line")


def test_input_is_streamed_and_long_lines_are_skipped_unkept(monkeypatch):
    import edgerec.runtime.requests_io as requests_io

    monkeypatch.setattr(requests_io, "MAX_LINE_BYTES", 64)
    stream = _LinesOnly([GOOD.encode() + b"\n", b"x" * 65, b"y" * 65, b"z\n", b"\n", GOOD.encode()])
    parsed = list(iter_lines(stream))
    assert [n for n, _ in parsed] == [1, 2, 3, 4]
    assert parsed[0][1]["request_id"] == "r1" and parsed[2][1] is BLANK and parsed[3][1]["item"] == "102"
    assert isinstance(parsed[1][1], RequestError) and "at most 64 bytes" in str(parsed[1][1])


def test_parse_line_never_raises():
    for data in (b"", b"\n", b"\xff", b"[" * 10_000, b"1" * 5000, b'"\\ud800"', b"NaN", b"{}", "é".encode()):
        value = parse_line(data, 1)
        assert value is BLANK or isinstance(value, RequestError) or value is not None or data == b"null"
