"""The contract every edgerec package shares: model parts, artifact formats, precisions, which
backend runs which format, tensor names, model families, and how close each precision must stay
to the trained model.

This module is the single home of these names. The trainer writes models whose tensors are named
here, the converters produce artifacts of these formats and precisions, and the runtime refuses
anything else; other-language runtimes read the same values from ``docs/contracts.md``.

Examples:
    >>> from edgerec.runtime.contract import BACKEND_FOR_FORMAT, TOLERANCES
    >>> BACKEND_FOR_FORMAT["tflite"]
    'litert'
    >>> TOLERANCES["fp32"].max_abs_diff
    0.0001
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .errors import SpecError, expected

# -- model parts ------------------------------------------------------------------------------
FUSED, USER_ENCODER, SCORER, CONTENT_ENCODER = "fused", "user_encoder", "scorer", "content_encoder"
USER_TOWER = "user_tower"        # a retrieval model's user side (see "retrieval" below)
PARTS = (FUSED, USER_ENCODER, SCORER, CONTENT_ENCODER, USER_TOWER)
# Parts of a ranking model: the fused graph, and the same layers split so the user side runs once
# per user and the scorer once per candidate.
RANKING_PARTS = (FUSED, USER_ENCODER, SCORER)

# -- artifacts --------------------------------------------------------------------------------
FORMATS = ("tflite", "onnx", "trt_engine")
# "int4": row-wise 4-bit embedding tables (the rest of the graph float, dynamic or int8).
PRECISIONS = ("fp32", "fp16", "dynamic", "int8", "int4")
BACKENDS = ("litert", "onnxruntime", "tensorrt")
FORMAT_FOR_BACKEND = {"litert": "tflite", "onnxruntime": "onnx", "tensorrt": "trt_engine"}
BACKEND_FOR_FORMAT = {fmt: backend for backend, fmt in FORMAT_FOR_BACKEND.items()}

# -- model families ---------------------------------------------------------------------------
# Families edgerec builds and trains; "byom" marks a bundle made from a bring-your-own Keras model.
FAMILIES = ("din", "gru", "bst", "context", "lstm")
BYOM = "byom"
BUNDLE_FAMILIES = FAMILIES + (BYOM,)

# -- tensor names shared by every edgerec model, exporter and runtime -------------------------
HIST_ITEMS = "hist_items"
CAND_ITEM = "cand_item"
DENSE = "dense"
SCORE = "score"
USER_STATE = "user_state"
USER_MASK = "user_mask"
USER_OUTPUT_PREFIX = "user_"     # user-encoder outputs, fed to the scorer under the same names
USER_KEYS = USER_OUTPUT_PREFIX + "keys"        # target attention's key half of its first layer [B, L, U]
USER_POOLED = USER_OUTPUT_PREFIX + "pooled"    # masked mean of the user state [B, D]
# Content families (context): item text -> ITEM_VECTOR through the CONTENT_ENCODER part, which
# reads ITEM_TOKENS int32 [B, T]. The ranking parts also read CAND_CONTENT float32 [B, Dc]: for a
# row whose CAND_ITEM is the OOV index (an item added after training, e.g. by
# Predictor.add_items) the model takes that vector as the candidate's content vector; rows with a
# known id ignore it (their vector is the model's own table row) and are fed zeros.
ITEM_TOKENS = "item_tokens"
ITEM_VECTOR = "item_vector"
CAND_CONTENT = "cand_content"


# -- retrieval (candidate generation over the whole catalogue) --------------------------------
# A retrieval model dir (family RETRIEVAL) holds the part USER_TOWER (user-side inputs ->
# USER_VECTOR float32 [B, D]) and ITEM_VECTORS_FILE, float32 [item_vocab.size, D] (row i = item
# index i; rows 0/1, padding/OOV, are zero and never recommended): score = user_vector · row.
RETRIEVAL = "retrieval"
USER_VECTOR = "user_vector"
ITEM_VECTORS_FILE = "item_vectors.npy"
# Every model dir's held-out users (one row per user: user-side inputs, held-out item, seen
# items in CSR form) for full-catalogue metrics; layout in edgerec.sdk.metrics.full_catalogue.
HELDOUT_USERS_FILE = "heldout_users.npz"
# A cascade bundle (ranker + USER_TOWER artifacts + item index) lists its index files with this
# role; the manifest's top-level INDEX object describes the index (kind, recall of the served
# index vs exact search) and FULL_CATALOGUE holds {RETRIEVAL, "ranker", CASCADE, POPULARITY}
# blocks measured through the bundle's artifacts.
ITEM_INDEX_ROLE = "item_index"
INDEX = "index"
CASCADE, RANKER, POPULARITY = "cascade", "ranker", "popularity"
# The metrics.json / manifest full-catalogue blocks: {"hr@10", "ndcg@10", "recall@100"} each.
FULL_CATALOGUE = "full_catalogue"
BASELINE_FULL_CATALOGUE = "baseline_full_catalogue"


# -- tolerances -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tolerance:
    """How far an artifact of one precision may drift from the trained (Keras) model.

    Args:
        max_abs_diff: bound on the largest |artifact - keras| over every output element
            (None: unchecked, as for int8 where single probabilities move by a few hundredths).
        mean_abs_diff: bound on the mean |artifact - keras|.
        delta_auc: bound on |AUC(artifact) - AUC(keras)| for the validator (a sanity bound; the
            selection budget is stricter and applied by the selector).
        min_recall_overlap: lower bound on the mean top-10 overlap per ranking group (None: unchecked).

    Examples:
        >>> Tolerance(max_abs_diff=1e-4, mean_abs_diff=1e-5, delta_auc=1e-3).mean_abs_diff
        1e-05
    """

    max_abs_diff: float | None
    mean_abs_diff: float
    delta_auc: float
    min_recall_overlap: float | None = None

    def __post_init__(self):
        for name in ("max_abs_diff", "mean_abs_diff", "delta_auc", "min_recall_overlap"):
            value = getattr(self, name)
            if value is None and name in ("max_abs_diff", "min_recall_overlap"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise SpecError(expected(f"{name} as a finite number >= 0", value))

    def to_dict(self) -> dict:
        return asdict(self)


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs_diff=1e-4, mean_abs_diff=1e-5, delta_auc=1e-3, min_recall_overlap=0.95),
    "fp16": Tolerance(max_abs_diff=1e-2, mean_abs_diff=2e-3, delta_auc=5e-3, min_recall_overlap=0.8),
    # Sanity bounds only (a broken artifact lands far outside); the budget decides selection, so an
    # over-budget int8 variant is rejected by the selector with its ΔAUC, not dropped as "broken".
    "dynamic": Tolerance(max_abs_diff=None, mean_abs_diff=0.1, delta_auc=0.05, min_recall_overlap=0.3),
    "int8": Tolerance(max_abs_diff=None, mean_abs_diff=0.1, delta_auc=0.05, min_recall_overlap=0.3),
    "int4": Tolerance(max_abs_diff=None, mean_abs_diff=0.1, delta_auc=0.05, min_recall_overlap=0.3),
}


def tolerance_for(precision: str) -> Tolerance:
    """The declared tolerance of one precision; unknown precisions are refused."""
    if precision not in TOLERANCES:
        raise SpecError(expected(f"a precision among {PRECISIONS}", precision))
    return TOLERANCES[precision]


# -- replay of a bundle's examples.jsonl ------------------------------------------------------
# `edgerec check`, `edgerec validate`, `Predictor.swap` and the demo compare an artifact's outputs
# on the ~32 example lines with the trained model's. The validation TOLERANCES above bound a mean
# over thousands of rows and leave int8's worst case open; a replay needs a bound on the worst
# line too. Chosen from the exported MovieLens bundles (docs/results): int8 examples differ by
# 0.035-0.040 at worst (validation: mean |Δp| 0.003-0.02 per artifact), dynamic-range by less. A
# constant-output model sits at least half the spread of the expected scores away on some line,
# and at least their mean deviation from the median on average, so on examples of a trained model
# (scores spread over tenths) it fails both bounds. Split parts are composed, so a pair gets the
# bound of its looser precision.
REPLAY_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs_diff=1e-4, mean_abs_diff=1e-5, delta_auc=TOLERANCES["fp32"].delta_auc),
    "fp16": Tolerance(max_abs_diff=1e-2, mean_abs_diff=2e-3, delta_auc=TOLERANCES["fp16"].delta_auc),
    "dynamic": Tolerance(max_abs_diff=0.2, mean_abs_diff=0.02, delta_auc=TOLERANCES["dynamic"].delta_auc),
    "int8": Tolerance(max_abs_diff=0.25, mean_abs_diff=0.03, delta_auc=TOLERANCES["int8"].delta_auc),
    # 4-bit rows move each looked-up value by up to half a row step (~1/30 of the row's range):
    # examples drift like int8's at worst, a little more on average.
    "int4": Tolerance(max_abs_diff=0.25, mean_abs_diff=0.04, delta_auc=TOLERANCES["int4"].delta_auc),
}
# A manifest's recorded max |Δ| (over the validation rows) may tighten a replay's worst-line bound
# to a margin x that figure, never below RECORDED_FLOOR (float rounding differs between machines
# and library builds), and never loosen it. Float precisions differ by rounding, the same on any
# row: RECORDED_MARGIN. A quantized artifact's worst line depends on which rows it meets: a small
# cascade test ranker's dynamic-int8 file, 0.0064 worst over its validation rows, was 0.036-0.044
# off on one of its 32 examples on an AMD EPYC host: QUANTIZED_RECORDED_MARGIN.
RECORDED_MARGIN = 2.0
QUANTIZED_RECORDED_MARGIN = 10.0
RECORDED_FLOOR = 1e-4


def replay_tolerance_for(precision: str) -> Tolerance:
    """The declared replay bound of one precision; unknown precisions are refused."""
    if precision not in REPLAY_TOLERANCES:
        raise SpecError(expected(f"a precision among {PRECISIONS}", precision))
    return REPLAY_TOLERANCES[precision]
