"""SGD hyperparameters + quadratic loss + gradient noise -> the phase-space OU model.

Near a minimum μ of L_λ = L + (λ/2)‖θ‖², SGD with momentum (THEORY.md §3) is the
underdamped Langevin equation m θ̈ + (1−β)θ̇ = −K(θ−μ) + √(η/S) Σ^{1/2} ξ, i.e. the
Ornstein–Uhlenbeck process in phase space z = (θ, v) (absolute coordinates)::

    dz = −A (z − z_μ) dt + B dW,   A = [[0, −I], [K/m, ((1−β)/m) I]],
    D = ½BBᵀ = [[0, 0], [0, 2Σ/(ηS(1+β)²)]],   z_μ = (μ, 0),

with mass m = η(1+β)/2, K = H + λI and time t = kη.
"""

import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .errors import CaseError, UnstableError

SYMMETRY_RTOL = 1e-10


@dataclass(frozen=True)
class Hyperparameters:
    """Learning rate η > 0, momentum β ∈ [0, 1), weight decay λ ≥ 0, batch size S ≥ 1."""

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 1

    def __post_init__(self):
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise CaseError(f"sgd.lr must be a finite number > 0, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise CaseError(f"sgd.momentum must be in [0, 1), got {self.momentum}")
        if not (np.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise CaseError(f"sgd.weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise CaseError(f"sgd.batch_size must be an integer >= 1, got {self.batch_size}")

    @property
    def mass(self):
        """m = η(1+β)/2 (time units: t = kη)."""
        return self.lr * (1 + self.momentum) / 2

    @property
    def friction(self):
        """(1−β)/m = 2γ, the velocity damping rate per unit time."""
        return (1 - self.momentum) / self.mass


# largest ratio of the fastest to the slowest relaxation rate a model may have (see
# PhaseSpaceModel._check_timescales)
MAX_RATE_SPREAD = 1e12


@dataclass(frozen=True)
class LinearRegressionData:
    """Inputs X (N, d) and labels y (N,) of a linear-regression loss L = ‖Xθ − y‖²/(2N)."""

    X: np.ndarray
    y: np.ndarray

    @property
    def hessian(self):
        return self.X.T @ self.X / len(self.y)

    def minimum(self, weight_decay):
        """μ = (H + λI)⁻¹ Xᵀy/N, shape (d,)."""
        d = self.X.shape[1]
        return np.linalg.solve(self.hessian + weight_decay * np.eye(d), self.X.T @ self.y / len(self.y))

    def per_sample_gradients(self, theta):
        """g_i = x_i(x_iᵀθ − y_i), shape (N, d)."""
        return self.X * (self.X @ theta - self.y)[:, None]

    def gradient_covariance(self, theta):
        """Σ(θ) = (1/N)Σ g_i g_iᵀ − ∇L∇Lᵀ, shape (d, d)."""
        g = self.per_sample_gradients(theta)
        return np.cov(g, rowvar=False, bias=True).reshape(len(theta), len(theta))


def generate_linear_regression(config):
    """The data set of a :class:`~fpsolver.case.LinearRegressionConfig` (deterministic in seed)."""
    rng = np.random.default_rng(config.seed)
    if config.feature_covariance is not None:
        cov = np.array(config.feature_covariance, dtype=float)
        _check_symmetric(cov, "loss.linear_regression.feature_covariance")
    else:
        eig = np.array(config.feature_eigenvalues, dtype=float)
        rot = np.eye(len(eig))
        if config.rotation_angle:
            c, s = np.cos(config.rotation_angle), np.sin(config.rotation_angle)
            rot = np.array([[c, -s], [s, c]])
        cov = rot @ np.diag(eig) @ rot.T
    evals, evecs = np.linalg.eigh(cov)
    if evals.min() <= 0:
        raise CaseError("loss.linear_regression feature covariance must be positive definite, "
                        f"smallest eigenvalue {evals.min():.3g}")
    d, n = len(cov), config.n_samples
    if config.match_covariance and n <= d:
        raise CaseError(f"loss.linear_regression.n_samples must exceed d = {d} for match_covariance")
    root = evecs @ np.diag(np.sqrt(evals)) @ evecs.T
    z = rng.standard_normal((n, d))
    if config.match_covariance:
        z -= z.mean(axis=0)
        s_evals, s_evecs = np.linalg.eigh(z.T @ z / n)
        z = z @ s_evecs @ np.diag(s_evals ** -0.5) @ s_evecs.T
    X = z @ root
    w = np.ones(d) if config.true_weights is None else np.array(config.true_weights, dtype=float)
    y = X @ w + config.label_noise * rng.standard_normal(n)
    return LinearRegressionData(X=X, y=y)


def _check_symmetric(matrix, key):
    if not np.all(np.isfinite(matrix)):
        raise CaseError(f"{key} has non-finite entries")
    asym = np.max(np.abs(matrix - matrix.T))
    if asym > SYMMETRY_RTOL * max(np.max(np.abs(matrix)), 1e-300):
        raise CaseError(f"{key} must be symmetric, max |M − Mᵀ| = {asym:.3g}")


def _check_psd(matrix, key):
    _check_symmetric(matrix, key)
    smallest = np.linalg.eigvalsh(matrix).min()
    if smallest < -SYMMETRY_RTOL * max(np.max(np.abs(matrix)), 1e-300):
        raise CaseError(f"{key} must be positive semi-definite, smallest eigenvalue {smallest:.6g}")


@dataclass(frozen=True, eq=False)
class PhaseSpaceModel:
    """The phase-space OU model of SGD near μ; all arrays in parameter units, t = kη.

    ``hessian`` H (d, d), ``mu`` μ = argmin L_λ (d,), ``noise_cov`` Σ at μ (d, d) (per-example
    gradient covariance; a batch mean has covariance Σ/S), ``sigma2`` the scalar noise scale
    (exact for Σ = σ²H or σ²I, else fitted ⟨Σ, H⟩_F/‖H‖²_F), ``data`` the linear-regression
    data set when there is one (state-dependent noise, level 3).
    """

    hyper: Hyperparameters
    hessian: np.ndarray
    mu: np.ndarray
    noise_cov: np.ndarray
    sigma2: float
    noise_model: str = "matrix"
    data: LinearRegressionData | None = None

    def __post_init__(self):
        d = len(self.mu)
        if self.hessian.shape != (d, d) or self.noise_cov.shape != (d, d):
            raise CaseError(f"hessian and noise matrix must be {d}x{d}")
        _check_regularised_hessian(self.hessian, self.hyper.weight_decay)
        _check_psd(self.noise_cov, "noise covariance Σ")
        self._check_stability()
        self._check_representable()
        self._check_timescales()

    def _check_stability(self):
        """Heavy-ball stability: η(h_i+λ) < 2(1+β) for every Hessian mode i."""
        eta, beta = self.hyper.lr, self.hyper.momentum
        bound = 2 * (1 + beta)
        for i, k in enumerate(np.linalg.eigvalsh(self.K)):
            if eta * k >= bound:
                raise UnstableError(
                    f"discrete SGD is unstable: mode {i} has η(h+λ) = {eta * k:.6g} >= 2(1+β) = "
                    f"{bound:.6g} (over the bound by {100 * (eta * k / bound - 1):.3g} %); "
                    f"lower sgd.lr below {bound / k:.6g}")

    def _check_representable(self):
        """The drift K/m and diffusion (η/S)Σ/(2m²) (m = η(1+β)/2) finite in float64, else a
        CaseError naming sgd.lr (at η = 1e-300, m² underflowed to 0 and scipy raised a
        ValueError traceback from the theory)."""
        try:
            with np.errstate(over="raise", divide="raise", invalid="raise", under="ignore"):
                ok = np.all(np.isfinite(self.drift)) and np.all(np.isfinite(self.diffusion))
        except FloatingPointError as err:
            ok, why = False, f" ({err})"
        else:
            why = ""
        if not ok:
            self.__dict__.pop("drift", None)  # no cached half-built coefficients
            self.__dict__.pop("diffusion", None)
            raise CaseError(
                f"sgd.lr = {self.hyper.lr:g} puts the phase-space SDE outside float64{why}: "
                f"its drift K/m and diffusion (η/S)Σ/(2m²), m = η(1+β)/2 = {self.mass:.3g}, "
                "must be finite; raise sgd.lr or rescale loss.hessian and the noise")

    def relaxation_rates(self):
        """(slowest, fastest) real part of A's eigenvalues (1/time), per Hessian mode from
        the heavy-ball roots (f ± √(f² − 4k/m))/2, f the friction, the slow root in its
        cancellation-free form 2(k/m)/(f + √(f² − 4k/m)): eig(A) loses it once the spread
        passes 1/ε."""
        f = self.friction
        w2 = np.linalg.eigvalsh(self.K) / self.mass
        disc = np.sqrt(np.maximum(f * f - 4 * w2, 0.0))
        slow = np.where(disc > 0, 2 * w2 / (f + disc), f / 2)
        return float(slow.min()), float(np.max(np.where(disc > 0, f - slow, f / 2)))

    def _check_timescales(self):
        """Refuse relaxation rates spread more than MAX_RATE_SPREAD: the continuous
        Lyapunov solve then loses about ε × spread of relative precision (d = 1 against the
        closed form: spread 4e10 → 3.6e-6, 2e12 → 1.1e-5, 4e13 → 5.3e-3, 2e14 → 2.4e-2, then
        O(1)), and neither a grid nor a chain of steps resolves both times."""
        slow, fast = self.relaxation_rates()
        if not slow * MAX_RATE_SPREAD >= fast:
            raise CaseError(
                f"the relaxation rates span {slow:.3g} to {fast:.3g} (1/time), a ratio of "
                f"{fast / max(slow, 1e-300):.3g} > {MAX_RATE_SPREAD:g}: the stationary theory "
                "would be known only to about 1e-16 times that ratio; check loss.hessian "
                "(its smallest eigenvalue with weight_decay), sgd.lr and sgd.momentum")

    @classmethod
    def from_arrays(cls, hessian, noise_cov, lr, momentum=0.0, weight_decay=0.0, batch_size=1,
                    minimum=None):
        """Model for L = ½(θ−θ*)ᵀH(θ−θ*) (θ* = ``minimum``, default 0) with constant Σ."""
        hyper = Hyperparameters(lr, momentum, weight_decay, batch_size)
        hessian = np.atleast_2d(np.asarray(hessian, dtype=float))
        noise_cov = np.atleast_2d(np.asarray(noise_cov, dtype=float))
        mu = _quadratic_minimum(hessian, weight_decay, minimum)
        return cls(hyper, hessian, mu, noise_cov, _fitted_sigma2(noise_cov, hessian))

    # ------------------------------------------------------------------ derived
    @property
    def dim(self):
        """d, the number of parameters; phase space has 2d axes."""
        return len(self.mu)

    @cached_property
    def K(self):
        """Hessian of the regularised loss, H + λI, shape (d, d)."""
        return self.hessian + self.hyper.weight_decay * np.eye(self.dim)

    @property
    def mass(self):
        return self.hyper.mass

    @property
    def friction(self):
        return self.hyper.friction

    @property
    def gamma(self):
        """γ = (1−β)/(η(1+β)), half the friction rate (1/time)."""
        return self.friction / 2

    @cached_property
    def _hessian_eigh(self):
        return np.linalg.eigh(self.hessian)

    @property
    def hessian_eigenvalues(self):
        """h_i ascending, shape (d,)."""
        return self._hessian_eigh[0]

    @property
    def hessian_eigenvectors(self):
        """u_i as columns, shape (d, d)."""
        return self._hessian_eigh[1]

    @property
    def omega(self):
        """Undamped mode frequencies ω_i = √((h_i+λ)/m), per Hessian mode (1/time)."""
        return np.sqrt((self.hessian_eigenvalues + self.hyper.weight_decay) / self.mass)

    @property
    def temperature(self):
        """T = ησ²/(2S(1−β)) with the model's (possibly fitted) σ²."""
        h = self.hyper
        return h.lr * self.sigma2 / (2 * h.batch_size * (1 - h.momentum))

    @property
    def commuting(self):
        """Whether Σ commutes with H (then generalised detailed balance holds); each scaled
        to unit largest entry first (commuting is scale-free; ‖Σ‖ overflowed at σ² = 1e300)."""
        s, h = (m / (np.abs(m).max() or 1.0) for m in (self.noise_cov, self.hessian))
        c = s @ h - h @ s
        return bool(np.linalg.norm(c) <= 1e-12 * max(np.linalg.norm(s) * np.linalg.norm(h),
                                                      1e-300))

    @cached_property
    def drift(self):
        """A (2d, 2d): dz = −A(z − z_μ)dt + B dW."""
        d, m = self.dim, self.mass
        eye = np.eye(d)
        return np.block([[np.zeros((d, d)), -eye], [self.K / m, self.friction * eye]])

    @cached_property
    def diffusion(self):
        """D = ½BBᵀ (2d, 2d); only the vv block (η/S)Σ/(2m²) is non-zero."""
        d = self.dim
        h = self.hyper
        out = np.zeros((2 * d, 2 * d))
        out[d:, d:] = (h.lr / h.batch_size) * self.noise_cov / (2 * self.mass ** 2)
        return out

    @property
    def stationary_mean(self):
        """z_μ = (μ, 0), shape (2d,)."""
        return np.concatenate([self.mu, np.zeros(self.dim)])


def _check_regularised_hessian(hessian, weight_decay):
    """H symmetric and K = H + λI positive definite, else a CaseError naming the key."""
    _check_symmetric(hessian, "loss.hessian")
    k_min = np.linalg.eigvalsh(hessian + weight_decay * np.eye(len(hessian))).min()
    if k_min <= 0:
        raise CaseError("loss.hessian + weight_decay·I must be positive definite, "
                        f"smallest eigenvalue {k_min:.6g}")


def _quadratic_minimum(hessian, weight_decay, theta_star=None):
    """μ = argmin ½(θ−θ*)ᵀH(θ−θ*) + (λ/2)‖θ‖² = K⁻¹Hθ*, shape (d,)."""
    _check_regularised_hessian(hessian, weight_decay)
    d = len(hessian)
    theta_star = np.zeros(d) if theta_star is None else np.asarray(theta_star, dtype=float)
    return np.linalg.solve(hessian + weight_decay * np.eye(d), hessian @ theta_star)


def _fitted_sigma2(noise_cov, hessian):
    """σ² = ⟨Σ, H⟩_F / ‖H‖²_F (exact when Σ = σ²H)."""
    return float(np.sum(noise_cov * hessian) / np.sum(hessian * hessian))


def build_model(case):
    """The :class:`PhaseSpaceModel` of a :class:`~fpsolver.case.Case` (validates it)."""
    hyper = case.sgd
    data = None
    if case.loss.linear_regression is not None:
        try:
            with np.errstate(over="raise", invalid="raise"):
                data = generate_linear_regression(case.loss.linear_regression)
                hessian = data.hessian
                mu = data.minimum(hyper.weight_decay)
                exact_sigma = data.gradient_covariance(mu)
                exact_sigma2 = _fitted_sigma2(exact_sigma, hessian)
        except FloatingPointError as err:
            raise CaseError(f"loss.linear_regression: the data set's Hessian or gradient "
                            f"covariance does not fit in float64 ({err}); scale the features, "
                            "true_weights or label_noise down") from None
    else:
        hessian = np.array(case.loss.hessian, dtype=float)
        mu = _quadratic_minimum(hessian, hyper.weight_decay, case.loss.minimum)
        exact_sigma = exact_sigma2 = None
    noise = case.noise
    d = len(hessian)
    if noise.model == "exact":
        sigma, sigma2 = exact_sigma, exact_sigma2
    elif noise.model == "matrix":
        sigma = np.array(noise.matrix, dtype=float)
        _check_psd(sigma, "noise.matrix")
        sigma2 = _fitted_sigma2(sigma, hessian)
    else:
        sigma2 = noise.sigma2 if noise.sigma2 is not None else exact_sigma2
        sigma = sigma2 * (hessian if noise.model == "proportional" else np.eye(d))
        if noise.model == "proportional":
            _check_psd(hessian, "loss.hessian (Σ = σ²H needs H positive semi-definite)")
    model = PhaseSpaceModel(hyper, hessian, mu, sigma, float(sigma2), noise.model, data)
    _check_fluctuating(model)
    return model


# smallest eigenvalue of the stationary correlation matrix (P scaled to unit diagonal, so θ
# and v units do not matter) below which a direction of phase space has no fluctuations
# (Σ = 0 on it: the stationary density is degenerate)
DEGENERATE = 1e-12


def _check_fluctuating(model):
    """Refuse noise that leaves the stationary density degenerate (zero noise had the
    theory fail on a singular matrix and the solver blame grid.bounds) or its covariance
    beyond float64 (σ² = 1e308: a scipy ValueError traceback before)."""
    from .theory import stationary_cov
    key = {"matrix": "noise.matrix", "exact": "loss.linear_regression",
           "proportional": "noise.sigma2 and loss.hessian (Σ = σ²H)"}.get(
               model.noise_model, "noise.sigma2")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # scipy's warnings about a near-singular Lyapunov problem precede the refusals
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            cov = stationary_cov(model)
        except ValueError:  # scipy refuses the infinities of an overflowed balancing
            cov = np.full((2 * model.dim,) * 2, np.inf)
        sd = np.sqrt(np.diag(cov))  # scaled one side at a time: var·var overflowed at 1e300
        corr = cov / sd[:, None] / sd[None, :] if np.all(sd > 0) else cov
    if not np.all(np.isfinite(corr)):
        raise CaseError(f"the stationary covariance (AP + PAᵀ = 2D) does not fit in float64: "
                        f"the noise is too large for this loss; check {key}")
    ev = np.linalg.eigvalsh(corr)
    if not ev[0] > DEGENERATE * ev[-1]:
        raise CaseError(f"the gradient noise leaves a direction without fluctuations "
                        f"(stationary correlation eigenvalues {ev[0]:.3g} to {ev[-1]:.3g}): "
                        f"the stationary density is degenerate; check {key}")
