"""Item-text tokenisation shared, unchanged, by training and serving (pure Python + numpy).

`Tokenizer` is the small encoder's: token ids 0 = [PAD], 1 = [UNK], 2 = [CLS], 3 = [SEP],
4.. = the vocabulary's words; a sequence is ``[CLS] w1 w2 … [SEP]`` truncated/padded to
``max_tokens``. `tokenizer_for` gives the tokenizer a `TextSpec` names: this one for
``"basic"``, `edgerec.runtime.wordpiece.WordPieceTokenizer` for ``"wordpiece"`` (pretrained
BERT-family encoders).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np

from .errors import RequestError, expected

PAD, UNK, CLS, SEP = 0, 1, 2, 3
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words of ``text`` (``"Toy Story (1995)"`` -> toy, story, 1995)."""
    if not isinstance(text, str):
        raise RequestError(expected("item text as str", type(text).__name__))
    return _WORD.findall(text.lower())


def build_text_vocab(corpus: Iterable[str], max_size: int = 5000, min_count: int = 1) -> tuple[str, ...]:
    """Most frequent words of the corpus (ties broken alphabetically, so it is deterministic)."""
    counts = Counter(w for text in corpus for w in words(text))
    ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return tuple(ranked[: max(0, max_size - len(SPECIAL_TOKENS))])


class Tokenizer:
    """Maps text to fixed-length int32 token ids.

    Args:
        vocab: words (without special tokens), as produced by `build_text_vocab`.
        max_tokens: output length, [CLS] and [SEP] included (>= 3).

    Examples:
        >>> Tokenizer(("toy", "story"), max_tokens=6).encode("Toy Story 2").tolist()
        [2, 4, 5, 1, 3, 0]
    """

    def __init__(self, vocab: Sequence[str], max_tokens: int = 16):
        if int(max_tokens) < 3:
            raise RequestError(expected("max_tokens >= 3", max_tokens))
        self.vocab = tuple(vocab)
        self.max_tokens = int(max_tokens)
        self._index = {w: i + len(SPECIAL_TOKENS) for i, w in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + len(SPECIAL_TOKENS)

    def encode(self, text: str) -> np.ndarray:
        ids = [self._index.get(w, UNK) for w in words(text)][: self.max_tokens - 2]
        out = np.zeros(self.max_tokens, dtype=np.int32)
        out[: len(ids) + 2] = [CLS, *ids, SEP]
        return out

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.max_tokens), dtype=np.int32)
        return np.stack([self.encode(t) for t in texts])


def tokenizer_for(text_spec):
    """The tokenizer of a `edgerec.runtime.spec.TextSpec` (anything with ``encode_batch``).

    Examples:
        >>> from edgerec.runtime.spec import TextSpec
        >>> tokenizer_for(TextSpec(("toy", "story"), 6)).encode("Toy Story").tolist()
        [2, 4, 5, 3, 0, 0]
    """
    kind = getattr(text_spec, "tokenizer", None)
    if kind == "basic":
        return Tokenizer(text_spec.vocab, text_spec.max_tokens)
    if kind == "wordpiece":
        from .wordpiece import WordPieceTokenizer

        return WordPieceTokenizer.from_vocab_list(text_spec.vocab, text_spec.max_tokens)
    raise RequestError(expected("a text spec with tokenizer 'basic' or 'wordpiece'", kind))
