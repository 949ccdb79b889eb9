"""onnxprune: post-training pruning of ONNX models, validated in ONNX Runtime.

The Python API mirrors the CLI, one function per mode: ``prune`` writes a model pruned at one sparsity
(``Pruner`` writes several sparsities of one model, re-using work), ``prune_to_target`` gives each channel
group its own width to meet a ``Target`` (a speed-up or a MACs fraction), ``search_sparsity`` finds the
highest sparsity within a ``Budget``; ``evaluate`` and ``benchmark`` measure written files in ONNX Runtime,
``inspect_model`` describes a model, ``sweep`` compares methods. Every fraction (sparsity, accuracy,
agreement, a budget) is a number in [0, 1].
Names are imported on first use, so ``import onnxprune`` (and the CLI's start) stays fast. Importing
onnxprune before torch sets how idle OpenMP threads wait, from the cores' idleness (see
``onnxprune.threads``), unless ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME`` is already set.
"""

from __future__ import annotations

import importlib
from typing import Any

from onnxprune.threads import choose_waits

choose_waits()

__version__ = "0.1.0"

_EXPORTS = {
    "BenchResult": "validate.bench", "benchmark": "validate.bench",
    "Canonical": "graph.canonical", "canonicalize": "graph.canonical",
    "Dataset": "data", "load_data": "data", "Source": "data",
    "OnnxPruneError": "errors", "ModelError": "errors", "DataError": "errors", "ConfigError": "errors",
    "ConversionError": "errors", "OutputError": "errors", "ResourceError": "errors",
    "EvalResult": "validate.evaluation", "evaluate": "validate.evaluation",
    "ModelInfo": "inspection", "inspect_model": "inspection",
    "load_model": "graph.io",
    "METHODS": "methods",
    "PruneOutcome": "pipeline", "Pruner": "pipeline", "prune": "pipeline",
    "ModelStats": "graph.stats", "model_stats": "graph.stats",
    "SweepReport": "workflows.sweeps", "sweep": "workflows.sweeps",
    "set_threads": "threads", "thread_count": "threads",
    "Budget": "workflows.budget", "BudgetResult": "workflows.budget", "search_sparsity": "workflows.budget",
    "Target": "workflows.target", "prune_to_target": "workflows.target", "PruneSession": "methods.base",
    "QualityError": "errors", "method_catalogue": "methods",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'onnxprune' has no attribute {name!r}")
    return getattr(importlib.import_module(f"onnxprune.{_EXPORTS[name]}"), name)
