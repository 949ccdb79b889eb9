"""Accuracy-budget mode of ``prune``: the highest sparsity of a method whose ORT-measured quality
stays within the budget, found by bisection; only the chosen model is written."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from onnxprune.data import load_data
from onnxprune.errors import ConfigError, OnnxPruneError
from onnxprune.validate.evaluation import CLASS_SCORES, accuracy, evaluate, output_kind, reference_outputs
from onnxprune.methods import get_method, make_config
from onnxprune.pipeline import Pruner, PruneOutcome
from onnxprune.graph.io import check_output_path

log = logging.getLogger(__name__)


@dataclass
class Budget:
    """At most ``max_accuracy_drop`` points of accuracy lost (needs labels), or at least
    ``min_agreement`` percent top-1 agreement with the dense model (no labels needed)."""

    max_accuracy_drop: float | None = None
    min_agreement: float | None = None

    def __post_init__(self) -> None:
        if (self.max_accuracy_drop is None) == (self.min_agreement is None):
            raise ConfigError("give exactly one budget: --max-accuracy-drop or --min-agreement")
        if self.max_accuracy_drop is not None and not 0.0 <= self.max_accuracy_drop <= 100.0:
            raise ConfigError(f"--max-accuracy-drop is in accuracy points, 0 to 100; got {self.max_accuracy_drop}")
        if self.min_agreement is not None and not 0.0 < self.min_agreement <= 100.0:
            raise ConfigError(f"--min-agreement is a percentage in (0, 100]; got {self.min_agreement}")


@dataclass
class BudgetTrial:
    """One bisection step."""

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
                    data: str | os.PathLike, calib: str | os.PathLike | None = None, low: float = 0.0,
                    high: float = 0.99, tolerance: float = 0.01, **options: Any) -> BudgetResult:
    """Bisect sparsity in [low, high] for ``method``, assuming quality falls as sparsity rises; writes the
    best model within ``budget`` to ``output`` (and nothing when none is). The method is set up once and
    its session re-uses work between trials (CHITA's gradients, channel groups, CHITA++'s stages)."""
    if not 0.0 <= low < high < 1.0 or tolerance <= 0:
        raise ConfigError(f"search range must satisfy 0 <= low < high < 1 with tolerance > 0; got "
                          f"[{low}, {high}] ± {tolerance}")
    if "sparsity" in options:
        raise ConfigError("a budget search chooses the sparsity itself: drop --sparsity")
    make_config(get_method(method), sparsity=low, **options)  # bad options fail before any work
    check_output_path(output, [model_path])
    pruner = Pruner(model_path, method, calib=calib, **options)  # loaded and checked once for every trial
    eval_data = load_data(Path(data), pruner.canonical.model)
    if budget.max_accuracy_drop is not None and eval_data.labels is None:
        raise ConfigError("--max-accuracy-drop needs labels in --data; use --min-agreement without labels")
    dense = reference_outputs(pruner.canonical.model, eval_data)  # run once, compared with every trial
    if budget.min_agreement is not None and output_kind(dense[0]) != CLASS_SCORES:
        raise ConfigError(f"--min-agreement needs class scores as the first output; this model's has shape "
                          f"{list(dense[0].shape)}")
    dense_accuracy = accuracy(dense[0], eval_data.labels) if eval_data.labels is not None else None
    work = Path(tempfile.mkdtemp(prefix=".onnxprune-budget-", dir=Path(output).resolve().parent))
    result = BudgetResult(method, budget, dense_accuracy, None, None, None, None)
    best: tuple[float, Path, PruneOutcome, BudgetTrial] | None = None

    def trial(sparsity: float) -> bool:
        nonlocal best
        bar.update()
        path = work / f"trial_{sparsity:.4f}.onnx"
        try:
            outcome = pruner.write(path, sparsity)
        except OnnxPruneError as exc:
            result.trials.append(BudgetTrial(sparsity, None, None, False, str(exc)))
            return False
        quality = evaluate(path, eval_data, reference=dense)
        if budget.max_accuracy_drop is not None:
            within = dense_accuracy - quality.accuracy <= budget.max_accuracy_drop
        else:
            within = quality.agreement >= budget.min_agreement
        step = BudgetTrial(sparsity, quality.accuracy, quality.agreement, within)
        result.trials.append(step)
        log.info("sparsity %.4f: accuracy %s agreement %.2f → %s", sparsity, quality.accuracy, quality.agreement,
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
            result.sparsity, result.accuracy, result.agreement, result.outcome = (sparsity, step.accuracy,
                                                                                    step.agreement, outcome)
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
    return result
