"""Optimal-transport fusion of channels (Intra-Fusion, "Towards Meta-Pruning via Optimal
Transport", ICLR 2024): instead of dropping the n − m least important channels, transport all n
onto the m most important ones and merge their weights along the transport map."""

from __future__ import annotations

import numpy as np
import ot

from onnxprune.errors import ModelError

NORMALIZATIONS = ("preserving", "published")
MARGINALS = ("uniform", "importance")


def pairing_vectors(slabs: list[np.ndarray]) -> np.ndarray:
    """One row per channel: its producer rows and consumer columns over all members, concatenated
    and scaled to unit L2 norm (an all-zero channel stays zero)."""
    vectors = np.concatenate([s.reshape(s.shape[0], -1).astype(np.float32) for s in slabs], axis=1)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def l1_cost(vectors: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Pairwise L1 distances (float64) between rows of ``vectors`` and rows of ``targets``."""
    import torch

    distances = torch.cdist(torch.from_numpy(np.ascontiguousarray(vectors)),
                            torch.from_numpy(np.ascontiguousarray(targets)), p=1)
    return distances.numpy().astype(np.float64)


def _marginal(weights: np.ndarray | None, size: int) -> np.ndarray:
    """Uniform mass, or mass proportional to non-negative ``weights`` (uniform if they sum to 0)."""
    if weights is None or not np.isfinite(weights).all() or float(np.sum(weights)) <= 0:
        return np.full(size, 1.0 / size)
    weights = np.clip(weights.astype(np.float64), 0, None)
    return weights / weights.sum()


def transport_plan(vectors: np.ndarray, keep: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    """Exact OT plan (n×m) from all n channels to the kept m, with L1 cost between pairing vectors.

    Marginals are uniform, or importance-weighted when ``importance`` (per channel) is given.
    """
    keep = np.asarray(keep)
    cost = l1_cost(vectors, vectors[keep])
    source = _marginal(importance, len(vectors))
    target = _marginal(None if importance is None else importance[keep], len(keep))
    plan, log = ot.emd(source, target, cost, numItermax=max(100_000, 50 * cost.size), log=True)
    if log.get("warning"):
        raise ModelError(f"optimal transport did not converge for a group of {len(vectors)} channels: "
                         f"{log['warning']}")
    return plan


def fusion_maps(plan: np.ndarray, normalization: str) -> tuple[np.ndarray, np.ndarray]:
    """(producer map, consumer map), each n×m, from a transport plan.

    'published': every source channel's mass is spread to sum to 1 and the same map is used on
    both sides, so a fused channel adds up about n/m channels. 'preserving': producers take the
    mass-weighted average of the channels fused into them, consumers take their sum, so exactly
    duplicated channels fused together leave the network's function unchanged.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, not {normalization!r}")
    row_sums = plan.sum(axis=1, keepdims=True)
    spread = plan / np.where(row_sums > 0, row_sums, 1.0)
    if normalization == "published":
        return spread, spread
    column_sums = plan.sum(axis=0, keepdims=True)
    average = plan / np.where(column_sums > 0, column_sums, 1.0)
    return average, spread
