"""Magnitude pruning (the papers' MP baseline): zero the smallest |w|, one global threshold by default."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.data import Dataset
from onnxprune.methods.base import MethodResult, Rerun, UnstructuredConfig
from onnxprune.graph.prunable import input_axis, read_weights, select_prunable
from onnxprune.graph.edit import replace_initializers


@dataclass
class MagnitudeConfig(UnstructuredConfig):
    """Magnitude pruning takes the options every unstructured method takes, and no data."""


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


def nm_mask(weight: np.ndarray, axis: int, n: int, m: int) -> np.ndarray:
    """Keep-mask of the N largest |w| of every M consecutive entries along ``axis`` (all kept when the
    axis is not a multiple of M)."""
    if weight.shape[axis] % m:
        return np.ones(weight.shape, bool)
    moved = np.moveaxis(np.abs(weight), axis, -1)
    groups = moved.reshape(-1, m)
    order = np.argsort(-groups, axis=1, kind="stable")
    keep = np.zeros(groups.shape, bool)
    np.put_along_axis(keep, order[:, :n], True, axis=1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def _prune(model: onnx.ModelProto, config: MagnitudeConfig, calib: Dataset | None = None) -> MethodResult:
    """Zero the smallest-magnitude prunable weights of ``model`` (or all but N of every M); data-free."""
    chosen = select_prunable(model, config.skip_first, config.skip_last)
    names = [w.name for w in chosen]
    weights = read_weights(model, names)
    nm = config.nm()
    if nm is not None:
        masks = {w.name: nm_mask(weights[w.name], input_axis(model, w), *nm) for w in chosen}
    else:
        masks = magnitude_masks(weights, config.sparsity, config.allocation)
    pruned = {n: np.where(masks[n], weights[n], 0).astype(weights[n].dtype) for n in names}
    return MethodResult(replace_initializers(model, pruned), {"allocation": config.allocation,
                                                             "pattern": config.pattern or None})


def magnitude_session(model: onnx.ModelProto, config: MagnitudeConfig, calib: Dataset | None = None) -> Rerun:
    """Magnitude pruning keeps nothing between sparsities: each one is pruned afresh."""
    return Rerun(_prune, model, config, calib)
