"""What a graph goes through before onnxruntime quantizes it: ``quant_pre_process`` confined to a
temp dir (`preprocess`, with constants its optimiser folded restored as computed), a name on every
node (the quantizer excludes nodes by name), and the nodes kept float — the score head
(`score_head_nodes`) and the nodes that compute constants (`constant_nodes`)."""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

# walked from a graph output back to the last MatMul/Gemm: the ops of a float score head
HEAD_OPS = ("Sigmoid", "Softmax", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Cast", "Add",
            "MatMul", "Gemm")
# quant_pre_process and the calibrator write into the working directory, which is process-wide
CWD_LOCK = threading.Lock()


def named_nodes(model_path: Path, tmp: Path) -> Path:
    """``model_path``, or a copy in ``tmp`` where every unnamed node is named ``<op>_<index>`` (the quantizer
    excludes nodes by name, so the head and the fallback need every node named)."""
    import onnx

    proto = onnx.load(str(model_path))
    unnamed = [n for n in proto.graph.node if not n.name]
    if not unnamed:
        return model_path
    taken = {n.name for n in proto.graph.node}
    for index, node in enumerate(proto.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    out = tmp / "named.onnx"
    onnx.save(proto, str(out))
    return out


def score_head_nodes(proto) -> list[str]:
    """Names of the nodes from each graph output back to (and including) the last MatMul/Gemm.

    Only `HEAD_OPS` are followed, through the one non-constant input of each node, so a graph
    whose output does not end in a dense layer (+ bias, + sigmoid) yields the ops it does end in.
    """
    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    constant = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    found: list[str] = []
    for output in graph.output:
        node = producer.get(output.name)
        while node is not None and node.op_type in HEAD_OPS and node.name:
            if node.name not in found:
                found.append(node.name)
            if node.op_type in ("MatMul", "Gemm"):
                break
            moving = [i for i in node.input if i and i not in constant]
            node = producer.get(moving[0]) if len(moving) == 1 else None
    return found


def preprocess(model_path: Path, tmp: Path) -> Path:
    """``quant_pre_process`` run inside ``tmp`` (it drops temp files into the cwd on failure); constants
    its optimiser folded out of smaller ones come back as computed (`restore_computed_constants`)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = tmp / "preprocessed.onnx"
    with CWD_LOCK:
        previous = os.getcwd()
        os.chdir(tmp)
        try:
            quant_pre_process(str(model_path), str(out), skip_symbolic_shape=True)
        except Exception as err:  # noqa: BLE001 - pre-processing is an optimisation; fall back to the raw graph
            logger.debug("quant_pre_process of %s failed (%s: %s); quantizing the graph as it is",
                         model_path.name, type(err).__name__, err)
            return model_path
        finally:
            os.chdir(previous)
    if not out.is_file():
        return model_path
    restore_computed_constants(model_path, out)
    return out


def constant_nodes(proto) -> list[str]:
    """Names of the nodes that compute constants (every input an initializer or such a node's output):
    quantizing them would quantize the constants themselves (e.g. the per-row scales of a table)."""
    constant = {i.name for i in proto.graph.initializer}
    found = []
    for node in proto.graph.node:                          # graph order is topological
        if node.input and all(not i or i in constant for i in node.input):
            constant.update(node.output)
            if node.name:
                found.append(node.name)
    return found


def restore_computed_constants(source: Path, processed: Path) -> list[str]:
    """Undo ORT's folding of constants the source computes from smaller ones (log-coded row scales
    of a quantized lookup, int8 weights behind a DequantizeLinear), in ``processed``: the folded
    float initializer is replaced by the source's nodes and their initializers. Returns the names."""
    import onnx

    src, out = onnx.load(str(source)), onnx.load(str(processed))
    producer = {o: n for n in src.graph.node for o in n.output}
    src_inits = {i.name: i for i in src.graph.initializer}
    folded = [i for i in out.graph.initializer if i.name in producer]
    restored, nodes, inits = [], [], {}

    def visit(name: str, chain: list, used: dict) -> bool:       # constant-only ancestry of ``name``
        if name in src_inits:
            used[name] = src_inits[name]
            return True
        node = producer.get(name)
        if node is None or not all(visit(i, chain, used) for i in node.input if i):
            return False
        if all(node is not n for n in chain):
            chain.append(node)
        return True

    for tensor in folded:
        chain, used = [], {}
        if visit(tensor.name, chain, used) and sum(len(t.SerializeToString()) for t in used.values()) < \
                len(tensor.SerializeToString()):
            restored.append(tensor.name)
            nodes += [n for n in chain if all(n is not m for m in nodes)]
            inits.update(used)
    if not restored:
        return []
    keep = [i for i in out.graph.initializer if i.name not in restored]
    present = {i.name for i in keep}
    keep += [t for name, t in inits.items() if name not in present]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    rest = list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes + rest)
    processed.write_bytes(out.SerializeToString())
    return restored
