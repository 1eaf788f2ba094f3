"""Time stepping of the finite-volume Fokker-Planck operator, run control and problem setup.

Stationary solves live in :mod:`fpsolver.stationary`.

* :func:`evolve`: explicit SSP-RK3 (Shu-Osher) with a fixed step dt = t_final/n, n the
  least number of steps with dt ≤ safety/rate_max (rate_max: :meth:`FPOperator.max_rate`,
  the forward-Euler positivity bound, which SSP-RK3 inherits). A forced dt above the bound
  is refused (:class:`UnstableError`). Trackers run on a step schedule; a checkpoint holds
  (p, step, dt) so a resumed run repeats the same steps and ends at the same answer.
  ``scheme="implicit"`` (2-D): the linearly implicit two-stage Rosenbrock-W method ROS2
  (Verwer et al. 1999, γ = 1 + 1/√2), (I − γΔtW)k₁ = L(pₙ), (I − γΔtW)k₂ =
  L(pₙ + Δt k₁) − 2k₁, pₙ₊₁ = pₙ + Δt(3k₁ + k₂)/2, with L the limited scheme. It is
  second order for *any* matrix W, so W is the constant first-order matrix (upwind
  advection, central diffusion: the Jacobian at a constant p) and one sparse LU serves
  the whole run (a resumed run refactorises the same matrix: same answer). The exact,
  state-dependent Jacobian of the limited scheme was no better (same error at Δt = 10×
  the explicit bound, 75 ms per LU at 128²) and reusing it over steps was unstable. W
  makes diffusion and upwind advection implicit; the MUSCL correction L − W is explicit.
  The columns of W and the values of L sum to zero (conservative fluxes), so
  1ᵀk₁ = 1ᵀk₂ = 0 and every step keeps the mass to round-off. Its default step comes from
  accuracy, not the CFL bound: Δt ≤ safety·min(ACCURACY/max|Im λ|, RELAXATION/max|λ|),
  λ the eigenvalues of A; "auto" takes it when that is STIFF_RATIO times the explicit
  step (tiny v cells, strong friction).
  Default case 128², t = 3: Δt = 6.7× the explicit one, 2.2 s instead of 5.1 s, L1 1.41e-3
  vs 1.36e-3; plain SGD η = 0.01, 64²: Δt = 52× the explicit bound, 21× faster. Not
  positive: the explicit MUSCL correction undershoots (min/max −3.6e-3 at the default step
  on the default case at 64², −3e-4 on the stiff case, −2.6e-2 at 16× the explicit bound).
"""

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from .errors import SolverError, UnstableError, UserError
from .fv import FPOperator, jacobian_matrix
from .grid import sized_grid
from .io import atomic_savez


@dataclass
class SolveResult:
    """Outcome of a run: density ``p`` (grid shape), time ``t`` (None: stationary), why it
    stopped (``status``: "t_final", "steady", "converged", "max_iter"), counters, and the
    residual ‖Lp‖₁ (1/time) with its value relative to the operator's rate bound."""

    p: np.ndarray
    t: float | None
    success: bool
    status: str
    message: str
    n_steps: int = 0
    n_rhs: int = 0
    n_iter: int = 0
    dt: float | None = None
    residual: float = math.nan
    residual_rel: float = math.nan
    mass_error: float = math.nan
    min_density: float = math.nan
    wall_time_s: float = 0.0
    history: dict = field(default_factory=dict)


@dataclass
class State:
    """What trackers see: density p (flat), time t, step counter, step dt, the operator."""

    p: np.ndarray
    t: float
    step: int
    n_steps: int
    dt: float
    op: FPOperator


class Tracker:
    """Called every ``interval`` steps; ``handle`` returns a stop status or None."""

    def __init__(self, interval=1):
        self.interval = max(1, int(interval))

    def start(self, state):
        """Called once before the first step."""

    def handle(self, state):
        """Called on the schedule; may return a status string to stop the run."""

    def finish(self, state):
        """Called once at the end (also on interruption)."""


class ProgressTracker(Tracker):
    """tqdm progress bar over the steps (disabled when ``enabled`` is False)."""

    def __init__(self, interval=10, enabled=True):
        super().__init__(interval)
        self.enabled = enabled
        self.bar = None

    def start(self, state):
        from tqdm import tqdm
        self.bar = tqdm(total=state.n_steps, initial=state.step, disable=not self.enabled,
                        unit="step", leave=False)

    def handle(self, state):
        self.bar.update(state.step - self.bar.n)
        self.bar.set_postfix(t=f"{state.t:.3g}")

    def finish(self, state):
        if self.bar is not None:
            self.bar.close()


class ConservationTracker(Tracker):
    """Mass drift and minimum density; raises SolverError when the density stops being finite."""

    def __init__(self, interval=1):
        super().__init__(interval)
        self.mass0 = None
        self.max_mass_error = 0.0
        self.min_rel = math.inf

    def start(self, state):
        self.mass0 = state.p.sum() * state.op.grid.cell_volume
        self.handle(state)

    def handle(self, state):
        p = state.p
        mass = p.sum() * state.op.grid.cell_volume
        if not math.isfinite(mass):
            raise SolverError(f"the density became NaN/inf at t = {state.t:.6g} (step "
                              f"{state.step}); lower run.dt or run.safety")
        self.max_mass_error = max(self.max_mass_error, abs(mass - self.mass0) / self.mass0)
        self.min_rel = min(self.min_rel, p.min() / p.max())


class SteadyStateTracker(Tracker):
    """Stops with "steady" when ‖∂_t p‖₁/rate_max < tol (checked every ``interval`` steps)."""

    def __init__(self, tol, interval=50):
        super().__init__(interval)
        self.tol = tol
        self.residual_rel = math.nan

    def handle(self, state):
        op = state.op
        res = np.abs(op.rate(state.p)).sum() * op.grid.cell_volume
        self.residual_rel = res / op.max_rate()
        return "steady" if self.residual_rel < self.tol else None


class StorageTracker(Tracker):
    """Keeps (t, copy of p) every ``interval`` steps in ``times``/``densities``."""

    def __init__(self, interval):
        super().__init__(interval)
        self.times, self.densities = [], []

    def start(self, state):
        self.handle(state)

    def handle(self, state):
        self.times.append(state.t)
        self.densities.append(state.p.reshape(state.op.shape).copy())


class CheckpointTracker(Tracker):
    """Writes ``path`` (npz: p, t, step, n_steps, dt, key) atomically every ``every_s``
    seconds of wall time and when the run is interrupted; ``key`` identifies the problem."""

    def __init__(self, path, key, every_s=30.0, interval=1):
        super().__init__(interval)
        self.path, self.key, self.every_s = Path(path), str(key), every_s
        self.last = time.monotonic()

    def write(self, state):
        atomic_savez(self.path, p=state.p.reshape(state.op.shape), t=state.t, step=state.step,
                     n_steps=state.n_steps, dt=state.dt, key=self.key)
        self.last = time.monotonic()

    def handle(self, state):
        if time.monotonic() - self.last >= self.every_s:
            self.write(state)


def load_checkpoint(path, key):
    """(p, step, n_steps, dt) from a checkpoint written for the problem ``key``."""
    try:
        with np.load(path) as f:
            data = {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read checkpoint {path}: {exc}") from None
    if str(data["key"]) != str(key):
        raise UserError(f"checkpoint {path} belongs to another case/grid; rerun without --resume")
    return data["p"].ravel().copy(), int(data["step"]), int(data["n_steps"]), float(data["dt"])


def step_size(op, t_final, dt=None, safety=0.8):
    """(dt, n_steps): the fixed step landing on t_final; refuses forced dt above the bound."""
    if not t_final > 0:
        raise UserError(f"run.t_final must be > 0, got {t_final}")
    dt_max = 1.0 / op.max_rate()
    if dt is None:
        dt = safety * dt_max
    elif dt > dt_max * (1 + 1e-12):
        raise UnstableError(f"run.dt = {dt:.4g} exceeds the stable step {dt_max:.4g} "
                            "of this grid (positivity bound)")
    n_steps = max(1, math.ceil(t_final / dt - 1e-9))
    return t_final / n_steps, n_steps


ROS2_GAMMA = 1.0 + 1.0 / math.sqrt(2.0)
ACCURACY = 0.02  # implicit default step: radians of the fastest rotation per step ...
RELAXATION = 0.5  # ... and e-folds of the fastest relaxation per step
STIFF_RATIO = 50.0  # "auto" steps implicitly when the explicit step is this much smaller


def implicit_step_size(op, t_final, dt=None, safety=0.8):
    """(dt, n_steps) of the implicit scheme: forced ``dt`` or safety·:func:`_accuracy_step`."""
    if not t_final > 0:
        raise UserError(f"run.t_final must be > 0, got {t_final}")
    if op.grid.ndim != 2:
        raise UserError('run.scheme = "implicit": implicit stepping is 2-D only (d = 1); '
                        'use "explicit" for 4-D cases')
    if dt is None:
        dt = safety * _accuracy_step(op)
    elif not dt > 0:
        raise UserError(f"run.dt must be > 0, got {dt}")
    n_steps = max(1, math.ceil(t_final / dt - 1e-9))
    return t_final / n_steps, n_steps


def _accuracy_step(op):
    """Longest implicit step that accuracy allows (time): ACCURACY radians of the fastest
    rotation max|Im λ| and RELAXATION e-folds of the fastest mode max|λ| per step (λ the
    eigenvalues of A; strong friction makes max|λ| ≈ (1−β)/m large, rotation-free)."""
    lam = np.linalg.eigvals(op.drift)
    rot = float(np.max(np.abs(lam.imag)))
    return min(ACCURACY / rot if rot > 0 else math.inf,
               RELAXATION / float(np.max(np.abs(lam))))


def choose_scheme(op, scheme):
    """Resolve run.scheme: "auto" → "implicit" on 2-D grids whose explicit step bound
    1/rate_max is STIFF_RATIO times smaller than the implicit accuracy step, else
    "explicit"."""
    if scheme != "auto":
        return scheme
    if op.grid.ndim != 2:
        return "explicit"
    gain = _accuracy_step(op) * op.max_rate()
    return "implicit" if gain >= STIFF_RATIO else "explicit"


class _Ros2:
    """ROS2 steps p → out with one LU of I − γΔtW, W the first-order matrix."""

    def __init__(self, op, dt):
        self.op, self.dt = op, dt
        w = jacobian_matrix(op, np.ones(op.size))
        m = sp.identity(op.size, format="csr") - (ROS2_GAMMA * dt) * w
        self.lu = spla.splu(m.tocsc(), permc_spec="COLAMD")

    def __call__(self, p, out):
        op, dt = self.op, self.dt
        k1 = self.lu.solve(op.rate(p))
        k2 = self.lu.solve(op.rate(p + dt * k1) - 2.0 * k1)
        out[:] = p + dt * (1.5 * k1 + 0.5 * k2)


def _ssp_rk3(op, p, dt, k, stage, out):
    """One Shu-Osher SSP-RK3 step p → out (flat arrays, in place: no allocation per step).

    ``k`` and ``stage`` are scratch arrays of p's size (4-D grids hold 10⁷ cells).
    """
    op.rate(p, out=k)
    np.multiply(k, dt, out=stage)
    stage += p                                   # p1 = p + Δt L(p)
    op.rate(stage, out=k)
    k *= dt
    stage += k
    stage *= 0.25
    np.multiply(p, 0.75, out=out)
    stage += out                                 # p2 = ¾p + ¼(p1 + Δt L(p1))
    op.rate(stage, out=k)
    k *= dt
    stage += k
    stage *= 2.0 / 3.0
    np.multiply(p, 1.0 / 3.0, out=out)
    out += stage                                 # p3 = ⅓p + ⅔(p2 + Δt L(p2))


@np.errstate(under="ignore")  # far-tail densities ~1e-300 flush to zero
def evolve(op, p0, t_final, dt=None, safety=0.8, trackers=(), checkpoint=None, resume=None,
           scheme="explicit"):
    """Integrate ∂_t p = Lp from p0 (grid shape) to t_final with SSP-RK3 (``scheme``
    "explicit") or ROS2 ("implicit", 2-D; "auto": :func:`choose_scheme`).

    ``checkpoint``: a CheckpointTracker (written on schedule and on Ctrl-C, which then
    re-raises KeyboardInterrupt); ``resume``: (p, step, n_steps, dt) from
    :func:`load_checkpoint`. Returns a SolveResult
    (``history["scheme"]``: the scheme used).
    """
    start = time.perf_counter()
    if scheme not in ("auto", "explicit", "implicit"):
        raise UserError(f'run.scheme must be "auto", "explicit" or "implicit", got {scheme!r}')
    scheme = choose_scheme(op, scheme)
    sizer = implicit_step_size if scheme == "implicit" else step_size
    if resume is None:
        dt, n_steps = sizer(op, t_final, dt, safety)
        p, step = np.array(p0, dtype=float).ravel(), 0
    else:
        p, step, n_steps, dt = resume
    ros2 = _Ros2(op, dt) if scheme == "implicit" else None
    trackers = list(trackers) + ([checkpoint] if checkpoint is not None else [])
    cons = next((t for t in trackers if isinstance(t, ConservationTracker)), None)
    if cons is None:
        cons = ConservationTracker(interval=max(1, n_steps // 100))
        trackers.append(cons)
    state = State(p, step * dt, step, n_steps, dt, op)
    k, stage, out = np.empty_like(p), np.empty_like(p), np.empty_like(p)
    status = "t_final"
    for tr in trackers:
        tr.start(state)
    try:
        while state.step < n_steps:
            if ros2 is None:
                _ssp_rk3(op, state.p, dt, k, stage, out)
            else:
                ros2(state.p, out)
            state.p, out = out, state.p
            state.step += 1
            state.t = state.step * dt
            stop = None
            for tr in trackers:
                if state.step % tr.interval == 0 or state.step == n_steps:
                    stop = tr.handle(state) or stop
            if stop:
                status = stop
                break
    except KeyboardInterrupt:
        if checkpoint is not None:
            checkpoint.write(state)
        raise
    finally:
        for tr in trackers:
            tr.finish(state)
    cons.handle(state)
    vol = op.grid.cell_volume
    res = np.abs(op.rate(state.p)).sum() * vol
    mass = state.p.sum() * vol
    msg = ("reached t_final" if status == "t_final" else
           f"stopped at t = {state.t:.6g}: {status} (tracker)")
    return SolveResult(p=state.p.reshape(op.shape), t=state.t, success=True, status=status,
                       message=msg, n_steps=state.step,
                       n_rhs=(3 if ros2 is None else 2) * (state.step - step), dt=dt,
                       residual=res, residual_rel=res / op.max_rate(),
                       mass_error=abs(mass - cons.mass0) / cons.mass0,
                       min_density=float(state.p.min()),
                       wall_time_s=time.perf_counter() - start,
                       history={"max_mass_error": cons.max_mass_error,
                                "min_density_rel": cons.min_rel, "scheme": scheme})


# ------------------------------------------------------------------ cases


@dataclass
class Problem:
    """A case turned into numbers: model, grid, operator, initial density (None when
    stationary), initial/stationary Gaussians (mean, cov) and t_final."""

    model: object
    grid: object
    op: FPOperator
    p0: np.ndarray | None
    t_final: float | None
    initial: tuple | None
    stationary: tuple


@np.errstate(under="ignore")  # far-tail cell averages flush to zero
def setup_problem(case, model=None, cells=None):
    """Problem for ``case``: grid sized from the stationary covariance (and the initial
    Gaussian N(initial_mean, initial_cov_scale·P) for transients), operator, initial cell
    averages normalised to mass 1. ``cells`` overrides case.grid.cells."""
    from . import theory
    from .sgd import build_model
    model = build_model(case) if model is None else model
    if model.dim > 2:
        raise UserError(f"the Fokker-Planck solver needs d <= 2 parameters, the case has "
                        f"{model.dim} (loss.hessian)")
    n = 2 * model.dim
    cov_ss = theory.stationary_cov(model)
    stat = (model.stationary_mean, cov_ss)
    run = case.run
    initial = None
    if run.t_final is not None:
        if not run.t_final > 0:
            raise UserError(f"run.t_final must be > 0, got {run.t_final}")
        mean0 = np.zeros(n) if run.initial_mean is None else np.asarray(run.initial_mean, float)
        initial = (mean0, run.initial_cov_scale * cov_ss)
    cells = case.grid.cells if cells is None else cells
    cells = tuple(np.broadcast_to(np.asarray(cells, dtype=int), (n,)))
    grid = sized_grid(cells, stat, width=case.grid.width or 6.0, bounds=case.grid.bounds,
                      initial=initial, force=case.grid.force)
    op = FPOperator(grid, model.drift, model.diffusion, model.stationary_mean)
    p0 = None
    if initial is not None:
        p0 = theory.gaussian_cell_averages(initial[0], initial[1], grid.edges)
        p0 /= p0.sum() * grid.cell_volume
    return Problem(model, grid, op, p0, run.t_final, initial, stat)
