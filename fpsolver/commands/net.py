"""``fpsolver net record|eigen|compare|demo``: networks measured against the theory.

``record RUN`` trains (or loads ``--init``) the reference network, computes its top-k
Hessian eigenvectors when ``RUN/eigen.h5`` is missing, then records continued SGD
(resumable: run the same command again after a kill). ``eigen RUN --at final`` recomputes
eigenpairs at the final weights. ``compare RUN --out DIR`` writes ``summary.json`` and the
figures. ``demo --out DIR`` runs all three on the built-in small CPU configuration.
Needs the ``net`` extra; torch is imported only inside :func:`run`.
"""

import dataclasses
import os
import sys

from ..errors import UserError

# NetConfig's fields, listed here so that --help needs no torch (a test keeps them in sync)
_FIELDS = {
    "model": (str, "torchvision classification model, random init (default resnet18)"),
    "data": (str, "auto | fashion-mnist | digits | a dataset DIR you have (idx, CIFAR, ImageFolder)"),
    "image_size": (int, "images are resized to this many pixels per side"),
    "init": (str, "state-dict file of a trained model to start from (skips pretraining)"),
    "pretrain_steps": (int, "steps of plain training from scratch before recording"),
    "pretrain_lr": (float, "learning rate of the pretraining"),
    "pretrain_batch_size": (int, "batch size of the pretraining"),
    "settle_steps": (int, "unrecorded steps of the recorded SGD before θ_ref (burn-in)"),
    "lr": (float, "η of the recorded SGD"),
    "momentum": (float, "β"),
    "weight_decay": (float, "λ"),
    "batch_size": (int, "S"),
    "steps": (int, "recorded updates (may be raised to continue a finished run)"),
    "record_every": (int, "record every n-th update"),
    "checkpoint_every": (int, "updates between atomic checkpoints"),
    "batches": (str, "iid (with replacement; what the theory assumes) | reshuffle"),
    "seed": (int, "seed of batches, subsets and start vectors"),
    "k": (int, "number of Hessian eigen-directions"),
    "k_final": (int, "directions for --at final (0: same as k)"),
    "eigen_method": (str, "lanczos | subspace"),
    "eigen_budget": (int, "maximum Hessian-vector products of the eigen-solver"),
    "eigen_tol": (float, "stop when every residual ‖Hu − hu‖/|h| is below this"),
    "hessian_subset": (int, "examples in the fixed Hessian subset"),
    "hessian_batch": (int, "batch size of Hessian-vector products"),
    "bn_mode": (str, "BatchNorm in Hessian, noise and recording: eval (frozen running "
                     "statistics) | train (batch statistics, as the paper)"),
    "hessian_dtype": (str, "float32 | float64"),
    "noise_subset": (int, "examples for the gradient-noise estimate"),
    "trace_probes": (int, "Hutchinson probes for tr H (0: skip)"),
    "device": (str, "auto | cpu | cuda"),
}


def _add_threads(p):
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (default 1: more threads were slower on a "
                        "loaded 2-core machine)")


def _add_config(p):
    _add_threads(p)
    g = p.add_argument_group("run configuration (defaults: --preset, or the stored config.json)")
    g.add_argument("--preset", choices=("paper", "demo"), default="paper",
                   help="paper: η=1e-4, λ=1e-4, S=256, β=0.9, top-30 (GPU); demo: small CPU run")
    for name, (typ, text) in _FIELDS.items():
        g.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None, help=text)


def add_parser(subparsers):
    p = subparsers.add_parser(
        "net", help="ResNet-18 recording, Hessian eigen-directions, comparison with the theory",
        description=__doc__.split("\n\n")[1])
    sub = p.add_subparsers(dest="net_command", metavar="ACTION")
    rec = sub.add_parser("record", help="record continued SGD training into RUN/record.h5")
    rec.add_argument("run_dir", metavar="RUN", help="run directory (created; resumed if it exists)")
    _add_config(rec)
    eig = sub.add_parser("eigen", help="top-k Hessian eigenpairs into RUN/eigen.h5")
    eig.add_argument("run_dir", metavar="RUN")
    eig.add_argument("--at", choices=("reference", "final"), default="reference",
                     help="weights: reference (start of recording) or final (eigen_final.h5)")
    _add_config(eig)
    cmp_ = sub.add_parser("compare", help="compare RUN with theory levels 1 and 2")
    cmp_.add_argument("run_dir", metavar="RUN")
    _add_compare(cmp_)
    demo = sub.add_parser("demo", help="record, eigen and compare on the small CPU configuration")
    demo.add_argument("--data", default=None, help="auto (default) | fashion-mnist | digits | DIR")
    demo.add_argument("--steps", type=int, default=None, help="recorded updates (default 1000)")
    _add_threads(demo)
    demo.add_argument("--out", required=True, metavar="DIR",
                      help="writes DIR/run (the run) and DIR/report (the comparison)")
    return p


def _add_compare(p):
    p.add_argument("--out", required=True, metavar="DIR", help="report folder")
    p.add_argument("--burn-in", type=float, default=0.2,
                   help="fraction of the steps dropped before stationary statistics")
    p.add_argument("--window", type=float, nargs=2, default=None, metavar=("K1", "K2"),
                   help="steps for the exponent fit of Δ(k) (default 0.1·steps to steps)")


def _config(args):
    from ..net import pipeline

    given = {name: getattr(args, name) for name in _FIELDS if getattr(args, name) is not None}
    if os.path.exists(os.path.join(args.run_dir, "config.json")):
        stored = pipeline.open_config(args.run_dir)
        return pipeline.open_config(args.run_dir, dataclasses.replace(stored, **given))
    base = pipeline.demo_config() if args.preset == "demo" else pipeline.NetConfig()
    return pipeline.open_config(args.run_dir, dataclasses.replace(base, **given))


def _progress():
    from tqdm import tqdm

    bar = {}

    def update(step, total):
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, initial=step - 1, unit="step", file=sys.stderr,
                              mininterval=2.0)
        bar["bar"].update(1)
        if step == total:
            bar["bar"].close()
    return update


def _log(text):
    print(text, file=sys.stderr, flush=True)


def _print_summary(summary, out):
    print(f"wrote {out}/summary.json and {len(summary.get('figures', []))} figures")
    for d in summary["directions"]:
        if d.get("theory") == "ok":
            print(f"  e{d['index']}: h = {d['h']:.4g} (residual {d['residual']:.2g}); Var θ / level 2 "
                  f"= {d['ratio_theta_level2']:.3f} ± {d['var_theta_se'] / d['var_theta_level2']:.3f}, "
                  f"Var v / level 2 = {d['ratio_v_level2']:.3f}; {d['rotation_sense']}")
        else:
            print(f"  e{d['index']}: h = {d['h']:.4g}: no theory ({d['theory_error']})")
    s = summary["step_norm2"]
    print(f"  η²‖buf‖² = {s['measured']:.4g} ± {s['stderr']:.2g}; η² tr Σ/(S(1−β²)) = {s['level1']:.4g}")
    print(f"  Δ(k) exponent c = {summary['diffusion']['exponent_full']:.3f} (all parameters)")


def _compare(run_dir, out, burn_in=0.2, window=None):
    from ..net import project

    summary = project.compare(run_dir, out, burn_in, tuple(window) if window else None)
    _print_summary(summary, out)


def run(args):
    from ..net import require_torch

    action = getattr(args, "net_command", None)
    if action is None:
        raise UserError("fpsolver net needs an action: record, eigen, compare or demo")
    if action == "compare":
        _compare(args.run_dir, args.out, args.burn_in, args.window)
        return 0
    torch = require_torch()
    if args.threads < 1:
        raise UserError(f"threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    from ..net import pipeline

    if action == "record":
        result = pipeline.record_run(args.run_dir, _config(args), _log, _progress())
        print(f"recorded {result['steps_run']} steps into {args.run_dir}/record.h5 "
              f"({result['seconds_per_step']:.3g} s/step, resumed from step {result['resumed_from']})")
    elif action == "eigen":
        path = pipeline.compute_eigen(args.run_dir, _config(args), args.at, _log)
        print(f"wrote {path}")
    else:
        overrides = {key: val for key, val in (("data", args.data), ("steps", args.steps))
                     if val is not None}
        run_dir = f"{args.out}/run"
        config = pipeline.open_config(run_dir, pipeline.demo_config(**overrides))
        pipeline.record_run(run_dir, config, _log, _progress())
        pipeline.compute_eigen(run_dir, config, "final", _log)
        _compare(run_dir, f"{args.out}/report")
    return 0
