"""The driver of structured channel pruning, shared by every channel method: BatchNorm folding,
channel groups, importance, keep counts, a selector and a plan per group, an optional refit of the
consumers on calibration data (``reconstruction.py``), then the graph surgery."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import onnx
from tqdm.auto import tqdm

from onnxprune.channels.analysis import analyse_channels
from onnxprune.cluster import Cluster, run_tasks
from onnxprune.channels.batchnorm import fold_batchnorms
from onnxprune.activations.layers import layer_sources
from onnxprune.channels.model import CONSUMER, ChannelGroup, Member
from onnxprune.channels.surgery import ChannelMap, apply_channel_maps, group_slabs, masked_model, read_initializers
from onnxprune.data import Dataset
from onnxprune.errors import ConfigError
from onnxprune.options import SEQUENTIAL
from onnxprune.threads import thread_count
from onnxprune.methods.base import Interval, MethodConfig, MethodResult, OneOf, PruneSession
from onnxprune.methods.structured.importance import IMPORTANCES, channel_importance
from onnxprune.methods.structured.reconstruction import (RECONSTRUCT, ConsumerInput, add_consumer_biases, capture_inputs,
                                              refit_group, wants_reconstruction, with_initializers)

log = logging.getLogger(__name__)


@dataclass
class ChannelConfig(MethodConfig):
    """Options of structured channel pruning (meanings in ``onnxprune.options.GLOSSARY``). ``sparsity`` is
    the fraction of each pruned group's channels to remove. With calibration data ``reconstruct`` and
    ``sequential`` ('auto') are on: each group's consumers are refitted by ridge least squares to the dense
    model's outputs, wave by wave on the model with the earlier waves pruned, so later refits absorb earlier
    errors; ``rows`` bounds each consumer's Gram matrix (a seeded random subset of the calibration rows; a
    Conv has one per output position and sample)."""

    group: int | None = None
    round_to: int = 1
    importance: str = "l1"
    reconstruct: str = "auto"
    ridge: float = 1e-4
    rows: int = 20_000
    samples: int = 0
    sequential: str = "auto"
    batch_size: int = 64

    checks = {"group": Interval(0, None, what="a group index (an integer)"), "round_to": Interval(1, None),
              "importance": OneOf(IMPORTANCES), "reconstruct": OneOf(RECONSTRUCT), "ridge": Interval(0.0, None),
              "rows": Interval(1, None, what="a row count (an integer)"), "samples": Interval(0, None),
              "sequential": OneOf(SEQUENTIAL), "batch_size": Interval(1, None)}
    renamed = {"calib_rows": "rows"}


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
# A group's error at each of the given keep counts (lower is better), for allocating widths to a target.
ErrorFn = Callable[[GroupView, Sequence[int]], list[float]]


def select_top(view: GroupView, count: int) -> np.ndarray:
    """The ``count`` channels with the highest scores."""
    return top_channels(view.scores, count)


def pruned_groups(groups: list[ChannelGroup], index: int | None) -> tuple[list[ChannelGroup], list[dict]]:
    """The prunable groups to prune (every one, or only group ``index``) and the unprunable ones with
    their reasons."""
    if index is not None:
        if index >= len(groups):
            raise ConfigError(f"group {index} does not exist; this model has {len(groups)} channel "
                              f"group(s), numbered 0 to {len(groups) - 1} (see onnxprune inspect)")
        if not groups[index].prunable:
            raise ConfigError(f"group {index} cannot be pruned: {groups[index].reason}")
        return [groups[index]], []
    return ([g for g in groups if g.prunable],
            [{"group": g.index, "size": g.size, "reason": g.reason} for g in groups if not g.prunable])


def _widths(groups: list[ChannelGroup], config: ChannelConfig) -> tuple[dict[int, int], list[dict]]:
    """Each target group's keep count at ``config.sparsity`` and the skipped groups with their reasons."""
    targets, skipped = pruned_groups(groups, config.group)
    widths = {}
    for group in targets:
        keep = kept_channels(group.size, config.sparsity, config.round_to)
        if keep > 0:
            widths[group.index] = keep
        elif config.group is not None:
            raise ConfigError(f"sparsity {config.sparsity} would leave no channel in group {group.index} "
                              f"({group.size} channel(s)); use a lower sparsity")
        else:
            skipped.append({"group": group.index, "size": group.size,
                            "reason": f"sparsity {config.sparsity} would leave no channel"})
    return widths, skipped


def score_errors(view: GroupView, counts: Sequence[int]) -> list[float]:
    """Data-free error proxy of keeping ``count`` channels: the share of the group's total importance
    that the removed channels carry."""
    shares = np.sort(view.scores)[::-1] / max(float(np.sum(view.scores)), 1e-300)
    return [float(np.sum(shares[count:])) for count in counts]


class ChannelSession(PruneSession):
    """Structured pruning of one model at any sparsity or per-group widths: BatchNorm folding, the channel
    groups, the channel scores and the consumers' calibration Grams are computed once; each call only
    selects channels (a group's selection at a width, and its error curve, are kept for the next call),
    plans, refits and rewrites the graph. ``select`` picks a group's kept channels (it needs the Grams when
    ``needs_inputs``), ``plan`` builds its channel map; ``errors``, where given, is the method's own error
    curve of a group with captured consumers (see ``width_errors``); ``extra`` goes into every result's
    details."""

    def __init__(self, model: onnx.ModelProto, config: ChannelConfig, calib: Dataset | None, plan: PlanFn,
                 select: SelectFn = select_top, needs_inputs: bool = False, extra: dict | None = None,
                 errors: ErrorFn | None = None) -> None:
        if needs_inputs and calib is None:
            raise ConfigError("this method selects channels on calibration data: pass --calib DATA.npz")
        if config.sequential == "on" and calib is None:
            raise ConfigError("sequential pruning captures each wave on calibration data: pass --calib DATA.npz "
                              "or use -O sequential=off")
        self.config, self.calib, self.plan, self.select, self.extra = config, calib, plan, select, extra or {}
        self.errors = errors
        self.selects_on_inputs = needs_inputs  # the selection itself reads the consumers' Grams (worth spreading)
        self.cluster: Cluster | None = None
        self.reconstruct = wants_reconstruction(config.reconstruct, calib)
        self.needs_inputs = needs_inputs or self.reconstruct
        # waves of captures on the partly pruned model: only where consumers are captured at all
        self.sequential = config.sequential != "off" and calib is not None and self.needs_inputs
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
        self.selections: dict[tuple[int, int], np.ndarray] = {}
        self.curves: dict[tuple[int, tuple[int, ...]], list[float]] = {}
        self.warned: set[str] = set()  # consumers already warned about (too few calibration rows)

    @property
    def round_to(self) -> int:
        return self.config.round_to

    def spread_over(self, cluster: Cluster) -> bool:
        """Select the channels of a wave's groups as tasks of ``cluster``, where the selection reads the consumers'
        Grams (chita-channel's); a selection by scores has nothing worth spreading."""
        if not self.selects_on_inputs:
            return False
        self.cluster = cluster
        return True

    def _select_on_ray(self, views: dict[int, GroupView], widths: dict[int, int]) -> dict[int, np.ndarray]:
        """Each view's kept channels at its width, selected as a Ray task; a task gets only the consumer weights
        the selection reads, not the model's."""
        def calls() -> Iterator[tuple]:
            for index, view in views.items():
                needed = {inp.member.tensor: view.values[inp.member.tensor] for inp in view.inputs}
                yield dataclasses.replace(view, values=needed), widths[index]

        found = run_tasks(self.select, calls(), total=len(views), threads=thread_count(),
                          desc=f"{self.method}: select")
        return dict(zip(views, found))

    def reference_model(self) -> onnx.ModelProto:
        return self.folded

    def consumer_inputs(self) -> dict[int, list[ConsumerInput]]:
        """Every prunable group's consumers with their calibration Grams, captured once on the dense
        (BatchNorm-folded) model."""
        if self.inputs is None:
            self.inputs = capture_inputs(self.folded, self.analysis.prunable(), self.calib,
                                         self.config.rows, self.config.seed,
                                         batch_size=self.config.batch_size, warned=self.warned)
        return self.inputs

    def target_groups(self) -> list[ChannelGroup]:
        """The groups a call may prune: every prunable one, or the configured ``group`` alone."""
        return pruned_groups(self.analysis.groups, self.config.group)[0]

    def _views(self, indices: Sequence[int],
               inputs: dict[int, list[ConsumerInput]] | None = None) -> dict[int, GroupView]:
        """What the selector and the plan see of each named group (scores and Grams computed on first use);
        ``inputs``: the consumers' statistics to use instead of the dense model's."""
        groups = [self.analysis.groups[i] for i in indices]
        missing = [g for g in groups if g.index not in self.scores]
        if missing:
            self.scores.update(channel_importance(self.folded, self.values, missing, self.config.importance,
                                                  self.calib, self.config.seed))
        if inputs is None:
            inputs = self.consumer_inputs() if self.needs_inputs else {}
        return {g.index: GroupView(g, group_slabs(self.values, g), self.scores[g.index], inputs.get(g.index, []),
                                   self.values) for g in groups}

    def _waves(self, indices: Sequence[int]) -> list[list[int]]:
        """The groups in the order sequential pruning takes them: by the topological wave of their first
        captured consumer (one wave when not sequential)."""
        if not self.sequential:
            return [list(indices)]
        from onnxprune.methods.unstructured.layerwise import waves

        consumers = {i: [m.tensor for m in self.analysis.groups[i].members if m.role == CONSUMER and m.weight]
                     for i in indices}
        sources, _ = layer_sources(self.folded, list(dict.fromkeys(t for ts in consumers.values() for t in ts)))
        wave_of = {s.name: k for k, wave in enumerate(waves(self.folded, sources)) for s in wave}
        first = {i: min((wave_of[t] for t in consumers[i] if t in wave_of), default=0) for i in indices}
        return [sorted(i for i in indices if first[i] == k) for k in sorted(set(first.values()))]

    def _wave_inputs(self, indices: list[int], maps: dict[int, ChannelMap],
                     keeps: dict[int, np.ndarray], updated: dict[str, np.ndarray]) -> dict[int, list[ConsumerInput]] | None:
        """The consumers of ``indices`` captured on the model with the groups in ``maps`` pruned (at the dense
        shapes), paired with the dense model; None (the dense capture) before any group is pruned."""
        if not maps:
            return None
        current = masked_model(with_initializers(self.folded, updated), self.analysis,
                               {i: m.in_place(keeps[i]) for i, m in maps.items()})
        return capture_inputs(current, [self.analysis.groups[i] for i in indices], self.calib,
                              self.config.rows, self.config.seed, batch_size=self.config.batch_size,
                              reference=self.folded, warned=self.warned)

    def _selection(self, view: GroupView, count: int) -> np.ndarray:
        """The group's kept channels at ``count``, selected once per group and count."""
        key = (view.group.index, count)
        if key not in self.selections:
            self.selections[key] = self.select(view, count)
        return self.selections[key]

    def prune(self, sparsity: float) -> MethodResult:
        """Every target group at ``sparsity`` (see ``prune_widths``)."""
        widths, skipped = _widths(self.analysis.groups, dataclasses.replace(self.config, sparsity=sparsity))
        return self.prune_widths(widths, skipped)

    def prune_widths(self, widths: dict[int, int], skipped: list[dict] | None = None) -> MethodResult:
        """Keep ``widths[g]`` channels of each group g: select them, let the plan map them, refit, rewrite.
        ``skipped`` (default: the unprunable groups) goes into the details as the groups left alone."""
        for index, count in widths.items():
            if not 0 <= index < len(self.analysis.groups):
                raise ConfigError(f"group {index} does not exist; this model has {len(self.analysis.groups)} "
                                  "channel group(s) (see onnxprune inspect)")
            group = self.analysis.groups[index]
            if not group.prunable or not 1 <= count <= group.size:
                raise ConfigError(f"group {index} ({group.size} channels) cannot keep {count} channel(s)"
                                  + ("" if group.prunable else f": {group.reason}"))
        maps, keeps, report, updated = {}, {}, [], {}
        passes = self._waves(sorted(widths))
        bar = tqdm(total=len(widths), desc=f"{self.method}: select and refit", unit="group", leave=False, disable=None)
        for wave in passes:
            inputs = self._wave_inputs(wave, maps, keeps, updated) if len(passes) > 1 else None
            views = self._views(wave, inputs)
            todo = {i: v for i, v in views.items() if inputs is not None or (i, widths[i]) not in self.selections}
            chosen = self._select_on_ray(todo, widths) if self.cluster is not None and len(todo) > 1 else {}
            if inputs is None:  # selections on the dense model's Grams are kept for the next call
                self.selections.update({(i, widths[i]): keep for i, keep in chosen.items()})
            for index, view in views.items():
                bar.update()
                group = view.group
                if index in chosen:
                    keep = chosen[index]
                else:
                    keep = self._selection(view, widths[index]) if inputs is None else self.select(view, widths[index])
                if len(keep) == group.size:
                    continue
                maps[index], keeps[index] = self.plan(view, keep), keep
                entry = {"group": index, "size": group.size, "kept": len(keep), "producers": list(group.producers)}
                if self.reconstruct:
                    maps[index], entry["reconstruction"] = refit_group(
                        group, view.inputs, maps[index], keep, self.values, updated, self.config.ridge)
                report.append(entry)
        bar.close()
        source = with_initializers(self.folded, updated) if updated else self.folded
        pruned = apply_channel_maps(source, self.analysis, maps)
        if skipped is None:
            skipped = pruned_groups(self.analysis.groups, None)[1]
        details = {"importance": self.config.importance, "batchnorms_folded": self.folded_count,
                   "reconstruct": self.reconstruct, "groups": report, "skipped": skipped, **self.extra}
        if self.sequential:
            details["sequential_passes"] = len(passes)
        if self.cluster is not None:
            details["ray"] = self.cluster.describe()
        if self.biases_added:
            details["biases_added"] = self.biases_added
        return MethodResult(pruned, details)

    def shape_model(self, widths: dict[int, int]) -> onnx.ModelProto:
        """The folded model with each group's first ``widths[g]`` channels kept as they are: the pruned
        model's shapes (and so its MACs and latency) without selecting or refitting anything."""
        maps = {index: ChannelMap.selection(self.analysis.groups[index].size, np.arange(count))
                for index, count in widths.items()}
        return apply_channel_maps(self.folded, self.analysis, maps)

    def width_errors(self, index: int, counts: Sequence[int]) -> list[float]:
        """Group ``index``'s error at each keep count in ``counts`` (computed once per group and counts): the
        method's own curve (``errors``) or, when reconstructing, the relative error of its consumers after the
        refit, for a group with captured consumers; otherwise the share of importance removed (``score_errors``)."""
        key = (index, tuple(counts))
        if key not in self.curves:
            view = self._views([index])[index]
            if view.inputs and self.errors is not None:
                self.curves[key] = [float(e) for e in self.errors(view, counts)]
            elif view.inputs and self.reconstruct:
                self.curves[key] = [self._refit_error(view, count) for count in counts]
            else:
                self.curves[key] = score_errors(view, counts)
        return self.curves[key]

    def _refit_error(self, view: GroupView, count: int) -> float:
        """Relative reconstruction error of the group's consumers after the refit at ``count`` channels."""
        keep = self._selection(view, count)
        _, report = refit_group(view.group, view.inputs, self.plan(view, keep), keep, self.values, {},
                                self.config.ridge)
        return float(report["error_after"])
