"""The finite-volume Fokker-Planck operator: face coefficients and kernel dispatch.

Scheme (conservative, zero-flux walls, cell averages p on a uniform grid), for
∂_t p = −∇·J, J = b(z)p − D∇p with b(z) = −A(z − z_μ) and D nonzero only in the vv block:

* advection b_k p on every axis (θ axes: b_θ = v, no diffusion; v axes: the drift
  −(K/m)(θ−μ) − ((1−β)/m)v): MUSCL reconstruction, upwinded, with the third-order
  (κ = 1/3) slope (a + 2b)/3 of the upwind cell, saturated smoothly below twice its
  density (:func:`fpsolver.fv.kernels._flux`): face values in (0, 2p), so positive, and
  unsaturated wherever the slope is below the density (every resolved cell; a TVD limiter,
  used before, clipped the slope at every smooth maximum: L1 3.8e-3 → 1.7e-3 at 64²,
  1.5e-4 → 2.8e-5 at 256² on the default case together with the diffusion below). On v
  axes the slope moves toward the central fourth-order face value (7(p₀ + p₁) − p₋₁ −
  p₂)/12, fully where the cell Péclet number |b_k|h_k/D_kk is at most 2, by 2/Pe beyond
  (default case L1 1.69e-3 → 9.7e-4 at 64², 2.21e-4 → 1.27e-4 at 128²).
* diffusion D_kk ∂_k p on v axes: the fourth-order flux (D_kk/12h)(15(p_L − p_R) + p_RR −
  p_LL): the central M-matrix flux plus a correction saturated below half the central
  coefficient times the density it leaves (positive under a step shortened by D_kk/h²).
  With third-order advection fluxes the scheme converges at order ~3 on smooth densities
  (2.92, 2.97 over 64² → 128² → 256²; 4-D 3.5, 2.2 over 24⁴ → 32⁴ → 48⁴: the
  cross-diffusion below stays second order).
* off-diagonal D_vv (non-commuting noise, d = 2): −D_ab ∂_b p on the a faces, split in
  two. The linear part, |D_ab| up to min(D_aa h_b/h_a, D_bb h_a/h_b), differences ∂_b p
  along the diagonal that matches its sign (second order; its axial couplings
  −|D_ab|/(h_a h_b) stay dominated by the central diffusion D_aa/h_a², so it is an
  M-matrix; no linear 9-point stencil is for larger |D_ab|: the diagonal one undershot to
  −7e-5·max in a 4-D run). The rest (``cross_lim``: strongly correlated noise on a grid
  whose cells do not follow it) uses the same stencil with its flux saturated smoothly
  below 2|D_ab|/h_b times the density of the cell it leaves (kernels._saturated):
  unchanged unless p changes along b by more than twice its value per cell (the far
  tails), positive under a time step shortened by 8|D_ab|/(h_a h_b). On the THEORY.md §13 example with equal cells per axis
  everything is linear.

Why MUSCL also for the v drift: the alternatives with a linear (M-matrix) v flux,
Scharfetter-Gummel and the hybrid central/upwind flux, turn into first-order upwind
where the cell Péclet number |b|h/D exceeds 2. On 2-D grids ≥ 128² that happens only in
the far tails (hybrid: L1 1.7e-3 at 128², order 1.93-1.96; SG: 2.4e-3), but on the 4-D
grids h is σ/2 and most of the mass sits at |Pe| > 2: hybrid gave an observed L1 order of
1.4 over 24⁴ → 32⁴, MUSCL (with a TVD limiter then) 2.07. MUSCL also gave the smaller
2-D error (1.3e-3 at 128² against 1.7e-3). The price is a time step limited by
2|b_v|/h_v + 3D/h_v² as well.

The probability current is built from the same face fluxes (average of a cell's two
faces), so ∇·J of the scheme is exactly the update.
"""

import functools

import numpy as np

from .. import theory
from ..errors import SolverError
from . import kernels
from .policy import streams_output, threads_for

# explicit steps flush densities below this fraction of the box's uniform density to 0:
# ~1e-250 of a resolved peak is far below any error, yet far above the subnormal range
FLUSH_RELATIVE = 1e-250


class FPOperator:
    """−∇·J on ``grid`` for dz = −A(z − mean)dt + noise with diffusion matrix D.

    ``drift`` A (2d, 2d), ``diffusion`` D (2d, 2d) with D_θθ = D_θv = 0 and D_vv having
    positive diagonal, ``mean`` z_μ (2d,). Densities are cell averages of shape grid.shape
    (or flat).
    """

    def __init__(self, grid, drift, diffusion, mean):
        drift, diffusion, mean = (np.asarray(a, dtype=float) for a in (drift, diffusion, mean))
        n = grid.ndim
        d = n // 2
        if drift.shape != (n, n) or diffusion.shape != (n, n) or mean.shape != (n,):
            raise SolverError(f"drift/diffusion/mean must be ({n},{n})/({n},{n})/({n},) "
                              "for this grid")
        if np.any(diffusion[:d] != 0.0) or np.any(diffusion[:, :d] != 0.0):
            raise SolverError("the solver needs diffusion only in the velocity block")
        if np.any(np.diag(diffusion)[d:] <= 0.0):
            raise SolverError("noise covariance must have a positive diagonal (every velocity "
                              "axis diffuses)")
        self.grid = grid
        self.drift, self.diffusion, self.mean = drift, diffusion, mean
        self.shape = grid.shape
        self.size = int(np.prod(self.shape))
        h = grid.spacing
        self.strides = np.array([int(np.prod(self.shape[k + 1:])) for k in range(n)],
                                dtype=np.int64)
        self.inv_h = 1.0 / h
        self.dif = np.diag(diffusion) / h
        self.cross = diffusion.copy()
        self.cross[np.diag_indices(n)] = 0.0
        if np.any(np.delete(self.cross, [n - 2, n - 1], axis=0)) or \
                np.any(self.cross[:, :n - 2]):
            raise SolverError("cross-diffusion is supported between the last two axes only")
        # |D_ab| ≤ D_aa h_b/h_a and D_bb h_a/h_b: the diagonal stencil is an M-matrix
        linear = np.outer(self.dif, h)
        linear = np.minimum(linear, linear.T)
        self.cross_lim = self.cross - np.clip(self.cross, -linear, linear)
        self.cross -= self.cross_lim
        self._no_cross_lim = np.zeros_like(self.cross_lim)  # W's (first-order) arguments
        # b_k on the right face of cell i: vel0[k] + Σ_l velg[k, l] i_l (affine drift)
        first = np.array([c[0] for c in grid.centers]) - mean
        self.vel0 = -(drift @ first) - np.diag(drift) * h / 2
        self.velg = -drift * h[None, :]
        self.shape_arr = np.array(self.shape, dtype=np.int64)
        self.stream = streams_output(self.size)  # non-temporal stores of rates and stages
        self.flush = FLUSH_RELATIVE / (grid.cell_volume * self.size)  # × uniform density
        self._lines = {}
        self._max_rate = None

    def describe(self):
        """One line naming the scheme (``summary.json``'s "scheme")."""
        text = ("MUSCL advection (third-order slopes saturated for positivity), fourth-order "
                "v diffusion")
        if np.any(self.cross) or np.any(self.cross_lim):
            text += ", cross-diffusion on the diagonal stencil"
            if np.any(self.cross_lim):
                lin, sat = np.abs(self.cross).max(), np.abs(self.cross_lim).max()
                text += f" (|D12| {lin:.4g} linear, {sat:.4g} saturated)"
        return text + ", conservative, zero-flux walls"

    def face_velocity(self, k):
        """Drift velocity b_k on the right face of every cell along axis k (shape); the
        wall faces (last cell) get 0."""
        axes = [np.arange(n) for n in self.shape]
        grids = np.meshgrid(*axes, indexing="ij", sparse=True)
        vel = self.vel0[k] + sum(self.velg[k, m] * grids[m] for m in range(len(self.shape)))
        vel = np.broadcast_to(vel, self.shape).copy()
        np.moveaxis(vel, k, 0)[-1] = 0.0
        return vel

    # ------------------------------------------------------------------ kernel calls
    def kernel_args(self, first_order=False):
        """The operator's arrays in kernel order (after p, w, jac; before out); for the
        first-order W without the saturated cross-diffusion (W stays an M-matrix)."""
        return (self.shape_arr, self.strides, self.vel0, self.velg, self.dif, self.cross,
                self._no_cross_lim if first_order else self.cross_lim, self.inv_h)

    @functools.cached_property
    def stationary_cov(self):
        """Covariance P (2d, 2d) of the continuous equation's stationary Gaussian, AP + PAᵀ =
        2D (:func:`~fpsolver.theory.stationary_cov`; computed once per operator)."""
        return theory.stationary_cov(self)

    def flat(self, a):
        """``a`` as a contiguous flat float array (N,); SolverError unless it has N cells."""
        a = np.ascontiguousarray(a, dtype=float).reshape(-1)
        if a.size != self.size:
            raise SolverError(f"density has {a.size} cells, the grid {self.size}")
        return a

    def _rate_kernel(self, p, w, jac, out, first_order=False):
        """rate_kernel(p, w, jac) into ``out`` (or a new array), shaped like w."""
        wf = self.flat(w)
        res = np.empty(self.size) if out is None else out.reshape(-1)
        with threads_for(self.size) as tasks:
            kernels.rate_kernel(self.flat(p), wf, jac, *self.kernel_args(first_order),
                                self.stream, tasks, res)
        return res.reshape(np.shape(w))

    def rate(self, p, out=None):
        """dp/dt = −∇·F(p) of the (nonlinear, limited) scheme; same shape as p."""
        return self._rate_kernel(p, p, kernels.SCHEME, out)

    def ssp_rk3_step(self, p, dt, s1, s2, out):
        """out = one SSP-RK(n², 3) step of length dt from p (:meth:`ssp_rk3_steps`; p
        unchanged)."""
        return self.ssp_rk3_steps(p, dt, 1, s1, s2, out)[0]

    def ssp_rk3_steps(self, p, dt, steps, s1, s2, out):
        """``steps`` SSP-RK(n², 3) steps of length dt from p (Ketcheson 2008, low-storage,
        n = kernels.SSP_N): n² forward-Euler stages of dt/(n² − n) each, one of them a
        convex combination with an earlier stage, so positive up to dt = (n² − n)/rate_max.
        Flat arrays; ``s1`` and ``s2`` are scratch arrays of p's size (4-D grids hold 10⁷
        cells). All stages run in one kernel call (:func:`kernels.ssp_rk3_kernel`, which
        holds the stage table); the steps alternate between out and p, so p is
        overwritten when ``steps`` ≥ 2. Values below ``self.flush`` become 0 (mass change
        ≤ FLUSH_RELATIVE, 1e-250). Returns (the result: out after an odd number of steps,
        p after an even one; (steps, 3): the sum, minimum and maximum of the density
        after each step)."""
        flat = self.flat(p)
        if steps > 1 and not np.may_share_memory(flat, p):
            raise ValueError("p must be a contiguous float array of N cells: the steps "
                             "write into it")
        with threads_for(self.size, passes=kernels.SSP_STAGES * steps) as tasks:
            stats = kernels.ssp_stats_array(self.size, self.shape[-1], tasks, steps)
            kernels.ssp_rk3_kernel(flat, dt / kernels.SSP_COEFFICIENT,
                                   *self.kernel_args(), self.stream, tasks, self.flush, s1,
                                   s2, out, stats)
        per_step = np.column_stack([stats[:, :, 0].sum(axis=1), stats[:, :, 1].min(axis=1),
                                    stats[:, :, 2].max(axis=1)])
        return (out if steps % 2 else p), per_step

    def jacobian_apply(self, p, w, out=None):
        """Jacobian of ``rate`` at p applied to w (linear in w); Jac(p)·p = rate(p)."""
        return self._rate_kernel(p, w, kernels.JACOBIAN, out)

    def first_order_apply(self, w, out=None):
        """W·w: the first-order operator (upwind advection, central diffusion, the linear
        part of the cross-diffusion), an M-matrix: the scheme without slopes and without the
        saturated cross-diffusion."""
        return self._rate_kernel(w, w, kernels.FIRST_ORDER, out, first_order=True)

    @np.errstate(under="ignore")  # far-tail fluxes ~1e-300 flush to zero
    def face_fluxes(self, w, out=None, first_order=False):
        """Right-face fluxes F_k (2d, *shape) of the scheme at w (of W with
        ``first_order``); 0 on the walls."""
        wf = self.flat(w)
        res = np.empty((len(self.shape), self.size)) if out is None else out
        with threads_for(self.size) as tasks:
            kernels.face_flux_kernel(wf, wf, kernels.FIRST_ORDER if first_order else
                                     kernels.SCHEME, *self.kernel_args(first_order), tasks,
                                     res)
        return res.reshape((len(self.shape),) + self.shape)

    def divergence(self, flux, out=None):
        """∇·F (flat, N) of right-face fluxes ``flux`` (2d, *shape), 0 on the walls: the
        scheme's rate is −divergence(face_fluxes(p))."""
        res = np.empty(self.size) if out is None else out
        div = res.reshape(self.shape)
        div[...] = 0.0
        for k in range(len(self.shape)):
            f = np.moveaxis(np.reshape(flux[k], self.shape), k, 0) * self.inv_h[k]
            d = np.moveaxis(div, k, 0)
            d += f
            d[1:] -= f[:-1]
        return res

    @np.errstate(under="ignore")
    def current(self, p):
        """Cell-centred probability current J (2d, *shape): mean of each cell's two faces."""
        flux = self.face_fluxes(p)
        out = np.empty_like(flux)
        for k in range(len(self.shape)):
            fk, ok = np.moveaxis(flux[k], k, 0), np.moveaxis(out[k], k, 0)
            ok[:] = 0.5 * fk
            ok[1:] += 0.5 * fk[:-1]
        return out

    # ------------------------------------------------------------------ preconditioner
    def line_coefficients(self, k):
        """(α, β) of the first-order line operator along axis k, divided by h_k (flat):
        upwind u⁺ + D_kk/h, u⁻ + D_kk/h on each right face, 0 on the wall (the line-solve
        kernel computes them on the fly; these arrays are for tests and the numpy twin)."""
        u = self.face_velocity(k).ravel()
        wall = np.zeros(self.shape)
        np.moveaxis(wall, k, 0)[-1] = 1.0
        dh = self.dif[k] * (1.0 - wall.ravel())
        return ((np.maximum(u, 0.0) + dh) * self.inv_h[k],
                (np.maximum(-u, 0.0) + dh) * self.inv_h[k])

    def _line_offsets(self, k):
        """Σ_{l>k} velg[k, l]·i_l over the cells of one contiguous block after axis k."""
        if k not in self._lines:
            rest = self.shape[k + 1:]
            idx = np.indices(rest).reshape(len(rest), -1) if rest else np.zeros((0, 1))
            self._lines[k] = np.ascontiguousarray(self.velg[k, k + 1:] @ idx, dtype=float)
        return self._lines[k]

    def line_solve(self, k, tau, rhs, out=None):
        """x = (I − τT_k)⁻¹ rhs (flat), T_k the first-order line operator along axis k;
        ``out`` may be ``rhs`` itself."""
        res = np.empty(self.size) if out is None else out
        with threads_for(self.size):
            kernels.line_solve_kernel(float(tau), self.shape_arr, self.strides, k, self.vel0,
                                      self.velg, self.dif, self.inv_h, self._line_offsets(k),
                                      self.flat(rhs), res)
        return res

    def line_factorisation(self, tau, r, out=None):
        """Π_k (I − τT_k)⁻¹ r (flat): the approximate factorisation of (I − τW)⁻¹, W the
        first-order operator. The line solves after the first run in place (each parallel
        task reads its lines before writing them): one grid-sized array per call instead
        of one per axis (a fresh 134 MB array costs ~30 ms of page faults on 64⁴)."""
        res = self.line_solve(0, tau, r, out)
        for k in range(1, len(self.shape)):
            self.line_solve(k, tau, res, res)
        return res

    def af_precondition(self, tau, r, out=None):
        """−τ Π_k (I − τT_k)⁻¹ r ≈ J⁻¹r (flat): the pseudo-time step that preconditions the
        stationary Newton-GMRES solve."""
        res = self.line_factorisation(tau, r, out)
        res *= -tau
        return res

    # ------------------------------------------------------------------ step limits
    def max_advection_rate(self):
        """Largest advective rate max_k max|b_k|/h_k over the interior faces (1/time): the
        Courant number of a step dt is dt times this. The face velocity is affine in the
        cell indices, so its largest size is at a corner of the index box."""
        n = len(self.shape)
        best = 0.0
        for corner in np.ndindex((2,) * n):
            for k in range(n):
                idx = [c * (m - 1) for c, m in zip(corner, self.shape)]
                idx[k] = min(idx[k], self.shape[k] - 2)  # the last face is a wall
                u = self.vel0[k] + self.velg[k] @ np.array(idx, dtype=float)
                best = max(best, abs(u) * self.inv_h[k])
        return best

    def max_rate(self):
        """Largest per-cell outflow rate (1/time): forward Euler is positive for dt ≤ 1/rate.
        Per axis 2|u|/h (MUSCL face values) + 2(1 + DIFFUSION_CAP)D_kk/h² (central
        diffusion and its saturated correction through both faces), plus, per
        cross-diffused pair, 2|D_ab|/(h_a h_b) of the linear part and 8|D_ab|/(h_a h_b) of
        the saturated part (up to 2|D_ab|/(h_a h_b) out through each of the cell's four faces
        on the two axes).
        Computed once per operator."""
        if self._max_rate is not None:
            return self._max_rate
        total = np.zeros(self.shape)
        for k in range(len(self.shape)):
            vel = np.abs(self.face_velocity(k))
            left = np.zeros(self.shape)
            np.moveaxis(left, k, 0)[1:] = np.moveaxis(vel, k, 0)[:-1]
            total += 2.0 * np.maximum(vel, left) * self.inv_h[k]
        total += 2.0 * (1.0 + kernels.DIFFUSION_CAP) * np.sum(self.dif * self.inv_h)
        total += np.sum((np.abs(self.cross) + 4.0 * np.abs(self.cross_lim))
                        * np.outer(self.inv_h, self.inv_h))
        self._max_rate = float(total.max())
        return self._max_rate
