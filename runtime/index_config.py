"""How an export builds a cascade bundle's item index (`IndexConfig`): exact or HNSW, the graph's
degree, storage dtype and search width, and the recall target the export tunes the width for."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import SpecError, expected

KINDS = ("auto", "exact", "hnsw")
ANN_DTYPES = ("i8", "f16", "f32")
EXACT_MAX_ITEMS = 50_000
# HNSW graph degree (M). On a 2-core AMD EPYC VM, 10^6 synthetic items (32-dim f16, 200 held-out
# users, ef tuned to the recall@200 lower bound 0.95): M = 16 needed ef 792 and searched in 4.97 ms
# (p50, 1 thread), M = 32 ef 400 in 3.14 ms (recall 0.961), for 25 % more build time (342 vs 273 s)
# and 128 more link bytes per item
CONNECTIVITY = 32
DEFAULT_EF_SEARCH = 256
# an export widens ef_search (x1.25 steps) until the HNSW recall@M against exact search reaches the
# target with a margin for the users sampled, up to MAX_EF_SEARCH; a graph that cannot reach it is
# replaced by the exact index
DEFAULT_TARGET_RECALL = 0.95
MAX_EF_SEARCH = 8192
# graph-build candidate width (usearch's own default). A cheaper 40 built 2e5 clustered unit
# vectors in half the time at recall@200 0.991 (ef_search 256), but held only 0.949 at 10^6 items
DEFAULT_EXPANSION_ADD = 128


@dataclass(frozen=True)
class IndexConfig:
    """How an export builds the item index.

    Args:
        kind: ``"exact"``, ``"hnsw"`` or ``"auto"`` (exact up to ``exact_max_items`` items).
        ef_search: HNSW candidate-list width at search time (recall vs latency; raised to the
            number of results asked for).
        connectivity: HNSW graph degree (M).
        expansion_add: HNSW candidate-list width while building (build time vs graph quality).
        ann_dtype: how the HNSW graph stores vectors (``i8``, ``f16``, ``f32``). Which searches
            faster depends on the CPU: on a 2-core Xeon VM f32 took 2.96 ms against f16's 3.76 ms
            (200k clustered 32-dim vectors, ef 792, same recall@200 0.987); on a 2-core AMD EPYC
            VM a 10^5-item cascade's ``recommend()`` was 9.1 ms with f32 against 6.3 ms with f16.
            f16 is half the bytes.
        exact_max_items: the catalogue size up to which ``auto`` means exact.
        build_threads: threads used to build the graph (0: all cores).
        target_recall: the recall@M against exact search an export tunes ``ef_search`` for
            (`edgerec.converters.cascade.tune_index`); None keeps ``ef_search`` as given.
        max_ef_search: the widest ``ef_search`` tuning tries.
        exact_fallback: when no tried ``ef_search`` reaches ``target_recall``, serve the exact
            index instead (slower per request, never below the target); False keeps the graph at
            the widest setting tried and records that the target was missed.

    Examples:
        >>> IndexConfig(kind="auto").resolved_kind(10_000)
        'exact'
    """

    kind: str = "auto"
    ef_search: int = DEFAULT_EF_SEARCH
    connectivity: int = CONNECTIVITY
    expansion_add: int = DEFAULT_EXPANSION_ADD
    ann_dtype: str = "f16"
    exact_max_items: int = EXACT_MAX_ITEMS
    build_threads: int = 0
    target_recall: float | None = DEFAULT_TARGET_RECALL
    max_ef_search: int = MAX_EF_SEARCH
    exact_fallback: bool = True

    def __post_init__(self):
        if self.kind not in KINDS:
            raise SpecError(expected(f"index kind among {KINDS}", self.kind))
        if self.ann_dtype not in ANN_DTYPES:
            raise SpecError(expected(f"ann_dtype among {ANN_DTYPES}", self.ann_dtype))
        for name in ("ef_search", "connectivity", "expansion_add", "exact_max_items", "max_ef_search"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(expected(f"{name} as an int >= 1", value))
        if isinstance(self.build_threads, bool) or not isinstance(self.build_threads, int) or self.build_threads < 0:
            raise SpecError(expected("build_threads as an int >= 0", self.build_threads))
        target = self.target_recall
        if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))
                                   or not 0.0 < target <= 1.0):
            raise SpecError(expected("target_recall as None or a number in (0, 1]", target))
        if not isinstance(self.exact_fallback, bool):
            raise SpecError(expected("exact_fallback as a bool", self.exact_fallback))

    def resolved_kind(self, num_items: int) -> str:
        if self.kind != "auto":
            return self.kind
        return "exact" if num_items <= self.exact_max_items else "hnsw"

    def to_dict(self) -> dict:
        return asdict(self)
