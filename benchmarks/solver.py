"""Benchmark: the finite-volume Fokker-Planck solver against a plain scipy reference.

    python benchmarks/solver.py [--out benchmarks/results/solver.json] [--threads 2]
        [--four-d 32] [--repeats 2] [--sections NAME ...]

Sections (one JSON object, same machine and run):

* ``stationary_2d``: default case (d = 1, width 6), fpsolver (Newton + sparse LU on the
  MUSCL scheme) vs a central finite-volume discretisation assembled with scipy and solved
  by sparse LU (one factorisation): wall time and L1 error per grid, and the time to reach
  L1 = 1e-2 and 1e-3 (the cheapest grid that does). Target: L1 ≤ 1e-3 in ≤ 0.5 s.
  FiPy (:mod:`fpsolver.fipy_check`: upwind, exponential and central convection terms,
  scipy LU) on the same grids; ``time_to_l1`` per solver and ``ratio_to_fpsolver`` (their
  time / fpsolver's). First-order FiPy schemes do not reach the targets on these grids:
  ``extrapolated_time_to_l1`` then estimates the time from the last two grids (L1 ∝ n^−q,
  time ∝ n^s, fitted), marked as an extrapolation.
* ``transient_2d``: oscillator K/m = 1, γ = 0.5 (A = [[0, −1], [1, 1]], D_vv = 0.5) from
  N((1.5, 0), P/4) to t = 5: fpsolver SSP-RK3 ("explicit") and ROS2-W with one LU
  ("implicit", accuracy step) vs Crank-Nicolson on the central operator with one LU
  (dt = 0.01). Target: L1 ≤ 3e-3 in ≤ 2 s and ≥ 20× faster than the reference.
* ``stiff_2d``: plain SGD with η = 0.01 (strong friction): explicit vs implicit ("auto").
* ``throughput``: cell updates/s of the explicit rate kernel (2-D 256², 4-D 32⁴) on 1 and
  ``--threads`` threads, as a fraction of the memory-bandwidth bound (numpy copy bandwidth
  / bytes a cell update must move: p, the 2d face velocities, the result). On a shared
  machine the second thread can be slower than one (it waits for a busy core).
* ``stationary_4d``: THEORY.md §13 non-commuting case at ``--four-d`` cells per axis
  (Newton-GMRES); the 64⁴ target (≤ 5 min on 2 cores) needs ``--four-d 64``.
* ``cli_warm``: wall time of a second ``fpsolver run`` on the default case (JIT cache warm).

Compilation is excluded by a warm-up call; the load average is recorded so numbers from a
busy machine can be recognised.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _best(fn, repeats):
    """(min wall time over repeats, last result)."""
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
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
    n = max(1, int(round(t_final / dt)))
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


def _extrapolated_time_to(results, targets):
    """Time to reach each L1 target extrapolated from the last two entries (power laws in
    the cell count); the measured time where a grid reaches it."""
    a, b = results[-2], results[-1]
    q = np.log(a["l1"] / b["l1"]) / np.log(b["cells"] / a["cells"])
    s = np.log(b["wall_s"] / a["wall_s"]) / np.log(b["cells"] / a["cells"])
    out = {}
    for tgt in targets:
        n = b["cells"] * (b["l1"] / tgt) ** (1 / q) if q > 0 else np.inf
        out[f"{tgt:g}"] = {"cells": float(n), "wall_s": float(b["wall_s"] * (n / b["cells"]) ** s),
                           "order": float(q), "time_exponent": float(s)}
    return out


FIPY_SCHEMES = ("upwind", "exponential", "central")


def stationary_2d(repeats):
    import warnings

    from fpsolver import fipy_check, theory
    from fpsolver.case import default_case
    from fpsolver.solve import setup_problem, stationary
    case = default_case()
    fp, ref = [], []
    fipy = {s: [] for s in FIPY_SCHEMES}
    for n in (48, 64, 96, 128, 160, 192, 256):
        prob = setup_problem(case, cells=n)
        g, model = prob.grid, prob.model
        exact = theory.gaussian_cell_averages(*prob.stationary, g.edges)
        stationary(prob.op, max_iter=1)  # JIT warm-up
        wall, res = _best(lambda: stationary(prob.op), repeats)
        fp.append({"cells": n, "wall_s": wall, "l1": float(np.abs(res.p - exact).sum()
                                                            * g.cell_volume),
                   "newton_steps": res.n_iter, "residual_rel": res.residual_rel})
        arrays = (model.drift, model.diffusion, model.stationary_mean)
        wall, p = _best(lambda: central_stationary(g, arrays), repeats)
        ref.append({"cells": n, "wall_s": wall,
                    "l1": float(np.abs(p - exact).sum() * g.cell_volume),
                    "min_density_rel": float(p.min() / p.max())})
        for scheme in FIPY_SCHEMES:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = fipy_check.solve_stationary(model, g, scheme)
            fipy[scheme].append({"cells": n, "wall_s": res.wall_time_s,
                                 "l1": float(np.abs(res.p - exact).sum() * g.cell_volume),
                                 "residual_rel": res.residual})
    targets = (1e-2, 1e-3)
    runs = {"fpsolver": fp, "scipy_central_lu": ref,
            **{f"fipy_{k}": v for k, v in fipy.items()}}
    times = {k: _time_to(v, "l1", targets) for k, v in runs.items()}
    fp_t = times["fpsolver"]
    ratios = {k: {t: (v[t] / fp_t[t]) if (v[t] and fp_t[t]) else None for t in v}
              for k, v in times.items() if k != "fpsolver"}
    extrapolated = {k: _extrapolated_time_to(v, targets) for k, v in runs.items()
                    if any(x is None for x in times[k].values())}
    return {**runs, "time_to_l1": times, "ratio_to_fpsolver": ratios,
            "extrapolated_time_to_l1": extrapolated,
            "target_l1_1e-3_within_0.5s": fp_t["0.001"] is not None and fp_t["0.001"] <= 0.5,
            "target_100x_faster_than_fipy_to_1e-2": {
                k: (r["0.01"] >= 100) if r["0.01"] else None
                for k, r in ratios.items() if k.startswith("fipy")}}


def transient_2d(repeats):
    import scipy.linalg as sla

    from fpsolver import theory
    from fpsolver.fv import FPOperator
    from fpsolver.grid import sized_grid
    from fpsolver.solve import evolve
    a = np.array([[0.0, -1.0], [1.0, 1.0]])
    d = np.diag([0.0, 0.5])
    mean = np.zeros(2)
    p_ss = sla.solve_continuous_lyapunov(a, 2 * d)
    m0, c0, t_final = np.array([1.5, 0.0]), 0.25 * p_ss, 5.0
    e = sla.expm(-a * t_final)
    mt, ct = e @ m0, p_ss + e @ (c0 - p_ss) @ e.T
    fp, imp, ref = [], [], []
    for n in (48, 64, 96, 128, 192, 256):
        g = sized_grid((n, n), (mean, p_ss), 6.0, initial=(m0, c0))
        op = FPOperator(g, a, d, mean)
        p0 = theory.gaussian_cell_averages(m0, c0, g.edges)
        p0 /= p0.sum() * g.cell_volume
        exact = theory.gaussian_cell_averages(mt, ct, g.edges)
        evolve(op, p0, 1e-3)  # warm-up
        if n <= 128:  # explicit beyond 128² takes > 10 s
            wall, res = _best(lambda: evolve(op, p0, t_final), repeats)
            fp.append({"cells": n, "wall_s": wall, "steps": res.n_steps,
                       "l1": float(np.abs(res.p - exact).sum() * g.cell_volume)})
        wall, res = _best(lambda: evolve(op, p0, t_final, scheme="implicit"), repeats)
        imp.append({"cells": n, "wall_s": wall, "steps": res.n_steps, "dt": res.dt,
                    "dt_over_explicit_bound": res.dt * op.max_rate(),
                    "mass_error": res.mass_error,
                    "min_density_rel": float(res.p.min() / res.p.max()),
                    "l1": float(np.abs(res.p - exact).sum() * g.cell_volume)})
        wall, p = _best(lambda: crank_nicolson(g, (a, d, mean), p0, t_final, 0.01), 1)
        ref.append({"cells": n, "wall_s": wall, "dt": 0.01,
                    "l1": float(np.abs(p - exact).sum() * g.cell_volume)})
    targets = (1e-2, 3e-3, 1e-3)
    runs = {"fpsolver_explicit": fp, "fpsolver_implicit": imp, "crank_nicolson_lu": ref}
    times = {k: _time_to(v, "l1", targets) for k, v in runs.items()}
    t_ref = times["crank_nicolson_lu"]
    return {**runs, "time_to_l1": times,
            "speedup_vs_crank_nicolson": {
                k: {t: (t_ref[t] / v[t]) if (v[t] and t_ref[t]) else None for t in v}
                for k, v in times.items() if k != "crank_nicolson_lu"}}


def stiff_2d(repeats):
    """Plain SGD η = 0.01, β = 0 (friction 200/time), from N((0.11, 0), P/4) to t = 0.25:
    explicit SSP-RK3 at its bound vs the implicit ROS2-W at its accuracy step ("auto")."""
    from fpsolver.analysis import compare
    from fpsolver.case import default_case
    from fpsolver.solve import evolve, setup_problem
    case = default_case().replace(sgd={"lr": 0.01, "momentum": 0.0},
                                  run={"t_final": 0.25, "initial_mean": [0.11, 0.0],
                                       "initial_cov_scale": 0.25})
    out = []
    for n in (64, 96):
        prob = setup_problem(case, cells=n)
        op, vol = prob.op, prob.grid.cell_volume
        t_ex, ex = _best(lambda: evolve(op, prob.p0, prob.t_final), 1)
        t_im, im = _best(lambda: evolve(op, prob.p0, prob.t_final, scheme="auto"), repeats)
        out.append({"cells": n, "auto_scheme": im.history["scheme"],
                    "explicit": {"wall_s": t_ex, "steps": ex.n_steps, "dt": ex.dt,
                                 "l1": compare(prob, ex)["l1_error"]},
                    "implicit": {"wall_s": t_im, "steps": im.n_steps, "dt": im.dt,
                                 "l1": compare(prob, im)["l1_error"],
                                 "mass_error": im.mass_error,
                                 "l1_difference_to_explicit": float(
                                     np.abs(im.p - ex.p).sum() * vol)},
                    "dt_ratio": im.dt / ex.dt, "speedup": t_ex / t_im})
    return out


def _model_4d():
    from fpsolver.sgd import PhaseSpaceModel
    h = np.array([[0.755734, 0.379458], [0.379458, 0.309074]])
    return PhaseSpaceModel.from_arrays(h, 0.245764 * np.array([[2.5, 1.5], [1.5, 2.5]]),
                                       0.05, 0.9, 0.01, 8)


def throughput(repeats):
    from fpsolver import theory
    from fpsolver.case import default_case
    from fpsolver.fv import FPOperator, kernels
    from fpsolver.grid import sized_grid
    from fpsolver.solve import setup_problem
    big = np.random.default_rng(0).random(1 << 24)
    dst = np.empty_like(big)
    t, _ = _best(lambda: np.copyto(dst, big), 5)
    bandwidth = 2 * big.nbytes / t  # bytes read + written per second
    ops = [setup_problem(default_case(), cells=256).op]
    m = _model_4d()
    g = sized_grid((32,) * 4, (m.stationary_mean, theory.stationary_cov(m)), 6.0)
    ops.append(FPOperator(g, m.drift, m.diffusion, m.stationary_mean))
    import numba
    out = {"copy_bandwidth_GBps": bandwidth / 1e9, "grids": []}
    threads = sorted({1, numba.get_num_threads()})
    for op in ops:
        p = np.random.default_rng(1).random(op.size)
        res = np.empty_like(p)
        bytes_per_cell = 8 * (2 + len(op.shape))
        bound = bandwidth / bytes_per_cell
        entry = {"cells": list(op.shape), "bandwidth_bound_per_s": bound, "threads": {}}
        for th in threads:  # the kernel directly: threads_for would override the count
            numba.set_num_threads(th)
            kernels.rate_kernel(p, p, False, *op.kernel_args(), res)
            reps = max(3, int(2e7 // op.size))
            t, _ = _best(lambda: [kernels.rate_kernel(p, p, False, *op.kernel_args(), res)
                                  for _ in range(reps)], repeats)
            rate = reps * op.size / t
            entry["threads"][str(th)] = {"cell_updates_per_s": rate,
                                         "fraction_of_bound": rate / bound}
        numba.set_num_threads(threads[-1])
        out["grids"].append(entry)
    return out


def stationary_4d(n):
    from fpsolver import theory
    from fpsolver.analysis import moments
    from fpsolver.fv import FPOperator
    from fpsolver.grid import sized_grid
    from fpsolver.solve import stationary
    m = _model_4d()
    cov = theory.stationary_cov(m)
    g = sized_grid((n,) * 4, (m.stationary_mean, cov), 6.0)
    op = FPOperator(g, m.drift, m.diffusion, m.stationary_mean)
    stationary(FPOperator(sized_grid((8,) * 4, (m.stationary_mean, cov), 6.0), m.drift,
                          m.diffusion, m.stationary_mean), max_iter=1)  # warm-up
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
        subprocess.run(cmd, check=True, capture_output=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        return {"wall_s": time.perf_counter() - t0}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results/solver.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--four-d", type=int, default=32, help="cells per axis of the 4-D solve")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sections", nargs="+", metavar="NAME",
                    help="run only these sections (e.g. stationary_4d with --four-d 64)")
    args = ap.parse_args(argv)
    os.environ["NUMBA_NUM_THREADS"] = str(args.threads)
    import numba
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    from fpsolver import __version__
    result = {"benchmark": "solver", "version": __version__, "threads": args.threads,
              "machine": platform.platform(), "cpu_count": os.cpu_count(),
              "load_average_start": os.getloadavg()}
    for name, fn in (("stationary_2d", lambda: stationary_2d(args.repeats)),
                     ("transient_2d", lambda: transient_2d(args.repeats)),
                     ("stiff_2d", lambda: stiff_2d(args.repeats)),
                     ("throughput", lambda: throughput(args.repeats)),
                     ("stationary_4d", lambda: stationary_4d(args.four_d)),
                     ("cli_warm", cli_warm)):
        if args.sections and name not in args.sections:
            continue
        t0 = time.perf_counter()
        result[name] = fn()
        print(f"{name}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    result["load_average_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
