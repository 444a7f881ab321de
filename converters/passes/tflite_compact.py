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
input is resized). Outputs are bit-identical; `TFLitePass` checks that on its sanity rows.

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
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
