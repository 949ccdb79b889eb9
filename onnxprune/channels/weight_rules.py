"""The rules of ops whose constant inputs hold channels: Conv, ConvTranspose, Gemm and MatMul
create channels and consume their input's, BatchNormalization scales them one by one. Each
registers those weight slabs as members of the channel spaces they carry."""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

from onnxprune.channels.model import CHANNELWISE, CONSUMER, PRODUCER
from onnxprune.channels.registry import rule
from onnxprune.channels.spaces import Layout, Span
from onnxprune.graph.protos import attr

if TYPE_CHECKING:
    from onnxprune.channels.walker import Walker


@rule("Conv", producer=True)
def conv(walker: Walker, node: onnx.NodeProto) -> None:
    """Plain convolutions consume and produce channels; depthwise ones carry them through."""
    x, weight = node.input[0], node.input[1]
    if weight not in walker.inits or x in walker.inits:
        walker.block(node, node.input, "convolution with a weight computed at run time")
        return
    groups = int(attr(node, "group", 1))
    out_channels, per_group = (int(d) for d in walker.inits[weight].dims[:2])
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    layout = walker.layouts.get(x)
    if layout is not None and (layout.axis != 1 or layout.block != 1):
        walker.block(node, [x], "channels not on axis 1 of the convolution input")
        layout = None
    if groups == 1:
        if layout is not None:
            walker.register(layout.spaces, CONSUMER, node, weight, 1, 1, weight=True)
        out = walker.produce(node, out_channels, out_axis=1)
        walker.register(out.spaces, PRODUCER, node, weight, 0, 1, weight=True)
        if bias:
            walker.register(out.spaces, PRODUCER, node, bias, 0, 1, weight=False)
        return
    if groups == out_channels and per_group == 1 and layout is not None \
            and walker.spaces.total(layout.spaces) == groups:
        # depthwise: output channel c is input channel c filtered by its own kernel
        walker.register(layout.spaces, CHANNELWISE, node, weight, 0, 1, weight=True)
        if bias:
            walker.register(layout.spaces, CHANNELWISE, node, bias, 0, 1, weight=False)
        walker.fix("group", node, [Span(layout.spaces, 1)])
        walker.set_layout(node, node.output[0], layout)
        return
    reason = f"grouped convolution (group={groups}) ties channels to its convolution groups"
    walker.block(node, [x], reason)
    out = walker.produce(node, out_channels, out_axis=1)
    walker.spaces.block(out.spaces, f"Conv node {node.name!r}: {reason}")


@rule("ConvTranspose", producer=True)
def conv_transpose(walker: Walker, node: onnx.NodeProto) -> None:
    """Like Conv, with the weight's in and out axes swapped; grouped ones are refused."""
    x, weight = node.input[0], node.input[1]
    if weight not in walker.inits or x in walker.inits or int(attr(node, "group", 1)) != 1:
        reason = "grouped or run-time-weight transposed convolution"
        walker.block(node, node.input, reason)
        if weight in walker.inits:
            out = walker.produce(node, int(walker.inits[weight].dims[1]) * int(attr(node, "group", 1)), out_axis=1)
            walker.spaces.block(out.spaces, f"ConvTranspose node {node.name!r}: {reason}")
        return
    layout = walker.layouts.get(x)
    if layout is not None:
        if layout.axis != 1 or layout.block != 1:
            walker.block(node, [x], "channels not on axis 1 of the convolution input")
        else:
            walker.register(layout.spaces, CONSUMER, node, weight, 0, 1, weight=True)
    out = walker.produce(node, int(walker.inits[weight].dims[1]), out_axis=1)
    walker.register(out.spaces, PRODUCER, node, weight, 1, 1, weight=True)
    if len(node.input) > 2 and node.input[2]:
        walker.register(out.spaces, PRODUCER, node, node.input[2], 0, 1, weight=False)


@rule("Gemm", producer=True)
def gemm(walker: Walker, node: onnx.NodeProto) -> None:
    """A constant weight consumes the columns of A and produces the output columns."""
    a, weight = node.input[0], node.input[1]
    if weight not in walker.inits or a in walker.inits:
        walker.block(node, node.input, "matrix product of two run-time tensors")
        return
    trans_a, trans_b = int(attr(node, "transA", 0)), int(attr(node, "transB", 0))
    k_axis, n_axis = (1, 0) if trans_b else (0, 1)
    layout = walker.layouts.get(a)
    if layout is not None:
        if layout.axis != (0 if trans_a else 1):
            walker.block(node, [a], "channels on the row axis of a Gemm")
        else:
            walker.register(layout.spaces, CONSUMER, node, weight, k_axis, layout.block, weight=True)
    out = walker.produce(node, int(walker.inits[weight].dims[n_axis]), out_axis=1)
    walker.register(out.spaces, PRODUCER, node, weight, n_axis, 1, weight=True)
    bias = node.input[2] if len(node.input) > 2 else ""
    if bias in walker.inits:
        dims = walker.shapes[bias]
        if dims and dims[-1] == walker.spaces.total(out.spaces) and dims[-1] != 1:
            walker.register(out.spaces, PRODUCER, node, bias, len(dims) - 1, 1, weight=False)
    elif bias and out.rank:
        walker.attach(node, bias, out)
    elif bias:
        walker.block(node, [bias], "output shape unknown")


@rule("MatMul", producer=True)
def matmul(walker: Walker, node: onnx.NodeProto) -> None:
    """A constant 2-D weight consumes the last axis of A and produces the output's last axis; a
    product of two run-time tensors keeps channels on a batch axis (attention heads)."""
    a, weight = node.input
    if a not in walker.inits and weight not in walker.inits:
        _batched_matmul(walker, node)
        return
    if weight not in walker.inits or a in walker.inits or len(walker.inits[weight].dims) != 2:
        walker.block(node, node.input, "matrix product with a constant left operand or a weight that is not 2-D")
        return
    layout = walker.layouts.get(a)
    if layout is not None:
        if layout.axis != layout.rank - 1:
            walker.block(node, [a], "channels on an axis the matrix product keeps")
        else:
            walker.register(layout.spaces, CONSUMER, node, weight, 0, layout.block, weight=True)
    out = walker.produce(node, int(walker.inits[weight].dims[1]))
    walker.register(out.spaces, PRODUCER, node, weight, 1, 1, weight=True)


def _batched_matmul(walker: Walker, node: onnx.NodeProto) -> None:
    """Channels on a batch axis (before the two matrix axes) are one product each: operands carrying
    them share them (Q and K heads in Q·Kᵀ, scores and V heads in P·V) and the output keeps them.
    Channels on a matrix axis, contracted or kept, are refused."""
    rank = walker.rank(node.output[0])
    carriers = [walker.layouts[i] for i in node.input if i in walker.layouts]
    if not carriers:
        return
    if rank is None or any(c.axis >= c.rank - 2 for c in carriers):
        walker.block(node, node.input, "matrix product of two run-time tensors over the channels")
        return
    first = carriers[0]
    layout = Layout(rank - first.rank + first.axis, rank, first.spaces, first.block)
    for name in node.input:
        walker.attach(node, name, layout)
    walker.set_layout(node, node.output[0], layout)


@rule("BatchNormalization", "InstanceNormalization")
def batchnorm(walker: Walker, node: onnx.NodeProto) -> None:
    """Inference normalisation with constant statistics: each statistic is a channelwise member."""
    layout = walker.layouts.get(node.input[0])
    params = [p for p in node.input[1:] if p]
    if layout is None or any(p in walker.layouts for p in params):
        walker.block(node, node.input, "normalisation statistics computed at run time")
        return
    if layout.axis != 1 or layout.block != 1 or any(p not in walker.inits for p in params) \
            or int(attr(node, "training_mode", 0)) or any(o for o in node.output[1:]):
        walker.block(node, node.input, "normalisation in a form the channel analysis cannot follow")
        return
    for param in params:
        walker.register(layout.spaces, CHANNELWISE, node, param, 0, 1, weight=False)
    walker.set_layout(node, node.output[0], layout)
