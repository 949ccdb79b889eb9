"""How a prunable weight meets its input: the activation tensors it reads, the rows ``X`` they give
(Conv: im2col patches per group; Gemm/MatMul: one row per sample or token) and the weight as
``[groups, d_out, d_in]`` matrices with ``y = W x`` for every row x."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view

from onnxprune.graph.prunable import find_prunable


@dataclass(frozen=True)
class ConvGeometry:
    """The attributes that place a Conv's patches: kernel, strides, dilations, pads or auto_pad, groups."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]  # begin of every spatial axis, then end (ONNX order)
    auto_pad: str
    group: int

    def padding(self, spatial: tuple[int, ...]) -> list[tuple[int, int]]:
        """(begin, end) padding of every spatial axis for an input of size ``spatial``."""
        rank = len(spatial)
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = []
            for size, k, s, d in zip(spatial, self.kernel, self.strides, self.dilations):
                total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
                small = total // 2
                out.append((small, total - small) if self.auto_pad == "SAME_UPPER" else (total - small, small))
            return out
        if self.auto_pad == "VALID":
            return [(0, 0)] * rank
        pads = self.pads or (0,) * (2 * rank)
        return list(zip(pads[:rank], pads[rank:]))


def _patches(x: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """A Conv input ``[N, C, *spatial]`` as its patches ``[N, C, *out, *kernel]`` (a strided view of the padded
    input)."""
    spatial = x.shape[2:]
    rank = len(spatial)
    padded = np.pad(x, [(0, 0), (0, 0)] + geometry.padding(spatial))
    extents = tuple((k - 1) * d + 1 for k, d in zip(geometry.kernel, geometry.dilations))
    windows = sliding_window_view(padded, extents, axis=tuple(range(2, 2 + rank)))  # [N, C, *positions, *extents]
    picks = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in geometry.strides) \
        + tuple(slice(None, None, d) for d in geometry.dilations)
    return windows[picks]


def conv_rows(x: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """im2col of a Conv input ``[N, C, *spatial]``: ``[groups, N·positions, C/groups·prod(kernel)]``, the
    columns ordered like the weight's ``[C/groups, *kernel]`` (any number of spatial axes)."""
    n, channels, rank = x.shape[0], x.shape[1], x.ndim - 2
    patches = _patches(x, geometry)
    out = patches.shape[2:2 + rank]
    g = geometry.group
    patches = patches.reshape(n, g, channels // g, *out, *geometry.kernel)
    order = (1, 0, *range(3, 3 + rank), 2, *range(3 + rank, 3 + 2 * rank))  # [G, N, *out, C/G, *kernel]
    return patches.transpose(order).reshape(g, n * int(np.prod(out)), -1)


# A depthwise Conv's Gram is summed over about this many rows (output positions × samples) per batch of
# DEPTHWISE_SAMPLES samples, every s-th position along the widest output axis: its rows (one per position, a few
# columns each) outnumber its columns by thousands, and their im2col would cost k times the input in float64.
# The stride follows from one sample's positions alone, so the rows kept do not depend on how samples are batched.
DEPTHWISE_ROWS = 4096
DEPTHWISE_SAMPLES = 64
# Bytes of the float64 patches a depthwise Gram holds at once (channels are taken in chunks).
_DEPTHWISE_CHUNK = 64 << 20


def depthwise_gram(x: np.ndarray, geometry: ConvGeometry,
                   samples: int = DEPTHWISE_SAMPLES) -> tuple[np.ndarray, np.ndarray, int]:
    """``(Σ x xᵀ [C, k, k], Σ x [C, k], rows)`` of a depthwise Conv's rows (one input channel per group, k kernel
    positions) on a batch, over every s-th output position along the widest output axis so that about
    ``DEPTHWISE_ROWS`` rows remain for ``samples`` samples, channels in chunks: bounded memory instead of an
    im2col of every row."""
    rank = x.ndim - 2
    patches = _patches(x, geometry)  # [N, C, *out, *kernel], a view
    out = patches.shape[2:2 + rank]
    axis = 2 + int(np.argmax(out))
    step = min(max(1, -(-samples * int(np.prod(out)) // DEPTHWISE_ROWS)), patches.shape[axis])
    patches = patches[(slice(None),) * axis + (slice(step // 2, None, step),)]  # centred: edges are padding
    channels, k = x.shape[1], int(np.prod(geometry.kernel))
    rows = x.shape[0] * int(np.prod(patches.shape[2:2 + rank]))
    order = (1, *range(2 + rank, 2 + 2 * rank), 0, *range(2, 2 + rank))  # [C, *kernel, N, *out]
    H, sums = np.empty((channels, k, k)), np.empty((channels, k))
    chunk = max(1, _DEPTHWISE_CHUNK // (8 * k * rows))
    for start in range(0, channels, chunk):
        part = patches[:, start:start + chunk].transpose(order).reshape(-1, k, rows).astype(np.float64)
        H[start:start + chunk] = part @ part.transpose(0, 2, 1)
        sums[start:start + chunk] = part.sum(axis=2)
    return H, sums, rows


def _ints(node: onnx.NodeProto, name: str, default: tuple[int, ...] = ()) -> tuple[int, ...]:
    attr = next((a for a in node.attribute if a.name == name), None)
    return tuple(int(v) for v in attr.ints) if attr is not None else default


def _int(node: onnx.NodeProto, name: str, default: int) -> int:
    attr = next((a for a in node.attribute if a.name == name), None)
    return int(attr.i) if attr is not None else default


def _str(node: onnx.NodeProto, name: str, default: str) -> str:
    attr = next((a for a in node.attribute if a.name == name), None)
    return attr.s.decode() if attr is not None else default


@dataclass(frozen=True)
class LayerSource:
    """A prunable weight and the activations it reads (one per consumer node, summed into one H).

    ``key``: per-consumer geometry (ConvGeometry for Conv, transA for Gemm, None for MatMul)."""

    name: str
    op_type: str
    tensors: tuple[str, ...]
    keys: tuple[object, ...]
    shape: tuple[int, ...]
    trans_b: bool
    elem_type: int

    @property
    def groups(self) -> int:
        return self.keys[0].group if self.op_type == "Conv" else 1

    @property
    def d_in(self) -> int:
        """Input features of one group: the size of a row x."""
        if self.op_type == "Conv":
            return int(np.prod(self.shape[1:]))
        return self.shape[1] if self.trans_b else self.shape[0]

    @property
    def d_out(self) -> int:
        """Output features of one group."""
        if self.op_type == "Conv":
            return self.shape[0] // self.groups
        return self.shape[0] if self.trans_b else self.shape[1]

    @property
    def channel_width(self) -> int:
        """Input channels of one group (the axis an N:M pattern runs along): C/groups for a Conv, d_in else."""
        return self.shape[1] if self.op_type == "Conv" else self.d_in

    def channel_order(self) -> np.ndarray | None:
        """The column order of a row x that puts a Conv's input channels innermost (kernel position
        outer), so that M consecutive columns are M consecutive channels at one kernel position; None
        when the columns already run along the channels."""
        if self.op_type != "Conv":
            return None
        positions = self.d_in // self.channel_width
        return (np.arange(self.channel_width)[None, :] * positions + np.arange(positions)[:, None]).reshape(-1)

    def rows(self, index: int, activation: np.ndarray) -> np.ndarray:
        """The rows X of consumer ``index`` on a batch of its input: ``[groups, rows, d_in]``."""
        key = self.keys[index]
        if self.op_type == "Conv":
            return conv_rows(activation, key)
        if self.op_type == "Gemm":
            a = activation.T if key else activation
            return a.reshape(1, -1, self.d_in)
        return activation.reshape(1, -1, self.d_in)

    def gram(self, index: int, activation: np.ndarray) -> tuple[np.ndarray, np.ndarray, int] | None:
        """``(H [groups, d, d], Σ rows [groups, d], row count)`` of consumer ``index`` on a batch, computed
        without its rows where that is much cheaper (a depthwise Conv); None otherwise."""
        key = self.keys[index]
        if self.op_type == "Conv" and self.shape[1] == 1 and key.group == activation.shape[1] > 1:
            return depthwise_gram(activation, key)
        return None

    def to_groups(self, weight: np.ndarray) -> np.ndarray:
        """The weight as ``[groups, d_out, d_in]`` matrices (a copy in float64)."""
        w = weight.astype(np.float64)
        if self.op_type != "Conv" and not self.trans_b:
            w = w.T
        return np.ascontiguousarray(w.reshape(self.groups, self.d_out, self.d_in))

    def from_groups(self, groups: np.ndarray) -> np.ndarray:
        """Inverse of ``to_groups`` (same dtype as given)."""
        if self.op_type == "Conv":
            return groups.reshape(self.shape)
        w = groups.reshape(self.d_out, self.d_in)
        return np.ascontiguousarray(w if self.trans_b else w.T)


def _key(node: onnx.NodeProto, weight: tuple[int, ...]) -> object:
    """The geometry of one consumer node."""
    if node.op_type == "Conv":
        rank = len(weight) - 2
        return ConvGeometry(kernel=_ints(node, "kernel_shape", weight[2:]) or weight[2:],
                            strides=_ints(node, "strides", (1,) * rank), dilations=_ints(node, "dilations", (1,) * rank),
                            pads=_ints(node, "pads"), auto_pad=_str(node, "auto_pad", "NOTSET"),
                            group=_int(node, "group", 1))
    if node.op_type == "Gemm":
        return bool(_int(node, "transA", 0))
    return None


def layer_sources(model: onnx.ModelProto, names: list[str]) -> tuple[list[LayerSource], dict[str, str]]:
    """The sources of the named prunable weights, in graph order, and the weights that cannot be
    captured with the reason (``name → reason``)."""
    prunable = {w.name: w for w in find_prunable(model)}
    nodes = {n.name: n for n in model.graph.node}
    types = {t.name: t.data_type for t in model.graph.initializer}
    sources, skipped = [], {}
    for name in names:
        weight = prunable.get(name)
        if weight is None:
            skipped[name] = "not a prunable Conv/Gemm/MatMul weight"
            continue
        readers = [nodes.get(n) for n in weight.nodes]
        if any(r is None for r in readers):
            skipped[name] = "a consumer node has no name, so its input cannot be told apart"
            continue
        trans = {bool(_int(r, "transB", 0)) for r in readers if r.op_type == "Gemm"}
        keys = [_key(r, weight.shape) for r in readers]
        if len({r.op_type for r in readers}) > 1 or len(trans) > 1 or \
                len({k.group for k in keys if isinstance(k, ConvGeometry)}) > 1:
            skipped[name] = "its consumer nodes read the weight in different layouts"
            continue
        sources.append(LayerSource(name, weight.op_type, tuple(r.input[0] for r in readers), tuple(keys),
                                   weight.shape, trans == {True}, types[name]))
    return sources, skipped
