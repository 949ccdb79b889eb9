"""Which initializers a method may prune: weight inputs of Conv, Gemm and MatMul."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.graph.protos import attr

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}


@dataclass(frozen=True)
class PrunableWeight:
    """One prunable initializer and the nodes that read it."""

    name: str
    op_type: str  # Conv, Gemm or MatMul (of the first consumer)
    nodes: tuple[str, ...]  # consumer node names, in graph order
    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


def _weight_input(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> str | None:
    """The name of the node's weight initializer, or None when the node has no constant weight."""
    if node.op_type == "Conv" and len(node.input) > 1:
        return node.input[1] if node.input[1] in inits else None
    if node.op_type == "Gemm" and len(node.input) > 1:
        return node.input[1] if node.input[1] in inits and node.input[0] not in inits else None
    if node.op_type == "MatMul" and len(node.input) == 2:
        a, b = node.input
        if b in inits and a not in inits and len(inits[b].dims) == 2:
            return b
    return None


def find_prunable(model: onnx.ModelProto) -> list[PrunableWeight]:
    """Prunable weights of the main graph, in the order their first consumer appears.

    A float initializer of rank >= 2 is prunable when it is the weight of a Conv, Gemm or MatMul
    (the second operand, 2-D for MatMul). An initializer also read by any other kind of node is
    left alone, because changing it would change that node too.
    """
    inits = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in set(node.input):
            if name in inits:
                consumers.setdefault(name, []).append(node)
    found: dict[str, PrunableWeight] = {}
    for node in model.graph.node:
        name = _weight_input(node, inits)
        if name is None or name in found:
            continue
        tensor = inits[name]
        readers = consumers[name]
        if tensor.data_type not in _FLOAT_TYPES or len(tensor.dims) < 2:
            continue
        if any(_weight_input(r, inits) != name for r in readers):
            continue
        found[name] = PrunableWeight(
            name=name, op_type=node.op_type, nodes=tuple(r.name for r in readers),
            shape=tuple(int(d) for d in tensor.dims),
            dtype=str(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)))
    return list(found.values())


def read_weights(model: onnx.ModelProto, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The numpy values of the prunable weights (or of the named initializers)."""
    wanted = set(names) if names is not None else {w.name for w in find_prunable(model)}
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in wanted}


def weight_layouts(model: onnx.ModelProto, names: list[str]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The shape and dtype of each named initializer, without reading its values."""
    wanted = set(names)
    return {t.name: (tuple(t.dims), np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)))
            for t in model.graph.initializer if t.name in wanted}


def select_prunable(model: onnx.ModelProto, skip_first: bool = False, skip_last: bool = False) -> list[PrunableWeight]:
    """The prunable weights a method works on, optionally without the first and/or last layer."""
    weights = find_prunable(model)
    if skip_first and weights:
        weights = weights[1:]
    if skip_last and weights:
        weights = weights[:-1]
    return weights


def input_axis(model: onnx.ModelProto, weight: PrunableWeight) -> int:
    """The axis of ``weight`` summed against the layer input (where N:M groups run)."""
    if weight.op_type == "Conv":
        return 1
    if weight.op_type == "Gemm":
        node = next(n for n in model.graph.node if n.name == weight.nodes[0])
        return 1 if attr(node, "transB", 0) else 0
    return 0
