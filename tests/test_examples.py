"""Every teaching case in examples/ runs through the CLI in a subprocess, and each shows the
property its comment promises (numbers from closed forms, THEORY.md §3, §6, §7, §13)."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CASES = sorted(p for p in EXAMPLES.glob("*.toml") if "sgd" in tomllib.loads(p.read_text()))
TIGHT = 1e-10  # closed forms vs Lyapunov solves: rounding only


def _cli(*argv):
    out = subprocess.run([sys.executable, "-m", "fpsolver", *argv], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _theory(name):
    return json.loads(_cli("theory", str(EXAMPLES / f"{name}.toml"), "--json"))


def _closed_form(sgd, h, sigma2):
    """Per-mode closed forms for Σ = σ²H: m, γ, ω, T, Var θ = T h/(h+λ), Var v = σ²h/(S(1−β²))."""
    eta, beta, lam, s = sgd["lr"], sgd["momentum"], sgd["weight_decay"], sgd["batch_size"]
    m = eta * (1 + beta) / 2
    temp = eta * sigma2 / (2 * s * (1 - beta))
    return {"gamma": (1 - beta) / (eta * (1 + beta)), "omega": np.sqrt((h + lam) / m),
            "T": temp, "var_theta": temp * h / (h + lam),
            "var_v": sigma2 * h / (s * (1 - beta ** 2))}


def test_examples_exist():
    names = {p.stem for p in CASES}
    assert {"default", "overdamped", "high_momentum", "weight_decay", "noncommuting",
            "linear_regression"} <= names


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_every_case_solves_its_lyapunov_equation(path):
    """The printed P solves AP + PAᵀ = 2D; A and D are rebuilt from the case file."""
    from fpsolver.case import load_case
    from fpsolver.sgd import build_model

    out = json.loads(_cli("theory", str(path), "--json"))
    model = build_model(load_case(path))
    d = out["dim"]
    p = np.array(out["stationary_cov_continuous"])
    assert p.shape == (2 * d, 2 * d)
    a, diff = model.drift, model.diffusion
    sgd = tomllib.loads(path.read_text())["sgd"]
    assert out["mass"] == pytest.approx(sgd["lr"] * (1 + sgd.get("momentum", 0.0)) / 2,
                                        rel=1e-14)
    np.testing.assert_allclose(a[:d, d:], -np.eye(d))  # θ̇ = v
    residual = np.linalg.norm(a @ p + p @ a.T - 2 * diff) / np.linalg.norm(2 * diff)
    assert residual < TIGHT
    assert np.all(np.linalg.eigvalsh(p) > 0)


def test_default_rotates_underdamped():
    out = _theory("default")
    cf = _closed_form({"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01, "batch_size": 8},
                      0.97, 0.25)
    assert out["rotation_frequencies"][0] == pytest.approx(cf["omega"], rel=1e-12)
    assert out["gamma"] == pytest.approx(cf["gamma"], rel=1e-12)
    f = np.sqrt(cf["omega"] ** 2 - cf["gamma"] ** 2)
    assert out["damped_frequencies"][0] == pytest.approx(f, rel=1e-12)
    p = np.array(out["stationary_cov_continuous"])
    np.testing.assert_allclose(np.diag(p), [cf["var_theta"], cf["var_v"]], rtol=1e-10)
    assert max(out["detailed_balance_residual"]) < 1e-12


def test_overdamped_has_no_oscillation_but_rotating_current():
    out = _theory("overdamped")
    cf = _closed_form({"lr": 0.05, "momentum": 0.5, "weight_decay": 0.01, "batch_size": 8},
                      0.97, 0.25)
    assert out["gamma"] == pytest.approx(cf["gamma"], rel=1e-12)
    assert out["gamma"] > out["rotation_frequencies"][0]
    assert out["damped_frequencies"] == [0.0]
    # J_ss/p = −QP⁻¹(z − z_μ) = [v; −ω²(θ−μ)]: the circulation rate does not see the damping
    q, p = np.array(out["Q"]), np.array(out["stationary_cov_continuous"])
    flow = -q @ np.linalg.inv(p)
    np.testing.assert_allclose(flow, [[0, 1], [-cf["omega"] ** 2, 0]], atol=1e-9)


def test_high_momentum_turns_many_times_per_relaxation():
    out = _theory("high_momentum")
    cf = _closed_form({"lr": 0.05, "momentum": 0.99, "weight_decay": 0.01, "batch_size": 8},
                      0.97, 0.25)
    turns = out["damped_frequencies"][0] / out["gamma"] / (2 * np.pi)
    f = np.sqrt(cf["omega"] ** 2 - cf["gamma"] ** 2)
    assert turns == pytest.approx(f / cf["gamma"] / (2 * np.pi), rel=1e-12)
    assert 6.9 < turns < 7.1  # the comment's "about 7 times per e-folding time"
    default = _theory("default")
    ratio = out["stationary_cov_continuous"][1][1] / default["stationary_cov_continuous"][1][1]
    assert ratio == pytest.approx((1 - 0.9 ** 2) / (1 - 0.99 ** 2), rel=1e-10)


def test_weight_decay_pins_the_flat_direction():
    out = _theory("weight_decay")
    p = np.array(out["stationary_cov_continuous"])
    temp = out["temperature"]
    np.testing.assert_allclose(np.diag(p)[:2], [temp / 1.1, temp / 11], rtol=1e-10)
    np.testing.assert_allclose(p[:2, 2:], 0, atol=1e-15)


def test_noncommuting_breaks_detailed_balance():
    out = _theory("noncommuting")
    p = np.array(out["stationary_cov_continuous"])
    # THEORY.md §13 to the digits given
    np.testing.assert_allclose(p[:2, 2:], [[0, 0.017583], [-0.017583, 0]], atol=1e-6)
    np.testing.assert_allclose(out["detailed_balance_residual"], [0.107, 0.335], atol=6e-4)
    np.testing.assert_allclose(out["position_current_matrix"],
                               [[-0.159891, -0.271194], [0.520297, 0.159891]], atol=1e-6)


def test_linear_regression_has_exact_level():
    out = _theory("linear_regression")
    exact = np.array(out["stationary_cov_exact"])
    discrete = np.array(out["stationary_cov_discrete"])
    # level 3 > level 2 on the θ variances: the state-dependent noise only adds (r_s > 1)
    assert np.all(np.diag(exact)[:2] > np.diag(discrete)[:2])


# ------------------------------------------------------------------ fpsolver run, coarse


def _run(tmp_path, name, cells, extra="", figure=False):
    """``fpsolver run`` on a copy of examples/NAME.toml (+ ``extra`` TOML); summary.json."""
    case = tmp_path / f"{name}_{cells}.toml"
    case.write_text((EXAMPLES / f"{name}.toml").read_text() + extra)
    out = tmp_path / f"out_{name}_{cells}"
    _cli("run", str(case), "--out", str(out), "--cells", str(cells), "--no-progress",
         *(() if figure else ("--no-figure",)))
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("name, min_ratio", [
    ("default", 3.0),        # measured 7.41 (L1 2.2e-3 → 3.0e-4)
    ("overdamped", 3.0),     # measured 7.50 (2.5e-3 → 3.3e-4)
    ("high_momentum", 2.5),  # measured 9.15 (2.4e-2 → 2.6e-3): γ = 0.1
])
def test_2d_examples_run_stationary_second_order(tmp_path, name, min_ratio):
    """Stationary solves at 48² and 96²: mass conserved to rounding, and the L1 error
    against the exact Gaussian falls by ≥ min_ratio (4 for a second-order scheme)."""
    coarse, fine = (_run(tmp_path, name, n) for n in (48, 96))
    for summary in (coarse, fine):
        assert summary["t_final"] is None and summary["mass_error"] < 1e-12
    assert coarse["l1_error"] / fine["l1_error"] > min_ratio


@pytest.mark.parametrize("name, bound", [
    ("noncommuting", 0.2),       # measured 0.130
    ("weight_decay", 0.2),       # measured 0.087
    ("linear_regression", 0.3),  # measured 0.219
])
def test_4d_examples_run_transient_on_coarse_grid(tmp_path, name, bound):
    """A short transient (t = 0.2) started from the stationary Gaussian N(z_μ, P_ss), so
    the exact answer stays N(z_μ, P_ss), on 12⁴ cells (h ≈ 1 sd): mass conserved to
    rounding, L1 error below a measured bound."""
    from fpsolver.case import load_case
    from fpsolver.sgd import build_model

    zmu = build_model(load_case(EXAMPLES / f"{name}.toml")).stationary_mean
    extra = (f"\n[run]\nt_final = 0.2\ninitial_cov_scale = 1.0\n"
             f"initial_mean = [{', '.join(repr(float(v)) for v in zmu)}]\n")
    summary = _run(tmp_path, name, 12, extra, figure=name == "noncommuting")
    assert summary["t_final"] == pytest.approx(0.2)
    if name == "noncommuting":  # the figure: three plane marginals side by side
        from PIL import Image

        with Image.open(tmp_path / "out_noncommuting_12" / "density.png") as im:
            assert im.size[0] > 2.5 * im.size[1]
    assert summary["mass_error"] < 1e-12
    assert summary["l1_error"] < bound
