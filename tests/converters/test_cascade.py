"""edgerec export --retrieval: the user tower converted and validated, the item index built, and the
manifest's index / full_catalogue sections measured through the cascade bundle."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SEQ, DENSE, DIM, USERS = 5, 2, 8, 40


def _support():
    spec = importlib.util.spec_from_file_location("validate_support_c", Path(__file__).with_name("test_validate_support.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


S = _support()


def _keras():
    import os

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from edgerec.converters.tfenv import import_tf
    return import_tf()


def _ranker():
    tf, k = _keras()
    k.utils.set_random_seed(3)
    hist = k.Input((SEQ,), dtype="int32", name="hist_items")
    cand = k.Input((), dtype="int32", name="cand_item")
    hour = k.Input((), dtype="int32", name="hour")
    dense = k.Input((DENSE,), dtype="float32", name="dense")
    emb = k.layers.Embedding(S.VOCAB, 6, name="item_embedding")
    pooled = k.layers.GlobalAveragePooling1D()(emb(hist))
    x = k.layers.Concatenate()([pooled, emb(cand), k.layers.Flatten()(k.layers.Embedding(25, 3)(hour)), dense])
    out = k.layers.Dense(1, activation="sigmoid", name="score")(k.layers.Dense(8, activation="relu", name="hidden")(x))
    return k.Model([hist, cand, hour, dense], out, name="fused")


def _tower():
    tf, k = _keras()
    k.utils.set_random_seed(5)
    hist = k.Input((SEQ,), dtype="int32", name="hist_items")
    pooled = k.layers.GlobalAveragePooling1D()(k.layers.Embedding(S.VOCAB, DIM)(hist))
    out = k.layers.Dense(DIM, name="user_vector")(k.layers.Dense(16, activation="relu")(pooled))
    return k.Model(hist, out, name="user_tower")


def _retrieval_dir(folder: Path, ranker_dir: Path) -> Path:
    folder.mkdir(parents=True)
    _tower().save(folder / "user_tower.keras")
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(S.VOCAB, DIM)).astype(np.float32)
    vectors[:2] = 0
    np.save(folder / "item_vectors.npy", vectors)
    (folder / "feature_spec.json").write_bytes((ranker_dir / "feature_spec.json").read_bytes())
    hist = rng.integers(2, S.VOCAB, size=(USERS, SEQ)).astype(np.int32)
    seen = [np.unique(np.concatenate([h, rng.integers(2, S.VOCAB, size=3)])) for h in hist]
    np.savez(folder / "heldout_users.npz", hist_items=hist, hour=rng.integers(1, 25, USERS).astype(np.int32),
             dense=rng.normal(size=(USERS, DENSE)).astype(np.float32),
             positive=rng.integers(2, S.VOCAB, USERS).astype(np.int32), user=np.arange(USERS, dtype=np.int64),
             seen_indptr=np.concatenate([[0], np.cumsum([s.size for s in seen])]).astype(np.int64),
             seen_items=np.concatenate(seen).astype(np.int32))
    np.savez(folder / "calibration.npz", hist_items=hist)
    (folder / "edgerec_model.json").write_text(json.dumps({
        "format_version": 1, "family": "retrieval", "keras": "tf_keras", "parts": {"user_tower": "user_tower.keras"},
        "custom_objects_module": None, "feature_spec": "feature_spec.json",
        "data": {"calibration": "calibration.npz", "heldout_users": "heldout_users.npz"},
        "retrieval": {"item_vectors": "item_vectors.npy", "dim": DIM, "score": "dot"}}))
    return folder


@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    from edgerec.converters.cascade import CascadeSettings
    from edgerec.converters.export import export_bundle
    from edgerec.converters.select import LatencyConfig
    root = tmp_path_factory.mktemp("cascade")
    ranker = S.write_model_dir(root / "ranker", _ranker())
    retrieval = _retrieval_dir(root / "retrieval", ranker)
    result = export_bundle(ranker, root / "bundle", targets=("onnx",), quantize=("int8",), retrieval=retrieval,
                           cascade=CascadeSettings(m=20, eval_users=30, ranker_users=5), cache_dir=root / "cache",
                           latency=LatencyConfig(batch_sizes=(1,), rounds=2, min_time_s=0.001, warmup=1))
    return result, retrieval


def test_manifest_records_index_and_full_catalogue_sections(cascade):
    result, _ = cascade
    data = json.loads((result.bundle / "manifest.json").read_text())
    index = data["index"]
    assert index["kind"] == "exact" and index["num_items"] == S.VOCAB and index["m"] == 20
    assert 0.9 <= index["recall@20"] <= 1.0 and index["recall_users"] == 30
    assert set(data["full_catalogue"]) == {"retrieval", "ranker", "cascade", "popularity", "cascade_ranker_order"}
    for name, block in data["full_catalogue"].items():
        assert set(block) == {"hr@10", "ndcg@10", "recall@100", "users"} | ({"row_budget"} if name == "ranker" else set())
        assert all(0.0 <= block[k] <= 1.0 for k in ("hr@10", "ndcg@10", "recall@100"))
    assert data["full_catalogue"]["ranker"]["users"] == 5 and data["full_catalogue"]["ranker"]["row_budget"] == 2_000_000
    fusion = index["cascade_score"]
    assert 0.0 <= fusion["retrieval_weight"] <= 1.0 and fusion["ranker_transform"] == "logit"   # a sigmoid ranker
    assert fusion["fitted_on"]["users"] <= 30 and len(fusion["validation"]) == 21
    assert result.summary()["index"]["recall@20"] == index["recall@20"]


def test_user_tower_artifacts_are_validated_listed_and_selected(cascade):
    from edgerec.runtime.manifest import load_manifest

    result, _ = cascade
    manifest = load_manifest(result.bundle)
    towers = manifest.find(part="user_tower")
    assert {a.precision for a in towers} >= {"fp32"}
    assert all(a.validation["max_abs_diff"] < 1.0 and "topm_overlap@20" in a.validation for a in towers)
    roles = {f["file"]: f.get("role") for f in manifest.files}
    assert roles["item_index.json"] == roles["item_index.npz"] == "item_index"
    meta = json.loads((result.bundle / "item_index.json").read_text())
    assert meta["user_tower"]["onnxruntime"] in {a.file for a in towers}
    assert "user_tower_trt_int8.onnx" not in {a.file for a in towers}     # no tower engine is built
    assert all("latency_ms_batch1" in a.validation for a in towers)
    assert "user_tower" not in manifest.selected.get("onnxruntime", {})   # the ranker's selection is unchanged


def test_cascade_bundle_recommends_from_the_catalogue(cascade):
    import edgerec.runtime as rt

    result, _ = cascade
    with rt.load(result.bundle, backend="onnxruntime") as predictor:
        found = predictor.recommend({"history": ["1003", "1004"], "context": {"timestamp": 1_000_000_000},
                                     "dense": {"d0": 0.1, "d1": -0.2}}, k=5, m=20)
    assert len(found.items) == 5 and not {"1003", "1004"} & set(found.items)
    assert list(found.scores) == sorted(found.scores, reverse=True)


def test_recommend_batch_of_an_exported_cascade_equals_one_user_at_a_time(cascade):
    """The exported DIN (user encoder + scorer, an hour context and dense features): the batched
    user tower, user encoder and shared scorer calls give each user's own answer."""
    import edgerec.runtime as rt

    result, _ = cascade
    requests = [{"user_id": f"u{i}", "history": [str(1000 + (7 * i + j) % 40) for j in range(i % 5)],
                 "context": {"timestamp": 1_000_000_000 + 3600 * i}, "dense": {"d0": 0.1 * i, "d1": -0.2}}
                for i in range(9)]
    with rt.load(result.bundle, backend="onnxruntime") as predictor:
        alone = [predictor.recommend(r, k=5, m=20, use_cache=False) for r in requests]
        together = predictor.recommend_batch(requests, k=5, m=20, use_cache=False)
        cached = predictor.recommend_batch(requests, k=5, m=20)
    for got, again, want in zip(together, cached, alone):
        assert got.items == want.items == again.items
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-5)


def test_recommend_batch_with_batch_variant_parts_runs_each_user_alone(cascade, monkeypatch):
    """Every part treated as batch-variant (dynamic): tower, user encoder and scorer each get one
    call per user, and the answers are exactly recommend's."""
    import edgerec.runtime as rt
    import edgerec.runtime.recommend_batch as rb

    result, _ = cascade
    requests = [{"user_id": f"v{i}", "history": [str(1000 + (3 * i + j) % 40) for j in range(1 + i % 4)],
                 "context": {"timestamp": 1_000_000_000 + 7200 * i}, "dense": {"d0": -0.1 * i, "d1": 0.3}}
                for i in range(5)]
    monkeypatch.setattr(rb, "_batch_invariant", lambda model, file: False)
    with rt.load(result.bundle, backend="onnxruntime") as predictor:
        alone = [predictor.recommend(r, k=5, m=20, use_cache=False) for r in requests]
        model = predictor._model
        calls, run = [], model.run
        monkeypatch.setattr(model, "run", lambda part, feeds: calls.append((part, len(feeds["hist_items"])
                                                                            if "hist_items" in feeds else None))
                            or run(part, feeds))
        apart = predictor.recommend_batch(requests, k=5, m=20, use_cache=False)
    # the ranker's calls (user encoder + scorer, or fused) each carry one user's history row
    assert calls and all(rows in (1, None) for _, rows in calls)
    assert len(calls) == len(requests) * len({part for part, _ in calls})
    for got, want in zip(apart, alone):
        assert got.items == want.items
        np.testing.assert_array_equal(got.scores, want.scores)


def test_towers_are_selected_most_compressed_first_unless_slower_than_fp32():
    from types import SimpleNamespace

    from edgerec.converters.cascade import select_towers

    def check(name, precision, ms, failures=()):
        return {"artifact": SimpleNamespace(path=f"/s/{name}", precision=precision), "backend": "onnxruntime",
                "metrics": {"latency_ms_batch1": ms}, "failures": list(failures)}

    fp32, dyn = check("t_fp32.onnx", "fp32", 1.0), check("t_dynamic.onnx", "dynamic", 1.05)
    assert select_towers([fp32, dyn, check("t_int8.onnx", "int8", 1.5)]) == {"onnxruntime": "t_dynamic.onnx"}
    assert select_towers([fp32, check("t_int8.onnx", "int8", 0.5, ["overlap"])]) == {"onnxruntime": "t_fp32.onnx"}


def test_a_retrieval_dir_of_another_family_is_refused_before_exporting(tmp_path):
    from edgerec.converters.errors import ConverterConfigError
    from edgerec.converters.export import export_bundle

    ranker = S.write_model_dir(tmp_path / "ranker", _ranker())
    with pytest.raises(ConverterConfigError, match="retrieval"):
        export_bundle(ranker, tmp_path / "bundle", targets=("onnx",), retrieval=ranker)
    assert not (tmp_path / "bundle").exists()


def test_validate_compares_the_ranker_with_keras_and_remeasures_the_full_catalogue(cascade):
    from edgerec.converters.revalidate import validate_bundle
    from edgerec.runtime.manifest import load_manifest

    result, retrieval = cascade
    checked = validate_bundle(result.bundle, keras=retrieval.parent / "ranker", heldout=retrieval / "heldout_users.npz",
                              max_groups=5, progress=lambda line: None)
    assert checked.status == "ok", (checked.failures, checked.not_verified)
    assert checked.keras.passed and {r.part for r in checked.keras.results} <= {"fused", "user_encoder", "scorer"}
    rows = checked.full_catalogue["rows"]
    towers = {a.file: a.precision for a in load_manifest(result.bundle).find(part="user_tower")}
    assert {r["user_tower"] for r in rows} == set(towers) and sum(r["selected"] for r in rows) == 1
    for row in rows:
        if row["precision"] != "fp32":
            assert set(row["paired_delta_vs_fp32"]["cascade"]) >= {"hr@10", "hr@10_se"}
    chosen = next(r for r in rows if r["selected"])
    assert all(abs(d) <= 0.005 for d in chosen["delta_vs_manifest"]["cascade"].values())


def _gaussian_index(kind: str, n: int = 6000, dim: int = 16):
    from edgerec.runtime.index import ItemIndex
    from edgerec.runtime.index_config import IndexConfig
    vectors = np.random.default_rng(1).normal(size=(n, dim)).astype(np.float32)
    vectors[:2] = 0
    ids = ["", ""] + [f"i{i}" for i in range(n - 2)]
    return vectors, ids, ItemIndex.build(vectors, ids, IndexConfig(kind=kind))


def _tune(index, vectors, ids, m: int, **config):
    from edgerec.converters.cascade import CascadeSettings, tune_index
    from edgerec.runtime.index_config import IndexConfig
    rng = np.random.default_rng(2)
    queries = rng.normal(size=(30, vectors.shape[1])).astype(np.float32)
    seen = [rng.integers(2, len(vectors), 5) for _ in queries]
    settings = CascadeSettings(index=IndexConfig(kind="hnsw", **config), m=m)
    return tune_index(index, vectors, ids, queries, seen, settings, lambda line: None), queries, seen


def _recall(index, vectors, queries, seen, m):
    from edgerec.converters.cascade_metrics import exact_top
    found = [index.search(q, m, exclude=s)[0] for q, s in zip(queries, seen)]
    truth = [exact_top(vectors, q, m, s) for q, s in zip(queries, seen)]
    return float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth)]))


def test_tuning_widens_the_hnsw_search_until_the_recall_target_and_records_it():
    from edgerec.runtime.ann import ann_available
    if not ann_available():
        pytest.skip("usearch (the index extra) is not installed")
    vectors, ids, index = _gaussian_index("hnsw")
    tuned, queries, seen = _tune(index, vectors, ids, 20, target_recall=0.97)
    record = tuned.meta["search_tuning"]
    assert tuned.kind == "hnsw" and record["met"] and record["chosen"] == {"kind": "hnsw", "ef_search": tuned.ef_search}
    widths = [t["ef_search"] for t in record["tried"]]
    assert widths[0] == 20 and all(b == -(-int(a * 1.25) // 8) * 8 for a, b in zip(widths, widths[1:]))
    # it stops on the lower confidence bound of the 30 users' recall, not on the mean
    last = record["tried"][-1]
    assert last["lower_bound"] >= 0.97 and last["recall@20"] >= last["lower_bound"]
    assert all(t["lower_bound"] < 0.97 for t in record["tried"][:-1])
    assert tuned.meta["ann"]["ef_search"] == tuned.ef_search
    assert _recall(tuned, vectors, queries, seen, 20) == pytest.approx(last["recall@20"], abs=1e-4)


def test_the_recall_bound_is_the_mean_less_two_standard_errors():
    from edgerec.converters.cascade import recall_bound

    per_user = np.array([1.0, 0.9, 0.8, 1.0])
    mean, lower = recall_bound(per_user)
    assert mean == pytest.approx(0.925)
    assert lower == pytest.approx(0.925 - 1.96 * per_user.std(ddof=1) / 2)
    assert recall_bound(np.array([0.5])) == (0.5, 0.5)
    assert recall_bound(np.ones(50)) == (1.0, 1.0)


def test_an_unreachable_recall_target_falls_back_to_the_exact_index_or_is_recorded_as_missed():
    from edgerec.runtime.ann import ann_available
    if not ann_available():
        pytest.skip("usearch (the index extra) is not installed")
    vectors, ids, index = _gaussian_index("hnsw")
    # one try at ef_search = m = 100 on 16-d Gaussian vectors: below a perfect recall
    kept, queries, seen = _tune(index, vectors, ids, 100, target_recall=1.0, max_ef_search=100, exact_fallback=False)
    record = kept.meta["search_tuning"]
    assert kept.kind == "hnsw" and not record["met"] and record["tried"][-1]["recall@100"] < 1.0
    _, _, index = _gaussian_index("hnsw")
    exact, _, _ = _tune(index, vectors, ids, 100, target_recall=1.0, max_ef_search=100)
    assert exact.kind == "exact" and exact.meta["search_tuning"]["chosen"]["kind"] == "exact"
    assert _recall(exact, vectors, queries, seen, 100) > record["tried"][-1]["recall@100"]
    _, _, plain = _gaussian_index("exact", n=500)
    untouched, _, _ = _tune(plain, vectors[:500], ids[:500], 20)
    assert untouched is plain and "search_tuning" not in plain.meta


def test_the_ranker_alone_metric_scores_fewer_users_at_a_large_catalogue():
    from edgerec.converters.cascade import CascadeSettings
    from edgerec.converters.cascade_metrics import ranker_user_budget
    settings = CascadeSettings(ranker_users=100, ranker_rows=2_000_000)
    assert ranker_user_budget(settings, 10_000) == 100
    assert ranker_user_budget(settings, 1_000_000) == 2
    assert ranker_user_budget(settings, 5_000_000) == 1


def test_export_cli_passes_the_index_storage_through(monkeypatch):
    """``--index-dtype`` and ``--index-connectivity`` reach the index the export builds (f16, M 32
    unless asked); a degree below 1 is refused with the index's own error."""
    import edgerec.converters.export as export_module
    from edgerec.sdk.cli import build_parser
    from edgerec.sdk.cli import export as export_cli

    seen = []

    class Stop(Exception):
        pass

    def fake_export(*args, cascade=None, **kwargs):
        seen.append((cascade.index.ann_dtype, cascade.index.connectivity))
        raise Stop

    monkeypatch.setattr(export_module, "export_bundle", fake_export)
    for flags, want in (([], ("f16", 32)), (["--index-dtype", "f32"], ("f32", 32)),
                        (["--index-connectivity", "12"], ("f16", 12))):
        args = build_parser().parse_args(["export", "m", "--retrieval", "r", "--out", "b", *flags])
        with pytest.raises(Stop):
            export_cli.run(args)
        assert seen[-1] == want
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "m", "--retrieval", "r", "--index-dtype", "f8"])
    from edgerec.runtime.errors import SpecError

    args = build_parser().parse_args(["export", "m", "--retrieval", "r", "--out", "b", "--index-connectivity", "0"])
    with pytest.raises(SpecError, match="connectivity as an int >= 1"):
        export_cli.run(args)
