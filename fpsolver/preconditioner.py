"""Preconditioner of the Krylov (GMRES) stationary solves: J⁻¹ r for the Jacobian J of
the finite-volume operator (or its first-order operator W).

Fine part: one pseudo-time step −τ Π_k (I − τT_k)⁻¹ r of the first-order operator, one
tridiagonal line solve per axis (:meth:`FPOperator.af_precondition`), τ = 1/√(rate_max·γ):
the geometric mean of the fastest discrete and a physical time scale.

Overdamped drifts (Re eig A spread at least OVERDAMPED_RATIO-fold: strong friction, the
position relaxing much more slowly than the velocity) add a coarse correction on the slow
manifold: each position cell's density with its velocity profile frozen to the stationary
Gaussian's conditional N(v | θ). Its Galerkin matrix R·J·P (R sums a position cell's
velocity block) is the discrete Smoluchowski operator, n^d unknowns, solved by sparse LU;
the fine part then needs only the velocity relaxation, τ from the fastest rate γ_max. The
line factorisation alone cannot resolve both ends: at large τ the two velocity line
solves of 4-D split by O(τ²T_v₁T_v₂), at small τ the slow modes are left near zero.

Measured (GMRES(10) iterations to 1e-6 on J(p) δ = −L(p)p at the Gaussian's cell
averages, 20⁴): plain SGD η = 1.5e-3 (Re eig A 0.09 … 1366): line solves alone stall
(relative residual 1.2 after 300), with the coarse correction 29; η = 0.5 (ratio 41): 146
→ 77; η = 1 (ratio 19.5): 115 → 100; η = 2 (ratio 8.6): 78 → 110 and the §13 case (ratio
1): 106 → 260, where the coarse space holds no slow mode: hence the threshold.
"""

import numpy as np
import scipy.sparse.linalg as spla

from .fv import marginal_matrix, pinned, sparse_lu

OVERDAMPED_RATIO = 15.0  # max/min Re eig A from which the slow-manifold correction is added


def drift_rates(op):
    """(γ_min, γ_max): smallest and largest real part of the drift's eigenvalues (1/time)."""
    re = np.linalg.eigvals(op.drift).real
    return float(re.min()), float(re.max())


def conditional_velocity_profiles(op):
    """(n_θ, n_v) array: per position cell (rows, C order), the stationary Gaussian's
    conditional density of v given θ at the cell centres, at the velocity cell centres,
    normalised to sum 1 over the row."""
    d = op.grid.ndim // 2
    cov = op.stationary_cov
    gain = cov[d:, :d] @ np.linalg.inv(cov[:d, :d])
    precision = np.linalg.inv(cov[d:, d:] - gain @ cov[d:, :d].T)
    centers = op.grid.centers
    pos_shape = op.shape[:d]
    theta = np.meshgrid(*(c - m for c, m in zip(centers[:d], op.mean[:d])), indexing="ij")
    # v − E[v | θ] per velocity axis, broadcast to the grid's shape
    dv = [centers[d + a].reshape((1,) * d + tuple(-1 if k == a else 1 for k in range(d)))
          - (op.mean[d + a] + sum(gain[a, b] * theta[b] for b in range(d))).reshape(
              pos_shape + (1,) * d)
          for a in range(d)]
    q = sum(precision[a, b] * dv[a] * dv[b] for a in range(d) for b in range(d))
    q = q.reshape(int(np.prod(pos_shape)), -1)
    with np.errstate(under="ignore"):
        e = np.exp(-0.5 * (q - q.min(axis=1, keepdims=True)))
    return e / e.sum(axis=1, keepdims=True)


class StationaryPreconditioner:
    """M ≈ J⁻¹ (see the module docstring) for the Jacobians of one operator: ``tau``, the
    fine part's pseudo-time step, ``coarse``, whether the slow-manifold correction is on,
    and its velocity profiles depend on the operator only and are set up once;
    :meth:`operator` takes each J."""

    def __init__(self, op):
        self.op = op
        slow, fast = drift_rates(op)
        self.coarse = fast >= OVERDAMPED_RATIO * slow
        self.tau = 1.0 / np.sqrt(op.max_rate() * (fast if self.coarse else slow))
        if self.coarse:
            d = op.grid.ndim // 2
            self.profiles = conditional_velocity_profiles(op)
            # the equation the others imply (columns sum to zero): the mean's cell's
            self.row = int(np.ravel_multi_index(op.grid.cell_of(op.mean[:d]), op.shape[:d]))
            self.lu = None

    def operator(self, apply):
        """The preconditioner of J = ``apply`` (w ↦ J w, flat) as a scipy LinearOperator;
        with the coarse correction on, its Galerkin matrix costs 5^d products with J."""
        if self.coarse:
            positions = self.op.shape[:self.op.grid.ndim // 2]
            galerkin = marginal_matrix(apply, self.profiles, positions)
            self.lu = sparse_lu(pinned(galerkin, self.row))
        n = self.op.size
        return spla.LinearOperator((n, n), matvec=self._apply, dtype=float)

    def _apply(self, r):
        x = self.op.af_precondition(self.tau, r)
        if self.coarse:
            marginal = r.reshape(self.profiles.shape[0], -1).sum(axis=1)
            marginal[self.row] = 0.0
            x += (self.profiles * self.lu.solve(marginal)[:, None]).ravel()
        return x
