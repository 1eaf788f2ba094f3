"""Hyperparameter sweeps on Dask: sweep files, points, per-point evaluation, resumable results.

A sweep file (TOML) names a base case and the axes to vary::

    name = "lr_batch_momentum"
    base = "case.toml"          # a case file relative to the sweep file, or an inline [base] table
    mode = "one-at-a-time"      # or "grid" (Cartesian product)
    seed = 0                    # sweep seed; point i simulates with seed_of(seed, i)
    levels = [1, 2, 3]          # continuous, discrete, exact (default: all that apply)

    [spectrum]                  # optional power-law Hessian h_i = h_max·i^(−alpha), i = 1..dim
    dim = 30                    # (feature eigenvalues of a linear-regression base case)
    alpha = 1.0
    h_max = 1.0

    [axes]                      # lists, {log = [lo, hi], num = n} or {linear = [lo, hi], num = n}
    lr = {log = [0.003, 0.3], num = 20}
    batch_size = [2, 4, 8, 16]  # + momentum, weight_decay, sigma2, label_noise, dim, alpha, h_max

    [simulate]                  # optional: Monte-Carlo SGD per point (i.i.d. batches by default)
    chains = 256
    steps = 2000
    burn_in = 1000

    [diffusion]                 # optional: Δ(k) = ‖θ_k − θ₀‖², θ₀ = μ + offset·(1,…,1)/√d, v₀ = 0
    k_max = 1000
    num_k = 30
    windows = [[10, 100], [100, 1000]]
    offset = 0.0

    [fokker_planck]             # optional, d = 1 only: stationary 2-D Fokker-Planck solve
    cells = 64

Columns of the results (one row per point; lists only in the Parquet file):

* inputs: ``index``, ``axis`` (the varied axis, or "grid"), ``seed`` (Monte-Carlo), ``lr``,
  ``momentum``, ``weight_decay``, ``batch_size``, ``sigma2``, ``label_noise``, ``dim``,
  ``alpha``, ``h_max``; model: ``sigma2_model`` (fitted σ²), ``tr_hessian``, ``h_top``,
  ``h_bottom``, ``temperature``, ``hessian_eigenvalues``, ``buf2_scale`` = η²σ² tr H/(S(1−β²)),
  ``eps_discrete`` = η(h_max+λ)/(2(1+β)), ``eps_state`` = η(tr H+h_max)/(2S(1−β));
* stationary moments per source L ∈ {continuous, discrete, exact, mc} (recorded pair
  (θ_{k+1}, v_k); Hessian modes in ascending h): ``var_theta_L``, ``var_v_L`` (lists),
  ``tr_var_theta_L``, ``ev2_L`` = E‖v‖², ``buf2_L`` = η²E‖buf‖²; Monte-Carlo adds ``*_se``,
  ``tr_var_theta_mc_midpoint``, ``mc_chains``, ``mc_burn_in``; ``ratio_L_tr_var_theta`` and
  ``ratio_L_ev2`` = prediction / Monte-Carlo;
* diffusion: ``delta_k``, ``delta_L`` (lists), ``delta_mc_se``, exponents ``c_L_K1_K2`` per
  window [K1, K2] and ``c_mc_se_K1_K2``;
* Fokker-Planck (d = 1): ``var_theta_fp``, ``var_v_fp``, ``fp_*`` errors, status and time;
* run: ``status`` (ok | failed | error), ``error`` (one line), ``wall_time_s``, ``worker``.

Points are evaluated by :func:`evaluate_point` (pure: same point, same row, on any worker);
:func:`run_sweep` farms them out on a ``dask.distributed`` cluster, writes one JSON file per
finished point (atomically) into ``OUT/points/`` and consolidates them into
``OUT/results.parquet`` and ``OUT/results.csv``. A killed sweep resumes: finished points are
skipped. Bad hyperparameters (unstable SGD, diverging level 3) make a ``failed`` row with
the message; unexpected exceptions are retried by Dask, then recorded as ``error`` rows
(re-run on resume).
"""

import copy
import hashlib
import itertools
import json
import logging
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .case import (case_from_dict, case_to_dict, check_scalar, check_table, load_case, number,
                   one_of, positive, read_toml, take_keys)
from .errors import CaseError, UserError
from .io import atomic_replace, atomic_write_json, to_json

MODES = ("one-at-a-time", "grid")
LEVELS = {1: "continuous", 2: "discrete", 3: "exact"}
SGD_AXES = ("lr", "momentum", "weight_decay", "batch_size")
SPECTRUM_AXES = ("dim", "alpha", "h_max")
AXES = SGD_AXES + ("sigma2", "label_noise") + SPECTRUM_AXES
INT_AXES = ("batch_size", "dim")
RETRIES = 2
POINTS_DIR = "points"
#: columns that legitimately differ between runs of the same sweep
RUN_COLUMNS = ("wall_time_s", "worker")


@dataclass(frozen=True)
class SimulateSpec:
    """Monte-Carlo SGD per point: chains in ``groups`` independent runs, ``steps`` recorded
    after ``burn_in`` steps (None: ≈ 10 covariance relaxation times of the point)."""

    chains: int = 256
    steps: int = 2000
    burn_in: int | None = None
    batches: str = "iid"
    record_every: int = 1
    groups: int = 8


@dataclass(frozen=True)
class DiffusionSpec:
    """Δ(k) on ``num_k`` log-spaced steps up to ``k_max``; exponents fitted on ``windows``."""

    k_max: int = 1000
    num_k: int = 30
    windows: tuple = ((10, 100),)
    offset: float = 0.0

    @property
    def k(self):
        """The steps k (int array, ascending, unique) at which Δ is evaluated."""
        return np.unique(np.round(np.logspace(0, math.log10(self.k_max), self.num_k)).astype(int))


@dataclass(frozen=True)
class FokkerPlanckSpec:
    """A stationary 2-D Fokker-Planck solve per point (d = 1): ``cells`` per phase-space axis."""

    cells: int = 64
    tol: float = 1e-10


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: the base case (TOML-shaped dict), axes and what to compute."""

    name: str
    base: dict
    mode: str
    seed: int
    levels: tuple
    axes: tuple            # ((axis, (values...)), ...) in file order
    spectrum: dict | None  # {"dim", "alpha", "h_max"} base values, or None
    simulate: SimulateSpec | None
    diffusion: DiffusionSpec | None
    fokker_planck: FokkerPlanckSpec | None = None

    def fingerprint(self):
        """A hash of everything that defines the points' results (for safe resumes)."""
        return hashlib.sha256(to_json(asdict(self), indent=None).encode()).hexdigest()[:16]

    def points(self):
        """The sweep's points, in a fixed order (see :func:`expand_points`)."""
        return expand_points(self)


@dataclass(frozen=True)
class Point:
    """One point: its index, the axis it varies ("grid" in grid mode) and its axis values."""

    index: int
    axis: str
    params: dict
    seed: int


# --------------------------------------------------------------------------- parsing


def _axis_values(value, key):
    """A list of numbers, or {log|linear = [lo, hi], num = n} -> tuple of values."""
    kind = int if key.split(".")[-1] in INT_AXES else float
    if isinstance(value, list):
        if not value:
            raise CaseError(f"{key} must be a non-empty list or a "
                            "{log|linear = [lo, hi], num = n} table")
        return tuple(check_scalar(v, kind, f"{key}[{i}]") for i, v in enumerate(value))
    table = check_table(value, key)
    spacing = [s for s in ("log", "linear") if s in table]
    if len(spacing) != 1:
        raise CaseError(f"{key} needs exactly one of log = [lo, hi] or linear = [lo, hi]")
    spec = {spacing[0]: lambda v, k: tuple(check_scalar(x, float, k) for x in _pair(v, k)),
            "num": positive(int)}
    values = take_keys(table, key, spec, required=("num",))
    lo, hi = values[spacing[0]]
    if spacing[0] == "log":
        if lo <= 0 or hi <= 0:
            raise CaseError(f"{key}.log bounds must be > 0, got [{lo}, {hi}]")
        grid = np.geomspace(lo, hi, values["num"])
    else:
        grid = np.linspace(lo, hi, values["num"])
    if kind is int:
        return tuple(int(v) for v in np.round(grid))
    return tuple(float(v) for v in grid)


def _pair(value, key):
    if not isinstance(value, list) or len(value) != 2:
        raise CaseError(f"{key} must be a [lo, hi] pair, got {value!r}")
    return value


def _parse_axes(data):
    table = check_table(data, "axes")
    unknown = sorted(set(table) - set(AXES))
    if unknown:
        raise CaseError(f"unknown key axes.{unknown[0]} (known: {', '.join(AXES)})")
    if not table:
        raise CaseError("[axes] must name at least one axis")
    return tuple((name, _axis_values(value, f"axes.{name}")) for name, value in table.items())


def _parse_spectrum(data):
    spec = {"dim": positive(int), "alpha": number(float), "h_max": positive(float)}
    return take_keys(check_table(data, "spectrum"), "spectrum", spec, required=("dim",))


def _parse_simulate(data):
    spec = {"chains": positive(int), "steps": positive(int),
            "burn_in": positive(int, allow_zero=True), "batches": one_of(("iid", "reshuffle")),
            "record_every": positive(int), "groups": positive(int)}
    sim = SimulateSpec(**take_keys(check_table(data, "simulate"), "simulate", spec))
    if sim.groups < 2:
        raise CaseError(f"simulate.groups must be >= 2 (standard errors), got {sim.groups}")
    if sim.chains < 2 * sim.groups:
        raise CaseError(f"simulate.chains must be >= 2·simulate.groups = {2 * sim.groups}, "
                        f"got {sim.chains}")
    return sim


def _parse_windows(value, key):
    if not isinstance(value, list) or not value:
        raise CaseError(f"{key} must be a non-empty list of [k1, k2] pairs")
    windows = []
    for i, pair in enumerate(value):
        k1, k2 = (check_scalar(v, int, f"{key}[{i}]") for v in _pair(pair, f"{key}[{i}]"))
        if not 1 <= k1 < k2:
            raise CaseError(f"{key}[{i}] must satisfy 1 <= k1 < k2, got [{k1}, {k2}]")
        windows.append((k1, k2))
    return tuple(windows)


def _parse_diffusion(data):
    spec = {"k_max": positive(int), "num_k": positive(int), "windows": _parse_windows,
            "offset": positive(float, allow_zero=True)}
    diff = DiffusionSpec(**take_keys(check_table(data, "diffusion"), "diffusion", spec))
    if diff.num_k < 4:
        raise CaseError(f"diffusion.num_k must be >= 4, got {diff.num_k}")
    for k1, k2 in diff.windows:
        if k2 > diff.k_max:
            raise CaseError(f"diffusion.windows [{k1}, {k2}] exceeds diffusion.k_max = "
                            f"{diff.k_max}")
        if np.count_nonzero((diff.k >= k1) & (diff.k <= k2)) < 3:
            raise CaseError(f"diffusion.windows [{k1}, {k2}] holds fewer than 3 of the num_k = "
                            f"{diff.num_k} log-spaced steps; raise diffusion.num_k")
    return diff


def _parse_fokker_planck(data):
    spec = {"cells": positive(int), "tol": positive(float)}
    fp = FokkerPlanckSpec(**take_keys(check_table(data, "fokker_planck"), "fokker_planck", spec))
    if fp.cells < 16:
        raise CaseError(f"fokker_planck.cells must be >= 16, got {fp.cells}")
    return fp


def _parse_levels(value, key):
    if not isinstance(value, list):
        raise CaseError(f"{key} must be a list of theory levels (1, 2, 3)")
    levels = tuple(sorted({check_scalar(v, int, f"{key}[{i}]") for i, v in enumerate(value)}))
    bad = [v for v in levels if v not in LEVELS]
    if bad:
        raise CaseError(f"{key} entries must be 1, 2 or 3, got {bad[0]}")
    return levels


def _parse_base(value, base_dir):
    """The base case as a TOML-shaped dict (validated), from a path or an inline table."""
    if isinstance(value, str):
        path = (base_dir / value) if not Path(value).is_absolute() else Path(value)
        return case_to_dict(load_case(path))
    table = check_table(value, "base")
    table.setdefault("name", "base")
    return case_to_dict(case_from_dict(table))


def sweep_from_dict(data, base_dir=Path(".")):
    """Build a validated :class:`Sweep` from a TOML-shaped dict (paths relative to base_dir)."""
    data = check_table(data, "sweep")
    if "base" not in data:
        raise CaseError("missing required key base (a case file path or an inline [base] table)")
    if "axes" not in data:
        raise CaseError("missing required table [axes]")
    spec = {"name": lambda v, k: check_scalar(v, str, k), "base": lambda v, k: _parse_base(v, base_dir),
            "mode": one_of(MODES), "seed": positive(int, allow_zero=True),
            "levels": _parse_levels, "axes": lambda v, k: _parse_axes(v),
            "spectrum": lambda v, k: _parse_spectrum(v),
            "simulate": lambda v, k: _parse_simulate(v),
            "diffusion": lambda v, k: _parse_diffusion(v),
            "fokker_planck": lambda v, k: _parse_fokker_planck(v)}
    values = take_keys(dict(data), "", spec)
    default_levels = (1, 2, 3) if "linear_regression" in values["base"]["loss"] else (1, 2)
    sweep = Sweep(name=values.get("name", "sweep"), base=values["base"],
                  mode=values.get("mode", "one-at-a-time"), seed=values.get("seed", 0),
                  levels=values.get("levels", default_levels), axes=values["axes"],
                  spectrum=values.get("spectrum"), simulate=values.get("simulate"),
                  diffusion=values.get("diffusion"), fokker_planck=values.get("fokker_planck"))
    _check_consistency(sweep)
    for point in sweep.points():  # every point must make a valid case (stability is per point)
        case = point_case(sweep, point)
        if sweep.fokker_planck is not None and case.dim != 1:
            raise CaseError(f"[fokker_planck] needs d = 1 (2-D phase space); sweep point "
                            f"{point.index} has d = {case.dim}")
    return sweep


def _check_consistency(sweep):
    names = [name for name, _ in sweep.axes]
    linear_regression = "linear_regression" in sweep.base["loss"]
    noise_model = sweep.base["noise"]["model"]
    if sweep.spectrum is None and any(n in SPECTRUM_AXES for n in names):
        axis = next(n for n in names if n in SPECTRUM_AXES)
        raise CaseError(f"axes.{axis} needs a [spectrum] table (power-law Hessian)")
    if "label_noise" in names and not linear_regression:
        raise CaseError("axes.label_noise needs a [loss.linear_regression] base case")
    if "sigma2" in names and noise_model not in ("proportional", "isotropic"):
        raise CaseError(f"axes.sigma2 needs noise.model = proportional or isotropic, "
                        f"the base case has {noise_model!r} (vary label_noise instead)")
    if sweep.simulate and sweep.diffusion and sweep.simulate.steps < sweep.diffusion.k_max:
        raise CaseError(f"simulate.steps = {sweep.simulate.steps} must be >= diffusion.k_max = "
                        f"{sweep.diffusion.k_max} (Δ(k) is measured on the simulated steps)")
    if 3 in sweep.levels and not linear_regression:
        raise CaseError("levels: level 3 needs a [loss.linear_regression] base case; use [1, 2]")


def load_sweep(path):
    """Read and validate a sweep file (TOML); the base case path is relative to it."""
    path = Path(path)
    return sweep_from_dict(read_toml(path, "sweep file"), path.parent)


# --------------------------------------------------------------------------- points


def seed_of(sweep_seed, index):
    """The Monte-Carlo seed of point ``index``: a pure function of the sweep seed and index."""
    return int(np.random.SeedSequence([sweep_seed, index]).generate_state(1, dtype=np.uint32)[0])


def expand_points(sweep):
    """Points of the sweep: axes in file order, values in list order.

    ``grid``: the Cartesian product (last axis fastest); ``one-at-a-time``: each axis in
    turn with the others at the base case's values.
    """
    if sweep.mode == "grid":
        names = [name for name, _ in sweep.axes]
        combos = [("grid", dict(zip(names, values)))
                  for values in itertools.product(*(v for _, v in sweep.axes))]
    else:
        combos = [(name, {name: value}) for name, values in sweep.axes for value in values]
    return [Point(i, axis, params, seed_of(sweep.seed, i))
            for i, (axis, params) in enumerate(combos)]


def base_values(sweep):
    """The base case's value of every axis (None where the axis does not apply)."""
    base = sweep.base  # case_to_dict output: every field with a value is present
    out = {name: base["sgd"][name] for name in SGD_AXES}
    out["sigma2"] = base["noise"].get("sigma2")
    out["label_noise"] = base["loss"].get("linear_regression", {}).get("label_noise")
    spectrum = {"alpha": 1.0, "h_max": 1.0, **(sweep.spectrum or {})}
    for name in SPECTRUM_AXES:
        out[name] = spectrum.get(name) if sweep.spectrum is not None else None
    return out


def point_values(sweep, point):
    """Every axis value of ``point`` (base values where the point does not vary them)."""
    return {**base_values(sweep), **point.params}


def power_law_spectrum(dim, alpha, h_max):
    """h_i = h_max·i^(−alpha), i = 1..dim, shape (dim,)."""
    return h_max * np.arange(1, dim + 1, dtype=float) ** (-alpha)


def point_case(sweep, point):
    """The validated :class:`~fpsolver.case.Case` of one point."""
    data = copy.deepcopy(sweep.base)
    values = point_values(sweep, point)
    data["name"] = f"{sweep.name}-{point.index:05d}"
    for name in SGD_AXES:
        if name in point.params:
            data["sgd"][name] = point.params[name]
    if "sigma2" in point.params:
        data["noise"]["sigma2"] = point.params["sigma2"]
    if "label_noise" in point.params:
        data["loss"]["linear_regression"]["label_noise"] = point.params["label_noise"]
    if sweep.spectrum is not None:
        _set_spectrum(data, values)
    try:
        return case_from_dict(data)
    except CaseError as exc:
        raise CaseError(f"sweep point {point.index} ({_describe_params(point)}): {exc}") from None


def _describe_params(point):
    return ", ".join(f"{k} = {v}" for k, v in point.params.items())


def _set_spectrum(data, values):
    """Put the power-law spectrum into the case dict; d-sized sections are reset to scalars."""
    eig = power_law_spectrum(values["dim"], values["alpha"], values["h_max"]).tolist()
    loss = data["loss"]
    if "linear_regression" in loss:
        lr_data = loss["linear_regression"]
        lr_data.pop("feature_covariance", None)
        lr_data.pop("rotation_angle", None)
        lr_data["feature_eigenvalues"] = eig
        weights = lr_data.get("true_weights")
        if weights is not None and len(weights) != len(eig):
            raise CaseError(f"base loss.linear_regression.true_weights has {len(weights)} entries "
                            f"but spectrum dim = {len(eig)}; remove it (default: ones)")
    else:
        loss["hessian"] = np.diag(eig).tolist()
        loss.pop("minimum", None)
    grid = data.get("grid", {})
    for key in ("cells", "width"):
        if key in grid and len(set(grid[key])) == 1:
            grid[key] = grid[key][0]
        elif key in grid:
            raise CaseError(f"base grid.{key} differs per axis; with a [spectrum] give one value")
    grid.pop("bounds", None)
    data.get("run", {}).pop("initial_mean", None)


# --------------------------------------------------------------------------- evaluation


def _mode_variances(cov, vectors):
    """Per-mode variances (d,) of a (d, d) covariance in the Hessian eigenbasis ``vectors``."""
    return np.einsum("ij,ik,kj->j", vectors, cov, vectors)


def _moments(prefix, cov, model):
    """Row entries of one (2d, 2d) phase-space covariance: per-mode and total variances."""
    d, eta = model.dim, model.hyper.lr
    u = model.hessian_eigenvectors
    var_theta = _mode_variances(cov[:d, :d], u)
    var_v = _mode_variances(cov[d:, d:], u)
    return {f"var_theta_{prefix}": var_theta.tolist(), f"var_v_{prefix}": var_v.tolist(),
            f"tr_var_theta_{prefix}": float(var_theta.sum()), f"ev2_{prefix}": float(var_v.sum()),
            f"buf2_{prefix}": float(eta ** 2 * var_v.sum())}


def describe_model(model):
    """Scalars of the model that the study plots against (per point)."""
    h = model.hyper
    eig = model.hessian_eigenvalues
    tr_h, h_top = float(eig.sum()), float(eig.max())
    return {
        "dim": model.dim, "sigma2_model": model.sigma2, "tr_hessian": tr_h, "h_top": h_top,
        "h_bottom": float(eig.min()), "temperature": model.temperature,
        "hessian_eigenvalues": eig.tolist(),
        # η²σ² tr H/(S(1−β²)): the continuous prediction of η²E‖buf‖² for Σ = σ²H (THEORY §6)
        "buf2_scale": h.lr ** 2 * model.sigma2 * tr_h / (h.batch_size * (1 - h.momentum ** 2)),
        # the two small parameters of THEORY §8 that the continuous formula needs ≪ 1
        "eps_discrete": h.lr * (h_top + h.weight_decay) / (2 * (1 + h.momentum)),
        "eps_state": h.lr * (tr_h + h_top) / (2 * h.batch_size * (1 - h.momentum)),
    }


def theory_moments(model, levels):
    """Stationary moments per theory level (recorded pair (θ_{k+1}, v_k)), as row entries."""
    from . import theory as th

    solvers = {1: th.stationary_cov, 2: th.discrete_stationary_cov, 3: th.exact_stationary_cov}
    out = {}
    for level in levels:
        out.update(_moments(LEVELS[level], solvers[level](model), model))
    return out


def theta_start(model, offset):
    """θ₀ = μ + offset·(1,…,1)/√d, shape (d,)."""
    return model.mu + offset * np.ones(model.dim) / math.sqrt(model.dim)


def theory_diffusion(model, diffusion, levels):
    """Δ(k) from (θ₀, v₀ = 0) and its fitted exponents per window: levels 1 and 2, and
    level 3 when it is requested, the model has data and θ₀ = μ."""
    from . import theory as th

    k = diffusion.k
    theta0 = theta_start(model, diffusion.offset)
    curves = {"continuous": lambda: th.diffusion_curve_continuous(model, theta0, k),
              "discrete": lambda: th.diffusion_curve_discrete(model, theta0, k)}
    if 3 in levels and model.data is not None:
        curves["exact"] = lambda: th.diffusion_curve_exact(model, theta0, k)
    out = {"delta_k": k.tolist()}
    for level, curve in curves.items():
        with np.errstate(under="ignore"):
            delta = curve()
        out[f"delta_{level}"] = delta.tolist()
        for k1, k2 in diffusion.windows:
            out[f"c_{level}_{k1}_{k2}"] = th.fit_exponent(k, delta, k1, k2)
    return out


def add_ratios(row, levels):
    """Prediction / Monte-Carlo ratios of tr Var θ and E‖v‖² for each level present.

    Levels 2 and 3 are compared with the recorded pair (θ_{k+1}, v_k), the continuous level
    with the midpoint ((θ_k + θ_{k+1})/2, v_k), its natural counterpart (THEORY.md §8).
    """
    for level in levels:
        name = LEVELS[level]
        for quantity in ("tr_var_theta", "ev2"):
            midpoint = name == "continuous" and quantity == "tr_var_theta"
            measured = row.get(f"{quantity}_mc" + ("_midpoint" if midpoint else ""))
            predicted = row.get(f"{quantity}_{name}")
            if measured is not None and predicted is not None:
                row[f"ratio_{name}_{quantity}"] = predicted / measured if measured > 0 else math.nan


def _worker_address():
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "local"


def evaluate_point(sweep, point):
    """The result row (dict of JSON-able values) of one point; deterministic in its inputs.

    A :class:`~fpsolver.errors.UserError` (unstable SGD, diverging level 3) gives a row
    with ``status = "failed"`` and the message in ``error``; anything else propagates (Dask
    retries it).
    """
    from .sgd import build_model

    start = time.perf_counter()
    row = {"index": point.index, "axis": point.axis, "seed": point.seed,
           **point_values(sweep, point), "status": "ok", "error": ""}
    try:
        case = point_case(sweep, point)
        model = build_model(case)
        row.update(describe_model(model))
        row.update(theory_moments(model, sweep.levels))
        if sweep.diffusion is not None:
            row.update(theory_diffusion(model, sweep.diffusion, sweep.levels))
        if sweep.fokker_planck is not None:
            row.update(fokker_planck(case, model, sweep.fokker_planck))
        if sweep.simulate is not None:
            row.update(monte_carlo(model, sweep, point.seed))
            add_ratios(row, sweep.levels)
    except UserError as exc:
        row.update(status="failed", error=str(exc))
    row["wall_time_s"] = time.perf_counter() - start
    row["worker"] = _worker_address()
    return row


def fokker_planck(case, model, spec):
    """Stationary 2-D Fokker-Planck solve of the point: its variances, their relative errors
    and the density's (``fp_l1_error`` = ∫|p − p_exact|) and current's against the exact
    continuous Gaussian, and its cost."""
    from .analysis import compare, moments
    from .solve import setup_problem
    from .stationary import stationary
    from .theory import stationary_cov

    start = time.perf_counter()
    problem = setup_problem(case.replace(run={"t_final": None}), model, cells=spec.cells)
    result = stationary(problem.op, tol=spec.tol)
    errors = compare(problem, result)
    _, cov = moments(result.p, problem.grid)
    exact = stationary_cov(model)
    return {"fp_status": result.status, "fp_cells": spec.cells,
            "var_theta_fp": float(cov[0, 0]), "var_v_fp": float(cov[1, 1]),
            "fp_var_theta_rel_error": float(cov[0, 0] / exact[0, 0] - 1),
            "fp_var_v_rel_error": float(cov[1, 1] / exact[1, 1] - 1),
            "fp_l1_error": errors["l1_error"],
            "fp_current_l1_rel_error": errors["current_l1_rel_error"],
            "fp_mass_error": errors["mass_error"], "fp_wall_time_s": time.perf_counter() - start}


def monte_carlo(model, sweep, seed):
    """Monte-Carlo SGD moments and Δ(k) as row entries, from ``groups`` independent runs.

    Each group g runs chains/groups chains with seed :func:`seed_of` (seed, g) from
    θ₀ (:func:`theta_start`, buffer 0): Δ(k) from the start, stationary moments of the
    recorded pair (θ_{k+1}, v_k) after burn-in. Estimates are group means; standard errors
    (``*_se``) the spread across groups / √groups (for Δ(k), across chains).
    """
    from .simulate import simulate_sgd

    spec, diffusion = sweep.simulate, sweep.diffusion
    theta0 = theta_start(model, diffusion.offset if diffusion else 0.0)
    chains = spec.chains // spec.groups
    runs = [simulate_sgd(model, chains, spec.steps, burn_in=spec.burn_in, seed=seed_of(seed, g),
                         batches=spec.batches, theta0=theta0, record_every=spec.record_every,
                         delta_steps=diffusion.k_max if diffusion else 0, trajectory=(0, 0),
                         parallel=False)
             for g in range(spec.groups)]
    per_group = [_moments("mc", r.cov, model) for r in runs]
    for r, entry in zip(runs, per_group):
        mid = _moments("mc_midpoint", r.cov_midpoint, model)
        entry["tr_var_theta_mc_midpoint"] = mid["tr_var_theta_mc_midpoint"]
    out = {"mc_chains": chains * spec.groups, "mc_burn_in": runs[0].burn_in}
    for key in per_group[0]:
        values = np.array([entry[key] for entry in per_group])
        out[key] = values.mean(axis=0).tolist()
        out[f"{key}_se"] = (values.std(axis=0, ddof=1) / math.sqrt(spec.groups)).tolist()
    if diffusion is not None:
        out.update(_measured_diffusion(runs, diffusion))
    return out


def _measured_diffusion(runs, diffusion):
    """Monte-Carlo Δ(k) on the sweep's k grid and its exponents (s.e. across groups)."""
    from .theory import fit_exponent

    k = diffusion.k
    deltas = np.array([r.delta[k] for r in runs])
    delta_se = np.sqrt(np.sum([r.delta_se[k] ** 2 for r in runs], axis=0)) / len(runs)
    out = {"delta_mc": deltas.mean(axis=0).tolist(), "delta_mc_se": delta_se.tolist()}
    for k1, k2 in diffusion.windows:
        per_group = [fit_exponent(k, delta, k1, k2) for delta in deltas]
        out[f"c_mc_{k1}_{k2}"] = fit_exponent(k, deltas.mean(axis=0), k1, k2)
        out[f"c_mc_se_{k1}_{k2}"] = float(np.std(per_group, ddof=1) / math.sqrt(len(runs)))
    return out


# --------------------------------------------------------------------------- results


def point_path(out, index):
    return Path(out) / POINTS_DIR / f"{index:05d}.json"


def finished_points(out):
    """{index: row} of point files whose status is final ("ok" or "failed")."""
    rows = {}
    for path in sorted((Path(out) / POINTS_DIR).glob("*.json")):
        row = json.loads(path.read_text())
        if row.get("status") in ("ok", "failed"):
            rows[row["index"]] = row
    return rows


def _check_out_dir(sweep, out):
    """Refuse an OUT that holds results of a different sweep (by fingerprint)."""
    meta = Path(out) / "sweep.json"
    if meta.exists():
        old = json.loads(meta.read_text()).get("fingerprint")
        if old != sweep.fingerprint():
            raise UserError(f"--out {out} holds results of a different sweep (fingerprint {old}, "
                            f"this one {sweep.fingerprint()}); use another directory")


def _write_sweep_meta(sweep, out):
    """OUT/sweep.json: the sweep (as run) and its fingerprint, checked on resume."""
    meta = Path(out) / "sweep.json"
    if not meta.exists():
        atomic_write_json(meta, {"fingerprint": sweep.fingerprint(), "fpsolver": __version__,
                                 "sweep": asdict(sweep)})


def consolidate(out):
    """Gather OUT/points/*.json into OUT/results.parquet (all columns) and results.csv.

    The CSV holds the scalar columns; the Parquet file also the per-mode lists and Δ(k)
    curves. Returns the table (pandas DataFrame, one row per point, sorted by index).
    """
    import pandas as pd

    rows = [json.loads(p.read_text()) for p in sorted((Path(out) / POINTS_DIR).glob("*.json"))]
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values("index").reset_index(drop=True)
    scalar = [c for c in table.columns if not table[c].map(lambda v: isinstance(v, list)).any()]
    with atomic_replace(Path(out) / "results.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_replace(Path(out) / "results.csv") as tmp:
        table[scalar].to_csv(tmp, index=False)
    return table


def load_results(out):
    """The consolidated results table of a sweep directory (pandas DataFrame)."""
    import pandas as pd

    path = Path(out) / "results.parquet"
    if not path.exists():
        raise UserError(f"no results in {out} (missing {path.name}); run the sweep first")
    return pd.read_parquet(path)


def _failure_row(sweep, point, exc):
    return {"index": point.index, "axis": point.axis, "seed": point.seed,
            **point_values(sweep, point), "status": "error",
            "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}


@contextmanager
def _sigint_ignored():
    """SIGINT ignored while the enclosed code runs (main thread only): processes started
    meanwhile inherit that, so Ctrl-C reaches this process alone, which closes the cluster
    (each local worker printed a KeyboardInterrupt traceback of ~40 lines before)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _start_client(scheduler, workers):
    """(client, cluster): connected to ``scheduler``, or to a new LocalCluster (cluster not
    None) of ``workers`` single-threaded worker processes (Numba single-threaded too)."""
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            return Client(scheduler, timeout="10s"), None
        except OSError as exc:
            raise UserError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
    with _sigint_ignored():
        # worker log lines below ERROR (a task cancelled by Ctrl-C, a slow event loop
        # while numba compiles) are noise here: a failing point becomes an error row
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0", env={"NUMBA_NUM_THREADS": "1"},
                               silence_logs=logging.ERROR)
    return Client(cluster), cluster


def run_sweep(sweep, out, scheduler=None, workers=2, progress=True, log=print):
    """Evaluate every unfinished point on Dask and consolidate; returns the results table.

    ``scheduler``: address of a running scheduler (its workers must import fpsolver); else a
    LocalCluster of ``workers`` single-threaded worker processes. Each point's row is
    written to ``out/points/`` as it completes; finished points are skipped, so running a
    killed sweep again only does the rest. Ctrl-C ends it with one line that counts the
    saved points (the local workers ignore SIGINT and are closed with the cluster).
    ``log``: where the one-line messages go.
    """
    from distributed import as_completed
    from tqdm import tqdm

    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    out = Path(out)
    _check_out_dir(sweep, out)
    points = sweep.points()
    done = finished_points(out)
    todo = [p for p in points if p.index not in done]
    log(f"sweep {sweep.name}: {len(points)} points, {len(done)} already done, {len(todo)} to run")
    if todo:
        client, cluster = _start_client(scheduler, workers)
        try:
            _write_sweep_meta(sweep, out)
            log(f"dask dashboard: {client.dashboard_link}")
            keys = [f"{sweep.name}-{sweep.fingerprint()}-{p.index:05d}" for p in todo]
            futures = client.map(evaluate_point, [sweep] * len(todo), todo, key=keys,
                                 retries=RETRIES, pure=False)
            by_key = {f.key: p for f, p in zip(futures, todo)}
            with tqdm(total=len(todo), desc=f"sweep {sweep.name}", disable=not progress) as bar:
                try:
                    for future in as_completed(futures):
                        point = by_key[future.key]
                        if future.status == "finished":
                            row = future.result()
                        else:
                            row = _failure_row(sweep, point, future.exception())
                        atomic_write_json(point_path(out, point.index), row)
                        future.release()
                        bar.update()
                except KeyboardInterrupt:
                    bar.close()
                    saved = len(finished_points(out))
                    log(f"interrupted: {saved} of {len(points)} points are saved in "
                        f"{out / POINTS_DIR}; the same command runs the rest")
                    raise
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    return consolidate(out)

