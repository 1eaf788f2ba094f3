"""The quick validation report: its headline numbers, its sections, its exit status.

The quick run happens once per module (about a minute on 2 cores); the tests read its
results.json. Bounds are those of the issue and of fpsolver/validate/checks.py, each
justified there (scheme orders, Monte-Carlo standard errors).
"""

import json
import math
import re

import numpy as np
import pytest

from fpsolver.cli import main
from fpsolver.validate import checks, report
from fpsolver.validate.common import md_table

SECTION_TITLES = (
    "Convergence of the finite-volume solver",
    "fpsolver vs FiPy vs exact",
    "Modified loss recovered from the stationary density",
    "Probability current and rotation frequency",
    "Monte-Carlo SGD vs the three theory levels",
    "Anomalous diffusion",
)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("validate") / "report"
    status = main(["validate", "--quick", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    return status, out, results


def headline(results):
    return {r["name"]: r["value"] for r in results["checks"]}


@pytest.mark.slow
def test_quick_report_exits_zero_with_every_section(quick):
    status, out, results = quick
    assert status == 0, results["failed"]
    text = (out / "report.md").read_text()
    for title in SECTION_TITLES:
        assert f". {title}" in text
    assert "## Checks" in text and "level 1 low by a factor" in text and "level 3" in text
    for fig in ("convergence", "fipy_vs_fpsolver", "modified_loss", "current_rotation",
                "montecarlo_levels", "diffusion"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000
    assert {r["status"] for r in results["checks"]} == {"pass"}


@pytest.mark.slow
def test_quick_headline_numbers(quick):
    h = headline(quick[2])
    assert h["failed_solves"] == 0  # every stationary solve reaches its tolerance
    # second-order scheme: observed orders ≥ 1.8 on 32² → 64² → 128²
    assert h["stationary_order_min"] >= 1.8
    assert h["order_4d"] >= 1.5  # 12⁴ → 16⁴ → 24⁴: coarse, order still rising
    assert h["transient_order_min"] >= 1.8
    assert h["l1_default_128"] <= 2e-3
    assert h["current_error_default_128"] <= 1e-2
    assert h["mass_error_max"] <= 1e-12  # quick grids: ≤ 128², round-off only
    # FiPy's schemes are first order in θ (no diffusion there), fpsolver's second order
    assert h["fipy_ratio_128"] >= 10
    assert h["fipy_agreement_max"] <= checks.CHECKS_BY_NAME["fipy_agreement_max"].bound
    assert h["fipy_central_diff_order"] >= 1.8  # both second order: same limit
    assert h["psi_rel_error"] <= 1e-2
    assert h["rotation_rel_error"] <= 1e-2
    # Monte-Carlo: level 3 within error, level 1 detectably low, reshuffling far below
    assert h["mc_max_z_exact"] <= 4.5
    assert h["mc_level1_max_z"] >= 5
    assert h["reshuffle_ratio_max"] <= 0.8
    assert h["diffusion_max_z"] <= 4.5
    assert h["diffusion_exponent_max_z"] <= 4.5


@pytest.mark.slow
def test_level1_deficit_is_rd_times_rs(quick):
    """MC / level 1 (Var θ per mode) equals r_d·r_s within the Monte-Carlo error (1024
    chains: relative SE of a variance ≈ 1-2 %; 6 % covers 4 SE)."""
    settings = quick[2]["sections"]["montecarlo"]["data"]["settings"]
    for s in settings:
        if s["batches"] == "iid":
            ratio = np.array(s["mode_ratio"]["continuous"])
            assert np.allclose(ratio, s["rd_rs"], rtol=0.06), s["name"]
            assert np.all(ratio > 1)


@pytest.mark.slow
def test_failing_check_exits_nonzero_naming_it(tmp_path, capsys):
    out = tmp_path / "r"
    status = main(["validate", "--quick", "--out", str(out), "--sections", "montecarlo",
                   "--bound", "mc_max_z_exact=1e-9"])
    assert status == 1
    err = capsys.readouterr().err
    assert "validation failed: mc_max_z_exact" in err
    results = json.loads((out / "results.json").read_text())
    assert results["failed"] == ["mc_max_z_exact"]
    statuses = {r["name"]: r["status"] for r in results["checks"]}
    assert statuses["l1_default_128"] == "not run"


def test_checks_table_semantics():
    rows = checks.evaluate({"psi_rel_error": 0.5, "l1_default_128": math.nan,
                            "fipy_ratio_128": 12.0})
    status = {r["name"]: r["status"] for r in rows}
    assert status["psi_rel_error"] == "FAIL"
    assert status["l1_default_128"] == "FAIL"  # NaN never passes
    assert status["fipy_ratio_128"] == "pass"
    assert status["mc_max_z_exact"] == "not run"
    assert checks.failures(rows) == ["l1_default_128", "psi_rel_error"]
    rows = checks.evaluate({"fipy_ratio_128": 12.0}, {"fipy_ratio_128": 20.0})
    assert {r["name"]: r["status"] for r in rows}["fipy_ratio_128"] == "FAIL"


def test_bad_input_exits_2_before_any_work(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["validate", "--quick", "--out", str(target)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["validate", "--out", str(tmp_path / "a"), "--bound", "nope=1"]) == 2
    assert main(["validate", "--out", str(tmp_path / "b"), "--sections", "fipy,x"]) == 2
    assert "--sections" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [target]
    assert report.parse_sections("diffusion,fipy") == ("fipy", "diffusion")


def test_markdown_cells_with_bars_stay_one_cell():
    """|z| and |∫p − 1| in a check's description must not split its row (they did)."""
    text = md_table(["check", "what"], [["mc_max_z", "max |z| of Monte-Carlo"]])
    row = text.splitlines()[2]
    assert len(re.split(r"(?<!\\)\|", row)) - 2 == 2
