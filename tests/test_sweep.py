"""Sweeps: sweep-file validation, point expansion, per-point numbers, Dask runs, resume.

The Dask tests share one small sweep (5 points, d = 6 power-law linear regression, theory
levels 1-3, Monte-Carlo SGD and Δ(k)): a reference run on the default path (LocalCluster,
worker processes), a run on an explicit in-process LocalCluster started here, and a run
killed (SIGKILL) in a subprocess and resumed; all three must give the same table.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fpsolver.errors import CaseError, UserError
from fpsolver.sweep import (RUN_COLUMNS, evaluate_point, expand_points, load_sweep, point_case,
                            power_law_spectrum, run_sweep, seed_of, sweep_from_dict)

pd = pytest.importorskip("pandas")
pytest.importorskip("distributed")

BASE = {"sgd": {"lr": 0.03, "momentum": 0.9, "weight_decay": 0.0, "batch_size": 16},
        "loss": {"linear_regression": {"n_samples": 400, "feature_eigenvalues": [1.0],
                                       "label_noise": 0.5, "seed": 1}}}

SWEEP_TOML = """
name = "small"
mode = "one-at-a-time"
seed = 5
levels = [1, 2, 3]
[base.sgd]
lr = 0.03
momentum = 0.9
weight_decay = 0.0
batch_size = 16
[base.loss.linear_regression]
n_samples = 400
feature_eigenvalues = [1.0]
label_noise = 0.5
seed = 1
[spectrum]
dim = 6
alpha = 1.0
[axes]
lr = [0.005, 0.02, 0.08]
batch_size = [16, 64]
[simulate]
chains = 256
groups = 4
steps = 500
[diffusion]
k_max = 100
num_k = 20
windows = [[10, 100]]
"""


def make_sweep(**overrides):
    data = {"name": "t", "base": BASE, "seed": 5, "spectrum": {"dim": 6, "alpha": 1.0},
            "axes": {"lr": [0.005, 0.02, 0.08]}, "levels": [1, 2, 3],
            "diffusion": {"k_max": 100, "num_k": 20, "windows": [[10, 100]]}}
    data.update(overrides)
    return sweep_from_dict({k: v for k, v in data.items() if v is not None})


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("change, key", [
    ({"axes": {"lr": [0.01], "learning_rate": [0.1]}}, "axes.learning_rate"),
    ({"axes": {"lr": ["fast"]}}, "axes.lr[0]"),
    ({"axes": {"lr": {"log": [0.01, 0.1]}}}, "axes.lr.num"),
    ({"axes": {"lr": {"log": [0.0, 0.1], "num": 3}}}, "axes.lr.log"),
    ({"mode": "random"}, "mode"),
    ({"colour": "red"}, "colour"),
    ({"simulate": {"chains": 64, "step": 10}}, "simulate.step"),
    ({"diffusion": {"k_max": 50, "windows": [[10, 100]]}}, "diffusion.windows"),
    ({"levels": [1, 4]}, "levels"),
    ({"simulate": {"steps": 50}, "diffusion": {"k_max": 100, "windows": [[10, 100]]}},
     "simulate.steps"),
    ({"axes": {"sigma2": [0.1]}}, "axes.sigma2"),
    ({"spectrum": None, "axes": {"alpha": [1.0]}}, "axes.alpha"),
])
def test_bad_sweep_files_name_the_key(change, key):
    data = {"name": "t", "base": BASE, "spectrum": {"dim": 6}, "axes": {"lr": [0.01]}}
    data.update(change)
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(CaseError) as info:
        sweep_from_dict(data)
    message = str(info.value)
    assert key in message and "\n" not in message


def test_axis_ranges_and_point_expansion():
    sweep = make_sweep(mode="grid", axes={"lr": {"log": [0.001, 0.1], "num": 3},
                                          "batch_size": {"linear": [4, 12], "num": 3},
                                          "momentum": [0.5, 0.9]})
    points = expand_points(sweep)
    assert len(points) == 3 * 3 * 2
    assert [p.params["lr"] for p in points[::6]] == pytest.approx([0.001, 0.01, 0.1], rel=1e-12)
    assert [p.params["batch_size"] for p in points[:6:2]] == [4, 8, 12]
    assert [p.index for p in points] == list(range(18))
    one = expand_points(make_sweep(axes={"lr": [0.01, 0.02], "batch_size": [4, 8, 16]}))
    assert [(p.axis, p.params) for p in one] == [
        ("lr", {"lr": 0.01}), ("lr", {"lr": 0.02}), ("batch_size", {"batch_size": 4}),
        ("batch_size", {"batch_size": 8}), ("batch_size", {"batch_size": 16})]
    # seeds: a pure function of (sweep seed, index), distinct across points
    assert [p.seed for p in one] == [seed_of(5, i) for i in range(5)]
    assert len({p.seed for p in one}) == 5


def test_base_case_file_is_relative_to_the_sweep_file(tmp_path):
    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / "quad.toml").write_text(
        "[sgd]\nlr = 0.05\nmomentum = 0.9\nweight_decay = 0.0\nbatch_size = 4\n"
        "[loss]\nhessian = [[2.0]]\n"
        "[noise]\nsigma2 = 0.5\n")
    sweep_path = tmp_path / "s.toml"
    sweep_path.write_text('base = "cases/quad.toml"\n[axes]\nlr = [0.01, 0.02]\n')
    sweep = load_sweep(sweep_path)
    assert sweep.name == "s" and sweep.base["loss"]["hessian"] == [[2.0]]
    row = evaluate_point(sweep, expand_points(sweep)[1])
    # Σ = σ²H, d = 1: E‖v‖² = σ²h/(S(1−β²)) (THEORY.md §6)
    assert row["ev2_continuous"] == pytest.approx(0.5 * 2.0 / (4 * (1 - 0.81)), rel=1e-12)
    sweep_path.write_text('base = "cases/missing.toml"\n[axes]\nlr = [0.01]\n')
    with pytest.raises(CaseError, match="cannot read case file"):
        load_sweep(sweep_path)


def test_example_sweeps_are_valid():
    examples = Path(__file__).parents[1] / "examples"
    big = load_sweep(examples / "sweep_lr_batch_momentum.toml")
    points = expand_points(big)
    assert len(points) == 60 and [p.axis for p in points[::20]] == ["lr", "batch_size", "momentum"]
    assert points[0].params == {"lr": 0.003}
    assert points[59].params["momentum"] == pytest.approx(0.99)
    assert big.levels == (1, 2, 3) and big.simulate.chains == 512
    small = load_sweep(examples / "sweep_small.toml")
    assert len(expand_points(small)) == 12 and small.fokker_planck.cells == 64


def test_spectrum_sets_the_hessian_exactly():
    sweep = make_sweep(axes={"dim": [3, 5], "alpha": [2.0]})
    case = point_case(sweep, expand_points(sweep)[1])
    from fpsolver.sgd import build_model

    model = build_model(case)
    assert model.dim == 5
    np.testing.assert_allclose(np.sort(model.hessian_eigenvalues)[::-1],
                               [1, 1 / 2, 1 / 3, 1 / 4, 1 / 5], rtol=1e-12)
    np.testing.assert_allclose(power_law_spectrum(3, 2.0, 0.5), [0.5, 0.125, 0.5 / 9], rtol=1e-15)


def test_unstable_point_is_a_failed_row_not_a_crash():
    # heavy-ball stability: η h_max < 2(1+β) = 3.8 fails at η = 4 for h_max = 1
    sweep = make_sweep(axes={"lr": [0.01, 4.0]})
    ok, bad = (evaluate_point(sweep, p) for p in expand_points(sweep))
    assert ok["status"] == "ok" and ok["error"] == ""
    assert bad["status"] == "failed"
    assert "unstable" in bad["error"] and "η(h+λ) = 4" in bad["error"]
    assert bad["lr"] == 4.0 and "ev2_continuous" not in bad


# --------------------------------------------------------------------------- numbers


def test_buffer_scale_is_the_continuous_prediction_for_proportional_noise():
    """η²E‖buf‖² (level 1) = η²σ² tr H/(S(1−β²)) exactly when Σ = σ²H (THEORY.md §6)."""
    base = {"sgd": {"lr": 0.02, "momentum": 0.8, "weight_decay": 0.0, "batch_size": 4},
            "loss": {"hessian": [[1.0]]}, "noise": {"model": "proportional", "sigma2": 0.3}}
    sweep = make_sweep(base=base, levels=[1, 2], axes={"lr": [0.01, 0.1], "momentum": [0.5, 0.95]})
    for point in expand_points(sweep):
        row = evaluate_point(sweep, point)
        assert row["buf2_continuous"] == pytest.approx(row["buf2_scale"], rel=1e-12)
        # level 2 / level 1 per mode = r_d = 1/(1 − η(h+λ)/(2(1+β))) (THEORY.md §8)
        r_d = 1 / (1 - np.asarray(row["hessian_eigenvalues"]) * row["lr"]
                   / (2 * (1 + row["momentum"])))
        np.testing.assert_allclose(np.divide(row["var_v_discrete"], row["var_v_continuous"]),
                                   r_d, rtol=1e-10)


def test_theory_exponent_falls_with_lr_and_ignores_batch_size_from_mu():
    """THEORY.md §9: on a fixed window c falls with η; for θ₀ = μ, S only rescales Δ."""
    sweep = make_sweep(levels=[1, 2], axes={"lr": [0.003, 0.01, 0.03, 0.1],
                                            "batch_size": [2, 8, 32, 128]})
    rows = [evaluate_point(sweep, p) for p in expand_points(sweep)]
    for level in ("continuous", "discrete"):
        c_lr = [r[f"c_{level}_10_100"] for r in rows[:4]]
        assert np.all(np.diff(c_lr) < -0.1), c_lr
        c_s = [r[f"c_{level}_10_100"] for r in rows[4:]]
        np.testing.assert_allclose(c_s, c_s[0], rtol=1e-10)
        # ... while Δ itself scales as 1/S
        delta = np.array([r[f"delta_{level}"] for r in rows[4:]])
        np.testing.assert_allclose(delta * [[2], [8], [32], [128]],
                                   np.broadcast_to(delta[0] * 2, delta.shape), rtol=1e-10)


def test_theory_exponent_depends_on_batch_size_with_drift():
    """With θ₀ ≠ μ the drift term does not scale with S: c rises with S from the noise value
    toward the drift value 2 of overdamped modes (THEORY.md §9)."""
    base = {**BASE, "sgd": {**BASE["sgd"], "lr": 0.003}}
    sweep = make_sweep(base=base, levels=[1, 2], axes={"batch_size": [1, 4, 16, 64, 256]},
                       diffusion={"k_max": 100, "num_k": 20, "windows": [[10, 100]],
                                  "offset": 0.1})
    c = [evaluate_point(sweep, p)["c_discrete_10_100"] for p in expand_points(sweep)]
    assert np.all(np.diff(c) > 0.05), c
    assert c[0] < 1.4 and abs(c[-1] - 2) < 0.05, c


def test_exact_diffusion_curve_saturates_at_the_level3_variance():
    """Level-3 Δ(k) from θ₀ = μ tends to tr Var θ of the exact stationary covariance, and
    equals level 2 when the state-dependent part is negligible (large S, small η)."""
    from fpsolver import theory as th
    from fpsolver.sgd import build_model

    sweep = make_sweep(axes={"lr": [0.08]})
    model = build_model(point_case(sweep, expand_points(sweep)[0]))
    d = model.dim
    delta = th.diffusion_curve_exact(model, model.mu, np.array([1, 2, 3000]))
    assert delta[-1] == pytest.approx(np.trace(th.exact_stationary_cov(model)[:d, :d]), rel=1e-9)
    # one step from rest: θ₁ − μ = −η ĝ_B(μ), E‖·‖² = η² tr Σ(μ)/S (exactly)
    assert delta[0] == pytest.approx(model.hyper.lr ** 2 * np.trace(model.noise_cov) / 16,
                                     rel=1e-12)
    assert delta[1] > delta[0]


def test_fokker_planck_per_point_matches_the_exact_gaussian():
    """The stationary 2-D solve (d = 1) reproduces the continuous variances; the second-order
    scheme on 96 cells per axis over ±6 s.d. is within 2 % (measured: 1.05 % at 48, 0.26 % at
    96, 0.065 % at 192 — order 2.0)."""
    base = {"sgd": {"lr": 0.05, "momentum": 0.8, "weight_decay": 0.0, "batch_size": 8},
            "loss": {"hessian": [[0.97]]}, "noise": {"model": "proportional", "sigma2": 0.25}}
    sweep = make_sweep(base=base, spectrum=None, levels=[1], axes={"lr": [0.05]},
                       diffusion=None, fokker_planck={"cells": 96})
    row = evaluate_point(sweep, expand_points(sweep)[0])
    assert row["fp_status"] == "converged" and row["fp_mass_error"] < 1e-12
    assert abs(row["fp_var_theta_rel_error"]) < 0.02 and abs(row["fp_var_v_rel_error"]) < 0.02
    assert row["var_theta_fp"] == pytest.approx(row["tr_var_theta_continuous"], rel=0.02)
    assert sweep_from_dict({"base": base, "axes": {"lr": [0.1]}}).levels == (1, 2)  # no data
    with pytest.raises(CaseError, match=r"\[fokker_planck\] needs d = 1"):
        make_sweep(fokker_planck={"cells": 48})


# --------------------------------------------------------------------------- Dask runs


def _deterministic(table):
    return table[[c for c in table.columns if c not in RUN_COLUMNS]]


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "small.toml"
    path.write_text(SWEEP_TOML)
    return path


@pytest.fixture(scope="module")
def reference(sweep_file, tmp_path_factory):
    """The uninterrupted run on the default path (LocalCluster with worker processes)."""
    out = tmp_path_factory.mktemp("reference")
    sweep = load_sweep(sweep_file)
    evaluate_point(sweep, expand_points(sweep)[-1])  # compile (and cache) the numba kernels once
    table = run_sweep(sweep, out, workers=2, progress=False, log=lambda s: None)
    return out, table


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster started by the test (one in-process worker, one thread)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as c:
        yield c


def test_reference_run_numbers(reference):
    out, table = reference
    assert list(table["index"]) == [0, 1, 2, 3, 4]
    assert (table["status"] == "ok").all()
    assert len(list((out / "points").glob("*.json"))) == 5
    assert table["worker"].str.startswith("tcp://").all()
    # level 3 matches Monte-Carlo within 4 standard errors (THEORY.md §8)
    z = (table["ev2_exact"] - table["ev2_mc"]) / table["ev2_mc_se"]
    assert np.abs(z).max() < 4, z.tolist()
    # c falls with η (Monte-Carlo, each step by > 4 s.e.) and agrees with level 3 within 4 s.e.
    lr_rows = table[table["axis"] == "lr"]
    c, se = lr_rows["c_mc_10_100"].to_numpy(), lr_rows["c_mc_se_10_100"].to_numpy()
    assert np.all(np.diff(c) < -4 * np.hypot(se[1:], se[:-1])), (c, se)
    z_c = (c - lr_rows["c_exact_10_100"]) / se
    assert np.abs(z_c).max() < 4, z_c.tolist()
    # θ₀ = μ: c independent of S (Monte-Carlo within 4 s.e.; theory exactly)
    s_rows = table[table["axis"] == "batch_size"]
    c, se = s_rows["c_mc_10_100"].to_numpy(), s_rows["c_mc_se_10_100"].to_numpy()
    assert abs(c[1] - c[0]) < 4 * np.hypot(*se)
    c_theory = s_rows["c_discrete_10_100"].to_numpy()
    np.testing.assert_allclose(c_theory, c_theory[0], rtol=1e-10)
    # the CSV holds the scalar columns, the Parquet file everything
    csv = pd.read_csv(out / "results.csv")
    np.testing.assert_array_equal(csv["c_mc_10_100"], table["c_mc_10_100"])
    assert "delta_mc" not in csv.columns and len(table["delta_mc"][0]) == 17


def test_explicit_scheduler_gives_identical_results(reference, cluster, sweep_file, tmp_path):
    table = run_sweep(load_sweep(sweep_file), tmp_path, scheduler=cluster.scheduler_address,
                      progress=False, log=lambda s: None)
    assert (table["worker"] == cluster.workers[0].address).all()
    pd.testing.assert_frame_equal(_deterministic(table), _deterministic(reference[1]),
                                  check_exact=True)


def _sweep_cli_at_first_point(sweep_file, out):
    """``fpsolver sweep`` (one worker) in a session of its own, returned once it has
    written its first point (output piped; SIGINT at its default: a shell's background job
    starts with SIGINT ignored)."""
    cmd = [sys.executable, "-m", "fpsolver", "sweep", str(sweep_file), "--out", str(out),
           "--workers", "1", "--quiet", "--no-figures"]
    env = {**os.environ, "NUMBA_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    try:
        while not list(out.glob("points/*.json")) and time.monotonic() < deadline:
            assert proc.poll() is None, "the sweep ended before writing a point"
            time.sleep(0.02)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc


def test_killed_sweep_resumes_to_the_same_table(reference, cluster, sweep_file, tmp_path):
    out = tmp_path / "killed"
    proc = _sweep_cli_at_first_point(sweep_file, out)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker processes
    proc.communicate()
    before = {p.name: p.read_bytes() for p in out.glob("points/*.json")}
    assert 0 < len(before) < 5  # killed in the middle
    assert not (out / "results.parquet").exists()
    table = run_sweep(load_sweep(sweep_file), out, scheduler=cluster.scheduler_address,
                      progress=False, log=lambda s: None)
    after = {p.name: p.read_bytes() for p in out.glob("points/*.json")}
    assert len(after) == 5 and all(after[name] == data for name, data in before.items())
    assert not list(out.glob("points/.*"))  # no temporary files left behind
    pd.testing.assert_frame_equal(_deterministic(table), _deterministic(reference[1]),
                                  check_exact=True)


def test_ctrl_c_stops_the_sweep_in_one_message_and_keeps_finished_points(sweep_file,
                                                                         tmp_path):
    """SIGINT to the process group (a terminal's Ctrl-C): exit status 130, no traceback
    from the sweep or its worker processes, and a line that counts the saved points."""
    out = tmp_path / "interrupted"
    proc = _sweep_cli_at_first_point(sweep_file, out)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    saved = len(list(out.glob("points/*.json")))
    assert proc.returncode == 130 and 0 < saved < 5
    assert "Traceback" not in stderr and "WARNING" not in stderr, stderr
    assert f"interrupted: {saved} of 5 points are saved" in stdout
    assert stderr.strip().endswith("fpsolver: interrupted")


def test_crashing_point_is_retried_then_recorded_and_rerun_on_resume(cluster, tmp_path,
                                                                     monkeypatch):
    """An unexpected exception is retried (Dask retries = 2), then kept as an "error" row;
    the sweep goes on, and a resumed sweep runs that point again."""
    import fpsolver.sweep as sweep_module

    attempts = tmp_path / "attempts"
    original = sweep_module.evaluate_point

    def flaky(sweep, point):
        if point.index == 1:
            with open(attempts, "a") as fh:
                fh.write("x")
            raise RuntimeError("worker lost its marbles\nsecond line")
        return original(sweep, point)

    sweep = make_sweep(axes={"lr": [0.01, 0.02, 0.04]}, levels=[1, 2], diffusion=None)
    kwargs = dict(scheduler=cluster.scheduler_address, progress=False, log=lambda s: None)
    monkeypatch.setattr(sweep_module, "evaluate_point", flaky)
    table = run_sweep(sweep, tmp_path / "out", **kwargs)
    assert attempts.read_text() == "xxx"  # 1 + RETRIES attempts
    assert list(table["status"]) == ["ok", "error", "ok"]
    assert table["error"][1] == "RuntimeError: worker lost its marbles"
    monkeypatch.setattr(sweep_module, "evaluate_point", original)
    table = run_sweep(sweep, tmp_path / "out", **kwargs)
    assert list(table["status"]) == ["ok", "ok", "ok"] and attempts.read_text() == "xxx"
    direct = evaluate_point(sweep, expand_points(sweep)[1])
    assert table["ev2_discrete"][1] == direct["ev2_discrete"]


def test_resume_refuses_a_different_sweep(reference, sweep_file, tmp_path):
    changed = tmp_path / "changed.toml"
    changed.write_text(SWEEP_TOML.replace("seed = 5", "seed = 6"))
    with pytest.raises(UserError, match="different sweep"):
        run_sweep(load_sweep(changed), reference[0], progress=False, log=lambda s: None)
    meta = json.loads((reference[0] / "sweep.json").read_text())
    assert meta["sweep"]["seed"] == 5


def test_study_figures_plot_the_table(reference):
    from fpsolver.study import exponent_figure, study_figures

    out, table = reference
    paths = study_figures(table, out)
    assert sorted(p.name for p in paths) == ["buffer.png", "continuous_ratio.png",
                                            "diffusion_grid.png", "exponents.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
    fig = exponent_figure(table)
    lr_panel = fig.axes[0]
    lines = {line.get_label(): line for line in lr_panel.get_lines()}
    lr_rows = table[table["axis"] == "lr"]
    np.testing.assert_array_equal(lines["theory: discrete"].get_ydata(),
                                  lr_rows["c_discrete_10_100"])
    np.testing.assert_array_equal(lines["theory: discrete"].get_xdata(), lr_rows["lr"])


def test_cli_sweep_rejects_bad_file(tmp_path, capsys):
    from fpsolver.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text(SWEEP_TOML.replace("[axes]", "[axes]\nbatchsize = [4]"))
    assert main(["sweep", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fpsolver: error: unknown key axes.batchsize") and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_cli_sweep_where_every_point_fails_is_an_error(tmp_path, capsys):
    """Two unstable learning rates (η h = 5, 6 > 2(1 + β)): both rows fail, and the command
    says so in one line with a non-zero status instead of reporting success."""
    from fpsolver.cli import main

    bad = tmp_path / "unstable.toml"
    bad.write_text(SWEEP_TOML.replace("lr = [0.005, 0.02, 0.08]\nbatch_size = [16, 64]",
                                      "lr = [5.0, 6.0]"))
    out = tmp_path / "o"
    assert main(["sweep", str(bad), "--out", str(out), "--quiet", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("fpsolver: error: no sweep point finished (2 failed); their errors are "
                   f"in {out}/results.csv")
