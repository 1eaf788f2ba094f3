"""The Krylov stationary solve's preconditioner: the slow-manifold (Smoluchowski) coarse
correction for overdamped drifts, its Galerkin matrix, and what it buys."""

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from fpsolver import stationary as st
from fpsolver import theory
from fpsolver.case import case_from_dict, load_case
from fpsolver.fv import FPOperator, jacobian_matrix, marginal_matrix
from fpsolver.grid import uniform_grid
from fpsolver.preconditioner import (StationaryPreconditioner, conditional_velocity_profiles,
                                     drift_rates)
from fpsolver.solve import setup_problem

NONCOMMUTING = Path(__file__).resolve().parents[1] / "examples" / "noncommuting.toml"


def _overdamped(hessian, cells):
    """Plain SGD (β = 0) at η = 1.5e-3 on ``hessian``: the velocity relaxes at ≈ 1370 per
    unit time, the position at ~0.1 (a random case whose 4-D solve stalled at 1e-2 with
    line solves alone)."""
    d = len(hessian)
    return setup_problem(case_from_dict({
        "name": "overdamped",
        "sgd": {"lr": 1.5e-3, "momentum": 0.0, "weight_decay": 0.011, "batch_size": 244},
        "loss": {"hessian": hessian, "minimum": [0.0] * d},
        "noise": {"model": "proportional", "sigma2": 0.015},
        "grid": {"cells": cells}}))


ROTATED = [[0.188, 0.071], [0.071, 0.129]]


def test_marginal_matrix_is_the_galerkin_product_of_the_jacobian():
    """R·J·P from 25 coloured products equals the dense product of the probed Jacobian with
    the basis and the velocity sums (round-off); on a box with unequal axes."""
    prob = _overdamped(ROTATED, 8)
    g = prob.grid
    grid = uniform_grid((8, 10, 9, 8), g.bounds)
    op = FPOperator(grid, prob.op.drift, prob.op.diffusion, prob.op.mean)
    p = theory.gaussian_cell_averages(*prob.stationary, grid.edges).ravel()
    profiles = conditional_velocity_profiles(op)
    n_pos, n_vel = profiles.shape
    basis = sp.csr_matrix((profiles.ravel(), (np.arange(op.size),
                                              np.repeat(np.arange(n_pos), n_vel))),
                          shape=(op.size, n_pos))
    dense = (jacobian_matrix(op, p) @ basis).toarray().reshape(n_pos, n_vel, n_pos).sum(1)
    got = marginal_matrix(lambda w: op.jacobian_apply(p, w), profiles, (8, 10)).toarray()
    scale = np.abs(dense).max()
    assert np.abs(got - dense).max() <= 1e-13 * scale
    assert np.abs(got.sum(axis=0)).max() <= 1e-12 * scale  # columns conserve mass


def test_velocity_profiles_are_the_stationary_conditional_gaussians():
    """Each row sums to 1 and has the mean E[v | θ] = Σ_vθ Σ_θθ⁻¹ θ at its position cell's
    centre; the Gaussian spans ≥ 4 cells per standard deviation here, so the midpoint sum
    matches the integral to ≪ 1e-3 h."""
    prob = _overdamped(ROTATED, 8)
    grid = uniform_grid((8, 8, 40, 40), prob.grid.bounds)
    op = FPOperator(grid, prob.op.drift, prob.op.diffusion, prob.op.mean)
    profiles = conditional_velocity_profiles(op)
    np.testing.assert_allclose(profiles.sum(axis=1), 1.0, rtol=1e-14)
    cov = theory.stationary_cov(prob.model)
    gain = cov[2:, :2] @ np.linalg.inv(cov[:2, :2])
    c = grid.centers
    v = np.stack(np.meshgrid(c[2], c[3], indexing="ij"), axis=-1).reshape(-1, 2)
    for i, j in [(2, 3), (0, 7), (4, 4)]:
        mean = profiles[i * 8 + j] @ v
        expected = gain @ np.array([c[0][i], c[1][j]])
        assert np.all(np.abs(mean - expected) <= 1e-3 * grid.spacing[2:])


def _gmres_iterations(op, p, precond, cycles=30):
    count = [0]
    a = spla.LinearOperator((op.size, op.size), matvec=lambda w: op.jacobian_apply(p, w),
                            dtype=float)
    rate = op.rate(p)
    delta, _ = spla.gmres(a, -rate, rtol=1e-6, restart=10, maxiter=cycles, M=precond,
                          callback=lambda r: count.__setitem__(0, count[0] + 1),
                          callback_type="pr_norm")
    true = np.linalg.norm(op.jacobian_apply(p, delta) + rate) / np.linalg.norm(rate)
    return count[0], true


def test_slow_manifold_correction_makes_the_overdamped_newton_system_solvable():
    """Plain SGD at η = 1.5e-3 (Re eig A from 0.09 to 1366), 16⁴: GMRES(10) on the Newton
    system at the Gaussian's cell averages reaches 1e-6 in ≤ 60 iterations (measured 38) with
    the coarse correction; with line solves alone (τ from γ_min, as before) it has not
    reached 1e-3 after 100 (measured 1.6: no progress)."""
    prob = _overdamped(ROTATED, 16)
    op = prob.op
    p = theory.gaussian_cell_averages(*prob.stationary, op.grid.edges).ravel()
    precond = StationaryPreconditioner(op)
    assert precond.coarse
    slow, fast = drift_rates(op)
    assert precond.tau == pytest.approx(1 / np.sqrt(op.max_rate() * fast), rel=1e-12)
    its, true = _gmres_iterations(op, p, precond.operator(lambda w: op.jacobian_apply(p, w)))
    assert its <= 60 and true <= 1.5e-6
    tau = 1 / np.sqrt(op.max_rate() * slow)
    lines = spla.LinearOperator((op.size, op.size), dtype=float,
                                matvec=lambda r: op.af_precondition(tau, r))
    its, true = _gmres_iterations(op, p, lines, cycles=10)
    assert its == 100 and true > 1e-3


def test_underdamped_drift_keeps_the_line_solves_alone():
    """§13 case (complex drift eigenvalues, one real part): no coarse correction, and τ
    from the slowest rate."""
    op = setup_problem(load_case(NONCOMMUTING), cells=12).op
    precond = StationaryPreconditioner(op)
    slow, fast = drift_rates(op)
    assert not precond.coarse
    assert fast == pytest.approx(slow, rel=1e-12)
    assert precond.tau == pytest.approx(1 / np.sqrt(op.max_rate() * slow), rel=1e-12)


def _plane(prob, axes):
    """The 2-D operator of the phase-space plane ``axes`` (θ_a, v_a) of a separable problem,
    on the same cells and bounds."""
    g, op = prob.grid, prob.op
    ix = np.ix_(axes, axes)
    grid = uniform_grid([g.shape[k] for k in axes], [g.bounds[k] for k in axes])
    return FPOperator(grid, op.drift[ix], op.diffusion[ix], op.mean[list(axes)])


def test_separable_overdamped_4d_stationary_is_the_product_of_its_2d_planes():
    """Diagonal Hessian, proportional noise: the operator is L₁ ⊗ I + I ⊗ L₂ and the scheme
    is homogeneous of degree one along each axis, so the discrete 4-D stationary density is
    the product of the two planes' (direct LU). The Krylov solve with the coarse correction
    reaches it to its tolerance: L1 difference ≤ 1e-5 at relative residual 1e-9 (measured
    5.9e-8)."""
    prob = _overdamped([[0.2, 0.0], [0.0, 0.09]], 16)
    res = st.stationary(prob.op, tol=1e-9, max_iter=60)
    assert res.success, res.message
    first = st.stationary(_plane(prob, [0, 2]), tol=1e-13).p
    second = st.stationary(_plane(prob, [1, 3]), tol=1e-13).p
    product = np.einsum("ac,bd->abcd", first, second)
    assert np.abs(res.p - product).sum() * prob.grid.cell_volume <= 1e-5


def test_2d_krylov_path_reaches_the_direct_solution(monkeypatch):
    """2-D grids above DIRECT_MAX_CELLS take the GMRES path with the one-axis coarse
    correction (5 coloured products): forced on an overdamped 64² case it ends at the
    direct LU's density to its tolerance (L1 ≤ 1e-5 at relative residual 1e-9; measured
    8.4e-7)."""
    prob = _overdamped([[0.188]], 64)
    assert StationaryPreconditioner(prob.op).coarse
    direct = st.stationary(prob.op, tol=1e-12)
    monkeypatch.setattr(st, "use_direct", lambda op: False)
    krylov = st.stationary(prob.op, tol=1e-9, max_iter=60)
    assert direct.success and krylov.success and krylov.message.find("GMRES") > 0
    assert np.abs(direct.p - krylov.p).sum() * prob.grid.cell_volume <= 1e-5
