"""TensorRT backend: runs a serialized engine (``.plan``) built by `converters.tensorrt_engine`.

Needs the ``tensorrt`` package (TensorRT >= 10, named-tensor API) and a way to hold device
memory: PyTorch with CUDA, else cuda-python (``cuda.bindings.runtime`` / ``cuda.cudart``).
On a machine without them, constructing the backend raises BackendUnavailableError naming
what is missing. Feeds are validated (names, dtypes, ranks, static dims, and the engine's
optimisation-profile bounds) before `_run_impl` copies them to the GPU and executes.

Engines are executable artifacts: load only engines you built, from a verified bundle.
"""
from __future__ import annotations

import importlib

import numpy as np

from ..errors import BackendUnavailableError, BundleError, RequestError, expected
from ..manifest import TensorSpec
from .base import Backend, dims

MIN_TENSORRT = (10, 0)


def _import_tensorrt():
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as err:
        raise BackendUnavailableError(expected(
            "the 'tensorrt' Python package (TensorRT >= 10) for the tensorrt backend",
            f"not importable ({err})")) from None
    version = tuple(int(x) for x in str(getattr(trt, "__version__", "0")).split(".")[:2] if x.isdigit())
    if version < MIN_TENSORRT:
        raise BackendUnavailableError(expected("TensorRT >= 10 (named tensor API)", getattr(trt, "__version__", "?")))
    return trt


class _TorchMemory:
    """Device buffers and stream through PyTorch."""

    name = "torch"

    def __init__(self, device: int):
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError(expected("a CUDA device visible to torch", "torch.cuda.is_available() is False"))
        self.torch, self.device = torch, torch.device("cuda", device)
        self.stream = torch.cuda.Stream(device=self.device)

    @property
    def stream_handle(self) -> int:
        return self.stream.cuda_stream

    def to_device(self, array: np.ndarray):
        with self.torch.cuda.stream(self.stream):   # copies, engine and read-back share one stream
            return self.torch.from_numpy(array).to(self.device)

    def empty(self, shape, dtype):
        with self.torch.cuda.stream(self.stream):
            return self.torch.empty(tuple(shape), dtype=_torch_dtype(self.torch, dtype), device=self.device)

    def address(self, buffer) -> int:
        return buffer.data_ptr()

    def to_host(self, buffer, dtype) -> np.ndarray:
        with self.torch.cuda.stream(self.stream):
            return buffer.cpu().numpy().astype(dtype, copy=False)

    def synchronize(self):
        self.stream.synchronize()

    def free(self, buffer):
        pass

    def close(self):
        self.stream = None


def _torch_dtype(torch, dtype):
    return {np.dtype("float32"): torch.float32, np.dtype("float16"): torch.float16, np.dtype("int32"): torch.int32,
            np.dtype("int64"): torch.int64, np.dtype("int8"): torch.int8, np.dtype("uint8"): torch.uint8,
            np.dtype("bool"): torch.bool}[np.dtype(dtype)]


class _CudaPythonMemory:
    """Device buffers and stream through cuda-python's runtime bindings."""

    name = "cuda-python"

    def __init__(self, device: int):
        try:
            self.rt = importlib.import_module("cuda.bindings.runtime")
        except ImportError:
            self.rt = importlib.import_module("cuda.cudart")
        self._check(self.rt.cudaSetDevice(device))
        self.stream_handle = int(self._check(self.rt.cudaStreamCreate()))

    def _check(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise BackendUnavailableError(expected("a working CUDA runtime call", f"CUDA error {err}"))
        return rest[0] if rest else None

    def _alloc(self, nbytes: int, shape) -> tuple:
        """A buffer is (device pointer, nbytes, shape)."""
        return int(self._check(self.rt.cudaMalloc(max(nbytes, 1)))), nbytes, tuple(shape)

    def to_device(self, array: np.ndarray):
        buffer = self._alloc(array.nbytes, array.shape)
        self._check(self.rt.cudaMemcpy(buffer[0], array.ctypes.data, array.nbytes,
                                       self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice))
        return buffer

    def empty(self, shape, dtype):
        return self._alloc(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize, shape)

    def address(self, buffer) -> int:
        return buffer[0]

    def to_host(self, buffer, dtype) -> np.ndarray:
        out = np.empty(buffer[2], dtype=dtype)
        self._check(self.rt.cudaMemcpy(out.ctypes.data, buffer[0], out.nbytes,
                                       self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost))
        return out

    def synchronize(self):
        self._check(self.rt.cudaStreamSynchronize(self.stream_handle))

    def free(self, buffer):
        self._check(self.rt.cudaFree(buffer[0]))

    def close(self):
        self._check(self.rt.cudaStreamDestroy(self.stream_handle))


def _device_memory(device: int, prefer: str | None):
    order = [prefer] if prefer else ["torch", "cuda-python"]
    reasons = []
    for name in order:
        try:
            return (_TorchMemory if name == "torch" else _CudaPythonMemory)(device)
        except ImportError as err:
            reasons.append(f"{name}: not importable ({err})")
        except BackendUnavailableError as err:
            reasons.append(f"{name}: {err}")
    raise BackendUnavailableError(expected("device memory through torch (with CUDA) or cuda-python", "; ".join(reasons)))


class TensorRTBackend(Backend):
    """Runs a serialized TensorRT engine through its named I/O tensors.

    Args:
        model_path: the serialized engine (``.plan`` / ``.engine``).
        model_bytes: the engine, already read (and verified); ``model_path`` is then only a name.
        device: CUDA device index.
        profile: optimisation profile to use; None (default) picks, per call, the first profile
            whose min/max shapes hold the feeds (engines built with one profile per batch bucket).
        memory: ``"torch"`` or ``"cuda-python"`` (default: the first that works).

    Examples:
        >>> with create_backend("tensorrt", "scorer.plan") as backend:      # doctest: +SKIP
        ...     backend.run({"cand_item": np.arange(100, dtype=np.int32), ...})["score"].shape
        (100, 1)
    """

    name = "tensorrt"
    model_format = "trt_engine"

    def __init__(self, model_path, device: int = 0, profile: int | None = None, memory: str | None = None,
                 model_bytes: bytes | None = None):
        super().__init__(model_path)
        if not isinstance(device, int) or device < 0:
            raise BackendUnavailableError(expected("device as an int >= 0", device))
        if memory not in (None, "torch", "cuda-python"):
            raise BackendUnavailableError(expected('memory in (None, "torch", "cuda-python")', memory))
        trt = _import_tensorrt()
        self._memory = _device_memory(device, memory)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        blob = model_bytes
        if blob is None:
            try:
                with open(self.model_path, "rb") as handle:
                    blob = handle.read()
            except OSError as err:
                raise BundleError(expected(f"a readable engine file at {self.model_path}", str(err))) from None
        self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(blob)
        if self._engine is None:
            raise BundleError(expected(f"an engine built by this TensorRT ({trt.__version__}) for this GPU",
                                       self.model_path))
        count = self._engine.num_optimization_profiles
        if profile is not None and (not isinstance(profile, int) or not 0 <= profile < count):
            raise BackendUnavailableError(expected(f"profile None or in [0, {count})", profile))
        self._context = self._engine.create_execution_context()
        self._allowed = [profile] if profile is not None else list(range(count))
        self._active = self._allowed[0]
        self._context.set_optimization_profile_async(self._active, self._memory.stream_handle)
        self._bounds = [{} for _ in range(count)]     # per profile: input name -> (min shape, max shape)
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))).name
            spec = TensorSpec(name, dtype, dims(self._engine.get_tensor_shape(name)))
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(spec)
                for k in range(count):
                    low, _, high = self._engine.get_tensor_profile_shape(name, k)
                    self._bounds[k][name] = (tuple(low), tuple(high))
            else:
                self.outputs.append(spec)
        self.info = {"tensorrt": trt.__version__, "device": device, "profile": profile, "memory": self._memory.name,
                     "profiles": [{n: [list(a), list(b)] for n, (a, b) in b.items()} for b in self._bounds]}

    def _fitting_profile(self, shapes: dict) -> int | None:
        for k in self._allowed:
            bounds = self._bounds[k]
            if all(name in bounds and len(bounds[name][0]) == len(shape)
                   and all(lo <= got <= hi for lo, hi, got in zip(*bounds[name], shape))
                   for name, shape in shapes.items()):
                return k
        return None

    def check_feeds(self, feeds):
        checked = super().check_feeds(feeds)
        shapes = {name: value.shape for name, value in checked.items()}
        if self._fitting_profile(shapes) is None:
            ranges = [{n: f"{list(lo)}..{list(hi)}" for n, (lo, hi) in self._bounds[k].items()} for k in self._allowed]
            raise RequestError(expected(f"input shapes within an engine profile {ranges}",
                                        {n: list(s) for n, s in shapes.items()}))
        return checked

    def _run_impl(self, feeds):
        mem, ctx = self._memory, self._context
        profile = self._fitting_profile({name: value.shape for name, value in feeds.items()})
        if profile != self._active:
            ctx.set_optimization_profile_async(profile, mem.stream_handle)
            self._active = profile
        buffers = []
        try:
            for name, value in feeds.items():
                ctx.set_input_shape(name, value.shape)
                buffer = mem.to_device(value)
                buffers.append(buffer)
                ctx.set_tensor_address(name, mem.address(buffer))
            outputs = {}
            for spec in self.outputs:
                buffer = mem.empty(tuple(ctx.get_tensor_shape(spec.name)), spec.dtype)
                buffers.append(buffer)
                outputs[spec.name] = buffer
                ctx.set_tensor_address(spec.name, mem.address(buffer))
            if not ctx.execute_async_v3(mem.stream_handle):
                raise RequestError(expected("TensorRT execution to succeed", "execute_async_v3 returned False"))
            mem.synchronize()
            return {name: mem.to_host(buffer, np.dtype(spec.dtype))
                    for (name, buffer), spec in zip(outputs.items(), self.outputs)}
        finally:
            for buffer in buffers:
                mem.free(buffer)

    def _close_impl(self):
        self._context = None
        self._engine = None
        self._memory.close()
