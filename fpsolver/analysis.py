"""Errors of a Fokker-Planck solution against the exact Gaussian, observed orders, moments.

The exact density is compared through its cell averages (Gauss-Legendre per cell), the
current through its point values at cell centres against the scheme's face fluxes averaged
to cell centres (both second-order accurate representations of the same field).
"""

import numpy as np

from . import theory


def exact_moments(model, t=None, initial=None):
    """(mean (2d,), cov (2d, 2d)) of the exact solution: stationary when ``t`` is None,
    else N(e^{−At}m0, P(t)) from ``initial`` = (m0, cov0)."""
    if t is None:
        return model.stationary_mean, theory.stationary_cov(model)
    return theory.transient_moments(model, initial[0], initial[1], t)


def density_errors(p, exact, grid):
    """l1_error = ∫|p − p_exact|, linf_rel_error = max|p − p_exact|/max p_exact,
    mass_error = |∫p − 1|, min_density = min p and its ratio to max p."""
    vol = grid.cell_volume
    diff = np.abs(p - exact)
    return {"l1_error": float(diff.sum() * vol),
            "linf_rel_error": float(diff.max() / exact.max()),
            "mass_error": float(abs(p.sum() * vol - 1.0)),
            "min_density": float(p.min()),
            "min_density_rel": float(p.min() / p.max())}


@np.errstate(under="ignore")  # squares of far-tail currents ~1e-300 flush to zero
def current_errors(op, p, model, mean, cov):
    """Relative L1 error of the probability current, ∫|J − J_exact| / ∫|J_exact| with |·| the
    Euclidean length of the (cell-centred) vector (DESIGN.md), J from the scheme's face
    fluxes; also per phase-space axis k, ∫|J_k − J_k,exact| / ∫|J_k,exact| (axes with an
    identically zero exact current, none here, would be skipped)."""
    j = op.current(p)
    exact = np.moveaxis(theory.gaussian_current(model, mean, cov, op.grid.mesh()), -1, 0)
    per_axis = []
    for k in range(len(op.shape)):
        norm = np.abs(exact[k]).sum()
        if norm > 0:
            per_axis.append(float(np.abs(j[k] - exact[k]).sum() / norm))
    total = float(np.sqrt(((j - exact) ** 2).sum(axis=0)).sum()
                  / np.sqrt((exact ** 2).sum(axis=0)).sum())
    return {"current_l1_rel_error": total, "current_l1_rel_error_per_axis": per_axis}


def observed_orders(cells, errors):
    """Orders log(e_i/e_{i+1})/log(n_{i+1}/n_i) between successive grids (list)."""
    cells, errors = np.asarray(cells, float), np.asarray(errors, float)
    return list(np.log(errors[:-1] / errors[1:]) / np.log(cells[1:] / cells[:-1]))


@np.errstate(under="ignore")  # far-tail cells ~1e-300 flush to zero
def moments(p, grid):
    """(mean (2d,), cov (2d, 2d)) of cell averages p: midpoint sums, plus h²/12 on the
    variances (the exact second moment of a density constant on each cell)."""
    vol = grid.cell_volume
    mass = p.sum() * vol
    n = grid.ndim
    mean = np.empty(n)
    marg = []
    for k, c in enumerate(grid.centers):
        mk = p.sum(axis=tuple(a for a in range(n) if a != k)) * vol / mass
        marg.append(mk)
        mean[k] = mk @ c
    cov = np.empty((n, n))
    for a in range(n):
        for b in range(a, n):
            if a == b:
                ca = grid.centers[a] - mean[a]
                cov[a, a] = marg[a] @ ca ** 2 + grid.spacing[a] ** 2 / 12
            else:
                pab = p.sum(axis=tuple(x for x in range(n) if x not in (a, b))) * vol / mass
                cov[a, b] = cov[b, a] = ((grid.centers[a] - mean[a]) @ pab
                                         @ (grid.centers[b] - mean[b]))
    return mean, cov


@np.errstate(under="ignore")  # far-tail errors and currents flush to zero
def compare(problem, result):
    """Summary numbers of ``result`` for ``problem`` against the exact Gaussian."""
    mean, cov = exact_moments(problem.model, result.t, problem.initial)
    exact = theory.gaussian_cell_averages(mean, cov, problem.grid.edges)
    out = density_errors(result.p, exact, problem.grid)
    out.update(current_errors(problem.op, result.p, problem.model, mean, cov))
    return out
