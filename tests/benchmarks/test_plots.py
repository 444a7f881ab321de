"""The size-vs-ΔAUC-vs-latency scatter keeps its point labels readable: no two number labels
overlap, none covers a marker, and every artifact is keyed in the legend."""
import pytest

from edgerec.benchmarks.tradeoff import overlap, place_labels, tradeoff_figure


def _record(backend, variant, size_kb, delta, p50):
    return {"scenario": "tensor", "backend": backend, "variant": variant, "batch": 1, "threads": 1,
            "size_bytes": int(size_kb * 1024), "delta_auc": delta, "p50_ms": p50}


def _clustered_records():
    """What a real DIN bundle gives: fp32 TFLite and ONNX at the same size/ΔAUC, int8 files close."""
    return [_record("edgerec_litert", "fused_fp32.tflite", 1364, 0.0, 0.048),
            _record("edgerec_onnxruntime", "fused_fp32.onnx", 1369, -0.00001, 0.142),
            _record("edgerec_onnxruntime", "fused_trt_int8.onnx", 1289, -0.0001, 0.164),
            _record("edgerec_litert", "fused_dynamic.tflite", 358, -0.0001, 0.045),
            _record("edgerec_onnxruntime", "fused_dynamic.onnx", 377, -0.0002, 0.168),
            _record("edgerec_litert", "fused_int8.tflite", 363, -0.0025, 0.046),
            _record("raw_litert", "fused_int8.tflite", 363, -0.0025, 0.036),        # same artifact: one point
            _record("edgerec_onnxruntime", "fused_qdq_int8.onnx", 365, -0.0024, 0.187),
            _record("edgerec_onnxruntime", "fused_extra.onnx", 366, -0.0024, 0.19)]


def _boxes(fig, artists):
    renderer = fig.canvas.get_renderer()
    return [tuple(a.get_window_extent(renderer).extents) for a in artists]


def test_tradeoff_labels_do_not_overlap():
    pytest.importorskip("matplotlib")
    fig, ax, labels = tradeoff_figure(_clustered_records())
    try:
        assert [label.get_text() for label in labels] == [str(i) for i in range(1, 9)]   # one per artifact
        boxes = _boxes(fig, labels)
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not overlap(a, b)
        markers = [tuple(ax.transData.transform(label.xy)) for label in labels]
        for box in boxes:
            for x, y in markers:
                assert not (box[0] < x < box[2] and box[1] < y < box[3])            # no label on a marker
        legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
        assert len(legend_texts) == 8 and any("fused_qdq_int8.onnx (onnxruntime)" in t for t in legend_texts)
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)


def test_place_labels_on_identical_points():
    plt = pytest.importorskip("matplotlib.pyplot")
    fig, ax = plt.subplots(figsize=(4, 3))
    try:
        ax.scatter([1.0] * 6, [2.0] * 6)
        ax.set_xlim(0, 2)
        ax.set_ylim(0, 4)
        labels = place_labels(ax, [(1.0, 2.0)] * 6, [f"#{i}" for i in range(6)])
        boxes = _boxes(fig, labels)
        assert all(not overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    finally:
        plt.close(fig)
