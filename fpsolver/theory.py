"""Exact Gaussian theory of the phase-space OU model and of the discrete SGD recursion.

Three levels of prediction (THEORY.md §8):

1. continuous OU: Lyapunov AP + PAᵀ = 2D, transients N(e^{−At}z₀, P(t)), Ψ, J_ss, Q;
2. the exact linear recursion with additive noise (discrete Lyapunov);
3. the exact discrete second moments with the state-dependent noise of linear regression.

Phase-space vectors z = (θ₁..θ_d, v₁..v_d) are absolute; covariances are (2d, 2d) in that
axis order; time t = kη.
"""

import functools
import math

import numpy as np
import scipy.linalg as sla

from .errors import UserError

# ------------------------------------------------------------------ level 1: continuous


def lyapunov(a, q, discrete=False):
    """P (n, n) with aP + Paᵀ = q, or with ``discrete`` aPaᵀ − P + q = 0, solved in the
    units in which a is balanced (scipy's matrix_balance, diagonal scales s: a → S⁻¹aS,
    q → S⁻¹qS⁻¹, P = S P' S). θ and v may differ by many orders: at η = 1e-8, h = 1e6 the
    unbalanced continuous solve returned P_vv = 1.4 and a negative P_θθ (exact: 1.6e5 and
    1.6e-9) with a relative residual of 1e-14. P is linear in q, so q is solved at unit
    size and P scaled back: σ² = 1e300 (q ~ 1e300) came back as 1e-304 instead of 3e298."""
    _, (scale, _) = sla.matrix_balance(a, permute=False, separate=True)
    outer = np.outer(scale, scale)
    ab = a / scale[:, None] * scale[None, :]
    qb = q / outer
    size = float(np.max(np.abs(qb))) or 1.0
    solve = sla.solve_discrete_lyapunov if discrete else sla.solve_continuous_lyapunov
    p = solve(ab, qb / size) * size * outer
    return (p + p.T) / 2


def stationary_cov(model):
    """Continuous stationary covariance P (2d, 2d): AP + PAᵀ = 2D."""
    return lyapunov(model.drift, 2 * model.diffusion)


def stationary_cov_closed_form(model):
    """P for Σ commuting with H: P_θθ = ηΣK⁻¹/(2S(1−β)), P_vv = Σ/(S(1−β²)), P_θv = 0."""
    if not model.commuting:
        raise UserError("the closed-form stationary covariance needs Σ to commute with H")
    h, d = model.hyper, model.dim
    sigma = model.noise_cov
    p = np.zeros((2 * d, 2 * d))
    p[:d, :d] = h.lr * sigma @ np.linalg.inv(model.K) / (2 * h.batch_size * (1 - h.momentum))
    p[d:, d:] = sigma / (h.batch_size * (1 - h.momentum ** 2))
    return (p + p.T) / 2


def propagator(model, t):
    """e^{−At} (2d, 2d) for time t ≥ 0 (entries that decay below 1e-308 flush to zero)."""
    with np.errstate(under="ignore"):
        return sla.expm(-model.drift * t)


def transient_moments(model, mean0, cov0, t):
    """Mean (2d,) and covariance (2d, 2d) at time t of the OU process from N(mean0, cov0).

    mean(t) = z_μ + e^{−At}(mean0 − z_μ),  P(t) = P_ss + e^{−At}(cov0 − P_ss)e^{−Aᵀt}.
    """
    return _propagated(propagator(model, t), mean0, cov0, model.stationary_mean,
                       stationary_cov(model))


def _propagated(e, mean0, cov0, zmu, p_ss):
    """(mean, cov) of N(mean0, cov0) carried by the propagator e = e^{−At}."""
    with np.errstate(under="ignore"):
        mean = zmu + e @ (np.asarray(mean0, dtype=float) - zmu)
        cov = p_ss + e @ (np.asarray(cov0, dtype=float) - p_ss) @ e.T
    return mean, (cov + cov.T) / 2


def transient_path(model, mean0, cov0, t_final, per_period=16, n_min=257, n_max=4097):
    """(means (n, 2d), covs (n, 2d, 2d)) of the exact transient from N(mean0, cov0) at n
    evenly spaced times in [0, t_final]: at least ``per_period`` per period of the fastest
    rotation, n_min ≤ n ≤ n_max (one propagator, powered step by step)."""
    rot = float(np.max(np.abs(np.linalg.eigvals(model.drift).imag)))
    n = int(np.clip(np.ceil(per_period * t_final * rot / (2 * np.pi)) + 1, n_min, n_max))
    step = propagator(model, t_final / (n - 1))
    zmu, p_ss = model.stationary_mean, stationary_cov(model)
    means, covs = np.empty((n, len(zmu))), np.empty((n, len(zmu), len(zmu)))
    e = np.eye(len(zmu))
    for k in range(n):
        means[k], covs[k] = _propagated(e, mean0, cov0, zmu, p_ss)
        with np.errstate(under="ignore"):
            e = step @ e
    return means, covs


def sd_in_cells(cov, spacing):
    """Standard deviation of N(·, cov) along its thinnest direction, in cells of widths
    ``spacing`` (√ of the smallest eigenvalue of cov measured in cell widths)."""
    scale = 1.0 / np.asarray(spacing, dtype=float)
    return float(np.sqrt(max(np.linalg.eigvalsh(np.asarray(cov) * np.outer(scale, scale))
                             .min(), 0.0)))


def gaussian_density(mean, cov, z):
    """N(mean, cov) density at points z (..., n)."""
    y = np.asarray(z, dtype=float) - mean
    prec = np.linalg.inv(cov)
    n = len(mean)
    norm = 1.0 / np.sqrt((2 * np.pi) ** n * np.linalg.det(cov))
    with np.errstate(under="ignore"):
        return norm * np.exp(-0.5 * np.einsum("...i,ij,...j->...", y, prec, y))


# Gauss-Legendre points per cell axis of the exact cell averages: 4/s in 2-D (4 to 64:
# 4 points missed most of a Gaussian narrower than a cell, and its normalised averages put
# an L1 error of 5.4 on a run), 2/s in 4-D (2 points left L1 errors of 7e-4 at s = 0.73,
# 2.5e-2 at s = 0.27 and all of the mass at s = 0.05), s the thinnest standard deviation
# in cells; in 4-D at most QUADRATURE_POINTS_4D points per axis over the grid (128⁴:
# 2.7e8 evaluations, 7 s)
QUADRATURE_POINTS_4D = 128


def quadrature_order(cov, edges):
    """(order, needed): the Gauss-Legendre points per cell axis that
    :func:`gaussian_cell_averages` uses for N(·, cov) on cells with ``edges``, and the
    points its thinnest standard deviation needs (order < needed: the averages are
    unreliable, too thin a Gaussian for this grid)."""
    n = len(edges)
    s = sd_in_cells(cov, [e[1] - e[0] for e in edges])
    per_sd, lo, hi = ((4.0, 4, 64) if n <= 2 else
                      (2.0, 2, max(2, QUADRATURE_POINTS_4D // max(len(e) - 1 for e in edges))))
    needed = int(math.ceil(min(per_sd / max(s, 1e-300), 1e9)))
    return int(np.clip(needed, lo, hi)), needed


QUADRATURE_CHUNK = 1 << 14  # quadrature points evaluated at once (2^12-2^20 tried: 2^14 best)


@functools.lru_cache(maxsize=16)
def _gauss_legendre(order):
    """Gauss-Legendre (nodes, weights) on [−1, 1] with ``order`` points, read-only (numpy
    builds them by an eigenvalue solve: 40 µs, a quarter of a 32² order-1 evaluation)."""
    nodes, weights = np.polynomial.legendre.leggauss(order)
    for a in (nodes, weights):
        a.setflags(write=False)
    return nodes, weights


def gaussian_cell_averages(mean, cov, edges, order=None):
    """Cell averages of the N(mean, cov) density on a tensor grid.

    ``edges``: one 1-D array of cell edges per axis (n axes); returns shape
    (len(e)−1 for e in edges). Gauss–Legendre with ``order`` points per axis per cell
    (default :func:`quadrature_order`): error O(h^{2·order}) relative to the cell average.
    """
    edges = [np.asarray(e, dtype=float) for e in edges]
    n = len(edges)
    if order is None:
        order = quadrature_order(cov, edges)[0]
    nodes, weights = _gauss_legendre(order)
    points, wts = [], []
    for e, m in zip(edges, mean):
        lo, width = e[:-1, None], np.diff(e)[:, None]
        points.append((lo + width * (nodes + 1) / 2).ravel() - m)
        wts.append(np.broadcast_to(weights / 2, (len(e) - 1, order)).ravel())
    prec = np.linalg.inv(cov)
    log_norm = -0.5 * (n * np.log(2 * np.pi) + np.linalg.slogdet(cov)[1])
    shape = tuple(len(e) - 1 for e in edges)
    out = np.empty(shape)
    # slabs of cells along axis 0, as many at a time as keep the points below
    # QUADRATURE_CHUNK (memory; one slab per pass cost 1.2 ms of Python on a 36² grid)
    per_slab = order ** n * math.prod(shape[1:])
    step = max(1, QUADRATURE_CHUNK // per_slab)
    for i0 in range(0, shape[0], step):
        i1 = min(shape[0], i0 + step)
        sl = slice(i0 * order, i1 * order)
        axes = [points[0][sl]] + points[1:]
        grids = np.meshgrid(*axes, indexing="ij", sparse=True)
        with np.errstate(under="ignore"):  # far-tail densities flush to zero
            quad = sum(prec[a, b] * grids[a] * grids[b] for a in range(n) for b in range(n))
            vals = np.exp(log_norm - 0.5 * quad)
            if order == 1:  # the midpoint rule: weight 1, nothing to sum (the same bits)
                out[i0:i1] = vals
                continue
            w = np.ones(1)
            for wa in [wts[0][sl]] + wts[1:]:
                w = np.multiply.outer(w, wa)
            out[i0:i1] = (vals * w[0]).reshape(
                sum(((s, order) for s in (i1 - i0,) + shape[1:]), ())).sum(
                    axis=tuple(range(1, 2 * n, 2)))
    return out


def stationary_density(model, z):
    """p_ss at points z (..., 2d)."""
    return gaussian_density(model.stationary_mean, stationary_cov(model), z)


def rotation_Q(model):
    """Q = AP − D (2d, 2d), antisymmetric; A = (D + Q)P⁻¹."""
    q = model.drift @ stationary_cov(model) - model.diffusion
    return (q - q.T) / 2


@np.errstate(under="ignore")  # far-tail currents flush to zero
def gaussian_current(model, mean, cov, z):
    """Exact probability current J = −A(z − z_μ)p − D∇p (..., 2d) of a Gaussian p = N(mean, cov)."""
    z = np.asarray(z, dtype=float)
    p = gaussian_density(mean, cov, z)[..., None]
    grad_log = -(z - mean) @ np.linalg.inv(cov).T
    drift = -(z - model.stationary_mean) @ model.drift.T
    return drift * p - (grad_log @ model.diffusion.T) * p


def stationary_current(model, z):
    """J_ss = −QP⁻¹(z − z_μ) p_ss (..., 2d); for Σ = σ²H, [v; −(K/m)(θ−μ)]p_ss."""
    return gaussian_current(model, model.stationary_mean, stationary_cov(model), z)


def current_velocity_matrix(model):
    """−QP⁻¹ (2d, 2d): J_ss/p_ss = −QP⁻¹(z − z_μ)."""
    return -rotation_Q(model) @ np.linalg.inv(stationary_cov(model))


def modified_loss(model, z):
    """Ψ(z) = (T/2)(z − z_μ)ᵀP⁻¹(z − z_μ), so p_ss ∝ exp(−Ψ/T); shape z.shape[:-1]."""
    y = np.asarray(z, dtype=float) - model.stationary_mean
    prec = np.linalg.inv(stationary_cov(model))
    return 0.5 * model.temperature * np.einsum("...i,ij,...j->...", y, prec, y)


def modified_loss_hessian(model):
    """Closed-form Hess Ψ (2d, 2d) for Σ = σ²H: blockdiag(I + λH⁻¹, (η(1+β)/2)H⁻¹).

    For Σ = σ²I it is the Gibbs law blockdiag(K, mI). Other noise: T P⁻¹.
    """
    d, h = model.dim, model.hyper
    out = np.zeros((2 * d, 2 * d))
    if model.noise_model == "proportional":
        h_inv = np.linalg.inv(model.hessian)
        out[:d, :d] = np.eye(d) + h.weight_decay * h_inv
        out[d:, d:] = h.lr * (1 + h.momentum) / 2 * h_inv
    elif model.noise_model == "isotropic":
        out[:d, :d] = model.K
        out[d:, d:] = model.mass * np.eye(d)
    else:
        out = model.temperature * np.linalg.inv(stationary_cov(model))
    return out


def rotation_frequencies(model):
    """Per Hessian mode: undamped ω_i and damped f_i = √(ω_i² − γ²) (0 if overdamped)."""
    omega = model.omega
    f2 = omega ** 2 - model.gamma ** 2
    return omega, np.sqrt(np.clip(f2, 0, None))


def detailed_balance_residuals(model):
    """Generalised detailed balance with parity ε = diag(I, −I) (Frobenius, relative).

    Returns (‖P − εPε‖/‖P‖, ‖AP − ε(AP)ᵀε‖/‖AP‖); both 0 iff [Σ, H] = 0.
    """
    d = model.dim
    eps = np.diag(np.r_[np.ones(d), -np.ones(d)])
    p = stationary_cov(model)
    ap = model.drift @ p
    r1 = np.linalg.norm(p - eps @ p @ eps) / np.linalg.norm(p)
    r2 = np.linalg.norm(ap - eps @ ap.T @ eps) / np.linalg.norm(ap)
    return float(r1), float(r2)


def position_current_matrix(model):
    """P_vθP_θθ⁻¹ (d, d): the position-space current J_θ(θ) = P_vθP_θθ⁻¹(θ − μ)p(θ)."""
    d = model.dim
    p = stationary_cov(model)
    return p[d:, :d] @ np.linalg.inv(p[:d, :d])


# ------------------------------------------------------------------ level 2: discrete


def discrete_matrices(model):
    """F (2d, 2d), G (2d, d), per-step noise covariance Σ/S of z_k = (θ_k − μ, buf_k)."""
    d, h = model.dim, model.hyper
    eye = np.eye(d)
    f = np.block([[eye - h.lr * model.K, -h.lr * h.momentum * eye], [model.K, h.momentum * eye]])
    g = np.vstack([-h.lr * eye, eye])
    return f, g, model.noise_cov / h.batch_size


_CONVENTIONS = ("recorded", "midpoint")


def _to_phase_space(model, cov_state, convention):
    """(θ − μ, buf) covariance -> (θ, v) in the recorded-pair or midpoint convention.

    Recorded pair (θ_{k+1}, v_k = −buf_{k+1}); midpoint ((θ_k + θ_{k+1})/2, v_k) =
    (θ_{k+1} − (η/2)v_k, v_k).
    """
    if convention not in _CONVENTIONS:
        raise UserError(f"convention must be one of {', '.join(_CONVENTIONS)}, got {convention!r}")
    d = model.dim
    t = np.block([[np.eye(d), np.zeros((d, d))], [np.zeros((d, d)), -np.eye(d)]])
    if convention == "midpoint":
        t = np.block([[np.eye(d), -model.hyper.lr / 2 * np.eye(d)],
                      [np.zeros((d, d)), np.eye(d)]]) @ t
    c = t @ cov_state @ t.T
    return (c + c.T) / 2


def _discrete_state_cov(model):
    f, g, q = discrete_matrices(model)
    return lyapunov(f, g @ q @ g.T, discrete=True)


def discrete_stationary_cov(model, convention="recorded"):
    """Level 2: exact stationary covariance (2d, 2d) of the recursion with additive noise."""
    return _to_phase_space(model, _discrete_state_cov(model), convention)


def discrete_ratio(model):
    """r_d(h_i) = 1/(1 − η(h_i+λ)/(2(1+β))) per Hessian mode: level 2 / level 1."""
    h = model.hyper
    return 1.0 / (1.0 - h.lr * (model.hessian_eigenvalues + h.weight_decay) / (2 * (1 + h.momentum)))


def state_noise_ratio_first_order(model):
    """First-order r_s(h_i) ≈ 1 + η(tr H + h_i)/(2S(1−β)): level 3 / level 2 (Gaussian inputs)."""
    h = model.hyper
    return 1 + h.lr * (np.trace(model.hessian) + model.hessian_eigenvalues) / (
        2 * h.batch_size * (1 - h.momentum))


# ------------------------------------------------------------------ level 3: state noise


def _fourth_moment_map(model):
    """X ↦ E_i[(x_ix_iᵀ − H) X (x_ix_iᵀ − H)] (d, d) -> (d, d), from the data set."""
    x, hess = model.data.X, model.hessian
    n = len(x)

    def apply(m):
        w = np.einsum("ij,jk,ik->i", x, m, x)
        return (x.T * w) @ x / n - hess @ m @ hess
    return apply


def _minibatch_noise(model):
    """Σ(μ)/S (d, d): the additive noise of minibatch SGD on the model's data set, whatever
    noise model levels 1 and 2 use (level 3 is the minibatch dynamics itself)."""
    return model.data.gradient_covariance(model.mu) / model.hyper.batch_size


def exact_stationary_cov(model, convention="recorded"):
    """Level 3: exact stationary covariance with linear regression's state-dependent noise.

    P = FPFᵀ + (1/S)E_i[Δ_iPΔ_iᵀ] + G(Σ(μ)/S)Gᵀ with i.i.d. batches. The state noise
    depends on P only through X = P_θθ, so X solves the d(d+1)/2-unknown linear system
    X = L(base)_θθ + M(X), M(X) = L(c ⊗ E_i[a_iXa_i]/S)_θθ (L the discrete Lyapunov solve,
    a_i = x_ix_iᵀ − H), assembled column by column; the second moments stay bounded exactly
    when M's spectral radius is below 1 (M maps positive semi-definite X to such). A fixed
    point iteration needed 1/(1 − ρ) sweeps: 2000 were too few at 0.99 of the bound.
    """
    if model.data is None:
        raise UserError("level 3 (exact state-dependent noise) needs a linear-regression case")
    f, g, _ = discrete_matrices(model)
    d, h = model.dim, model.hyper
    fourth = _fourth_moment_map(model)
    c = np.array([[h.lr ** 2, -h.lr], [-h.lr, 1.0]])  # Δ_i = [−η; 1] ⊗ a_i acting on θ
    base = g @ _minibatch_noise(model) @ g.T
    upper = np.triu_indices(d)

    def state_noise(x):
        return np.kron(c, fourth(x)) / h.batch_size

    columns = []
    for i, j in zip(*upper):  # basis E_ij + E_ji (E_ii on the diagonal) of symmetric X
        e = np.zeros((d, d))
        e[i, j] = e[j, i] = 1.0
        columns.append(lyapunov(f, state_noise(e), discrete=True)[:d, :d][upper])
    m = np.array(columns).T
    rho = float(np.max(np.abs(np.linalg.eigvals(m))))
    if not rho < 1.0:
        raise UserError(f"level 3 diverges: state-dependent noise makes the second moments of "
                        f"SGD unbounded at these hyperparameters (spectral radius {rho:.4g} "
                        ">= 1; lower sgd.lr or raise sgd.batch_size)")
    rhs = lyapunov(f, base, discrete=True)[:d, :d][upper]
    x = np.zeros((d, d))
    x[upper] = np.linalg.solve(np.eye(len(rhs)) - m, rhs)
    x = x + np.triu(x, 1).T
    return _to_phase_space(model, lyapunov(f, base + state_noise(x), discrete=True), convention)


# ------------------------------------------------------------------ anomalous diffusion


def diffusion_curve_continuous(model, theta0, k, start="point"):
    """E‖θ(t) − θ₀‖² at t = kη of the OU model.

    ``start="point"``: θ₀ fixed, v₀ = 0 (drift a = θ₀ − μ plus noise); ``"stationary"``:
    (θ₀, v₀) ~ p_ss jointly, THEORY §9's closed form 2Σ_i P_x,i[1 − E11_i(t)]. (θ₀ ~ p_ss
    with v₀ = 0 is the point formula averaged over θ₀: smaller by Σ_i P_x,i ω_i²E12_i(t)²,
    on the default case half at k = 5, 5 % at k = 20.) ``k``: steps (array); returns an
    array of the same shape.
    """
    d = model.dim
    k = np.asarray(k, dtype=float)
    a = np.asarray(theta0, dtype=float) - model.mu
    p = stationary_cov(model)
    out = np.empty(k.shape)
    for idx, kk in np.ndenumerate(k):
        e = propagator(model, kk * model.hyper.lr)
        with np.errstate(under="ignore"):
            if start == "stationary":
                out[idx] = 2 * np.trace(p[:d, :d] - (e @ p)[:d, :d])
            else:
                drift = (e[:d, :d] - np.eye(d)) @ a
                cov = p - e @ p @ e.T
                out[idx] = drift @ drift + np.trace(cov[:d, :d])
    return out


def diffusion_curve_discrete(model, theta0, k):
    """Level 2 E‖θ_k − θ₀‖² of the recursion from (θ₀, buf₀ = 0), exactly; k: int array."""
    d = model.dim
    f, _, _ = discrete_matrices(model)
    p = _discrete_state_cov(model)
    z0 = np.concatenate([np.asarray(theta0, dtype=float) - model.mu, np.zeros(d)])
    a = z0[:d]
    k = np.asarray(k)
    out = np.empty(k.shape)
    for idx, kk in np.ndenumerate(k):
        with np.errstate(under="ignore"):
            fk = np.linalg.matrix_power(f, int(kk))
            mean = (fk @ z0)[:d]
            cov = p - fk @ p @ fk.T
        out[idx] = (mean - a) @ (mean - a) + np.trace(cov[:d, :d])
    return out


def diffusion_curve_exact(model, theta0, k):
    """Level 3 E‖θ_k − θ₀‖² from (θ₀, buf₀ = 0) with linear regression's state-dependent noise.

    Mean m and second moment M of z_k = (θ_k − μ, buf_k) obey m' = Fm and M' = FMFᵀ +
    (1/S)E_i[Δ_iMΔ_iᵀ] + G(Σ(μ)/S)Gᵀ + (1/S)(c ⊗ (C + Cᵀ)), C = E_i[a_i m_θ ξ_iᵀ], the last
    term from the batch that drives both the curvature and the additive noise (zero when
    θ₀ = μ). i.i.d. batches; ``k``: int array; the recursion runs to max(k).
    """
    if model.data is None:
        raise UserError("level 3 (exact state-dependent noise) needs a linear-regression case")
    f, g, _ = discrete_matrices(model)
    d, h = model.dim, model.hyper
    x = model.data.X
    xi = model.data.per_sample_gradients(model.mu)
    xi = xi - xi.mean(axis=0)
    fourth = _fourth_moment_map(model)
    c = np.array([[h.lr ** 2, -h.lr], [-h.lr, 1.0]])
    a = np.asarray(theta0, dtype=float) - model.mu
    mean = np.concatenate([a, np.zeros(d)])
    moments = np.outer(mean, mean)
    source = g @ _minibatch_noise(model) @ g.T
    k = np.asarray(k)
    out = np.empty(int(np.max(k)) + 1)
    out[0] = 0.0
    for step in range(1, len(out)):
        cmat = (x.T * (x @ mean[:d])) @ xi / len(x)    # E_i[x_i x_iᵀ m_θ ξ_iᵀ]; E ξ_i = 0
        cross = np.kron(c, cmat + cmat.T)
        moments = f @ moments @ f.T + (np.kron(c, fourth(moments[:d, :d])) + cross) / \
            h.batch_size + source
        mean = f @ mean
        out[step] = np.trace(moments[:d, :d]) - 2 * a @ mean[:d] + a @ a
    return out[k]


def fit_exponent(k, delta, k1, k2):
    """c: least-squares slope of log Δ against log k over k1 ≤ k ≤ k2."""
    k, delta = np.asarray(k, dtype=float), np.asarray(delta, dtype=float)
    sel = (k >= k1) & (k <= k2) & (delta > 0)
    if sel.sum() < 2:
        raise UserError(f"the window [{k1}, {k2}] holds fewer than two positive points")
    return float(np.polyfit(np.log(k[sel]), np.log(delta[sel]), 1)[0])
