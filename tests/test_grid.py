"""Phase-space grids: sizing from Gaussians, exact tail masses, refusals."""

import numpy as np
import pytest
from scipy.stats import norm

from fpsolver import theory
from fpsolver.analysis import compare
from fpsolver.case import default_case
from fpsolver.errors import GridError
from fpsolver.grid import cells_per_sigma, gaussian_mass_outside, sized_grid, uniform_grid
from fpsolver.sgd import build_model
from fpsolver.solve import evolve, setup_problem


def test_uniform_grid_geometry():
    g = uniform_grid((10, 20), ((-1.0, 1.0), (0.0, 4.0)))
    assert g.shape == (10, 20) and g.ndim == 2
    np.testing.assert_allclose(g.spacing, [0.2, 0.2], rtol=1e-15)
    np.testing.assert_allclose(g.centers[0][[0, -1]], [-0.9, 0.9], rtol=1e-14)
    assert g.cell_volume == pytest.approx(0.04, rel=1e-14)
    assert g.mass(np.full(g.shape, 1 / 8.0)) == pytest.approx(1.0, rel=1e-14)


def test_sized_grid_spans_width_standard_deviations_and_holds_the_initial_gaussian():
    mean, cov = np.array([0.5, 0.0]), np.diag([0.04, 1.0])
    g = sized_grid((16, 16), (mean, cov), width=6.0)
    np.testing.assert_allclose(np.array(g.bounds), [[-0.7, 1.7], [-6.0, 6.0]], rtol=1e-14)
    # initial N((2, 0), 0.25 cov): widened to 2 + 6·0.1 = 2.6 on the right only
    g2 = sized_grid((16, 16), (mean, cov), 6.0, initial=(np.array([2.0, 0.0]), 0.25 * cov))
    np.testing.assert_allclose(np.array(g2.bounds), [[-0.7, 2.6], [-6.0, 6.0]], rtol=1e-14)


def test_cells_per_sigma_measures_the_thinnest_direction():
    """±6σ on n cells: σ = n/12 cells per axis; correlation ρ between two axes of equal
    σ (in cells) thins the ellipse to σ·√(1 − |ρ|) along the diagonal."""
    cov = np.diag([0.04, 1.0])
    g = sized_grid((24, 48), (np.zeros(2), cov), width=6.0)
    assert cells_per_sigma(g, cov) == pytest.approx(2.0, rel=1e-12)
    rho = 0.96
    corr = np.sqrt(np.outer(np.diag(cov), np.diag(cov))) * np.array([[1, rho], [rho, 1]])
    g = sized_grid((24, 24), (np.zeros(2), corr), width=6.0)
    assert cells_per_sigma(g, corr) == pytest.approx(2.0 * np.sqrt(1 - rho), rel=1e-12)


def test_mass_outside_is_the_sum_of_exact_marginal_tails():
    mean, cov = np.zeros(2), np.array([[1.0, 0.3], [0.3, 4.0]])
    bounds = ((-5.0, 4.0), (-9.0, 10.0))
    expected = norm.sf(5) + norm.sf(4) + norm.sf(4.5) + norm.sf(5.0)
    assert gaussian_mass_outside(mean, cov, bounds) == pytest.approx(expected, rel=1e-13)
    # width 6 on both axes: 4 tails of 9.87e-10 each
    g = sized_grid((8, 8), (mean, cov), 6.0)
    assert g.mass_outside["stationary"] == pytest.approx(4 * norm.sf(6), rel=1e-12)


def test_refuses_boxes_cutting_off_mass_unless_forced():
    mean, cov = np.zeros(2), np.eye(2)
    with pytest.raises(GridError, match="cuts off"):
        sized_grid((16, 16), (mean, cov), width=4.0)  # 4·Φ(−4) = 1.3e-4 > 1e-6
    g = sized_grid((16, 16), (mean, cov), width=4.0, force=True)
    assert g.mass_outside["stationary"] == pytest.approx(4 * norm.sf(4), rel=1e-12)
    with pytest.raises(GridError, match="initial"):
        sized_grid((16, 16), (mean, cov), 6.0, initial=(np.zeros(2), 4 * np.eye(2)),
                   bounds=((-6, 6), (-6, 6)))


def test_refuses_too_few_cells_and_empty_bounds():
    with pytest.raises(GridError, match="grid.cells"):
        uniform_grid((7, 16), ((0, 1), (0, 1)))
    with pytest.raises(GridError, match="lo < hi"):
        uniform_grid((8, 8), ((0, 1), (1, 1)))


def test_a_transient_box_holds_the_whole_exact_path():
    """Default model started 9 stationary σ out in θ (v = 0): turning, the mean reaches
    6.5 σ in v, beyond the stationary ±6σ box and the initial Gaussian. The sized box
    holds the exact N(m(t), P(t)) at every sampled time (mass outside ≤ 1e-6); the
    stationary + initial box cuts it off (refused, naming the transient), and forced
    through, the walls hold the swinging density back: L1 0.51 against 0.052 at 96²."""
    model = build_model(default_case())
    sd = np.sqrt(np.diag(theory.stationary_cov(model)))
    run = {"t_final": 1.0, "initial_mean": [9 * sd[0], 0.0], "initial_cov_scale": 0.25}
    prob = setup_problem(default_case().replace(run=run, grid={"cells": 96}))
    means, covs = theory.transient_path(model, *prob.initial, 1.0)
    assert np.abs(means[:, 1]).max() > 6 * sd[1]
    assert prob.grid.mass_outside["transient"] <= 1e-6
    for m, c in zip(means, covs):
        assert gaussian_mass_outside(m, c, prob.grid.bounds) <= 1e-6
    narrow = sized_grid((96, 96), prob.stationary, 6.0, initial=prob.initial).bounds
    with pytest.raises(GridError, match="transient density"):
        setup_problem(default_case().replace(run=run, grid={"cells": 96, "bounds": narrow}))
    forced = setup_problem(default_case().replace(
        run=run, grid={"cells": 96, "bounds": narrow, "force": True}))
    l1 = [compare(p, evolve(p.op, p.p0, p.t_final))["l1_error"] for p in (prob, forced)]
    assert l1[0] <= 0.1 and l1[1] >= 0.3
