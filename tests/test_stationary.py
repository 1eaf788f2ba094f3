"""Stationary solves: checkpoints on a schedule and on Ctrl-C, and resumed solves (4-D
Newton-GMRES: bit-identical to the uninterrupted solve; 2-D Newton-LU: same answer)."""

from pathlib import Path

import numpy as np
import pytest

from fpsolver import stationary as st
from fpsolver.case import default_case, load_case
from fpsolver.cli import main
from fpsolver.commands.run import _fingerprint
from fpsolver.errors import UserError
from fpsolver.solve import setup_problem

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NONCOMMUTING = EXAMPLES / "noncommuting.toml"


def _interrupt_at(monkeypatch, call, name):
    """Make the ``call``-th call of stationary.<name> raise KeyboardInterrupt (Ctrl-C)."""
    real = getattr(st, name)
    count = [0]

    def wrapped(*args, **kwargs):
        count[0] += 1
        if count[0] == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(st, name, wrapped)
    return count


@pytest.fixture(scope="module")
def four_d():
    """The §13 non-commuting case on 24⁴ and its uninterrupted solve to 1e-10 (8 Newton
    steps from the Gaussian start)."""
    prob = setup_problem(load_case(NONCOMMUTING), cells=24)
    return prob, st.stationary(prob.op, tol=1e-10)


@pytest.mark.parametrize("call", [1, 5])
def test_interrupted_4d_solve_resumes_to_the_identical_answer(four_d, tmp_path, monkeypatch,
                                                              call):
    prob, full = four_d
    assert full.success
    path = tmp_path / "checkpoint.npz"
    ck = st.StationaryCheckpoint(path, "nc24", every_s=1e9)  # written only on Ctrl-C
    with monkeypatch.context() as m:
        _interrupt_at(m, call, "_newton_krylov")
        with pytest.raises(KeyboardInterrupt):
            st.stationary(prob.op, tol=1e-10, checkpoint=ck)
    p, shape, steps = st.load_stationary_checkpoint(path, "nc24")
    assert shape == (24,) * 4 and steps == call - 1
    res = st.stationary(prob.op, tol=1e-10, resume=(p, shape, steps))
    assert res.success
    assert np.array_equal(res.p, full.p)  # deterministic Newton-GMRES: bit for bit
    assert res.n_iter == full.n_iter  # Newton steps counted across the interruption


def test_checkpoint_is_written_on_schedule_and_refused_for_another_problem(four_d, tmp_path):
    prob, full = four_d
    path = tmp_path / "checkpoint.npz"
    st.stationary(prob.op, tol=1e-10, checkpoint=st.StationaryCheckpoint(path, "a", every_s=0))
    p, shape, steps = st.load_stationary_checkpoint(path, "a")
    assert shape == (24,) * 4 and 1 <= steps < full.n_iter  # the last unconverged iterate
    assert abs(p.sum() * prob.grid.cell_volume - 1) < 1e-12
    with pytest.raises(UserError, match="another case/grid"):
        st.load_stationary_checkpoint(path, "b")


def test_interrupted_2d_direct_solve_resumes_to_the_same_answer(tmp_path):
    """The direct path refactorises on resume: the same answer to the solve tolerance
    (β = 0.99 on 48²: 15 Newton/chord steps from the Gaussian start)."""
    prob = setup_problem(load_case(EXAMPLES / "high_momentum.toml"), cells=48)
    full = st.stationary(prob.op)
    path = tmp_path / "checkpoint.npz"
    part = st.stationary(prob.op, max_iter=2, checkpoint=st.StationaryCheckpoint(path, "d", 0))
    assert part.status == "max_iter"
    p, shape, steps = st.load_stationary_checkpoint(path, "d")
    assert shape == (48, 48) and steps == 2
    resumed = st.stationary(prob.op, resume=(p, shape, steps))
    assert resumed.success and resumed.residual_rel < 1e-10
    assert np.abs(resumed.p - full.p).sum() * prob.grid.cell_volume < 1e-8


def test_run_resumes_an_interrupted_4d_stationary_solve(tmp_path, monkeypatch, four_d):
    """``fpsolver run CASE --resume`` after Ctrl-C (exit 130, checkpoint left) finishes with
    the uninterrupted solve's density."""
    out = tmp_path / "run"
    argv = ["run", str(NONCOMMUTING), "--out", str(out), "--no-progress", "--no-figure"]
    with monkeypatch.context() as m:
        _interrupt_at(m, 2, "_newton_krylov")
        assert main(argv) == 130
    assert (out / "checkpoint.npz").exists() and not (out / "summary.json").exists()
    case = load_case(NONCOMMUTING)
    key = _fingerprint(case, four_d[0].grid)
    assert st.load_stationary_checkpoint(out / "checkpoint.npz", key)[1] == (24,) * 4
    assert main(argv + ["--resume"]) == 0
    assert not (out / "checkpoint.npz").exists()
    with np.load(out / "density.npz") as f:
        p = f["p"]
    reference = st.stationary(four_d[0].op, tol=st.stationary_tolerance(
        four_d[0].op, case.run.steady_tol)).p
    assert np.array_equal(p, reference)


def test_negative_cells_of_a_converged_iterate_are_dropped_only_within_tolerance():
    """The 2-D default solution with one tail cell pushed to −1e-7 of the maximum: set to 0
    (renormalised) when the residual stays below tol; kept as is when tol is tighter than
    the clipped density's residual."""
    prob = setup_problem(default_case(), cells=32)
    op, vol = prob.op, prob.grid.cell_volume
    p = st.stationary(op, tol=1e-12).p.ravel().copy()
    p[0] = -1e-7 * p.max()
    res = np.abs(op.rate(p)).sum() * vol
    q, res_q = st._positive_part(op, p, res, 1e-6, vol)
    assert q.min() == 0.0 and abs(q.sum() * vol - 1.0) <= 1e-14
    assert res_q == pytest.approx(np.abs(op.rate(q)).sum() * vol, rel=1e-14)
    assert res_q / op.max_rate() < 1e-6
    kept, res_kept = st._positive_part(op, p, res, 0.1 * res_q / op.max_rate(), vol)
    assert kept is p and res_kept == res


def test_gmres_budget_grows_only_when_the_residual_would_not_reach_tol_in_time():
    """The Newton-GMRES product budget doubles (up to its cap) when the residual's rate over
    the last RATE_WINDOW steps projects more steps to ``tol`` than half of those left: at
    0.9 per step from 1e-5 to 1e-7 that is 44 steps (> 30/2: doubled), at 0.5 per step 7
    (kept); too few steps to measure a rate or a converged residual keep it too."""
    window = st.RATE_WINDOW
    slow = [1e-5 / 0.9 ** k for k in range(window, -1, -1)]
    fast = [1e-5 / 0.5 ** k for k in range(window, -1, -1)]
    assert st._budget(80, slow, 1e-7, 30) == 160
    assert st._budget(80, fast, 1e-7, 30) == 80
    assert st._budget(80, slow[1:], 1e-7, 30) == 80
    assert st._budget(80, slow[:-1] + [1e-8], 1e-7, 30) == 80
    assert st._budget(st.GMRES_MAX_PRODUCTS, slow, 1e-7, 30) == st.GMRES_MAX_PRODUCTS
    stalled = [1e-5] * (window + 1)
    assert st._budget(80, stalled, 1e-7, 30) == 160
