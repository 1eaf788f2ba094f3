"""Density-flow animations: the phase-space density relaxing from a displaced start to the
stationary state, with its probability current, marginals and a clock in SGD steps.

A :class:`Movie` holds the frames as data (density and current on one 2-D plane of phase
space, at times t_j); :func:`exact_movie` fills it from the exact Gaussian transient
N(e^{−At}z₀, P(t)) and :func:`solver_movie` from the finite-volume solver's snapshots.
:func:`render` draws the frames and writes MP4 through ffmpeg (on the PATH or imageio-ffmpeg's)
or GIF through Pillow. For 4-D phase space the plane's marginal density and current are shown.
"""

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import plots, theory
from .errors import UserError
from .grid import sized_grid

DISPLACEMENT_SD = 2.5       # default start: θ displaced by this many stationary sd
RELAXATION_TIMES = 4.0      # default duration: this many slowest e-folding times
MASK_BELOW = 1e-3           # no streamlines where p < MASK_BELOW · max p of the frame


def axis_labels(dim):
    """Phase-space axis names: ("theta1", …, "v1", …) and their printed forms ("θ₁", …)."""
    sub = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
    names = [f"theta{i}" for i in range(1, dim + 1)] + [f"v{i}" for i in range(1, dim + 1)]
    pretty = [f"θ{str(i).translate(sub)}" for i in range(1, dim + 1)]
    pretty += [f"v{str(i).translate(sub)}" for i in range(1, dim + 1)]
    return names, pretty


def parse_plane(text, dim):
    """"theta1,v1" → (0, d): the two phase-space axes of the animated plane."""
    names, _ = axis_labels(dim)
    parts = [s.strip() for s in str(text).split(",")]
    if len(parts) != 2 or any(p not in names for p in parts) or parts[0] == parts[1]:
        raise UserError(f"--plane must be two different axes out of {','.join(names)}, "
                        f"got {text!r}")
    return tuple(names.index(p) for p in parts)


def initial_state(case, model):
    """(mean0, cov0) of the start: run.initial_mean, or z_μ with every θ displaced by
    DISPLACEMENT_SD stationary sd; cov0 = run.initial_cov_scale × P_ss."""
    p_ss = theory.stationary_cov(model)
    if case.run.initial_mean is not None:
        mean0 = np.array(case.run.initial_mean, dtype=float)
    else:
        d = model.dim
        mean0 = model.stationary_mean.copy()
        mean0[:d] += DISPLACEMENT_SD * np.sqrt(np.diag(p_ss)[:d])
    return mean0, case.run.initial_cov_scale * p_ss


def default_duration(model):
    """RELAXATION_TIMES / (slowest decay rate min Re eig A) (time units, t = kη)."""
    return RELAXATION_TIMES / float(np.min(np.linalg.eigvals(model.drift).real))


@np.errstate(under="ignore")  # far-tail currents flush to zero
def plane_current(model, mean, cov, plane, z):
    """Marginal current on ``plane`` of the Gaussian N(mean, cov) at plane points z (..., 2).

    ∫J_S dz_rest = −A_{S,:}(E[z | z_S] − z_μ)p_S − D_SS∇p_S (the D_{S,rest}∂_rest terms
    integrate to zero); for the full 2-D phase space this is theory.gaussian_current.
    """
    s = list(plane)
    z = np.asarray(z, dtype=float)
    c_ss = cov[np.ix_(s, s)]
    y = z - mean[s]
    cond = mean + y @ np.linalg.solve(c_ss, cov[s, :])
    p = theory.gaussian_density(mean[s], c_ss, z)[..., None]
    drift = -(cond - model.stationary_mean) @ model.drift[s, :].T
    grad_log = -y @ np.linalg.inv(c_ss).T
    return drift * p - (grad_log @ model.diffusion[np.ix_(s, s)].T) * p


@dataclass(frozen=True, eq=False)
class Movie:
    """Frames on one plane: ``density`` (n, nx, ny) cell averages, ``current`` (n, 2, nx, ny)
    cell-centred J, at ``times`` (n,) (t = kη; ``steps`` = t/η); plane cell centres ``x``,
    ``y``; ``exact`` (n, 2) means and (n, 2, 2) covariances of the exact plane marginal;
    ``centre`` and ``scale``: the stationary mean and sd on the plane; ``source``: "solver"
    or "exact"."""

    times: np.ndarray
    steps: np.ndarray
    x: np.ndarray
    y: np.ndarray
    density: np.ndarray
    current: np.ndarray
    exact_mean: np.ndarray
    exact_cov: np.ndarray
    centre: np.ndarray
    scale: np.ndarray
    labels: tuple
    source: str

    @property
    def n_frames(self):
        return len(self.times)

    def centroids(self):
        """Density centroid (n, 2) of each frame on the plane."""
        mass = self.density.sum(axis=(1, 2))
        cx = np.einsum("nij,i->n", self.density, self.x) / mass
        cy = np.einsum("nij,j->n", self.density, self.y) / mass
        return np.stack([cx, cy], axis=1)

    def centroid_angles(self):
        """Unwrapped angle (n,) of the centroid about ``centre`` in sd-scaled coordinates;
        clockwise rotation (θ horizontal, v vertical) makes it decrease."""
        rel = (self.centroids() - self.centre) / self.scale
        return np.unwrap(np.arctan2(rel[:, 1], rel[:, 0]))


def _frame_times(model, n_frames, t_final):
    t_final = default_duration(model) if t_final is None else float(t_final)
    return np.linspace(0.0, t_final, n_frames)


def _exact_marginals(model, mean0, cov0, times, plane):
    s = list(plane)
    means, covs = [], []
    for t in times:
        m, c = theory.transient_moments(model, mean0, cov0, t)
        means.append(m[s])
        covs.append(c[np.ix_(s, s)])
    return np.array(means), np.array(covs)


def _movie(model, times, edges, density, current, exact, plane, source):
    _, pretty = axis_labels(model.dim)
    p_ss = theory.stationary_cov(model)
    s = list(plane)
    x, y = (0.5 * (e[1:] + e[:-1]) for e in edges)
    return Movie(times=times, steps=times / model.hyper.lr, x=x, y=y, density=density,
                 current=current, exact_mean=exact[0], exact_cov=exact[1],
                 centre=model.stationary_mean[s], scale=np.sqrt(np.diag(p_ss)[s]),
                 labels=(pretty[s[0]], pretty[s[1]]), source=source)


def exact_movie(case, model, n_frames, plane=(0, 1), t_final=None, cells=None):
    """Frames of the exact Gaussian transient from :func:`initial_state` on ``plane``.

    The plane box is the case's grid box (stationary ± width sd, widened to hold the start
    and the path between); ``cells`` per plane axis defaults to the case's grid.
    """
    mean0, cov0 = initial_state(case, model)
    times = _frame_times(model, n_frames, t_final)
    grid = sized_grid(case.grid.cells, (model.stationary_mean, theory.stationary_cov(model)),
                      width=case.grid.width, bounds=case.grid.bounds, initial=(mean0, cov0),
                      force=case.grid.force,
                      path=theory.transient_path(model, mean0, cov0, times[-1]))
    s = list(plane)
    edges = [grid.edges[a] for a in s]
    if cells is not None:
        edges = [np.linspace(e[0], e[-1], cells + 1) for e in edges]
    centres = np.stack(np.meshgrid(*[0.5 * (e[1:] + e[:-1]) for e in edges], indexing="ij"),
                       axis=-1)
    exact = _exact_marginals(model, mean0, cov0, times, plane)
    density, current = [], []
    for t in times:
        m, c = theory.transient_moments(model, mean0, cov0, t)
        density.append(theory.gaussian_cell_averages(m[s], c[np.ix_(s, s)], edges))
        current.append(np.moveaxis(plane_current(model, m, c, plane, centres), -1, 0))
    return _movie(model, times, edges, np.array(density), np.array(current), exact, plane,
                  "exact")


def solver_movie(case, model, n_frames, plane=(0, 1), t_final=None, cells=None,
                 progress=True):
    """Frames of the finite-volume solver (:mod:`fpsolver.solve`) from :func:`initial_state`.

    The solver runs on the case's grid (``cells`` per axis overrides grid.cells) from the
    cell averages of the initial Gaussian, one :func:`~fpsolver.solve.evolve` call per
    frame interval; density and current (the scheme's own face fluxes) are marginalised on
    ``plane``.
    """
    from tqdm import tqdm

    from .solve import evolve, setup_problem

    mean0, cov0 = initial_state(case, model)
    times = _frame_times(model, n_frames, t_final)
    run_case = case.replace(run={"t_final": float(times[-1]),
                                 "initial_mean": tuple(float(v) for v in mean0)})
    problem = setup_problem(run_case, model, cells)
    grid, op = problem.grid, problem.op
    s = list(plane)
    p = problem.p0
    density, current = [], []
    for j in tqdm(range(n_frames), desc="solving", unit="frame", disable=not progress):
        if j > 0:
            p = evolve(op, p, times[j] - times[j - 1]).p
        density.append(plots.plane_marginal(p, s, grid.spacing))
        flux = op.current(p)
        current.append([plots.plane_marginal(flux[a], s, grid.spacing) for a in s])
    exact = _exact_marginals(model, mean0, cov0, times, plane)
    edges = [grid.edges[a] for a in s]
    return _movie(model, times, edges, np.array(density), np.array(current), exact, plane,
                  "solver")


# ------------------------------------------------------------------ rendering


def _figure(size, dpi):
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    gs = fig.add_gridspec(2, 2, width_ratios=(4, 1), height_ratios=(1, 4), wspace=0.05,
                          hspace=0.05, left=0.12, right=0.97, bottom=0.12, top=0.97)
    main = fig.add_subplot(gs[1, 0])
    top = fig.add_subplot(gs[0, 0], sharex=main)
    right = fig.add_subplot(gs[1, 1], sharey=main)
    label = fig.add_subplot(gs[0, 1])
    label.axis("off")
    top.tick_params(labelbottom=False, labelleft=False)
    right.tick_params(labelleft=False, labelbottom=False)
    return fig, main, top, right, label


class _Renderer:
    """Draws frame j of a movie into one figure (marginals update in place)."""

    def __init__(self, movie, size, dpi=100):
        self.movie = movie
        self.fig, self.main, top, right, label = _figure(size, dpi)
        m = movie
        self.mx, self.my = (np.array([plots.marginal(p, (m.x, m.y), k) for p in m.density])
                            for k in (0, 1))
        self.fine_x = np.linspace(m.x[0], m.x[-1], 200)
        self.fine_y = np.linspace(m.y[0], m.y[-1], 200)
        (self.line_x,) = top.plot(m.x, self.mx[0], color="tab:blue", lw=1.5)
        (self.exact_x,) = top.plot(self.fine_x, np.zeros_like(self.fine_x), "k--", lw=0.8)
        (self.line_y,) = right.plot(self.my[0], m.y, color="tab:blue", lw=1.5)
        (self.exact_y,) = right.plot(np.zeros_like(self.fine_y), self.fine_y, "k--", lw=0.8)
        top.set_ylim(0, 1.05 * self.mx.max())
        right.set_xlim(0, 1.05 * self.my.max())
        self.text = label.text(0.05, 0.5, "", fontsize=10, va="center", family="monospace")
        self.vmax = float(m.density.max())

    def draw(self, j):
        from scipy.stats import norm

        m = self.movie
        self.main.cla()
        plots.density_current(m.x, m.y, m.density[j], (m.current[j, 0], m.current[j, 1]),
                              ax=self.main, vmax=self.vmax, gamma=0.5, mask_below=MASK_BELOW,
                              labels=m.labels)
        self.main.plot(*m.centre, "w+", ms=8)
        self.line_x.set_ydata(self.mx[j])
        self.line_y.set_xdata(self.my[j])
        mean, cov = m.exact_mean[j], m.exact_cov[j]
        self.exact_x.set_ydata(norm.pdf(self.fine_x, mean[0], np.sqrt(cov[0, 0])))
        self.exact_y.set_xdata(norm.pdf(self.fine_y, mean[1], np.sqrt(cov[1, 1])))
        self.text.set_text(f"k = {m.steps[j]:.0f}\nt = {m.times[j]:.2f}\n{m.source}")
        with np.errstate(under="ignore"):  # the colour norm of densities ~1e-300 in the tails
            self.fig.canvas.draw()
        return np.asarray(self.fig.canvas.buffer_rgba())[..., :3].copy()


def ffmpeg_executable():
    """An ``ffmpeg`` program: the one on the PATH, else imageio-ffmpeg's bundled binary
    (a dependency), else None."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None


def ffmpeg_available():
    """Whether an ``ffmpeg`` program can be run (:func:`ffmpeg_executable`)."""
    return ffmpeg_executable() is not None


def output_format(path):
    """(path actually written, writer): MP4 via ffmpeg, or GIF via Pillow (also for an .mp4
    request when ffmpeg is missing, with the suffix changed to .gif)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise UserError(f"--out must end in .gif or .mp4, got {path.name!r}")
    if suffix == ".mp4" and ffmpeg_available():
        return path, "ffmpeg"
    return path.with_suffix(".gif"), "pillow"


def render(movie, path, fps=12.0, size=(800, 600), progress=True):
    """Draw every frame and write ``path``; returns (path written, "ffmpeg" | "pillow").

    ``size``: frame width and height in pixels. Written atomically (temporary name, then
    renamed).
    """
    import matplotlib.pyplot as plt
    from tqdm import tqdm

    from .io import atomic_replace

    path, writer = output_format(path)
    font = max(5.0, 9.0 * min(size[0] / 640, size[1] / 480))
    with plt.rc_context({"font.size": font}):
        renderer = _Renderer(movie, size)
        frames = (renderer.draw(j) for j in tqdm(range(movie.n_frames), desc="rendering",
                                                   unit="frame", disable=not progress))
        try:
            with atomic_replace(path) as tmp:
                if writer == "ffmpeg":
                    _write_mp4(renderer.fig, frames, tmp, fps)
                else:
                    _write_gif(frames, tmp, fps)
        finally:
            plt.close(renderer.fig)
    return path, writer


def _write_gif(frames, path, fps):
    from PIL import Image

    images = [Image.fromarray(f).quantize(colors=256, method=Image.Quantize.MEDIANCUT)
              for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                   duration=round(1000 / fps), loop=0, optimize=False)


def _write_mp4(fig, frames, path, fps):
    from matplotlib.animation import FFMpegWriter

    import matplotlib

    with matplotlib.rc_context({"animation.ffmpeg_path": ffmpeg_executable()}):
        writer = FFMpegWriter(fps=fps, extra_args=["-pix_fmt", "yuv420p", "-f", "mp4"])
        with writer.saving(fig, str(path), dpi=fig.dpi):
            for _ in frames:  # each frame is drawn on the figure the writer grabs
                writer.grab_frame()
