"""The one place the validation calls the finite-volume solver (fpsolver.solve).

:func:`solve` runs a case on an n^(2d) grid and returns the density, the current and the
errors against the exact solution; :func:`transient_means` the mean of a transient at
several times.
"""

from dataclasses import dataclass

import numpy as np

from ..errors import UserError


@dataclass(frozen=True, eq=False)
class Outcome:
    """A solve: ``grid``, cell averages ``p`` (grid.shape), cell-centred current
    (2d, *grid.shape), wall time, |∫p − 1|, and errors against the exact solution (L1,
    relative L∞, relative current L1)."""

    grid: object
    p: np.ndarray
    current: np.ndarray
    wall_time_s: float
    mass_error: float
    l1: float
    linf: float
    current_error: float


def solve(case, cells):
    """Stationary (``case.run.t_final`` None) or transient solve of ``case`` on ``cells``
    per axis."""
    raise UserError("the finite-volume solver is not available yet: use --sections "
                    "montecarlo,diffusion")


def transient_means(case, cells, times):
    """Mean (len(times), 2d) of the transient of ``case`` at ``times`` (ascending)."""
    raise UserError("the finite-volume solver is not available yet: use --sections "
                    "montecarlo,diffusion")
