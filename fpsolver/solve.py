"""Time stepping of the finite-volume Fokker-Planck operator, run control and problem setup.

Stationary solves live in :mod:`fpsolver.stationary`.

* :func:`evolve`: explicit SSP-RK(25,3) with a fixed step dt = t_final/n, n the least
  number of steps with dt ≤ safety·20/rate_max (safety 1 unless run.safety says otherwise,
  EXPLICIT_SAFETY), halved while its error on the exact moments at t_final exceeds
  TIME_TOL (1/rate_max: :meth:`FPOperator.max_rate`,
  the forward-Euler positivity bound; SSP-RK(n², 3) is n² forward-Euler stages of
  dt/(n² − n), so positive up to n² − n times it: n/(n − 1) rate evaluations per
  1/rate_max of simulated time, 1.25 with n = 5, where SSP-RK(9,3) took 1.5, SSP-RK(4,3)
  2 and SSP-RK3 3; default transient 96², SSP-RK3 2575 steps, SSP-RK(4,3) 1288
  (single-pass stages: 0.117 → 0.068 s), SSP-RK(9,3) 430 (0.049 s), the same L1 each;
  benchmark transient 48², SSP-RK(9,3) 196 steps = 1764 rate evaluations, SSP-RK(25,3)
  59 = 1475, same L1 to four digits). A forced dt above the bound is refused
  (:class:`UnstableError`). Multiples of "the explicit bound" below are of 1/rate_max
  (measured with SSP-RK3). Trackers run on a step schedule; a checkpoint holds
  (p, step, dt) so a resumed run repeats the same steps and ends at the same answer.
  ``scheme="implicit"``: the linearly implicit two-stage Rosenbrock-W method ROS2
  (Verwer et al. 1999, γ = 1 + 1/√2), (I − γΔtW)k₁ = L(pₙ), (I − γΔtW)k₂ =
  L(pₙ + Δt k₁) − 2k₁, p_H = pₙ + Δt(3k₁ + k₂)/2, with L the limited scheme, made positive
  by flux-corrected transport. ROS2 is second order for *any* matrix W, so W is the
  constant first-order matrix (upwind advection, central diffusion: the Jacobian at a
  constant p); W makes diffusion and upwind advection implicit, the MUSCL correction L − W
  is explicit. (The exact, state-dependent Jacobian was no better: same error at Δt = 10×
  the explicit bound, 75 ms per LU at 128²; reusing it over steps was unstable.)
  Linear solves: 2-D, one sparse LU of each matrix for the whole run (a resumed run
  refactorises the same matrices: same answer); 4-D, GMRES on the matrix-free W
  (``op.jacobian_apply(1, ·)``) preconditioned by the approximate factorisation
  Π_k (I − τT_k)⁻¹ (line solves), to relative residual 1e-6 (stages) and 1e-10 (low order).
  Positivity (Kuzmin-Turek implicit FCT, Zalesak's limiter with lower bound 0): ROS2 is
  rewritten as p_H = pₙ − Δt∇·F_H with face fluxes F_H = ½[F(pₙ) + F(pₙ + Δt k₁)] +
  ½γΔt F_W(k₁ + k₂) (F the limited scheme's, F_W the first-order ones; this is
  k = L + γΔtWk in flux form). The low-order step is backward Euler, (I − ΔtW)p_L = pₙ, an
  M-matrix step (positive for any Δt, 2-D and diagonal D), written p_L = pₙ − Δt∇·F_W(p_L).
  The antidiffusive fluxes F_H − F_W(p_L) are scaled face by face so that no cell loses
  more than its low-order density: pₙ₊₁ = p_L − Δt∇·(α(F_H − F_L)) ≥ 0, α = 1 (pure
  ROS2) wherever that already holds. Everything is in flux form, so the mass is kept to
  round-off whatever the linear solvers' residuals.
  Its default step comes from accuracy, not the CFL bound: Δt ≤ safety·min(ACCURACY/
  max|Im λ|, RELAXATION/max|λ|, MAX_IMPLICIT_COURANT/max|b_k|/h_k), λ the eigenvalues of
  A, halved until ROS2's error on the exact moment dynamics from p0 to t_final is
  ≤ TIME_TOL (:mod:`fpsolver.time_error`; a narrow Gaussian 9 standard deviations from
  equilibrium, stopped within its fast relaxation, needed 1/4 of the step: difference to
  the explicit run 1.7e-2 → 1.9e-3 at 64²); "auto" takes it when that is STIFF_RATIO
  (2-D) or KRYLOV_STIFF_RATIO (4-D) times the explicit step.
  Measured on the default case, displaced narrow Gaussian N((0.25, 0), P/4), 64², t = 3:
  min/max of unlimited ROS2 −2.4e-12 at the default step, −3.8e-8 at 10× the explicit
  bound (−2.6e-3 and −1.8e-2 with κ = 1/3 face values on the v axis); limited never below
  −1e-12 at both, mass 4e-16; L1 vs the exact Gaussian 1.081e-3 (unlimited 1.055e-3,
  explicit 9.75e-4) at the default step, 5.81e-3 (unlimited 4.66e-3) at 10×. Time order against a converged explicit run: 2.03, 2.13
  over Δt = 0.01 → 0.005 → 0.0025. With the second-order (TVD) scheme before (time
  errors and step sizes as now): 1.81 over 0.02 → 0.01, where the limiter corrects an
  undershoot of −2.6e-2; the limiter's L1 change, summed over the run (history
  "limiter_l1"), vanishes fast as Δt falls: 0.11 (Δt = 16× the explicit bound), 7.5e-3
  (default, 3×), 2.2e-3 (2×), 1.1e-4 (1×), 2.1e-6 (½×); 4-D §13 16⁴: 1.9e-4 (1.5×),
  3.0e-6 (0.37×). Cost per step (one core): 128², 1.6 ms (3 LU solves of 0.35 ms,
  4 kernel sweeps, limiter 0.2 ms; unlimited ROS2 with COLAMD LUs took 2.0 ms), explicit
  0.12 ms: at the default case's Δt = 6.9× the explicit one 1.36 s vs 0.84 s (L1 1.44e-3 vs
  1.36e-3), so "auto" stays explicit; plain SGD η = 0.01, 64²: Δt = 52× the explicit
  bound, 0.07 s vs 0.43 s before the Courant cap (difference to explicit 3.3e-3), 18×
  and 0.9-1.8× the explicit speed with it (1.1e-3; benchmarks/results/solver.json).
  4-D (§13 model, 16⁴): orders 1.84, 1.91, min/max ≥ −1.4e-14 (unlimited −1.2e-5). GMRES
  needs 5-8 products per solve on the §13 case but 30 (16⁴) to 59 (32⁴) on stiff ones
  (plain SGD η = 0.01: the two v axes are both stiff and cross-diffused, which the
  line-by-line factorisation misses). 32⁴ per step: §13 0.84 s vs 24 ms explicit (Δt 2.9×
  the explicit one: 8.8× slower), stiff 5.7 s vs 22 ms (Δt 42×: 4.9× slower; min/max
  −6e-13); hence KRYLOV_STIFF_RATIO. (An exact LU of the (v₁, v₂)-plane blocks as preconditioner cut the
  stiff 32⁴ count from 43 to 6 products, but its 0.115 s solves made it only 1.4× faster.)
"""

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from .analysis import moments
from .errors import GridError, SolverError, UnstableError, UserError
from .fv import FPOperator, jacobian_matrix, sparse_lu
from .fv.kernels import SSP_COEFFICIENT, SSP_STAGES
from .fv.policy import physical_memory_bytes, single_threaded_blas
from .grid import sized_grid
from .io import atomic_savez, read_checkpoint
from .time_error import moment_error, moment_generator, ros2_step_matrix, ssp_step_matrix


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

    def advance(self, p, steps):
        """The run moved ``steps`` steps on to density p."""
        self.p = p
        self.step += steps
        self.t = self.step * self.dt


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
    """Mass drift and minimum density; raises SolverError when the density stops being
    finite. Explicit runs feed it every step's sum, minimum and maximum from the kernel
    (:meth:`record`, whatever the interval); implicit runs call :meth:`handle` on the
    interval."""

    def __init__(self, interval=1):
        super().__init__(interval)
        self.mass0 = None
        self.volume = None
        self.max_mass_error = 0.0
        self.min_rel = math.inf

    def start(self, state):
        self.volume = state.op.grid.cell_volume  # once: a grid property computes it anew
        self.mass0 = state.p.sum() * self.volume
        self.handle(state)

    def handle(self, state):
        p = state.p
        self.record(state.step - 1, state.dt, np.array([[p.sum(), p.min(), p.max()]]))

    def record(self, step0, dt, stats):
        """Steps step0 + 1, step0 + 2, … of length dt ended with densities of sum, minimum
        and maximum ``stats`` (steps, 3)."""
        mass = stats[:, 0] * self.volume
        bad = ~np.isfinite(mass)
        if bad.any():
            step = step0 + 1 + int(np.argmax(bad))
            raise SolverError(f"the density became NaN/inf at t = {step * dt:.6g} (step "
                              f"{step}); lower run.dt or run.safety")
        self.max_mass_error = max(self.max_mass_error,
                                  float(np.abs(mass - self.mass0).max()) / self.mass0)
        self.min_rel = min(self.min_rel, float((stats[:, 1] / stats[:, 2]).min()))


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
    seconds of wall time and when the run is interrupted; ``key`` identifies the problem.

    ``interval``: steps between its checks of the clock; None (default) sets it at every
    check to the steps the run makes in about every_s/CHECKS_PER_PERIOD seconds at its pace
    so far, so that a checkpoint is late by at most about that, while explicit runs still
    advance many steps per kernel call (checked every step, the command's runs made one
    call per step: default case from (1, 0) to t = 5 with the command's trackers, 44² in
    131 steps 14.8 → 11.5 ms, 64² 51.5 → 45.9 ms, 128² 217 → 205 ms)."""

    CHECKS_PER_PERIOD = 10

    def __init__(self, path, key, every_s=30.0, interval=None):
        super().__init__(1 if interval is None else interval)
        self.path, self.key, self.every_s = Path(path), str(key), every_s
        self.adaptive = interval is None
        self.last = time.monotonic()
        self.checked = None  # (step, time) of the last check

    def write(self, state):
        atomic_savez(self.path, p=state.p.reshape(state.op.shape), t=state.t, step=state.step,
                     n_steps=state.n_steps, dt=state.dt, key=self.key)
        self.last = time.monotonic()

    def start(self, state):
        self.checked = (state.step, time.monotonic())

    def handle(self, state):
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.write(state)
        if self.adaptive:
            step0, t0 = self.checked
            if state.step > step0 and now > t0:
                pace = (state.step - step0) / (now - t0)  # steps per second
                self.interval = max(1, int(pace * self.every_s / self.CHECKS_PER_PERIOD))
            self.checked = (state.step, now)


def load_checkpoint(path, key):
    """(p, step, n_steps, dt) from a checkpoint written for the problem ``key``."""
    data = read_checkpoint(path, key, ("p", "step", "n_steps", "dt"))
    return data["p"].ravel().copy(), int(data["step"]), int(data["n_steps"]), float(data["dt"])


ROS2_RATES = 2  # rate evaluations per implicit step (at p and at the first stage)


@contextlib.contextmanager
def _interrupts_deferred():
    """Ctrl-C (SIGINT) inside the block takes effect at its end, so that a step and its
    bookkeeping happen together and the checkpoint written on the interrupt is a state the
    run passed through (several explicit steps in one call overwrite p with the states
    between). Only in the main thread, and only where SIGINT raises KeyboardInterrupt
    (ignored or handled elsewhere: left alone)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    caught = []
    signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


def explicit_step_bound(op):
    """Largest positive explicit step (time): SSP_COEFFICIENT/rate_max."""
    return SSP_COEFFICIENT / op.max_rate()


def _check_t_final(t_final):
    if not t_final > 0:
        raise UserError(f"run.t_final must be > 0, got {t_final}")


# run.safety by default: the explicit step is the positivity bound itself (SSP_COEFFICIENT
# forward-Euler stages within 1/rate_max, a strict bound: face values stay below 2p), with
# its time error checked (:func:`step_size`); at the bound it is negligible: the explicit
# validation transients (one period, 64²-256²) changed L1 by ≤ 0.6 % between 0.8 and 1 of
# it, the benchmark transient (44²) by 1e-7 relative between 0.4 and 1, for 19 % fewer
# steps. The implicit step is an accuracy estimate: 0.8 of it (overdamped case at 256²:
# L1 +2.3 % at 1)
EXPLICIT_SAFETY = 1.0
IMPLICIT_SAFETY = 0.8


def _moment_start(op, p0):
    """(G, mean, covariance): the moment ODE y' = Gy and the moments of the initial density
    p0, for the time-error checks (:mod:`fpsolver.time_error`); None without p0."""
    if p0 is None:
        return None
    mean0, cov0 = moments(np.reshape(p0, op.shape), op.grid)
    return moment_generator(op.drift, op.diffusion), mean0, cov0


def _halved_until_accurate(op, start, t_final, step, step_matrix):
    """``step`` (time), halved at most MAX_HALVINGS times until the scheme's error on the
    exact moments at t_final, taking ``step``'s landing steps from ``start``
    (:func:`_moment_start`; None: no check), is at most TIME_TOL; ``step_matrix(G, dt)``:
    the scheme's step on the moment ODE. On one BLAS thread: the OpenBLAS workers these
    small LAPACK calls wake keep spinning for tens of milliseconds, and the numba stages
    after them ran on a shared core (benchmark transient, 44²: 95 ms, 8.3 ms with the
    limit)."""
    if start is None:
        return step
    g, mean0, cov0 = start
    with single_threaded_blas():
        for _ in range(MAX_HALVINGS):
            dt, n_steps = _landing(t_final, step)
            if moment_error(step_matrix(g, dt), g, dt, n_steps, mean0, cov0,
                            op.mean) <= TIME_TOL:
                break
            step /= 2
    return step


def step_size(op, t_final, dt=None, safety=None, p0=None):
    """(dt, n_steps): the fixed explicit step landing on t_final, at most ``safety``
    (default EXPLICIT_SAFETY) times the positivity bound and, given the initial density
    p0, halved until SSP-RK's error on the exact moments at t_final is at most TIME_TOL;
    refuses a forced dt above the bound."""
    return _explicit_steps(op, t_final, dt, safety,
                           None if dt is not None else _moment_start(op, p0))


def _explicit_steps(op, t_final, dt, safety, start):
    """:func:`step_size` with the moments of p0 given as ``start`` (:func:`_moment_start`)."""
    _check_t_final(t_final)
    dt_max = explicit_step_bound(op)
    if dt is not None:
        if dt > dt_max * (1 + 1e-12):
            raise UnstableError(f"run.dt = {dt:.4g} exceeds the stable step {dt_max:.4g} "
                                "of this grid (positivity bound)")
        return _landing(t_final, dt)
    step = (EXPLICIT_SAFETY if safety is None else safety) * dt_max
    return _landing(t_final, _halved_until_accurate(op, start, t_final, step,
                                                    ssp_step_matrix))


def _landing(t_final, step):
    """(dt, n): the fewest equal steps of at most ``step`` that land on t_final."""
    n_steps = max(1, math.ceil(t_final / step - 1e-9))
    return t_final / n_steps, n_steps


ROS2_GAMMA = 1.0 + 1.0 / math.sqrt(2.0)
ACCURACY = 0.02  # implicit default step: radians of the fastest rotation per step ...
RELAXATION = 0.5  # ... and e-folds of the fastest relaxation per step
# "auto" steps implicitly when the accuracy step is this many times 1/rate_max. 2-D,
# measured with SSP-RK(9,3) on plain SGD η = 0.01 (the Courant cap sets the ratio: 42 /
# 55 / 67 at 128² / 192² / 256²): implicit 1.12 / 0.93 / 0.76× the explicit speed (with
# SSP-RK(4,3) break-even was below 50, the threshold then). 4-D GMRES ~420 (210 with
# SSP-RK3: 32⁴ stiff, 42× and 4.9× slower)
STIFF_RATIO = 75.0
KRYLOV_STIFF_RATIO = 450.0
# ROS2's moment error at t_final (standard deviations, time_error.moment_error): ≈ 8e-4 of
# L1 from the time error, below the 2-D spatial error at 128² (1.3e-3 on the default case)
TIME_TOL = 1e-3
MAX_HALVINGS = 30
# ... and Courant number: W lags the second-order advection correction (explicit in ROS2-W),
# and the positivity limiter then falls back to first order. Overdamped validation case
# (plain SGD η = 0.02), L1 excess over the converged step: 128², Courant 28 +65 %, 14
# +4 %, 7 +0 %; 256², Courant 56 +390 %, 28 +19 %, 14 +0.4 % (limiter L1 0.14 → 3e-4)
MAX_IMPLICIT_COURANT = 10.0


def implicit_step_size(op, t_final, dt=None, safety=None, p0=None):
    """(dt, n_steps) of the implicit scheme: forced ``dt`` or ``safety`` (default
    IMPLICIT_SAFETY) times :func:`_accuracy_step` (for the run from p0 to t_final)."""
    return _implicit_steps(op, t_final, dt, safety,
                           None if dt is not None else _moment_start(op, p0))


def _implicit_steps(op, t_final, dt, safety, start):
    """:func:`implicit_step_size` with the moments of p0 given as ``start``."""
    _check_t_final(t_final)
    if dt is None:
        dt = _implicit_safety(safety) * _accuracy_step(op, start, t_final, safety)
    elif not dt > 0:
        raise UserError(f"run.dt must be > 0, got {dt}")
    return _landing(t_final, dt)


def _implicit_safety(safety):
    return IMPLICIT_SAFETY if safety is None else safety


def _accuracy_step(op, start=None, t_final=None, safety=None):
    """Longest implicit step that accuracy allows (time): ACCURACY radians of the fastest
    rotation max|Im λ| and RELAXATION e-folds of the fastest mode max|λ| per step (λ the
    eigenvalues of A; strong friction makes max|λ| ≈ (1−β)/m large, rotation-free), at most
    MAX_IMPLICIT_COURANT cells of advection per step; with the initial density's moments
    ``start`` (:func:`_moment_start`), halved until ROS2's error on the moments at t_final,
    stepping ``safety`` (default IMPLICIT_SAFETY) times it, is at most TIME_TOL
    (:mod:`fpsolver.time_error`: a Gaussian started far from equilibrium, or stopped within
    its fastest relaxation, needs shorter steps than the eigenvalues say)."""
    lam = np.linalg.eigvals(op.drift)
    rot = float(np.max(np.abs(lam.imag)))
    step = min(ACCURACY / rot if rot > 0 else math.inf,
               RELAXATION / float(np.max(np.abs(lam))),
               MAX_IMPLICIT_COURANT / op.max_advection_rate())
    scale = _implicit_safety(safety)
    return _halved_until_accurate(op, start, t_final, scale * step,
                                  lambda g, dt: ros2_step_matrix(g, dt, ROS2_GAMMA)) / scale


def _auto_scheme(op, step):
    """ "implicit" where the implicit accuracy ``step`` is at least STIFF_RATIO (2-D, LU
    solves) or KRYLOV_STIFF_RATIO (4-D, GMRES solves) times the forward-Euler bound
    1/rate_max, else "explicit"."""
    ratio = STIFF_RATIO if op.grid.ndim == 2 else KRYLOV_STIFF_RATIO
    return "implicit" if step * op.max_rate() >= ratio else "explicit"


def choose_scheme(op, scheme, p0=None, t_final=None, safety=None):
    """Resolve run.scheme: "auto" by :func:`_auto_scheme` on the implicit accuracy step (for
    the run from p0 to t_final when given)."""
    if scheme != "auto":
        return scheme
    return _auto_scheme(op, _accuracy_step(op, _moment_start(op, p0), t_final, safety))


def plan_steps(op, p0, t_final, scheme="auto", dt=None, safety=None):
    """(scheme, dt, n_steps) of a run from p0 to t_final: "auto" resolved as
    :func:`choose_scheme` does, the moments of p0 and the accuracy step (moment check
    included) computed once for the choice and the step."""
    start = _moment_start(op, p0) if scheme == "auto" or dt is None else None
    if scheme == "auto":
        _check_t_final(t_final)
        step = _accuracy_step(op, start, t_final, safety)
        scheme = _auto_scheme(op, step)
        if scheme == "implicit" and dt is None:
            dt = _implicit_safety(safety) * step
    steps = _implicit_steps if scheme == "implicit" else _explicit_steps
    plan = (scheme, *steps(op, t_final, dt, safety, start))
    if plan[2] > MAX_STEPS:
        fix = ("a longer run.dt" if dt is not None else
               "a shorter run.t_final or fewer cells" + ("" if plan[0] == "implicit" else
                                                          ', or run.scheme = "implicit"'))
        raise UserError(f"the run would take {plan[2]:.3g} {plan[0]} steps of {plan[1]:.3g} "
                        f"(more than {MAX_STEPS:.0e}): use {fix}")
    return plan


# most time steps a run may plan: beyond, the run is a mistake (run.dt = 1e-300 planned
# 1e300) or would take days (1e8 explicit steps take about an hour even on a 64² grid)
MAX_STEPS = 10 ** 8
# cell updates per explicit kernel call at most (about 0.1-0.3 s here; :func:`evolve`)
MULTI_STEP_CELL_STAGES = 5 * 10 ** 7

KRYLOV_RTOL = 1e-6  # GMRES relative residual of each 4-D stage solve (1e-9: same L1 to 1e-7)
KRYLOV_LOW_RTOL = 1e-10  # ... of the low-order solve, whose residual is the positivity error
KRYLOV_MAXITER = 400  # matrix-vector products per solve before giving up
KRYLOV_RESTART = 20  # GMRES(20): 32⁴ stiff solve 1.55 s (54 products) vs 2.0 s (45) at 40
KRYLOV_MEMORY = 2e9  # bytes of Krylov basis: shorter restarts on the largest grids


class _LuSolve:
    """x = (I − τW)⁻¹ rhs by one sparse LU of the assembled W (2-D grids); ``n_iter`` stays
    0 (direct)."""

    def __init__(self, w, tau):
        # minimum degree on A + Aᵀ (W's pattern is symmetric): 0.41M nonzeros at 128² vs
        # 0.72M with COLAMD, solves 0.35 ms vs 0.91 ms (256²: 2.2 ms vs 7.9 ms)
        self.lu = sparse_lu(sp.identity(w.shape[0], format="csc") - tau * w)
        self.n_solves = self.n_iter = 0

    def __call__(self, rhs):
        self.n_solves += 1
        return self.lu.solve(rhs)


class _KrylovSolve:
    """x = (I − τW)⁻¹ rhs by GMRES (4-D grids), W applied matrix-free, preconditioned by the
    approximate factorisation Π_k (I − τT_k)⁻¹ (one tridiagonal line solve per axis, exact
    for one axis and nearly exact for small τ·rate), to relative residual ``rtol``. The
    step uses the solutions only through face fluxes, so their residual cannot change the
    mass (:class:`_Ros2`)."""

    def __init__(self, op, tau, rtol):
        self.op, self.tau, self.rtol = op, tau, rtol
        n = op.size
        self.a = spla.LinearOperator((n, n), matvec=self._matvec, dtype=float)
        self.m = spla.LinearOperator((n, n), matvec=self._precondition, dtype=float)
        self.restart = int(min(KRYLOV_RESTART, max(10, KRYLOV_MEMORY // (8 * n))))
        self.n_solves = self.n_iter = 0

    def _matvec(self, w):
        self.n_iter += 1
        out = self.op.first_order_apply(w)
        out *= -self.tau
        out += w
        return out

    def _precondition(self, x):
        return self.op.line_factorisation(self.tau, x)

    def __call__(self, rhs):
        self.n_solves += 1
        with single_threaded_blas():
            x, info = spla.gmres(self.a, rhs, rtol=self.rtol, atol=0.0, restart=self.restart,
                                 maxiter=KRYLOV_MAXITER // self.restart, M=self.m)
        if info != 0 or not np.all(np.isfinite(x)):
            raise SolverError(f"GMRES did not reach relative residual {self.rtol:g} in "
                              f"{KRYLOV_MAXITER} products; lower run.dt")
        return x


def _linear_solver(op, w, tau, rtol):
    """Solver of (I − τW)x = rhs: sparse LU of the assembled ``w`` on 2-D grids, GMRES to
    ``rtol`` on 4-D ones (``w`` None)."""
    return _LuSolve(w, tau) if w is not None else _KrylovSolve(op, tau, rtol)


def _positivity_limit(op, anti, low, dt):
    """Scale the antidiffusive face fluxes ``anti`` (ndim, N) in place so that
    low − Δt∇·anti ≥ 0 (Zalesak's limiter with lower bound 0 and no upper bound).

    Every cell may lose at most its low-order density: R = min(1, low⁺/P), P the outflow
    Δt Σ (antidiffusive flux leaving the cell)/h; a face flux is scaled by R of the cell it
    leaves (what enters a cell can only raise it)."""
    shape = op.shape
    out_sum = np.zeros(shape)
    views = []
    for k in range(op.grid.ndim):
        a = np.moveaxis(anti[k].reshape(shape), k, 0)
        o = np.moveaxis(out_sum, k, 0)
        o += np.maximum(a, 0.0) * (dt * op.inv_h[k])       # leaves through the right face
        o[1:] -= np.minimum(a[:-1], 0.0) * (dt * op.inv_h[k])  # ... through the left face
        views.append(a)
    ratio = np.ones(shape)
    np.divide(np.maximum(low.reshape(shape), 0.0), out_sum, out=ratio, where=out_sum > 0.0)
    np.minimum(ratio, 1.0, out=ratio)
    for k, a in enumerate(views):
        r = np.moveaxis(ratio, k, 0)
        donor = np.empty_like(r)
        donor[:-1] = np.where(a[:-1] >= 0.0, r[:-1], r[1:])
        donor[-1] = 1.0  # wall face: its flux is 0
        a *= donor


class _Ros2:
    """Positivity-limited ROS2 steps p → out (module docstring): stage solves with
    I − γΔtW, the low-order backward-Euler solve with I − ΔtW (:func:`_linear_solver`),
    face fluxes from the operator's kernel, the limiter in numpy."""

    def __init__(self, op, dt):
        self.op, self.dt = op, dt
        w = jacobian_matrix(op, None, first_order=True) if op.grid.ndim == 2 else None
        self.stage = _linear_solver(op, w, ROS2_GAMMA * dt, KRYLOV_RTOL)
        self.low = _linear_solver(op, w, dt, KRYLOV_LOW_RTOL)
        self.flux = np.empty((op.grid.ndim, op.size))
        self.anti = np.empty((op.grid.ndim, op.size))
        self.div, self.full = np.empty(op.size), np.empty(op.size)
        self.limited_l1 = 0.0

    def __call__(self, p, out):
        op, dt, anti, flux = self.op, self.dt, self.anti, self.flux
        k1 = self.stage(op.rate(p))
        q = p + dt * k1
        k2 = self.stage(op.rate(q) - 2.0 * k1)
        low = self.low(p)
        # ROS2 in flux form: Δt(1.5k₁ + 0.5k₂) = −Δt∇·F_H with
        # F_H = ½[F(p) + F(p + Δt k₁)] + ½γΔt F_W(k₁ + k₂); low order: F_L = F_W(p_L)
        op.face_fluxes(p, out=anti)
        anti += op.face_fluxes(q, out=flux).reshape(anti.shape)
        anti *= 0.5
        k1 += k2
        k1 *= 0.5 * ROS2_GAMMA * dt
        k1 -= low
        anti += op.face_fluxes(k1, out=flux, first_order=True).reshape(anti.shape)  # F_H − F_L
        op.face_fluxes(low, out=flux, first_order=True)
        np.subtract(p, dt * op.divergence(flux, self.div), out=out)  # low order, conservative
        full = op.divergence(anti, self.full)
        _positivity_limit(op, anti, out, dt)
        div = op.divergence(anti, self.div)
        out -= dt * div
        full -= div
        self.limited_l1 += dt * float(np.abs(full).sum()) * op.grid.cell_volume

    def stats(self):
        """Linear solves, GMRES matrix-vector products (0 for LU) and the L1 distance the
        limiter moved the density from the ROS2 update, summed over the steps, so far."""
        return {"linear_solves": self.stage.n_solves + self.low.n_solves,
                "krylov_products": self.stage.n_iter + self.low.n_iter,
                "limiter_l1": self.limited_l1}


@np.errstate(under="ignore")  # far-tail densities ~1e-300 flush to zero
def evolve(op, p0, t_final, dt=None, safety=None, trackers=(), checkpoint=None, resume=None,
           scheme="explicit"):
    """Integrate ∂_t p = Lp from p0 (grid shape) to t_final with SSP-RK(n², 3) (``scheme``
    "explicit") or positivity-limited ROS2 ("implicit", 2-D and 4-D; "auto":
    :func:`choose_scheme`).

    ``checkpoint``: a CheckpointTracker (written on schedule and on Ctrl-C, which then
    re-raises KeyboardInterrupt); ``resume``: (p, step, n_steps, dt) from
    :func:`load_checkpoint` (pass the first run's p0 with it: "auto" decides on it).
    Returns a SolveResult (``history["scheme"]``: the scheme used; implicit runs add
    "linear_solves", "krylov_products" and "limiter_l1").
    """
    start = time.perf_counter()
    if scheme not in ("auto", "explicit", "implicit"):
        raise UserError(f'run.scheme must be "auto", "explicit" or "implicit", got {scheme!r}')
    if resume is None:
        if not np.all(np.isfinite(p0)):
            raise SolverError("the initial density has NaN or inf cells")
        scheme, dt, n_steps = plan_steps(op, p0, t_final, scheme, dt, safety)
        p, step = np.array(p0, dtype=float).ravel(), 0
    else:
        scheme = choose_scheme(op, scheme, p0, t_final, safety)
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
    # explicit: the steps up to the next tracker event in one kernel call, which records
    # every step's mass and extremes for ``cons``; at most about MULTI_STEP_CELL_STAGES
    # cell updates per call, so that Ctrl-C (seen between calls) still answers promptly
    scheduled = [tr for tr in trackers if ros2 is not None or tr is not cons]
    most = max(1, MULTI_STEP_CELL_STAGES // (op.size * SSP_STAGES))
    try:
        while state.step < n_steps:
            if ros2 is None:
                steps = min([n_steps - state.step, most] +
                            [tr.interval - state.step % tr.interval for tr in scheduled])
                with _interrupts_deferred():  # the steps overwrite p: bookkeeping with them
                    result, stats = op.ssp_rk3_steps(state.p, dt, steps, k, stage, out)
                    if result is out:
                        out = state.p
                    state.advance(result, steps)
                cons.record(state.step - steps, dt, stats)
            else:
                ros2(state.p, out)  # p unchanged: Ctrl-C in a (long, 4-D) step loses it only
                with _interrupts_deferred():
                    p_next, out = out, state.p
                    state.advance(p_next, 1)
            stop = None
            for tr in scheduled:
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
                       n_rhs=(SSP_STAGES if ros2 is None else ROS2_RATES) * state.step, dt=dt,
                       residual=res, residual_rel=res / op.max_rate(),
                       mass_error=abs(mass - cons.mass0) / cons.mass0,
                       min_density=float(state.p.min()),
                       wall_time_s=time.perf_counter() - start,
                       history={"max_mass_error": cons.max_mass_error,
                                "min_density_rel": cons.min_rel, "scheme": scheme,
                                **({} if ros2 is None else ros2.stats())})


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


# peak memory of a run per cell: 4-D stationary solves (Krylov basis, the exact cell
# averages) took 4.25 GB at 64⁴ (254 B/cell; 4 GB with the nested levels before) and 1.5 GB
# at 48⁴ (280, process included); a 128⁴ default grid ran out of memory and was killed
# without a word
PEAK_BYTES_PER_CELL = 300


def _check_memory(cells):
    """Refuse a grid whose run would not fit in the machine's memory."""
    size = math.prod(cells)
    need, have = PEAK_BYTES_PER_CELL * size, physical_memory_bytes()
    if have is not None and need > have:
        raise GridError(f"grid.cells {'x'.join(map(str, cells))} = {size:.3g} cells need "
                        f"about {need / 1e9:.2g} GB, this machine has {have / 1e9:.2g} GB: "
                        "use fewer cells")


# an initial Gaussian is refused when its cell averages need more than this many times the
# Gauss points the grid allows (4-D, 2 points for 8: L1 error 2.5e-2 at s = 0.25 cells
# per sd; at 2 for 4, 3e-3: runs at s = 0.5-1 are under-resolved, warned, but sound)
QUADRATURE_SLACK = 4
# a start this many stationary standard deviations out stretches the box enough to be named
# as the cause when its density is too thin for the grid
FAR_START_SD = 20.0


def _far_start(initial, stationary):
    """", or start nearer: …" when the initial mean lies more than FAR_START_SD stationary
    standard deviations out (the box spans both, so its cells are coarse); else ""."""
    if initial is None:
        return ""
    far = np.max(np.abs(initial[0] - stationary[0]) / np.sqrt(np.diag(stationary[1])))
    if far <= FAR_START_SD:
        return ""
    return (f", or start nearer: run.initial_mean is {far:.3g} stationary standard "
            "deviations from the stationary mean and the box spans both")


def _check_representable(initial, stationary, grid):
    """Refuse an initial Gaussian too thin for its cell averages on this grid
    (:func:`theory.quadrature_order`; a 4-D start 0.002 cells wide had all-zero averages).
    ``initial``, ``stationary``: (mean, cov) pairs."""
    from . import theory
    order, needed = theory.quadrature_order(initial[1], grid.edges)
    if needed > QUADRATURE_SLACK * order:
        s = theory.sd_in_cells(initial[1], grid.spacing)
        raise GridError(f"the initial density's thinnest standard deviation spans {s:.2g} "
                        f"cells, too thin for its cell averages on this {grid.ndim}-D grid "
                        f"(they need {needed} Gauss points per cell axis, {order} fit "
                        "here): raise run.initial_cov_scale"
                        + (" or grid.cells" if grid.ndim == 2 else "")
                        + _far_start(initial, stationary))


# a stationary Gaussian thinner than this many cells per standard deviation (thinnest
# direction) is refused: its cell averages sit in one or two cells, the current is lost
# (grid.bounds of ±1000 with 32 cells gave 3e-4) and errors are of order one; 4-D runs at
# 0.7-1 cells per sd are coarse but sound (L1 0.1-0.3, warned)
MIN_CELLS_PER_SD = 0.25


def _check_resolved(initial, stationary, grid):
    """Refuse a grid on which the stationary density is thinner than MIN_CELLS_PER_SD cells."""
    from . import theory
    s = theory.sd_in_cells(stationary[1], grid.spacing)
    if s < MIN_CELLS_PER_SD:
        raise GridError(f"the stationary density's thinnest standard deviation spans {s:.2g} "
                        f"cells (< {MIN_CELLS_PER_SD:g}): this grid cannot represent it; use "
                        f"more cells or narrower grid.bounds (about "
                        f"{math.ceil(max(grid.shape) * 2 / s)} cells per axis give 2 cells "
                        "per standard deviation)" + _far_start(initial, stationary))


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
        _check_t_final(run.t_final)
        mean0 = np.zeros(n) if run.initial_mean is None else np.asarray(run.initial_mean, float)
        initial = (mean0, run.initial_cov_scale * cov_ss)
    cells = case.grid.cells if cells is None else cells
    cells = tuple(np.broadcast_to(np.asarray(cells, dtype=int), (n,)))
    _check_memory(cells)
    path = None if initial is None else theory.transient_path(model, *initial, run.t_final)
    grid = sized_grid(cells, stat, width=case.grid.width or 6.0, bounds=case.grid.bounds,
                      initial=initial, force=case.grid.force, path=path)
    _check_resolved(initial, stat, grid)
    op = FPOperator(grid, model.drift, model.diffusion, model.stationary_mean)
    p0 = None
    if initial is not None:
        _check_representable(initial, stat, grid)
        p0 = theory.gaussian_cell_averages(initial[0], initial[1], grid.edges)
        p0 /= p0.sum() * grid.cell_volume
    return Problem(model, grid, op, p0, run.t_final, initial, stat)
