"""Uniform cell-centred phase-space grids (θ₁..θ_d, v₁..v_d) sized from Gaussians.

A grid is a tensor product of uniform 1-D cell partitions, one per phase-space axis.
It is sized from the stationary covariance P: axis k spans the stationary mean ± width_k
·sqrt(P_kk), widened (never shrunk) to hold the initial Gaussian N(mean0, cov0) at the same
number of standard deviations. The probability mass a Gaussian puts outside the box is
bounded by the sum of its per-axis marginal tails (exact per axis via ``ndtr``; the union
bound overestimates by the overlap of tails, which is second order in the tail mass).
Boxes cutting off more than ``MASS_TOL`` are refused with :class:`GridError` unless forced.
"""

from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtr

from .errors import GridError
from .theory import sd_in_cells

MIN_CELLS = 8
MASS_TOL = 1e-6


@dataclass(frozen=True)
class Grid:
    """Tensor grid; ``edges[k]`` holds the n_k + 1 cell edges of axis k (units of z_k).

    ``mass_outside`` maps a label ("initial", "stationary") to the Gaussian mass outside
    the box (union bound over axes).
    """

    edges: tuple
    mass_outside: dict = field(default_factory=dict, compare=False)

    @property
    def ndim(self):
        """Number of phase-space axes, 2d."""
        return len(self.edges)

    @property
    def shape(self):
        """Cells per axis, tuple of 2d ints."""
        return tuple(len(e) - 1 for e in self.edges)

    @property
    def spacing(self):
        """Cell widths h_k (2d,)."""
        return np.array([e[1] - e[0] for e in self.edges])

    @property
    def cell_volume(self):
        """Π h_k."""
        return float(np.prod(self.spacing))

    @property
    def centers(self):
        """Cell centres per axis, tuple of 1-D arrays."""
        return tuple(0.5 * (e[1:] + e[:-1]) for e in self.edges)

    @property
    def bounds(self):
        """((lo, hi), ...) per axis."""
        return tuple((float(e[0]), float(e[-1])) for e in self.edges)

    def mesh(self):
        """Cell-centre coordinates as an array (*shape, 2d)."""
        return np.stack(np.meshgrid(*self.centers, indexing="ij"), axis=-1)

    def cell_of(self, point):
        """Index tuple of the cell holding ``point`` (one coordinate per axis, or the first
        len(point) axes), clipped to the box."""
        return tuple(int(np.clip(np.searchsorted(e, x) - 1, 0, len(e) - 2))
                     for e, x in zip(self.edges, point))

    def mass(self, p):
        """∫p over the box for cell averages p (shape = self.shape)."""
        return float(p.sum() * self.cell_volume)


def uniform_grid(cells, bounds):
    """Grid with ``cells[k]`` uniform cells on ``bounds[k] = (lo, hi)``.

    Raises GridError for fewer than MIN_CELLS cells on an axis or an empty interval.
    """
    cells = tuple(int(n) for n in cells)
    if len(cells) != len(bounds):
        raise GridError(f"grid.cells has {len(cells)} entries, bounds has {len(bounds)}")
    if min(cells) < MIN_CELLS:
        raise GridError(f"grid.cells must be >= {MIN_CELLS} per axis, got {list(cells)}")
    edges = []
    for n, (lo, hi) in zip(cells, bounds):
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise GridError(f"grid.bounds must have lo < hi, got ({lo}, {hi})")
        edges.append(np.linspace(lo, hi, n + 1))
    return Grid(tuple(edges))


def gaussian_mass_outside(mean, cov, bounds):
    """Mass of N(mean, cov) outside the box ``bounds``: Σ_k of the marginal tails of axis k."""
    sd = np.sqrt(np.diag(cov))
    total = 0.0
    for m, s, (lo, hi) in zip(mean, sd, bounds):
        total += ndtr((lo - m) / s) + ndtr((m - hi) / s)
    return float(total)


def cells_per_sigma(grid, cov):
    """Resolution of N(·, cov) on ``grid``: its standard deviation along its thinnest
    direction, in cells (√ of the smallest eigenvalue of cov measured in cell widths).
    Below ~1 the cells cannot represent the density (strongly correlated or rotating
    cases on coarse grids), and errors of order one follow."""
    return sd_in_cells(cov, grid.spacing)


def _span(gaussians, width):
    """(lo, hi) per axis holding mean ± width·sd of every (mean, cov) in ``gaussians``."""
    means = np.array([m for m, _ in gaussians], dtype=float)
    sds = np.sqrt(np.array([np.diag(c) for _, c in gaussians], dtype=float))
    return (means - width * sds).min(axis=0), (means + width * sds).max(axis=0)


def sized_grid(cells, stationary, width=6.0, bounds=None, initial=None, force=False,
               path=None):
    """Grid for a run: explicit ``bounds`` or the stationary box widened to hold ``initial``
    and the transient ``path`` between.

    ``stationary``, ``initial``: (mean (2d,), cov (2d, 2d)) pairs; ``initial`` may be None
    (stationary solve). ``path``: (means (n, 2d), covs (n, 2d, 2d)) of the exact transient
    at times up to t_final (a rotating density swings beyond both ends: from a start k
    standard deviations out in θ, about k stationary ones in v); the box is widened to
    ``width`` standard deviations of every path point only where the stationary and initial
    box would lose more than MASS_TOL of it. ``width``: scalar or
    per-axis half-widths in standard deviations. Raises GridError when a Gaussian (the
    transient: at any of its times) loses more than MASS_TOL outside the box and not
    ``force``; the largest mass outside per label is recorded in ``grid.mass_outside``.
    """
    gaussians = {"stationary": [stationary]}
    if initial is not None:
        gaussians["initial"] = [initial]
    if path is not None:
        gaussians["transient"] = list(zip(*path))
    n = len(stationary[0])
    if bounds is None:
        width = np.broadcast_to(np.asarray(width, dtype=float), (n,))
        lo, hi = _span(gaussians["stationary"] + gaussians.get("initial", []), width)
        # the path only where it would lose more than MASS_TOL: boxes that already hold
        # it stay as they were
        path_members = gaussians.get("transient", [])
        if any(gaussian_mass_outside(m, c, tuple(zip(lo, hi))) > MASS_TOL
               for m, c in path_members):
            plo, phi = _span(path_members, width)
            lo, hi = np.minimum(lo, plo), np.maximum(hi, phi)
        bounds = tuple(zip(lo, hi))
    grid = uniform_grid(cells, bounds)
    outside = {k: max(gaussian_mass_outside(m, c, grid.bounds) for m, c in gs)
               for k, gs in gaussians.items()}
    for label, mass in outside.items():
        if mass > MASS_TOL and not force:
            raise GridError(f"the box cuts off {mass:.2e} of the {label} density "
                            f"(> {MASS_TOL:g}); widen grid.width/grid.bounds or set grid.force")
    return Grid(grid.edges, outside)
