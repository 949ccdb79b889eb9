"""The prune pipeline: load → canonicalize → method → check in ORT → atomic write → report.

``Pruner`` is the one way into pruning: a single prune (``prune`` here), the sweep, the budget search and
the target search (``workflows/``) all go through it. Every input is validated before any expensive work,
and nothing is written unless the pruned graph passes ``onnx.checker`` and runs in ONNX Runtime with the
input's output shapes."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from onnxprune.cluster import connect
from onnxprune.graph.canonical import canonicalize
from onnxprune.data import Dataset, Source, check_input_shapes, input_specs, load_data, sample_shapes, unknown_dims
from onnxprune.errors import ConfigError, ModelError
from onnxprune.graph.io import check_model, check_output_path, load_model, model_fingerprint, stage_model
from onnxprune.methods import get_method, make_config
from onnxprune.methods.base import MethodResult, PruneSession
from onnxprune.methods.resume import ResumeStore, RunIdentity, data_fingerprint, not_resumable
from onnxprune.graph.prunable import find_prunable
from onnxprune.activations.gram import resident_bytes
from onnxprune.graph.protos import over_protobuf_limit, serialized_bytes
from onnxprune.units import parse_bytes
from onnxprune.runtime.feeds import fixed_batch, make_feed, run_batched
from onnxprune.runtime.sessions import make_session
from onnxprune.graph.stats import ModelStats, file_size, model_stats
from onnxprune.graph.edit import compress_sparse
from onnxprune import __version__
from onnxprune.report import write_json
from onnxprune.validate.bench import latencies
from onnxprune.validate.evaluation import EvalResult, evaluate, reference_outputs

if TYPE_CHECKING:  # recovery imports torch, quantization ORT's quantizer: loaded only when asked for
    from onnxprune.runtime.quantize import Quantization
    from onnxprune.view.distill import Recovery

log = logging.getLogger(__name__)

RECOVERY_HOLDOUT = 0.125  # calibration samples kept from the method and from recovery, to stop and judge it on
TIMING_BATCH = 8  # samples per timed call of a report's speed figure (a model's fixed batch wins)


@dataclass
class PruneOutcome:
    """What ``prune`` did: where it wrote, with which settings, and the before/after figures."""

    output: str
    method: str
    config: dict[str, Any]
    canonical_changes: list[str]
    before: ModelStats
    after: ModelStats
    details: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    compressed: list[str] = field(default_factory=list)
    quality: EvalResult | None = None  # the written model against the input model on --data, when given
    sources: dict[str, Any] = field(default_factory=dict)  # where the calibration/evaluation data came from
    speed: dict[str, Any] | None = None  # what the written file buys in ONNX Runtime here (``Pruner.speed``)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("before", "after"):
            stats: ModelStats = getattr(self, key)
            data[key]["sparsity"] = stats.sparsity
        return data


def sample_feed(model: onnx.ModelProto, sample: Dataset | None,
                shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """A few inputs for the ORT checks: from the calibration data, else random at ``shapes`` (dynamic dims
    not given there are 1); a fixed batch is kept."""
    specs = input_specs(model)
    fixed = fixed_batch(specs)
    if sample is not None:
        return sample.take(fixed or min(4, len(sample))).inputs
    shapes = shapes or {}
    feed = make_feed([dataclasses.replace(s, shape=shapes.get(s.name, s.shape)) for s in specs],
                     fixed or next((v[0] for v in shapes.values()), 1), None)
    return feed


def run_input_model(model: onnx.ModelProto, feed: dict[str, np.ndarray],
                    shapes: dict[str, tuple[int, ...]] | None = None) -> list[np.ndarray]:
    """The input model's ORT outputs, computed before any method runs so that a model ORT cannot run
    is refused up front instead of reaching a method (a lean session: no prepacked copy of the weights)."""
    try:
        return run_batched(make_session(model, device="cpu", lean=True), Dataset(feed))
    except ModelError as exc:
        unknown = unknown_dims(input_specs(model), shapes)
        if unknown:
            example = unknown[0].split(" ")[0]
            raise ConfigError(f"the model does not run on sample inputs with its dynamic dims set to 1 ({exc}); "
                              f"its inputs {', '.join(unknown)} need real sizes: pass --calib DATA.npz or "
                              f"--input-shape {example}=D0,D1,...") from None
        raise ModelError(f"the input model does not run in ONNX Runtime on sample inputs ({exc})") from None


def smoke_run(original: onnx.ModelProto, pruned: onnx.ModelProto | Path, feed: dict[str, np.ndarray],
              before: list[np.ndarray]) -> None:
    """Run the pruned model (in memory or its written file) in ORT on the sample inputs; its outputs must have
    the original's shapes."""
    try:
        after = run_batched(make_session(pruned, device="cpu", lean=True), Dataset(feed))
    except ModelError as exc:
        raise ModelError(f"the pruned model does not run in ONNX Runtime ({exc}); nothing was written") from None
    for out, a, b in zip(original.graph.output, before, after):
        if np.shape(a) != np.shape(b):
            raise ModelError(f"pruned output {out.name!r} has shape {np.shape(b)}, the input model gives "
                             f"{np.shape(a)}; nothing was written")


# Ops that mark a quantized graph, whose integer weights onnxprune does not prune.
_QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
                  "QGemm"}


def check_prunable(model: onnx.ModelProto) -> None:
    """Refuse a model without any prunable float weight before a method runs, saying why."""
    if find_prunable(model):
        return
    quantized = next((n for n in model.graph.node
                      if n.op_type in _QUANTIZED_OPS or n.op_type.startswith("QLinear")), None)
    if quantized is not None:
        raise ModelError(f"quantized model (op {quantized.op_type} in node {quantized.name!r}): onnxprune prunes "
                         "float Conv/Gemm/MatMul weights only; prune the float model, then quantize it")
    raise ModelError("nothing to prune: no Conv, Gemm or MatMul node has a constant float weight")


def check_outputs(output: str | os.PathLike, report: str | os.PathLike | None, model_path: str | os.PathLike) -> None:
    """Refuse output and report paths that would overwrite the input or each other."""
    check_output_path(output, [model_path])
    if report is not None:
        if Path(report).resolve() == Path(output).resolve():
            raise ConfigError("the report path must differ from the output model path")
        check_output_path(report, [model_path])


def split_holdout(data: Dataset, fraction: float, batch: int | None = None) -> tuple[Dataset, Dataset | None]:
    """(fit, hold-out): the last ``fraction`` of the samples held out (at least one batch), none when fewer
    than two batches would be left to fit on."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"holdout is a fraction of the calibration samples in [0, 1), not {fraction}")
    step = batch or 1
    held = -(-int(np.ceil(fraction * len(data))) // step) * step if fraction > 0 else 0
    if held == 0 or len(data) - held < 2 * step:
        if fraction > 0:
            log.warning("%d calibration samples are too few to hold %.0f%% of them out: the fidelity is measured "
                        "on the samples the method used", len(data), fraction * 100)
        return data, None
    return data.take(len(data) - held), data.take(held, start=len(data) - held)


class Pruner:
    """One model, method and calibration set, loaded, canonicalized and checked once; ``write`` prunes at
    a sparsity and writes the result. The sweep, the budget search and the target search are workflows over
    it, and the method's session keeps what does not depend on the sparsity (``PruneSession.reuse``).
    ``holdout``: this fraction of the calibration samples (the last ones) is kept from the method, to
    measure the pruned model's fidelity to the input model on data it did not see (default: none, or
    ``RECOVERY_HOLDOUT`` with ``recover``). ``recover``: distil every pruned model towards the input model on
    the calibration data (``view/distill.py``) before it is written; ``quantize``: then make it INT8
    (``runtime/quantize.py``), or with 'auto' only where ONNX Runtime measures it faster at the allowed loss.
    ``measure_speed``: time every written file against the input file (``PruneOutcome.speed``). ``resume``: a
    folder where the method keeps its finished layers (``methods/resume.py``), so the same run started again
    goes on where it stopped. ``ray_address``: solve the layers of the layer-wise methods as tasks of that Ray
    cluster ('auto', 'local', an address; ``cluster.py``), each with this process's thread count (a method
    with nothing to spread is refused when its session opens)."""

    def __init__(self, model_path: str | os.PathLike, method: str = "magnitude", *,
                 calib: str | os.PathLike | Source | Dataset | None = None, use_onnxslim: bool = False,
                 input_shapes: dict[str, tuple[int, ...]] | None = None, holdout: float | None = None,
                 recover: Recovery | None = None, quantize: Quantization | None = None, measure_speed: bool = True,
                 resume: str | os.PathLike | None = None, ray_address: str | None = None, **options: Any) -> None:
        self.spec = get_method(method)
        if resume is not None and not self.spec.resumable:
            raise not_resumable(method)
        self.cluster = connect(ray_address) if ray_address is not None else None
        self.recover, self.quantize, self.measure_speed, self.resume = recover, quantize, measure_speed, resume
        if quantize is not None and calib is None:
            raise ConfigError("INT8 quantization calibrates activation ranges on data: pass --calib")
        if recover is not None and calib is None:
            raise ConfigError("recovery distils towards the input model on calibration data: pass --calib")
        holdout = (RECOVERY_HOLDOUT if recover is not None else 0.0) if holdout is None else holdout
        self.config = make_config(self.spec, **options)
        self.model_path = model_path
        start = time.perf_counter()
        self.canonical = canonicalize(load_model(model_path), use_onnxslim=use_onnxslim)  # the loaded copy goes
        model = self.canonical.model
        if calib is not None:
            calib = load_data(calib, model, "calibration")
        if self.spec.needs_calib and calib is None:
            raise ConfigError(f"method {method!r} needs calibration data: pass --calib DATA.npz")
        self.calib, self.holdout = (calib, None) if calib is None else split_holdout(calib, holdout,
                                                                                     fixed_batch(input_specs(model)))
        check_prunable(model)
        if input_shapes:
            check_input_shapes(input_shapes, input_specs(model))
        # the shapes MACs are counted at and sample inputs are made with: given, else one calibration sample
        self.shapes = dict(input_shapes or (sample_shapes(self.calib) if self.calib is not None else {}))
        self.feed = sample_feed(model, self.calib, self.shapes)
        self.reference = run_input_model(model, self.feed, self.shapes)
        self.before = model_stats(model, model_path, self.shapes)
        self.load_s = time.perf_counter() - start
        self._session: PruneSession | None = None
        self._dense_outputs: dict[int, list[np.ndarray]] = {}

    def session(self) -> PruneSession:
        """The method's session, opened on first use (for CHITA this builds the torch view)."""
        if self._session is None:
            store = None if self.resume is None else ResumeStore(self.resume, self.run_identity())
            session = self.spec.open(self.canonical.model, self.config, self.calib)
            if self.cluster is not None and not session.spread_over(self.cluster):
                raise ConfigError(f"--ray spreads the layer solves of sparsegpt, wanda and chita's layer engine, "
                                  f"chita-channel's selections and a sweep's points; {self.spec.name} here has none to "
                                  f"spread: drop --ray")
            if store is not None:
                session.resume_from(store)
            self._session = session
        return self._session

    def run_identity(self) -> RunIdentity:
        """What this run's results depend on besides the sparsity (a resume folder belongs to one)."""
        options = {k: v for k, v in asdict(self.config).items() if k != "sparsity"}
        return RunIdentity(model=model_fingerprint(self.canonical.model),
                           calibration="none" if self.calib is None else data_fingerprint(self.calib.inputs),
                           method=self.spec.name, options=json.dumps(options, sort_keys=True, default=str),
                           version=__version__)

    def load_data(self, data: str | os.PathLike | Source | Dataset) -> Dataset:
        """Evaluation data for this model (any source, or a Dataset), checked against it."""
        return load_data(data, self.canonical.model, "evaluation")

    def timing_feed(self, batch: int | None = None) -> dict[str, np.ndarray]:
        """Inputs of ``batch`` samples (default ``TIMING_BATCH``, or the model's fixed batch) at the shapes the
        figures are counted at, from the calibration data when there is some."""
        specs = input_specs(self.canonical.model)
        fixed = fixed_batch(specs)
        if fixed is not None and batch not in (None, fixed):
            raise ConfigError(f"the model has a fixed batch size {fixed}: time it at {fixed}")
        specs = [dataclasses.replace(s, shape=(s.shape[0], *self.shapes[s.name][1:])) if s.name in self.shapes
                 else s for s in specs]
        return make_feed(specs, batch or fixed or TIMING_BATCH, self.calib)

    def speed(self, written: str | os.PathLike, details: dict[str, Any]) -> dict[str, Any]:
        """What the written file buys in ONNX Runtime on this machine: its latency and the input file's, timed
        in turns on the same inputs (one after the other when two sessions do not fit in the method's
        ``max_memory`` beside what the process holds), and what ONNX Runtime does with unstructured zeros."""
        feed = self.timing_feed()
        budget = getattr(self.config, "max_memory", None)
        held = resident_bytes()
        room = None if budget is None or held is None else parse_bytes(budget) - held
        (given, ours), provider, together = latencies([self.model_path, written], feed, room=room)
        found = {"batch": len(next(iter(feed.values()))), "provider": provider, "input_ms": given, "output_ms": ours,
                 "speedup": given / ours, "timed": "in turns" if together else
                 f"one after the other (two sessions do not fit in max_memory {budget} beside this process)"}
        if not self.spec.structured and "quantization" not in details:
            found["note"] = ("ONNX Runtime multiplies zeros like any other weight: an unstructured model runs at "
                             "dense speed (--compress makes the file smaller on disk only; ORT densifies it on load)")
        return found

    def _quantized(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
        """The INT8 model (or, with 'auto', whichever of it and ``model`` ONNX Runtime measures better within
        the allowed loss) and the comparison input fp32 → pruned fp32 → pruned int8."""
        from onnxprune.runtime.quantize import quantize_int8

        int8 = quantize_int8(model, self.calib, self.quantize)
        check_model(int8, "the INT8 model")
        smoke_run(self.canonical.model, int8, self.feed, self.reference)
        feed = self.timing_feed()
        (given, fp32, q8), provider, _ = latencies([self.model_path, model, int8], feed)
        held = self.holdout if self.holdout is not None else self.calib
        fidelity = [self.fidelity(m, held) for m in (model, int8)]
        versus = evaluate(int8, held, reference=reference_outputs(model, held))  # INT8 against the float model
        drop = 1.0 - (versus.agreement if versus.agreement is not None else versus.cosine)
        rows = [{"model": name, "latency_ms": ms, "speedup": given / ms, "bytes": size,
                 "agreement": None if f is None else f.agreement, "cosine": None if f is None else f.cosine}
                for name, ms, size, f in (("input fp32", given, None, None),
                                          ("pruned fp32", fp32, serialized_bytes(model), fidelity[0]),
                                          ("pruned int8", q8, serialized_bytes(int8), fidelity[1]))]
        faster, close = q8 < fp32, drop <= self.quantize.max_drop
        keep = self.quantize.mode == "int8" or (faster and close)
        reason = ("--quantize int8" if self.quantize.mode == "int8" else
                  f"INT8 is {'faster' if faster else 'not faster'} ({fp32 / q8:.2f}x of the float model) and "
                  f"{'within' if close else 'beyond'} the allowed loss ({drop:.2%} against {self.quantize.max_drop:.2%})")
        report = {"kept": "int8" if keep else "fp32", "reason": reason, "provider": provider,
                  "batch": len(next(iter(feed.values()))), "rows": rows, "loss_to_float": drop,
                  "measured_on": f"{len(held)} {'held-out ' if self.holdout is not None else ''}calibration samples",
                  "settings": asdict(self.quantize)}
        if not keep:
            log.warning("INT8 not kept: %s", reason)
        return (int8 if keep else model), report

    def dense_outputs(self, data: Dataset) -> list[np.ndarray]:
        """The input model's ORT outputs on ``data``, computed once per dataset."""
        if id(data) not in self._dense_outputs:
            self._dense_outputs[id(data)] = reference_outputs(self.canonical.model, data)
        return self._dense_outputs[id(data)]

    def fidelity(self, model: str | os.PathLike | onnx.ModelProto, data: Dataset) -> EvalResult:
        """``model`` against the input model on ``data`` in ORT (accuracy too when ``data`` has labels)."""
        return evaluate(model, data, reference=self.dense_outputs(data))

    def _recovered(self, result: MethodResult) -> MethodResult:
        """The method's result distilled towards the input model on the calibration data, measured on the
        hold-out (on the samples it trained on, with a warning, when there are too few to hold any out)."""
        from onnxprune.view.distill import distill

        holdout = self.holdout
        if holdout is None:
            log.warning("too few calibration samples to hold any out: recovery is measured on the samples it "
                        "trains on")
            holdout = self.calib
        model, report = distill(result.model, self.calib, self.dense_outputs(self.calib), holdout,
                                self.dense_outputs(holdout), self.recover)
        details = {**result.details, "recovery": {**asdict(report), "settings": asdict(self.recover),
                                                  "holdout_samples": len(holdout)}}
        return MethodResult(model, details)

    def write(self, output: str | os.PathLike, sparsity: float | None = None, *,
              report: str | os.PathLike | None = None, compress: bool = False,
              data: Dataset | None = None) -> PruneOutcome:
        """Prune at ``sparsity`` (default: the configured one), check the result in ORT and write it
        atomically to ``output`` (and the JSON ``report``); nothing is written when a check fails. With
        ``data``, the written model is measured against the input model on it (``PruneOutcome.quality``)."""
        config = self.config if sparsity is None else dataclasses.replace(self.config, sparsity=sparsity)
        check_outputs(output, report, self.model_path)
        start = time.perf_counter()
        result = self.session().prune(config.sparsity)
        timings = {"load": self.load_s, "method": time.perf_counter() - start}
        return self.write_result(result, output, config=asdict(config), timings=timings, report=report,
                                 compress=compress, data=data)

    def write_result(self, result: MethodResult, output: str | os.PathLike, *, config: dict[str, Any],
                     timings: dict[str, float], report: str | os.PathLike | None = None,
                     compress: bool = False, data: Dataset | None = None) -> PruneOutcome:
        """Check a method's result in ORT and write it atomically to ``output`` (and the JSON ``report``,
        with ``config`` as the settings); nothing is written when a check fails. With ``data``, the written
        model is measured against the input model on it."""
        if self.recover is not None:
            result = self._recovered(result)
            timings = {**timings, "recover": result.details["recovery"]["seconds"]}
        start = time.perf_counter()
        pruned = result.model
        # past 2 GB the pruned model is run from its written file, before the rename: never a third copy
        big = over_protobuf_limit(pruned)
        check_model(pruned, "the pruned model")
        if not big:
            smoke_run(self.canonical.model, pruned, self.feed, self.reference)
        if self.quantize is not None:
            began = time.perf_counter()
            pruned, found = self._quantized(pruned)
            result = MethodResult(pruned, {**result.details, "quantization": found})
            timings = {**timings, "quantize": time.perf_counter() - began}
        compressed: list[str] = []
        if compress:
            pruned, compressed = compress_sparse(pruned)
        staged = stage_model(pruned, output, inputs=[self.model_path])
        after = model_stats(pruned, None, self.shapes)
        # the written file stands for the model from here: a model past 2 GB is not held while run and timed
        del pruned
        result.model = None
        try:
            if big:  # run from its file before it takes the output's name
                smoke_run(self.canonical.model, staged.path, self.feed, self.reference)
        except BaseException:
            staged.discard()
            raise
        written = staged.commit()
        after.file_bytes = file_size(written)
        timings = {**timings, "write": time.perf_counter() - start}
        outcome = PruneOutcome(output=str(written), method=self.spec.name, config=config,
                               canonical_changes=self.canonical.changes, before=self.before, after=after,
                               details=result.details, timings=timings, compressed=compressed)
        if self.calib is not None:
            outcome.sources["calibration"] = {**(self.calib.source or {}), "used": len(self.calib),
                                              "held_out": 0 if self.holdout is None else len(self.holdout)}
        if self.measure_speed:
            began = time.perf_counter()
            outcome.speed = self.speed(written, result.details)
            outcome.timings["speed"] = time.perf_counter() - began
        if data is not None:
            outcome.sources["evaluation"] = data.source
            began = time.perf_counter()
            outcome.quality = self.fidelity(written, data)
            outcome.timings["evaluate"] = time.perf_counter() - began
        if report is not None:
            write_json(outcome.to_dict(), report, inputs=[self.model_path])
        return outcome


def prune(model_path: str | os.PathLike, output: str | os.PathLike, method: str = "magnitude", *,
          calib: str | os.PathLike | Source | Dataset | None = None, report: str | os.PathLike | None = None,
          compress: bool = False, use_onnxslim: bool = False, input_shapes: dict[str, tuple[int, ...]] | None = None,
          data: str | os.PathLike | Source | Dataset | None = None, recover: Recovery | None = None,
          quantize: Quantization | None = None, resume: str | os.PathLike | None = None,
          ray_address: str | None = None, **options: Any) -> PruneOutcome:
    """Prune ``model_path`` with ``method`` at one sparsity (options: the method's config fields, e.g.
    sparsity=0.5) and write the result atomically to ``output``; returns the outcome with before/after stats,
    and with ``data`` the written model's accuracy and fidelity to the input model on it. Targets and
    accuracy budgets are ``prune_to_target`` and ``search_sparsity``."""
    if "target" in options:
        raise ConfigError("prune(target=...) is now onnxprune.prune_to_target(model, output, method, target, ...)")
    check_outputs(output, report, model_path)
    pruner = Pruner(model_path, method, calib=calib, use_onnxslim=use_onnxslim, input_shapes=input_shapes,
                    recover=recover, quantize=quantize, resume=resume, ray_address=ray_address, **options)
    return pruner.write(output, report=report, compress=compress,
                        data=None if data is None else pruner.load_data(data))
