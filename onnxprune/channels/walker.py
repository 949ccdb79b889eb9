"""The walk of a graph that channel analysis makes: every tensor's channel layout, the weight slabs and
shape constants that carry channels, and the groups they form (``channels/analysis.py`` drives it; the
rules it applies are looked up per op, type and opset)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.channels.model import CHANNELWISE, PRODUCER, ChannelAnalysis, ChannelGroup, Member, ShapeFix
from onnxprune.channels.spaces import Layout, Spaces, Span
from onnxprune.graph.protos import DEFAULT_DOMAINS, opset_of
from onnxprune.graph.shapes import tensor_shapes


@dataclass(frozen=True)
class _Registration(Member):
    """A member before its space is resolved into final groups."""

    space: int


@dataclass(frozen=True)
class _PendingFix:
    """A shape fix before the final groups are known: each value spells the channel count of a span."""

    kind: str
    node: str
    values: tuple[Span, ...]
    slot: int
    position: int


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the enclosing graph."""
    names: set[str] = set()
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        for graph in graphs:
            local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
            for inner in graph.node:
                local.update(inner.output)
            for inner in graph.node:
                names.update(i for i in inner.input if i and i not in local)
                names.update(_subgraph_reads(inner))
    return names



class Walker:
    """One pass over a graph in node order, giving each channel-carrying tensor its layout.

    Rules read ``layouts``, ``shapes``, ``inits`` and ``spaces`` and record what they find through
    the methods below.
    """

    def __init__(self, model: onnx.ModelProto, lookup: Callable[[str, str, int], Any]):
        """``lookup(domain, op_type, opset)``: the registry entry (``rule``, ``producer``) of an op, or None."""
        graph = model.graph
        self.model, self.graph, self.lookup = model, graph, lookup
        self.inits = {t.name: t for t in graph.initializer}
        self.shapes = tensor_shapes(model)
        self.position = {node.name: i for i, node in enumerate(graph.node)}
        self.producer_of = {out: node for node in graph.node for out in node.output if out}
        self.spaces = Spaces()
        self.layouts: dict[str, Layout] = {}
        self.registrations: list[_Registration] = []
        self.fixes: list[_PendingFix] = []
        self.readers: dict[str, set[str]] = {}
        for node in graph.node:
            for name in list(node.input) + sorted(_subgraph_reads(node)):
                if name in self.inits:
                    self.readers.setdefault(name, set()).add(node.name)

    # ----- small helpers -------------------------------------------------------------------
    def value(self, name: str) -> np.ndarray | None:
        """The value of a constant input, or None when it is computed at run time."""
        return numpy_helper.to_array(self.inits[name]) if name in self.inits else None

    def rank(self, name: str) -> int | None:
        """The rank of a tensor, None when its shape is unknown."""
        dims = self.shapes.get(name)
        return None if dims is None else len(dims)

    def block(self, node: onnx.NodeProto, names, why: str) -> None:
        """Make the channels of every named tensor unprunable because of ``node``."""
        reason = f"{node.op_type} node {node.name!r}: {why}"
        for name in names:
            if name in self.layouts:
                self.spaces.block(self.layouts[name].spaces, reason)

    def set_layout(self, node: onnx.NodeProto, name: str, layout: Layout) -> None:
        """Record a tensor's layout after checking it against the inferred shape."""
        dims = self.shapes.get(name)
        channels = self.spaces.total(layout.spaces) * layout.block
        if dims is not None and (len(dims) != layout.rank or (isinstance(dims[layout.axis], int)
                                                              and dims[layout.axis] != channels)):
            self.spaces.block(layout.spaces, f"{node.op_type} node {node.name!r}: output {name!r} has shape "
                                             f"{list(dims)}, which the channel analysis cannot follow")
        self.layouts[name] = layout

    def register(self, layout_spaces: tuple[int, ...], role: str, node: onnx.NodeProto, tensor: str,
                 axis: int, block: int, weight: bool) -> None:
        """Record that ``tensor`` holds the channels of ``layout_spaces`` along ``axis``."""
        offset = 0
        for space in layout_spaces:
            self.registrations.append(_Registration(role, node.name, node.op_type, tensor, axis, offset, block,
                                                    weight, space=space))
            offset += self.spaces.size[space] * block

    def produce(self, node: onnx.NodeProto, channels: int, out_axis: int | None = None) -> Layout:
        """A new space for the output channels of ``node``, laid on ``out_axis`` (default: last).

        When the output shape is unknown the space is unprunable and the output carries no layout.
        """
        out = node.output[0]
        rank = self.rank(out)
        if rank is None or rank == 0:
            space = self.spaces.new(channels, [f"{node.op_type} node {node.name!r}: output shape unknown "
                                               "(shape inference cannot follow the graph here)"])
            return Layout(0, 0, (space,))
        layout = Layout(rank - 1 if out_axis is None else out_axis, rank, (self.spaces.new(channels),))
        self.set_layout(node, out, layout)
        return layout

    def attach(self, node: onnx.NodeProto, name: str, layout: Layout) -> None:
        """Couple operand ``name`` to ``layout`` (of the node's output) under broadcasting.

        A channel-carrying operand is unified with it; a constant with one value per channel becomes
        a channelwise member; a broadcast dimension (1 or absent) is left alone. Anything else ties
        the channels to values of unknown origin and makes them unprunable.
        """
        channels = self.spaces.total(layout.spaces) * layout.block
        if name in self.layouts:
            other = self.layouts[name]
            if (layout.rank - other.rank + other.axis != layout.axis or other.block != layout.block
                    or not self.spaces.unify(layout.spaces, other.spaces)):
                self.block(node, [name], "operands carry channels on different axes or in different counts")
                self.spaces.block(layout.spaces, f"{node.op_type} node {node.name!r}: operands carry channels "
                                                 "on different axes or in different counts")
            return
        dims = self.shapes.get(name)
        if dims is None:
            self.spaces.block(layout.spaces, f"{node.op_type} node {node.name!r}: shape of operand {name!r} unknown")
            return
        position = layout.axis - (layout.rank - len(dims))
        if position < 0 or dims[position] == 1:
            return
        if name in self.inits and dims[position] == channels:
            self.register(layout.spaces, CHANNELWISE, node, name, position, layout.block, weight=False)
            return
        self.spaces.block(layout.spaces, f"{node.op_type} node {node.name!r}: operand {name!r} mixes in "
                                         "channels of unknown origin")

    def fix(self, kind: str, node: onnx.NodeProto, values: list[Span], slot: int = 0, position: int = 0) -> None:
        """Record a shape constant of ``node`` spelling the channel counts of ``values`` (see ShapeFix)."""
        self.fixes.append(_PendingFix(kind, node.name, tuple(values), slot, position))

    # ----- the pass --------------------------------------------------------------------------
    def visit(self, node: onnx.NodeProto) -> None:
        """Apply the node's rule, or block the channels it touches when it has none."""
        implicit = _subgraph_reads(node)
        if implicit:
            self.block(node, sorted(implicit) + list(node.input), "channels used inside a subgraph")
            return
        entry = self.lookup(node.domain, node.op_type, opset_of(self.model, node.domain))
        if entry is None and node.domain not in DEFAULT_DOMAINS:
            self.block(node, node.input, f"custom-domain op {node.domain}.{node.op_type} has unknown channel semantics")
        elif entry is None:
            self.block(node, node.input, "op with unknown channel semantics")
        elif entry.producer or any(i in self.layouts for i in node.input):
            entry.rule(self, node)

    # ----- results ---------------------------------------------------------------------------
    def finish(self) -> ChannelAnalysis:
        for output in self.graph.output:
            if output.name in self.layouts:
                self.spaces.block(self.layouts[output.name].spaces, f"reaches graph output {output.name!r}")
        self._couple_shared_slabs()
        self._block_foreign_readers()
        self.spaces.settle_heads()
        return self._groups()

    def _couple_shared_slabs(self) -> None:
        """A slab registered twice (a weight shared by several nodes) couples its spaces."""
        claims: dict[tuple[str, int], list[_Registration]] = {}
        for reg in self.registrations:
            claims.setdefault((reg.tensor, reg.axis), []).append(reg)
        for (tensor, axis), regs in claims.items():
            by_offset: dict[int, _Registration] = {}
            for reg in regs:
                seen = by_offset.setdefault(reg.offset, reg)
                if seen is reg:
                    continue
                if seen.block != reg.block or not self.spaces.unify((seen.space,), (reg.space,)):
                    reason = f"initializer {tensor!r} is shared by nodes that use it differently"
                    self.spaces.block([seen.space, reg.space], reason)
            spans = sorted((r.offset, r.offset + self.spaces.size[r.space] * r.block, r.space)
                           for r in by_offset.values())
            for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
                if start < end:
                    self.spaces.block([a, b], f"initializer {tensor!r} is shared by nodes that use it differently")

    def _block_foreign_readers(self) -> None:
        """A member tensor axis that some reader of the tensor did not register cannot change length:
        slicing it would change that reader too (e.g. a tied weight read by a node whose input on
        that axis comes from a graph input)."""
        registered: dict[tuple[str, int], set[str]] = {}
        spaces_of: dict[tuple[str, int], list[int]] = {}
        for reg in self.registrations:
            registered.setdefault((reg.tensor, reg.axis), set()).add(reg.node)
            spaces_of.setdefault((reg.tensor, reg.axis), []).append(reg.space)
        outputs = {o.name for o in self.graph.output}
        for (tensor, axis), nodes in registered.items():
            foreign = sorted(self.readers.get(tensor, set()) - nodes)
            if foreign or tensor in outputs:
                why = f"is also read by node {foreign[0]!r}" if foreign else "is a graph output"
                self.spaces.block(spaces_of[(tensor, axis)], f"initializer {tensor!r} {why}")

    def _groups(self) -> ChannelAnalysis:
        members: dict[int, dict[tuple[str, int, int, str], Member]] = {}
        for reg in self.registrations:
            offset = reg.offset
            for leaf, block in self.spaces.expand((reg.space,), reg.block):
                key = (reg.tensor, reg.axis, offset, reg.node)
                members.setdefault(leaf, {}).setdefault(key, Member(
                    reg.role, reg.node, reg.op_type, reg.tensor, reg.axis, offset, block, reg.weight))
                offset += self.spaces.size[leaf] * block

        def order(leaf: int) -> tuple[int, int]:
            held = members[leaf].values()
            first = [m for m in held if m.role == PRODUCER] or list(held)
            return min((self.position[m.node], m.offset) for m in first)

        leaves = sorted(members, key=order)
        index = {leaf: i for i, leaf in enumerate(leaves)}
        groups = []
        for leaf in leaves:
            held = tuple(sorted(members[leaf].values(), key=lambda m: (self.position[m.node], m.role, m.tensor, m.axis)))
            reasons = list(self.spaces.reasons[leaf])
            if not any(m.role == PRODUCER for m in held):
                reasons.append("no producer: the channels come from a graph input or an unanalysed op")
            groups.append(ChannelGroup(index[leaf], self.spaces.size[leaf], held, tuple(reasons)))
        fixes = []
        for fix in self.fixes:
            terms = tuple(tuple((index.get(leaf, -1), self.spaces.size[leaf], block)
                                for leaf, block in self.spaces.expand(span.spaces, span.block)) for span in fix.values)
            fixes.append(ShapeFix(fix.kind, fix.node, terms, fix.slot, fix.position))
        return ChannelAnalysis(groups, fixes)
