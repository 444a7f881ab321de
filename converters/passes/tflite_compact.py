"""Drop what a converted TFLite flatbuffer carries only for debugging.

The MLIR converter names every intermediate tensor after the fused TF ops it came from
(``model/user_state/MatMul_12;model/user_state/BiasAdd_12;…``, up to 1 KB each), gives every
activation its own empty buffer entry and stores a shape signature for each. For a small graph
that is noise; for an unrolled recurrent layer (50 steps × ~15 tensors) it was 180 KB of a
950 KB int8 file — more than all of its weights except the item table.

`compact_flatbuffer` keeps everything the interpreter and edgerec use: signature definitions,
the names and shape signatures of subgraph inputs/outputs and of every tensor a signature
refers to, constant data, quantization parameters, variable tensors. It removes intermediate
tensor names, points every data-less tensor at the shared empty buffer 0 (dropping the others)
and drops intermediate shape signatures (the interpreter re-infers intermediate shapes when an
input is resized; the shapes themselves stay, delegates read them). It then serializes with
identical small vectors (shapes, op input lists, scales) and identical quantization tables
written once and referenced by offset, as flatbuffers allow (``CreateSharedString`` does the
same for strings). Outputs are bit-identical; `TFLitePass` checks that on its sanity rows.

Examples:
    >>> small = compact_flatbuffer(open("m.tflite", "rb").read())  # doctest: +SKIP
"""
from __future__ import annotations

_SHARED_VECTOR_BYTES = 256     # vectors up to this size are deduplicated (shapes, op I/O lists, scales)


def _has_data(buffer) -> bool:
    return buffer is not None and (buffer.data is not None and len(buffer.data) > 0 or bool(getattr(buffer, "offset", 0)))


def compact_flatbuffer(flat: bytes) -> bytes:
    """``flat`` without intermediate tensor names, empty per-tensor buffers and shape signatures."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flat))
    keep = {}
    for index, subgraph in enumerate(model.subgraphs):
        keep[index] = set(subgraph.inputs if subgraph.inputs is not None else ()) | \
            set(subgraph.outputs if subgraph.outputs is not None else ())
    for signature in model.signatureDefs or ():
        for entry in list(signature.inputs or ()) + list(signature.outputs or ()):
            keep.setdefault(signature.subgraphIndex, set()).add(entry.tensorIndex)

    referenced = {md.buffer for md in model.metadata or ()}
    for index, subgraph in enumerate(model.subgraphs):
        for position, tensor in enumerate(subgraph.tensors):
            if _has_data(model.buffers[tensor.buffer]):
                referenced.add(tensor.buffer)
                continue
            tensor.buffer = 0
            if position not in keep[index] and not tensor.isVariable:
                tensor.name = None
                tensor.shapeSignature = None
    order = [0] + sorted(referenced - {0})
    new_index = {old: new for new, old in enumerate(order)}
    model.buffers = [model.buffers[old] for old in order]
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            tensor.buffer = new_index[tensor.buffer]
    for md in model.metadata or ():
        md.buffer = new_index[md.buffer]
    _share_quantization(model)
    return serialize_model(model)


def _share_quantization(model) -> None:
    """Point tensors with equal quantization parameters at one object packed once."""
    from tensorflow.lite.python import schema_py_generated as schema

    class SharedQuantization(schema.QuantizationParametersT):
        def Pack(self, builder):
            cache = builder.edgerec_tables
            if id(self) not in cache:
                cache[id(self)] = super().Pack(builder)
            return cache[id(self)]

    def key(q):
        arrays = (q.scale, q.zeroPoint, q.min, q.max)
        return tuple(None if a is None else (str(getattr(a, "dtype", "")), bytes(memoryview(a)) if hasattr(a, "dtype")
                                             else tuple(a)) for a in arrays) + (q.quantizedDimension, q.detailsType)

    shared = {}
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            q = tensor.quantization
            if q is None or q.details is not None:
                continue
            k = key(q)
            if k not in shared:
                q.__class__ = SharedQuantization
                shared[k] = q
            tensor.quantization = shared[k]


def serialize_model(model) -> bytes:
    """A flatbuffer object model (``ModelT``) as ``.tflite`` bytes, small vectors and equal
    quantization tables written once."""
    import flatbuffers
    import numpy as np

    class SharingBuilder(flatbuffers.Builder):
        def __init__(self, size):
            super().__init__(size)
            self.edgerec_vectors, self.edgerec_tables = {}, {}

        def CreateNumpyVector(self, x):  # noqa: N802 - flatbuffers' name
            if not isinstance(x, np.ndarray) or x.nbytes > _SHARED_VECTOR_BYTES:
                return super().CreateNumpyVector(x)
            key = (x.dtype.str, x.shape, x.tobytes())
            if key not in self.edgerec_vectors:
                self.edgerec_vectors[key] = super().CreateNumpyVector(x)
            return self.edgerec_vectors[key]

    builder = SharingBuilder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
