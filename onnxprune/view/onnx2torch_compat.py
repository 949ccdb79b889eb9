"""The one adapter to onnx2torch's private registry: ``patched_registry()`` puts the converters of
``converters`` into it (replacements and new op versions first, then the reused ones built on them) and
restores it exactly on exit; ``check_onnx2torch`` fails loudly when the installed onnx2torch moved a private
name that this module or ``converters`` relies on. ``convert`` and ``refused_nodes`` run onnx2torch inside
that context; ``refused_nodes`` tries every node's converter, so a node without a view is named before
conversion starts.
"""

from __future__ import annotations

import importlib
import logging
from contextlib import contextmanager
from typing import Any, Iterator, NamedTuple

import onnx
import torch

from onnxprune.graph.protos import opset_of
from onnxprune.errors import ConversionError
from onnxprune.view.converters import (ADDED, REPLACEMENTS, RESTRICTED, TYPE_ONLY_UPGRADES, WRAPPED,
                                         Converter, restricted)

log = logging.getLogger(__name__)

# (module, name) of every private onnx2torch name used here and in ``converters``: a newer onnx2torch
# that moves one fails loudly in ``check_onnx2torch`` instead of converting wrongly.
PRIVATE_NAMES: tuple[tuple[str, str], ...] = (
    ("onnx2torch.node_converters.registry", "_CONVERTER_REGISTRY"),
    ("onnx2torch.node_converters.registry", "OperationDescription"),
    ("onnx2torch.node_converters.global_average_pool", "OnnxGlobalAveragePool"),
    ("onnx2torch.onnx_graph", "OnnxGraph"),
    ("onnx2torch.utils.common", "get_const_value"),
    ("onnx2torch.utils.common", "OnnxMapping"),
    ("onnx2torch.utils.common", "OperationConverterResult"),
    ("onnx2torch.utils.safe_shape_inference", "safe_shape_inference"),
)
# The onnx2torch entries replaced by ``converters``: each must exist.
REPLACED: tuple[tuple[str, int], ...] = (*WRAPPED, *REPLACEMENTS)
_depth = 0  # nesting of patched_registry blocks


def check_onnx2torch() -> None:
    """ConversionError naming the private onnx2torch names this module uses that the installed
    onnx2torch lacks, or whose registry layout differs from the one the patches are written for."""
    missing = [f"{module}.{name}" for module, name in PRIVATE_NAMES
               if not hasattr(importlib.import_module(module), name)]
    if not missing:
        from onnx2torch.node_converters import registry

        if registry.OperationDescription._fields != ("domain", "operation_type", "version"):
            missing.append("registry.OperationDescription(domain, operation_type, version)")
        elif not isinstance(registry._CONVERTER_REGISTRY, dict):
            missing.append("registry._CONVERTER_REGISTRY as a dict")
        else:
            missing += [f"the {op}-{version} converter" for op, version in REPLACED
                        if _entry(op, version) not in registry._CONVERTER_REGISTRY]
    if missing:
        raise ConversionError(f"the installed onnx2torch changed what the torch view relies on ({', '.join(missing)}); "
                              "install the onnx2torch version onnxprune pins (1.5)")


def _entry(op_type: str, version: int) -> Any:
    """onnx2torch's registry key of ``op_type``-``version`` in the default domain."""
    from onnx2torch.node_converters import registry

    return registry.OperationDescription(domain="", operation_type=op_type, version=version)


def _replace_onnx2torch_entries(table: dict[Any, Converter]) -> None:
    """Replace onnx2torch entries (add_converter refuses to, so this goes through its table)."""
    for (op_type, version), wrap in WRAPPED.items():
        table[_entry(op_type, version)] = wrap(table[_entry(op_type, version)])
    for (op_type, version), converter in REPLACEMENTS.items():
        table[_entry(op_type, version)] = converter


def _has_converter(op_type: str, version: int) -> bool:
    """Whether onnx2torch's registry holds a converter for ``op_type`` at opset ``version``."""
    from onnx2torch.node_converters.registry import get_converter

    try:
        get_converter(op_type, version)
    except NotImplementedError:
        return False
    return True


def _add(op_type: str, version: int, converter: Converter) -> None:
    """Register ``converter`` for ``op_type``-``version`` unless onnx2torch already converts it."""
    from onnx2torch.node_converters.registry import add_converter

    if not _has_converter(op_type, version):
        add_converter(operation_type=op_type, version=version)(converter)


def _patch() -> None:
    """Put the extra converters into onnx2torch's registry: replacements and new ones first, then the
    reused ones built on them."""
    from onnx2torch.node_converters import registry

    _replace_onnx2torch_entries(registry._CONVERTER_REGISTRY)
    for (op_type, version), converter in ADDED.items():
        _add(op_type, version, converter)
    for op_type, version, base, checks in RESTRICTED:
        _add(op_type, version, restricted(op_type, registry.get_converter(op_type, base), checks))
    for op_type, (base, versions) in TYPE_ONLY_UPGRADES.items():
        for version in versions:
            _add(op_type, version, registry.get_converter(op_type, base))


@contextmanager
def patched_registry() -> Iterator[None]:
    """onnx2torch's registry with this module's converters inside the block, restored exactly on exit
    (nested blocks share the outermost one's patch)."""
    global _depth
    check_onnx2torch()
    from onnx2torch.node_converters import registry

    table = registry._CONVERTER_REGISTRY
    saved = dict(table) if _depth == 0 else None
    if saved is not None:
        _patch()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if saved is not None:
            table.clear()
            table.update(saved)


def convert(model: onnx.ModelProto) -> tuple[torch.fx.GraphModule, dict[str, str]]:
    """onnx2torch's conversion of ``model`` with this module's converters, and the submodule name of
    every node, by ONNX node name."""
    from onnx2torch import convert as onnx2torch_convert
    from onnx2torch.onnx_graph import OnnxGraph

    with patched_registry():
        graph_module = onnx2torch_convert(model)
    return graph_module, {node.proto.name: unique for unique, node in OnnxGraph(model.graph).nodes.items()}


class Refusal(NamedTuple):
    """A main-graph node without a torch view, and why."""

    node: str
    op_type: str
    version: int
    reason: str


def refused_nodes(model: onnx.ModelProto) -> list[Refusal]:
    """Every main-graph node onnx2torch cannot convert: no converter for its op version, or a
    converter that refuses this node's attributes or inputs."""
    from onnx2torch.node_converters.registry import get_converter
    from onnx2torch.onnx_graph import OnnxGraph
    from onnx2torch.utils.safe_shape_inference import safe_shape_inference

    try:
        model = safe_shape_inference(model)  # some converters read input shapes, as in onnx2torch.convert
    except Exception as exc:  # shape inference raises several types; the converters may not need it
        log.debug("shape inference before trying the converters failed: %s", exc)
    graph = OnnxGraph(model.graph)
    refused = []
    with patched_registry():
        for node in graph.nodes.values():
            domain = node.domain or ""
            version = opset_of(model, domain)
            try:
                get_converter(operation_type=node.operation_type, version=version, domain=domain)(node, graph)
            except Exception as exc:  # converters raise NotImplementedError, KeyError, ValueError, ... when they refuse
                log.info("no torch view for node %r (%s-%d): %s", node.name, node.operation_type, version, exc)
                refused.append(Refusal(node.name, node.operation_type, version, f"{type(exc).__name__}: {exc}"))
    return refused


def unsupported_nodes(model: onnx.ModelProto) -> list[tuple[str, str, int]]:
    """(node name, op type, opset version) of every node in ``refused_nodes``."""
    return [(r.node, r.op_type, r.version) for r in refused_nodes(model)]
