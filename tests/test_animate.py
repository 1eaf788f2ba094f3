"""Animations: the default case's density circles clockwise; files match the options."""

import numpy as np
import pytest
from PIL import Image

from fpsolver import animate, theory
from fpsolver.case import default_case
from fpsolver.cli import main
from fpsolver.sgd import build_model


def _half_period_frames(movie, model):
    """Frames with t ≤ π/f, half a damped rotation period of the default's single mode."""
    f = np.sqrt(model.omega[0] ** 2 - model.gamma ** 2)
    return movie.times <= np.pi / f


def test_plane_current_is_gaussian_current_in_2d(rng):
    model = build_model(default_case())
    mean = model.stationary_mean + np.array([0.1, -0.3])
    cov = np.array([[0.004, 0.001], [0.001, 0.2]])
    z = mean + rng.standard_normal((50, 2)) * [0.05, 0.4]
    np.testing.assert_allclose(animate.plane_current(model, mean, cov, (0, 1), z),
                               theory.gaussian_current(model, mean, cov, z), rtol=1e-12)


def test_plane_current_of_4d_gaussian_is_the_marginal_of_j():
    """The plane current equals ∫J dz_rest, here by quadrature of the exact 4-D current."""
    from fpsolver.case import case_from_dict

    case = case_from_dict({"sgd": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0,
                                   "batch_size": 8},
                           "loss": {"hessian": [[0.8, 0.3], [0.3, 0.4]]},
                           "noise": {"model": "matrix", "matrix": [[0.6, 0.4], [0.4, 0.6]]}})
    model = build_model(case)
    mean0, cov0 = animate.initial_state(case, model)
    mean, cov = theory.transient_moments(model, mean0, cov0, 0.3)
    plane = (0, 2)  # (θ₁, v₁)
    point = mean[list(plane)] + np.array([0.3, -0.5]) * np.sqrt(np.diag(cov)[list(plane)])
    # Gauss-Hermite over the other two axes (θ₂, v₂), exact for the polynomial-×-Gaussian
    # conditional integrand up to degree 2·40 − 1
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    rest = [1, 3]
    s = list(plane)
    c_ss = cov[np.ix_(s, s)]
    gain = cov[np.ix_(rest, s)] @ np.linalg.inv(c_ss)
    cond_mean = mean[rest] + gain @ (point - mean[s])
    cond_cov = cov[np.ix_(rest, rest)] - gain @ cov[np.ix_(s, rest)]
    root = np.linalg.cholesky(cond_cov)
    total = np.zeros(2)
    for a, wa in zip(nodes, weights):
        for b, wb in zip(nodes, weights):
            z = np.empty(4)
            z[s] = point
            z[rest] = cond_mean + root @ [a, b]
            j = theory.gaussian_current(model, mean, cov, z)
            p_cond = theory.gaussian_density(cond_mean, cond_cov, z[rest])
            # ∫J dz_rest = E[J/p(z_rest | z_S)] under the conditional law of z_rest
            total += wa * wb / (2 * np.pi) * j[s] / p_cond
    np.testing.assert_allclose(animate.plane_current(model, mean, cov, plane, point), total,
                               rtol=1e-9)


@pytest.fixture(scope="module")
def default_movies():
    """The default case's movie from the solver (48² cells) and from the exact transient."""
    case = default_case()
    model = build_model(case)
    return (model, animate.solver_movie(case, model, 40, cells=48, progress=False),
            animate.exact_movie(case, model, 40, cells=48))


def _mean_angles(movie):
    mean = movie.exact_mean
    return np.unwrap(np.arctan2((mean[:, 1] - movie.centre[1]) / movie.scale[1],
                                (mean[:, 0] - movie.centre[0]) / movie.scale[0]))


@pytest.mark.parametrize("source", ["solver", "exact"])
def test_default_centroid_circles_clockwise(default_movies, source):
    model, solver, exact = default_movies
    movie = solver if source == "solver" else exact
    assert movie.source == source
    angles = movie.centroid_angles()
    half = _half_period_frames(movie, model)
    assert half.sum() >= 8
    # clockwise (θ horizontal, v vertical): the angle decreases at every frame
    assert np.all(np.diff(angles[half]) < 0)
    # by as much as the exact mean: the centroid of exact cell averages is the mean up to
    # the 1e-6 mass cut off by the box (5e-4 rad); the solver's adds its O(h²) error,
    # measured 3.8e-3 rad at 48² and 2.9e-5 rad at 96² cells
    tol = 0.03 if source == "solver" else 1e-3
    np.testing.assert_allclose(angles[half], _mean_angles(movie)[half], atol=tol)
    # over half a damped period the centroid turns by about π in scaled coordinates
    assert -4.0 < angles[half][-1] - angles[0] < -2.0


def test_solver_frames_conserve_mass_and_match_exact(default_movies):
    _, solver, exact = default_movies
    cell = (solver.x[1] - solver.x[0]) * (solver.y[1] - solver.y[0])
    np.testing.assert_allclose(solver.density.sum(axis=(1, 2)) * cell, 1.0, atol=1e-12)
    assert solver.density.min() >= 0.0
    # second-order scheme at 48² cells: max error 8 % of the peak over the whole movie
    # (2.7 % at 96²), current 18 % (5 % at 96²)
    err = np.abs(solver.density - exact.density).max() / exact.density.max()
    assert err < 0.1
    jerr = np.abs(solver.current - exact.current).max() / np.abs(exact.current).max()
    assert jerr < 0.25


def test_cli_writes_gif_of_default_case(tmp_path, capsys):
    out = tmp_path / "flow.gif"
    assert main(["animate", "--out", str(out), "--frames", "12", "--fps", "6",
                 "--size", "256x192", "--cells", "32", "--quiet"]) == 0
    with Image.open(out) as im:
        assert (im.n_frames, im.size) == (12, (256, 192))
        assert abs(im.info["duration"] - 1000 / 6) <= 10  # GIF stores centiseconds
    text = capsys.readouterr().out
    assert "12 frames" in text and "256x192" in text and "from the solver" in text
    assert "GIF through Pillow" in text


def test_cli_writes_mp4_without_ffmpeg_on_the_path(tmp_path, capsys, monkeypatch):
    """.mp4 is MP4 even with no ffmpeg on the PATH (imageio-ffmpeg's binary, a dependency):
    the frame count and duration read back from the file."""
    import imageio_ffmpeg

    monkeypatch.setenv("PATH", str(tmp_path))
    out = tmp_path / "flow.mp4"
    assert main(["animate", "--out", str(out), "--frames", "6", "--fps", "3", "--size",
                 "256x192", "--cells", "32", "--source", "exact", "--quiet"]) == 0
    assert "MP4 through ffmpeg" in capsys.readouterr().out
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(out))
    assert frames == 6 and seconds == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize("argv, key", [
    (["--frames", "1"], "--frames"),
    (["--fps", "0"], "--fps"),
    (["--plane", "theta1,theta1"], "--plane"),
    (["--plane", "theta2,v1"], "--plane"),
    (["--size", "10x10"], "--size"),
])
def test_bad_options_fail_before_work(tmp_path, capsys, argv, key):
    out = tmp_path / "x.gif"
    assert main(["animate", "--out", str(out), "--source", "exact", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fpsolver: error:") and key in err and err.count("\n") == 1
    assert not out.exists()


def test_bad_suffix(tmp_path, capsys):
    assert main(["animate", "--out", str(tmp_path / "x.avi")]) == 2
    assert ".gif or .mp4" in capsys.readouterr().err


def test_noncommuting_position_plane_shows_position_current(tmp_path):
    """On the (θ₁, θ₂) plane of the non-commuting example the stationary plane current is
    the position-space current J_θ = P_vθP_θθ⁻¹(θ − μ)p(θ) of THEORY.md §7."""
    from pathlib import Path

    from fpsolver.case import load_case

    case = load_case(Path(__file__).resolve().parent.parent / "examples" / "noncommuting.toml")
    model = build_model(case)
    p_ss = theory.stationary_cov(model)
    mu = model.mu
    z = mu + np.array([[0.1, 0.05], [-0.2, 0.1], [0.05, -0.3]])
    j = animate.plane_current(model, model.stationary_mean, p_ss, (0, 1), z)
    m = theory.position_current_matrix(model)
    p_theta = theory.gaussian_density(mu, p_ss[:2, :2], z)
    np.testing.assert_allclose(j, ((z - mu) @ m.T) * p_theta[:, None], rtol=1e-10)
    assert np.abs(j).max() > 0.1  # a real, non-zero current in position space
    movie = animate.exact_movie(case, model, 3, plane=(0, 1), cells=24)
    assert movie.density.shape == (3, 24, 24) and movie.labels == ("θ₁", "θ₂")


def test_4d_solver_plane_marginal_in_axis_order():
    """A 4-D solve shown on the plane (v₁, θ₁): marginal mass 1, centroid near the exact
    mean. 12⁴ cells is very coarse (h ≈ 0.9 sd), so the centroid tolerance is 0.25 sd,
    about a quarter cell (measured: 0.198 sd in v₁, 0.167 sd in θ₁; 0.179 and 0.157 with
    the upwind-biased κ = 1/3 face values on the v axes)."""
    from pathlib import Path

    from fpsolver.case import load_case

    case = load_case(Path(__file__).resolve().parent.parent / "examples" / "noncommuting.toml")
    model = build_model(case)
    movie = animate.solver_movie(case, model, 3, plane=(2, 0), cells=12, t_final=0.2,
                                 progress=False)
    assert movie.labels == ("v₁", "θ₁") and movie.density.shape == (3, 12, 12)
    cell = (movie.x[1] - movie.x[0]) * (movie.y[1] - movie.y[0])
    np.testing.assert_allclose(movie.density.sum(axis=(1, 2)) * cell, 1.0, atol=1e-12)
    off = np.abs(movie.centroids() - movie.exact_mean) / movie.scale
    assert off.max() < 0.25


def test_output_format_falls_back_to_gif_without_ffmpeg(monkeypatch, tmp_path):
    monkeypatch.setattr(animate, "ffmpeg_available", lambda: False)
    assert animate.output_format(tmp_path / "a.mp4") == (tmp_path / "a.gif", "pillow")
    assert animate.output_format(tmp_path / "a.GIF") == (tmp_path / "a.gif", "pillow")
    monkeypatch.setattr(animate, "ffmpeg_available", lambda: True)
    assert animate.output_format(tmp_path / "a.mp4") == (tmp_path / "a.mp4", "ffmpeg")
    assert animate.output_format(tmp_path / "a.gif") == (tmp_path / "a.gif", "pillow")
    with pytest.raises(animate.UserError, match="even width"):
        from fpsolver.cli import build_parser
        from fpsolver.commands.animate import check_options

        args = build_parser().parse_args(["animate", "--out", str(tmp_path / "a.mp4"),
                                          "--size", "321x240"])
        check_options(args, 1)
