"""Pruning to a target (``prune --target-speedup`` / ``--target-macs``): each channel group gets its own
width, chosen so that the model meets the target with the smallest summed error (ZipLM-style).

A table holds, for every group and candidate width, the cost saved by pruning that group alone (ORT
latency timed in turns with the dense model, or exact MACs) and the method's error there
(``PruneSession.width_errors``); savings are taken as additive. The allocation is then checked on the
pruned model itself against the input model (interleaved timing on the same inputs, or its MACs). Savings
are not additive everywhere (a transformer's layers pruned together run faster than their sum says), so the
required saving is searched: it grows after a miss and shrinks after a measured speed-up more than
``LANDING`` above the target, bracketing the least pruning that meets the target, a few allocations at most.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np
import onnx
from tqdm import tqdm

from onnxprune.data import Dataset, Source, input_specs
from onnxprune.errors import ConfigError, QualityError
from onnxprune.graph.io import load_model, model_fingerprint
from onnxprune.graph.stats import model_stats, value_shapes
from onnxprune.methods import get_method
from onnxprune.methods.base import MethodResult, MethodSpec, PruneSession
from onnxprune.methods.structured.session import kept_channels
from onnxprune.pipeline import Pruner, PruneOutcome, check_outputs
from onnxprune.runtime.feeds import fixed_batch
from onnxprune.runtime.sessions import make_session, provider_name
from onnxprune.validate.bench import interleaved_times
from onnxprune.workflows.budget import Budget

if TYPE_CHECKING:  # recovery imports torch: loaded only when asked for
    from onnxprune.view.distill import Recovery

log = logging.getLogger(__name__)

# Candidate widths: these fractions of a group's channels (rounded as --round-to says), besides dense.
KEEP_FRACTIONS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875)
TABLE_RUNS = 15  # timed calls per model for the table (the fastest counts), few: the table has many models
CHECK_RUNS = 50  # timed calls per model when checking a pruned model against the input model (the median)
TRIES = 6  # allocations checked before settling for the best measured one
TIGHTEN = 0.02  # after a miss, ask for at least this much more saving (a fraction of the dense cost)
LANDING = 0.1  # a measured speed-up up to this much above the target lands on it; beyond, less is pruned
STEPS = 1000  # the allocation counts savings in steps of required / STEPS
HOLDOUT = 0.125  # calibration samples kept from the method, to report the pruned model's fidelity on
POOR_AGREEMENT = 0.5  # below this top-1 agreement on the hold-out, a target run warns that its predictions changed


@dataclass(frozen=True)
class Target:
    """What ``prune`` should reach: ``speedup`` (ORT latency of the input model over the pruned one, timed
    at ``batch`` samples; None: 8, or the model's fixed batch) or ``macs`` (fraction of the MACs to keep)."""

    speedup: float | None = None
    macs: float | None = None
    batch: int | None = None
    table: str | None = None  # a report of an earlier --target-speedup run whose latency table is reused

    def __post_init__(self) -> None:
        if (self.speedup is None) == (self.macs is None):
            raise ConfigError("give one target: --target-speedup or --target-macs")
        if self.speedup is not None and not self.speedup > 1.0:
            raise ConfigError(f"--target-speedup is the input model's latency over the pruned one's and must be "
                              f"> 1; got {self.speedup}")
        if self.macs is not None and not 0.0 < self.macs < 1.0:
            raise ConfigError(f"--target-macs is the fraction of the input model's MACs to keep, in (0, 1); "
                              f"got {self.macs}")
        if self.batch is not None and self.speedup is None:
            raise ConfigError("--target-batch is the batch a --target-speedup is timed at; it was given without "
                              "--target-speedup")
        if self.batch is not None and self.batch < 1:
            raise ConfigError(f"--target-batch must be >= 1; got {self.batch}")
        if self.table is not None and self.speedup is None:
            raise ConfigError("--target-table reuses the latency table of an earlier --target-speedup run; it was "
                              "given without --target-speedup (MACs are counted exactly and need no table)")
        if self.table is not None and not os.path.isfile(self.table):
            raise ConfigError(f"--target-table {self.table!r} is not a file (give the --report JSON of an earlier "
                              "--target-speedup run)")

    @property
    def ratio(self) -> float:
        """The largest allowed cost of the pruned model over the input model's."""
        return 1.0 / self.speedup if self.speedup is not None else float(self.macs)

    def value(self, ratio: float) -> float:
        """A cost ratio in the target's terms: a speed-up or a MACs fraction."""
        return 1.0 / ratio if self.speedup is not None else ratio

    def figure(self, ratio: float) -> str:
        """A cost ratio in the target's terms, as text."""
        return f"{self.value(ratio):.2f}x" if self.speedup is not None else f"{ratio:.3f} of the MACs"


def check_target_options(spec: MethodSpec, options: dict[str, Any]) -> None:
    """Refuse, before any work, what a target cannot go with: an explicit sparsity, a method that does not
    prune channels."""
    if not spec.structured:
        raise ConfigError(f"a target sets channel widths: use a channel method (l1-channel, intrafusion, "
                          f"chita-channel), not {spec.name!r}")
    if options.get("sparsity") is not None:
        raise ConfigError("a target chooses each group's width itself: drop --sparsity")


class Meter(Protocol):
    """The cost a target bounds, of several models measured together (the first one is the reference);
    ``table``: one of the table's many measurements, which may be cheaper, rather than a check."""

    metric: str
    exact: bool  # the same model always measures the same (no noise to control for)
    prepare: Callable[[onnx.ModelProto], onnx.ModelProto]  # a pruned model as it will be written (INT8, say)

    def costs(self, models: list[onnx.ModelProto], table: bool) -> list[float]: ...


@dataclass
class LatencyMeter:
    """ORT latency in ms of models timed in turns, call by call, on one feed: for a check, the median of
    ``CHECK_RUNS`` calls (as ``onnxprune bench`` reports it); for the table, the fastest of ``TABLE_RUNS``,
    which other processes on the machine disturb least. ``provider``: what ran them ('cpu' or 'cuda', as
    ``onnxprune bench`` picks)."""

    feed: dict[str, np.ndarray]
    metric: str = "latency_ms"
    exact: bool = False
    provider: str | None = None
    prepare: Callable[[onnx.ModelProto], onnx.ModelProto] = lambda model: model  # what a pruned model ships as

    def costs(self, models: list[onnx.ModelProto], table: bool) -> list[float]:
        sessions = [make_session(model) for model in models]
        self.provider = provider_name(sessions[0])
        runs = TABLE_RUNS if table else CHECK_RUNS
        times = interleaved_times(sessions, self.feed, runs, warmup=max(2, runs // 10))
        return [float(np.min(t) if table else np.median(t)) for t in times]

    @property
    def batch(self) -> int:
        """The samples per timed call."""
        return len(next(iter(self.feed.values())))

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """One sample's shape of every input, as timed."""
        return {name: (1, *array.shape[1:]) for name, array in self.feed.items()}


@dataclass
class MacsMeter:
    """Exact MACs per sample at the given input shapes, for the table and checks alike."""

    shapes: dict[str, tuple[int, ...]]
    metric: str = "macs"
    exact: bool = True
    prepare: Callable[[onnx.ModelProto], onnx.ModelProto] = lambda model: model

    def costs(self, models: list[onnx.ModelProto], table: bool) -> list[float]:
        found = [model_stats(model, None, self.shapes).macs for model in models]
        if any(macs is None for macs in found):
            raise ConfigError("--target-macs needs the MACs, unknown at these shapes: pass --calib DATA.npz or "
                              "--input-shape NAME=D0,D1,...")
        return [float(macs) for macs in found]


@dataclass
class GroupCurve:
    """One group's candidates: keep counts (ascending, below its size), the cost saved by pruning the group
    alone to each, and the method's error there; ``timed_as``: the group of the same shapes whose savings
    it takes (None: timed itself)."""

    group: int
    size: int
    widths: list[int]
    savings: list[float]
    errors: list[float]
    timed_as: int | None = None


@dataclass
class TargetTry:
    """One allocation: the saving asked of the table (a fraction of the dense cost), the widths given, and
    the cost ratio (pruned / input model) the table predicts and the model measures: the pruned model when
    ``pruned``, else the model of those shapes alone (a miss there needs no selection or refit)."""

    required: float
    widths: dict[int, int]
    predicted: float
    measured: float
    pruned: bool = False


@dataclass
class GroupWidth:
    """A group's width before and after, and the table's error at the width chosen (0: left dense)."""

    group: int
    before: int
    after: int
    error: float


@dataclass
class TargetReport:
    """What the allocation did, for the result details: the target, how the cost was measured (``batch``
    and ``provider`` for latency), the table (``dense``: the cost its savings are counted from; ``noise``:
    the A/A difference within which a saving is not counted), the tries,
    each group's width, the chosen model's cost ratio as the table predicted it and as measured, and that
    measured figure in the target's terms (``achieved``: a speed-up or a MACs fraction)."""

    target: dict[str, Any]
    metric: str
    batch: int | None
    provider: str | None
    dense: float
    noise: float
    table: list[GroupCurve]
    model_sha256: str = ""
    quantized: bool = False  # the pruned shapes were timed as INT8 (--quantize)
    tries: list[TargetTry] = field(default_factory=list)
    groups: list[GroupWidth] = field(default_factory=list)
    predicted: float | None = None
    measured: float | None = None
    achieved: float | None = None
    met: bool = False


def candidate_widths(size: int, round_to: int) -> list[int]:
    """The keep counts tried for a group of ``size`` channels (``KEEP_FRACTIONS``, rounded to multiples of
    ``round_to``), ascending and below ``size``."""
    found = {kept_channels(size, 1.0 - fraction, round_to) for fraction in KEEP_FRACTIONS}
    return sorted(w for w in found if 0 < w < size)


def allocate_widths(curves: list[GroupCurve], required: float, steps: int = STEPS, floor: float = 0.0
             ) -> dict[int, int] | None:
    """The widths (only of the groups pruned) with the smallest summed error whose summed saving is at least
    ``required``; None when the table cannot save that much. Savings up to ``floor`` (the table's noise)
    count as none.

    A multiple-choice knapsack solved by dynamic programming over the saving, counted in whole steps of
    ``required / steps`` rounded down, so the answer really saves ``required`` by the table and is optimal
    up to that rounding; unlike a greedy on marginal error per saving, it copes with measured savings that
    do not grow with the pruning. A width that saves nothing measurable is never chosen.
    """
    if required <= 0:
        return {}
    best = np.full(steps + 1, np.inf)  # best[s]: least error reaching s steps (the last state: all of them)
    best[0] = 0.0
    choices = []
    for curve in curves:
        new, pick, origin = best.copy(), np.full(steps + 1, -1), np.arange(steps + 1)
        for option, (saving, error) in enumerate(zip(curve.savings, curve.errors)):
            if saving <= floor:
                continue
            k = min(steps, int(np.floor(saving * steps / required)))
            candidate, source = np.full(steps + 1, np.inf), np.zeros(steps + 1, dtype=int)
            candidate[k:steps] = best[:steps - k] + error
            source[k:steps] = np.arange(steps - k)
            source[steps] = steps - k + int(np.argmin(best[steps - k:]))
            candidate[steps] = best[source[steps]] + error
            better = candidate < new
            new[better], pick[better], origin[better] = candidate[better], option, source[better]
        best = new
        choices.append((pick, origin))
    if not np.isfinite(best[steps]):
        return None
    widths, state = {}, steps
    for curve, (pick, origin) in zip(reversed(curves), reversed(choices)):
        if pick[state] >= 0:
            widths[curve.group] = curve.widths[pick[state]]
        state = origin[state]
    return widths


def credited(curve: GroupCurve) -> GroupCurve:
    """The curve as allocations count it: each width credited with at most what every narrower width of the
    group saved, so one lucky timing of a barely pruned group cannot promise a saving that pruning it further
    did not show (a noisy table otherwise buys an allocation the written file does not confirm)."""
    return dataclasses.replace(curve, savings=np.minimum.accumulate(curve.savings).tolist())


def _saving(curves: list[GroupCurve], widths: dict[int, int]) -> float:
    """The table's summed saving of an allocation."""
    return sum(c.savings[c.widths.index(widths[c.group])] for c in curves if c.group in widths)


def _ratio(meter: Meter, dense: onnx.ModelProto, pruned: onnx.ModelProto) -> float:
    """Measured cost of ``pruned`` over ``dense``."""
    costs = meter.costs([dense, meter.prepare(pruned)], table=False)
    return costs[1] / costs[0]


def _meter(pruner: Pruner, target: Target) -> LatencyMeter | MacsMeter:
    """The meter of the target: ORT latency at the target's batch on calibration (else random) inputs at
    the pruner's shapes, or MACs at those shapes. With INT8 as the last stage, every pruned shape is timed
    quantized (calibrated on two samples: its timing does not depend on the ranges), so that the widths are
    chosen for the file that ships."""
    if target.macs is not None:
        return MacsMeter(pruner.shapes)
    fixed = fixed_batch(input_specs(pruner.canonical.model))
    if fixed is not None and target.batch not in (None, fixed):
        raise ConfigError(f"the model has a fixed batch size {fixed}: use --target-batch {fixed} or leave it out")
    meter = LatencyMeter(pruner.timing_feed(target.batch))
    if pruner.quantize is not None:
        from onnxprune.runtime.quantize import quantize_int8

        settings = dataclasses.replace(pruner.quantize, samples=2)
        meter.prepare = lambda model: quantize_int8(model, pruner.calib, settings)
    return meter


def _measured_savings(session: PruneSession, meter: Meter, candidates: dict[int, list[int]], sizes: dict[int, int]
                      ) -> tuple[float, float, list[GroupCurve]]:
    """(dense cost, noise, curves without errors): each group pruned alone to each candidate width, measured
    together with the folded dense model; a noisy meter times two dense copies, and savings count from
    their mean, their largest difference over the groups being the noise (an A/A control)."""
    copies = 1 if meter.exact else 2
    dense, noise, curves = [], [0.0], []
    timed: dict[tuple, GroupCurve] = {}  # a group's shapes → the curve of the first group timed with them
    signatures = _signatures(session, meter.shapes) if not meter.exact else {}
    reference = meter.prepare(session.reference_model())  # savings count from the dense model as it would ship
    for index, widths in tqdm(candidates.items(), desc=f"{meter.metric} table", unit="group"):
        same = timed.get(signatures.get(index))
        if same is not None:
            curves.append(GroupCurve(index, sizes[index], widths, list(same.savings), [], same.group))
            log.info("group %d has the shapes of group %d: its savings are taken from there", index, same.group)
            continue
        costs = meter.costs([reference] * copies + [meter.prepare(session.shape_model({index: w})) for w in widths],
                            table=True)
        base = float(np.mean(costs[:copies]))
        dense.append(base)
        noise.append(max(costs[:copies]) - min(costs[:copies]))
        curves.append(GroupCurve(index, sizes[index], widths,
                                 [base - c for c in costs[copies:]], []))
        if index in signatures:
            timed[signatures[index]] = curves[-1]
    return float(np.median(dense)), max(noise), curves


def _signatures(session: PruneSession, shapes: dict[str, tuple[int, ...]]) -> dict[int, tuple]:
    """Each group's shapes: its members' roles, ops, weight shapes and slots, and the input and output shapes
    of their nodes at ``shapes``; groups of equal signatures (a transformer's layers) cost the same to prune."""
    model = session.reference_model()
    known = value_shapes(model, shapes)
    nodes = {n.name: n for n in model.graph.node}
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    found = {}
    for group in session.target_groups():
        parts = []
        for member in group.members:
            node = nodes.get(member.node)
            around = () if node is None else tuple(tuple(known.get(v) or ()) for v in (node.input[0], node.output[0]))
            parts.append(repr((member.role, member.op_type, weights.get(member.tensor), member.axis, member.offset,
                               member.block, around)))
        found[group.index] = (group.size, tuple(sorted(parts)))
    return found


def cost_table(session: PruneSession, meter: Meter, candidates: dict[int, list[int]],
               reuse: dict[str, Any] | None = None) -> tuple[float, float, list[GroupCurve]]:
    """The dense cost, the table's noise (a saving within it is not measurable) and each group's curve: the
    saving of pruning it alone to each candidate width (``_measured_savings``, or taken from ``reuse``, the
    target details of an earlier report checked by ``reusable_table``) and the method's error there."""
    if reuse is None:
        sizes = {g.index: g.size for g in session.target_groups()}
        dense, noise, curves = _measured_savings(session, meter, candidates, sizes)
    else:
        dense, noise = float(reuse["dense"]), float(reuse["noise"])
        curves = [GroupCurve(c["group"], c["size"], list(c["widths"]), list(c["savings"]), []) for c in reuse["table"]]
    log.info("%s table: dense %.4g, noise %.3g; per group, width / saved / error", meter.metric, dense, noise)
    for curve in tqdm(curves, desc="width errors", unit="group"):
        curve.errors = session.width_errors(curve.group, curve.widths)
        log.info("group %d (%d channels): %s", curve.group, curve.size,
                 ", ".join(f"{w} / {s:.4g} / {e:.4g}" for w, s, e in zip(curve.widths, curve.savings, curve.errors)))
    return dense, noise, curves


def reusable_table(path: str, meter: LatencyMeter, fingerprint: str, candidates: dict[int, list[int]],
                   quantized: bool) -> dict[str, Any]:
    """The target details of the report at ``path``, when its latency table fits this run (same model, batch,
    candidate widths and INT8 or not); ConfigError naming what differs otherwise."""
    try:
        with open(path, encoding="utf-8") as file:
            found = json.load(file)["details"]["target"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--target-table {path!r} is not the --report of a --target-speedup run ({exc})") from None
    missing = [key for key in ("table", "dense", "noise") if key not in found]
    if missing:
        raise ConfigError(f"--target-table {path!r} has no {', '.join(missing)}: write it again with this version")
    differs = []
    if found.get("metric") != meter.metric:
        differs.append(f"it measured {found.get('metric')}, this run {meter.metric}")
    if found.get("batch") != meter.batch:
        differs.append(f"batch {found.get('batch')} there, {meter.batch} here")
    if found.get("model_sha256") != fingerprint:
        differs.append("it was measured on another model (or another canonical form of it)")
    if found.get("quantized", False) != quantized:
        differs.append(f"its shapes were timed {'as INT8' if found.get('quantized') else 'in float'}, this run's "
                       f"{'as INT8' if quantized else 'in float'} (--quantize)")
    if {c["group"]: list(c["widths"]) for c in found["table"]} != candidates:
        differs.append("its groups or candidate widths differ (--round-to, --skip-first/--skip-last?)")
    if differs:
        raise ConfigError(f"--target-table {path!r} does not fit this run: {'; '.join(differs)}")
    return found


def prune_to_target(model: str | os.PathLike | Pruner, output: str | os.PathLike, method: str | None, target: Target,
                    *, calib: str | os.PathLike | Source | Dataset | None = None, report: str | os.PathLike | None = None,
                    compress: bool = False, use_onnxslim: bool = False,
                    input_shapes: dict[str, tuple[int, ...]] | None = None,
                    data: str | os.PathLike | Source | Dataset | None = None, budget: Budget | None = None,
                    holdout: float = HOLDOUT, recover: Recovery | None = None, **options: Any) -> PruneOutcome:
    """Prune ``model`` (a path, or a ``Pruner`` already set up, to try several targets on one set-up; then
    ``method`` is None and the set-up options stay its own) with a channel ``method`` to ``target``: each
    group's width is allocated for the least summed error, the pruned model's real figure is checked
    (re-allocating a few times on a miss) and the result written to ``output``. ``holdout`` of the calibration
    samples are kept from the method and the pruned model's fidelity to the input model on them is reported;
    with ``budget`` (and ``data`` to measure it on) a model that meets the target but breaks the budget is
    refused with its figures, nothing written. ConfigError, nothing written, when even every group at its
    smallest candidate width misses the target."""
    if isinstance(model, Pruner):
        given = [n for n, v in (("method", method), ("calib", calib), ("input_shapes", input_shapes),
                                ("recover", recover)) if v is not None]
        if given or options or use_onnxslim or holdout != HOLDOUT:
            raise ConfigError(f"a Pruner given to prune_to_target brings its own set-up: drop "
                              f"{', '.join(given + sorted(options)) or 'use_onnxslim/holdout'}")
        pruner = model
        check_target_options(pruner.spec, {})
        check_outputs(output, report, pruner.model_path)
    else:
        spec = get_method(method or "")
        check_target_options(spec, options)
        check_outputs(output, report, model)
    if budget is not None and data is None:
        raise ConfigError("a quality budget with a target needs evaluation data to measure it: pass --data DATA.npz")
    if not isinstance(model, Pruner):
        pruner = Pruner(model, method, calib=calib, use_onnxslim=use_onnxslim, input_shapes=input_shapes,
                        holdout=holdout, recover=recover, **options)
    checked = None if data is None else pruner.load_data(data)
    if budget is not None:
        budget.check_data(checked, pruner.dense_outputs(checked))
    start = time.perf_counter()
    result, table_s = target_result(pruner, target)
    found = result.details["target"]
    if pruner.holdout is not None:
        held = pruner.fidelity(result.model, pruner.holdout)
        found["holdout"] = {"samples": held.samples, "cosine": held.cosine, "agreement": held.agreement,
                            "rel_l2": held.rel_l2, "iou": held.iou}
        log.info("fidelity to the input model on %d held-out calibration samples: cosine %.4f", held.samples,
                 held.cosine)
        if held.agreement is not None and held.agreement < POOR_AGREEMENT:
            log.warning("the pruned model agrees with the input model on %.0f%% of %d held-out calibration samples: "
                        "a target this far costs its predictions (ask for a smaller target, or guard it with "
                        "--min-agreement / --max-accuracy-drop and --data)", held.agreement * 100, held.samples)
    if budget is not None:
        quality = pruner.fidelity(result.model, checked)
        dense = pruner.dense_outputs(checked)
        verdict = budget.verdict(dense, checked, quality)
        found["budget"] = verdict
        if not verdict["within"]:
            raise QualityError(f"the model that meets the target {target.figure(target.ratio)} (measured "
                               f"{target.figure(found['measured'])}) breaks the budget on the data: "
                               f"{verdict['text']}; nothing was written (ask for a smaller target)")
    timings = {"load": pruner.load_s, "table": table_s, "method": time.perf_counter() - start - table_s}
    config = {**asdict(pruner.config), "sparsity": None}
    return pruner.write_result(result, output, config=config, timings=timings, report=report, compress=compress,
                               data=checked)


def target_result(pruner: Pruner, target: Target) -> tuple[MethodResult, float]:
    """The pruned model meeting ``target`` (its details' ``target`` says how it was found) and the seconds the
    cost table took."""
    start = time.perf_counter()
    session = pruner.session()
    meter = _meter(pruner, target)
    round_to = session.round_to
    candidates = {g.index: w for g in session.target_groups() if (w := candidate_widths(g.size, round_to))}
    if not candidates:
        raise ConfigError("no channel group can be narrowed (see onnxprune inspect; a --round-to as large as a "
                          "group leaves it whole)")
    fingerprint = model_fingerprint(pruner.canonical.model)
    quantized = pruner.quantize is not None and isinstance(meter, LatencyMeter)
    reuse = None if target.table is None else reusable_table(target.table, meter, fingerprint, candidates, quantized)
    smallest = {index: widths[0] for index, widths in candidates.items()}
    given = load_model(pruner.model_path, check=False)  # figures are against the file as the user has it
    reach = _ratio(meter, given, session.shape_model(smallest))
    if reach > target.ratio:
        raise ConfigError(f"the target {target.figure(target.ratio)} is out of reach: with every group at its "
                          f"smallest candidate width ({KEEP_FRACTIONS[0]:.0%} of its channels) the model measures "
                          f"{target.figure(reach)}, the best reachable; ask for at most that")
    dense, noise, curves = cost_table(session, meter, candidates, reuse)
    plan = [credited(curve) for curve in curves]

    def allocate(saving: float) -> dict[int, int] | None:
        # measurable savings first; beyond what they offer, the small ones count too (together they can be real)
        return allocate_widths(plan, saving * dense, floor=noise) or allocate_widths(plan, saving * dense)

    table_s = time.perf_counter() - start
    timed = isinstance(meter, LatencyMeter)
    outcome = TargetReport(asdict(target), meter.metric, meter.batch if timed else None,
                           meter.provider if timed else None, dense, noise, curves, fingerprint, quantized)
    results: dict[int, MethodResult] = {}
    # the dense model as it ships (INT8, say) over the input file: savings are counted from the former
    base = _ratio(meter, given, session.reference_model()) if quantized else 1.0
    # a ratio r to the input file is a saving 1 - r / base of the dense cost: ratio gaps are divided by base
    required, missed, met = 1.0 - target.ratio / base, 0.0, None  # saving asked; largest that missed, least that met
    for _ in range(TRIES):
        widths = allocate(required)
        while widths is not None and met is None and any(t.widths == widths for t in outcome.tries):
            required += TIGHTEN  # a miss that allocates what was measured already: ask for more
            widths = allocate(required)
        if widths is None:  # more than the table offers: the smallest widths, measured above to meet the target
            widths = smallest
        if any(t.widths == widths for t in outcome.tries):  # the search has come back to an allocation it measured
            break
        measured = _ratio(meter, given, session.shape_model(widths))
        pruned = measured <= target.ratio or widths == smallest
        if pruned:  # the shapes meet the target: prune, and the pruned model's own figure decides
            results[len(outcome.tries)] = session.prune_widths(widths)
            measured = _ratio(meter, given, results[len(outcome.tries)].model)
        outcome.tries.append(TargetTry(required, widths, base * (1.0 - _saving(plan, widths) / dense), measured,
                                       pruned))
        log.info("try %d: widths %s, predicted %s, measured %s%s", len(outcome.tries), widths,
                 target.figure(outcome.tries[-1].predicted), target.figure(measured), "" if pruned else " (shapes)")
        if measured <= target.ratio:  # met: done when within the landing zone, else ask for less pruning
            met = required
            if measured >= target.ratio / (1.0 + LANDING) or meter.exact:
                break
            required = (missed + required) / 2 if missed else required - (target.ratio - measured) / base
        elif widths == smallest:
            break
        else:  # missed: ask for more, halfway to the least saving that met it when one did
            missed = required
            required = ((required + met) / 2 if met is not None
                        else required + max((measured - target.ratio) / base, TIGHTEN))
    meeting = [i for i, t in enumerate(outcome.tries) if t.measured <= target.ratio]
    # the least pruning that meets the target; else the best of the misses
    chosen = (max(meeting, key=lambda i: outcome.tries[i].measured) if meeting
              else int(np.argmin([t.measured for t in outcome.tries])))
    widths = outcome.tries[chosen].widths
    if chosen not in results:  # the best of several misses was measured on its shapes: prune it and measure that
        results[chosen] = session.prune_widths(widths)
        outcome.tries[chosen].measured = _ratio(meter, given, results[chosen].model)
        outcome.tries[chosen].pruned = True
    result = results[chosen]
    outcome.predicted, outcome.measured = outcome.tries[chosen].predicted, outcome.tries[chosen].measured
    outcome.achieved, outcome.met = target.value(outcome.measured), outcome.measured <= target.ratio
    if not outcome.met:
        log.warning("the pruned model measures %s, short of the target %s after %d allocations; writing the best "
                    "one (a busy machine makes timings noisy; a target further from the best reachable is met more "
                    "easily)", target.figure(outcome.measured), target.figure(target.ratio), len(outcome.tries))
    for curve in curves:
        width = widths.get(curve.group, curve.size)
        error = curve.errors[curve.widths.index(width)] if width in curve.widths else 0.0
        outcome.groups.append(GroupWidth(curve.group, curve.size, width, error))
    result.details["target"] = asdict(outcome)
    return result, table_s
