"""The one place the validation calls the finite-volume solver (:mod:`fpsolver.solve`).

:func:`solve` runs a case on an n^(2d) grid exactly as ``fpsolver run`` does (stationary
Newton solve, or time stepping to ``run.t_final`` with ``run.scheme``: SSP-RK(25,3), or ROS2
where "auto" finds the explicit step too stiff) and returns the density, the current and the
errors of :func:`fpsolver.analysis.compare`; :func:`transient_history` the mean of a
transient at regularly spaced times. Wall times exclude the one-off JIT compilation
(a throwaway solve on the smallest grid warms the kernels first).
"""

import functools
import time
from dataclasses import dataclass

import numpy as np

from .. import analysis
from ..grid import MIN_CELLS
from ..solve import StorageTracker, evolve, plan_steps, setup_problem
from ..stationary import stationary, stationary_tolerance

_WARM = set()  # phase-space dimensions whose kernels are compiled


@dataclass(frozen=True, eq=False)
class Outcome:
    """A solve: ``grid``, cell averages ``p`` (grid.shape), cell-centred current
    (2d, *grid.shape), wall time of the solve [s], |∫p − 1|, and errors against the exact
    solution (L1, relative L∞, relative current L1). The wall time covers grid, operator
    and solve. ``converged`` is false when a stationary solve stopped above its
    tolerance (``message`` says why); the errors are then those of its last iterate."""

    grid: object
    p: np.ndarray
    current: np.ndarray
    wall_time_s: float
    mass_error: float
    l1: float
    linf: float
    current_error: float
    converged: bool
    message: str


def _run(problem, case, trackers=()):
    if problem.t_final is None:
        return stationary(problem.op, tol=stationary_tolerance(problem.op, case.run.steady_tol))
    return evolve(problem.op, problem.p0, problem.t_final, dt=case.run.dt,
                  safety=case.run.safety, trackers=trackers, scheme=case.run.scheme)


def _warm_up(case):
    dim = 2 * case.dim
    if dim not in _WARM:
        _run(setup_problem(case, cells=MIN_CELLS), case)
        _WARM.add(dim)


@functools.lru_cache(maxsize=64)
def solve(case, cells):
    """Stationary (``case.run.t_final`` None) or transient solve of ``case`` on ``cells``
    per axis (memoised: several sections use the same solves)."""
    _warm_up(case)
    start = time.perf_counter()
    problem = setup_problem(case, cells=cells)
    result = _run(problem, case)
    wall = time.perf_counter() - start
    errors = analysis.compare(problem, result)
    return Outcome(grid=problem.grid, p=result.p, current=problem.op.current(result.p),
                   wall_time_s=wall, mass_error=errors["mass_error"],
                   l1=errors["l1_error"], linf=errors["linf_rel_error"],
                   current_error=errors["current_l1_rel_error"], converged=result.success,
                   message=result.message)


def transient_history(case, cells, n_times):
    """(times (n,), means (n, 2d)) of the transient of ``case`` on ``cells`` per axis,
    about ``n_times`` times evenly spaced in (0, t_final]."""
    _warm_up(case)
    problem = setup_problem(case, cells=cells)
    _, _, steps = plan_steps(problem.op, problem.p0, problem.t_final, case.run.scheme,
                             case.run.dt, case.run.safety)
    store = StorageTracker(interval=max(1, steps // n_times))
    _run(problem, case, trackers=[store])
    times = np.array(store.times[1:])
    means = np.array([analysis.moments(p, problem.grid)[0] for p in store.densities[1:]])
    return times, means
