"""``fpsolver validate [--quick] --out DIR``: the validation suite and its report."""

import sys


def add_parser(subparsers):
    p = subparsers.add_parser(
        "validate", help="run the validation suite and write DIR/report.md",
        description="Recompute the validation report: convergence tables of the "
                    "finite-volume solver against the exact Gaussians, fpsolver vs FiPy, the "
                    "modified loss and the probability current recovered from the numerical "
                    "density, Monte-Carlo SGD against the three theory levels, and anomalous "
                    "diffusion. Writes DIR/report.md, DIR/results.json and DIR/figures/*.png; "
                    "exits 1 naming every headline number out of its bound.")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--quick", action="store_true",
                   help="small grids and fewer Monte-Carlo chains (< 2 minutes on 2 cores)")
    p.add_argument("--sections", metavar="A,B", default=None,
                   help="only these sections (default all): convergence, fipy, modified_loss, "
                        "current, montecarlo, diffusion")
    p.add_argument("--bound", action="append", metavar="NAME=VALUE", default=[],
                   help="override the bound of one check (repeatable); see report.md for names")
    return p


def run(args):
    import os

    import matplotlib

    matplotlib.use("Agg")
    os.environ.setdefault("FIPY_SOLVERS", "scipy")
    from ..validate import checks, report

    sections = report.parse_sections(args.sections)
    bounds = checks.parse_bounds(args.bound)
    results = report.build_report(args.out, quick=args.quick, sections=sections,
                                  bounds=bounds, log=lambda m: print(m, file=sys.stderr))
    print(f"fpsolver validate: wrote {args.out}/report.md ({results['wall_time_s']:.0f} s)")
    bad = [r for r in results["checks"] if r["status"] == "FAIL"]
    if bad:
        text = "; ".join(f"{r['name']} = {r['value']:.4g} (needs {r['op']} {r['bound']:.4g})"
                         for r in bad)
        print(f"fpsolver: validation failed: {text}", file=sys.stderr)
        return 1
    return 0
