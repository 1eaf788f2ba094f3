"""Monte-Carlo discrete SGD: many independent chains of PyTorch's update, in Numba.

The update is ``torch.optim.SGD(lr=η, momentum=β, weight_decay=λ, dampening=0,
nesterov=False)`` exactly (THEORY.md §2)::

    d_k = ĝ_B(θ_k) + λθ_k,  buf_{k+1} = β buf_k + d_k (buf_0 = 0),  θ_{k+1} = θ_k − η buf_{k+1}

and the recorded phase-space pair is (θ_{k+1}, v_k = −buf_{k+1}). Gradients come from

* a quadratic loss with constant Gaussian noise: ĝ_B(θ) + λθ = K(θ − μ) + Rξ/√S with
  RRᵀ = Σ (symmetric square root, Σ may be singular), ξ ~ N(0, I);
* linear regression (``model.data``): ĝ_B(θ) = (1/S)Σ_{i∈B} x_i(x_iᵀθ − y_i) with real
  mini-batches, drawn i.i.d. with replacement (``"iid"``) or by per-epoch reshuffling
  (``"reshuffle"``: a fresh uniform permutation every epoch, consecutive batches of S; when
  S ∤ N the last N mod S samples of the permutation are dropped, as with a PyTorch
  DataLoader(shuffle=True, drop_last=True), so every step sees exactly S samples).

Every chain owns a xoshiro256** generator seeded from ``numpy.random.SeedSequence(seed)``;
normals come from a 256-layer ziggurat. A chain's path depends only on (seed, chain index),
so results do not depend on the number of threads. Statistics accumulate per chain (moments)
or per fixed block of chains (Δ(k)); standard errors come from the spread across
independent chains of their time averages, which is honest although the steps within a
chain are correlated.
"""

import math
import time
from dataclasses import dataclass

import numpy as np
from numba import njit, prange, types
from numba.cpython.unsafe.tuple import tuple_setitem
from numba.extending import overload

from . import theory
from .borrow import borrowed
from .errors import SolverError, UserError
from .fv.policy import num_threads

BATCHES = ("iid", "reshuffle")
NOISE = ("auto", "gaussian")
PARALLEL_MIN_CHAIN_STEPS = 2_000_000  # below this the kernel runs on one thread
N_BLOCKS = 128  # chains are grouped into at most this many fixed blocks (Δ sums, prange)
PERM_BUDGET_BYTES = 2 ** 26  # reshuffle permutations held at once (chains are chunked)
SEGMENT_CHAIN_STEPS = 50_000_000  # kernel call size (progress-bar granularity)
TUPLE_MAX_DIM = 2  # state kept in register tuples up to this d (see _templates)
SE_FLOOR_REL = 1e-9  # standard-error floor relative to sqrt(C_ii C_jj), see z_scores
AGREE_Z = 4.0  # verdict threshold on max |z|

# ----------------------------------------------------------------- random numbers

_U1 = np.uint64(1)
_U5 = np.uint64(5)
_U7 = np.uint64(7)
_U8 = np.uint64(8)
_U9 = np.uint64(9)
_U11 = np.uint64(11)
_U17 = np.uint64(17)
_U45 = np.uint64(45)
_U64 = np.uint64(64)
_U255 = np.uint64(255)
_MANT52 = np.uint64((1 << 52) - 1)
_TWO_M53 = 2.0 ** -53


def _ziggurat_tables():
    """Marsaglia–Tsang 256-layer ziggurat for N(0, 1) with 52-bit magnitudes.

    Returns (ki uint64, wi float64, fi float64, r): layer i accepts |x| = u·wi[i] at once
    when u < ki[i]; fi[i] = exp(−x_i²/2) at the layer edges; r is the base-strip edge.
    """
    m = 2.0 ** 52
    dn = tn = 3.6541528853610088
    vn = 0.00492867323399
    q = vn / math.exp(-0.5 * dn * dn)
    ki = np.zeros(256, dtype=np.uint64)
    wi = np.zeros(256)
    fi = np.zeros(256)
    ki[0] = np.uint64(int(dn / q * m))
    wi[0] = q / m
    wi[255] = dn / m
    fi[0] = 1.0
    fi[255] = math.exp(-0.5 * dn * dn)
    for i in range(254, 0, -1):
        dn = math.sqrt(-2.0 * math.log(vn / dn + math.exp(-0.5 * dn * dn)))
        ki[i + 1] = np.uint64(int(dn / tn * m))
        tn = dn
        fi[i] = math.exp(-0.5 * dn * dn)
        wi[i] = dn / m
    return ki, wi, fi, 3.6541528853610088


_KI, _WI, _FI, _ZIG_R = _ziggurat_tables()
_ZIG_INV_R = 1.0 / _ZIG_R


@njit(forceinline=True)
def _rotl(x, k):
    return (x << k) | (x >> (_U64 - k))


@njit(forceinline=True)
def _next(s0, s1, s2, s3):
    """xoshiro256**: one uint64 and the new state (Blackman & Vigna)."""
    result = _rotl(s1 * _U5, _U7) * _U9
    t = s1 << _U17
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = _rotl(s3, _U45)
    return result, s0, s1, s2, s3


@njit(forceinline=True)
def _uniform(s0, s1, s2, s3):
    """U[0, 1) with 53 random bits."""
    r, s0, s1, s2, s3 = _next(s0, s1, s2, s3)
    return (r >> _U11) * _TWO_M53, s0, s1, s2, s3


@njit(forceinline=True)
def _below(s0, s1, s2, s3, n):
    """Uniform integer in [0, n) (bias ≤ n·2⁻⁵³)."""
    u, s0, s1, s2, s3 = _uniform(s0, s1, s2, s3)
    return min(int(u * n), n - 1), s0, s1, s2, s3


@njit(forceinline=True)
def _normal(s0, s1, s2, s3):
    """One N(0, 1) draw (ziggurat) and the new state."""
    while True:
        r, s0, s1, s2, s3 = _next(s0, s1, s2, s3)
        idx = np.intp(r & _U255)
        r >>= _U8
        rabs = (r >> _U1) & _MANT52
        x = rabs * _WI[idx]
        if r & _U1:
            x = -x
        if rabs < _KI[idx]:
            return x, s0, s1, s2, s3
        if idx == 0:  # the tail beyond r
            while True:
                u1, s0, s1, s2, s3 = _uniform(s0, s1, s2, s3)
                u2, s0, s1, s2, s3 = _uniform(s0, s1, s2, s3)
                xx = -_ZIG_INV_R * math.log1p(-u1)
                yy = -math.log1p(-u2)
                if yy + yy > xx * xx:
                    if (rabs >> _U8) & _U1:
                        return -(_ZIG_R + xx), s0, s1, s2, s3
                    return _ZIG_R + xx, s0, s1, s2, s3
        else:
            u, s0, s1, s2, s3 = _uniform(s0, s1, s2, s3)
            if (_FI[idx - 1] - _FI[idx]) * u + _FI[idx] < math.exp(-0.5 * x * x):
                return x, s0, s1, s2, s3


@njit
def _draw_batch(s0, s1, s2, s3, idx, perm, pos, reshuffle):
    """Fill ``idx`` (S,) with the next batch of sample indices in [0, N = len(perm)).

    i.i.d.: S uniform draws with replacement. Reshuffle: consecutive slices of ``perm``;
    when fewer than S unused entries remain (``pos`` + S > N) a new epoch starts with a
    Fisher–Yates shuffle of ``perm`` (the leftover N mod S samples are dropped).
    Returns the new generator state and ``pos``.
    """
    n, size = perm.shape[0], idx.shape[0]
    if reshuffle:
        if pos + size > n:
            for i in range(n - 1, 0, -1):
                j, s0, s1, s2, s3 = _below(s0, s1, s2, s3, i + 1)
                tmp = perm[i]
                perm[i] = perm[j]
                perm[j] = tmp
            pos = 0
        for s in range(size):
            idx[s] = perm[pos + s]
        pos += size
    else:
        for s in range(size):
            idx[s], s0, s1, s2, s3 = _below(s0, s1, s2, s3, n)
    return s0, s1, s2, s3, pos


@njit(cache=True)
def normal_stream(rng, count):
    """The first ``count`` normals of each chain's generator: (chains, count).

    ``rng`` (chains, 4) uint64 generator states (not modified). The Gaussian-noise kernel
    consumes exactly this stream, d normals per step in axis order.
    """
    out = np.empty((rng.shape[0], count))
    for c in range(rng.shape[0]):
        s0, s1, s2, s3 = rng[c, 0], rng[c, 1], rng[c, 2], rng[c, 3]
        for k in range(count):
            out[c, k], s0, s1, s2, s3 = _normal(s0, s1, s2, s3)
    return out


@njit(cache=True)
def batch_stream(rng, n_samples, batch_size, steps, reshuffle):
    """The sample indices (chains, steps, S) each chain's generator gives for ``steps`` batches.

    Same stream as the linear-regression kernel from a fresh start (identity permutation,
    first step starts an epoch); ``rng`` is not modified.
    """
    chains = rng.shape[0]
    out = np.empty((chains, steps, batch_size), dtype=np.int64)
    idx = np.empty(batch_size, dtype=np.int64)
    for c in range(chains):
        s0, s1, s2, s3 = rng[c, 0], rng[c, 1], rng[c, 2], rng[c, 3]
        perm = np.arange(n_samples).astype(np.int32)
        pos = n_samples
        for k in range(steps):
            s0, s1, s2, s3, pos = _draw_batch(s0, s1, s2, s3, idx, perm, pos, reshuffle)
            out[c, k] = idx
    return out


def chain_generators(seed, chains):
    """Initial xoshiro256** states (chains, 4) uint64 from ``SeedSequence(seed)``."""
    words = np.random.SeedSequence(seed).generate_state(4 * chains, dtype=np.uint64)
    return words.reshape(chains, 4)


# ----------------------------------------------------------------- the SGD kernel


def _set(container, i, value):
    """Container with entry i replaced: tuples (kept in registers) or arrays (in place)."""


@overload(_set, inline="always")
def _set_impl(container, i, value):
    if isinstance(container, types.BaseTuple):
        return lambda container, i, value: tuple_setitem(container, i, value)

    def impl(container, i, value):
        container[i] = value
        return container
    return impl


def _size(template):
    """Entries of a container: len of a tuple (a compile-time constant), else columns."""


@overload(_size, inline="always")
def _size_impl(template):
    if isinstance(template, types.BaseTuple):
        n = len(template)
        return lambda template: n
    return lambda template: template.shape[1]


def _fresh(template, row):
    """A zero container: the tuple itself, or ``row`` of a 2-D scratch array (zeroed, as a
    view without reference counting so that rebinding it in hot loops costs nothing)."""


@overload(_fresh, inline="always")
def _fresh_impl(template, row):
    if isinstance(template, types.BaseTuple):
        return lambda template, row: template

    def impl(template, row):
        out = borrowed(template[row])
        out[:] = 0.0
        return out
    return impl


def _zero(container, template):
    """``container`` reset to zeros (tuples: the template; arrays: filled in place)."""


@overload(_zero, inline="always")
def _zero_impl(container, template):
    if isinstance(container, types.BaseTuple):
        return lambda container, template: template

    def impl(container, template):
        container[:] = 0.0
        return container
    return impl


def _templates(d, n_blocks):
    """Zero containers (d, 2d, 2d + 2d(2d+1)/2 entries) for the kernel's state and sums.

    Tuples for d ≤ TUPLE_MAX_DIM: their length is a compile-time constant, so loops over
    them unroll and the state lives in registers (one compiled kernel per d). Above, 2-D
    scratch arrays with rows per block of chains (θ, buf and gradient: 3 rows; z; sums).
    """
    n = 2 * d
    sizes = (d, n, n + n * (n + 1) // 2)
    if d <= TUPLE_MAX_DIM:
        return tuple((0.0,) * m for m in sizes)
    return tuple(np.zeros((n_blocks * (3 if m == d else 1), m)) for m in sizes)


@njit
def _advance_block(b, bounds, theta, buf, rng, perm, pos,
                   lr, beta, wd, kmat, mu, root, x_data, y_data, batch_size, reshuffle,
                   k0, n_steps, burn_in, record_every, theta0,
                   mom1, mom2, delta_sum, delta_sq, traj, vec, pair, sums):
    """Advance chains bounds[b]..bounds[b+1]−1 by ``n_steps`` updates from global step k0.

    Gaussian mode when ``x_data`` has no rows (gradient K(θ−μ) + root·ξ, root = R/√S),
    else linear regression on (x_data, y_data) with batches of ``batch_size``. Update k
    (0-based) produces the pair (θ_{k+1}, v_k); it is accumulated into mom1 (chains, 2d)
    and the upper triangle of mom2 (chains, 2d, 2d), centred at (μ, 0), when k ≥ burn_in
    and (k − burn_in) is a multiple of record_every. ‖θ_{k+1} − θ0‖² goes into
    delta_sum/delta_sq[b, k+1] while k+1 < delta_sum.shape[1]; (θ_{k+1}, −buf_{k+1}) into
    traj[c, k+1] for c < traj.shape[0] and k+1 < traj.shape[1]. ``vec``, ``pair``,
    ``sums``: zero containers from :func:`_templates`.
    """
    d = _size(vec)
    m = 2 * d
    gaussian = x_data.shape[0] == 0
    n_delta, n_traj, n_traj_steps = delta_sum.shape[1], traj.shape[0], traj.shape[1]
    xi = np.empty(d)
    idx = np.empty(batch_size, dtype=np.int64)
    inv_s = 1.0 / batch_size
    for c in range(bounds[b], bounds[b + 1]):
        s0, s1, s2, s3 = rng[c, 0], rng[c, 1], rng[c, 2], rng[c, 3]
        p = pos[c]
        th = _fresh(vec, 3 * b)
        bf = _fresh(vec, 3 * b + 1)
        grad = _fresh(vec, 3 * b + 2)
        z = _fresh(pair, b)
        acc = _fresh(sums, b)
        for i in range(d):
            th = _set(th, i, theta[c, i])
            bf = _set(bf, i, buf[c, i])
        # first recorded update at or after k0 (no integer division in the step loop)
        next_rec = burn_in + max(0, -((burn_in - k0) // record_every)) * record_every
        for step in range(n_steps):
            k = k0 + step
            grad = _zero(grad, vec)
            if gaussian:
                for i in range(d):
                    xi[i], s0, s1, s2, s3 = _normal(s0, s1, s2, s3)
                for i in range(d):
                    g = 0.0
                    for j in range(d):
                        g += kmat[i, j] * (th[j] - mu[j])
                    noise = 0.0
                    for j in range(d):
                        noise += root[i, j] * xi[j]
                    grad = _set(grad, i, g + noise)
            else:
                s0, s1, s2, s3, p = _draw_batch(s0, s1, s2, s3, idx, perm[c], p, reshuffle)
                for s in range(batch_size):
                    row = idx[s]
                    r = 0.0
                    for j in range(d):
                        r += x_data[row, j] * th[j]
                    r -= y_data[row]
                    for i in range(d):
                        grad = _set(grad, i, grad[i] + x_data[row, i] * r)
                for i in range(d):
                    grad = _set(grad, i, grad[i] * inv_s + wd * th[i])
            for i in range(d):
                bf = _set(bf, i, beta * bf[i] + grad[i])
                th = _set(th, i, th[i] - lr * bf[i])
            kk = k + 1
            if kk < n_delta:
                dist = 0.0
                for i in range(d):
                    dist += (th[i] - theta0[i]) ** 2
                delta_sum[b, kk] += dist
                delta_sq[b, kk] += dist * dist
            if c < n_traj and kk < n_traj_steps:
                for i in range(d):
                    traj[c, kk, i] = th[i]
                    traj[c, kk, d + i] = -bf[i]
            if k == next_rec:
                next_rec += record_every
                for i in range(d):
                    z = _set(z, i, th[i] - mu[i])
                    z = _set(z, d + i, -bf[i])
                for i in range(m):
                    acc = _set(acc, i, acc[i] + z[i])
                n = m
                for i in range(m):
                    zi = z[i]
                    for j in range(i, m):
                        acc = _set(acc, n + j, acc[n + j] + zi * z[j])
                    n += m - i - 1
        n = m
        for i in range(m):
            mom1[c, i] += acc[i]
            for j in range(i, m):
                mom2[c, i, j] += acc[n]
                n += 1
        rng[c, 0], rng[c, 1], rng[c, 2], rng[c, 3] = s0, s1, s2, s3
        pos[c] = p
        for i in range(d):
            theta[c, i] = th[i]
            buf[c, i] = bf[i]


@njit(cache=True, parallel=True)
def _advance_blocks(bounds, theta, buf, rng, perm, pos, lr, beta, wd, kmat, mu, root,
                    x_data, y_data, batch_size, reshuffle, k0, n_steps, burn_in,
                    record_every, theta0, mom1, mom2, delta_sum, delta_sq, traj, vec, pair,
                    sums):
    """:func:`_advance_block` over all blocks, one block per task (threads: the caller's)."""
    for b in prange(bounds.shape[0] - 1):
        _advance_block(b, bounds, theta, buf, rng, perm, pos, lr, beta, wd, kmat, mu, root,
                       x_data, y_data, batch_size, reshuffle, k0, n_steps, burn_in,
                       record_every, theta0, mom1, mom2, delta_sum, delta_sq, traj, vec, pair,
                       sums)


# ----------------------------------------------------------------- driver and result


@dataclass(frozen=True, eq=False)
class SimulationResult:
    """Empirical moments of Monte-Carlo SGD; phase-space axis order (θ₁..θ_d, v₁..v_d).

    ``mean``/``cov`` (2d,), (2d, 2d): stationary moments of the recorded pair
    (θ_{k+1}, v_k = −buf_{k+1}) (absolute coordinates); ``cov_midpoint``: the same for
    ((θ_k + θ_{k+1})/2, v_k); ``*_se`` their Monte-Carlo standard errors (entry-wise, from
    the spread of per-chain time averages across independent chains). ``buf_sq``: η²E‖buf‖²
    (the one-step displacement E‖θ_{k+1} − θ_k‖²) and ``buf_sq_se``. ``delta`` (K+1,):
    E‖θ_k − θ₀‖² for k = 0..K (``delta_k``), ``delta_se`` its SE. ``trajectory``
    (n, L+1, 2d): chains 0..n−1, entry k = (θ_k, −buf_k) for k = 0..L. ``samples``: recorded
    pairs per chain. ``noise``: "minibatch" (then ``batches`` is "iid" or "reshuffle") or
    "gaussian" (``batches`` None).
    """

    chains: int
    steps: int
    burn_in: int
    record_every: int
    seed: int
    batches: str
    noise: str
    theta0: np.ndarray
    samples: int
    mean: np.ndarray
    mean_se: np.ndarray
    cov: np.ndarray
    cov_se: np.ndarray
    cov_midpoint: np.ndarray
    cov_midpoint_se: np.ndarray
    buf_sq: float
    buf_sq_se: float
    delta_k: np.ndarray
    delta: np.ndarray
    delta_se: np.ndarray
    trajectory: np.ndarray
    wall_time_s: float

    @property
    def dim(self):
        return len(self.theta0)

    def covariance(self, convention="recorded"):
        """(cov, se) in the ``"recorded"`` or ``"midpoint"`` convention."""
        if convention == "recorded":
            return self.cov, self.cov_se
        if convention == "midpoint":
            return self.cov_midpoint, self.cov_midpoint_se
        raise UserError(f"convention must be recorded or midpoint, got {convention!r}")


def default_burn_in(model, theta0=None):
    """≈ 10 relaxation times of the covariance: ⌈5/rate⌉ steps, rate = −ln ρ(F).

    ρ(F) is the spectral radius of the discrete recursion (slowest mode), so the
    covariance deficit of a chain started at rest decays like ρ^{2k}: ≤ e⁻¹⁰ after burn-in.
    A start θ₀ ≠ μ adds ln(1 + ‖θ₀ − μ‖²/s²)/(2·rate) steps (s² the smallest level-2
    variance of θ), so that the squared mean offset has decayed to ≤ e⁻¹⁰s² as well.
    """
    f, _, _ = theory.discrete_matrices(model)
    rate = -math.log(np.max(np.abs(np.linalg.eigvals(f))))
    steps = 5.0 / rate
    if theta0 is not None:
        offset = float(np.sum((np.asarray(theta0, dtype=float) - model.mu) ** 2))
        p_theta = theory.discrete_stationary_cov(model)[:model.dim, :model.dim]
        s2 = max(np.linalg.eigvalsh(p_theta).min(), 1e-12 * np.trace(p_theta), 1e-300)
        steps += math.log1p(offset / s2) / (2 * rate)
    return int(math.ceil(steps))


def _noise_root(sigma, batch_size):
    """R/√S with RRᵀ = Σ: the symmetric square root (Σ PSD; negative rounding clipped)."""
    evals, evecs = np.linalg.eigh((sigma + sigma.T) / 2)
    return (evecs * np.sqrt(np.clip(evals, 0, None))) @ evecs.T / math.sqrt(batch_size)


def _check_int(value, name, low):
    ok = (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
          and math.isfinite(value) and int(value) == value and value >= low)
    if not ok:
        raise UserError(f"simulate.{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_args(model, chains, steps, burn_in, seed, batches, theta0, record_every,
                delta_steps, noise, trajectory):
    chains = _check_int(chains, "chains", 1)
    steps = _check_int(steps, "steps", 1)
    record_every = _check_int(record_every, "record_every", 1)
    seed = _check_int(seed, "seed", 0)
    if batches not in BATCHES:
        raise UserError(f"simulate.batches must be one of {', '.join(BATCHES)}, got {batches!r}")
    if noise not in NOISE:
        raise UserError(f"noise must be one of {', '.join(NOISE)}, got {noise!r}")
    use_data = model.data is not None and noise == "auto"
    if batches == "reshuffle" and not use_data:
        raise UserError("simulate.batches = \"reshuffle\" needs a [loss.linear_regression] "
                        "data set")
    d = model.dim
    if theta0 is None:
        theta0 = model.mu.copy()
    else:
        try:
            theta0 = np.array(theta0, dtype=float)
        except (TypeError, ValueError):
            theta0 = None
        if theta0 is None or theta0.shape != (d,) or not np.all(np.isfinite(theta0)):
            raise UserError(f"theta0 must be {d} finite numbers")
    burn_in = (default_burn_in(model, theta0) if burn_in is None
               else _check_int(burn_in, "burn_in", 0))
    total = burn_in + steps
    delta_steps = (min(total, 10_000) if delta_steps is None
                   else _check_int(delta_steps, "delta_steps", 0))
    n_traj, traj_steps = trajectory
    n_traj = min(_check_int(n_traj, "trajectory chains", 0), chains)
    traj_steps = min(_check_int(traj_steps, "trajectory steps", 0), total)
    return (chains, steps, burn_in, seed, record_every, theta0, use_data, delta_steps,
            (n_traj, traj_steps))


def simulate_sgd(model, chains, steps, burn_in=None, seed=0, batches="iid", theta0=None,
                 record_every=1, delta_steps=None, noise="auto", trajectory=(8, 2000),
                 parallel=None, progress=False):
    """Run ``chains`` independent SGD chains for ``burn_in + steps`` updates.

    ``model``: :class:`~fpsolver.sgd.PhaseSpaceModel`. Linear-regression models use real
    mini-batches (``batches`` "iid" or "reshuffle") unless ``noise="gaussian"``, which uses
    the quadratic K(θ−μ) with N(0, Σ/S) noise (Σ = ``model.noise_cov``), as for every
    model without data. ``burn_in`` None: :func:`default_burn_in` (for ``theta0``); ``seed``
    an integer ≥ 0. ``theta0`` (d,): start (default μ), buffer 0. Pairs are recorded every
    ``record_every`` updates after burn-in.
    ``delta_steps``: Δ(k) for k ≤ this (default min(total, 10000)). ``trajectory``:
    (chains, steps) kept for plots. ``parallel`` None: threads when chains·steps ≥
    PARALLEL_MIN_CHAIN_STEPS. Memory: per-chain moment sums, 16·chains·(2d)² bytes plus
    temporaries of the same size. Returns a :class:`SimulationResult`; raises
    :class:`~fpsolver.errors.SolverError` if the chains diverge.
    """
    chains, steps, burn_in, seed, record_every, theta0, use_data, delta_steps, traj = \
        _check_args(model, chains, steps, burn_in, seed, batches, theta0, record_every,
                    delta_steps, noise, trajectory)
    start = time.perf_counter()
    d = model.dim
    total = burn_in + steps
    if parallel is None:
        parallel = chains * total >= PARALLEL_MIN_CHAIN_STEPS and chains > 1
    coefficients, x_data, y_data, batch_size = _kernel_inputs(model, use_data)
    n_samples = len(y_data)
    reshuffle = batches == "reshuffle" and use_data
    chunk = chains
    if reshuffle:
        chunk = max(1, min(chains, PERM_BUDGET_BYTES // (4 * n_samples)))
    rng_all = chain_generators(seed, chains)
    mom1 = np.zeros((chains, 2 * d))
    mom2 = np.zeros((chains, 2 * d, 2 * d))
    delta_sum = np.zeros(delta_steps + 1)
    delta_sq = np.zeros(delta_steps + 1)
    n_traj, traj_steps = traj
    trajectory = np.zeros((n_traj, traj_steps + 1, 2 * d))
    trajectory[:, 0, :d] = theta0
    seg = max(1, SEGMENT_CHAIN_STEPS // chains)
    with num_threads(None if parallel else 1), \
            _progress_bar(chains * total, progress) as bar:
        for lo in range(0, chains, chunk):
            hi = min(chains, lo + chunk)
            n = hi - lo
            n_blocks = min(n, N_BLOCKS)
            bounds = np.linspace(0, n, n_blocks + 1).round().astype(np.int64)
            theta = np.tile(theta0, (n, 1))
            buf = np.zeros((n, d))
            rng = rng_all[lo:hi].copy()
            perm = np.tile(np.arange(n_samples, dtype=np.int32), (n, 1)) if reshuffle \
                else np.zeros((n, max(n_samples, 1)), dtype=np.int32)
            pos = np.full(n, n_samples, dtype=np.int64)
            dsum = np.zeros((n_blocks, delta_steps + 1))
            dsq = np.zeros((n_blocks, delta_steps + 1))
            templates = _templates(d, n_blocks)
            traj_chunk = trajectory[lo:min(hi, n_traj)]
            m1, m2 = mom1[lo:hi], mom2[lo:hi]
            for k0 in range(0, total, seg):
                n_steps = min(seg, total - k0)
                _advance_blocks(bounds, theta, buf, rng, perm, pos, *coefficients, x_data,
                                y_data, batch_size, reshuffle, k0, n_steps, burn_in,
                                record_every, theta0, m1, m2, dsum, dsq, traj_chunk,
                                *templates)
                if not (np.all(np.isfinite(theta)) and np.all(np.isfinite(buf))):
                    raise SolverError(
                        f"Monte-Carlo SGD diverged by step {k0 + n_steps}: the second moments "
                        "are unbounded at these hyperparameters (lower sgd.lr or raise "
                        "sgd.batch_size)")
                bar.update(n * n_steps)
            delta_sum += dsum.sum(axis=0)
            delta_sq += dsq.sum(axis=0)
    samples = len(range(0, steps, record_every))
    stats = _moments(model, mom1 / samples, mom2 / samples)
    delta = delta_sum / chains
    with np.errstate(under="ignore"):
        var = np.clip(delta_sq - chains * delta ** 2, 0, None) / max(chains - 1, 1)
    return SimulationResult(
        chains=chains, steps=steps, burn_in=burn_in, record_every=record_every, seed=seed,
        batches=batches if use_data else None, noise="minibatch" if use_data else "gaussian",
        theta0=theta0, samples=samples, **stats,
        delta_k=np.arange(delta_steps + 1), delta=delta, delta_se=np.sqrt(var / chains),
        trajectory=trajectory, wall_time_s=time.perf_counter() - start)


def _kernel_inputs(model, use_data):
    """(lr, β, λ, K, μ, R/√S), X, y and the batch size as the kernel takes them.

    Gaussian mode: no data rows, batch size 1 (unused), R/√S the noise root. Mini-batch
    mode: the data set, batch size S, a zero root.
    """
    hyper, d = model.hyper, model.dim
    if use_data:
        x_data = np.ascontiguousarray(model.data.X, dtype=float)
        y_data = np.ascontiguousarray(model.data.y, dtype=float)
        batch_size, root = int(hyper.batch_size), np.zeros((d, d))
    else:
        x_data, y_data = np.zeros((0, d)), np.zeros(0)
        batch_size, root = 1, _noise_root(model.noise_cov, hyper.batch_size)
    coefficients = (float(hyper.lr), float(hyper.momentum), float(hyper.weight_decay),
                    np.ascontiguousarray(model.K, dtype=float),
                    np.ascontiguousarray(model.mu, dtype=float), np.ascontiguousarray(root))
    return coefficients, x_data, y_data, batch_size


def _progress_bar(total, enabled):
    from tqdm import tqdm

    return tqdm(total=total, unit="chain-step", unit_scale=True, disable=not enabled,
                desc="SGD chains", leave=False, delay=1.0)


def _cov_and_se(m1, m2):
    """Pooled covariance (2d, 2d) of centred chain moments and its delta-method SE.

    m1 (n, 2d), m2 (n, 2d, 2d) full per-chain means of z and zzᵀ. C = mean(m2) − m̄m̄ᵀ;
    the influence of chain j is m2_j − m1_j m̄ᵀ − m̄ m1_jᵀ, whose spread across the n
    independent chains gives the standard error.
    """
    n = len(m1)
    mbar = m1.mean(axis=0)
    cov = m2.mean(axis=0) - np.outer(mbar, mbar)
    infl = m2 - m1[:, :, None] * mbar[None, None, :] - mbar[None, :, None] * m1[:, None, :]
    se = infl.std(axis=0, ddof=1) / math.sqrt(n) if n > 1 else np.full_like(cov, np.inf)
    return (cov + cov.T) / 2, se


def _moments(model, m1, m2):
    """Stationary moments (recorded and midpoint conventions) from per-chain time averages."""
    d = model.dim
    upper = np.triu(np.ones((2 * d, 2 * d), dtype=bool), 1)
    m2 = m2.copy()
    m2.transpose(0, 2, 1)[:, upper] = m2[:, upper]  # kernel fills the upper triangle
    n = len(m1)
    cov, cov_se = _cov_and_se(m1, m2)
    mid = np.eye(2 * d)
    mid[:d, d:] = -model.hyper.lr / 2 * np.eye(d)  # θ_mid = θ_{k+1} − (η/2)v_k
    m1_mid = m1 @ mid.T
    m2_mid = mid @ m2 @ mid.T
    cov_mid, cov_mid_se = _cov_and_se(m1_mid, m2_mid)
    sq = model.hyper.lr ** 2 * np.trace(m2[:, d:, d:], axis1=1, axis2=2)
    mean_se = m1.std(axis=0, ddof=1) / math.sqrt(n) if n > 1 else np.full(2 * d, np.inf)
    sq_se = sq.std(ddof=1) / math.sqrt(n) if n > 1 else np.inf
    return dict(mean=model.stationary_mean + m1.mean(axis=0), mean_se=mean_se, cov=cov,
                cov_se=cov_se, cov_midpoint=cov_mid, cov_midpoint_se=cov_mid_se,
                buf_sq=float(sq.mean()), buf_sq_se=float(sq_se))


# ----------------------------------------------------------------- comparison with theory


def theory_levels(model):
    """Theory covariances to compare with: {level: (matrix (2d, 2d), convention)}.

    continuous (level 1) against the midpoint convention (its natural counterpart, no
    (η/2)Cov(v) cross term), discrete (level 2) and exact (level 3, linear regression only)
    against the recorded pair.
    """
    levels = {"continuous": (theory.stationary_cov(model), "midpoint"),
              "discrete": (theory.discrete_stationary_cov(model, "recorded"), "recorded")}
    if model.data is not None:
        levels["exact"] = (theory.exact_stationary_cov(model, "recorded"), "recorded")
    return levels


def z_scores(empirical, se, predicted):
    """Entry-wise (empirical − predicted)/SE with the SE floored.

    The floor is SE_FLOOR_REL·√(|C_ii C_jj|) (relative to the entry's natural scale; a
    tiny absolute value if that is 0): entries with exactly zero Monte-Carlo variance (e.g.
    a direction without noise) then get z ≈ 0 when the theory agrees to rounding and a
    huge z when it does not.
    """
    diag = np.abs(np.diag(empirical))
    scale = np.sqrt(np.outer(diag, diag))
    floor = np.maximum(SE_FLOOR_REL * scale, np.finfo(float).tiny)
    return (empirical - predicted) / np.maximum(se, floor)


def compare(result, model, levels=None, threshold=AGREE_Z):
    """Per level: theory matrix, convention, z-scores, max |z|, relative error and verdict.

    ``levels``: the output of :func:`theory_levels` (computed when None). Verdict
    "agrees" when max |z| ≤ ``threshold``, else "disagrees".
    """
    levels = theory_levels(model) if levels is None else levels
    out = {}
    for name, (predicted, convention) in levels.items():
        emp, se = result.covariance(convention)
        z = z_scores(emp, se, predicted)
        rel = np.linalg.norm(emp - predicted) / np.linalg.norm(predicted)
        max_z = float(np.max(np.abs(z)))
        out[name] = {"theory": predicted, "convention": convention, "z_scores": z,
                     "max_abs_z": max_z, "relative_error": float(rel),
                     "verdict": "agrees" if max_z <= threshold else "disagrees"}
    return out
