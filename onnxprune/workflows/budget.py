"""Accuracy-budget mode of ``prune``: the highest sparsity of a method whose ORT-measured quality
stays within the budget, found by bisection over one ``Pruner``; only the chosen model is written.
``Budget`` is also the quality guard of targets (``workflows/target.py``)."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from onnxprune.data import Dataset, Source
from onnxprune.errors import ConfigError, OnnxPruneError
from onnxprune.graph.io import check_output_path
from onnxprune.pipeline import Pruner, PruneOutcome
from onnxprune.report import write_json
from onnxprune.validate.evaluation import CLASS_SCORES, EvalResult, accuracy, output_kind

if TYPE_CHECKING:  # recovery imports torch: loaded only when asked for
    from onnxprune.view.distill import Recovery

log = logging.getLogger(__name__)


@dataclass
class Budget:
    """At most ``max_accuracy_drop`` of accuracy lost (a fraction: 0.01 is one point; needs labels), or at
    least ``min_agreement`` top-1 agreement with the dense model (a fraction; no labels needed)."""

    max_accuracy_drop: float | None = None
    min_agreement: float | None = None

    def __post_init__(self) -> None:
        if (self.max_accuracy_drop is None) == (self.min_agreement is None):
            raise ConfigError("give exactly one budget: --max-accuracy-drop or --min-agreement")
        if self.max_accuracy_drop is not None and not 0.0 <= self.max_accuracy_drop < 1.0:
            raise ConfigError(f"max_accuracy_drop is a fraction of accuracy in [0, 1) (0.01 is one point); got "
                              f"{self.max_accuracy_drop}")
        if self.min_agreement is not None and not 0.0 < self.min_agreement <= 1.0:
            raise ConfigError(f"min_agreement is a fraction in (0, 1] (0.99 is 99 %); got {self.min_agreement}")

    def check_data(self, data: Dataset, dense: list[np.ndarray]) -> None:
        """Refuse, before any pruning, data this budget cannot be measured on."""
        if self.max_accuracy_drop is not None and data.labels is None:
            raise ConfigError("--max-accuracy-drop needs labels in --data; use --min-agreement without labels")
        if self.min_agreement is not None and output_kind(dense[0]) != CLASS_SCORES:
            raise ConfigError(f"--min-agreement needs class scores as the first output; this model's has shape "
                              f"{list(dense[0].shape)}")

    def verdict(self, dense: list[np.ndarray], data: Dataset, quality: EvalResult) -> dict[str, Any]:
        """Whether ``quality`` (a pruned model on ``data``) keeps the budget, with the figures and one line."""
        if self.max_accuracy_drop is not None:
            base = accuracy(dense[0], data.labels)
            drop = base - quality.accuracy
            return {"within": drop <= self.max_accuracy_drop + 1e-12, "dense_accuracy": base,
                    "accuracy": quality.accuracy,
                    "text": f"accuracy {quality.accuracy:.2%} against {base:.2%} dense, a drop of {drop * 100:.2f} "
                            f"points (at most {self.max_accuracy_drop * 100:.2f} allowed)"}
        return {"within": quality.agreement >= self.min_agreement, "agreement": quality.agreement,
                "text": f"top-1 agreement with the input model {quality.agreement:.2%} (at least "
                        f"{self.min_agreement:.2%} asked)"}


@dataclass
class BudgetTrial:
    """One bisection step (accuracy and agreement as fractions)."""

    sparsity: float
    accuracy: float | None
    agreement: float | None
    within: bool
    error: str | None = None


@dataclass
class BudgetResult:
    """The chosen sparsity (None when even the lowest tried breaks the budget), its figures and the trials."""

    method: str
    budget: Budget
    dense_accuracy: float | None
    sparsity: float | None
    accuracy: float | None
    agreement: float | None
    outcome: PruneOutcome | None
    trials: list[BudgetTrial] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = self.outcome.to_dict() if self.outcome else None
        return data


def search_sparsity(model_path: str | os.PathLike, output: str | os.PathLike, method: str, budget: Budget, *,
                    data: str | os.PathLike | Source | Dataset, calib: str | os.PathLike | Source | Dataset | None = None,
                    report: str | os.PathLike | None = None, compress: bool = False, use_onnxslim: bool = False,
                    input_shapes: dict[str, tuple[int, ...]] | None = None, low: float = 0.0, high: float = 0.99,
                    tolerance: float = 0.01, recover: Recovery | None = None, **options: Any) -> BudgetResult:
    """Bisect sparsity in [low, high] for ``method``, assuming quality falls as sparsity rises; writes the
    best model within ``budget`` to ``output`` (and the JSON ``report``; nothing when none is). The method is
    set up once and its session re-uses work between trials (``PruneSession.reuse``)."""
    if not 0.0 <= low < high < 1.0 or tolerance <= 0:
        raise ConfigError(f"search range must satisfy 0 <= low < high < 1 with tolerance > 0; got "
                          f"[{low}, {high}] ± {tolerance}")
    if "sparsity" in options:
        raise ConfigError("a budget search chooses the sparsity itself: drop --sparsity")
    check_output_path(output, [model_path])
    if report is not None:
        check_output_path(report, [model_path, output])
    pruner = Pruner(model_path, method, calib=calib, use_onnxslim=use_onnxslim, input_shapes=input_shapes,
                    recover=recover, measure_speed=False, **options)  # loaded and checked once for every trial
    eval_data = pruner.load_data(data)
    dense = pruner.dense_outputs(eval_data)  # run once, compared with every trial
    budget.check_data(eval_data, dense)
    dense_accuracy = accuracy(dense[0], eval_data.labels) if eval_data.labels is not None else None
    work = Path(tempfile.mkdtemp(prefix=".onnxprune-budget-", dir=Path(output).resolve().parent))
    result = BudgetResult(method, budget, dense_accuracy, None, None, None, None)
    best: tuple[float, Path, PruneOutcome, BudgetTrial] | None = None

    def trial(sparsity: float) -> bool:
        nonlocal best
        bar.update()
        path = work / f"trial_{sparsity:.4f}.onnx"
        try:
            outcome = pruner.write(path, sparsity, compress=compress, data=eval_data)
        except OnnxPruneError as exc:
            result.trials.append(BudgetTrial(sparsity, None, None, False, str(exc)))
            return False
        quality = outcome.quality
        within = budget.verdict(dense, eval_data, quality)["within"]
        step = BudgetTrial(sparsity, quality.accuracy, quality.agreement, within)
        result.trials.append(step)
        log.info("sparsity %.4f: accuracy %s agreement %s → %s", sparsity, quality.accuracy, quality.agreement,
                 "within budget" if within else "over budget")
        if within and (best is None or sparsity > best[0]):
            best = (sparsity, path, outcome, step)
        return within

    steps = 2 + max(0, math.ceil(math.log2((high - low) / tolerance)))
    bar = tqdm(total=steps, desc=f"budget search ({method})", unit="trial")
    try:
        # upwards from low, so that staged methods start each trial from the last one within budget
        if trial(low):
            lo, hi = low, high
            while hi - lo > tolerance:
                mid = round((lo + hi) / 2, 6)
                if trial(mid):
                    lo = mid
                else:
                    hi = mid
            if hi == high:  # never over budget on the way: the top of the range may be within too
                trial(high)
        if best is not None:
            sparsity, path, outcome, step = best
            os.replace(path, output)
            outcome.output = str(output)
            outcome.speed = pruner.speed(output, outcome.details)  # what the chosen file buys (trials are not timed)
            result.sparsity, result.accuracy, result.agreement, result.outcome = (sparsity, step.accuracy,
                                                                                    step.agreement, outcome)
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
    if report is not None:
        write_json(result.to_dict(), report, inputs=[model_path])
    return result
