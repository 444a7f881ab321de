"""`edgerec bench --scale`: sizes parsed, the scale.json schema, the plot, and a real tiny sweep."""
from __future__ import annotations

import json

import pytest


def test_sizes_are_parsed_and_bad_ones_refused():
    from edgerec.benchmarks.scale import parse_sizes
    from edgerec.runtime.errors import SpecError

    assert parse_sizes("1e4,1e5, 1e6") == [10_000, 100_000, 1_000_000]
    for bad in ("", "1e4,ten", "50", "150.5"):
        with pytest.raises(SpecError):
            parse_sizes(bad)


def test_users_scale_with_items_and_are_capped():
    from edgerec.benchmarks.scale import MAX_USERS, ScaleConfig

    config = ScaleConfig()
    assert config.users_for(10_000) == 1_000 and config.users_for(10**7) == MAX_USERS
    assert config.users_for(100) >= 50


def test_report_schema_and_plot_from_stage_results(tmp_path, monkeypatch):
    from edgerec.benchmarks import scale

    seen = []

    def fake_stage(stage, payload, timeout_s):
        seen.append(stage)
        common = {"seconds": 1.5, "peak_rss_mb": 100.0}
        if stage == "export":
            return {**common, "bundle_bytes": 1234, "index_bytes": 99, "index_recall": {"recall@200": 0.97},
                    "index_kind": "exact", "catalogue_items": 302}
        if stage == "serve":
            return {**common, "backend": "onnxruntime", "load_s": 0.2, "p50_ms": 1.0, "p99_ms": 2.0}
        return common

    monkeypatch.setattr(scale, "run_stage", fake_stage)
    report = scale.run_scale([300, 3000], tmp_path / "out")
    assert seen == list(scale.STAGES) * 2
    written = json.loads((tmp_path / "out" / scale.REPORT_FILE).read_text())
    assert written["sizes"] == report["sizes"]
    first = written["sizes"][0]
    assert set(scale.SIZE_KEYS) <= set(first)
    assert (first["items"], first["users"], first["export_s"], first["index_recall_at_200"]) == (300, 50, 1.5, 0.97)
    assert (tmp_path / "out" / scale.PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failed_stage_names_itself(tmp_path):
    from edgerec.benchmarks.scale import run_stage
    from edgerec.runtime.errors import SpecError

    with pytest.raises(SpecError, match="serve stage"):
        run_stage("serve", {"bundle": str(tmp_path / "missing"), "config": {}}, timeout_s=120)
    with pytest.raises(SpecError, match="scale stage"):
        run_stage("nap", {}, timeout_s=1)


def test_settle_waits_for_the_load_average_at_most_max_s():
    from edgerec.benchmarks.scale import ScaleConfig, settle
    from edgerec.runtime.errors import SpecError

    said = []
    already = settle(1e9, 60, said.append)                      # any load is below 1e9: no wait
    assert already["seconds"] == 0.0 and already["load_average"] >= 0 and said == []
    waited = settle(-1.0, 0.05, said.append, poll_s=0.01)      # a load never reached: gives up
    assert 0.0 <= waited["seconds"] <= 1.0 and waited["load_average"] >= 0
    with pytest.raises(SpecError, match="settle_max_s"):
        ScaleConfig(settle_max_s=-1)
    with pytest.raises(SpecError, match="settle_load"):
        ScaleConfig(settle_load=0)


@pytest.mark.slow
def test_tiny_sweep_end_to_end(tmp_path):
    """The real thing at 300 items: trains, exports, serves in child processes (minutes)."""
    from edgerec.benchmarks.scale import SIZE_KEYS, ScaleConfig, run_scale

    config = ScaleConfig(train_rows=512, max_groups=20, eval_users=20, ranker_users=1, requests=22,
                         events_per_user=12, max_seq_len=8, embedding_dim=8, settle_max_s=0)
    report = run_scale([300], tmp_path, config)
    (entry,) = report["sizes"]
    assert all(entry[key] is not None for key in SIZE_KEYS), entry
    assert entry["bundle_bytes"] > entry["index_bytes"] > 0
    assert 0.0 <= entry["index_recall_at_200"] <= 1.0 and entry["recommend_p99_ms"] >= entry["recommend_p50_ms"] > 0
    assert entry["export_peak_rss_mb"] > entry["runtime_rss_mb"] > 0
    rounds = entry["recommend_round_p50_ms"]                # 22 calls in 5 rounds of 5/5/4/4/4
    assert len(rounds) == 5 and entry["recommend_p50_ms"] == pytest.approx(sorted(rounds)[2])
    assert entry["recommend_cpu_p50_ms"] > 0 and len(entry["serve_load_average"]) == 2
    assert json.loads((tmp_path / "scale.json").read_text())["sizes"] == report["sizes"]


def test_bench_command_needs_a_bundle_or_valid_sizes(tmp_path, capsys, monkeypatch):
    from edgerec.benchmarks import scale
    from edgerec.sdk.cli import main

    assert main(["bench", "--out", str(tmp_path / "o")]) == 2
    assert "a BUNDLE directory or --scale SIZES" in capsys.readouterr().err
    assert main(["bench", "--scale", "1e4,abc", "--out", str(tmp_path / "o")]) == 2
    assert "catalogue sizes" in capsys.readouterr().err
    assert main(["bench", str(tmp_path), "--scale", "1e4", "--out", str(tmp_path / "o")]) == 2
    calls = []
    monkeypatch.setattr(scale, "run_scale", lambda sizes, out, say=None: calls.append((sizes, out)) or {"sizes": []})
    assert main(["bench", "--scale", "1e3,2e3", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert calls == [([1000, 2000], str(tmp_path / "o"))]
