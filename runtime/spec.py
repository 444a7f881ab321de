"""FeatureSpec: the typed, JSON-serialisable contract between training and serving.

The same spec drives the sdk's training arrays and the runtime's request preprocessing
(`edgerec.runtime.preprocess`), so a raw request is encoded identically on both sides.

Index convention of every vocabulary: 0 = padding / missing, 1 = out-of-vocabulary,
2.. = known tokens in the order they were listed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .contract import CAND_CONTENT, CAND_ITEM, DENSE, HIST_ITEMS, SCORE  # noqa: F401  (re-exported)
from .errors import SpecError, expected
from .io import atomic_write_json

SCHEMA_VERSION = 1
PAD_INDEX = 0
OOV_INDEX = 1
NUM_RESERVED = 2


CONTEXT_KINDS = ("hour", "weekday", "categorical")


@dataclass(frozen=True)
class Vocabulary:
    """Maps raw ids (any str/int) to int32 indices with a padding and an OOV bucket.

    Args:
        name: what the ids are (``"item"``, ``"device"``).
        tokens: raw ids as strings; ``tokens[i]`` gets index ``i + 2``.

    Examples:
        >>> v = Vocabulary("item", ("10", "20"))
        >>> v.lookup_many(["20", "99", None]).tolist()
        [3, 1, 0]
    """

    name: str
    tokens: tuple[str, ...]
    _index: dict = field(default=None, init=False, repr=False, compare=False, hash=False)
    _hits: dict = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(expected("a non-empty vocabulary name", self.name))
        tokens = tuple(str(t) for t in self.tokens)
        if len(set(tokens)) != len(tokens):
            raise SpecError(expected(f"unique tokens in vocabulary '{self.name}'", "duplicates"))
        object.__setattr__(self, "tokens", tokens)
        index = {t: i + NUM_RESERVED for i, t in enumerate(tokens)}
        object.__setattr__(self, "_index", index)
        # What `lookup` returns for a known token, as one dict probe ("" and unknown ids miss:
        # `lookup` maps "" to padding even where it is listed as a token).
        hits = dict(index)
        hits.pop("", None)
        object.__setattr__(self, "_hits", hits)

    @property
    def size(self) -> int:
        """Number of indices, reserved ones included (the embedding table's row count)."""
        return len(self.tokens) + NUM_RESERVED

    def lookup(self, raw: Any) -> int:
        if raw is None or raw == "":
            return PAD_INDEX
        return self._index.get(str(raw), OOV_INDEX)

    def lookup_many(self, raws: Iterable[Any]) -> np.ndarray:
        if type(raws) is not list and type(raws) is not tuple:
            raws = list(raws)
        try:
            codes = self.hits(raws)
        except TypeError:             # an unhashable raw id: str() of it is looked up below
            codes = [None] * len(raws)
        if None in codes:
            lookup = self.lookup
            codes = [lookup(r) if c is None else c for r, c in zip(raws, codes)]
        return np.array(codes, dtype=np.int32).reshape(-1)

    def hits(self, raws: Sequence[Any]) -> list:
        """The first, cheap pass of `lookup_many`: ``lookup(r)`` where ``r`` is a known token (a
        str), None for anything else (other types, "", unknown ids: call `lookup`).
        Raises TypeError for an unhashable raw id."""
        get = self._hits.get
        return [get(r) for r in raws]

    def token(self, index: int) -> str | None:
        """The raw id of an index, or None for padding/OOV."""
        return self.tokens[index - NUM_RESERVED] if index >= NUM_RESERVED else None

    def to_dict(self) -> dict:
        return {"name": self.name, "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, data: dict) -> "Vocabulary":
        _require_keys(data, ("name", "tokens"), "vocabulary")
        return cls(data["name"], tuple(data["tokens"]))


@dataclass(frozen=True)
class ContextField:
    """One categorical context input (model input name = ``name``, int32 of shape [batch]).

    kind ``hour``/``weekday``: taken from the request's ``context[name]`` if given, else derived
    from ``context["timestamp"]`` (unix seconds, UTC); index = value + 1, 0 = missing.
    kind ``categorical``: looked up in ``vocab`` (0 = missing, 1 = OOV).
    """

    name: str
    kind: str
    vocab: Vocabulary | None = None

    def __post_init__(self):
        if self.kind not in CONTEXT_KINDS:
            raise SpecError(expected(f"context kind in {CONTEXT_KINDS}", self.kind))
        if self.kind == "categorical" and self.vocab is None:
            raise SpecError(expected(f"a vocabulary for categorical context '{self.name}'", None))

    @property
    def size(self) -> int:
        return {"hour": 25, "weekday": 8}.get(self.kind) or self.vocab.size

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind,
                "vocab": self.vocab.to_dict() if self.vocab else None}

    @classmethod
    def from_dict(cls, data: dict) -> "ContextField":
        _require_keys(data, ("name", "kind"), "context field")
        vocab = Vocabulary.from_dict(data["vocab"]) if data.get("vocab") else None
        return cls(data["name"], data["kind"], vocab)


@dataclass(frozen=True)
class DenseField:
    """One float feature; the model sees ``(value - mean) / std``; missing -> ``default``."""

    name: str
    mean: float = 0.0
    std: float = 1.0
    default: float = 0.0

    def __post_init__(self):
        if not np.isfinite(self.std) or self.std <= 0:
            raise SpecError(expected(f"a positive finite std for dense field '{self.name}'", self.std))

    def to_dict(self) -> dict:
        return {"name": self.name, "mean": self.mean, "std": self.std, "default": self.default}

    @classmethod
    def from_dict(cls, data: dict) -> "DenseField":
        _require_keys(data, ("name",), "dense field")
        return cls(data["name"], float(data.get("mean", 0.0)), float(data.get("std", 1.0)),
                   float(data.get("default", 0.0)))


TOKENIZERS = ("basic", "wordpiece")


@dataclass(frozen=True)
class TextSpec:
    """Item-text tokenisation for the content encoder, and the content vector the ranking parts read.

    Args:
        vocab: ``tokenizer="basic"``: the words of `edgerec.runtime.text.Tokenizer` (ids 4.. in
            order, the special tokens excluded). ``tokenizer="wordpiece"``: the whole BERT
            vocabulary in id order (token ``vocab[i]`` has id ``i``; ``[PAD]``, ``[UNK]``,
            ``[CLS]``, ``[SEP]`` included), tokenised by `edgerec.runtime.wordpiece` with BERT's
            uncased normalisation.
        max_tokens: token ids per text, ``[CLS]`` and ``[SEP]`` included.
        tokenizer: ``"basic"`` or ``"wordpiece"``.
        content_dim: width of the content encoder's ``item_vector``; when set, the ranking parts
            also read ``cand_content`` float32 [B, content_dim] (the contract's `CAND_CONTENT`:
            the content vector of a candidate added after training, zeros for known items).

    ``to_dict`` leaves out the fields at their defaults, so specs written before they existed
    read and write back byte for byte.

    Examples:
        >>> TextSpec(("toy", "story"), 8).to_dict()
        {'vocab': ['toy', 'story'], 'max_tokens': 8}
    """

    vocab: tuple[str, ...]
    max_tokens: int = 16
    tokenizer: str = "basic"
    content_dim: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "vocab", tuple(self.vocab))
        if self.tokenizer not in TOKENIZERS:
            raise SpecError(expected(f"a text tokenizer among {TOKENIZERS}", self.tokenizer))
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 3:
            raise SpecError(expected("text max_tokens as an int >= 3", self.max_tokens))
        if self.content_dim is not None and (isinstance(self.content_dim, bool) or not isinstance(
                self.content_dim, int) or self.content_dim < 1):
            raise SpecError(expected("text content_dim as a positive int (or null)", self.content_dim))

    def to_dict(self) -> dict:
        out = {"vocab": list(self.vocab), "max_tokens": self.max_tokens}
        if self.tokenizer != "basic":
            out["tokenizer"] = self.tokenizer
        if self.content_dim is not None:
            out["content_dim"] = self.content_dim
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "TextSpec":
        _require_keys(data, ("vocab",), "text spec")
        dim = data.get("content_dim")
        return cls(tuple(data["vocab"]), int(data.get("max_tokens", 16)), str(data.get("tokenizer", "basic")),
                   None if dim is None else int(dim))


@dataclass(frozen=True)
class FeatureSpec:
    """Everything needed to turn a raw request into model input arrays.

    Args:
        max_seq_len: behaviour-sequence length L (most recent L items kept, left-padded with 0).
        item_vocab: raw item id -> index.
        context: categorical context inputs (each an int32 [batch] input named after the field).
        dense: float inputs, packed in order into the float32 [batch, len(dense)] input ``dense``.
        text: item-text tokenisation, when the model family uses a content encoder.
    """

    max_seq_len: int
    item_vocab: Vocabulary
    context: tuple[ContextField, ...] = ()
    dense: tuple[DenseField, ...] = ()
    text: TextSpec | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        if not isinstance(self.max_seq_len, int) or self.max_seq_len < 1:
            raise SpecError(expected("max_seq_len as a positive int", self.max_seq_len))
        names = [c.name for c in self.context]
        if len(set(names)) != len(names) or {HIST_ITEMS, CAND_ITEM, DENSE} & set(names):
            raise SpecError(expected("unique context names that are not reserved", names))
        object.__setattr__(self, "context", tuple(self.context))
        object.__setattr__(self, "dense", tuple(self.dense))

    def input_signature(self, part: str = "fused") -> dict[str, tuple[str, tuple]]:
        """Model inputs as ``{name: (dtype, shape)}``; ``None`` marks the batch dimension."""
        hist = {HIST_ITEMS: ("int32", (None, self.max_seq_len))}
        cand = {CAND_ITEM: ("int32", (None,))}
        cand.update({c.name: ("int32", (None,)) for c in self.context})
        if self.dense:
            cand[DENSE] = ("float32", (None, len(self.dense)))
        if self.content_dim is not None:
            cand[CAND_CONTENT] = ("float32", (None, self.content_dim))
        if part == "user_encoder":
            return hist
        if part == "scorer":
            return cand
        return {**hist, **cand}

    @property
    def content_dim(self) -> int | None:
        """Width of the ``cand_content`` input of the ranking parts (None: they have none)."""
        return None if self.text is None else self.text.content_dim

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "max_seq_len": self.max_seq_len,
            "item_vocab": self.item_vocab.to_dict(),
            "context": [c.to_dict() for c in self.context],
            "dense": [d.to_dict() for d in self.dense],
            "text": self.text.to_dict() if self.text else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureSpec":
        if not isinstance(data, dict):
            raise SpecError(expected("a feature-spec JSON object", type(data).__name__))
        _require_keys(data, ("max_seq_len", "item_vocab"), "feature spec")
        version = data.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise SpecError(expected(f"feature-spec schema_version {SCHEMA_VERSION}", version))
        return cls(
            max_seq_len=int(data["max_seq_len"]),
            item_vocab=Vocabulary.from_dict(data["item_vocab"]),
            context=tuple(ContextField.from_dict(c) for c in data.get("context", [])),
            dense=tuple(DenseField.from_dict(d) for d in data.get("dense", [])),
            text=TextSpec.from_dict(data["text"]) if data.get("text") else None,
        )

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "FeatureSpec":
        path = Path(path)
        if not path.is_file():
            raise SpecError(expected("an existing feature-spec JSON file", str(path)))
        try:
            data = json.loads(path.read_text("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SpecError(expected(f"valid JSON in {path}", str(err))) from None
        return cls.from_dict(data)


def _require_keys(data: Any, keys: Sequence[str], what: str) -> None:
    if not isinstance(data, dict):
        raise SpecError(expected(f"a JSON object for the {what}", type(data).__name__))
    missing = [k for k in keys if k not in data]
    if missing:
        raise SpecError(expected(f"keys {list(keys)} in the {what}", f"missing {missing}"))
