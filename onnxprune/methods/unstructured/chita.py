"""CHITA and CHITA++ (Benbaki et al., ICML 2023): second-order unstructured pruning by combinatorial
optimisation on the empirical Fisher ``AᵀA/n``, A holding per-sample loss gradients.

Entry point: ``chita_session`` for both ``chita`` (one shot) and ``chita++`` (several stages of rising
sparsity, recomputing A and re-anchoring at the current weights each stage), with the whole-model or the
layer-wise engine. Results are new weights for the prunable initializers only; the graph is otherwise
untouched.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import onnx
import torch
from tqdm.auto import tqdm

from onnxprune.cluster import Cluster
from onnxprune.compute import free_memory, from_numpy, placed_on, torch_device
from onnxprune.methods.solvers.chita_problem import SupportConstraint, FisherProblem, Segment, mean_square_column, restrict_blocks
from onnxprune.methods.solvers import chita_solver as solver
from onnxprune.data import Dataset, check_dataset
from onnxprune.errors import ConfigError, ConversionError, DataError
from onnxprune.options import DEVICES, SEQUENTIAL
from onnxprune.units import format_bytes, parse_bytes
from onnxprune.view.fisher import (TARGETS, FlatLayout, choose_targets, gradient_matrix, matrix_bytes, plan_memory,
                                  resolve_rows)
from onnxprune.methods.base import Interval, MethodResult, OneOf, Parses, PruneSession, UnstructuredConfig
from onnxprune.methods.resume import ResumeStore, not_resumable
from onnxprune.methods.unstructured.layerwise import LayerwiseSession
from onnxprune.graph.prunable import PrunableWeight, input_axis, read_weights, select_prunable
from onnxprune.view.torchview import TorchView, build_torch_view, check_parity
from onnxprune.graph.edit import replace_initializers

log = logging.getLogger(__name__)

SCHEDULES = ("exp", "poly", "linear")
ENGINES = ("auto", "model", "layer")
DEFAULT_ROWS = 1000
DEFAULT_RIDGE = {"model": 0.3, "layer": 0.01}


@dataclass
class ChitaConfig(UnstructuredConfig):
    """Options of CHITA (meanings in ``onnxprune.options.GLOSSARY``); defaults as measured in
    ``tools/bench_chita.py``, ``bench_layerwise.py`` and ``bench_real.py``. Notes on the defaults:

    - ``engine`` 'auto': one-shot ``chita`` takes the layer engine (ahead of the whole-model one on every model
      measured: README's layer-wise and real-model tables); ``chita++`` takes the model engine when the torch
      view converts and passes parity (its stages recompute gradients), the layer engine otherwise. Options
      of one engine set with the other one chosen are refused (``MODEL_ENGINE_OPTIONS``, ``LAYER_ENGINE_OPTIONS``).
    - ``ridge`` None: 0.3 of the Fisher's mean diagonal for the model engine (large models want more: the
      rank-n Fisher says nothing about most directions), 0.01 of H's for the layer engine.
    - ``first_order`` off: the Newton step on the calibration loss diverged on well-fit models.
    - ``patience`` 0: IHT already jumps to the exact minimiser on a support that held for 3 iterations and
      stops at its fixed point (``chita_solver.REFIT_AFTER``); patience was measured before that, when it made
      CNN solves ~40% faster and moved results at 0.95+ both ways.
    - ``swap_rounds`` None: 1 with N:M, where every row takes a swap per round and is solved again, the
      bulk of the time (MiniLM-L3 at 2:4, 0/1/3 rounds: 62/107/188-205 s for mean cosine
      0.9898/0.9902/0.9907); 0 with a layer-wide budget, where a round is one swap per layer and its figures
      doubled the solve for a 1e-5 relative change of the layer's error (README).
    - ``reuse_gradients`` 0: on the CNN at 0.9 (its 10 stages move the weights by 0.07-0.4 each) reuse up to 0.2
      took 62 s for 96.13 % against 68-70 s for 96.15 %, and lcnet_ori kept its accuracy in half the time;
      ppocr_cls's 7-point loss at 0.7 was within its run-to-run spread, but CHITA++'s ``early_rows`` is as fast
      and was measured on more models (README).
    """

    engine: str = "auto"
    rows: int = 0
    samples: int = 0
    samples_per_row: int = 0
    targets: str = "auto"
    ridge: float | None = None
    first_order: bool = False
    block_size: int = 2000
    max_memory: str = "3G"
    active_ratio: float = 1.5
    max_iter: int = 100
    tol: float = 1e-5
    patience: int = 0
    sequential: str = "auto"
    batch_size: int = 64
    swap_rounds: int | None = None
    reuse_gradients: float = 0.0
    device: str = "auto"

    checks = {"engine": OneOf(ENGINES), "targets": OneOf(TARGETS), "ridge": Interval(0, None, "neither"),
              "rows": Interval(0, None), "samples": Interval(0, None), "block_size": Interval(0, None),
              "samples_per_row": Interval(0, None), "patience": Interval(0, None), "max_iter": Interval(1, None),
              "active_ratio": Interval(0, None), "tol": Interval(0, None, "neither"), "batch_size": Interval(1, None),
              "max_memory": Parses(parse_bytes), "reuse_gradients": Interval(0.0, None), "device": OneOf(DEVICES),
              "swap_rounds": Interval(0, None, what="a round count (an integer)"), "sequential": OneOf(SEQUENTIAL)}
    renamed = {"damp": "ridge"}

    def engine_ridge(self, engine: str) -> float:
        """The ridge the engine uses: the one given, else the engine's default."""
        return self.ridge if self.ridge is not None else DEFAULT_RIDGE[engine]


@dataclass
class ChitaPlusConfig(ChitaConfig):
    """CHITA++ adds stages of rising sparsity, each recomputing A at the current weights (model engine).
    ``early_rows`` 0.5: the early stages prune the least salient weights, where a coarser Fisher suffices: on
    the CNN at 0.9 it took 47-59 s against 67-73 s with all rows, and on CNN, MLP, ppocr_cls, ppocr_rec and
    lcnet_ori it kept accuracy within each model's run-to-run spread (README)."""

    stages: int = 10
    schedule: str = "exp"
    base_sparsity: float = 0.0
    early_rows: float = 0.5

    checks = {"stages": Interval(1, None), "schedule": OneOf(SCHEDULES), "base_sparsity": Interval(0.0, 1.0, "left"),
              "early_rows": Interval(0.0, 1.0, "right")}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.base_sparsity > self.sparsity:
            raise ConfigError(f"base_sparsity must be in [0, sparsity={self.sparsity}], not {self.base_sparsity}")


def schedule(kind: str, base: float, target: float, stages: int) -> list[float]:
    """The sparsity of every stage, from ``base`` (exclusive) to ``target``."""
    levels = []
    for stage in range(1, stages + 1):
        t = stage / stages
        if kind == "linear":
            levels.append(base + (target - base) * t)
        elif kind == "poly":
            levels.append(target + (base - target) * (1 - t) ** 3)
        else:
            levels.append(1 - (1 - base) * ((1 - target) / (1 - base)) ** t)
    levels[-1] = target
    return levels


@dataclass
class _Context:
    """What every stage shares: the model's prunable tensors, the torch view and the data."""

    weights: list[PrunableWeight]
    layout: FlatLayout
    view: TorchView
    calib: Dataset
    rows: int
    samples_per_row: int
    budget: int
    skipped: list[str]
    group: int  # M of an N:M pattern, else 1
    parity: float  # max |torch view − ORT| on calibration samples
    device: torch.device  # where the view, A and the solver live


def _check_calib(model: onnx.ModelProto, calib: Dataset | None) -> Dataset:
    """The calibration data, checked against the model's inputs (DataError otherwise)."""
    if calib is None:
        raise DataError("CHITA needs calibration data (inputs, optionally labels): pass --calib DATA.npz")
    return check_dataset(calib, model)


def _context(model: onnx.ModelProto, config: ChitaConfig, calib: Dataset | None) -> _Context:
    """Select the weights, build their flat layout and torch view, and size A; fails before heavy work."""
    device = torch_device(config.device)
    data = _check_calib(model, calib)
    weights = select_prunable(model, config.skip_first, config.skip_last)
    if not weights:
        raise ConfigError("the model has no prunable weights (Conv/Gemm/MatMul) left to prune")
    rows, per_row = resolve_rows(config.rows, len(data), config.samples_per_row, DEFAULT_ROWS)
    nm = config.nm()
    last_axis, skipped = {}, []
    for w in weights:
        if nm:
            axis = input_axis(model, w)
            if w.shape[axis] % nm[1]:
                skipped.append(w.name)
            last_axis[w.name] = axis
    if skipped:
        log.warning("pattern %s: %d tensor(s) whose input size is not a multiple of %d stay dense: %s",
                    config.pattern, len(skipped), nm[1], ", ".join(skipped))
    layout = FlatLayout({w.name: w.shape for w in weights}, last_axis)
    budget = parse_bytes(config.max_memory)
    free = free_memory(device)
    if free is not None and free < budget:  # A lives on the GPU: its free memory caps the budget
        log.info("max_memory %s capped to the %s free on %s", config.max_memory, format_bytes(free), device)
        budget = free
    plan_memory(rows, layout.size, budget)  # refuse a budget too small before building the view
    view = build_torch_view(model, [w.name for w in weights]).to(device)
    with placed_on(device):
        parity = check_parity(view, model, data).max_abs_diff  # gradients are only as good as the view
    log.info("CHITA runs its torch work on %s", device)
    return _Context(weights, layout, view, data, rows, per_row, budget, skipped, nm[1] if nm else 1, parity,
                    device)


def _constraint(ctx: _Context, sparsity: float, config: ChitaConfig, keep_per_group: int | None) -> SupportConstraint:
    """The feasible supports at ``sparsity``: global top-k, per-tensor top-k, or N:M per tensor."""
    slots = ctx.layout.slots
    if keep_per_group is not None:
        group = config.nm()[1]
        return SupportConstraint(tuple(
            Segment(s.offset, s.offset + s.size, s.size, s.size) if s.name in ctx.skipped
            else Segment(s.offset, s.offset + s.size, group, keep_per_group) for s in slots))
    if config.allocation == "uniform":
        return SupportConstraint(tuple(Segment(s.offset, s.offset + s.size, s.size,
                                                      int(math.floor((1 - sparsity) * s.size))) for s in slots))
    return SupportConstraint.top_k(ctx.layout.size, int(math.floor((1 - sparsity) * ctx.layout.size)))


def _blocks(ctx: _Context, start: int, stop: int, block_size: int) -> list[tuple[int, int]]:
    """Block-diagonal pieces of coordinates ``start:stop`` (re-indexed from 0): each tensor split into
    chunks of ``block_size``, rounded up to whole N:M groups."""
    group = ctx.group
    block_size = -(-block_size // group) * group
    blocks = []
    for s in ctx.layout.slots:
        lo, hi = max(start, s.offset), min(stop, s.offset + s.size)
        blocks += [(a - start, min(hi, a + block_size) - start) for a in range(lo, hi, block_size)]
    return blocks


@dataclass
class _GradientCache:
    """The gradient matrix of an earlier solve, kept for later ones: ``at`` holds the rows of coordinates
    ``index`` at the flat weights ``weights``. It is reused while the weights are within ``tolerance``
    (relative L2 distance) of those, for a subset of its coordinates: A changes smoothly with the weights."""

    tolerance: float
    weights: torch.Tensor | None = None
    mean_square: float = 0.0  # ‖A‖²_F / columns over all the columns of the range, stored or not
    index: torch.Tensor | None = None
    at: torch.Tensor | None = None

    def lookup(self, weights: torch.Tensor, index: torch.Tensor, rows: int) -> torch.Tensor | None:
        """The kept matrix's rows of coordinates ``index`` (sorted) when it has ``rows`` gradient rows and the
        weights are close enough, else None. Rows no longer asked for are dropped (supports only shrink
        along a path)."""
        if self.at is None:
            return None
        if self.at.shape[1] != rows:
            return self.drop()
        moved = float((weights - self.weights).norm()) / max(float(self.weights.norm()), 1e-30)
        log.debug("weights moved %.3f (relative L2) since the kept gradients; reused up to %.3f", moved, self.tolerance)
        if moved > self.tolerance:
            return self.drop()
        if not torch.equal(self.index, index):
            position = torch.searchsorted(self.index, index).clamp_max(self.index.numel() - 1)
            if not torch.equal(self.index[position], index):
                return self.drop()
            self.index, self.at = index, self.at[position]
        return self.at

    def drop(self) -> None:
        """Forget the kept matrix (before a new one is computed, so two are never held)."""
        self.weights = self.index = self.at = None
        self.mean_square = 0.0

    def store(self, weights: torch.Tensor, index: torch.Tensor, at: torch.Tensor, mean_square: float) -> None:
        self.weights, self.index, self.at, self.mean_square = weights, index, at, mean_square


def _support(anchor: torch.Tensor, part: SupportConstraint) -> torch.Tensor | None:
    """The nonzero coordinates of ``anchor`` when the problem can be restricted to them (fewer than all,
    no N:M groups, every segment's budget within its support), else None."""
    index = torch.nonzero(anchor).squeeze(1)
    if index.numel() == anchor.numel() or part.grouped:
        return None
    if any(s.keep > count for s, count in zip(part.segments, _counts(index, part))):
        return None
    return index


def _counts(index: torch.Tensor, part: SupportConstraint) -> list[int]:
    """How many of the coordinates ``index`` (sorted) fall in each segment of ``part``."""
    bounds = torch.searchsorted(index, torch.tensor([[s.start, s.stop] for s in part.segments]))
    return (bounds[:, 1] - bounds[:, 0]).tolist()


def _stage(ctx: _Context, config: ChitaConfig, current: dict[str, np.ndarray], constraint: SupportConstraint,
           stage: int, rows: int, cache: _GradientCache | None = None, nested: bool = False
           ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One CHITA solve around ``current``: gradients, IHT + backsolve per column range of the memory plan.
    ``cache`` gives and keeps the gradients when A fits in one pass. ``nested`` (CHITA++) solves over the
    weights ``current`` keeps only: pruned weights stay pruned, so A is built and searched on those
    columns alone, and IHT starts from the previous stage's support and weights. A is built from the first
    ``rows`` gradient rows."""
    anchor = from_numpy(ctx.layout.flatten(current))
    plan = plan_memory(rows, ctx.layout.size, ctx.budget)
    ranges = constraint.ranges(plan.columns_per_pass)
    cache = cache if len(ranges) == 1 else None  # gradients built in pieces are not kept: over the budget
    reference = constraint.project(anchor)  # budgets of column ranges when A is built in pieces
    params = {ctx.view.param_paths[n]: from_numpy(w.astype(np.float32, copy=False)) for n, w in current.items()}
    targets = None
    w = torch.zeros_like(anchor)
    info: dict[str, Any] = {"gradients_s": 0.0, "solve_s": 0.0, "passes": len(ranges), "rows": rows,
                            "matrix_bytes": matrix_bytes(rows, ctx.layout.size), "gradients_reused": 0,
                            "columns": 0}
    start_value = chita_value = 0.0
    for start, stop in ranges:
        began = time.perf_counter()
        part = constraint.window(start, stop, reference)
        index = _support(anchor[start:stop], part) if nested else None
        everything = torch.arange(start, stop)
        at = None if cache is None else cache.lookup(anchor, everything if index is None else index + start, rows)
        if at is None:
            square_sum = None if index is None else torch.zeros((), dtype=torch.float64)
            if targets is None:
                targets = choose_targets(ctx.view, params, ctx.calib, config.targets, config.seed + stage)
            at = gradient_matrix(ctx.view, ctx.layout, current, ctx.calib, targets, rows=rows,
                                 samples_per_row=ctx.samples_per_row, columns=(start, stop), index=index,
                                 square_sum=square_sum, progress=f"gradients (stage {stage + 1})")
            mean_square = mean_square_column(at) if index is None else float(square_sum) / (stop - start)
            if cache is not None:
                cache.store(anchor, everything if index is None else index + start, at, mean_square)
        else:
            mean_square = cache.mean_square
            info["gradients_reused"] += 1
        info["gradients_s"] += time.perf_counter() - began
        began = time.perf_counter()
        # λ relative to the Fisher's mean diagonal over all the range's weights, pruned ones included
        ridge = config.ridge * (mean_square or 1.0)  # all-zero gradients: magnitude pruning
        blocks = _blocks(ctx, start, stop, config.block_size) if config.block_size else None
        local = anchor[start:stop]
        if index is not None:
            blocks = restrict_blocks(blocks, index)[1] if blocks else None
            local, part = local[index], part.restrict(index)
        problem = FisherProblem.build(at, local, ridge, config.first_order, blocks)
        # an IHT restart pays off with the exact swap search of one-block problems; with blocks it was
        # measured at +0.1 point of accuracy for twice the time
        result = solver.chita(problem, part, active_ratio=config.active_ratio, max_iter=config.max_iter,
                              tol=config.tol, refinements=0 if blocks else 1, patience=config.patience)
        start_value += result.objectives[0]
        chita_value += result.objectives[-1]
        if index is None:
            w[start:stop] = result.w
        else:
            w[start + index] = result.w
        info["columns"] += problem.size
        info["solve_s"] += time.perf_counter() - began
        del at, problem
    info.update(ridge_relative=config.ridge, objective=chita_value, start_objective=start_value)
    return ctx.layout.unflatten(w.cpu().numpy()), info


def _levels(config: ChitaConfig) -> list[tuple[float, int | None]]:
    """(sparsity, N:M keep per group or None) of every stage."""
    nm = config.nm()
    target = 1 - nm[0] / nm[1] if nm else config.sparsity
    if nm and not math.isclose(target, config.sparsity):
        log.info("pattern %s sets the sparsity to %.3f (sparsity=%s is not used)", config.pattern, target,
                 config.sparsity)
    if isinstance(config, ChitaPlusConfig):
        levels = schedule(config.schedule, min(config.base_sparsity, target), target, config.stages)
    else:
        levels = [target]
    if not nm:
        return [(level, None) for level in levels]
    keeps = []
    for level in levels:
        keep = max(nm[0], min(nm[1] - 1, round(nm[1] * (1 - level))))
        if keep not in keeps:
            keeps.append(keep)
    if keeps[-1] != nm[0]:
        keeps.append(nm[0])
    return [(1 - keep / nm[1], keep) for keep in keeps]


def _depth(level: float) -> float:
    """How far a sparsity is along a pruning path: −log(density)."""
    return -math.log1p(-level)


def stage_rows(rows: int, config: ChitaConfig, level: float, base: float, target: float) -> int:
    """The gradient rows (of ``rows``) of a stage at sparsity ``level`` on the way from ``base`` to ``target``:
    CHITA++'s ``early_rows`` of them in the first half of the way (in log density), all of them otherwise."""
    if not isinstance(config, ChitaPlusConfig) or config.early_rows >= 1:
        return rows
    if _depth(level) - _depth(base) <= (_depth(target) - _depth(base)) / 2 + 1e-9:
        return max(1, round(config.early_rows * rows))
    return rows


def _path(levels: list[float], base: float, start: float, waypoints: Sequence[float]) -> list[float]:
    """The stage levels from ``start`` (``base`` or a kept stage) to ``levels[-1]`` (a schedule from
    ``base``): the schedule's levels above ``start`` with the waypoints in between, dropping a schedule
    level within half a stage (in log density) of a waypoint or of a kept start, so no stage is a sliver.
    From ``base`` without waypoints this is the schedule itself."""
    target = levels[-1]
    half = (_depth(target) - _depth(base)) / len(levels) / 2
    stops = [w for w in waypoints if start < w < target]
    marks = stops + ([start] if start > base else [])
    kept = [level for level in levels[:-1]
            if level > start and all(abs(_depth(level) - _depth(m)) >= half for m in marks)]
    return sorted(set(kept + stops + [target]))


class ChitaSession(PruneSession):
    """CHITA or CHITA++ on one model and calibration set, at any sparsity (sweeps, budget search).

    Built once: the weight selection, torch view and parity check. One-shot CHITA keeps the gradients
    at the trained weights (when they fit in one pass), so another sparsity costs one solve. CHITA++
    keeps every stage's weights; a call starts from the stage of highest sparsity not above the one
    asked for and runs the rest of that sparsity's own schedule, passing through the sparsities given
    to ``expect``. A fresh session therefore gives exactly the standalone result.
    """

    def __init__(self, model: onnx.ModelProto, config: ChitaConfig, calib: Dataset | None) -> None:
        config = dataclasses.replace(config, ridge=config.engine_ridge("model"))
        self.model, self.config = model, config
        self.ctx = _context(model, config, calib)
        names = [w.name for w in self.ctx.weights]
        self.original = read_weights(model, names)
        self.dense = {n: self.original[n].astype(np.float32) for n in names}
        self.staged = isinstance(config, ChitaPlusConfig)
        self.paths = self.staged and not config.pattern  # N:M stages go by keep counts, not sparsity paths
        self.base = config.base_sparsity if self.staged else 0.0
        self.checkpoints: dict[float, np.ndarray] = {}  # CHITA++ stage sparsity → flat weights
        self.waypoints: list[float] = []
        # one-shot CHITA reuses the gradients at the trained weights; CHITA++ those of nearby stages
        tolerance = config.reuse_gradients if self.staged else 0.0
        self.gradients = _GradientCache(tolerance) if tolerance or not self.staged else None
        self.stages_run = 0

    def expect(self, sparsities: Sequence[float]) -> None:
        self.waypoints = sorted(set(sparsities))

    def _checkpoint_bytes(self) -> int:
        return 4 * self.ctx.layout.size * len(self.checkpoints)

    def _remember(self, level: float, weights: dict[str, np.ndarray]) -> None:
        """Keep a stage's weights, dropping the oldest once they would take over a quarter of the memory budget."""
        while self.checkpoints and self._checkpoint_bytes() + 4 * self.ctx.layout.size > self.ctx.budget // 4:
            del self.checkpoints[next(iter(self.checkpoints))]
        if 4 * self.ctx.layout.size <= self.ctx.budget // 4:
            self.checkpoints[level] = self.ctx.layout.flatten(weights)

    def _start(self, target: float) -> tuple[float, dict[str, np.ndarray]]:
        """The stored stage of highest sparsity not above ``target`` (the trained weights at ``base``)."""
        below = [level for level in self.checkpoints if level <= target + 1e-9]
        if not self.paths or not below:
            return self.base, self.dense
        level = max(below)
        return level, self.ctx.layout.unflatten(self.checkpoints[level])

    def prune(self, sparsity: float) -> MethodResult:
        """The pruned model at ``sparsity`` (ignored with an N:M pattern, which sets its own)."""
        config = dataclasses.replace(self.config, sparsity=sparsity)
        levels = _levels(config)
        stages = []
        if levels[-1][0] > 0:
            start, current = self._start(levels[-1][0])
            if self.paths:
                path = _path([level for level, _ in levels], self.base, start, self.waypoints)
                levels = [(level, None) for level in path if level > start + 1e-9]
            for index, (level, keep) in enumerate(tqdm(levels, desc="CHITA stages", unit="stage", leave=False,
                                                       disable=True if len(levels) < 2 else None)):
                constraint = _constraint(self.ctx, level, config, keep)
                rows = stage_rows(self.ctx.rows, config, level, self.base, levels[-1][0])
                with placed_on(self.ctx.device):
                    current, info = _stage(self.ctx, config, current, constraint, self.stages_run, rows,
                                           self.gradients, nested=self.staged)
                self.stages_run += 1
                info.update(sparsity=level, kept=constraint.budget)
                log.info("stage %d/%d: sparsity %.4f, %d rows, gradients %.1fs, solve %.1fs, objective %.4g (start "
                         "%.4g)", index + 1, len(levels), level, rows, info["gradients_s"], info["solve_s"],
                         info["objective"], info["start_objective"])
                stages.append(info)
                if self.paths:
                    self._remember(level, current)
            if not levels:
                log.info("sparsity %.4f: re-using an earlier stage", sparsity)
        else:
            current = self.dense
        names = list(self.dense)
        pruned = replace_initializers(self.model, {n: current[n].astype(self.original[n].dtype) for n in names})
        ctx = self.ctx
        details = {"torch_parity_max_abs_diff": ctx.parity, "rows": ctx.rows, "samples_per_row": ctx.samples_per_row,
                   "weights": ctx.layout.size, "stages": stages, "gradients_s": sum(s["gradients_s"] for s in stages),
                   "solve_s": sum(s["solve_s"] for s in stages), "allocation": config.allocation,
                   "pattern": config.pattern or None, "dense_tensors": ctx.skipped,
                   "max_memory": format_bytes(ctx.budget), "device": str(ctx.device)}
        return MethodResult(pruned, details)


class _Engine(PruneSession):
    """A CHITA session of either engine whose results say which engine ran and why."""

    def __init__(self, session: PruneSession, engine: str, reason: str) -> None:
        self.session, self.engine, self.reason = session, engine, reason

    def expect(self, sparsities: Sequence[float]) -> None:
        self.session.expect(sparsities)

    def resume_from(self, store: ResumeStore) -> None:
        if self.engine != "layer":
            raise not_resumable(f"{self.method} (model engine)")
        self.session.resume_from(store)

    def spread_over(self, cluster: Cluster) -> bool:
        return self.session.spread_over(cluster)

    def prune(self, sparsity: float) -> MethodResult:
        result = self.session.prune(sparsity)
        result.details.update(engine=self.engine, engine_reason=self.reason)
        return result


# Options that only one engine reads (ChitaPlusConfig's own options are the model engine's too).
MODEL_ENGINE_OPTIONS = ("rows", "samples_per_row", "targets", "first_order", "block_size", "active_ratio", "tol",
                        "patience", "reuse_gradients", "stages", "schedule", "base_sparsity", "early_rows")
LAYER_ENGINE_OPTIONS = ("sequential", "batch_size", "swap_rounds")


def _set_options(config: ChitaConfig, names: Sequence[str]) -> list[str]:
    """Which of ``names`` (fields of ``config``) are set away from their defaults."""
    defaults = type(config)()
    return [n for n in names if hasattr(config, n) and getattr(config, n) != getattr(defaults, n)]


def _refuse_other_engine(config: ChitaConfig, engine: str) -> None:
    """ConfigError when options of the engine that will not run are set: an option must act or be refused."""
    other, names = ("model", MODEL_ENGINE_OPTIONS) if engine == "layer" else ("layer", LAYER_ENGINE_OPTIONS)
    given = _set_options(config, names)
    if given:
        hint = "add -O engine=model to use them" if other == "model" else "drop them or add -O engine=layer"
        raise ConfigError(f"{', '.join(given)} {'is an option' if len(given) == 1 else 'are options'} of CHITA's "
                          f"{other} engine, and the {engine} engine runs here: {hint}")


def _layer_session(model: onnx.ModelProto, config: ChitaConfig, calib: Dataset | None) -> LayerwiseSession:
    """CHITA's layer engine: IHT + swap search + backsolve per layer, OBS sweeps for the error curves."""
    from onnxprune.methods.solvers.layer_solver import solve_chita, solve_obs

    solver = functools.partial(solve_chita, max_iter=config.max_iter, swap_rounds=config.swap_rounds)
    return LayerwiseSession(model, config, calib, solver=solver, estimator=solve_obs,
                            ridge=config.engine_ridge("layer"), method="chita")


def chita_session(model: onnx.ModelProto, config: ChitaConfig, calib: Dataset | None) -> PruneSession:
    """The CHITA session of ``config.engine``; 'auto' takes the layer engine for one-shot CHITA, and for
    CHITA++ the model engine when the torch view converts and matches ONNX Runtime, the layer engine
    otherwise (its stages then do not apply, and the model engine's options set are named in a warning)."""
    staged = isinstance(config, ChitaPlusConfig)
    if config.engine == "layer" or (config.engine == "auto" and not staged):
        _refuse_other_engine(config, "layer")
        reason = ("engine=layer requested" if config.engine == "layer" else "one shot: per-layer reconstruction "
                  "from ONNX Runtime activations (engine=model for the whole-model Fisher)")
        return _Engine(_layer_session(model, config, calib), "layer", reason)
    _refuse_other_engine(config, "model")
    if config.engine == "model":
        return _Engine(ChitaSession(model, config, calib), "model", "engine=model requested")
    try:
        session = ChitaSession(model, config, calib)
    except ConversionError as exc:
        reason = f"torch view unusable ({exc}); layer-wise engine from ONNX Runtime activations"
        reason += " (one shot: CHITA++ stages do not apply)"
        ignored = _set_options(config, MODEL_ENGINE_OPTIONS)
        if ignored:
            reason += f"; {', '.join(ignored)} (model engine options) do not apply"
        log.warning("CHITA: %s", reason)
        return _Engine(_layer_session(model, config, calib), "layer", reason)
    return _Engine(session, "model", "the torch view converts and matches ONNX Runtime")
