"""ONNX Runtime execution-provider selection (TensorRT / CUDA / CPU) and TensorRT options.

Pure logic over the list ORT reports, so it is testable without a GPU. Note that
onnxruntime-gpu *lists* CUDA/TensorRT even on machines without a GPU and silently falls back
to CPU: the backend checks ``session.get_providers()`` after creation (`check_active`).
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BackendUnavailableError, expected

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
ALIASES = {"tensorrt": TRT, "trt": TRT, "cuda": CUDA, "gpu": CUDA, "cpu": CPU}
AUTO_ORDER = (TRT, CUDA, CPU)


@dataclass
class ProviderPlan:
    """Providers to pass to the session, and what was asked for."""

    providers: list            # names or (name, options) tuples, in priority order
    requested: list            # canonical names the user asked for ([] for auto)
    auto: bool
    notes: list = field(default_factory=list)   # why something was skipped

    @property
    def names(self) -> list[str]:
        return [p[0] if isinstance(p, tuple) else p for p in self.providers]


def canonical(name) -> str:
    if not isinstance(name, str) or not name:
        raise BackendUnavailableError(expected("an execution provider name", name))
    return ALIASES.get(name.lower(), name)


def plan_providers(requested, available: list[str], provider_options: dict | None = None) -> ProviderPlan:
    """Choose providers. ``requested``: "auto", None (= auto), or a list of names/aliases.

    Explicit providers missing from ``available`` raise BackendUnavailableError; "auto" keeps
    the available ones of TensorRT > CUDA > CPU and notes what it skipped.
    """
    provider_options = provider_options or {}
    auto = requested is None or requested == "auto"
    if auto:
        names = [p for p in AUTO_ORDER if p in available]
        notes = [f"{p} not available" for p in AUTO_ORDER if p not in available]
        wanted = []
    else:
        if isinstance(requested, str):
            requested = [requested]
        if not isinstance(requested, (list, tuple)) or not requested:
            raise BackendUnavailableError(expected('providers as "auto" or a non-empty list', requested))
        wanted = [canonical(p) for p in requested]
        missing = [p for p in wanted if p not in available]
        if missing:
            raise BackendUnavailableError(expected(f"execution providers among {available}", missing))
        names = list(dict.fromkeys(wanted))
        notes = []
        if CPU not in names and CPU in available:
            names.append(CPU)   # ORT needs CPU for ops the accelerator lacks
    providers = [(n, dict(provider_options[n])) if provider_options.get(n) else n for n in names]
    return ProviderPlan(providers, wanted, auto, notes)


def check_active(plan: ProviderPlan, active: list[str]) -> list[str]:
    """After session creation: explicit-but-inactive providers raise; auto records a fallback."""
    inactive = [p for p in plan.requested if p not in active]
    if inactive:
        raise BackendUnavailableError(expected(f"execution providers {plan.requested} active",
                                               f"active {active} (inactive {inactive}; missing GPU/CUDA/TensorRT libraries?)"))
    notes = list(plan.notes)
    if plan.auto:
        for p in plan.names:
            if p not in active:
                notes.append(f"{p} listed but did not activate; fell back to {active}")
    return notes


def gpu_name() -> str:
    """The first GPU's name from nvidia-smi, or "nogpu"."""
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10, check=False)
        name = result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError):
        name = ""
    return name or "nogpu"


def trt_cache_dir(cache_dir, ort_version: str, trt_version: str | None = None, gpu: str | None = None) -> Path:
    """``cache_dir/<gpu>-trt<version>-ort<version>``: engines never cross GPUs or library versions."""
    if trt_version is None:
        try:
            from importlib.metadata import version
            trt_version = version("tensorrt")
        except Exception:   # noqa: BLE001 - any metadata failure means "unknown"
            trt_version = "unknown"
    key = f"{gpu or gpu_name()}-trt{trt_version}-ort{ort_version}"
    return Path(cache_dir) / re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


def shape_profile(inputs, batch: int, candidates: int | None = None) -> str:
    """TensorRT profile string ``name:1x50,other:1`` with the dynamic batch dim set to ``batch``."""
    parts = []
    for spec in inputs:
        dims = [batch if i == 0 and d is None else (candidates or batch) if d is None else d
                for i, d in enumerate(spec.shape)]
        parts.append(f"{spec.name}:{'x'.join(str(d) for d in dims)}")
    return ",".join(parts)


def tensorrt_options(inputs, cache_dir=None, ort_version: str = "", fp16: bool = False,
                     int8: bool = False, profile: dict | None = None) -> dict:
    """TensorRT EP options: engine + timing caches, precision flags, explicit optimisation profile.

    ``profile``: {"min": batch, "opt": batch, "max": batch} for the dynamic batch/candidate dim.
    """
    options = {"trt_fp16_enable": bool(fp16), "trt_int8_enable": bool(int8)}
    if cache_dir is not None:
        path = trt_cache_dir(cache_dir, ort_version)
        os.makedirs(path, exist_ok=True)
        options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(path),
                       trt_timing_cache_enable=True, trt_timing_cache_path=str(path))
    if profile:
        bad = [k for k in ("min", "opt", "max") if not isinstance(profile.get(k), int) or profile[k] < 1]
        if bad or not profile["min"] <= profile["opt"] <= profile["max"]:
            raise BackendUnavailableError(expected("profile {'min','opt','max'} positive ints, min<=opt<=max", profile))
        options.update(trt_profile_min_shapes=shape_profile(inputs, profile["min"]),
                       trt_profile_opt_shapes=shape_profile(inputs, profile["opt"]),
                       trt_profile_max_shapes=shape_profile(inputs, profile["max"]))
    return options
