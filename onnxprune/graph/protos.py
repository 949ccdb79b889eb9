"""Small readers and writers of ONNX protos, written once for the whole package: attributes,
opset versions, tensor dims, reader counts and fresh tensor names."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import onnx
from onnx import helper

Dims = tuple["int | str | None", ...]

# Names of the default ONNX operator domain.
DEFAULT_DOMAINS = ("", "ai.onnx")


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
