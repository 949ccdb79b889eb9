"""``onnxprune sweep``: every method × sparsity pruned, written and measured in ONNX Runtime, with a
JSON report, a Markdown report and plots, so a user can pick a compression from numbers."""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import onnx
from onnx.external_data_helper import uses_external_data
from tqdm import tqdm

from onnxprune.cluster import Cluster, connect, run_tasks, share
from onnxprune.validate.bench import benchmark
from onnxprune.data import Dataset, Source, load_data, sample_shapes
from onnxprune.errors import ConfigError, OnnxPruneError, OutputError
from onnxprune.threads import thread_count
from onnxprune.validate.evaluation import accuracy, evaluate, reference_outputs
from onnxprune.graph.io import atomic_write, load_model
from onnxprune.methods import MethodSpec, get_method, make_config
from onnxprune.pipeline import Pruner
from onnxprune.graph.stats import ModelStats, model_stats
from onnxprune.report import percent, table, write_json
from onnxprune.units import format_bytes

if TYPE_CHECKING:  # recovery imports torch, quantization ORT's quantizer: loaded only when asked for
    from onnxprune.runtime.quantize import Quantization
    from onnxprune.view.distill import Recovery

DEFAULT_METHODS = ("magnitude", "chita++", "l1-channel", "intrafusion")
DEFAULT_SPARSITIES = (0.3, 0.5, 0.7, 0.9)


@dataclass
class SweepPoint:
    """One written model and its measurements (accuracy and agreement as fractions, latency in ms)."""

    method: str
    sparsity: float
    model: str | None = None
    accuracy: float | None = None
    agreement: float | None = None
    max_abs_diff: float | None = None
    cosine: float | None = None
    median_ms: float | None = None
    p90_ms: float | None = None
    speedup: float | None = None
    file_bytes: int | None = None
    params: int | None = None
    nonzero_macs: int | None = None
    prune_s: float | None = None
    stages: str | None = None  # what --recover / --quantize did to this point
    error: str | None = None

    @property
    def quality(self) -> float | None:
        """Accuracy when labels exist, otherwise agreement with the dense model."""
        return self.accuracy if self.accuracy is not None else self.agreement


@dataclass
class SweepReport:
    """Everything needed to read and reproduce a sweep."""

    model: str
    out_dir: str
    environment: dict[str, Any]
    dense: SweepPoint
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)  # where the evaluation/calibration data came from
    points: list[SweepPoint] = field(default_factory=list)
    seconds: float = 0.0
    prune_seconds: float = 0.0  # of ``seconds``, those spent pruning and writing the points (before measuring them)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def environment(threads: int, provider: str, command: str | None) -> dict[str, Any]:
    """Machine, versions, provider, threads and the command line, for the report's reproducibility."""
    import onnxruntime
    import onnxprune

    return {"machine": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "python": platform.python_version(), "provider": provider,
            "onnxruntime": onnxruntime.__version__, "onnxprune": onnxprune.__version__, "threads": threads,
            "command": command or " ".join(sys.argv)}


def parse_list(text: str, kind: type = str) -> tuple:
    """'a,b,c' → tuple of ``kind``; ConfigError naming the bad item."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return tuple(kind(t) for t in items)
    except ValueError:
        raise ConfigError(f"cannot read {text!r} as a comma-separated list of {kind.__name__}") from None


def method_options(specs: Sequence[MethodSpec], options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-method options from ``key=value`` (for every swept method that has ``key``) or
    ``method.key=value`` (for that method only); ConfigError for a key no swept method takes."""
    per: dict[str, dict[str, Any]] = {spec.name: {} for spec in specs}
    for key, value in options.items():
        method, _, name = key.rpartition(".")
        name = name.replace("-", "_")
        if name == "sparsity":
            raise ConfigError("a sweep sets the sparsity itself: use --sparsities")
        if method and method not in per:
            raise ConfigError(f"option {key!r}: {method!r} is not a swept method ({', '.join(per)})")
        takers = [spec for spec in specs if (not method or spec.name == method)
                  and name in {f.name for f in dataclasses.fields(spec.config_cls)} | set(spec.config_cls.aliases())]
        if not takers:
            raise ConfigError(f"option {key!r}: no swept method has an option {name!r} (see onnxprune methods)")
        for spec in takers:
            per[spec.name][name] = value
    for spec in specs:
        make_config(spec, **per[spec.name])  # bad values fail before any work
    return per


def _measure(point: SweepPoint, path: Path, stats: ModelStats, dense: Path, dense_outputs: list[np.ndarray],
             data: Dataset, batch: int, threads: int, runs: int) -> None:
    """Fill ``point`` with ORT accuracy/fidelity (against the dense outputs computed once), latency
    against the dense model and the written model's size figures."""
    quality = evaluate(path, data, reference=dense_outputs, threads=threads)
    speed = benchmark(path, vs=dense, batch=batch, threads=threads, runs=runs, warmup=5)
    point.accuracy, point.agreement = quality.accuracy, quality.agreement
    point.max_abs_diff, point.cosine = quality.max_abs_diff, quality.cosine
    point.median_ms, point.p90_ms, point.speedup = speed.median_ms, speed.p90_ms, speed.ratio
    point.file_bytes, point.params, point.nonzero_macs = stats.file_bytes, stats.params, stats.sparse_macs


def sweep(model: str | os.PathLike, out_dir: str | os.PathLike, *, data: str | os.PathLike | Source,
          calib: str | os.PathLike | Source | None = None, methods: Sequence[str] = DEFAULT_METHODS,
          sparsities: Sequence[float] = DEFAULT_SPARSITIES, batch: int = 32, threads: int | None = None,
          runs: int = 50, command: str | None = None, options: dict[str, Any] | None = None,
          recover: Recovery | None = None, quantize: Quantization | None = None,
          resume: str | os.PathLike | None = None, ray_address: str | None = None) -> SweepReport:
    """Prune ``model`` with every method at every sparsity into ``out_dir`` and measure each output;
    ``recover`` / ``quantize`` run on every point as in ``prune`` (every method then gets the calibration data).
    ``resume``: a folder where each resumable method keeps its finished layers (``<resume>/<method>``).
    ``ray_address``: prune the points as tasks of that Ray cluster ('auto', 'local', an address), each with
    the thread count methods use here (``onnxprune --threads``), then measure them here one after another.

    A point that a method refuses (e.g. a sparsity leaving a group without channels) is kept in the
    report with its error; the sweep goes on. Here, each method is set up once and prunes at every sparsity,
    highest first, re-using its sparsity-independent work (gradients, channel groups; CHITA++ runs one
    staged path through all the sparsities), so ``prune_s`` of a point excludes work done for others; on Ray
    each task (a method's run of points, ``task_chunks``) sets its method up again.
    """
    specs = [get_method(m) for m in methods]
    per_method = method_options(specs, options or {})
    for s in sparsities:
        if not 0.0 <= s < 1.0:
            raise ConfigError(f"sparsities must be in [0, 1), got {s}")
    if any(spec.needs_calib for spec in specs) and calib is None:
        needing = ", ".join(s.name for s in specs if s.needs_calib)
        raise ConfigError(f"methods {needing} need calibration data: pass --calib")
    staged = recover is not None or quantize is not None
    if staged and calib is None:
        raise ConfigError("--recover and --quantize run on calibration data: pass --calib")
    if ray_address is not None and resume is not None:
        raise ConfigError("--resume keeps finished layers in a folder of this machine, and --ray prunes the points "
                          "elsewhere: give one of them")
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{str(folder)!r} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    dense = Path(model)
    original = load_model(dense)
    eval_data = load_data(data, original, "evaluation")
    calib_data = load_data(calib, original, "calibration") if calib is not None else None
    if ray_address is not None:
        _refuse_external_data(dense)
    cluster = connect(ray_address) if ray_address is not None else None
    threads = threads or thread_count()
    start = time.perf_counter()
    dense_outputs = reference_outputs(dense, eval_data, threads=threads)  # run once, compared with every point
    base_accuracy = accuracy(dense_outputs[0], eval_data.labels) if eval_data.labels is not None else None
    base_speed = benchmark(dense, batch=batch, threads=threads, runs=runs, warmup=5)
    shapes = sample_shapes(eval_data)  # MACs of models with dynamic dims at the evaluation data's shapes
    base_stats = model_stats(original, dense, shapes)
    report = SweepReport(
        model=str(dense), out_dir=str(folder), environment=environment(threads, base_speed.provider, command),
        dense=SweepPoint("dense", 0.0, str(dense), accuracy=base_accuracy, agreement=1.0, max_abs_diff=0.0,
                         cosine=1.0, median_ms=base_speed.median_ms, p90_ms=base_speed.p90_ms, speedup=1.0,
                         file_bytes=base_stats.file_bytes, params=base_stats.params,
                         nonzero_macs=base_stats.sparse_macs), options=per_method,
        sources={"evaluation": eval_data.source, "calibration": None if calib_data is None else calib_data.source})
    order = sorted(set(sparsities), reverse=True)  # highest first: CHITA++ passes through the others
    work = [(spec, per_method[spec.name]) for spec in specs]
    common = dict(calib=calib_data, shapes=shapes, recover=recover, quantize=quantize)
    began = time.perf_counter()
    if cluster is not None:
        report.environment["ray"] = cluster.describe()
        pruned = _prune_on_ray(dense, folder, work, order, cluster, **common)
    else:
        pruned = {}
        with tqdm(total=len(specs) * len(order), desc="sweep", unit="model") as bar:
            for spec, given in work:
                pruned[spec.name] = prune_method(dense, spec.name, order, folder, given,
                                                 resume=Path(resume) / spec.name if resume is not None
                                                 and spec.resumable else None, done=bar.update, **common)
    report.prune_seconds = time.perf_counter() - began
    for spec in specs:
        for done in tqdm(sorted(pruned[spec.name], key=lambda p: p.sparsity), desc=f"measure {spec.name}",
                         unit="model", leave=False, disable=None):
            point = SweepPoint(spec.name, done.sparsity, prune_s=done.prune_s, error=done.error)
            if done.path is not None:
                point.model, point.stages = str(done.path), stage_summary(done.details)
                try:
                    _measure(point, done.path, done.after, dense, dense_outputs, eval_data, batch, threads, runs)
                except OnnxPruneError as exc:
                    point.error = str(exc)
            report.points.append(point)
    report.seconds = time.perf_counter() - start
    write_json(report.to_dict(), folder / "report.json")
    plots = write_plots(report, folder)
    (folder / "report.md").write_text(markdown(report, plots))
    return report


@dataclass
class PrunedPoint:
    """One point of a method pruned and written to ``path`` (None when refused, with the ``error``)."""

    sparsity: float
    path: Path | None = None
    prune_s: float | None = None
    after: ModelStats | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def point_name(method: str, sparsity: float) -> str:
    """The file name of a method's model at ``sparsity``."""
    return f"{method.replace('+', 'p')}_{sparsity:g}.onnx"


def prune_method(dense: Path, method: str, order: Sequence[float], folder: Path, options: dict[str, Any], *,
                 calib: Dataset | None, shapes: dict[str, tuple[int, ...]], recover: Recovery | None,
                 quantize: Quantization | None, resume: Path | None = None,
                 done: Callable[..., Any] = lambda n=1: None) -> list[PrunedPoint]:
    """``method`` at every sparsity of ``order`` (highest first), written into ``folder``: set up once, its
    session keeps what the points share. A method that cannot run here gives every point its error."""
    spec = get_method(method)
    staged = recover is not None or quantize is not None
    try:
        pruner = Pruner(dense, spec.name, calib=calib if spec.needs_calib or staged else None, input_shapes=shapes,
                        measure_speed=False, recover=recover, quantize=quantize, resume=resume, **options)
        pruner.session().expect(order)
    except OnnxPruneError as exc:  # the method cannot run on this model: every point says why
        done(len(order))
        return [PrunedPoint(s, error=str(exc)) for s in order]
    points = []
    for sparsity in order:
        target = folder / point_name(spec.name, sparsity)
        began = time.perf_counter()
        try:
            outcome = pruner.write(target, sparsity)
            points.append(PrunedPoint(sparsity, target, time.perf_counter() - began, outcome.after, outcome.details))
        except OnnxPruneError as exc:
            points.append(PrunedPoint(sparsity, error=str(exc)))
        done()
    return points


def _refuse_external_data(model: Path) -> None:
    """ConfigError for a model whose weights lie in external data: a sweep over Ray sends the model in one piece."""
    if any(uses_external_data(t) for t in onnx.load(str(model), load_external_data=False).graph.initializer):
        raise ConfigError(f"{str(model)!r} keeps its weights in external data, and a sweep over Ray sends the model "
                          "to its workers in one piece: sweep it without --ray")


def _prune_task(name: str, model_bytes: bytes, method: str, order: list[float], options: dict[str, Any],
                common: dict[str, Any]) -> list[tuple[PrunedPoint, dict[str, bytes]]]:
    """What a Ray task of a sweep runs: ``prune_method`` in a private folder; each written point comes back
    with its files' bytes (the model, and its external data when it has some)."""
    with tempfile.TemporaryDirectory(prefix="onnxprune-sweep-") as tmp:
        dense = Path(tmp) / "input" / name
        dense.parent.mkdir()
        dense.write_bytes(model_bytes)
        out = Path(tmp) / "out"
        out.mkdir()
        points = prune_method(dense, method, order, out, options, **common)
        found = []
        for point in points:
            files = {} if point.path is None else {f.name: f.read_bytes() for f in out.iterdir()
                                                   if f.name.startswith(point.path.name)}
            found.append((point, files))
        return found


def _prune_on_ray(dense: Path, folder: Path, work: list[tuple[MethodSpec, dict[str, Any]]], order: list[float],
                  cluster: Cluster, **common: Any) -> dict[str, list[PrunedPoint]]:
    """Every method's points pruned as Ray tasks and their files written into ``folder``. A method's points
    share its set-up (capture, gradients, groups), so they are split into no more tasks than the cluster runs
    at once (``task_chunks``); each task uses the thread count methods use here, so that its files are those a
    run here writes."""
    model_ref, common_ref = share(dense.read_bytes()), share(common)
    chunks = task_chunks(work, order, cluster.cpus // thread_count())
    calls = [(dense.name, model_ref, spec.name, points, given, common_ref) for spec, given, points in chunks]
    results = run_tasks(_prune_task, calls, total=len(calls), threads=thread_count(), desc="sweep")
    pruned: dict[str, list[PrunedPoint]] = {spec.name: [] for spec, _ in work}
    for call, found in zip(calls, results):
        for point, files in found:
            if point.path is not None:
                for name, content in files.items():
                    atomic_write(folder / name, lambda tmp, content=content: tmp.write_bytes(content))
                point.path = folder / point.path.name
            pruned[call[2]].append(point)
    return pruned


def task_chunks(work: list[tuple[MethodSpec, dict[str, Any]]], order: list[float],
                slots: int) -> list[tuple[MethodSpec, dict[str, Any], list[float]]]:
    """A sweep's tasks: each method's points (highest sparsity first) in ⌈slots / methods⌉ contiguous chunks
    (at least one), so that ``slots`` tasks at once keep the cluster busy without setting a method up more often
    than that; a method whose points follow one path (``MethodSpec.shared_path``) keeps them in one task."""
    per_method = max(1, -(-slots // max(len(work), 1)))
    tasks = []
    for spec, given in work:
        count = 1 if spec.shared_path else min(per_method, len(order))
        tasks += [(spec, given, [float(s) for s in part]) for part in np.array_split(np.array(order), count)]
    return tasks


def stage_summary(details: dict[str, Any]) -> str | None:
    """What recovery and INT8 did to one written model, in a few words (None when neither ran)."""
    parts = []
    recovery = details.get("recovery")
    if recovery is not None:
        parts.append(f"held-out error {recovery['error_before']:.3g} → {recovery['error_after']:.3g} in "
                     f"{recovery['steps']} recovery steps" if recovery["steps"] else
                     f"no recovery step ({recovery['note'] or 'none improved'})")
    quantization = details.get("quantization")
    if quantization is not None:
        parts.append(f"{quantization['kept']} kept")
    return "; ".join(parts) or None


def _staged(report: SweepReport) -> bool:
    """Whether any point went through recovery or INT8 (the tables then have a stages column)."""
    return any(p.stages for p in report.points)


def rows(report: SweepReport) -> list[list[Any]]:
    """Table rows: the dense model first, then every point (with a stages column when any point has one)."""
    staged = _staged(report)
    out = []
    for p in [report.dense] + report.points:
        out.append([p.method, p.sparsity, percent(p.accuracy), percent(p.agreement), p.median_ms,
                    None if p.speedup is None else f"{p.speedup:.2f}x", format_bytes(p.file_bytes), p.params,
                    p.nonzero_macs] + ([p.stages] if staged else []) + [p.error or "ok"])
    return out


def headers(report: SweepReport) -> list[str]:
    """The table's column names (``rows``)."""
    return HEADERS[:-1] + (["stages"] if _staged(report) else []) + HEADERS[-1:]


HEADERS = ["method", "sparsity", "acc %", "agree %", "median ms", "speed-up", "file", "params", "MACs (nonzero)",
           "status"]


def sweep_table(report: SweepReport) -> str:
    """The sweep as a terminal table."""
    env = report.environment
    where = f", pruned on the {env['ray']}" if "ray" in env else ""
    title = (f"{report.model}: batch latency on {env['provider']} with {env['threads']} threads "
             f"({report.seconds:.0f} s in all, {report.prune_seconds:.0f} s pruning{where}); models and reports in "
             f"{report.out_dir}")
    return table(headers(report), rows(report), title=title)


def markdown(report: SweepReport, plots: dict[str, str]) -> str:
    """The Markdown report: how it was measured, the table, the plots."""
    env = report.environment
    lines = [f"# Compression sweep of `{Path(report.model).name}`", "",
             "Every model below was written to disk and measured by ONNX Runtime.", "",
             "| | |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in env.items()]
    lines += [f"| options of {method} | `{', '.join(f'{k}={v}' for k, v in given.items())}` |"
              for method, given in report.options.items() if given]
    names = headers(report)
    lines += ["", "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join("-" if c is None else (f"{c:.2f}" if isinstance(c, float) else str(c)) for c in r)
              + " |" for r in rows(report)]
    lines.append("")
    if any(not get_method(p.method).structured for p in report.points):
        lines += ["ONNX Runtime multiplies zeros like any other weight: the unstructured methods' files run at dense "
                  "speed (their speed-up is the machine's noise around 1x) and are smaller only stored sparse "
                  "(`prune --compress`); only removed channels make a model faster.", ""]
    lines += [f"![{title}]({name})" for title, name in plots.items()]
    return "\n".join(lines) + "\n"


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (x lower is better, y higher is better), by x."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def write_plots(report: SweepReport, folder: Path) -> dict[str, str]:
    """Quality vs sparsity per method, and quality–latency / quality–size Pareto fronts, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [p for p in report.points if p.error is None and p.quality is not None]
    label = "accuracy (%)" if report.dense.accuracy is not None else "top-1 agreement with dense (%)"
    dense_q = percent(report.dense.quality)
    files = {}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(p.method for p in ok):
        mine = sorted((p.sparsity, percent(p.quality)) for p in ok if p.method == method)
        ax.plot(*zip(*mine), marker="o", label=method)
    ax.axhline(dense_q, color="black", linestyle="--", label=f"dense ({dense_q:.2f})")
    ax.set(xlabel="sparsity (fraction of weights or channels removed)", ylabel=label,
           title=f"{label} vs sparsity: {Path(report.model).name}")
    ax.grid(alpha=0.3)
    ax.legend()
    files["quality vs sparsity"] = _save(fig, folder / "quality_vs_sparsity.png")
    for key, xlabel, name, scale in (("median_ms", "median latency (ms)", "pareto_latency.png", 1.0),
                                     ("file_bytes", "file size (MB)", "pareto_size.png", 1 / 2 ** 20)):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for method in dict.fromkeys(p.method for p in ok):
            xs = [getattr(p, key) * scale for p in ok if p.method == method]
            ax.scatter(xs, [percent(p.quality) for p in ok if p.method == method], label=method)
        front = pareto([(getattr(p, key) * scale, percent(p.quality)) for p in ok]
                       + [(getattr(report.dense, key) * scale, dense_q)])
        ax.step(*zip(*front), where="post", color="gray", alpha=0.6, label="Pareto front")
        ax.scatter([getattr(report.dense, key) * scale], [dense_q], marker="*", s=250, color="black", label="dense",
                   zorder=5)
        ax.set(xlabel=xlabel, ylabel=label, title=f"{label} vs {xlabel.split(' (')[0]}: {Path(report.model).name}")
        ax.grid(alpha=0.3)
        ax.legend()
        files[f"{label} vs {xlabel}"] = _save(fig, folder / name)
    plt.close("all")
    return files


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path.name
