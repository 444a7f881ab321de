"""Short internal names for an ONNX graph: what the exporters and quantizers add only for humans.

tf2onnx names every tensor and node after its TF op path (``StatefulPartitionedCall/model/
user_state/gru_cell_12/MatMul:0``), the ORT quantizer appends ``_QuantizeLinear_Output`` /
``_scale`` / ``_zero_point`` to those, and both write ``value_info`` shape records. An unrolled
recurrent layer has thousands of such tensors: in the MovieLens GRU's static-QDQ file the names
and value_info were ~1.2 MB of a 2.0 MB file (weights: 0.6 MB).

`compact_onnx_names` renames every tensor that is not a graph input or output to a short id,
clears node names and drops ``value_info`` (ONNX Runtime infers shapes itself), in the main graph
and in every subgraph (``If``/``Loop`` bodies) with one map: ONNX names are unique across scopes,
so a body's references to outer names are renamed with them. The function computed is unchanged.

Examples:
    >>> compact_onnx_names(proto)  # doctest: +SKIP
    True
"""
from __future__ import annotations

from pathlib import Path


def subgraphs(node):
    """The bodies (``GRAPH``/``GRAPHS`` attributes) of one node: an If's branches, a Loop's body."""
    import onnx

    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.g
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            yield from attribute.graphs


def compact_onnx_names(proto) -> bool:
    """Rename internal tensors of ``proto`` in place (True: it always can)."""
    graph = proto.graph
    public = {v.name for v in graph.input} | {v.name for v in graph.output}
    renames: dict[str, str] = {}

    def short(name: str, prefix: str) -> str:
        if not name or name in public:
            return name
        if name not in renames:
            renames[name] = f"{prefix}{len(renames):x}"
        return renames[name]

    def compact(body, outer: bool) -> None:
        for tensor in body.initializer:
            tensor.name = short(tensor.name, "w")
        for tensor in body.sparse_initializer:
            tensor.values.name = short(tensor.values.name, "w")
        if not outer:                      # a body's own inputs/outputs are internal names
            for value in list(body.input) + list(body.output):
                value.name = short(value.name, "t")
        for node in body.node:
            node.input[:] = [short(n, "t") for n in node.input]
            node.output[:] = [short(n, "t") for n in node.output]
            node.name = ""
            node.doc_string = ""
            for sub in subgraphs(node):
                compact(sub, False)
        del body.value_info[:]

    compact(graph, True)
    return True


def compact_onnx_file(path) -> int:
    """Compact the model at ``path`` in place (atomically); returns its new size in bytes."""
    import onnx

    from edgerec.runtime.io import atomic_write_bytes

    proto = onnx.load(str(path))
    if compact_onnx_names(proto):
        onnx.checker.check_model(proto)
        atomic_write_bytes(path, proto.SerializeToString())
    return Path(path).stat().st_size
