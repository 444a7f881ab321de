"""`edgerec export` / `edgerec validate`: progress, table, archive, sha256 + replay without TF, errors."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _support():
    spec = importlib.util.spec_from_file_location("validate_support_c", Path(__file__).with_name("test_validate_support.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


S = _support()


def _cli(*args, block_tf=False, cwd=None):
    """Run the console entry point in a fresh interpreter (optionally with TF/Keras unimportable)."""
    prelude = ("import sys\n" + ("for m in ('tensorflow', 'tf_keras', 'keras'):\n    sys.modules[m] = None\n"
                                 if block_tf else "") +
               "from edgerec.sdk.cli import main\nrc = main(sys.argv[1:])\n"
               "print('TF_LOADED=' + str(any(sys.modules.get(m) for m in ('tensorflow', 'tf_keras'))))\n"
               "sys.exit(rc)\n")
    env = {**os.environ, "EDGEREC_CACHE": str(Path(cwd or tempfile.gettempdir()) / "edgerec-test-cache")}
    return subprocess.run([sys.executable, "-c", prelude, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=600)


@pytest.fixture(scope="module")
def cli_bundle(model_dir, tmp_path_factory):
    from edgerec.converters.keras_io import load_keras_model
    from edgerec.sdk.cli import main

    root = tmp_path_factory.mktemp("cli")
    mdir = S.write_model_dir(root / "model", load_keras_model(model_dir / "din.keras"))
    out = root / "BUNDLE"
    rc = main(["export", str(mdir), "--quantize", "dynamic", "--targets", "tflite", "--out", str(out),
               "--archive", "--cache-dir", str(root / "cache")])
    return {"rc": rc, "out": out, "root": root, "mdir": mdir}


def test_export_writes_bundle_archive_and_table(cli_bundle, capsys):
    assert cli_bundle["rc"] == 0
    assert (cli_bundle["out"] / "manifest.json").is_file()
    assert (cli_bundle["root"] / "BUNDLE.tar.gz").is_file()
    manifest = json.loads((cli_bundle["out"] / "manifest.json").read_text())
    assert {a["file"] for a in manifest["artifacts"]} == {"fused_fp32.tflite", "fused_dynamic.tflite"}


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_validate_in_process_with_keras(cli_bundle, capsys):
    from edgerec.sdk.cli import main

    assert main(["validate", str(cli_bundle["out"]), "--keras", str(cli_bundle["mdir"]), "--max-groups", "5"]) == 0
    captured = capsys.readouterr()
    assert "sha256 ok" in captured.err and "re-validating 2 artifact(s) against Keras" in captured.err
    assert _last_json(captured.out)["status"] == "ok"
    assert main(["validate", str(cli_bundle["root"] / "BUNDLE.tar.gz"), "--examples-only"]) == 0


def test_validate_without_keras_is_not_verified(cli_bundle, capsys):
    """Skipped is never ok: without --keras the comparison with the trained model did not run."""
    from edgerec.sdk.cli import main

    capsys.readouterr()
    assert main(["validate", str(cli_bundle["out"])]) == 1
    captured = capsys.readouterr()
    summary = _last_json(captured.out)
    assert summary["status"] == "not_verified" and "--keras" in summary["reasons"][0]
    assert "not verified" in captured.err and all(r["passed"] for r in summary["replays"])


def test_validate_without_tensorflow_replays_examples(cli_bundle):
    proc = _cli("validate", cli_bundle["out"], "--examples-only", block_tf=True)
    assert proc.returncode == 0, proc.stderr
    assert "TF_LOADED=False" in proc.stdout
    assert "fused_fp32.tflite" in proc.stderr and "OK" in proc.stderr
    proc = _cli("validate", cli_bundle["out"], "--keras", cli_bundle["mdir"], block_tf=True)
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-2])
    assert summary["status"] == "not_verified" and "TensorFlow is not installed" in summary["reasons"][0]


def test_validate_never_imports_what_the_bundle_names(cli_bundle, tmp_path, capsys, monkeypatch):
    """A manifest whose model.source points at a model dir naming a custom_objects_module: validate
    neither imports that module nor loads those Keras files (the user names the model with --keras)."""
    import shutil
    import sys

    from edgerec.runtime.manifest import load_manifest, write_manifest
    from edgerec.sdk.cli import main

    evil = tmp_path / "evil"
    shutil.copytree(cli_bundle["mdir"], evil)
    marker = tmp_path / "imported.txt"
    (tmp_path / "evil_layers_xyz.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    meta = json.loads((evil / "edgerec_model.json").read_text())
    meta["custom_objects_module"] = "evil_layers_xyz"
    (evil / "edgerec_model.json").write_text(json.dumps(meta))
    copy = tmp_path / "bundle"
    shutil.copytree(cli_bundle["out"], copy)
    manifest = load_manifest(copy, verify=True)
    manifest.model["source"] = str(evil)
    write_manifest(copy, manifest)
    assert main(["validate", str(copy)]) == 1
    assert _last_json(capsys.readouterr().out)["status"] == "not_verified"
    assert not marker.exists() and "evil_layers_xyz" not in sys.modules


def test_validate_catches_tampering_and_wrong_expected(cli_bundle, tmp_path, capsys):
    import shutil

    from edgerec.runtime.manifest import load_manifest, write_manifest
    from edgerec.runtime.manifest import file_entry
    from edgerec.sdk.cli import main

    copy = tmp_path / "b"
    shutil.copytree(cli_bundle["out"], copy)
    art = copy / "fused_dynamic.tflite"
    art.write_bytes(art.read_bytes()[:-7] + b"\0" * 7)
    capsys.readouterr()
    assert main(["validate", str(copy), "--examples-only"]) == 1
    captured = capsys.readouterr()
    assert "fused_dynamic.tflite" in captured.err and "sha256" in captured.err
    assert _last_json(captured.out)["status"] == "failed"
    shutil.rmtree(copy)
    shutil.copytree(cli_bundle["out"], copy)
    lines = [json.loads(x) for x in (copy / "examples.jsonl").read_text().splitlines()]
    for line in lines:  # a bundle whose artifacts disagree with its examples
        line["expected"] = (line["expected"] + 0.5) % 1.0
    (copy / "examples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    manifest = load_manifest(copy, verify=False)
    manifest.files = [file_entry(copy, f["file"], f.get("role", "")) for f in manifest.files]
    write_manifest(copy, manifest)
    assert main(["validate", str(copy), "--examples-only"]) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.err and "fused_fp32.tflite" in captured.err and "fused_dynamic.tflite" in captured.err
    assert _last_json(captured.out)["status"] == "failed"


@pytest.mark.parametrize("args, match", [
    (["export", "/nonexistent/model", "--out", "x"], "existing model directory"),
    (["export", ".", "--out", "x", "--targets", "tflite,coreml"], "targets among"),
    (["export", ".", "--out", "x", "--prune", "1.5"], "strictly between 0 and 1"),
    (["validate", "/nonexistent/bundle"], "existing bundle directory"),
])
def test_bad_inputs_give_clear_errors(args, match, capsys):
    from edgerec.sdk.cli import main

    assert main(args) == 2
    assert match in capsys.readouterr().err


def test_byom_keras3_through_the_cli(tmp_path):
    code = (
        "import numpy as np, keras\n"
        "ids = keras.Input((4,), dtype='int32', name='ids'); num = keras.Input((2,), dtype='float32', name='num')\n"
        "x = keras.layers.Flatten()(keras.layers.Embedding(30, 4)(ids))\n"
        "x = keras.layers.Dense(8, activation='relu')(keras.layers.Concatenate()([x, num]))\n"
        "keras.Model([ids, num], keras.layers.Dense(1, activation='sigmoid')(x)).save('mine.keras')\n"
        "rng = np.random.default_rng(0); v = rng.integers(0, 30, size=(200, 4)).astype(np.int32)\n"
        "np.savez('rows.npz', ids=v, num=rng.normal(size=(200, 2)).astype(np.float32),"
        " labels=(v[:, 0] % 2).astype(np.float32))\n")
    subprocess.run([sys.executable, "-c", "import edgerec.converters\n" + code], cwd=tmp_path, check=True,
                   capture_output=True, timeout=300)
    proc = _cli("export", "mine.keras", "--data", "rows.npz", "--out", "B", "--quantize", "dynamic",
                "--targets", "tflite,onnx", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "B" / "manifest.json").read_text())
    assert manifest["feature_spec"] is None and manifest["model"]["keras"] == "keras3"
    assert {t["name"] for t in manifest["artifacts"][0]["inputs"]} == {"ids", "num"}
    line = json.loads((tmp_path / "B" / "examples.jsonl").read_text().splitlines()[0])
    assert set(line["inputs"]) == {"ids", "num"} and set(line["expected"]) == {"score"}
    assert _cli("validate", "B", "--examples-only", cwd=tmp_path, block_tf=True).returncode == 0
    checked = _cli("validate", "B", "--keras", "mine.keras", "--data", "rows.npz", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr[-3000:]
    refused = _cli("export", "mine.keras", "--data", "rows.npz", "--out", "C", "--prune", "0.5", cwd=tmp_path)
    assert refused.returncode == 2 and "tfmot cannot prune Keras 3" in refused.stderr


@pytest.mark.slow
def test_export_targets_triton_and_tensorrt(cli_bundle, capsys):
    """`--targets triton,tensorrt` adds ONNX, writes a checked Triton repository and states why engines were skipped."""
    import importlib.util

    from edgerec.converters.triton_check import check_triton_repository
    from edgerec.sdk.cli import main

    out = cli_bundle["root"] / "SERVING"
    capsys.readouterr()
    rc = main(["export", str(cli_bundle["mdir"]), "--quantize", "none", "--targets", "triton,tensorrt",
               "--out", str(out), "--cache-dir", str(cli_bundle["root"] / "cache"), "--quiet"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    manifest = json.loads((out / "manifest.json").read_text())
    assert any(a["format"] == "onnx" for a in manifest["artifacts"])
    assert (out / "triton" / "fused" / "config.pbtxt").is_file()
    assert (out / "triton" / "fused" / "1" / "model.onnx").is_file()
    assert check_triton_repository(out / "triton", out) == []
    assert "fused" in summary["triton"]["models"]
    if importlib.util.find_spec("tensorrt") is None:   # no engines here, and each part says why
        assert summary["tensorrt"] and all(r["status"] == "skipped" and r["reason"] and r["engine"] is None
                                           for r in summary["tensorrt"].values())
