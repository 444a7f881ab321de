"""`edgerec demo --tiny` end to end: data → DIN → compress/export → validate/select → bench → report."""
import json
import struct

import pytest

from edgerec.sdk.cli import main


def test_demo_rejects_unknown_data(tmp_path, capsys):
    assert main(["demo", "--data", "csv:/nowhere", "--out", str(tmp_path)]) == 2
    assert "Expected --data 'synthetic' or 'movielens:PATH'" in capsys.readouterr().err


def test_demo_rejects_bad_epochs(tmp_path, capsys):
    assert main(["demo", "--tiny", "--epochs", "0", "--out", str(tmp_path)]) == 2
    assert "Expected epochs as a positive int" in capsys.readouterr().err
    assert main(["demo", "--budget-s", "-1", "--out", str(tmp_path)]) == 2
    assert "Expected budget_s as a positive number" in capsys.readouterr().err


def _replay_result(passed: bool):
    from edgerec.runtime.contract import tolerance_for
    from edgerec.runtime.examples import ReplayResult

    return ReplayResult("fused_int8.tflite", "litert", {"fused": "fused_int8.tflite"}, "int8", 32,
                        0.01 if passed else 0.9, 0.001 if passed else 0.5, tolerance_for("int8"), passed,
                        None if passed else "worst |Δ| 0.9 > 0.25")


def test_demo_passes_only_when_every_replay_passes():
    from edgerec.sdk.demo import DemoReport

    assert DemoReport("s", [_replay_result(True), _replay_result(True)]).passed
    assert not DemoReport("s", [_replay_result(True), _replay_result(False)]).passed
    assert not DemoReport("s", []).passed                     # nothing replayed proves nothing


def test_demo_command_fails_when_the_replay_fails(tmp_path, monkeypatch, capsys):
    from edgerec.sdk import demo

    seen = {}

    def fake_run_demo(data, out, settings, seed=0):
        seen.update(data=data, out=out, epochs=settings.epochs, budget_s=settings.budget_s, seed=seed)
        return demo.DemoReport("summary text", [_replay_result(False)])

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert main(["demo", "--tiny", "--epochs", "2", "--out", str(tmp_path), "--seed", "3"]) == 1
    assert seen == {"data": "synthetic", "out": tmp_path, "epochs": 2, "budget_s": 0.1, "seed": 3}
    assert "summary text" in capsys.readouterr().out
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: demo.DemoReport("ok", [_replay_result(True)]))
    assert main(["demo", "--out", str(tmp_path)]) == 0


@pytest.mark.slow
def test_demo_tiny_end_to_end(tmp_path, capsys):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "demo"
    assert main(["demo", "--tiny", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    for step in range(1, 7):
        assert f"[{step}/6]" in printed
    assert "tensor path" in printed and "vs tf.fn" in printed
    assert (out / "model" / "edgerec_model.json").is_file()
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    precisions = {(a["format"], a["precision"]) for a in manifest["artifacts"] if a["part"] == "fused"}
    assert ("tflite", "int8") in precisions or ("onnx", "int8") in precisions, precisions
    assert manifest["lineage"]["prune"]["achieved_sparsity"] >= 0.45
    report = json.loads((out / "bench" / "bench.json").read_text())
    ran = {(r["scenario"], r["backend"]) for r in report["results"] if not r.get("error")}
    for needed in [("tensor", "keras_tf_function"), ("tensor", "keras_eager"), ("tensor", "raw_litert"),
                   ("tensor", "edgerec_litert"), ("tensor", "raw_onnxruntime"), ("tensor", "edgerec_onnxruntime"),
                   ("raw_request", "edgerec_litert"), ("raw_request", "edgerec_onnxruntime")]:
        assert needed in ran, (needed, [r.get("error") for r in report["results"] if r.get("error")])
    speed = report["comparisons"]["speedup_vs_keras"]
    assert speed and all(s["vs_keras_tf_function"] is not None for s in speed)
    assert report["comparisons"]["overhead"]
    pngs = list((out / "bench").glob("*.png"))
    assert len(pngs) >= 2
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png.read_bytes()[16:24])
        assert width >= 400 and height >= 300
    summary = (out / "summary.txt").read_text()
    assert "edgerec demo on synthetic" in summary and "tensor path" in summary
    assert "examples replay: passed" in summary
    replayed = [line for line in printed.splitlines() if " examples, " in line]
    assert replayed and all(line.endswith(": OK") for line in replayed), replayed
    assert "\r" not in captured.out and "\r" not in captured.err      # plain lines when not on a terminal


def test_the_demo_artifact_table_sizes_each_artifact_with_the_shared_tables_it_reads():
    from edgerec.runtime.manifest import Artifact, Manifest
    from edgerec.sdk.demo import artifact_table

    arts = [Artifact("fused_fp32.onnx", "onnx", "fp32", "fused", "0" * 64, 10 * 1024, [], []),
            Artifact("fused_dynamic.onnx", "onnx", "dynamic", "fused", "1" * 64, 20 * 1024, [], [])]
    manifest = Manifest(arts, selected={"onnxruntime": {"fused": "fused_fp32.onnx"}})
    manifest.shared_tables = {"tables": [{"file": "shared-" + "2" * 64 + ".bin", "sha256": "2" * 64,
                                          "size_bytes": 300 * 1024,
                                          "uses": [{"artifact": "fused_fp32.onnx", "tensor": "emb"}]}]}
    rows = {line.split()[0]: line.split() for line in artifact_table(manifest).splitlines()[2:]}
    assert rows["fused_fp32.onnx"][4] == "310.0" and rows["fused_dynamic.onnx"][4] == "20.0"
    assert list(rows) == ["fused_dynamic.onnx", "fused_fp32.onnx"]        # ordered by whole-file size
