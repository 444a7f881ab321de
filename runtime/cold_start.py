"""Item texts -> content vectors through a bundle's ``content_encoder``, and cold-start items.

A content-family bundle (``context`` trained with content) holds the part ``content_encoder``
(``item_tokens`` int32 [B, T] -> ``item_vector`` float32 [B, D]) and a feature spec whose
``text`` names the tokenizer (`edgerec.runtime.text.tokenizer_for`) and ``content_dim`` = D.
Its ranking parts read ``cand_content`` float32 [B, D] (`contract.CAND_CONTENT`): a row whose
candidate id is out of vocabulary takes that vector as its content; known ids are fed zeros.

`ColdStartItems` is what ``Predictor.add_items`` keeps: items that appeared after training
(raw id -> text), encoded on the device, so `Predictor.predict` / ``score_candidates`` /
``top_k`` score them through their content instead of as the generic OOV item.

Added items belong to the bundle version that encoded them: on ``Predictor.swap`` every added
text is re-encoded by the new bundle before it starts serving (its vectors may differ), ids the
new vocabulary knows are dropped (they have trained embeddings now), and a new bundle that cannot
encode them (no content encoder or no ``cand_content`` input) is refused, the old one serving on.

Examples:
    >>> items = ColdStartItems()
    >>> items.add(model, {"m-new": "Space Cowboys (2000) Action|Adventure"})   # doctest: +SKIP
    ['m-new']
"""
from __future__ import annotations

import logging
import threading
import weakref
from typing import Any, Mapping, Sequence

import numpy as np

from .contract import CAND_CONTENT, CONTENT_ENCODER, ITEM_TOKENS, ITEM_VECTOR
from .errors import BundleError, RequestError, expected
from .preprocess import is_raw_id, shown
from .spec import OOV_INDEX
from .text import tokenizer_for

logger = logging.getLogger(__name__)

# Texts per content-encoder call: bounds the backend's intermediate tensors (B x T x hidden).
ENCODE_CHUNK = 256
_TOKENIZERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # LoadedBundle -> tokenizer


def check_texts(texts: Any) -> list[str]:
    """``texts`` as a non-empty list of str (RequestError naming the first bad entries)."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, (Sequence, np.ndarray)) or len(texts) == 0:
        raise RequestError(expected("a non-empty list of item texts", shown(texts)))
    bad = [shown(t) for t in texts if not isinstance(t, str)]
    if bad:
        raise RequestError(expected("item texts as str", bad[:3]))
    return list(texts)


def item_vectors(model, texts: Sequence[str]) -> np.ndarray:
    """Content vectors float32 [N, D] of ``texts`` through ``model``'s content encoder (a
    `LoadedBundle`), tokenised by the spec's tokenizer exactly as in training."""
    spec = model.spec
    if spec is None or spec.text is None or CONTENT_ENCODER not in model.parts:
        raise RequestError(expected(f"a bundle with a text spec and a {CONTENT_ENCODER} part",
                                    sorted(model.parts)))
    texts = check_texts(texts)
    tokenizer = _TOKENIZERS.get(model)
    if tokenizer is None:
        tokenizer = _TOKENIZERS[model] = tokenizer_for(spec.text)
    pieces = []
    for start in range(0, len(texts), ENCODE_CHUNK):
        tokens = tokenizer.encode_batch(texts[start:start + ENCODE_CHUNK])
        outputs = model.run(CONTENT_ENCODER, {ITEM_TOKENS: tokens})
        value = outputs[ITEM_VECTOR] if ITEM_VECTOR in outputs else next(iter(outputs.values()))
        pieces.append(np.asarray(value, dtype=np.float32).reshape(len(tokens), -1))
    return np.concatenate(pieces, axis=0)


def cold_start_problem(model) -> str:
    """Why ``model`` (a `LoadedBundle`) cannot score added items ("" when it can): it needs the
    content encoder, a spec with ``text.content_dim`` and ranking parts that read ``cand_content``
    [B, content_dim]."""
    spec = model.spec
    if spec is None or spec.text is None or spec.content_dim is None:
        return "a feature spec without text.content_dim"
    if CONTENT_ENCODER not in model.parts:
        return f"no {CONTENT_ENCODER} part (parts {sorted(model.parts)})"
    ranking = ["fused"] if "fused" in model.parts else [p for p in ("scorer",) if p in model.parts]
    for part in ranking:
        declared = {t.name: t for t in model.parts[part].inputs}
        if CAND_CONTENT not in declared:
            return f"a {part} without a '{CAND_CONTENT}' input"
        shape = list(declared[CAND_CONTENT].shape)
        if len(shape) != 2 or shape[1] not in (None, spec.content_dim):
            return f"{part}'s '{CAND_CONTENT}' of shape {shape}, not [B, {spec.content_dim}]"
    return ""


def check_new_items(model, items: Any) -> dict[str, str]:
    """``items`` (raw id -> text) checked for ``model``: ``{str(id): text}``.

    Raises:
        RequestError: not a non-empty mapping, an id that is not a raw id or that the vocabulary
            already knows (a known item has its trained embedding), a text that is not a non-blank
            str, or a bundle that cannot score added items.
    """
    problem = cold_start_problem(model)
    if problem:
        raise RequestError(expected(f"a content bundle ({CONTENT_ENCODER} part, ranking parts reading "
                                    f"'{CAND_CONTENT}') to add items to", problem))
    if not isinstance(items, Mapping) or len(items) == 0:
        raise RequestError(expected("a non-empty dict of raw item id -> item text", shown(items)))
    vocab = model.spec.item_vocab
    checked, known = {}, []
    for raw, text in items.items():
        if not is_raw_id(raw):
            raise RequestError(expected("item ids as non-empty str or int", shown(raw)))
        if not isinstance(text, str) or not text.strip():
            raise RequestError(expected(f"a non-blank str text for item {shown(raw)!r}", shown(text)))
        key = str(raw)
        if vocab.lookup(key) != OOV_INDEX:
            known.append(key)
        checked[key] = text
    if known:
        raise RequestError(expected("ids the item vocabulary does not know (known items keep their trained "
                                    "embedding)", sorted(known)[:10]))
    return checked


class ColdStartItems:
    """Items added after training: their texts, and their vectors per bundle version.

    Thread safety: `add` and a swap's `rebind` ... `commit` run under `lock` (the Predictor holds
    it from re-encoding to the switch, so an item added meanwhile is not lost); readers take
    `vectors`, a table that is replaced, never changed in place.
    """

    def __init__(self):
        self.lock = threading.RLock()
        self._texts: dict[str, str] = {}
        self._vectors: dict[str, dict[str, np.ndarray]] = {}   # bundle version -> raw id -> vector

    def __len__(self) -> int:
        return len(self._texts)

    @property
    def texts(self) -> dict[str, str]:
        """raw id -> text of every added item."""
        return dict(self._texts)

    def vectors(self, model) -> dict[str, np.ndarray] | None:
        """raw id -> content vector for ``model``'s version (None when nothing was added)."""
        if not self._texts:
            return None
        return self._vectors.get(model.version)

    def add(self, model, items: Mapping) -> list[str]:
        """Check, encode with ``model`` and register ``items``; returns their ids (as str). Adding
        an id again replaces its text and vector."""
        with self.lock:
            checked = check_new_items(model, items)
            encoded = item_vectors(model, list(checked.values()))
            table = dict(self._vectors.get(model.version) or {})
            table.update(zip(checked, encoded))
            self._texts.update(checked)
            self._vectors = {**self._vectors, model.version: table}
            return list(checked)

    def remove(self, ids) -> list[str]:
        """Forget ``ids`` (raw ids; unknown ones are ignored); returns those removed."""
        if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, set, frozenset, np.ndarray)):
            ids = [ids]
        with self.lock:
            gone = [str(i) for i in ids if str(i) in self._texts]
            for key in gone:
                del self._texts[key]
            self._vectors = {version: {k: v for k, v in table.items() if k not in gone}
                             for version, table in self._vectors.items()}
            return gone

    def clear(self) -> None:
        with self.lock:
            self._texts, self._vectors = {}, {}

    def rebind(self, new_model) -> tuple[dict[str, np.ndarray], list[str]]:
        """Re-encode every added text with ``new_model`` (call under `lock`, before it serves):
        ``(raw id -> vector, ids dropped because its vocabulary knows them)``.

        Raises:
            BundleError: items were added and ``new_model`` cannot score them.
        """
        if not self._texts:
            return {}, []
        vocab = new_model.spec.item_vocab if new_model.spec is not None else None
        dropped = [k for k in self._texts if vocab is not None and vocab.lookup(k) != OOV_INDEX]
        keep = {k: t for k, t in self._texts.items() if k not in dropped}
        if not keep:
            return {}, dropped
        problem = cold_start_problem(new_model)
        if problem:
            raise BundleError(expected(f"a new bundle that can re-encode the {len(keep)} item(s) added with "
                                       "add_items (or call clear_items() before the swap)", problem))
        return dict(zip(keep, item_vectors(new_model, list(keep.values())))), dropped

    def commit(self, old_model, new_model, table: dict, dropped: Sequence[str]) -> None:
        """After the switch: ``new_model``'s table; ``old_model``'s stays for its in-flight calls."""
        for key in dropped:
            self._texts.pop(key, None)
        if dropped:
            logger.info("added items now in the vocabulary, served by their trained embedding: %s", list(dropped)[:10])
        self._vectors = {old_model.version: self._vectors.get(old_model.version) or {},
                         new_model.version: table}


class ItemContentMethods:
    """`Predictor`'s item-content API (``item_vectors`` and the cold-start items); the Predictor
    provides ``_serve`` (run on the pinned bundle), ``_cold`` (a `ColdStartItems`) and
    ``result_cache``."""

    def item_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """Content-encoder vectors float32 [N, D] for item texts, tokenised exactly as in training
        (the spec's ``text.tokenizer``), through the bundle's ``content_encoder`` part."""
        return self._serve(item_vectors, texts)

    def add_items(self, items: Mapping[Any, str]) -> list[str]:
        """Register items that appeared after training (raw id -> text): each text is encoded on
        the device by the bundle's content encoder, and `predict` / `score_candidates` / `top_k`
        then score these ids through their content vector (fed as ``cand_content``) instead of
        as the generic out-of-vocabulary item; ``return_oov`` does not flag them. Adding an id
        again replaces its text. On `swap` the texts are re-encoded by the new bundle (see
        `edgerec.runtime.cold_start`). Returns the ids, as str.

        Raises:
            RequestError: an empty or non-dict argument, an id the vocabulary knows, a text that is
                not a non-blank str, or a bundle without a content encoder / ``cand_content`` input.

        Examples:
            >>> predictor.add_items({"m-new": "Space Cowboys (2000) Action|Adventure"})   # doctest: +SKIP
            ['m-new']
        """
        with self._cold.lock:           # a swap re-encodes under the same lock: nothing is lost
            return self._serve(self._cold.add, items)

    @property
    def added_items(self) -> dict[str, str]:
        """raw id -> text of the items registered with `add_items`."""
        return self._cold.texts

    def remove_items(self, ids) -> list[str]:
        """Forget added items (raw ids; unknown ones are ignored); returns the ids removed."""
        removed = self._cold.remove(ids)
        if removed:
            self.result_cache.clear()
        return removed

    def clear_items(self) -> None:
        """Forget every added item."""
        self._cold.clear()
        self.result_cache.clear()


def mark_added(codes: np.ndarray, raw_items: Sequence, table: Mapping | None) -> np.ndarray:
    """Encoded candidate ids with the rows of added items set to -1, so the Predictor neither
    counts nor flags them as out of vocabulary (the arrays fed to the model keep the OOV index)."""
    if not table:
        return codes
    rows = [i for i in np.flatnonzero(codes == OOV_INDEX) if str(raw_items[i]) in table]
    if not rows:
        return codes
    marked = codes.copy()
    marked[rows] = -1
    return marked
