"""ORT provider selection, fallback and TensorRT options — pure logic, no GPU needed."""
from __future__ import annotations

import pytest

from edgerec.runtime.backends.providers import (CPU, CUDA, TRT, check_active, plan_providers, shape_profile,
                                                tensorrt_options, trt_cache_dir)
from edgerec.runtime.errors import BackendUnavailableError
from edgerec.runtime.manifest import TensorSpec

GPU_LIST = [TRT, CUDA, CPU]
CPU_LIST = ["AzureExecutionProvider", CPU]


def test_auto_prefers_trt_cuda_cpu():
    plan = plan_providers("auto", GPU_LIST)
    assert plan.names == [TRT, CUDA, CPU] and plan.auto and plan.requested == []
    plan = plan_providers(None, [CUDA, CPU])
    assert plan.names == [CUDA, CPU] and plan.notes == [f"{TRT} not available"]
    assert plan_providers("auto", CPU_LIST).names == [CPU]


def test_explicit_aliases_and_cpu_appended():
    plan = plan_providers(["cuda"], GPU_LIST)
    assert plan.names == [CUDA, CPU] and plan.requested == [CUDA]
    assert plan_providers("tensorrt", GPU_LIST).names == [TRT, CPU]
    assert plan_providers(["cpu"], GPU_LIST).names == [CPU]


def test_explicit_unavailable_raises():
    with pytest.raises(BackendUnavailableError, match=CUDA):
        plan_providers(["cuda"], CPU_LIST)
    with pytest.raises(BackendUnavailableError):
        plan_providers([], GPU_LIST)
    with pytest.raises(BackendUnavailableError):
        plan_providers([3], GPU_LIST)


def test_listed_but_inactive_provider():
    # onnxruntime-gpu lists CUDA without a GPU and silently falls back to CPU.
    explicit = plan_providers(["cuda"], GPU_LIST)
    with pytest.raises(BackendUnavailableError, match="inactive"):
        check_active(explicit, [CPU])
    assert check_active(explicit, [CUDA, CPU]) == []
    auto = plan_providers("auto", GPU_LIST)
    notes = check_active(auto, [CPU])
    assert any(TRT in n for n in notes) and any(CUDA in n for n in notes)


def test_provider_options_attached():
    plan = plan_providers("auto", GPU_LIST, {TRT: {"trt_fp16_enable": True}})
    assert plan.providers[0] == (TRT, {"trt_fp16_enable": True})
    assert plan.names[0] == TRT


def test_trt_cache_dir_keyed_by_versions(tmp_path):
    a = trt_cache_dir(tmp_path, "1.32.0", "10.1", gpu="NVIDIA H100 80GB HBM3")
    b = trt_cache_dir(tmp_path, "1.32.0", "10.2", gpu="NVIDIA H100 80GB HBM3")
    c = trt_cache_dir(tmp_path, "1.31.0", "10.1", gpu="NVIDIA H100 80GB HBM3")
    assert len({a, b, c}) == 3 and a.parent == tmp_path and " " not in a.name
    assert "H100" in a.name and "10.1" in a.name and "1.32.0" in a.name


def test_tensorrt_options_profiles_and_caches(tmp_path):
    inputs = [TensorSpec("hist_items", "int32", [None, 50]), TensorSpec("cand_item", "int32", [None]),
              TensorSpec("user_state", "float32", [None, 8])]
    assert shape_profile(inputs, 4) == "hist_items:4x50,cand_item:4,user_state:4x8"
    opts = tensorrt_options(inputs, tmp_path, "1.32.0", fp16=True, profile={"min": 1, "opt": 100, "max": 1000})
    assert opts["trt_fp16_enable"] and not opts["trt_int8_enable"]
    assert opts["trt_engine_cache_enable"] and opts["trt_timing_cache_enable"]
    assert opts["trt_engine_cache_path"] == opts["trt_timing_cache_path"]
    assert opts["trt_profile_min_shapes"].startswith("hist_items:1x50")
    assert "cand_item:1000" in opts["trt_profile_max_shapes"]
    with pytest.raises(BackendUnavailableError):
        tensorrt_options(inputs, None, "1", profile={"min": 5, "opt": 2, "max": 10})
