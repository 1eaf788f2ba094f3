"""ROS2's and SSP-RK's time errors on the exact moment dynamics, and the steps they choose."""

import numpy as np
import pytest
import scipy.linalg as sla

from fpsolver import theory
from fpsolver.analysis import moments, observed_orders
from fpsolver.case import load_case
from fpsolver.sgd import PhaseSpaceModel
from fpsolver import solve
from fpsolver.solve import (ROS2_GAMMA, TIME_TOL, _accuracy_step, _moment_start, choose_scheme,
                            evolve, explicit_step_bound, implicit_step_size, setup_problem,
                            step_size)
from fpsolver.time_error import (_moments_vector, moment_error, moment_generator,
                                 ros2_step_matrix, ssp_step_matrix)

# plain SGD (β = 0, fast velocity relaxation, rate 39) stopped at t = 0.21, started with
# v 9 stationary standard deviations away: found by a random search of `fpsolver run`
STIFF_DISPLACED = """name = "stiff_displaced"
[sgd]
lr = 0.0503
momentum = 0.0
weight_decay = 0.0
batch_size = 7
[loss]
hessian = [[0.298]]
[noise]
model = "proportional"
sigma2 = 0.085
[grid]
cells = 64
[run]
t_final = 0.2085
initial_mean = [-0.809, 0.555]
"""


def _model_4d():
    h = np.array([[0.755734, 0.379458], [0.379458, 0.309074]])
    return PhaseSpaceModel.from_arrays(h, 0.245764 * np.array([[2.5, 1.5], [1.5, 2.5]]),
                                       0.05, 0.9, 0.01, 8)


def test_moment_generator_propagates_the_exact_gaussian_moments():
    """e^{Gt} applied to the moments of N(m0, P0) gives theory.transient_moments (4-D,
    non-commuting noise) to round-off."""
    model = _model_4d()
    mean0 = model.stationary_mean + np.array([0.3, -0.2, 0.5, 0.1])
    cov0 = 0.2 * theory.stationary_cov(model)
    g = moment_generator(model.drift, model.diffusion)
    for t in (0.1, 1.0, 7.0):
        y = sla.expm(g * t) @ _moments_vector(mean0, cov0, model.stationary_mean)
        mean, cov = theory.transient_moments(model, mean0, cov0, t)
        m = mean - model.stationary_mean
        np.testing.assert_allclose(y[:4], m, rtol=0, atol=1e-13)
        np.testing.assert_allclose(y[4:-1].reshape(4, 4) - np.outer(m, m), cov, rtol=0,
                                   atol=1e-13)
        assert y[-1] == 1.0


def test_ros2_moment_error_falls_with_the_square_of_the_step():
    model = _model_4d()
    mean0 = model.stationary_mean + np.array([0.3, -0.2, 0.5, 0.1])
    cov0 = 0.2 * theory.stationary_cov(model)
    g = moment_generator(model.drift, model.diffusion)
    steps = [160, 320, 640]
    errors = [moment_error(ros2_step_matrix(g, 2.0 / n, ROS2_GAMMA), g, 2.0 / n, n, mean0,
                           cov0, model.stationary_mean) for n in steps]
    assert min(observed_orders(steps, errors)) >= 1.9


def test_ssp_moment_error_falls_with_the_cube_of_the_step():
    """The solver's SSP-RK(25,3) on the moment dynamics: third order (measured 3.03, 3.01,
    3.00 over 10 → 80 steps of the 4-D case to t = 2)."""
    model = _model_4d()
    mean0 = model.stationary_mean + np.array([0.3, -0.2, 0.5, 0.1])
    cov0 = 0.2 * theory.stationary_cov(model)
    g = moment_generator(model.drift, model.diffusion)
    steps = [10, 20, 40, 80]
    errors = [moment_error(ssp_step_matrix(g, 2.0 / n), g, 2.0 / n, n, mean0, cov0,
                           model.stationary_mean) for n in steps]
    assert min(observed_orders(steps, errors)) >= 2.9


@pytest.fixture(scope="module")
def stiff_displaced(tmp_path_factory):
    path = tmp_path_factory.mktemp("case") / "case.toml"
    path.write_text(STIFF_DISPLACED)
    return setup_problem(load_case(path))


def test_a_far_displaced_stiff_transient_gets_shorter_implicit_steps(stiff_displaced):
    """The eigenvalue step (0.4 e-folds of the fast mode, here shortened to 8 cells of
    advection per step) leaves a moment error above TIME_TOL at t_final; halved until it
    is ≤ TIME_TOL (1/4 of it), the implicit run agrees with the explicit one to 1.9e-3
    instead of 1.7e-2 (64²); "auto" steps explicitly."""
    prob = stiff_displaced
    op = prob.op
    assert choose_scheme(op, "auto", prob.p0, prob.t_final) == "explicit"
    eigen_dt, _ = implicit_step_size(op, prob.t_final)
    dt, n = implicit_step_size(op, prob.t_final, p0=prob.p0)
    assert dt <= eigen_dt / 2
    assert dt == pytest.approx(0.8 * _accuracy_step(op, _moment_start(op, prob.p0),
                                                    prob.t_final), rel=0.02)
    g = moment_generator(op.drift, op.diffusion)
    mean0, cov0 = moments(prob.p0, prob.grid)
    assert moment_error(ros2_step_matrix(g, dt, ROS2_GAMMA), g, dt, n, mean0, cov0,
                        op.mean) <= TIME_TOL
    explicit = evolve(op, prob.p0, prob.t_final, scheme="explicit")
    vol = prob.grid.cell_volume
    diffs = [np.abs(evolve(op, prob.p0, prob.t_final, dt=d, scheme="implicit").p
                    - explicit.p).sum() * vol for d in (eigen_dt, dt)]
    assert diffs[1] <= 5e-3 and diffs[1] <= 0.2 * diffs[0]


def test_the_explicit_step_is_the_positivity_bound_unless_its_time_error_is_too_large(
        stiff_displaced, monkeypatch):
    """At the positivity bound the stiff displaced start's moment error is 4.2e-8, far
    below TIME_TOL: the step is the bound's landing step. With a tolerance below that error
    the step halves until it holds."""
    prob = stiff_displaced
    op, bound = prob.op, explicit_step_bound(prob.op)
    dt, n = step_size(op, prob.t_final, p0=prob.p0)
    assert (dt, n) == step_size(op, prob.t_final) and bound / 1.05 < dt <= bound
    g = moment_generator(op.drift, op.diffusion)
    mean0, cov0 = moments(prob.p0, prob.grid)
    err = moment_error(ssp_step_matrix(g, dt), g, dt, n, mean0, cov0, op.mean)
    assert err < 1e-3 * TIME_TOL
    monkeypatch.setattr(solve, "TIME_TOL", err / 10)
    dt, n = step_size(op, prob.t_final, p0=prob.p0)
    assert dt <= bound / 2
    assert moment_error(ssp_step_matrix(g, dt), g, dt, n, mean0, cov0, op.mean) <= err / 10
