"""Regenerate every figure the documentation uses, through the fpsolver package.

    python docs/make_figures.py                   # all figures into docs/figures/
    python docs/make_figures.py toy animation     # only some (names below)

Each figure is a function ``fig_<name>()`` that computes its data with fpsolver (theory,
Monte-Carlo SGD, the finite-volume solver) and draws it with :mod:`fpsolver.plots` or
:mod:`fpsolver.animate`. About two minutes on 2 cores in all; the docs build only reads the
PNG/GIF files, it never recomputes them.
"""

import argparse
import sys
import time
from pathlib import Path

import matplotlib

# this tree's fpsolver, not an installed copy (a stale one drew last stop's figures)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fpsolver import animate, plots, theory  # noqa: E402
from fpsolver.case import case_from_dict, default_case, load_case  # noqa: E402
from fpsolver.sgd import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "figures"
EXAMPLES = ROOT.parent / "examples"
NET_RUN = ROOT / "data" / "resnet18-h200"   # fpsolver net record + compare on a GPU (networks.rst)
DPI = 110


def _save(fig, name):
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / name, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _example(name):
    return load_case(EXAMPLES / f"{name}.toml")


def _simulate(model, **kw):
    from fpsolver.simulate import simulate_sgd

    return simulate_sgd(model, **kw)


def fig_langevin():
    """F5: simulated SGD paths in (θ, k, v) against the OU mean and 95 % ellipses."""
    case = default_case()
    model = build_model(case)
    sd = np.sqrt(np.diag(theory.stationary_cov(model)))
    theta0 = model.mu + 4 * sd[:1]
    steps = 90
    res = _simulate(model, chains=64, steps=1, burn_in=steps, theta0=theta0, seed=3,
                    trajectory=(64, steps), delta_steps=0)
    traj = res.trajectory                                        # (chains, steps+1, 2)
    k = np.arange(steps + 1)
    z0 = np.array([theta0[0], 0.0])
    moments = [theory.transient_moments(model, z0, np.zeros((2, 2)), kk * model.hyper.lr)
               for kk in k]
    mean = np.array([m for m, _ in moments])
    cov = np.array([c for _, c in moments])                     # cov[0] = 0: a point start
    fig = plt.figure(figsize=(9, 5))
    ax = fig.add_subplot(projection="3d")
    ax.set_box_aspect((1, 2.6, 1))
    art = plots.phase_portrait_3d(k, traj[:, :, 0], traj[:, :, 1], mean, cov, ax=ax,
                                  max_chains=4, n_bands=7)
    inside = [plots.fraction_in_band(traj[:, i], mean[i], cov[i]) for i in (30, 60, 90)]
    ax.set_title("SGD (β = 0.9) from θ₀ = μ + 4 sd: 4 of 64 chains, OU mean and 95 % "
                 f"ellipses\nfraction of the 64 chains inside at k = 30, 60, 90: "
                 f"{', '.join(f'{f:.2f}' for f in inside)}", fontsize=9)
    ax.view_init(elev=22, azim=-42)
    ax.locator_params(axis="x", nbins=4)
    _save(fig, "langevin.png")
    return {"inside_95": inside, "band_steps": art["band_steps"].tolist()}


def fig_stationary():
    """F3: the solver's stationary density of the default case with the streamlines of its
    current (J, clockwise), marginals against the exact Gaussian."""
    from fpsolver.analysis import compare
    from fpsolver.solve import setup_problem
    from fpsolver.stationary import stationary

    case = default_case()
    model = build_model(case)
    problem = setup_problem(case, model, 96)
    result = stationary(problem.op)
    j = problem.op.current(result.p)
    err = compare(problem, result)
    centres = problem.grid.centers
    fig = plt.figure(figsize=(10, 4))
    gs = fig.add_gridspec(2, 2, width_ratios=(1.5, 1))
    ax = fig.add_subplot(gs[:, 0])
    plots.density_current(*centres, result.p, (j[0], j[1]), ax=ax, labels=("θ", "v"))
    ax.set_title("solver (96²): p_ss and streamlines of its current J", fontsize=9)
    axes = [fig.add_subplot(gs[0, 1]), fig.add_subplot(gs[1, 1])]
    plots.marginals(centres, result.p, axes=axes,
                    exact=(model.stationary_mean, theory.stationary_cov(model)),
                    labels=("θ", "v"))
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    _save(fig, "stationary.png")
    return {k: err[k] for k in ("l1_error", "current_l1_rel_error", "mass_error")}


def fig_transient():
    """F1: solver snapshots of the transient with their current, and the L1 error against
    the exact N(e^{−At}z₀, P(t)) over time at two resolutions."""
    case = default_case()
    model = build_model(case)
    t_final = 2.4
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.4))
    errors = {}
    for cells in (48, 96):
        movie = animate.solver_movie(case, model, 25, t_final=t_final, cells=cells,
                                     progress=False)
        exact = animate.exact_movie(case, model, 25, t_final=t_final, cells=cells)
        cell = (movie.x[1] - movie.x[0]) * (movie.y[1] - movie.y[0])
        l1 = np.abs(movie.density - exact.density).sum(axis=(1, 2)) * cell
        errors[cells] = l1
        axes[4].semilogy(movie.steps[1:], l1[1:], "o-", ms=3, label=f"{cells}² cells")
    for ax, j in zip(axes[:4], (0, 4, 8, 12)):
        plots.density_current(movie.x, movie.y, movie.density[j], movie.current[j], ax=ax,
                              mask_below=1e-3, gamma=0.5, vmax=movie.density.max(),
                              labels=movie.labels)
        ax.set_title(f"solver, k = {movie.steps[j]:.0f} (t = {movie.times[j]:.1f})", fontsize=9)
    axes[4].set_xlabel("step k")
    axes[4].set_ylabel("L1 error vs exact Gaussian")
    axes[4].legend(fontsize="small")
    fig.tight_layout()
    _save(fig, "transient.png")
    ratio = errors[48][1:] / errors[96][1:]
    return {"l1_48_max": float(errors[48].max()), "l1_96_max": float(errors[96].max()),
            "ratio_min": float(ratio.min()), "ratio_max": float(ratio.max()),
            "centroid_angles_rad": movie.centroid_angles()[:6].round(3).tolist()}


def fig_convergence():
    """Stationary solves of the default case on 24² … 192²: L1 and current errors."""
    from fpsolver.analysis import compare
    from fpsolver.solve import setup_problem
    from fpsolver.stationary import stationary

    case = default_case()
    model = build_model(case)
    cells = [24, 48, 96, 192]
    l1, cur = [], []
    for n in cells:
        problem = setup_problem(case, model, n)
        result = stationary(problem.op)
        err = compare(problem, result)
        l1.append(err["l1_error"])
        cur.append(err["current_l1_rel_error"])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    a = plots.convergence(cells, l1, ax=ax, label="L1 density error", expected_order=3)
    b = plots.convergence(cells, cur, ax=ax, label="relative L1 current error")
    ax.set_ylabel("error against the exact stationary Gaussian")
    ax.set_title("default case, stationary Newton solve", fontsize=9)
    _save(fig, "convergence.png")
    return {"cells": cells, "l1": l1, "current": cur, "order_l1": a["order"],
            "order_current": b["order"]}


def fig_animation():
    """The default case's density flowing to the stationary state (GIF)."""
    case = default_case()
    model = build_model(case)
    movie = animate.solver_movie(case, model, 48, cells=64, progress=False)
    path, writer = animate.render(movie, OUT / "default.gif", fps=10, size=(480, 360),
                                  progress=False)
    return {"source": movie.source, "writer": writer, "frames": movie.n_frames}


def fig_modified_loss():
    """F2: strong weight decay, d = 2: loss L_λ vs modified loss Ψ with an SGD path."""
    case = _example("weight_decay")
    model = build_model(case)
    p_ss = theory.stationary_cov(model)
    sd = np.sqrt(np.diag(p_ss))[:2]
    half = 4.5 * sd.max()
    x = model.mu[0] + np.linspace(-half, half, 161)
    y = model.mu[1] + np.linspace(-half, half, 161)
    th = np.stack(np.meshgrid(x, y, indexing="ij"), axis=-1)
    z = np.concatenate([th, np.zeros_like(th)], axis=-1)       # Ψ at v = 0
    loss = 0.5 * np.einsum("...i,ij,...j->...", th - model.mu, model.K, th - model.mu)
    psi = theory.modified_loss(model, z)
    res = _simulate(model, chains=1, steps=1, burn_in=4000, seed=5, trajectory=(1, 4000),
                    delta_steps=0)
    levels = plots.gaussian_levels(model.temperature, (0.5, 0.9, 0.99))
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    plots.loss_contours(x, y, loss, psi, levels, ax=ax, trajectory=res.trajectory[0, :, :2])
    ax.set_title("loss L_λ (grey, dashed) vs modified loss Ψ (red)\nat the levels holding "
                 "50, 90, 99 % of p_ss; blue: 4000 SGD steps", fontsize=9)
    _save(fig, "modified_loss.png")
    var = np.cov(res.trajectory[0, 500:, :2], rowvar=False)
    return {"var_theta_sgd": np.diag(var).tolist(), "var_theta_theory": np.diag(p_ss)[:2].tolist()}


def fig_toy():
    """F4: the overdamped toy of the authors' Figure 3, arrows J = −Q∇(Ψ/T)p."""
    toy = plots.overdamped_toy()
    x, y, loss, psi, current = plots.toy_figure_data(toy, n=161)
    path = toy.sample_path(4000, 0.002, np.random.default_rng(1))
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    levels = plots.gaussian_levels(1.0, (0.5, 0.9, 0.99))
    plots.loss_contours(x, y, loss, psi, levels, ax=ax, trajectory=path, current=current,
                        labels=("x₁", "x₂"))
    q12 = theory.rotation_Q(toy)[0, 1]
    ax.set_title(f"A = [[2.5, −1.5], [−1.5, 2.5]], D = diag(4, 1): Q₁₂ = {q12:.2f}\n"
                 "loss (grey), Ψ (red), streamlines of J = −Q∇Ψ p (black)", fontsize=9)
    _save(fig, "toy.png")
    return {"Q12": q12}


def fig_position_current():
    """F3 (non-commuting noise): stationary (θ₁, θ₂) marginal with its position current."""
    case = _example("noncommuting")
    model = build_model(case)
    p_ss = theory.stationary_cov(model)
    sd = np.sqrt(np.diag(p_ss))[:2]
    edges = [m + np.linspace(-4 * s, 4 * s, 97) for m, s in zip(model.mu, sd)]
    centres = [0.5 * (e[1:] + e[:-1]) for e in edges]
    z = np.stack(np.meshgrid(*centres, indexing="ij"), axis=-1)
    p = theory.gaussian_cell_averages(model.mu, p_ss[:2, :2], edges)
    j = animate.plane_current(model, model.stationary_mean, p_ss, (0, 1), z)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    plots.density_current(*centres, p, (j[..., 0], j[..., 1]), ax=ax, labels=("θ₁", "θ₂"))
    ax.set_title("Σ not commuting with H: p(θ) and the position-space current\n"
                 "J_θ = P_vθ P_θθ⁻¹ (θ − μ) p(θ)", fontsize=9)
    _save(fig, "position_current.png")


def fig_levels():
    """F6: stationary variance per mode, Monte-Carlo vs levels 1-3, against η (d = 2 LR)."""
    base = load_case(EXAMPLES / "linear_regression.toml")
    lrs = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3]
    rows = []
    for lr in lrs:
        case = base.replace(sgd={"lr": lr})
        model = build_model(case)
        p1 = theory.stationary_cov(model)
        p2 = theory.discrete_stationary_cov(model)
        p3 = theory.exact_stationary_cov(model)
        res = _simulate(model, chains=256, steps=4000, seed=11)
        rows.append((p1[0, 0], p2[0, 0], p3[0, 0], res.cov[0, 0], res.cov_se[0, 0]))
    rows = np.array(rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    for col, label, style in ((1, "level 2: discrete, additive noise", "C1--"),
                              (2, "level 3: exact, state-dependent noise", "C2-")):
        ax.plot(lrs, rows[:, col] / rows[:, 0], style, label=label)
    ax.errorbar(lrs, rows[:, 3] / rows[:, 0], yerr=2 * rows[:, 4] / rows[:, 0], fmt="ko",
                ms=4, label="Monte-Carlo SGD (±2 s.e.)")
    ax.axhline(1, color="C0", label="level 1: continuous OU")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate η")
    ax.set_ylabel("Var θ₁ / continuous prediction")
    ax.legend(fontsize="small")
    ax.set_title("d = 2 linear regression (β = 0.9, S = 8, λ = 0.01)", fontsize=9)
    _save(fig, "levels.png")
    return {"lr": lrs, "ratios": (rows[:, 1:4] / rows[:, :1]).tolist()}


def fig_diffusion():
    """F7: Δ(k) on a d = 20 power-law spectrum, with and without drift, simulated vs OU."""
    d = 20
    h = np.arange(1, d + 1) ** -1.5
    case = case_from_dict({"name": "power_law", "sgd": {"lr": 0.01, "momentum": 0.9,
                                                        "weight_decay": 0.0, "batch_size": 8},
                           "loss": {"hessian": np.diag(h).tolist()},
                           "noise": {"model": "proportional", "sigma2": 0.25}})
    model = build_model(case)
    k = np.unique(np.geomspace(1, 3000, 60).round()).astype(int)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    out = {}
    for offset, colour in ((0.0, "C0"), (0.3, "C3")):
        theta0 = model.mu + offset
        res = _simulate(model, chains=256, steps=1, burn_in=3000, theta0=theta0, seed=2,
                        delta_steps=3000, trajectory=(0, 0))
        cont = theory.diffusion_curve_continuous(model, theta0, k)
        disc = theory.diffusion_curve_discrete(model, theta0, k)
        label = "θ₀ = μ (noise only)" if offset == 0 else f"θ₀ = μ + {offset} (drift)"
        art = plots.diffusion_loglog(k, res.delta[k], windows=[(10, 100), (100, 1000)],
                                     theory_curves={f"OU, {label}": cont,
                                                    f"discrete, {label}": disc}, ax=ax)
        art["data"].set_color(colour)
        km, slope = plots.local_slopes(k, res.delta[k])
        ax2.semilogx(km, slope, ".", color=colour, label=f"simulated, {label}")
        kt, st = plots.local_slopes(k, cont)
        ax2.semilogx(kt, st, "-", color=colour, lw=1, label=f"OU, {label}")
        out[label] = art["exponents"]
    ax2.set_xlabel("step k")
    ax2.set_ylabel("local exponent d log Δ / d log k")
    ax2.legend(fontsize="x-small")
    ax.set_title("d = 20, h_i = i^(−1.5), η = 0.01, β = 0.9, S = 8", fontsize=9)
    fig.tight_layout()
    _save(fig, "diffusion.png")
    return {"exponents": out}


def fig_net():
    """F9: a ResNet-18 recording (paper preset, one H200 GPU) in its top Hessian directions,
    redrawn by :mod:`fpsolver.net.figures` from the stored ``record.h5`` and ``summary.json``."""
    import json

    from fpsolver.net import figures as net_figures, files

    rec = files.load_record(NET_RUN / "record.h5")
    summary = json.loads((NET_RUN / "summary.json").read_text())
    net_figures.phase_portraits(OUT / "net_phase.png", rec, summary)
    net_figures.variances(OUT / "net_variances.png", rec, summary)


FIGURES = {name[4:]: f for name, f in globals().items() if name.startswith("fig_")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"figures to make, out of {', '.join(sorted(FIGURES))} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(FIGURES))
    if unknown:
        parser.error(f"unknown figure {unknown[0]}")
    for name in args.names or sorted(FIGURES):
        start = time.perf_counter()
        info = FIGURES[name]()
        print(f"{name}: {time.perf_counter() - start:.1f} s {info or ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
