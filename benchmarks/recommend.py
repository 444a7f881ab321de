"""`recommend()` latency of a cascade bundle, and synthetic cascade bundles of any catalogue size.

`recommend_rows` is the ``recommend`` section of ``edgerec bench`` (bundles with an item index):
per backend, p50/p99 of ``Predictor.recommend(request, k, m)`` at 1 thread, over the bundle's
example requests, each call with a fresh user (user-vector cache off: the tower runs every time).

`full_catalogue_section` is the ``full_catalogue`` section beside them: the manifest's
full-catalogue blocks (retrieval, ranker, cascade, popularity, measured by the export) next to
the ranker's sampled metrics, and, when the held-out users are at hand (the model dir's
``heldout_users.npz``), the retrieval and cascade blocks re-measured through every user tower
artifact of each backend (`edgerec.converters.cascade_metrics.remeasure`).

`synthetic_cascade` writes a cascade bundle whose ranker and user tower are tiny hand-made ONNX
graphs and whose item vectors are clustered Gaussians: it isolates what grows with the catalogue
(the index search, the bundle's bytes and load time) from the ranker's cost per candidate.

Examples:
    >>> bundle = synthetic_cascade("/tmp/c1e6", items=1_000_000)               # doctest: +SKIP
    >>> recommend_rows(bundle, ["onnxruntime"])[0]["p50_ms"]                     # doctest: +SKIP
    2.1
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np

from .stats import LoopLimits, summarize, timed_calls

SEQ, DIM, CENTRES = 8, 32, 1000


def _requests(bundle: Path, count: int) -> list[dict]:
    from edgerec.runtime.examples import ExampleSet
    from edgerec.runtime.manifest import load_manifest

    lines = [dict(line) for line in ExampleSet.load(bundle, load_manifest(bundle, verify=False)).lines[:count]]
    return [{k: v for k, v in line.items() if k in ("user_id", "history", "context", "dense")} for line in lines]


def recommend_rows(bundle, backends: Sequence[str], k: int = 10, m: int = 200, calls: int = 300,
                   requests: Sequence[dict] | None = None, stage_calls: int = 100) -> list[dict]:
    """One row per backend: ``{"scenario": "recommend", "backend", "threads": 1, "k", "m", "calls",
    "p50_ms", "p99_ms", "mean_ms", "cpu_p50_ms", "cpu_p99_ms", "load_1m"}`` (or ``"error"``).

    ``cpu_*`` is the process's CPU time per call (every thread: numpy's BLAS workers too); on a
    shared machine the wall times also hold the time the call waited for a core, which
    ``load_1m`` (the 1-minute load average at the end) puts in context. ``stages``: the same
    calls' cost per stage (`recommend_stages`, ``stage_calls`` more calls)."""
    import edgerec.runtime as rt
    from edgerec.runtime.errors import EdgeRecError

    bundle = Path(bundle)
    requests = list(requests) if requests is not None else _requests(bundle, 64)
    rows = []
    for backend in backends:
        row = {"scenario": "recommend", "backend": backend, "threads": 1, "k": k, "m": m}
        try:
            with rt.load(bundle, backend=backend, num_threads=1, cache=False) as predictor:
                for request in requests[:5]:
                    predictor.recommend(request, k=k, m=m)
                times, cpu = [], []
                for i in range(calls):
                    start, start_cpu = time.perf_counter(), time.process_time()
                    predictor.recommend(requests[i % len(requests)], k=k, m=m)
                    cpu.append(time.process_time() - start_cpu)
                    times.append(time.perf_counter() - start)
        except EdgeRecError as err:
            rows.append({**row, "error": f"{type(err).__name__}: {err}"})
            continue
        ms, cpu_ms = np.asarray(times) * 1e3, np.asarray(cpu) * 1e3
        rows.append({**row, "calls": calls, "p50_ms": float(np.percentile(ms, 50)),
                     "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
                     "cpu_p50_ms": float(np.percentile(cpu_ms, 50)), "cpu_p99_ms": float(np.percentile(cpu_ms, 99)),
                     "load_1m": _load(), "stages": recommend_stages(bundle, backend, k, m, stage_calls, requests)})
    return rows


def recommend_stages(bundle, backend: str = "onnxruntime", k: int = 10, m: int = 200, calls: int = 100,
                     requests: Sequence[dict] | None = None) -> dict:
    """``{stage: {"wall_p50_ms", "cpu_p50_ms", "wall_mean_ms", "cpu_mean_ms"}}`` of ``calls``
    `recommend` calls at 1 thread, user-state caches off (stages: `runtime.recommend.StageClock`)."""
    import edgerec.runtime as rt
    from edgerec.runtime.recommend import StageClock, recommend

    requests = list(requests) if requests is not None else _requests(Path(bundle), 64)
    clock = StageClock()
    with rt.load(bundle, backend=backend, num_threads=1, cache=False) as predictor:
        model = predictor._model
        for i in range(5 + calls):
            if i == 5:
                clock = StageClock()                # the warm-up calls are not booked
            recommend(model, predictor, requests[i % len(requests)], k, m, True, None, False, clock)
    return {stage: {"wall_p50_ms": float(np.median(clock.wall[stage])) * 1e3,
                    "cpu_p50_ms": float(np.median(clock.cpu[stage])) * 1e3,
                    "wall_mean_ms": float(np.mean(clock.wall[stage])) * 1e3,
                    "cpu_mean_ms": float(np.mean(clock.cpu[stage])) * 1e3} for stage in clock.wall}


USER_BATCHES = (1, 8, 64, 256, 1024)


def recommend_batch_rows(bundle, providers: Sequence[str] | None = None, batches: Sequence[int] = USER_BATCHES,
                         k: int = 10, m: int = 200, budget_s: float = 2.0, num_threads: int | None = None,
                         check_users: int = 16) -> list[dict]:
    """``Predictor.recommend_batch`` on ONNX Runtime with ``providers`` (None: the backend's
    choice), one row per batch of users: ``{"users", "calls", "p50_ms", "p99_ms", "ms_per_user",
    "users_per_s", "same_as_single"}``. Each user is a distinct request (the bundle's examples
    under fresh user ids, caches off); ``same_as_single`` is the share of the first
    ``check_users`` users whose batched top k equals their own `recommend` call's."""
    import edgerec.runtime as rt

    bundle = Path(bundle)
    base = _requests(bundle, 64)
    # the first call of each batch (the comparison with `recommend`) is the warm-up
    limits = LoopLimits(budget_s=budget_s, max_iters=200, min_iters=3, warmup_iters=0)
    options = {"cache": False, **({"providers": list(providers)} if providers else {}),
               **({"num_threads": num_threads} if num_threads else {})}
    rows = []
    with rt.load(bundle, backend="onnxruntime", **options) as predictor:
        for users in batches:
            requests = [{**base[i % len(base)], "user_id": f"batch-user-{i}"} for i in range(users)]
            first = predictor.recommend_batch(requests, k=k, m=m)
            single = [predictor.recommend(r, k=k, m=m).items for r in requests[:check_users]]
            same = float(np.mean([a.items == b for a, b in zip(first, single)]))
            stats = summarize(timed_calls(lambda: predictor.recommend_batch(requests, k=k, m=m), limits), users)
            p50 = stats.p50_ms
            rows.append({"scenario": "recommend_batch", "users": users, "k": k, "m": m, "calls": stats.iterations,
                         "p50_ms": p50, "p99_ms": stats.p99_ms, "ms_per_user": p50 / users,
                         "users_per_s": users / (p50 / 1e3), "same_as_single": same,
                         "session_providers": {part: info.get("providers")
                                               for part, info in predictor.stats()["backend_info"].items()}})
    return rows


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def recommend_markdown(rows: Sequence[dict]) -> list[str]:
    """The bench.md table of `recommend_rows`."""
    out = ["", "## recommend (user tower + index + ranker, 1 thread)", "",
           "| backend | k | m | p50 ms | p99 ms | CPU p50 ms | CPU p99 ms | load (1 min) |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['backend']} | {r['k']} | {r['m']} | error: {r['error'][:80]} | | | | |")
            continue
        cpu = [f"{r[key]:.2f}" if r.get(key) is not None else "" for key in ("cpu_p50_ms", "cpu_p99_ms")]
        load = "" if r.get("load_1m") is None else f"{r['load_1m']:.2f}"
        out.append(f"| {r['backend']} | {r['k']} | {r['m']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                   f"{cpu[0]} | {cpu[1]} | {load} |")
    for r in rows:
        if r.get("stages"):
            out += ["", f"per stage ({r['backend']}):", "", "| stage | wall p50 ms | CPU p50 ms | wall mean ms |",
                    "|---|---|---|---|"]
            out += [f"| {name} | {t['wall_p50_ms']:.3f} | {t['cpu_p50_ms']:.3f} | {t['wall_mean_ms']:.3f} |"
                    for name, t in r["stages"].items()]
    return out


SAMPLED_KEYS = ("auc", "recall@10", "ndcg@10")


def full_catalogue_section(bundle, manifest, backends: Sequence[str], heldout=None) -> dict:
    """``{"recorded": {stage: block}, "sampled": {file: {auc, recall@10, ndcg@10}}, "cascade_score",
    "measured": remeasure's dict or None, "note"}`` for a cascade bundle."""
    from edgerec.runtime.contract import USER_TOWER
    from edgerec.runtime.errors import EdgeRecError

    section = {"recorded": dict(manifest.full_catalogue or {}),
               "cascade_score": (manifest.index or {}).get("cascade_score"),
               "sampled": {a.file: {k: a.validation[k] for k in SAMPLED_KEYS if k in a.validation}
                           for a in manifest.artifacts if a.part != USER_TOWER
                           and any(k in a.validation for k in SAMPLED_KEYS)},
               "measured": None, "note": None}
    path = Path(heldout) if heldout is not None else None
    if path is None or not path.is_file():
        section["note"] = ("not re-measured: no held-out users (pass the model dir with keras_dir / --keras-dir, "
                           "whose heldout_users.npz the export measured)")
        return section
    from edgerec.converters.cascade_metrics import remeasure

    try:
        section["measured"] = remeasure(bundle, path, backends)
    except (EdgeRecError, ValueError, OSError) as err:
        section["note"] = f"re-measurement failed: {type(err).__name__}: {err}"[:400]
    return section


def full_catalogue_markdown(section: dict) -> list[str]:
    """The bench.md tables of `full_catalogue_section`."""
    keys = ("hr@10", "ndcg@10", "recall@100")
    out = ["", "## full catalogue (all items ranked, seen items excluded; recorded by export)", "",
           "| stage | users | HR@10 | NDCG@10 | recall@100 |", "|---|---|---|---|---|"]
    for stage, block in section.get("recorded", {}).items():
        out.append(f"| {stage} | {block.get('users', '')} | " + " | ".join(f"{block[k]:.4f}" for k in keys) + " |")
    fusion = section.get("cascade_score") or {}
    if fusion:
        out += ["", f"cascade score: retrieval weight {fusion.get('retrieval_weight', 0):.2f}, "
                    f"{fusion.get('ranker_transform', 'identity')} ranker scores"]
    if section.get("sampled"):
        out += ["", "| artifact | sampled AUC | sampled HR@10 | sampled NDCG@10 |", "|---|---|---|---|"]
        for file, row in section["sampled"].items():
            out.append(f"| {file} | " + " | ".join(f"{row[k]:.4f}" if k in row else "" for k in SAMPLED_KEYS) + " |")
    measured = section.get("measured")
    if measured:
        out += ["", f"re-measured through the bundle on {measured['users']} held-out users:", "",
                "| backend | user tower | retrieval HR@10 | cascade HR@10 | cascade NDCG@10 | cascade recall@100 "
                "| Δ cascade HR@10 vs manifest | paired Δ HR@10 vs fp32 |", "|---|---|---|---|---|---|---|---|"]
        for row in measured["rows"]:
            delta = row.get("delta_vs_manifest", {}).get("cascade", {}).get("hr@10")
            paired = row.get("paired_delta_vs_fp32", {}).get("cascade", {})
            out.append(f"| {row['backend']} | {row['user_tower']}{' (selected)' if row['selected'] else ''} | "
                       f"{row['retrieval']['hr@10']:.4f} | {row['cascade']['hr@10']:.4f} | "
                       f"{row['cascade']['ndcg@10']:.4f} | {row['cascade']['recall@100']:.4f} | "
                       + (f"{delta:+.4f}" if delta is not None else "") + " | "
                       + (f"{paired['hr@10']:+.4f} ± {paired['hr@10_se']:.4f}" if paired else "") + " |")
    if section.get("note"):
        out += ["", section["note"]]
    return out


def _onnx_model(nodes, inputs, outputs, inits) -> bytes:
    import onnx
    from onnx import helper

    model = helper.make_model(helper.make_graph(nodes, "synthetic", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _ranker_onnx(items: int) -> bytes:
    """score = sigmoid(a cheap hash of cand_item and the history sum) as [B, 1]."""
    from onnx import TensorProto, helper

    hist = helper.make_tensor_value_info("hist_items", TensorProto.INT32, ["batch", SEQ])
    cand = helper.make_tensor_value_info("cand_item", TensorProto.INT32, ["batch"])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])
    inits = [helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
             helper.make_tensor("freq", TensorProto.FLOAT, [], [0.618 * 2 * np.pi]),
             helper.make_tensor("small", TensorProto.FLOAT, [], [1e-4])]
    nodes = [helper.make_node("Cast", ["hist_items"], ["hist_f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["hist_f", "axis1"], ["hist_sum"], keepdims=0),
             helper.make_node("Mul", ["hist_sum", "small"], ["hist_part"]),
             helper.make_node("Cast", ["cand_item"], ["cand_f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["cand_f", "freq"], ["angle"]),
             helper.make_node("Sin", ["angle"], ["wave"]),
             helper.make_node("Add", ["wave", "hist_part"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["prob"]),
             helper.make_node("Unsqueeze", ["prob", "axis1"], ["score"])]
    return _onnx_model(nodes, [hist, cand], [score], inits)


def _tower_onnx(centres: np.ndarray) -> bytes:
    """user_vector = mean over the history of the item's cluster centre (ids -> centre by id % C)."""
    from onnx import TensorProto, helper, numpy_helper

    hist = helper.make_tensor_value_info("hist_items", TensorProto.INT32, ["batch", SEQ])
    out = helper.make_tensor_value_info("user_vector", TensorProto.FLOAT, ["batch", centres.shape[1]])
    inits = [numpy_helper.from_array(centres.astype(np.float32), "centres"),
             helper.make_tensor("count", TensorProto.INT32, [], [len(centres)])]
    nodes = [helper.make_node("Mod", ["hist_items", "count"], ["cluster"]),
             helper.make_node("Gather", ["centres", "cluster"], ["vectors"], axis=0),
             helper.make_node("ReduceMean", ["vectors"], ["user_vector"], axes=[1], keepdims=0)]
    return _onnx_model(nodes, [hist], [out], inits)


def synthetic_cascade(folder, items: int, kind: str = "auto", ef_search: int = 256, seed: int = 0) -> Path:
    """A cascade bundle over ``items`` item ids (plus padding/OOV rows) with clustered item vectors."""
    from edgerec.converters.cascade import write_cascade
    from edgerec.runtime.index import ItemIndex
    from edgerec.runtime.index_config import IndexConfig
    from edgerec.runtime.io import atomic_write_bytes
    from edgerec.runtime.manifest import Artifact, Manifest, TensorSpec, file_entry, write_manifest
    from edgerec.runtime.spec import FeatureSpec, Vocabulary

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens = tuple(str(i) for i in range(items))
    FeatureSpec(max_seq_len=SEQ, item_vocab=Vocabulary("item", tokens)).save(folder / "feature_spec.json")
    atomic_write_bytes(folder / "fused_fp32.onnx", _ranker_onnx(items))
    requests = [{"user_id": f"u{i}", "history": [str(x) for x in rng.integers(0, items, SEQ)]} for i in range(64)]
    atomic_write_bytes(folder / "examples.jsonl", "".join(json.dumps({**r, "item": "0", "expected": 0.5}) + "\n"
                                                          for r in requests).encode())
    artifact = Artifact(file="fused_fp32.onnx", format="onnx", precision="fp32", part="fused",
                        sha256="0" * 64, size_bytes=0,
                        inputs=[TensorSpec("hist_items", "int32", [None, SEQ]), TensorSpec("cand_item", "int32", [None])],
                        outputs=[TensorSpec("score", "float32", [None, 1])])
    entry = file_entry(folder, "fused_fp32.onnx")
    artifact.sha256, artifact.size_bytes = entry["sha256"], entry["size_bytes"]
    write_manifest(folder, Manifest(artifacts=[artifact], selected={"onnxruntime": {"fused": "fused_fp32.onnx"}},
                                    files=[file_entry(folder, "feature_spec.json", "feature_spec"),
                                           file_entry(folder, "examples.jsonl", "examples")],
                                    model={"family": "synthetic"}, feature_spec="feature_spec.json"))
    centres = rng.normal(size=(CENTRES, DIM)).astype(np.float32)
    rows = items + 2
    vectors = np.empty((rows, DIM), np.float32)
    for begin in range(0, rows, 1 << 18):       # bounded temporaries at 10^6 items
        end = min(rows, begin + (1 << 18))
        ids = np.arange(begin, end)
        vectors[begin:end] = centres[ids % CENTRES] + 0.5 * rng.normal(size=(end - begin, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[:2] = 0
    index = ItemIndex.build(vectors, ["", ""] + list(tokens), IndexConfig(kind=kind, ef_search=ef_search))
    del vectors
    tower = folder.parent / f".{folder.name}-user_tower_fp32.onnx"
    tower.write_bytes(_tower_onnx(centres))
    index.meta["user_tower"] = {"onnxruntime": "user_tower_fp32.onnx"}
    final = tower.with_name("user_tower_fp32.onnx")
    tower.replace(final)
    try:
        write_cascade(folder, [{"artifact": SimpleNamespace(path=str(final), format="onnx", precision="fp32",
                                                            lineage=[], details={}),
                                "backend": "onnxruntime", "metrics": {}}], index, [])
    finally:
        final.unlink(missing_ok=True)
    return folder
