"""Benchmark: Monte-Carlo SGD throughput (chain-steps per second), Numba kernel vs numpy.

    python benchmarks/simulate.py [--out benchmarks/results/simulate.json] [--threads 2]
        [--chains 4096] [--steps 20000] [--repeats 3]

d = 2 (THEORY.md §13 Hessian, η = 0.05, β = 0.9, λ = 0.01): (a) quadratic loss with
Gaussian gradient noise Σ/S (S = 8), recording every step and every 10th step; (b) linear
regression (N = 1024) with i.i.d. mini-batches of S = 32. The baseline is a straightforward
numpy loop over steps, vectorised over chains, doing the same work (normals or batch
gathers, the PyTorch update, the moment sums). Compilation is excluded (one warm-up run).
Reports the best and median wall-clock throughput over ``repeats`` runs and the throughput
per CPU-second of the process (less sensitive to other load on a shared machine), with
the load average, so numbers from a busy machine can be recognised.
"""

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

H13 = [[0.755734, 0.379458], [0.379458, 0.309074]]


def _models():
    from fpsolver.case import case_from_dict
    from fpsolver.sgd import PhaseSpaceModel, build_model

    gauss = PhaseSpaceModel.from_arrays(H13, 0.245764 * np.array(H13), 0.05, 0.9, 0.01, 8)
    lin = build_model(case_from_dict({
        "sgd": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01, "batch_size": 32},
        "loss": {"linear_regression": {"n_samples": 1024, "feature_covariance": H13,
                                       "label_noise": 0.5, "seed": 1}}}))
    return gauss, lin


def numpy_sgd(model, chains, steps, record_every=1, seed=0):
    """Straightforward numpy reference: loop over steps, vectorised over chains."""
    rng = np.random.default_rng(seed)
    h, d = model.hyper, model.dim
    theta = np.tile(model.mu, (chains, 1))
    buf = np.zeros((chains, d))
    mom1 = np.zeros((chains, 2 * d))
    mom2 = np.zeros((chains, 2 * d, 2 * d))
    if model.data is None:
        evals, evecs = np.linalg.eigh(model.noise_cov)
        root = (evecs * np.sqrt(np.clip(evals, 0, None))) @ evecs.T / np.sqrt(h.batch_size)
    else:
        x, y = model.data.X, model.data.y
    for k in range(steps):
        if model.data is None:
            grad = (theta - model.mu) @ model.K.T + rng.standard_normal((chains, d)) @ root.T
        else:
            idx = rng.integers(0, len(y), (chains, h.batch_size))
            xb = x[idx]
            r = np.einsum("csd,cd->cs", xb, theta) - y[idx]
            grad = np.einsum("csd,cs->cd", xb, r) / h.batch_size + h.weight_decay * theta
        buf = h.momentum * buf + grad
        theta = theta - h.lr * buf
        if k % record_every == 0:
            z = np.hstack([theta - model.mu, -buf])
            mom1 += z
            mom2 += z[:, :, None] * z[:, None, :]
    return mom1, mom2


def _measure(fn, chain_steps, repeats):
    fn()  # warm-up (compilation)
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return {"chain_steps": chain_steps, "best_wall_s": min(walls),
            "chain_steps_per_s": chain_steps / min(walls),
            "chain_steps_per_s_median": chain_steps / statistics.median(walls),
            "chain_steps_per_cpu_s": chain_steps / min(cpus)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/simulate.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chains", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--numpy-steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import numba

    from fpsolver import __version__
    from fpsolver.io import atomic_write_json
    from fpsolver.simulate import simulate_sgd

    threads = min(args.threads, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(threads)
    gauss, lin = _models()
    ch, st = args.chains, args.steps
    cases = {
        "gaussian_d2_record_every_1": (gauss, st, 1),
        "gaussian_d2_record_every_10": (gauss, st, 10),
        "linear_regression_d2_S32_iid": (lin, max(st // 10, 1), 1),
    }
    results = {}
    for name, (model, steps, every) in cases.items():
        kernel = _measure(lambda: simulate_sgd(model, ch, steps, burn_in=0, record_every=every,
                                               delta_steps=0, trajectory=(0, 0),
                                               parallel=threads > 1),
                          ch * steps, args.repeats)
        nsteps = args.numpy_steps
        base = _measure(lambda: numpy_sgd(model, ch, nsteps, every), ch * nsteps, args.repeats)
        results[name] = {"record_every": every, "numba": kernel, "numpy": base,
                         "speedup": kernel["chain_steps_per_s"] / base["chain_steps_per_s"]}
        print(f"{name:>32}: numba {kernel['chain_steps_per_s']:.3g} chain-steps/s "
              f"({kernel['chain_steps_per_cpu_s']:.3g} per CPU-s), numpy "
              f"{base['chain_steps_per_s']:.3g}, speed-up {results[name]['speedup']:.0f}x")
    target = 1e8
    gauss = results["gaussian_d2_record_every_1"]["numba"]
    out = {
        "benchmark": "simulate", "fpsolver_version": __version__,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "numba_threads": threads,
                    "load_average_1min": os.getloadavg()[0]},
        "chains": ch, "steps": st, "repeats": args.repeats, "results": results,
        "target_chain_steps_per_s": target,
        # wall clock as measured (low when the machine is shared), and the idle-machine
        # estimate: throughput per CPU-second of the process times the threads used
        "target_met_gaussian_wall": gauss["chain_steps_per_s"] >= target,
        "gaussian_estimate_idle_cores": gauss["chain_steps_per_cpu_s"] * threads,
        "target_met_gaussian_idle_estimate": gauss["chain_steps_per_cpu_s"] * threads >= target,
    }
    atomic_write_json(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
