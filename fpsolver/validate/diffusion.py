"""Anomalous diffusion: Monte-Carlo Δ(k) = E‖θ_k − θ₀‖² against theory (THEORY.md §9).

Linear regression in d ≥ 20 with a power-law spectrum h_i = i^(−ALPHA) (exact Hessian),
real mini-batches with state-dependent noise, PyTorch SGD from rest at θ₀, two starts:
θ₀ = μ (noise only) and θ₀ = μ + a along the flattest mode (noise plus drift). Theory:
level 2, the exact recursion with constant Σ(μ) (state-dependent noise adds r_s − 1 ≈
η(tr H + h)/(2S(1−β)) ≈ 1 %, below the Monte-Carlo error here), and level 1, the OU curve.
Exponents c are least-squares slopes of log Δ on log k over fixed windows.
"""

import numpy as np

from .. import simulate, theory
from ..case import case_from_dict
from ..sgd import build_model
from .common import Section, fmt, md_table, save_figure

ALPHA = 2.0
LR, MOMENTUM, BATCH, N_SAMPLES = 0.05, 0.9, 64, 1024
DRIFT = 0.2  # |θ₀ − μ| of the drifting start, along the flattest Hessian mode
N_POINTS = 48  # log-spaced k at which curves are compared and fitted


def diffusion_model(dim):
    """The d-dimensional power-law linear regression of this section."""
    eig = [float(i ** -ALPHA) for i in range(1, dim + 1)]
    return build_model(case_from_dict({
        "name": "diffusion",
        "sgd": {"lr": LR, "momentum": MOMENTUM, "weight_decay": 0.0, "batch_size": BATCH},
        "loss": {"linear_regression": {"n_samples": N_SAMPLES, "feature_eigenvalues": eig,
                                       "label_noise": 0.5, "seed": 2}},
        "noise": {"model": "exact"}}))


def windows(steps):
    """Whole decades [10ʲ, 10ʲ⁺¹] inside [1, steps] (shorter windows give noisy slopes:
    the slope error is ≈ √2·(relative SE of Δ)/ln(k₂/k₁))."""
    out, lo = [], 1
    while lo * 10 <= steps:
        out.append((lo, lo * 10))
        lo *= 10
    return out


def slope_se(k, delta, se, k1, k2):
    """Standard error of the least-squares slope of log Δ on log k over [k1, k2], taking
    the Monte-Carlo errors of the points as fully correlated (an upper bound):
    Σ|w_i|·se_i/Δ_i with w the least-squares weights of the slope."""
    sel = (k >= k1) & (k <= k2)
    x = np.log(k[sel])
    w = (x - x.mean()) / np.sum((x - x.mean()) ** 2)
    return float(np.sum(np.abs(w) * se[sel] / delta[sel]))


def run_start(plan, model, label, theta0, seed):
    """Monte-Carlo and theory curves for one start; max |z|, relative error, exponents."""
    res = simulate.simulate_sgd(model, chains=plan.diff_chains, steps=plan.diff_steps,
                                burn_in=0, seed=seed, theta0=theta0,
                                delta_steps=plan.diff_steps, trajectory=(0, 0))
    k = np.unique(np.geomspace(1, plan.diff_steps, N_POINTS).astype(int))
    mc, se = res.delta[k], res.delta_se[k]
    level2 = theory.diffusion_curve_discrete(model, theta0, k)
    level1 = theory.diffusion_curve_continuous(model, theta0, k)
    late = k >= 10 / (1 - MOMENTUM)
    rows = []
    for k1, k2 in windows(plan.diff_steps):
        c_mc, c2 = theory.fit_exponent(k, mc, k1, k2), theory.fit_exponent(k, level2, k1, k2)
        se_c = slope_se(k, mc, se, k1, k2)
        rows.append({"window": [k1, k2], "c_mc": c_mc, "c_mc_se": se_c, "c_level2": c2,
                     "c_level1": theory.fit_exponent(k, level1, k1, k2),
                     "z": (c_mc - c2) / se_c})
    return {
        "start": label, "k": k, "mc": mc, "se": se, "level2": level2, "level1": level1,
        "max_abs_z": float(np.max(np.abs(mc - level2) / se)),
        "rel_error_late": float(np.max(np.abs(mc[late] / level2[late] - 1))),
        "level1_rel_error_late": float(np.max(np.abs(mc[late] / level1[late] - 1))),
        "level1_rel_error_early": float(np.max(np.abs(mc[~late] / level1[~late] - 1))),
        "exponents": rows, "wall_time_s": res.wall_time_s,
    }


def section(plan, figdir):
    model = diffusion_model(plan.diff_dim)
    flat = model.hessian_eigenvectors[:, 0]
    starts = [run_start(plan, model, "θ₀ = μ (noise only)", model.mu.copy(), plan.seed + 100),
              run_start(plan, model, f"θ₀ = μ + {DRIFT}·u_flat (drift)",
                        model.mu + DRIFT * flat, plan.seed + 101)]
    headline = {
        "diffusion_max_z": max(s["max_abs_z"] for s in starts),
        "diffusion_exponent_max_z": max(abs(w["z"]) for s in starts for w in s["exponents"]),
    }
    rs = theory.state_noise_ratio_first_order(model).max()
    table = md_table(
        ["start", "window [k₁, k₂]", "c (Monte-Carlo) ± SE", "c (level 2)", "z",
         "c (level 1, OU)"],
        [[s["start"], f"[{w['window'][0]}, {w['window'][1]}]",
          f"{w['c_mc']:.3f} ± {w['c_mc_se']:.3f}", fmt(w["c_level2"]), fmt(w["z"], 2),
          fmt(w["c_level1"])] for s in starts for w in s["exponents"]])
    errors = md_table(
        ["start", "max |z| vs level 2", "max rel. error vs level 2 (k ≥ 10/(1−β))",
         "vs level 1, k ≥ 10/(1−β)", "vs level 1, k < 10/(1−β)"],
        [[s["start"], fmt(s["max_abs_z"]), fmt(s["rel_error_late"]),
          fmt(s["level1_rel_error_late"]), fmt(s["level1_rel_error_early"])] for s in starts])
    text = f"""d = {plan.diff_dim} linear regression, h_i = i^(−{ALPHA:g}) (h from 1 down to
{fmt(model.hessian_eigenvalues[0])}), N = {N_SAMPLES}, η = {LR}, β = {MOMENTUM}, S = {BATCH},
λ = 0; {plan.diff_chains} Monte-Carlo chains from rest (buffer 0) for {plan.diff_steps}
steps. Level 2 is exact for the recursion with constant noise Σ(μ); the state-dependent
part of the noise adds ≈ r_s − 1 = {100 * (rs - 1):.1f} % at most, below the Monte-Carlo
error. The OU curve (level 1) starts from rest in continuous time and misses the first
steps of the discrete chain (PyTorch's first step is a full SGD step), as THEORY.md §9
says.

{errors}

Windowed exponents c (least-squares slope of log Δ against log k; the SE treats the
Monte-Carlo errors of the points in a window as fully correlated, an upper bound):

{table}

The exponent is not universal: it changes from window to window, and between the
noise-only and the drifting start.

{_figure(starts, figdir)}
"""
    return Section("diffusion", "Anomalous diffusion", text, headline,
                   {"starts": starts, "dim": plan.diff_dim})


def _figure(starts, figdir):
    import matplotlib.pyplot as plt

    from .. import plots

    fig, axes = plt.subplots(1, len(starts), figsize=(5 * len(starts), 3.6))
    for ax, s in zip(axes, starts):
        wins = [tuple(w["window"]) for w in s["exponents"]]
        plots.diffusion_loglog(s["k"], s["mc"], windows=wins,
                               theory_curves={"level 2 (discrete)": s["level2"],
                                              "level 1 (OU)": s["level1"]}, ax=ax)
        ax.set_title(s["start"], fontsize="small")
    return save_figure(fig, figdir, "diffusion")
