"""``fpsolver simulate CASE.toml --out DIR``: Monte-Carlo SGD vs the three theory levels.

Writes ``DIR/summary.json`` (empirical covariances with standard errors, z-scores per
theory level, verdicts) and ``DIR/diffusion.npz`` (Δ(k) with its standard error and a
trajectory sample), both atomically.
"""

from . import add_case_argument, case_from_args


def add_parser(subparsers):
    p = subparsers.add_parser(
        "simulate", help="Monte-Carlo SGD: empirical moments vs the theory levels 1-3",
        description="Run many independent chains of discrete SGD (PyTorch's update) on the "
                    "case's loss and compare the empirical stationary covariance of "
                    "(θ, v = −buf) with the continuous (level 1, midpoint convention), "
                    "discrete (level 2) and exact (level 3, linear regression only) "
                    "predictions: entry-wise z = (empirical − theory)/SE.")
    add_case_argument(p)
    p.add_argument("--out", required=True, help="output folder (summary.json, diffusion.npz)")
    p.add_argument("--chains", type=int, help="independent chains (default: [simulate] chains)")
    p.add_argument("--steps", type=int, help="updates per chain after burn-in (default: [simulate] steps)")
    p.add_argument("--burn-in", type=int, dest="burn_in",
                   help="updates discarded first (default ≈ 10 covariance relaxation times)")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--batches", help="mini-batches for linear regression: iid or reshuffle")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _overrides(args):
    keys = ("chains", "steps", "burn_in", "seed", "batches")
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def simulation_summary(case, model, result, comparison):
    """The summary.json dictionary (DESIGN.md contract plus per-level details)."""
    from .. import __version__
    from ..simulate import AGREE_Z, SE_FLOOR_REL

    return {
        "case": case.name,
        "version": __version__,
        "dim": model.dim,
        "chains": result.chains, "steps": result.steps, "burn_in": result.burn_in,
        "record_every": result.record_every, "seed": result.seed,
        "samples_per_chain": result.samples,
        "gradient_noise": result.noise, "batches": result.batches,
        "theta0": result.theta0,
        "axis_order": "theta_1..theta_d, v_1..v_d (v = -buf)",
        "convention": "recorded pair (theta_{k+1}, v_k); empirical_cov_midpoint uses "
                      "((theta_k + theta_{k+1})/2, v_k)",
        "empirical_mean": result.mean, "mean_standard_error": result.mean_se,
        "empirical_cov": result.cov, "standard_error": result.cov_se,
        "empirical_cov_midpoint": result.cov_midpoint,
        "standard_error_midpoint": result.cov_midpoint_se,
        "z_scores": {name: c["z_scores"] for name, c in comparison.items()},
        "z_score_conventions": {name: c["convention"] for name, c in comparison.items()},
        "theory": {name: c["theory"] for name, c in comparison.items()},
        "max_abs_z": {name: c["max_abs_z"] for name, c in comparison.items()},
        "relative_error": {name: c["relative_error"] for name, c in comparison.items()},
        "verdict": {name: c["verdict"] for name, c in comparison.items()},
        "verdict_threshold": AGREE_Z,
        "standard_error_floor": f"SE floored at {SE_FLOOR_REL:g}*sqrt(|C_ii C_jj|) "
                                "(entries with exactly zero Monte-Carlo variance)",
        "step_displacement": result.buf_sq, "step_displacement_se": result.buf_sq_se,
        "wall_time_s": result.wall_time_s,
    }


def run(args):
    from ..io import atomic_savez, atomic_write_json, make_output_folder
    from ..sgd import build_model
    from ..simulate import compare, simulate_sgd, theory_levels

    case = case_from_args(args)
    overrides = _overrides(args)
    if overrides:
        case = case.replace(simulate=overrides)
    model = build_model(case)
    cfg = case.simulate
    levels = theory_levels(model)  # before any work: level 3 may report divergence
    out = make_output_folder(args.out)
    result = simulate_sgd(model, cfg.chains, cfg.steps, burn_in=cfg.burn_in, seed=cfg.seed,
                          batches=cfg.batches, record_every=cfg.record_every,
                          progress=not args.quiet)
    comparison = compare(result, model, levels)
    atomic_savez(out / "diffusion.npz", k=result.delta_k, delta=result.delta,
                 delta_se=result.delta_se, trajectory=result.trajectory)
    atomic_write_json(out / "summary.json", simulation_summary(case, model, result, comparison))
    for name, c in comparison.items():
        print(f"{name:>10}: max |z| = {c['max_abs_z']:.2f} ({c['verdict']}), "
              f"relative error {c['relative_error']:.3%}")
    return 0
