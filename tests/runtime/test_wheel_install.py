"""The built wheel, installed with ONE runtime extra into a clean venv (no system site-packages),
scores a bundle through the API and the `edgerec predict` console script without TensorFlow."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
import edgerec.runtime as er
from edgerec.runtime.backends import available_backends
rows = [json.loads(line) for line in open(sys.argv[2])]
with er.load(sys.argv[1]) as p:
    scores = p.predict(rows).tolist()
    top = p.top_k({"user_id": "u", "history": ["10", "11"]}, ["12", "13", "14"], k=2)
    backend = p.backend
heavy = sorted(m for m in ("tensorflow", "keras", "tf_keras", "tf2onnx", "onnx") if m in sys.modules)
print("RESULT " + json.dumps({"backend": backend, "available": available_backends(), "scores": scores,
                              "top": len(top), "heavy": heavy}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, text=True, timeout=300, cwd=out)
    wheels = list(out.glob("edgerec-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
EXTRAS = ("onnx", "litert")


def _make_venv(env_dir: Path, wheel: Path, extra: str) -> dict:
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", f"{wheel}[{extra}]"],
                             capture_output=True, text=True, timeout=600, env=CLEAN_ENV, cwd=env_dir)
    return {"dir": env_dir, "python": python, "rc": install.returncode, "stderr": install.stderr}


@pytest.fixture(scope="module")
def venvs(wheel, tmp_path_factory) -> dict:
    """One clean venv per extra, installed concurrently (pip mostly waits on I/O)."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("venvs")
    with ThreadPoolExecutor(len(EXTRAS)) as pool:
        futures = {extra: pool.submit(_make_venv, root / extra, wheel, extra) for extra in EXTRAS}
        return {extra: future.result() for extra, future in futures.items()}


@pytest.mark.parametrize("extra, backend, absent", [("onnx", "onnxruntime", "ai_edge_litert"),
                                                    ("litert", "litert", "onnxruntime")])
def test_wheel_with_one_extra(venvs, bundle, tmp_path, extra, backend, absent):
    env = venvs[extra]
    env_dir, python, clean_env = env["dir"], env["python"], CLEAN_ENV
    if env["rc"] != 0 and "No matching distribution" in env["stderr"]:
        pytest.skip(f"the package index cannot serve the [{extra}] extra here: {env['stderr'][-300:]}")
    assert env["rc"] == 0, env["stderr"][-3000:]
    freeze = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True,
                            env=clean_env, cwd=tmp_path).stdout.lower()
    assert "tensorflow" not in freeze and absent.replace("_", "-") not in freeze

    examples = bundle / "examples.jsonl"
    result = subprocess.run([str(python), "-c", PROBE, str(bundle), str(examples)], capture_output=True,
                            text=True, timeout=300, env=clean_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("RESULT ", 1)[1])
    assert report["backend"] == backend and report["available"] == [backend] and report["heavy"] == []
    want = [json.loads(line)["expected"] for line in examples.read_text().splitlines()]
    np.testing.assert_allclose(report["scores"], want, atol=1e-5)
    assert report["top"] == 2

    out = tmp_path / "out.jsonl"
    cli = subprocess.run([str(env_dir / "bin" / "edgerec"), "predict", str(bundle), "--input", str(examples),
                          "--output", str(out)], capture_output=True, text=True, timeout=300, env=clean_env, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr[-3000:]
    np.testing.assert_allclose([json.loads(line)["score"] for line in out.read_text().splitlines()], want, atol=1e-5)
    check = subprocess.run([str(env_dir / "bin" / "edgerec"), "check", str(bundle)], capture_output=True,
                           text=True, timeout=300, env=clean_env, cwd=tmp_path)
    assert check.returncode == 0 and f"{backend}: 32 examples" in check.stdout, check.stdout + check.stderr[-2000:]
