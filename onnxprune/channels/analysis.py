"""Channel groups of an ONNX graph: which weight slices must be pruned together.

A *space* is a run of channels created by one producer (a Conv, Gemm or MatMul output). Every
tensor that carries channels gets a layout: the axis holding them, the spaces laid end to end
along it (several after a Concat) and how many consecutive entries each channel spans (more than
one after a Flatten into a Gemm). Residual adds, squeeze-excitation gates and shared weights
unify spaces; Split and unequal concats cut them into pieces. After one pass over the graph in
topological order, every uncut space is a channel group holding all the weight slabs (members)
that carry its channels and the shape constants (fixes) that encode its size. An op whose channel
semantics are unknown makes the groups it touches unprunable, with the reason; nothing is guessed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

Dims = tuple["int | str | None", ...]

PRODUCER, CHANNELWISE, CONSUMER = "producer", "channelwise", "consumer"

# Ops that act on every element alone: the output has the input's channels.
_UNARY = {"Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu",
          "Softplus", "Softsign", "Gelu", "Mish", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal",
          "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity", "Dropout", "Cast", "CastLike", "Clip",
          "ThresholdedRelu", "Shrink", "Not", "IsNaN", "IsInf", "Swish"}
# Ops that combine their operands element by element, with numpy broadcasting.
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu", "Where", "Mod",
                "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor"}
# Ops pooling over the spatial axes of an [N, C, ...] tensor.
_POOLS = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
_REDUCES = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
            "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}
# Ops whose output only moves the same elements into another shape.
_RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}
# Ops that read a tensor's shape, never its values: they neither carry nor couple channels.
_SHAPE_READERS = {"Shape", "Size"}


@dataclass(frozen=True)
class Member:
    """One slab of an initializer that holds a group's channels.

    The group's channel ``c`` occupies entries ``offset + c*block`` to ``offset + (c+1)*block`` of
    ``axis``. ``role``: producer (writes the channel), channelwise (per-channel parameter after the
    producer: bias, depthwise kernel, BatchNorm statistics, constant operand) or consumer (reads it).
    ``weight`` marks Conv/Gemm/MatMul weights, the tensors importance and pairing vectors use.
    """

    role: str
    node: str
    op_type: str
    tensor: str
    axis: int
    offset: int
    block: int
    weight: bool


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be pruned together: ``size`` of them, held by ``members``.

    ``reasons`` is empty for a prunable group; otherwise it says what stops the pruning.
    """

    index: int
    size: int
    members: tuple[Member, ...]
    reasons: tuple[str, ...] = ()

    @property
    def prunable(self) -> bool:
        return not self.reasons

    @property
    def reason(self) -> str | None:
        """Why the group cannot be pruned, as one line; None when it can."""
        return "; ".join(self.reasons) if self.reasons else None

    @property
    def producers(self) -> tuple[str, ...]:
        """Names of the nodes that write the group's channels."""
        return tuple(dict.fromkeys(m.node for m in self.members if m.role == PRODUCER))

    @property
    def consumers(self) -> tuple[str, ...]:
        """Names of the nodes that read the group's channels through a weight."""
        return tuple(dict.fromkeys(m.node for m in self.members if m.role == CONSUMER))

    def to_dict(self) -> dict:
        """A JSON-ready summary (for ``onnxprune inspect --json`` and reports)."""
        return {"index": self.index, "size": self.size, "prunable": self.prunable, "reason": self.reason,
                "producers": list(self.producers), "consumers": list(self.consumers),
                "members": [{"role": m.role, "node": m.node, "op": m.op_type, "tensor": m.tensor,
                             "axis": m.axis, "offset": m.offset, "block": m.block} for m in self.members]}


@dataclass(frozen=True)
class ShapeFix:
    """A constant or attribute that encodes channel counts and must follow the pruning.

    ``kind``: 'entry' (element ``position`` of the initializer at input ``slot`` of ``node``, e.g. a
    Reshape target), 'group' (a depthwise Conv's ``group`` attribute) or 'split' (the sizes of a
    Split along channels, one value per output). Each value is ``sum(channels * block)`` over its
    ``terms`` ((group index or -1, channels before pruning, block) triples): a pruned group counts
    its kept channels.
    """

    kind: str
    node: str
    terms: tuple[tuple[tuple[int, int, int], ...], ...]
    slot: int = 0
    position: int = 0


@dataclass
class ChannelAnalysis:
    """Every channel group of a model and the shape constants that depend on them."""

    groups: list[ChannelGroup]
    fixes: list[ShapeFix] = field(default_factory=list)

    def prunable(self) -> list[ChannelGroup]:
        """The groups that can be pruned."""
        return [g for g in self.groups if g.prunable]


class _Spaces:
    """Union-find over channel runs; a run may be cut into consecutive pieces (Split, Concat)."""

    def __init__(self) -> None:
        self.size: list[int] = []
        self.parent: list[int] = []
        self.pieces: list[tuple[int, ...]] = []
        self.reasons: list[list[str]] = []

    def new(self, size: int, reasons: list[str] | None = None) -> int:
        self.size.append(size)
        self.parent.append(len(self.parent))
        self.pieces.append(())
        self.reasons.append(list(reasons or []))
        return len(self.size) - 1

    def find(self, space: int) -> int:
        root = space
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[space] != root:
            self.parent[space], space = root, self.parent[space]
        return root

    def leaves(self, spaces: tuple[int, ...] | list[int]) -> list[int]:
        """The uncut roots that currently make up ``spaces``, in channel order."""
        out: list[int] = []
        for space in spaces:
            root = self.find(space)
            out.extend(self.leaves(self.pieces[root]) if self.pieces[root] else [root])
        return out

    def total(self, spaces: tuple[int, ...] | list[int]) -> int:
        return sum(self.size[s] for s in spaces)

    def _cut(self, leaf: int, at: int) -> None:
        """Split an uncut root in two at channel ``at``; the pieces inherit its reasons."""
        inherited = self.reasons[leaf]
        self.pieces[leaf] = (self.new(at, inherited), self.new(self.size[leaf] - at, inherited))

    def _boundaries(self, spaces: tuple[int, ...] | list[int]) -> set[int]:
        cuts, pos = {0}, 0
        for leaf in self.leaves(spaces):
            pos += self.size[leaf]
            cuts.add(pos)
        return cuts

    def refine(self, spaces: tuple[int, ...] | list[int], cuts: set[int]) -> None:
        """Cut leaves until every channel offset in ``cuts`` falls on a leaf boundary."""
        while True:
            pos, cut_one = 0, False
            for leaf in self.leaves(spaces):
                inside = [c for c in cuts if pos < c < pos + self.size[leaf]]
                if inside:
                    self._cut(leaf, min(inside) - pos)
                    cut_one = True
                    break
                pos += self.size[leaf]
            if not cut_one:
                return

    def take(self, spaces: tuple[int, ...], start: int, stop: int) -> tuple[int, ...]:
        """The leaves covering channels ``start`` to ``stop`` of ``spaces``."""
        self.refine(spaces, {start, stop})
        out, pos = [], 0
        for leaf in self.leaves(spaces):
            if start <= pos and pos + self.size[leaf] <= stop:
                out.append(leaf)
            pos += self.size[leaf]
        return tuple(out)

    def unify(self, xs: tuple[int, ...], ys: tuple[int, ...]) -> bool:
        """Make channel ``c`` of ``xs`` and of ``ys`` one channel; False when their sizes differ."""
        if self.total(xs) != self.total(ys):
            return False
        while True:
            bx, by = self._boundaries(xs), self._boundaries(ys)
            if bx == by:
                break
            self.refine(xs, bx | by)
            self.refine(ys, bx | by)
        for a, b in zip(self.leaves(xs), self.leaves(ys)):
            a, b = self.find(a), self.find(b)
            if a != b:
                self.parent[b] = a
                self.reasons[a].extend(r for r in self.reasons[b] if r not in self.reasons[a])
        return True

    def block(self, spaces: tuple[int, ...] | list[int], reason: str) -> None:
        for leaf in self.leaves(spaces):
            if reason not in self.reasons[leaf]:
                self.reasons[leaf].append(reason)


@dataclass(frozen=True)
class _Layout:
    """Where a tensor keeps its channels: ``axis`` (of ``rank``), the spaces along it, entries per channel."""

    axis: int
    rank: int
    spaces: tuple[int, ...]
    block: int = 1


@dataclass(frozen=True)
class _Registration(Member):
    """A member before its space is resolved into final groups."""

    space: int


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _dims(value: onnx.ValueInfoProto) -> Dims | None:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim)


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


def reshape_axis(in_shape: Dims, out_shape: Dims, axis: int, channels: int) -> tuple[int, int] | None:
    """Where channels on ``axis`` of ``in_shape`` land after a reshape to ``out_shape``.

    Returns (new axis, entries per channel) or None when the channels do not map to one axis
    (split across axes, merged with the batch, or shapes unknown). Channels are the outermost
    part of everything from ``axis`` on, so they stay outermost in the output suffix of equal size.
    """
    tail = in_shape[axis:]
    if any(not isinstance(d, int) for d in tail) or channels < 1:
        return None
    per_channel = math.prod(tail) // channels
    wanted, suffix = channels * per_channel, 1
    for new_axis in reversed(range(len(out_shape))):
        dim = out_shape[new_axis]
        if not isinstance(dim, int) or dim < 1:
            return None
        suffix *= dim
        if suffix == wanted and dim % channels == 0:
            return new_axis, dim // channels
        if suffix > wanted:
            return None
    return None


def _shapes_of(graph: onnx.GraphProto) -> dict[str, Dims | None]:
    return {v.name: _dims(v) for v in list(graph.input) + list(graph.value_info) + list(graph.output)}


def _symbolic_inference(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """ONNX Runtime's symbolic shape inference, keeping whatever it inferred. Its public entry
    point saves a temporary model into the working folder when inference is incomplete, so its
    steps are run directly; None when it is unavailable or fails."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
        inference._preprocess(model)
        while inference.run_:
            inference._infer_impl()
        inference._update_output_from_vi()
        return inference.out_mp_
    except Exception:  # unsupported or custom ops, or another onnxruntime version: ONNX's own shapes remain
        return None


def tensor_shapes(model: onnx.ModelProto) -> dict[str, Dims | None]:
    """Every tensor's shape, dynamic dimensions as names: ONNX Runtime's symbolic shape inference
    (it follows Shape→Gather→Concat→Reshape arithmetic that ONNX inference leaves unknown), then
    the model's own inferred shapes for anything it could not do."""
    shapes = _shapes_of(model.graph)
    inferred = _symbolic_inference(model)
    if inferred is not None:
        for name, dims in _shapes_of(inferred.graph).items():
            if dims is not None and (shapes.get(name) is None or len(shapes[name]) == len(dims)):
                shapes[name] = dims
    for tensor in model.graph.initializer:
        shapes[tensor.name] = tuple(int(d) for d in tensor.dims)
    return shapes


class _Analyser:
    """One pass over a graph in node order, giving each channel-carrying tensor its layout."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.graph = graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.inits = {t.name: t for t in graph.initializer}
        self.shapes = tensor_shapes(model)
        self.position = {node.name: i for i, node in enumerate(graph.node)}
        self.producer_of = {out: node for node in graph.node for out in node.output if out}
        self.spaces = _Spaces()
        self.layouts: dict[str, _Layout] = {}
        self.registrations: list[_Registration] = []
        self.fixes: list[tuple[str, str, int, int, list[tuple[tuple[int, ...], int]]]] = []
        self.handlers = self._handlers()
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
        dims = self.shapes.get(name)
        return None if dims is None else len(dims)

    def block(self, node: onnx.NodeProto, names, why: str) -> None:
        """Make the channels of every named tensor unprunable because of ``node``."""
        reason = f"{node.op_type} node {node.name!r}: {why}"
        for name in names:
            if name in self.layouts:
                self.spaces.block(self.layouts[name].spaces, reason)

    def set_layout(self, node: onnx.NodeProto, name: str, layout: _Layout) -> None:
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

    def produce(self, node: onnx.NodeProto, channels: int, out_axis: int | None = None) -> _Layout:
        """A new space for the output channels of ``node``, laid on ``out_axis`` (default: last).

        When the output shape is unknown the space is unprunable and the output carries no layout.
        """
        out = node.output[0]
        rank = self.rank(out)
        if rank is None or rank == 0:
            space = self.spaces.new(channels, [f"{node.op_type} node {node.name!r}: output shape unknown "
                                               "(shape inference cannot follow the graph here)"])
            return _Layout(0, 0, (space,))
        layout = _Layout(rank - 1 if out_axis is None else out_axis, rank, (self.spaces.new(channels),))
        self.set_layout(node, out, layout)
        return layout

    def attach(self, node: onnx.NodeProto, name: str, layout: _Layout) -> None:
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

    def fix(self, kind: str, node: onnx.NodeProto, values: list[tuple[tuple[int, ...], int]],
            slot: int = 0, position: int = 0) -> None:
        """Record a shape constant of ``node`` spelling the channel counts of ``values``."""
        self.fixes.append((kind, node.name, slot, position, values))

    # ----- op handlers -----------------------------------------------------------------------
    def visit(self, node: onnx.NodeProto) -> None:
        implicit = _subgraph_reads(node)
        if implicit:
            self.block(node, sorted(implicit) + list(node.input), "channels used inside a subgraph")
            return
        producers = {"Conv": self.conv, "ConvTranspose": self.conv_transpose, "Gemm": self.gemm,
                     "MatMul": self.matmul}
        if node.domain not in ("", "ai.onnx"):
            self.block(node, node.input, f"custom-domain op {node.domain}.{node.op_type} has unknown channel semantics")
            return
        if node.op_type in producers:
            producers[node.op_type](node)
            return
        if not any(i in self.layouts for i in node.input):
            return
        handler = self.handlers.get(node.op_type)
        if handler is None:
            self.block(node, node.input, "op with unknown channel semantics")
        else:
            handler(node)

    def _handlers(self):
        table = {op: self.unary for op in _UNARY}
        table.update({op: self.elementwise for op in _ELEMENTWISE})
        table.update({op: self.pool for op in _POOLS})
        table.update({op: self.reduce for op in _REDUCES})
        table.update({op: self.reshape for op in _RESHAPES})
        table.update({op: (lambda node: None) for op in _SHAPE_READERS})
        table.update({"BatchNormalization": self.batchnorm, "InstanceNormalization": self.batchnorm,
                      "LayerNormalization": self.layernorm, "Softmax": self.softmax, "LogSoftmax": self.softmax,
                      "Hardmax": self.softmax, "ArgMax": self.argmax, "ArgMin": self.argmax,
                      "Transpose": self.transpose, "Concat": self.concat, "Split": self.split,
                      "Slice": self.slice, "Gather": self.gather, "Pad": self.pad, "Resize": self.resize,
                      "Upsample": self.resize})
        return table

    def conv(self, node: onnx.NodeProto) -> None:
        x, weight = node.input[0], node.input[1]
        if weight not in self.inits or x in self.inits:
            self.block(node, node.input, "convolution with a weight computed at run time")
            return
        groups = int(_attr(node, "group", 1))
        out_channels, per_group = (int(d) for d in self.inits[weight].dims[:2])
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        layout = self.layouts.get(x)
        if layout is not None and (layout.axis != 1 or layout.block != 1):
            self.block(node, [x], "channels not on axis 1 of the convolution input")
            layout = None
        if groups == 1:
            if layout is not None:
                self.register(layout.spaces, CONSUMER, node, weight, 1, 1, weight=True)
            out = self.produce(node, out_channels, out_axis=1)
            self.register(out.spaces, PRODUCER, node, weight, 0, 1, weight=True)
            if bias:
                self.register(out.spaces, PRODUCER, node, bias, 0, 1, weight=False)
            return
        if groups == out_channels and per_group == 1 and layout is not None \
                and self.spaces.total(layout.spaces) == groups:
            # depthwise: output channel c is input channel c filtered by its own kernel
            self.register(layout.spaces, CHANNELWISE, node, weight, 0, 1, weight=True)
            if bias:
                self.register(layout.spaces, CHANNELWISE, node, bias, 0, 1, weight=False)
            self.fix("group", node, [(layout.spaces, 1)])
            self.set_layout(node, node.output[0], layout)
            return
        reason = f"grouped convolution (group={groups}) ties channels to its convolution groups"
        self.block(node, [x], reason)
        out = self.produce(node, out_channels, out_axis=1)
        self.spaces.block(out.spaces, f"Conv node {node.name!r}: {reason}")

    def conv_transpose(self, node: onnx.NodeProto) -> None:
        x, weight = node.input[0], node.input[1]
        if weight not in self.inits or x in self.inits or int(_attr(node, "group", 1)) != 1:
            reason = "grouped or run-time-weight transposed convolution"
            self.block(node, node.input, reason)
            if weight in self.inits:
                out = self.produce(node, int(self.inits[weight].dims[1]) * int(_attr(node, "group", 1)), out_axis=1)
                self.spaces.block(out.spaces, f"ConvTranspose node {node.name!r}: {reason}")
            return
        layout = self.layouts.get(x)
        if layout is not None:
            if layout.axis != 1 or layout.block != 1:
                self.block(node, [x], "channels not on axis 1 of the convolution input")
            else:
                self.register(layout.spaces, CONSUMER, node, weight, 0, 1, weight=True)
        out = self.produce(node, int(self.inits[weight].dims[1]), out_axis=1)
        self.register(out.spaces, PRODUCER, node, weight, 1, 1, weight=True)
        if len(node.input) > 2 and node.input[2]:
            self.register(out.spaces, PRODUCER, node, node.input[2], 0, 1, weight=False)

    def gemm(self, node: onnx.NodeProto) -> None:
        a, weight = node.input[0], node.input[1]
        if weight not in self.inits or a in self.inits:
            self.block(node, node.input, "matrix product of two run-time tensors")
            return
        trans_a, trans_b = int(_attr(node, "transA", 0)), int(_attr(node, "transB", 0))
        k_axis, n_axis = (1, 0) if trans_b else (0, 1)
        layout = self.layouts.get(a)
        if layout is not None:
            if layout.axis != (0 if trans_a else 1):
                self.block(node, [a], "channels on the row axis of a Gemm")
            else:
                self.register(layout.spaces, CONSUMER, node, weight, k_axis, layout.block, weight=True)
        out = self.produce(node, int(self.inits[weight].dims[n_axis]), out_axis=1)
        self.register(out.spaces, PRODUCER, node, weight, n_axis, 1, weight=True)
        bias = node.input[2] if len(node.input) > 2 else ""
        if bias in self.inits:
            dims = self.shapes[bias]
            if dims and dims[-1] == self.spaces.total(out.spaces) and dims[-1] != 1:
                self.register(out.spaces, PRODUCER, node, bias, len(dims) - 1, 1, weight=False)
        elif bias and out.rank:
            self.attach(node, bias, out)
        elif bias:
            self.block(node, [bias], "output shape unknown")

    def matmul(self, node: onnx.NodeProto) -> None:
        a, weight = node.input
        if weight not in self.inits or a in self.inits or len(self.inits[weight].dims) != 2:
            self.block(node, node.input, "matrix product of two run-time tensors")
            return
        layout = self.layouts.get(a)
        if layout is not None:
            if layout.axis != layout.rank - 1:
                self.block(node, [a], "channels on an axis the matrix product keeps")
            else:
                self.register(layout.spaces, CONSUMER, node, weight, 0, layout.block, weight=True)
        out = self.produce(node, int(self.inits[weight].dims[1]))
        self.register(out.spaces, PRODUCER, node, weight, 1, 1, weight=True)

    def unary(self, node: onnx.NodeProto) -> None:
        layout = self.layouts.get(node.input[0])
        if any(i in self.layouts for i in node.input[1:]):
            self.block(node, node.input, "channels used as an op parameter")
        elif layout is not None:
            self.set_layout(node, node.output[0], layout)

    def elementwise(self, node: onnx.NodeProto) -> None:
        rank = self.rank(node.output[0])
        carriers = [self.layouts[i] for i in node.input if i in self.layouts]
        if rank is None:
            self.block(node, node.input, "output shape unknown")
            return
        first = carriers[0]
        layout = _Layout(rank - first.rank + first.axis, rank, first.spaces, first.block)
        for name in node.input:
            if name:
                self.attach(node, name, layout)
        self.set_layout(node, node.output[0], layout)

    def pool(self, node: onnx.NodeProto) -> None:
        layout = self.layouts[node.input[0]]
        if layout.axis != 1:
            self.block(node, node.input, "channels not on axis 1 of a pooling input")
            return
        self.set_layout(node, node.output[0], layout)

    def batchnorm(self, node: onnx.NodeProto) -> None:
        layout = self.layouts.get(node.input[0])
        params = [p for p in node.input[1:] if p]
        if layout is None or any(p in self.layouts for p in params):
            self.block(node, node.input, "normalisation statistics computed at run time")
            return
        if layout.axis != 1 or layout.block != 1 or any(p not in self.inits for p in params) \
                or int(_attr(node, "training_mode", 0)) or any(o for o in node.output[1:]):
            self.block(node, node.input, "normalisation in a form the channel analysis cannot follow")
            return
        for param in params:
            self.register(layout.spaces, CHANNELWISE, node, param, 0, 1, weight=False)
        self.set_layout(node, node.output[0], layout)

    def layernorm(self, node: onnx.NodeProto) -> None:
        layout = self.layouts.get(node.input[0])
        start = int(_attr(node, "axis", -1))
        if layout is not None and start < 0:
            start += layout.rank
        if layout is None or layout.axis >= start or any(p in self.layouts for p in node.input[1:]):
            self.block(node, node.input, "normalises across the channels")
            return
        self.set_layout(node, node.output[0], layout)

    def softmax(self, node: onnx.NodeProto) -> None:
        layout = self.layouts[node.input[0]]
        axis = int(_attr(node, "axis", -1 if self.opset >= 13 else 1))
        axis = axis + layout.rank if axis < 0 else axis
        mixed = layout.axis == axis if self.opset >= 13 else layout.axis >= axis
        if mixed:
            self.block(node, node.input, "normalises across the channels")
            return
        self.set_layout(node, node.output[0], layout)

    def _int_list(self, node: onnx.NodeProto, name: str) -> tuple[bool, list[int] | None]:
        """(known, values) of a list given as attribute ``name`` or, in newer opsets, as the node's
        second input: values None when absent; known False when the input is computed at run time."""
        values = _attr(node, name)
        if values is None and len(node.input) > 1 and node.input[1]:
            value = self.value(node.input[1])
            if value is None:
                return False, None
            values = value.reshape(-1).tolist()
        return True, None if values is None else [int(v) for v in values]

    def _axes(self, node: onnx.NodeProto, rank: int) -> list[int] | None:
        """The axes attribute or constant axes input of a reduction; None when computed at run time."""
        known, axes = self._int_list(node, "axes")
        if not known:
            return None
        return sorted({a + rank if a < 0 else a for a in (axes or [])})

    def reduce(self, node: onnx.NodeProto) -> None:
        layout = self.layouts[node.input[0]]
        axes = self._axes(node, layout.rank)
        if axes is None or (not axes and not int(_attr(node, "noop_with_empty_axes", 0))) or layout.axis in axes:
            self.block(node, node.input, "reduces across the channels")
            return
        keep = int(_attr(node, "keepdims", 1))
        axis = layout.axis if keep else layout.axis - sum(a < layout.axis for a in axes)
        self.set_layout(node, node.output[0], _Layout(axis, layout.rank if keep else layout.rank - len(axes),
                                                       layout.spaces, layout.block))

    def argmax(self, node: onnx.NodeProto) -> None:
        layout = self.layouts[node.input[0]]
        axis = int(_attr(node, "axis", 0))
        axis = axis + layout.rank if axis < 0 else axis
        if axis == layout.axis:
            self.block(node, node.input, "indexes the channels")
            return
        keep = int(_attr(node, "keepdims", 1))
        new_axis = layout.axis if keep or layout.axis < axis else layout.axis - 1
        self.set_layout(node, node.output[0], _Layout(new_axis, layout.rank - (0 if keep else 1),
                                                       layout.spaces, layout.block))

    def reshape(self, node: onnx.NodeProto) -> None:
        x, out = node.input[0], node.output[0]
        layout = self.layouts[x]
        if any(i in self.layouts for i in node.input[1:]):
            self.block(node, node.input, "channels used as a shape")
            return
        in_shape, out_shape = self.shapes.get(x), self.shapes.get(out)
        channels = self.spaces.total(layout.spaces)
        mapped = None if in_shape is None or out_shape is None else \
            reshape_axis(in_shape, out_shape, layout.axis, channels)
        if mapped is None:
            self.block(node, [x], "reshape splits the channels or merges them with another axis")
            return
        axis, block = mapped
        if node.op_type == "Reshape" and not self._reshape_target(node, layout, axis, block):
            return
        self.set_layout(node, out, _Layout(axis, len(out_shape), layout.spaces, block))

    def _reshape_target(self, node: onnx.NodeProto, layout: _Layout, axis: int, block: int) -> bool:
        """Find the Reshape target entry that spells the channel count and record its fix."""
        source = self._constant_entry(node, 1, axis)
        if source is None:
            self.block(node, [node.input[0]], "reshape target computed at run time in a form the analysis "
                                              "cannot follow")
            return False
        if source == "runtime":
            return True
        reader, slot, position, value = source
        allow_zero = int(_attr(node, "allowzero", 0))
        if value == -1:
            return True
        if value == 0 and not allow_zero and axis == layout.axis and block == layout.block:
            return True
        if value <= 0:
            self.block(node, [node.input[0]], "reshape target copies the channel count from another axis")
            return False
        self.fix("entry", reader, [(layout.spaces, block)], slot=slot, position=position)
        return True

    def _constant_entry(self, node: onnx.NodeProto, slot: int, position: int):
        """Where element ``position`` of input ``slot`` comes from: (reader node, slot, index, value)
        of a constant, 'runtime' for an entry read from a shape at run time, None otherwise."""
        name = node.input[slot]
        value = self.value(name)
        if value is not None:
            flat = value.reshape(-1)
            return (node, slot, position, int(flat[position])) if position < flat.size else None
        producer = self.producer_of.get(name)
        if producer is None or producer.op_type != "Concat":
            return None
        offset = 0
        for index, piece in enumerate(producer.input):
            dims = self.shapes.get(piece)
            if dims is None or len(dims) != 1 or not isinstance(dims[0], int):
                return None
            if offset + dims[0] > position:
                local = position - offset
                if piece in self.inits:
                    return producer, index, local, int(self.value(piece).reshape(-1)[local])
                return "runtime"
            offset += dims[0]
        return None

    def transpose(self, node: onnx.NodeProto) -> None:
        layout = self.layouts[node.input[0]]
        perm = list(_attr(node, "perm", list(reversed(range(layout.rank)))))
        self.set_layout(node, node.output[0], _Layout(perm.index(layout.axis), layout.rank, layout.spaces,
                                                      layout.block))

    def concat(self, node: onnx.NodeProto) -> None:
        rank = self.rank(node.output[0])
        if rank is None:
            self.block(node, node.input, "output shape unknown")
            return
        axis = int(_attr(node, "axis"))
        axis = axis + rank if axis < 0 else axis
        carriers = [self.layouts[i] for i in node.input if i in self.layouts]
        if not any(c.axis == axis for c in carriers):
            self.elementwise(node)
            return
        block = next(c.block for c in carriers if c.axis == axis)
        spaces: list[int] = []
        for name in node.input:
            layout = self.layouts.get(name)
            if layout is not None and layout.axis == axis and layout.block == block:
                spaces.extend(layout.spaces)
                continue
            dims = self.shapes.get(name)
            if dims is None or not isinstance(dims[axis], int) or dims[axis] % block:
                self.block(node, node.input, "concatenates channels with a tensor of unknown size")
                return
            self.block(node, [name], "concatenated along another axis")
            spaces.append(self.spaces.new(dims[axis] // block, [f"Concat node {node.name!r}: channels of {name!r} "
                                                                  "come from no analysed producer"]))
        self.set_layout(node, node.output[0], _Layout(axis, rank, tuple(spaces), block))

    def _split_sizes(self, node: onnx.NodeProto, length: int) -> list[int] | None:
        """Entries per Split output: its attribute or constant input, else an equal split."""
        known, sizes = self._int_list(node, "split")
        if not known:
            return None
        if sizes is None:
            parts = len(node.output)
            chunk = -(-length // parts)
            sizes = [chunk] * (parts - 1) + [length - chunk * (parts - 1)]
        return [int(s) for s in sizes]

    def split(self, node: onnx.NodeProto) -> None:
        layout = self.layouts[node.input[0]]
        axis = int(_attr(node, "axis", 0))
        axis = axis + layout.rank if axis < 0 else axis
        if axis != layout.axis:
            for out in node.output:
                if out:
                    self.set_layout(node, out, layout)
            return
        sizes = self._split_sizes(node, self.spaces.total(layout.spaces) * layout.block)
        if sizes is None or any(s % layout.block for s in sizes):
            self.block(node, node.input, "split sizes computed at run time or inside a channel")
            return
        start, values = 0, []
        for out, size in zip(node.output, sizes):
            stop = start + size // layout.block
            spaces = self.spaces.take(layout.spaces, start, stop)
            values.append((spaces, layout.block))
            if out:
                self.set_layout(node, out, _Layout(axis, layout.rank, spaces, layout.block))
            start = stop
        self.fix("split", node, values)

    def slice(self, node: onnx.NodeProto) -> None:
        layout = self.layouts[node.input[0]]
        if any(i in self.layouts for i in node.input[1:]):
            self.block(node, node.input, "channels used as slice bounds")
            return
        if len(node.input) > 3 and node.input[3]:
            axes = self.value(node.input[3])
            axes = None if axes is None else axes.reshape(-1).tolist()
        elif len(node.input) > 1:
            axes = list(range(self.value(node.input[1]).size)) if node.input[1] in self.inits else None
        else:
            axes = list(_attr(node, "axes", range(len(_attr(node, "starts", [])))))
        axes = None if axes is None else [a + layout.rank if a < 0 else a for a in axes]
        if axes is None or layout.axis in axes:
            self.block(node, [node.input[0]], "slices along the channel axis")
            return
        self.set_layout(node, node.output[0], layout)

    def gather(self, node: onnx.NodeProto) -> None:
        layout = self.layouts.get(node.input[0])
        axis = int(_attr(node, "axis", 0))
        axis = axis + layout.rank if layout is not None and axis < 0 else axis
        indices_rank = self.rank(node.input[1])
        if layout is None or axis == layout.axis or indices_rank is None or node.input[1] in self.layouts:
            self.block(node, node.input, "gathers along the channel axis")
            return
        new_axis = layout.axis if layout.axis < axis else layout.axis + indices_rank - 1
        self.set_layout(node, node.output[0], _Layout(new_axis, layout.rank + indices_rank - 1, layout.spaces,
                                                      layout.block))

    def pad(self, node: onnx.NodeProto) -> None:
        layout = self.layouts[node.input[0]]
        pads = _attr(node, "pads")
        if pads is None and len(node.input) > 1:
            value = self.value(node.input[1])
            pads = None if value is None else value.reshape(-1).tolist()
        axes = list(range(layout.rank))
        if len(node.input) > 3 and node.input[3]:
            value = self.value(node.input[3])
            axes = None if value is None else [a + layout.rank if a < 0 else a for a in value.reshape(-1).tolist()]
        if pads is None or axes is None or any(i in self.layouts for i in node.input[1:]):
            self.block(node, node.input, "padding computed at run time")
            return
        if layout.axis in axes:
            where = axes.index(layout.axis)
            if pads[where] or pads[where + len(axes)]:
                self.block(node, node.input, "pads the channel axis")
                return
        self.set_layout(node, node.output[0], layout)

    def resize(self, node: onnx.NodeProto) -> None:
        layout = self.layouts[node.input[0]]
        scales_slot = 1 if node.op_type == "Upsample" or self.opset < 11 else 2
        for slot, name in enumerate(node.input[1:], start=1):
            if not name or slot not in (scales_slot, 3):
                continue
            value = self.value(name)
            if value is None or name in self.layouts:
                self.block(node, node.input, "resize scales computed at run time")
                return
            if value.size == 0:
                continue
            entry = value.reshape(-1)[layout.axis]
            if slot == scales_slot and entry != 1:
                self.block(node, node.input, "resizes the channel axis")
                return
            if slot == 3:
                self.fix("entry", node, [(layout.spaces, layout.block)], slot=3, position=layout.axis)
        self.set_layout(node, node.output[0], layout)

    # ----- results ---------------------------------------------------------------------------
    def finish(self) -> ChannelAnalysis:
        for output in self.graph.output:
            if output.name in self.layouts:
                self.spaces.block(self.layouts[output.name].spaces, f"reaches graph output {output.name!r}")
        self._couple_shared_slabs()
        self._block_foreign_readers()
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
            for leaf in self.spaces.leaves((reg.space,)):
                key = (reg.tensor, reg.axis, offset, reg.node)
                members.setdefault(leaf, {}).setdefault(key, Member(
                    reg.role, reg.node, reg.op_type, reg.tensor, reg.axis, offset, reg.block, reg.weight))
                offset += self.spaces.size[leaf] * reg.block

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
        for kind, node, slot, position, values in self.fixes:
            terms = tuple(tuple((index.get(leaf, -1), self.spaces.size[leaf], block)
                                for leaf in self.spaces.leaves(spaces)) for spaces, block in values)
            fixes.append(ShapeFix(kind, node, terms, slot, position))
        return ChannelAnalysis(groups, fixes)


def analyse_channels(model: onnx.ModelProto) -> ChannelAnalysis:
    """Channel groups and shape fixes of a canonical model (weights as initializers)."""
    analyser = _Analyser(model)
    for node in model.graph.node:
        analyser.visit(node)
    return analyser.finish()


def find_groups(model: onnx.ModelProto) -> list[ChannelGroup]:
    """The channel groups of a canonical model, in graph order, each with its size, members and,
    when it cannot be pruned, the reason."""
    return analyse_channels(model).groups
