"""Compare a recorded network run with the theory, direction by direction (numpy only).

Per eigen-direction e_i (curvature h_i from the Hessian, noise Σ_ii = Var_n(e_iᵀ∇ℓ_n) from
per-example or mini-batch gradients at θ_ref) the mode is the 1-D model of THEORY.md §3 (H diagonal in
the eigenbasis, so a mode's variances depend on its own h_i and Σ_ii only). Measured over
the stationary window (records after ``burn_in``·steps): Var θ_i, Var v_i (v = −buf) with
batch-means standard errors, the rotation sense and frequency of (θ_i, v_i), η²‖buf‖², and
Δ(k) with its fitted exponent; predicted by level 1 (continuous OU) and level 2 (discrete
Lyapunov) through :mod:`fpsolver.theory`.
"""

import json
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.linalg import LinAlgWarning

from .. import theory
from ..errors import UserError
from ..io import atomic_write_json
from ..sgd import PhaseSpaceModel
from .files import load_eigen, load_record

N_BLOCKS = 20


def _batch_means_var(x, n_blocks=N_BLOCKS):
    """Variance of each column of x (n, k) with its batch-means standard error (k,)."""
    n = len(x)
    if n < 2 * n_blocks:
        n_blocks = max(2, n // 2)
    centred = (x - x.mean(axis=0)) ** 2
    blocks = np.array([b.mean(axis=0) for b in np.array_split(centred, n_blocks)])
    return centred.sum(axis=0) / (n - 1), blocks.std(axis=0, ddof=1) / np.sqrt(n_blocks)


def _batch_means_mean(x, n_blocks=N_BLOCKS):
    """Mean of x (n,) with its batch-means standard error."""
    n_blocks = min(n_blocks, max(2, len(x) // 2))
    blocks = np.array([b.mean() for b in np.array_split(x, n_blocks)])
    return float(x.mean()), float(blocks.std(ddof=1) / np.sqrt(n_blocks))


def noise_covariance(noise_samples):
    """Σ projected on the directions (k, k): population covariance of the rows (M, k)."""
    g = np.asarray(noise_samples, float)
    c = g - g.mean(axis=0)
    return c.T @ c / len(g)


def _mode_model(h, sigma2, hyper):
    """The 1-D :class:`PhaseSpaceModel` of a mode, or (None, reason) when it has none."""
    lr, momentum, weight_decay, batch_size = hyper
    if not h > 0:
        return None, f"h = {h:.6g} <= 0: no quadratic minimum along this direction"
    try:
        return PhaseSpaceModel.from_arrays([[h]], [[max(sigma2, 0.0)]], lr, momentum,
                                           weight_decay, batch_size), None
    except UserError as exc:
        return None, str(exc)


def level2_cov(model):
    """Level 2 (recorded pair) of a 1-D mode: the discrete Lyapunov solve, or, where that
    is ill-conditioned (η(h+λ) ≪ 1 − β puts F's eigenvalue within round-off of 1), the
    exact 1-D identity level 2 = r_d · level 1 with cross term (η/2)Var v (THEORY.md §8).
    Returns (cov (2, 2), method)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", LinAlgWarning)
        try:
            return theory.discrete_stationary_cov(model, "recorded"), "lyapunov"
        except LinAlgWarning:
            pass
    c = theory.stationary_cov(model) * theory.discrete_ratio(model)[0]
    c[0, 1] = c[1, 0] = model.hyper.lr / 2 * c[1, 1]
    return c, "r_d x level 1"


def rotation_theory(h, hyper):
    """Per-step rotation angle φ of the level-2 mode (0 if overdamped) -> frequency φ/η
    (rad per unit time t = kη); the continuous damped frequency f = √(ω² − γ²)."""
    lr, beta, lam, _ = hyper
    k = h + lam
    c = (1 + beta - lr * k) / (2 * np.sqrt(beta)) if beta > 0 else 2.0
    phi = float(np.arccos(c)) if abs(c) < 1 else 0.0
    m, gamma = lr * (1 + beta) / 2, (1 - beta) / (lr * (1 + beta))
    f2 = k / m - gamma ** 2
    return phi / lr, float(np.sqrt(f2)) if f2 > 0 else 0.0


def measured_rotation(x, v, dt):
    """Rotation of the complex signal z = x/sd_x + i v/sd_v sampled every ``dt`` time units:
    (mean angular velocity, Welch spectral peak), both rad/time; negative = clockwise with
    θ horizontal and v vertical."""
    from scipy.signal import welch

    z = (x - x.mean()) / x.std() + 1j * (v - v.mean()) / v.std()
    mean_rate = float(np.angle(z[1:] * np.conj(z[:-1])).mean() / dt)
    freqs, power = welch(z, nperseg=min(len(z), 256), return_onesided=False, detrend=False)
    peak = float(2 * np.pi * freqs[np.argmax(power)] / dt)
    return mean_rate, peak


def analyse(rec, eig, burn_in=0.2, window=None):
    """The comparison as a JSON-able dict (see :func:`compare`); ``rec`` from
    :func:`~fpsolver.net.files.load_record`, ``eig`` from :func:`~fpsolver.net.files.load_eigen`.

    ``window``: (k1, k2) steps for the exponent fit, default (0.1·steps, steps).
    """
    if not 0 <= burn_in < 1:
        raise UserError(f"burn_in must be in [0, 1), got {burn_in}")
    a = rec["attrs"]
    hyper = (float(a["lr"]), float(a["momentum"]), float(a["weight_decay"]), int(a["batch_size"]))
    lr, beta, lam, batch = hyper
    steps = rec["step"]
    if len(steps) < 8:
        raise UserError(f"the recording holds {len(steps)} records; need at least 8")
    win = steps > burn_in * steps[-1]
    x, v = rec["theta_proj"][win], -rec["buf_proj"][win]
    h = np.asarray(eig["eigenvalues"], float)
    sigma = noise_covariance(eig["noise_samples"])
    var_x, se_x = _batch_means_var(x)
    var_v, se_v = _batch_means_var(v)
    dt = lr * int(a["record_every"])
    directions, models = [], []
    for i, hi in enumerate(h):
        model, why = _mode_model(hi, sigma[i, i], hyper)
        entry = {"index": i + 1, "h": hi, "residual": float(eig["residuals"][i]),
                 "noise_sigma_ii": sigma[i, i], "var_theta": var_x[i], "var_theta_se": se_x[i],
                 "var_v": var_v[i], "var_v_se": se_v[i], "mean_theta": float(x[:, i].mean())}
        rate, peak = measured_rotation(x[:, i], v[:, i], dt)
        freq2, freq_cont = rotation_theory(hi, hyper)
        entry.update({"rotation_rate": rate, "rotation_peak": peak,
                      "rotation_sense": "clockwise" if rate < 0 else "counter-clockwise",
                      "freq_level2": freq2, "freq_continuous": freq_cont,
                      "aliased": bool(freq2 * dt > np.pi)})
        if model is None:
            entry["theory"] = None
            entry["theory_error"] = why
        else:
            c1, (c2, method) = theory.stationary_cov(model), level2_cov(model)
            gi, ti = float(eig["grad_proj"][i]), float(eig["theta_proj"][i])
            entry.update({
                "theory": "ok", "level2_method": method, "mu_theta": -(gi + lam * ti) / (hi + lam),
                "var_theta_level1": c1[0, 0], "var_theta_level2": c2[0, 0],
                "var_v_level1": c1[1, 1], "var_v_level2": c2[1, 1],
                "cov_theta_v_level2": c2[0, 1], "cov_theta_v": float(np.cov(x[:, i], v[:, i])[0, 1]),
                "ratio_theta_level1": var_x[i] / c1[0, 0], "ratio_theta_level2": var_x[i] / c2[0, 0],
                "ratio_v_level1": var_v[i] / c1[1, 1], "ratio_v_level2": var_v[i] / c2[1, 1],
                "z_theta_level2": (var_x[i] - c2[0, 0]) / se_x[i] if se_x[i] > 0 else None,
                "z_v_level2": (var_v[i] - c2[1, 1]) / se_v[i] if se_v[i] > 0 else None})
            models.append(i)
        directions.append(entry)
    step_norm = _batch_means_mean(rec["step_norm2"][win])
    pred = lr ** 2 * float(eig["trace_sigma"]) / (batch * (1 - beta ** 2))
    trace_h = float(eig.get("trace_h", np.nan))
    out = {"hyperparameters": dict(zip(("lr", "momentum", "weight_decay", "batch_size"), hyper)),
           "records": int(len(steps)), "window_records": int(win.sum()), "burn_in": burn_in,
           "directions": directions,
           "step_norm2": {"measured": step_norm[0], "stderr": step_norm[1], "level1": pred,
                          "ratio": step_norm[0] / pred if pred > 0 else None,
                          "trace_sigma": float(eig["trace_sigma"]), "trace_h": trace_h,
                          "sigma2_fit": float(eig["trace_sigma"]) / trace_h
                          if np.isfinite(trace_h) and trace_h > 0 else None,
                          "formula": "η² tr Σ/(S(1−β²)) = η²σ² tr H/(S(1−β²)) with σ² = tr Σ/tr H"},
           "eigen": {key: eig.get(key) for key in ("method", "n_products", "converged", "tol",
                                                   "bn_mode", "dtype", "device", "n_samples",
                                                   "seconds_per_product", "message")}}
    out["diffusion"] = _diffusion(rec, eig, h, sigma, models, hyper, window)
    return out


def _diffusion(rec, eig, h, sigma, modes, hyper, window):
    """Δ(k) (full and top-k) with fitted exponents; level 1/2 curves in the top-k subspace."""
    steps = rec["step"].astype(float)
    k1, k2 = window or (max(steps[0], 0.1 * steps[-1]), steps[-1])
    top = (rec["theta_proj"] ** 2).sum(axis=1)
    out = {"window": [k1, k2], "exponent_full": theory.fit_exponent(steps, rec["dist2"], k1, k2),
           "exponent_topk": theory.fit_exponent(steps, top, k1, k2)}
    if modes:
        lr, beta, lam, batch = hyper
        idx = np.array(modes)
        t = np.asarray(eig["theta_proj"], float)[idx]
        g = np.asarray(eig["grad_proj"], float)[idx]
        model = PhaseSpaceModel.from_arrays(np.diag(h[idx]), sigma[np.ix_(idx, idx)], lr, beta,
                                            lam, batch, minimum=t - g / h[idx])
        grid = np.unique(np.geomspace(max(steps[0], 1), steps[-1], 60).astype(int))
        d1 = theory.diffusion_curve_continuous(model, t, grid)
        out.update({"theory_steps": grid.tolist(), "level1": d1.tolist(),
                    "exponent_level1": theory.fit_exponent(grid, d1, k1, k2)})
        with warnings.catch_warnings():
            warnings.simplefilter("error", LinAlgWarning)
            try:
                d2 = theory.diffusion_curve_discrete(model, t, grid)
            except LinAlgWarning:
                out["level2_note"] = "discrete Lyapunov solve ill-conditioned; level 2 omitted"
                return out
        out.update({"level2": d2.tolist(), "exponent_level2": theory.fit_exponent(grid, d2, k1, k2)})
    return out


def compare(run_dir, out_dir, burn_in=0.2, window=None, figures=True):
    """Read ``RUN/record.h5`` and ``RUN/eigen.h5``; write ``OUT/summary.json`` and figures.

    Returns the summary dict.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    for name in ("record.h5", "eigen.h5"):
        if not (run_dir / name).exists():
            raise UserError(f"{run_dir} lacks {name}; run fpsolver net record first")
    t0 = time.perf_counter()
    rec, eig = load_record(run_dir / "record.h5"), load_eigen(run_dir / "eigen.h5")
    summary = analyse(rec, eig, burn_in, window)
    summary["run"] = {"dir": str(run_dir), "meta": rec["attrs"]["meta"],
                      "config": json.loads((run_dir / "config.json").read_text())
                      if (run_dir / "config.json").exists() else None}
    final = run_dir / "eigen_final.h5"
    if final.exists():
        e2 = load_eigen(final)
        kk = min(len(e2["eigenvalues"]), len(eig["eigenvalues"]))
        summary["eigen_drift"] = {"eigenvalues_reference": eig["eigenvalues"][:kk],
                                  "eigenvalues_final": e2["eigenvalues"][:kk],
                                  "relative_change": e2["eigenvalues"][:kk] / eig["eigenvalues"][:kk] - 1,
                                  "residuals_final": e2["residuals"][:kk]}
    if figures:
        from . import figures as figs  # noqa: PLC0415
        summary["figures"] = figs.write_all(out_dir, rec, summary)
    summary["wall_time_s"] = time.perf_counter() - t0
    atomic_write_json(out_dir / "summary.json", summary)
    return summary
