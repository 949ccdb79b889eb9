"""Measure a written model in ONNX Runtime: accuracy against labels and fidelity against a reference, for
every output, with figures that fit what the output is (class scores, a map in [0, 1], other values)."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

from typing import Union

import numpy as np
import onnx

from onnxprune.data import Dataset, Source, load_data
from onnxprune.errors import DataError
from onnxprune.graph.io import load_model
from onnxprune.runtime.feeds import run_batched
from onnxprune.runtime.sessions import make_session, provider_name

# A reference: a model (path or proto) to run on the same data, or its outputs computed once beforehand.
Reference = Union[str, os.PathLike, onnx.ModelProto, list]

CLASS_SCORES, MAP, VALUES = "class scores", "map", "values"


@dataclass
class OutputFidelity:
    """How one output compares with the reference's. ``kind``: 'class scores' ([N, classes], or per-position
    probabilities [N, T, classes]): top-1 ``agreement`` (a fraction); 'map' (values in [0, 1], e.g. a
    detector's probability map): ``iou`` of the maps thresholded at ``iou_threshold``; 'values': neither."""

    name: str
    shape: list[int]
    kind: str
    max_abs_diff: float
    mean_abs_diff: float
    cosine: float
    rel_l2: float
    agreement: float | None = None
    iou: float | None = None


@dataclass
class EvalResult:
    """Accuracy (labels against the first output) and agreement are fractions in [0, 1], like every fraction
    onnxprune reports. The top-level fidelity figures are those of the first output; ``outputs`` has every
    output's. ``note`` says what could not be measured (no labels, no reference)."""

    samples: int
    provider: str
    seconds: float
    accuracy: float | None = None
    agreement: float | None = None
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    cosine: float | None = None
    rel_l2: float | None = None
    iou: float | None = None
    outputs: list[OutputFidelity] = field(default_factory=list)
    note: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def top1(logits: np.ndarray) -> np.ndarray:
    """Predicted class per sample: argmax over the last axis (sequence outputs: flattened per sample)."""
    return logits.reshape(logits.shape[0], -1, logits.shape[-1]).argmax(-1).reshape(logits.shape[0], -1)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy (a fraction) of a [N, classes] output against integer labels."""
    if logits.ndim != 2:
        raise DataError(f"labels need a [N, classes] first output; the model gives shape {logits.shape}")
    return float(np.mean(logits.argmax(-1) == labels))


def output_kind(reference: np.ndarray) -> str:
    """What an output holds, judged from the reference's values: class scores ([N, C>1], or rows of
    probabilities over the last axis of [N, T, C]), a map in [0, 1] (rank >= 3), or other values."""
    if not np.issubdtype(reference.dtype, np.floating) or reference.size == 0:
        return VALUES
    if reference.ndim == 2 and reference.shape[1] > 1:
        return CLASS_SCORES
    in_unit = float(reference.min()) >= 0.0 and float(reference.max()) <= 1.0
    if reference.ndim == 3 and reference.shape[-1] > 1 and in_unit and \
            np.allclose(reference.sum(-1, dtype=np.float64), 1.0, atol=1e-3):
        return CLASS_SCORES
    if reference.ndim >= 3 and in_unit:
        return MAP
    return VALUES


def fidelity(name: str, ours: np.ndarray, reference: np.ndarray, iou_threshold: float = 0.5) -> OutputFidelity:
    """Differences, mean cosine per sample, relative L2, and the figure that fits the output's kind."""
    if ours.shape != reference.shape:
        raise DataError(f"output {name!r} has shape {ours.shape}, the reference's is {reference.shape}")
    a = ours.reshape(ours.shape[0], -1).astype(np.float64)
    b = reference.reshape(reference.shape[0], -1).astype(np.float64)
    diff = np.abs(a - b)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.where(norms > 0, np.sum(a * b, axis=1) / np.maximum(norms, 1e-300), 1.0)
    ref_norm = float(np.linalg.norm(b))
    kind = output_kind(reference)
    result = OutputFidelity(name=name, shape=list(ours.shape), kind=kind,
                            max_abs_diff=float(diff.max()) if diff.size else 0.0,
                            mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
                            cosine=float(cosine.mean()) if cosine.size else 1.0,
                            rel_l2=float(np.linalg.norm(a - b) / ref_norm) if ref_norm > 0 else float(diff.max(initial=0)))
    if kind == CLASS_SCORES:
        result.agreement = float(np.mean(top1(ours) == top1(reference)))
    elif kind == MAP:
        mine, theirs = a >= iou_threshold, b >= iou_threshold
        union = np.logical_or(mine, theirs).sum()
        result.iou = float(np.logical_and(mine, theirs).sum() / union) if union else 1.0
    return result


def reference_outputs(reference: Reference, data: Dataset, *, batch_size: int = 256, threads: int | None = None,
                      device: str = "auto") -> list[np.ndarray]:
    """The reference's outputs on ``data``: run once here, so that many models can be compared with them."""
    if isinstance(reference, list):
        return reference
    session = make_session(reference if isinstance(reference, onnx.ModelProto) else str(reference),
                           threads=threads, device=device)
    return run_batched(session, data, batch_size)


def evaluate(model: str | os.PathLike | onnx.ModelProto, data: Dataset | Source | str | os.PathLike, *,
             reference: Reference | None = None, batch_size: int = 256, threads: int | None = None,
             device: str = "auto", iou_threshold: float = 0.5) -> EvalResult:
    """Run ``model`` on ``data`` in ORT; accuracy when labels exist, fidelity of every output when a
    reference is given (a model, or its outputs from ``reference_outputs``)."""
    if isinstance(data, Dataset):
        dataset = data
    else:
        dataset = load_data(data, model if isinstance(model, onnx.ModelProto) else load_model(model), "evaluation")
    session = make_session(model if isinstance(model, onnx.ModelProto) else str(model), threads=threads,
                           device=device)
    start = time.perf_counter()
    outputs = run_batched(session, dataset, batch_size)
    seconds = time.perf_counter() - start
    result = EvalResult(samples=len(dataset), provider=provider_name(session), seconds=seconds)
    if dataset.labels is not None:
        result.accuracy = accuracy(outputs[0], dataset.labels)
    if reference is not None:
        expected = reference_outputs(reference, dataset, batch_size=batch_size, threads=threads, device=device)
        if len(expected) != len(outputs):
            raise DataError(f"the model has {len(outputs)} outputs, the reference {len(expected)}")
        names = [o.name for o in session.get_outputs()]
        result.outputs = [fidelity(n, ours, theirs, iou_threshold) for n, ours, theirs in zip(names, outputs, expected)]
        first = result.outputs[0]
        result.agreement, result.max_abs_diff, result.mean_abs_diff = first.agreement, first.max_abs_diff, first.mean_abs_diff
        result.cosine, result.rel_l2, result.iou = first.cosine, first.rel_l2, first.iou
    if dataset.labels is None and reference is None:
        result.note = ("the data has no labels and no reference model was given: only the run itself was measured; "
                       "add a 'labels' array for accuracy, or a reference (--reference MODEL) for fidelity")
    elif dataset.labels is None:
        result.note = "the data has no labels: fidelity to the reference only (add a 'labels' array for accuracy)"
    return result
