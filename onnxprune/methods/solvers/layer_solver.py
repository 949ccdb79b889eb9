"""Solvers of one layer's reconstruction problem ``min ½‖(W − W̄)Xᵀ‖² + ½λ‖W − W̄‖²`` under a sparsity
constraint, on the small dense ``H = XᵀX`` (d_in × d_in) with all rows of W (d_out × d_in) at once.

``solve_chita``: CHITA's IHT with its line search, then the exact ridge layer_backsolve on the support.
``solve_obs``: the OBS column sweep on the Cholesky factor of ``(H + λI)⁻¹`` in blocks with lazy updates
(the SparseGPT algorithm). ``solve_wanda``: keep the largest ``|W_ij|·‖X_j‖`` with no update.
Constraints (``LayerTarget``) are top-k over the layer, per output row or N:M along d_in. With fewer
calibration rows than a quarter of the inputs, H = XᵀX is used through a factor X (``LowRankGram``): the
solves on a support and IHT's products cost r (rows) where they cost d.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
import torch

from onnxprune.compute import from_numpy
from onnxprune.methods.solvers.chita_problem import SupportConstraint, Segment, largest_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerTarget:
    """The sparsity of one layer: ``sparsity`` over the ``scope`` ('layer' or per output 'row'), or
    ``nm`` = (N, M) keeping N of every M consecutive inputs of each row."""

    sparsity: float
    nm: tuple[int, int] | None = None
    scope: str = "layer"

    def constraint(self, rows: int, cols: int) -> SupportConstraint:
        """The feasible supports of a row-major flattened ``rows × cols`` weight."""
        if self.nm is not None:
            return SupportConstraint((Segment(0, rows * cols, self.nm[1], self.nm[0]),))
        if self.scope == "row":
            return SupportConstraint((Segment(0, rows * cols, cols, cols - pruned_count(self.sparsity, cols)),))
        return SupportConstraint.top_k(rows * cols, rows * cols - pruned_count(self.sparsity, rows * cols))

    def prunes_any(self, rows: int, cols: int) -> bool:
        """Whether a ``rows × cols`` weight loses any entry under this target."""
        return self.nm is not None or pruned_count(self.sparsity, cols if self.scope == "row" else rows * cols) > 0


def pruned_count(sparsity: float, size: int) -> int:
    """Weights pruned out of ``size`` at ``sparsity`` (rounding down, but not below by float error)."""
    return math.floor(sparsity * size + 1e-9)


def layer_ridge(H: np.ndarray, ridge: float) -> float:
    """``λ = ridge · mean(diag H)`` (1 when H is zero)."""
    scale = float(np.mean(np.diagonal(H, axis1=-2, axis2=-1)))
    return ridge * scale if scale > 0 else 1.0


# A Gram matrix summed over at most this share of its size in rows is solved through its factor.
LOW_RANK_SHARE = 0.25


@dataclass(frozen=True)
class LowRankGram:
    """``H = XᵀX`` with X (r × d) of few rows, and the ridge λ > 0: ``H_SS + λI`` is solved through the
    r × r ``M = λI + X_S X_Sᵀ`` (``(H_SS + λI)⁻¹ = (I − X_Sᵀ M⁻¹ X_S)/λ``) and products with H go through X."""

    X: torch.Tensor
    lam: float


def gram_factor(H: torch.Tensor, rank: int) -> torch.Tensor:
    """X (k × d, k = rank + 8) with ``XᵀX = H`` for a PSD H of rank at most ``rank``: H's range from ``H·Ω``
    (Ω Gaussian, seeded), then the eigen-decomposition of H restricted to it (k × k)."""
    d = H.shape[0]
    k = min(d, rank + 8)
    omega = torch.randn(d, k, generator=torch.Generator().manual_seed(0), dtype=H.dtype).to(H.device)
    basis = torch.linalg.qr(H @ omega).Q
    values, vectors = torch.linalg.eigh(basis.T @ H @ basis)
    return (vectors * values.clamp_min(0.0).sqrt()).T @ basis.T


class LayerProblem:
    """One layer's (or one group's) reconstruction problem in float64 on the current torch device (``with
    device:``): the dense weights W̄, H and ``H + λI``; ``H + λI`` and the factors a solver needs are computed on
    first use and shared by every solve of the problem at any target (the error curves solve each layer at
    many sparsities). ``rows``: how many calibration rows H sums (its rank is at most that)."""

    def __init__(self, W: np.ndarray, H: np.ndarray, lam: float, rows: int | None = None) -> None:
        self.W_bar = from_numpy(np.asarray(W, dtype=np.float64))
        self.H = from_numpy(np.asarray(H, dtype=np.float64))
        self.lam, self.rows = lam, rows

    @cached_property
    def H_l(self) -> torch.Tensor:
        """``H + λI``."""
        H_l = self.H.clone()
        H_l.diagonal().add_(self.lam)
        return H_l

    def drop_ridged(self) -> None:
        """Forget ``H + λI`` (made again on next use): the OBS sweep needs only its factor, and a session that
        keeps many layers' problems keeps a d × d matrix less of each."""
        self.__dict__.pop("H_l", None)

    @cached_property
    def low_rank(self) -> LowRankGram | None:
        """H through its factor when it sums at most ``LOW_RANK_SHARE`` of its size in rows and the factor
        reproduces it (to 1e-6 λ); None otherwise."""
        d = self.H.shape[0]
        if self.rows is None or self.rows > LOW_RANK_SHARE * d or self.lam <= 0:
            return None
        X = gram_factor(self.H, self.rows)
        mismatch = float((X.T @ X - self.H).abs().max())
        if mismatch > 1e-6 * self.lam:
            log.debug("H of %d rows is not reproduced by its factor (%.3g > 1e-6 λ): solved in full", self.rows,
                      mismatch)
            return None
        return LowRankGram(X, self.lam)

    @cached_property
    def obs_factor(self) -> torch.Tensor:
        """The upper Cholesky factor U of ``(H + λI)⁻¹`` (the OBS sweep's); through H's factor X when it has
        one: ``(H + λI)⁻¹ = (I − ZᵀZ)/λ`` with ``Z = L⁻¹X``, ``LLᵀ = λI + XXᵀ``."""
        low = self.low_rank
        if low is None:
            return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(self.H_l)), upper=True)
        inner = low.X @ low.X.T
        inner.diagonal().add_(low.lam)
        Z = torch.linalg.solve_triangular(torch.linalg.cholesky(inner), low.X, upper=False)
        inverse = -(Z.T @ Z)
        inverse.diagonal().add_(1.0)
        return torch.linalg.cholesky(inverse / low.lam, upper=True)

    @cached_property
    def jacobi(self) -> torch.Tensor:
        """``sqrt(diag(H + λI))``: the scale that makes IHT's thresholding rank by saliency."""
        return self.H_l.diagonal().sqrt()

    @cached_property
    def dense_energy(self) -> float:
        """``‖W̄Xᵀ‖²``, the denominator of the relative error."""
        return self._energy(self.W_bar)

    def error(self, W: np.ndarray) -> float:
        """``‖(W − W̄)Xᵀ‖²`` of the solution ``W``."""
        return self._energy(from_numpy(np.asarray(W, dtype=np.float64)) - self.W_bar)

    def _energy(self, D: torch.Tensor) -> float:
        """``tr(D H Dᵀ)``, through H's factor when it has one."""
        if self.low_rank is not None:
            return float((D @ self.low_rank.X.T).pow(2).sum())
        return float(((D @ self.H) * D).sum())


def layer_backsolve(W_bar: torch.Tensor, H_l: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
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


# IHT iterations between fresh computations of the carried gradient.
_REFRESH = 20


def _iht(V_bar: torch.Tensor, scaled: Curvature, constraint: SupportConstraint, V0: torch.Tensor,
         max_iter: int, tol: float) -> torch.Tensor:
    """IHT ``V ← P(V − τ∇q)`` on ``q(V) = ½tr((V − V̄)Hs(V − V̄)ᵀ)`` (``scaled.times(D) = D·Hs``) with CHITA's
    step rule: the exact line search along the current support when it keeps the support, else from the
    support-changing step (at least 1/L) doubling while q decreases. Returns the final support. The
    gradient ``G = (V − V̄)Hs`` is carried from step to step: a support step updates it with the product its
    line search needs anyway (``HG``), and a thresholded trial ``P(V − τG)`` differs from ``V − τ·g_on`` only
    where the support changed, so its gradient is ``G − τ·HG`` plus a product with Hs of a matrix holding
    those few entries (``scaled.few``): an iteration costs about one product with Hs."""
    times, L = scaled.times, scaled.L
    shape = V_bar.shape

    def project(Z: torch.Tensor) -> torch.Tensor:
        return constraint.project(Z.reshape(-1)).reshape(shape)

    def gradient(V: torch.Tensor) -> tuple[torch.Tensor, float]:
        D = V - V_bar
        G = times(D)
        return G, 0.5 * float((D * G).sum())

    mask = project(V0)
    V = torch.where(mask, V0, 0.0)
    G, current = gradient(V)
    for iteration in range(max_iter):
        g_on = torch.where(mask, G, 0.0)
        gg = float((g_on * g_on).sum())
        HG = times(g_on)
        curvature = float((HG * g_on).sum())
        exact = gg / curvature if curvature > 0 else 0.0
        keeping = constraint.support_step(V.reshape(-1), G.reshape(-1), mask.reshape(-1))
        step = min(exact, keeping)
        best = (current - step * gg + 0.5 * step * step * curvature, V - step * g_on, mask, None)
        if exact > keeping:
            tau = max(2 * keeping, 1.0 / L)
            for _ in range(4):
                Z = V - tau * G
                new_mask = project(Z)
                trial = torch.where(new_mask, Z, 0.0)
                # trial − V = −τ·g_on + S with S = −τG on entering entries, τG − V on leaving ones, 0 elsewhere
                entering, leaving = new_mask & ~mask, mask & ~new_mask
                S = torch.where(entering, -tau * G, 0.0) + torch.where(leaving, tau * G - V, 0.0)
                trial_G = G - tau * HG + scaled.few(S)
                trial_value = 0.5 * float(((trial - V_bar) * trial_G).sum())
                if trial_value >= best[0]:
                    break
                best, tau = (trial_value, trial, new_mask, trial_G), tau * 2
        decrease = current - best[0]
        current, V, mask, new_G = best
        G = G - step * HG if new_G is None else new_G
        if (iteration + 1) % _REFRESH == 0:  # float32 updates drift: recompute now and then
            G, current = gradient(V)
        if decrease <= tol * abs(current):
            break
    return mask


# Bytes of padded work matrices that one batch of row solves may hold.
ROW_BATCH_BYTES = 256 << 20


@dataclass
class _Row:
    """One row's exact solve on its support: weights, value ``f = DᵀH_λD`` (D = w − w̄), the exact increase
    of f from dropping each kept weight (``w_j²/[H_SS⁻¹]_jj``) and decrease from adding each pruned one
    (``g_j²/s_j``, g = H_λD, s the Schur complement); ±inf marks impossible moves. ``swaps``: candidate swaps
    (index out, index in) with the exact change of f each makes, when asked for."""

    w: torch.Tensor
    value: float
    drop: torch.Tensor
    add: torch.Tensor
    swaps: list[tuple[int, int, float]] | None = None


# Picks a row's candidate swaps (index out, index in) from its drop and add figures.
Chooser = Callable[[torch.Tensor, torch.Tensor], list[tuple[int, int]]]


def _padded_block(M: torch.Tensor, index: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """``M[i, i]`` for each row's first ``sizes[b]`` indices of ``index`` [B, K], a shorter row padded with
    identity (set in place, row by row: a masked select over the batch costs twice the gather)."""
    block = M[index[:, :, None], index[:, None, :]]
    width = index.shape[1]
    for b in torch.nonzero(sizes != width).flatten().tolist():
        size = int(sizes[b])
        block[b, size:, :] = 0.0
        block[b, :, size:] = 0.0
        block[b, size:, size:].diagonal().fill_(1.0)
    return block


def _cholesky_solve(factor: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``(LLᵀ)⁻¹ r`` per row (``factor`` [B, K, K], ``rhs`` [B, K]) by two triangular solves: torch's batched
    ``cholesky_solve`` took 8x longer on 1,536-wide blocks."""
    half = torch.linalg.solve_triangular(factor, rhs.unsqueeze(2), upper=False)
    return torch.linalg.solve_triangular(factor.mT, half, upper=True)[..., 0]


def _kept_side_shift(H_l: torch.Tensor, pushed: torch.Tensor, mask: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's ``w_S − w̄_S = H_SS⁻¹ H_{S,S̄} w̄_S̄`` (``pushed`` [B, d] = ``w̄_S̄ H_λ``, made for all rows at
    once): ``H_SS`` gathered into a batch padded with identity to the largest support, so one batched
    Cholesky serves all. Returns the shifts scattered to [B, d], the kept indices first [B, K], which of
    their slots are real, and the Cholesky factors."""
    k = mask.sum(1)
    K = int(k.max())
    kept = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :K]  # kept indices first
    kv = torch.arange(K) < k[:, None]
    factor = torch.linalg.cholesky(_padded_block(H_l, kept, k))
    shift = _cholesky_solve(factor, torch.where(kv, pushed.gather(1, kept), 0.0))
    return torch.zeros_like(pushed).scatter_(1, kept, torch.where(kv, shift, 0.0)), kept, kv, factor


def _solve_batch(W_bar: torch.Tensor, H_l: torch.Tensor, mask: torch.Tensor, pushed: torch.Tensor,
                 choose: Chooser | None = None) -> list[_Row]:
    """Rows ``W_bar`` [B, d] solved exactly on their supports ``mask`` (``_kept_side_shift``) with their drop
    and add figures, and with ``choose`` each row's candidate swaps with the exact change of f
    (``_swap_changes``)."""
    rows, d = W_bar.shape
    k = mask.sum(1)
    shift, kept, kv, factor = _kept_side_shift(H_l, pushed, mask)
    w = torch.where(mask, W_bar + shift, 0.0)
    D = w - W_bar
    g = D @ H_l
    value = (D * g).sum(1)
    K = kept.shape[1]
    # the figures only rank candidate moves (each is then solved exactly): float32 is enough
    C = d - int(k.min())
    dropped = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :C]  # pruned indices first
    cv = torch.arange(C) < (d - k)[:, None]
    cross = torch.where(kv[:, :, None] & cv[:, None, :], H_l[kept[:, :, None], dropped[:, None, :]], 0.0)
    low = factor.float()
    inverse = torch.linalg.solve_triangular(low, torch.eye(K, dtype=low.dtype), upper=False)  # L⁻¹
    projected = inverse @ cross.float()  # L⁻¹H_SS̄
    # per column: Q_jj = [H_SS⁻¹]_jj (column norms² of L⁻¹) on S, the Schur complement on S̄; a padded
    # row's extra slots write into the other set's columns, where they are never read
    q = torch.ones_like(W_bar).scatter_(1, kept, inverse.pow(2).sum(1).double())
    explained = projected.pow(2).sum(1).double()  # diag(H_S̄S H_SS⁻¹ H_SS̄)
    schur = torch.ones_like(W_bar).scatter_(1, dropped, (H_l.diagonal()[dropped] - explained).clamp_min(1e-300))
    slot = torch.where(mask, mask.cumsum(1), (~mask).cumsum(1)) - 1  # column → position among kept / pruned
    return _rows_with_figures(w, value, mask, q, g, schur, choose,
                              lambda b: (inverse[b], projected[b], slot[b]))


def _support_products(X: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``X_S X_Sᵀ`` (r × r) for each row's support S (``mask`` [B, d]), summed over whichever of S and its
    complement is smaller (``XXᵀ − X_S̄ X_S̄ᵀ``): at sparsity 0.1 or 0.9 a tenth of the columns."""
    complement = int((~mask).sum(1).max()) < int(mask.sum(1).max())
    chosen = ~mask if complement else mask
    counts = chosen.sum(1)
    index = torch.argsort((~chosen).to(torch.int8), dim=1, stable=True)[:, :int(counts.max())]  # chosen first
    columns = X.T[index] * (torch.arange(index.shape[1], device=X.device) < counts[:, None]).unsqueeze(2)
    products = columns.transpose(1, 2) @ columns
    return X @ X.T - products if complement else products


def _pruned_side_pull(inverse: torch.Tensor, W_bar: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's exact solve on its support S taken from the pruned side P, OBS's form: with
    ``Q = (H + λI)⁻¹``, ``w = w̄ − z Q`` on S with ``z_P = Q_PP⁻¹ w̄_P`` (0 elsewhere): a |P| system per row
    where the kept side takes |S| (at sparsity 0.3 a twelfth of the work). Returns z [B, d]."""
    p = (~mask).sum(1)
    C = int(p.max())
    dropped = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :C]  # pruned indices first
    cv = torch.arange(C) < p[:, None]
    factor = torch.linalg.cholesky(_padded_block(inverse, dropped, p))
    z = torch.where(cv, _cholesky_solve(factor, torch.where(cv, W_bar.gather(1, dropped), 0.0)), 0.0)
    return torch.zeros_like(W_bar).scatter_(1, dropped, z)


def _solve_batch_low_rank(W_bar: torch.Tensor, low: LowRankGram, mask: torch.Tensor, stats: bool,
                          choose: Chooser | None = None) -> list[_Row]:
    """``_solve_batch`` through H's factor (``LowRankGram``): per row the r × r ``M = λI + X_S X_Sᵀ`` and
    ``w_S = w̄_S + z_S``, ``z = (y − X_Sᵀ M⁻¹ X_S y)/λ``, ``y = H_{S,S̄} w̄_S̄``. The figures follow from
    ``P = L⁻¹X`` (M = LLᵀ), c_j = ‖P_j‖²: ``Q_jj = (1 − c_j)/λ``, Schur complement ``λ(1 + c_j)``, and a
    swap's coupling ``u = P_j·P_r``."""
    X, lam = low.X, low.lam
    m = mask.to(X.dtype)
    M = _support_products(X, mask)
    M.diagonal(dim1=1, dim2=2).add_(lam)
    factor = torch.linalg.cholesky(M)
    y = (((W_bar - W_bar * m) @ X.T) @ X) * m
    inner = torch.cholesky_solve((y @ X.T).unsqueeze(2), factor)[..., 0]
    w = (W_bar + (y - (inner @ X) * m) / lam) * m
    D = w - W_bar
    g = (D @ X.T) @ X + lam * D
    value = (D * g).sum(1)
    if not stats:
        return [_Row(w[b], float(value[b]), None, None) for b in range(len(w))]
    P = torch.linalg.solve_triangular(factor, X.expand(len(w), *X.shape), upper=False)
    c = P.pow(2).sum(1)
    q = ((1 - c) / lam).clamp_min(1e-300)
    schur = lam * (1 + c)
    return _rows_with_figures(w, value, mask, q, g, schur, choose, lambda b: (P[b], P[b], None))


def _rows_with_figures(w: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, q: torch.Tensor, g: torch.Tensor,
                       schur: torch.Tensor, choose: Chooser | None,
                       coupling: Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]) -> list[_Row]:
    """Solved rows with their drop figures ``w_j²/Q_jj`` (kept columns) and add figures ``g_j²/s_j`` (pruned
    columns), and with ``choose`` their candidate swaps' exact changes (``coupling(b)``: the row's
    ``_swap_changes`` matrices and slots)."""
    drop = torch.where(mask, w.pow(2) / q, math.inf)
    add = torch.where(mask, -math.inf, g.pow(2) / schur)
    return [_Row(w[b], float(value[b]), drop[b], add[b],
                 None if choose is None else _swap_changes(choose(drop[b], add[b]), *coupling(b), q[b], w[b], g[b],
                                                           schur[b]))
            for b in range(len(w))]


def _swap_changes(pairs: list[tuple[int, int]], left: torch.Tensor, right: torch.Tensor, slot: torch.Tensor | None,
                  q: torch.Tensor, w: torch.Tensor, g: torch.Tensor, schur: torch.Tensor) -> list[tuple[int, int, float]]:
    """The exact change of one row's f from each swap (j out, r in), in O(K) each: dropping j costs
    ``w_j²/Q_jj`` (Q = H_SS⁻¹) and moves g_r by ``−w_j·u/Q_jj`` and r's Schur complement by ``+u²/Q_jj``,
    with ``u = (Q H_Sr)_j = left[:, j]·right[:, r]`` (columns at ``slot`` of j and r when given); adding r then
    gains ``g_r'²/s_r'``. q, w, g, schur: the row's length-d figures."""
    if not pairs:
        return []
    out = torch.tensor([j for j, _ in pairs])
    into = torch.tensor([r for _, r in pairs])
    j, r = (out, into) if slot is None else (slot[out], slot[into])
    u = (left[:, j] * right[:, r]).sum(0).double()
    q_j, w_j = q[out], w[out]
    g_r = g[into] - w_j * u / q_j
    change = w_j.pow(2) / q_j - g_r.pow(2) / (schur[into] + u.pow(2) / q_j)
    return [(a, b, float(c)) for a, b, c in zip(out.tolist(), into.tolist(), change.tolist())]


def _solve_rows(W_bar: torch.Tensor, H_l: torch.Tensor, mask: torch.Tensor, stats: bool = True,
                choose: Chooser | None = None, low_rank: LowRankGram | None = None) -> list[_Row]:
    """Every row of ``W_bar`` solved on its support, in batches of similar support sizes (with each row's
    candidate swaps and their exact changes when ``choose`` is given), through ``low_rank`` when given.
    The products with the d × d ``H + λI`` are made for all rows at once (row by row they read all of it
    each time: 10 of 33 ms per row of a 768 × 3,072 layer)."""
    rows, d = W_bar.shape
    k = mask.sum(1)
    if low_rank is not None:
        r = low_rank.X.shape[0]
        per_row = 8 * (3 * r * d + r * r + 8 * d)
    else:  # the larger of a kept-side and a pruned-side solve's work matrices (and the figures')
        widest = max(int(k.max()), int((d - k).max())) if rows else 0
        per_row = 8 * ((3 * widest * widest + 2 * widest * d if stats else 2 * widest * widest) + 6 * d) if rows else 1
    chunk = max(1, ROW_BATCH_BYTES // per_row)
    order = torch.argsort(k, descending=True)  # rows keeping the most first: they may take the pruned side
    pushed = None if low_rank is not None else (W_bar * ~mask) @ H_l  # H_{S,S̄} w̄_S̄ of every row
    inverse = None
    moves = torch.zeros_like(W_bar)  # without figures: each row's shift on S, or its z on P (pruned side)
    pulled = torch.zeros(rows, dtype=torch.bool)
    out: list[_Row | None] = [None] * rows
    for start in range(0, rows, chunk):
        idx = order[start:start + chunk]
        if low_rank is not None:
            solved = _solve_batch_low_rank(W_bar[idx], low_rank, mask[idx], stats, choose)
        elif stats:
            solved = _solve_batch(W_bar[idx], H_l, mask[idx], pushed[idx], choose)
        elif int((d - k[idx]).max()) < int(k[idx].min()):  # pruning fewer weights than they keep: pruned side
            if inverse is None:
                inverse = torch.cholesky_inverse(torch.linalg.cholesky(H_l))
            moves[idx], pulled[idx] = _pruned_side_pull(inverse, W_bar[idx], mask[idx]), True
            continue
        else:
            moves[idx] = _kept_side_shift(H_l, pushed[idx], mask[idx])[0]
            continue
        for i, row in zip(idx.tolist(), solved):
            out[i] = row
    if low_rank is None and not stats:
        if inverse is not None:
            moves[pulled] = -(moves[pulled] @ inverse)
        w = torch.where(mask, W_bar + moves, 0.0)
        D = w - W_bar
        value = (D * (D @ H_l)).sum(1)
        return [_Row(w[i], float(value[i]), None, None) for i in range(rows)]
    return out


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
        for g in torch.topk(low - high, min(count, groups), largest=False).indices.tolist():
            inside = group == g
            pairs.append((int(torch.argmin(torch.where(inside, drop, math.inf))),
                          int(torch.argmax(torch.where(inside, add, -math.inf)))))
    return sorted(pairs, key=lambda p: float(drop[p[0]] - add[p[1]]))


def layer_swap_search(W_bar: torch.Tensor, H_l: torch.Tensor, mask: torch.Tensor, target: LayerTarget, *,
                      rounds: int = 3, candidates: int = 4, low_rank: LowRankGram | None = None) -> torch.Tensor:
    """Local search over swaps (drop a kept weight, add a pruned one of the same constraint group) with the
    exact layer_backsolve. Each round, per row (the whole layer for a layer-wide budget), candidate pairs are
    taken in order of estimated change (``candidates`` cheapest drops × best adds, or with N:M the best
    pair of each of the ``candidates`` most promising groups) and one that lowers the exact objective is
    applied; a row changes at most once per round. Rows are solved through ``low_rank`` when given.
    Returns the weights."""
    mask = mask.clone()

    def solve(W: torch.Tensor, support: torch.Tensor, stats: bool = True, choose: Chooser | None = None) -> list[_Row]:
        return _solve_rows(W, H_l, support, stats, choose, low_rank)

    if target.nm is None and target.scope == "layer":
        rows = solve(W_bar, mask, stats=rounds > 0)
        for _ in range(rounds):
            touched = _swap_layer(W_bar, solve, mask, rows, candidates)
            log.debug("swap round: %d row(s) changed", len(touched))
            if not touched:
                break
        return torch.stack([r.w for r in rows])
    group = torch.arange(W_bar.shape[1]) // target.nm[1] if target.nm else None

    def choose(drop: torch.Tensor, add: torch.Tensor) -> list[tuple[int, int]]:
        return _pairs(drop, add, group, candidates)

    rows = solve(W_bar, mask, stats=rounds > 0, choose=choose)
    for round_ in range(rounds):
        touched = _swap_each_row(W_bar, solve, mask, rows, choose if round_ < rounds - 1 else None)
        log.debug("swap round: %d row(s) changed", len(touched))
        if not touched:
            break
    return torch.stack([r.w for r in rows])


# Solves rows (weights, supports, stats, chooser) of one layer's problem.
RowSolver = Callable[..., list[_Row]]


def _swap_layer(W_bar: torch.Tensor, solve: RowSolver, mask: torch.Tensor, rows: list[_Row],
                candidates: int) -> list[int]:
    """One swap round over the whole layer (a layer-wide budget: the pair may span two rows); updates
    ``mask`` and ``rows`` in place and returns the changed rows."""
    cols = W_bar.shape[1]
    drop, add = torch.stack([r.drop for r in rows]).reshape(-1), torch.stack([r.add for r in rows]).reshape(-1)
    for a, b in _pairs(drop, add, None, candidates):
        (i_out, j_out), (i_in, j_in) = divmod(a, cols), divmod(b, cols)
        changed = sorted({i_out, i_in})
        trial = mask[changed].clone()
        trial[changed.index(i_out), j_out], trial[changed.index(i_in), j_in] = False, True
        before = sum(rows[i].value for i in changed)
        if sum(r.value for r in solve(W_bar[changed], trial, stats=False)) < before * (1 - 1e-9):
            mask[changed] = trial
            for i, row in zip(changed, solve(W_bar[changed], trial)):
                rows[i] = row
            return changed
    return []


def _swap_each_row(W_bar: torch.Tensor, solve: RowSolver, mask: torch.Tensor, rows: list[_Row],
                   choose: Chooser | None) -> list[int]:
    """One swap round in every row independently (per-row or N:M budgets): each row takes its candidate swap
    of the largest exact decrease (``_Row.swaps``), the changed rows are solved again (with their next
    candidates unless ``choose`` is None: the last round), and a row whose solve does not confirm the
    decrease keeps its old support. Updates ``mask`` and ``rows`` in place and returns the changed rows."""
    moves = {}
    for i, row in enumerate(rows):
        best = min(row.swaps, key=lambda swap: swap[2], default=None)
        if best is not None and best[2] < -1e-9 * row.value:
            moves[i] = best[:2]
    if not moves:
        return []
    touched = sorted(moves)
    trial = mask[touched].clone()
    for j, i in enumerate(touched):
        out, into = moves[i]
        trial[j, out], trial[j, into] = False, True
    changed = []
    for j, (i, row) in enumerate(zip(touched, solve(W_bar[touched], trial, stats=choose is not None, choose=choose))):
        if row.value < rows[i].value * (1 - 1e-9):
            mask[i], rows[i] = trial[j], row
            changed.append(i)
        else:  # not confirmed: not tried again
            rows[i].swaps = [swap for swap in rows[i].swaps if swap[:2] != moves[i]]
    return changed


def default_swap_rounds(target: LayerTarget) -> int:
    """Swap rounds by budget: with N:M or per-row budgets every row takes a swap per round (MiniLM-L3 at
    2:4, 0/1 round: cosine 0.9898/0.9902); a layer-wide round is one swap per layer, whose figures cost
    about as much as the layer's exact solves and changed its error by 1e-5 relative (README)."""
    return 0 if target.nm is None and target.scope == "layer" else 1


@dataclass(frozen=True)
class Curvature:
    """IHT's curvature ``Hs``: its product ``times(D) = D·Hs``, the same for a D with few nonzeros (``few``,
    cheaper when Hs is held whole) and its largest eigenvalue ``L``."""

    times: Callable[[torch.Tensor], torch.Tensor]
    few: Callable[[torch.Tensor], torch.Tensor]
    L: float


# Nonzeros of D whose rows of Hs are gathered at once by ``Curvature.few``.
_FEW_CHUNK = 4096
# From this width on, Hs's largest eigenvalue is found by Lanczos (0.06 s at d = 3,072, where the full
# eigvalsh took 2.1 s); below it eigvalsh is the faster (0.03 s against 0.17 s at d = 768).
_LANCZOS_FROM = 1024


def _scaled_curvature(problem: LayerProblem) -> Curvature:
    """IHT's curvature in Jacobi-scaled variables in float32, ``Hs = S⁻¹(H + λI)S⁻¹``, with its largest
    eigenvalue (through the factor, ``Hs = YᵀY + λS⁻²``, by Lanczos; so too for a wide Hs held whole)."""
    scale, low = problem.jacobi, problem.low_rank
    if low is None:
        exact = problem.H_l / torch.outer(scale, scale)
        Hs = exact.float()
        if len(Hs) > _LANCZOS_FROM:
            values = exact.cpu().numpy()
            largest = _largest_eigenvalue(lambda v: values @ v, len(values))
        else:
            largest = float(torch.linalg.eigvalsh(Hs)[-1])

        def times(D: torch.Tensor) -> torch.Tensor:
            return D @ Hs

        def few(D: torch.Tensor) -> torch.Tensor:
            rows, cols = torch.nonzero(D, as_tuple=True)
            if len(rows) * 4 > D.shape[0] * D.shape[1]:  # not few: the dense product is cheaper
                return times(D)
            out = torch.zeros_like(D)
            for start in range(0, len(rows), _FEW_CHUNK):
                r, c = rows[start:start + _FEW_CHUNK], cols[start:start + _FEW_CHUNK]
                out.index_add_(0, r, D[r, c, None] * Hs[c])
            return out

        return Curvature(times, few, largest)
    Y = (low.X / scale).float()
    shift = (low.lam / scale.pow(2)).float()

    def times_low_rank(D: torch.Tensor) -> torch.Tensor:
        return torch.addmm(D * shift, D @ Y.T, Y)

    Y64, shift64 = Y.double().cpu().numpy(), shift.double().cpu().numpy()
    return Curvature(times_low_rank, times_low_rank,
                     _largest_eigenvalue(lambda v: Y64.T @ (Y64 @ v) + shift64 * v, Y64.shape[1]))


def _largest_eigenvalue(product: Callable[[np.ndarray], np.ndarray], d: int) -> float:
    """The largest eigenvalue of a symmetric d × d operator from its products (ARPACK's Lanczos)."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    operator = LinearOperator((d, d), matvec=product, dtype=np.float64)
    return float(eigsh(operator, k=1, which="LA", v0=np.ones(d), return_eigenvectors=False)[0])


def solve_chita(problem: LayerProblem, target: LayerTarget, *, max_iter: int = 100, tol: float = 1e-6,
                swap_rounds: int | None = None, restarts: int = 0) -> np.ndarray:
    """CHITA on one layer: IHT in Jacobi-scaled variables ``v_ij = sqrt(H_jj + λ)·w_ij`` (so thresholding
    ranks by saliency) warm-started from the OBS sweep, then the swap search with the exact ridge layer_backsolve
    on the support; ``restarts`` more rounds restart IHT from the result while it improves. IHT only picks
    the support, so it runs in float32; every solve on a support is float64. ``swap_rounds`` None: one
    round with N:M or per-row budgets, none with a layer-wide one (``default_swap_rounds``)."""
    if swap_rounds is None:
        swap_rounds = default_swap_rounds(target)
    W_bar, H_l, scale, low = problem.W_bar, problem.H_l, problem.jacobi, problem.low_rank
    constraint = target.constraint(*W_bar.shape)
    curvature = _scaled_curvature(problem)
    V_bar = (W_bar * scale).float()
    best, best_value = None, math.inf
    start = from_numpy(solve_obs(problem, target)) * scale  # warm start: the OBS sweep's weights
    for _ in range(restarts + 1):
        mask = _iht(V_bar, curvature, constraint, start.float(), max_iter, tol)
        solved = layer_swap_search(W_bar, H_l, mask, target, rounds=swap_rounds, low_rank=low)
        D = solved - W_bar
        value = problem._energy(D) + problem.lam * float(D.pow(2).sum())
        if value >= best_value * (1 - tol):
            break
        best, best_value, start = solved, value, solved * scale
    return best.cpu().numpy()


def _prune_counts(target: LayerTarget, rows: int, start: int, stop: int) -> int:
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
    return largest_mask(-scores.reshape(-1), count).reshape(scores.shape).to(scores.device)


# Columns of a block swept one by one between products that update the rest of the block.
SUB_BLOCK = 8


def _sweep_block(block: np.ndarray, U_b: np.ndarray, pruned: np.ndarray, nm: tuple[int, int] | None) -> np.ndarray:
    """One block's OBS sweep in place, transposed (row j of ``block``/``pruned`` is column j): prune column j's
    chosen weights and spread ``e = w/U_jj`` over the next columns along ``U_j,j+1:``, the rest of the block
    every SUB_BLOCK columns by one product. With ``nm`` each group's mask is chosen from its updated weights.
    Returns the errors (same layout). numpy per column: a torch call costs several times as much here."""
    width = len(block)
    inverse = 1.0 / np.diagonal(U_b)
    errors = np.zeros_like(block)
    step = SUB_BLOCK if nm is None else max(1, SUB_BLOCK // nm[1]) * nm[1]
    for start in range(0, width, step):
        stop = min(start + step, width)
        for j in range(start, stop):
            if nm is not None and j % nm[1] == 0:
                n, m = nm
                scores = block[j:j + m] ** 2 * inverse[j:j + m, None] ** 2
                pruned[j:j + m] = False
                np.put_along_axis(pruned[j:j + m], np.argsort(scores, axis=0, kind="stable")[:m - n], True, axis=0)
            errors[j] = np.where(pruned[j], block[j] * inverse[j], 0.0)
            block[j + 1:stop] -= np.outer(U_b[j, j + 1:stop], errors[j])
        if stop < width:  # torch's product: numpy's BLAS threads cost more than they gain at this size
            rest = torch.from_numpy(block[stop:])
            rest.addmm_(torch.from_numpy(U_b[start:stop, stop:]).T, torch.from_numpy(errors[start:stop]), alpha=-1.0)
    block[pruned] = 0.0
    return errors


def solve_obs(problem: LayerProblem, target: LayerTarget, *, block_size: int = 128) -> np.ndarray:
    """The OBS column sweep: with ``U`` the upper Cholesky factor of ``(H + λI)⁻¹``, prune column j's chosen
    weights and spread the error ``e = (w − q)/U_jj`` over the later columns along ``U_j,j:``. Masks are
    chosen per block of columns by ``w²/U_jj²`` (N:M: per group of M); updates beyond the block are
    applied once per block (each block is swept on the CPU, ``_sweep_block``)."""
    rows, cols = problem.W_bar.shape
    U = problem.obs_factor
    W_new = problem.W_bar.clone()
    if target.nm is not None:
        block_size = max(1, block_size // target.nm[1]) * target.nm[1]
    for start in range(0, cols, block_size):
        stop = min(start + block_size, cols)
        block, U_b = W_new[:, start:stop], U[start:stop, start:stop]
        if target.nm is None:
            pruned = _lowest(block.pow(2) / U_b.diagonal().pow(2), _prune_counts(target, rows, start, stop),
                             target.scope == "row").T.cpu().numpy().copy()
        else:
            pruned = np.zeros((stop - start, rows), dtype=bool)
        swept = block.T.cpu().numpy().copy()
        errors = _sweep_block(swept, U_b.cpu().numpy(), pruned, target.nm)
        W_new[:, start:stop] = torch.from_numpy(swept.T).to(W_new.device)
        W_new[:, stop:].addmm_(torch.from_numpy(errors.T).to(W_new.device), U[start:stop, stop:], alpha=-1.0)
    return W_new.cpu().numpy()


def solve_wanda(problem: LayerProblem, target: LayerTarget) -> np.ndarray:
    """Wanda: keep the weights with the largest ``|W_ij|·‖X_j‖₂`` (``‖X_j‖₂² = H_jj``), values unchanged;
    the ridge is not used (no solve)."""
    W_bar = problem.W_bar
    scores = W_bar.abs() * problem.H.diagonal().clamp_min(0.0).sqrt()
    mask = target.constraint(*W_bar.shape).project(scores.reshape(-1)).reshape(W_bar.shape)
    return torch.where(mask, W_bar, 0.0).cpu().numpy()
