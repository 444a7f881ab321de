"""edgerec bench on a cascade bundle: the recommend rows (p50/p99 at 1 thread) and their table."""
from __future__ import annotations

import pytest


def _options():
    from edgerec.benchmarks.bench import BenchOptions

    return BenchOptions(keras=False, budget_s=0.05, max_iters=20, warmup_iters=1, batches=(1,), candidates=(10,),
                        profile=False, memory=False, plots=False, progress=False)


def test_a_cascade_bundle_gets_recommend_rows(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from edgerec.benchmarks.bench import run_bench
    from edgerec.benchmarks.recommend import synthetic_cascade

    bundle = synthetic_cascade(tmp_path / "cascade", 3000, kind="exact")
    outcome = run_bench(bundle, tmp_path / "out", _options())
    rows = outcome.report["recommend"]
    assert [r["backend"] for r in rows] == ["onnxruntime"]
    assert rows[0]["threads"] == 1 and rows[0]["k"] == 10 and rows[0]["m"] == 200
    assert 0 < rows[0]["p50_ms"] <= rows[0]["p99_ms"]
    assert 0 < rows[0]["cpu_p50_ms"] <= rows[0]["cpu_p99_ms"]
    stages = rows[0]["stages"]
    assert list(stages) == ["encode", "user_tower", "index", "user_state", "scorer", "combine", "result"]
    assert all(t["wall_p50_ms"] >= 0 and t["cpu_mean_ms"] >= 0 for t in stages.values())
    text = (tmp_path / "out" / "bench.md").read_text()
    assert "## recommend" in text and "| CPU p50 ms |" in text and "| scorer |" in text


def test_a_ranker_bundle_has_no_recommend_rows(tmp_path):
    pytest.importorskip("onnxruntime")
    from edgerec.benchmarks.bench import run_bench

    from ..runtime.conftest import make_onnx_bundle

    outcome = run_bench(make_onnx_bundle(tmp_path / "plain"), tmp_path / "out", _options())
    assert "recommend" not in outcome.report


def test_a_measured_cascade_bundle_gets_its_full_catalogue_table(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from dataclasses import replace

    from edgerec.benchmarks.bench import run_bench
    from edgerec.benchmarks.recommend import full_catalogue_markdown

    from ..runtime.test_recommend_quality import measured_cascade

    bundle, heldout, sections = measured_cascade(tmp_path / "cascade")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "heldout_users.npz").write_bytes(heldout.read_bytes())
    outcome = run_bench(bundle, tmp_path / "out", replace(_options(), keras_dir=model_dir))
    section = outcome.report["full_catalogue"]
    assert section["recorded"] == sections["full_catalogue"]
    assert section["cascade_score"]["retrieval_weight"] == sections["index"]["cascade_score"]["retrieval_weight"]
    rows = section["measured"]["rows"]
    assert [(r["backend"], r["selected"]) for r in rows] == [("onnxruntime", True)]
    assert rows[0]["cascade"]["hr@10"] == pytest.approx(sections["full_catalogue"]["cascade"]["hr@10"])
    table = "\n".join(full_catalogue_markdown(section))
    assert "| cascade | 24 |" in table and "re-measured through the bundle on 24 held-out users" in table

    unmeasured = run_bench(bundle, tmp_path / "out2", _options()).report["full_catalogue"]
    assert unmeasured["measured"] is None and "not re-measured" in unmeasured["note"]
    assert unmeasured["recorded"] == sections["full_catalogue"]


def test_recommend_batch_rows_time_batches_of_distinct_users(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from edgerec.benchmarks.recommend import recommend_batch_rows, synthetic_cascade

    bundle = synthetic_cascade(tmp_path / "cascade", 3000, kind="exact")
    rows = recommend_batch_rows(bundle, ["CPUExecutionProvider"], batches=(1, 5, 32), budget_s=0.05, check_users=8)
    assert [r["users"] for r in rows] == [1, 5, 32]
    for r in rows:
        assert r["calls"] >= 3 and 0 < r["p50_ms"] <= r["p99_ms"]
        assert r["ms_per_user"] == pytest.approx(r["p50_ms"] / r["users"])
        assert r["same_as_single"] == 1.0
        assert all(p == ["CPUExecutionProvider"] for p in r["session_providers"].values())


def test_the_gpu_check_reports_recommend_batches_for_a_cascade_bundle(tmp_path, monkeypatch):
    """On a machine without CUDA the check still runs the CPU provider and says why the others
    did not activate; a cascade bundle gets its recommend_batch rows and table."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import edgerec.benchmarks.gpu_check as check
    from edgerec.benchmarks.recommend import synthetic_cascade

    monkeypatch.setattr(check, "BATCHES", (1, 16))
    bundle = synthetic_cascade(tmp_path / "cascade", 3000, kind="exact")
    report = check.run(bundle, tmp_path / "out", 0.02, user_batches=(1, 4))
    assert report["providers"]["cpu"]["active"]
    assert all(status.get("active") or status.get("reason") for status in report["providers"].values())
    cpu_rows = [r for r in report["recommend_batches"] if r["provider"] == "cpu"]
    assert [r["users"] for r in cpu_rows] == [1, 4] and all(r["same_as_single"] == 1.0 for r in cpu_rows)
    assert "| cpu | 4 |" in (tmp_path / "out" / "gpu_check.md").read_text()

