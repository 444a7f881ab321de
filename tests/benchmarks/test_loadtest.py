"""Load test with a hot swap (CI size): 8 threads × a few hundred mixed raw calls on two tiny ONNX
bundles with different weights: 0 errors, 0 old-model answers after the swap, caches in bound; a
refused swap (corrupted bundle) leaves the old model serving; `edgerec bench --load-test` writes
the section into bench.json and bench.md."""
import json
import shutil

import pytest

from edgerec.benchmarks.loadtest import broken_copy, build_pool, load_test_failures, run_load_test
from edgerec.runtime.manifest import file_entry, load_manifest, write_manifest
from edgerec.runtime.io import sha256_file
from edgerec.sdk.cli import main

from .conftest import _onnx_parts, write_tiny_onnx_bundle

pytestmark = pytest.mark.slow
CACHE = {"user_entries": 16, "user_bytes": 16 * 400, "user_ttl_s": None,
         "result_entries": 32, "result_bytes": 32 * 200, "result_ttl_s": None}
# the swap (load + warm-up + replaying examples) takes as long as ~100-500 tiny calls: swap early enough
SMALL = dict(threads=8, requests=8 * 300, swap_at=0.15, backend="onnxruntime", users=48, rows=64, candidates=12,
             cache=CACHE)


def _finish_bundle(path):
    """Replace the placeholder ``expected`` of examples.jsonl with the bundle's real scores."""
    import edgerec.runtime as er

    lines = [json.loads(x) for x in (path / "examples.jsonl").read_text().splitlines()]
    requests = [{k: v for k, v in r.items() if k != "expected"} for r in lines]
    with er.load(path, backend="onnxruntime", cache=False) as p:
        scores = p.predict(requests, use_cache=False)
    (path / "examples.jsonl").write_text("".join(json.dumps({**r, "expected": float(s)}) + "\n"
                                                 for r, s in zip(requests, scores)))
    manifest = load_manifest(path, verify=False)
    manifest.files = [file_entry(path, f["file"], f.get("role", "")) for f in manifest.files]
    write_manifest(path, manifest)
    return path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("load")
    a = write_tiny_onnx_bundle(root / "a")
    b = write_tiny_onnx_bundle(root / "b")
    parts = _onnx_parts(seed=1)          # same graph, other weights: a "new version" of the model
    manifest = load_manifest(b, verify=False)
    for art in manifest.artifacts:
        (b / art.file).write_bytes(parts[art.part])
        art.sha256, art.size_bytes = sha256_file(b / art.file), (b / art.file).stat().st_size
    write_manifest(b, manifest)
    return _finish_bundle(a), _finish_bundle(b)


@pytest.fixture(scope="module")
def load_result(bundles):
    return run_load_test(*bundles, bad_swap_first=True, **SMALL)


def test_swap_under_load_serves_only_the_new_model_after(load_result):
    result = load_result
    assert result["failures"] == [] and result["passed"]
    totals, answers, swap = result["totals"], result["answers"], result["swap"]
    # a swap slower than the quota keeps the threads serving past it (see the last test): counted apart
    assert totals["calls"] == 8 * 300 + totals["calls_past_quota"]
    assert totals["errors"] == 0 and totals["errors_by_type"] == {}
    assert swap["ok"] and swap["new_version"] == swap["versions"]["b"] != swap["old_version"]
    assert len(swap["failed_attempts"]) == 1 and swap["failed_attempts"][0]["error"].startswith("IntegrityError")
    assert totals["predictor_swaps"] == 1 and totals["predictor_failed_swaps"] == 1
    # both phases are populated and every answer came from the model that had to serve it
    assert answers["before"] > 100 and answers["after"] > 50
    assert answers["old_after_swap"] == 0 and answers["wrong"] == 0 and answers["new_before_swap"] == 0
    # the two bundles really are distinguishable, so the check above has teeth
    assert result["distinguishable"]["rows"] > 0.9 and result["distinguishable"]["candidates"] > 0.9
    assert answers["ambiguous"] < 0.1 * totals["calls"]
    for name in ("user_state", "result"):
        cache = result["caches"][name]
        assert cache["within_bound"] and 0 < cache["peak_bytes"] <= cache["max_bytes"]
        assert cache["hits"] > 0
    assert result["caches"]["user_state"]["evictions"] > 0      # 48 users, bound of 16: it had to evict
    calls = {(r["call"], r["phase"]) for r in result["latency"]}
    assert {("candidates", "before"), ("candidates", "after"), ("predict", "after"),
            ("predict_cached", "before")} <= calls
    assert all(r["p50_ms"] <= r["p99_ms"] <= r["max_ms"] for r in result["latency"])
    assert result["memory"]["peak_rss_mb"] > 0 and totals["calls_per_s"] > 0


def test_refused_swap_keeps_the_old_model_serving(bundles, tmp_path):
    a, b = bundles
    bad = broken_copy(b, tmp_path)
    result = run_load_test(a, bad, expect_swap_ok=False, **SMALL)
    assert result["passed"], result["failures"]
    assert not result["swap"]["ok"] and result["swap"]["error"].startswith("IntegrityError")
    assert result["swap"]["reference_b_error"] is not None        # B cannot even be loaded alone
    assert result["totals"]["errors"] == 0 and result["answers"]["wrong"] == 0
    assert result["answers"]["after"] > 50                        # all of them matched bundle A
    assert result["totals"]["predictor_failed_swaps"] == 1


def test_failures_name_each_broken_invariant(load_result):
    result = load_result
    assert load_test_failures(result) == []
    broken = json.loads(json.dumps(result))
    broken["totals"].update(errors=3, errors_by_type={"RequestError": 3})
    broken["answers"].update(old_after_swap=2, wrong=2)
    broken["caches"]["result"]["within_bound"] = False
    failures = load_test_failures(broken)
    assert len(failures) == 4 and all(f.startswith("Expected ") for f in failures)
    # a run whose swap was expected to be refused but went through is a failure too
    assert any("swap ok" in f for f in load_test_failures({**result, "config": {**result["config"],
                                                                                 "expect_swap_ok": False}}))


def test_argument_errors(bundles):
    a, b = bundles
    for bad in ({"threads": 0}, {"swap_at": 1.0}, {"mix": {"nope": 1}}, {"requests": "many"}):
        with pytest.raises(ValueError, match="Expected"):
            run_load_test(a, b, **{**SMALL, **bad})
    pool = build_pool(a, users=5, rows=7, candidates=3)
    assert len(pool["users"]) == 5 and len(pool["rows"]) == 7 and len(pool["candidates"]) == 3
    assert all(1 <= len(u["history"]) <= 6 and u["user_id"] for u in pool["users"])


def test_bench_command_writes_the_load_test_section(bundles, tmp_path, capsys):
    a, b = bundles
    out = tmp_path / "report"
    code = main(["bench", str(a), "--out", str(out), "--load-test", "--swap-to", str(b), "--load-only",
                 "--load-requests", "800", "--load-threads", "4", "--load-swap-at", "0.2", "--backend", "onnxruntime",
                 "--quiet"])
    assert code == 0, capsys.readouterr()
    report = json.loads((out / "bench.json").read_text())
    section = report["load_test"]
    assert section["passed"] and section["config"]["threads"] == 4
    assert section["totals"]["calls"] == 800 + section["totals"]["calls_past_quota"]
    assert section["swap"]["ok"] and section["answers"]["old_after_swap"] == 0
    markdown = (out / "bench.md").read_text()
    assert "## Load test with a hot swap" in markdown and "old-model answers after swap" in markdown
    # --load-test without --swap-to is a usage error
    assert main(["bench", str(a), "--out", str(out), "--load-test"]) == 2
    assert "Expected --swap-to" in capsys.readouterr().err
    # a refused swap makes the command fail
    bad = broken_copy(b, tmp_path)
    assert main(["bench", str(a), "--out", str(tmp_path / "bad"), "--load-test", "--swap-to", str(bad),
                 "--load-only", "--load-requests", "200", "--backend", "onnxruntime", "--quiet"]) == 1
    shutil.rmtree(bad)


def test_stale_cache_answers_are_caught(bundles, monkeypatch):
    """A predictor whose result cache ignores the version and survives the swap serves old
    answers after it: the load test must count them (the check has teeth)."""
    import edgerec.runtime.predictor as predictor_module
    from edgerec.runtime.cache import LRUCache, result_keys

    a, b = bundles
    monkeypatch.setattr(predictor_module, "result_keys", lambda version, arrays: result_keys("any", arrays))
    monkeypatch.setattr(LRUCache, "clear", lambda self: None)
    roomy = {**CACHE, "result_entries": 1000, "result_bytes": 1 << 20}     # every row stays cached
    result = run_load_test(a, b, **{**SMALL, "mix": {"predict_cached": 1.0}, "cache": roomy})
    assert result["answers"]["old_after_swap"] > 0 and not result["passed"]
    assert any("old model" in f for f in result["failures"])


def test_a_swap_slower_than_the_whole_quota_still_gets_traffic_after_it(bundles, monkeypatch):
    """On a slow machine the threads may spend their quota before swap() returns: they keep
    serving until it has, then a tail, so the old-model check always has calls to judge."""
    import time

    from edgerec.runtime.predictor import Predictor

    real_swap = Predictor.swap

    def slow_swap(self, *args, **kwargs):
        time.sleep(0.3)                       # far longer than 8 × 20 tiny calls
        return real_swap(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "swap", slow_swap)
    result = run_load_test(*bundles, **{**SMALL, "requests": 8 * 20})
    assert result["totals"]["calls_past_quota"] > 0
    assert result["answers"]["after"] >= 8 and result["answers"]["old_after_swap"] == 0, result["answers"]
    assert result["passed"], result["failures"]
