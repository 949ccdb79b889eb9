"""Size report of a model: parameters, per-tensor and global sparsity, file size, MACs estimate."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.graph.protos import attr, dims
from onnxprune.graph.prunable import find_prunable

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
    """Whole-model figures. ``macs`` counts Conv/Gemm/MatMul multiply-accumulates per sample (symbolic
    dims taken as 1); ``sparse_macs`` skips multiplications by weights that are exactly zero."""

    params: int
    prunable_params: int
    prunable_nonzero: int
    macs: int
    sparse_macs: int
    file_bytes: int | None
    tensors: list[TensorStats] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        """Global sparsity over the prunable weights."""
        return 1.0 - self.prunable_nonzero / self.prunable_params if self.prunable_params else 0.0


def _static_dims(value: onnx.ValueInfoProto) -> list[int] | None:
    """Static shape of a value, symbolic dims as 1; None when the rank is unknown."""
    found = dims(value)
    return None if found is None else [d if isinstance(d, int) and d > 0 else 1 for d in found]


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Known shapes of every value after shape inference (inputs, intermediates, outputs, initializers)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # a graph shape inference cannot handle still gets parameter counts
        inferred = model
    shapes = {}
    for value in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        static = _static_dims(value)
        if static is not None:
            shapes[value.name] = static
    for tensor in model.graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    return shapes


def _node_macs(node: onnx.NodeProto, shapes: dict[str, list[int]], nonzero: dict[str, int]) -> tuple[int, int]:
    """(dense, sparse) MACs of one Conv/ConvTranspose/Gemm/MatMul node; (0, 0) when shapes are unknown."""
    if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
        weight, out = shapes.get(node.input[1]), shapes.get(node.output[0])
        data = shapes.get(node.input[0])
        if weight is None or out is None or data is None:
            return 0, 0
        spatial = int(np.prod(out[2:] if node.op_type == "Conv" else data[2:]))
        batch = out[0] if out else 1
        per_weight = spatial * batch
        return per_weight * int(np.prod(weight)), per_weight * nonzero.get(node.input[1], int(np.prod(weight)))
    if node.op_type in ("Gemm", "MatMul") and len(node.input) >= 2:
        a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
        out = shapes.get(node.output[0])
        if a is None or b is None or out is None or len(b) < 1:
            return 0, 0
        k = a[-1] if not (node.op_type == "Gemm" and attr(node, "transA", 0)) else a[0]
        dense = int(np.prod(out)) * k
        if node.input[1] in nonzero:
            return dense, int(dense * nonzero[node.input[1]] / max(1, int(np.prod(b))))
        return dense, dense
    return 0, 0


def model_stats(model: onnx.ModelProto, path: str | os.PathLike | None = None) -> ModelStats:
    """Parameters, sparsity, MACs and (given the file) its size on disk, including external data."""
    inits = {t.name: t for t in model.graph.initializer}
    dense_values = {name: numpy_helper.to_array(t) for name, t in inits.items() if t.data_type in _FLOAT}
    for sparse in model.graph.sparse_initializer:
        dense_values[sparse.values.name] = sparse_to_dense(sparse)
    params = sum(int(v.size) for v in dense_values.values())
    nonzero = {name: int(np.count_nonzero(v)) for name, v in dense_values.items()}
    tensors = []
    for weight in find_prunable(model):
        tensors.append(TensorStats(weight.name, weight.op_type, weight.shape, weight.size, nonzero[weight.name]))
    shapes = _shapes(model)
    macs = sparse_macs = 0
    for node in model.graph.node:
        dense, sparse = _node_macs(node, shapes, nonzero)
        macs += dense
        sparse_macs += sparse
    return ModelStats(params=params, prunable_params=sum(t.size for t in tensors),
                      prunable_nonzero=sum(t.nonzero for t in tensors), macs=macs, sparse_macs=sparse_macs,
                      file_bytes=file_size(path) if path is not None else None, tensors=tensors)


def sparse_to_dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    """Dense numpy value of a sparse initializer (linear or coordinate indices)."""
    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices)
    dense = np.zeros(int(np.prod(sparse.dims)), values.dtype)
    if indices.ndim == 2:
        indices = np.ravel_multi_index(indices.T, tuple(sparse.dims))
    dense[indices] = values
    return dense.reshape(tuple(sparse.dims))


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
