"""`edgerec info`, `edgerec pack` and `edgerec env`: the library calls and their command modules."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest

import edgerec.runtime as er
from edgerec.runtime.describe import describe_bundle, render_info
from edgerec.runtime.environment import environment_report, render_environment
from edgerec.runtime.errors import BundleError, IntegrityError
from edgerec.runtime.examples import check_bundle
from edgerec.runtime.manifest import load_manifest
from edgerec.runtime.pack import pack_bundle

from .conftest import make_onnx_bundle, relist


def _command(module, *argv) -> int:
    parser = argparse.ArgumentParser(prog=f"edgerec {module.__name__.rsplit('.', 1)[-1]}")
    module.configure(parser)
    return module.run(parser.parse_args(list(argv)))


def _archive(folder, path):
    with tarfile.open(path, "w:gz") as tar:
        for item in sorted(folder.iterdir()):
            tar.add(item, arcname=item.name)
    return path


# -- info --------------------------------------------------------------------------------------
def test_describe_an_onnx_bundle_and_its_archive(tmp_path):
    path = make_onnx_bundle(tmp_path / "b", precision="int8", validation={"delta_auc": -0.002, "max_abs_diff": 0.03})
    info = describe_bundle(path)
    assert info["integrity"] == "ok" and info["parts"] == ["fused"] and info["model"]["family"] == "din"
    onnx = info["selected"]["onnxruntime"]
    assert onnx["artifacts"]["fused"]["precision"] == "int8"
    assert onnx["artifacts"]["fused"]["validation"] == {"delta_auc": -0.002, "max_abs_diff": 0.03}
    assert info["inputs"]["fused"] == [{"name": "hist_items", "dtype": "int32", "shape": [None, 4]},
                                       {"name": "cand_item", "dtype": "int32", "shape": [None]}]
    example = info["request"]["example"]
    assert set(example) == {"history", "item"} and "expected" not in example
    assert info["examples"] == {"rows": 32, "kind": "requests"}
    on_disk = sum(p.stat().st_size for p in path.iterdir())
    assert info["size_bytes"] == on_disk and onnx["size_bytes"] < on_disk
    text = render_info(info)
    for words in ("onnxruntime", "fused_int8.onnx", "ΔAUC -0.0020", "hist_items int32[batch, 4]", '"item": '):
        assert words in text, text
    assert json.dumps(info)        # JSON-ready
    packed = describe_bundle(_archive(path, tmp_path / "b.tar.gz"))
    assert {k: v for k, v in packed.items() if k != "bundle"} == {k: v for k, v in info.items() if k != "bundle"}


def test_describe_reports_a_damaged_bundle_instead_of_failing(tmp_path):
    path = make_onnx_bundle(tmp_path / "b")
    (path / "examples.jsonl").write_text("{}\n")
    info = describe_bundle(path)
    assert "examples.jsonl" in info["integrity"] and info["examples"] is None
    assert info["request"]["example"] is not None          # built from the feature spec


def test_info_command_prints_text_and_json(tmp_path, capsys):
    from edgerec.sdk.cli import info

    path = make_onnx_bundle(tmp_path / "b")
    assert _command(info, str(path)) == 0
    assert "request format" in capsys.readouterr().out
    assert _command(info, str(path), "--json") == 0
    assert json.loads(capsys.readouterr().out)["selected"]["onnxruntime"]["artifacts"]["fused"]["file"] == "fused_fp32.onnx"
    with pytest.raises(BundleError):
        _command(info, str(tmp_path / "missing"))


@pytest.mark.slow
def test_describe_the_real_bundle(bundle):
    info = describe_bundle(bundle)
    assert set(info["selected"]) == {"litert", "onnxruntime"}
    assert info["parts"] == ["fused", "scorer", "user_encoder"]
    assert [t["name"] for t in info["inputs"]["user_encoder"]] == ["hist_items"]
    assert set(info["request"]["keys"]) == {"user_id", "history", "item", "context", "dense"}


# -- pack ----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("backend, suffix", [("litert", ".tflite"), ("onnxruntime", ".onnx")])
def test_pack_keeps_one_backend_and_still_answers_its_examples(bundle, tmp_path, backend, suffix):
    out = pack_bundle(bundle, backend, tmp_path / "app")
    manifest = load_manifest(out, verify=True)
    assert {a.file for a in manifest.artifacts} == set(load_manifest(bundle).selected[backend].values())
    assert all(a.file.endswith(suffix) for a in manifest.artifacts) and set(manifest.selected) == {backend}
    assert {f["role"] for f in manifest.files} == {"feature_spec", "examples"}
    assert sorted(p.name for p in out.iterdir()) == sorted([a.file for a in manifest.artifacts]
                                                           + ["examples.jsonl", "feature_spec.json", "manifest.json"])
    size = lambda folder: sum(p.stat().st_size for p in folder.iterdir())  # noqa: E731
    assert size(out) < size(bundle)
    assert all(r.passed for r in check_bundle(out)) and {r.backend for r in check_bundle(out)} == {backend}
    lines = [json.loads(x) for x in (out / "examples.jsonl").read_text().splitlines()]
    with er.load(out, backend=backend) as predictor:
        np.testing.assert_allclose(predictor.predict(lines), [x["expected"] for x in lines], atol=1e-5)


def test_pack_to_an_archive_and_over_an_old_pack(tmp_path):
    path = make_onnx_bundle(tmp_path / "b")
    archive = pack_bundle(path, "onnxruntime", tmp_path / "app.tar.gz")
    assert archive.is_file() and all(r.passed for r in check_bundle(archive))
    again = pack_bundle(archive, "onnxruntime", tmp_path / "app")      # from an archive, too
    pack_bundle(path, "onnxruntime", again)                             # replaces an old pack
    assert load_manifest(again).lineage["packed"]["backend"] == "onnxruntime"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp folders left


def test_pack_refuses_what_it_cannot_do_safely(tmp_path):
    path = make_onnx_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="tflite"):
        pack_bundle(path, "litert", tmp_path / "app")                   # nothing for litert here
    with pytest.raises(BundleError, match="backend"):
        pack_bundle(path, "coreml", tmp_path / "app")
    with pytest.raises(BundleError, match="outside the source"):
        pack_bundle(path, "onnxruntime", path / "inner")
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "cat.jpg").write_bytes(b"x")
    with pytest.raises(BundleError, match="replaced"):
        pack_bundle(path, "onnxruntime", precious)
    assert (precious / "cat.jpg").is_file()
    (path / "fused_fp32.onnx").write_bytes(b"tampered")
    with pytest.raises(IntegrityError):
        pack_bundle(path, "onnxruntime", tmp_path / "app")
    assert not (tmp_path / "app").exists()


def test_pack_command(tmp_path, capsys):
    from edgerec.sdk.cli import pack

    path = make_onnx_bundle(tmp_path / "b")
    relist(path)
    assert _command(pack, str(path), "--backend", "onnxruntime", "--out", str(tmp_path / "app")) == 0
    assert "1 of 1 artifacts (fused_fp32.onnx)" in capsys.readouterr().out


# -- env -------------------------------------------------------------------------------------------
def test_environment_report_without_importing_tensorflow():
    code = ("import sys, json\n"
            "from edgerec.runtime.environment import environment_report, render_environment\n"
            "report = environment_report()\n"
            "render_environment(report)\n"
            "print(json.dumps({'report': report, 'heavy': sorted(m for m in ('tensorflow', 'tf_keras', 'tf2onnx', "
            "'keras', 'tensorflow_model_optimization') if m in sys.modules)}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    report = out["report"]
    assert report["python"] == sys.version.split()[0] and report["numpy"] == np.__version__
    ort = report["backends"]["onnxruntime"]
    assert ort["installed"] and "CPUExecutionProvider" in ort["providers_listed"] and "GPU" in ort["note"]
    assert set(report["extras"]) >= {"train", "bench", "litert", "onnx"}


def test_environment_names_missing_extras_with_the_pip_command(monkeypatch):
    from edgerec.runtime import environment

    real = environment._version
    monkeypatch.setattr(environment, "_version", lambda d: None if d in ("matplotlib", "tf2onnx") else real(d))
    report = environment_report()
    assert "matplotlib" in report["extras"]["bench"]["missing"]
    assert report["extras"]["bench"]["install"] == "pip install 'edgerec[bench]'"
    assert "tf2onnx" in report["extras"]["train"]["missing"]
    text = render_environment(report)
    assert "missing matplotlib" in text and "pip install 'edgerec[train]'" in text


def test_env_command_json(capsys):
    from edgerec.sdk.cli import env

    assert _command(env, "--json") == 0
    assert "backends" in json.loads(capsys.readouterr().out)


# -- ONNX Runtime logs ---------------------------------------------------------------------------
def _noisy_onnx(path):
    """A valid model with an unused initializer: ORT warns about it while optimising the graph."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])
    unused = helper.make_tensor("unused_weight", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "noisy", [x], [y], [unused])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("verbose", ["", "1"])
def test_ort_warnings_only_when_verbose(tmp_path, verbose):
    model = _noisy_onnx(tmp_path / "noisy.onnx")
    code = ("from edgerec.runtime.backends import create_backend\n"
            f"backend = create_backend('onnxruntime', {str(model)!r})\n"
            "print('SEVERITY', backend._session.get_session_options().log_severity_level)\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "EDGEREC_VERBOSE"}
    if verbose:
        env["EDGEREC_VERBOSE"] = verbose
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"SEVERITY {2 if verbose else 3}" in result.stdout
    if verbose:
        assert "unused_weight" in result.stderr
    else:
        assert "unused_weight" not in result.stderr and "\x1b[" not in result.stderr


def test_ort_severity_follows_edgerec_debug_logging(monkeypatch):
    import logging

    from edgerec.runtime.backends.ort import session_log_severity

    monkeypatch.delenv("EDGEREC_VERBOSE", raising=False)
    logger = logging.getLogger("edgerec")
    old = logger.level
    try:
        logger.setLevel(logging.INFO)
        assert session_log_severity() == 3
        logger.setLevel(logging.DEBUG)
        assert session_log_severity() == 2
    finally:
        logger.setLevel(old)
