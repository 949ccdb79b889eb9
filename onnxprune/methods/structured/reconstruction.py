"""Reconstruction for structured pruning: the calibration inputs of every weight that reads a channel
group, captured once through ONNX Runtime as Gram matrices, and a ridge least-squares refit of each such
consumer's kept input weights and bias so that its output matches the dense model's.

For a consumer with rows X (a Conv channel spans kh·kw columns of the im2col row) and dense weight W,
the group's contribution to its output is ``T = X_G W_G``. After pruning, the consumer reads the kept
channels ``X_G A`` (A: the plan's producer map, a selection or a fusion) and a constant 1 (its bias), and
the refit solves ``min ‖[X_G A, 1] B − T‖² + λ‖B − B₀‖²`` in closed form from the Gram matrix; B₀ is the
plan's own consumer weights, so the ridge pulls towards them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.activations.gram import GramStats, capture_grams
from onnxprune.activations.layers import LayerSource, layer_sources
from onnxprune.channels.model import CONSUMER, ChannelAnalysis, ChannelGroup, Member
from onnxprune.channels.surgery import ChannelMap
from onnxprune.data import Dataset
from onnxprune.errors import ConfigError
from onnxprune.graph.protos import attr, names_in_use, reader_counts, unique_name

log = logging.getLogger(__name__)

RECONSTRUCT = ("auto", "on", "off")
# A consumer is fitted to the dense model's output from the partly pruned model's inputs (sequential mode)
# only with at least this many calibration rows per column; with fewer, such a fit follows the few samples.
PAIRED_ROWS = 4


def wants_reconstruction(mode: str, calib: Dataset | None) -> bool:
    """Whether to refit: 'auto' when calibration data is given, 'on' always (it needs the data), 'off' never."""
    if mode == "on" and calib is None:
        raise ConfigError("reconstruct 'on' refits consumers on calibration data: pass --calib DATA.npz "
                          "or use -O reconstruct=off")
    return mode == "on" or (mode == "auto" and calib is not None)


@dataclass(frozen=True)
class ConsumerInput:
    """A weight that reads a group's channels, with the Gram statistics of its calibration rows.

    ``columns[c]``: where channel c sits in a row of the weight's input; ``bias``: the per-output bias
    initializer the refit shifts (None: the consumer has none it may change); ``alpha``/``beta``: Gemm's
    scales of the product and of the bias (1 otherwise).
    """

    member: Member
    source: LayerSource
    stats: GramStats
    columns: np.ndarray
    bias: str | None
    alpha: float = 1.0
    beta: float = 1.0

    @property
    def block(self) -> int:
        """Columns per channel."""
        return int(self.columns.shape[1])

    def weight(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """The effective weight as ``[d_out, d_in]`` float64 (output = rows · weightᵀ)."""
        return self.alpha * self.source.to_groups(values[self.member.tensor])[0]

    @property
    def intercept(self) -> bool:
        """Whether the refit may shift the consumer's bias (a constant-1 column in the design)."""
        return self.bias is not None

    def design(self, values: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
        """Gram of the design ``[X_G, 1]`` (channel-major columns, then the constant when ``intercept``),
        its product with the group's dense contribution ``T = X_G W_G``, and ``‖T‖²``. With paired
        statistics X is the input in the partly pruned model and T is computed from the dense model's."""
        cols = self.columns.ravel()
        H, cross_h, H_ref, mean, mean_ref = self.stats.blocks()
        n, cut = self.stats.n_rows, np.ix_(cols, cols)
        gram = np.empty((len(cols) + 1, len(cols) + 1))
        gram[:-1, :-1] = H[cut]
        gram[:-1, -1] = gram[-1, :-1] = n * mean[cols]
        gram[-1, -1] = n
        w_g = self.weight(values)[:, cols].T
        cross = np.vstack([cross_h[cut] @ w_g, n * mean_ref[cols] @ w_g])
        if not self.intercept:
            gram, cross = gram[:-1, :-1], cross[:-1]
        return gram, cross, float(np.sum(w_g * (H_ref[cut] @ w_g)))


def _columns(member: Member, source: LayerSource, size: int) -> np.ndarray | None:
    """``[size, block]`` positions of each channel in the consumer's input row; None for a layout the
    rows do not spell (a grouped Conv, a channel axis other than the input-feature axis)."""
    if source.groups != 1:
        return None
    entries = member.offset + np.arange(size * member.block).reshape(size, member.block)
    if source.op_type == "Conv":
        if member.axis != 1:
            return None
        kernel = int(np.prod(source.shape[2:]))
        return (entries[:, :, None] * kernel + np.arange(kernel)).reshape(size, -1)
    feature_axis = 1 if source.trans_b else 0
    return entries if member.axis == feature_axis else None


def _bias_of(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], readers: dict[str, int],
             d_out: int) -> str | None:
    """The node's bias initializer when the refit may shift it: per output, read by this node alone."""
    if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in inits:
        return None
    name = node.input[2]
    if readers.get(name, 0) != 1 or int(np.prod(inits[name].dims)) != d_out or len(inits[name].dims) != 1:
        return None
    return name


def add_consumer_biases(model: onnx.ModelProto, analysis: ChannelAnalysis) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` in which every Conv/Gemm reading a prunable group through its weight has a bias
    input (zeros where it had none), so the refit can absorb mean shifts; and how many were added."""
    consumers = {m.node for g in analysis.prunable() for m in g.members if m.role == CONSUMER and m.weight}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    taken = names_in_use(out.graph)
    added = 0
    for node in out.graph.node:
        if node.name not in consumers or node.op_type not in ("Conv", "Gemm") or node.input[1] not in inits:
            continue
        if len(node.input) > 2 and node.input[2]:
            continue
        weight = inits[node.input[1]]
        d_out = weight.dims[0] if node.op_type == "Conv" or attr(node, "transB", 0) else weight.dims[1]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(weight.data_type)
        name = unique_name(taken, f"{node.input[1]}_bias")
        out.graph.initializer.append(numpy_helper.from_array(np.zeros(d_out, dtype=dtype), name))
        if len(node.input) == 2:
            node.input.append(name)
        else:
            node.input[2] = name
        added += 1
    return out, added


def capture_inputs(model: onnx.ModelProto, groups: list[ChannelGroup], calib: Dataset, max_rows: int,
                   seed: int = 0, batch_size: int = 64, reference: onnx.ModelProto | None = None,
                   warned: set[str] | None = None) -> dict[int, list[ConsumerInput]]:
    """The consumers of every group with their calibration Gram statistics over at most about ``max_rows``
    rows each, from one ORT capture on ``model`` (paired with ``reference``, the dense model, when given);
    a consumer whose rows cannot be captured (no Conv/Gemm/MatMul weight) is logged and left out. A consumer
    with too few rows is warned about once per ``warned`` (the consumers already named)."""
    warned = set() if warned is None else warned
    members = {(g.index, m.tensor, m.offset): m for g in groups for m in g.members if m.role == CONSUMER and m.weight}
    sources, skipped = layer_sources(model, list(dict.fromkeys(m.tensor for m in members.values())))
    for name, reason in skipped.items():
        log.info("consumer %s is not refitted: %s", name, reason)
    for source in sources:
        if source.groups != 1:  # a grouped Conv's rows do not spell its channels
            log.info("consumer %s is not refitted: a grouped Conv", source.name)
    sources = [s for s in sources if s.groups == 1]
    by_name = {s.name: s for s in sources}
    stats = capture_grams(model, calib, sources, batch_size=batch_size, reference=reference, max_rows=max_rows,
                          seed=seed) if sources else {}
    nodes = {n.name: n for n in model.graph.node}
    inits = {t.name: t for t in model.graph.initializer}
    readers = reader_counts(model.graph)
    sizes = {g.index: g.size for g in groups}
    found: dict[int, list[ConsumerInput]] = {g.index: [] for g in groups}
    for (index, tensor, _), member in members.items():
        source = by_name.get(tensor)
        columns = None if source is None else _columns(member, source, sizes[index])
        if columns is None:
            if source is not None:
                log.info("consumer %s of group %d is not refitted: its channel layout is not a row slice",
                         tensor, index)
            continue
        node = nodes[member.node]
        bias = _bias_of(node, inits, readers, source.d_out) if len(source.keys) == 1 else None
        gemm = node.op_type == "Gemm"
        width, stat = columns.size + 1, stats[tensor]
        if stat.paired and stat.n_rows < PAIRED_ROWS * width:
            log.info("consumer %s of group %d: %d calibration rows are too few to fit %d columns to the dense "
                     "model's output; it is fitted to the dense weights on its own inputs", tensor, index,
                     stat.n_rows, width)
            stat = stat.unpaired()
        found[index].append(ConsumerInput(member, source, stat, columns, bias,
                                          float(attr(node, "alpha", 1.0)) if gemm else 1.0,
                                          float(attr(node, "beta", 1.0)) if gemm else 1.0))
        if stat.n_rows < width and tensor not in warned:
            warned.add(tensor)
            log.warning("consumer %s of group %d sees %d calibration row(s) for %d columns: the refit is "
                        "underdetermined and the ridge decides it; pass more calibration samples",
                        tensor, index, stats[tensor].n_rows, width)
    return found


def ridge_solve(gram: np.ndarray, rhs: np.ndarray, start: np.ndarray, ridge: float,
                free_last: bool = True) -> np.ndarray:
    """``argmin_B tr(Bᵀ gram B) − 2 tr(Bᵀ rhs) + λ‖B − start‖²``, the last row (the bias) unpenalised when
    ``free_last``, with λ = ``ridge`` × the mean diagonal of ``gram`` (scale-free)."""
    penalty = np.ones(len(gram))
    if free_last:
        penalty[-1] = 0.0
    lam = ridge * max(float(np.mean(np.diag(gram)[penalty > 0])), 1e-30)
    lhs = gram + np.diag(lam * penalty)
    rhs = rhs + lam * penalty[:, None] * start
    try:
        return np.linalg.solve(lhs, rhs)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(lhs, rhs, rcond=None)[0]


def squared_error(gram: np.ndarray, cross: np.ndarray, target: float, weights: np.ndarray) -> float:
    """``‖Z B − T‖²`` from ``ZᵀZ``, ``ZᵀT`` and ``‖T‖²``."""
    return max(float(np.sum(weights * (gram @ weights)) - 2 * np.sum(weights * cross) + target), 0.0)


def _place_rows(array: np.ndarray, member: Member, keep: np.ndarray, rows: np.ndarray) -> None:
    """Write ``rows`` (one per kept channel, a slab row's entries) over channels ``keep`` of ``member``."""
    moved = np.moveaxis(array, member.axis, 0)
    block = member.block
    for row, channel in zip(rows, keep):
        start = member.offset + int(channel) * block
        moved[start:start + block] = row.reshape(moved[start:start + block].shape)


def _writable(updated: dict[str, np.ndarray], values: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The working copy of initializer ``name`` (copied from ``values`` on first use)."""
    if name not in updated:
        updated[name] = values[name].copy()
    return updated[name]


def refit_group(group: ChannelGroup, inputs: list[ConsumerInput], channel_map: ChannelMap, keep: np.ndarray,
                values: dict[str, np.ndarray], updated: dict[str, np.ndarray],
                ridge: float) -> tuple[ChannelMap, dict]:
    """Refit the group's consumers for the kept channels ``keep`` (column j of ``channel_map`` ↔ ``keep[j]``).

    The new consumer weights are written over the kept channels' slots in ``updated`` (working copies of
    ``values``, the dense initializers), every other consumer slab gets the plan's own rows there, and the
    returned map selects those slots on the consumer side. Also returns the relative reconstruction error
    of the consumers before and after the refit.
    """
    keep = np.asarray(keep)
    for member in {(m.tensor, m.axis, m.offset): m for m in group.members if m.role == CONSUMER}.values():
        slab = np.moveaxis(values[member.tensor], member.axis, 0)[member.offset:member.offset + group.size * member.block]
        rows = np.tensordot(channel_map.consumer, slab.reshape(group.size, -1).astype(np.float64), axes=(0, 0))
        _place_rows(_writable(updated, values, member.tensor), member, keep, rows)
    before = after = norm = 0.0
    for inp in inputs:
        gram, cross, target = inp.design(values)
        block, free = inp.block, len(keep) * inp.block
        expand = np.zeros((gram.shape[0], free + inp.intercept))
        expand[:group.size * block, :free] = np.kron(channel_map.producer, np.eye(block))
        if inp.intercept:
            expand[-1, -1] = 1.0
        gram, cross = expand.T @ gram @ expand, expand.T @ cross
        dense = inp.weight(values)[:, inp.columns.ravel()].T.reshape(group.size, block, -1)
        start = np.zeros_like(cross)
        start[:free] = np.einsum("nm,nkd->mkd", channel_map.consumer, dense).reshape(free, -1)
        solved = ridge_solve(gram, cross, start, ridge, free_last=inp.intercept)
        before += squared_error(gram, cross, target, start)
        after += squared_error(gram, cross, target, solved)
        norm += target
        weight = _writable(updated, values, inp.member.tensor)
        full = inp.source.to_groups(weight)
        full[0][:, inp.columns[keep].ravel()] = solved[:free].T / inp.alpha
        weight[...] = inp.source.from_groups(full).astype(weight.dtype)
        if inp.bias is not None:
            bias = _writable(updated, values, inp.bias)
            bias += (solved[-1] / inp.beta).astype(bias.dtype)
    report = {"consumers": len(inputs), "error_before": before / norm if norm else 0.0,
              "error_after": after / norm if norm else 0.0}
    return ChannelMap(channel_map.producer, ChannelMap.selection(group.size, keep).consumer), report


def with_initializers(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose named initializers hold ``arrays`` instead."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in out.graph.initializer:
        if tensor.name in arrays:
            tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arrays[tensor.name]), tensor.name))
    return out
