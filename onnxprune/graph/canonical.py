"""Bring any exporter's graph to one form: every weight an initializer, shapes inferred.

Each pass is a function from model to model that appends what it changed to a report, so
``onnxprune inspect`` and ``prune`` can tell the user exactly what differs from the input file.
Graph input/output names, dynamic dimensions, opset imports and metadata are never touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.errors import ModelError, first_line
from onnxprune.graph.edit import densified
from onnxprune.graph.protos import unique_name
from onnxprune.graph.shapes import without_weights

log = logging.getLogger(__name__)

# Ops that never become initializers when all their inputs are constant: random or side effects.
_NOT_FOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                 "Bernoulli", "If", "Loop", "Scan", "SequenceConstruct", "Optional",
                 # folding these would turn a quantized or low-precision model into a float one
                 "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
# A Cast of a constant is folded only when small (shape arithmetic), never a whole fp16 weight.
_MAX_FOLD_CAST = 4096
# Do not materialise folded constants larger than this many elements (e.g. a huge Expand).
_MAX_FOLD_ELEMENTS = 1 << 26


@dataclass
class Canonical:
    """A canonical model and the list of changes made to reach it."""

    model: onnx.ModelProto
    changes: list[str] = field(default_factory=list)


def initializer_map(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Name → initializer of the main graph."""
    return {t.name: t for t in model.graph.initializer}


def graph_input_names(model: onnx.ModelProto) -> list[str]:
    """Names of the true graph inputs (inputs that are not initializers)."""
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a Constant node produces, whatever attribute holds it; None for sparse values."""
    attr = node.attribute[0] if len(node.attribute) == 1 else None
    if attr is None:
        return None
    name = node.output[0]
    if attr.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attr.t)
        tensor.name = name
        return tensor
    scalars = {
        "value_float": lambda a: np.array(a.f, np.float32),
        "value_floats": lambda a: np.array(list(a.floats), np.float32),
        "value_int": lambda a: np.array(a.i, np.int64),
        "value_ints": lambda a: np.array(list(a.ints), np.int64),
    }
    if attr.name in scalars:
        return numpy_helper.from_array(scalars[attr.name](attr), name)
    return None


def constants_to_initializers(model: onnx.ModelProto, changes: list[str]) -> onnx.ModelProto:
    """Turn ``Constant`` nodes of the main graph into initializers (Paddle2ONNX and dynamo style)."""
    outputs = {o.name for o in model.graph.output}
    keep, moved = [], 0
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output[0] not in outputs:
            tensor = _constant_value(node)
            if tensor is not None:
                model.graph.initializer.append(tensor)
                moved += 1
                continue
        keep.append(node)
    if moved:
        del model.graph.node[:]
        model.graph.node.extend(keep)
        changes.append(f"{moved} Constant node(s) became initializers")
    return model


def name_nodes(model: onnx.ModelProto, changes: list[str]) -> onnx.ModelProto:
    """Give unnamed or duplicate-named nodes a unique name, so reports and groups can refer to them."""
    seen: set[str] = set()
    renamed = 0
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = unique_name(seen, f"{node.op_type}_{index}")
            renamed += 1
        seen.add(node.name)
    if renamed:
        changes.append(f"named {renamed} unnamed or duplicate-named node(s)")
    return model


def densify_sparse_initializers(model: onnx.ModelProto, changes: list[str]) -> onnx.ModelProto:
    """Store sparse initializers (as written by ``--compress``) as ordinary dense initializers."""
    count = len(model.graph.sparse_initializer)
    if count:
        model = densified(model)
        changes.append(f"{count} sparse initializer(s) stored densely")
    return model


def drop_initializer_inputs(model: onnx.ModelProto, changes: list[str]) -> onnx.ModelProto:
    """Remove initializers from the graph inputs (IR < 4 habit) so inputs are only real inputs."""
    inits = {t.name for t in model.graph.initializer}
    listed = [i for i in model.graph.input if i.name in inits]
    if listed:
        for value in listed:
            model.graph.input.remove(value)
        if model.ir_version < 4:
            model.ir_version = 4
        changes.append(f"{len(listed)} initializer(s) listed as graph inputs are now plain initializers")
    return model


def _evaluate_node(node: onnx.NodeProto, inputs: dict[str, np.ndarray],
                   opsets: list[onnx.OperatorSetIdProto]) -> list[np.ndarray] | None:
    """Run one node on constant inputs with the ONNX reference evaluator; None when it cannot."""
    from onnx.reference import ReferenceEvaluator

    try:
        evaluator = ReferenceEvaluator(
            helper.make_model(
                helper.make_graph([node], "fold",
                                  [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                                   for n, v in inputs.items()],
                                  [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
                                   for o in node.output if o]),
                opset_imports=opsets))
        return list(evaluator.run(None, inputs))
    except Exception as exc:  # the reference evaluator raises many types; folding is best effort
        log.debug("not folding %s (%s): %s", node.name, node.op_type, exc)
        return None


def fold_constants(model: onnx.ModelProto, changes: list[str]) -> onnx.ModelProto:
    """Replace nodes whose inputs are all constant (ConstantOfShape, Identity aliases, casts, ...)
    by the initializers they compute, and drop constant-only nodes nobody reads any more."""
    graph = model.graph
    stored = {t.name: t for t in graph.initializer}
    values: dict[str, np.ndarray] = {}  # folded results; initializers are decoded when a node needs them

    def value(name: str) -> np.ndarray:
        return values[name] if name in values else numpy_helper.to_array(stored[name])

    outputs = {o.name for o in graph.output}
    folded: dict[str, int] = {}
    keep = []
    for node in graph.node:
        ins = [i for i in node.input if i]
        foldable = (node.domain in ("", "ai.onnx") and node.op_type not in _NOT_FOLDABLE
                    and all(i in values or i in stored for i in ins) and not any(o in outputs for o in node.output)
                    and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                for a in node.attribute))
        if foldable and node.op_type == "Cast":
            foldable = sum(value(i).size for i in ins) <= _MAX_FOLD_CAST
        results = _evaluate_node(node, {i: value(i) for i in ins}, list(model.opset_import)) if foldable else None
        if results is None or sum(np.asarray(r).size for r in results) > _MAX_FOLD_ELEMENTS:
            keep.append(node)
            continue
        for name, result in zip(node.output, results):
            if name:
                values[name] = np.asarray(result)
                graph.initializer.append(numpy_helper.from_array(values[name], name))
        folded[node.op_type] = folded.get(node.op_type, 0) + 1
    if folded:
        del graph.node[:]
        graph.node.extend(keep)
        summary = ", ".join(f"{n} {op}" for op, n in sorted(folded.items()))
        changes.append(f"folded constant subgraphs into initializers ({summary})")
    return model


def remove_unused_initializers(model: onnx.ModelProto, changes: list[str]) -> onnx.ModelProto:
    """Drop initializers that no node, subgraph or graph output reads (left over by folding)."""
    used = {o.name for o in model.graph.output}
    stack = [model.graph]
    while stack:
        graph = stack.pop()
        for node in graph.node:
            used.update(node.input)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                    used.update(o.name for o in attr.g.output)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(attr.graphs)
    unused = [t for t in model.graph.initializer if t.name not in used]
    for tensor in unused:
        model.graph.initializer.remove(tensor)
    if unused:
        changes.append(f"removed {len(unused)} initializer(s) no node reads")
    return model


def infer_shapes(model: onnx.ModelProto, changes: list[str]) -> onnx.ModelProto:
    """Run ONNX shape inference (non-strict) so later stages know every intermediate shape: on a copy without
    the weights (``without_weights``), whose shapes are copied back, unless a node holds a subgraph."""
    nested = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                 for node in model.graph.node for a in node.attribute)
    try:
        inferred = onnx.shape_inference.infer_shapes(model if nested else without_weights(model), strict_mode=False,
                                                     data_prop=True)
    except Exception as exc:  # shape inference raises InferenceError, RuntimeError, ...
        raise ModelError(f"shape inference failed: {first_line(exc)}") from None
    if len(inferred.graph.value_info) != len(model.graph.value_info):
        changes.append(f"shape inference: {len(inferred.graph.value_info)} intermediate shapes known")
    if nested:
        return inferred
    for values in ("value_info", "output"):
        del getattr(model.graph, values)[:]
        getattr(model.graph, values).extend(getattr(inferred.graph, values))
    return model


def simplify(model: onnx.ModelProto, changes: list[str]) -> onnx.ModelProto:
    """Optional onnxslim pass (fusions, dead code); it may rename or merge nodes, so it is opt-in."""
    import onnxslim

    before = len(model.graph.node)
    slimmed = onnxslim.slim(model)
    if not isinstance(slimmed, onnx.ModelProto):
        raise ModelError("onnxslim could not simplify this model")
    changes.append(f"onnxslim: {before} → {len(slimmed.graph.node)} nodes")
    return slimmed


def canonicalize(model: onnx.ModelProto, *, use_onnxslim: bool = False) -> Canonical:
    """Return a copy of ``model`` with weights as initializers and shapes inferred, plus a report."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    changes: list[str] = []
    for graph_pass in (constants_to_initializers, densify_sparse_initializers, drop_initializer_inputs, fold_constants,
                       remove_unused_initializers, name_nodes, infer_shapes):
        work = graph_pass(work, changes)
    if use_onnxslim:
        work = infer_shapes(simplify(work, changes), changes)
    for line in changes:
        log.info("canonicalize: %s", line)
    return Canonical(work, changes)
