"""Monte-Carlo SGD (fpsolver.simulate) against exact answers.

Tolerances: Monte-Carlo estimates are compared with exact predictions within 4 standard
errors (SE from the spread of independent chains; P(|z| > 4) ≈ 6e-5 per entry, all seeds
fixed); the Numba kernel is compared with a plain numpy loop bit for bit.
"""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from fpsolver import simulate as sim
from fpsolver import theory
from fpsolver.case import case_from_dict
from fpsolver.errors import SolverError, UserError
from fpsolver.sgd import PhaseSpaceModel, build_model

Z = 4.0
H13 = [[0.755734, 0.379458], [0.379458, 0.309074]]  # THEORY.md §13
SIGMA2_13 = 0.245764


def _lr_model(hessian, lr, momentum, weight_decay, batch_size, n_samples=256, seed=3,
              noise=0.5):
    """Linear regression whose XᵀX/N equals ``hessian`` exactly (exact Σ(θ) noise)."""
    d = len(hessian)
    return build_model(case_from_dict({
        "sgd": {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                "batch_size": batch_size},
        "loss": {"linear_regression": {
            "n_samples": n_samples, "feature_covariance": hessian, "label_noise": noise,
            "true_weights": [1.0 - 0.5 * i for i in range(d)], "seed": seed}}}))


def _model_13(batch_size=8):
    """§13 quadratic: Σ = σ²H, η = 0.05, β = 0.9, λ = 0.01."""
    return PhaseSpaceModel.from_arrays(H13, SIGMA2_13 * np.array(H13), 0.05, 0.9, 0.01,
                                       batch_size)


# ----------------------------------------------------------------- random numbers


def test_normal_generator_moments():
    """Ziggurat normals: mean 0, variance 1, kurtosis 3, tail mass beyond r = 3.654 and a
    Kolmogorov–Smirnov distance below its 0.1 % critical value 1.95/√n."""
    from scipy import special

    x = sim.normal_stream(sim.chain_generators(11, 8), 50_000).ravel()
    n = len(x)
    assert abs(x.mean()) < Z / math.sqrt(n)
    assert abs(x.var() - 1) < Z * math.sqrt(2 / n)
    assert abs(np.mean(x ** 4) - 3) < Z * math.sqrt(96 / n)  # Var x⁴ = 105 − 9
    tail = special.erfc(sim._ZIG_R / math.sqrt(2))  # the ziggurat's base-strip tail
    assert abs(np.mean(np.abs(x) > sim._ZIG_R) - tail) < Z * math.sqrt(tail / n)
    xs = np.sort(x)
    cdf = 0.5 * special.erfc(-xs / math.sqrt(2))
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert ks < 1.95 / math.sqrt(n)


def test_generators_distinct_per_chain_and_seed():
    a = sim.chain_generators(0, 3)
    assert len({tuple(r) for r in a}) == 3
    assert not np.array_equal(a, sim.chain_generators(1, 3))
    np.testing.assert_array_equal(a[:2], sim.chain_generators(0, 2))


def test_batch_streams():
    """i.i.d. indices are uniform on [0, N); a reshuffled epoch is a permutation, the
    leftover N mod S samples of each permutation are dropped."""
    n, s = 10, 3
    rng = sim.chain_generators(5, 2)
    iid = sim.batch_stream(rng, n, s, 20_000, False)
    counts = np.bincount(iid.ravel(), minlength=n)
    expected = iid.size / n
    assert np.all(np.abs(counts - expected) < Z * math.sqrt(expected))
    shuf = sim.batch_stream(rng, n, s, 9, True)  # 3 batches per epoch, 1 sample dropped
    for chain in shuf:
        for epoch in chain.reshape(3, 3 * s):
            assert len(set(epoch)) == 3 * s and epoch.max() < n


# ----------------------------------------------------------------- kernel = numpy loop


def _reference(model, rng, steps, theta0, batches):
    """Plain numpy SGD loop over steps (vectorised over chains), PyTorch's update, fed the
    kernel's random streams; returns trajectories (chains, steps+1, 2d) of (θ_k, −buf_k)."""
    h, d = model.hyper, model.dim
    chains = len(rng)
    theta = np.tile(theta0, (chains, 1))
    buf = np.zeros((chains, d))
    out = [np.hstack([theta, -buf])]
    if model.data is None:
        xi = sim.normal_stream(rng, steps * d).reshape(chains, steps, d)
        root = sim._noise_root(model.noise_cov, h.batch_size)
    else:
        x, y = model.data.X, model.data.y
        idx = sim.batch_stream(rng, len(y), h.batch_size, steps, batches == "reshuffle")
    for k in range(steps):
        grad = np.zeros((chains, d))
        if model.data is None:
            for i in range(d):
                g = np.zeros(chains)
                for j in range(d):
                    g = g + model.K[i, j] * (theta[:, j] - model.mu[j])
                noise = np.zeros(chains)
                for j in range(d):
                    noise = noise + root[i, j] * xi[:, k, j]
                grad[:, i] = g + noise
        else:
            for s in range(h.batch_size):
                rows = x[idx[:, k, s]]
                r = np.zeros(chains)
                for j in range(d):
                    r = r + rows[:, j] * theta[:, j]
                r = r - y[idx[:, k, s]]
                for i in range(d):
                    grad[:, i] = grad[:, i] + rows[:, i] * r
            grad = grad * (1.0 / h.batch_size) + h.weight_decay * theta
        buf = h.momentum * buf + grad
        theta = theta - h.lr * buf
        out.append(np.hstack([theta, -buf]))
    return np.stack(out, axis=1)


@pytest.mark.parametrize("kind", ["gaussian-d2", "gaussian-d3", "iid", "reshuffle"])
def test_kernel_matches_numpy_reference(kind):
    """Same random streams → identical trajectories (bit for bit), and the moments and Δ(k)
    the kernel accumulates equal those of the reference trajectories (rounding only)."""
    if kind == "gaussian-d2":
        model, batches = _model_13(), "iid"
    elif kind == "gaussian-d3":
        vecs = np.array([[1.0, 0.3, 0.0], [0.0, 0.5, 0.2]])
        sigma = vecs.T @ vecs  # rank 2: singular Σ
        model = PhaseSpaceModel.from_arrays(np.diag([1.2, 0.5, 0.1]), sigma, 0.3, 0.5, 0.05, 2,
                                            minimum=[1.0, -1.0, 0.5])
        batches = "iid"
    else:  # N = 13, S = 4: 3 batches per epoch, one sample left over
        model, batches = _lr_model(H13, 0.3, 0.6, 0.02, 4, n_samples=13), kind
    chains, steps, burn_in, every = 5, 40, 7, 3
    theta0 = model.mu + 0.3
    res = sim.simulate_sgd(model, chains, steps - burn_in, burn_in=burn_in, seed=4,
                           batches=batches, theta0=theta0, record_every=every,
                           delta_steps=steps, trajectory=(chains, steps))
    ref = _reference(model, sim.chain_generators(4, chains), steps, theta0, batches)
    np.testing.assert_array_equal(res.trajectory, ref)
    d = model.dim
    z = ref[:, burn_in + 1::every] - np.r_[model.mu, np.zeros(d)]  # recorded pairs
    assert res.samples == z.shape[1]
    zbar = z.mean(axis=(0, 1))
    cov = np.einsum("cki,ckj->ij", z, z) / (chains * z.shape[1]) - np.outer(zbar, zbar)
    np.testing.assert_allclose(res.cov, cov, rtol=1e-12, atol=1e-15 * np.abs(cov).max())
    np.testing.assert_allclose(res.mean, zbar + model.stationary_mean, rtol=1e-12, atol=1e-15)
    delta = np.sum((ref[:, :, :d] - theta0) ** 2, axis=2)
    np.testing.assert_allclose(res.delta, delta.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(res.delta_se[1:], delta[:, 1:].std(axis=0, ddof=1)
                               / math.sqrt(chains), rtol=1e-8)


def test_parallel_equals_serial():
    """Results depend only on (seed, chain): the threaded kernel reproduces the serial one."""
    model = _lr_model(H13, 0.05, 0.9, 0.01, 8)
    kw = dict(seed=9, batches="reshuffle", delta_steps=50, trajectory=(3, 50), burn_in=20)
    a = sim.simulate_sgd(model, 300, 80, parallel=True, **kw)
    b = sim.simulate_sgd(model, 300, 80, parallel=False, **kw)
    for name in ("cov", "cov_se", "cov_midpoint", "delta", "delta_se", "trajectory", "mean"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_reshuffle_chunks_do_not_change_results(monkeypatch):
    """Reshuffled chains run in chunks when their permutations exceed the memory budget;
    per-chain paths are unchanged, so the moments agree to rounding (the Δ(k) sums are
    only regrouped)."""
    model = _lr_model(H13, 0.05, 0.9, 0.01, 8, n_samples=40)
    kw = dict(seed=21, batches="reshuffle", burn_in=10, delta_steps=30, trajectory=(4, 30))
    whole = sim.simulate_sgd(model, 50, 60, **kw)
    monkeypatch.setattr(sim, "PERM_BUDGET_BYTES", 4 * 40 * 7)  # 7 chains per chunk
    chunked = sim.simulate_sgd(model, 50, 60, **kw)
    np.testing.assert_array_equal(chunked.trajectory, whole.trajectory)
    for name in ("cov", "cov_se", "cov_midpoint", "mean", "delta", "delta_se"):
        np.testing.assert_allclose(getattr(chunked, name), getattr(whole, name), rtol=1e-12,
                                   atol=1e-15)


# ----------------------------------------------------------------- stationary moments


LEVEL3_SETTINGS = {
    # name: (hessian, lr, momentum, weight_decay, batch, chains, steps)
    "s13": (H13, 0.05, 0.9, 0.01, 8, 2000, 3000),  # §13: level 1 low by r_d·r_s
    "plain": ([[1.5, 0.4], [0.4, 0.6]], 0.4, 0.0, 0.0, 4, 1000, 2000),  # β = 0
    "d3": ([[1.0, 0.2, 0.0], [0.2, 0.7, 0.1], [0.0, 0.1, 0.3]], 0.2, 0.5, 0.1, 16, 1000, 1900),
}


@pytest.mark.parametrize("name", sorted(LEVEL3_SETTINGS))
def test_iid_minibatches_match_level3(name):
    """Linear regression with i.i.d. batches: every covariance entry within 4 SE of level 3;
    level 1 (midpoint convention) is off by > 5 % and by far more than its error bars on
    the variances, with the sign of r_d·r_s > 1 (continuous under-predicts)."""
    hessian, lr, beta, lam, s, chains, steps = LEVEL3_SETTINGS[name]
    model = _lr_model(hessian, lr, beta, lam, s)
    res = sim.simulate_sgd(model, chains, steps, seed=1)
    exact = theory.exact_stationary_cov(model, "recorded")
    z3 = sim.z_scores(res.cov, res.cov_se, exact)
    assert np.max(np.abs(z3)) < Z, z3
    assert res.cov_se.max() < 0.01 * np.diag(res.cov).max()  # power: SE < 1 % of the scale
    level1 = theory.stationary_cov(model)
    var_mid, se_mid = np.diag(res.cov_midpoint), np.diag(res.cov_midpoint_se)
    rel = var_mid / np.diag(level1) - 1
    assert rel.max() > 0.05, rel
    z1 = (var_mid - np.diag(level1)) / se_mid
    assert z1[np.argmax(rel)] > 3 * Z, z1


def test_gaussian_noise_matches_level2_noncommuting():
    """Quadratic + constant Gaussian noise (non-commuting Σ of §13): the recursion IS the
    level-2 linear recursion, so every entry (both conventions) is within 4 SE of level 2."""
    sigma = SIGMA2_13 * np.array([[2.5, 1.5], [1.5, 2.5]])
    model = PhaseSpaceModel.from_arrays(H13, sigma, 0.05, 0.9, 0.01, 8, minimum=[0.5, -1.0])
    res = sim.simulate_sgd(model, 1000, 3000, seed=2)
    for conv in ("recorded", "midpoint"):
        emp, se = res.covariance(conv)
        z = sim.z_scores(emp, se, theory.discrete_stationary_cov(model, conv))
        assert np.max(np.abs(z)) < Z, (conv, z)
    # the antisymmetric θ–v block of the non-commuting case is resolved (≫ its SE)
    anti = (res.cov_midpoint[0, 3] - res.cov_midpoint[1, 2]) / 2
    assert abs(anti) > 10 * np.hypot(res.cov_midpoint_se[0, 3], res.cov_midpoint_se[1, 2])
    np.testing.assert_allclose(res.mean, model.stationary_mean,
                               atol=Z * res.mean_se.max())


def test_theta_v_convention():
    """Recorded pairs: sym Cov(θ_{k+1}, v_k) = (η/2)Cov(v) (≫ SE); midpoint: 0 within 4 SE
    (the midpoint cross block is recorded − (η/2)Cov(v), with its own delta-method SE)."""
    model = _model_13()
    res = sim.simulate_sgd(model, 1000, 3000, seed=3)
    d, eta = 2, model.hyper.lr
    cross = res.cov[:d, d:]
    sym = (cross + cross.T) / 2
    half = eta / 2 * res.cov[d:, d:]
    assert np.all(np.abs(np.diag(sym)) > 10 * np.diag(res.cov_se[:d, d:]))
    mid = res.cov_midpoint[:d, d:]
    mid_se = res.cov_midpoint_se[:d, d:]
    assert np.all(np.abs((mid + mid.T) / 2) < Z * np.hypot(mid_se, mid_se.T) / math.sqrt(2))
    np.testing.assert_allclose(sym, half, atol=Z * mid_se.max())
    # and both agree with level 2's (η/2)P_vv closed form
    p2 = theory.discrete_stationary_cov(model, "recorded")
    np.testing.assert_allclose(sym, eta / 2 * p2[d:, d:], atol=Z * res.cov_se[:d, d:].max())


def test_step_displacement():
    """η²E‖buf‖² = η² tr P_vv (level 2, Gaussian noise), within 4 SE."""
    model = _model_13()
    res = sim.simulate_sgd(model, 500, 2000, seed=6)
    p2 = theory.discrete_stationary_cov(model)
    expected = model.hyper.lr ** 2 * np.trace(p2[2:, 2:])
    assert abs(res.buf_sq - expected) < Z * res.buf_sq_se
    assert res.buf_sq_se < 0.01 * expected


def test_standard_errors_are_honest():
    """The chain-spread SE equals the scatter of independent replicate estimates: 100 runs,
    ratio std(replicates)/mean(SE) within ±30 % of 1 (> 4σ: a 99-dof chi scatters ±7 %).
    An SE that ignored the correlation of steps within a chain would be ~3x too small."""
    model = PhaseSpaceModel.from_arrays(np.diag([0.5, 0.2]), np.eye(2), 0.1, 0.8, 0.0, 1)
    est, ses = [], []
    for seed in range(100):
        r = sim.simulate_sgd(model, 64, 400, seed=100 + seed, trajectory=(0, 0), delta_steps=0)
        est.append(r.cov.ravel())
        ses.append(r.cov_se.ravel())
    ratio = np.std(est, axis=0, ddof=1) / np.mean(ses, axis=0)
    assert np.all(np.abs(ratio - 1) < 0.3), ratio


# ----------------------------------------------------------------- transients, batches


def test_diffusion_curve_matches_discrete_theory():
    """Δ(k) = E‖θ_k − θ₀‖² from θ₀ ≠ μ, buf₀ = 0 (drift and noise) equals the exact level-2
    curve within 4 SE at k = 1, 5, 20, 100; the continuous curve misses the first steps."""
    model = _model_13()
    theta0 = model.mu + np.array([0.3, -0.2])
    res = sim.simulate_sgd(model, 20000, 100, burn_in=0, theta0=theta0, delta_steps=100,
                           seed=8)
    k = np.array([1, 5, 20, 100])
    expected = theory.diffusion_curve_discrete(model, theta0, k)
    z = (res.delta[k] - expected) / res.delta_se[k]
    assert np.all(np.abs(z) < Z), z
    assert np.all(res.delta_se[k] < 0.01 * expected)
    assert res.delta[0] == 0.0
    cont = theory.diffusion_curve_continuous(model, theta0, k[:1])
    assert abs(res.delta[1] - cont[0]) > 10 * res.delta_se[1]


def test_minibatch_diffusion_curve_matches_level3():
    """Linear regression, i.i.d. batches, θ₀ ≠ μ: Δ(k) equals the exact level-3 curve
    (state-dependent noise and the batch shared by curvature and noise) within 4 SE at
    k = 1, 5, 20, 100; the level-2 curve (constant Σ(μ)) misses the first step by > 4 SE."""
    model = _lr_model(H13, 0.05, 0.9, 0.01, 8)
    theta0 = model.mu + np.array([0.3, -0.2])
    res = sim.simulate_sgd(model, 20000, 100, burn_in=0, theta0=theta0, delta_steps=100,
                           seed=8)
    k = np.array([1, 5, 20, 100])
    z = (res.delta[k] - theory.diffusion_curve_exact(model, theta0, k)) / res.delta_se[k]
    assert np.all(np.abs(z) < Z), z
    level2 = theory.diffusion_curve_discrete(model, theta0, k[:1])
    assert (res.delta[1] - level2[0]) / res.delta_se[1] > Z


@pytest.mark.parametrize("batches,factor", [("reshuffle", "without"), ("iid", "with")])
def test_first_batch_covariance(batches, factor):
    """One step from μ: Cov(v₀) = Cov(ĝ_B(μ)) = (N−S)/(N−1)·Σ(μ)/S without replacement
    (first batch of an epoch), Σ(μ)/S with replacement; every entry within 4 SE and the
    two predictions ≥ 10 SE apart (N = 24, S = 8: factor 16/23)."""
    n, s = 24, 8
    model = _lr_model(H13, 0.05, 0.9, 0.01, s, n_samples=n)
    res = sim.simulate_sgd(model, 40000, 1, burn_in=0, seed=12, batches=batches)
    sigma = model.data.gradient_covariance(model.mu) / s
    scale = (n - s) / (n - 1) if factor == "without" else 1.0
    other = 1.0 if factor == "without" else (n - s) / (n - 1)
    emp, se = res.cov[2:, 2:], res.cov_se[2:, 2:]
    assert np.max(np.abs(emp - scale * sigma) / se) < Z
    assert np.max(np.abs(np.diag(emp - other * sigma)) / np.diag(se)) > 10


def test_reshuffled_epochs_fall_below_iid_theory():
    """Few batches per epoch (N = 32, S = 8: 4) anti-correlate the batch noise: the
    reshuffled stationary θ variances fall far below level 3 (i.i.d.), ratio < 0.5, z < −10."""
    model = _lr_model(H13, 0.05, 0.9, 0.01, 8, n_samples=32)
    res = sim.simulate_sgd(model, 500, 2000, seed=13, batches="reshuffle")
    exact = theory.exact_stationary_cov(model)
    var, se = np.diag(res.cov)[:2], np.diag(res.cov_se)[:2]
    assert np.all(var / np.diag(exact)[:2] < 0.5), var / np.diag(exact)[:2]
    assert np.all((var - np.diag(exact)[:2]) / se < -10)


def test_default_burn_in_plain_sgd():
    """Plain SGD on one mode: ρ(F) = |1 − ηh| (the momentum root is 0), burn-in ⌈5/−ln ρ⌉;
    a start θ₀ ≠ μ adds ln(1 + a²/s²)/(2·rate) with s² = η²σ²/(1 − ρ²) (level 2)."""
    model = PhaseSpaceModel.from_arrays([[0.5]], [[1.0]], 0.1, 0.0, 0.0, 1)
    rate = -math.log(0.95)
    assert sim.default_burn_in(model) == math.ceil(5 / rate)
    s2 = 0.1 ** 2 / (1 - 0.95 ** 2)
    expected = 5 / rate + math.log1p(3.0 ** 2 / s2) / (2 * rate)
    assert sim.default_burn_in(model, [3.0]) == math.ceil(expected)


def test_divergence_raises():
    """S = 1, η near the stability edge: level 3 diverges and so do the chains."""
    model = _lr_model(H13, 2.0, 0.0, 0.0, 1, noise=1.0)
    with pytest.raises(SolverError, match="diverged"):
        sim.simulate_sgd(model, 20, 20000, burn_in=0)


# ----------------------------------------------------------------- bad input and CLI


@pytest.mark.parametrize("kwargs,match", [
    ({"chains": 0}, "simulate.chains"), ({"steps": 2.5}, "simulate.steps"),
    ({"burn_in": -1}, "simulate.burn_in"), ({"record_every": 0}, "simulate.record_every"),
    ({"batches": "epoch"}, "simulate.batches"), ({"theta0": [1.0]}, "theta0"),
    ({"theta0": [np.nan, 0.0]}, "theta0"), ({"theta0": ["a", "b"]}, "theta0"),
    ({"noise": "laplace"}, "noise"), ({"seed": -1}, "simulate.seed"),
    ({"chains": "many"}, "simulate.chains"), ({"delta_steps": -2}, "simulate.delta_steps"),
])
def test_bad_arguments(kwargs, match):
    args = {"chains": 4, "steps": 10, **kwargs}
    with pytest.raises(UserError, match=match):
        sim.simulate_sgd(_model_13(), **args)


def test_reshuffle_needs_data():
    with pytest.raises(UserError, match="reshuffle"):
        sim.simulate_sgd(_model_13(), 4, 10, batches="reshuffle")


def _cli(*argv):
    return subprocess.run([sys.executable, "-m", "fpsolver", "simulate", *argv],
                          capture_output=True, text=True, timeout=300)


LR_CASE = """
name = "lr"
[sgd]
lr = 0.05
momentum = 0.9
weight_decay = 0.01
batch_size = 8
[loss.linear_regression]
n_samples = 128
feature_covariance = [[0.755734, 0.379458], [0.379458, 0.309074]]
seed = 1
[simulate]
chains = 200
steps = 1000
"""


def test_cli_writes_summary(tmp_path):
    case = tmp_path / "lr.toml"
    case.write_text(LR_CASE)
    out = _cli(str(case), "--out", str(tmp_path / "out"), "--chains", "300", "--quiet")
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["chains"] == 300 and summary["steps"] == 1000
    emp, se = np.array(summary["empirical_cov"]), np.array(summary["standard_error"])
    assert emp.shape == se.shape == (4, 4)
    assert set(summary["z_scores"]) == {"continuous", "discrete", "exact"}
    exact = np.array(summary["theory"]["exact"])
    np.testing.assert_allclose(summary["z_scores"]["exact"], sim.z_scores(emp, se, exact),
                               rtol=1e-10)
    assert summary["max_abs_z"]["exact"] < Z and summary["verdict"]["exact"] == "agrees"
    data = np.load(tmp_path / "out" / "diffusion.npz")
    assert data["delta"].shape == data["delta_se"].shape == data["k"].shape


@pytest.mark.parametrize("argv,match", [
    (["--chains", "0"], "simulate.chains"), (["--batches", "random"], "simulate.batches"),
    (["--steps", "-3"], "simulate.steps"),
])
def test_cli_rejects_bad_input(tmp_path, argv, match):
    case = tmp_path / "lr.toml"
    case.write_text(LR_CASE)
    out = _cli(str(case), "--out", str(tmp_path / "out"), *argv)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fpsolver: error:") and match in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_out_must_be_a_folder(tmp_path):
    case = tmp_path / "lr.toml"
    case.write_text(LR_CASE)
    (tmp_path / "file").write_text("")
    out = _cli(str(case), "--out", str(tmp_path / "file"))
    assert out.returncode == 2 and "--out" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_cli_quadratic_has_no_exact_level(tmp_path):
    case = tmp_path / "q.toml"
    case.write_text('[sgd]\nlr = 0.05\nmomentum = 0.9\nweight_decay = 0.0\nbatch_size = 8\n'
                    '[loss]\nhessian = [[0.97, 0.1], [0.1, 0.2]]\n[noise]\nsigma2 = 0.25\n'
                    '[simulate]\nchains = 100\nsteps = 500\nbatches = "reshuffle"\n')
    out = _cli(str(case), "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and "reshuffle" in out.stderr
    out = _cli(str(case), "--out", str(tmp_path / "o"), "--batches", "iid")
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert set(summary["z_scores"]) == {"continuous", "discrete"}
    assert summary["verdict"]["discrete"] == "agrees"
