"""The headline numbers of the validation report and their bounds, in one table.

Each section of the report publishes named headline numbers; :data:`CHECKS` says which
bound each must meet. A check whose section did not run is reported as "not run" (and
does not fail); a NaN value fails. ``fpsolver validate`` exits non-zero naming every
failing check.
"""

import dataclasses
import math
from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class Check:
    """``value <op> bound`` with op "<=" or ">=" on the headline number ``name``."""

    name: str
    op: str
    bound: float
    description: str

    def passes(self, value):
        if value is None or not math.isfinite(value):
            return False
        return value <= self.bound if self.op == "<=" else value >= self.bound


CHECKS = (
    Check("failed_solves", "<=", 0,
          "number of fpsolver solves of the convergence study that did not converge"),
    Check("stationary_order_min", ">=", 1.8,
          "smallest observed L1 order (finest pair) of the 2-D stationary solves, all cases"),
    Check("transient_order_min", ">=", 1.8,
          "smallest observed L1 order (finest pair) of the 2-D transient solves, all cases"),
    # 4-D grids are coarse (quick: 24 cells over ±5.5 sd): the order is still rising to 2
    Check("order_4d", ">=", 1.5,
          "observed L1 order (finest pair) of the 4-D non-commuting stationary solve"),
    Check("l1_default_128", "<=", 2e-3,
          "fpsolver stationary L1 error, default case, 128²"),
    Check("current_error_default_128", "<=", 1e-2,
          "fpsolver stationary current relative L1 error, default case, 128²"),
    # round-off random walk over a run: ε·√(cells·steps) ≈ 1e-16·√(65536·1e5) ≈ 8e-12 for
    # the longest 256² transient of the full run (measured 1.1e-12; quick ≤ 2e-13)
    Check("mass_error_max", "<=", 1e-11,
          "largest |∫p − 1| over every fpsolver solve"),
    # diff/max(e) ∈ [1 − min/max, 1 + min/max] (triangle inequality); against the
    # first-order schemes min/max ≤ 0.15 at every grid, hence the margin
    Check("fipy_agreement_max", "<=", 1.15,
          "max over grids and FiPy upwind/exponential of ‖p_FiPy − p_fpsolver‖₁ / "
          "max(their L1 errors)"),
    Check("fipy_central_diff_order", ">=", 1.8,
          "observed order (finest pair) of ‖p_FiPy central − p_fpsolver‖₁: two solutions "
          "(second and third order) of the same problem"),
    Check("fipy_ratio_128", ">=", 10.0,
          "min over FiPy upwind/exponential of (FiPy L1 error)/(fpsolver L1 error) at 128²"),
    Check("psi_rel_error", "<=", 1e-2,
          "Ψ recovered as −T log p, relative sup error over the 99 %-mass region, default, 128²"),
    Check("psi_vs_loss_separation", ">=", 3.0,
          "(relative distance of −T log p to the original loss)/(its distance to Ψ), "
          "strong weight decay case"),
    Check("rotation_rel_error", "<=", 1e-2,
          "relative error of ω fitted to the transient mean (default case) against theory"),
    # ~40 correlated z-scores per run: Bonferroni false-alarm rate ≤ 40·P(|N(0,1)| > 4.5) = 3e-4
    Check("mc_max_z_exact", "<=", 4.5,
          "max |z| of Monte-Carlo SGD (i.i.d. batches) against level 3, every setting"),
    Check("mc_level1_max_z", ">=", 5.0,
          "max |z| of Monte-Carlo SGD against level 1 at the largest-η setting "
          "(the continuous prediction fails detectably)"),
    Check("reshuffle_ratio_max", "<=", 0.8,
          "largest Monte-Carlo/level-3 variance ratio under random reshuffling"),
    # ~50 strongly correlated points along one curve per start: 4.5 as above
    Check("diffusion_max_z", "<=", 4.5,
          "max |z| of Monte-Carlo E Δ(k) against level 2 over the compared steps k"),
    Check("diffusion_exponent_max_z", "<=", 4.5,
          "max |c_MC − c_level2|/SE(c_MC) over the decade windows of the exponent fits"),
)

CHECKS_BY_NAME = {c.name: c for c in CHECKS}


def parse_bounds(items):
    """``["NAME=VALUE", ...]`` -> {name: float}; unknown names or bad values are UserErrors."""
    out = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or name not in CHECKS_BY_NAME:
            raise UserError(f"--bound must be NAME=VALUE with NAME one of "
                            f"{', '.join(CHECKS_BY_NAME)}; got {item!r}")
        try:
            out[name] = float(value)
        except ValueError:
            raise UserError(f"--bound {name} needs a number, got {value!r}") from None
    return out


def evaluate(headline, overrides=None):
    """Rows {name, description, op, bound, value, status} for every check.

    ``headline``: {name: number}; ``overrides``: {name: bound} replacing the table's bound.
    status is "pass", "FAIL" or "not run".
    """
    overrides = overrides or {}
    rows = []
    for check in CHECKS:
        bound = overrides.get(check.name, check.bound)
        check = dataclasses.replace(check, bound=bound)
        value = headline.get(check.name)
        if value is None:
            status = "not run"
        else:
            status = "pass" if check.passes(float(value)) else "FAIL"
        rows.append({"name": check.name, "description": check.description, "op": check.op,
                     "bound": bound, "value": None if value is None else float(value),
                     "status": status})
    return rows


def failures(rows):
    """Names of the failing checks."""
    return [r["name"] for r in rows if r["status"] == "FAIL"]
