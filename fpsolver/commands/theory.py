"""``fpsolver theory CASE.toml [--json]``: analytic predictions only."""

from . import add_case_argument, case_from_args


def add_parser(subparsers):
    p = subparsers.add_parser(
        "theory", help="analytic predictions (stationary covariances at levels 1-3, Q, ω, T)",
        description="Print the exact theory of a case: temperature, mass, friction, rotation "
                    "frequencies, stationary covariances (continuous; discrete recorded-pair "
                    "and midpoint; exact with state-dependent noise for linear regression), "
                    "Q and detailed-balance residuals.")
    add_case_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def theory_summary(model):
    """The dictionary ``fpsolver theory --json`` prints (DESIGN.md contract)."""
    from .. import theory as th

    omega, damped = th.rotation_frequencies(model)
    out = {
        "dim": model.dim,
        "noise_model": model.noise_model,
        "sigma2": model.sigma2,
        "temperature": model.temperature,
        "mass": model.mass,
        "gamma": model.gamma,
        "hessian_eigenvalues": model.hessian_eigenvalues,
        "rotation_frequencies": omega,
        "damped_frequencies": damped,
        "discrete_ratio": th.discrete_ratio(model),
        "stationary_mean": model.stationary_mean,
        "stationary_cov_continuous": th.stationary_cov(model),
        "stationary_cov_discrete": th.discrete_stationary_cov(model, "recorded"),
        "stationary_cov_discrete_midpoint": th.discrete_stationary_cov(model, "midpoint"),
        "Q": th.rotation_Q(model),
        "detailed_balance_residual": th.detailed_balance_residuals(model),
        "position_current_matrix": th.position_current_matrix(model),
    }
    if model.data is not None:
        out["stationary_cov_exact"] = th.exact_stationary_cov(model)
    return out


def _format_text(name, summary):
    import numpy as np

    lines = [f"case {name}: d = {summary['dim']}, noise {summary['noise_model']}"]
    for key, value in summary.items():
        if key in ("dim", "noise_model"):
            continue
        text = np.array2string(np.asarray(value), precision=6, max_line_width=100)
        lines.append(f"{key}:" + ("\n" + text if "\n" in text else " " + text))
    return "\n".join(lines)


def run(args):
    from ..io import to_json
    from ..sgd import build_model

    case = case_from_args(args)
    summary = theory_summary(build_model(case))
    print(to_json({"case": case.name, **summary}) if args.json else _format_text(case.name, summary))
    return 0
