"""Magnitude pruning (the papers' MP baseline): zero the smallest |w|, one global threshold by default."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.data import Dataset
from onnxprune.methods.base import MethodConfig, MethodResult, OneOf, Rerun
from onnxprune.graph.prunable import read_weights, select_prunable
from onnxprune.graph.edit import replace_initializers

ALLOCATIONS = ("global", "uniform")


@dataclass
class MagnitudeConfig(MethodConfig):
    """``allocation``: 'global' (one threshold over all prunable weights) or 'uniform' (the same
    sparsity in every tensor). ``skip_first``/``skip_last`` leave the first/last prunable layer dense."""

    allocation: str = "global"
    skip_first: bool = False
    skip_last: bool = False

    constraints = {"allocation": OneOf(ALLOCATIONS)}


def keep_mask(scores: np.ndarray, keep: int) -> np.ndarray:
    """Boolean mask of the ``keep`` largest scores (ties broken by position, deterministically)."""
    flat = scores.ravel()
    mask = np.zeros(flat.shape, bool)
    if keep > 0:
        order = np.argsort(-flat, kind="stable")
        mask[order[:keep]] = True
    return mask.reshape(scores.shape)


def magnitude_masks(weights: dict[str, np.ndarray], sparsity: float, allocation: str) -> dict[str, np.ndarray]:
    """Keep-masks for ``weights`` at ``sparsity`` by |w|, globally or per tensor."""
    if allocation == "uniform":
        return {n: keep_mask(np.abs(w), int(np.floor((1 - sparsity) * w.size))) for n, w in weights.items()}
    names = list(weights)
    flat = np.concatenate([np.abs(weights[n]).ravel().astype(np.float64) for n in names])
    mask = keep_mask(flat, int(np.floor((1 - sparsity) * flat.size)))
    out, offset = {}, 0
    for name in names:
        size = weights[name].size
        out[name] = mask[offset:offset + size].reshape(weights[name].shape)
        offset += size
    return out


def _prune(model: onnx.ModelProto, config: MagnitudeConfig, calib: Dataset | None = None) -> MethodResult:
    """Zero the smallest-magnitude prunable weights of ``model``; data-free."""
    names = [w.name for w in select_prunable(model, config.skip_first, config.skip_last)]
    weights = read_weights(model, names)
    masks = magnitude_masks(weights, config.sparsity, config.allocation)
    pruned = {n: np.where(masks[n], weights[n], 0).astype(weights[n].dtype) for n in names}
    return MethodResult(replace_initializers(model, pruned), {"allocation": config.allocation})


def magnitude_session(model: onnx.ModelProto, config: MagnitudeConfig, calib: Dataset | None = None) -> Rerun:
    """Magnitude pruning keeps nothing between sparsities: each one is pruned afresh."""
    return Rerun(_prune, model, config, calib)
