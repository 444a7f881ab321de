"""Variant selection: per backend and part, the validated artifact within budget that best meets an objective.

Latency comes from `edgerec.converters.latency` (measured here in interleaved rounds through
`edgerec.runtime.backends`, or read from the target device's ``edgerec bench`` results).

Rules (each rejection keeps its reason):
* an artifact that failed validation is rejected;
* a compressed variant (fp16/dynamic/int8/int4) whose |ΔAUC| exceeds the budget (default 0.003),
  or that has no ΔAUC because the data had no labels, is rejected;
* a compressed fused variant whose scores over the validator's candidate sweep (1,000 candidates
  of one user) are less than `MIN_DISTINCT_SCORES` (99 %) distinct or tie inside the top 10 is
  rejected with the measured figures (`resolution_problem`), and so are the split parts of the same
  variant (``scorer_<variant>``, ``user_encoder_<variant>``): their scores come from the same graph;
  one with no sweep where others of its (backend, part) group have one is rejected too (the sweep
  failed to run on it: its resolution is unknown);
* then the objective decides (`OBJECTIVES`):
  ``latency`` — a compressed variant slower than fp32 at the selection batch size by more than
  ``slower_margin`` (5 %) is rejected; the fastest at that batch size is selected;
  ``size`` — the smallest file is selected, whatever its speed;
  ``balanced`` (``edgerec export``'s default) — a compressed variant slower than fp32 by more
  than ``balanced_margin`` (10 %, i.e. 1.10x) at ANY timed batch size (1 and 256 by default) is
  rejected; the smallest of the rest is selected (ties: the fastest).

Latency normally comes from this machine (`latency.measure_latencies`); `latency.bench_latencies`
reads ``edgerec bench`` results measured on the target device instead (``--latency-from BENCH.json``).
Both are importable from here too.

An artifact whose backend cannot run on the exporting machine (a TensorRT engine built without the
GPU runtime) can be neither validated nor timed: `select_unverified` adds it to the table marked
``verified: false`` and selects it only when the artifact it was built from was accepted.
`candidates_table` renders the table as text.

Examples:
    >>> latencies = measure_latencies(artifacts, {"fused": data.inputs})
    >>> selection = select_variants(report, latencies, budget=0.003)
    >>> selection.selected
    {'litert': {'fused': 'fused_dynamic.tflite'}, 'onnxruntime': {'fused': 'fused_fp32.onnx'}}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from edgerec.runtime.errors import expected

from .latency import LatencyConfig, bench_latencies, latency_feeds, measure_latencies  # noqa: F401 - public here
from .specs import DEFAULT_BUDGET, MIN_DISTINCT_SCORES
from .validate import BACKEND_FOR_FORMAT, ValidationError, ValidationReport, as_deployable

COMPRESSED = ("fp16", "dynamic", "int8", "int4")
OBJECTIVES = ("latency", "size", "balanced")
BALANCED_MARGIN = 0.10


@dataclass(frozen=True)
class Rejection:
    """An artifact the export could not produce or had to leave out, with the specific reason."""

    file: str
    backend: str
    reason: str
    part: str | None = None
    mode: str | None = None
    blocked_by: tuple = ()
    stage: str = "conversion"

    def to_dict(self) -> dict:
        """The ``manifest.rejected`` / ``lineage["impossible"]`` entry."""
        out = {"file": self.file, "backend": self.backend, "stage": self.stage, "reason": self.reason}
        out.update({k: v for k, v in (("part", self.part), ("mode", self.mode)) if v is not None})
        if self.blocked_by:
            out["blocked_by"] = list(self.blocked_by)
        return out


@dataclass
class Selection:
    table: list = field(default_factory=list)       # one row per artifact (manifest.candidates)
    selected: dict = field(default_factory=dict)    # {backend: {part: file}}
    rejected: list = field(default_factory=list)    # [{"file", "backend", "reason"}]

    def row(self, file: str) -> dict:
        for row in self.table:
            if row["file"] == file:
                return row
        raise ValidationError(expected(f"a table row named {file!r}", [r["file"] for r in self.table]))


def select_variants(report: ValidationReport, latencies: Mapping[str, Mapping[int, float]],
                    budget: float = DEFAULT_BUDGET, backends: Sequence[str] | None = None,
                    selection_batch: int | None = None, slower_margin: float = 0.05,
                    sizes: Mapping[str, int] | None = None, objective: str = "latency",
                    balanced_margin: float = BALANCED_MARGIN) -> Selection:
    """Pick, per backend and part, the artifact within budget that best meets ``objective``; keep the table.

    Args:
        report: the `ValidationReport` of every candidate.
        latencies: ``{file: {batch: ms}}`` from `measure_latencies`.
        budget: largest |ΔAUC| (vs Keras, paired rows) allowed for a compressed variant.
        backends: restrict to these backends (default: every backend with candidates).
        selection_batch: batch size that decides "fastest"/"slower" (default the largest timed).
        slower_margin: a compressed variant more than this fraction slower than fp32 is rejected.
        sizes: ``{file: bytes}`` for the table (read from disk when omitted).
        objective: ``latency`` (fastest), ``size`` (smallest) or ``balanced`` (smallest not slower than
            fp32 by more than ``balanced_margin`` at any timed batch size); see the module doc.
        balanced_margin: the slowdown vs fp32 ``balanced`` tolerates (0.10 = 1.10x).
    """
    if not (isinstance(budget, (int, float)) and 0 <= budget < 1):
        raise ValidationError(expected("an accuracy budget (|ΔAUC|) in [0, 1)", budget))
    if objective not in OBJECTIVES:
        raise ValidationError(expected(f"a selection objective in {OBJECTIVES}", objective))
    if backends is not None:
        unknown = sorted(set(backends) - set(BACKEND_FOR_FORMAT.values()))
        if unknown:
            raise ValidationError(expected(f"backends among {sorted(BACKEND_FOR_FORMAT.values())}", unknown))
    selection = Selection()
    groups: dict[tuple, list] = {}
    for res in report.results:
        backend = BACKEND_FOR_FORMAT[res.format]
        if backends is not None and backend not in backends:
            continue
        groups.setdefault((backend, res.part), []).append(res)
    composed = _composition_deltas(report)
    coarse = _coarse_variants(report)
    for (backend, part), members in groups.items():
        fp32 = next((r for r in members if r.precision == "fp32" and r.passed), None)
        swept = any(r.metrics.get("score_resolution") for r in members)   # the rows allow a candidate sweep
        rows = []
        for res in members:
            lat = dict(latencies.get(res.file, {}))
            batch = selection_batch or (max(lat) if lat else None)
            size = (sizes or {}).get(res.file)
            if size is None and Path(res.path).is_file():
                size = Path(res.path).stat().st_size
            fp32_size = (sizes or {}).get(fp32.file) if fp32 else None
            if fp32 and fp32_size is None and Path(fp32.path).is_file():
                fp32_size = Path(fp32.path).stat().st_size
            row = {"file": res.file, "backend": backend, "part": part, "format": res.format,
                   "precision": res.precision, "size_bytes": size,
                   "size_ratio": (size / fp32_size) if size and fp32_size else None,
                   "delta_auc": res.metrics.get("delta_auc"), "auc": res.metrics.get("auc"),
                   "mean_abs_dp": res.metrics.get("mean_abs_dp"),
                   "max_abs_diff": res.metrics.get("max_abs_diff"),
                   **{k: v for k, v in (res.metrics.get("score_resolution") or {}).items() if k != "candidates"},
                   **{f"latency_ms_b{b}": ms for b, ms in sorted(lat.items())},
                   "status": "accepted", "reason": ""}
            if part == "user_encoder" and res.file in composed:
                # no probability of its own: judged by user_encoder -> scorer against the Keras fused model
                row["delta_auc"], row["delta_auc_source"] = composed[res.file], "composition"
            reason = _rejection(res, lat, batch, fp32, latencies, budget, slower_margin, row["delta_auc"], objective,
                                balanced_margin, swept) or coarse.get((backend, _variant_of(res.file, part)), "")
            if reason:
                row["status"], row["reason"] = "rejected", reason
                selection.rejected.append({"file": res.file, "backend": backend, "reason": reason})
            rows.append(row)
        accepted = [r for r in rows if r["status"] == "accepted" and r.get(_lat_key(r, selection_batch))]
        if accepted:
            speed = lambda r: r[_lat_key(r, selection_batch)]  # noqa: E731
            key = (lambda r: (speed(r), r["size_bytes"] or 0)) if objective == "latency" else \
                (lambda r: (r["size_bytes"] or 0, speed(r)))
            best = min(accepted, key=key)
            best["status"] = "selected"
            selection.selected.setdefault(backend, {})[part] = best["file"]
        selection.table.extend(rows)
    return selection


def _lat_key(row: dict, batch: int | None = None) -> str:
    if batch is not None:
        return f"latency_ms_b{batch}"
    keys = sorted((k for k in row if k.startswith("latency_ms_b")), key=lambda k: int(k[len("latency_ms_b"):]))
    return keys[-1] if keys else "latency_ms_b?"


def _composition_deltas(report: ValidationReport) -> dict[str, float]:
    """``{user_encoder file: ΔAUC of user_encoder -> scorer vs the Keras fused model}``.

    The scorer of the same variant (``user_encoder_X`` -> ``scorer_X``) is preferred; otherwise the
    best validated pairing of the same format and precision counts.
    """
    found: dict[str, float] = {}
    matched: set[str] = set()
    for comp in report.compositions:
        delta = comp["metrics"].get("delta_auc")
        if delta is None or comp["failures"]:
            continue
        ue, sc = comp["user_encoder"], comp["scorer"]
        if ue.replace("user_encoder", "scorer", 1) == sc:
            found[ue] = delta
            matched.add(ue)
        elif ue not in matched and (ue not in found or abs(delta) < abs(found[ue])):
            found[ue] = delta
    return found


def resolution_problem(resolution: Mapping | None, minimum: float = MIN_DISTINCT_SCORES) -> str:
    """Why a compressed variant's score resolution (``metrics["score_resolution"]``) is too coarse, or "".

    Examples:
        >>> resolution_problem({"candidates": 1000, "distinct_fraction": 0.906, "top10_tied": 6})
        'score resolution: 906 distinct scores among 1000 candidates (90.6% < 99%), 6 of the top 10 tied'
    """
    if not resolution or not resolution.get("candidates"):
        return ""
    count = int(resolution["candidates"])
    distinct = float(resolution.get("distinct_fraction", 1.0))
    tied_key = next((k for k in resolution if k.startswith("top") and k.endswith("_tied")), None)
    tied = int(resolution.get(tied_key) or 0) if tied_key else 0
    problems = []
    if distinct < minimum:
        problems.append(f"{round(distinct * count)} distinct scores among {count} candidates "
                        f"({distinct:.1%} < {minimum:.0%})")
    if tied:
        problems.append(f"{tied} of the top {tied_key[3:-5]} tied")
    return "score resolution: " + ", ".join(problems) if problems else ""


def _variant_of(file: str, part: str) -> str:
    """``fused_qdq_int8.onnx`` -> ``qdq_int8.onnx``: the variant a part's file belongs to."""
    return file[len(part) + 1:] if file.startswith(part + "_") else file


def _coarse_variants(report: ValidationReport) -> dict[tuple, str]:
    """``{(backend, variant): reason}`` for the compressed split parts whose fused variant is too coarse."""
    found = {}
    for res in report.results:
        if res.part != "fused" or res.precision not in COMPRESSED:
            continue
        problem = resolution_problem(res.metrics.get("score_resolution"))
        if problem:
            key = (BACKEND_FOR_FORMAT[res.format], _variant_of(res.file, "fused"))
            found[key] = f"its fused variant {res.file}: {problem}"
    return found


def _rejection(res, lat, batch, fp32, latencies, budget, margin, delta, objective="latency",
               balanced_margin=BALANCED_MARGIN, swept=False) -> str:
    if not res.passed:
        return "failed validation: " + "; ".join(res.failures)
    if not lat or batch not in lat:
        return f"no latency measured at batch {batch} on this machine"
    if res.precision not in COMPRESSED:
        return ""
    if delta is None:
        if res.part == "user_encoder":
            return "no validated user_encoder -> scorer composition of this precision to measure ΔAUC"
        return "no labelled rows to measure ΔAUC against the budget"
    if abs(delta) > budget:
        auc = res.metrics.get("auc")
        return f"|ΔAUC| {abs(delta):.4f} exceeds the budget {budget:g}" + (f" (AUC {auc:.4f})" if auc else "")
    coarse = resolution_problem(res.metrics.get("score_resolution")) if res.part == "fused" else ""
    if coarse:
        return coarse
    if res.part == "fused" and swept and not res.metrics.get("score_resolution"):
        return ("no score resolution measured: the candidate sweep did not run on this artifact "
                "(others of its backend had one)")
    if fp32 is None or objective == "size":
        return ""
    checked = [batch] if objective == "latency" else sorted(lat)
    limit = margin if objective == "latency" else balanced_margin
    for b in checked:
        base = latencies.get(fp32.file, {}).get(b)
        if base and lat[b] > base * (1.0 + limit):
            return (f"slower than fp32 at batch {b}: {lat[b]:.4f} ms vs {base:.4f} ms "
                    f"({lat[b] / base:.2f}x > {1.0 + limit:.2f}x)")
    return ""


def select_unverified(selection: Selection, artifacts: Sequence, reasons: Mapping[str, str],
                      budget: float = DEFAULT_BUDGET) -> None:
    """Add artifacts that could not be validated or timed here (``reasons``: file -> why) to ``selection``.

    Such an artifact is built from another one (``details["source"]``, e.g. the TensorRT-ready ONNX
    of an engine): it is accepted only when that source passed validation and, for a compressed
    precision, its |ΔAUC| is within ``budget`` (its latency here says nothing about the other
    backend's). An accepted one is selected for its (backend, part) unless a validated artifact
    already is. Rows carry ``verified: False`` and the reason.
    """
    for art in (as_deployable(a) for a in artifacts):
        backend = BACKEND_FOR_FORMAT[art.format]
        row = {"file": art.file, "backend": backend, "part": art.part, "format": art.format,
               "precision": art.precision, "size_bytes": Path(art.path).stat().st_size, "size_ratio": None,
               "delta_auc": None, "verified": False, "status": "accepted", "reason": reasons[art.file]}
        source = art.details.get("source")
        found = [r for r in selection.table if r["file"] == source]
        problem = _source_problem(source, found[0] if found else None, art.precision, budget)
        if problem:
            row["status"], row["reason"] = "rejected", f"not verified here ({reasons[art.file]}) and {problem}"
            selection.rejected.append({"file": art.file, "backend": backend, "stage": "selection",
                                       "reason": row["reason"]})
        else:
            row["delta_auc"], row["delta_auc_source"] = found[0].get("delta_auc"), source
            if art.part not in selection.selected.get(backend, {}):
                row["status"] = "selected"
                selection.selected.setdefault(backend, {})[art.part] = art.file
        selection.table.append(row)


def _source_problem(source: str | None, row: Mapping | None, precision: str, budget: float) -> str:
    if row is None:
        return f"its source {source} was not produced"
    if str(row.get("reason", "")).startswith("failed validation"):
        return f"its source {source} {row['reason']}"
    delta = row.get("delta_auc")
    if precision in COMPRESSED and (delta is None or abs(delta) > budget):
        return (f"its source {source} has no ΔAUC to check against the budget" if delta is None else
                f"its source {source} has |ΔAUC| {abs(delta):.4f} over the budget {budget:g}")
    return ""


def candidates_table(rows: Sequence[Mapping]) -> str:
    """The selection table (``manifest.candidates``) as fixed-width text: size, ratio, ΔAUC, latency
    per batch, status and reason."""
    lat_keys = sorted({k for r in rows for k in r if k.startswith("latency_ms_b")},
                      key=lambda k: int(k[len("latency_ms_b"):]))
    head = f"{'file':<30} {'backend':<11} {'KB':>8} {'x fp32':>7} {'ΔAUC':>8} " + \
        " ".join(f"{'ms@' + k[len('latency_ms_b'):]:>9}" for k in lat_keys) + "  status"
    lines = [head, "-" * len(head)]

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    for r in rows:
        lines.append(f"{r['file']:<30} {r['backend']:<11} {fmt((r.get('size_bytes') or 0) / 1024, '8.1f')} "
                     f"{fmt(r.get('size_ratio'), '7.2f')} {fmt(r.get('delta_auc'), '+8.4f')} " +
                     " ".join(f"{fmt(r.get(k), '9.4f')}" for k in lat_keys) +
                     f"  {r['status']}{': ' + r['reason'] if r.get('reason') else ''}")
    return "\n".join(lines)
