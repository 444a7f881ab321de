"""The runtime on a bundle written by the converters' own exporter (edgerec.converters.export):
scores match the bundle's examples, `check` passes, candidate scoring equals fused rows, and
the AUC on the validation rows equals the validator's recorded AUC (1e-6)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import edgerec.runtime as er
from edgerec.runtime import metrics
from edgerec.runtime.preprocess import Preprocessor

from .conftest import _keras_parts, make_requests, make_spec

pytestmark = pytest.mark.slow
FUSED_INPUTS = ("hist_items", "cand_item", "hour", "device", "dense")


def _rows(n, seed, groups=None):
    arrays = Preprocessor(make_spec()).encode_requests(make_requests(n, seed=seed))
    rows = {k: arrays[k] for k in FUSED_INPUTS}
    rng = np.random.default_rng(seed)
    if groups is None:
        rows["labels"] = rng.integers(0, 2, size=n).astype(np.float32)
    else:
        per = n // groups
        rows["labels"] = np.tile(np.r_[1.0, np.zeros(per - 1)], groups).astype(np.float32)
        rows["groups"] = np.repeat(np.arange(groups), per).astype(np.int32)
    return rows


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("tensorflow")
    export = pytest.importorskip("edgerec.converters.export")
    from edgerec.converters.select import LatencyConfig

    root = tmp_path_factory.mktemp("export")
    mdir = root / "model"
    mdir.mkdir()
    _, fused, user, scorer = _keras_parts(make_spec())
    for name, model in (("fused", fused), ("user_encoder", user), ("scorer", scorer)):
        model.save(mdir / f"{name}.keras")
    make_spec().save(mdir / "feature_spec.json")
    np.savez(mdir / "calibration.npz", **_rows(200, seed=1))
    np.savez(mdir / "validation.npz", **_rows(210, seed=2, groups=10))
    (mdir / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_requests(32, seed=8)))
    meta = {"format_version": 1, "family": "tiny_din", "keras": "tf_keras",
            "parts": {"fused": "fused.keras", "user_encoder": "user_encoder.keras", "scorer": "scorer.keras"},
            "custom_objects_module": None, "feature_spec": "feature_spec.json",
            "data": {"calibration": "calibration.npz", "validation": "validation.npz"},
            "examples": "examples.jsonl", "config": {}, "data_source": "synthetic-runtime-test"}
    (mdir / "edgerec_model.json").write_text(json.dumps(meta))
    manifest = export.export_model(mdir, root / "bundle", quantize=("none",), cache_dir=root / "cache",
                                   latency=LatencyConfig(batch_sizes=(1, 16), rounds=2, min_time_s=0.001, warmup=1))
    return root / "bundle", manifest, mdir


@pytest.mark.parametrize("backend", ["onnxruntime", "litert"])
def test_runtime_on_exported_bundle(exported, backend):
    bundle, manifest, mdir = exported
    if not manifest.selected.get(backend):
        pytest.skip(f"the exporter selected nothing for {backend}: {manifest.rejected}")
    rows = [json.loads(line) for line in (bundle / "examples.jsonl").read_text().splitlines()]
    with er.load(bundle, backend=backend) as p:
        np.testing.assert_allclose(p.predict(rows), [r["expected"] for r in rows], atol=1e-5)
        user = {k: v for k, v in rows[0].items() if k not in ("item", "expected")}
        candidates = [r["item"] for r in rows]
        np.testing.assert_allclose(p.score_candidates(user, candidates),
                                   p.predict([{**user, "item": c} for c in candidates]), atol=1e-5)
        fused_file = manifest.selected[backend].get("fused")
        recorded = manifest.artifact(fused_file).validation if fused_file else {}
        assert "auc" in recorded, recorded
        data = np.load(mdir / "validation.npz")
        probs = p.predict_arrays({k: data[k] for k in FUSED_INPUTS}, part="fused")["score"].reshape(-1)
        assert abs(metrics.auc(data["labels"], probs) - recorded["auc"]) <= 1e-6


def test_check_on_exported_bundle(exported):
    from edgerec.runtime.examples import check_bundle, replay_artifacts
    from edgerec.runtime.manifest import load_manifest

    bundle, _, _ = exported
    served = check_bundle(bundle)
    assert served and all(r.passed for r in served), [r.describe() for r in served]
    every = replay_artifacts(bundle, load_manifest(bundle))
    assert all(r.passed for r in every), [r.describe() for r in every if not r.passed]
    assert {r.label for r in served} <= {r.label for r in every}
