"""``fpsolver run [CASE] --out DIR``: solve the Fokker-Planck equation, compare with the exact
Gaussian, write DIR/summary.json, DIR/density.npz and DIR/density.png (4-D: plane marginals)."""

import sys
from pathlib import Path

from . import add_case_argument, case_from_args

# cells per standard deviation below which a run warns: L1 errors of order 0.1-1 follow
# (measured on random 2-D transients: 0.72 at 1.8 stationary / 0.56 initial cells per σ)
WELL_RESOLVED = 2.0
# L1 error against the exact Gaussian above which a run warns (the default case has 2.2e-4
# at its 128², 1.7e-3 at 64²; overdamped plain SGD at η = 1e-6 had 0.13 at 128², unwarned)
ACCURATE = 1e-2
# steps between steady-state checks of a transient run (one rate evaluation each: 0.5 % of
# the explicit steps' cost)
STEADY_INTERVAL = 50


def add_parser(subparsers):
    p = subparsers.add_parser(
        "run", help="solve the Fokker-Planck equation of a case, compare with the exact one",
        description="Build the phase-space model of CASE (default: the built-in case), solve "
                    "the Fokker-Planck equation to run.t_final (or to the stationary state "
                    "when t_final is absent), compare with the exact Gaussian and write "
                    "DIR/summary.json, DIR/density.npz and DIR/density.png (4-D: marginals on "
                    "the (θ₁, v₁), (θ₂, v₂) and (θ₁, θ₂) planes).")
    add_case_argument(p, optional=True)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--resume", action="store_true",
                   help="continue a run (transient or stationary) from DIR/checkpoint.npz "
                        "(same answer)")
    p.add_argument("--force", action="store_true", help="overwrite results already in DIR")
    p.add_argument("--cells", type=int, default=None,
                   help="cells per phase-space axis (overrides grid.cells)")
    p.add_argument("--checkpoint-every", type=float, default=30.0, metavar="SECONDS",
                   help="wall time between checkpoints (default 30)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-figure", action="store_true", help="skip density.png")
    return p


def _fingerprint(case, grid):
    """Identity of a problem for checkpoints: the case contents and the grid."""
    import hashlib
    import json

    from ..case import case_to_dict
    text = json.dumps([case_to_dict(case), [list(map(float, e[[0, -1]])) for e in grid.edges],
                       list(grid.shape)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _figure(path, problem, p, exact):
    """Density heat map with the scheme's current J (streamlines) and exact contours: the
    (θ, v) plane in 2-D; in 4-D the marginals on the (θ₁, v₁), (θ₂, v₂), (θ₁, θ₂) planes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..animate import axis_labels
    from ..io import atomic_replace
    from ..plots import density_current, plane_marginal
    g = problem.grid
    d = g.ndim // 2
    planes = [(0, 1)] if d == 1 else [(0, 2), (1, 3), (0, 1)]
    current = problem.op.current(p)
    _, names = axis_labels(d)
    fig, axes = plt.subplots(1, len(planes), figsize=(5 * len(planes), 4), squeeze=False,
                             layout="constrained")
    for ax, plane in zip(axes[0], planes):
        x, y = (g.centers[k] for k in plane)
        art = density_current(x, y, plane_marginal(p, plane, g.spacing),
                              current=[plane_marginal(current[k], plane, g.spacing)
                                       for k in plane],
                              ax=ax, mask_below=1e-3, labels=[names[k] for k in plane])
        ax.contour(x, y, plane_marginal(exact, plane, g.spacing).T, levels=6, colors="k",
                   linewidths=0.6)
        fig.colorbar(art["mesh"], ax=ax, label=("p (solver)" if d == 1 else "marginal p")
                     + "; contours: exact; lines: J")
    with atomic_replace(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _warnings(case, grid, errors, resolution, thinnest):
    """What a finished run should tell its user (one line each): a density under 2 cells per
    standard deviation, mass left outside a forced box, an L1 error above ACCURATE."""
    import math

    from ..grid import MASS_TOL
    out = []
    n = max(grid.shape)
    if round(resolution, 9) < WELL_RESOLVED:
        needed = math.ceil(n * WELL_RESOLVED / resolution - 1e-9)
        out.append(f"the {thinnest} density's standard deviation along its thinnest direction "
                   f"spans {resolution:.2g} cells (< {WELL_RESOLVED:g}): expect large errors; "
                   f"--cells {needed} gives {WELL_RESOLVED:g}")
    for label, mass in grid.mass_outside.items():
        if mass > MASS_TOL:
            out.append(f"grid.force: the box leaves out {mass:.2g} of the {label} density's "
                       "mass (the errors include it)")
    l1 = errors["l1_error"]
    if l1 > ACCURATE:
        if case.run.dt is not None:
            cause = "the forced run.dt may be too long (drop it for the automatic step)"
        else:
            cells = math.ceil(n * math.sqrt(l1 / ACCURATE))
            cause = ("the grid is too coarse for this density (errors fall at least as h²: "
                     f"about --cells {cells} or more for {ACCURATE:g}; "
                     "strongly or weakly damped cases converge later)")
        out.append(f"the L1 error against the exact Gaussian is {l1:.3g} (> {ACCURATE:g}): "
                   + cause)
    return out


def run(args):
    import math
    import time

    import numpy as np
    from tqdm import tqdm

    from .. import __version__, theory
    from ..analysis import compare, exact_moments, moments
    from ..errors import GridError, UserError
    from ..fv.kernels import SSP_STAGES
    from ..grid import cells_per_sigma
    from ..io import atomic_savez, atomic_write_json, make_output_folder
    from ..solve import (CheckpointTracker, ConservationTracker, ProgressTracker,
                         SteadyStateTracker, evolve, load_checkpoint, setup_problem)
    from ..stationary import (StationaryCheckpoint, load_stationary_checkpoint, stationary,
                              stationary_tolerance, use_direct)

    start = time.perf_counter()
    case = case_from_args(args)
    out = Path(args.out)  # checked and made by make_output_folder before the solve
    summary_path = out / "summary.json"
    ckpt = out / "checkpoint.npz"
    had_ckpt = ckpt.exists()
    if summary_path.exists() and not args.force:
        if not args.resume:
            raise UserError(f"{summary_path} exists; pass --force to overwrite")
        if not had_ckpt:
            raise UserError(f"nothing to resume: {out} holds a finished run and no "
                            "checkpoint.npz; pass --force to overwrite it")
    if args.cells is not None and args.cells < 8:
        raise GridError(f"--cells must be >= 8, got {args.cells}")
    if not (math.isfinite(args.checkpoint_every) and args.checkpoint_every > 0):
        raise UserError(f"--checkpoint-every must be > 0 seconds, got {args.checkpoint_every}")
    problem = setup_problem(case, cells=args.cells)
    op, grid = problem.op, problem.grid
    densities = {"stationary": problem.stationary[1]}
    if problem.initial is not None:
        densities["initial"] = problem.initial[1]
    resolution, thinnest = min((cells_per_sigma(grid, c), k) for k, c in densities.items())
    key = _fingerprint(case, grid)
    made = not out.exists()
    make_output_folder(out)
    try:
        if problem.t_final is None:
            resume = (load_stationary_checkpoint(ckpt, key) if (args.resume and had_ckpt)
                      else None)
            with tqdm(desc="stationary (Newton)", unit="step", leave=False,
                      disable=args.no_progress) as bar:
                result = stationary(op, tol=stationary_tolerance(op, case.run.steady_tol),
                                    checkpoint=StationaryCheckpoint(ckpt, key,
                                                                    args.checkpoint_every),
                                    resume=resume, progress=bar)
            solver = "newton-lu" if use_direct(op) else "newton-gmres-af"
            if not result.success:
                raise UserError(f"stationary solve did not converge: {result.message}; the "
                                f"stationary density has {resolution:.2g} cells per standard "
                                "deviation along its thinnest direction: if that is below "
                                "~2, use more cells")
        else:
            resume = load_checkpoint(ckpt, key) if (args.resume and had_ckpt) else None
            tracker = CheckpointTracker(ckpt, key, every_s=args.checkpoint_every)
            # a run that has reached the stationary state (residual of a converged
            # stationary solve, run.steady_tol) stops there: the rest would not change it
            trackers = [ProgressTracker(enabled=not args.no_progress),
                        ConservationTracker(interval=10),
                        SteadyStateTracker(case.run.steady_tol, interval=STEADY_INTERVAL)]
            result = evolve(op, problem.p0, problem.t_final, dt=case.run.dt,
                            safety=case.run.safety, trackers=trackers, checkpoint=tracker,
                            resume=resume, scheme=case.run.scheme)
            solver = {"explicit": f"ssp-rk({SSP_STAGES},3)",
                      "implicit": "ros2-w-fct-" + ("lu" if grid.ndim == 2 else "gmres")
                      }[result.history["scheme"]]
    except UserError:
        if ckpt.exists() and not had_ckpt:
            ckpt.unlink()
        if made and not any(out.iterdir()):
            out.rmdir()
        raise
    errors = compare(problem, result)
    mean_ex, cov_ex = exact_moments(problem.model, result.t, problem.initial)
    mean, cov = moments(result.p, grid)
    exact = theory.gaussian_cell_averages(mean_ex, cov_ex, grid.edges)
    summary = {
        "case": case.name, "cells": list(grid.shape), "solver": solver,
        "scheme": op.describe(),
        "t_final": problem.t_final, "t": result.t, "wall_time_s": None, **errors,
        "status": result.status, "message": result.message, "residual": result.residual,
        "residual_rel": result.residual_rel, "n_steps": result.n_steps,
        "n_iter": result.n_iter, "n_rhs": result.n_rhs, "dt": result.dt,
        "bounds": [list(b) for b in grid.bounds], "mass_outside": grid.mass_outside,
        "cells_per_sigma": resolution,
        "mean": mean, "mean_exact": mean_ex, "cov": cov, "cov_exact": cov_ex,
        "version": __version__,
    }
    centers = {f"centers_{k}": c for k, c in enumerate(grid.centers)}
    t_out = math.inf if result.t is None else result.t
    atomic_savez(out / "density.npz", p=result.p, t=np.float64(t_out), **centers)
    if not args.no_figure:
        _figure(out / "density.png", problem, result.p, exact)
    summary["wall_time_s"] = time.perf_counter() - start
    atomic_write_json(summary_path, summary)
    if ckpt.exists():
        ckpt.unlink()
    for text in _warnings(case, grid, errors, resolution, thinnest):
        print(f"warning: {text}", file=sys.stderr)  # after the run: a refusal stays one line
    print(f"{case.name}: {solver} on {'x'.join(map(str, grid.shape))}, {result.message}; "
          f"L1 error {errors['l1_error']:.3e}, current error "
          f"{errors['current_l1_rel_error']:.3e}; wrote {out}")
    return 0
