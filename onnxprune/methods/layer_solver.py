"""Solvers of one layer's reconstruction problem ``min ½‖(W − W̄)Xᵀ‖² + ½λ‖W − W̄‖²`` under a sparsity
constraint, on the small dense ``H = XᵀX`` (d_in × d_in) with all rows of W (d_out × d_in) at once.

``solve_chita``: CHITA's IHT with its line search, then the exact ridge backsolve on the support.
``solve_obs``: the OBS column sweep on the Cholesky factor of ``(H + λI)⁻¹`` in blocks with lazy updates
(the SparseGPT algorithm). ``solve_wanda``: keep the largest ``|W_ij|·‖X_j‖`` with no update.
Constraints (``Target``) are top-k over the layer, per output row or N:M along d_in.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from onnxprune.methods.chita_solver import Constraint, Segment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """The sparsity of one layer: ``sparsity`` over the ``scope`` ('layer' or per output 'row'), or
    ``nm`` = (N, M) keeping N of every M consecutive inputs of each row."""

    sparsity: float
    nm: tuple[int, int] | None = None
    scope: str = "layer"

    def constraint(self, rows: int, cols: int) -> Constraint:
        """The feasible supports of a row-major flattened ``rows × cols`` weight."""
        if self.nm is not None:
            return Constraint((Segment(0, rows * cols, self.nm[1], self.nm[0]),))
        if self.scope == "row":
            return Constraint((Segment(0, rows * cols, cols, cols - pruned_count(self.sparsity, cols)),))
        return Constraint.top_k(rows * cols, rows * cols - pruned_count(self.sparsity, rows * cols))


def pruned_count(sparsity: float, size: int) -> int:
    """Weights pruned out of ``size`` at ``sparsity`` (rounding down, but not below by float error)."""
    return math.floor(sparsity * size + 1e-9)


def ridge(H: np.ndarray, n_rows: int, damp: float, layer: str) -> float:
    """``λ = damp · mean(diag H)`` (1 when H is zero); warns when fewer calibration rows than inputs
    leave H singular, so the ridge alone keeps the problem well posed."""
    d = H.shape[-1]
    if n_rows < d:
        log.warning("layer %s: %d calibration rows for %d inputs, so H is singular; the ridge (damp=%g) "
                    "regularises it: give more calibration data for a better solve", layer, n_rows, d, damp)
    scale = float(np.mean(np.diagonal(H, axis1=-2, axis2=-1)))
    return damp * scale if scale > 0 else 1.0


def reconstruction(W: np.ndarray, W_bar: np.ndarray, H: np.ndarray) -> tuple[float, float]:
    """(``‖(W − W̄)Xᵀ‖²``, ``‖W̄Xᵀ‖²``) from H, for relative errors summed over groups."""
    D = W - W_bar
    return float(np.sum((D @ H) * D)), float(np.sum((W_bar @ H) * W_bar))


def _tensors(W: np.ndarray, H: np.ndarray, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """W̄ and ``H + λI`` as float64 torch tensors."""
    H_l = torch.from_numpy(np.array(H, dtype=np.float64))
    H_l.diagonal().add_(lam)
    return torch.from_numpy(np.array(W, dtype=np.float64)), H_l


def backsolve(W_bar: torch.Tensor, H_l: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The exact minimiser on the support ``mask``, row by row: ``w_S = w̄_S + H_SS⁻¹ H_{S,S̄} w̄_S̄``."""
    out = torch.zeros_like(W_bar)
    for i in range(W_bar.shape[0]):
        keep, drop = mask[i], ~mask[i]
        if not keep.any():
            continue
        if not drop.any():
            out[i] = W_bar[i]
            continue
        factor = torch.linalg.cholesky(H_l[keep][:, keep])
        rhs = (H_l[keep][:, drop] @ W_bar[i, drop]).unsqueeze(1)
        out[i, keep] = W_bar[i, keep] + torch.cholesky_solve(rhs, factor)[:, 0]
    return out


def _iht(V_bar: torch.Tensor, Hs: torch.Tensor, constraint: Constraint, V0: torch.Tensor, L: float,
         max_iter: int, tol: float) -> torch.Tensor:
    """IHT ``V ← P(V − τ∇q)`` on ``q(V) = ½tr((V − V̄)Hs(V − V̄)ᵀ)`` with CHITA's step rule: the exact line
    search along the current support when it keeps the support, else from the support-changing step
    (at least 1/L) doubling while q decreases. Returns the final support."""
    shape = V_bar.shape

    def project(Z: torch.Tensor) -> torch.Tensor:
        return constraint.project(Z.reshape(-1)).reshape(shape)

    def value(V: torch.Tensor) -> float:
        D = V - V_bar
        return 0.5 * float(((D @ Hs) * D).sum())

    mask = project(V0)
    V = torch.where(mask, V0, 0.0)
    current = value(V)
    for _ in range(max_iter):
        G = (V - V_bar) @ Hs
        g_on = torch.where(mask, G, 0.0)
        gg = float((g_on * g_on).sum())
        curvature = float(((g_on @ Hs) * g_on).sum())
        exact = gg / curvature if curvature > 0 else 0.0
        keeping = constraint.support_step(V.reshape(-1), G.reshape(-1), mask.reshape(-1))
        step = min(exact, keeping)
        best = (current - step * gg + 0.5 * step * step * curvature, V - step * g_on, mask)
        if exact > keeping:
            tau = max(2 * keeping, 1.0 / L)
            for _ in range(4):
                Z = V - tau * G
                new_mask = project(Z)
                trial = torch.where(new_mask, Z, 0.0)
                trial_value = value(trial)
                if trial_value >= best[0]:
                    break
                best, tau = (trial_value, trial, new_mask), tau * 2
        decrease = current - best[0]
        current, V, mask = best
        if decrease <= tol * abs(current):
            break
    return mask


@dataclass
class _Row:
    """One row's exact solve on its support: weights, value ``f = DᵀH_λD`` (D = w − w̄), the exact increase
    of f from dropping each kept weight (``w_j²/[H_SS⁻¹]_jj``) and decrease from adding each pruned one
    (``g_j²/s_j``, g = H_λD, s the Schur complement)."""

    w: torch.Tensor
    value: float
    drop: torch.Tensor
    add: torch.Tensor

    @classmethod
    def solve(cls, w_bar: torch.Tensor, H_l: torch.Tensor, keep: torch.Tensor, stats: bool = True) -> "_Row":
        """The row's exact solve on ``keep``, with the drop/add figures when ``stats``."""
        w = torch.zeros_like(w_bar)
        drop, add = torch.full_like(w_bar, math.inf), torch.full_like(w_bar, -math.inf)  # inf: impossible move
        inverse = cross = None
        if keep.any():
            inverse = torch.linalg.solve_triangular(torch.linalg.cholesky(H_l[keep][:, keep]),
                                                    torch.eye(int(keep.sum()), dtype=w_bar.dtype), upper=False)
            cross = inverse @ H_l[keep][:, ~keep]  # L⁻¹H_{S,S̄}
            w[keep] = w_bar[keep] + inverse.T @ (cross @ w_bar[~keep])
        D = w - w_bar
        g = H_l @ D
        row = cls(w, float(D @ g), drop, add)
        if stats:
            schur = H_l.diagonal()[~keep].clone()
            if inverse is not None:
                drop[keep] = w[keep].pow(2) / inverse.pow(2).sum(0)  # diag(H_SS⁻¹) = column norms² of L⁻¹
                schur -= cross.pow(2).sum(0)
            add[~keep] = g[~keep].pow(2) / schur.clamp_min(1e-300)
        return row


def _pairs(drop: torch.Tensor, add: torch.Tensor, group: torch.Tensor | None, count: int) -> list[tuple[int, int]]:
    """Candidate swaps (index out, index in) over flat ``drop``/``add`` ordered by estimated change
    ``drop − add`` (exact across rows; within a row it ignores their correlation, so a positive estimate
    may still improve): the ``count`` cheapest drops × best adds, or with ``group`` (N:M) the best pair
    of each group."""
    if group is None:
        low = torch.topk(drop, min(count, int(torch.isfinite(drop).sum())), largest=False).indices
        high = torch.topk(add, min(count, int(torch.isfinite(add).sum()))).indices
        pairs = [(int(a), int(b)) for a in low for b in high]
    else:
        groups = int(group[-1]) + 1
        low = torch.full((groups,), math.inf, dtype=drop.dtype).scatter_reduce(0, group, drop, "amin")
        high = torch.full((groups,), -math.inf, dtype=drop.dtype).scatter_reduce(0, group, add, "amax")
        pairs = []
        for g in torch.topk(low - high, min(count * count, groups), largest=False).indices.tolist():
            inside = group == g
            pairs.append((int(torch.argmin(torch.where(inside, drop, math.inf))),
                          int(torch.argmax(torch.where(inside, add, -math.inf)))))
    return sorted(pairs, key=lambda p: float(drop[p[0]] - add[p[1]]))


def swap_search(W_bar: torch.Tensor, H_l: torch.Tensor, mask: torch.Tensor, target: Target, *,
                rounds: int = 3, candidates: int = 4) -> torch.Tensor:
    """Local search over swaps (drop a kept weight, add a pruned one of the same constraint group) with the
    exact backsolve. Each round, per row (the whole layer for a layer-wide budget), candidate pairs are
    tried in order of estimated change (``candidates`` cheapest drops × best adds) and the first that
    lowers the exact objective is applied; a row changes at most once per round. Returns the weights."""
    rows_n, cols = W_bar.shape
    mask = mask.clone()
    rows = [_Row.solve(W_bar[i], H_l, mask[i]) for i in range(rows_n)]
    group = torch.arange(cols) // target.nm[1] if target.nm else None
    units = [None] if target.nm is None and target.scope == "layer" else list(range(rows_n))
    for _ in range(rounds):
        touched: set[int] = set()
        for unit in units:
            if unit is None:
                drop, add = torch.stack([r.drop for r in rows]).reshape(-1), torch.stack([r.add for r in rows]).reshape(-1)
                pairs = [(divmod(a, cols), divmod(b, cols)) for a, b in _pairs(drop, add, None, candidates)]
            else:
                pairs = [((unit, a), (unit, b)) for a, b in _pairs(rows[unit].drop, rows[unit].add, group, candidates)]
            for (i_out, j_out), (i_in, j_in) in pairs:
                if {i_out, i_in} & touched:
                    continue
                trial = {i: mask[i].clone() for i in {i_out, i_in}}
                trial[i_out][j_out], trial[i_in][j_in] = False, True
                before = sum(rows[i].value for i in trial)
                if sum(_Row.solve(W_bar[i], H_l, m, stats=False).value for i, m in trial.items()) < before * (1 - 1e-9):
                    for i, m in trial.items():
                        mask[i], rows[i] = m, _Row.solve(W_bar[i], H_l, m)
                    touched |= set(trial)
                    break
        log.debug("swap round: %d row(s) changed", len(touched))
        if not touched:
            break
    return torch.stack([r.w for r in rows])


def solve_chita(W: np.ndarray, H: np.ndarray, lam: float, target: Target, *, max_iter: int = 100,
                tol: float = 1e-6, swap_rounds: int = 3, restarts: int = 0) -> np.ndarray:
    """CHITA on one layer: IHT in Jacobi-scaled variables ``v_ij = sqrt(H_jj + λ)·w_ij`` (so thresholding
    ranks by saliency) warm-started from the OBS sweep, then the swap search with the exact ridge backsolve
    on the support; ``restarts`` more rounds restart IHT from the result while it improves."""
    W_bar, H_l = _tensors(W, H, lam)
    constraint = target.constraint(*W_bar.shape)
    scale = H_l.diagonal().sqrt()
    Hs = H_l / torch.outer(scale, scale)
    V_bar = W_bar * scale
    L = float(torch.linalg.eigvalsh(Hs)[-1])
    best, best_value = None, math.inf
    start = torch.from_numpy(solve_obs(W, H, lam, target)) * scale  # warm start: the OBS sweep's weights
    for _ in range(restarts + 1):
        mask = _iht(V_bar, Hs, constraint, start, L, max_iter, tol)
        solved = swap_search(W_bar, H_l, mask, target, rounds=swap_rounds)
        D = solved - W_bar
        value = float(((D @ H_l) * D).sum())
        if value >= best_value * (1 - tol):
            break
        best, best_value, start = solved, value, solved * scale
    return best.numpy()


def _prune_counts(target: Target, rows: int, start: int, stop: int) -> int:
    """Weights to prune in columns ``start:stop`` (per row with scope 'row', else over all rows), so that
    the counts over consecutive blocks add up to the whole layer's."""
    per = 1 if target.scope == "row" else rows
    return pruned_count(target.sparsity, per * stop) - pruned_count(target.sparsity, per * start)


def _lowest(scores: torch.Tensor, count: int, per_row: bool) -> torch.Tensor:
    """Mask of the ``count`` lowest scores (in every row when ``per_row``)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if count <= 0:
        return mask
    if per_row:
        return mask.scatter_(1, torch.topk(scores, count, dim=1, largest=False).indices, True)
    flat = mask.reshape(-1)
    flat[torch.topk(scores.reshape(-1), count, largest=False).indices] = True
    return flat.reshape(scores.shape)


def solve_obs(W: np.ndarray, H: np.ndarray, lam: float, target: Target, *, block_size: int = 128) -> np.ndarray:
    """The OBS column sweep: with ``U`` the upper Cholesky factor of ``(H + λI)⁻¹``, prune column j's chosen
    weights and spread the error ``e = (w − q)/U_jj`` over the later columns along ``U_j,j:``. Masks are
    chosen per block of columns by ``w²/U_jj²`` (N:M: per group of M); updates beyond the block are
    applied once per block."""
    W_bar, H_l = _tensors(W, H, lam)
    rows, cols = W_bar.shape
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H_l)), upper=True)
    W_new = W_bar.clone()
    if target.nm is not None:
        block_size = max(1, block_size // target.nm[1]) * target.nm[1]
    for start in range(0, cols, block_size):
        stop = min(start + block_size, cols)
        block, U_b = W_new[:, start:stop].clone(), U[start:stop, start:stop]
        diag = U_b.diagonal()
        errors = torch.zeros_like(block)
        if target.nm is None:
            pruned = _lowest(block.pow(2) / diag.pow(2), _prune_counts(target, rows, start, stop),
                             target.scope == "row")
        else:
            pruned = torch.zeros_like(block, dtype=torch.bool)
        for j in range(stop - start):
            if target.nm is not None and j % target.nm[1] == 0:  # the group's mask, from its updated weights
                n, m = target.nm
                pruned[:, j:j + m] = _lowest(block[:, j:j + m].pow(2) / diag[j:j + m].pow(2), m - n, per_row=True)
            column = block[:, j]
            kept = torch.where(pruned[:, j], 0.0, column)
            error = (column - kept) / diag[j]
            block[:, j:] -= error.unsqueeze(1) * U_b[j, j:].unsqueeze(0)
            block[:, j] = kept
            errors[:, j] = error
        W_new[:, start:stop] = block
        W_new[:, stop:] -= errors @ U[start:stop, stop:]
    return W_new.numpy()


def solve_wanda(W: np.ndarray, H: np.ndarray, lam: float, target: Target) -> np.ndarray:
    """Wanda: keep the weights with the largest ``|W_ij|·‖X_j‖₂`` (``‖X_j‖₂² = H_jj``), values unchanged;
    ``lam`` is not used (no solve)."""
    W_bar = torch.from_numpy(np.array(W, dtype=np.float64))
    scores = W_bar.abs() * torch.from_numpy(np.sqrt(np.maximum(np.diagonal(H), 0.0)))
    mask = target.constraint(*W_bar.shape).project(scores.reshape(-1)).reshape(W_bar.shape)
    return torch.where(mask, W_bar, 0.0).numpy()
