"""Size report of a model: parameters, per-tensor and global sparsity, file size, MACs estimate."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.graph.canonical import constants_to_initializers
from onnxprune.graph.edit import densified
from onnxprune.graph.protos import attr, dims
from onnxprune.graph.prunable import find_prunable
from onnxprune.graph.shapes import tensor_shapes, without_weights

log = logging.getLogger(__name__)

_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


@dataclass
class TensorStats:
    """One prunable tensor: its shape, element count, non-zeros and sparsity."""

    name: str
    op_type: str
    shape: tuple[int, ...]
    size: int
    nonzero: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / self.size if self.size else 0.0


@dataclass
class ModelStats:
    """Whole-model figures. ``macs`` counts Conv/Gemm/MatMul multiply-accumulates per sample (a dynamic
    batch taken as 1, other dynamic dims at the input shapes given); ``sparse_macs`` skips multiplications
    by weights that are exactly zero. Both are None ("unknown") when some shape cannot be known."""

    params: int
    prunable_params: int
    prunable_nonzero: int
    macs: int | None
    sparse_macs: int | None
    file_bytes: int | None
    tensors: list[TensorStats] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        """Global sparsity over the prunable weights."""
        return 1.0 - self.prunable_nonzero / self.prunable_params if self.prunable_params else 0.0


def _dims(value: onnx.ValueInfoProto) -> list[int | None] | None:
    """Shape of a value, unknown dims as None; None when the rank is unknown."""
    found = dims(value)
    return None if found is None else [d if isinstance(d, int) and d > 0 else None for d in found]


def _at_shapes(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs have the given shapes, a dynamic batch axis 1 elsewhere."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    inits = {t.name for t in fixed.graph.initializer}
    for value in fixed.graph.input:
        if value.name in inits or not value.type.tensor_type.HasField("shape"):
            continue
        wanted = input_shapes.get(value.name)
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            size = wanted[axis] if wanted is not None and axis < len(wanted) else (1 if axis == 0 else None)
            if size is not None and not (dim.HasField("dim_value") and dim.dim_value > 0 and wanted is None):
                dim.Clear()
                dim.dim_value = size
    return fixed


def value_shapes(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> dict[str, list[int | None]]:
    """Shapes of every value at the given input shapes (inputs, intermediates, outputs, initializers)."""
    fixed = _at_shapes(without_weights(model), input_shapes)
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, strict_mode=False, data_prop=True)
    except Exception:  # a graph shape inference cannot handle still gets parameter counts
        inferred = fixed
    shapes = {}
    for value in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        found = _dims(value)
        if found is not None:
            shapes[value.name] = found
    for tensor in model.graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    if not all(_known(v) for v in shapes.values()):  # ONNX Runtime's symbolic inference follows shape arithmetic
        for name, found in tensor_shapes(inferred).items():
            if found is not None and not _known(shapes.get(name)) and all(isinstance(d, int) for d in found):
                shapes[name] = list(found)
    return shapes


def _known(*shapes: list[int | None] | None) -> bool:
    return all(s is not None and all(d is not None for d in s) for s in shapes)


def _node_macs(node: onnx.NodeProto, shapes: dict[str, list[int | None]],
               nonzero: dict[str, int]) -> tuple[int, int] | None:
    """(dense, sparse) MACs of one Conv/ConvTranspose/Gemm/MatMul node, (0, 0) for other nodes, None when
    a shape it needs is unknown."""
    if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
        weight, out, data = shapes.get(node.input[1]), shapes.get(node.output[0]), shapes.get(node.input[0])
        if not _known(weight, out, data):
            return None
        spatial = int(np.prod(out[2:] if node.op_type == "Conv" else data[2:]))
        per_weight = spatial * (out[0] if out else 1)
        return per_weight * int(np.prod(weight)), per_weight * nonzero.get(node.input[1], int(np.prod(weight)))
    if node.op_type in ("Gemm", "MatMul") and len(node.input) >= 2:
        a, b, out = shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0])
        if not _known(a, b, out) or len(b) < 1:
            return None
        k = a[-1] if not (node.op_type == "Gemm" and attr(node, "transA", 0)) else a[0]
        dense = int(np.prod(out)) * k
        if node.input[1] in nonzero:
            return dense, int(dense * nonzero[node.input[1]] / max(1, int(np.prod(b))))
        return dense, dense
    return 0, 0


def model_stats(model: onnx.ModelProto, path: str | os.PathLike | None = None,
                input_shapes: dict[str, tuple[int, ...]] | None = None) -> ModelStats:
    """Parameters, sparsity, MACs (at ``input_shapes`` where inputs have dynamic dims beyond the batch) and
    (given the file) its size on disk, including external data. Sparse initializers count as the dense
    tensors they stand for, ``Constant`` nodes as the initializers they become (Paddle2ONNX stores weights so)."""
    if model.graph.sparse_initializer:
        model = densified(model)
    if any(node.op_type == "Constant" for node in model.graph.node):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = constants_to_initializers(copy, [])
    inits = {t.name: t for t in model.graph.initializer}
    dense_values = {name: numpy_helper.to_array(t) for name, t in inits.items() if t.data_type in _FLOAT}
    params = sum(int(v.size) for v in dense_values.values())
    nonzero = {name: int(np.count_nonzero(v)) for name, v in dense_values.items()}
    tensors = []
    for weight in find_prunable(model):
        tensors.append(TensorStats(weight.name, weight.op_type, weight.shape, weight.size, nonzero[weight.name]))
    shapes = value_shapes(model, input_shapes or {})
    macs: int | None = 0
    sparse_macs: int | None = 0
    for node in model.graph.node:
        counted = _node_macs(node, shapes, nonzero)
        if counted is None:
            log.info("MACs unknown: the shapes around node %r are not known (give --input-shape)", node.name)
            macs = sparse_macs = None
            break
        macs += counted[0]
        sparse_macs += counted[1]
    return ModelStats(params=params, prunable_params=sum(t.size for t in tensors),
                      prunable_nonzero=sum(t.nonzero for t in tensors), macs=macs, sparse_macs=sparse_macs,
                      file_bytes=file_size(path) if path is not None else None, tensors=tensors)


def node_macs(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, int] | None:
    """Each Conv/Gemm/MatMul node's dense MACs per sample at ``input_shapes``; None when a shape is unknown."""
    shapes = value_shapes(model, input_shapes or {})
    found = {}
    for node in model.graph.node:
        counted = _node_macs(node, shapes, {})
        if counted is None:
            return None
        if counted[0]:
            found[node.name] = counted[0]
    return found


def file_size(path: str | os.PathLike) -> int:
    """Bytes of the model file plus every external-data file it references."""
    path = Path(path)
    total = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    locations = set()
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                locations.add(entry.value)
    for location in locations:
        data = path.parent / location
        if data.is_file():
            total += data.stat().st_size
    return total
