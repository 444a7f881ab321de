"""JSON lines in, one result per line out: what `edgerec predict` does, as a library.

A line is a raw request ``{"history": [...], "item": ...}`` (scored with ``predict``), a request
with ``"candidates": [...]`` (scored with ``score_candidates``), or a tensor row
``{"inputs": {name: row}}`` for a bring-your-own-model bundle (run with ``predict_arrays``).
Lines of examples.jsonl work as they are: their ``expected`` is ignored.

Examples:
    >>> rows = parse_jsonl('{"history": ["1"], "item": "2"}\\n', "requests.jsonl")
    >>> with load("bundle/") as predictor:                                      # doctest: +SKIP
    ...     predict_lines(predictor, rows)
    [{'score': 0.51}]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from .errors import EdgeRecError, RequestError, expected

# What `predict_lines` drops from a request line before scoring it.
NON_REQUEST_KEYS = ("candidates", "item", "expected")


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


def read_jsonl(path) -> list:
    """Parsed lines of a JSON-lines file (``"-"``: standard input)."""
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


def _error(err: EdgeRecError) -> dict:
    return {"error": f"{type(err).__name__}: {err}"}


def predict_lines(predictor, rows: list, batch_size: int = 256) -> list[dict]:
    """One result dict per row: ``{"score"}``, ``{"scores"}`` (candidates), ``{"outputs"}``
    (tensor rows) or ``{"error"}``; a bad row does not stop the others. ``request_id`` is echoed.

    Args:
        predictor: a loaded `Predictor`.
        rows: parsed JSON lines (see `read_jsonl`).
        batch_size: raw requests per ``predict`` call.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RequestError(expected("batch_size as an int >= 1", batch_size))
    results: list = [None] * len(rows)
    pending: list[int] = []

    def flush():
        if not pending:
            return
        try:
            scores = predictor.predict([rows[i] for i in pending])
            for i, s in zip(pending, scores):
                results[i] = {"score": float(s)}
        except EdgeRecError:
            for i in pending:          # find the culprit(s): score the batch row by row
                try:
                    results[i] = {"score": float(predictor.predict([rows[i]])[0])}
                except EdgeRecError as err:
                    results[i] = _error(err)
        pending.clear()

    for i, row in enumerate(rows):
        if isinstance(row, dict) and isinstance(row.get("inputs"), dict):
            results[i] = _tensor_row(predictor, row)
            continue
        if isinstance(row, dict) and "candidates" in row:
            user = {k: v for k, v in row.items() if k not in NON_REQUEST_KEYS}
            try:
                results[i] = {"scores": [float(s) for s in predictor.score_candidates(user, row["candidates"])]}
            except EdgeRecError as err:
                results[i] = _error(err)
            continue
        pending.append(i)
        if len(pending) >= batch_size:
            flush()
    flush()
    for row, result in zip(rows, results):
        if isinstance(row, dict) and "request_id" in row:
            result["request_id"] = row["request_id"]
    return results


def _tensor_row(predictor, row: dict) -> dict:
    """A bring-your-own-model row through the fused (or only) part."""
    try:
        parts = predictor.parts
        part = "fused" if "fused" in parts else parts[0]
        outputs = predictor.predict_arrays(stack_tensor_rows(predictor.input_specs(part), [row]), part=part)
        return {"outputs": {k: v[0].tolist() for k, v in outputs.items()}}
    except EdgeRecError as err:
        return _error(err)
