"""JSON lines in, one result per line out: what `edgerec predict` does, as a library.

A line is a raw request ``{"history": [...], "item": ...}`` (scored with ``predict``), a request
with ``"candidates": [...]`` (scored with ``score_candidates``), or a tensor row
``{"inputs": {name: row}}`` for a bring-your-own-model bundle (run with ``predict_arrays``).
Lines of examples.jsonl work as they are: their ``expected`` is ignored.

Every input line gets exactly one result, in order, carrying its 1-based ``line`` number:
``{"line": 3, "score": 0.51, "oov": false}``; a line that cannot be scored (not UTF-8, not JSON,
too long or too deep, not a valid request) gets ``{"line": 3, "error": {"type": "RequestError",
"message": "Expected …, received: …"}}`` and does not stop the others; a blank line gets
``{"line": 3, "skipped": "blank line"}``. The input is read one line at a time.

Examples:
    >>> rows = parse_jsonl('{"history": ["1"], "item": "2"}\\n', "requests.jsonl")
    >>> with load("bundle/") as predictor:                                      # doctest: +SKIP
    ...     predict_lines(predictor, rows)
    [{'line': 1, 'score': 0.51, 'oov': False}]
"""
from __future__ import annotations

import json
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import numpy as np

from .errors import EdgeRecError, RequestError, expected
from .io import atomic_output, strict_json_loads

# What `predict_lines` drops from a request line before scoring it.
NON_REQUEST_KEYS = ("candidates", "item", "expected")
MAX_LINE_BYTES = 16 << 20     # a request line longer than this is refused (and skipped unread)
MAX_LINE_DEPTH = 16           # requests nest 2-3 deep; tensor rows a few more


def parse_jsonl(text: str, what: str, error=RequestError) -> list:
    """The JSON value of every non-blank line of ``text``; a bad line raises ``error`` naming it."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (ValueError, RecursionError) as err:   # JSONDecodeError, too-long ints, deep nesting
            raise error(expected(f"a JSON value on line {number} of {what}", str(err)[:200])) from None
    return rows


class Blank:
    """A blank input line (kept so output line N answers input line N)."""


BLANK = Blank()


def parse_line(data: bytes | str, number: int) -> Any:
    """One JSON-lines line -> its value, `BLANK`, or the `RequestError` saying why it is not one."""
    if not data.strip():
        return BLANK
    if len(data) > MAX_LINE_BYTES:
        return RequestError(expected(f"line {number} of at most {MAX_LINE_BYTES} bytes", f"{len(data)} bytes"))
    try:
        return strict_json_loads(data, f"line {number}", error=RequestError, max_depth=MAX_LINE_DEPTH)
    except RequestError as err:
        return err


def iter_lines(stream: BinaryIO) -> Iterator[tuple[int, Any]]:
    """``(line number, parse_line value)`` for every line of a binary stream, one line in memory
    at a time; a line over `MAX_LINE_BYTES` is skipped to its end without being kept."""
    number = 0
    while True:
        line = stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            size = len(line)
            while line and not line.endswith(b"\n"):
                line = stream.readline(MAX_LINE_BYTES)
                size += len(line)
            yield number, RequestError(expected(f"line {number} of at most {MAX_LINE_BYTES} bytes", f"{size} bytes"))
            continue
        yield number, parse_line(line, number)


def read_jsonl(path) -> list:
    """Parsed lines of a JSON-lines file (``"-"``: standard input); bad lines raise RequestError."""
    if str(path) == "-":
        return parse_jsonl(sys.stdin.read(), "standard input")
    if not Path(path).is_file():
        raise RequestError(expected("an existing JSON-lines input file", str(path)))
    try:
        text = Path(path).read_text("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(expected(f"UTF-8 text in {path}", str(err))) from None
    return parse_jsonl(text, str(path))


def stack_tensor_rows(specs, rows: list) -> dict:
    """Tensor rows ``{"inputs": {name: row}}`` -> batched arrays of the declared dtypes."""
    arrays = {}
    for spec in specs:
        try:
            arrays[spec.name] = np.asarray([r["inputs"][spec.name] for r in rows], dtype=spec.dtype)
        except (KeyError, TypeError, ValueError, OverflowError) as err:
            raise RequestError(expected(f"'inputs.{spec.name}' rows of {spec.dtype}", str(err)[:200])) from None
    return arrays


def error_result(err: EdgeRecError) -> dict:
    """The result of a line that could not be scored: the error's type and message."""
    return {"error": {"type": type(err).__name__, "message": str(err)}}


def predict_lines(predictor, rows: Iterable, batch_size: int = 256) -> list[dict]:
    """`predict_stream` over parsed rows (row i is line i + 1), as a list."""
    return list(predict_stream(predictor, enumerate(rows, 1), batch_size))


def predict_stream(predictor, lines: Iterable[tuple[int, Any]], batch_size: int = 256) -> Iterator[dict]:
    """One result dict per ``(line number, value)`` (see `iter_lines`), in order: ``{"score",
    "oov"}``, ``{"scores", "oov"}`` (candidates), ``{"outputs"}`` (tensor rows), ``{"error"}`` or
    ``{"skipped"}``, each with ``"line"`` (and ``request_id`` echoed); a bad line does not stop
    the others. Lines are read and answered ``batch_size`` at a time.

    Args:
        predictor: a loaded `Predictor`.
        lines: (line number, parsed value, `BLANK` or a RequestError) pairs.
        batch_size: raw requests per ``predict`` call.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RequestError(expected("batch_size as an int >= 1", batch_size))
    window: list = []
    for item in lines:
        window.append(item)
        if len(window) >= batch_size:
            yield from _answer(predictor, window)
            window = []
    if window:
        yield from _answer(predictor, window)


def _answer(predictor, window: list) -> list[dict]:
    """Results of a window of lines: its raw requests are scored in one ``predict`` call."""
    results: list = [None] * len(window)
    pending: list[int] = []
    for i, (_, row) in enumerate(window):
        if isinstance(row, Blank):
            results[i] = {"skipped": "blank line"}
        elif isinstance(row, EdgeRecError):
            results[i] = error_result(row)
        elif isinstance(row, dict) and isinstance(row.get("inputs"), dict):
            results[i] = _tensor_row(predictor, row)
        elif isinstance(row, dict) and "candidates" in row:
            results[i] = _candidates_row(predictor, row)
        else:
            pending.append(i)
    if pending:
        _score_requests(predictor, [window[i][1] for i in pending], pending, results)
    out = []
    for (number, row), result in zip(window, results):
        line = {"line": number, **result}
        if isinstance(row, dict) and "request_id" in row:
            line["request_id"] = row["request_id"]
        out.append(line)
    return out


def _score_requests(predictor, rows: list, where: list[int], results: list) -> None:
    try:
        scored = predictor.predict(rows, return_oov=True)
        for i, s, o in zip(where, scored.scores, scored.oov):
            results[i] = {"score": float(s), "oov": bool(o)}
        return
    except EdgeRecError:
        pass
    for i, row in zip(where, rows):      # find the culprit(s): score the batch row by row
        try:
            scored = predictor.predict([row], return_oov=True)
            results[i] = {"score": float(scored.scores[0]), "oov": bool(scored.oov[0])}
        except EdgeRecError as err:
            results[i] = error_result(err)


def _candidates_row(predictor, row: dict) -> dict:
    user = {k: v for k, v in row.items() if k not in NON_REQUEST_KEYS}
    try:
        scored = predictor.score_candidates(user, row["candidates"], return_oov=True)
    except EdgeRecError as err:
        return error_result(err)
    return {"scores": [float(s) for s in scored.scores], "oov": [bool(o) for o in scored.oov]}


def _tensor_row(predictor, row: dict) -> dict:
    """A bring-your-own-model row through the fused (or only) part."""
    try:
        parts = predictor.parts
        part = "fused" if "fused" in parts else parts[0]
        outputs = predictor.predict_arrays(stack_tensor_rows(predictor.input_specs(part), [row]), part=part)
        return {"outputs": {k: v[0].tolist() for k, v in outputs.items()}}
    except EdgeRecError as err:
        return error_result(err)



def predict_file(open_predictor: Callable[[], Any], source, destination, batch_size: int = 256) -> tuple[int, int]:
    """Score the JSON-lines file ``source`` (``"-"``: standard input) into ``destination``
    (``"-"``: standard output; a file is replaced atomically when every line is answered).
    Returns (lines, failed lines).

    What can fail before scoring is checked first, in this order, and raises an EdgeRecError
    with nothing written: ``batch_size``, the input is readable, the output is writable, then
    ``open_predictor()`` (e.g. ``lambda: load(bundle)``) loads the bundle.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RequestError(expected("--batch-size >= 1", batch_size))
    return answer_file(open_predictor, source, destination,
                       lambda predictor, lines: predict_stream(predictor, lines, batch_size))


def answer_file(open_predictor: Callable[[], Any], source, destination,
                answer: Callable[[Any, Iterator], Iterable[dict]]) -> tuple[int, int]:
    """One output line per input line: ``answer(predictor, iter_lines(input))`` yields a result dict
    per line (``"error"`` in it marks a failed line). The input must be readable, the output
    writable and the predictor loadable before anything is written. Returns (lines, failed lines)."""
    lines = failed = 0
    with ExitStack() as stack:
        if str(source) == "-":
            stream = sys.stdin.buffer
        else:
            try:
                stream = stack.enter_context(open(source, "rb"))
            except OSError as err:
                raise RequestError(expected("a readable JSON-lines input file", f"{source}: {err.strerror}")) from None
        out = sys.stdout if str(destination) == "-" else stack.enter_context(_output_file(Path(destination)))
        predictor = stack.enter_context(open_predictor())
        for result in answer(predictor, iter_lines(stream)):
            lines += 1
            failed += "error" in result
            out.write(json.dumps(result) + "\n")
        out.flush()
    return lines, failed


@contextmanager
def _output_file(path: Path) -> Iterator:
    """A text file that replaces ``path`` when the block succeeds; created on entry, so an
    unwritable destination is refused before anything is scored."""
    if path.is_dir():
        raise RequestError(expected("--output as a file path", f"{path} is a folder"))
    try:
        with atomic_output(path) as tmp:
            handle = open(tmp, "w", encoding="utf-8")
            with handle:
                yield handle
    except OSError as err:
        raise RequestError(expected("a writable --output path", f"{path}: {err.strerror or err}")) from None
