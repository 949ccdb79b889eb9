"""The CHITA solver on synthetic problems small enough to enumerate every support (p <= 16)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from onnxprune.methods.solvers import chita_problem
from onnxprune.methods.solvers.chita_problem import SupportConstraint, FisherProblem, Segment
from onnxprune.methods.solvers import chita_solver as solver


def _problem(A: np.ndarray, anchor: np.ndarray, ridge: float, blocks=None, first_order=False) -> FisherProblem:
    return FisherProblem.build(torch.tensor(A.T.copy(), dtype=torch.float32),
                                torch.tensor(anchor, dtype=torch.float32), ridge, first_order, blocks)


def _best_subset(A: np.ndarray, anchor: np.ndarray, ridge: float, keep: int) -> float:
    """The optimum of ½‖A(w − w̄)‖² + (ρ/2)‖w − w̄‖² over every support of size ``keep`` (float64)."""
    y, best = A @ anchor, np.inf
    for support in itertools.combinations(range(A.shape[1]), keep):
        cols = A[:, support]
        w = np.zeros(A.shape[1])
        w[list(support)] = np.linalg.solve(cols.T @ cols + ridge * np.eye(keep),
                                           cols.T @ y + ridge * anchor[list(support)])
        r = A @ w - y
        best = min(best, 0.5 * r @ r + 0.5 * ridge * np.sum((w - anchor) ** 2))
    return best


def _regression(seed: int) -> tuple[np.ndarray, np.ndarray, float, int]:
    """A sparse-regression instance: Gaussian design with uneven column scales, n >= 2p."""
    rng = np.random.default_rng(seed)
    p = int(rng.integers(8, 15))
    A = rng.standard_normal((int(rng.integers(2 * p, 4 * p)), p)) * np.exp(rng.normal(0, 0.5, p))
    return A, rng.standard_normal(p), 1e-2 * np.sum(A ** 2) / p, int(rng.integers(2, p - 1))


def _softmax_regression(seed: int, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample gradients (A) and weights of a fitted 3-class, 5-feature softmax regression (p = 15)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen) * torch.exp(0.5 * torch.randn(5, generator=gen))
    labels = torch.multinomial(torch.softmax(x @ torch.randn(3, 5, generator=gen).T, dim=1), 1, generator=gen)[:, 0]
    w = torch.zeros(3, 5, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=200)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T, labels) + 1e-3 * w.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    per_sample = torch.func.vmap(torch.func.grad(
        lambda v, xi, yi: torch.nn.functional.cross_entropy((xi @ v.T)[None], yi[None])),
        in_dims=(None, 0, 0))(w.detach(), x, labels)
    return per_sample.reshape(n, -1).double().numpy(), w.detach().reshape(-1).double().numpy()


@pytest.mark.parametrize("patience", [0, 30])
@pytest.mark.parametrize("seed", range(12))
def test_chita_is_within_one_percent_of_the_best_subset(seed, patience):
    A, anchor, ridge, keep = _regression(seed)
    problem = _problem(A, anchor, ridge)
    result = solver.chita(problem, SupportConstraint.top_k(A.shape[1], keep), patience=patience)
    optimum = _best_subset(A, anchor, ridge, keep)
    assert problem.value(result.w) <= optimum * 1.01 + 1e-9
    assert int(result.mask.sum()) == keep and int((result.w != 0).sum()) <= keep


def test_chita_on_pruning_like_problems_is_within_one_percent_and_beats_magnitude():
    gaps = []
    for seed in range(4):
        A, anchor = _softmax_regression(seed)
        ridge = 1e-2 * np.sum(A ** 2) / A.shape[1]
        for keep in (4, 8, 11):
            problem = _problem(A, anchor, ridge)
            constraint = SupportConstraint.top_k(A.shape[1], keep)
            found = problem.value(solver.chita(problem, constraint).w)
            magnitude = problem.value(solver.fisher_backsolve(problem, constraint.project(problem.anchor)))
            optimum = _best_subset(A, anchor, ridge, keep)
            assert found <= magnitude * (1 + 1e-6)
            gaps.append(found / optimum - 1)
    assert max(gaps) < 0.01


def _random_problem(seed: int, p: int = 300, n: int = 40, blocks=None, first_order=False):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, p)) @ (np.eye(p) + 0.1 * rng.standard_normal((p, p)))
    return _problem(A, rng.standard_normal(p), 0.05 * np.sum(A ** 2) / p, blocks, first_order)


@pytest.mark.parametrize("blocks", [None, [(0, 100), (100, 200), (200, 250), (250, 300)]])
def test_iht_objective_never_increases(blocks):
    problem = _random_problem(1, blocks=blocks)
    constraint = SupportConstraint.top_k(problem.size, 60)
    values = [problem.value(solver.iht(problem, constraint, problem.anchor, max_iter=i, tol=0).w)
              for i in range(0, 40, 3)]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(values, values[1:]))
    assert values[-1] < values[0] * 0.9
    recorded = solver.iht(problem, constraint, problem.anchor, max_iter=40, tol=0).objectives
    assert all(b <= a * (1 + 1e-6) for a, b in zip(recorded, recorded[1:]))


def test_patience_stops_iht_once_the_support_settles():
    problem = _random_problem(2)
    constraint = SupportConstraint.top_k(problem.size, 60)
    full = solver.iht(problem, constraint, problem.anchor, max_iter=200, tol=0, refit_after=0)
    early = solver.iht(problem, constraint, problem.anchor, max_iter=200, tol=0, patience=10, refit_after=0)
    assert len(early.objectives) < len(full.objectives) == 201
    exact = [problem.value(solver.fisher_backsolve(problem, r.mask)) for r in (full, early)]
    assert exact[1] <= exact[0] * 1.01  # the backsolve on the settled support is as good


@pytest.mark.parametrize("keep", [20, 60, 200])
def test_refit_on_a_settled_support_reaches_a_fixed_point_of_iht_in_few_iterations(keep):
    problem = _random_problem(2)
    constraint = SupportConstraint.top_k(problem.size, keep)
    crawl = solver.iht(problem, constraint, problem.anchor, max_iter=200, tol=0, refit_after=0)
    fast = solver.iht(problem, constraint, problem.anchor, max_iter=200, tol=0)
    assert len(fast.objectives) < len(crawl.objectives) / 4
    assert fast.objectives[-1] <= problem.value(solver.fisher_backsolve(problem, crawl.mask)) * (1 + 1e-9)
    assert fast.objectives[-1] == pytest.approx(problem.value(solver.fisher_backsolve(problem, fast.mask)), rel=1e-9)
    again = solver.iht(problem, constraint, fast.w, max_iter=50, tol=0, refit_after=0)
    assert torch.equal(again.mask, fast.mask)  # IHT from there keeps the support: a fixed point


def _assert_exact_on_support(problem: FisherProblem, mask: torch.Tensor, w: torch.Tensor) -> None:
    """``w`` is the exact ridge minimiser of every block on its part of ``mask``, and zero off it."""
    w = w.double().numpy()
    at, anchor, ridge = problem.at.double().numpy(), problem.anchor.double().numpy(), problem.ridge.numpy()
    for b, (start, stop) in enumerate(problem.blocks):
        cols = np.flatnonzero(mask[start:stop].numpy()) + start
        A_s = at[cols].T
        target = problem.y[b].numpy()
        expected = np.linalg.solve(A_s.T @ A_s + np.diag(ridge[cols]), A_s.T @ target + ridge[cols] * anchor[cols])
        np.testing.assert_allclose(w[cols], expected, rtol=2e-4, atol=2e-5)
    assert np.all(w[~mask.numpy()] == 0)


@pytest.mark.parametrize("keep", [10, 150])  # a support smaller and larger than n = 40 rows
@pytest.mark.parametrize("first_order", [False, True])
def test_backsolve_is_the_exact_minimiser_on_its_support(keep, first_order):
    problem = _random_problem(2, blocks=[(0, 120), (120, 300)], first_order=first_order)
    rng = np.random.default_rng(3)
    mask = torch.zeros(problem.size, dtype=torch.bool)
    mask[torch.from_numpy(rng.choice(problem.size, keep, replace=False))] = True
    _assert_exact_on_support(problem, mask, solver.fisher_backsolve(problem, mask))
    # a second support differing in the second block only: the first block's solution is kept, the second's solved
    moved = mask.clone()
    moved[120:] = torch.from_numpy(rng.permutation(moved[120:].numpy()))
    first = problem.solved[0][1]
    _assert_exact_on_support(problem, moved, solver.fisher_backsolve(problem, moved))
    assert problem.solved[0][1] is first and torch.equal(problem.solved[1][0], moved[120:])


def test_rescaling_forgets_the_kept_backsolves():
    problem = _random_problem(2, blocks=[(0, 120), (120, 300)])
    mask = torch.arange(problem.size) % 3 == 0
    solver.fisher_backsolve(problem, mask)
    scaled = problem.rescale(torch.linspace(0.5, 2.0, problem.size, dtype=torch.float64))
    assert not problem.solved
    _assert_exact_on_support(scaled, mask, solver.fisher_backsolve(scaled, mask))


def test_gradient_matches_finite_differences_with_blocks():
    problem = _random_problem(4, p=30, n=12, blocks=[(0, 10), (10, 30)], first_order=True)
    w = torch.randn(30, generator=torch.Generator().manual_seed(0))
    grad = problem.gradient(w, problem.residual(w)).double()
    step = 1e-2
    numeric = torch.tensor([(problem.value(w + step * e) - problem.value(w - step * e)) / (2 * step)
                            for e in torch.eye(30)], dtype=torch.float64)
    torch.testing.assert_close(grad, numeric, rtol=1e-3, atol=1e-2)


def test_projection_and_support_step_respect_groups():
    constraint = SupportConstraint((Segment(0, 8, 4, 2), Segment(8, 14, 6, 6),
                                    Segment(14, 20, 6, 1)))
    values = torch.tensor([4., -1., 3., 2., 0.5, -6., 1., 0.1, 1, 2, 3, 4, 5, 6, 1, -9, 2, 3, 0, 1])
    mask = constraint.project(values)
    assert mask[:4].tolist() == [True, False, True, False] and mask[4:8].tolist() == [False, True, True, False]
    assert mask[8:14].all() and mask[14:].tolist() == [False, True, False, False, False, False]
    assert int(mask.sum()) == constraint.budget == 11
    w = torch.where(mask, values, torch.zeros(()))
    g = torch.randn(20, generator=torch.Generator().manual_seed(1))
    tau = constraint.support_step(w, g, mask)
    assert torch.equal(constraint.project(w - 0.999 * tau * g), mask)
    assert not torch.equal(constraint.project(w - 1.01 * tau * g), mask)


def test_ranges_never_split_groups_and_windows_keep_the_budget():
    constraint = SupportConstraint((Segment(0, 40, 4, 1), Segment(40, 77, 37, 9)))
    ranges = constraint.ranges(10)
    assert ranges[0][0] == 0 and ranges[-1][1] == 77
    assert all(a < b and (b <= 40 and b % 4 == 0 or b > 40) for a, b in ranges)
    reference = constraint.project(torch.randn(77, generator=torch.Generator().manual_seed(2)))
    assert sum(constraint.window(a, b, reference).budget for a, b in ranges) == constraint.budget


def test_active_set_and_uniform_budgets_give_exact_sparsity():
    problem = _random_problem(5, p=2000, n=30)
    uniform = SupportConstraint((Segment(0, 1200, 1200, 100), Segment(1200, 2000, 800, 50)))
    for constraint in (SupportConstraint.top_k(2000, 150), uniform):
        result = solver.chita(problem, constraint, active_ratio=1.5)
        assert int(result.mask.sum()) == 150
        assert int(result.mask[:1200].sum()) == 100 or constraint is not uniform
        assert problem.value(result.w) < problem.value(solver.fisher_backsolve(problem, constraint.project(problem.anchor)))


@pytest.mark.parametrize("tile_bytes", [4 << 20, 4 * 40 * 7])  # whole blocks per tile, and pieces of blocks
def test_tiled_products_match_dense_algebra(monkeypatch, tile_bytes):
    monkeypatch.setattr(chita_problem, "_TILE_BYTES", tile_bytes)
    blocks = [(0, 20), (20, 40), (40, 60), (60, 75), (75, 300)]
    problem = _random_problem(6, blocks=blocks)
    gen = torch.Generator().manual_seed(0)
    v, r = torch.randn(300, generator=gen), torch.randn(len(blocks), 40, generator=gen, dtype=torch.float64)
    mask = torch.rand(300, generator=gen) > 0.5
    at = problem.at.double()
    dense_apply = torch.stack([at[a:b].T @ v[a:b].double() for a, b in blocks])
    dense_apply_t = torch.cat([at[a:b] @ r[i] for i, (a, b) in enumerate(blocks)])
    torch.testing.assert_close(problem.apply(v), dense_apply, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(problem.apply_t(r).double(), dense_apply_t, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(problem.normal(v).double(), problem.apply_t(problem.apply(v)).double(),
                               rtol=1e-5, atol=1e-3)
    w = torch.where(mask, v, torch.zeros(()))
    residual = problem.residual(w)
    d = problem.descent(w, residual, mask)
    g = problem.gradient(w, residual)
    g_on = torch.where(mask, g, torch.zeros(()))
    torch.testing.assert_close(d.g, g, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(d.g_on, g_on, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(d.u, problem.apply(g_on), rtol=1e-5, atol=1e-3)
    curvature = float((d.u * d.u).sum()) + float(problem.ridge @ g_on.double().pow(2))
    assert d.gg == pytest.approx(float(g_on.double() @ g_on.double()), rel=1e-6)
    assert d.curvature == pytest.approx(curvature, rel=1e-6)


def test_active_set_in_place_matches_its_restricted_copy():
    blocks = [(0, 100), (100, 200), (200, 300)]
    problem = _random_problem(7, blocks=blocks)
    constraint = SupportConstraint.top_k(300, 80)
    active = constraint.scaled(1.5).project(problem.anchor)
    w0 = torch.where(constraint.project(problem.anchor), problem.anchor, torch.zeros(()))
    masked = solver.iht(problem, constraint, w0, active=active, tol=0, max_iter=30)
    index = torch.nonzero(active).squeeze(1)
    copied = solver.iht(problem.restrict(index), constraint.restrict(index), w0[index], tol=0, max_iter=30)
    assert torch.equal(masked.mask, torch.zeros(300, dtype=torch.bool).index_fill_(0, index[copied.mask], True))
    torch.testing.assert_close(masked.w[index], copied.w, rtol=1e-4, atol=1e-5)
    assert not masked.w[~active].any()
    np.testing.assert_allclose(masked.objectives, copied.objectives, rtol=1e-5)
    assert solver.lipschitz(problem, active=active) == pytest.approx(solver.lipschitz(problem.restrict(index)), rel=1e-5)


def test_support_step_equals_the_float64_formula():
    gen = torch.Generator().manual_seed(3)
    constraint = SupportConstraint((Segment(0, 4000, 4000, 1500), Segment(4000, 4800, 8, 3)))
    w = torch.randn(4800, generator=gen) * torch.exp(3 * torch.randn(4800, generator=gen))
    g = torch.randn(4800, generator=gen)
    mask = constraint.project(w)
    w = torch.where(mask, w, torch.zeros(()))
    expected = math.inf
    for s in constraint.segments:
        shape = (-1, s.group)
        kept = mask[s.start:s.stop].reshape(shape)
        wg, gg = w[s.start:s.stop].reshape(shape).double(), g[s.start:s.stop].reshape(shape).double()
        outside = torch.where(kept, 0.0, gg.abs()).amax(dim=1, keepdim=True)
        rate = torch.sign(wg) * gg + outside
        expected = min(expected, float(torch.where(kept & (rate > 0), wg.abs() / rate, math.inf).min()))
    assert constraint.support_step(w, g, mask) == expected
