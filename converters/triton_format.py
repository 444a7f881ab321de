"""The Triton model-repository format shared by the writer (`triton`) and the checker (`triton_check`).

Names and limits of a repository (parts, model file, data types, instance kinds, TensorRT
precision modes), how a manifest shape becomes Triton ``dims``, the `Problem` a checker reports,
and the protobuf text format (``config.pbtxt``): `format_pbtxt` writes the subset edgerec uses,
`parse_pbtxt` reads it back plus Triton's usual forms. No tritonclient dependency.

Examples:
    >>> print(format_pbtxt({"name": "fused", "max_batch_size": 8}), end="")
    name: "fused"
    max_batch_size: 8
    >>> parse_pbtxt('name: "fused" max_batch_size: 8')
    {'name': ['fused'], 'max_batch_size': [8]}
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from edgerec.runtime.errors import EdgeRecError, expected

TRITON_PARTS = ("user_encoder", "scorer", "fused")
ENSEMBLE_NAME = "ensemble"
MODEL_FILE = "model.onnx"
TRITON_DTYPES = {"bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8", "int16": "TYPE_INT16",
                 "int32": "TYPE_INT32", "int64": "TYPE_INT64", "float16": "TYPE_FP16",
                 "float32": "TYPE_FP32", "float64": "TYPE_FP64"}
KINDS = ("KIND_CPU", "KIND_GPU")
PRECISION_MODES = ("FP32", "FP16", "INT8")


class Ident(str):
    """A bare protobuf-text identifier (enum value such as ``TYPE_FP32``), emitted unquoted."""


@dataclass(frozen=True)
class Problem:
    """One inconsistency between a repository and its bundle."""

    model: str
    field: str
    message: str

    def __str__(self):
        return f"{self.model}: {self.field}: {self.message}"


class TritonRepositoryError(EdgeRecError, ValueError):
    """A Triton repository cannot be written from this bundle (no ONNX artifact, fixed batch dim, …)."""


def tensor_dims(shape: list, max_batch_size: int) -> tuple[list[int], list[int] | None]:
    """Manifest shape -> (Triton dims, reshape or None). ``None`` dims become -1."""
    dims = [-1 if d is None or d < 0 else int(d) for d in shape]
    if max_batch_size == 0:
        return dims, None
    if not dims or dims[0] != -1:
        raise TritonRepositoryError(expected("a dynamic batch dimension (None) first when max_batch_size > 0",
                                             f"shape {shape}"))
    rest = dims[1:]
    return (rest, None) if rest else ([1], [])


# -- protobuf text format ------------------------------------------------------------------------
def format_pbtxt(msg: dict, indent: int = 0) -> str:
    """Message dict -> protobuf text. Lists of dicts become repeated blocks; lists of scalars ``[a, b]``."""
    pad, lines = "  " * indent, []
    for key, value in msg.items():
        items = value if isinstance(value, list) and value and all(isinstance(v, dict) for v in value) else [value]
        for item in items:
            if isinstance(item, dict):
                lines.append(f"{pad}{key} {{")
                lines.append(format_pbtxt(item, indent + 1))
                lines.append(f"{pad}}}")
            elif isinstance(item, list):
                lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in item)}{' ' if item else ''}]")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    return "\n".join(line for line in lines if line) + ("\n" if indent == 0 else "")


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Ident):
        return str(value)
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|[{}\[\]:,;]|[^\s{}\[\]:,;"#]+')


def parse_pbtxt(text: str) -> dict:
    """Protobuf text -> ``{field: [values]}`` (every field a list; messages are nested dicts).

    Raises:
        ValueError: with the offending token and its position.
    """
    tokens, end = [], 0
    for m in _TOKEN.finditer(text):
        if m.start() != end:
            raise ValueError(expected("protobuf text", f"{text[end:m.start()]!r} at offset {end}"))
        end = m.end()
        if not m.group()[0].isspace() and not m.group().startswith("#"):
            tokens.append((m.group(), m.start()))
    if end != len(text):
        raise ValueError(expected("protobuf text", f"{text[end:end + 20]!r} at offset {end}"))
    return _parse_fields(tokens, 0, closing=None)[0]


def _parse_fields(tokens, pos, closing):
    msg: dict = {}
    while pos < len(tokens):
        tok, at = tokens[pos]
        if tok == closing:
            return msg, pos + 1
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", tok):
            raise ValueError(expected("a field name", f"{tok!r} at offset {at}"))
        pos += 1
        colon = pos < len(tokens) and tokens[pos][0] == ":"
        pos += colon
        if pos >= len(tokens):
            raise ValueError(expected(f"a value for field {tok!r}", "end of text"))
        if not colon and tokens[pos][0] not in "{[":   # only message fields may omit the colon
            raise ValueError(expected(f"':' after scalar field {tok!r}", f"{tokens[pos][0]!r} at offset {tokens[pos][1]}"))
        values, pos = _parse_value(tokens, pos)
        msg.setdefault(tok, []).extend(values)
        if pos < len(tokens) and tokens[pos][0] in ",;":
            pos += 1
    if closing is not None:
        raise ValueError(expected(f"a closing {closing!r}", "end of text"))
    return msg, pos


def _parse_value(tokens, pos):
    tok, at = tokens[pos]
    if tok == "{":
        sub, pos = _parse_fields(tokens, pos + 1, "}")
        return [sub], pos
    if tok == "[":
        values, pos = [], pos + 1
        while pos < len(tokens) and tokens[pos][0] != "]":
            if tokens[pos][0] == ",":
                pos += 1
                continue
            got, pos = _parse_value(tokens, pos)
            values.extend(got)
        if pos >= len(tokens):
            raise ValueError(expected("a closing ']'", "end of text"))
        return values, pos + 1
    if tok in "}]:,;":
        raise ValueError(expected("a value", f"{tok!r} at offset {at}"))
    return [_atom(tok)], pos + 1


def _atom(tok: str):
    if tok.startswith('"'):
        return re.sub(r"\\(.)", r"\1", tok[1:-1])
    if tok in ("true", "false"):
        return tok == "true"
    for cast in (int, float):
        try:
            return cast(tok)
        except ValueError:
            pass
    return Ident(tok)
