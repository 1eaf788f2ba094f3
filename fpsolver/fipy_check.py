"""The 2-D phase-space Fokker-Planck problem (d = 1) built in FiPy, for cross-checks.

Axes x = θ and y = v on the same uniform cell-centred grid fpsolver uses; densities come
back as cell values of shape (nθ, nv), index [i_θ, i_v] (FiPy numbers cells with x
fastest, so its vector is reshaped to (nv, nθ) and transposed).

Sign conventions matched to THEORY.md §5 (∂_t p = −∇·J, J = u p − D∇p, u = −A(z − z_μ)):

* FiPy's ``ConvectionTerm(coeff=u)`` is +∇·(u φ) on the side of the ``TransientTerm``, so
  the equation is ``TransientTerm() + ConvectionTerm(u) == DiffusionTerm(D)``, i.e.
  ∂φ/∂t + ∇·(uφ) = ∇·(D∇φ), with ``u`` the drift velocity itself (not −u).
* ``u`` is a rank-1 ``FaceVariable`` evaluated at face centres: u_θ = v,
  u_v = −(K/m)(θ − μ) − ((1−β)/m) v (rows of −A).
* Diffusion acts on v only: the coefficient is the rank-2 tensor [[0, 0], [0, D_vv]] with
  D_vv = (η/S)Σ/(2m²). On θ faces its normal component is zero, so FiPy's exponential and
  power-law schemes (Péclet number from the normal diffusion) reduce to pure upwinding
  there: first order in θ. Only ``central`` is second order, at the price of dispersive
  wiggles on coarse grids.
* Zero-flux walls are FiPy's default (no constraints): the face velocity on exterior faces
  is multiplied by nothing, and FiPy convection terms contribute no boundary flux unless a
  value is constrained.

Transient: backward Euler with a fixed step (first order in time). Stationary: pseudo-time
backward Euler with a huge step, i.e. inverse iteration on the singular steady operator,
which converges to its null vector in a few sweeps; the density is then normalised to
mass 1 and the steady residual ‖L p‖₁/‖diag(L) p‖₁ is reported.
"""

import os
import time
import warnings
from dataclasses import dataclass

import numpy as np

from .errors import UserError

CONVECTION_SCHEMES = ("upwind", "exponential", "central", "powerlaw")
PSEUDO_DT = 1e8  # pseudo-time step of the stationary solve (units of t; ≫ every relaxation time)
STATIONARY_SWEEPS = 4


@dataclass(frozen=True)
class FipyResult:
    """A FiPy solve: ``p`` (nθ, nv) cell values normalised as a density, ``wall_time_s``
    (mesh + terms + solves), ``t`` (None: stationary), ``steps`` (time steps or sweeps),
    ``mass`` (∫p after the last step, before any renormalisation), ``residual``
    (stationary: relative steady residual ‖Lp‖₁/‖diag(L)p‖₁; transient: NaN)."""

    p: np.ndarray
    convection: str
    wall_time_s: float
    t: float | None
    steps: int
    mass: float
    residual: float


def _fipy():
    """Import FiPy with the scipy solver suite pinned (must precede the first import)."""
    os.environ["FIPY_SOLVERS"] = "scipy"
    with warnings.catch_warnings():  # FiPy 4.0 imports numpy.core (deprecated in numpy 2)
        warnings.simplefilter("ignore", DeprecationWarning)
        import fipy

    return fipy


def _check(model, grid, convection):
    if model.dim != 1:
        raise UserError("the FiPy cross-check needs a 2-D phase space (d = 1), "
                        f"got d = {model.dim}")
    if convection not in CONVECTION_SCHEMES:
        raise UserError(f"convection must be one of {', '.join(CONVECTION_SCHEMES)}, "
                        f"got {convection!r}")
    if len(grid.edges) != 2:
        raise UserError(f"the FiPy cross-check needs a 2-axis grid, got {len(grid.edges)} axes")


def _setup(model, grid, convection):
    """FiPy mesh, cell variable and the operator terms (convection, diffusion)."""
    fp = _fipy()
    ex, ev = (np.asarray(e, dtype=float) for e in grid.edges)
    nx, nv = len(ex) - 1, len(ev) - 1
    dx, dv = (ex[-1] - ex[0]) / nx, (ev[-1] - ev[0]) / nv
    mesh = fp.Grid2D(dx=dx, dy=dv, nx=nx, ny=nv) + ((ex[0],), (ev[0],))
    var = fp.CellVariable(mesh=mesh, value=0.0)
    fx, fv = mesh.faceCenters.value
    y = np.stack([fx, fv]) - model.stationary_mean[:, None]
    u = fp.FaceVariable(mesh=mesh, rank=1, value=-(model.drift @ y))
    d_vv = float(model.diffusion[1, 1])
    diff = fp.DiffusionTerm(coeff=[[[0.0, 0.0], [0.0, d_vv]]])
    terms = {"upwind": fp.UpwindConvectionTerm, "exponential": fp.ExponentialConvectionTerm,
             "central": fp.CentralDifferenceConvectionTerm,
             "powerlaw": fp.PowerLawConvectionTerm}
    conv = terms[convection](coeff=u)
    return fp, mesh, var, conv, diff, (nx, nv)


def _cell_volume(grid):
    return float(np.prod([e[1] - e[0] for e in grid.edges]))


def _to_grid(values, shape):
    """FiPy cell vector (x fastest) -> array (nθ, nv)."""
    nx, nv = shape
    return np.asarray(values, dtype=float).reshape(nv, nx).T.copy()


def _from_grid(p):
    """Array (nθ, nv) -> FiPy cell vector (x fastest)."""
    return np.asarray(p, dtype=float).T.ravel()


def solve_stationary(model, grid, convection="exponential", sweeps=STATIONARY_SWEEPS):
    """Stationary density of the FiPy discretisation on ``grid`` (mass 1)."""
    _check(model, grid, convection)
    start = time.perf_counter()
    fp, mesh, var, conv, diff, shape = _setup(model, grid, convection)
    cell_volume = _cell_volume(grid)
    var.setValue(1.0 / (cell_volume * mesh.numberOfCells))
    eq = fp.TransientTerm() + conv == diff
    solver = fp.LinearLUSolver()
    for _ in range(sweeps):
        with np.errstate(under="ignore"):  # FiPy's exponential weights underflow legitimately
            eq.solve(var=var, dt=PSEUDO_DT, solver=solver)
        mass = float(var.value.sum() * cell_volume)
        var.setValue(var.value / mass)
    steady = conv - diff
    steady.cacheMatrix()
    with np.errstate(under="ignore"):
        steady.justResidualVector(var=var)
    matrix = steady.matrix.matrix
    p = var.value
    residual = float(np.abs(matrix @ p).sum() / np.abs(matrix.diagonal() * p).sum())
    wall = time.perf_counter() - start
    return FipyResult(_to_grid(p, shape), convection, wall, None, sweeps, mass, residual)


def solve_transient(model, grid, p0, t_final, dt, convection="exponential"):
    """Density at ``t_final`` from cell values ``p0`` (nθ, nv), backward Euler with step ≈ dt.

    The number of steps is ceil(t_final/dt); the step is shrunk to land on t_final.
    """
    _check(model, grid, convection)
    if not (np.isfinite(t_final) and t_final > 0):
        raise UserError(f"t_final must be > 0, got {t_final}")
    if not (np.isfinite(dt) and dt > 0):
        raise UserError(f"dt must be > 0, got {dt}")
    p0 = np.asarray(p0, dtype=float)
    shape_in = tuple(len(e) - 1 for e in grid.edges)
    if p0.shape != shape_in:
        raise UserError(f"p0 must have the grid's shape {shape_in}, got {p0.shape}")
    start = time.perf_counter()
    fp, mesh, var, conv, diff, shape = _setup(model, grid, convection)
    var.setValue(_from_grid(p0))
    steps = int(np.ceil(t_final / dt - 1e-12))
    step = t_final / steps
    eq = fp.TransientTerm() + conv == diff
    solver = fp.LinearLUSolver()
    for _ in range(steps):
        with np.errstate(under="ignore"):  # FiPy's exponential weights underflow legitimately
            eq.solve(var=var, dt=step, solver=solver)
    wall = time.perf_counter() - start
    p = _to_grid(var.value, shape)
    return FipyResult(p, convection, wall, float(t_final), steps,
                      float(p.sum() * _cell_volume(grid)), float("nan"))
