"""Case files (TOML) -> frozen, validated configuration objects.

The schema is the one in DESIGN.md::

    name = "example"
    [sgd]      lr, momentum, weight_decay, batch_size
    [loss]     hessian (d x d) and minimum (d), or a [loss.linear_regression] table
    [noise]    model = proportional | isotropic | matrix | exact, sigma2, matrix
    [grid]     cells, width, bounds, force                       (optional)
    [run]      t_final, initial_mean, initial_cov_scale, scheme, dt, safety, steady_tol
    [simulate] chains, steps, burn_in, seed, batches, record_every   (optional)

Every key is checked for its type; unknown keys and missing required keys raise
:class:`~fpsolver.errors.CaseError` naming the dotted key. Numerical validity of the
hyperparameters (stability, definiteness) is checked when the model is built
(:func:`fpsolver.sgd.build_model`), which :func:`load_case` does too, so that a bad
case stops before any work.
"""

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CaseError
from .sgd import Hyperparameters

NOISE_MODELS = ("proportional", "isotropic", "matrix", "exact")
# loosest run.steady_tol (‖Lp‖₁/rate_max at which a run counts as stationary): at 1e-6 a
# transient stops 1.6e-4 (L1) short of the stationary density on the default 64² grid,
# well below that grid's 1.7e-3 discretisation error; at 1e-4, 1.4e-2
MAX_STEADY_TOL = 1e-6
# grid.cells per axis when absent: 128² in 2-D; 128⁴ would be 2.7e8 cells (about 75 GB for
# a stationary solve: the run was killed for memory), 32⁴ solves in 13 s (48⁴: 34 s)
DEFAULT_CELLS_2D = 128
DEFAULT_CELLS_4D = 32
SCHEMES = ("auto", "explicit", "implicit")
BATCH_SAMPLING = ("iid", "reshuffle")


@dataclass(frozen=True)
class LinearRegressionConfig:
    """A synthetic linear-regression data set, generated deterministically from ``seed``.

    Inputs x ~ N(0, C) with C = ``feature_covariance`` (or diag(``feature_eigenvalues``)
    rotated by ``rotation_angle`` radians when d = 2); labels y = xᵀw* + label_noise·ε.
    With ``match_covariance`` the inputs are whitened and recoloured so that the
    empirical Hessian XᵀX/N equals C exactly.
    """

    n_samples: int
    feature_eigenvalues: tuple | None = None
    feature_covariance: tuple | None = None
    rotation_angle: float = 0.0
    true_weights: tuple | None = None
    label_noise: float = 0.5
    seed: int = 0
    match_covariance: bool = True

    @property
    def dim(self):
        if self.feature_covariance is not None:
            return len(self.feature_covariance)
        return len(self.feature_eigenvalues)


@dataclass(frozen=True)
class LossConfig:
    """Quadratic loss ½(θ−θ*)ᵀH(θ−θ*) (``hessian``, ``minimum`` = θ*) or linear regression."""

    hessian: tuple | None = None
    minimum: tuple | None = None
    linear_regression: LinearRegressionConfig | None = None

    @property
    def dim(self):
        if self.linear_regression is not None:
            return self.linear_regression.dim
        return len(self.hessian)


@dataclass(frozen=True)
class NoiseConfig:
    """Gradient-noise model: Σ = sigma2·H, sigma2·I, an explicit matrix, or exact Σ(μ)."""

    model: str = "proportional"
    sigma2: float | None = None
    matrix: tuple | None = None


@dataclass(frozen=True)
class GridConfig:
    """Phase-space grid: cells and half-width (in stationary std) per axis, or bounds."""

    cells: tuple = ()
    width: tuple = ()
    bounds: tuple | None = None
    force: bool = False


@dataclass(frozen=True)
class RunConfig:
    """Fokker-Planck run: final time t = kη (None: stationary), initial Gaussian, stepping."""

    t_final: float | None = None
    initial_mean: tuple | None = None
    initial_cov_scale: float = 0.1
    scheme: str = "auto"
    dt: float | None = None
    safety: float | None = None  # None: the scheme's own (solve.EXPLICIT/IMPLICIT_SAFETY)
    steady_tol: float = 1e-10


@dataclass(frozen=True)
class SimulateConfig:
    """Monte-Carlo SGD: independent chains, steps (after burn-in), batches iid/reshuffle."""

    chains: int = 4096
    steps: int = 4000
    burn_in: int | None = None
    seed: int = 0
    batches: str = "iid"
    record_every: int = 1


@dataclass(frozen=True)
class Case:
    """A whole case; ``dim`` is d, the number of parameters (phase space has 2d axes)."""

    name: str
    sgd: Hyperparameters
    loss: LossConfig
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    run: RunConfig = field(default_factory=RunConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)

    @property
    def dim(self):
        return self.loss.dim

    def replace(self, **sections):
        """A copy with whole sections or section fields replaced.

        ``case.replace(run={"t_final": 5.0})`` updates fields of a section;
        ``case.replace(run=RunConfig(...))`` swaps the section.
        """
        new = {}
        for key, value in sections.items():
            if isinstance(value, dict):
                value = dataclasses.replace(getattr(self, key), **value)
            new[key] = value
        return case_from_dict(case_to_dict(dataclasses.replace(self, **new)))


# --------------------------------------------------------------------------- parsing

def _type_name(expected):
    names = {float: "a number", int: "an integer", str: "a string", bool: "true/false"}
    return names[expected]


def check_scalar(value, expected, key):
    """Check one TOML scalar; ints are accepted where floats are expected."""
    if expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise CaseError(f"{key} must be finite, got {value}")
        return float(value) if ok else _bad(key, expected, value)
    if expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return value if ok else _bad(key, expected, value)
    if isinstance(value, expected):
        return value
    return _bad(key, expected, value)


def _bad(key, expected, value):
    raise CaseError(f"{key} must be {_type_name(expected)}, got {type(value).__name__} {value!r}")


def _vector(value, key, length=None, kind=float):
    if not isinstance(value, (list, tuple)) or not value:
        raise CaseError(f"{key} must be a non-empty list of numbers, got {value!r}")
    out = tuple(check_scalar(v, kind, f"{key}[{i}]") for i, v in enumerate(value))
    if length is not None and len(out) != length:
        raise CaseError(f"{key} must have {_entries(length)}, got {len(out)}")
    return out


def _matrix(value, key, size=None):
    if not isinstance(value, (list, tuple)) or not value:
        raise CaseError(f"{key} must be a square matrix (list of lists), got {value!r}")
    rows = tuple(_vector(row, f"{key}[{i}]") for i, row in enumerate(value))
    n = len(rows)
    if any(len(r) != n for r in rows):
        raise CaseError(f"{key} must be a square matrix, got rows of lengths {[len(r) for r in rows]}")
    if size is not None and n != size:
        raise CaseError(f"{key} must be {size}x{size}, got {n}x{n}")
    return rows


def check_table(data, key):
    if not isinstance(data, dict):
        raise CaseError(f"[{key}] must be a table, got {type(data).__name__}")
    return dict(data)


def _entries(n):
    """"1 entry", "2 entries" (for error messages)."""
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def take_keys(table, section, spec, required=()):
    """Pop the keys of ``spec`` ({name: parser}) from ``table``; reject leftovers."""
    out = {}
    for name, parse in spec.items():
        dotted = f"{section}.{name}" if section else name
        if name in table:
            out[name] = parse(table.pop(name), dotted)
        elif name in required:
            raise CaseError(f"missing required key {dotted}")
    if table:
        unknown = sorted(table)[0]
        dotted = f"{section}.{unknown}" if section else unknown
        raise CaseError(f"unknown key {dotted} (known: {', '.join(spec)})")
    return out


def number(kind):
    return lambda value, key: check_scalar(value, kind, key)


def one_of(options):
    def parse(value, key):
        value = check_scalar(value, str, key)
        if value not in options:
            raise CaseError(f"{key} must be one of {', '.join(options)}, got {value!r}")
        return value
    return parse


def positive(kind, allow_zero=False):
    def parse(value, key):
        value = check_scalar(value, kind, key)
        if value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise CaseError(f"{key} must be {bound}, got {value}")
        return value
    return parse


def _per_axis(kind, positive=True):
    """A scalar (same for every axis) or a list with one entry per phase-space axis."""
    def parse(value, key):
        values = _vector(value, key, kind=kind) if isinstance(value, (list, tuple)) else (
            check_scalar(value, kind, key),)
        if positive and any(v <= 0 for v in values):
            raise CaseError(f"{key} must be > 0, got {value!r}")
        return values
    return parse


def _bounds(value, key):
    if not isinstance(value, (list, tuple)) or not value:
        raise CaseError(f"{key} must be a list of [low, high] pairs, one per phase-space axis")
    pairs = tuple(_vector(v, f"{key}[{i}]", length=2) for i, v in enumerate(value))
    for i, (lo, hi) in enumerate(pairs):
        if not lo < hi:
            raise CaseError(f"{key}[{i}] must have low < high, got [{lo}, {hi}]")
    return pairs


def _parse_sgd(data):
    spec = {"lr": positive(float), "momentum": number(float),
            "weight_decay": positive(float, allow_zero=True), "batch_size": number(int)}
    # every [sgd] key is required (DESIGN.md marks none optional): no silent β = 0 or S = 1
    return Hyperparameters(**take_keys(check_table(data, "sgd"), "sgd", spec, required=tuple(spec)))


def _parse_linear_regression(data):
    spec = {"n_samples": positive(int), "feature_eigenvalues": lambda v, k: _vector(v, k),
            "feature_covariance": lambda v, k: _matrix(v, k), "rotation_angle": number(float),
            "true_weights": lambda v, k: _vector(v, k), "label_noise": positive(float, True),
            "seed": number(int), "match_covariance": number(bool)}
    key = "loss.linear_regression"
    values = take_keys(check_table(data, key), key, spec, required=("n_samples",))
    has_eig, has_cov = "feature_eigenvalues" in values, "feature_covariance" in values
    if has_eig == has_cov:
        raise CaseError(f"{key} needs exactly one of feature_eigenvalues or feature_covariance")
    config = LinearRegressionConfig(**values)
    d = config.dim
    if config.rotation_angle and (has_cov or d != 2):
        raise CaseError(f"{key}.rotation_angle applies only to d = 2 feature_eigenvalues")
    if config.true_weights is not None and len(config.true_weights) != d:
        raise CaseError(f"{key}.true_weights must have {_entries(d)}, "
                        f"got {len(config.true_weights)}")
    if config.n_samples < 2:
        raise CaseError(f"{key}.n_samples must be >= 2, got {config.n_samples}")
    return config


def _parse_loss(data):
    table = check_table(data, "loss")
    spec = {"hessian": lambda v, k: _matrix(v, k), "minimum": lambda v, k: _vector(v, k),
            "linear_regression": lambda v, k: _parse_linear_regression(v)}
    values = take_keys(table, "loss", spec)
    if ("hessian" in values) == ("linear_regression" in values):
        raise CaseError("loss needs exactly one of loss.hessian or [loss.linear_regression]")
    loss = LossConfig(**values)
    if loss.minimum is not None:
        if loss.linear_regression is not None:
            raise CaseError("loss.minimum is set by the data for [loss.linear_regression]")
        if len(loss.minimum) != loss.dim:
            raise CaseError(f"loss.minimum must have {_entries(loss.dim)}, got {len(loss.minimum)}")
    return loss


def _parse_noise(data, loss):
    spec = {"model": one_of(NOISE_MODELS), "sigma2": positive(float, allow_zero=True),
            "matrix": lambda v, k: _matrix(v, k, size=loss.dim)}
    values = take_keys(check_table(data, "noise"), "noise", spec)
    default_model = "exact" if loss.linear_regression is not None else "proportional"
    noise = NoiseConfig(**{"model": default_model, **values})
    if noise.model == "matrix" and noise.matrix is None:
        raise CaseError("noise.matrix is required when noise.model = \"matrix\"")
    if noise.model != "matrix" and noise.matrix is not None:
        raise CaseError(f"noise.matrix is only used with noise.model = \"matrix\", not {noise.model!r}")
    if noise.model == "exact" and loss.linear_regression is None:
        raise CaseError("noise.model = \"exact\" needs a [loss.linear_regression] data set")
    if noise.model in ("matrix", "exact") and noise.sigma2 is not None:
        raise CaseError(f"noise.sigma2 is not used with noise.model = {noise.model!r} (remove it)")
    if noise.model in ("proportional", "isotropic") and noise.sigma2 is None \
            and loss.linear_regression is None:
        raise CaseError(f"noise.sigma2 is required for noise.model = {noise.model!r}")
    return noise


def _expand(values, n, key):
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise CaseError(f"{key} must have 1 or {n} entries (one per phase-space axis), got {len(values)}")
    return values


def _parse_grid(data, dim):
    spec = {"cells": _per_axis(int), "width": _per_axis(float), "bounds": _bounds,
            "force": number(bool)}
    values = take_keys(check_table(data, "grid"), "grid", spec)
    n = 2 * dim
    cells = _expand(values.get("cells", (DEFAULT_CELLS_2D if n <= 2 else DEFAULT_CELLS_4D,)),
                    n, "grid.cells")
    if min(cells) < 8:
        raise CaseError(f"grid.cells must be >= 8 per axis, got {list(cells)}")
    width = _expand(values.get("width", (6.0,)), n, "grid.width")
    bounds = values.get("bounds")
    if bounds is not None and len(bounds) != n:
        raise CaseError(f"grid.bounds must have {n} [low, high] pairs, got {len(bounds)}")
    return GridConfig(cells=cells, width=width, bounds=bounds, force=values.get("force", False))


def _parse_run(data, dim):
    spec = {"t_final": positive(float), "initial_mean": lambda v, k: _vector(v, k, 2 * dim),
            "initial_cov_scale": positive(float), "scheme": one_of(SCHEMES),
            "dt": positive(float), "safety": positive(float), "steady_tol": positive(float)}
    values = take_keys(check_table(data, "run"), "run", spec)
    run = RunConfig(**values)
    if run.safety is not None and not 0 < run.safety <= 1:
        raise CaseError(f"run.safety must be in (0, 1], got {run.safety}")
    if run.steady_tol > MAX_STEADY_TOL:
        raise CaseError(f"run.steady_tol must be <= {MAX_STEADY_TOL:g} (a looser stop is not "
                        f"stationary: 1e-4 left the default case 1.4e-2 from it in L1), got "
                        f"{run.steady_tol:g}")
    return run


def _parse_simulate(data):
    spec = {"chains": positive(int), "steps": positive(int),
            "burn_in": positive(int, allow_zero=True), "seed": number(int),
            "batches": one_of(BATCH_SAMPLING), "record_every": positive(int)}
    config = SimulateConfig(**take_keys(check_table(data, "simulate"), "simulate", spec))
    if config.chains < 2:
        raise CaseError(f"simulate.chains must be >= 2 (standard errors come from the spread "
                        f"across chains), got {config.chains}")
    return config


def case_from_dict(data):
    """Build a validated :class:`Case` from a (TOML-shaped) dictionary."""
    data = check_table(data, "case")
    for key in ("sgd", "loss"):
        if key not in data:
            raise CaseError(f"missing required table [{key}]")
    sections = {"name": None, "sgd": None, "loss": None, "noise": None, "grid": None,
                "run": None, "simulate": None}
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise CaseError(f"unknown key {unknown[0]} (known: {', '.join(sections)})")
    name = check_scalar(data.get("name", "case"), str, "name")
    loss = _parse_loss(data["loss"])
    sgd = _parse_sgd(data["sgd"])
    lr_data = loss.linear_regression
    if lr_data is not None and sgd.batch_size > lr_data.n_samples:
        raise CaseError(f"sgd.batch_size = {sgd.batch_size} exceeds "
                        f"loss.linear_regression.n_samples = {lr_data.n_samples}")
    return Case(
        name=name, sgd=sgd, loss=loss,
        noise=_parse_noise(data.get("noise", {}), loss),
        grid=_parse_grid(data.get("grid", {}), loss.dim),
        run=_parse_run(data.get("run", {}), loss.dim),
        simulate=_parse_simulate(data.get("simulate", {})),
    )


def case_to_dict(case):
    """The TOML-shaped dictionary of ``case`` (None entries dropped); inverse of case_from_dict."""
    def clean(obj):
        if dataclasses.is_dataclass(obj):
            return {f.name: clean(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                    if getattr(obj, f.name) is not None}
        if isinstance(obj, tuple):
            return [clean(v) for v in obj]
        return obj
    return clean(case)


def read_toml(path, what="case file"):
    """The dictionary of a TOML file, ``name`` defaulting to the file's stem; one-line errors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CaseError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise CaseError(f"{path} is not a UTF-8 text file (TOML): byte {exc.start} "
                        f"is {exc.object[exc.start:exc.start + 1]!r}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CaseError(f"{path} is not valid TOML: {exc}") from None
    data.setdefault("name", path.stem)
    return data


def load_case(path):
    """Read, parse and validate a TOML case file (the model is built once to check it)."""
    from .sgd import build_model

    case = case_from_dict(read_toml(path))
    build_model(case)
    return case


def default_case():
    """The built-in default: one parameter (2-D phase space), underdamped, Σ = σ²H.

    η = 0.05, β = 0.9, λ = 0.01, S = 8, h = 0.97, σ² = 0.25: ω ≈ 4.54, γ ≈ 1.05, so the
    density rotates about 1.4 times per unit of e-folding time.
    """
    return case_from_dict({
        "name": "default",
        "sgd": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01, "batch_size": 8},
        "loss": {"hessian": [[0.97]]},
        "noise": {"model": "proportional", "sigma2": 0.25},
    })
