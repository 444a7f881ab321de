"""Olive-style pass pipeline with an on-disk, hash-keyed, crash-safe cache.

A `Pass` turns one model file (a Keras model, a .tflite, an .onnx …) into another. Its options
live in a frozen dataclass ``Config``. `PassRunner` caches each result under

    sha256(pass name + pass version, canonical JSON of the config,
           sha256 of the input file/folder, sha256 of every extra input file such as the calibration .npz)

so a second run with the same inputs does no work and a changed option only redoes the
passes downstream of it. A cache entry is built in a temp folder and renamed into place
(never half-written), and its output is re-hashed against the recorded sha256 before reuse.

Examples:
    >>> runner = PassRunner(cache_dir="/tmp/edgerec-cache")               # doctest: +SKIP
    >>> src = ExportedArtifact.from_keras("model/fused.keras", part="fused")  # doctest: +SKIP
    >>> tfl = runner.run(TFLitePass(), src, TFLiteConfig(mode="dynamic"))   # doctest: +SKIP
    >>> Pipeline([(PrunePass(), PruneConfig(0.5, data="cal.npz")),
    ...           (TFLitePass(), TFLiteConfig(mode="int8", data="cal.npz"))]).run(src)  # doctest: +SKIP

Lineage is Olive-style: each artifact carries the ordered steps from its source, each step
``{"id", "parent", "pass", "config"}`` where ``id`` is the step's cache key (short) and ``parent``
the id of the step whose output it consumed (``None`` for the first), so the steps of every
artifact of an export merge into one tree without losing their order.
A pass that failed on the same inputs earlier in a runner's life fails again at once with the
same error (several variants share an ONNX export; a failed export is not retried per variant).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

from edgerec.runtime.contract import FORMATS, PARTS
from edgerec.runtime.io import atomic_write_json, sha256_file
from edgerec.runtime.manifest import TensorSpec

from .errors import CacheError, ConverterConfigError, ConverterError, expected
from .native_log import native_output_logged

logger = logging.getLogger(__name__)

RESULT_NAME = "result.json"
SOURCE_FORMATS = ("keras", "savedmodel")
ARTIFACT_FORMATS = SOURCE_FORMATS + FORMATS     # FORMATS: what a runtime backend runs
STEP_ID_CHARS = 16


@dataclass
class ExportedArtifact:
    """One model file produced (or consumed) by a pass.

    Args:
        path: the model file (or SavedModel folder).
        format: ``keras``, ``savedmodel``, ``tflite``, ``onnx`` or ``trt_engine``.
        precision: ``fp32``, ``fp16``, ``dynamic`` or ``int8``.
        part: ``fused``, ``user_encoder``, ``scorer`` or ``content_encoder``.
        inputs / outputs: canonical tensor specs (empty for Keras sources until exported).
        details: pass facts (sparsity per layer, opset, quantization scheme, skipped layers …).
        lineage: ``[{"id", "parent", "pass", "config"}, …]`` from the source to this file.
    """

    path: str
    format: str
    precision: str = "fp32"
    part: str = "fused"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    details: dict = field(default_factory=dict)
    lineage: list = field(default_factory=list)

    def __post_init__(self):
        self.path = str(self.path)
        if self.format not in ARTIFACT_FORMATS:
            raise ConverterConfigError(expected(f"artifact format in {ARTIFACT_FORMATS}", self.format))
        if self.part not in PARTS:
            raise ConverterConfigError(expected(f"model part in {PARTS}", self.part))
        self.inputs = [t if isinstance(t, TensorSpec) else TensorSpec.from_dict(t) for t in self.inputs]
        self.outputs = [t if isinstance(t, TensorSpec) else TensorSpec.from_dict(t) for t in self.outputs]

    @classmethod
    def from_keras(cls, path: str | os.PathLike, part: str = "fused") -> "ExportedArtifact":
        """Wrap a saved Keras model (.keras/.h5/SavedModel folder) as a pipeline source."""
        path = Path(path)
        if not path.exists():
            raise ConverterConfigError(expected("an existing Keras model file or folder", str(path)))
        fmt = "savedmodel" if path.is_dir() else "keras"
        return cls(path=str(path), format=fmt, precision="fp32", part=part)

    @property
    def file(self) -> str:
        """The file's name (the name it has in a bundle once staged)."""
        return Path(self.path).name

    @property
    def size_bytes(self) -> int:
        path = Path(self.path)
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ExportedArtifact":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def module_source_sha256(module_name: str) -> str:
    """sha256 of the ``.py`` files of the package that holds ``module_name`` (custom layers
    usually import their siblings), or of the module's name when its source cannot be found."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        return hashlib.sha256(module_name.encode()).hexdigest()
    folder = Path(spec.origin).parent
    digest = hashlib.sha256()
    for item in sorted(folder.glob("*.py")):
        digest.update(item.name.encode() + b"\0" + sha256_file(item).encode())
    return digest.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder (relative names + file hashes, sorted)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise ConverterConfigError(expected("an existing file or folder to hash", str(path)))
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(item.relative_to(path).as_posix().encode() + b"\0" + sha256_file(item).encode())
    return digest.hexdigest()


def config_to_dict(config: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), sort_keys=True, default=str))


class Pass:
    """Base class: one typed, cacheable model transformation.

    Subclasses set ``name``, ``version`` (bump it when the output for the same config changes),
    ``Config`` (a frozen dataclass), ``path_fields`` (config fields naming extra input files,
    hashed by content), and implement ``_run_impl(source, config, out_dir)``.
    ``calls`` counts real executions (cache hits do not call it).
    """

    name: ClassVar[str] = "pass"
    version: ClassVar[int] = 1
    Config: ClassVar[type] = None
    path_fields: ClassVar[tuple[str, ...]] = ()
    accepts: ClassVar[tuple[str, ...]] = ARTIFACT_FORMATS
    calls: ClassVar[int] = 0

    def run(self, source: ExportedArtifact | str | os.PathLike, config: Any,
            out_dir: str | os.PathLike, part: str = "fused") -> ExportedArtifact:
        """Validate and run the pass, writing its output into ``out_dir``."""
        source = self._as_artifact(source, part)
        self.check(source, config)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        type(self).calls += 1
        # converters and quantizers log from C++ to fd 2: their lines go to the pass's module logger
        with native_output_logged(logging.getLogger(type(self).__module__), f"{self.name} of {source.file}"):
            result = self._run_impl(source, config, out_dir)
        result.lineage = lineage_after(source, self, config, self.cache_key(source, config))
        return result

    def check(self, source: ExportedArtifact, config: Any) -> None:
        if self.Config is None or not isinstance(config, self.Config):
            raise ConverterConfigError(expected(f"a {getattr(self.Config, '__name__', 'Config')} for pass "
                                                f"'{self.name}'", type(config).__name__))
        if source.format not in self.accepts:
            raise ConverterConfigError(expected(f"a {'/'.join(self.accepts)} input for pass '{self.name}'",
                                                source.format))
        if not Path(source.path).exists():
            raise ConverterConfigError(expected(f"an existing input model for pass '{self.name}'", source.path))
        for name in self.path_fields:
            value = getattr(config, name)
            if value is not None and not Path(value).is_file():
                raise ConverterConfigError(expected(f"an existing file for {self.name}.{name}", str(value)))

    def cache_key(self, source: ExportedArtifact, config: Any) -> str:
        cfg = config_to_dict(config)
        extra = {}
        for name in self.path_fields:
            value = getattr(config, name)
            cfg.pop(name, None)  # hash the file's content, not where it lives
            extra[name] = sha256_path(value) if value is not None else None
        module = getattr(config, "custom_objects_module", None)
        if module:   # a layer's call() is code, not weights: a changed layer must not hit the cache
            extra["custom_objects_module"] = module_source_sha256(module)
        payload = {"pass": self.name, "version": self.version, "config": cfg, "input": sha256_path(source.path),
                   "part": source.part, "precision_in": source.precision, "extra_inputs": extra}
        environment = self.environment()
        if environment:
            payload["environment"] = environment
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def environment(self) -> dict:
        """Facts of this machine the output depends on (e.g. the GPU an engine is built for), hashed
        into the cache key; none for portable outputs."""
        return {}

    def _run_impl(self, source: ExportedArtifact, config: Any, out_dir: Path) -> ExportedArtifact:
        raise NotImplementedError

    @staticmethod
    def carried_details(source: ExportedArtifact) -> dict:
        """Facts of upstream passes worth keeping on every downstream artifact (e.g. sparsity)."""
        keep = ("achieved_sparsity", "target_sparsity", "skipped_layers")
        return {k: source.details[k] for k in keep if k in source.details}

    @staticmethod
    def _as_artifact(source, part: str) -> ExportedArtifact:
        if isinstance(source, ExportedArtifact):
            return source
        return ExportedArtifact.from_keras(source, part=part)


def lineage_after(source: ExportedArtifact, pass_: Pass, config: Any, key: str) -> list[dict]:
    """``source``'s lineage plus one step for ``pass_`` (its id is the step's cache key)."""
    parent = source.lineage[-1].get("id") if source.lineage else None
    step = {"id": key[:STEP_ID_CHARS], "parent": parent, "pass": pass_.name, "config": config_to_dict(config)}
    return list(source.lineage) + [step]


def merged_lineage(artifacts: Sequence[ExportedArtifact]) -> list[dict]:
    """Every step of the artifacts' lineages once, in the order they ran (parents before children)."""
    seen, steps = set(), []
    for art in artifacts:
        for step in art.lineage:
            key = step.get("id") or json.dumps(step, sort_keys=True)
            if key not in seen:
                seen.add(key)
                steps.append(dict(step))
    return steps


def default_cache_dir() -> Path:
    env = os.environ.get("EDGEREC_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "edgerec"


class PassRunner:
    """Runs passes through the on-disk cache.

    Args:
        cache_dir: where results live (default ``$EDGEREC_CACHE`` or ``~/.cache/edgerec``).
        use_cache: ``False`` always recomputes (results are still stored).

    ``hits`` / ``misses`` count cache outcomes of this runner.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, use_cache: bool = True):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.use_cache = bool(use_cache)
        self.hits = 0
        self.misses = 0
        self._failed: dict[str, BaseException] = {}

    def run(self, pass_: Pass, source: ExportedArtifact | str | os.PathLike, config: Any,
            part: str = "fused") -> ExportedArtifact:
        source = Pass._as_artifact(source, part)
        pass_.check(source, config)
        key = pass_.cache_key(source, config)
        if key in self._failed:
            raise self._failed[key]
        entry = self.cache_dir / pass_.name / key
        lineage = lineage_after(source, pass_, config, key)
        if self.use_cache and entry.is_dir():
            try:
                result = self._load(entry)
                result.lineage = lineage
                self.hits += 1
                return result
            except CacheError:
                shutil.rmtree(entry, ignore_errors=True)  # corrupted entry: rebuild it
        self.misses += 1
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-{uuid.uuid4().hex[:8]}-", dir=entry.parent))
        try:
            try:
                result = pass_.run(source, config, tmp)
            except (ConverterError, RuntimeError, ValueError) as err:
                self._failed[key] = err
                raise
            self._store(tmp, result, key)
            if entry.exists():
                shutil.rmtree(entry, ignore_errors=True)
            try:
                os.replace(tmp, entry)
            except OSError:
                if not entry.is_dir():  # another process finished the same key first: reuse theirs
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        result = self._load(entry)
        result.lineage = lineage
        return result

    @staticmethod
    def _store(folder: Path, result: ExportedArtifact, key: str) -> None:
        out = Path(result.path).resolve()
        if folder.resolve() not in out.parents:
            raise CacheError(expected(f"the pass output inside {folder}", str(out)))
        record = result.to_dict()
        record["path"] = out.relative_to(folder.resolve()).as_posix()
        record["sha256"] = sha256_path(out)
        record["key"] = key
        atomic_write_json(folder / RESULT_NAME, record)

    @staticmethod
    def _load(entry: Path) -> ExportedArtifact:
        try:
            record = json.loads((entry / RESULT_NAME).read_text("utf-8"))
            out = entry / record["path"]
            digest = sha256_path(out)
        except (OSError, ValueError, KeyError, ConverterConfigError) as err:
            raise CacheError(expected(f"a readable cache entry in {entry}", str(err))) from None
        if digest != record.get("sha256"):
            raise CacheError(expected(f"sha256 {record.get('sha256')} for cached {out}", digest))
        record["path"] = str(out)
        return ExportedArtifact.from_dict(record)


@dataclass(frozen=True)
class Step:
    """One pipeline step. An ``optional`` step that fails leaves the previous output in place (the
    failure is logged and listed in the result's ``details["skipped_steps"]``)."""

    pass_: Pass
    config: Any
    optional: bool = False


class Pipeline:
    """A chain of steps; each consumes the previous step's output.

    Args:
        steps: `Step`s or ``(Pass(), Pass.Config(...))`` tuples.
        runner: a `PassRunner` (default: one on the default cache dir).
    """

    def __init__(self, steps: Sequence[Step | tuple[Pass, Any]], runner: PassRunner | None = None):
        if not steps:
            raise ConverterConfigError(expected("at least one (pass, config) step", list(steps)))
        checked = []
        for step in steps:
            if isinstance(step, tuple) and len(step) == 2 and isinstance(step[0], Pass):
                step = Step(*step)
            if not (isinstance(step, Step) and isinstance(step.pass_, Pass)):
                raise ConverterConfigError(expected("Step or (Pass instance, config) tuples", step))
            checked.append(step)
        self.steps = checked
        self.runner = runner or PassRunner()

    def run(self, source: ExportedArtifact | str | os.PathLike, part: str = "fused") -> ExportedArtifact:
        return self.run_all(source, part)[-1]

    def run_all(self, source: ExportedArtifact | str | os.PathLike, part: str = "fused") -> list[ExportedArtifact]:
        """Every intermediate result, in step order (a skipped optional step adds none)."""
        current = Pass._as_artifact(source, part)
        results = []
        for step in self.steps:
            try:
                current = self.runner.run(step.pass_, current, step.config)
            except (ConverterError, RuntimeError, ValueError) as err:
                if not step.optional or not results:
                    raise
                logger.warning("%s of %s failed (%s: %s); keeping the %s output", step.pass_.name, current.file,
                               type(err).__name__, err, current.lineage[-1]["pass"] if current.lineage else "source")
                skipped = list(current.details.get("skipped_steps", []))
                skipped.append({"pass": step.pass_.name, "reason": f"{type(err).__name__}: {err}"[:600]})
                current = dataclasses.replace(current, details={**current.details, "skipped_steps": skipped})
                results[-1] = current
                continue
            results.append(current)
        return results
