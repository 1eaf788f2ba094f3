"""Random case files through ``fpsolver run``: every run must end in a one-line refusal that
leaves no files, or in a summary whose numbers are sane (mass, positivity, a resolution
warning where the grid is coarse).

    python validation/random_cases.py SEED N [--dir DIR] [--timeout SECONDS]

Draws N cases (2-D and 4-D phase space; η, β, λ, S, Hessian, all three noise models,
cell lists, widths; half transients with a random start, initial_cov_scale and scheme),
runs each in a fresh process with this tree's fpsolver and prints one JSON line per case.
Cases that run past the timeout are reported and cut. Flags what needs a look: a
traceback, a refusal longer than one line or leaving files, mass error > 1e-12, a density
below −1e-12 of its maximum, or an L1 error above 0.05 without a resolution warning.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def random_case(rng, name):
    """TOML text of one random case."""
    d = 1 if rng.random() < 0.6 else 2
    lr = 10 ** rng.uniform(-3, -0.5)
    momentum = float(rng.choice([0.0, rng.uniform(0, 0.99)]))
    weight_decay = float(rng.choice([0.0, 10 ** rng.uniform(-4, -1)]))
    if d == 1:
        hessian = [[10 ** rng.uniform(-2, 1.3)]]
    else:
        q, _ = np.linalg.qr(rng.normal(size=(2, 2)))
        hessian = (q @ np.diag(10 ** rng.uniform(-1.5, 1, size=2)) @ q.T).tolist()
    model = str(rng.choice(["proportional", "isotropic", "matrix"]))
    sigma2 = 10 ** rng.uniform(-2, 0.5)
    noise = f'model = "{model}"\n'
    if model == "matrix":
        b = rng.normal(size=(d, d))
        noise += f"matrix = {((b @ b.T + 0.1 * np.eye(d)) * sigma2).tolist()}\n"
    else:
        noise += f"sigma2 = {sigma2}\n"
    text = (f'name = "{name}"\n[sgd]\nlr = {lr}\nmomentum = {momentum}\n'
            f"weight_decay = {weight_decay}\nbatch_size = {int(rng.integers(1, 256))}\n"
            f"[loss]\nhessian = {hessian}\n"
            f"minimum = {(rng.normal(size=d) * rng.choice([0, 1])).tolist()}\n"
            f"[noise]\n{noise}")
    grid = ""
    if d == 1 and rng.random() < 0.3:
        grid += f"cells = [{int(rng.integers(24, 160))}, {int(rng.integers(24, 160))}]\n"
    elif d == 2:
        grid += f"cells = {int(rng.integers(20, 40))}\n"
    if rng.random() < 0.3:
        grid += f"width = {rng.uniform(4, 9)}\n"
    if grid:
        text += "[grid]\n" + grid
    if rng.random() < 0.5:
        text += (f"[run]\nt_final = {10 ** rng.uniform(-1, 1.2)}\n"
                 f"initial_mean = {(rng.normal(size=2 * d) * 0.3).tolist()}\n"
                 f"initial_cov_scale = {10 ** rng.uniform(-1.3, 0.3)}\n")
        if rng.random() < 0.3:
            text += f'scheme = "{rng.choice(["explicit", "implicit"])}"\n'
    return d, text


def run_case(path, out, timeout):
    """One ``fpsolver run`` in a fresh process: a record of its outcome."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    try:
        proc = subprocess.run([sys.executable, "-m", "fpsolver", "run", str(path), "--out",
                               str(out), "--no-progress", "--no-figure"],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"timeout": timeout}
    err = proc.stderr.strip().splitlines()
    rec = {"rc": proc.returncode}
    if proc.returncode == 0:
        summary = json.loads((out / "summary.json").read_text())
        rec["warned"] = any(line.startswith("warning") for line in err)
        rec.update({k: summary.get(k) for k in (
            "status", "solver", "cells", "cells_per_sigma", "l1_error", "mass_error",
            "min_density_rel", "n_steps")})
        rec["look"] = (summary["mass_error"] > 1e-12 or summary["min_density_rel"] < -1e-12
                       or (summary["l1_error"] > 0.05 and not rec["warned"]))
    else:
        rec.update(error=err[-1] if err else "", lines=len(err),
                   files=sorted(os.listdir(out)) if out.is_dir() else [])
        rec["look"] = proc.returncode != 2 or len(err) != 1 or bool(rec["files"])
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seed", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("--dir", default="out/random_cases", help="case files and outputs")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(args.n):
        d, text = random_case(rng, f"random{args.seed}_{i}")
        path = folder / f"case{i}.toml"
        path.write_text(text)
        rec = {"case": str(path), "d": d, **run_case(path, folder / f"out{i}", args.timeout)}
        print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
