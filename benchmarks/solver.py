"""Benchmark: the finite-volume Fokker-Planck solver against FiPy and plain scipy references.

    python benchmarks/solver.py [--out benchmarks/results/solver.json] [--threads 2]
        [--four-d 32] [--repeats 2] [--fipy-cap-s 240] [--fipy-cap-mb MB]
        [--sections NAME ...]

Sections (one JSON object, same machine and run):

* ``stationary_2d``: default case (d = 1, width 6), fpsolver (Newton + sparse LU on the
  MUSCL scheme) vs a central finite-volume discretisation assembled with scipy and solved
  by sparse LU (one factorisation): wall time and L1 error per grid (24² … 256²), and the
  time to reach L1 = 1e-2 and 1e-3 (the cheapest grid that does). Target: L1 ≤ 1e-3 in
  ≤ 0.5 s. FiPy (:mod:`fpsolver.fipy_check`: upwind, exponential and central convection
  terms, scipy LU; its own wall time, mesh to residual, and peak resident memory) on the
  same grids; ``time_to_l1`` per solver and ``ratio_to_fpsolver`` (their time /
  fpsolver's). The first-order FiPy schemes (upwind, exponential) do not reach L1 = 1e-2
  by 256², so only they go on to larger grids (384² … 2048²) until L1 ≤ 1e-2 is measured.
  Guard: before each larger grid its solve time and peak memory are predicted from the
  last two grids (power laws in n, exponents at least 1) and that grid and the larger ones
  are skipped once a prediction exceeds ``--fipy-cap-s`` (default 240 s per solve) or
  ``--fipy-cap-mb`` (default half the memory available at start); ``fipy_extension``
  records the caps and each skipped grid with its predictions and reason. For a scheme
  that still misses a target, ``extrapolated_time_to_l1`` estimates the time from its
  last two grids (L1 ∝ n^−q, time ∝ n^s, fitted) with the ratio to fpsolver, marked as an
  extrapolation.
* ``transient_2d``: oscillator K/m = 1, γ = 0.5 (A = [[0, −1], [1, 1]], D_vv = 0.5) from
  N((1.5, 0), P/4) to t = 5: fpsolver SSP-RK(25,3) ("explicit") and limited ROS2-W with LUs
  ("implicit", accuracy step) vs Crank-Nicolson on the central operator with one LU. The
  reference gets, per grid, the largest step its accuracy allows: dt is halved from 0.4
  until halving changes L1 by < 1 % (or dt = 0.4/2⁹), and the largest dt whose L1, and
  that of every smaller dt, is within 5 % of the smallest dt's L1 is chosen (time error
  negligible against space error); its time (best of ``--repeats``) enters
  ``time_to_l1``, and each grid records ``dt`` and the ladder (dt, wall time, L1).
  Target: L1 ≤ 3e-3 in ≤ 2 s and ≥ 20× faster than the reference.
* Both sections then time the grids that decided each ratio again, in alternation
  (``interleaved_time_to_l1``, :func:`_interleaved_ratios`): this VM's speed drifts over
  minutes, and a ratio of two times taken minutes apart carries that drift.
* ``stiff_2d``: plain SGD with η = 0.01 (strong friction): explicit vs implicit, and the
  scheme "auto" takes.
* ``throughput``: cell updates/s of the explicit rate kernel on 1 and ``--threads``
  threads, on a random density (every chunk of faces saturates: the kernel's slowest
  case) and on the model's stationary Gaussian (``gaussian_*``: rows of 128+ cells take
  the smooth path), as a fraction of the memory-bandwidth bound: numpy copy bandwidth
  (128 MiB array, the best of the copies timed before each grid and after the last) / 16
  bytes per cell update (p read, result written, float64; the kernel computes face
  velocities from affine coefficients and reads no velocity array). Grids in cache
  (2-D 256², 4-D 32⁴) and beyond the last-level cache (2-D 2048², 4-D 64⁴: 34 and
  134 MB per array), where memory actually bounds the kernel; each records its array size
  and whether p and the result fit in the last-level cache. Beyond the cache the
  operator writes with non-temporal stores (``streaming_stores``; plain stores read each
  output line first: 24 B per cell); those grids also report the plain-store rate. Note
  numpy's copy runs on one thread. On a shared machine the
  second thread can be slower than one (it waits for a busy core). The arithmetic side
  of the roofline: ``flux_ns_per_face`` times each kind of face flux alone (the kernel's
  own face loops over one row of faces in the L1 cache, one thread: θ and v faces on the
  smooth and the full path, the cross-diffusion's linear and saturated parts), and each
  grid's ``arithmetic_ceiling`` adds up its faces per cell: the rate of ``--threads``
  threads that did nothing but their fluxes and scaled perfectly, as a fraction of the
  bound. The kernel cannot beat its ceiling; where the ceiling is below a target, no
  bookkeeping can reach it.
* ``stationary_4d``: THEORY.md §13 non-commuting case at ``--four-d`` cells per axis
  (Newton-GMRES); the 64⁴ target (≤ 5 min on 2 cores) needs ``--four-d 64``.
* ``cli_warm``: wall time of a second ``fpsolver run`` on the default case (JIT cache warm).

Compilation is excluded by a warm-up call; the load average is recorded so numbers from a
busy machine can be recognised.
"""

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


# a call is repeated beyond ``repeats`` until this much time is spent on it (at most
# MAX_REPEATS calls): 10-ms timings on the 2-core VM varied 2-3× between two repeats
MIN_TIMED_S = 0.5
MAX_REPEATS = 50


def _best(repeats, fn, *args, **kwargs):
    """(min wall time of fn(*args, **kwargs) over at least ``repeats`` calls, more for
    short calls (MIN_TIMED_S), last result)."""
    best, out, spent, calls = np.inf, None, 0.0, 0
    while calls < repeats or (spent < MIN_TIMED_S and calls < MAX_REPEATS):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        wall = time.perf_counter() - t0
        best, spent, calls = min(best, wall), spent + wall, calls + 1
    return best, out


def central_operator(grid, drift, diffusion, mean):
    """Sparse central finite-volume operator (2-D, zero-flux walls) built with scipy only:
    F = b_face (p_L + p_R)/2 + (D/h)(p_L − p_R) on interior faces."""
    import scipy.sparse as sp
    n0, n1 = grid.shape
    h = grid.spacing
    c0, c1 = grid.centers
    idx = np.arange(n0 * n1).reshape(n0, n1)
    rows, cols, vals = [], [], []
    for k in range(2):
        left = idx[:-1] if k == 0 else idx[:, :-1]
        right = idx[1:] if k == 0 else idx[:, 1:]
        z0 = (c0[:-1] + h[0] / 2)[:, None] if k == 0 else c0[:, None]
        z1 = c1[None, :] if k == 0 else (c1[:-1] + h[1] / 2)[None, :]
        b = -(drift[k, 0] * (z0 - mean[0]) + drift[k, 1] * (z1 - mean[1]))
        b = np.broadcast_to(b, left.shape).ravel()
        dh = diffusion[k, k] / h[k]
        wl, wr = (b / 2 + dh) / h[k], (b / 2 - dh) / h[k]  # F/h = wl p_L + wr p_R
        lf, rt = left.ravel(), right.ravel()
        for r, c, v in ((lf, lf, -wl), (lf, rt, -wr), (rt, lf, wl), (rt, rt, wr)):
            rows.append(r), cols.append(c), vals.append(v)
    n = n0 * n1
    return sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(n, n))


def central_stationary(grid, model_arrays):
    """Stationary density of the central operator: one row replaced by p_r = 1, LU, normalise."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla
    m = central_operator(grid, *model_arrays).tocsr()
    r = m.shape[0] // 2 + grid.shape[1] // 2
    keep = np.ones(m.shape[0])
    keep[r] = 0
    m = (sp.diags(keep) @ m + sp.csr_matrix(([1.0], ([r], [r])), shape=m.shape)).tocsc()
    rhs = np.zeros(m.shape[0])
    rhs[r] = 1
    p = spla.splu(m).solve(rhs)
    return (p / (p.sum() * grid.cell_volume)).reshape(grid.shape)


def crank_nicolson(grid, model_arrays, p0, t_final, dt):
    """Crank-Nicolson on the central operator with one LU factorisation."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla
    m = central_operator(grid, *model_arrays)
    n = max(1, round(t_final / dt))
    dt = t_final / n
    eye = sp.identity(m.shape[0], format="csc")
    lu = spla.splu((eye - 0.5 * dt * m).tocsc())
    rhs_m = (eye + 0.5 * dt * m).tocsr()
    p = p0.ravel().copy()
    for _ in range(n):
        p = lu.solve(rhs_m @ p)
    return p.reshape(grid.shape)


def _time_to(results, key, targets):
    """Smallest wall time among entries whose L1 error reaches each target (None if none)."""
    out = {}
    for tgt in targets:
        ok = [r["wall_s"] for r in results if r[key] <= tgt]
        out[f"{tgt:g}"] = min(ok) if ok else None
    return out


def _cheapest(results, target):
    """Cells of the fastest entry whose L1 error reaches ``target`` (None if none)."""
    ok = [r for r in results if r["l1"] <= target]
    return min(ok, key=lambda r: r["wall_s"])["cells"] if ok else None


def _timed(fn, *args, **kwargs):
    """Wall time (s) of one call fn(*args, **kwargs)."""
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


# alternating calls per solver when the two sides of a ratio are timed again together
INTERLEAVED_ROUNDS = 9


def _interleaved_ratios(runs, reruns, fast, others, targets):
    """Per target: the cheapest grid of ``fast`` and of each of ``others`` that reaches it,
    timed again in alternation (``reruns[(solver, cells)]`` makes one call and returns its
    wall time; best of INTERLEAVED_ROUNDS rounds each), with each other solver's time as a
    ratio to ``fast``'s. The sections time one solver's grids after the other's, and this
    VM's speed drifted by 1.5× within minutes (the same code ten minutes apart: rate kernel
    at 256², one thread, 0.22e9 and 0.145e9 cells/s), so a ratio of times taken minutes
    apart mixes in the drift; taken in alternation both sides see the same machine."""
    out = {}
    for target in targets:
        picks = {name: _cheapest(runs[name], target) for name in (fast, *others)}
        picks = {name: n for name, n in picks.items() if n is not None}
        if fast not in picks or len(picks) < 2:
            out[f"{target:g}"] = None
            continue
        best = dict.fromkeys(picks, np.inf)
        for _ in range(INTERLEAVED_ROUNDS):
            for name, n in picks.items():
                best[name] = min(best[name], reruns[(name, n)]())
        out[f"{target:g}"] = {
            **{name: {"cells": n, "wall_s": best[name]} for name, n in picks.items()},
            f"ratio_to_{fast}": {name: best[name] / best[fast] for name in picks
                                 if name != fast}}
    return out


def _exponent(a, b, key, floor=-np.inf):
    """Power-law exponent of entry field ``key`` in the cell count between entries a, b
    (at least ``floor``)."""
    return max(floor, float(np.log(b[key] / a[key]) / np.log(b["cells"] / a["cells"])))


def _extrapolated_time_to(results, targets, fp_times):
    """Time to reach each L1 target extrapolated from the last two entries (power laws in
    the cell count), with its ratio to fpsolver's measured time."""
    a, b = results[-2], results[-1]
    q = -_exponent(a, b, "l1")
    s = _exponent(a, b, "wall_s")
    out = {}
    for tgt in targets:
        n = b["cells"] * (b["l1"] / tgt) ** (1 / q) if q > 0 else np.inf
        wall = float(b["wall_s"] * (n / b["cells"]) ** s)
        fp = fp_times[f"{tgt:g}"]
        out[f"{tgt:g}"] = {"cells": float(n), "wall_s": wall, "order": float(q),
                           "time_exponent": float(s),
                           "ratio_to_fpsolver": wall / fp if fp else None}
    return out


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory (bytes) above the level at entry, sampled every 10 ms from
    /proc/self/statm by a thread (SuperLU releases the GIL, so its factors are seen).
    A lower bound: memory freed earlier and reused by the allocator is not counted."""

    def __enter__(self):
        self.base = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def used(self):
        return self.peak - self.base


FIPY_SCHEMES = ("upwind", "exponential", "central")
# from 24²: the time to an L1 target is that of the cheapest grid reaching it, so each
# solver needs grids down to where it first does (fpsolver reaches 1e-2 near 34², FiPy
# central near 56²; from 48² on, fpsolver's time to 1e-2 was that of 48²), and steps of
# 4 cells up to 64² so that the first grid to reach a target overshoots it by less (with
# steps of 8, fpsolver's 32² missed 1e-2 by 8 % and its time was that of 40²)
STATIONARY_GRIDS = (24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 64, 80, 96, 128, 160, 192, 256)
# the same for the transient, steps of about a tenth for both solvers (fpsolver reaches
# 3e-3 between 40² and 48², Crank-Nicolson between 96² and 128²)
TRANSIENT_GRIDS = (40, 44, 48, 52, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128, 192, 256)
FIPY_FIRST_ORDER = ("upwind", "exponential")  # extended until L1 ≤ FIPY_EXTEND_TARGET
FIPY_EXTRA_GRIDS = (384, 512, 640, 800, 1024, 1280, 1600, 2048)
FIPY_EXTEND_TARGET = 1e-2


def _stationary_case(case, n):
    """(problem, exact stationary cell averages) of ``case`` on n² cells."""
    from fpsolver import theory
    from fpsolver.solve import setup_problem
    prob = setup_problem(case, cells=n)
    return prob, theory.gaussian_cell_averages(*prob.stationary, prob.grid.edges)


def _fipy_solve(prob, scheme):
    """One FiPy stationary solve of ``prob`` (its result: density, residual, FiPy's own wall
    time from mesh to residual), FiPy's warnings silenced."""
    import warnings

    from fpsolver import fipy_check
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fipy_check.solve_stationary(prob.model, prob.grid, scheme)


def _fipy_wall(prob, scheme):
    """FiPy's own wall time of one stationary solve (:func:`_fipy_solve`)."""
    return _fipy_solve(prob, scheme).wall_time_s


def _fipy_stationary(prob, exact, scheme):
    """One FiPy stationary solve (:func:`_fipy_solve`) with its L1 error and peak memory."""
    with PeakRSS() as mem:
        res = _fipy_solve(prob, scheme)
    g = prob.grid
    return {"cells": g.shape[0], "wall_s": res.wall_time_s,
            "l1": float(np.abs(res.p - exact).sum() * g.cell_volume),
            "residual_rel": res.residual, "peak_rss_MB": max(mem.used, 1) / 1e6}


def _extend_fipy(case, scheme, runs, cap_s, cap_mb):
    """Append FiPy runs on FIPY_EXTRA_GRIDS until L1 ≤ FIPY_EXTEND_TARGET. Before each grid
    its wall time and memory are predicted from the last two runs (power laws in n, exponents
    at least 1); once a prediction exceeds a cap that grid and the larger ones are skipped.
    Returns the skipped grids with their predictions and the reason."""
    for i, n in enumerate(FIPY_EXTRA_GRIDS):
        if runs[-1]["l1"] <= FIPY_EXTEND_TARGET:
            return []
        a, b = runs[-2], runs[-1]
        se = _exponent(a, b, "wall_s", 1.0)
        # sampled peak memory is noisy (a 512² reading below 384²'s predicted 2 TB at
        # 640²): clamp to the dense-band fill bound of a 2-D sparse LU, n³
        me = min(_exponent(a, b, "peak_rss_MB", 1.0), 3.0)
        pred = [(m, b["wall_s"] * (m / b["cells"]) ** se,
                 b["peak_rss_MB"] * (m / b["cells"]) ** me) for m in FIPY_EXTRA_GRIDS[i:]]
        if pred[0][1] > cap_s or pred[0][2] > cap_mb:
            return [{"cells": m, "predicted_wall_s": t, "predicted_peak_rss_MB": mb,
                     "reason": (f"predicted {t:.0f} s > cap {cap_s:g} s" if t > cap_s else
                                f"predicted {mb:.0f} MB > cap {cap_mb:.0f} MB")}
                    for m, t, mb in pred]
        prob, exact = _stationary_case(case, n)
        runs.append(_fipy_stationary(prob, exact, scheme))
        print(f"  fipy_{scheme} {n}²: {runs[-1]['wall_s']:.1f} s, L1 {runs[-1]['l1']:.2e}",
              file=sys.stderr)
    return []


def stationary_2d(repeats, cap_s, cap_mb):
    from fpsolver.case import default_case
    from fpsolver.stationary import stationary
    case = default_case()
    fp, ref = [], []
    fipy = {s: [] for s in FIPY_SCHEMES}
    reruns = {}
    for n in STATIONARY_GRIDS:
        prob, exact = _stationary_case(case, n)
        g, model = prob.grid, prob.model
        arrays = (model.drift, model.diffusion, model.stationary_mean)
        reruns[("fpsolver", n)] = functools.partial(_timed, stationary, prob.op)
        reruns[("scipy_central_lu", n)] = functools.partial(_timed, central_stationary, g,
                                                            arrays)
        reruns[("fipy_central", n)] = functools.partial(_fipy_wall, prob, "central")
        stationary(prob.op, max_iter=1)  # JIT warm-up
        wall, res = _best(repeats, stationary, prob.op)
        fp.append({"cells": n, "wall_s": wall, "l1": float(np.abs(res.p - exact).sum()
                                                            * g.cell_volume),
                   "newton_steps": res.n_iter, "residual_rel": res.residual_rel})
        wall, p = _best(repeats, central_stationary, g, arrays)
        ref.append({"cells": n, "wall_s": wall,
                    "l1": float(np.abs(p - exact).sum() * g.cell_volume),
                    "min_density_rel": float(p.min() / p.max())})
        for scheme in FIPY_SCHEMES:
            fipy[scheme].append(_fipy_stationary(prob, exact, scheme))
    skipped = {f"fipy_{s}": _extend_fipy(case, s, fipy[s], cap_s, cap_mb)
               for s in FIPY_FIRST_ORDER}
    targets = (1e-2, 1e-3)
    runs = {"fpsolver": fp, "scipy_central_lu": ref,
            **{f"fipy_{k}": v for k, v in fipy.items()}}
    times = {k: _time_to(v, "l1", targets) for k, v in runs.items()}
    fp_t = times["fpsolver"]
    ratios = {k: {t: (v[t] / fp_t[t]) if (v[t] and fp_t[t]) else None for t in v}
              for k, v in times.items() if k != "fpsolver"}
    extrapolated = {k: _extrapolated_time_to(v, targets, fp_t) for k, v in runs.items()
                    if any(x is None for x in times[k].values())}
    return {**runs, "time_to_l1": times, "ratio_to_fpsolver": ratios,
            "interleaved_time_to_l1": _interleaved_ratios(
                runs, reruns, "fpsolver", ("fipy_central", "scipy_central_lu"), targets),
            "extrapolated_time_to_l1": extrapolated,
            "fipy_extension": {"grids": list(FIPY_EXTRA_GRIDS), "until_l1": FIPY_EXTEND_TARGET,
                               "cap_wall_s": cap_s, "cap_peak_rss_MB": cap_mb,
                               "skipped": skipped},
            "target_l1_1e-3_within_0.5s": fp_t["0.001"] is not None and fp_t["0.001"] <= 0.5,
            "target_100x_faster_than_fipy_to_1e-2": {
                k: (r["0.01"] >= 100) if r["0.01"] else None
                for k, r in ratios.items() if k.startswith("fipy")}}


CN_DT_START = 0.4  # Crank-Nicolson dt ladder: halved from here (≈ period/16)
CN_DT_MIN = CN_DT_START / 2 ** 9
CN_CONVERGED = 0.01  # ladder stops once halving dt changes L1 by less than this (relative)
CN_TIME_ERROR_TOL = 0.05  # chosen dt: L1 within this of the smallest dt's L1


def _crank_nicolson_fair(g, arrays, p0, exact, t_final, repeats):
    """Crank-Nicolson at the largest dt whose time error is negligible: dt halved from
    CN_DT_START until L1 changes by < CN_CONVERGED (or CN_DT_MIN); the chosen dt is the
    largest with its L1 and that of every smaller dt within CN_TIME_ERROR_TOL of the
    smallest dt's L1. Returns the chosen run (timed over ``repeats``) with the ladder."""
    def l1(p):
        return float(np.abs(p - exact).sum() * g.cell_volume)

    ladder, dt, converged = [], CN_DT_START, False
    while not converged and dt >= CN_DT_MIN:
        wall, p = _best(1, crank_nicolson, g, arrays, p0, t_final, dt)
        ladder.append({"dt": dt, "wall_s": wall, "l1": l1(p)})
        converged = len(ladder) > 1 and (abs(ladder[-2]["l1"] - ladder[-1]["l1"])
                                         <= CN_CONVERGED * ladder[-1]["l1"])
        dt /= 2
    ref_l1 = ladder[-1]["l1"]
    chosen = ladder[-1]
    for r in reversed(ladder):
        if abs(r["l1"] - ref_l1) > CN_TIME_ERROR_TOL * ref_l1:
            break
        chosen = r
    wall, p = _best(repeats, crank_nicolson, g, arrays, p0, t_final, chosen["dt"])
    return {"cells": g.shape[0], "wall_s": min(wall, chosen["wall_s"]), "dt": chosen["dt"],
            "l1": l1(p), "ladder_converged": converged, "dt_ladder": ladder}


def transient_2d(repeats):
    import scipy.linalg as sla

    from fpsolver import theory
    from fpsolver.fv import FPOperator
    from fpsolver.grid import sized_grid
    from fpsolver.solve import evolve, explicit_step_bound
    a = np.array([[0.0, -1.0], [1.0, 1.0]])
    d = np.diag([0.0, 0.5])
    mean = np.zeros(2)
    p_ss = sla.solve_continuous_lyapunov(a, 2 * d)
    m0, c0, t_final = np.array([1.5, 0.0]), 0.25 * p_ss, 5.0
    e = sla.expm(-a * t_final)
    mt, ct = e @ m0, p_ss + e @ (c0 - p_ss) @ e.T
    fp, imp, ref = [], [], []
    reruns = {}
    for n in TRANSIENT_GRIDS:
        g = sized_grid((n, n), (mean, p_ss), 6.0, initial=(m0, c0))
        op = FPOperator(g, a, d, mean)
        p0 = theory.gaussian_cell_averages(m0, c0, g.edges)
        p0 /= p0.sum() * g.cell_volume
        exact = theory.gaussian_cell_averages(mt, ct, g.edges)
        evolve(op, p0, 1e-3)  # warm-up
        wall, res = _best(repeats, evolve, op, p0, t_final)  # 256²: ~2 s
        fp.append({"cells": n, "wall_s": wall, "steps": res.n_steps,
                   "l1": float(np.abs(res.p - exact).sum() * g.cell_volume)})
        wall, res = _best(repeats, evolve, op, p0, t_final, scheme="implicit")
        imp.append({"cells": n, "wall_s": wall, "steps": res.n_steps, "dt": res.dt,
                    "dt_over_explicit_bound": res.dt / explicit_step_bound(op),
                    "mass_error": res.mass_error,
                    "min_density_rel": float(res.p.min() / res.p.max()),
                    "l1": float(np.abs(res.p - exact).sum() * g.cell_volume)})
        ref.append(_crank_nicolson_fair(g, (a, d, mean), p0, exact, t_final, repeats))
        print(f"  crank_nicolson {n}²: dt {ref[-1]['dt']:g}, L1 {ref[-1]['l1']:.3e}, "
              f"{ref[-1]['wall_s']:.2f} s", file=sys.stderr)
        reruns[("fpsolver_explicit", n)] = functools.partial(_timed, evolve, op, p0, t_final)
        reruns[("crank_nicolson_lu", n)] = functools.partial(
            _timed, crank_nicolson, g, (a, d, mean), p0, t_final, ref[-1]["dt"])
    targets = (1e-2, 3e-3, 1e-3)
    runs = {"fpsolver_explicit": fp, "fpsolver_implicit": imp, "crank_nicolson_lu": ref}
    times = {k: _time_to(v, "l1", targets) for k, v in runs.items()}
    t_ref = times["crank_nicolson_lu"]
    return {**runs, "time_to_l1": times,
            "interleaved_time_to_l1": _interleaved_ratios(
                runs, reruns, "fpsolver_explicit", ("crank_nicolson_lu",), targets),
            "speedup_vs_crank_nicolson": {
                k: {t: (t_ref[t] / v[t]) if (v[t] and t_ref[t]) else None for t in v}
                for k, v in times.items() if k != "crank_nicolson_lu"}}


def stiff_2d(repeats):
    """Plain SGD η = 0.01, β = 0 (friction 200/time), from N((0.11, 0), P/4) to t = 0.25:
    explicit SSP-RK(25,3) at its bound vs the implicit ROS2-W at its accuracy step, and
    which of the two "auto" takes."""
    from fpsolver.analysis import compare
    from fpsolver.case import default_case
    from fpsolver.solve import choose_scheme, evolve, setup_problem
    case = default_case().replace(sgd={"lr": 0.01, "momentum": 0.0},
                                  run={"t_final": 0.25, "initial_mean": [0.11, 0.0],
                                       "initial_cov_scale": 0.25})
    out = []
    for n in (64, 96, 128):
        prob = setup_problem(case, cells=n)
        op, vol = prob.op, prob.grid.cell_volume
        t_ex, ex = _best(1, evolve, op, prob.p0, prob.t_final)
        t_im, im = _best(repeats, evolve, op, prob.p0, prob.t_final, scheme="implicit")
        out.append({"cells": n,
                    "auto_scheme": choose_scheme(op, "auto", prob.p0, prob.t_final),
                    "explicit": {"wall_s": t_ex, "steps": ex.n_steps, "dt": ex.dt,
                                 "l1": compare(prob, ex)["l1_error"]},
                    "implicit": {"wall_s": t_im, "steps": im.n_steps, "dt": im.dt,
                                 "l1": compare(prob, im)["l1_error"],
                                 "mass_error": im.mass_error,
                                 "l1_difference_to_explicit": float(
                                     np.abs(im.p - ex.p).sum() * vol)},
                    "dt_ratio": im.dt / ex.dt, "speedup": t_ex / t_im})
    return out


def _operator_4d(n):
    """(model, grid, operator) of the THEORY.md §13 non-commuting 4-D case on n⁴ cells."""
    from fpsolver import theory
    from fpsolver.fv import FPOperator
    from fpsolver.grid import sized_grid
    from fpsolver.sgd import PhaseSpaceModel
    h = np.array([[0.755734, 0.379458], [0.379458, 0.309074]])
    m = PhaseSpaceModel.from_arrays(h, 0.245764 * np.array([[2.5, 1.5], [1.5, 2.5]]),
                                    0.05, 0.9, 0.01, 8)
    g = sized_grid((n,) * 4, (m.stationary_mean, theory.stationary_cov(m)), 6.0)
    return m, g, FPOperator(g, m.drift, m.diffusion, m.stationary_mean)


BYTES_PER_CELL = 16  # p read + result written, float64; face velocities are computed


def _copy_bandwidth():
    """numpy copy bandwidth (bytes read + written per second) on a 128 MiB array."""
    src = np.random.default_rng(0).random(1 << 24)
    t, _ = _best(5, np.copyto, np.empty_like(src), src)
    return 2 * src.nbytes / t, src.nbytes


def _rate_repeated(reps, op, p, res, stream):
    """``reps`` explicit rate evaluations at p into res (``stream``: non-temporal stores)."""
    import numba

    from fpsolver.fv import kernels
    tasks = numba.get_num_threads()
    for _ in range(reps):
        kernels.rate_kernel(p, p, False, *op.kernel_args(), stream, tasks, res)


FACES_PER_PROBE = 256  # one row of faces: the probes' data stays in the L1 cache


def _face_probes():
    """Compiled loops that evaluate one kind of face flux alone, ``reps`` times over
    FACES_PER_PROBE faces (the kernel's own face loops, nothing else): ``axis_faces`` along
    an axis (``dif`` 0: a θ axis; ``stride``: the cells' spacing, the row length on an
    outer axis), returning how many faces saturated; ``cross_faces`` the cross-diffusion
    run (``dg``: linear part, ``dgl``: saturated part)."""
    import numba

    from fpsolver.fv.kernels import SCHEME, _cross_run, _face_loop
    n = FACES_PER_PROBE

    @numba.njit(error_model="numpy")
    def axis_faces(w, dif, stride, smooth, reps, out):
        saturated = 0
        for _ in range(reps):  # u from −1 to 7: the sign change of a row
            # smooth as a literal at each call, as _outer_run passes it: the kernel's code
            if smooth:
                saturated += _face_loop(0, n, -1.0, 8.0 / n, dif, w, w, 0, stride,
                                        2 * stride, 3 * stride, SCHEME, True, out, 0)
            else:
                saturated += _face_loop(0, n, -1.0, 8.0 / n, dif, w, w, 0, stride,
                                        2 * stride, 3 * stride, SCHEME, False, out, 0)
        return saturated

    @numba.njit(error_model="numpy")
    def cross_faces(w, dg, dgl, reps, out):
        for _ in range(reps):
            _cross_run(0, n, w, w, n + 1, 2 * n + 1, n, n + 2, 2 * n, 2 * n + 2, dg, dgl,
                       SCHEME, out, 0)

    return axis_faces, cross_faces


def _flux_costs(repeats):
    """ns per face of each kind of face flux on one thread, its data in the L1 cache (no
    row set-up, padding, ring or stores around it): θ and v faces on the smooth path (a
    density within 1e-3 of constant: nothing saturates) and the full one (a random
    density: most faces saturate), and the cross-diffusion's linear and saturated parts."""
    axis_faces, cross_faces = _face_probes()
    n, reps = FACES_PER_PROBE, 20000
    rng = np.random.default_rng(2)
    densities = {"smooth": 1.0 + 1e-3 * rng.random(5 * n), "full": rng.random(5 * n)}
    out = np.empty(n)
    costs = {}
    for axis, dif, stride in (("theta", 0.0, n), ("v", 0.5, 1)):
        for path, w in densities.items():
            smooth = path == "smooth"
            saturated = axis_faces(w, dif, stride, smooth, 1, out)
            if smooth != (saturated == 0):
                raise RuntimeError(f"{axis} {path} probe: {saturated} of {n} faces saturate")
            t, _ = _best(repeats, axis_faces, w, dif, stride, smooth, reps, out)
            costs[f"{axis}_{path}"] = t / (reps * n) * 1e9
    for part, dg, dgl in (("linear", 0.1, 0.0), ("saturated", 0.0, 0.05)):
        cross_faces(densities["full"], dg, dgl, 1, out)
        t, _ = _best(repeats, cross_faces, densities["full"], dg, dgl, reps, out)
        costs[f"cross_{part}"] = t / (reps * n) * 1e9
    return costs


def _arithmetic_ceiling(op, costs, threads):
    """The rate kernel's ceiling from its face fluxes alone (:func:`_flux_costs`) on
    ``op``: ns per cell update of one thread for its faces (one per axis, θ axes where
    dif = 0, and the cross-diffusion runs between the two v axes), and the cell updates
    per second of ``threads`` threads that scale perfectly with no other work; smooth
    (faces take the smooth path; the cross-diffusion has none) and full."""
    _, _, _, _, dif, cross, cross_lim, _ = op.kernel_args()
    nd = dif.size
    n_theta = int(np.sum(dif == 0.0))
    pairs = [(nd - 2, nd - 1), (nd - 1, nd - 2)] if nd >= 4 else []
    cross_ns = sum(costs["cross_linear"] * float(cross[k, b] != 0.0) +
                   costs["cross_saturated"] * float(cross_lim[k, b] != 0.0) for k, b in pairs)
    entry = {"theta_faces": n_theta, "v_faces": nd - n_theta,
             "cross_runs": sum(bool(cross[k, b] or cross_lim[k, b]) for k, b in pairs)}
    for path in ("smooth", "full"):
        ns = (n_theta * costs[f"theta_{path}"] + (nd - n_theta) * costs[f"v_{path}"] +
              cross_ns)
        entry[f"{path}_ns_per_cell_update"] = float(ns)
        entry[f"{path}_cell_updates_per_s"] = float(threads * 1e9 / ns)
    return entry


def _kernel_rates(op, gaussian, threads, repeats, llc):
    """Cell updates/s of the explicit rate kernel on ``op`` for each thread count, with the
    stores the operator uses (non-temporal beyond the cache) and, where those stream, also
    with plain stores, on a random density (every chunk of faces saturates: the kernel's
    slowest case) and on ``gaussian``, the model's stationary density on the grid (rows of
    128+ cells then take the kernel's smooth path)."""
    import numba
    p = np.random.default_rng(1).random(op.size)
    res = np.empty_like(p)
    entry = {"cells": list(op.shape), "array_MB": p.nbytes / 1e6,
             "fits_in_cache": None if llc is None else 2 * p.nbytes <= llc,
             "streaming_stores": op.stream, "threads": {}}
    reps = max(3, int(2e7 // op.size))
    for th in threads:  # the kernel directly: threads_for would override the count
        numba.set_num_threads(th)
        rates = {}
        cases = {("random", op.stream): p, ("random", False): p,  # one case if not streaming
                 ("gaussian", op.stream): gaussian}
        for (density, stream), q in cases.items():
            _rate_repeated(1, op, q, res, stream)
            t, _ = _best(repeats, _rate_repeated, reps, op, q, res, stream)
            rates[density, stream] = reps * op.size / t
        rate, smooth = rates["random", op.stream], rates["gaussian", op.stream]
        entry["threads"][str(th)] = {"cell_updates_per_s": rate,
                                     "gaussian_cell_updates_per_s": smooth}
        if op.stream:
            entry["threads"][str(th)]["plain_stores_cell_updates_per_s"] = rates[
                "random", False]
    numba.set_num_threads(threads[-1])
    return entry


def _problem_2d(n):
    """(operator, its stationary Gaussian's cell averages, flat) of the default case, n²."""
    from fpsolver import theory
    from fpsolver.case import default_case
    from fpsolver.solve import setup_problem
    prob = setup_problem(default_case(), cells=n)
    return prob.op, theory.gaussian_cell_averages(*prob.stationary, prob.grid.edges).ravel()


def _problem_4d(n):
    """(operator, its stationary Gaussian's cell averages, flat) of the §13 case, n⁴."""
    from fpsolver import theory
    m, g, op = _operator_4d(n)
    cov = theory.stationary_cov(m)
    return op, theory.gaussian_cell_averages(m.stationary_mean, cov, g.edges).ravel()


def _add_fractions(entry, bound):
    """Each ``*cell_updates_per_s`` in ``entry`` (nested dicts) gets its
    ``*fraction_of_bound`` beside it (the rate over ``bound``, cell updates/s)."""
    for key, value in list(entry.items()):
        if isinstance(value, dict):
            _add_fractions(value, bound)
        elif key.endswith("cell_updates_per_s"):
            entry[key.replace("cell_updates_per_s", "fraction_of_bound")] = value / bound


def throughput(repeats):
    """The rate kernel's cell updates/s per grid and its arithmetic ceiling, with each as
    a fraction of the bandwidth bound. The bound takes the best of the copy bandwidths
    measured before each grid and after the last: this VM's copy bandwidth moved by 10 %
    between runs (38.3 against 42.8 GB/s), and a bound is the best the machine does."""
    import numba

    from fpsolver.fv.policy import last_level_cache_bytes
    samples = []
    llc = last_level_cache_bytes()
    threads = sorted({1, numba.get_num_threads()})
    costs = _flux_costs(repeats)
    grids = []
    for make in ([lambda n=n: _problem_2d(n) for n in (256, 2048)] +
                 [lambda n=n: _problem_4d(n) for n in (32, 64)]):  # one grid alive at a time
        samples.append(_copy_bandwidth())
        op, gaussian = make()
        grids.append(_kernel_rates(op, gaussian, threads, repeats, llc))
        grids[-1]["arithmetic_ceiling"] = _arithmetic_ceiling(op, costs, threads[-1])
    samples.append(_copy_bandwidth())
    bandwidth, copy_bytes = max(samples)
    bound = bandwidth / BYTES_PER_CELL
    for grid in grids:
        _add_fractions(grid, bound)
    return {"copy_bandwidth_GBps": bandwidth / 1e9,
            "copy_bandwidth_samples_GBps": [b / 1e9 for b, _ in samples],
            "copy_array_MB": copy_bytes / 1e6, "bytes_per_cell": BYTES_PER_CELL,
            "bandwidth_bound_per_s": bound,
            "last_level_cache_MB": None if llc is None else llc / 1e6,
            "flux_ns_per_face": costs, "grids": grids}


def stationary_4d(n):
    from fpsolver import theory
    from fpsolver.analysis import moments
    from fpsolver.stationary import stationary
    m, g, op = _operator_4d(n)
    cov = theory.stationary_cov(m)
    stationary(_operator_4d(8)[2], max_iter=1)  # warm-up
    t0 = time.perf_counter()
    res = stationary(op, tol=1e-7)
    wall = time.perf_counter() - t0
    exact = theory.gaussian_cell_averages(m.stationary_mean, cov, g.edges)
    _, c = moments(res.p, g)
    return {"cells": n, "wall_s": wall, "status": res.status, "newton_steps": res.n_iter,
            "matvecs": res.n_rhs, "residual_rel": res.residual_rel,
            "l1": float(np.abs(res.p - exact).sum() * g.cell_volume),
            "min_density_rel": float(res.p.min() / res.p.max()),
            "cov_theta_v": c[:2, 2:].tolist(), "cov_theta_v_exact": cov[:2, 2:].tolist(),
            "target_64_within_300s": (wall <= 300) if n == 64 else None}


def cli_warm():
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "fpsolver", "run", "--out", tmp, "--force",
               "--no-progress"]
        root = str(Path(__file__).resolve().parents[1])  # this tree's fpsolver
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [root, *filter(None, [os.environ.get("PYTHONPATH")])]))
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        return {"wall_s": time.perf_counter() - t0}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results/solver.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--four-d", type=int, default=32, help="cells per axis of the 4-D solve")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--fipy-cap-s", type=float, default=240.0,
                    help="skip a larger FiPy grid whose predicted solve time exceeds this (s)")
    ap.add_argument("--fipy-cap-mb", type=float, default=None,
                    help="skip a larger FiPy grid whose predicted peak memory exceeds this "
                         "(MB; default half the memory available at start)")
    ap.add_argument("--sections", nargs="+", metavar="NAME",
                    help="run only these sections (e.g. stationary_4d with --four-d 64)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # measure this tree
    if args.fipy_cap_mb is None:
        args.fipy_cap_mb = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2e6
    os.environ["NUMBA_NUM_THREADS"] = str(args.threads)
    from fpsolver.cpu_target import prefer_full_width_vectors
    full_width = prefer_full_width_vectors()  # as the fpsolver command does
    import numba
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    from fpsolver import __version__
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip() or None
    result = {"benchmark": "solver", "version": __version__, "commit": commit,
              "threads": args.threads, "full_width_vectors": full_width,
              "machine": platform.platform(), "cpu_count": os.cpu_count(),
              "load_average_start": os.getloadavg()}
    # FiPy's large solves last: after them this process ran fpsolver up to 50 % slower
    # (2048² kernel 0.86e9 cells/s instead of 1.11e9; transient 96² 0.073 s instead of
    # 0.049 s; same build, same session)
    for name, fn in (("throughput", lambda: throughput(args.repeats)),
                     ("transient_2d", lambda: transient_2d(args.repeats)),
                     ("stiff_2d", lambda: stiff_2d(args.repeats)),
                     ("stationary_4d", lambda: stationary_4d(args.four_d)),
                     ("cli_warm", cli_warm),
                     ("stationary_2d", lambda: stationary_2d(args.repeats, args.fipy_cap_s,
                                                               args.fipy_cap_mb))):
        if args.sections and name not in args.sections:
            continue
        t0 = time.perf_counter()
        result[name] = fn()
        print(f"{name}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    result["load_average_end"] = os.getloadavg()
    from fpsolver.io import atomic_write_json
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)  # an interrupted run leaves the last results
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
