"""Extra onnx2torch converters for op versions newer than onnx2torch registers (opsets 16 to 26).

onnx2torch 1.5 knows op versions up to about opset 17, so graphs from the dynamo exporter (opset 20
by default in torch 2.14) or any opset-18+ file would not convert. Newer op versions come in three
kinds, each handled by one table or function here:

* type-only upgrades, where the schema only widens the accepted types: the older version's
  converter is registered again (``TYPE_ONLY_UPGRADES``; a test checks every entry against the
  ONNX schemas);
* versions that add attribute values the older converter would misread: the older converter,
  refusing those values (``RESTRICTED``);
* real changes (attributes turned inputs, new attributes, new ops), written here: Reduce*-18
  (axes became an input), Split-18 (``num_outputs``), Pad-18 (``axes`` input) and Gelu-20.

Older gaps are filled too: Dropout before opset 10 (Caffe2-era models), AveragePool with
asymmetric or SAME padding and Slice-1. Some onnx2torch entries are replaced, and the version tables
build on them: Reshape-14 refuses ``allowzero=1``, which the dynamo exporter sets on every Reshape,
GlobalAveragePool-1 averaged over every axis when shape inference could not tell the input's rank
(legacy exports whose shapes are computed at run time), AveragePool-7/10/11 refuse padding that
torch's pooling cannot express, Slice-10/11/13 read their constant inputs with ``.numpy()`` at run
time (which fails under ``torch.func.grad``, where every tensor an op touches is a grad-tracking
wrapper), Clip-11/12/13 refuse an absent min before a given max or computed bounds,
BatchNormalization-9/14/15 and LayerNormalization-17 need the input's rank from shape inference
(and the latter refuses its statistics outputs), and PRelu indexes with a boolean mask, which
``torch.func.vmap`` refuses.

A converter raises NotImplementedError for what it cannot express, so such a node is reported, with its
name, before conversion starts. This module only declares the converters and the tables; putting them
into onnx2torch's registry (and restoring it) is ``onnx2torch_compat``'s. Versions past opset 26, the
newest ONNX Runtime 1.31 loads, are not covered.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

if TYPE_CHECKING:  # onnx2torch itself is imported on first use: it pulls in torchvision
    from onnx2torch.onnx_graph import OnnxGraph
    from onnx2torch.onnx_node import OnnxNode
    from onnx2torch.utils.common import OperationConverterResult

Converter = Callable[["OnnxNode", "OnnxGraph"], "OperationConverterResult"]

# op -> (version whose converter is reused, newer versions that only widen the accepted types).
# Cast-19 adds ``saturate`` and Cast-24 ``round_mode``; both act only on float8 targets, which
# onnx2torch's Cast refuses. Pad-19 adds the ``wrap`` mode, which the Pad converter refuses.
TYPE_ONLY_UPGRADES: dict[str, tuple[int, tuple[int, ...]]] = {
    "Acos": (7, (22,)),
    "Asin": (7, (22,)),
    "Atan": (7, (22,)),
    "AveragePool": (19, (22,)),
    "Cast": (13, (19, 21, 23, 24, 25)),
    "Constant": (13, (19, 21, 23, 24, 25)),
    "ConstantOfShape": (9, (20, 21, 23, 24, 25)),
    "Conv": (11, (22,)),
    "ConvTranspose": (11, (22,)),
    "Cos": (7, (22,)),
    "Dropout": (13, (22,)),
    "Elu": (6, (22,)),
    "Equal": (13, (19,)),
    "EyeLike": (9, (22,)),
    "Flatten": (13, (21, 23, 24, 25)),
    "GlobalAveragePool": (1, (22,)),
    "GreaterOrEqual": (12, (16,)),
    "HardSigmoid": (6, (22,)),
    "HardSwish": (14, (22,)),
    "Identity": (16, (19, 21, 23, 24, 25)),
    "InstanceNormalization": (6, (22,)),
    "IsInf": (10, (20,)),
    "IsNaN": (13, (20,)),
    "LessOrEqual": (12, (16,)),
    "MaxPool": (12, (22,)),
    "Pad": (18, (19, 21, 23, 24, 25)),
    "ReduceMax": (18, (20,)),
    "ReduceMin": (18, (20,)),
    "Reshape": (14, (19, 21, 23, 24, 25)),
    "RoiAlign": (16, (22,)),
    "Round": (11, (22,)),
    "Selu": (6, (22,)),
    "Shape": (15, (19, 21, 23, 24, 25)),
    "Sin": (7, (22,)),
    "Softplus": (1, (22,)),
    "Softsign": (1, (22,)),
    "Squeeze": (21, (23, 24, 25)),
    "Tan": (7, (22,)),
    "TopK": (11, (24,)),
    "Transpose": (13, (21, 23, 24, 25)),
    "Unsqueeze": (13, (21, 23, 24, 25)),
}

AttributeCheck = Callable[[Any], bool]


def _one_of(*allowed: Any) -> AttributeCheck:
    """Accept an attribute value only when it is one of ``allowed`` (none: the attribute must be absent)."""
    return lambda value: value in allowed


def _all_ones(value: Any) -> bool:
    """Accept a list attribute whose entries are all 1 (e.g. no dilation)."""
    return all(v == 1 for v in value)


_RESIZE_18: dict[str, AttributeCheck] = {"antialias": _one_of(0), "axes": _one_of(),
                                         "keep_aspect_ratio_policy": _one_of("stretch")}
_RESIZE_13_COORDINATES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_crop_and_resize")

# (op, version, version whose converter is reused, attribute -> check); absent attributes pass.
RESTRICTED: tuple[tuple[str, int, int, dict[str, AttributeCheck]], ...] = (
    ("AveragePool", 19, 11, {"dilations": _all_ones}),
    ("Resize", 18, 13, _RESIZE_18),
    ("Resize", 19, 13, {**_RESIZE_18, "coordinate_transformation_mode": _one_of(*_RESIZE_13_COORDINATES)}),
    ("ScatterND", 18, 16, {"reduction": _one_of("none")}),
)

REDUCE_18 = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
             "ReduceProd", "ReduceSumSquare")


def _prod(x: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
    """torch.prod reduces one axis at a time: go from the last axis so the others keep their index."""
    for dim in sorted(dims, reverse=True):
        x = torch.prod(x, dim=dim, keepdim=keepdim)
    return x


_REDUCERS: dict[str, Callable[[torch.Tensor, list[int], bool], torch.Tensor]] = {
    "ReduceL1": lambda x, dims, keep: torch.sum(torch.abs(x), dim=dims, keepdim=keep),
    "ReduceL2": lambda x, dims, keep: torch.linalg.vector_norm(x, 2, dim=dims, keepdim=keep),
    "ReduceLogSum": lambda x, dims, keep: torch.log(torch.sum(x, dim=dims, keepdim=keep)),
    "ReduceLogSumExp": lambda x, dims, keep: torch.logsumexp(x, dim=dims, keepdim=keep),
    "ReduceMax": lambda x, dims, keep: torch.amax(x, dim=dims, keepdim=keep),
    "ReduceMean": lambda x, dims, keep: torch.mean(x, dim=dims, keepdim=keep),
    "ReduceMin": lambda x, dims, keep: torch.amin(x, dim=dims, keepdim=keep),
    "ReduceProd": _prod,
    "ReduceSumSquare": lambda x, dims, keep: torch.sum(x * x, dim=dims, keepdim=keep),
}


class _Reduce(nn.Module):
    """Reduce*-18: constant ``axes``; empty axes reduce every axis, or none with ``noop_with_empty_axes``."""

    def __init__(self, op_type: str, axes: list[int] | None, keepdims: bool, noop_with_empty_axes: bool):
        super().__init__()
        self.op_type = op_type
        self.axes = axes or []
        self.keepdims = keepdims
        self.noop_with_empty_axes = noop_with_empty_axes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.axes and self.noop_with_empty_axes:
            return x
        dims = sorted({a % x.dim() for a in self.axes}) if self.axes else list(range(x.dim()))
        return _REDUCERS[self.op_type](x, dims, self.keepdims)


class _Split(nn.Module):
    """Split-18: sizes from the constant ``split`` input, else ``count`` parts of ceil(length / count),
    the last one smaller."""

    def __init__(self, axis: int, count: int, sizes: list[int] | None):
        super().__init__()
        self.axis = axis
        self.count = count
        self.sizes = sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        parts = torch.split(x, self.sizes or math.ceil(x.shape[self.axis] / self.count), dim=self.axis)
        return parts if self.count > 1 else parts[0]


class _ReshapeAllowZero(nn.Module):
    """Reshape with ``allowzero=1``: a 0 in ``shape`` is a zero-sized axis, exactly as in torch.reshape."""

    def forward(self, input_tensor: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        return torch.reshape(input_tensor, shape.tolist())


class _PadOverAxes(nn.Module):
    """Pad-18: the optional ``axes`` input says which axes ``pads`` covers; spread the pads over
    every axis, then pad as Pad-13 does."""

    def __init__(self, pad: nn.Module):
        super().__init__()
        self.pad = pad

    def forward(self, input_tensor: torch.Tensor, pads: torch.Tensor, constant_value: torch.Tensor | None = None,
                axes: torch.Tensor | None = None) -> torch.Tensor:
        if axes is not None:
            rank = input_tensor.dim()
            index = axes.to(torch.int64) % rank
            full = torch.zeros(2 * rank, dtype=pads.dtype, device=pads.device)
            full[index] = pads[:index.numel()]
            full[index + rank] = pads[index.numel():]
            pads = full
        return self.pad(input_tensor, pads, constant_value)


class _InferenceDropout(nn.Module):
    """Dropout-1/6/7 at inference: the input unchanged and, when the node has one, the mask ONNX
    Runtime gives for these versions (zeros of the input's type)."""

    def __init__(self, mask: bool):
        super().__init__()
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return (x, torch.zeros_like(x)) if self.mask else x


class _ConstantSlice(nn.Module):
    """Slice with constant starts/ends/axes/steps, held as Python ints so that nothing is read from a
    tensor at run time; a negative step flips the axis and slices it forwards, as ONNX defines it."""

    def __init__(self, starts: list[int], ends: list[int], axes: list[int], steps: list[int]):
        super().__init__()
        self.starts, self.ends, self.axes, self.steps = starts, ends, axes, steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _slice(x, self.starts, self.ends, self.axes, self.steps)


class _ComputedSlice(nn.Module):
    """Slice whose bounds are computed in the graph (from Shape arithmetic): they are read with ``tolist``,
    which works inside ``torch.func`` transforms where reading a tensor's storage does not."""

    def forward(self, x: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, axes: torch.Tensor | None = None,
                steps: torch.Tensor | None = None) -> torch.Tensor:
        first = [int(v) for v in starts.tolist()]
        return _slice(x, first, [int(v) for v in ends.tolist()],
                      list(range(len(first))) if axes is None else [int(v) for v in axes.tolist()],
                      [1] * len(first) if steps is None else [int(v) for v in steps.tolist()])


def _slice(x: torch.Tensor, starts: list[int], ends: list[int], axes: list[int], steps: list[int]) -> torch.Tensor:
    """ONNX Slice: a negative step flips the axis and slices it forwards."""
    index: list[slice] = [slice(None)] * x.dim()
    flips = []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= x.dim()
        if step < 0:
            flips.append(axis)
            start, end, step = -start - 1, -end - 1, -step
        index[axis] = slice(start, end, step)
    return (torch.flip(x, flips) if flips else x)[tuple(index)]


class _Clip(nn.Module):
    """Clip-11+: min and max are optional tensor inputs (absent: no bound on that side)."""

    def forward(self, input_tensor: torch.Tensor, min_value: torch.Tensor | None = None,
                max_value: torch.Tensor | None = None) -> torch.Tensor:
        if min_value is None and max_value is None:
            return input_tensor
        return torch.clamp(input_tensor, min_value, max_value)


class _InferenceBatchNorm(nn.Module):
    """BatchNormalization with the running statistics, for inputs of any rank >= 2 (channels on axis 1)."""

    def __init__(self, epsilon: float):
        super().__init__()
        self.epsilon = epsilon

    def forward(self, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
                var: torch.Tensor) -> torch.Tensor:
        return nn.functional.batch_norm(x, mean, var, scale, bias, training=False, eps=self.epsilon)


class _PRelu(nn.Module):
    """PRelu with the slope broadcast against the input, without boolean-mask indexing (vmap refuses it)."""

    def forward(self, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, x * slope)


class _LayerNorm(nn.Module):
    """LayerNormalization-17 over the axes from ``axis`` on, of any input rank, with the optional Mean
    and InvStdDev outputs (normalized axes kept as 1)."""

    def __init__(self, axis: int, epsilon: float, statistics: bool):
        super().__init__()
        self.axis, self.epsilon, self.statistics = axis, epsilon, statistics

    def forward(self, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dims = tuple(range(self.axis % x.dim(), x.dim()))
        mean = x.mean(dims, keepdim=True)
        centred = x - mean
        inv_std = torch.rsqrt((centred * centred).mean(dims, keepdim=True) + self.epsilon)
        y = centred * inv_std * scale
        y = y if bias is None else y + bias
        return (y, mean, inv_std) if self.statistics else y


def same_pads(sizes: list[int], kernel: list[int], strides: list[int], upper: bool) -> list[int]:
    """ONNX SAME_UPPER/SAME_LOWER pads (all begins, then all ends) keeping ceil(size / stride) outputs;
    the odd pixel goes to the end (UPPER) or the beginning (LOWER)."""
    totals = [max((-(-n // s) - 1) * s + k - n, 0) for n, k, s in zip(sizes, kernel, strides)]
    small = [t // 2 for t in totals]
    large = [t - t // 2 for t in totals]
    return small + large if upper else large + small


class _PaddedAveragePool(nn.Module):
    """AveragePool with pads torch's pooling cannot take (asymmetric or SAME): zero-pad, average full
    windows, and without ``count_include_pad`` divide by the windows' share of real elements."""

    def __init__(self, kernel: list[int], strides: list[int], pads: list[int] | None, auto_pad: str,
                 count_include_pad: bool):
        super().__init__()
        self.kernel, self.strides, self.pads, self.auto_pad = kernel, strides, pads, auto_pad
        self.count_include_pad = count_include_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rank = x.dim() - 2
        pads = self.pads or same_pads(list(x.shape[2:]), self.kernel, self.strides, self.auto_pad == "SAME_UPPER")
        torch_pads = [p for axis in reversed(range(rank)) for p in (pads[axis], pads[axis + rank])]
        pool = (nn.functional.avg_pool1d, nn.functional.avg_pool2d, nn.functional.avg_pool3d)[rank - 1]
        mean = pool(nn.functional.pad(x, torch_pads), self.kernel, self.strides)
        if self.count_include_pad:
            return mean
        ones = nn.functional.pad(torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device), torch_pads)
        return mean / pool(ones, self.kernel, self.strides)


def _convert_dropout(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Dropout before opset 10, as ONNX Runtime runs it at inference."""
    return _result(_InferenceDropout(len(node.output_values) > 1 and bool(node.output_values[1])), node)


def _padding_aware(base: Converter) -> Converter:
    """The AveragePool ``base`` converter, extended to asymmetric and SAME padding (without ceil_mode)."""

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        attributes = node.attributes
        kernel = list(attributes["kernel_shape"])
        rank = len(kernel)
        pads = list(attributes.get("pads", [0] * 2 * rank))
        auto_pad = attributes.get("auto_pad", "NOTSET")
        padded = auto_pad in ("SAME_UPPER", "SAME_LOWER") or (auto_pad == "NOTSET" and pads[:rank] != pads[rank:])
        if not padded or attributes.get("ceil_mode", 0) or not 1 <= rank <= 3:
            return base(node, graph)
        strides = list(attributes.get("strides", [1] * rank))
        module = _PaddedAveragePool(kernel, strides, None if auto_pad != "NOTSET" else pads, auto_pad,
                                    bool(attributes.get("count_include_pad", 0)))
        return _result(module, node)

    return convert


def _constant_ints(node: OnnxNode, graph: OnnxGraph, index: int) -> list[int] | None:
    """The constant int list fed to input ``index`` of ``node``; None when the input is absent."""
    from onnx2torch.utils.common import get_const_value

    if len(node.input_values) <= index or not node.input_values[index]:
        return None
    try:
        value = get_const_value(node.input_values[index], graph)
    except KeyError:
        raise NotImplementedError(f"{node.operation_type} with a computed (non-constant) input "
                                  f"{node.input_values[index]!r}") from None
    return [int(v) for v in (value.tolist() if isinstance(value, torch.Tensor) else value)]


def _result(module: nn.Module, node: OnnxNode, inputs: tuple[str, ...] | None = None) -> OperationConverterResult:
    """An onnx2torch converter result: ``module`` reading ``inputs`` (default: all of the node's)."""
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

    return OperationConverterResult(torch_module=module, onnx_mapping=OnnxMapping(
        inputs=node.input_values if inputs is None else inputs, outputs=node.output_values))


def _convert_slice_1(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Slice-1: starts, ends and optional axes are attributes."""
    starts = list(node.attributes["starts"])
    axes = list(node.attributes.get("axes", range(len(starts))))
    return _result(_ConstantSlice(starts, list(node.attributes["ends"]), axes, [1] * len(starts)), node)


class _GlobalMaxPool(nn.Module):
    """GlobalMaxPool: the maximum over every axis after the channels, kept as size-1 axes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(x, dim=tuple(range(2, x.dim())), keepdim=True)


def _convert_global_max_pool(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    return _result(_GlobalMaxPool(), node)


def _convert_slice(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Slice-10+: constant starts/ends/axes/steps are read at conversion time, computed ones at run time
    without touching tensor storage (which ``torch.func`` transforms do not allow)."""
    try:
        starts, ends, axes, steps = (_constant_ints(node, graph, i) for i in range(1, 5))
    except NotImplementedError:  # bounds computed in the graph
        return _result(_ComputedSlice(), node)
    axes = axes if axes is not None else list(range(len(starts)))
    return _result(_ConstantSlice(starts, ends, axes, steps or [1] * len(starts)), node, node.input_values[:1])


def _convert_clip(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Clip-11/12/13: bounds are inputs, constant or computed, each optional."""
    return _result(_Clip(), node)


def _convert_prelu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """PRelu-7/9/16: the slope broadcasts against the input."""
    return _result(_PRelu(), node)


def _convert_layer_norm(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """LayerNormalization-17, scale and bias as inputs, statistics outputs when the node lists them."""
    module = _LayerNorm(int(node.attributes.get("axis", -1)), float(node.attributes.get("epsilon", 1e-5)),
                        statistics=len(node.output_values) > 1)
    return _result(module, node)


def _convert_batch_norm(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """BatchNormalization-9/14/15 at inference; training mode (batch statistics, running-statistics
    outputs, which ONNX Runtime also computes when a node lists them) is refused."""
    if node.attributes.get("training_mode", 0) or any(node.output_values[1:]):
        raise NotImplementedError("BatchNormalization in training mode (batch statistics); export the model "
                                  "in eval mode")
    return _result(_InferenceBatchNorm(float(node.attributes.get("epsilon", 1e-5))), node)


def _convert_reduce(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Reduce*-18: axes moved from an attribute to the second input."""
    module = _Reduce(node.operation_type, _constant_ints(node, graph, 1),
                     keepdims=bool(node.attributes.get("keepdims", 1)),
                     noop_with_empty_axes=bool(node.attributes.get("noop_with_empty_axes", 0)))
    return _result(module, node, node.input_values[:1])


def _convert_split(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Split-18: adds ``num_outputs`` for equal parts (the last may be smaller)."""
    count = int(node.attributes.get("num_outputs", len(node.output_values)))
    module = _Split(int(node.attributes.get("axis", 0)), count, _constant_ints(node, graph, 1))
    return _result(module, node, node.input_values[:1])


def _convert_pad(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Pad-18: Pad-13 plus the optional ``axes`` input (Pad-13's converter refuses unknown modes)."""
    from onnx2torch.node_converters.registry import get_converter

    return _result(_PadOverAxes(get_converter("Pad", 13)(node, graph).torch_module), node)


def _convert_gelu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Gelu-20, exact or with the tanh approximation."""
    approximate = node.attributes.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise NotImplementedError(f"Gelu with approximate={approximate!r}")
    return _result(nn.GELU(approximate=approximate), node)


def _allowing_zero(base: Converter) -> Converter:
    """The Reshape ``base`` converter, extended to ``allowzero=1``."""

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        return _result(_ReshapeAllowZero(), node) if node.attributes.get("allowzero", 0) else base(node, graph)

    return convert


def _convert_global_average_pool(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """GlobalAveragePool over every axis after the second, counted at run time."""
    from onnx2torch.node_converters.global_average_pool import OnnxGlobalAveragePool

    return _result(OnnxGlobalAveragePool(), node)


def restricted(op_type: str, base: Converter, checks: dict[str, AttributeCheck]) -> Converter:
    """The ``base`` converter, refusing nodes whose attributes fail ``checks``."""

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        for name, accepted in checks.items():
            if name in node.attributes and not accepted(node.attributes[name]):
                raise NotImplementedError(f"{op_type} with {name}={node.attributes[name]!r}")
        return base(node, graph)

    return convert


# onnx2torch entries replaced by a wrapper of onnx2torch's own converter for that entry.
WRAPPED: dict[tuple[str, int], Callable[[Converter], Converter]] = {
    ("Reshape", 14): _allowing_zero,  # allowzero=1, which the dynamo exporter sets on every Reshape
    **{("AveragePool", v): _padding_aware for v in (7, 10, 11)},  # asymmetric and SAME padding
}
# onnx2torch entries replaced outright: GlobalAveragePool-1 no longer trusts the input rank found by shape
# inference, Slice reads constant inputs once, Clip takes tensor bounds, BatchNormalization and
# LayerNormalization any input rank (LayerNormalization its statistics outputs), PRelu runs under vmap.
REPLACEMENTS: dict[tuple[str, int], Converter] = {
    ("GlobalAveragePool", 1): _convert_global_average_pool,
    **{("Slice", v): _convert_slice for v in (10, 11, 13)},
    **{("Clip", v): _convert_clip for v in (11, 12, 13)},
    **{("BatchNormalization", v): _convert_batch_norm for v in (9, 14, 15)},
    **{("PRelu", v): _convert_prelu for v in (7, 9, 16)},
    ("LayerNormalization", 17): _convert_layer_norm,
}
# Op versions onnx2torch does not convert at all (added only where it still has no converter).
ADDED: dict[tuple[str, int], Converter] = {
    **{(op_type, 18): _convert_reduce for op_type in REDUCE_18},
    ("Split", 18): _convert_split,
    ("Pad", 18): _convert_pad,
    ("Gelu", 20): _convert_gelu,
    ("Slice", 1): _convert_slice_1,
    ("GlobalMaxPool", 1): _convert_global_max_pool,
    **{("Dropout", v): _convert_dropout for v in (1, 6, 7)},
}
