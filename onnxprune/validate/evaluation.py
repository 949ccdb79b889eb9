"""Measure a written model in ONNX Runtime: accuracy against labels and fidelity against a reference."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from onnxprune.data import Dataset, load_data
from onnxprune.errors import DataError
from onnxprune.graph.io import load_model
from onnxprune.validate.runtime import make_session, provider_name, run_batched


@dataclass
class EvalResult:
    """Accuracy and agreement are percentages; differences compare the first output with the reference's."""

    samples: int
    provider: str
    seconds: float
    accuracy: float | None = None
    agreement: float | None = None
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    cosine: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def top1(logits: np.ndarray) -> np.ndarray:
    """Predicted class per sample: argmax over the last axis (sequence outputs: flattened per sample)."""
    return logits.reshape(logits.shape[0], -1, logits.shape[-1]).argmax(-1).reshape(logits.shape[0], -1)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent of a [N, classes] output against integer labels."""
    if logits.ndim != 2:
        raise DataError(f"labels need a [N, classes] first output; the model gives shape {logits.shape}")
    return float(np.mean(logits.argmax(-1) == labels) * 100.0)


def fidelity(ours: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Top-1 agreement (percent), max/mean |difference| and mean cosine similarity per sample."""
    if ours.shape != reference.shape:
        raise DataError(f"output shape {ours.shape} differs from the reference's {reference.shape}")
    a = ours.reshape(ours.shape[0], -1).astype(np.float64)
    b = reference.reshape(reference.shape[0], -1).astype(np.float64)
    diff = np.abs(a - b)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.where(norms > 0, np.sum(a * b, axis=1) / np.maximum(norms, 1e-300), 1.0)
    result = {"max_abs_diff": float(diff.max()) if diff.size else 0.0,
              "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
              "cosine": float(cosine.mean())}
    if ours.ndim >= 2 and ours.shape[-1] > 1:
        result["agreement"] = float(np.mean(top1(ours) == top1(reference)) * 100.0)
    return result


def evaluate(model_path: str | os.PathLike, data: Dataset | str | os.PathLike, *,
             reference: str | os.PathLike | None = None, batch_size: int = 256, threads: int | None = None,
             device: str = "auto") -> EvalResult:
    """Run ``model_path`` on ``data`` in ORT; accuracy when labels exist, fidelity when a reference is given."""
    model = load_model(model_path)
    dataset = data if isinstance(data, Dataset) else load_data(Path(data), model)
    session = make_session(model_path, threads=threads, device=device)
    start = time.perf_counter()
    outputs = run_batched(session, dataset, batch_size)
    seconds = time.perf_counter() - start
    result = EvalResult(samples=len(dataset), provider=provider_name(session), seconds=seconds)
    if dataset.labels is not None:
        result.accuracy = accuracy(outputs[0], dataset.labels)
    if reference is not None:
        ref_session = make_session(reference, threads=threads, device=device)
        ref_outputs = run_batched(ref_session, dataset, batch_size)
        for key, value in fidelity(outputs[0], ref_outputs[0]).items():
            setattr(result, key, value)
    return result
