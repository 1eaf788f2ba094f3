"""Exact theory: THEORY.md §13 to the digits, closed forms, Ψ, J_ss, levels 2-3, Δ(k)."""

import numpy as np
import pytest
import scipy.linalg as sla
from scipy.integrate import dblquad
from scipy.stats import multivariate_normal, norm

from fpsolver import theory as th
from fpsolver.case import case_from_dict
from fpsolver.errors import UserError
from fpsolver.sgd import PhaseSpaceModel, build_model

H13 = np.array([[0.755734, 0.379458], [0.379458, 0.309074]])
SIGMA2_13 = 0.245764
HYPER13 = dict(lr=0.05, momentum=0.9, weight_decay=0.01, batch_size=8)


@pytest.fixture
def model13():
    return PhaseSpaceModel.from_arrays(H13, SIGMA2_13 * H13, **HYPER13)


@pytest.fixture
def noncommuting13():
    sigma = SIGMA2_13 * np.array([[2.5, 1.5], [1.5, 2.5]])
    return PhaseSpaceModel.from_arrays(H13, sigma, **HYPER13)


def per_mode(model, block):
    """Diagonal of a d×d block in the Hessian eigenbasis."""
    u = model.hessian_eigenvectors
    return np.diag(u.T @ block @ u)


# ---------------------------------------------------------------- §13, to the digits


def test_worked_example_scalars(model13):
    np.testing.assert_allclose(model13.hessian_eigenvalues, [0.092103, 0.972705], atol=5e-7)
    assert np.trace(model13.hessian) == pytest.approx(1.064808, abs=5e-7)
    assert model13.mass == pytest.approx(0.0475, abs=1e-12)
    assert model13.gamma == pytest.approx(1.052632, abs=5e-7)
    assert model13.temperature == pytest.approx(7.680125e-3, abs=5e-10)
    omega, damped = th.rotation_frequencies(model13)
    np.testing.assert_allclose(omega, [1.466132, 4.548463], atol=5e-7)
    np.testing.assert_allclose(damped, [1.020544, 4.424984], atol=5e-7)


def test_worked_example_continuous(model13):
    p = th.stationary_cov(model13)
    np.testing.assert_allclose(p[:2, :2], [[0.007436, 0.000290], [0.000290, 0.007094]], atol=5e-7)
    np.testing.assert_allclose(p[2:, 2:], [[0.122192, 0.061353], [0.061353, 0.049973]], atol=5e-7)
    assert np.abs(p[:2, 2:]).max() < 1e-15
    a, d = model13.drift, model13.diffusion
    assert np.linalg.norm(a @ p + p @ a.T - 2 * d) / np.linalg.norm(2 * d) < 1e-14
    q = th.rotation_Q(model13)
    np.testing.assert_allclose(q, np.block([[np.zeros((2, 2)), -p[2:, 2:]],
                                            [p[2:, 2:], np.zeros((2, 2))]]), atol=1e-15)
    raw = a @ p - d
    assert np.abs(raw + raw.T).max() < 2e-15  # antisymmetric before symmetrisation
    np.testing.assert_allclose(model13.K / model13.mass,
                               [[16.12072, 7.988589], [7.988589, 6.717347]], atol=5e-6)
    np.testing.assert_allclose(th.current_velocity_matrix(model13),
                               np.block([[np.zeros((2, 2)), np.eye(2)],
                                         [-model13.K / model13.mass, np.zeros((2, 2))]]),
                               atol=1e-12)
    assert max(th.detailed_balance_residuals(model13)) < 1e-15


def test_worked_example_discrete(model13):
    np.testing.assert_allclose(th.discrete_ratio(model13), [1.001345, 1.013100], atol=5e-7)
    p2 = th.discrete_stationary_cov(model13)
    np.testing.assert_allclose(p2[:2, :2], [[0.007513, 0.000329], [0.000329, 0.007126]], atol=5e-7)
    np.testing.assert_allclose(p2[2:, 2:], [[0.123750, 0.062233], [0.062233, 0.050496]], atol=5e-7)
    np.testing.assert_allclose(p2[:2, 2:], [[0.003094, 0.001556], [0.001556, 0.001262]], atol=5e-7)
    np.testing.assert_allclose(p2[:2, 2:], model13.hyper.lr / 2 * p2[2:, 2:], atol=1e-15)
    np.testing.assert_allclose(th.state_noise_ratio_first_order(model13), [1.036, 1.064], atol=5e-4)
    p1 = th.stationary_cov(model13)
    ev2 = np.trace(p1[2:, 2:])
    assert ev2 == pytest.approx(0.172165, abs=5e-7)
    assert model13.hyper.lr ** 2 * ev2 == pytest.approx(4.304e-4, abs=5e-8)
    assert model13.hyper.lr ** 2 * np.trace(p2[2:, 2:]) == pytest.approx(4.356e-4, abs=5e-8)


def test_worked_example_noncommuting(noncommuting13):
    p = th.stationary_cov(noncommuting13)
    np.testing.assert_allclose(p[:2, 2:], [[0, 0.017583], [-0.017583, 0]], atol=5e-7)
    np.testing.assert_allclose(th.position_current_matrix(noncommuting13),
                               [[-0.159891, -0.271194], [0.520297, 0.159891]], atol=5e-7)
    np.testing.assert_allclose(th.detailed_balance_residuals(noncommuting13), [0.107, 0.335],
                               atol=5e-4)
    assert not noncommuting13.commuting


# ---------------------------------------------------------------- closed forms, Ψ, J


@pytest.mark.parametrize("noise", ["proportional", "commuting_matrix"])
def test_closed_form_equals_lyapunov(rng, noise):
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    h = q @ np.diag([0.2, 0.9, 2.5]) @ q.T
    sigma = 0.3 * h if noise == "proportional" else q @ np.diag([0.5, 0.1, 0.7]) @ q.T
    model = PhaseSpaceModel.from_arrays(h, sigma, lr=0.1, momentum=0.8, weight_decay=0.05,
                                        batch_size=4)
    p_num = th.stationary_cov(model)
    p_closed = th.stationary_cov_closed_form(model)
    assert np.abs(p_num - p_closed).max() / np.abs(p_closed).max() < 1e-12


@pytest.mark.parametrize("noise_model", ["proportional", "isotropic"])
def test_precision_is_hessian_of_modified_loss(noise_model):
    case = case_from_dict({"sgd": HYPER13, "loss": {"hessian": H13.tolist()},
                           "noise": {"model": noise_model, "sigma2": SIGMA2_13}})
    model = build_model(case)
    prec = np.linalg.inv(th.stationary_cov(model))
    hess_psi = th.modified_loss_hessian(model) / model.temperature
    assert np.linalg.norm(prec - hess_psi) / np.linalg.norm(prec) < 1e-13


def test_modified_loss_matches_closed_form(model13, rng):
    z = rng.standard_normal((50, 4)) * 0.1
    y = z - model13.stationary_mean
    hess = th.modified_loss_hessian(model13)
    closed = 0.5 * np.einsum("ni,ij,nj->n", y, hess, y)
    np.testing.assert_allclose(th.modified_loss(model13, z), closed, rtol=1e-12)


def test_stationary_current_is_divergence_free_and_tangent(model13, rng):
    p = th.stationary_cov(model13)
    z = model13.stationary_mean + rng.multivariate_normal(np.zeros(4), p, size=20)
    step = 1e-5 * np.sqrt(np.diag(p))
    div = np.zeros(len(z))
    for a in range(4):
        e = np.zeros(4)
        e[a] = step[a]
        div += (th.stationary_current(model13, z + e)[:, a]
                - th.stationary_current(model13, z - e)[:, a]) / (2 * step[a])
    scale = np.abs(th.stationary_current(model13, z)).sum(axis=1) / step.min() * 1e-5
    # central differences: error O(step²) relative to |J|/σ ≈ 1e-10 of the scale
    assert np.all(np.abs(div) < 1e-6 * scale)
    dens = th.stationary_density(model13, z)
    grad_p = -(z - model13.stationary_mean) @ np.linalg.inv(p) * dens[:, None]
    j = th.stationary_current(model13, z)
    cosine = np.einsum("ni,ni->n", j, grad_p) / (np.linalg.norm(j, axis=1) *
                                                 np.linalg.norm(grad_p, axis=1))
    assert np.abs(cosine).max() < 1e-12


def test_stationary_current_is_hamiltonian_flow_clockwise(model13):
    """J_ss = [v; −(K/m)(θ−μ)]p: at θ > μ, v = 0 the v-current is negative (clockwise)."""
    z = np.array([[0.05, -0.02, 0.3, 0.1]])
    j = th.stationary_current(model13, z)[0]
    dens = th.stationary_density(model13, z)[0]
    expected = np.r_[z[0, 2:], -model13.K @ z[0, :2] / model13.mass] * dens
    np.testing.assert_allclose(j, expected, rtol=1e-12)
    right = th.stationary_current(model13, np.array([[0.05, 0.0, 0.0, 0.0]]))[0]
    assert right[2] < 0


def test_transient_matches_per_mode_closed_form():
    """e^{−At} per mode (THEORY §5) and P(t) = P_ss − e^{−At}P_ss e^{−Aᵀt}."""
    model = PhaseSpaceModel.from_arrays([[0.97]], [[0.25 * 0.97]], lr=0.05, momentum=0.9,
                                        weight_decay=0.01, batch_size=8)
    g, w = model.gamma, model.omega[0]
    f = np.sqrt(w ** 2 - g ** 2)
    for t in (0.1, 0.7, 2.3):
        e = np.exp(-g * t) * np.array(
            [[np.cos(f * t) + g / f * np.sin(f * t), np.sin(f * t) / f],
             [-w ** 2 / f * np.sin(f * t), np.cos(f * t) - g / f * np.sin(f * t)]])
        np.testing.assert_allclose(th.propagator(model, t), e, atol=1e-13)
        p_ss = th.stationary_cov(model)
        mean, cov = th.transient_moments(model, [0.3, -0.2], np.zeros((2, 2)), t)
        np.testing.assert_allclose(mean, e @ [0.3, -0.2], atol=1e-14)
        np.testing.assert_allclose(cov, p_ss - e @ p_ss @ e.T, atol=1e-15)
    mean, cov = th.transient_moments(model, [0.3, -0.2], 0.1 * p_ss, 40.0)
    np.testing.assert_allclose(cov, p_ss, rtol=1e-12)
    np.testing.assert_allclose(mean, 0, atol=1e-15)


# ---------------------------------------------------------------- cell averages


def test_cell_averages_diagonal_equal_erf_product():
    mean, sd = np.array([0.1, -0.3]), np.array([0.5, 1.3])
    edges = [np.linspace(m - 4 * s, m + 3 * s, 17) for m, s in zip(mean, sd)]
    avg = th.gaussian_cell_averages(mean, np.diag(sd ** 2), edges)
    mass = [np.diff(norm.cdf(e, m, s)) for e, m, s in zip(edges, mean, sd)]
    exact = np.outer(mass[0], mass[1]) / np.outer(np.diff(edges[0]), np.diff(edges[1]))
    # 4-point Gauss-Legendre per cell: error ~ (h/σ)^8/10^5 relative, h/σ = 0.44
    assert np.abs(avg - exact).max() / exact.max() < 1e-7


def test_cell_averages_correlated_match_cdf():
    mean = np.array([0.0, 0.2])
    cov = np.array([[1.0, 0.6], [0.6, 0.8]])
    edges = [np.linspace(-1, 1, 5), np.linspace(-1, 1.4, 7)]
    avg = th.gaussian_cell_averages(mean, cov, edges)
    dist = multivariate_normal(mean, cov)
    for i, j in [(0, 0), (1, 3), (3, 5), (2, 2)]:
        (x0, x1), (y0, y1) = edges[0][i:i + 2], edges[1][j:j + 2]
        prob, _ = dblquad(lambda y, x: dist.pdf([x, y]), x0, x1, y0, y1, epsabs=1e-13)
        # 4-point Gauss-Legendre, cells 0.5σ wide: error ~ (h/σ)^8/8! ≈ 1e-7 of f⁽⁸⁾ scale
        assert avg[i, j] == pytest.approx(prob / ((x1 - x0) * (y1 - y0)), rel=1e-8)


def test_cell_averages_4d_total_mass():
    cov = np.diag([1.0, 0.5, 2.0, 0.3])
    cov[0, 2] = cov[2, 0] = 0.4
    edges = [np.linspace(-7 * s, 7 * s, 13) for s in np.sqrt(np.diag(cov))]
    avg = th.gaussian_cell_averages(np.zeros(4), cov, edges)
    vol = np.prod([np.diff(e)[0] for e in edges])
    # 2-point Gauss per axis on h = 1.17σ cells: total-mass error O(h⁴) ≈ 1e-3
    assert avg.sum() * vol == pytest.approx(1.0, abs=2e-3)


def test_cell_averages_4d_resolve_a_gaussian_thinner_than_a_cell():
    """A correlated 4-D Gaussian whose thinnest sd spans s = 0.25 cells: the default order
    (2/s = 8 points per cell axis) matches 12 points to 1e-9 in L1 (measured 1.6e-10);
    the former fixed 2 points were 3.8e-2 off."""
    b = np.random.default_rng(3).normal(size=(4, 4))
    cov = b @ b.T + np.eye(4)
    edges = [np.linspace(-5 * s, 5 * s, 7) for s in np.sqrt(np.diag(cov))]
    assert th.quadrature_order(cov, edges) == (8, 8)
    vol = np.prod([e[1] - e[0] for e in edges])
    ref = th.gaussian_cell_averages(np.zeros(4), cov, edges, order=12)
    avg = th.gaussian_cell_averages(np.zeros(4), cov, edges)
    assert np.abs(avg - ref).sum() * vol <= 1e-9


# ---------------------------------------------------------------- levels 2 and 3


@pytest.mark.parametrize("hyper", [HYPER13, dict(lr=0.4, momentum=0.0, weight_decay=0.1,
                                                   batch_size=2),
                                   dict(lr=0.02, momentum=0.99, weight_decay=0.0, batch_size=64)])
def test_level2_over_level1_is_r_d_per_mode(hyper):
    model = PhaseSpaceModel.from_arrays(H13, 0.3 * H13, **hyper)
    p1, p2 = th.stationary_cov(model), th.discrete_stationary_cov(model)
    r = th.discrete_ratio(model)
    for block in (slice(0, 2), slice(2, 4)):
        ratio = per_mode(model, p2[block, block]) / per_mode(model, p1[block, block])
        np.testing.assert_allclose(ratio, r, rtol=1e-10)


def test_lyapunov_solves_stay_accurate_when_theta_and_v_scales_differ():
    """η = 1e-8, h = 1e6 (ηh = 0.01, a well-posed case): P_θθ and P_vv 14 orders apart.
    The balanced solves give the closed form (level 1) and r_d·level 1 (level 2); unbalanced,
    P_vv came out 1.4 against 1.6e5 and P_θθ negative."""
    model = PhaseSpaceModel.from_arrays(np.array([[1e6]]), np.array([[0.25e6]]), lr=1e-8,
                                        momentum=0.9, weight_decay=0.0, batch_size=8)
    p1, closed = th.stationary_cov(model), th.stationary_cov_closed_form(model)
    scale = np.sqrt(np.outer(np.diag(closed), np.diag(closed)))
    np.testing.assert_allclose(p1 / scale, closed / scale, rtol=0, atol=1e-12)
    p2 = th.discrete_stationary_cov(model)
    np.testing.assert_allclose(np.diag(p2), th.discrete_ratio(model)[0] * np.diag(closed),
                               rtol=1e-10)


def test_midpoint_convention_has_no_cross_term(model13):
    pm = th.discrete_stationary_cov(model13, "midpoint")
    assert np.abs(pm[:2, 2:] + pm[2:, :2].T).max() < 1e-15
    p2 = th.discrete_stationary_cov(model13, "recorded")
    np.testing.assert_allclose(pm[2:, 2:], p2[2:, 2:], rtol=1e-14)


def _linear_regression_model(n=40, lr=0.2, momentum=0.5, batch_size=4, seed=3,
                             noise=None):
    case = case_from_dict({
        "sgd": {"lr": lr, "momentum": momentum, "weight_decay": 0.02, "batch_size": batch_size},
        "loss": {"linear_regression": {"n_samples": n, "feature_eigenvalues": [1.0, 0.3, 0.1],
                                       "label_noise": 0.7, "seed": seed}},
        **({"noise": noise} if noise else {}),
    })
    return build_model(case)


def _level3_operator(model):
    """I − F⊗F − (1/(NS))Σ_i Δ_i⊗Δ_i: the brute-force (2d)²-unknown level-3 system."""
    f, _, _ = th.discrete_matrices(model)
    d, h = model.dim, model.hyper
    op = np.eye((2 * d) ** 2) - np.kron(f, f)
    for x in model.data.X:
        a = np.outer(x, x) - model.hessian
        delta = np.block([[-h.lr * a, np.zeros((d, d))], [a, np.zeros((d, d))]])
        op -= np.kron(delta, delta) / (len(model.data.X) * h.batch_size)
    return op


def _level3_bruteforce(model):
    f, g, q = th.discrete_matrices(model)
    d = model.dim
    state = np.linalg.solve(_level3_operator(model), (g @ q @ g.T).ravel()).reshape(2 * d, 2 * d)
    flip = np.diag(np.r_[np.ones(d), -np.ones(d)])
    return flip @ state @ flip


def test_level3_equals_bruteforce_kronecker_solve():
    """Level 3 (a d(d+1)/2-unknown system in P_θθ) = the (2d)²-unknown linear system built
    from every Δ_i."""
    model = _linear_regression_model()
    d = model.dim
    expected = _level3_bruteforce(model)
    got = th.exact_stationary_cov(model)
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-11
    # and it is larger than level 2 on every mode (state-dependent noise only adds)
    p2 = th.discrete_stationary_cov(model)
    assert np.all(per_mode(model, got[:d, :d]) > per_mode(model, p2[:d, :d]))


def test_level3_is_exact_up_to_its_stability_bound():
    """At 0.995 of the learning rate where the brute-force operator's spectral radius
    (of F⊗F + E[Δ⊗Δ]/S) reaches 1, level 3 still equals the brute-force solve (a fixed
    point iteration of 2000 sweeps called it divergent from 0.99 on); beyond it, one line
    says it diverges."""
    def radius(lr):
        op = _level3_operator(_linear_regression_model(lr=lr, momentum=0.9, batch_size=2))
        return float(np.max(np.abs(np.linalg.eigvals(np.eye(len(op)) - op))))

    lo, hi = 0.01, 0.5  # radius(lo) < 1 < radius(hi)
    assert radius(lo) < 1 < radius(hi)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if radius(mid) < 1 else (lo, mid)
    near = _linear_regression_model(lr=0.995 * lo, momentum=0.9, batch_size=2)
    expected = _level3_bruteforce(near)
    got = th.exact_stationary_cov(near)
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-9
    with pytest.raises(UserError, match="level 3 diverges"):
        th.exact_stationary_cov(_linear_regression_model(lr=1.005 * hi, momentum=0.9,
                                                         batch_size=2))


def test_level3_uses_the_minibatch_noise_whatever_the_noise_model():
    """Levels 1-2 take the case's noise model; level 3 is minibatch SGD on the data, so its
    additive noise is Σ(μ) under every model (an isotropic model once gave Monte-Carlo
    z-scores of 1352 against level 3)."""
    exact = th.exact_stationary_cov(_linear_regression_model())
    for noise in ({"model": "isotropic", "sigma2": 0.3}, {"model": "proportional"}):
        other = _linear_regression_model(noise=noise)
        np.testing.assert_allclose(th.exact_stationary_cov(other), exact, rtol=1e-12,
                                   atol=1e-14 * np.abs(exact).max())


def test_linear_regression_data_realise_requested_hessian():
    case = case_from_dict({"sgd": HYPER13, "loss": {"linear_regression": {
        "n_samples": 256, "feature_covariance": H13.tolist(), "seed": 7}}})
    model = build_model(case)
    np.testing.assert_allclose(model.hessian, H13, atol=1e-13)
    x, y = model.data.X, model.data.y
    grad = x.T @ (x @ model.mu - y) / len(y) + 0.01 * model.mu
    assert np.abs(grad).max() < 1e-13
    g = x * (x @ model.mu - y)[:, None]
    sigma = g.T @ g / len(y) - np.outer(g.mean(0), g.mean(0))
    np.testing.assert_allclose(model.noise_cov, sigma, atol=1e-14)
    again = build_model(case)
    np.testing.assert_array_equal(again.data.X, x)


# ---------------------------------------------------------------- anomalous diffusion


def test_diffusion_curve_continuous_matches_per_mode_formula(model13):
    theta0 = model13.mu + np.array([0.2, -0.1])
    u = model13.hessian_eigenvectors
    a = u.T @ (theta0 - model13.mu)
    k = np.array([1, 10, 100, 1000])
    g = model13.gamma
    h, lam = model13.hessian_eigenvalues, model13.hyper.weight_decay
    w = model13.omega
    f = np.sqrt(w ** 2 - g ** 2)
    px = model13.hyper.lr * SIGMA2_13 * h / (2 * 8 * 0.1 * (h + lam))
    expected = []
    for t in k * model13.hyper.lr:
        e11 = np.exp(-g * t) * (np.cos(f * t) + g / f * np.sin(f * t))
        e12 = np.exp(-g * t) * np.sin(f * t) / f
        expected.append(np.sum(a ** 2 * (1 - e11) ** 2 + px * (1 - e11 ** 2 - w ** 2 * e12 ** 2)))
    np.testing.assert_allclose(th.diffusion_curve_continuous(model13, theta0, k), expected,
                               rtol=1e-10)
    limit = np.sum(a ** 2) + model13.temperature * np.sum(h / (h + lam))
    assert th.diffusion_curve_continuous(model13, theta0, [10 ** 6])[0] == pytest.approx(limit, rel=1e-10)
    stat = th.diffusion_curve_continuous(model13, theta0, k, start="stationary")
    e11s = [np.exp(-g * t) * (np.cos(f * t) + g / f * np.sin(f * t)) for t in k * 0.05]
    np.testing.assert_allclose(stat, [2 * np.sum(px * (1 - e)) for e in e11s], rtol=1e-10)


def test_diffusion_curve_discrete_first_step_and_limit(model13):
    theta0 = model13.mu + np.array([0.2, -0.1])
    eta = model13.hyper.lr
    a = theta0 - model13.mu
    one = eta ** 2 * (np.sum((model13.K @ a) ** 2) + np.trace(model13.noise_cov) / 8)
    assert th.diffusion_curve_discrete(model13, theta0, [1])[0] == pytest.approx(one, rel=1e-12)
    p2 = th.discrete_stationary_cov(model13)
    far = th.diffusion_curve_discrete(model13, theta0, [200000])[0]
    assert far == pytest.approx(a @ a + np.trace(p2[:2, :2]), rel=1e-10)


def test_fit_exponent_recovers_power_law():
    k = np.unique(np.logspace(0, 4, 60).astype(int))
    assert th.fit_exponent(k, 3.0 * k ** 1.37, 10, 1000) == pytest.approx(1.37, abs=1e-12)


def test_exponent_falls_with_learning_rate():
    """THEORY §9: on a fixed window, c falls as η grows (power-law spectrum, θ₀ = μ)."""
    h = 1.0 / np.arange(1, 21) ** 1.5
    k = np.unique(np.logspace(0, 4, 80).astype(int))
    exps = []
    for lr in (0.01, 0.03, 0.1):
        model = PhaseSpaceModel.from_arrays(np.diag(h), 0.5 * np.diag(h), lr=lr, momentum=0.9,
                                            batch_size=16)
        curve = th.diffusion_curve_discrete(model, model.mu, k)
        exps.append(th.fit_exponent(k, curve, 100, 3000))
    assert exps[0] > exps[1] + 0.05 and exps[1] > exps[2] + 0.05


def test_orthogonal_rotation_covariance(rng):
    """A rotated problem has the rotated covariance (frame independence of the theory)."""
    q, _ = np.linalg.qr(rng.standard_normal((2, 2)))
    h = np.diag([0.3, 1.1])
    sigma = np.array([[0.4, 0.1], [0.1, 0.2]])
    base = PhaseSpaceModel.from_arrays(h, sigma, lr=0.1, momentum=0.7, batch_size=3)
    rot = PhaseSpaceModel.from_arrays(q @ h @ q.T, q @ sigma @ q.T, lr=0.1, momentum=0.7,
                                      batch_size=3)
    big = sla.block_diag(q, q)
    for fn in (th.stationary_cov, th.discrete_stationary_cov):
        np.testing.assert_allclose(fn(rot), big @ fn(base) @ big.T, atol=1e-14)


def test_level3_diffusion_curve_first_step_and_limit():
    """k = 1 by hand (curvature noise and additive noise share the batch) and k → ∞."""
    model = _linear_regression_model(n=30, lr=0.3, momentum=0.6, batch_size=3)
    x, s, eta = model.data.X, model.hyper.batch_size, model.hyper.lr
    a = np.array([0.3, -0.2, 0.5])
    theta0 = model.mu + a
    xi = model.data.per_sample_gradients(model.mu)
    xi -= xi.mean(axis=0)
    per_sample = (x * (x @ a)[:, None] - model.hessian @ a) + xi   # (a_i a + ξ_i)
    one = eta ** 2 * (np.sum((model.K @ a) ** 2) + np.mean(np.sum(per_sample ** 2, 1)) / s)
    assert th.diffusion_curve_exact(model, theta0, [1])[0] == pytest.approx(one, rel=1e-12)
    p3 = th.exact_stationary_cov(model)
    far = th.diffusion_curve_exact(model, theta0, [3000])[0]
    assert far == pytest.approx(a @ a + np.trace(p3[:3, :3]), rel=1e-9)
    # from θ₀ = μ: step 1 sees no curvature noise yet (θ₀ = μ exactly), later steps do
    k = np.array([1, 10, 100])
    at_mu = th.diffusion_curve_exact(model, model.mu, k)
    level2 = th.diffusion_curve_discrete(model, model.mu, k)
    assert at_mu[0] == pytest.approx(level2[0], rel=1e-12)
    assert np.all(at_mu[1:] > 1.1 * level2[1:])


@pytest.mark.parametrize("cells_per_sd", [1.0, 0.3, 0.1, 0.02])
def test_cell_averages_of_a_gaussian_narrower_than_a_cell(cells_per_sd):
    """Against the exact product of 1-D normal CDF differences (diagonal covariance): the
    default quadrature order grows as the Gaussian narrows below a cell (4 points per axis
    held 6.6e-12 of the mass at 0.02 cells per sd)."""
    edges = [np.linspace(-1.0, 1.0, 33), np.linspace(-2.0, 2.0, 33)]
    h = np.array([e[1] - e[0] for e in edges])
    mean, sd = np.array([0.013, -0.02]), cells_per_sd * h
    p = th.gaussian_cell_averages(mean, np.diag(sd ** 2), edges)
    with np.errstate(under="ignore"):  # far-tail products flush to zero
        exact = np.multiply.outer(*[np.diff(norm.cdf((e - m) / s)) / hk
                                    for e, m, s, hk in zip(edges, mean, sd, h)])
    assert np.abs(p - exact).max() <= 1e-6 * exact.max()
