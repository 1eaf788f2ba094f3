"""Plots draw exactly the data they are given, with the sign conventions of THEORY.md §7."""

import numpy as np
import pytest
from scipy.stats import chi2, norm

from fpsolver import plots, theory
from fpsolver.case import default_case
from fpsolver.sgd import build_model


@pytest.fixture(scope="module")
def stationary_field():
    """Default case: centres, cell-centre p_ss and J_ss on a 64 × 64 box of ±4 sd."""
    model = build_model(default_case())
    p_ss = theory.stationary_cov(model)
    sd = np.sqrt(np.diag(p_ss))
    x = np.linspace(-4 * sd[0], 4 * sd[0], 64) + model.mu[0]
    y = np.linspace(-4 * sd[1], 4 * sd[1], 64)
    z = np.stack(np.meshgrid(x, y, indexing="ij"), axis=-1)
    j = theory.stationary_current(model, z)
    return model, x, y, theory.stationary_density(model, z), (j[..., 0], j[..., 1])


def _segments(stream):
    """Midpoints and directions (n, 2) of a streamplot's non-degenerate line segments."""
    lines = stream.lines.get_segments()  # polylines, or 2-point segments for varying widths
    seg = np.concatenate([np.stack([ln[:-1], ln[1:]], axis=1) for ln in lines if len(ln) > 1])
    step = seg[:, 1] - seg[:, 0]
    keep = np.any(step != 0, axis=1)  # streamplot emits zero-length stubs at the box edge
    return seg[keep].mean(axis=1), step[keep]


def test_streamlines_follow_j_clockwise(stationary_field):
    model, x, y, p, current = stationary_field
    art = plots.density_current(x, y, p, current)
    mid, step = _segments(art["current"])
    assert len(mid) > 500
    j = theory.stationary_current(model, mid)
    along = np.einsum("ni,ni->n", step, j)
    # every streamline segment points along +J (not −J); J is exact and the streamplot
    # interpolates a 64² sampling, so only near-zero-|J| segments could disagree
    assert np.mean(along > 0) == 1.0
    # clockwise with θ horizontal, v vertical: (z − z_μ) × dz < 0 everywhere
    rel = mid - model.stationary_mean
    cross = rel[:, 0] * step[:, 1] - rel[:, 1] * step[:, 0]
    assert np.mean(cross < 0) == 1.0
    mesh = art["mesh"].get_array().reshape(len(y), len(x))
    np.testing.assert_array_equal(mesh, p.T)


def test_quiver_is_j_with_right_sign(stationary_field):
    model, x, y, p, (jx, jy) = stationary_field
    art = plots.density_current(x, y, p, (jx, jy), style="quiver", stride=8)
    q = art["current"]
    np.testing.assert_array_equal(q.U.reshape(8, 8), jx[4::8, 4::8])
    np.testing.assert_array_equal(q.V.reshape(8, 8), jy[4::8, 4::8])
    np.testing.assert_allclose(q.X.reshape(8, 8), np.meshgrid(x[4::8], y[4::8], indexing="ij")[0])
    # J_ss = [v; −(K/m)(θ − μ)] p: compare with the closed form at the arrow points
    gx, gy = np.meshgrid(x[4::8], y[4::8], indexing="ij")
    pz = p[4::8, 4::8]
    k_over_m = model.K[0, 0] / model.mass
    np.testing.assert_allclose(q.U.reshape(8, 8), gy * pz, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(q.V.reshape(8, 8), -k_over_m * (gx - model.mu[0]) * pz,
                               rtol=1e-10, atol=1e-14)


def test_marginals_match_exact_gaussian():
    model = build_model(default_case())
    p_ss = theory.stationary_cov(model)
    sd = np.sqrt(np.diag(p_ss))
    edges = [m + np.linspace(-6 * s, 6 * s, 81) for m, s in zip(model.stationary_mean, sd)]
    centers = [0.5 * (e[1:] + e[:-1]) for e in edges]
    p = theory.gaussian_cell_averages(model.stationary_mean, p_ss, edges)
    art = plots.marginals(centers, p, exact=(model.stationary_mean, p_ss))
    for k in range(2):
        c, m = art["data"][k].get_data()
        h = centers[k][1] - centers[k][0]
        assert abs(m.sum() * h - 1) < 1e-8          # mass outside ±6 sd is 2e-9
        # cell average − point value = f''h²/24 + O(h⁴); |f''| ≤ pdf(0)/sd²
        bound = norm.pdf(0, 0, sd[k]) / sd[k] ** 2 * h ** 2 / 24 * 1.01
        np.testing.assert_array_less(np.abs(m - norm.pdf(c, model.stationary_mean[k], sd[k])),
                                     bound)
        fx, fy = art["exact"][k].get_data()
        np.testing.assert_allclose(fy, norm.pdf(fx, model.stationary_mean[k], sd[k]), rtol=1e-12)


def test_toy_rotation_levels_and_area_production(rng):
    toy = plots.overdamped_toy()
    q = theory.rotation_Q(toy)
    assert q[0, 1] == pytest.approx(0.9, abs=1e-12)
    x, y, loss, psi, current = plots.toy_figure_data(toy, n=161)
    levels = plots.gaussian_levels(toy.temperature, (0.5, 0.9))
    np.testing.assert_allclose(levels, [np.log(2), np.log(10)], rtol=1e-14)
    art = plots.loss_contours(x, y, loss, psi, levels, current=current)
    np.testing.assert_array_equal(art["modified"].levels, levels)
    np.testing.assert_array_equal(art["loss"].levels, levels)
    # the Ψ contour of level c bounds the ellipse ½xᵀP⁻¹x ≤ c of area 2πc·√det P
    p_ss = theory.stationary_cov(toy)
    for c, paths in zip(levels, art["modified"].allsegs):
        (ring,) = paths
        area = 0.5 * abs(np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1]))
        exact = 2 * np.pi * c * np.sqrt(np.linalg.det(p_ss))
        assert area == pytest.approx(exact, rel=2e-3)  # linear contour interpolation, O(h²)
    # streamlines follow J = −Q∇(Ψ/T)p, which circulates counter-clockwise here (Q₁₂ > 0)
    mid, step = _segments(art["current"])
    j = theory.stationary_current(toy, mid)
    assert np.mean(np.einsum("ni,ni->n", step, j) > 0) == 1.0
    assert np.mean(mid[:, 0] * step[:, 1] - mid[:, 1] * step[:, 0] > 0) == 1.0
    # a sample path produces area at the rate E[x₁dx₂ − x₂dx₁]/dt = 2Q₁₂ = 1.8
    dt, steps = 0.002, 100_000
    path = toy.sample_path(steps, dt, rng, x0=np.zeros(2))
    mid = 0.5 * (path[1:] + path[:-1])
    d = np.diff(path, axis=0)
    rate = (mid[:, 0] * d[:, 1] - mid[:, 1] * d[:, 0]) / dt
    blocks = rate.reshape(50, -1).mean(axis=1)  # 50 blocks of t = 4 ≫ relaxation time 1/1
    err = blocks.std(ddof=1) / np.sqrt(len(blocks))
    # tolerance: 4 standard errors + the O(dt·‖A‖) Euler–Maruyama bias (≈ 1 %)
    assert abs(blocks.mean() - 1.8) < 4 * err + 0.02 * 1.8


def test_phase_portrait_band_is_95_percent_ellipse(rng):
    mean = np.array([[0.0, 0.0], [0.5, -1.0], [1.0, 0.5]])
    cov = np.array([[[1.0, 0.3], [0.3, 2.0]]] * 3)
    theta, v = rng.standard_normal((2, 5, 3))
    art = plots.phase_portrait_3d(np.arange(3), theta, v, mean, cov, n_bands=3)
    xs, ks, vs = art["mean"].get_data_3d()
    np.testing.assert_array_equal(np.c_[xs, vs], mean)
    np.testing.assert_array_equal(ks, [0, 1, 2])
    assert len(art["band"]) == 3 and len(art["chains"]) == 5
    for i, line in enumerate(art["band"]):
        bx, bk, bv = line.get_data_3d()
        y = np.c_[bx, bv] - mean[i]
        d2 = np.einsum("ni,ij,nj->n", y, np.linalg.inv(cov[i]), y)
        np.testing.assert_allclose(d2, chi2.ppf(0.95, 2), rtol=1e-12)
        assert np.all(bk == i)
    point_start = cov.copy()
    point_start[0] = 0.0  # a chain started at a point has no band at k = 0
    art = plots.phase_portrait_3d(np.arange(3), theta, v, mean, point_start, n_bands=3)
    np.testing.assert_array_equal(art["band_steps"], [1, 2])
    n = 20_000
    pts = rng.multivariate_normal(mean[1], cov[1], size=n)
    frac = plots.fraction_in_band(pts, mean[1], cov[1])
    assert abs(frac - 0.95) < 4 * np.sqrt(0.95 * 0.05 / n)


def test_diffusion_fit_recovers_power_law():
    k = np.arange(1, 2001, dtype=float)
    delta = 3.0 * k ** 1.5
    art = plots.diffusion_loglog(k, delta, windows=[(10, 1000)], theory_curves={"c": delta})
    assert art["exponents"][0] == pytest.approx(1.5, abs=1e-12)
    fx, fy = art["fits"][0].get_data()
    np.testing.assert_allclose(fy, 3.0 * fx ** 1.5, rtol=1e-10)
    np.testing.assert_array_equal(art["theory"][0].get_ydata(), delta)
    km, slope = plots.local_slopes(k, delta)
    np.testing.assert_allclose(slope, 1.5, rtol=1e-10)
    np.testing.assert_allclose(km, np.sqrt(k[1:] * k[:-1]))


def test_convergence_order_and_reference():
    cells = np.array([16, 32, 64, 128])
    errors = 5.0 * cells ** -2.0
    art = plots.convergence(cells, errors, expected_order=2)
    assert art["order"] == pytest.approx(2.0, abs=1e-12)
    np.testing.assert_allclose(art["reference"].get_ydata(), errors, rtol=1e-12)
    np.testing.assert_array_equal(art["data"].get_ydata(), errors)


def test_every_docs_figure_is_made_by_the_figure_script():
    """No figure in docs/ without the script that makes it: every figures/NAME used by a
    page is written by docs/make_figures.py, and every file in docs/figures/ is used."""
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parent.parent / "docs"
    used = set()
    for page in docs.rglob("*.rst"):
        used |= set(re.findall(r"figures/([\w.-]+\.(?:png|gif))", page.read_text()))
    script = (docs / "make_figures.py").read_text()
    made = set(re.findall(r'_save\(fig, "([\w.-]+)"\)', script))
    made |= set(re.findall(r'OUT / "([\w.-]+)"', script))
    assert used and used <= made
    assert {p.name for p in (docs / "figures").iterdir()} <= made
    assert made <= used | {p.name for p in (docs / "figures").iterdir()}
