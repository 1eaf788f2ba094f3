"""Teaching plots: densities with probability currents, marginals, loss vs modified loss,
3-D phase portraits, anomalous-diffusion curves and convergence plots.

Every function takes data (numpy arrays, no solver or model objects unless named) and an
optional matplotlib axis, draws, and returns a dict of the artists it made so that callers
(and tests) can read back exactly what was drawn. Arrays of cell data are indexed
``[i_x, i_y]`` (x horizontal, y vertical), the axis order of ``density.npz``.

Sign convention (THEORY.md §7, §12): arrows and streamlines show the probability current
J itself, never −J; for SGD (θ horizontal, v vertical) probability circulates clockwise.

The module also holds the built-in 2-D overdamped teaching case of the authors' Figure 3
(:func:`overdamped_toy`).
"""

from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2, norm

from . import theory

BAND_MASS = 0.95


def _axis(ax, projection=None):
    """``ax`` or a new figure's single axis."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    fig = plt.figure()
    return fig.add_subplot(projection=projection)


def _meshgrid(x, y):
    return np.meshgrid(np.asarray(x, float), np.asarray(y, float), indexing="ij")


# ------------------------------------------------------------------ densities and currents


def density_current(x, y, p, current=None, ax=None, style="stream", vmax=None, gamma=1.0,
                    cmap="viridis", stride=None, stream_density=1.0, mask_below=None,
                    labels=("θ", "v")):
    """Heat map of cell values ``p`` (nx, ny) with arrows or streamlines of the current J.

    ``x`` (nx,), ``y`` (ny,): uniformly spaced cell centres; ``current``: (Jx, Jy), each
    (nx, ny), or None. ``style="stream"``: streamlines following J, line width ∝ |J|;
    ``"quiver"``: arrows J at every ``stride``-th cell (default: about 16 per axis), scaled
    together. ``mask_below``: omit the current where p < mask_below·max p (streamlines
    stop there). Colours run from 0 to ``vmax`` (default max p) with a power-law ``gamma``.
    Returns {"mesh": QuadMesh, "current": StreamplotSet | Quiver | None}.
    """
    from matplotlib.colors import PowerNorm

    ax = _axis(ax)
    x, y, p = np.asarray(x, float), np.asarray(y, float), np.asarray(p, float)
    if p.shape != (len(x), len(y)):
        raise ValueError(f"p has shape {p.shape}, expected {(len(x), len(y))}")
    norm = PowerNorm(gamma, vmin=0.0, vmax=p.max() if vmax is None else vmax)
    with np.errstate(under="ignore"):  # power norm of tail densities ~1e-300
        mesh = ax.pcolormesh(x, y, p.T, shading="nearest", cmap=cmap, norm=norm)
    artist = None
    with np.errstate(under="ignore"):  # |J|² of tail currents ~1e-300 underflows
        if current is not None:
            jx, jy = (np.asarray(c, float) for c in current)
            if mask_below is not None:
                low = p < mask_below * p.max()
                jx, jy = np.ma.masked_where(low, jx), np.ma.masked_where(low, jy)
            if style == "stream":
                speed = np.ma.filled(np.hypot(jx, jy), 0.0)
                width = 0.3 + 1.7 * speed / max(speed.max(), 1e-300)
                artist = ax.streamplot(x, y, jx.T, jy.T, color="white", linewidth=width.T,
                                       density=stream_density, arrowsize=0.9)
            elif style == "quiver":
                step = stride or max(1, min(len(x), len(y)) // 16)
                sx, sy = slice(step // 2, None, step), slice(step // 2, None, step)
                gx, gy = _meshgrid(x[sx], y[sy])
                artist = ax.quiver(gx, gy, jx[sx, sy], jy[sx, sy], color="white", angles="xy",
                                   pivot="mid")
            else:
                raise ValueError(f"style must be 'stream' or 'quiver', got {style!r}")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_xlim(x[0], x[-1])
    ax.set_ylim(y[0], y[-1])
    return {"mesh": mesh, "current": artist}


def plane_marginal(arr, plane, spacing):
    """Marginal of grid array ``arr`` on axes ``plane`` (in that order): sum over the other
    axes times their cell widths (``spacing``: one width per axis)."""
    rest = tuple(a for a in range(arr.ndim) if a not in plane)
    out = arr.sum(axis=rest) * float(np.prod([spacing[a] for a in rest])) if rest else arr
    return out if plane[0] < plane[1] else out.T


def marginal(p, centers, axis):
    """Marginal cell averages along ``axis`` of cell averages ``p`` on uniform ``centers``."""
    p = np.asarray(p, float)
    others = tuple(a for a in range(p.ndim) if a != axis)
    volume = np.prod([centers[a][1] - centers[a][0] for a in others]) if others else 1.0
    return p.sum(axis=others) * volume


def marginals(centers, p, axes=None, exact=None, labels=None, n_fine=200):
    """Marginal densities of cell averages ``p`` (one axis per entry of ``centers``).

    ``axes``: one matplotlib axis per phase-space axis (default: a new row of axes);
    ``exact``: (mean (n,), cov (n, n)) of a Gaussian whose marginal N(mean_k, cov_kk) is
    drawn as a curve on ``n_fine`` points. Returns {"data": [Line2D], "exact": [Line2D]}.
    """
    n = len(centers)
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.6))
        axes = np.atleast_1d(axes)
    labels = labels or [f"z{k}" for k in range(n)]
    data, curves = [], []
    for k, ax in enumerate(axes):
        c = np.asarray(centers[k], float)
        (line,) = ax.plot(c, marginal(p, centers, k), "o", ms=2.5, label="computed")
        data.append(line)
        if exact is not None:
            mean, cov = exact
            fine = np.linspace(c[0], c[-1], n_fine)
            sd = np.sqrt(cov[k][k])
            (curve,) = ax.plot(fine, norm.pdf(fine, mean[k], sd), "k-", lw=1, label="exact")
            curves.append(curve)
        ax.set_xlabel(labels[k])
    return {"data": data, "exact": curves}


# ------------------------------------------------------------------ loss vs modified loss


def gaussian_levels(temperature, masses=(0.5, 0.9, 0.99)):
    """Levels c of a 2-D Ψ with p ∝ exp(−Ψ/T): {Ψ ≤ c} holds mass q iff c = −T ln(1 − q)."""
    return -temperature * np.log1p(-np.asarray(masses, float))


def loss_contours(x, y, loss, modified, levels, ax=None, trajectory=None, current=None,
                  labels=("θ₁", "θ₂")):
    """Contours of a loss and of the modified loss Ψ at the same ``levels`` (ascending).

    ``loss``, ``modified``: (nx, ny) values on the mesh of ``x`` (nx,) and ``y`` (ny,);
    ``trajectory``: (n, 2) points drawn as a line; ``current``: (Jx, Jy) each (nx, ny),
    drawn as streamlines of J. Returns {"loss": ContourSet, "modified": ContourSet,
    "trajectory": Line2D | None, "current": StreamplotSet | None}.
    """
    ax = _axis(ax)
    x, y = np.asarray(x, float), np.asarray(y, float)
    loss_cs = ax.contour(x, y, np.asarray(loss).T, levels=levels, colors="tab:gray",
                         linestyles="--", linewidths=1)
    mod_cs = ax.contour(x, y, np.asarray(modified).T, levels=levels, colors="tab:red",
                        linewidths=1.4)
    path = None
    if trajectory is not None:
        traj = np.asarray(trajectory, float)
        (path,) = ax.plot(traj[:, 0], traj[:, 1], "-", color="tab:blue", lw=0.5, alpha=0.7)
    stream = None
    if current is not None:
        jx, jy = (np.asarray(c, float) for c in current)
        with np.errstate(under="ignore"):
            stream = ax.streamplot(x, y, jx.T, jy.T, color="k", linewidth=0.6, density=0.8,
                                   arrowsize=0.8)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_aspect("equal")
    return {"loss": loss_cs, "modified": mod_cs, "trajectory": path, "current": stream}


@dataclass(frozen=True, eq=False)
class OverdampedToy:
    """The authors' Figure-3 toy: dx = −A(x − x*)dt + √(2D) dW in 2-D (THEORY.md §7).

    Quacks like a :class:`~fpsolver.sgd.PhaseSpaceModel` for the functions of
    :mod:`fpsolver.theory` that need only ``drift`` A, ``diffusion`` D,
    ``stationary_mean`` x* and ``temperature`` (here 1, so Ψ = ½(x−x*)ᵀP⁻¹(x−x*)).
    The loss is L = ½(x−x*)ᵀA(x−x*) (A symmetric). Since AD ≠ DA, Q = AP − D ≠ 0 and
    the stationary current J = −Q∇Ψ p ≠ 0: area production E[x₁dx₂ − x₂dx₁]/dt = 2Q₁₂.
    """

    drift: np.ndarray
    diffusion: np.ndarray
    stationary_mean: np.ndarray
    temperature: float = 1.0

    def loss(self, x):
        """L(x) = ½(x−x*)ᵀA(x−x*) at points x (..., 2)."""
        y = np.asarray(x, float) - self.stationary_mean
        return 0.5 * np.einsum("...i,ij,...j->...", y, self.drift, y)

    def sample_path(self, steps, dt, rng, x0=None):
        """Euler–Maruyama path (steps + 1, 2) from ``x0`` (default x*) with step ``dt``."""
        root = np.linalg.cholesky(2 * self.diffusion * dt)
        noise = rng.standard_normal((steps, 2)) @ root.T
        out = np.empty((steps + 1, 2))
        out[0] = self.stationary_mean if x0 is None else x0
        for k in range(steps):
            out[k + 1] = out[k] - dt * self.drift @ (out[k] - self.stationary_mean) + noise[k]
        return out


def overdamped_toy():
    """A = [[2.5, −1.5], [−1.5, 2.5]], D = diag(4, 1), x* = 0: Q₁₂ = 0.9."""
    return OverdampedToy(drift=np.array([[2.5, -1.5], [-1.5, 2.5]]),
                         diffusion=np.diag([4.0, 1.0]), stationary_mean=np.zeros(2))


def toy_figure_data(toy, n=101, width=3.5):
    """Mesh and fields for the toy plot: x, y (n,), loss, Ψ (n, n), J = −Q∇(Ψ/T)p (2 × (n, n)).

    The box is x* ± ``width`` stationary standard deviations of the wider axis.
    """
    p_ss = theory.stationary_cov(toy)
    half = width * np.sqrt(np.max(np.diag(p_ss)))
    x = toy.stationary_mean[0] + np.linspace(-half, half, n)
    y = toy.stationary_mean[1] + np.linspace(-half, half, n)
    z = np.stack(_meshgrid(x, y), axis=-1)
    j = theory.stationary_current(toy, z)
    return x, y, toy.loss(z), theory.modified_loss(toy, z), (j[..., 0], j[..., 1])


# ------------------------------------------------------------------ phase portrait


def band_ellipse(mean, cov, mass=BAND_MASS, n=64):
    """Points (n, 2) of the ellipse (z−mean)ᵀcov⁻¹(z−mean) = χ²₂(mass) holding ``mass``."""
    radius = np.sqrt(chi2.ppf(mass, 2))
    phi = np.linspace(0, 2 * np.pi, n)
    circle = np.stack([np.cos(phi), np.sin(phi)])
    return np.asarray(mean, float) + (radius * np.linalg.cholesky(cov) @ circle).T


def fraction_in_band(points, mean, cov, mass=BAND_MASS):
    """Fraction of ``points`` (chains, 2) inside the ``mass`` ellipse of N(mean, cov)."""
    y = np.asarray(points, float) - mean
    d2 = np.einsum("ci,ij,cj->c", y, np.linalg.inv(cov), y)
    return float(np.mean(d2 <= chi2.ppf(mass, 2)))


def phase_portrait_3d(steps, theta, v, mean, cov, ax=None, max_chains=8, n_bands=8,
                      labels=("θ", "step k", "v")):
    """Simulated SGD paths in (θ, k, v) against the OU mean and 95 % ellipses.

    ``steps`` (n,); ``theta``, ``v``: (chains, n) one parameter mode (v = −buf);
    ``mean`` (n, 2) and ``cov`` (n, 2, 2): theory moments of (θ, v) at each step.
    Returns {"chains": [Line3D], "mean": Line3D, "band": [Line3D], "band_steps": (n_bands,)}.
    """
    ax = _axis(ax, projection="3d")
    steps = np.asarray(steps, float)
    theta, v = np.atleast_2d(theta), np.atleast_2d(v)
    chains = [ax.plot(theta[c], steps, v[c], lw=0.5, alpha=0.6)[0]
              for c in range(min(max_chains, len(theta)))]
    (mean_line,) = ax.plot(mean[:, 0], steps, mean[:, 1], "k-", lw=2, label="OU mean")
    picks = np.unique(np.linspace(0, len(steps) - 1, n_bands).round().astype(int))
    picks = picks[np.linalg.det(cov[picks]) > 0]  # no ellipse for a point (e.g. the start)
    band = []
    for i in picks:
        ell = band_ellipse(mean[i], cov[i])
        band.append(ax.plot(ell[:, 0], np.full(len(ell), steps[i]), ell[:, 1], "k-", lw=0.8,
                            alpha=0.8)[0])
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_zlabel(labels[2])
    return {"chains": chains, "mean": mean_line, "band": band, "band_steps": steps[picks]}


# ------------------------------------------------------------------ anomalous diffusion


def diffusion_loglog(k, delta, windows=(), theory_curves=None, ax=None):
    """log–log Δ(k) = ‖θ_k − θ₀‖² with power laws fitted on ``windows`` [(k1, k2), ...].

    ``theory_curves``: {label: Δ array on ``k``}. The exponent c of each window is
    :func:`fpsolver.theory.fit_exponent`; its fitted line a·k^c is drawn over the window.
    Returns {"data": Line2D, "theory": [Line2D], "fits": [Line2D], "exponents": [c]}.
    """
    ax = _axis(ax)
    k, delta = np.asarray(k, float), np.asarray(delta, float)
    (data,) = ax.loglog(k, delta, ".", ms=3, label="simulated")
    curves = [ax.loglog(k, curve, "-", lw=1.2, label=label)[0]
              for label, curve in (theory_curves or {}).items()]
    fits, exps = [], []
    for k1, k2 in windows:
        c = theory.fit_exponent(k, delta, k1, k2)
        sel = (k >= k1) & (k <= k2) & (delta > 0)
        log_a = np.mean(np.log(delta[sel]) - c * np.log(k[sel]))
        kk = np.geomspace(k1, k2, 20)
        fits.append(ax.loglog(kk, np.exp(log_a) * kk ** c, "--", lw=1.5,
                              label=f"c = {c:.2f} on [{k1:g}, {k2:g}]")[0])
        exps.append(c)
    ax.set_xlabel("step k")
    ax.set_ylabel("Δ(k) = ‖θ_k − θ₀‖²")
    ax.legend(fontsize="small")
    return {"data": data, "theory": curves, "fits": fits, "exponents": exps}


def local_slopes(k, delta):
    """d log Δ / d log k at the midpoints (geometric) of consecutive positive points."""
    k, delta = np.asarray(k, float), np.asarray(delta, float)
    sel = (k > 0) & (delta > 0)
    lk, ld = np.log(k[sel]), np.log(delta[sel])
    return np.exp(0.5 * (lk[1:] + lk[:-1])), np.diff(ld) / np.diff(lk)


# ------------------------------------------------------------------ convergence


def observed_order(cells, errors):
    """Least-squares order p in error ∝ cells^(−p)."""
    return float(-np.polyfit(np.log(cells), np.log(errors), 1)[0])


def convergence(cells, errors, ax=None, label="error", expected_order=None):
    """log–log error vs cells per axis with the fitted order and a reference slope.

    ``expected_order``: a reference line ∝ cells^(−order) through the first point.
    Returns {"data": Line2D, "reference": Line2D | None, "order": fitted order}.
    """
    ax = _axis(ax)
    cells, errors = np.asarray(cells, float), np.asarray(errors, float)
    order = observed_order(cells, errors)
    (data,) = ax.loglog(cells, errors, "o-", label=f"{label} (order {order:.2f})")
    ref = None
    if expected_order is not None:
        (ref,) = ax.loglog(cells, errors[0] * (cells / cells[0]) ** (-expected_order), "k:",
                           label=f"slope −{expected_order:g}")
    ax.set_xlabel("cells per axis")
    ax.set_ylabel(label)
    ax.legend(fontsize="small")
    return {"data": data, "reference": ref, "order": order}
