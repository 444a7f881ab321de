"""TensorRT engine build as a cached pass: TensorRT-ready ONNX → serialized engine (``.plan``).

The build itself is `edgerec.converters.tensorrt_engine.build_engine` (profiles, readiness gate,
TensorRT 10/11 precision flags). A machine without TensorRT makes the pass fail with the reason
(nothing is cached), so an export lists the engine as impossible instead of dropping it silently.

An engine only runs on the TensorRT version and GPU model it was built with: both are part of the
cache key (`environment`), so a cache shared between machines never hands one GPU's engine to
another.

Examples:
    >>> TensorRTEnginePass().run(onnx_artifact, EngineConfig(batch_buckets=(1, 64)), "out")  # doctest: +SKIP
"""
from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

from .. import tensorrt_engine
from ..errors import ConversionError
from ..pipeline import ExportedArtifact, Pass
from ..tensorrt_engine import EngineConfig

ENGINE_SUFFIX = ".plan"


class TensorRTEnginePass(Pass):
    name = "tensorrt_engine"
    version = 1
    Config = EngineConfig
    accepts = ("onnx",)

    def environment(self) -> dict:
        return {"tensorrt": _tensorrt_version(), "gpu": _gpu_name()}

    def _run_impl(self, source: ExportedArtifact, config: EngineConfig, out_dir: Path) -> ExportedArtifact:
        # looked up on the module so a test can stand in for the builder where no GPU exists
        result = tensorrt_engine.build_engine(source.path, out_dir / f"{source.part}{ENGINE_SUFFIX}", config=config,
                                              part=source.part, inputs=source.inputs or None)
        if result.skipped:
            raise ConversionError(f"no TensorRT engine built: {result.reason}", mode="tensorrt_engine")
        details = {**self.carried_details(source), **result.details(), "source": source.file,
                   "quantization": source.details.get("quantization"), "size_bytes": result.size_bytes}
        return ExportedArtifact(path=str(result.engine_path), format="trt_engine", precision=source.precision,
                                part=source.part, inputs=list(source.inputs), outputs=list(source.outputs),
                                details=details)


@functools.lru_cache(maxsize=1)
def _tensorrt_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


@functools.lru_cache(maxsize=1)
def _gpu_name() -> str | None:
    """The first GPU's model name from ``nvidia-smi`` (None where there is none)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None
