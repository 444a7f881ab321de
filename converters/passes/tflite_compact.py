"""Drop what a converted TFLite flatbuffer carries only for debugging.

The MLIR converter names every intermediate tensor after the fused TF ops it came from
(``model/user_state/MatMul_12;model/user_state/BiasAdd_12;…``, up to 1 KB each), gives every
activation its own empty buffer entry and stores a shape signature for each. For a small graph
that is noise; for an unrolled recurrent layer (50 steps × ~15 tensors) it was 180 KB of a
950 KB int8 file — more than all of its weights except the item table.

`compact_flatbuffer` keeps everything the interpreter and edgerec use: signature definitions,
the names and shape signatures of subgraph inputs/outputs and of every tensor a signature
refers to, constant data, quantization parameters, variable tensors. It removes the names of
intermediate and constant tensors (the interpreter addresses them by index), points every
data-less tensor at the shared empty buffer 0 (dropping the others) and drops intermediate
shape signatures (the interpreter re-infers intermediate shapes when an input is resized; the
shapes themselves stay, delegates read them). It then serializes with identical vectors
(shapes, op input lists, per-channel scales, the int64 zero points every per-channel weight
must carry, equal constant buffers), identical quantization tables and identical builtin
options written once and referenced by offset, as flatbuffers allow (``CreateSharedString``
does the same for strings): the all-zero zero points of a model's 64-channel weights are then
one vector instead of 512 bytes each. Outputs are bit-identical; `TFLitePass` checks that on its
sanity rows.

Examples:
    >>> small = compact_flatbuffer(open("m.tflite", "rb").read())  # doctest: +SKIP
"""
from __future__ import annotations

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
            if position in keep[index] or tensor.isVariable:
                pass
            elif _has_data(model.buffers[tensor.buffer]):
                tensor.name = None          # the interpreter finds constants by index, never by name
            else:
                tensor.name = None
                tensor.shapeSignature = None
            if _has_data(model.buffers[tensor.buffer]):
                referenced.add(tensor.buffer)
            else:
                tensor.buffer = 0
    order = [0] + sorted(referenced - {0})
    new_index = {old: new for new, old in enumerate(order)}
    model.buffers = [model.buffers[old] for old in order]
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            tensor.buffer = new_index[tensor.buffer]
    for md in model.metadata or ():
        md.buffer = new_index[md.buffer]
    _share_equal_tables(model)
    return serialize_model(model)


def _packed_once(obj) -> None:
    """Make ``obj`` (a flatbuffer object-API table) pack once per builder; later packs reuse the offset."""
    base = type(obj)
    shared = _SHARED_CLASSES.get(base)
    if shared is None:
        def pack(self, builder):
            cache = builder.edgerec_tables
            if id(self) not in cache:
                cache[id(self)] = base.Pack(self, builder)
            return cache[id(self)]

        shared = _SHARED_CLASSES[base] = type(f"Shared{base.__name__}", (base,), {"Pack": pack})
    obj.__class__ = shared


_SHARED_CLASSES: dict = {}


_UNCOMPARED = object()


def _value_key(value):
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if hasattr(value, "dtype"):
        return str(value.dtype), getattr(value, "shape", ()), bytes(memoryview(value))
    if isinstance(value, (list, tuple)):
        keys = tuple(_value_key(v) for v in value)
        return _UNCOMPARED if _UNCOMPARED in keys else keys
    return _UNCOMPARED          # a nested table (e.g. quantization details): the object is not shared


def _table_key(obj):
    """A hashable key of ``obj``'s fields, or None when a field cannot be compared."""
    fields = tuple(sorted((name, _value_key(value)) for name, value in vars(obj).items()))
    if any(key is _UNCOMPARED for _, key in fields):
        return None
    return type(obj).__name__, fields


def _share_tables(owners, attribute: str) -> None:
    """Point the ``attribute`` tables of ``owners`` that are equal field by field at one object packed once."""
    shared = {}
    for owner in owners:
        obj = getattr(owner, attribute)
        if obj is None:
            continue
        key = _table_key(obj)
        if key is None:
            continue
        if key not in shared:
            _packed_once(obj)
            shared[key] = obj
        setattr(owner, attribute, shared[key])


def _share_equal_tables(model) -> None:
    """Point tensors with equal quantization parameters (and operators with equal builtin options)
    at one object packed once."""
    tensors = [t for subgraph in model.subgraphs for t in subgraph.tensors]
    _share_tables(tensors, "quantization")
    _share_tables([op for subgraph in model.subgraphs for op in subgraph.operators], "builtinOptions")


def serialize_model(model) -> bytes:
    """A flatbuffer object model (``ModelT``) as ``.tflite`` bytes, equal vectors and equal
    quantization tables written once."""
    import flatbuffers
    import numpy as np

    class SharingBuilder(flatbuffers.Builder):
        def __init__(self, size):
            super().__init__(size)
            self.edgerec_vectors, self.edgerec_tables = {}, {}

        def CreateNumpyVector(self, x):  # noqa: N802 - flatbuffers' name
            if not isinstance(x, np.ndarray):
                return super().CreateNumpyVector(x)
            key = (x.dtype.str, x.shape, x.tobytes())
            if key not in self.edgerec_vectors:
                self.edgerec_vectors[key] = super().CreateNumpyVector(x)
            return self.edgerec_vectors[key]

    builder = SharingBuilder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
