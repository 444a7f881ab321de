"""The terminal summary's 'vs raw' column is the ratio against the public raw backend call."""
from edgerec.benchmarks.summary import summary_table


def test_vs_raw_uses_the_signature_runner_not_the_direct_path():
    record = {"scenario": "tensor", "backend": "edgerec_litert", "variant": "m.tflite", "batch": 1, "threads": 1,
              "p50_ms": 0.066, "p99_ms": 0.1, "rows_per_s": 15000.0, "size_bytes": 2048, "delta_auc": 0.0}
    overhead = [{"scenario": "tensor", "backend": "edgerec_litert", "raw": raw, "variant": "m.tflite", "batch": 1,
                 "threads": 1, "edgerec_p50_ms": 0.066, "raw_p50_ms": base, "ratio": 0.066 / base, "goal": 1.1}
                for raw, base in (("raw_litert", 0.060), ("raw_litert_direct", 0.050))]
    text = summary_table({"results": [record], "comparisons": {"overhead": overhead}})
    row = next(line for line in text.splitlines() if line.startswith("edgerec_litert"))
    assert row.split()[-2] == "1.10", row           # 0.066 / 0.060, not 0.066 / 0.050 = 1.32
