"""Monte-Carlo SGD against the three levels of theory (THEORY.md §8), with a verdict.

d = 2 linear regression whose Hessian is that of THEORY.md §13 (N = 64 samples, labels
with noise 0.5, exact state-dependent gradient noise), several hyperparameter settings,
i.i.d. batches, and the worked example again with random reshuffling (8 batches per
epoch), which no i.i.d. theory describes.
"""

import numpy as np

from .. import simulate, theory
from ..case import case_from_dict
from ..sgd import build_model
from .common import Section, fmt, md_table, save_figure

HESSIAN = [[0.755734, 0.379458], [0.379458, 0.309074]]
N_SAMPLES = 64
# name, lr, momentum, weight_decay, batch_size, batches
SETTINGS = (
    ("worked example", 0.05, 0.9, 0.01, 8, "iid"),
    ("large η", 0.2, 0.9, 0.01, 8, "iid"),
    ("plain SGD", 0.5, 0.0, 0.0, 4, "iid"),
    ("high momentum", 0.02, 0.99, 0.01, 32, "iid"),
    ("reshuffled", 0.05, 0.9, 0.01, 8, "reshuffle"),
)
LEVELS = ("continuous", "discrete", "exact")
MAX_Z = 4.5  # the bound of the mc_max_z_exact check


def setting_model(lr, momentum, weight_decay, batch_size):
    """The PhaseSpaceModel of one setting (deterministic data set, seed 1)."""
    return build_model(case_from_dict({
        "name": "montecarlo",
        "sgd": {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                "batch_size": batch_size},
        "loss": {"linear_regression": {"n_samples": N_SAMPLES, "feature_covariance": HESSIAN,
                                       "label_noise": 0.5, "seed": 1}},
        "noise": {"model": "exact"}}))


def _mode_variances(cov, model):
    """Var(u_iᵀθ) per Hessian mode (ascending h) from a (2d, 2d) covariance."""
    u = model.hessian_eigenvectors
    d = model.dim
    return np.einsum("ji,jk,ki->i", u, cov[:d, :d], u)


def run_setting(plan, name, lr, momentum, weight_decay, batch_size, batches, index):
    """Simulate one setting; returns a dict of moments, z-scores, ratios and the verdict."""
    model = setting_model(lr, momentum, weight_decay, batch_size)
    res = simulate.simulate_sgd(model, chains=plan.mc_chains, steps=plan.mc_steps,
                                seed=plan.seed + index, batches=batches)
    comparison = simulate.compare(res, model)
    recorded = {"continuous": theory.stationary_cov(model),
                "discrete": theory.discrete_stationary_cov(model, "recorded"),
                "exact": theory.exact_stationary_cov(model, "recorded")}
    ratios = {lv: _mode_variances(res.cov, model) / _mode_variances(recorded[lv], model)
              for lv in LEVELS}
    predicted_low = theory.discrete_ratio(model) * (
        _mode_variances(recorded["exact"], model) / _mode_variances(recorded["discrete"], model))
    out = {
        "name": name, "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
        "batch_size": batch_size, "batches": batches, "chains": res.chains,
        "steps": res.steps, "burn_in": res.burn_in, "wall_time_s": res.wall_time_s,
        "hessian_eigenvalues": model.hessian_eigenvalues,
        "empirical_cov": res.cov, "standard_error": res.cov_se,
        "max_abs_z": {lv: comparison[lv]["max_abs_z"] for lv in LEVELS},
        "relative_error": {lv: comparison[lv]["relative_error"] for lv in LEVELS},
        "z_scores": {lv: comparison[lv]["z_scores"] for lv in LEVELS},
        "mode_ratio": ratios,  # Monte-Carlo / level, Var θ per Hessian mode
        "rd_rs": predicted_low,  # r_d·r_s per mode (level 3 / level 1 for θ)
        "rd_rs_first_order": theory.discrete_ratio(model)
        * theory.state_noise_ratio_first_order(model),
    }
    out["verdict"] = _verdict(out)
    return out


def _verdict(r):
    z3, z1 = r["max_abs_z"]["exact"], r["max_abs_z"]["continuous"]
    if r["batches"] == "reshuffle":
        return (f"no i.i.d. level applies: reshuffled variance is "
                f"{fmt(r['mode_ratio']['exact'].min(), 2)}–{fmt(r['mode_ratio']['exact'].max(), 2)}"
                f"× level 3 (max |z| = {z3:.0f})")
    word = "agrees" if z3 <= MAX_Z else "DISAGREES"
    return (f"level 3 {word} (max |z| = {z3:.1f}); level 1 low by a factor up to "
            f"{r['mode_ratio']['continuous'].max():.3f} (r_d·r_s = {r['rd_rs'].max():.3f}; "
            f"max |z| = {z1:.0f})")


def section(plan, figdir):
    """Run every setting; table, figure, headline numbers."""
    rows = [run_setting(plan, *s, index=i) for i, s in enumerate(SETTINGS)]
    iid = [r for r in rows if r["batches"] == "iid"]
    largest = max(iid, key=lambda r: r["lr"] * max(r["hessian_eigenvalues"]))
    headline = {
        "mc_max_z_exact": max(r["max_abs_z"]["exact"] for r in iid),
        "mc_level1_max_z": largest["max_abs_z"]["continuous"],
        "reshuffle_ratio_max": max(float(r["mode_ratio"]["exact"].max())
                                   for r in rows if r["batches"] == "reshuffle"),
    }
    table = md_table(
        ["setting", "η", "β", "λ", "S", "batches", "MC Var θ₁, Var θ₂ (± SE)",
         "MC/L1 Var θ (modes)", "MC/L2", "MC/L3",
         "r_d·r_s", "max |z| L1", "L2", "L3", "verdict"],
        [[r["name"], fmt(r["lr"]), fmt(r["momentum"]), fmt(r["weight_decay"]),
          r["batch_size"], r["batches"],
          ", ".join(f"{r['empirical_cov'][i][i]:.4g} ± {r['standard_error'][i][i]:.1g}"
                    for i in range(2)),
          ", ".join(fmt(x, 4) for x in r["mode_ratio"]["continuous"]),
          ", ".join(fmt(x, 4) for x in r["mode_ratio"]["discrete"]),
          ", ".join(fmt(x, 4) for x in r["mode_ratio"]["exact"]),
          ", ".join(fmt(x, 4) for x in r["rd_rs"]),
          fmt(r["max_abs_z"]["continuous"], 3), fmt(r["max_abs_z"]["discrete"], 3),
          fmt(r["max_abs_z"]["exact"], 3), r["verdict"]] for r in rows])
    worst = max(iid, key=lambda r: r["mode_ratio"]["continuous"].max())
    low = worst["mode_ratio"]["continuous"].max()
    text = f"""Monte-Carlo SGD (PyTorch update, real mini-batches of a d = 2 linear regression with
N = {N_SAMPLES}, exact state-dependent noise; {plan.mc_chains} chains × {plan.mc_steps}
recorded steps after burn-in) against level 1 (continuous OU, compared in the midpoint convention),
level 2 (discrete Lyapunov, constant Σ(μ)) and level 3 (exact discrete moments with
state-dependent noise), both in the recorded-pair convention. Ratios are Monte-Carlo /
theory for Var θ along each Hessian mode (ascending h); z-scores are entry-wise over the
whole 4×4 covariance with Monte-Carlo standard errors from the spread across chains.

{table}

**Where the continuous prediction fails.** Against SGD the paper's continuous
(level-1) stationary variance of θ is too small in every setting, by a factor up to
{low:.3f} (the "{worst['name']}" setting, η = {fmt(worst['lr'])}: SGD's variance is
{100 * (low - 1):.0f} % above the prediction), with |z| up to
{headline['mc_level1_max_z']:.0f} at the largest η. The deficit is the factor r_d·r_s of
THEORY.md §8 (discreteness of time r_d, state-dependent noise r_s): the "MC/L1" column
reproduces the "r_d·r_s" column (all in the recorded-pair convention). Level 2 removes
r_d, and level 3 removes both: it agrees with every i.i.d. setting within Monte-Carlo error (max |z| =
{headline['mc_max_z_exact']:.2f}). Random reshuffling breaks the i.i.d. assumption of all
three levels: the reshuffled chains sit well below every prediction (up to
{headline['reshuffle_ratio_max']:.2f}× level 3).

{_figure(rows, figdir)}
"""
    return Section("montecarlo", "Monte-Carlo SGD vs the three theory levels", text, headline,
                   {"settings": rows})


def _figure(rows, figdir):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    width = 0.25
    x = np.arange(len(rows))
    for j, level in enumerate(LEVELS):
        ax.bar(x + (j - 1) * width, [r["mode_ratio"][level].max() for r in rows], width,
               label=f"MC / level {j + 1} ({level})")
    ax.plot(x, [r["rd_rs"].max() for r in rows], "k_", ms=20, mew=2, label="r_d·r_s")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks(x, [r["name"] for r in rows])
    ax.set_ylabel("Var θ, largest over modes: MC / theory")
    ax.legend(fontsize="small")
    return save_figure(fig, figdir, "montecarlo_levels")
