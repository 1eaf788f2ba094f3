"""Case files and the model: every bad input gets one line naming the key or the bound."""

import subprocess
import sys

import numpy as np
import pytest

from fpsolver import theory
from fpsolver.case import case_from_dict, case_to_dict, default_case, load_case
from fpsolver.errors import CaseError, UnstableError
from fpsolver.sgd import PhaseSpaceModel, build_model

BASE = {
    "name": "t",
    "sgd": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01, "batch_size": 8},
    "loss": {"hessian": [[0.97, 0.0], [0.0, 0.09]]},
    "noise": {"model": "proportional", "sigma2": 0.25},
}


def with_(path, value):
    """BASE with the dotted key ``path`` set to ``value`` (None deletes it)."""
    import copy

    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(last)
    else:
        node[last] = value
    return data


def test_default_case_is_two_dimensional_and_valid():
    case = default_case()
    model = build_model(case)
    assert case.dim == 1 and case.grid.cells == (128, 128) and case.grid.width == (6.0, 6.0)
    assert model.omega[0] == pytest.approx(np.sqrt(0.98 / 0.0475), rel=1e-14)
    assert case.run.t_final is None


def test_round_trip_and_toml(tmp_path):
    case = case_from_dict(BASE)
    assert case_from_dict(case_to_dict(case)) == case
    path = tmp_path / "c.toml"
    path.write_text('name = "x"\n[sgd]\nlr = 0.05\nmomentum = 0.9\nweight_decay = 0.0\n'
                    'batch_size = 8\n'
                    '[loss]\nhessian = [[1.0]]\n[noise]\nsigma2 = 0.25\n'
                    '[grid]\ncells = [64, 32]\n[run]\nt_final = 2\ninitial_mean = [0.1, 0]\n')
    loaded = load_case(path)
    assert loaded.grid.cells == (64, 32) and loaded.run.t_final == 2.0
    assert loaded.run.initial_mean == (0.1, 0.0) and loaded.sgd.weight_decay == 0.0
    assert loaded.replace(run={"t_final": 3.0}).run.t_final == 3.0


def test_cases_are_frozen():
    case = case_from_dict(BASE)
    with pytest.raises(AttributeError):
        case.sgd.lr = 1.0


@pytest.mark.parametrize("path,value,message", [
    ("sgd.lr", 0.0, "sgd.lr must be > 0"),
    ("sgd.lr", -0.1, "sgd.lr must be > 0"),
    ("sgd.lr", "fast", "sgd.lr must be a number, got str"),
    ("sgd.momentum", 1.0, "sgd.momentum must be in [0, 1)"),
    ("sgd.momentum", -0.1, "sgd.momentum must be in [0, 1)"),
    ("sgd.batch_size", 0, "sgd.batch_size must be an integer >= 1"),
    ("sgd.batch_size", 2.5, "sgd.batch_size must be an integer"),
    ("sgd.nesterov", True, "unknown key sgd.nesterov"),
    ("sgd.lr", None, "missing required key sgd.lr"),
    ("sgd.momentum", None, "missing required key sgd.momentum"),
    ("sgd.weight_decay", None, "missing required key sgd.weight_decay"),
    ("sgd.batch_size", None, "missing required key sgd.batch_size"),
    ("noise", {"model": "matrix", "matrix": [[1.0, 0.0], [0.0, 1.0]], "sigma2": 0.25},
     "noise.sigma2 is not used with noise.model = 'matrix'"),
    ("colour", "red", "unknown key colour"),
    ("noise.sigma2", -0.1, "noise.sigma2 must be >= 0"),
    ("noise.model", "pink", "noise.model must be one of"),
    ("noise.sigma2", None, "noise.sigma2 is required"),
    ("loss.hessian", [[1.0, 0.2], [0.1, 1.0]], "loss.hessian must be symmetric"),
    ("loss.hessian", [[1.0, 0.0], [0.0, -0.5]], "positive definite, smallest eigenvalue -0.49"),
    ("loss.hessian", [[1.0, 0.0]], "loss.hessian must be a square matrix"),
    ("loss.hessian", [[1.0, 0.0], [0.0, float("nan")]], "must be finite"),
    ("grid.cells", 4, "grid.cells must be >= 8"),
    ("grid.cells", [64, 64, 64], "grid.cells must have 1 or 4 entries"),
    ("run.t_final", 0.0, "run.t_final must be > 0"),
    ("run.steady_tol", 1e-3, "run.steady_tol must be <= 1e-06"),
    ("simulate.chains", 1, "simulate.chains must be >= 2"),
    ("run.initial_mean", [0.1, 0.2], "run.initial_mean must have 4 entries"),
])
def test_bad_input_names_the_key(path, value, message):
    with pytest.raises(CaseError, match=None) as info:
        build_model(case_from_dict(with_(path, value)))
    text = str(info.value)
    assert message in text and "\n" not in text


def test_noise_matrix_must_be_symmetric_psd():
    bad = with_("noise", {"model": "matrix", "matrix": [[1.0, 2.0], [2.0, 1.0]]})
    with pytest.raises(CaseError, match="noise.matrix must be positive semi-definite, smallest "
                                        "eigenvalue -1"):
        build_model(case_from_dict(bad))
    asym = with_("noise", {"model": "matrix", "matrix": [[1.0, 0.1], [0.0, 1.0]]})
    with pytest.raises(CaseError, match="noise.matrix must be symmetric"):
        build_model(case_from_dict(asym))


@pytest.mark.parametrize("noise, key", [
    ({"model": "isotropic", "sigma2": 0.0}, "noise.sigma2"),
    ({"model": "matrix", "matrix": [[1.0, 0.0], [0.0, 0.0]]}, "noise.matrix"),
])
def test_noise_that_leaves_a_direction_still_is_refused(noise, key):
    """Σ = 0 on an eigen-direction of a diagonal H: that mode's stationary covariance is 0
    (the theory failed on a singular matrix, the solver blamed grid.bounds). With H not
    commuting, the same singular Σ still reaches every direction: accepted (P's smallest
    eigenvalue 1.0e-2 of the largest)."""
    case = case_from_dict({**with_("noise", noise), "loss": {"hessian": [[1.0, 0.0],
                                                                         [0.0, 0.5]]}})
    with pytest.raises(CaseError, match=f"without fluctuations .* check {key}"):
        build_model(case)
    mixed = case_from_dict({**with_("noise", noise), "loss": {"hessian": [[1.0, 0.3],
                                                                          [0.3, 0.5]]}})
    if noise["model"] == "matrix":
        ev = np.linalg.eigvalsh(theory.stationary_cov(build_model(mixed)))
        assert ev[0] > 1e-6 * ev[-1]


def test_default_cells_per_axis_depend_on_the_phase_space_dimension():
    """128 per axis in 2-D; 32 in 4-D (128⁴ = 2.7e8 cells ran out of memory)."""
    assert case_from_dict(with_("loss.hessian", [[0.97]])).grid.cells == (128,) * 2
    assert case_from_dict(BASE).grid.cells == (32,) * 4


def test_unstable_hyperparameters_say_which_mode_and_by_how_much():
    # mode 1: η(h+λ) = 2.1·(0.97+0.01) = 2.058 vs 2(1+β) = 2 -> 2.9 % over
    bad = with_("sgd", {"lr": 2.1, "momentum": 0.0, "weight_decay": 0.01, "batch_size": 8})
    with pytest.raises(UnstableError) as info:
        build_model(case_from_dict(bad))
    text = str(info.value)
    assert "mode 1" in text and "η(h+λ) = 2.058 >= 2(1+β) = 2" in text
    assert "over the bound by 2.9 %" in text and "below 2.04082" in text


def test_batch_size_above_samples():
    data = with_("loss", {"linear_regression": {"n_samples": 6, "feature_eigenvalues": [1.0]}})
    data.pop("noise")
    with pytest.raises(CaseError, match="sgd.batch_size = 8 exceeds "
                                        "loss.linear_regression.n_samples = 6"):
        case_from_dict(data)


def test_data_set_beyond_float64_is_refused_without_warnings():
    """Feature eigenvalue 1e300: XᵀX overflows. One CaseError naming the table, and no
    numpy RuntimeWarning lines before it (they used to print)."""
    import warnings
    data = with_("loss", {"linear_regression": {"n_samples": 64,
                                                "feature_eigenvalues": [1e300, 1.0]}})
    data.pop("noise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CaseError, match="loss.linear_regression: .* does not fit in "
                                            "float64"):
            build_model(case_from_dict(data))


def test_learning_rate_beyond_float64_is_refused_naming_sgd_lr():
    """η = 1e-300: m² underflows, so the diffusion ηΣ/(2Sm²) and K/m are not finite (a
    scipy ValueError traceback before). One CaseError naming sgd.lr, no warnings."""
    import warnings
    for hessian in ([[1e300]], [[1e-30]]):
        data = with_("loss.hessian", hessian)
        data["sgd"]["lr"] = 1e-300
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(CaseError, match=r"sgd.lr = 1e-300 puts the phase-space SDE "
                                                r"outside float64"):
                build_model(case_from_dict(data))


def test_huge_noise_is_solved_at_unit_scale_or_refused_naming_the_noise():
    """σ² = 1e300 (η = 0.05, β = 0.9, S = 8, h = 1): P equals the closed form
    P_θθ = ησ²/(2S(1−β)), P_vv = σ²h/(S(1−β²)) to round-off (the Lyapunov solve returned
    1e-304 for 3e298 before it solved at unit scale); σ² = 1e308 makes 2D overflow: one
    CaseError naming the noise (a scipy ValueError traceback before), no warnings."""
    import warnings
    data = with_("loss.hessian", [[1.0]])
    data["sgd"]["weight_decay"] = 0.0
    data["noise"]["sigma2"] = 1e300
    p = theory.stationary_cov(build_model(case_from_dict(data)))
    assert p[0, 0] == pytest.approx(0.05e300 / (2 * 8 * 0.1), rel=1e-12)
    assert p[1, 1] == pytest.approx(1e300 / (8 * (1 - 0.81)), rel=1e-12)
    assert abs(p[0, 1]) < 1e-12 * p[1, 1]  # 0 exactly (round-off)
    data["noise"]["sigma2"] = 1e308
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CaseError, match=r"does not fit in float64: the noise is too large "
                                            r"for this loss; check noise.sigma2"):
            build_model(case_from_dict(data))


@pytest.mark.parametrize("h, accepted", [(1e-9, True), (1e-12, False), (1e-30, False)])
def test_relaxation_rates_spread_beyond_1e12_is_refused(h, accepted):
    """Plain SGD (η = 0.05, β = 0: friction 40), one Hessian eigenvalue h: the rates are
    ≈ 40 and h, spread 4e10 / 4e13 / 4e31. At 4e13 the continuous Lyapunov solve was off
    by 5.3e-3 against the closed form (and O(1) beyond 1e15, with no error): refused. At
    4e10 it is accepted and within 1e-4 (ε × spread = 8.9e-6; measured 3.6e-6)."""
    import warnings
    data = with_("loss.hessian", [[h]])
    data["sgd"].update(momentum=0.0, weight_decay=0.0)
    if not accepted:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(CaseError, match=r"relaxation rates span 1e-\d+ to 40 "
                                                r"\(1/time\), a ratio of 4e\+\d+ > 1e\+12"):
                build_model(case_from_dict(data))
        return
    model = build_model(case_from_dict(data))
    slow, fast = model.relaxation_rates()
    assert slow == pytest.approx(h, rel=1e-9) and fast == pytest.approx(40.0, rel=1e-9)
    exact = theory.stationary_cov_closed_form(model)
    got = theory.stationary_cov(model)
    np.testing.assert_allclose(np.diag(got), np.diag(exact), rtol=1e-4)


def test_from_arrays_validates_too():
    with pytest.raises(CaseError, match="sgd.momentum"):
        PhaseSpaceModel.from_arrays([[1.0]], [[1.0]], lr=0.1, momentum=1.2)
    with pytest.raises(UnstableError, match="mode 0"):
        PhaseSpaceModel.from_arrays([[1.0]], [[1.0]], lr=4.5, momentum=0.1)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fpsolver", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def test_cli_bad_case_is_one_line_without_traceback(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[sgd]\nlr = 0.05\nmomentum = 'high'\n[loss]\nhessian = [[1.0]]\n"
                    "[noise]\nsigma2 = 0.1\n")
    res = _cli("theory", str(path))
    assert res.returncode == 2
    assert res.stderr.strip() == ("fpsolver: error: sgd.momentum must be a number, "
                                  "got str 'high'")
    assert "Traceback" not in res.stderr
    path.write_text("[sgd\nlr=1")
    res = _cli("theory", str(path))
    assert res.returncode == 2 and "is not valid TOML" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_cli_theory_json_contract(tmp_path):
    import json

    path = tmp_path / "lr.toml"
    path.write_text("[sgd]\nlr = 0.05\nmomentum = 0.9\nweight_decay = 0.01\nbatch_size = 8\n"
                    "[loss.linear_regression]\nn_samples = 256\n"
                    "feature_covariance = [[0.755734, 0.379458], [0.379458, 0.309074]]\n")
    res = _cli("theory", str(path), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    for key in ("dim", "temperature", "mass", "gamma", "rotation_frequencies",
                "stationary_mean", "stationary_cov_continuous", "stationary_cov_discrete",
                "stationary_cov_discrete_midpoint", "stationary_cov_exact", "Q",
                "detailed_balance_residual"):
        assert key in out
    assert out["dim"] == 2 and np.shape(out["stationary_cov_exact"]) == (4, 4)
    np.testing.assert_allclose(out["rotation_frequencies"], [1.466132, 4.548463], atol=5e-7)
    assert out["mass"] == pytest.approx(0.0475)
    # level 3 exceeds level 2 exceeds level 1 on Var θ (both corrections are > 1)
    cont, disc, exact = (np.array(out[k]) for k in ("stationary_cov_continuous",
                                                    "stationary_cov_discrete",
                                                    "stationary_cov_exact"))
    assert np.trace(exact[:2, :2]) > np.trace(disc[:2, :2]) > np.trace(cont[:2, :2])
