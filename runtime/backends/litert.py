"""LiteRT (TFLite) backend: `ai_edge_litert`, falling back to `tflite_runtime`.

Feeds go by signature name (converted input order is alphabetical — never rely on it).
Tensors are allocated once per input-shape combination: a call with the shapes of the
previous call only sets tensors and invokes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, BundleError, MissingDependencyError, expected
from ..manifest import TensorSpec
from ..shared_tables import ends_with_trailer, whole_tflite
from .base import Backend, dims


def load_interpreter_class():
    """The Interpreter class of ai_edge_litert, else tflite_runtime, else MissingDependencyError."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
        return Interpreter
    except ImportError:
        raise MissingDependencyError("ai_edge_litert", "litert", "the LiteRT backend") from None


class LiteRTBackend(Backend):
    """Runs a .tflite file through its (single) signature.

    Args:
        model_path: the .tflite file.
        num_threads: interpreter threads (None = LiteRT default).
        signature: signature key; default the only one (or ``serving_default``).
        model_bytes: the model, already read (and verified); ``model_path`` then names it, and
            the folder of the bundle's shared tables a stripped model reads (`shared_tables`).
        shared_tables: a bundle's verified shared tables (`runtime.shared_tables.SharedTables`):
            a stripped model's blobs come from here (else from beside ``model_path``, checked
            against their sha256) and are spliced into this interpreter's own model bytes.
    """

    name = "litert"
    model_format = "tflite"
    # get_tensor and the signature runner return copies, never views of interpreter memory
    # (tests/runtime/test_backends.py checks that an output survives the next call).
    fresh_outputs = True
    strided_inputs = True     # copies a non-contiguous feed itself (tests/runtime/test_hot_path.py)

    def __init__(self, model_path, num_threads: int | None = None, signature: str | None = None,
                 model_bytes: bytes | None = None, shared_tables=None):
        super().__init__(model_path)
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise BackendUnavailableError(expected("num_threads as a positive int or None", num_threads))
        interpreter_class = load_interpreter_class()
        source = self._model_source(model_bytes, shared_tables)
        try:
            self._interpreter = interpreter_class(**source, num_threads=num_threads)
            self._setup(interpreter_class, num_threads, signature)
        except (BundleError, BackendUnavailableError):
            raise
        except Exception as err:  # noqa: BLE001 - a corrupt model fails anywhere in set-up, untyped
            raise BundleError(expected(f"a loadable .tflite model at {self.model_path}",
                                       f"{type(err).__name__}: {str(err)[:300]}")) from None

    def _model_source(self, model_bytes, tables) -> dict:
        """Interpreter arguments: the path, or the bytes with any shared tables spliced in."""
        if model_bytes is None:
            if not ends_with_trailer(self.model_path):
                return {"model_path": self.model_path}
            try:
                model_bytes = Path(self.model_path).read_bytes()
            except OSError as err:
                raise BundleError(expected(f"a readable .tflite model at {self.model_path}", str(err))) from None
        return {"model_content": whole_tflite(bytes(model_bytes), tables, Path(self.model_path).parent)}

    def _setup(self, interpreter_class, num_threads, signature) -> None:
        signatures = self._interpreter.get_signature_list()
        if not signatures:
            raise BundleError(expected("a .tflite model with a signature", "none"))
        if signature is None:
            signature = "serving_default" if "serving_default" in signatures else next(iter(signatures))
        if signature not in signatures:
            raise BundleError(expected(f"a signature among {sorted(signatures)}", signature))
        runner = self._interpreter.get_signature_runner(signature)
        in_details, out_details = runner.get_input_details(), runner.get_output_details()
        self._in_index = {name: d["index"] for name, d in in_details.items()}
        self._out_index = {name: d["index"] for name, d in out_details.items()}
        self._out_items = tuple(self._out_index.items())
        self.inputs = [TensorSpec(n, np.dtype(d["dtype"]).name, dims(d["shape_signature"]))
                       for n, d in sorted(in_details.items())]
        self.outputs = [TensorSpec(n, np.dtype(d["dtype"]).name, dims(d["shape_signature"]))
                        for n, d in sorted(out_details.items())]
        # The interpreter's own tensor API addresses subgraph 0; use it (with shape tracking) when
        # the signature lives there, otherwise the signature runner (which reallocates each call).
        main_inputs = {d["index"] for d in self._interpreter.get_input_details()}
        self._direct = len(signatures) == 1 and main_inputs == set(self._in_index.values())
        # A live SignatureRunner holds a reference that makes allocate_tensors() refuse to run.
        self._runner = None if self._direct else runner
        del runner
        self._shapes: dict = {}
        # Interpreter.set_tensor/invoke/get_tensor are thin Python wrappers over a C++ object;
        # call it directly when present (we never hand out `tensor()` views, so the wrapper's
        # "no live views" check before invoke always passes). Public API otherwise. Never keep a
        # reference to it: allocate_tensors() refuses to run while one is alive.
        self._wrapped = all(hasattr(getattr(self._interpreter, "_interpreter", None), m)
                            for m in ("SetTensor", "Invoke", "GetTensor"))
        self.info = {"signature": signature, "num_threads": num_threads, "direct": self._direct,
                     "interpreter": f"{interpreter_class.__module__}.{interpreter_class.__name__}",
                     "allocations": 0}
        if self._direct:
            self._interpreter.allocate_tensors()

    def _run_impl(self, feeds):
        if not self._direct:
            return self._runner(**feeds)
        shapes = self._shapes
        for name, value in feeds.items():
            if shapes.get(name) != value.shape:
                self._allocate({name: value.shape for name, value in feeds.items()})
                break
        if self._wrapped:      # the interpreter's own C++ wrapper, as SignatureRunner calls it
            fast = self._interpreter._interpreter
            index = self._in_index
            for name, value in feeds.items():
                fast.SetTensor(index[name], value)
            fast.Invoke()
            outs = self._out_items
            if len(outs) == 1:
                (name, i), = outs
                return {name: fast.GetTensor(i)}
            return {name: fast.GetTensor(i) for name, i in outs}
        interp = self._interpreter
        for name, value in feeds.items():
            interp.set_tensor(self._in_index[name], value)
        interp.invoke()
        return {name: interp.get_tensor(index) for name, index in self._out_index.items()}

    def _allocate(self, shapes: dict) -> None:
        interp = self._interpreter
        for name, shape in shapes.items():
            interp.resize_tensor_input(self._in_index[name], list(shape), strict=False)
        interp.allocate_tensors()
        self._shapes = shapes
        self.info["allocations"] += 1

    def _close_impl(self):
        self._runner = None
        self._interpreter = None
