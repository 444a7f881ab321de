"""edgerec.runtime never imports TensorFlow/Keras/tf2onnx: every module, in a fresh interpreter."""
from __future__ import annotations

import pkgutil
import subprocess
import sys

import edgerec.runtime

HEAVY = ("tensorflow", "keras", "tf_keras", "tf2onnx", "tensorflow_model_optimization", "onnx", "matplotlib")


def runtime_modules() -> list[str]:
    names = ["edgerec.runtime"]
    for info in pkgutil.walk_packages(edgerec.runtime.__path__, "edgerec.runtime."):
        names.append(info.name)
    return names


def test_every_runtime_module_is_tf_free():
    modules = runtime_modules()
    assert {"edgerec.runtime.predictor", "edgerec.runtime.backends.litert", "edgerec.runtime.backends.ort",
            "edgerec.runtime.cache", "edgerec.runtime.examples"} <= set(modules)
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_importing_runtime_does_not_load_backends():
    code = ("import sys, edgerec.runtime, edgerec.runtime.predictor, edgerec.runtime.backends\n"
            "print(sorted(m for m in ('onnxruntime', 'ai_edge_litert', 'tensorflow') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
