"""Cascade bundles: a ranker bundle plus a retrieval model's user tower and the item index.

``edgerec export RANKER_DIR --retrieval R`` first exports the ranker as usual, then `add_retrieval`:

1. converts R's ``user_tower`` with the export's passes (every wanted target and precision);
2. validates each artifact against the Keras tower on R's held-out users: max/mean |Δ| of the
   user vector within the precision's tolerance, and for compressed variants the top-M items it
   retrieves overlapping those of the Keras vector by at least `CascadeSettings.min_overlap`;
   the most compressed passing variant is selected per backend (an fp32 failure stops the export);
3. builds the item index from R's ``item_vectors.npy`` (`edgerec.runtime.index`: row-quantized
   int8 exact search, or HNSW for large catalogues) and, for HNSW, tunes its search width
   (`tune_index`): ``ef_search`` widens by 25 % steps until the lower confidence bound of recall@M
   against exact search over the fp32 vectors (`recall_bound`) reaches `IndexConfig.target_recall`
   on the Keras tower's vectors of a seeded sample of held-out users other than the evaluation sample,
   else the exact index replaces the graph; the curve is recorded in the index's ``search_tuning``;
4. adds artifacts and index files to the bundle (sha256 in the manifest, index files with role
   ``item_index``), then measures THROUGH the bundle (`cascade_metrics`) the index's recall@M vs
   exact search over the fp32 vectors, fits the cascade score's retrieval weight on validation
   events, and measures the full-catalogue metrics of retrieval, ranker, cascade and popularity,
   recorded in the manifest's ``index`` (with ``cascade_score``) and ``full_catalogue`` objects.

Examples:
    >>> add_retrieval("bundles/din", "runs/retrieval", targets=("onnx",), quantize=("int8",))  # doctest: +SKIP
    {'index': {'kind': 'exact', 'recall_at_m': 0.998, ...}, 'full_catalogue': {...}}
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgerec.runtime.contract import (FULL_CATALOGUE, HELDOUT_USERS_FILE, INDEX, ITEM_VECTORS_FILE, RETRIEVAL,
                                      TOLERANCES, USER_TOWER, USER_VECTOR)
from edgerec.runtime.errors import expected
from edgerec.runtime.index import ItemIndex
from edgerec.runtime.index_config import IndexConfig
from edgerec.runtime.metrics import recall_at, user_recalls
from edgerec.runtime.spec import NUM_RESERVED, FeatureSpec

from .cascade_metrics import exact_top, load_heldout, measure_cascade
from .errors import ConverterConfigError
from .flows import ENGINE_SOURCE, convert_parts
from .select import LatencyConfig, measure_latencies
from .validate import ValidationError

logger = logging.getLogger(__name__)

MODEL_JSON = "edgerec_model.json"
# most compressed first: the first passing variant of a backend is selected
PRECISION_PREFERENCE = ("int8", "dynamic", "fp16", "fp32")
SLOWER_LIMIT = 1.10
# the seed offset of the held-out users the index search is tuned on (the ranker-alone metric uses +1)
TUNING_SEED_OFFSET = 2
# z of the one-sided 97.5 % bound the tuned recall must clear: tuned to the target exactly, an
# independent sample of users lands below it about half the time (10^5 items: 0.9510 on the
# tuning users, 0.9499 on the evaluation users)
RECALL_Z = 1.96


@dataclass(frozen=True)
class CascadeSettings:
    """How the cascade part of an export is built and measured.

    Args:
        index: how the item index is built (`IndexConfig`).
        m: items retrieved per user before ranking (recall@M of the index is measured at this M).
        eval_users: held-out users (a seeded sample) for tower validation, index recall and the
            retrieval / cascade / popularity metrics.
        ranker_users: users for the ranker-alone metric, which scores EVERY item per user.
        ranker_rows: the most user x item rows that metric scores (fewer users at large catalogues:
            at 10^6 items the default scores 2 users).
        min_overlap: the top-M overlap a compressed user tower must keep with the Keras tower.
        seed: seeds the user samples.
        retrieval_weight: the cascade score's retrieval weight in [0, 1] (`runtime.cascade_score.CascadeScore`);
            None fits it on the validation events of the eval users (`cascade_metrics.fit_cascade_score`).
    """

    index: IndexConfig = field(default_factory=IndexConfig)
    m: int = 200
    eval_users: int = 500
    ranker_users: int = 100
    ranker_rows: int = 2_000_000
    min_overlap: float = 0.9
    seed: int = 0
    retrieval_weight: float | None = None

    def __post_init__(self):
        for name in ("m", "eval_users", "ranker_users", "ranker_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConverterConfigError(expected(f"{name} as an int >= 1", value))
        if not 0.0 <= self.min_overlap <= 1.0:
            raise ConverterConfigError(expected("min_overlap in [0, 1]", self.min_overlap))
        w = self.retrieval_weight
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= w <= 1.0):
            raise ConverterConfigError(expected("retrieval_weight as None (fitted) or a number in [0, 1]", w))


@dataclass(frozen=True)
class RetrievalSource:
    """The files of a retrieval MODEL_DIR an export reads."""

    folder: Path
    tower: Path
    vectors: Path
    spec: FeatureSpec
    heldout: Path
    calibration: Path | None
    custom_objects_module: str | None
    meta: dict

    @classmethod
    def read(cls, folder) -> "RetrievalSource":
        folder = Path(folder)
        try:
            meta = json.loads((folder / MODEL_JSON).read_text("utf-8"))
        except (OSError, ValueError) as err:
            raise ConverterConfigError(expected(f"a retrieval model dir with {MODEL_JSON}", f"{folder}: {err}")) from None
        if meta.get("family") != RETRIEVAL or USER_TOWER not in meta.get("parts", {}):
            raise ConverterConfigError(expected(f"--retrieval: a model dir of family {RETRIEVAL!r} with a "
                                                f"{USER_TOWER} part", {"family": meta.get("family"),
                                                                        "parts": sorted(meta.get("parts", {}))}))
        data = meta.get("data", {})
        paths = {"tower": folder / meta["parts"][USER_TOWER],
                 "vectors": folder / meta.get("retrieval", {}).get("item_vectors", ITEM_VECTORS_FILE),
                 "spec": folder / meta.get("feature_spec", "feature_spec.json"),
                 "heldout": folder / data.get("heldout_users", HELDOUT_USERS_FILE)}
        missing = [str(p) for p in paths.values() if not p.exists()]
        if missing:
            raise ConverterConfigError(expected("every file of the retrieval model dir", f"missing {missing}"))
        calibration = folder / data["calibration"] if data.get("calibration") else None
        return cls(folder, paths["tower"], paths["vectors"], FeatureSpec.load(paths["spec"]), paths["heldout"],
                   calibration if calibration is not None and calibration.is_file() else None,
                   meta.get("custom_objects_module"), meta)


def add_retrieval(bundle, retrieval_dir, *, targets: Sequence[str] = ("tflite", "onnx"),
                  quantize: Sequence[str] = ("int8",), settings: CascadeSettings | None = None,
                  cache_dir=None, say: Callable[[str], None] | None = None) -> dict:
    """Turn the exported ranker ``bundle`` into a cascade bundle with ``retrieval_dir``'s tower
    and item vectors; returns the manifest's new ``{"index": …, "full_catalogue": …}``."""
    from edgerec.runtime.selection import load_spec
    from edgerec.runtime.manifest import load_manifest

    from .keras_io import load_keras_model
    from .pipeline import PassRunner

    settings, say = settings or CascadeSettings(), say or logger.info
    bundle, source = Path(bundle), RetrievalSource.read(retrieval_dir)
    manifest = load_manifest(bundle)
    spec = load_spec(bundle, manifest)
    if spec is None or spec.item_vocab.tokens != source.spec.item_vocab.tokens:
        raise ConverterConfigError(expected("a retrieval model over the ranker's item vocabulary",
                                            "a different item vocabulary"))
    vectors = np.load(source.vectors, allow_pickle=False)
    if vectors.ndim != 2 or vectors.shape[0] != spec.item_vocab.size:
        raise ConverterConfigError(expected(f"item vectors of shape [{spec.item_vocab.size}, D]", vectors.shape))
    users = load_heldout(source.heldout, settings.eval_users, settings.seed)
    tower = load_keras_model(source.tower, source.custom_objects_module)
    work = Path(tempfile.mkdtemp(prefix="edgerec-cascade-"))
    try:
        wanted = tuple(t for t in ("tflite", "onnx") if t in targets or ({"triton", "tensorrt"} & set(targets)
                                                                          and t == "onnx"))
        calibration = {USER_TOWER: str(source.calibration)} if source.calibration else {}
        produced = convert_parts({USER_TOWER: str(source.tower)}, wanted, quantize, calibration, PassRunner(cache_dir),
                                 work / "stage", custom_objects_module=source.custom_objects_module, say=say)
        say(f"building the item index over {len(vectors) - NUM_RESERVED} items")
        ids = ["", ""] + list(spec.item_vocab.tokens)
        index = ItemIndex.build(vectors, ids, settings.index)
        # tuned on another seeded sample of held-out users than the one the manifest's recall is
        # measured on, so that figure is not the tuning's own
        tuning = load_heldout(source.heldout, settings.eval_users, settings.seed + TUNING_SEED_OFFSET)
        queries = _vector(keras_tower_outputs(tower, tuning["inputs"]))
        index = tune_index(index, vectors, ids, queries, tuning["seen"], settings, say)
        if "search_tuning" in index.meta:
            index.meta["search_tuning"]["seed"] = int(settings.seed + TUNING_SEED_OFFSET)
        reference = _vector(keras_tower_outputs(tower, users["inputs"]))
        # the TensorRT-ready QDQ graph only feeds engine builds; no tower engine is built
        artifacts = [a for a in produced.artifacts if Path(a.path).name != ENGINE_SOURCE.file(USER_TOWER)]
        checks = validate_towers(tower, artifacts, users["inputs"], index, settings, say, reference=reference)
        passing = [c["artifact"] for c in checks if not c["failures"]]
        feeds = {n: users["inputs"][n][:256] for n in tower.input_names}
        latencies = measure_latencies(passing, {USER_TOWER: feeds}, LatencyConfig(batch_sizes=(1,)))
        for check in checks:
            ms = latencies.get(check["artifact"].file, {}).get(1)
            if ms is not None:
                check["metrics"]["latency_ms_batch1"] = ms
        selection = select_towers(checks)
        index.meta["user_tower"] = selection
        rejected = [r.to_dict() for r in produced.rejections] + [
            {"file": Path(c["artifact"].path).name, "backend": c["backend"], "part": USER_TOWER,
             "reason": "; ".join(c["failures"])} for c in checks if c["failures"]]
        write_cascade(bundle, [c for c in checks if not c["failures"]], index, rejected)
        say("measuring recall and full-catalogue metrics through the bundle")
        sections = measure_cascade(bundle, vectors, users, source.heldout, settings, say)
        finish_manifest(bundle, sections)
        return sections
    finally:
        shutil.rmtree(work, ignore_errors=True)


def keras_tower_outputs(tower, inputs: dict) -> dict:
    """The Keras user tower's outputs on the held-out user arrays it takes."""
    from .validate import keras_outputs

    return keras_outputs(tower, _tower_feeds(tower, inputs))


def _tower_feeds(tower, inputs: dict) -> dict:
    names = list(tower.input_names)
    feeds = {n: inputs[n] for n in names if n in inputs}
    missing = [n for n in names if n not in feeds]
    if missing:
        raise ValidationError(expected(f"held-out user arrays for the user tower inputs {names}", f"missing {missing}"))
    return feeds


def tune_index(index: ItemIndex, vectors: np.ndarray, ids, queries: np.ndarray, seen, settings: CascadeSettings,
               say) -> ItemIndex:
    """An HNSW ``index`` searching with the smallest ``ef_search`` whose recall@M against exact
    search over the fp32 ``vectors`` reaches ``settings.index.target_recall`` on ``queries``
    (user vectors, each user's ``seen`` rows excluded on both sides) — the lower confidence bound
    of the per-user recall (`recall_bound`), widened in 25 % steps from M up to ``max_ef_search``;
    when none does and ``exact_fallback`` is set, an exact index over the same vectors instead.
    The index's ``meta["search_tuning"]`` records the target, the users and every setting tried
    with its recall (an exact index is returned untouched: it is the reference)."""
    config, m = settings.index, settings.m
    if index.kind != "hnsw" or config.target_recall is None or not len(queries):
        return index
    # the reference product in the queries' dtype, cast once (a float32 table times a float64 query
    # would be copied to float64 for every query)
    exact = np.asarray(np.asarray(vectors, np.float32), np.result_type(np.float32, queries.dtype))
    truth = [exact_top(exact, q, m, s) for q, s in zip(queries, seen)]
    tried, ef = [], max(m, 1)
    while True:
        ef = min(ef, config.max_ef_search)
        index.set_ef_search(ef)
        found = [index.search(q, m, exclude=s)[0] for q, s in zip(queries, seen)]
        recall, lower = recall_bound(user_recalls(found, truth))
        tried.append({"ef_search": ef, f"recall@{m}": round(recall, 4), "lower_bound": round(lower, 4)})
        say(f"  HNSW ef_search {ef}: recall@{m} {recall:.4f} (lower bound {lower:.4f}) vs exact ({len(truth)} users)")
        if lower >= config.target_recall or ef >= config.max_ef_search:
            break
        ef = _wider(ef)
    met = lower >= config.target_recall      # the measured value, not its rounded record
    record = {"target": float(config.target_recall), "m": int(m), "users": len(truth), "tried": tried,
              "criterion": f"mean - {RECALL_Z:g} x standard error of the per-user recall >= target",
              "reference": "exact dot product over the fp32 item vectors, seen items excluded; Keras tower vectors",
              "met": bool(met)}
    if met or not config.exact_fallback:
        record["chosen"] = {"kind": "hnsw", "ef_search": int(index.ef_search)}
        index.meta["search_tuning"] = record
        return index
    say(f"  no ef_search up to {config.max_ef_search} reaches recall {config.target_recall:g}: exact index instead")
    exact_index = ItemIndex.build(vectors, ids, replace(config, kind="exact"))
    record["chosen"] = {"kind": "exact", "reason": f"HNSW recall@{m} lower bound {tried[-1]['lower_bound']:.4f} "
                                                   f"< target {config.target_recall:g} at ef_search "
                                                   f"{tried[-1]['ef_search']}"}
    exact_index.meta["search_tuning"] = record
    return exact_index


def recall_bound(per_user: np.ndarray) -> tuple[float, float]:
    """Mean recall over the sampled users and its lower confidence bound (mean − `RECALL_Z`
    standard errors): the tuning stops on the bound, so that another sample of users (the
    manifest's measurement, the app's users) still sees the target."""
    mean = float(per_user.mean())
    if per_user.size < 2:
        return mean, mean
    return mean, mean - RECALL_Z * float(per_user.std(ddof=1)) / float(np.sqrt(per_user.size))


def _wider(ef: int) -> int:
    """The next ef_search tried: 25 % wider (a doubling overshoots: search cost grows with it),
    rounded up to a multiple of 8."""
    return int(-(-int(ef * 1.25) // 8) * 8)


def validate_towers(tower, artifacts, inputs: dict, index: ItemIndex, settings: CascadeSettings, say,
                    reference: np.ndarray | None = None) -> list[dict]:
    """Each tower artifact against the Keras tower (``reference``: its user vectors, computed when
    None): ``{"artifact", "backend", "metrics", "failures"}``."""
    from edgerec.runtime.contract import BACKEND_FOR_FORMAT

    from .validate import backend_outputs

    feeds = _tower_feeds(tower, inputs)
    if reference is None:
        reference = _vector(keras_tower_outputs(tower, inputs))
    truth = [index.search(u, settings.m)[0] for u in reference]
    checks = []
    for art in artifacts:
        say(f"validating {Path(art.path).name} ({art.format}/{art.precision}/{USER_TOWER})")
        failures, metrics = [], {}
        try:
            produced = _vector(backend_outputs(art, feeds)[0])
        except (ValidationError, RuntimeError, ValueError, OSError) as err:
            produced, failures = None, [f"could not run: {type(err).__name__}: {err}"[:600]]
        if produced is not None:
            diff = np.abs(produced.astype(np.float64) - reference)
            found = [index.search(u, settings.m)[0] for u in produced]
            metrics = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()), "rows": len(reference),
                       f"topm_overlap@{settings.m}": recall_at(found, truth)}
            tol = TOLERANCES[art.precision]
            if tol.max_abs_diff is not None and metrics["max_abs_diff"] > tol.max_abs_diff:
                failures.append(f"max_abs_diff {metrics['max_abs_diff']:.3g} > tolerance {tol.max_abs_diff:g}")
            if metrics["mean_abs_diff"] > tol.mean_abs_diff:
                failures.append(f"mean_abs_diff {metrics['mean_abs_diff']:.3g} > tolerance {tol.mean_abs_diff:g}")
            overlap = metrics[f"topm_overlap@{settings.m}"]
            if art.precision != "fp32" and overlap < settings.min_overlap:
                failures.append(f"top-{settings.m} overlap {overlap:.3f} < {settings.min_overlap:g}")
        checks.append({"artifact": art, "backend": BACKEND_FOR_FORMAT[art.format], "metrics": metrics,
                       "failures": failures})
    broken = [c for c in checks if c["artifact"].precision == "fp32" and c["failures"]]
    if broken:
        raise ValidationError(expected("every fp32 user tower artifact to match Keras",
                                       "; ".join(f"{Path(c['artifact'].path).name}: {', '.join(c['failures'])}"
                                                 for c in broken)))
    return checks


def select_towers(checks: list[dict]) -> dict[str, str]:
    """backend -> the most compressed passing user tower artifact at most `SLOWER_LIMIT` x slower
    than fp32 at batch 1 (the tower runs once per request: a slower int8 graph saves nothing)."""
    selection = {}
    for backend in sorted({c["backend"] for c in checks}):
        mine = [c for c in checks if c["backend"] == backend and not c["failures"]]
        fp32 = [c["metrics"].get("latency_ms_batch1") for c in mine if c["artifact"].precision == "fp32"]
        limit = SLOWER_LIMIT * fp32[0] if fp32 and fp32[0] else None
        for precision in PRECISION_PREFERENCE:
            fits = [c for c in mine if c["artifact"].precision == precision and (
                limit is None or precision == "fp32" or c["metrics"].get("latency_ms_batch1", 0.0) <= limit)]
            if fits:
                selection[backend] = Path(fits[0]["artifact"].path).name
                break
    return selection


def write_cascade(bundle: Path, checks: list[dict], index: ItemIndex, rejected: list) -> None:
    """Copy the passing tower artifacts and the index files into ``bundle`` and list them."""
    from edgerec.runtime.backends import create_backend
    from edgerec.runtime.io import sha256_file
    from edgerec.runtime.manifest import Artifact, file_entry, load_manifest, write_manifest

    from .shared_tables import share_bundle

    manifest = load_manifest(bundle, verify=False)
    names = {a.file for a in manifest.artifacts} | {f["file"] for f in manifest.files}
    for check in checks:
        art, name = check["artifact"], Path(check["artifact"].path).name
        if name in names:
            raise ConverterConfigError(expected("user tower artifact names new to the bundle", name))
        shutil.copyfile(art.path, bundle / name)
        with create_backend(check["backend"], bundle / name) as backend:
            inputs, outputs = list(backend.inputs), list(backend.outputs)
        manifest.artifacts.append(Artifact(
            file=name, format=art.format, precision=art.precision, part=USER_TOWER,
            sha256=sha256_file(bundle / name), size_bytes=(bundle / name).stat().st_size, inputs=inputs,
            outputs=outputs, validation=check["metrics"], lineage=json.loads(json.dumps(list(art.lineage), default=str)),
            details=json.loads(json.dumps(dict(art.details), default=str))))
    for name in index.save(bundle):
        manifest.files.append(file_entry(bundle, name, "item_index"))
    manifest.rejected.extend(rejected)
    write_manifest(bundle, manifest)
    # the towers' item tables (one per precision) are stored once like the ranker's
    share_bundle(bundle)


def finish_manifest(bundle: Path, sections: dict) -> None:
    """Add the top-level ``index`` and ``full_catalogue`` objects to the bundle's manifest."""
    from edgerec.runtime.io import atomic_write_json
    from edgerec.runtime.manifest import MANIFEST_NAME, load_manifest

    bundle = Path(bundle)
    data = load_manifest(bundle, verify=False).to_dict()
    data[INDEX], data[FULL_CATALOGUE] = sections[INDEX], sections[FULL_CATALOGUE]
    atomic_write_json(bundle / MANIFEST_NAME, data)


def _vector(outputs: dict) -> np.ndarray:
    value = outputs[USER_VECTOR] if USER_VECTOR in outputs else next(iter(outputs.values()))
    return np.asarray(value, np.float64).reshape(len(value), -1)

