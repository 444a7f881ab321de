"""tf2onnx conversion with large lookup tables stood in for by tiny placeholders.

tf2onnx copies every constant many times over (the frozen GraphDef, grappler's copy, its own graph,
the ONNX proto): converting a part that holds a 840k × 32 item table peaks ~5 GB above the process
and leaves ~1 GB behind. A table that is only ever read by ``Gather`` on axis 0 shapes nothing else
in the graph, so it is converted as a placeholder of a few rows and its real rows are written into
the ONNX initializer afterwards. Each placeholder has its own row count and random values, so it is
found again by value; any table that is not found exactly as it went in, or that ends up read by
anything but an axis-0 ``Gather``, makes `convert_with_stand_ins` report failure and the caller
converts the whole function the ordinary way.

Examples:
    >>> proto, tables = convert_with_stand_ins(flat, specs, opset=18, min_bytes=1 << 20)  # doctest: +SKIP
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

GATHER_OPS = ("GatherV2", "Gather")
PASS_THROUGH_OPS = ("Identity",)


@dataclass(frozen=True)
class StandIn:
    node: str
    real: np.ndarray
    placeholder: np.ndarray


class StandInMismatch(Exception):
    """A placeholder did not come back from tf2onnx as a plain axis-0 Gather table."""


def convert_with_stand_ins(flat, specs, opset: int, min_bytes: int):
    """Convert ``flat`` (a tf.function over ``specs``) with every Gather-only constant of at least
    ``min_bytes`` stood in for.

    Returns:
        ``(proto, [StandIn …])`` — the ONNX model with the real tables restored — or ``(None, [])``
        when no constant qualifies or a placeholder did not survive conversion unchanged (the caller
        then converts the ordinary way).
    """
    import tf2onnx
    from tf2onnx import tf_loader

    graph_def, input_names, output_names, renames = _frozen_graph(flat, specs)
    if graph_def is None:
        return None, []
    stand_ins = swap_gather_tables(graph_def, min_bytes, keep={n.split(":")[0] for n in output_names})
    if not stand_ins:
        return None, []
    try:
        graph_def = tf_loader.fix_freezing_errors_part2(graph_def)
        proto, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=input_names, output_names=output_names,
                                                  opset=opset, tensors_to_rename=renames)
        del graph_def
        restore_tables(proto, stand_ins)
    except Exception as err:  # noqa: BLE001 - tf2onnx raises many types; the whole conversion decides
        log.info("table placeholders not usable (%s: %s); converting the whole function",
                 type(err).__name__, str(err)[:200])
        return None, []
    return proto, stand_ins


def _frozen_graph(flat, specs):
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    from tf2onnx.convert import tensor_names_from_structed

    from edgerec.converters.tfenv import import_tf

    tf, _ = import_tf()
    concrete = flat.get_concrete_function(*specs)
    input_names = [t.name for t in concrete.inputs if t.dtype != tf.resource]
    output_names = [t.name for t in concrete.outputs if t.dtype != tf.resource]
    # the structured names tf2onnx's from_function gives the graph inputs and outputs
    renames = tensor_names_from_structed(concrete, input_names, output_names)
    try:
        frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False, aggressive_inlining=True)
    except Exception as err:  # noqa: BLE001 - tf2onnx's own path has a repair for some freezing failures
        log.info("freezing for table placeholders failed (%s); converting the whole function", err)
        return None, input_names, output_names, renames
    return frozen.graph.as_graph_def(add_shapes=True), input_names, output_names, renames


def swap_gather_tables(graph_def, min_bytes: int, keep: set[str] = frozenset()) -> list[StandIn]:
    """Replace, in place, every top-level ``Const`` of ≥ ``min_bytes`` whose every reader (through
    ``Identity`` chains) is a ``Gather``/``GatherV2`` on axis 0 taking it as params, by a placeholder
    of a few rows. Constants named in ``keep`` (graph outputs) are left alone.

    Returns:
        The stand-ins, in graph order.
    """
    from tensorflow.python.framework import tensor_util

    nodes = {n.name: n for n in graph_def.node}
    readers: dict[str, list[tuple[object, int]]] = {}
    for node in graph_def.node:
        for slot, name in enumerate(node.input):
            if not name.startswith("^"):
                readers.setdefault(name.split(":")[0], []).append((node, slot))

    def from_inputs(name: str) -> bool:
        """Whether ``name``'s value depends on a graph input (control edges carry none): a Gather
        with constant indices would be folded by grappler or tf2onnx — from the placeholder's rows."""
        stack, seen = [name], set()
        while stack:
            node = nodes.get(stack.pop())
            if node is None or node.name in seen:
                continue
            if node.op == "Placeholder":
                return True
            seen.add(node.name)
            stack.extend(i.split(":")[0] for i in node.input if not i.startswith("^"))
        return False

    def gather_only(name: str, chain: list) -> bool:
        if name in keep or not readers.get(name):
            return False
        for node, slot in readers[name]:
            if node.op in PASS_THROUGH_OPS:
                chain.append(node)
                if not gather_only(node.name, chain):
                    return False
            elif (node.op not in GATHER_OPS or slot != 0 or not _axis_zero(node, nodes, tensor_util)
                  or not from_inputs(node.input[1].split(":")[0])):
                return False
        return True

    stand_ins = []
    for node in graph_def.node:
        if node.op != "Const" or node.name in keep:
            continue
        tensor = node.attr["value"].tensor
        if _proto_bytes(tensor) < min_bytes:
            continue
        chain: list = []
        if not gather_only(node.name, chain):
            continue
        real = tensor_util.MakeNdarray(tensor)
        if real.ndim < 1 or real.shape[0] < 8 or not (np.issubdtype(real.dtype, np.floating)
                                                       or np.issubdtype(real.dtype, np.integer)):
            continue
        placeholder = _placeholder(real, len(stand_ins))
        node.attr["value"].tensor.CopyFrom(tensor_util.make_tensor_proto(placeholder))
        for shaped in [node, *chain]:
            if "_output_shapes" in shaped.attr:
                del shaped.attr["_output_shapes"]
        stand_ins.append(StandIn(node.name, real, placeholder))
    return stand_ins


def restore_tables(proto, stand_ins: list[StandIn]) -> None:
    """Write each stand-in's real rows over the ONNX initializer holding its placeholder.

    Raises:
        StandInMismatch: a placeholder is missing, or its initializer is read by anything but the
            data input of an axis-0 ``Gather`` (anywhere, subgraphs included).
    """
    from onnx import helper, numpy_helper

    uses = _initializer_uses(proto.graph)
    outputs = {o.name for o in proto.graph.output}
    for stand_in in stand_ins:
        onnx_type = helper.np_dtype_to_tensor_dtype(stand_in.placeholder.dtype)
        found = [init for init in proto.graph.initializer
                 if tuple(init.dims) == stand_in.placeholder.shape and init.data_type == onnx_type
                 and np.array_equal(numpy_helper.to_array(init), stand_in.placeholder)]
        if not found:
            raise StandInMismatch(f"the placeholder of {stand_in.node} {stand_in.real.shape} was not "
                                  "found among the ONNX initializers")
        if any(tuple(t.dims) == stand_in.placeholder.shape and np.array_equal(numpy_helper.to_array(t),
                                                                            stand_in.placeholder)
               for t in _other_constants(proto.graph)):
            raise StandInMismatch(f"a copy of the placeholder of {stand_in.node} is a Constant or a subgraph's")
        for init in found:
            bad = [(n.op_type, slot) for n, slot in uses.get(init.name, []) if not _gather_data(n, slot)]
            if bad or init.name in outputs:
                raise StandInMismatch(f"initializer {init.name} of {stand_in.node} is read by {bad or 'an output'}")
        for init in found:
            init.CopyFrom(numpy_helper.from_array(stand_in.real, init.name))
    table_names = {init.name for init in proto.graph.initializer}
    kept = [v for v in proto.graph.value_info if v.name not in table_names]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(kept)


def _graphs(graph):
    """``graph`` and every subgraph (If/Loop/Scan bodies), depth first."""
    from onnx import AttributeProto

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def _initializer_uses(graph) -> dict:
    """``{tensor name: [(node, input slot), …]}`` over ``graph`` and its subgraphs."""
    uses: dict = {}
    for sub in _graphs(graph):
        for node in sub.node:
            for slot, name in enumerate(node.input):
                uses.setdefault(name, []).append((node, slot))
    return uses


def _other_constants(graph):
    """Tensors of ``Constant`` nodes, and the initializers of subgraphs (not the main graph's)."""
    for sub in _graphs(graph):
        if sub is not graph:
            yield from sub.initializer
        for node in sub.node:
            if node.op_type == "Constant":
                yield from (attr.t for attr in node.attribute if attr.name == "value")


def _gather_data(node, slot: int) -> bool:
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    return node.op_type == "Gather" and slot == 0 and axis == 0


def _axis_zero(node, nodes: dict, tensor_util) -> bool:
    if node.op == "Gather":
        return True
    if ("batch_dims" in node.attr and node.attr["batch_dims"].i != 0) or len(node.input) < 3:
        return False
    axis = nodes.get(node.input[2].split(":")[0])
    return (axis is not None and axis.op == "Const"
            and int(tensor_util.MakeNdarray(axis.attr["value"].tensor)) == 0)


def _proto_bytes(tensor) -> int:
    from tensorflow.python.framework import dtypes

    count = int(np.prod([d.size for d in tensor.tensor_shape.dim])) if tensor.tensor_shape.dim else 1
    return count * dtypes.as_dtype(tensor.dtype).size


def _placeholder(real: np.ndarray, index: int) -> np.ndarray:
    """Distinct rows count (3, 4, 5 …) and random values, so each placeholder is found by value."""
    rng = np.random.default_rng(7919 + index)
    shape = (3 + index, *real.shape[1:])
    if np.issubdtype(real.dtype, np.floating):
        return rng.standard_normal(shape).astype(real.dtype)
    info = np.iinfo(real.dtype)
    return rng.integers(max(info.min, -10**6), min(info.max, 10**6), size=shape, dtype=real.dtype)
