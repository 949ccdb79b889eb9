"""The channel semantics of every ONNX op the analysis knows: one rule per op (or op family),
registered by op type and opset range.

A rule reads the layouts of a node's inputs from the walker and either sets the layouts of its
outputs (recording the shape constants that spell channel counts on the way) or blocks the
channels it cannot follow, with the reason. Ops whose weights hold channels have their rules in
``weight_rules.py``. ``unary``, ``elementwise`` and ``blocking`` are also the ready-made
behaviours for :func:`onnxprune.channels.register_op`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import onnx

from onnxprune.channels.registry import Rule, rule
from onnxprune.channels.spaces import Layout, Span
from onnxprune.graph.protos import Dims, attr

if TYPE_CHECKING:
    from onnxprune.channels.walker import Walker

# Ops that act on every element alone: the output has the input's channels.
_UNARY = ("Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu",
          "Softplus", "Softsign", "Gelu", "Mish", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal",
          "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity", "Dropout", "Cast", "CastLike", "Clip",
          "ThresholdedRelu", "Shrink", "Not", "IsNaN", "IsInf", "Swish")
# Ops that combine their operands element by element, with numpy broadcasting.
_ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu", "Where", "Mod",
                "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor")
# Ops pooling over the spatial axes of an [N, C, ...] tensor.
_POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
# Reductions whose axes moved from an attribute to an input at opset 18 (ReduceSum's at 13).
_REDUCES = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
            "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
_SOFTMAXES = ("Softmax", "LogSoftmax", "Hardmax")


def _positive(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _optional_ints(walker: Walker, node: onnx.NodeProto, slot: int) -> tuple[bool, list[int] | None]:
    """(known, values) of the optional constant input ``slot``: values None when the input is absent,
    known False when it is computed at run time."""
    name = node.input[slot] if slot < len(node.input) else ""
    if not name:
        return True, None
    value = walker.value(name)
    return (False, None) if value is None else (True, [int(v) for v in value.reshape(-1)])


# ----- ready-made behaviours -------------------------------------------------------------------
@rule(*_UNARY)
def unary(walker: Walker, node: onnx.NodeProto) -> None:
    """The output has the first input's channels; channels in any other input block them."""
    layout = walker.layouts.get(node.input[0])
    if any(i in walker.layouts for i in node.input[1:]):
        walker.block(node, node.input, "channels used as an op parameter")
    elif layout is not None:
        walker.set_layout(node, node.output[0], layout)


@rule(*_ELEMENTWISE)
def elementwise(walker: Walker, node: onnx.NodeProto) -> None:
    """Operands broadcast together: those carrying channels share them, constants become channelwise."""
    rank = walker.rank(node.output[0])
    carriers = [walker.layouts[i] for i in node.input if i in walker.layouts]
    if rank is None:
        walker.block(node, node.input, "output shape unknown")
        return
    first = carriers[0]
    layout = Layout(rank - first.rank + first.axis, rank, first.spaces, first.block)
    for name in node.input:
        if name:
            walker.attach(node, name, layout)
    walker.set_layout(node, node.output[0], layout)


def blocking(reason: str) -> Rule:
    """A rule that makes every channel reaching the op unprunable, because of ``reason``."""
    def block(walker: Walker, node: onnx.NodeProto) -> None:
        walker.block(node, node.input, reason)
    return block


@rule("Shape", "Size")
def shape_reader(walker: Walker, node: onnx.NodeProto) -> None:
    """The op reads a tensor's shape, never its values: it neither carries nor couples channels."""


# ----- ops that keep the channels where they are -------------------------------------------------
@rule(*_POOLS)
def pool(walker: Walker, node: onnx.NodeProto) -> None:
    """Pooling keeps the channels of an [N, C, ...] input on axis 1."""
    layout = walker.layouts[node.input[0]]
    if layout.axis != 1:
        walker.block(node, node.input, "channels not on axis 1 of a pooling input")
        return
    walker.set_layout(node, node.output[0], layout)


@rule("LayerNormalization")
def layernorm(walker: Walker, node: onnx.NodeProto) -> None:
    """Channels on an axis before the normalised ones pass through."""
    layout = walker.layouts.get(node.input[0])
    start = int(attr(node, "axis", -1))
    if layout is not None and start < 0:
        start += layout.rank
    if layout is None or layout.axis >= start or any(p in walker.layouts for p in node.input[1:]):
        walker.block(node, node.input, "normalises across the channels (residual stream / normalised axis: "
                                       "its statistics span every channel)")
        return
    walker.set_layout(node, node.output[0], layout)


def _softmax(walker: Walker, node: onnx.NodeProto, default_axis: int, whole_tail: bool) -> None:
    """Channels pass unless the op normalises across them: over ``axis`` alone, or over every axis
    from ``axis`` on when ``whole_tail``."""
    layout = walker.layouts[node.input[0]]
    axis = _positive(int(attr(node, "axis", default_axis)), layout.rank)
    if (layout.axis >= axis) if whole_tail else (layout.axis == axis):
        walker.block(node, node.input, "normalises across the channels")
        return
    walker.set_layout(node, node.output[0], layout)


@rule(*_SOFTMAXES, until=12)
def softmax_flattened(walker: Walker, node: onnx.NodeProto) -> None:
    """Before opset 13 the input is flattened to 2-D at ``axis`` (default 1) and normalised per row."""
    _softmax(walker, node, 1, whole_tail=True)


@rule(*_SOFTMAXES, since=13)
def softmax(walker: Walker, node: onnx.NodeProto) -> None:
    """From opset 13 the op normalises along ``axis`` (default -1) alone."""
    _softmax(walker, node, -1, whole_tail=False)


def _reduce(walker: Walker, node: onnx.NodeProto, known: bool, axes: list[int] | None) -> None:
    """Channels pass a reduction over other axes, moving left when reduced axes before them are dropped."""
    layout = walker.layouts[node.input[0]]
    axes = sorted({_positive(a, layout.rank) for a in (axes or [])}) if known else None
    if axes is None or (not axes and not int(attr(node, "noop_with_empty_axes", 0))) or layout.axis in axes:
        walker.block(node, node.input, "reduces across the channels")
        return
    keep = int(attr(node, "keepdims", 1))
    axis = layout.axis if keep else layout.axis - sum(a < layout.axis for a in axes)
    walker.set_layout(node, node.output[0], Layout(axis, layout.rank if keep else layout.rank - len(axes),
                                                   layout.spaces, layout.block))


@rule("ReduceSum", until=12)
@rule(*_REDUCES, until=17)
def reduce_axes_attribute(walker: Walker, node: onnx.NodeProto) -> None:
    """Reductions whose axes are an attribute."""
    _reduce(walker, node, True, attr(node, "axes"))


@rule("ReduceSum", since=13)
@rule(*_REDUCES, since=18)
def reduce_axes_input(walker: Walker, node: onnx.NodeProto) -> None:
    """Reductions whose axes are an optional second input."""
    _reduce(walker, node, *_optional_ints(walker, node, 1))


@rule("ArgMax", "ArgMin")
def argmax(walker: Walker, node: onnx.NodeProto) -> None:
    """Indexing along another axis keeps the channels; along theirs it refuses them."""
    layout = walker.layouts[node.input[0]]
    axis = _positive(int(attr(node, "axis", 0)), layout.rank)
    if axis == layout.axis:
        walker.block(node, node.input, "indexes the channels")
        return
    keep = int(attr(node, "keepdims", 1))
    new_axis = layout.axis if keep or layout.axis < axis else layout.axis - 1
    walker.set_layout(node, node.output[0], Layout(new_axis, layout.rank - (0 if keep else 1),
                                                   layout.spaces, layout.block))


def _slice(walker: Walker, node: onnx.NodeProto, axes: list[int] | None) -> None:
    """Slicing other axes keeps the channels; slicing theirs (or unknown axes) refuses them."""
    layout = walker.layouts[node.input[0]]
    if any(i in walker.layouts for i in node.input[1:]):
        walker.block(node, node.input, "channels used as slice bounds")
        return
    if axes is None or layout.axis in [_positive(a, layout.rank) for a in axes]:
        walker.block(node, [node.input[0]], "slices along the channel axis")
        return
    walker.set_layout(node, node.output[0], layout)


@rule("Slice", until=9)
def slice_attributes(walker: Walker, node: onnx.NodeProto) -> None:
    """Before opset 10 starts, ends and axes are attributes."""
    _slice(walker, node, list(attr(node, "axes", range(len(attr(node, "starts", []))))))


@rule("Slice", since=10)
def slice_inputs(walker: Walker, node: onnx.NodeProto) -> None:
    """From opset 10 starts, ends and the optional axes are inputs; without axes, starts cover the first axes."""
    known, axes = _optional_ints(walker, node, 3)
    if known and axes is None:
        starts = walker.value(node.input[1])
        axes = None if starts is None else list(range(starts.size))
    _slice(walker, node, axes)


def _pad(walker: Walker, node: onnx.NodeProto, pads: list[int] | None, axes: list[int] | None) -> None:
    """Padding other axes keeps the channels; padding theirs refuses them."""
    layout = walker.layouts[node.input[0]]
    if pads is None or axes is None or any(i in walker.layouts for i in node.input[1:]):
        walker.block(node, node.input, "padding computed at run time")
        return
    axes = [_positive(a, layout.rank) for a in axes]
    if layout.axis in axes:
        where = axes.index(layout.axis)
        if pads[where] or pads[where + len(axes)]:
            walker.block(node, node.input, "pads the channel axis")
            return
    walker.set_layout(node, node.output[0], layout)


@rule("Pad", until=10)
def pad_attribute(walker: Walker, node: onnx.NodeProto) -> None:
    """Before opset 11 the pads of every axis are an attribute."""
    _pad(walker, node, attr(node, "pads"), list(range(walker.layouts[node.input[0]].rank)))


@rule("Pad", since=11)
def pad_inputs(walker: Walker, node: onnx.NodeProto) -> None:
    """From opset 11 the pads are an input, and from 18 the axes they cover an optional one."""
    _, pads = _optional_ints(walker, node, 1)
    known, axes = _optional_ints(walker, node, 3)
    if known and axes is None:
        axes = list(range(walker.layouts[node.input[0]].rank))
    _pad(walker, node, pads, axes)


def _resize(walker: Walker, node: onnx.NodeProto, scales_slot: int, sizes_slot: int | None) -> None:
    """Channels pass when their axis keeps scale 1; an explicit output size there becomes a shape fix."""
    layout = walker.layouts[node.input[0]]
    for slot in (scales_slot, sizes_slot):
        name = node.input[slot] if slot is not None and slot < len(node.input) else ""
        if not name:
            continue
        value = walker.value(name)
        if value is None or name in walker.layouts:
            walker.block(node, node.input, "resize scales computed at run time")
            return
        if value.size == 0:
            continue
        entry = value.reshape(-1)[layout.axis]
        if slot == scales_slot and entry != 1:
            walker.block(node, node.input, "resizes the channel axis")
            return
        if slot == sizes_slot:
            walker.fix("entry", node, [Span(layout.spaces, layout.block)], slot=sizes_slot, position=layout.axis)
    walker.set_layout(node, node.output[0], layout)


@rule("Upsample")
@rule("Resize", until=10)
def resize_scales(walker: Walker, node: onnx.NodeProto) -> None:
    """Upsample and Resize before opset 11 take the scales as second input."""
    _resize(walker, node, 1, None)


@rule("Resize", since=11)
def resize(walker: Walker, node: onnx.NodeProto) -> None:
    """From opset 11 Resize takes roi, scales and sizes."""
    _resize(walker, node, 2, 3)


# ----- ops that move the channels --------------------------------------------------------------
def reshape_axis(in_shape: Dims, out_shape: Dims, axis: int, channels: int) -> tuple[int, int] | None:
    """Where channels on ``axis`` of ``in_shape`` land after a reshape to ``out_shape``.

    Returns (new axis, its length) when that length is a multiple of the channel count (each
    channel spans consecutive entries) or divides it (the channels are split into heads); None when
    the channels do not map to one axis (split across axes, merged with the batch, or shapes
    unknown). Channels are the outermost part of everything from ``axis`` on, so they stay
    outermost in the output suffix of equal size.
    """
    tail = in_shape[axis:]
    if any(not isinstance(d, int) for d in tail) or channels < 1:
        return None
    wanted, suffix = math.prod(tail), 1
    for new_axis in reversed(range(len(out_shape))):
        dim = out_shape[new_axis]
        if not isinstance(dim, int) or dim < 1:
            return None
        suffix *= dim
        if suffix == wanted and (dim % channels == 0 or channels % dim == 0):
            return new_axis, dim
        if suffix >= wanted:
            return None
    return None


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(walker: Walker, node: onnx.NodeProto) -> None:
    """The same elements in another shape: the channels land on one output axis, each spanning
    consecutive entries, or are split into heads ([.., heads * d] -> [.., heads, d]); else refused."""
    x, out = node.input[0], node.output[0]
    layout = walker.layouts[x]
    if any(i in walker.layouts for i in node.input[1:]):
        walker.block(node, node.input, "channels used as a shape")
        return
    in_shape, out_shape = walker.shapes.get(x), walker.shapes.get(out)
    channels = walker.spaces.total(layout.spaces)
    mapped = None if in_shape is None or out_shape is None else \
        reshape_axis(in_shape, out_shape, layout.axis, channels)
    if mapped is None:
        walker.block(node, [x], "reshape splits the channels or merges them with another axis")
        return
    axis, dim = mapped
    if dim % channels == 0:
        new = Layout(axis, len(out_shape), layout.spaces, dim // channels)
    else:
        heads = walker.spaces.split_heads(layout.spaces, channels // dim)
        if heads is None:
            walker.block(node, [x], f"reshape splits the channels into {dim} heads across channel runs "
                                    "of other sizes")
            return
        new = Layout(axis, len(out_shape), heads, 1)
    if node.op_type == "Reshape" and not _reshape_target(walker, node, layout, new):
        return
    walker.set_layout(node, out, new)


def _reshape_target(walker: Walker, node: onnx.NodeProto, layout: Layout, new: Layout) -> bool:
    """Check the Reshape target entry that spells the channel count (``layout`` becoming ``new``)
    and record its fix; after a split into heads the entries of the axes inside a head must be
    constants, since they must not change when heads are removed."""
    source = _constant_entry(walker, node, 1, new.axis)
    allow_zero = int(attr(node, "allowzero", 0))
    if isinstance(source, str):
        if _reads_channels(walker, source, new):
            return True
        walker.block(node, [node.input[0]], "reshape target reads the channel count from the shape of "
                                            "another tensor at run time")
        return False
    if source is None:
        walker.block(node, [node.input[0]], "reshape target computed at run time in a form the analysis "
                                            "cannot follow")
        return False
    if new.spaces != layout.spaces:  # split into heads
        rank = walker.rank(node.output[0]) or 0
        inside = [_constant_entry(walker, node, 1, p) for p in range(new.axis + 1, rank)]
        if any(not isinstance(e, tuple) or not (e[3] > 0 or e[3] == -1) for e in inside):
            walker.block(node, [node.input[0]], "reshape into heads computes the head size at run time "
                                                "(shape arithmetic the analysis cannot rewrite)")
            return False
    reader, slot, position, value = source
    if value == -1:
        return True
    if value == 0 and not allow_zero and new == Layout(layout.axis, new.rank, layout.spaces, layout.block):
        return True
    if value <= 0:
        walker.block(node, [node.input[0]], "reshape target copies the channel count from another axis")
        return False
    walker.fix("entry", reader, [Span(new.spaces, new.block)], slot=slot, position=position)
    return True


def _constant_entry(walker: Walker, node: onnx.NodeProto, slot: int, position: int):
    """Where element ``position`` of input ``slot`` comes from: (reader node, slot, index, value)
    of a constant, the name of the one-element tensor computed at run time that supplies it (a
    piece of a Concat), None otherwise."""
    name = node.input[slot]
    value = walker.value(name)
    if value is not None:
        flat = value.reshape(-1)
        return (node, slot, position, int(flat[position])) if position < flat.size else None
    producer = walker.producer_of.get(name)
    if producer is None or producer.op_type != "Concat":
        return None
    offset = 0
    for index, piece in enumerate(producer.input):
        dims = walker.shapes.get(piece)
        if dims is None or len(dims) != 1 or not isinstance(dims[0], int):
            return None
        if offset + dims[0] > position:
            local = position - offset
            if piece in walker.inits:
                return producer, index, local, int(walker.value(piece).reshape(-1)[local])
            return piece if dims[0] == 1 else None
        offset += dims[0]
    return None


def _reads_channels(walker: Walker, name: str, layout: Layout) -> bool:
    """Whether the run-time value ``name`` is the length of an axis laid out as ``layout`` (the
    same channels, as many entries each), read by Shape (and Gather, Unsqueeze, Squeeze, Cast)."""
    node = walker.producer_of.get(name)
    while node is not None and node.op_type in ("Unsqueeze", "Squeeze", "Cast"):
        node = walker.producer_of.get(node.input[0])
    index = 0
    if node is not None and node.op_type == "Gather":
        indices = walker.value(node.input[1])
        if indices is None or indices.size != 1:
            return False
        index, node = int(indices.reshape(-1)[0]), walker.producer_of.get(node.input[0])
    if node is None or node.op_type != "Shape":
        return False
    read = walker.layouts.get(node.input[0])
    if read is None:
        return False
    start = min(_positive(int(attr(node, "start", 0)), read.rank), read.rank)
    end = min(_positive(int(attr(node, "end", read.rank)), read.rank), read.rank)
    axis = (end if index < 0 else start) + index
    return (axis == read.axis and read.block == layout.block
            and walker.spaces.leaves(read.spaces) == walker.spaces.leaves(layout.spaces))


@rule("Transpose")
def transpose(walker: Walker, node: onnx.NodeProto) -> None:
    """The channels follow their axis through the permutation."""
    layout = walker.layouts[node.input[0]]
    perm = list(attr(node, "perm", list(reversed(range(layout.rank)))))
    walker.set_layout(node, node.output[0], Layout(perm.index(layout.axis), layout.rank, layout.spaces,
                                                   layout.block))


@rule("Concat")
def concat(walker: Walker, node: onnx.NodeProto) -> None:
    """Along the channel axis the inputs' spaces are laid end to end; along another axis it is elementwise."""
    rank = walker.rank(node.output[0])
    if rank is None:
        walker.block(node, node.input, "output shape unknown")
        return
    axis = _positive(int(attr(node, "axis")), rank)
    carriers = [walker.layouts[i] for i in node.input if i in walker.layouts]
    if not any(c.axis == axis for c in carriers):
        elementwise(walker, node)
        return
    block = next(c.block for c in carriers if c.axis == axis)
    spaces: list[int] = []
    for name in node.input:
        layout = walker.layouts.get(name)
        if layout is not None and layout.axis == axis and layout.block == block:
            spaces.extend(layout.spaces)
            continue
        dims = walker.shapes.get(name)
        if dims is None or not isinstance(dims[axis], int) or dims[axis] % block:
            walker.block(node, node.input, "concatenates channels with a tensor of unknown size")
            return
        walker.block(node, [name], "concatenated along another axis")
        spaces.append(walker.spaces.new(dims[axis] // block, [f"Concat node {node.name!r}: channels of {name!r} "
                                                                "come from no analysed producer"]))
    walker.set_layout(node, node.output[0], Layout(axis, rank, tuple(spaces), block))


def _split(walker: Walker, node: onnx.NodeProto, known: bool, sizes: list[int] | None) -> None:
    """Split along the channel axis cuts the spaces (``sizes`` entries per output, equal parts when
    None); along another axis every output keeps them."""
    layout = walker.layouts[node.input[0]]
    axis = _positive(int(attr(node, "axis", 0)), layout.rank)
    if axis != layout.axis:
        for out in node.output:
            if out:
                walker.set_layout(node, out, layout)
        return
    length = walker.spaces.total(layout.spaces) * layout.block
    if known and sizes is None:
        parts = len(node.output)
        chunk = -(-length // parts)
        sizes = [chunk] * (parts - 1) + [length - chunk * (parts - 1)]
    if not known or any(s % layout.block for s in sizes):
        walker.block(node, node.input, "split sizes computed at run time or inside a channel")
        return
    start, values = 0, []
    for out, size in zip(node.output, sizes):
        stop = start + size // layout.block
        spaces = walker.spaces.take(layout.spaces, start, stop)
        values.append(Span(spaces, layout.block))
        if out:
            walker.set_layout(node, out, Layout(axis, layout.rank, spaces, layout.block))
        start = stop
    walker.fix("split", node, values)


@rule("Split", until=12)
def split_attribute(walker: Walker, node: onnx.NodeProto) -> None:
    """Before opset 13 the sizes are an optional attribute."""
    sizes = attr(node, "split")
    _split(walker, node, True, None if sizes is None else [int(s) for s in sizes])


@rule("Split", since=13)
def split_input(walker: Walker, node: onnx.NodeProto) -> None:
    """From opset 13 the sizes are an optional second input."""
    _split(walker, node, *_optional_ints(walker, node, 1))


@rule("Gather")
def gather(walker: Walker, node: onnx.NodeProto) -> None:
    """Gathering along another axis keeps the channels, shifted by the rank the indices add."""
    layout = walker.layouts.get(node.input[0])
    axis = int(attr(node, "axis", 0))
    axis = _positive(axis, layout.rank) if layout is not None else axis
    indices_rank = walker.rank(node.input[1])
    if layout is None or axis == layout.axis or indices_rank is None or node.input[1] in walker.layouts:
        walker.block(node, node.input, "gathers along the channel axis")
        return
    new_axis = layout.axis if layout.axis < axis else layout.axis + indices_rank - 1
    walker.set_layout(node, node.output[0], Layout(new_axis, layout.rank + indices_rank - 1, layout.spaces,
                                                   layout.block))
