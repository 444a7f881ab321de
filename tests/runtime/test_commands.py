"""`edgerec predict` / `edgerec check` (sdk/cli/predict.py, check.py) on the small real bundle (and without TensorFlow)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgerec.runtime.manifest import file_entry, load_manifest, write_manifest

pytestmark = pytest.mark.slow


def _cli(*argv):
    """The runtime's command modules through the configure/run contract and error mapping of
    edgerec.sdk.cli (built here so an unrelated broken command module cannot hide their failures)."""
    import argparse

    from edgerec.runtime.errors import EdgeRecError
    from edgerec.sdk.cli import check, predict

    parser = argparse.ArgumentParser(prog="edgerec")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {"predict": predict, "check": check}
    for name, module in modules.items():
        module.configure(sub.add_parser(name))
    args = parser.parse_args(list(argv))
    try:
        return int(modules[args.command].run(args) or 0)
    except EdgeRecError as err:
        print(f"edgerec {args.command}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


def test_predict_examples_and_candidates(bundle, tmp_path):
    lines = (bundle / "examples.jsonl").read_text().splitlines()[:6]
    rows = [json.loads(line) for line in lines]
    extra = {"user_id": "u9", "history": ["10", "11"], "candidates": ["12", "13", "99"], "request_id": "r1"}
    bad = {"history": ["10"]}      # no item
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(lines + [json.dumps(extra), json.dumps(bad)]) + "\n")
    out = tmp_path / "out.jsonl"
    assert _cli("predict", str(bundle), "--input", str(inp), "--output", str(out), "--backend", "litert") == 1
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(results) == 8
    np.testing.assert_allclose([r["score"] for r in results[:6]], [r["expected"] for r in rows], atol=1e-5)
    assert len(results[6]["scores"]) == 3 and results[6]["request_id"] == "r1"
    assert results[7]["error"]["type"] == "RequestError" and results[7]["line"] == 8
    inp.write_text("\n".join(lines) + "\n")
    assert _cli("predict", str(bundle), "--input", str(inp), "--output", str(out), "--batch-size", "4") == 0


def test_check_passes_and_fails(bundle, copy_bundle, capsys):
    assert _cli("check", str(bundle)) == 0
    printed = capsys.readouterr().out
    assert "onnxruntime: 32 examples" in printed and "litert: 32 examples" in printed and "FAIL" not in printed
    path = copy_bundle("skewed")
    rows = [json.loads(line) for line in (path / "examples.jsonl").read_text().splitlines()]
    rows[3]["expected"] += 0.05
    (path / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = load_manifest(path, verify=False)
    manifest.files = [file_entry(path, "feature_spec.json", "feature_spec"), file_entry(path, "examples.jsonl", "examples")]
    write_manifest(path, manifest)
    assert _cli("check", str(path), "--backend", "litert") == 1
    assert "FAIL" in capsys.readouterr().out
    assert _cli("check", str(path), "--backend", "litert", "--tolerance", "0.1") == 0


def test_cli_errors_are_clean(tmp_path, bundle):
    assert _cli("predict", str(tmp_path / "missing"), "--input", str(tmp_path / "x.jsonl")) == 2
    assert _cli("check", str(tmp_path)) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert _cli("predict", str(bundle), "--input", str(bad)) == 1      # the line failed, not the run
    assert _cli("predict", str(bundle), "--input", str(tmp_path / "absent.jsonl")) == 2


def test_predict_command_does_not_import_tensorflow(bundle, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text((bundle / "examples.jsonl").read_text())
    code = (
        "import sys\n"
        "from edgerec.sdk.cli import main\n"  # the real console entry point
        f"rc = main(['predict', {str(bundle)!r}, '--input', {str(inp)!r}, '--output', {str(tmp_path / 'o.jsonl')!r}])\n"
        f"rc2 = main(['check', {str(bundle)!r}])\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'tf_keras', 'tf2onnx', 'tensorflow_model_optimization') if m in sys.modules)\n"
        "print('RC', rc, rc2, 'HEAVY', heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "RC 0 0 HEAVY []" in result.stdout, result.stdout + result.stderr[-2000:]


def test_byom_bundle_tensor_examples(copy_bundle, tmp_path, capsys):
    """A bundle without a feature spec replays/predicts tensor rows {"inputs": …, "expected": …}."""
    from edgerec.runtime.preprocess import Preprocessor

    from .conftest import make_spec

    path = copy_bundle("byom")
    rows = [json.loads(line) for line in (path / "examples.jsonl").read_text().splitlines()]
    arrays = Preprocessor(make_spec()).encode_requests([{k: v for k, v in r.items() if k != "expected"} for r in rows])
    lines = [{"inputs": {k: v[i].tolist() for k, v in arrays.items()}, "expected": {"score": [r["expected"]]}}
             for i, r in enumerate(rows)]
    (path / "examples.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (path / "feature_spec.json").unlink()
    manifest = load_manifest(path, verify=False)
    manifest.feature_spec = None
    manifest.files = [file_entry(path, "examples.jsonl", "examples")]
    write_manifest(path, manifest)
    assert _cli("check", str(path)) == 0
    assert "litert: 32 examples" in capsys.readouterr().out
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(lines[0]) + "\n" + json.dumps({"history": [], "item": "10"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert _cli("predict", str(path), "--input", str(inp), "--output", str(out)) == 1   # raw line needs a spec
    first, second = [json.loads(line) for line in out.read_text().splitlines()]
    assert abs(first["outputs"]["score"][0] - rows[0]["expected"]) < 1e-5
    assert "feature spec" in second["error"]["message"]
    lines[5]["expected"]["score"] = [lines[5]["expected"]["score"][0] + 0.2]
    (path / "examples.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    manifest.files = [file_entry(path, "examples.jsonl", "examples")]
    write_manifest(path, manifest)
    assert _cli("check", str(path), "--backend", "onnxruntime") == 1
