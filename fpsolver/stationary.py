"""Stationary solves of the finite-volume Fokker-Planck operator.

:func:`stationary`: Newton's method on L(p)p = 0, ∫p = 1. The limited scheme is
homogeneous of degree one, so a Newton step is "solve Jac(p_k) x = 0, normalise"; it
starts from the continuous equation's stationary Gaussian (:func:`gaussian_start`).
2-D grids: LU of the probed Jacobian (up to 70² a band LU, :mod:`fpsolver.fv.band`, of
the Jacobian with its v±2 couplings lumped, exact from the first fresh LU whose step does
not contract; beyond, SuperLU of the exact one), reused for chord steps while they
contract the residual at least 2-fold (a chord step that does not is redone as a Newton
step), every step backtracked (:func:`_line_search`; resolved grids: 1 LU).
4-D grids: inexact Newton, GMRES(10) on the matrix-free Jacobian (relative tolerance
1e-3) preconditioned by the approximate factorisation Π_k (I − τT_k)⁻¹ of the
first-order operator (one tridiagonal line solve per axis), with a coarse correction on
the slow manifold for overdamped drifts (:mod:`fpsolver.preconditioner`), each GMRES
capped at a product budget (:func:`_budget`). 64⁴ (16.7 M cells, §13 case) converges to a
relative residual of 7.3e-8 in 1 Newton step: 38 s, 86 Jacobian products, about 4 GB on 2
cores, L1 error 6.9e-3 (from the half grid's solution, the start before: 2 steps, 92 s,
1152 products in all; unpreconditioned GMRES needed ~15× more iterations on the 2-D
analogue).
GMRES(10): more products than GMRES(20) (32⁴: 739 vs 613) but less Gram-Schmidt traffic,
which on 64⁴ costs as much as a product (32⁴: 5.0 vs 6.4 s; 64⁴: 106 vs 117 s).

Long solves checkpoint (:class:`StationaryCheckpoint`: the Newton iterate)
and resume with :func:`load_stationary_checkpoint`.

Residuals are reported as ‖Lp‖₁ (∫|∂_t p|, 1/time) and relative to rate_max
(dimensionless: the change per stable explicit step); ``tol`` applies to the relative one.
"""

import math
import time
from pathlib import Path

import numpy as np
import scipy.sparse.linalg as spla

from . import theory
from .errors import SolverError, UserError
from .fv import lumps, pinned_jacobian_lu
from .fv.policy import single_threaded_blas
from .io import atomic_savez, read_checkpoint
from .preconditioner import StationaryPreconditioner
from .solve import SolveResult

DIRECT_MAX_CELLS = 400_000  # 2-D grids up to 632²; 4-D LU fill grows too fast (use GMRES)


class StationaryCheckpoint:
    """Writes ``path`` (npz: the Newton iterate p, its grid shape, the Newton steps taken
    and ``key``, which identifies the problem) atomically after a Newton step once
    ``every_s`` seconds of wall time have passed since the last write, and when the solve
    is interrupted."""

    def __init__(self, path, key, every_s=30.0):
        self.path, self.key, self.every_s = Path(path), str(key), every_s
        self.last = time.monotonic()

    def write(self, p, shape, steps):
        atomic_savez(self.path, p=np.reshape(p, shape), shape=np.array(shape), steps=steps,
                     key=self.key, kind="stationary")
        self.last = time.monotonic()

    def handle(self, p, shape, steps):
        if time.monotonic() - self.last >= self.every_s:
            self.write(p, shape, steps)


def load_stationary_checkpoint(path, key):
    """(p, shape, steps) from a checkpoint that :class:`StationaryCheckpoint` wrote for the
    problem ``key``."""
    data = read_checkpoint(path, key, ("p", "shape", "steps"))
    if str(data.get("kind")) != "stationary":
        raise UserError(f"checkpoint {path} is not from a stationary solve; rerun without "
                        "--resume")
    return data["p"].ravel().copy(), tuple(int(n) for n in data["shape"]), int(data["steps"])


class _DirectSolver:
    """Globalised Newton/chord steps with sparse LU of the probed Jacobian.

    * Chord steps reuse the last LU (one triangular solve) while they contract the residual
      at least CHORD_RATIO-fold; a chord step that does not is rejected and redone as a
      Newton step from the same p with a fresh LU.
    * Where the grid allows (:func:`~fpsolver.fv.lumps`), the LU is that of the Jacobian
      with its v±2 couplings lumped (a quarter of the factorisation, more chord steps:
      default case 32² 5 → 8 steps, 1.74 → 1.37 ms), until a step with a fresh lumped LU
      fails to contract: the exact Jacobian from then on.
    * Every step is backtracked (:func:`_line_search`).

    One equation is replaced by δ_r = 0 (the dropped equation follows from the others
    because the columns of the Jacobian sum to zero)."""

    def __init__(self, op):
        self.op, self.lu, self.row = op, None, None
        self.n_factor = self.n_rejected = 0
        self.lumped = lumps(op)

    def factor(self, p):
        self.row = int(np.argmax(p))
        self.lu = pinned_jacobian_lu(self.op, p, self.row, lumped=self.lumped)
        self.n_factor += 1

    def _trial(self, p, rate, res, vol):
        """Step from p with the current LU (:func:`_line_search`)."""
        rhs = -rate
        rhs[self.row] = 0.0
        return _line_search(self.op, p, self.lu.solve(rhs), res, vol)

    def step(self, p, rate, res, chord, vol):
        """One accepted step from p (flat, residual ‖rate‖₁ = res): a chord step when
        ``chord`` and it contracts, else a Newton step. Returns (p, rate, res, n_rates)."""
        spent = 0
        if chord and self.lu is not None:
            q, r, res_q, spent = self._trial(p, rate, res, vol)
            if res_q <= CHORD_RATIO * res:
                return q, r, res_q, spent
            self.n_rejected += 1
        while True:
            self.factor(p)
            q, r, res_q, n_rates = self._trial(p, rate, res, vol)
            spent += n_rates
            if not self.lumped or res_q <= CHORD_RATIO * res:
                return q, r, res_q, spent
            self.lumped = False


CHORD_RATIO = 0.5  # a step must shrink the residual this much to count as contracting
MIN_DAMPING = 0.1
BACKTRACK = (0.5, 0.25)


def _line_search(op, p, delta, res, vol):
    """The Newton step p + δ, backtracked unless it contracts the residual ‖Lp‖₁ = res at
    least CHORD_RATIO-fold: of the full step, the half and quarter steps (``BACKTRACK``)
    and the step damped to keep the density positive (λ = min(1, 0.95·min p/(−δ)) over
    the cells where it would cross zero, floored at ``MIN_DAMPING``), the one with the
    smallest residual. Returns (q normalised, L q, ‖Lq‖₁, rate evaluations).

    The scheme is linear wherever the density is resolved; its slopes saturate in the far
    tails, where Newton iterates undershoot. 2-D: always damping (the rule before) left
    β = 0.99 at 32²-128² unconverged after 40 steps (from a constant start); the better of
    the full and the damped step converged slowly (β = 0.99 at 32²: 33 LUs, β = 0.999 at
    64²: 40); full steps projected onto p ≥ 0 left β = 0.999 at 24²-48² and 128²
    unconverged; the best of the four converges on all of them (≤ 27 LUs, 1-5 on
    resolved grids)."""
    def at(lam):
        q = p + lam * delta
        q /= q.sum() * vol
        r = op.rate(q)
        return q, r, float(np.abs(r).sum() * vol)

    best, n_rates = at(1.0), 1
    if best[2] <= CHORD_RATIO * res:
        return (*best, n_rates)
    steps = list(BACKTRACK)
    cross = (delta < 0.0) & (p > 0.0)
    if np.any(cross):
        steps.append(min(1.0, max(MIN_DAMPING, 0.95 * float(np.min(p[cross] / -delta[cross])))))
    for lam in steps:
        trial = at(lam)
        n_rates += 1
        if trial[2] < best[2]:
            best = trial
    return (*best, n_rates)


def _newton_krylov(op, p, rate, res, vol, rel_tol, budget, precond):
    """One inexact Newton step from p (rate = L p, res = ‖rate‖₁): GMRES on
    Jac(p) δ = −L(p)p, matrix-free, preconditioned by ``precond`` (the operator's
    :class:`StationaryPreconditioner`), at most about ``budget`` products, then
    :func:`_line_search`. Returns (p, rate, ‖rate‖₁, Jacobian products, rate
    evaluations)."""
    count = [0]
    product = np.empty(op.size)  # reused: each product is consumed before the next

    def matvec(w):
        count[0] += 1
        return op.jacobian_apply(p, w, out=product)

    a = spla.LinearOperator((op.size, op.size), matvec=matvec, dtype=float)
    m = precond.operator(matvec)
    with single_threaded_blas():
        delta, _ = spla.gmres(a, -rate, rtol=rel_tol, restart=GMRES_RESTART,
                              maxiter=budget // GMRES_RESTART, M=m)
    q, rate, res, n_rates = _line_search(op, p, delta, res, vol)
    return q, rate, res, count[0], n_rates


def _positive_part(op, p, res, tol, vol):
    """(p, ‖Lp‖₁) with p's negative cells set to 0 (renormalised) when its residual stays
    below ``tol``, else p unchanged. The discrete stationary density is positive (the
    scheme is); a converged iterate is so only to its residual: GMRES leaves cells at
    −1e-9 to −1e-7 of the maximum in 4-D (64⁴, 12⁴-16⁴)."""
    if p.min() >= 0.0:
        return p, res
    q = np.maximum(p, 0.0)
    q /= q.sum() * vol
    res_q = np.abs(op.rate(q)).sum() * vol
    return (q, res_q) if res_q / op.max_rate() < tol else (p, res)


def gaussian_start(op):
    """The stationary Gaussian of the continuous equation, N(mean, P) with AP + PAᵀ = 2D,
    at the cell centres (flat, normalised): where Newton starts. The discrete stationary
    density differs from it by the discretisation error, O(h²) where resolved; the
    first-order operator's stationary density (the start before) differs by O(h) and
    mostly took several times the Newton steps (§13 case 24⁴ / 32⁴: 10 / 8 steps, 5.0 / 13
    s, nested from the half grid; from the Gaussian 2 / 2 steps, 0.6 / 2.5 s, the same
    density to 3e-6; 2-D β = 0.999 at 24²: 17 steps before, 20 now)."""
    p = theory.gaussian_cell_averages(op.mean, op.stationary_cov, op.grid.edges,
                                      order=1).ravel()
    return p / (p.sum() * op.grid.cell_volume)


def use_direct(op):
    """Sparse LU for 2-D grids up to DIRECT_MAX_CELLS, else (4-D) GMRES."""
    return op.grid.ndim == 2 and op.size <= DIRECT_MAX_CELLS


GMRES_RESTART = 10  # Krylov vectors kept (see the module docstring)
# Jacobian products per Newton step before GMRES gives up: near convergence GMRES(10)
# stagnates (the saturated tail cells), and an inexact step backtracked by the line search
# does as well for less (§13 case, 16⁴ / 24⁴ / 32⁴ / 48⁴: 6.9 / 12 / 38 / 62 s with 500,
# 1.8 / 5.8 / 13 / 34 s with 80, the same Newton steps within one or two) ...
GMRES_PRODUCTS = 80
# ... doubled, up to this, while the residual falls too slowly to reach ``tol`` within half
# the steps left at its rate over the last RATE_WINDOW steps (:func:`_budget`): where the
# line-solve preconditioner is weak, 80 products left the steps contracting 0.83-0.89-fold
# (random case, Hessian eigenvalues 7.3 and 0.13, 31⁴: stopped at 40 steps, 2.0e-7 >
# 1e-7). Doubling after every step that did not halve the residual slowed the §13 solves
# 1.4-4.5×, a window of two steps 24⁴ 1.6× (steps alternate between good and poor).
GMRES_MAX_PRODUCTS = 640
RATE_WINDOW = 4
KRYLOV_MIN_TOL = 1e-7  # relative residual the 4-D GMRES solve reaches within its budget


def _budget(budget, residuals, tol, steps_left):
    """GMRES products for the next Newton step: ``budget``, doubled (to GMRES_MAX_PRODUCTS)
    when the relative residuals so far, at their mean rate over the last RATE_WINDOW steps,
    would not reach ``tol`` within half of ``steps_left`` steps (with all of them, the
    random case above converged at step 37 of 40)."""
    if len(residuals) <= RATE_WINDOW or residuals[-1] <= tol:
        return budget
    rate = (residuals[-1] / residuals[-1 - RATE_WINDOW]) ** (1.0 / RATE_WINDOW)
    if rate < 1.0 and math.log(tol / residuals[-1]) / math.log(rate) <= steps_left / 2:
        return budget
    return min(2 * budget, GMRES_MAX_PRODUCTS)


def stationary_tolerance(op, steady_tol):
    """Newton tolerance: ``steady_tol`` for the direct solve, at least KRYLOV_MIN_TOL for GMRES."""
    return steady_tol if use_direct(op) else max(steady_tol, KRYLOV_MIN_TOL)


@np.errstate(under="ignore")
def stationary(op, p0=None, tol=1e-10, max_iter=40, krylov_tol=1e-3, checkpoint=None,
               resume=None, progress=None):
    """Stationary density of ``op``: Newton on Lp = 0, ∫p = 1 (see module docstring).

    ``p0``: initial guess (default :func:`gaussian_start`). Stops when ‖Lp‖₁/rate_max < tol
    ("converged") or after ``max_iter`` Newton or chord steps ("max_iter").
    ``checkpoint``: a :class:`StationaryCheckpoint` (written on its schedule and on
    Ctrl-C); ``resume``: (p, shape, steps) from :func:`load_stationary_checkpoint`
    continues that Newton iteration (a checkpoint of another grid shape is ignored). The
    GMRES path is deterministic, so a resumed solve ends at the same answer; the direct
    path restarts with a fresh LU. ``progress``: a tqdm bar, advanced by every Newton step
    with the grid and relative residual as its postfix.
    """
    start = time.perf_counter()
    grid = op.grid
    vol = grid.cell_volume
    direct = use_direct(op)
    n_rhs = 0
    it0 = 0
    if resume is not None and tuple(resume[1]) == tuple(grid.shape):
        # a checkpointed iterate is already normalised: renormalising changes bits
        p, it0 = np.array(resume[0], float).ravel(), resume[2]
    elif p0 is None:
        p = gaussian_start(op)
    else:
        p = np.array(p0, float).ravel()
        p = p / (p.sum() * vol)
    rate_max = op.max_rate()
    rate = op.rate(p)
    res = np.abs(rate).sum() * vol
    status, it, chord = "max_iter", it0, False
    solver = _DirectSolver(op) if direct else None
    precond = None if direct else StationaryPreconditioner(op)
    budget, residuals = GMRES_PRODUCTS, [res / rate_max]
    try:
        for it in range(it0 + 1, max_iter + 1):
            prev = res
            if direct:
                p, rate, res, n_rates = solver.step(p, rate, res, chord, vol)
                n_rhs += n_rates
            else:
                p, rate, res, nmv, n_rates = _newton_krylov(op, p, rate, res, vol, krylov_tol,
                                                            budget, precond)
                n_rhs += nmv + n_rates
            if not np.all(np.isfinite(p)):
                raise SolverError("the stationary solve produced NaN; the grid is too coarse")
            chord = res <= CHORD_RATIO * prev
            residuals.append(res / rate_max)
            budget = _budget(budget, residuals, tol, max_iter - it)
            if progress is not None:
                progress.update(1)
                progress.set_postfix_str(f"{'x'.join(map(str, grid.shape))} cells, "
                                         f"residual {res / rate_max:.1e}")
            if res / rate_max < tol:
                status = "converged"
                break
            if checkpoint is not None:
                checkpoint.handle(p, grid.shape, it)
    except KeyboardInterrupt:
        if checkpoint is not None:
            checkpoint.write(p, grid.shape, it - 1)
        raise
    if status == "converged":
        p, res = _positive_part(op, p, res, tol, vol)
    n_factor = solver.n_factor if direct else 0
    kind = f"Newton/chord steps ({n_factor} LU)" if direct else "Newton-GMRES steps"
    msg = (f"converged in {it} {kind}, relative residual {res / rate_max:.2e}"
           if status == "converged" else
           f"stopped after {it} {kind} at relative residual {res / rate_max:.2e} "
           f"(> tol {tol:g})")
    return SolveResult(p=p.reshape(op.shape), t=None, success=status == "converged",
                       status=status, message=msg, n_iter=it, n_rhs=n_rhs, residual=res,
                       history={"factorisations": n_factor,
                                "rejected_chord_steps": solver.n_rejected if direct else 0},
                       residual_rel=res / rate_max, mass_error=abs(p.sum() * vol - 1.0),
                       min_density=float(p.min()), wall_time_s=time.perf_counter() - start)
