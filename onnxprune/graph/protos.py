"""Small readers and writers of ONNX protos, written once for the whole package: attributes,
opset versions, tensor dims, reader counts, fresh tensor names and shallow copies."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import onnx
from google.protobuf.message import EncodeError, Message
from onnx import helper

Dims = tuple["int | str | None", ...]

# Names of the default ONNX operator domain.
DEFAULT_DOMAINS = ("", "ai.onnx")


def without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose main graph has no initializers, made without copying them: the large part
    of a model, handled apart (written, hashed or declared) by the caller."""
    light = onnx.ModelProto()
    _copy_except(model, light, "graph")
    _copy_except(model.graph, light.graph, "initializer")
    return light


def _copy_except(source: Message, target: Message, skip: str) -> None:
    """Copy every set field of ``source`` into ``target`` but the one named ``skip``."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(target, field.name).extend(value)
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


# Protobuf cannot serialize a message of 2 GB or more: such a model is sized, run, checked and written in parts.
_PROTOBUF_LIMIT = onnx.checker.MAXIMUM_PROTOBUF
# Below this share of the limit in weights, what else a graph holds cannot reach it.
_SURE_UNDER = 0.9


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the main graph's initializers and ``Constant``-node tensors by their dims and element type:
    what dominates a model's size, counted without encoding it (``ByteSize`` encodes the whole model)."""
    tensors = [*model.graph.initializer, *(a.t for n in model.graph.node for a in n.attribute
                                           if a.type == onnx.AttributeProto.TENSOR)]
    return sum(tensor_bytes(t) for t in tensors)


def tensor_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's values by its dims and element type (strings count none), read without encoding it."""
    if tensor.data_type == onnx.TensorProto.STRING:
        return 0
    return math.prod(tensor.dims) * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def over_protobuf_limit(model: onnx.ModelProto) -> bool:
    """Whether ``model`` is too large to serialize whole (``SerializeToString`` and ``ByteSize`` fail)."""
    weights = weight_bytes(model)
    if weights < _SURE_UNDER * _PROTOBUF_LIMIT:
        return False
    try:
        return weights >= _PROTOBUF_LIMIT or model.ByteSize() >= _PROTOBUF_LIMIT
    except EncodeError:
        return True


def serialized_bytes(model: onnx.ModelProto) -> int:
    """The model's serialized size: exact below protobuf's 2 GB, past it its weights' bytes (``ByteSize``
    fails there)."""
    return weight_bytes(model) if over_protobuf_limit(model) else model.ByteSize()


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of attribute ``name`` of ``node`` (ints, floats, strings, lists, tensors), else ``default``."""
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def set_attr(node: onnx.NodeProto, name: str, value: Any) -> None:
    """Set attribute ``name`` of ``node`` to ``value``, replacing any previous value."""
    for index, attribute in enumerate(node.attribute):
        if attribute.name == name:
            del node.attribute[index]
            break
    node.attribute.append(helper.make_attribute(name, value))


def domain_key(domain: str) -> str:
    """One spelling per operator domain: the default domain ('' or 'ai.onnx') is ''."""
    return "" if domain in DEFAULT_DOMAINS else domain


def opset_of(model: onnx.ModelProto, domain: str = "") -> int:
    """The opset version ``model`` imports for ``domain`` (default: the ONNX domain); 0 when not imported."""
    wanted = domain_key(domain)
    return next((o.version for o in model.opset_import if domain_key(o.domain) == wanted), 0)


def dims(value: onnx.ValueInfoProto) -> Dims | None:
    """The dims of a tensor value: ints when static, the name of a dynamic dim, None when unnamed;
    None for the whole shape when its rank is unknown."""
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim)


def reader_counts(graph: onnx.GraphProto) -> dict[str, int]:
    """How many node inputs (and graph outputs) read each tensor name."""
    count: dict[str, int] = defaultdict(int)
    for node in graph.node:
        for name in node.input:
            count[name] += 1
    for output in graph.output:
        count[output.name] += 1
    return count


def names_in_use(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name of the graph (inputs, initializers, node outputs): what a new tensor must avoid."""
    return {i.name for i in graph.input} | {t.name for t in graph.initializer} | \
        {o for node in graph.node for o in node.output}


def unique_name(taken: set[str], base: str) -> str:
    """``base``, or ``base_1``, ``base_2``, ... : the first not in ``taken``, which is then added to it."""
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name
