"""ONNX Runtime backend: providers by availability and preference, session options, TensorRT
engine/timing caches, optional IO binding."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import BackendUnavailableError, BundleError, MissingDependencyError, expected
from ..manifest import TensorSpec
from ..shared_tables import onnx_blob_names, resolve
from .base import Backend, dims
from .providers import TRT, check_active, plan_providers, tensorrt_options

OPT_LEVELS = ("disable", "basic", "extended", "all")
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


# ONNX Runtime severities: 2 = warnings (its default), 3 = errors only.
ORT_WARNING, ORT_ERROR = 2, 3


def import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime", "onnx", "the ONNX Runtime backend") from None
    if os.environ.get("EDGEREC_VERBOSE") == "0":
        # The edgerec command owns the process and asked for quiet logs: this also silences what ORT
        # logs outside any session (provider libraries that fail to load), in ANSI colours.
        onnxruntime.set_default_logger_severity(session_log_severity())
    return onnxruntime


def session_log_severity() -> int:
    """Errors only, unless edgerec logs at DEBUG or EDGEREC_VERBOSE=1 (`edgerec --verbose`): then
    ORT's own default (warnings). ORT writes its warnings to stderr with ANSI colour codes, and
    they are rarely actionable for an app (e.g. nodes placed on CPU by design)."""
    verbose = os.environ.get("EDGEREC_VERBOSE") == "1" or logging.getLogger("edgerec").isEnabledFor(logging.DEBUG)
    return ORT_WARNING if verbose else ORT_ERROR


class OrtBackend(Backend):
    """Runs a .onnx file with ONNX Runtime.

    Args:
        model_path: the .onnx file.
        num_threads: intra-op threads (None = ORT default); inter-op is 1 (sequential).
        providers: "auto" (TensorRT > CUDA > CPU, whichever activates) or a list such as
            ["cuda"]; an explicitly requested provider that does not activate raises
            BackendUnavailableError.
        graph_optimization_level: "disable" | "basic" | "extended" | "all".
        optimized_model_path: where ORT saves the optimised graph (reuse it offline).
        cache_dir: TensorRT engine and timing caches (keyed by GPU/TensorRT/ORT versions).
        trt_fp16, trt_int8: TensorRT precision flags.
        trt_profile: {"min", "opt", "max"} batch sizes for the dynamic batch/candidate dimension.
        io_binding: run through IO binding (outputs bound to host memory).
        model_bytes: the model, already read (and verified); ``model_path`` then names it, and
            the folder of the bundle's shared tables its external data names (`shared_tables`).
        shared_tables: a bundle's verified shared tables (`runtime.shared_tables.SharedTables`):
            the blobs ``model_bytes`` names come from here (else from beside ``model_path``,
            checked against their sha256), and tables numpy can hold are one OrtValue shared by
            every session.
    """

    name = "onnxruntime"
    model_format = "onnx"
    serialize_calls = False   # InferenceSession.run is thread-safe
    fresh_outputs = True      # run / copy_outputs_to_cpu return new arrays
    strided_inputs = True     # run copies a non-contiguous feed itself (IO binding: see __init__)

    def __init__(self, model_path, num_threads: int | None = None, providers="auto",
                 graph_optimization_level: str = "all", optimized_model_path=None, cache_dir=None,
                 trt_fp16: bool = False, trt_int8: bool = False, trt_profile: dict | None = None,
                 io_binding: bool = False, model_bytes: bytes | None = None, shared_tables=None):
        super().__init__(model_path)
        self._model = _with_shared_tables(self.model_path) if model_bytes is None else bytes(model_bytes)
        self._tables = shared_tables
        ort = import_ort()
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise BackendUnavailableError(expected("num_threads as a positive int or None", num_threads))
        if graph_optimization_level not in OPT_LEVELS:
            raise BackendUnavailableError(expected(f"graph_optimization_level in {OPT_LEVELS}",
                                                   graph_optimization_level))
        options = ort.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[graph_optimization_level]
        if optimized_model_path is not None:
            options.optimized_model_filepath = str(optimized_model_path)
        options.log_severity_level = session_log_severity()
        self._shared = self._attach_shared(ort, options)
        available = ort.get_available_providers()
        trt_opts = None
        if TRT in available and (providers == "auto" or providers is None or TRT in _names(providers)):
            trt_opts = tensorrt_options(self._declared_inputs(ort), cache_dir, ort.__version__,
                                        trt_fp16, trt_int8, trt_profile)
        plan = plan_providers(providers, available, {TRT: trt_opts} if trt_opts else None)
        try:
            self._session = ort.InferenceSession(self._model, sess_options=options,
                                                 providers=plan.providers)
        except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
            text = str(err)
            if "provider" in text.lower():
                raise BackendUnavailableError(expected(f"providers {plan.names} usable", text)) from None
            raise BundleError(expected(f"a loadable .onnx model at {self.model_path}", text)) from None
        self._model = None     # the session holds what it needs
        # add_initializer memory must outlive the session; in-memory files were copied
        self._shared, self._tables = tuple(value for _, value in self._shared[1]), None
        active = self._session.get_providers()
        notes = check_active(plan, active)
        self.inputs = [TensorSpec(i.name, _dtype(i.type), dims(i.shape)) for i in self._session.get_inputs()]
        self.outputs = [TensorSpec(o.name, _dtype(o.type), dims(o.shape)) for o in self._session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]
        self._io_binding = bool(io_binding)
        self._fast_run = None if self._io_binding else self._direct_run(active)
        self.strided_inputs = not self._io_binding   # bound inputs must be contiguous
        self.info = {"providers": active, "requested": providers, "fallback": notes,
                     "graph_optimization_level": graph_optimization_level, "num_threads": num_threads,
                     "io_binding": self._io_binding, "direct_run": self._fast_run is not None,
                     "tensorrt_options": trt_opts}

    def _declared_inputs(self, ort):
        """Inputs read from the graph itself (cheap CPU session with no optimisation)."""
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = session_log_severity()
        self._attach_shared(ort, options)
        try:
            probe = ort.InferenceSession(self._model, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
            raise BundleError(expected(f"a loadable .onnx model at {self.model_path}", str(err)[:300])) from None
        return [TensorSpec(i.name, _dtype(i.type), dims(i.shape)) for i in probe.get_inputs()]

    def _attach_shared(self, ort, options) -> tuple:
        """Give ``options`` the shared tables a model loaded from bytes names as external data
        (ORT resolves them itself when it reads the model by path): (blob bytes, initializers)."""
        names = onnx_blob_names(self._model) if isinstance(self._model, bytes) else []
        if not names:
            return {}, []
        if not hasattr(options, "add_external_initializers_from_files_in_memory"):
            raise BackendUnavailableError(expected(
                "onnxruntime with SessionOptions.add_external_initializers_from_files_in_memory to load "
                f"{Path(self.model_path).name}'s shared tables from verified bytes", ort.__version__))
        blobs = resolve(names, self._tables, Path(self.model_path).parent)
        options.add_external_initializers_from_files_in_memory(list(blobs), list(blobs.values()),
                                                               [len(b) for b in blobs.values()])
        initializers = self._tables.ort_initializers(Path(self.model_path).name, ort) if self._tables else []
        for name, value in initializers:
            options.add_initializer(name, value)
        return blobs, initializers

    def _direct_run(self, active):
        """``InferenceSession._sess.run`` (the C++ session) when skipping the Python wrapper of
        ``InferenceSession.run`` changes nothing: feeds reach `_run_impl` validated (numpy arrays,
        exactly the declared inputs: the wrapper's missing-input and OrtValue checks always pass)
        and only the CPU provider is active (the wrapper's EP-failure fallback re-runs on CPU).
        The wrapper costs ~5 µs per call, 5 % of a batch-1 DIN call. None: use the public API."""
        sess = getattr(self._session, "_sess", None)
        if active != ["CPUExecutionProvider"] or not callable(getattr(sess, "run", None)):
            return None
        capture = getattr(sess, "is_webgpu_graph_capture_enabled", None)
        if capture is not None and capture():
            return None
        return sess.run

    def _run_impl(self, feeds):
        if self._fast_run is not None:
            return dict(zip(self._output_names, self._fast_run(self._output_names, feeds, None)))
        if self._io_binding:
            binding = self._session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            for name in self._output_names:
                binding.bind_output(name)
            self._session.run_with_iobinding(binding)
            return dict(zip(self._output_names, binding.copy_outputs_to_cpu()))
        return dict(zip(self._output_names, self._session.run(self._output_names, feeds)))

    def _close_impl(self):
        self._fast_run = None
        self._session = None
        self._shared = ()


def _with_shared_tables(path):
    """The model's bytes when it names shared tables (so they are checked against their sha256
    before ORT sees them, as from verified bytes), else ``path`` (ORT reads it, and any external
    data of its own, itself)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return path          # the session names what is wrong with the path
    return data if onnx_blob_names(data) else path


def _names(providers) -> list[str]:
    from .providers import canonical
    if isinstance(providers, str):
        providers = [providers]
    return [canonical(p) for p in providers] if isinstance(providers, (list, tuple)) else []


def _dtype(ort_type: str) -> str:
    if ort_type not in _ORT_TYPES:
        raise BundleError(expected(f"an input/output type among {sorted(_ORT_TYPES)}", ort_type))
    return _ORT_TYPES[ort_type]
