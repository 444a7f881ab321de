"""The cascade score of recommend() (retrieval and ranker scores combined), its weight fitted on
validation events by the export, and the full-catalogue re-measurement of `edgerec validate`
and `edgerec bench`, on the tiny cascade bundle (no TensorFlow)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import edgerec.runtime as rt
from edgerec.runtime.errors import BundleError

from .cascade_support import ITEM_ROWS, cascade_bundle, make_cascade_bundle  # noqa: F401  (fixture)
from .conftest import SMALL_ITEMS

USERS = 24


def write_heldout(path: Path, users: int = USERS, seed: int = 3) -> Path:
    """Held-out users over the tiny catalogue: 4-item histories, seen = history + 2 more items."""
    rng = np.random.default_rng(seed)
    hist = np.stack([rng.choice(np.arange(2, ITEM_ROWS), 4, replace=False) for _ in range(users)]).astype(np.int32)
    hist[0, :2] = 0                                    # a short history
    hist[1, -1] = 1                                    # an out-of-vocabulary previous item
    seen, positives = [], []
    for h in hist:
        rest = np.setdiff1d(np.arange(2, ITEM_ROWS), h)
        extra = rng.choice(rest, 3, replace=False)
        positives.append(extra[0])
        seen.append(np.unique(np.concatenate([h[h >= 2], extra[1:]])))
    np.savez(path, hist_items=hist, positive=np.asarray(positives, np.int32), user=np.arange(users, dtype=np.int64),
             seen_indptr=np.concatenate([[0], np.cumsum([s.size for s in seen])]).astype(np.int64),
             seen_items=np.concatenate(seen).astype(np.int32))
    return path


def measured_cascade(directory: Path, retrieval_weight=None, m: int = 12) -> tuple[Path, Path, dict]:
    """A tiny cascade bundle measured and finished as `edgerec export --retrieval` does."""
    from edgerec.converters.cascade import CascadeSettings, finish_manifest
    from edgerec.converters.cascade_metrics import load_heldout, measure_cascade

    from .cascade_support import item_vectors

    bundle = make_cascade_bundle(directory)
    heldout = write_heldout(directory.parent / f"{directory.name}-heldout_users.npz")
    settings = CascadeSettings(m=m, eval_users=USERS, ranker_users=5, retrieval_weight=retrieval_weight)
    users = load_heldout(heldout, settings.eval_users, settings.seed)
    sections = measure_cascade(bundle, item_vectors(), users, heldout, settings, lambda line: None)
    finish_manifest(bundle, sections)
    return bundle, heldout, sections


def _set_weight(bundle: Path, weight: float) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    data.setdefault("index", {})["cascade_score"] = {"retrieval_weight": weight, "ranker_transform": "logit"}
    path.write_text(json.dumps(data))


def test_cascade_score_standardises_both_scores_before_weighting():
    from edgerec.runtime.cascade_score import CascadeScore

    ranker, retrieval = np.array([0.2, 0.5, 0.9]), np.array([3.0, 1.0, 2.0])
    assert np.array_equal(CascadeScore(0.0).combine(ranker, retrieval), ranker.astype(np.float32))
    only_retrieval = CascadeScore(1.0).combine(None, retrieval)
    assert np.allclose(only_retrieval, (retrieval - 2.0) / retrieval.std())
    mixed = CascadeScore(0.5).combine(ranker, retrieval)
    z = lambda x: (x - x.mean()) / x.std()  # noqa: E731
    assert np.allclose(mixed, 0.5 * z(retrieval) + 0.5 * z(ranker), atol=1e-6)
    logit = CascadeScore(0.5, "logit").combine(ranker, retrieval)
    assert np.allclose(logit, 0.5 * z(retrieval) + 0.5 * z(np.log(ranker / (1 - ranker))), atol=1e-6)
    assert np.allclose(CascadeScore(0.3).combine(np.ones(3), retrieval), 0.3 * z(retrieval))   # constant ranker
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(BundleError, match="retrieval_weight"):
            CascadeScore(bad)
    with pytest.raises(BundleError, match="ranker_transform"):
        CascadeScore(0.5, "rank")


def test_the_recorded_weight_decides_the_order_of_recommend(cascade_bundle):
    from edgerec.runtime.recommend import retriever_for

    request = {"history": ["103", "111"]}
    with rt.load(cascade_bundle, backend="onnxruntime", cache=False) as predictor:
        by_ranker = predictor.recommend(request, k=6, m=12)
        model = predictor._model
        retriever = retriever_for(model, {})
        vector = retriever.vectors({"hist_items": model.preprocessor.encode_history([request["history"]])})[0]
        exclude = model.preprocessor.encode_items(request["history"])
        rows, _ = retriever.index.search(vector, 6, exclude=exclude)
    by_index = [SMALL_ITEMS[r - 2] for r in rows]
    assert by_ranker.items != by_index        # the tiny ranker prefers high indices, the index does not
    _set_weight(cascade_bundle, 1.0)
    with rt.load(cascade_bundle, backend="onnxruntime", cache=False) as predictor:
        found = predictor.recommend(request, k=6, m=12)
    assert found.items == by_index
    assert list(found.scores) == sorted(found.scores, reverse=True)
    _set_weight(cascade_bundle, 0.0)
    with rt.load(cascade_bundle, backend="onnxruntime", cache=False) as predictor:
        assert predictor.recommend(request, k=6, m=12).items == by_ranker.items


def test_a_malformed_cascade_score_record_is_refused(cascade_bundle):
    _set_weight(cascade_bundle, 2.0)
    with rt.load(cascade_bundle, backend="onnxruntime") as predictor:
        with pytest.raises(BundleError, match="retrieval_weight"):
            predictor.recommend({"history": ["103"]}, k=3)


def test_validation_events_hold_out_each_users_previous_item(tmp_path):
    from edgerec.converters.cascade_metrics import load_heldout, previous_event_users

    users = load_heldout(write_heldout(tmp_path / "h.npz"))
    valid = previous_event_users(users)
    hist = users["inputs"]["hist_items"]
    kept = [u for u in range(USERS) if hist[u, -1] >= 2]
    assert len(valid["positives"]) == len(kept) == USERS - 1            # the OOV previous item is left out
    assert np.array_equal(valid["positives"], hist[kept, -1])
    assert np.array_equal(valid["inputs"]["hist_items"][:, 1:], hist[kept, :-1])
    assert np.all(valid["inputs"]["hist_items"][:, 0] == 0)
    for row, u in enumerate(kept):
        assert valid["positives"][row] not in valid["seen"][row]
        assert set(valid["seen"][row]) == set(users["seen"][u]) - {hist[u, -1]}
        assert users["positives"][u] != valid["positives"][row]         # the test item plays no part


def test_export_fits_the_weight_on_validation_events_and_records_it(tmp_path):
    pytest.importorskip("onnxruntime")
    from edgerec.converters.cascade_metrics import WEIGHT_GRID

    bundle, _, sections = measured_cascade(tmp_path / "fit")
    record = sections["index"]["cascade_score"]
    curve = record["validation"]
    assert [c["retrieval_weight"] for c in curve] == list(WEIGHT_GRID)
    best = max(curve, key=lambda c: (c["hr@10"], c["ndcg@10"], -c["retrieval_weight"]))
    assert record["retrieval_weight"] == best["retrieval_weight"]
    assert record["fitted_on"]["users"] == USERS - 1 and record["ranker_transform"] == "logit"
    blocks = sections["full_catalogue"]
    assert set(blocks) == {"retrieval", "ranker", "cascade", "popularity", "cascade_ranker_order"}
    data = json.loads((bundle / "manifest.json").read_text())
    assert data["index"]["cascade_score"]["retrieval_weight"] == record["retrieval_weight"]


def test_fixed_weights_give_the_retrieval_order_or_the_ranker_order(tmp_path):
    pytest.importorskip("onnxruntime")
    _, _, one = measured_cascade(tmp_path / "one", retrieval_weight=1.0, m=20)
    blocks = one["full_catalogue"]
    assert {k: blocks["cascade"][k] for k in ("hr@10", "ndcg@10", "recall@100")} == \
        {k: blocks["retrieval"][k] for k in ("hr@10", "ndcg@10", "recall@100")}
    assert one["index"]["cascade_score"]["fitted_on"] is None
    _, _, zero = measured_cascade(tmp_path / "zero", retrieval_weight=0.0, m=20)
    assert zero["full_catalogue"]["cascade"] == zero["full_catalogue"]["cascade_ranker_order"]


def test_validate_remeasures_the_full_catalogue_of_a_cascade_bundle(tmp_path):
    pytest.importorskip("onnxruntime")
    from edgerec.converters.revalidate import validate_bundle

    bundle, heldout, sections = measured_cascade(tmp_path / "v")
    result = validate_bundle(bundle, heldout=heldout, progress=lambda line: None)
    assert not result.failures, result.failures
    rows = result.full_catalogue["rows"]
    assert [(r["backend"], r["user_tower"], r["selected"]) for r in rows] == \
        [("onnxruntime", "user_tower_fp32.onnx", True)]
    for stage in ("retrieval", "cascade"):
        assert rows[0][stage] == pytest.approx({k: sections["full_catalogue"][stage][k]
                                                for k in ("hr@10", "ndcg@10", "recall@100")})
        assert all(abs(d) < 1e-9 for d in rows[0]["delta_vs_manifest"][stage].values())
    assert result.to_dict()["full_catalogue"]["users"] == USERS
    assert result.status == "not_verified"               # no Keras model was given for the artifacts

    data = json.loads((bundle / "manifest.json").read_text())
    data["full_catalogue"]["cascade"]["hr@10"] += 0.25
    (bundle / "manifest.json").write_text(json.dumps(data))
    failed = validate_bundle(bundle, heldout=heldout, progress=lambda line: None)
    assert any("differs from the manifest" in f and "cascade hr@10 -0.2500" in f for f in failed.failures)


def test_validate_says_when_the_full_catalogue_cannot_be_remeasured(tmp_path):
    pytest.importorskip("onnxruntime")
    from edgerec.converters.revalidate import validate_bundle

    bundle, _, _ = measured_cascade(tmp_path / "n")
    result = validate_bundle(bundle, progress=lambda line: None)
    assert result.full_catalogue is None
    assert any("full-catalogue metrics were not re-measured" in r for r in result.not_verified)
    assert validate_bundle(bundle, examples_only=True, progress=lambda line: None).status == "ok"
