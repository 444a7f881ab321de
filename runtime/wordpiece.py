"""BERT WordPiece tokenisation in pure Python + numpy, id for id what HuggingFace ``tokenizers`` gives.

A pretrained BERT-family content encoder (e.g. all-MiniLM-L6-v2) reads ids of its own vocabulary,
so a device must tokenise a new item's text exactly as the checkpoint's ``tokenizer.json`` does.
The pipeline mirrors that file's components, in their order:

1. added tokens (``[CLS]``, ``[PAD]`` …) written literally in the text are split out first and
   map to their ids, as ``tokenizers`` does for non-normalised special tokens;
2. ``BertNormalizer``: drop NUL / U+FFFD / control characters, map whitespace to spaces, put
   spaces around CJK ideographs, strip accents (NFD, drop non-spacing marks), lower-case per
   character (no final-sigma rule, like Rust's ``char::to_lowercase``);
3. ``BertPreTokenizer``: split on whitespace and isolate every punctuation character;
4. ``WordPiece``: greedy longest-match-first with the ``##`` prefix; a word with an unmatched
   piece, or longer than ``max_input_chars_per_word``, becomes ``[UNK]``;
5. ``[CLS] … [SEP]``, truncated to ``max_tokens`` (the specials included) and right-padded with
   the pad id.

Examples:
    >>> tok = WordPieceTokenizer({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "toy": 4,
    ...                           "story": 5, "##s": 6, "(": 7, ")": 8}, max_tokens=8)
    >>> tok.tokenize("Toy Storys (Café)")
    ['toy', 'story', '##s', '(', '[UNK]', ')']
    >>> tok.encode("Toy Story").tolist()
    [2, 4, 5, 3, 0, 0, 0, 0]
"""
from __future__ import annotations

import bisect
import functools
import json
import os
import re
import unicodedata
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .errors import RequestError, SpecError, expected

# Unicode White_Space (what Rust's char::is_whitespace tests); Python's str.isspace differs on a few.
_WHITESPACE = frozenset([*map(chr, range(0x09, 0x0E)), " ", "\u0085", "\u00a0", "\u1680",
                         *map(chr, range(0x2000, 0x200B)), "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"])
# BERT's CJK blocks as `tokenizers` writes them (its fifth range starts at 0x2B920, not 0x2B820)
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
_MAX_CACHED_WORDS = 200_000
# clean_text on ASCII: control characters dropped (\v and \f too: they are controls before they are
# spaces), \t \n \r -> " "
_ASCII_CLEAN = {**{c: None for c in (*range(0x00, 0x20), 0x7F)}, **{c: " " for c in (0x09, 0x0A, 0x0D)}}
# `tokenizers` classifies characters with Unicode tables older than Python's: the marks, format
# characters and punctuation assigned since (Unicode 9-14) are ordinary letters to it (they end
# up in words, usually as [UNK]). Measured over every code point against tokenizers 0.23.3;
# tests/runtime/test_wordpiece.py re-checks all of them against the installed `tokenizers`.
_LETTERS_TO_TOKENIZERS = """
61D 7FD 890-891 898-89F 8CA-8E2 9FD-9FE A76 AFA-AFF B55 C04 C3C C77 C84 D00 D3B-D3C D81 EBA 180F
1885-1886 1ABF-1ACE 1B7D-1B7E 1DF6-1DFB 2E43-2E4F 2E52-2E5D A82C A8C5 A8FF A9BD 10D24-10D27
10EAB-10EAD 10F46-10F50 10F55-10F59 10F82-10F89 11070 11073-11074 110C2 110CD 111CF 1123E
1133B 11438-1143F 11442-11444 11446 1144B-1144F 1145A-1145B 1145D-1145E 11660-1166C 116B9
1182F-11837 11839-1183B 1193B-1193C 1193E 11943-11946 119D4-119D7 119DA-119DB 119E0 119E2
11A01-11A0A 11A33-11A38 11A3B-11A47 11A51-11A56 11A59-11A5B 11A8A-11A96 11A98-11A9C 11A9E-11AA2
11C30-11C36 11C38-11C3D 11C3F 11C41-11C45 11C70-11C71 11C92-11CA7 11CAA-11CB0 11CB2-11CB3
11CB5-11CB6 11D31-11D36 11D3A 11D3C-11D3D 11D3F-11D45 11D47 11D90-11D91 11D95 11D97 11EF3-11EF4
11EF7-11EF8 11FFF 12FF1-12FF2 13430-13438 16E97-16E9A 16F4F 16FE2 16FE4 1CF00-1CF2D 1CF30-1CF46
1E000-1E006 1E008-1E018 1E01B-1E021 1E023-1E024 1E026-1E02A 1E130-1E136 1E2AE 1E2EC-1E2EF
1E944-1E94A 1E95E-1E95F
"""
# characters whose category changed since those tables: U+111C9 (now Mn), U+166D (So), U+1734 (Mc)
_OLD_CATEGORY = {"\U000111c9": "Po", "\u166d": "Po", "\u1734": "Mn"}
# the special tokens of BERT-uncased vocabularies; tokenizer.json marks them non-normalised
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _ranges(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    pairs = [tuple(int(x, 16) for x in (item.split("-") * 2)[:2]) if "-" in item else (int(item, 16),) * 2
             for item in text.split()]
    return tuple(a for a, _ in pairs), tuple(b for _, b in pairs)


_LETTER_STARTS, _LETTER_ENDS = _ranges(_LETTERS_TO_TOKENIZERS)


@functools.lru_cache(maxsize=65536)
def _category(char: str) -> str:
    """The Unicode general category `tokenizers` sees for ``char``."""
    if char in _OLD_CATEGORY:
        return _OLD_CATEGORY[char]
    code = ord(char)
    at = bisect.bisect_right(_LETTER_STARTS, code) - 1
    if at >= 0 and code <= _LETTER_ENDS[at]:
        return "Lo"
    return unicodedata.category(char)


def _is_control(char: str) -> bool:
    # unassigned code points (Cn) are kept, as `tokenizers` does: its tables list no Cn ranges
    return char not in "\t\n\r" and _category(char) in ("Cc", "Cf", "Co", "Cs")


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in _CJK)


def _is_punctuation(char: str) -> bool:
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True        # ASCII symbols such as $ + < = > ^ ` | ~ count as punctuation for BERT
    return _category(char).startswith("P")


class WordPieceTokenizer:
    """Text -> fixed-length int32 ids of a BERT WordPiece vocabulary.

    Args:
        vocab: token -> id (the checkpoint's ``model.vocab``); must hold the special tokens.
        max_tokens: output length, ``[CLS]`` and ``[SEP]`` included (>= 3).
        lowercase: lower-case the text.
        strip_accents: strip accents; ``None`` follows ``lowercase`` (BERT's rule).
        handle_chinese_chars: surround CJK ideographs with spaces.
        clean_text: drop control characters and map whitespace to spaces.
        added_tokens: literal strings matched in the raw text before normalisation (content ->
            id); the vocabulary's special tokens by default.
        unk_token / cls_token / sep_token / pad_token: special token strings.
        continuing_prefix: prefix of word-continuation pieces.
        max_input_chars_per_word: longer words become ``unk_token``.

    Examples:
        >>> tok = WordPieceTokenizer.from_tokenizer_json("tokenizer.json", max_tokens=32)  # doctest: +SKIP
        >>> tok.encode_batch(["Toy Story (1995)"]).shape                                     # doctest: +SKIP
        (1, 32)
    """

    def __init__(self, vocab: Mapping[str, int], max_tokens: int = 32, *, lowercase: bool = True,
                 strip_accents: bool | None = None, handle_chinese_chars: bool = True, clean_text: bool = True,
                 added_tokens: Mapping[str, int] | None = None, unk_token: str = "[UNK]",
                 cls_token: str = "[CLS]", sep_token: str = "[SEP]", pad_token: str = "[PAD]",
                 continuing_prefix: str = "##", max_input_chars_per_word: int = 100):
        if not isinstance(vocab, Mapping) or not vocab:
            raise SpecError(expected("a non-empty token -> id mapping", type(vocab).__name__))
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 3:
            raise SpecError(expected("max_tokens as an int >= 3 ([CLS] + one piece + [SEP])", max_tokens))
        missing = [t for t in (unk_token, cls_token, sep_token, pad_token) if t not in vocab]
        if missing:
            raise SpecError(expected("the special tokens in the vocabulary", f"missing {missing}"))
        self.vocab = dict(vocab)
        self.max_tokens = max_tokens
        self.lowercase = bool(lowercase)
        self.strip_accents = self.lowercase if strip_accents is None else bool(strip_accents)
        self.handle_chinese_chars = bool(handle_chinese_chars)
        self.clean_text = bool(clean_text)
        self.unk_token, self.continuing_prefix = unk_token, continuing_prefix
        self.max_input_chars_per_word = int(max_input_chars_per_word)
        self.unk_id, self.cls_id = self.vocab[unk_token], self.vocab[cls_token]
        self.sep_id, self.pad_id = self.vocab[sep_token], self.vocab[pad_token]
        if added_tokens is None:
            added_tokens = {t: self.vocab[t] for t in (pad_token, unk_token, cls_token, sep_token)}
        self.added_tokens = dict(added_tokens)
        self._ids = {**self.vocab, **self.added_tokens}
        # longest first, like the added-vocabulary matcher of `tokenizers`
        ordered = sorted(self.added_tokens, key=len, reverse=True)
        self._added = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._pieces: dict[str, tuple[str, ...]] = {}

    @classmethod
    def from_tokenizer_json(cls, source: str | os.PathLike | bytes | Mapping, max_tokens: int = 32
                            ) -> "WordPieceTokenizer":
        """A tokenizer from a HuggingFace ``tokenizer.json`` (a path, its bytes, or the parsed dict).

        Only the BERT pipeline is accepted (BertNormalizer, BertPreTokenizer, WordPiece,
        ``[CLS] $A [SEP]``); anything else is refused rather than tokenised differently.
        """
        config = _read_json(source)
        model = config.get("model") or {}
        normalizer = config.get("normalizer") or {}
        pre = config.get("pre_tokenizer") or {}
        if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
            raise SpecError(expected("a tokenizer.json with a WordPiece model and its vocab", model.get("type")))
        if normalizer.get("type") != "BertNormalizer":
            raise SpecError(expected("the BertNormalizer in tokenizer.json", normalizer.get("type")))
        if pre.get("type") != "BertPreTokenizer":
            raise SpecError(expected("the BertPreTokenizer in tokenizer.json", pre.get("type")))
        cls_token, sep_token = _template_specials(config.get("post_processor") or {})
        pad_token = ((config.get("padding") or {}).get("pad_token")) or "[PAD]"
        added = {t["content"]: int(t["id"]) for t in config.get("added_tokens") or []
                 if not t.get("normalized", False)}
        return cls(model["vocab"], max_tokens, lowercase=bool(normalizer.get("lowercase", True)),
                   strip_accents=normalizer.get("strip_accents"),
                   handle_chinese_chars=bool(normalizer.get("handle_chinese_chars", True)),
                   clean_text=bool(normalizer.get("clean_text", True)), added_tokens=added,
                   unk_token=model.get("unk_token", "[UNK]"), cls_token=cls_token, sep_token=sep_token,
                   pad_token=pad_token, continuing_prefix=model.get("continuing_subword_prefix", "##"),
                   max_input_chars_per_word=int(model.get("max_input_chars_per_word", 100)))

    @classmethod
    def from_vocab_list(cls, tokens: Sequence[str], max_tokens: int = 32) -> "WordPieceTokenizer":
        """A BERT-uncased tokenizer over ``tokens`` in id order (``tokens[i]`` has id ``i``), as a
        bundle's ``TextSpec(tokenizer="wordpiece")`` stores it: the four special tokens are looked
        up in it, and the specials it holds (``[MASK]`` too) are matched literally in the text,
        as the checkpoint's ``tokenizer.json`` lists them.

        Examples:
            >>> tok = WordPieceTokenizer.from_vocab_list(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "toy"], 4)
            >>> tok.encode("Toy").tolist()
            [2, 4, 3, 0]
        """
        if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence) or not tokens:
            raise SpecError(expected("a non-empty list of vocabulary tokens in id order", type(tokens).__name__))
        vocab = {}
        for index, token in enumerate(tokens):
            if not isinstance(token, str) or token in vocab:
                raise SpecError(expected("unique str tokens in the wordpiece vocabulary",
                                         f"{token!r} at id {index}"))
            vocab[token] = index
        added = {t: vocab[t] for t in BERT_SPECIAL_TOKENS if t in vocab}
        return cls(vocab, max_tokens, added_tokens=added)

    @property
    def vocab_size(self) -> int:
        return max(self.vocab.values()) + 1

    # -- text -> pieces -------------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        """The BertNormalizer steps on one text (added tokens are not special-cased here)."""
        if text.isascii():       # most titles: no accents, no CJK, and str.lower is per character
            if self.clean_text:
                text = text.translate(_ASCII_CLEAN)
            return text.lower() if self.lowercase else text
        if self.clean_text:
            text = "".join(" " if c in _WHITESPACE else c for c in text
                           if c not in ("\0", "\ufffd") and not _is_control(c))
        if self.handle_chinese_chars:
            text = "".join(f" {c} " if _is_cjk(c) else c for c in text)
        if self.strip_accents:
            text = "".join(c for c in unicodedata.normalize("NFD", text) if _category(c) != "Mn")
        if self.lowercase:
            text = "".join(c.lower() for c in text)
        return text

    @staticmethod
    def pre_tokenize(text: str) -> list[str]:
        """Whitespace split with every punctuation character a word of its own."""
        out, word = [], []
        for char in text:
            if char in _WHITESPACE:
                if word:
                    out.append("".join(word))
                    word = []
            elif _is_punctuation(char):
                if word:
                    out.append("".join(word))
                    word = []
                out.append(char)
            else:
                word.append(char)
        if word:
            out.append("".join(word))
        return out

    def word_pieces(self, word: str) -> tuple[str, ...]:
        """Greedy longest-match-first pieces of one pre-tokenised word."""
        cached = self._pieces.get(word)
        if cached is not None:
            return cached
        pieces: tuple[str, ...]
        if len(word) > self.max_input_chars_per_word:
            pieces = (self.unk_token,)
        else:
            found, start = [], 0
            while start < len(word):
                end, piece = len(word), None
                while start < end:
                    candidate = word[start:end] if start == 0 else self.continuing_prefix + word[start:end]
                    if candidate in self.vocab:
                        piece = candidate
                        break
                    end -= 1
                if piece is None:
                    found = [self.unk_token]
                    break
                found.append(piece)
                start = end
            pieces = tuple(found)
        if len(self._pieces) < _MAX_CACHED_WORDS:
            self._pieces[word] = pieces
        return pieces

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of ``text`` (no ``[CLS]``/``[SEP]``, no truncation)."""
        if not isinstance(text, str):
            raise RequestError(expected("item text as str", type(text).__name__))
        tokens = []
        for segment, is_added in self._segments(text):
            if is_added:
                tokens.append(segment)
                continue
            for word in self.pre_tokenize(self.normalize(segment)):
                tokens.extend(self.word_pieces(word))
        return tokens

    def _segments(self, text: str):
        if self._added is None:
            yield text, False
            return
        position = 0
        for match in self._added.finditer(text):
            if match.start() > position:
                yield text[position:match.start()], False
            yield match.group(0), True
            position = match.end()
        if position < len(text):
            yield text[position:], False

    # -- pieces -> ids --------------------------------------------------------------------------
    def token_ids(self, text: str) -> list[int]:
        """Ids of ``text``'s tokens, unpadded and untruncated (no specials)."""
        lookup, unk = self._ids, self.unk_id
        return [lookup.get(t, unk) for t in self.tokenize(text)]

    def encode(self, text: str) -> np.ndarray:
        """``[max_tokens]`` int32: ``[CLS] ids… [SEP]`` truncated to fit, then padded."""
        ids = self.token_ids(text)[: self.max_tokens - 2]
        out = np.full(self.max_tokens, self.pad_id, dtype=np.int32)
        out[: len(ids) + 2] = [self.cls_id, *ids, self.sep_id]
        return out

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), max_tokens]`` int32 ids."""
        if isinstance(texts, str):
            raise RequestError(expected("a sequence of texts (not one str)", texts[:40]))
        if len(texts) == 0:
            return np.zeros((0, self.max_tokens), dtype=np.int32)
        return np.stack([self.encode(t) for t in texts])

    def attention_mask(self, ids: np.ndarray) -> np.ndarray:
        """1 where ``ids`` is not the pad id (what an encoder fed only ids derives itself)."""
        return (np.asarray(ids) != self.pad_id).astype(np.int32)


def _read_json(source) -> dict:
    if isinstance(source, Mapping):
        return dict(source)
    try:
        raw = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
        data = json.loads(raw)
    except (OSError, ValueError, TypeError) as err:
        raise SpecError(expected("a readable tokenizer.json (path, bytes or dict)", f"{type(err).__name__}: {err}")
                        ) from None
    if not isinstance(data, dict):
        raise SpecError(expected("a JSON object in tokenizer.json", type(data).__name__))
    return data


def _template_specials(post: Mapping) -> tuple[str, str]:
    """``(cls, sep)`` of a ``[CLS] $A [SEP]`` TemplateProcessing post-processor (BERT's defaults if absent)."""
    if not post:
        return "[CLS]", "[SEP]"
    single = post.get("single") or []
    kinds = [("special", p["SpecialToken"]["id"]) if "SpecialToken" in p else ("seq", None) for p in single]
    if post.get("type") != "TemplateProcessing" or len(kinds) != 3 or [k for k, _ in kinds] != \
            ["special", "seq", "special"]:
        raise SpecError(expected("a '[CLS] $A [SEP]' TemplateProcessing post-processor", post.get("single")))
    return kinds[0][1], kinds[2][1]
