"""Model configuration and the three-part model container (no TensorFlow import here)."""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from edgerec.runtime.contract import CAND_CONTENT, CAND_ITEM, FAMILIES, PARTS as PART_NAMES  # noqa: F401  (re-exported)
from edgerec.runtime.errors import SpecError, expected
from edgerec.runtime.spec import FeatureSpec

# Item-text encoders of the content families: trained from scratch, or the pretrained MiniLM.
CONTENT_ENCODERS = ("small", "minilm")


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters shared by every model family (each family reads the ones it needs).

    Args:
        embedding_dim: item embedding width.
        hidden_units: scorer MLP hidden layers.
        attention_units: DIN target-attention MLP hidden layers (din, bst, context).
        gru_units: GRU state width (gru).
        lstm_units: LSTM state width (lstm).
        num_heads, ff_dim, num_blocks: transformer blocks over the behaviour sequence (bst).
        context_dim: embedding width of each context field (context).
        use_content: hold the content encoder's item vectors as a frozen item feature;
            ``None`` = only the ``context`` family does.
        content_encoder: ``"small"`` (a BERT-style encoder pre-trained from scratch on the item
            corpus) or ``"minilm"`` (the pretrained all-MiniLM-L6-v2, `edgerec.sdk.models.minilm`).
        content_dim: width of the item content vectors: the small encoder's width, or the
            number of principal components the 384-dim MiniLM vectors are reduced to (384 = none).
        content_dropout: share of training rows whose candidate id is replaced by the OOV index
            and whose ``cand_content`` is the item's own content vector, so the model learns to
            score an item from its content alone (cold start).
        minilm_max_tokens: WordPiece tokens per item text for the MiniLM encoder.
        text_heads, text_ff_dim, text_blocks: the small content encoder.
        text_max_tokens, text_vocab_size: item-text tokenisation (stored in ``spec.text``).
        content_epochs: pre-training epochs of the content encoder on the item corpus.
        dropout: dropout in the scorer MLP and transformer blocks.
        l2: L2 penalty on the item embedding.
    """

    embedding_dim: int = 32
    hidden_units: tuple[int, ...] = (128, 64)
    attention_units: tuple[int, ...] = (64, 32)
    gru_units: int = 64
    lstm_units: int = 64
    num_heads: int = 2
    ff_dim: int = 64
    num_blocks: int = 1
    context_dim: int = 8
    use_content: bool | None = None
    content_encoder: str = "small"
    content_dim: int = 32
    content_dropout: float = 0.05
    minilm_max_tokens: int = 32
    text_heads: int = 2
    text_ff_dim: int = 64
    text_blocks: int = 2
    text_max_tokens: int = 16
    text_vocab_size: int = 2000
    content_epochs: int = 6
    dropout: float = 0.0
    l2: float = 0.0

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("hidden_units", "attention_units"):
                if isinstance(value, (str, int)) or not all(is_positive_int(v) for v in value):
                    raise SpecError(expected(f"{f.name} as a list of positive ints", value))
                object.__setattr__(self, f.name, tuple(int(v) for v in value))
            elif f.name == "use_content":
                if value is not None and not isinstance(value, bool):
                    raise SpecError(expected("use_content as true, false or null", value))
            elif f.name == "content_encoder":
                if value not in CONTENT_ENCODERS:
                    raise SpecError(expected(f"content_encoder among {list(CONTENT_ENCODERS)}", value))
            elif f.name in ("dropout", "l2", "content_dropout"):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                    raise SpecError(expected(f"{f.name} in [0, 1)", value))
            elif not is_positive_int(value):
                raise SpecError(expected(f"{f.name} as a positive int", value))
        for name in ("text_max_tokens", "minilm_max_tokens"):
            if getattr(self, name) < 3:
                raise SpecError(expected(f"{name} >= 3", getattr(self, name)))

    def uses_content(self, family: str) -> bool:
        return family == "context" if self.use_content is None else self.use_content

    def to_dict(self) -> dict:
        data = asdict(self)
        data["hidden_units"] = list(self.hidden_units)
        data["attention_units"] = list(self.attention_units)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        return config_from_dict(cls, data, "model-config")


def config_from_dict(cls, data, what: str):
    """``cls(**data)`` for a config dataclass read from JSON: SpecError for a non-object or for
    keys the dataclass does not have (a typo must not be dropped silently)."""
    if not isinstance(data, dict):
        raise SpecError(expected(f"a {what} object", type(data).__name__))
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(expected(f"{what} keys among {sorted(known)}", unknown))
    return cls(**data)


def is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1



@dataclass
class ModelParts:
    """A ranking model as the runtime serves it.

    Attributes:
        family: one of `FAMILIES`.
        spec: the feature spec the model was built for (with ``text`` set when it uses content).
        config: the model config.
        fused: inputs = the fused signature the model consumes, output ``score`` [B, 1].
        user_encoder: ``hist_items`` -> ``user_*`` outputs (cacheable per user).
        scorer: ``user_*`` + candidate (+ context, dense) -> ``score``.
        content_encoder: ``item_tokens`` -> ``item_vector`` (families that use content).
        content_table: ``[item_vocab.size, content_dim]`` item vectors the model holds frozen.
        meta: free-form facts (training history, data source) saved with the model dir.
    """

    family: str
    spec: FeatureSpec
    config: ModelConfig
    fused: Any
    user_encoder: Any
    scorer: Any
    content_encoder: Any = None
    content_table: Any = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        # the spec names the cand_content width the ranking parts read (runtime input signature);
        # a model saved before that input existed keeps its spec as it is
        reads_content = CAND_CONTENT in (getattr(self.fused, "input_names", None) or ())
        if self.content_table is not None and self.spec.text is not None and reads_content:
            width = int(self.content_table.shape[1])
            if self.spec.text.content_dim is None:
                text = dataclasses.replace(self.spec.text, content_dim=width)
                self.spec = dataclasses.replace(self.spec, text=text)
            elif self.spec.text.content_dim != width:
                raise SpecError(expected(f"text content_dim {width} (the content table's width)",
                                         self.spec.text.content_dim))

    def parts(self) -> dict[str, Any]:
        """``{part name: keras model}`` of the parts present."""
        out = {"fused": self.fused, "user_encoder": self.user_encoder, "scorer": self.scorer}
        if self.content_encoder is not None:
            out["content_encoder"] = self.content_encoder
        return out

    @property
    def input_names(self) -> list[str]:
        """Names of the fused model's inputs (what a request must be encoded into)."""
        return list(self.fused.input_names)

    def select_inputs(self, arrays: dict, part: str = "fused") -> dict:
        """The subset of ``arrays`` a part consumes, keyed by input name.

        A part that reads ``cand_content`` gets zeros when ``arrays`` has none: the contract's
        value for rows of known items, and an unknown item scored without its content.
        """
        import numpy as np

        model = self.parts()[part]
        names = list(model.input_names)
        if CAND_CONTENT in names and CAND_CONTENT not in arrays and CAND_ITEM in arrays:
            width = int(dict(zip(names, model.inputs))[CAND_CONTENT].shape[-1])
            arrays = {**arrays, CAND_CONTENT: np.zeros((len(arrays[CAND_ITEM]), width), np.float32)}
        missing = [n for n in names if n not in arrays]
        if missing:
            raise SpecError(expected(f"arrays for the {part} inputs {names}", f"missing {missing}"))
        return {n: arrays[n] for n in names}
