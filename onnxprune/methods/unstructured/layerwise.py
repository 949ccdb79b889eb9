"""The layer-wise engine shared by ``sparsegpt``, ``wanda`` and CHITA's ``engine=layer``: capture every
prunable layer's ``H = XᵀX`` through ONNX Runtime, then prune each layer to minimise its reconstruction
error ``‖(W − W̄)Xᵀ‖²`` with a per-layer solver. No torch view of the model is needed.

Budgets: ``uniform`` (every layer at the target sparsity) or ``global``: each layer's relative error
``‖(W − W̄)Xᵀ‖²/‖W̄Xᵀ‖²`` is evaluated on a grid of sparsities with the fast solver, then per-layer
sparsities are chosen greedily (always advancing the layer with the smallest error increase per pruned
weight) until the total count is reached. ``sequential``: layers are pruned in topological waves, each
wave's H captured from the model with the earlier waves already pruned (SparseGPT's protocol).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import onnx
from tqdm.auto import tqdm

from onnxprune.activations.gram import GramStats, capture_grams, resident_bytes
from onnxprune.activations.gram_store import GramStore, capture_to_store, gram_bytes
from onnxprune.activations.layers import LayerSource, layer_sources
from onnxprune.cluster import Cluster, run_tasks
from onnxprune.compute import placed_on, torch_device
from onnxprune.data import Dataset, check_dataset
from onnxprune.errors import ConfigError, DataError, ResourceError
from onnxprune.graph.edit import replace_initializers
from onnxprune.graph.prunable import read_weights, select_prunable, weight_layouts
from onnxprune.graph.protos import serialized_bytes
from onnxprune.methods.base import Interval, MethodResult, OneOf, Parses, PruneSession, UnstructuredConfig, parse_pattern
from onnxprune.methods.resume import ResumeStore
from onnxprune.options import DEVICES, SEQUENTIAL
from onnxprune.threads import thread_count
from onnxprune.units import format_bytes, parse_bytes

log = logging.getLogger(__name__)

# At most this many capture passes in sequential mode: consecutive waves are merged beyond it.
MAX_PASSES = 16
# Sparsities at which the global allocation evaluates every layer's error curve (plus the target and the
# midpoint above it); the error is linear in between, and exactly 0 at 0.
GRID = tuple(round(0.1 * i, 2) for i in range(10))

# What a layer's sparsity budget is counted over: the whole weight or each output row.
SCOPES = ("layer", "row")
# (one layer group's LayerProblem, its LayerTarget) → pruned W (float64 numpy).
LayerSolver = Callable[[Any, Any], np.ndarray]


class LayerOptions(Protocol):
    """The options the engine reads (``LayerwiseConfig`` and ``ChitaConfig`` both have them)."""

    sparsity: float
    allocation: str
    pattern: str
    skip_first: bool
    skip_last: bool
    sequential: str
    batch_size: int
    max_memory: str
    device: str


@dataclass
class LayerwiseConfig(UnstructuredConfig):
    """Options of the layer-wise methods. ``allocation`` is 'uniform' by default (the published one; 'global'
    chooses per-layer sparsities from each layer's error curve, see the module doc) and ignored with a
    ``pattern``; ``sequential`` 'auto' is off; ``max_memory``: the process is kept within it where it can be
    (capture in passes, the batch lowered, Gram matrices on disk, fewer solver factors kept) and refused when
    it cannot hold one layer's solve; ``device`` is where the per-layer solves run."""

    allocation: str = "uniform"
    sequential: str = "auto"
    batch_size: int = 64
    max_memory: str = "4G"
    samples: int = 0
    device: str = "auto"

    checks = {"batch_size": Interval(1, None), "max_memory": Parses(parse_bytes), "samples": Interval(0, None),
              "device": OneOf(DEVICES), "sequential": OneOf(SEQUENTIAL)}


def waves(model: onnx.ModelProto, sources: list[LayerSource]) -> list[list[LayerSource]]:
    """The sources grouped by topological wave: a layer's wave is the number of pruned layers on the
    longest path before its input, so a wave only depends on earlier waves; merged to ≤ MAX_PASSES."""
    weight_of = {s.name: s for s in sources}
    depth: dict[str, int] = {}
    wave: dict[str, int] = {}
    for node in model.graph.node:
        level = max((depth.get(t, 0) for t in node.input), default=0)
        weight = next((weight_of[t] for t in node.input if t in weight_of), None)
        if weight is not None:
            wave[weight.name] = max(wave.get(weight.name, 0), level)
            level += 1
        for out in node.output:
            depth[out] = level
    count = max(wave.values(), default=-1) + 1
    per_pass = -(-count // MAX_PASSES) if count else 1
    grouped: list[list[LayerSource]] = [[] for _ in range(-(-count // per_pass))]
    for s in sources:
        grouped[wave[s.name] // per_pass].append(s)
    return [g for g in grouped if g]


# (layer name) → that layer's LayerProblems (one per group).
ProblemSource = Callable[[str], list[Any]]


def _layer_problems(dense: np.ndarray, gram: GramStats, lam: float, order: np.ndarray | None = None) -> list[Any]:
    """One LayerProblem per group of a layer (``dense`` [groups, d_out, d_in]); ``order``: H's rows and columns
    reordered as the weights' inputs were."""
    from onnxprune.methods.solvers.layer_solver import LayerProblem

    return [LayerProblem(w, h if order is None else h[np.ix_(order, order)], lam, gram.n_rows)
            for w, h in zip(dense, gram.H)]


# A layer's solve holds about this many matrices the size of its Gram besides it (H + λI, factors, Hs).
_FACTORS_PER_GRAM = 4


def _solve_bytes(source: LayerSource) -> int:
    """What one layer's solve holds: its Gram and the solver's factors."""
    return (1 + _FACTORS_PER_GRAM) * gram_bytes(source)


def _refuse_small_budget(sources: list[LayerSource], budget: int) -> None:
    """ResourceError before any work when the largest layer's solve (``_solve_bytes``) exceeds ``budget``:
    every other Gram can wait on disk, that one layer cannot."""
    largest = max(sources, key=gram_bytes)
    need = _solve_bytes(largest)
    if need > budget:
        raise ResourceError(f"layer {largest.name} ({largest.d_in} inputs) needs about {format_bytes(need)} to solve "
                            f"(its Gram matrices {format_bytes(gram_bytes(largest))} and the solver's factors) and "
                            f"--max-memory is {format_bytes(budget)}: raise --max-memory to at least that")


def _problem_bytes(problems: list[Any]) -> int:
    """Bytes of the tensors a layer's LayerProblems hold now (their factors included)."""
    total = 0
    for problem in problems:
        for value in vars(problem).values():
            tensor = getattr(value, "X", value)  # a LowRankGram holds its factor X
            if hasattr(tensor, "element_size"):
                total += tensor.numel() * tensor.element_size()
    return total


class ProblemCache:
    """Layers' LayerProblems (their factors made on first use) within ``capacity`` bytes, the least recently
    used dropped first and the last one always kept: the global allocation revisits each layer a few times,
    and a dropped layer's factors are made again on its next visit (the same numbers)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, list[Any]] = OrderedDict()

    def get(self, name: str) -> list[Any] | None:
        found = self._entries.get(name)
        if found is not None:
            self._entries.move_to_end(name)
        return found

    def put(self, name: str, problems: list[Any]) -> list[Any]:
        """Keep ``problems`` as the most recent entry, dropping old ones beyond the capacity."""
        self._entries[name] = problems
        self.fit(self.capacity)
        return problems

    def fit(self, capacity: int) -> None:
        """Set the capacity and drop the least recently used entries beyond it."""
        self.capacity = capacity
        sizes = {key: _problem_bytes(entry) for key, entry in self._entries.items()}
        while len(self._entries) > 1 and sum(sizes.values()) > self.capacity:
            sizes.pop(self._entries.popitem(last=False)[0])

    @property
    def held_bytes(self) -> int:
        """Bytes the cached problems hold now."""
        return sum(_problem_bytes(entry) for entry in self._entries.values())

    def clear(self) -> None:
        self._entries.clear()

    def __contains__(self, name: str) -> bool:
        return name in self._entries


@dataclass
class ErrorCurves:
    """Relative reconstruction error of each layer pruned by ``solver`` at each target, solved on first use
    (the allocation only looks one grid step past each layer's level) and kept in ``known`` (by layer and
    sparsity, so a session's later sparsities re-use the points); 0 at sparsity 0. ``bar`` counts the solves;
    ``problems`` gives each layer's LayerProblems (whose factors every solve of the layer shares). A layer
    met again after its problems left the cache (``cached``) has the rest of its curve solved at once:
    remaking its factors costs more than a point (BERT-base's FFN outputs: 2.5 s against 0.6 s)."""

    sources: list[LayerSource]
    solver: LayerSolver
    problems: ProblemSource
    targets: list[Any]
    bar: Any
    known: dict[tuple[int, float], float] = field(default_factory=dict)
    record: Callable[[], None] = lambda: None  # called after each new point (a resumable run stores them)
    cached: Callable[[str], bool] = lambda name: True

    def __call__(self, layer: int, level: int) -> float:
        target = self.targets[level]
        if (layer, target.sparsity) not in self.known:
            levels = [level]
            revisit = any((layer, t.sparsity) in self.known for t in self.targets if t.sparsity > 0)
            if revisit and not self.cached(self.sources[layer].name):
                levels = [i for i in range(level, len(self.targets))
                          if (layer, self.targets[i].sparsity) not in self.known]
            for i in levels:
                self.known[layer, self.targets[i].sparsity] = self._solve(layer, self.targets[i])
                self.record()
        return self.known[layer, target.sparsity]

    def _solve(self, layer: int, target: Any) -> float:
        if target.sparsity <= 0:
            return 0.0
        problems = self.problems(self.sources[layer].name)
        energy = max(sum(p.dense_energy for p in problems), 1e-300)
        self.bar.update(1)
        error = sum(p.error(self.solver(p, target)) for p in problems) / energy
        for problem in problems:  # kept for the layer's next points, which need the sweep's factor only
            problem.drop_ridged()
        return error


def _solve_problems(problems: list[Any], solver: LayerSolver, target: Any) -> tuple[np.ndarray, float]:
    """A layer's groups pruned by ``solver`` and their reconstruction error relative to the dense output's."""
    new = np.stack([solver(p, target) for p in problems])
    relative = sum(p.error(n) for p, n in zip(problems, new)) / max(sum(p.dense_energy for p in problems), 1e-300)
    return new, relative


def _in_order(groups: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    """Groups solved with their columns in ``order`` put back in the weight's own column order."""
    if order is None:
        return groups
    restored = np.empty_like(groups)
    restored[:, :, order] = groups
    return restored


def solve_layer_task(dense: np.ndarray, gram: GramStats, target: Any, lam: float, order: np.ndarray | None,
                     solver: LayerSolver, device: str) -> tuple[np.ndarray, float, float]:
    """One layer solved from scratch where a Ray task runs it: its pruned groups (in the weight's column order),
    relative error and seconds. The same numbers as ``LayerwiseSession._solve_layer`` (whose cached factors are
    made the same way)."""
    began = time.perf_counter()
    if not target.prunes_any(*dense.shape[1:]):
        return _in_order(np.asarray(dense, dtype=np.float64), order), 0.0, 0.0
    with placed_on(torch_device(device)):
        new, relative = _solve_problems(_layer_problems(dense, gram, lam, order), solver, target)
    return _in_order(new, order), relative, time.perf_counter() - began


def allocate_sparsities(errors: Callable[[int, int], float], grid: np.ndarray, sizes: np.ndarray, sparsity: float) -> np.ndarray:
    """Per-layer sparsities with ``Σ sizes·s = sparsity·Σ sizes``: from 0, repeatedly move the layer whose
    next grid step costs the least error per pruned weight (``errors(layer, grid index)``); the last move
    stops part-way."""
    need = sparsity * sizes.sum()
    level = np.zeros(len(sizes), dtype=int)
    chosen = np.zeros(len(sizes))
    last = len(grid) - 1
    while need > 1e-9:
        cost = np.array([(errors(i, level[i] + 1) - errors(i, level[i])) / max((grid[level[i] + 1] - grid[level[i]])
                                                                               * sizes[i], 1e-300)
                         if level[i] < last else np.inf for i in range(len(sizes))])
        if not np.isfinite(cost).any():
            break
        layer = int(np.argmin(cost))
        gained = (grid[level[layer] + 1] - grid[level[layer]]) * sizes[layer]
        if gained >= need:
            chosen[layer] = grid[level[layer]] + need / sizes[layer]
            break
        need -= gained
        level[layer] += 1
        chosen[layer] = grid[level[layer]]
    return chosen


class LayerwiseSession(PruneSession):
    """A layer-wise method on one model and calibration set. The dense model's Gram matrices are captured
    once (the wave-by-wave captures of ``sequential`` depend on the sparsity and are repeated) and every
    error-curve point is kept, so a later sparsity re-solves each layer only. With a Ray cluster in use, the
    layers of a wave are solved as its tasks (the error curves of the global allocation stay here)."""

    def __init__(self, model: onnx.ModelProto, config: LayerOptions, calib: Dataset | None, *, solver: LayerSolver,
                 estimator: LayerSolver, ridge: float | None, scope: str = "layer", method: str = "layerwise") -> None:
        if calib is None:
            raise DataError(f"{method} needs calibration data (inputs): pass --calib DATA.npz")
        self.calib = check_dataset(calib, model)
        self.model, self.config = model, config
        self.solver, self.estimator, self.ridge, self.scope, self.method = solver, estimator, ridge, scope, method
        names = [w.name for w in select_prunable(model, config.skip_first, config.skip_last)]
        if not names:
            raise ConfigError("the model has no prunable weights (Conv/Gemm/MatMul) left to prune")
        self.sources, self.skipped = layer_sources(model, names)
        for name, reason in self.skipped.items():
            log.warning("layer %s stays dense: %s", name, reason)
        self.nm = parse_pattern(config.pattern)
        if self.nm:
            for s in list(self.sources):
                if s.channel_width % self.nm[1]:
                    self.skipped[s.name] = (f"{s.channel_width} input channels are not a multiple of {self.nm[1]} "
                                            f"({config.pattern})")
                    self.sources.remove(s)
        self.budget = parse_bytes(config.max_memory)
        self.device = torch_device(config.device)
        self.sequential = config.sequential == "on"
        # each weight's shape and dtype; its values are read from the model when its layer is solved (BERT-base:
        # 340 MB not held for the whole run)
        self.layouts = weight_layouts(model, [s.name for s in self.sources])
        self.source_of = {s.name: s for s in self.sources}
        self.grams: GramStore | None = None  # of the dense model
        # layers' LayerProblems on the dense model's Grams, bounded before each solve (``_fit_problems``)
        self.problems = ProblemCache(self.budget)
        self.curves: dict[tuple[int, float], float] = {}  # error-curve points, by layer and sparsity
        self.singular: set[str] = set()  # layers already warned about
        self.capture_s = 0.0
        self.capture_passes = 0  # of the dense model's capture, in this prune call
        self.store: ResumeStore | None = None
        self.cluster: Cluster | None = None

    def spread_over(self, cluster: Cluster) -> bool:
        self.cluster = cluster
        return True

    def resume_from(self, store: ResumeStore) -> None:
        """Store every finished layer and error-curve point in ``store``; take the curve points it holds."""
        self.store = store
        found = store.read("curves")
        if found is not None:
            index = {s.name: i for i, s in enumerate(self.sources)}
            self.curves.update({(index[name], sparsity): error for name, sparsity, error in found[1]["points"]
                                if name in index})
        log.info("resume: %s holds %d error-curve points", store.folder, len(self.curves))

    def _record_curves(self) -> None:
        if self.store is not None:
            points = [[self.sources[layer].name, sparsity, error] for (layer, sparsity), error in self.curves.items()]
            self.store.write("curves", {}, {"points": points})

    def _capture(self, model: onnx.ModelProto, sources: list[LayerSource]) -> dict[str, GramStats]:
        began = time.perf_counter()
        grams = capture_grams(model, self.calib, sources, batch_size=self.config.batch_size, max_memory=self.budget,
                              count_resident=True)
        self.capture_s += time.perf_counter() - began
        return grams

    def _dense_grams(self) -> GramStore:
        """The dense model's Grams, captured on first use in as many passes as the budget needs; those that do
        not fit beside the largest layer's solve are kept on disk."""
        if self.grams is None:
            began = time.perf_counter()
            _refuse_small_budget(self.sources, self.budget)
            largest = max(gram_bytes(s) for s in self.sources)
            self.grams = GramStore(self.budget, reserve=_FACTORS_PER_GRAM * largest)
            self.capture_passes = capture_to_store(self.model, self.calib, self.sources, self.grams,
                                                   batch_size=self.config.batch_size, max_memory=self.budget,
                                                   model_bytes=self.model_bytes)
            if self.grams.spilled:
                log.info("%d of %d Gram matrices kept on disk (--max-memory %s)", self.grams.spilled,
                         len(self.grams), format_bytes(self.budget))
            self.capture_s += time.perf_counter() - began
        return self.grams

    def _lams(self, grams: dict[str, GramStats]) -> dict[str, float]:
        """Each layer's ridge λ; a layer with fewer calibration rows than inputs (H singular) is named once."""
        from onnxprune.methods.solvers.layer_solver import layer_ridge

        for name, gram in grams.items():
            d = gram.H.shape[-1]
            if self.ridge and gram.n_rows < d and name not in self.singular:
                self.singular.add(name)
                log.warning("layer %s: %d calibration rows for %d inputs, so H is singular; the ridge (%g) "
                            "regularises it: give more calibration data for a better solve", name, gram.n_rows, d,
                            self.ridge)
        return {n: layer_ridge(g.H, self.ridge) if self.ridge else 0.0 for n, g in grams.items()}

    def _targets(self, sparsity: float) -> dict[str, Any]:
        """Every layer's LayerTarget: N:M, the uniform sparsity, or the global allocation from error curves."""
        from onnxprune.methods.solvers.layer_solver import LayerTarget

        if self.nm:
            return {s.name: LayerTarget(1 - self.nm[0] / self.nm[1], self.nm, self.scope) for s in self.sources}
        if self.config.allocation == "uniform" or sparsity == 0:
            return {s.name: LayerTarget(sparsity, None, self.scope) for s in self.sources}
        grid = np.unique(np.r_[GRID, sparsity, (1 + sparsity) / 2])
        sizes = np.array([np.prod(self.layouts[s.name][0]) for s in self.sources], dtype=float)
        with placed_on(self.device), tqdm(desc="error curves", unit="solve", leave=False, disable=None) as bar:
            errors = ErrorCurves(self.sources, self.estimator, self._dense_problems,
                                 [LayerTarget(float(g), None, self.scope) for g in grid], bar, self.curves,
                                 self._record_curves, lambda name: name in self.problems)
            chosen = allocate_sparsities(errors, grid, sizes, sparsity)
        return {s.name: LayerTarget(float(c), None, self.scope) for s, c in zip(self.sources, chosen)}

    def _groups(self, name: str) -> np.ndarray:
        """A layer's dense weight as float64 groups, made when its solve needs it (BERT-base: 680 MB for all)."""
        return self.source_of[name].to_groups(read_weights(self.model, [name])[name])

    def _dense_problems(self, name: str) -> list[Any]:
        """The LayerProblems of one layer on the dense model's Grams for the error curves, kept for the session:
        every later solve of the layer on those Grams shares their factors."""
        found = self.problems.get(name)
        if found is None:
            self._fit_problems(self.source_of[name])
            gram = self._dense_grams()[name]
            found = self.problems.put(name, _layer_problems(self._groups(name), gram, self._lams({name: gram})[name]))
        return found

    def _fit_problems(self, source: LayerSource) -> None:
        """Bound the cached problems by what the budget leaves beside the process and ``source``'s solve (its
        Gram and factors, ``_solve_bytes``, and a batch of row solves), and when even none leave too little, move
        resident Grams to disk: the pruned weights accumulate as layers finish (340 MB on BERT-base)."""
        from onnxprune.methods.solvers.layer_solver import ROW_BATCH_BYTES

        held = resident_bytes()
        if held is not None:
            work = _solve_bytes(source) + ROW_BATCH_BYTES
            room = self.budget - held + self.problems.held_bytes - work
            self.problems.fit(max(0, room))
            if room < 0 and self.grams is not None:
                self.grams.trim(work)

    def _layer_inputs(self, source: LayerSource, grams: Any, targets: dict[str, Any]) -> tuple[Any, ...]:
        """What a layer's solve takes: its dense groups (columns in channel-innermost order for N:M, ``order``),
        Gram, target and ridge λ."""
        dense, gram, target = self._groups(source.name), grams[source.name], targets[source.name]
        lam = self._lams({source.name: gram})[source.name]
        # N:M runs along input channels: a Conv's columns are reordered channel-innermost to solve
        order = source.channel_order() if self.nm else None
        return (dense if order is None else dense[:, :, order]), gram, target, lam, order

    def _solve_layer(self, name: str, dense: np.ndarray, gram: GramStats, lam: float, target: Any,
                     order: np.ndarray | None) -> tuple[np.ndarray, float]:
        """One layer's pruned groups (float64, in the weight's column order) and relative error at ``target``; a
        layer the allocation keeps dense is not solved. The error curves' problems (dense Grams) and their
        factors serve here too."""
        if not target.prunes_any(*dense.shape[1:]):
            return _in_order(np.asarray(dense, dtype=np.float64), order), 0.0
        with placed_on(self.device):
            problems = None if self.sequential else self.problems.get(name)
            self._fit_problems(self.source_of[name])  # the layer's own problems, if cached, are kept
            if problems is None:
                problems = _layer_problems(dense, gram, lam, order)
            new, relative = _solve_problems(problems, self.solver, target)
        return _in_order(new, order), relative

    def _solve_on_ray(self, sources: list[LayerSource], grams: Any,
                      targets: dict[str, Any]) -> dict[str, tuple[np.ndarray, float, float, int, float]]:
        """Every layer of ``sources`` solved as a Ray task from scratch (its Gram sent through the object store
        as its task starts, read from disk only then): pruned groups and relative error as ``_solve_layer``
        gives them, the task's seconds, the Gram's rows and the ridge λ, by layer."""
        kept: dict[str, tuple[int, float]] = {}

        def calls() -> Iterator[tuple]:
            for s in sources:
                dense, gram, target, lam, order = self._layer_inputs(s, grams, targets)
                kept[s.name] = (gram.n_rows, lam)
                yield dense, gram, target, lam, order, self.solver, self.config.device

        results = run_tasks(solve_layer_task, calls(), total=len(sources), threads=thread_count(),
                                    desc=f"{self.method} layers")
        return {s.name: (*found, *kept[s.name]) for s, found in zip(sources, results)}

    @cached_property
    def model_bytes(self) -> int:
        """The model's serialized size, taken once (1.8 s on BERT-base): what a session or a copy of it costs."""
        return serialized_bytes(self.model)

    def _make_room(self) -> None:
        """What follows the solves (the pruned model made, checked, run and timed beside the input) holds about
        four copies of the weights (BERT-base: 1.5 GB more than before the checks): kept Grams and factors make
        room for it when the budget needs that (a later prune reads the Grams back)."""
        after = 4 * self.model_bytes
        if self.grams is not None and (resident_bytes() or 0) + after > self.budget:
            self.problems.clear()
            self.grams.trim(after)

    def _stored_layer(self, key: str, source: LayerSource) -> tuple[np.ndarray, dict[str, Any]] | None:
        """A layer's pruned weight and report row from the resume store, when it holds them."""
        found = None if self.store is None else self.store.read(key)
        if found is None or found[0].get("weight") is None or found[0]["weight"].shape != self.layouts[source.name][0]:
            return None
        return found[0]["weight"], {**found[1], "resumed": True}

    def prune(self, sparsity: float) -> MethodResult:
        """The model with every captured layer pruned at ``sparsity`` (or the N:M pattern)."""
        began, solve_s = time.perf_counter(), 0.0
        self.capture_s, self.capture_passes = 0.0, 0
        targets = self._targets(sparsity)
        passes = waves(self.model, self.sources) if self.sequential else [self.sources]
        current, pruned, layers = self.model, {}, {}
        keys = {s.name: f"s{float(sparsity)!r}/layer-{i:05d}" for i, s in enumerate(self.sources)}
        for wave in tqdm(passes, desc=f"{self.method} waves", unit="wave", leave=False,
                         disable=True if len(passes) < 2 else None):
            stored = {s.name: self._stored_layer(keys[s.name], s) for s in wave}
            missing = [s for s in wave if stored[s.name] is None]
            for name, found in stored.items():
                if found is not None:
                    pruned[name], layers[name] = found
            if missing:
                grams = self._capture(current, missing) if self.sequential else self._dense_grams()
            started = time.perf_counter()
            spread = self.cluster is not None and len(missing) > 1
            solved = self._solve_on_ray(missing, grams, targets) if spread else {}
            for s in tqdm(missing, desc=f"{self.method} layers", unit="layer", leave=False,
                          disable=True if spread else None):
                layer_began = time.perf_counter()
                if spread:
                    new, relative, seconds, rows, lam = solved[s.name]
                else:
                    dense, gram, target, lam, order = self._layer_inputs(s, grams, targets)
                    new, relative = self._solve_layer(s.name, dense, gram, lam, target, order)
                    seconds, rows = time.perf_counter() - layer_began, gram.n_rows
                pruned[s.name] = s.from_groups(new).astype(self.layouts[s.name][1])
                layers[s.name] = {"sparsity": round(1 - np.count_nonzero(pruned[s.name]) / new.size, 4),
                                  "relative_error": relative, "rows": rows, "d_in": s.d_in, "groups": s.groups,
                                  "ridge": lam, "solve_s": round(seconds, 2)}
                if self.store is not None:
                    self.store.write(keys[s.name], {"weight": pruned[s.name]}, layers[s.name])
            solve_s += time.perf_counter() - started
            self._make_room()
            current = replace_initializers(self.model, pruned)
        layers = {s.name: layers[s.name] for s in self.sources}
        details = {"capture_s": self.capture_s, "solve_s": solve_s, "total_s": time.perf_counter() - began,
                   "passes": len(passes) if self.sequential else self.capture_passes, "layers": layers, "dense_layers": dict(self.skipped),
                   "allocation": None if self.nm else self.config.allocation, "pattern": self.config.pattern or None,
                   "sequential": self.sequential, "max_memory": format_bytes(self.budget),
                   "device": str(self.device)}
        if self.cluster is not None:
            details["ray"] = self.cluster.describe()
        if self.store is not None:
            taken = sum(1 for row in layers.values() if row.get("resumed"))
            details["resume"] = {"folder": str(self.store.folder), "layers_taken": taken}
            log.info("resume: %d of %d layers taken from %s", taken, len(layers), self.store.folder)
        return MethodResult(current, details)
