"""The driver of structured channel pruning, shared by every channel method: BatchNorm folding,
channel groups, importance, keep counts, a selector and a plan per group, an optional refit of the
consumers on calibration data (``reconstruction.py``), then the graph surgery."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx

from onnxprune.channels.analysis import analyse_channels
from onnxprune.channels.batchnorm import fold_batchnorms
from onnxprune.channels.model import ChannelGroup, Member
from onnxprune.channels.surgery import ChannelMap, apply_channel_maps, group_slabs, read_initializers
from onnxprune.data import Dataset
from onnxprune.errors import ConfigError
from onnxprune.methods.base import Interval, MethodConfig, MethodResult, OneOf
from onnxprune.methods.importance import IMPORTANCES, channel_importance
from onnxprune.methods.reconstruction import (RECONSTRUCT, ConsumerInput, add_consumer_biases, capture_inputs,
                                              refit_group, wants_reconstruction, with_initializers)

log = logging.getLogger(__name__)


@dataclass
class ChannelConfig(MethodConfig):
    """Options of structured channel pruning.

    ``sparsity``: fraction of each pruned group's channels to remove. ``group``: index of the one
    group to prune (as ``onnxprune inspect`` lists them); None (default) prunes every prunable
    group. ``round_to`` (default 1): keep a multiple of this many channels per group, e.g. 8 for
    hardware-friendly widths. ``importance`` (default 'l1'): channel score, 'l1'/'l2' norm of the
    BatchNorm-folded weights averaged over the group's members, 'taylor' (|w·∂L/∂w|, needs
    calibration data) or 'random' (seeded). ``reconstruct`` (default 'auto': on with calibration
    data): refit each group's consumers (kept input weights and bias) by ridge least squares to
    match the dense model's outputs on the calibration data; 'off' keeps the plan's weights.
    ``ridge`` (default 1e-4): the refit's ridge, relative to the mean diagonal of the Gram matrix.
    ``calib_rows`` (default 20000): about how many calibration rows (a Conv has one per output
    position and sample) each consumer's Gram matrix is summed over, a seeded random subset.
    """

    group: int | None = None
    round_to: int = 1
    importance: str = "l1"
    reconstruct: str = "auto"
    ridge: float = 1e-4
    calib_rows: int = 20_000

    constraints = {"group": Interval(0, None, what="a group index (an integer)"), "round_to": Interval(1, None),
                   "importance": OneOf(IMPORTANCES), "reconstruct": OneOf(RECONSTRUCT), "ridge": Interval(0.0, None),
                   "calib_rows": Interval(1, None, what="a row count (an integer)")}


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


@dataclass(frozen=True)
class GroupView:
    """What a selector and a plan see of one group: its member slabs (rows = channels) and channel
    scores, and its consumers' calibration Gram statistics (empty when nothing was captured) with the
    dense initializers they are read against."""

    group: ChannelGroup
    slabs: list[tuple[Member, np.ndarray]]
    scores: np.ndarray
    inputs: list[ConsumerInput]
    values: dict[str, np.ndarray]


# Picks the kept channel indices (ascending) of a group, given how many to keep.
SelectFn = Callable[[GroupView, int], np.ndarray]
# Builds a group's channel map from the kept channel indices.
PlanFn = Callable[[GroupView, np.ndarray], ChannelMap]


def select_top(view: GroupView, count: int) -> np.ndarray:
    """The ``count`` channels with the highest scores."""
    return top_channels(view.scores, count)


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
    """Structured pruning of one model at any sparsity: BatchNorm folding, the channel groups, the
    channel scores and the consumers' calibration Grams are computed once; each sparsity only selects
    channels, plans, refits and rewrites the graph. ``select`` picks a group's kept channels (it needs
    the Grams when ``needs_inputs``), ``plan`` builds its channel map; ``extra`` goes into every result's
    details."""

    def __init__(self, model: onnx.ModelProto, config: ChannelConfig, calib: Dataset | None, plan: PlanFn,
                 select: SelectFn = select_top, needs_inputs: bool = False, extra: dict | None = None) -> None:
        if needs_inputs and calib is None:
            raise ConfigError("this method selects channels on calibration data: pass --calib DATA.npz")
        self.config, self.calib, self.plan, self.select, self.extra = config, calib, plan, select, extra or {}
        self.reconstruct = wants_reconstruction(config.reconstruct, calib)
        self.needs_inputs = needs_inputs or self.reconstruct
        self.folded, self.folded_count = fold_batchnorms(model)
        self.analysis = analyse_channels(self.folded)
        self.biases_added = 0
        if self.reconstruct:
            self.folded, self.biases_added = add_consumer_biases(self.folded, self.analysis)
            if self.biases_added:
                self.analysis = analyse_channels(self.folded)
        self.values = read_initializers(self.folded)
        self.scores: dict[int, np.ndarray] = {}
        self.inputs: dict[int, list[ConsumerInput]] | None = None

    def expect(self, sparsities: Sequence[float]) -> None:
        pass

    def consumer_inputs(self) -> dict[int, list[ConsumerInput]]:
        """Every prunable group's consumers with their calibration Grams, captured once on the dense
        (BatchNorm-folded) model."""
        if self.inputs is None:
            self.inputs = capture_inputs(self.folded, self.analysis.prunable(), self.calib,
                                         self.config.calib_rows, self.config.seed)
        return self.inputs

    def prune(self, sparsity: float) -> MethodResult:
        """Select each target group's channels at ``sparsity``, let the plan map them, refit, rewrite."""
        config = dataclasses.replace(self.config, sparsity=sparsity)
        targets, skipped = _targets(self.analysis.groups, config)
        missing = [g for g in targets if g.index not in self.scores]
        if missing:
            self.scores.update(channel_importance(self.folded, self.values, missing, config.importance, self.calib,
                                                  config.seed))
        inputs = self.consumer_inputs() if self.needs_inputs else {}
        maps, report, updated = {}, [], {}
        for group in targets:
            view = GroupView(group, group_slabs(self.values, group), self.scores[group.index],
                             inputs.get(group.index, []), self.values)
            keep = self.select(view, kept_channels(group.size, config.sparsity, config.round_to))
            if len(keep) == group.size:
                continue
            maps[group.index] = self.plan(view, keep)
            entry = {"group": group.index, "size": group.size, "kept": len(keep), "producers": list(group.producers)}
            if self.reconstruct:
                maps[group.index], entry["reconstruction"] = refit_group(
                    group, view.inputs, maps[group.index], keep, self.values, updated, config.ridge)
            report.append(entry)
        source = with_initializers(self.folded, updated) if updated else self.folded
        pruned = apply_channel_maps(source, self.analysis, maps)
        details = {"importance": config.importance, "batchnorms_folded": self.folded_count,
                   "reconstruct": self.reconstruct, "groups": report, "skipped": skipped, **self.extra}
        if self.biases_added:
            details["biases_added"] = self.biases_added
        return MethodResult(pruned, details)
