"""Graph surgery for structured pruning: rewrite every member of a channel group with a channel
map, fix the shape constants that spell channel counts, then re-run shape inference and the ONNX
checker. Names, opset, dynamic axes and metadata survive; only the tensors of pruned groups change
shape. (BatchNorm folding, done before the analysis, is in ``channels/batchnorm.py``.)"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.channels.model import CONSUMER, ChannelAnalysis, ChannelGroup, Member, ShapeFix
from onnxprune.errors import ModelError, first_line
from onnxprune.graph.protos import attr, names_in_use, opset_of, over_protobuf_limit, reader_counts, set_attr, unique_name

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ChannelMap:
    """How a group's n channels become m, along each member's channel axis: ``new = map.T @ old``.

    ``producer`` (n×m) rewrites producer and channelwise members (what writes a channel),
    ``consumer`` (n×m) rewrites consumer members (what reads it). Selection is a 0/1 map.
    """

    producer: np.ndarray
    consumer: np.ndarray

    @property
    def kept(self) -> int:
        return int(self.producer.shape[1])

    @classmethod
    def selection(cls, size: int, keep: np.ndarray) -> "ChannelMap":
        """Keep channels ``keep`` (in that order) unchanged and drop the rest."""
        matrix = np.zeros((size, len(keep)))
        matrix[np.asarray(keep), np.arange(len(keep))] = 1.0
        return cls(matrix, matrix)

    def in_place(self, keep: np.ndarray) -> "ChannelMap":
        """The n×n map that writes kept channel j (column j) to its own slot ``keep[j]`` and zeroes the
        dropped ones: at the dense shapes, the model computes what the pruned one does."""
        size, keep = self.producer.shape[0], np.asarray(keep)
        producer, consumer = np.zeros((size, size)), np.zeros((size, size))
        producer[:, keep], consumer[:, keep] = self.producer, self.consumer
        return ChannelMap(producer, consumer)


def member_slab(array: np.ndarray, member: Member, size: int) -> np.ndarray:
    """The ``size`` channels of ``member`` as rows: shape [size, entries per channel] (a view when possible)."""
    moved = np.moveaxis(array, member.axis, 0)
    return moved[member.offset:member.offset + size * member.block].reshape(size, -1)


def read_initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every initializer of the main graph as a numpy array, read once for all groups."""
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def group_slabs(values: dict[str, np.ndarray], group: ChannelGroup) -> list[tuple[Member, np.ndarray]]:
    """Every slab of ``group`` (a weight shared by several nodes once) with its channel rows, from
    the arrays in ``values``."""
    slabs = {}
    for member in group.members:
        slabs.setdefault((member.tensor, member.axis, member.offset),
                         (member, member_slab(values[member.tensor], member, group.size)))
    return list(slabs.values())


def _mix_rows(matrix: np.ndarray, slab: np.ndarray) -> np.ndarray:
    """``matrix.T @ slab`` over the leading axis, in float64, visiting only non-zero weights
    (a selection or an optimal-transport plan has about one per row)."""
    out = np.empty((matrix.shape[1],) + slab.shape[1:], dtype=np.float64)
    for column in range(matrix.shape[1]):
        rows = np.flatnonzero(matrix[:, column])
        out[column] = np.tensordot(matrix[rows, column], slab[rows].astype(np.float64), axes=(0, 0))
    return out


def _remap_axis(array: np.ndarray, axis: int, segments: list[tuple[int, int, int, np.ndarray]]) -> np.ndarray:
    """Rewrite the channel segments (offset, channels, block, map) along ``axis``; the rest stays."""
    moved = np.moveaxis(array, axis, 0)
    rest = moved.shape[1:]
    parts, position = [], 0
    for offset, size, block, matrix in sorted(segments, key=lambda s: s[0]):
        if offset < position:
            raise ModelError(f"overlapping channel segments along axis {axis} (internal error in the analysis)")
        parts.append(moved[position:offset])
        slab = moved[offset:offset + size * block].reshape(size, block, *rest)
        parts.append(_mix_rows(matrix, slab).astype(array.dtype).reshape(matrix.shape[1] * block, *rest))
        position = offset + size * block
    parts.append(moved[position:])
    return np.moveaxis(np.concatenate(parts, axis=0), 0, axis)


def _rewrite_members(graph: onnx.GraphProto, analysis: ChannelAnalysis, maps: dict[int, ChannelMap]) -> None:
    """Apply each group's map to every initializer slab holding its channels."""
    segments: dict[str, dict[int, dict[int, tuple[int, int, int, np.ndarray]]]] = defaultdict(lambda: defaultdict(dict))
    for index, channel_map in maps.items():
        group = analysis.groups[index]
        if not group.prunable:
            raise ModelError(f"channel group {index} cannot be pruned: {group.reason}")
        for member in group.members:
            matrix = channel_map.consumer if member.role == CONSUMER else channel_map.producer
            if matrix.shape[0] != group.size:
                raise ModelError(f"map for group {index} has {matrix.shape[0]} rows, the group {group.size} channels")
            # a weight shared by several nodes is one slab, rewritten once
            segments[member.tensor][member.axis][member.offset] = (member.offset, group.size, member.block, matrix)
    for tensor in graph.initializer:
        if tensor.name not in segments:
            continue
        array = numpy_helper.to_array(tensor)
        for axis, parts in segments[tensor.name].items():
            array = _remap_axis(array, axis, list(parts.values()))
        tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), tensor.name))


def _fix_values(fix: ShapeFix, kept: dict[int, int]) -> list[int]:
    """The new values a shape fix spells, counting each pruned group's kept channels."""
    return [sum(block * kept.get(group, size) for group, size, block in terms) for terms in fix.terms]


def _write_constant(graph: onnx.GraphProto, node: onnx.NodeProto, slot: int, value: np.ndarray,
                    readers: dict[str, int], taken: set[str]) -> None:
    """Put ``value`` at input ``slot`` of ``node``: in place, or as a copy when others read it too."""
    name = node.input[slot] if slot < len(node.input) else ""
    if name and readers.get(name, 0) <= 1:
        tensor = next(t for t in graph.initializer if t.name == name)
        tensor.CopyFrom(numpy_helper.from_array(value, name))
        return
    new_name = unique_name(taken, f"{name or node.name + '_split'}_pruned")
    graph.initializer.append(numpy_helper.from_array(value, new_name))
    if name:
        readers[name] -= 1
    while len(node.input) <= slot:
        node.input.append("")
    node.input[slot] = new_name


def _apply_fixes(model: onnx.ModelProto, analysis: ChannelAnalysis, kept: dict[int, int]) -> None:
    """Rewrite Reshape/Resize targets, depthwise ``group`` attributes and Split sizes."""
    graph = model.graph
    nodes = {n.name: n for n in graph.node}
    inits = {t.name: t for t in graph.initializer}
    readers = reader_counts(graph)
    taken = names_in_use(graph)
    opset = opset_of(model)
    entries: dict[tuple[str, int], dict[int, int]] = defaultdict(dict)
    for fix in analysis.fixes:
        values = _fix_values(fix, kept)
        node = nodes[fix.node]
        if fix.kind == "entry":
            entries[(fix.node, fix.slot)][fix.position] = values[0]
        elif fix.kind == "group":
            set_attr(node, "group", values[0])
        elif fix.kind == "split":
            sizes = np.asarray(values, dtype=np.int64)
            if attr(node, "split") is not None or opset < 13:
                set_attr(node, "split", [int(v) for v in values])
            else:
                _write_constant(graph, node, 1, sizes, readers, taken)
                kept_attributes = [a for a in node.attribute if a.name != "num_outputs"]
                del node.attribute[:]
                node.attribute.extend(kept_attributes)
    for (node_name, slot), positions in entries.items():
        node = nodes[node_name]
        original = numpy_helper.to_array(inits[node.input[slot]])
        value = original.reshape(-1).copy()
        for position, new in positions.items():
            value[position] = new
        _write_constant(graph, node, slot, value.reshape(original.shape).astype(original.dtype), readers, taken)


def masked_model(model: onnx.ModelProto, analysis: ChannelAnalysis, maps: dict[int, ChannelMap]) -> onnx.ModelProto:
    """A copy of ``model`` with each group's n×n map (``ChannelMap.in_place``) applied to its members: the
    pruned model's function under the dense tensor names and shapes, e.g. to capture its activations."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _rewrite_members(out.graph, analysis, maps)
    return out


def apply_channel_maps(model: onnx.ModelProto, analysis: ChannelAnalysis,
                       maps: dict[int, ChannelMap]) -> onnx.ModelProto:
    """A copy of ``model`` (the one ``analysis`` describes) with each mapped group rewritten.

    Every member slab is remapped, every dependent shape constant fixed, stale intermediate
    shapes dropped and re-inferred; the result passes ``onnx.checker`` with full shape checking.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _rewrite_members(out.graph, analysis, maps)
    kept = {index: m.kept for index, m in maps.items()}
    read_before = {name for node in out.graph.node for name in node.input}
    _apply_fixes(out, analysis, kept)
    read_after = {name for node in out.graph.node for name in node.input}
    for tensor in [t for t in out.graph.initializer if t.name in read_before - read_after]:
        out.graph.initializer.remove(tensor)
    del out.graph.value_info[:]
    if over_protobuf_limit(out):
        log.info("model over 2 GB: shape inference and checking are left to the saved file")
        return out
    try:
        onnx.checker.check_model(out, full_check=True)
        out = onnx.shape_inference.infer_shapes(out, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError, RuntimeError) as exc:
        first = first_line(exc)
        raise ModelError(f"the pruned graph is inconsistent: {first}") from None
    log.info("rewrote %d channel group(s)", len(maps))
    return out
