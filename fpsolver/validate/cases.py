"""The validation cases of the convergence study (2-D unless noted).

Each entry: a Case (stationary: no ``run.t_final``) and the transient variant, started
from a Gaussian displaced by two stationary standard deviations in θ with covariance
0.25 × the stationary one, run for a number of rotation periods (underdamped) or of
e-folding times of the slow position mode (overdamped; "auto" steps it implicitly from 256²).
"""

import numpy as np

from .. import theory
from ..case import case_from_dict, default_case
from ..sgd import build_model

INITIAL_COV_SCALE = 0.25
DISPLACEMENT_SD = 2.0

_SPECS = {
    "default": None,  # the built-in default case
    "strong weight decay": {"sgd": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.1,
                                    "batch_size": 8},
                            "loss": {"hessian": [[0.1]]},
                            "noise": {"model": "proportional", "sigma2": 0.25}},
    "high momentum": {"sgd": {"lr": 0.05, "momentum": 0.99, "weight_decay": 0.01,
                              "batch_size": 8},
                      "loss": {"hessian": [[0.97]]},
                      "noise": {"model": "proportional", "sigma2": 0.25}},
    "overdamped SGD": {"sgd": {"lr": 0.02, "momentum": 0.0, "weight_decay": 0.01,
                               "batch_size": 8},
                       "loss": {"hessian": [[0.97]]},
                       "noise": {"model": "proportional", "sigma2": 0.25}},
    "non-commuting 4-D": {"sgd": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01,
                                  "batch_size": 8},
                          "loss": {"hessian": [[0.755734, 0.379458], [0.379458, 0.309074]]},
                          "noise": {"model": "matrix",
                                    "matrix": [[0.61441, 0.368646], [0.368646, 0.61441]]},
                          "grid": {"width": 5.5}},
}

NAMES = tuple(_SPECS)
CASES_2D = NAMES[:-1]
CASE_4D = NAMES[-1]


def stationary_case(name):
    """The Case ``name`` (stationary: no t_final)."""
    spec = _SPECS[name]
    if spec is None:
        return default_case()
    return case_from_dict({"name": name.replace(" ", "_"), **spec})


def transient_time(model, periods):
    """``periods`` periods 2π/f of the slowest underdamped mode, else ``periods``
    e-folding times 1/(γ − √(γ² − ω²)) of the slowest overdamped mode (t = kη)."""
    omega, damped = theory.rotation_frequencies(model)
    if np.all(damped > 0):
        return float(periods * 2 * np.pi / damped.min())
    gamma = model.gamma
    slow = gamma - np.sqrt(np.clip(gamma ** 2 - omega ** 2, 0, None))
    return float(periods / slow.min())


def transient_case(name, periods=1):
    """The transient variant of ``name``: displaced Gaussian start, t_final from
    :func:`transient_time`."""
    case = stationary_case(name)
    model = build_model(case)
    p_ss = theory.stationary_cov(model)
    d = model.dim
    mean0 = model.stationary_mean.copy()
    mean0[:d] += DISPLACEMENT_SD * np.sqrt(np.diag(p_ss)[:d])
    return case.replace(run={"t_final": transient_time(model, periods),
                             "initial_mean": tuple(float(x) for x in mean0),
                             "initial_cov_scale": INITIAL_COV_SCALE})
