"""What the plots show: each artifact's edgerec row beside its raw rows, every overhead row drawn
and coloured by its own goal with the ratios clear of the goal line, the |ΔAUC| budget and the
selected variants marked; PNGs written atomically."""
from pathlib import Path

import pytest

from edgerec.benchmarks.report import comparisons

pytest.importorskip("matplotlib")

from edgerec.benchmarks.figures import save_png  # noqa: E402
from edgerec.benchmarks.plots import (OVER, WITHIN, latency_figure, latency_rows, overhead_figure,  # noqa: E402
                                      write_plots)
from edgerec.benchmarks.tradeoff import tradeoff_figure  # noqa: E402

from .test_plots import _clustered_records  # noqa: E402


def _rec(scenario, backend, variant, batch, p50):
    return {"scenario": scenario, "backend": backend, "variant": variant, "batch": batch, "threads": 1,
            "p50_ms": p50, "p90_ms": p50 * 1.2, "p99_ms": p50 * 1.5, "p999_ms": p50 * 2, "interleaved": True,
            "size_bytes": 40_000, "delta_auc": -0.0005}


def _records():
    out = []
    for batch in (1, 32):
        for variant, raw, direct, edgerec in (("fused_int8.tflite", 0.012, 0.0095, 0.0125),
                                              ("fused_fp32.tflite", 0.0125, 0.010, 0.0129)):
            out += [_rec("tensor", "raw_litert", variant, batch, raw * batch),
                    _rec("tensor", "raw_litert_direct", variant, batch, direct * batch),
                    _rec("tensor", "edgerec_litert", variant, batch, edgerec * batch),
                    _rec("raw_request", "raw_litert", variant, batch, raw * batch),
                    _rec("raw_request", "edgerec_litert", variant, batch, raw * batch * 2.4)]   # over 2×
        long_name = "user_encoder_and_scorer_fused_qdq_int8_per_channel.onnx"
        out += [_rec("tensor", "raw_onnxruntime", long_name, batch, 0.05 * batch),
                _rec("tensor", "edgerec_onnxruntime", long_name, batch, 0.052 * batch),
                _rec("tensor", "keras_tf_function", "keras", batch, 0.6), _rec("tensor", "keras_eager", "keras", batch, 9)]
    return out


def test_edgerec_row_sits_right_after_its_raw_rows():
    layout = latency_rows([r for r in _records() if r["scenario"] == "tensor"])
    rows = [e for e in layout if e[0] == "row"]
    for variant in ("fused_int8.tflite", "fused_fp32.tflite"):
        mine = [i for i, e in enumerate(layout) if e[0] == "row" and e[1] == variant]
        assert [layout[i][3] for i in mine] == ["raw", "raw direct", "edgerec"]
        assert mine == list(range(mine[0], mine[0] + 3))                    # adjacent, no other rows between
        assert layout[mine[0] - 1] == ("heading", f"{variant} (litert)")
    assert [e[3] for e in rows[-2:]] == ["tf.function", "eager"]             # Keras last, in its own group
    fig, axes, shown = latency_figure(_records())
    try:
        assert len(axes) == 2 and shown == layout                            # one panel per batch, same rows
        labels = [t.get_text() for t in axes[0].get_yticklabels()]
        assert "fused_int8.tflite (litert)" in labels and labels.count("edgerec") == 3
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)


def test_overhead_draws_every_row_coloured_by_its_own_goal():
    from matplotlib.colors import to_rgba

    comp = comparisons(_records())
    assert any(o["raw"].endswith("_direct") and not o["meets_goal"] for o in comp["overhead"])
    fig, axes, layouts = overhead_figure(comp)
    try:
        renderer = fig.canvas.get_renderer()
        for scenario, ax in axes.items():
            expected_rows = [o for o in comp["overhead"] if o["scenario"] == scenario]
            bars = ax.patches
            assert len(bars) == len(expected_rows)                           # direct-path rows included
            drawn = [e[1] for e in layouts[scenario] if e[0] == "row"]
            assert sorted(map(id, drawn)) == sorted(map(id, expected_rows))
            for bar, row in zip(bars, drawn):
                assert bar.get_facecolor() == to_rgba(WITHIN if row["meets_goal"] else OVER)
                assert bar.get_width() == pytest.approx(row["ratio"])
            goal_x = ax.transData.transform((row["goal"], 0))[0]
            right = ax.get_window_extent(renderer).x1
            values = [t for t in ax.texts if t.get_text().endswith("×")]
            assert len(values) == len(expected_rows)
            for text in values:                                               # clear of the goal line
                box = text.get_window_extent(renderer)
                assert box.x0 > goal_x and box.x0 >= right
            labels = [t.get_text() for t in ax.get_yticklabels()]
            assert not any("…" in t for t in labels)
        assert {o["scenario"] for o in comp["overhead"]} == set(axes)
        long_heading = next(t for t in (t.get_text() for t in axes["tensor"].get_yticklabels()) if "per_channel" in t)
        assert long_heading.replace("\n", "") == "user_encoder_and_scorer_fused_qdq_int8_per_channel.onnx (onnxruntime)"
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)


def test_tradeoff_marks_the_budget_and_the_selected_variants():
    bundle = {"selected": {"litert": {"fused": "fused_int8.tflite"}, "onnxruntime": {"fused": "fused_dynamic.onnx"}},
              "budget": 0.003, "artifacts": [{"file": "fused_qdq_int8.onnx", "status": "rejected"}]}
    fig, ax, _ = tradeoff_figure(_clustered_records(), bundle)
    try:
        levels = sorted({round(line.get_ydata()[0], 6) for line in ax.lines})
        assert -0.003 in levels and 0.003 in levels
        marker_legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "selected (served)" in marker_legend and "|ΔAUC| budget ≤ 0.003" in marker_legend
        rings = [c for c in ax.collections if len(c.get_offsets()) and not len(c.get_facecolors())]
        assert len(rings) == 1
        ringed = sorted(tuple(p) for p in rings[0].get_offsets())
        assert ringed == sorted([(363 * 1024 / 1024, -0.0025), (377 * 1024 / 1024, -0.0002)])
        keyed = [t.get_text() for t in fig.legends[0].get_texts()]
        assert sum(t.endswith("— selected") for t in keyed) == 2 and any(t.endswith("— rejected") for t in keyed)
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)
    fig, ax, _ = tradeoff_figure(_clustered_records(), {"budget": 0.5})
    try:
        assert any("beyond the plotted range" in t.get_text() for t in ax.get_legend().get_texts())
    finally:
        plt.close(fig)


def test_pngs_are_written_atomically(tmp_path):
    import matplotlib.pyplot as plt

    target = tmp_path / "plot.png"
    target.write_bytes(b"old")

    def crash_half_way(fname, **kwargs):      # writes part of the file, then fails
        if hasattr(fname, "write"):
            fname.write(b"\x89PNG half")
        else:
            Path(fname).write_bytes(b"\x89PNG half")
        raise RuntimeError("renderer crashed")
    fig = plt.figure()
    fig.savefig = crash_half_way
    with pytest.raises(RuntimeError):
        save_png(fig, target)
    assert target.read_bytes() == b"old"                                  # the old file is untouched
    report = {"results": _records(), "comparisons": comparisons(_records()), "bundle": {}}
    written = write_plots(report, tmp_path)
    assert {p.name for p in written} == {"latency_percentiles.png", "overhead.png", "size_auc_latency.png"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["plot.png", *(p.name for p in written)])
