"""Assemble the validation report: run the sections, check the headline numbers, write
``DIR/report.md``, ``DIR/results.json`` and ``DIR/figures/*.png``.

Every output is written to a temporary folder next to ``DIR`` and moved in at the end, so
a crash or Ctrl-C never leaves a half-built report.
"""

import platform
import shutil
import tempfile
import time
from pathlib import Path

from .. import __version__
from ..errors import UserError
from ..io import atomic_write_json, atomic_write_text, make_output_folder, usual_permissions
from . import checks, common, convergence, current, diffusion, fipy_compare, modified_loss, \
    montecarlo

# report order; key -> section function (plan, figdir) -> common.Section
SECTIONS = {
    "convergence": convergence.section,
    "fipy": fipy_compare.section,
    "modified_loss": modified_loss.section,
    "current": current.section,
    "montecarlo": montecarlo.section,
    "diffusion": diffusion.section,
}


def parse_sections(text):
    """"a,b" -> ("a", "b") in report order; None or "" -> every section."""
    if not text:
        return tuple(SECTIONS)
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        raise UserError(f"--sections must be a comma-separated subset of {', '.join(SECTIONS)}; "
                        f"got {text!r}")
    return tuple(s for s in SECTIONS if s in names)


def build_report(out, quick=False, sections=None, bounds=None, log=print):
    """Run the validation and write the report into ``out``; returns the results dict.

    ``sections``: keys of :data:`SECTIONS` (default all); ``bounds``: {check: bound}
    overriding :data:`checks.CHECKS`; ``log``: one-line progress messages (or None).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    sections = tuple(SECTIONS) if sections is None else sections
    bounds = bounds or {}
    plan = common.plan(quick)
    make_output_folder(out.parent, option="--out's folder")
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    usual_permissions(tmp, directory=True)
    try:
        figdir = tmp / "figures"
        figdir.mkdir()
        done = []
        for key in sections:
            t0 = time.perf_counter()
            sec = SECTIONS[key](plan, figdir)
            sec.wall_time_s = time.perf_counter() - t0
            done.append(sec)
            if log:
                log(f"validate: {sec.title}: {sec.wall_time_s:.1f} s")
        headline = {k: v for sec in done for k, v in sec.headline.items()}
        rows = checks.evaluate(headline, bounds)
        results = {
            "fpsolver_version": __version__, "quick": quick, "plan": plan.__dict__,
            "python": platform.python_version(), "wall_time_s": time.perf_counter() - start,
            "checks": rows, "failed": checks.failures(rows),
            "sections": {s.key: {"title": s.title, "headline": s.headline, "data": s.data,
                                 "wall_time_s": s.wall_time_s} for s in done},
        }
        (out / "figures").mkdir(parents=True, exist_ok=True)
        for fig in sorted(figdir.iterdir()):
            shutil.move(str(fig), out / "figures" / fig.name)
        atomic_write_json(out / "results.json", results)
        atomic_write_text(out / "report.md", render(results, done))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def _summary(results):
    """Plain-language headline findings of the sections that ran."""
    h = {r["name"]: r["value"] for r in results["checks"]}
    sec = results["sections"]
    out = []
    if "convergence" in sec:
        out.append(f"- The finite-volume solver converges at second order or better (smallest observed "
                   f"L1 order {h['stationary_order_min']:.2f} stationary, "
                   f"{h['transient_order_min']:.2f} transient); default case at 128²: "
                   f"L1 = {h['l1_default_128']:.2e}, current error "
                   f"{100 * h['current_error_default_128']:.2f} %.")
    if "fipy" in sec:
        out.append(f"- Against FiPy on the same grid its L1 error at 128² is "
                   f"{h['fipy_ratio_128']:.0f}× smaller than FiPy's upwind/exponential "
                   f"schemes (first order in θ).")
    if "modified_loss" in sec:
        out.append(f"- −T log p of the numerical density recovers the modified loss Ψ to "
                   f"{100 * h['psi_rel_error']:.2f} % (128², 99 % of the mass); it is not "
                   f"the original loss.")
    if "montecarlo" in sec:
        rows = [r for r in sec["montecarlo"]["data"]["settings"] if r["batches"] == "iid"]
        worst = max(max(r["mode_ratio"]["continuous"]) for r in rows)
        out.append(f"- **The paper's continuous (level-1) prediction under-predicts SGD's "
                   f"stationary variance** by the factor r_d·r_s, up to {worst:.2f}× in "
                   f"these settings; the exact discrete theory (levels 2-3) fixes it: "
                   f"level 3 matches Monte-Carlo SGD within |z| ≤ {h['mc_max_z_exact']:.1f}. "
                   f"Random reshuffling falls below every i.i.d. prediction.")
    if "diffusion" in sec:
        out.append(f"- Anomalous diffusion Δ(k) in d = {sec['diffusion']['data']['dim']} "
                   f"matches the discrete theory (max |z| = {h['diffusion_max_z']:.1f}); "
                   f"the exponent depends on the window.")
    return "\n".join(out)


def render(results, sections):
    """The Markdown text of the report."""
    mode = "quick" if results["quick"] else "full"
    failed = results["failed"]
    verdict = ("**All checks pass.**" if not failed else
               f"**{len(failed)} check(s) FAIL: {', '.join(failed)}.**")
    rows = [[r["name"], r["description"], f"{r['op']} {common.fmt(r['bound'])}",
             common.fmt(r["value"], 4), r["status"]] for r in results["checks"]]
    toc = "\n".join(f"{i}. {s.title}" for i, s in enumerate(sections, 1))
    body = "\n\n".join(f"## {i}. {s.title}\n\n{s.markdown.strip()}\n\n"
                       f"*Section time: {s.wall_time_s:.1f} s.*"
                       for i, s in enumerate(sections, 1))
    return f"""# fpsolver validation report ({mode})

Generated by `fpsolver validate{' --quick' if results['quick'] else ''}` (fpsolver
{results['fpsolver_version']}, Python {results['python']}) in {results['wall_time_s']:.0f} s.
Every number and figure below is recomputed by that command; `results.json` holds them in
machine-readable form. Theory: THEORY.md; solver: `fpsolver run`.

{verdict}

{_summary(results)}

## Checks

{common.md_table(["check", "what", "bound", "value", "status"], rows)}

## Contents

{toc}

{body}
"""
