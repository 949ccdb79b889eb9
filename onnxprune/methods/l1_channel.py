"""Structured channel pruning, the default baseline (``l1-channel``): in each channel group keep
the most important channels and drop the rest, physically shrinking every tensor involved.

The driver here (``ChannelSession``: BatchNorm folding, group analysis, importance, keep counts,
surgery) is shared with Intra-Fusion, which only replaces how the kept channels are computed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx

from onnxprune.channels.analysis import analyse_channels
from onnxprune.channels.batchnorm import fold_batchnorms
from onnxprune.channels.model import ChannelGroup, Member
from onnxprune.channels.surgery import ChannelMap, apply_channel_maps, group_slabs, member_slab, read_initializers
from onnxprune.data import Dataset
from onnxprune.errors import ConfigError
from onnxprune.methods.base import Interval, MethodConfig, MethodResult, OneOf

IMPORTANCES = ("l1", "l2", "taylor", "random")

# Builds a group's channel map from its member slabs, channel scores and the kept channel indices.
PlanFn = Callable[[ChannelGroup, list[tuple[Member, np.ndarray]], np.ndarray, np.ndarray], ChannelMap]


@dataclass
class ChannelConfig(MethodConfig):
    """Options of structured channel pruning.

    ``sparsity``: fraction of each pruned group's channels to remove. ``group``: index of the one
    group to prune (as ``onnxprune inspect`` lists them); None (default) prunes every prunable
    group. ``round_to`` (default 1): keep a multiple of this many channels per group, e.g. 8 for
    hardware-friendly widths. ``importance`` (default 'l1'): channel score, 'l1'/'l2' norm of the
    BatchNorm-folded weights averaged over the group's members, 'taylor' (|w·∂L/∂w|, needs
    calibration data) or 'random' (seeded).
    """

    group: int | None = None
    round_to: int = 1
    importance: str = "l1"

    constraints = {"group": Interval(0, None, what="a group index (an integer)"), "round_to": Interval(1, None), "importance": OneOf(IMPORTANCES)}


def kept_channels(size: int, sparsity: float, round_to: int = 1) -> int:
    """How many of ``size`` channels survive ``sparsity`` (rounded half up), rounded up to a
    multiple of ``round_to`` but never above ``size``; 0 means the group would vanish."""
    keep = size - int(np.floor(sparsity * size + 0.5))
    if keep <= 0:
        return 0
    return min(size, -(-keep // round_to) * round_to)


def top_channels(scores: np.ndarray, keep: int) -> np.ndarray:
    """Indices of the ``keep`` highest scores, ties to the lower index, in ascending order."""
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:keep])


def _slab_scores(slabs: list[np.ndarray], kind: str) -> np.ndarray:
    """Per-channel norm of each slab ('l1', 'l2' or 'sum' of saliencies), averaged over slabs."""
    if kind == "l2":
        per_member = [np.sqrt(np.sum(np.square(s, dtype=np.float64), axis=1)) for s in slabs]
    elif kind == "l1":
        per_member = [np.sum(np.abs(s), axis=1, dtype=np.float64) for s in slabs]
    else:
        per_member = [np.sum(s, axis=1, dtype=np.float64) for s in slabs]
    return np.mean(per_member, axis=0)


def _taylor_saliency(model: onnx.ModelProto, tensors: set[str], calib: Dataset) -> dict[str, np.ndarray]:
    """|w · ∂L/∂w| for each named weight, summed over the calibration data through the torch view.

    L is the cross-entropy of the first output against the labels, or against the model's own
    top-1 predictions when the data has none.
    """
    import torch

    from onnxprune.graph.prunable import find_prunable
    from onnxprune.threads import apply_to_torch
    from onnxprune.view.torchview import build_torch_view

    apply_to_torch()

    names = [w.name for w in find_prunable(model) if w.name in tensors]
    view = build_torch_view(model, weights=names)
    for start in range(0, len(calib), 64):
        batch = calib.take(64, start)
        inputs = [torch.from_numpy(np.ascontiguousarray(batch.inputs[n])) for n in view.input_names]
        logits = view(*inputs)[0]
        if logits.ndim != 2:
            raise ConfigError("importance 'taylor' needs a classifier whose first output is [N, classes]; "
                              "use --importance l1")
        target = torch.from_numpy(batch.labels.astype(np.int64)) if batch.labels is not None \
            else logits.argmax(dim=1).detach()
        torch.nn.functional.cross_entropy(logits, target, reduction="sum").backward()
    return {name: (p.detach() * p.grad).abs().numpy().astype(np.float64)
            for name, p in view.params.items() if p.grad is not None}


def channel_importance(model: onnx.ModelProto, values: dict[str, np.ndarray], groups: list[ChannelGroup],
                       kind: str, calib: Dataset | None = None, seed: int = 0) -> dict[int, np.ndarray]:
    """A non-negative score per channel for each group (higher = more important); ``values``
    holds the model's initializers."""
    if kind == "random":
        rng = np.random.default_rng(seed)
        return {g.index: rng.random(g.size) for g in groups}
    if kind == "taylor":
        if calib is None:
            raise ConfigError("importance 'taylor' needs calibration data (--calib)")
        values = _taylor_saliency(model, {m.tensor for g in groups for m in g.members if m.weight}, calib)
        kind = "sum"
    return {g.index: _slab_scores([member_slab(values[m.tensor], m, g.size) for m in g.members
                                   if m.weight and m.tensor in values], kind) for g in groups}


def _targets(groups: list[ChannelGroup], config: ChannelConfig) -> tuple[list[ChannelGroup], list[dict]]:
    """The groups to prune and, for whole-network pruning, the skipped ones with their reasons."""
    if config.group is not None:
        if config.group >= len(groups):
            raise ConfigError(f"group {config.group} does not exist; this model has {len(groups)} channel "
                              f"group(s), numbered 0 to {len(groups) - 1} (see onnxprune inspect)")
        group = groups[config.group]
        if not group.prunable:
            raise ConfigError(f"group {group.index} cannot be pruned: {group.reason}")
        if kept_channels(group.size, config.sparsity, config.round_to) == 0:
            raise ConfigError(f"sparsity {config.sparsity} would leave no channel in group {group.index} "
                              f"({group.size} channel(s)); use a lower sparsity")
        return [group], []
    targets, skipped = [], []
    for group in groups:
        if not group.prunable:
            skipped.append({"group": group.index, "size": group.size, "reason": group.reason})
        elif kept_channels(group.size, config.sparsity, config.round_to) == 0:
            skipped.append({"group": group.index, "size": group.size,
                            "reason": f"sparsity {config.sparsity} would leave no channel"})
        else:
            targets.append(group)
    return targets, skipped


class ChannelSession:
    """Structured pruning of one model at any sparsity: BatchNorm folding, the channel groups and the
    channel scores are computed once; each sparsity only picks channels, plans and rewrites the graph.
    ``plan`` builds a group's channel map; ``extra`` goes into every result's details."""

    def __init__(self, model: onnx.ModelProto, config: ChannelConfig, calib: Dataset | None, plan: PlanFn,
                 extra: dict | None = None) -> None:
        self.config, self.calib, self.plan, self.extra = config, calib, plan, extra or {}
        self.folded, self.folded_count = fold_batchnorms(model)
        self.analysis = analyse_channels(self.folded)
        self.values = read_initializers(self.folded)
        self.scores: dict[int, np.ndarray] = {}

    def expect(self, sparsities: Sequence[float]) -> None:
        pass

    def prune(self, sparsity: float) -> MethodResult:
        """Keep the best channels of each target group at ``sparsity``, let the plan map them, rewrite."""
        config = dataclasses.replace(self.config, sparsity=sparsity)
        targets, skipped = _targets(self.analysis.groups, config)
        missing = [g for g in targets if g.index not in self.scores]
        if missing:
            self.scores.update(channel_importance(self.folded, self.values, missing, config.importance, self.calib,
                                                  config.seed))
        maps, report = {}, []
        for group in targets:
            scores = self.scores[group.index]
            keep = top_channels(scores, kept_channels(group.size, config.sparsity, config.round_to))
            if len(keep) == group.size:
                continue
            maps[group.index] = self.plan(group, group_slabs(self.values, group), scores, keep)
            report.append({"group": group.index, "size": group.size, "kept": len(keep),
                           "producers": list(group.producers)})
        pruned = apply_channel_maps(self.folded, self.analysis, maps)
        return MethodResult(pruned, {"importance": config.importance, "batchnorms_folded": self.folded_count,
                                     "groups": report, "skipped": skipped, **self.extra})


def _selection_plan(group: ChannelGroup, slabs: list[tuple[Member, np.ndarray]], scores: np.ndarray,
                    keep: np.ndarray) -> ChannelMap:
    """Keep the chosen channels as they are."""
    return ChannelMap.selection(group.size, keep)


def l1_channel_session(model: onnx.ModelProto, config: ChannelConfig, calib: Dataset | None = None) -> ChannelSession:
    """A session that keeps the selected channels as they are."""
    return ChannelSession(model, config, calib, _selection_plan)

