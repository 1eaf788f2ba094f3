"""Finite-volume operator: numba kernels vs numpy twins, conservation, positivity, Jacobian."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import scipy.sparse as sp

from fpsolver.case import default_case
from fpsolver.fv import (FPOperator, assemble, jacobian_matrix, kernels, pinned,
                         pinned_jacobian_lu, reference, sparse_lu)
from fpsolver.fv.band import VERIFY_TOL, LapackBandLu, NoPivotBandLu, band_lu
from fpsolver.fv.policy import num_threads
from fpsolver.grid import uniform_grid
from fpsolver.solve import setup_problem
from fpsolver.stationary import gaussian_start


def _operator_2d():
    grid = uniform_grid((12, 10), ((-0.5, 0.6), (-2.0, 2.2)))
    a = np.array([[0.0, -1.0], [20.6, 2.1]])
    d = np.diag([0.0, 0.34])
    return FPOperator(grid, a, d, np.array([0.05, 0.0]))


def _operator_4d(d12=0.51):
    """Non-commuting noise: non-diagonal K/m and D_vv (cross-diffusion) on an uneven grid."""
    grid = uniform_grid((9, 8, 10, 8), ((-0.3, 0.3), (-0.25, 0.3), (-1.4, 1.3), (-0.8, 0.9)))
    km = np.array([[16.1, 8.0], [8.0, 6.7]])
    a = np.block([[np.zeros((2, 2)), -np.eye(2)], [km, 2.1 * np.eye(2)]])
    d = np.zeros((4, 4))
    d[2:, 2:] = [[0.85, d12], [d12, 0.85]]
    return FPOperator(grid, a, d, np.array([0.01, -0.02, 0.0, 0.0]))


FOUR_D_CROSS = [0.51, -0.4, 0.8, -0.8]  # |D_12| ≤ / > 0.669: linear / linear + clipped


@pytest.mark.parametrize("make", [_operator_2d] + [lambda d=d: _operator_4d(d)
                                                   for d in FOUR_D_CROSS])
@pytest.mark.parametrize("jac", [kernels.SCHEME, kernels.JACOBIAN, kernels.FIRST_ORDER])
def test_numba_kernels_agree_with_numpy_twins(make, jac, rng):
    op = make()
    p, w = rng.random(op.size), rng.random(op.size) - 0.3
    out = np.empty(op.size)
    kernels.rate_kernel(p, w, jac, *op.kernel_args(), False, 2, out)
    twin = reference.rate(p, w, jac, *op.kernel_args())
    scale = np.abs(twin).max()
    np.testing.assert_allclose(out, twin, rtol=0, atol=1e-13 * scale)
    streamed = np.empty(op.size)  # non-temporal stores, other task count: the same numbers
    kernels.rate_kernel(p, w, jac, *op.kernel_args(), True, 7, streamed)
    np.testing.assert_array_equal(streamed, out)
    flux = np.empty((len(op.shape), op.size))
    kernels.face_flux_kernel(p, w, jac, *op.kernel_args(), 2, flux)
    twin_f = reference.face_fluxes(p, w, jac, *op.kernel_args())
    np.testing.assert_allclose(flux, twin_f, rtol=0, atol=1e-13 * np.abs(twin_f).max())
    other = np.empty_like(flux)  # another task count: the same numbers
    kernels.face_flux_kernel(p, w, jac, *op.kernel_args(), 7, other)
    np.testing.assert_array_equal(other, flux)


def test_the_smooth_path_gives_the_fluxes_of_the_full_one(rng):
    """Scheme runs of ≥ SMOOTH_MIN_RUN faces take the smooth path (no saturation) while
    the previous chunk along the axis had no saturated face. Rows 0-5 of noise (saturating
    every chunk) before a smooth density send the next clean rows' first chunks through
    the full path, where the all-smooth density sends them through the smooth one: the
    fluxes and rates of the clean rows (8 on: beyond the noise's stencil) are the same
    bits, and they agree with the numpy twin. The smooth density (slopes ≤ 3 % of p)
    saturates nowhere, so the all-smooth run takes the smooth path throughout."""
    n_v = 2 * kernels.SMOOTH_MIN_RUN + 7  # a partial chunk at the end of each row
    grid = uniform_grid((16, n_v), ((-0.5, 0.6), (-2.0, 2.2)))
    op = FPOperator(grid, np.array([[0.0, -1.0], [20.6, 2.1]]), np.diag([0.0, 0.34]),
                    np.array([0.05, 0.0]))
    x, y = np.meshgrid(np.linspace(0, 3, 16), np.linspace(0, 5, n_v), indexing="ij")
    smooth = 1.0 + 0.1 * np.sin(x) * np.cos(y)
    assert np.abs(np.diff(smooth, axis=0)).max() < 0.03 and np.abs(np.diff(smooth)).max() < 0.03
    noisy = smooth.copy()
    noisy[:6] = rng.random((6, n_v))
    fluxes, rates = [], []
    for p in (smooth.ravel(), noisy.ravel()):
        flux, rate = np.empty((2, op.size)), np.empty(op.size)
        kernels.face_flux_kernel(p, p, kernels.SCHEME, *op.kernel_args(), 1, flux)
        kernels.rate_kernel(p, p, kernels.SCHEME, *op.kernel_args(), False, 1, rate)
        twin = reference.rate(p, p, kernels.SCHEME, *op.kernel_args())
        np.testing.assert_allclose(rate, twin, rtol=0, atol=1e-13 * np.abs(twin).max())
        fluxes.append(flux.reshape(2, 16, n_v))
        rates.append(rate.reshape(16, n_v))
    np.testing.assert_array_equal(fluxes[1][:, 8:], fluxes[0][:, 8:])
    np.testing.assert_array_equal(rates[1][8:], rates[0][8:])


@pytest.mark.parametrize("make", [_operator_2d, lambda: _operator_4d(0.8)])
def test_ssp_rk3_kernel_agrees_with_its_twin(make, rng):
    """The n² SSP-RK(n², 3) stages in one kernel call equal its numpy twin stage by stage
    (round-off of a few rate evaluations), with and without non-temporal stores, for any
    number of parallel tasks."""
    op = make()
    p = rng.random(op.size)
    h = 0.3 / op.max_rate()
    twin = reference.ssp_rk3_step(p, h, *op.kernel_args(), flush=op.flush)
    s1, s2, out = (np.empty(op.size) for _ in range(3))
    kernels.ssp_rk3_kernel(p, h, *op.kernel_args(), False, 2, op.flush, s1, s2, out,
                           kernels.ssp_stats_array(op.size, op.shape[-1], 2))
    np.testing.assert_allclose(out, twin, rtol=0, atol=1e-13 * np.abs(twin).max())
    streamed = np.empty(op.size)
    kernels.ssp_rk3_kernel(p, h, *op.kernel_args(), True, 5, op.flush, s1, s2, streamed,
                           kernels.ssp_stats_array(op.size, op.shape[-1], 5))
    np.testing.assert_array_equal(streamed, out)
    # three tasks on one thread run one after the other: the first takes every block of
    # every stage (a task waits only for blocks that a running task has taken); run in a
    # thread of its own so that a deadlock fails the test instead of hanging the suite
    def one_thread():
        with num_threads(1):
            kernels.ssp_rk3_kernel(p, h, *op.kernel_args(), False, 3, op.flush, s1, s2,
                                   streamed,
                                   kernels.ssp_stats_array(op.size, op.shape[-1], 3))
    streamed[:] = np.nan
    worker = threading.Thread(target=one_thread, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "SSP step with 3 tasks on one thread did not finish"
    np.testing.assert_array_equal(streamed, out)
    dt = h * kernels.SSP_COEFFICIENT
    np.testing.assert_array_equal(op.ssp_rk3_step(p, dt, s1, s2, np.empty(op.size)), out)


@pytest.mark.parametrize("make", [_operator_2d, lambda: _operator_4d(0.8)])
def test_several_ssp_steps_in_one_call_equal_single_steps(make, rng):
    """Three and four SSP-RK(25,3) steps in one kernel call (alternating between out and p)
    equal as many one-step calls bit for bit, and report each step's sum, minimum and
    maximum (the sum in chunks: round-off, measured ≤ 2e-16 relative)."""
    op = make()
    p0 = rng.random(op.size)
    dt = 0.9 * kernels.SSP_COEFFICIENT / op.max_rate()
    s1, s2 = np.empty(op.size), np.empty(op.size)
    singles, p = [], p0.copy()
    for _ in range(4):
        p = op.ssp_rk3_step(p, dt, s1, s2, np.empty(op.size)).copy()
        singles.append(p)
    for steps in (3, 4):
        p, out = p0.copy(), np.empty(op.size)
        result, stats = op.ssp_rk3_steps(p, dt, steps, s1, s2, out)
        assert result is (out if steps % 2 else p)
        np.testing.assert_array_equal(result, singles[steps - 1])
        want = np.array([[q.sum(), q.min(), q.max()] for q in singles[:steps]])
        np.testing.assert_allclose(stats[:, 0], want[:, 0], rtol=1e-14)
        np.testing.assert_array_equal(stats[:, 1:], want[:, 1:])


def test_explicit_step_flushes_subnormal_tails_and_keeps_nan(rng):
    """Mass in the first θ row of 100, every other cell at 1e-320 … 1e-260 (subnormal
    below 2.2e-308): the 25 stages reach at most 50 rows (two per stage), so the step
    stores exact zeros beyond them, where the unflushed step leaves values below op.flush,
    equals its twin, and keeps the mass to 1e-14 (what is dropped is ≤ 1e-250 of it); a
    NaN is not flushed away."""
    op = FPOperator(uniform_grid((100, 10), ((-5.0, 5.0), (-2.0, 2.2))),
                    np.array([[0.0, -1.0], [20.6, 2.1]]), np.diag([0.0, 0.34]), np.zeros(2))
    vol = op.grid.cell_volume
    h = 0.3 / op.max_rate()
    with np.errstate(under="ignore"):  # subnormal on purpose
        p = 10.0 ** rng.uniform(-320, -260, op.size)
        p[:10] = 1.0
        p /= p.sum() * vol
        unflushed = reference.ssp_rk3_step(p, h, *op.kernel_args())
        twin = reference.ssp_rk3_step(p, h, *op.kernel_args(), flush=op.flush)
    far = np.arange(op.size) >= 51 * 10  # rows the mass cannot reach in one step
    assert np.all((unflushed[far] != 0.0) & (np.abs(unflushed[far]) < op.flush))
    s1, s2, out = (np.empty(op.size) for _ in range(3))
    kernels.ssp_rk3_kernel(p, h, *op.kernel_args(), False, 2, op.flush, s1, s2, out,
                           kernels.ssp_stats_array(op.size, op.shape[-1], 2))
    np.testing.assert_allclose(out, twin, rtol=0, atol=1e-13 * np.abs(twin).max())
    assert np.all(out[far] == 0.0) and np.abs(out[out != 0.0]).min() >= op.flush
    assert op.flush > np.finfo(float).tiny
    assert abs(out.sum() * vol - 1.0) < 1e-14
    p[7] = np.nan
    stats = kernels.ssp_stats_array(op.size, op.shape[-1], 2)
    kernels.ssp_rk3_kernel(p, h, *op.kernel_args(), False, 2, op.flush, s1, s2, out, stats)
    assert np.isnan(out).any() and np.isnan(stats[0, :, 0]).any()


def _ssp_amplification(z):
    """R(z): one step of the kernels' SSP-RK(n², 3) stage table on y' = λy, z = λΔt."""
    h = z / kernels.SSP_COEFFICIENT
    bufs = [1.0, None, None, None]
    for stage, (src, dst) in enumerate(zip(kernels.SSP_READS, kernels.SSP_WRITES)):
        a = kernels.SSP_BLEND if stage == kernels.SSP_BLEND_STAGE else 0.0
        bufs[dst] = (a * bufs[1] if a else 0.0) + (1.0 - a) * (1.0 + h) * bufs[src]
    return bufs[3]


def test_ssp_stage_table_is_third_order_and_positive_up_to_its_coefficient():
    """Ketcheson's SSP-RK(n², 3) as the kernels' buffer table: n² stages, never writing p,
    s1 left alone from the saved stage to the blend; on y' = λy its step R(z) matches e^z to
    third order (local error ∝ z⁴: the error ratio per halved z is 16, measured
    log2 ratio 4.07 at z = 0.1 → 0.05 with n = 5), and R ∈ [0, 1] over z ∈ [−(n² − n), 0], the
    forward-Euler bound times the SSP coefficient (each stage (1 + z/(n² − n)) ∈ [0, 1])."""
    n = kernels.SSP_N
    assert len(kernels.SSP_READS) == kernels.SSP_STAGES == n * n
    assert kernels.SSP_COEFFICIENT == n * n - n
    assert 0 not in kernels.SSP_WRITES and kernels.SSP_WRITES[-1] == 3
    save, blend = (n - 1) * (n - 2) // 2, kernels.SSP_BLEND_STAGE
    assert kernels.SSP_READS[save] == 1 and 1 not in kernels.SSP_WRITES[save:blend + 1]
    err = [abs(_ssp_amplification(z) - np.exp(z)) for z in (0.1, 0.05)]
    assert np.log2(err[0] / err[1]) == pytest.approx(4.0, abs=0.15)
    z = -kernels.SSP_COEFFICIENT * np.linspace(0.0, 1.0, 201)
    r = np.array([_ssp_amplification(x) for x in z])
    assert r.min() >= 0.0 and r.max() <= 1.0 + 1e-15


@pytest.mark.parametrize("jac", [kernels.SCHEME, kernels.JACOBIAN])
def test_kernels_stay_finite_on_subnormal_tails(jac, rng):
    """Far tails hold subnormal densities (and zeros): the limiter's a/(a + b) must not
    overflow there (1/(a + b) does: a + b ~ 1e-320)."""
    op = _operator_4d()
    w = rng.random(op.size) - 0.3
    out = np.empty(op.size)
    with np.errstate(under="ignore"):
        p = rng.random(op.size) * 1e-310
        p[rng.random(op.size) < 0.3] = 0.0
        kernels.rate_kernel(p, p if jac == kernels.SCHEME else w, jac, *op.kernel_args(), False, 2, out)
        twin = reference.rate(p, p if jac == kernels.SCHEME else w, jac, *op.kernel_args())
        assert np.all(np.isfinite(out))
        # subnormals keep only a few significant bits: agreement to 1e-3 of the scale
        assert np.abs(out - twin).max() <= 1e-3 * np.abs(twin).max()


@pytest.mark.parametrize("make", [_operator_2d, _operator_4d, lambda: _operator_4d(0.8)])
def test_conservative_and_homogeneous(make, rng):
    """Σ rate = 0 (zero-flux walls) to round-off, and Jac(p)·p = rate(p) (degree-1 limiter)."""
    op = make()
    p = rng.random(op.shape)
    r = op.rate(p)
    scale = np.abs(r).sum()
    assert abs(r.sum()) < 1e-14 * scale
    np.testing.assert_allclose(op.jacobian_apply(p, p), r, rtol=0, atol=1e-13 * np.abs(r).max())


@pytest.mark.parametrize("make", [_operator_2d, lambda: _operator_4d(0.8)])
def test_jacobian_is_the_derivative_of_the_rate(make, rng):
    """Central differences of rate(p ± εw), ε = 1e-8: round-off ~1e-8 of the scale, and a
    limiter kink lies within ε of p with probability ~1e-8 per difference (p uniform); a
    wrong slope or saturation derivative is off by O(1). p varies 50-fold between cells,
    so limiters and the saturated cross flux take all their branches."""
    op = make()
    p, w = 0.02 + rng.random(op.size), rng.random(op.size) - 0.5
    eps = 1e-8
    fd = (op.rate(p + eps * w) - op.rate(p - eps * w)) / (2 * eps)
    exact = op.jacobian_apply(p, w)
    np.testing.assert_allclose(exact, fd, rtol=0, atol=1e-6 * np.abs(exact).max())


@pytest.mark.parametrize("shape, pairs, colours", [((12, 10), (), 10),
                                                    ((6, 5, 7, 6), (), 17),
                                                    ((6, 5, 7, 6), ((2, 3),), 23)])
def test_the_probe_colouring_separates_every_stencil(shape, pairs, colours):
    """Every row's stencil members get distinct colours (else two entries would land in one
    probe), with 10 / 17 / 23 colours (9 / 17 / 21 members; the (i_k mod 5) colouring took
    25 / 625)."""
    color = assemble._pattern(shape, pairs)[0].reshape(shape)
    assert color.max() + 1 == colours
    offsets = assemble._offsets(len(shape), pairs)
    for cell in np.ndindex(shape):
        members = [tuple(np.add(cell, o)) for o in offsets]
        inside = [c for c in members if all(0 <= x < n for x, n in zip(c, shape))]
        assert len({color[c] for c in inside}) == len(inside)


@pytest.mark.parametrize("make", [_operator_2d, _operator_4d, lambda: _operator_4d(-0.8)])
def test_probed_matrix_is_the_kernel_jacobian(make, rng):
    op = make()
    p, w = rng.random(op.size), rng.random(op.size)
    m = jacobian_matrix(op, p)
    ref = op.jacobian_apply(p, w)
    np.testing.assert_allclose(m @ w, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    colsum = np.asarray(m.sum(axis=0)).ravel()  # mass conservation: 1ᵀM = 0
    assert np.abs(colsum).max() < 1e-12 * abs(m).max()
    first = op.first_order_apply(w)
    np.testing.assert_allclose(jacobian_matrix(op, None, first_order=True) @ w, first, rtol=0,
                               atol=1e-12 * np.abs(first).max())


def test_banded_lu_solves_the_pinned_jacobian_like_superlu(rng):
    """The stationary solve's band LU, assembled straight into band storage (12×10 grid:
    kl = ku = 20, well inside BAND_MAX_WORK), against SuperLU on the pinned CSC Jacobian:
    the LU without pivoting passes its own check (measured 4.8e-12 against VERIFY_TOL =
    1e-10; the pinned Jacobian of this rough density has condition ~1e5-1e6), leaves
    residuals of round-off times the element growth and the condition (measured 2.6e-12
    of |b|) and solutions equal to SuperLU's within round-off times the condition."""
    op = _operator_2d()
    p = rng.random(op.size)
    r = int(np.argmax(p))
    m = pinned(jacobian_matrix(op, p), r)
    band = pinned_jacobian_lu(op, p, r)
    assert isinstance(band, NoPivotBandLu) and (band.kl, band.ku) == (20, 20)
    assert band.error <= VERIFY_TOL
    b = rng.random(op.size)
    x = band.solve(b)
    assert np.abs(m @ x - b).max() <= 1e-10 * np.abs(b).max()
    np.testing.assert_allclose(x, sparse_lu(m).solve(b), rtol=0, atol=1e-9 * np.abs(x).max())


def _band_storage(a, kl, ku):
    """The dense matrix a in LAPACK's band storage with kl rows for the fill (Fortran)."""
    n = a.shape[0]
    band = np.zeros((2 * kl + ku + 1, n), order="F")
    for i, j in zip(*np.nonzero(a)):
        band[kl + ku + i - j, j] = a[i, j]
    return band


@pytest.mark.parametrize("first", [0.0, 1e-18])
def test_band_lu_pivots_where_elimination_without_pivoting_fails(first, rng):
    """A zero first pivot stops the elimination without pivoting; a pivot of 1e-18 makes
    it lose every digit (U₂₂ = 1 − 1e18), which its check sees: both fall back to LAPACK's
    pivoted LU and solve to round-off. An exactly singular matrix is refused there, as
    SuperLU refuses it."""
    a = np.array([[first, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])
    assert not NoPivotBandLu(_band_storage(a, 1, 1), 1, 1).verified
    lu = band_lu(lambda: _band_storage(a, 1, 1), 1, 1)
    assert isinstance(lu, LapackBandLu)
    b = rng.random(3)
    np.testing.assert_allclose(lu.solve(b), np.linalg.solve(a, b), rtol=1e-14, atol=0)
    with pytest.raises(RuntimeError, match="singular"):
        band_lu(lambda: _band_storage(np.diag([1.0, 0.0, 2.0]), 1, 1), 1, 1)


def _lumped(j, shape):
    """The dense matrix j (cells in C order, v fastest) with every v±2 coupling moved to the
    row one v-cell nearer its column (the rule of the lumped band LU, written out)."""
    out = np.zeros_like(j)
    n_v = shape[1]
    for row, col in zip(*np.nonzero(j)):
        dv = row % n_v - col % n_v
        target = row - np.sign(dv) if row // n_v == col // n_v and abs(dv) == 2 else row
        out[target, col] += j[row, col]
    return out


def test_lumped_band_lu_solves_the_lumped_jacobian(rng):
    """The lumped band LU (cells renumbered θ first) is the exact LU of the Jacobian with
    its v±2 couplings moved one v-cell nearer (columns still sum to 0: round-off), its band
    n_θ wide (12×10: 12, exact 20); and on the default case it is a good chord matrix:
    I − A⁻¹J has spectral radius 0.13 at 24² (measured; the stationary solve needs < 0.5
    for its chord steps to count as contracting)."""
    op = _operator_2d()
    p = rng.random(op.size)
    r = int(np.argmax(p))
    exact = jacobian_matrix(op, p).toarray()
    lumped = _lumped(exact, op.shape)
    assert np.abs(lumped.sum(axis=0)).max() <= 1e-12 * np.abs(lumped).max()
    lumped[r] = 0.0
    lumped[r, r] = 1.0
    lu = pinned_jacobian_lu(op, p, r, lumped=True)
    assert (lu.kl, lu.ku) == (12, 12)
    b = rng.random(op.size)
    assert np.abs(lumped @ lu.solve(b) - b).max() <= 1e-10 * np.abs(b).max()
    op = setup_problem(default_case(), cells=24).op
    p = gaussian_start(op)
    r = int(np.argmax(p))
    exact = pinned(jacobian_matrix(op, p), r).toarray()
    lu = pinned_jacobian_lu(op, p, r, lumped=True)
    chord = np.eye(op.size) - np.column_stack([lu.solve(c) for c in exact.T])
    assert np.abs(np.linalg.eigvals(chord)).max() < 0.2


@pytest.mark.parametrize("d12", [0.0] + FOUR_D_CROSS)
def test_forward_euler_at_the_rate_bound_keeps_densities_nonnegative(d12, rng):
    """Saturated MUSCL face values in (0, 2p) + central diffusion with its saturated
    fourth-order correction + cross-diffusion that is either an M-matrix (linear) or
    saturated ⇒ positive. Without the saturation the diagonal stencil at D_12 = ±0.8 is no
    M-matrix (checked below: a point mass would pull a neighbour negative)."""
    op = _operator_4d(d12)
    # the diagonal stencil is an M-matrix up to |D_12| = D_11 h_2/h_1 = 0.669
    assert np.abs(op.cross_lim).max() == pytest.approx(max(abs(d12) - 0.669, 0.0), abs=1e-3)
    dt = 1.0 / op.max_rate()
    for _ in range(5):
        p = rng.random(op.size) ** 6  # rough, with near-zero cells
        q = p + dt * op.rate(p)
        assert q.min() >= -1e-15 * p.max()
    if np.any(op.cross_lim):  # all of D_12 on the linear diagonal stencil: not positive
        op.cross += op.cross_lim
        op.cross_lim[...] = 0.0
        w = jacobian_matrix(op, None, first_order=True)
        couplings = (w - sp.diags(w.diagonal())).toarray()  # the axial ones < 0
        assert couplings.min() < -1e-3 * np.abs(w.diagonal()).max()


def test_current_is_the_mean_of_face_fluxes_and_walls_carry_none(rng):
    op = _operator_2d()
    p = rng.random(op.shape)
    f = op.face_fluxes(p)
    assert np.all(f[0][-1] == 0) and np.all(f[1][:, -1] == 0)
    j = op.current(p)
    np.testing.assert_allclose(j[0][1:-1], 0.5 * (f[0][1:-1] + f[0][:-2]), rtol=1e-15)
    np.testing.assert_allclose(j[1][:, 0], 0.5 * f[1][:, 0], rtol=1e-15)


@pytest.mark.parametrize("make", [_operator_2d, _operator_4d])
def test_line_solves_agree_with_the_banded_twin(make, rng):
    op = make()
    r = rng.random(op.size)
    for k in range(len(op.shape)):
        al, be = op.line_coefficients(k)
        x = op.line_solve(k, 0.05, r)
        twin = reference.line_solve(al, be, 0.05, op.shape_arr, op.strides, k, r)
        np.testing.assert_allclose(x, twin, rtol=1e-13, atol=0)
        inplace = r.copy()
        op.line_solve(k, 0.05, inplace, inplace)
        np.testing.assert_array_equal(inplace, x)
    expected = r.copy()
    for k in range(len(op.shape)):
        expected = reference.line_solve(*op.line_coefficients(k), 0.05, op.shape_arr,
                                        op.strides, k, expected)
    np.testing.assert_allclose(op.af_precondition(0.05, r), -0.05 * expected, rtol=1e-12)


def _compiled_features(env, opt_in):
    """The CPU feature string numba compiles fpsolver's kernels with, in a fresh process
    that imports them (after prefer_full_width_vectors when ``opt_in``)."""
    code = ("from fpsolver.cpu_target import prefer_full_width_vectors\n"
            f"print({opt_in!r} and prefer_full_width_vectors())\n"
            "import fpsolver.fv.kernels\n"
            "from numba.core import registry\n"
            "print(registry.cpu_target.target_context.codegen()._tm_features)")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return out[0] == "True", out[1]


def test_full_width_vectors_only_where_asked_and_never_over_the_users_features():
    """The ``fpsolver`` command opts in (console); importing fpsolver changes nothing."""
    import importlib.metadata

    import llvmlite.binding as llvm
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CPU_FEATURES"}
    host = llvm.get_host_cpu_features()
    wide = bool(host.get("avx512f"))
    assert _compiled_features(env, False) == (False, host.flatten())
    on, features = _compiled_features(env, True)
    assert on == wide and ("-prefer-256-bit" in features.split(",")) == wide
    assert _compiled_features({**env, "NUMBA_CPU_FEATURES": "+sse2"}, True) == (False, "+sse2")
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert [e.value for e in scripts if e.name == "fpsolver"] == ["fpsolver.cli:console"]


def test_v_faces_are_exact_for_cubics_up_to_peclet_two():
    """A density cubic in v (constant in θ, unsaturated): the central fourth-order face value
    (7(p₀ + p₁) − p₋₁ − p₂)/12 and the fourth-order diffusion flux are exact for cubic cell
    averages, so every interior v face with cell Péclet number |u|h/D ≤ 2 carries the exact
    flux u·q − D q' (to round-off); beyond, the face value is the blend
    c·central + (1 − c)·κ = 1/3 value, c = 2/Pe, which is not exact for a cubic."""
    lo, hi, n = -1.0, 1.0, 16
    grid = uniform_grid((8, n), ((-4.0, 4.0), (lo, hi)))
    diffusion = 0.08
    op = FPOperator(grid, np.array([[0.0, -1.0], [1.0, 1.0]]), np.diag([0.0, diffusion]),
                    np.zeros(2))
    coef = np.array([2.0, 0.3, -0.2, 0.1])  # q(v) = Σ c_k v^k > 0 on [−1, 1]
    prim = np.polynomial.Polynomial(coef).integ()
    edges = np.linspace(lo, hi, n + 1)
    h = edges[1] - edges[0]
    cells = np.diff(prim(edges)) / h
    p = np.broadcast_to(cells, grid.shape).copy()
    flux = op.face_fluxes(p)[1][:, 1:n - 2]  # faces with two real cells on either side
    u = op.face_velocity(1)[:, 1:n - 2]
    vf = edges[2:n - 1]
    q = np.polynomial.Polynomial(coef)
    exact = u * q(vf) - diffusion * q.deriv()(vf)
    peclet = np.abs(u) * h / diffusion
    assert (peclet <= 2).sum() >= 10 and (peclet > 2).sum() >= 10
    scale = np.abs(exact).max()
    np.testing.assert_allclose(flux[peclet <= 2], exact[peclet <= 2], rtol=0,
                               atol=1e-13 * scale)
    j = np.arange(1, n - 2)
    pm, p0, p1, p2 = cells[j - 1], cells[j], cells[j + 1], cells[j + 2]
    central = (7.0 * (p0 + p1) - pm - p2) / 12.0
    upwind = np.where(u >= 0, p0 + (p0 - pm + 2.0 * (p1 - p0)) / 6.0,
                      p1 + (p1 - p2 + 2.0 * (p0 - p1)) / 6.0)
    far = peclet > 2
    c = 2.0 / peclet[far]
    blend = exact[far] + u[far] * (1.0 - c) * (upwind - central)[far]  # diffusion: exact
    np.testing.assert_allclose(flux[far], blend, rtol=0, atol=1e-13 * scale)
    assert np.abs(flux[far] - exact[far]).max() > 1e-6 * scale
