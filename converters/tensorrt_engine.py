"""Serialized TensorRT engines from TensorRT-ready (symmetric QDQ) ONNX, with explicit profiles.

    from edgerec.converters.tensorrt_engine import EngineConfig, build_engine
    result = build_engine("scorer_trt_int8.onnx", "scorer.plan", part="scorer",
                          config=EngineConfig(batch_buckets=(1, 16, 256), candidate_buckets=(1, 100, 1000)))
    if result.skipped:
        print(result.reason)            # "tensorrt not importable: …" on a machine without TensorRT

Profiles: every input's first (batch) dimension gets one optimisation profile per bucket range —
buckets (1, 16, 256) give [1..1 opt 1], [2..16 opt 16], [17..256 opt 256] (``profile_mode="ranges"``),
or a single profile [1..256 opt 16] (``"single"``, opt = ``opt_batch`` or the median bucket).
The scorer's batch is the candidate count, so it uses ``candidate_buckets`` when given. Other
dynamic dimensions must be declared in ``dynamic_dims`` ({input: {axis: (min, opt, max)}}).

Precision: TensorRT 10 takes the FP16/INT8 builder flags (INT8 with QDQ = explicit quantization);
TensorRT 11 removed them (strongly typed networks): precision then comes from the graph itself
(QDQ nodes, fp16 tensors) and the result's ``notes`` say that the flags were not applied.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgerec.runtime.io import atomic_write_bytes, sha256_file
from edgerec.runtime.manifest import TensorSpec

from .errors import ConversionError, ConverterConfigError, expected

MIN_TENSORRT = (10, 0)
PROFILE_MODES = ("ranges", "single")


@dataclass(frozen=True)
class ShapeRange:
    """min/opt/max shape of one input in one optimisation profile."""

    min: tuple
    opt: tuple
    max: tuple


@dataclass(frozen=True)
class EngineConfig:
    """How to build an engine.

    Args:
        batch_buckets: ascending batch sizes the engine must serve (largest = max batch).
        candidate_buckets: candidate counts for the scorer part (its batch is the candidates).
        profile_mode: ``"ranges"`` (one profile per bucket range) or ``"single"``.
        opt_batch: opt of a single profile (default: the median bucket).
        dynamic_dims: ``{input: {axis: (min, opt, max)}}`` for dynamic non-batch dimensions.
        fp16 / int8: precision flags (TensorRT 10; see module doc for 11).
        workspace_bytes: builder workspace pool limit.
        require_tensorrt_ready: refuse an ONNX that fails the converters' TensorRT-readiness check.

    Examples:
        >>> EngineConfig(batch_buckets=(1, 8, 64)).batch_buckets
        (1, 8, 64)
    """

    batch_buckets: tuple = (1, 16, 256)
    candidate_buckets: tuple | None = None
    profile_mode: str = "ranges"
    opt_batch: int | None = None
    dynamic_dims: dict = field(default_factory=dict)
    fp16: bool = False
    int8: bool = True
    workspace_bytes: int = 1 << 30
    require_tensorrt_ready: bool = True

    def __post_init__(self):
        problems = []
        for label in ("batch_buckets", "candidate_buckets"):
            value = getattr(self, label)
            if value is None and label == "candidate_buckets":
                continue
            value = tuple(value or ())
            object.__setattr__(self, label, value)
            if not value or any(not isinstance(b, int) or b < 1 for b in value) or list(value) != sorted(set(value)):
                problems.append(expected(f"{label} as strictly ascending positive ints", value))
        if self.profile_mode not in PROFILE_MODES:
            problems.append(expected(f"profile_mode in {PROFILE_MODES}", self.profile_mode))
        if self.opt_batch is not None and (not isinstance(self.opt_batch, int) or self.opt_batch < 1):
            problems.append(expected("opt_batch as a positive int or None", self.opt_batch))
        for name, axes in dict(self.dynamic_dims).items():
            for axis, rng in dict(axes).items():
                if (not isinstance(axis, int) or axis < 1 or len(tuple(rng)) != 3
                        or not 1 <= rng[0] <= rng[1] <= rng[2]):
                    problems.append(expected(f"dynamic_dims[{name!r}] as {{axis >= 1: (min <= opt <= max)}}",
                                             {axis: rng}))
        if not isinstance(self.workspace_bytes, int) or self.workspace_bytes < 1 << 20:
            problems.append(expected("workspace_bytes as an int >= 1 MiB", self.workspace_bytes))
        if problems:
            raise ConverterConfigError("; ".join(problems))

    def get_config(self) -> dict:
        return asdict(self)


@dataclass
class EngineBuildResult:
    """``status`` is "built" or "skipped"; ``reason`` says why a build was skipped."""

    status: str
    reason: str = ""
    engine_path: Path | None = None
    onnx_path: Path | None = None
    sha256: str = ""
    size_bytes: int = 0
    profiles: list = field(default_factory=list)     # [{input: ShapeRange}] per profile
    tensorrt_version: str = ""
    notes: list = field(default_factory=list)
    artifact: object = None                           # manifest Artifact for a built engine (build_bundle_engines)

    @property
    def skipped(self) -> bool:
        return self.status == "skipped"

    def details(self) -> dict:
        """JSON-ready summary for a manifest artifact's ``details``."""
        return {"tensorrt_version": self.tensorrt_version, "notes": list(self.notes),
                "profiles": [{n: asdict(r) for n, r in p.items()} for p in self.profiles]}


# -- profiles ------------------------------------------------------------------------------------
def bucket_ranges(buckets, mode: str = "ranges", opt: int | None = None) -> list[tuple[int, int, int]]:
    """Batch buckets -> [(min, opt, max)] per profile.

    Examples:
        >>> bucket_ranges((1, 16, 256))
        [(1, 1, 1), (2, 16, 16), (17, 256, 256)]
        >>> bucket_ranges((1, 16, 256), "single")
        [(1, 16, 256)]
    """
    buckets = sorted(buckets)
    if mode == "single":
        opt = opt if opt is not None else buckets[len(buckets) // 2]
        if not buckets[0] <= opt <= buckets[-1]:
            raise ConverterConfigError(expected(f"opt_batch within [{buckets[0]}, {buckets[-1]}]", opt))
        return [(buckets[0], opt, buckets[-1])]
    out, low = [], 1
    for b in buckets:
        out.append((low, b, b))
        low = b + 1
    return out


def compute_profiles(inputs: list[TensorSpec], config: EngineConfig, part: str | None = None) -> list[dict]:
    """One dict {input name: ShapeRange} per optimisation profile, for the inputs' dynamic dims."""
    buckets = config.candidate_buckets if part == "scorer" and config.candidate_buckets else config.batch_buckets
    ranges = bucket_ranges(buckets, config.profile_mode, config.opt_batch)
    names = {t.name for t in inputs}
    unknown = sorted(set(config.dynamic_dims) - names)
    if unknown:
        raise ConverterConfigError(expected(f"dynamic_dims for inputs among {sorted(names)}", unknown))
    undeclared = []
    for spec in inputs:
        declared = dict(config.dynamic_dims.get(spec.name, {}))
        for axis, dim in enumerate(spec.shape):
            if axis > 0 and (dim is None or dim < 0) and axis not in declared:
                undeclared.append(f"{spec.name}[{axis}]")
    if undeclared:
        raise ConverterConfigError(expected("a (min, opt, max) in dynamic_dims for every dynamic non-batch dim",
                                            undeclared))
    profiles = []
    for low, opt, high in ranges:
        profile = {}
        for spec in inputs:
            if not spec.shape:
                continue
            declared = dict(config.dynamic_dims.get(spec.name, {}))
            mins, opts, maxs = [], [], []
            for axis, dim in enumerate(spec.shape):
                if axis == 0 and (dim is None or dim < 0):
                    rng = (low, opt, high)
                elif dim is None or dim < 0:
                    rng = tuple(declared[axis])
                else:
                    rng = (dim, dim, dim)
                mins.append(rng[0]), opts.append(rng[1]), maxs.append(rng[2])
            if any(d is None or d < 0 for d in spec.shape):   # TensorRT wants every dynamic input in every profile
                profile[spec.name] = ShapeRange(tuple(mins), tuple(opts), tuple(maxs))
        profiles.append(profile)
    return profiles


# -- availability ---------------------------------------------------------------------------------
def tensorrt_skip_reason(min_version: tuple = MIN_TENSORRT) -> str | None:
    """Why engines cannot be built here, or None when ``tensorrt`` is importable and recent enough."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as err:
        return f"tensorrt not importable: {err}"
    except Exception as err:  # noqa: BLE001 - broken installs raise OSError/RuntimeError from native libs
        return f"tensorrt failed to import: {type(err).__name__}: {err}"
    version = _version_tuple(getattr(trt, "__version__", ""))
    if version < tuple(min_version):
        return (f"tensorrt {getattr(trt, '__version__', '?')} is older than the required "
                f"{'.'.join(map(str, min_version))} (named tensor API, build_serialized_network)")
    return None


def _version_tuple(text: str) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", str(text))[:3]) or (0,)


def onnx_inputs(onnx_path) -> list[TensorSpec]:
    """Graph inputs (initializers excluded) as TensorSpecs, read with ``onnx``."""
    import onnx
    from onnx import helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        ttype = value.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type).name
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in ttype.shape.dim]
        specs.append(TensorSpec(value.name, dtype, shape))
    return specs


def _readiness_violations(onnx_path) -> list[str] | None:
    """The converters' TensorRT-readiness check, when that pass module is present."""
    try:
        check = importlib.import_module("edgerec.converters.passes.tensorrt").check_tensorrt_ready
    except (ImportError, AttributeError):
        return None
    return [f"{v.rule} at {v.node} ({v.op_type}): {v.message}" for v in check(str(onnx_path))
            if getattr(v, "severity", "error") == "error"]


# -- build ----------------------------------------------------------------------------------------
def build_engine(onnx_path, engine_path, *, config: EngineConfig | None = None, part: str | None = None,
                 inputs: list[TensorSpec] | None = None) -> EngineBuildResult:
    """Build and write a serialized engine, or return a "skipped" result stating why.

    Args:
        onnx_path: a TensorRT-ready ONNX (symmetric QDQ, no quantized Gather).
        engine_path: where the serialized engine (``.plan``) is written, atomically.
        config: an `EngineConfig` (buckets, precision, workspace).
        part: the bundle part (``"scorer"`` uses candidate buckets).
        inputs: the model's input specs (default: read from the ONNX graph).

    Raises:
        ConverterConfigError: bad config, or a graph that fails the TensorRT-readiness check.
        ConversionError: TensorRT could not parse or build the network (parser errors listed).
    """
    config = config or EngineConfig()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise ConverterConfigError(expected("an existing ONNX file", str(onnx_path)))
    inputs = list(inputs) if inputs is not None else onnx_inputs(onnx_path)
    profiles = compute_profiles(inputs, config, part)
    if config.require_tensorrt_ready and config.int8:
        violations = _readiness_violations(onnx_path)
        if violations:
            raise ConverterConfigError(expected("a TensorRT-ready ONNX (symmetric QDQ)", violations))
    reason = tensorrt_skip_reason()
    if reason:
        return EngineBuildResult("skipped", reason, onnx_path=onnx_path, profiles=profiles)
    import tensorrt as trt

    notes = []
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    has_flags = hasattr(trt.BuilderFlag, "FP16") and hasattr(trt.BuilderFlag, "INT8")
    if typed is not None and not has_flags:
        flags |= 1 << int(typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ConversionError(f"TensorRT could not parse {onnx_path.name}: " + "; ".join(errors),
                              mode="tensorrt", blocked_by=errors)
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_bytes)
    for wanted, flag in ((config.fp16, "FP16"), (config.int8, "INT8")):
        if wanted and has_flags:
            builder_config.set_flag(getattr(trt.BuilderFlag, flag))
        elif wanted:
            notes.append(f"BuilderFlag.{flag} does not exist in TensorRT {trt.__version__} (strongly typed): "
                         "precision comes from the graph's QDQ nodes and tensor types")
    for profile_shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, rng in profile_shapes.items():
            profile.set_shape(name, rng.min, rng.opt, rng.max)
        builder_config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise ConversionError(f"TensorRT failed to build an engine from {onnx_path.name} (see its log above)",
                              mode="tensorrt")
    atomic_write_bytes(engine_path, bytes(serialized))
    return EngineBuildResult("built", "", engine_path, onnx_path, sha256_file(engine_path),
                             engine_path.stat().st_size, profiles, trt.__version__, notes)


def build_bundle_engines(bundle_dir, out_dir, *, config: EngineConfig | None = None,
                         parts=("user_encoder", "scorer", "fused")) -> dict[str, EngineBuildResult]:
    """Build one engine per part from an existing bundle's TensorRT-ready ONNX artifacts (``OUT/<part>.plan``).

    An export with the ``tensorrt`` target builds engines into the bundle itself (`TensorRTEnginePass`);
    this is for a bundle exported without it. A part without such an artifact, or a machine without
    TensorRT, gives a "skipped" result with the reason. Built results carry ``artifact``: the
    manifest `Artifact` (format ``trt_engine``) describing the engine.
    """
    from edgerec.runtime.manifest import Artifact, load_manifest

    from .passes.tensorrt import is_tensorrt_ready

    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    manifest = load_manifest(bundle_dir, verify=True)
    results = {}
    for part in parts:
        ready = [a for a in manifest.find(format="onnx", part=part) if is_tensorrt_ready(a)]
        if not ready:
            results[part] = EngineBuildResult("skipped", f"no TensorRT-ready (symmetric QDQ) ONNX artifact for {part}")
            continue
        source = ready[0]
        result = build_engine(bundle_dir / source.file, out_dir / f"{part}.plan", config=config, part=part,
                              inputs=source.inputs)
        if not result.skipped:
            details = {**result.details(), "source": source.file, "engine_config": (config or EngineConfig()).get_config()}
            result.artifact = Artifact(result.engine_path.name, "trt_engine", source.precision, part, result.sha256,
                                       result.size_bytes, list(source.inputs), list(source.outputs),
                                       lineage=list(source.lineage) + [{"pass": "tensorrt_engine",
                                                                        "config": details["engine_config"]}],
                                       details=details)
        results[part] = result
    return results
