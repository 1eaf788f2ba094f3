"""The anomalous-diffusion study: figures drawn from a sweep's results table.

* ``buffer``: η²E‖buf‖² against η²σ² tr H/(S(1−β²)) (the paper's sweep figure), Monte-Carlo
  and the theory levels on the same axes;
* ``exponents``: the fitted exponent c of Δ(k) = ‖θ_k − θ₀‖² against each swept axis (η, S,
  β, ...), one row per fitting window, Monte-Carlo (±1 s.e.) and theory (levels 1, 2, and
  3 for θ₀ = μ);
* ``diffusion_grid``: log-log Δ(k) for a selection of points, Monte-Carlo and theory;
* ``continuous_ratio``: continuous prediction / Monte-Carlo (or / level 3 without
  Monte-Carlo) across the sweep against the small parameters of THEORY.md §8.

Every function takes the table of :func:`fpsolver.sweep.load_results` (one row per point).
"""

import re
from pathlib import Path

import numpy as np

from .io import atomic_replace
from .sweep import AXES

LEVEL_STYLE = {"continuous": ("C0", "-", "s"), "discrete": ("C1", "--", "^"),
               "exact": ("C2", ":", "D")}
AXIS_LABELS = {"lr": "learning rate η", "batch_size": "batch size S", "momentum": "momentum β",
               "weight_decay": "weight decay λ", "sigma2": "σ²", "label_noise": "label noise",
               "dim": "dimension d", "alpha": "spectrum exponent α", "h_max": "h_max"}
LOG_AXES = ("lr", "weight_decay", "sigma2", "h_max")
MAX_DELTA_PANELS = 12


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ok(table):
    return table[table["status"] == "ok"]


def windows(table):
    """The fitting windows (k1, k2) present in the table's exponent columns, sorted."""
    found = {tuple(int(x) for x in m.groups()) for c in table.columns
             if (m := re.fullmatch(r"c_(?:continuous|discrete|exact|mc)_(\d+)_(\d+)", c))}
    return sorted(found)


def swept_axes(table):
    """Axes that take more than one value among the points, in sweep order."""
    if (table["axis"] != "grid").any():
        return list(dict.fromkeys(table["axis"]))
    return [a for a in AXES if a in table and table[a].nunique(dropna=True) > 1]


def _axis_series(table, axis, names):
    """Series of rows along ``axis``, each sorted by it: one-at-a-time, that axis' points;
    grid, one series per combination of the other swept axes."""
    if not (table["axis"] == "grid").all():
        return [table[table["axis"] == axis].sort_values(axis)]
    others = [n for n in names if n != axis]
    groups = [g for _, g in table.groupby(others)] if others else [table]
    return [g.sort_values(axis) for g in groups]


def has_monte_carlo(table):
    """Whether the sweep ran Monte-Carlo SGD (its columns are present)."""
    return "buf2_mc" in table.columns


def buffer_figure(table):
    """η²E‖buf‖² against η²σ² tr H/(S(1−β²)), Monte-Carlo and theory levels, log-log."""
    plt = _pyplot()
    rows = _ok(table)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    x = rows["buf2_scale"].to_numpy()
    for level, (color, _, marker) in LEVEL_STYLE.items():
        if f"buf2_{level}" in rows:
            ax.plot(x, rows[f"buf2_{level}"], marker, color=color, mfc="none", ms=6,
                    label=f"theory: {level}")
    if has_monte_carlo(rows):
        ax.errorbar(x, rows["buf2_mc"], yerr=rows["buf2_mc_se"], fmt="o", color="k", ms=3,
                    label="Monte-Carlo SGD")
    if len(x):
        line = np.array([x.min(), x.max()])
        ax.plot(line, line, "k-", lw=0.8, alpha=0.5, label="y = x")
    ax.set(xscale="log", yscale="log", xlabel="η²σ² tr H / (S(1−β²))",
           ylabel="η² E‖buf‖²  (= E‖θ_{k+1} − θ_k‖²)",
           title="stationary step size across the sweep")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def exponent_figure(table):
    """Fitted exponent c against each swept axis; one row of panels per window."""
    plt = _pyplot()
    rows = _ok(table)
    axes_names, wins = swept_axes(rows), windows(rows)
    fig, axs = plt.subplots(len(wins), len(axes_names), squeeze=False,
                            figsize=(3.6 * len(axes_names), 3.0 * len(wins)))
    for i, (k1, k2) in enumerate(wins):
        for j, name in enumerate(axes_names):
            ax = axs[i, j]
            for n, sub in enumerate(_axis_series(rows, name, axes_names)):
                x = sub[name].to_numpy(dtype=float)
                for level, (color, style, _) in LEVEL_STYLE.items():
                    col = f"c_{level}_{k1}_{k2}"
                    if col in sub:
                        ax.plot(x, sub[col], style, color=color,
                                label=None if n else f"theory: {level}")
                if f"c_mc_{k1}_{k2}" in sub:
                    ax.errorbar(x, sub[f"c_mc_{k1}_{k2}"], yerr=sub[f"c_mc_se_{k1}_{k2}"],
                                fmt="o", color="k", ms=3, label=None if n else "Monte-Carlo SGD")
            if name in LOG_AXES:
                ax.set_xscale("log")
            ax.set(xlabel=AXIS_LABELS.get(name, name), ylabel=f"c on k ∈ [{k1}, {k2}]")
            ax.grid(alpha=0.3)
    axs[0, 0].legend(fontsize=8)
    fig.suptitle("Δ(k) = ‖θ_k − θ₀‖² ∝ k^c: fitted exponent across the sweep")
    fig.tight_layout()
    return fig


def _pick(rows, n):
    """Up to n rows spread evenly over the table."""
    if len(rows) <= n:
        return rows
    return rows.iloc[np.unique(np.linspace(0, len(rows) - 1, n).round().astype(int))]


def _label(row, names):
    parts = []
    for name in names:
        value = row[name]
        parts.append(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}")
    return ", ".join(parts)


def diffusion_grid_figure(table, max_panels=MAX_DELTA_PANELS):
    """Log-log Δ(k) for up to ``max_panels`` points: Monte-Carlo ±2 s.e., levels 1 and 2."""
    plt = _pyplot()
    rows = _pick(_ok(table), max_panels)
    names = swept_axes(_ok(table))
    ncol = min(4, max(len(rows), 1))
    nrow = max(1, -(-len(rows) // ncol))
    fig, axs = plt.subplots(nrow, ncol, squeeze=False, figsize=(3.2 * ncol, 2.8 * nrow),
                            sharex=True)
    for ax, (_, row) in zip(axs.flat, rows.iterrows()):
        k = np.asarray(row["delta_k"], dtype=float)
        for level, (color, style, _) in LEVEL_STYLE.items():
            if isinstance(row.get(f"delta_{level}"), (list, np.ndarray)):
                ax.plot(k, row[f"delta_{level}"], style, color=color, label=level)
        if "delta_mc" in row and isinstance(row["delta_mc"], (list, np.ndarray)):
            mean, se = np.asarray(row["delta_mc"]), np.asarray(row["delta_mc_se"])
            ax.plot(k, mean, "k.", ms=3, label="Monte-Carlo")
            ax.fill_between(k, np.maximum(mean - 2 * se, mean * 1e-3), mean + 2 * se,
                            color="k", alpha=0.15, lw=0)
        ax.set(xscale="log", yscale="log")
        ax.set_title(_label(row, names), fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axs.flat[len(rows):]:
        ax.set_visible(False)
    for ax in axs[-1]:
        ax.set_xlabel("step k")
    for ax in axs[:, 0]:
        ax.set_ylabel("Δ(k) = E‖θ_k − θ₀‖²")
    axs[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def continuous_ratio_figure(table):
    """Continuous (and discrete, exact) prediction / Monte-Carlo for tr Var θ and E‖v‖².

    Plotted against ε = η(h_max+λ)/(2(1+β)) + η(tr H+h_max)/(2S(1−β)) (THEORY.md §8): the
    continuous formula holds only where ε ≪ 1. With a Fokker-Planck solve per point (d = 1)
    its variances are shown too (they approximate the continuous level). Without
    Monte-Carlo the reference is level 3 (or level 2 when there is no level 3).
    """
    plt = _pyplot()
    rows = _ok(table)
    eps = (rows["eps_discrete"] + rows["eps_state"]).to_numpy()
    reference = "mc" if has_monte_carlo(rows) else ("exact" if "ev2_exact" in rows else "discrete")
    ref_label = {"mc": "Monte-Carlo", "exact": "level 3", "discrete": "level 2"}[reference]
    fig, axs = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, quantity, title in zip(axs, ("tr_var_theta", "ev2"), ("tr Var θ", "E‖v‖²")):
        for level, (color, _, marker) in LEVEL_STYLE.items():
            if level == reference or f"{quantity}_{level}" not in rows:
                continue
            ratio = rows[f"{quantity}_{level}"] / rows[f"{quantity}_{reference}"]
            ax.plot(eps, ratio, marker, color=color, mfc="none", label=f"{level} / {ref_label}")
        fp_column = {"tr_var_theta": "var_theta_fp", "ev2": "var_v_fp"}[quantity]
        if fp_column in rows:  # d = 1: the solver's variance is the whole trace
            ax.plot(eps, rows[fp_column] / rows[f"{quantity}_{reference}"], "x", color="C3",
                    label=f"Fokker-Planck solve / {ref_label}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set(xscale="log", xlabel="η(h_max+λ)/(2(1+β)) + η(tr H+h_max)/(2S(1−β))",
               title=f"{title}: prediction / {ref_label}")
        ax.grid(alpha=0.3)
    axs[0].set_ylabel("ratio")
    axs[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


FIGURES = {"buffer": buffer_figure, "exponents": exponent_figure,
           "diffusion_grid": diffusion_grid_figure, "continuous_ratio": continuous_ratio_figure}


def study_figures(table, out):
    """Draw every figure the table supports into ``out/figures/NAME.png``; returns the paths."""
    plt = _pyplot()
    rows = _ok(table)
    if not len(rows) or not swept_axes(rows):  # nothing varies among the finished points
        return []
    wanted = ["buffer", "continuous_ratio"]
    if "delta_k" in table.columns:
        wanted += ["exponents", "diffusion_grid"]
    paths = []
    for name in wanted:
        fig = FIGURES[name](table)
        path = Path(out) / "figures" / f"{name}.png"
        with atomic_replace(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
