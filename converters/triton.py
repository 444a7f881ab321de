"""Triton Inference Server model repository from a bundle, and a checker against its manifest.

    from edgerec.converters.triton import TritonConfig, write_triton_repository, check_triton_repository
    repo = write_triton_repository("bundle/", "triton_repo/", max_batch_size=256, kind="KIND_GPU",
                                   tensorrt_accelerator=True, precision_mode="FP16")
    problems = check_triton_repository("triton_repo/", "bundle/")   # [] when consistent

Layout written (one model per part with an ONNX artifact, plus an optional ensemble)::

    REPO/user_encoder/config.pbtxt   REPO/user_encoder/1/model.onnx
    REPO/scorer/config.pbtxt         REPO/scorer/1/model.onnx
    REPO/fused/config.pbtxt          REPO/fused/1/model.onnx
    REPO/ensemble/config.pbtxt       REPO/ensemble/1/            (user_encoder -> scorer)

With ``max_batch_size > 0`` Triton owns the batch dimension: it is dropped from ``dims``, and a
``[B]`` tensor becomes ``dims: [ 1 ]`` with ``reshape: { shape: [ ] }`` (Triton's documented idiom).
Each config records the bundle artifact it came from (``parameters { key: "edgerec_artifact" … }``)
so the checker (`triton_check`) compares the model file with that artifact's sha256.
No tritonclient dependency: `triton_format` writes and reads the pbtxt subset used here.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgerec.runtime.errors import expected
from edgerec.runtime.io import atomic_copy, atomic_write_text
from edgerec.runtime.manifest import Artifact, Manifest, load_manifest
from edgerec.runtime.shared_tables import SharedTables

from .errors import ConverterConfigError
from .passes.tensorrt import is_tensorrt_ready
from .triton_check import check_triton_repository  # noqa: F401  (re-exported)
from .triton_format import (ENSEMBLE_NAME, KINDS, MODEL_FILE, PRECISION_MODES, TRITON_DTYPES, TRITON_PARTS,  # noqa: F401
                            Ident, Problem, TritonRepositoryError, format_pbtxt, parse_pbtxt, tensor_dims)


@dataclass(frozen=True)
class TritonConfig:
    """Options of the written repository.

    Args:
        max_batch_size: Triton's batch limit; 0 disables Triton batching (full shapes in dims).
        preferred_batch_sizes: dynamic-batcher targets, each in [1, max_batch_size].
        max_queue_delay_microseconds: how long the batcher waits to fill a batch.
        instance_count: model instances per device.
        kind: ``"KIND_CPU"`` or ``"KIND_GPU"``.
        tensorrt_accelerator: add ORT's TensorRT execution accelerator (GPU instances only).
        precision_mode: ``"FP32"``, ``"FP16"`` or ``"INT8"`` (INT8 needs a TensorRT-ready QDQ artifact).
        max_workspace_size_bytes: TensorRT workspace.
        ensemble: also write an ensemble chaining user_encoder -> scorer (when both exist).
        prefix: prepended to every model name (several bundles in one repository).

    Examples:
        >>> TritonConfig(max_batch_size=64, preferred_batch_sizes=(8, 64)).max_batch_size
        64
    """

    max_batch_size: int = 256
    preferred_batch_sizes: tuple = (16, 64, 256)
    max_queue_delay_microseconds: int = 500
    instance_count: int = 1
    kind: str = "KIND_CPU"
    tensorrt_accelerator: bool = False
    precision_mode: str = "FP16"
    max_workspace_size_bytes: int = 1 << 30
    ensemble: bool = True
    prefix: str = ""

    def __post_init__(self):
        problems = []
        if not isinstance(self.max_batch_size, int) or self.max_batch_size < 0:
            problems.append(expected("max_batch_size as an int >= 0", self.max_batch_size))
        sizes = tuple(self.preferred_batch_sizes or ())
        object.__setattr__(self, "preferred_batch_sizes", sizes)
        limit = self.max_batch_size if isinstance(self.max_batch_size, int) and self.max_batch_size > 0 else None
        if any(not isinstance(s, int) or s < 1 or (limit and s > limit) for s in sizes) or (sizes and not limit):
            problems.append(expected(f"preferred_batch_sizes in [1, max_batch_size={self.max_batch_size}]", sizes))
        if not isinstance(self.max_queue_delay_microseconds, int) or self.max_queue_delay_microseconds < 0:
            problems.append(expected("max_queue_delay_microseconds as an int >= 0", self.max_queue_delay_microseconds))
        if not isinstance(self.instance_count, int) or self.instance_count < 1:
            problems.append(expected("instance_count as an int >= 1", self.instance_count))
        if self.kind not in KINDS:
            problems.append(expected(f"kind in {KINDS}", self.kind))
        if self.precision_mode not in PRECISION_MODES:
            problems.append(expected(f"precision_mode in {PRECISION_MODES}", self.precision_mode))
        if self.tensorrt_accelerator and self.kind != "KIND_GPU":
            problems.append(expected("kind='KIND_GPU' with tensorrt_accelerator=True", self.kind))
        if not re.fullmatch(r"[A-Za-z0-9_.-]*", str(self.prefix)):
            problems.append(expected("a prefix of letters, digits, '_', '.', '-'", self.prefix))
        if problems:
            raise ConverterConfigError("; ".join(problems))

    def get_config(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict) -> "TritonConfig":
        return cls(**config)


@dataclass
class TritonRepository:
    """What `write_triton_repository` wrote: model name -> {part, artifact, sha256}."""

    path: Path
    models: dict = field(default_factory=dict)
    ensemble: str | None = None
    config: TritonConfig | None = None


# -- artifact choice and config construction ------------------------------------------------------
def choose_artifacts(manifest: Manifest, *, prefer_tensorrt_ready: bool = False,
                     overrides: dict | None = None) -> dict[str, Artifact]:
    """Part -> ONNX artifact: override, else (TensorRT-ready if preferred), else the onnxruntime
    selection, else the part's fp32 ONNX artifact."""
    overrides = dict(overrides or {})
    selected = manifest.selected.get("onnxruntime", {}) if isinstance(manifest.selected, dict) else {}
    chosen = {}
    for part in TRITON_PARTS:
        onnx = manifest.find(format="onnx", part=part)
        if part in overrides:
            art = manifest.artifact(overrides[part])
            if art.format != "onnx" or art.part != part:
                raise TritonRepositoryError(expected(f"an ONNX artifact of part {part!r}", f"{art.file} ({art.format}, {art.part})"))
            chosen[part] = art
            continue
        ready = [a for a in onnx if is_tensorrt_ready(a)]
        picked = [a for a in onnx if a.file == selected.get(part)]
        fp32 = [a for a in onnx if a.precision == "fp32"]
        for pool in ((ready if prefer_tensorrt_ready else []), picked, fp32, onnx):
            if pool:
                chosen[part] = pool[0]
                break
    if not chosen:
        raise TritonRepositoryError(expected(f"ONNX artifacts for parts {TRITON_PARTS} in the bundle",
                                             sorted({(a.part, a.format) for a in manifest.artifacts})))
    return chosen


def _tensor_block(spec, max_batch_size: int, reshape_ok: bool = True) -> dict:
    if spec.dtype not in TRITON_DTYPES:
        raise TritonRepositoryError(expected(f"a tensor dtype in {sorted(TRITON_DTYPES)}", f"{spec.name}: {spec.dtype}"))
    dims, reshape = tensor_dims(spec.shape, max_batch_size)
    block = {"name": spec.name, "data_type": Ident(TRITON_DTYPES[spec.dtype]), "dims": dims}
    if reshape is not None and reshape_ok:   # ensembles take [B, 1] as is (no reshape there)
        block["reshape"] = {"shape": reshape}
    return block


def model_config(name: str, artifact: Artifact, config: TritonConfig) -> dict:
    """The config.pbtxt content of one part, as a message dict."""
    msg = {"name": name, "backend": "onnxruntime", "max_batch_size": config.max_batch_size,
           "input": [_tensor_block(t, config.max_batch_size) for t in artifact.inputs],
           "output": [_tensor_block(t, config.max_batch_size) for t in artifact.outputs]}
    if config.max_batch_size > 0:
        batching = {"max_queue_delay_microseconds": config.max_queue_delay_microseconds}
        if config.preferred_batch_sizes:
            batching = {"preferred_batch_size": list(config.preferred_batch_sizes), **batching}
        msg["dynamic_batching"] = batching
    msg["instance_group"] = [{"count": config.instance_count, "kind": Ident(config.kind)}]
    if config.tensorrt_accelerator:
        params = [{"key": "precision_mode", "value": config.precision_mode},
                  {"key": "max_workspace_size_bytes", "value": str(config.max_workspace_size_bytes)},
                  {"key": "trt_engine_cache_enable", "value": "true"},
                  {"key": "trt_engine_cache_path", "value": f"/tmp/edgerec_trt_cache/{name}"}]
        msg["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [
            {"name": "tensorrt", "parameters": params}]}}
    msg["parameters"] = [{"key": "edgerec_artifact", "value": {"string_value": artifact.file}},
                         {"key": "edgerec_sha256", "value": {"string_value": artifact.sha256}}]
    return msg


def ensemble_config(name: str, encoder: tuple[str, Artifact], scorer: tuple[str, Artifact],
                    config: TritonConfig) -> dict:
    """An ensemble feeding the user encoder's outputs (user_*) into the scorer; outputs = scorer's."""
    enc_name, enc = encoder
    sc_name, sc = scorer
    enc_out = {t.name for t in enc.outputs}
    inputs = list(enc.inputs) + [t for t in sc.inputs if t.name not in enc_out
                                 and t.name not in {i.name for i in enc.inputs}]
    steps = [{"model_name": enc_name, "model_version": -1,
              "input_map": [{"key": t.name, "value": t.name} for t in enc.inputs],
              "output_map": [{"key": t.name, "value": t.name} for t in enc.outputs]},
             {"model_name": sc_name, "model_version": -1,
              "input_map": [{"key": t.name, "value": t.name} for t in sc.inputs],
              "output_map": [{"key": t.name, "value": t.name} for t in sc.outputs]}]
    return {"name": name, "platform": "ensemble", "max_batch_size": config.max_batch_size,
            "input": [_tensor_block(t, config.max_batch_size, False) for t in inputs],
            "output": [_tensor_block(t, config.max_batch_size, False) for t in sc.outputs],
            "ensemble_scheduling": {"step": steps}}


# -- writing --------------------------------------------------------------------------------------
def write_triton_repository(bundle_dir, out_dir, *, config: TritonConfig | None = None,
                            artifacts: dict | None = None, overwrite: bool = False,
                            **options) -> TritonRepository:
    """Write a Triton model repository for the bundle's ONNX artifacts, atomically.

    Args:
        bundle_dir: a bundle (its manifest and files are verified first).
        out_dir: the repository folder to create (replaced only with ``overwrite=True``).
        config: a `TritonConfig`; or pass its fields as keyword options (``max_batch_size=…``).
        artifacts: optional ``{part: artifact file}`` overriding the choice per part.

    Returns:
        A `TritonRepository` naming each model, its part, source artifact and sha256.
    """
    if config is not None and options:
        raise ConverterConfigError(expected("either config= or keyword options, not both", sorted(options)))
    try:
        config = config or TritonConfig(**options)
    except TypeError as err:
        raise ConverterConfigError(expected("TritonConfig options", str(err))) from None
    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    manifest = load_manifest(bundle_dir, verify=True)
    prefer_ready = config.tensorrt_accelerator and config.precision_mode == "INT8"
    chosen = choose_artifacts(manifest, prefer_tensorrt_ready=prefer_ready, overrides=artifacts)
    if prefer_ready:
        plain = [f"{p}: {a.file}" for p, a in chosen.items() if not is_tensorrt_ready(a)]
        if plain:
            raise TritonRepositoryError(expected("TensorRT-ready (symmetric QDQ) ONNX artifacts for precision_mode INT8",
                                                 plain))
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise TritonRepositoryError(expected("an empty or absent output folder (or overwrite=True)", str(out_dir)))
    configs = {config.prefix + part: (part, model_config(config.prefix + part, art, config))
               for part, art in chosen.items()}
    ensemble = None
    if config.ensemble and "user_encoder" in chosen and "scorer" in chosen:
        ensemble = config.prefix + ENSEMBLE_NAME
        enc, sc = chosen["user_encoder"], chosen["scorer"]
        missing = [t.name for t in sc.inputs if t.name.startswith("user_") and t.name not in {o.name for o in enc.outputs}]
        if missing:
            raise TritonRepositoryError(expected("scorer user_* inputs produced by the user encoder", missing))
        configs[ensemble] = (None, ensemble_config(ensemble, (config.prefix + "user_encoder", enc),
                                                   (config.prefix + "scorer", sc), config))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        models = {}
        for name, (part, msg) in configs.items():
            (tmp / name / "1").mkdir(parents=True)
            atomic_write_text(tmp / name / "config.pbtxt", format_pbtxt(msg))
            if part is not None:
                art = chosen[part]
                atomic_copy(bundle_dir / art.file, tmp / name / "1" / MODEL_FILE)
                # a stripped model reads its shared tables as external data beside it
                for blob in SharedTables.files_for(manifest, [art.file]):
                    atomic_copy(bundle_dir / blob, tmp / name / "1" / blob)
                models[name] = {"part": part, "artifact": art.file, "sha256": art.sha256}
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TritonRepository(out_dir, models, ensemble, config)


def _replace_dir(new: Path, target: Path) -> None:
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
