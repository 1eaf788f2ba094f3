"""Time-discretisation error of a one-step scheme on the exact moment dynamics.

For the linear Fokker-Planck equation ∂_t p = Lp of dz = −A(z − z_μ)dt + noise, the mass,
mean and second moments of p obey a closed linear ODE: with m = E[z − z_μ] and
S = E[(z − z_μ)(z − z_μ)ᵀ], ṁ = −Am and Ṡ = −AS − SAᵀ + 2D. Any scheme built from L by
sums, products and inverses of I − cΔtL (Runge-Kutta, Rosenbrock) maps those moments by
the same rational function of Δt times the moment generator G (the moment of Lq is G
applied to the moments of q). So the scheme's time error on a Gaussian transient can be
read off the moments, before any grid is touched, in units that matter for the density:
the mean error measured in standard deviations (Mahalanobis) and the covariance error
relative to the covariance (whitened). A shift of δ standard deviations moves ≈ 0.8δ of
probability (L1), a relative covariance error ε about ε/2.

The estimate is for the unlimited scheme at t_final only. Far from equilibrium the error
in the first steps can be large and still decay away (a fast mode relaxing 88 standard
deviations: whitened covariance error 58 after one step, 4e-12 at t_final), so the run's
intermediate states are not controlled. The positivity limiter adds to it where the
unlimited update would undershoot: measured 6-13× the moment estimate on a narrow
Gaussian crossing 1.5 cells per standard deviation.
"""

import numpy as np
import scipy.linalg as sla

from .fv import kernels


def moment_generator(drift, diffusion):
    """G ((n + n² + 1) square) with y' = Gy for y = (m, vec S, mass), n = 2d: the moment
    ODE of dz = −A(z − z_μ)dt + noise of diffusion matrix D (moments about z_μ)."""
    a = np.asarray(drift, dtype=float)
    n = a.shape[0]
    eye = np.eye(n)
    g = np.zeros((n + n * n + 1, n + n * n + 1))
    g[:n, :n] = -a
    g[n:-1, n:-1] = -(np.kron(a, eye) + np.kron(eye, a))  # vec(AS + SAᵀ), row-major vec
    g[n:-1, -1] = 2.0 * np.asarray(diffusion, dtype=float).ravel()
    return g


def ros2_step_matrix(g, dt, gamma):
    """One step of the two-stage Rosenbrock method (W = J = G) on y' = Gy:
    k₁ = W⁻¹Gy, k₂ = W⁻¹(G(y + Δt k₁) − 2k₁), y + Δt(3k₁ + k₂)/2, W = I − γΔtG."""
    eye = np.eye(g.shape[0])
    w_inv = np.linalg.inv(eye - gamma * dt * g)
    k1 = w_inv @ g
    k2 = k1 @ (eye + dt * k1) - 2.0 * w_inv @ k1
    return eye + dt * (1.5 * k1 + 0.5 * k2)


def ssp_step_matrix(g, dt):
    """One step of the solver's SSP-RK(n², 3) (:func:`fpsolver.fv.kernels.ssp_stages`: n²
    forward-Euler stages of Δt/(n² − n), one blended with an earlier stage) on y' = Gy."""
    return kernels.ssp_stages(np.eye(g.shape[0]), dt / kernels.SSP_COEFFICIENT,
                              lambda w: g @ w)


def _moments_vector(mean0, cov0, z_mu):
    """y = (m, vec S, 1) of N(mean0, cov0), moments about z_μ."""
    m = np.asarray(mean0, dtype=float) - z_mu
    s = np.asarray(cov0, dtype=float) + np.outer(m, m)
    return np.concatenate([m, s.ravel(), [1.0]])


def moment_error(step_matrix, g, dt, n_steps, mean0, cov0, z_mu):
    """Time error after ``n_steps`` steps of the scheme y ↦ ``step_matrix``·y (Δt = ``dt``)
    from the Gaussian moments (mean0, cov0): the mean error in standard deviations of the
    exact covariance plus the spectral norm of the whitened covariance error."""
    n = len(z_mu)
    y0 = _moments_vector(mean0, cov0, z_mu)
    y = np.linalg.matrix_power(step_matrix, n_steps) @ y0
    x = sla.expm(g * (dt * n_steps)) @ y0
    m, mx = y[:n], x[:n]
    cov = y[n:-1].reshape(n, n) - np.outer(m, m)
    cov_x = x[n:-1].reshape(n, n) - np.outer(mx, mx)
    chol = np.linalg.cholesky((cov_x + cov_x.T) / 2)
    dm = sla.solve_triangular(chol, m - mx, lower=True)
    dc = sla.solve_triangular(chol, sla.solve_triangular(chol, cov - cov_x, lower=True).T,
                              lower=True)
    return float(np.linalg.norm(dm) + np.linalg.norm(dc, 2))
