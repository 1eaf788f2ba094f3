"""The probability current and the rotation of probability.

The solver's stationary current (cell-centred, from the same face fluxes as its update)
against J_ss = −QP⁻¹(z − z_μ)p_ss (THEORY.md §7), streamlines side by side, and the sense
of rotation; the rotation frequency fitted to the solver's transient mean,
θ̄(t) − μ = e^(−γt)(a cos ft + b sin ft), ω_fit = √(f² + γ²), against ω = √((h+λ)/m).
"""

import numpy as np
from scipy.optimize import curve_fit

from .. import plots, theory
from ..sgd import build_model
from . import cases
from ._solve import solve, transient_history
from .common import Section, fmt, md_table, save_figure

N_TIMES = 60


def _damped(t, a, b, gamma, f):
    return np.exp(-gamma * t) * (a * np.cos(f * t) + b * np.sin(f * t))


def fit_rotation(t, x, model):
    """(γ, f, ω_fit) from a damped oscillation x(t) (d = 1 mean displacement θ̄ − μ)."""
    omega = float(model.omega[0])
    guess = [x[0], 0.0, model.gamma, np.sqrt(max(omega ** 2 - model.gamma ** 2, 1e-12))]
    (a, b, gamma, f), _ = curve_fit(_damped, t, x, p0=guess)
    return float(gamma), abs(float(f)), float(np.hypot(f, gamma))


def circulation(model, mesh, current, weights):
    """Σ w·((θ−μ)J_v − v J_θ): negative for clockwise circulation (θ right, v up)."""
    y = mesh - model.stationary_mean
    return float(np.sum(weights * (y[..., 0] * current[1] - y[..., 1] * current[0])))


def section(plan, figdir):
    case = cases.stationary_case("default")
    model = build_model(case)
    res = solve(case, plan.landscape_cells)
    mesh = np.stack(np.meshgrid(*res.grid.centers, indexing="ij"), axis=-1)
    exact = np.moveaxis(theory.stationary_current(model, mesh), -1, 0)
    sense_num = circulation(model, mesh, res.current, 1.0)
    sense_exact = circulation(model, mesh, exact, 1.0)

    tcase = cases.transient_case("default", max(plan.periods, 2))
    times, means = transient_history(tcase, plan.landscape_cells // 2, N_TIMES)
    gamma, f, omega_fit = fit_rotation(times, means[:, 0] - model.mu[0], model)
    omega = float(model.omega[0])
    f_exact = float(theory.rotation_frequencies(model)[1][0])
    exact_means = np.array([theory.transient_moments(
        model, np.array(tcase.run.initial_mean),
        tcase.run.initial_cov_scale * theory.stationary_cov(model), t)[0] for t in times])
    headline = {"rotation_rel_error": abs(omega_fit - omega) / omega}
    table = md_table(
        ["quantity", "fpsolver", "theory", "relative error"],
        [["stationary current, ∫|J − J_ss| / ∫|J_ss|", fmt(res.current_error), "0", ""],
         ["circulation Σ((θ−μ)J_v − vJ_θ) (< 0: clockwise)", fmt(sense_num), fmt(sense_exact),
          fmt(abs(sense_num / sense_exact - 1))],
         ["damping rate γ of the mean", fmt(gamma, 5), fmt(model.gamma, 5),
          fmt(abs(gamma / model.gamma - 1))],
         ["damped frequency f", fmt(f, 5), fmt(f_exact, 5), fmt(abs(f / f_exact - 1))],
         ["ω = √(f² + γ²)", fmt(omega_fit, 5), fmt(omega, 5),
          fmt(headline["rotation_rel_error"])],
         ["max |mean − exact mean| over the fit (θ)", fmt(np.max(np.abs(
             means[:, 0] - exact_means[:, 0]))), "0", ""]])
    text = f"""Default case. The stationary current on {plan.landscape_cells}² (solver) against
J_ss (exact, at cell centres); the mean of the transient from the displaced Gaussian on
{plan.landscape_cells // 2}² at {N_TIMES} times up to t = {tcase.run.t_final:.3g}, fitted by
θ̄ − μ = e^(−γt)(a cos ft + b sin ft).

{table}

Probability circulates clockwise in the (θ, v) plane, as J_ss = [v; −(K/m)(θ−μ)]p_ss says.

{_figure(res, exact, times, means, exact_means, model, figdir)}
"""
    data = {"cells": plan.landscape_cells, "current_error": res.current_error,
            "circulation": sense_num, "circulation_exact": sense_exact, "times": times,
            "mean": means, "mean_exact": exact_means, "gamma_fit": gamma, "f_fit": f,
            "omega_fit": omega_fit, "omega": omega, "f": f_exact}
    return Section("current", "Probability current and rotation frequency", text, headline,
                   data)


def _figure(res, exact, times, means, exact_means, model, figdir):
    import matplotlib.pyplot as plt

    x, y = res.grid.centers
    p = res.p
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    plots.density_current(x, y, p, current=(res.current[0], res.current[1]), ax=axes[0])
    axes[0].set_title("fpsolver: p and J (stationary)", fontsize="small")
    exact_p = theory.stationary_density(model, np.stack(np.meshgrid(x, y, indexing="ij"), -1))
    plots.density_current(x, y, exact_p, current=(exact[0], exact[1]), ax=axes[1])
    axes[1].set_title("exact: p_ss and J_ss", fontsize="small")
    axes[2].plot(times, means[:, 0], "o", ms=3, label="θ̄ (fpsolver)")
    axes[2].plot(times, exact_means[:, 0], "k-", lw=1, label="θ̄ (exact)")
    axes[2].plot(times, means[:, 1], "s", ms=3, label="v̄ (fpsolver)")
    axes[2].plot(times, exact_means[:, 1], "k--", lw=1, label="v̄ (exact)")
    axes[2].set_xlabel("t = kη")
    axes[2].legend(fontsize="small")
    return save_figure(fig, figdir, "current_rotation")
