"""What ``onnxprune inspect`` reports about a model, as one data object."""

from __future__ import annotations

import os

from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

from onnxprune.graph.canonical import canonicalize
from onnxprune.view.onnx2torch_compat import unsupported_nodes
from onnxprune.data import Source, check_input_shapes, input_specs, load_data, sample_shapes
from onnxprune.graph.io import load_model
from onnxprune.graph.protos import dims, opset_of
from onnxprune.graph.stats import ModelStats, model_stats, node_macs


@dataclass
class ModelInfo:
    """Opset, inputs/outputs, size figures, what canonicalization changed and what cannot be converted."""

    path: str
    opset: int
    ir_version: int
    producer: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    stats: ModelStats
    canonical_changes: list[str]
    unsupported: list[dict[str, Any]]
    groups: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stats"]["sparsity"] = self.stats.sparsity
        return data


def _shape(value: onnx.ValueInfoProto) -> list[int | str]:
    """Dims of a graph input/output, symbolic ones by name ('?' when unnamed)."""
    return ["?" if d is None else d for d in dims(value) or ()]


def _value(value: onnx.ValueInfoProto) -> dict[str, Any]:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type) \
        if value.type.tensor_type.elem_type else None
    return {"name": value.name, "dtype": str(dtype) if dtype is not None else "?", "shape": _shape(value)}


def channel_groups(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None
                   ) -> list[dict[str, Any]]:
    """The coupled channel groups structured pruning sees, as JSON-ready dicts, each with its share of the
    model's MACs (of the nodes that write or read its channels; None when the shapes are unknown)."""
    from onnxprune.channels.analysis import find_groups

    macs = node_macs(model, input_shapes)
    total = sum(macs.values()) if macs else 0
    groups = []
    for group in find_groups(model):
        found = group.to_dict()
        nodes = set(group.producers) | set(group.consumers)
        found["macs_share"] = sum(macs.get(n, 0) for n in nodes) / total if total else None
        groups.append(found)
    return groups


def inspect_model(path: str | os.PathLike, input_shapes: dict[str, tuple[int, ...]] | None = None,
                  data: str | os.PathLike | Source | None = None) -> ModelInfo:
    """Load, canonicalize and describe the model at ``path``; MACs at ``input_shapes`` or at the shapes of
    ``data``'s samples where inputs have dynamic dims (unknown otherwise)."""
    original = load_model(path)
    canonical = canonicalize(original)
    model = canonical.model
    if input_shapes:
        check_input_shapes(input_shapes, input_specs(model))
    elif data is not None:
        input_shapes = sample_shapes(load_data(data, model, "evaluation"))
    opset = opset_of(model)
    specs = {s.name for s in input_specs(model)}
    return ModelInfo(
        path=str(path), opset=opset, ir_version=model.ir_version,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=[_value(v) for v in model.graph.input if v.name in specs],
        outputs=[_value(v) for v in model.graph.output],
        stats=model_stats(model, path, input_shapes), canonical_changes=canonical.changes,
        unsupported=[{"node": n, "op": op, "version": v} for n, op, v in unsupported_nodes(model)],
        groups=channel_groups(model, input_shapes))
