"""Paper-style figures of a compared network run (THEORY.md §11, F9); matplotlib only.

Every function takes the recording (:func:`~fpsolver.net.files.load_record`) and the
summary of :func:`~fpsolver.net.project.analyse` and writes one PNG.
"""

from pathlib import Path

import numpy as np

from ..io import atomic_replace

FILES = ("phase_portraits.png", "landscape.png", "variances.png", "diffusion.png",
         "step_norm.png")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    with atomic_replace(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)


def _window(rec, summary):
    steps = rec["step"]
    return steps > summary["burn_in"] * steps[-1]


def _pair(summary):
    """Indices of e_1 and e_k (the last direction), as in the paper's (e₁, e₃₀) plane."""
    k = len(summary["directions"])
    return 0, max(k - 1, 0)


def _ellipse(ax, centre, cov, **kw):
    """The 95 % ellipse of N(centre, cov) (2×2)."""
    w, u = np.linalg.eigh(cov)
    t = np.linspace(0, 2 * np.pi, 200)
    r = np.sqrt(5.991 * np.clip(w, 0, None))
    pts = centre[:, None] + u @ (r[:, None] * np.vstack([np.cos(t), np.sin(t)]))
    ax.plot(pts[0], pts[1], **kw)


def phase_portraits(path, rec, summary):
    plt = _plt()
    win = _window(rec, summary)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    for ax, i in zip(axes, _pair(summary)):
        d = summary["directions"][i]
        x, v = rec["theta_proj"][win, i], -rec["buf_proj"][win, i]
        sc = ax.scatter(x, v, c=rec["step"][win], s=3, cmap="viridis")
        ax.plot(x[:200], v[:200], lw=0.5, color="0.4")
        if d.get("theory") == "ok":
            cov = np.array([[d["var_theta_level2"], d["cov_theta_v_level2"]],
                            [d["cov_theta_v_level2"], d["var_v_level2"]]])
            _ellipse(ax, np.array([x.mean(), v.mean()]), cov, color="C3", label="level 2, 95 %")
            ax.legend(loc="upper right", fontsize=8)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
        ax.set_xlabel(f"θ · e{d['index']} − ref")
        ax.set_ylabel(f"v · e{d['index']}  (v = −buf)")
        ax.set_title(f"e{d['index']}: h = {d['h']:.3g}, {d['rotation_sense']}")
    fig.colorbar(sc, ax=axes, label="step")
    _save(fig, path)


def landscape(path, rec, summary):
    """Positions over the quadratic loss and over the modified loss Ψ; velocities over vᵀH⁻¹v."""
    plt = _plt()
    win = _window(rec, summary)
    i, j = _pair(summary)
    di, dj = summary["directions"][i], summary["directions"][j]
    hyper = summary["hyperparameters"]
    lam, lr, beta = hyper["weight_decay"], hyper["lr"], hyper["momentum"]
    x, y = rec["theta_proj"][win][:, [i, j]].T
    vx, vy = (-rec["buf_proj"][win][:, [i, j]]).T
    h = np.array([di["h"], dj["h"]])
    mu = np.array([di.get("mu_theta", x.mean()), dj.get("mu_theta", y.mean())])
    # the window holds the positions (±4 sd about their mean); μ is marked when inside
    centre = np.array([x.mean(), y.mean()])
    span = [max(4 * x.std(), 1e-12), max(4 * y.std(), 1e-12)]
    gx, gy = np.meshgrid(np.linspace(centre[0] - span[0], centre[0] + span[0], 120),
                         np.linspace(centre[1] - span[1], centre[1] + span[1], 120))
    # quadratic model of L_λ about μ (minimum of the regularised loss in this plane)
    loss = 0.5 * ((h[0] + lam) * (gx - mu[0]) ** 2 + (h[1] + lam) * (gy - mu[1]) ** 2)
    psi = 0.5 * ((1 + lam / h[0]) * (gx - mu[0]) ** 2 + (1 + lam / h[1]) * (gy - mu[1]) ** 2)
    vspan = [max(np.abs(vx).max(), 1e-12) * 1.3, max(np.abs(vy).max(), 1e-12) * 1.3]
    ux, uy = np.meshgrid(np.linspace(-vspan[0], vspan[0], 120), np.linspace(-vspan[1], vspan[1], 120))
    kin = lr * (1 + beta) / 4 * (ux ** 2 / h[0] + uy ** 2 / h[1])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), layout="constrained")
    axes[0].contour(gx, gy, loss, 12, cmap="Blues")
    axes[0].set_title("positions over L_λ (quadratic model)")
    axes[1].contourf(gx, gy, psi, 20, cmap="magma_r")
    axes[1].set_title("positions over modified loss Ψ (position part)")
    for ax in axes[:2]:
        ax.scatter(x, y, s=2, color="k", alpha=0.5)
        if np.all(np.abs(mu - centre) <= span):
            ax.plot(*mu, "x", color="C2", ms=10, label="μ (quadratic model)")
            ax.legend(fontsize=8, loc="upper right")
        ax.set_xlabel(f"θ · e{di['index']}")
        ax.set_ylabel(f"θ · e{dj['index']}")
    axes[2].contourf(ux, uy, kin, 20, cmap="magma_r")
    axes[2].scatter(vx, vy, s=2, color="k", alpha=0.5)
    axes[2].set_title("velocities over (η(1+β)/4) vᵀH⁻¹v")
    axes[2].set_xlabel(f"v · e{di['index']}")
    axes[2].set_ylabel(f"v · e{dj['index']}")
    _save(fig, path)


def variances(path, rec, summary):
    plt = _plt()
    dirs = [d for d in summary["directions"] if d.get("theory") == "ok"]
    idx = np.array([d["index"] for d in dirs])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for ax, var in zip(axes, ("theta", "v")):
        for off, level, colour in ((-0.1, "level1", "C0"), (0.1, "level2", "C3")):
            pred = np.array([d[f"var_{var}_{level}"] for d in dirs])
            meas = np.array([d[f"var_{var}"] for d in dirs])
            se = np.array([d[f"var_{var}_se"] for d in dirs])
            ax.errorbar(idx + off, meas / pred, yerr=se / pred, fmt="o", color=colour,
                        label=f"measured / {level.replace('level', 'level ')}")
        ax.axhline(1, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("eigen-direction i")
        ax.set_title(f"stationary Var {'θ' if var == 'theta' else 'v'}_i: measured / theory")
        ax.legend(fontsize=8)
    _save(fig, path)


def diffusion(path, rec, summary):
    plt = _plt()
    d = summary["diffusion"]
    steps = rec["step"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.loglog(steps, rec["dist2"], label=f"measured, all parameters (c = {d['exponent_full']:.2f})")
    ax.loglog(steps, (rec["theta_proj"] ** 2).sum(axis=1),
              label=f"measured, top-k subspace (c = {d['exponent_topk']:.2f})")
    if "level1" in d:
        ax.loglog(d["theory_steps"], d["level1"], "--",
                  label=f"level 1, top-k (c = {d['exponent_level1']:.2f})")
    if "level2" in d:
        ax.loglog(d["theory_steps"], d["level2"], ":",
                  label=f"level 2, top-k (c = {d['exponent_level2']:.2f})")
    ax.axvspan(*d["window"], color="0.9", zorder=0)
    ax.set_xlabel("step k")
    ax.set_ylabel("Δ(k) = ‖θ_k − θ₀‖²")
    ax.legend(fontsize=8)
    _save(fig, path)


def step_norm(path, rec, summary):
    plt = _plt()
    s = summary["step_norm2"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogy(rec["step"], rec["step_norm2"], lw=0.6, label="measured η²‖buf‖²")
    ax.axhline(s["level1"], color="C3", label="η² tr Σ/(S(1−β²))")
    ax.set_xlabel("step k")
    ax.set_ylabel("‖θ_k − θ_{k−1}‖²")
    ax.legend(fontsize=8)
    _save(fig, path)


def write_all(out_dir, rec, summary):
    """Write every figure into ``out_dir``; returns the file names."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, fn in zip(FILES, (phase_portraits, landscape, variances, diffusion, step_norm)):
        fn(out_dir / name, rec, summary)
    return list(FILES)
