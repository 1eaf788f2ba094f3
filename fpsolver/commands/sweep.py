"""``fpsolver sweep SWEEP.toml --out DIR [--scheduler ADDRESS] [--workers N]``: Dask sweeps."""


def add_parser(subparsers):
    p = subparsers.add_parser(
        "sweep", help="hyperparameter sweep on Dask (theory, Monte-Carlo SGD, Δ(k) exponents)",
        description="Evaluate every point of a sweep file (a base case and axes over lr, "
                    "momentum, weight_decay, batch_size, sigma2, label_noise and a power-law "
                    "Hessian spectrum dim/alpha/h_max) on a dask.distributed cluster: theory "
                    "levels 1-3, Monte-Carlo SGD, diffusion exponents. Writes one file per "
                    "point to DIR/points/ (a killed sweep resumes where it stopped), the table "
                    "DIR/results.parquet and DIR/results.csv, and the study figures to "
                    "DIR/figures/.")
    p.add_argument("sweep", help="sweep file (TOML); see examples/sweep_*.toml")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory (run again with the same DIR to resume)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="address of a running Dask scheduler (default: start a LocalCluster)")
    p.add_argument("--workers", type=int, default=2, metavar="N",
                   help="LocalCluster worker processes, one thread each (default: 2)")
    p.add_argument("--no-figures", action="store_true", help="skip the study figures")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args):
    from ..errors import UserError
    from ..study import study_figures
    from ..sweep import load_sweep, run_sweep

    sweep = load_sweep(args.sweep)
    table = run_sweep(sweep, args.out, scheduler=args.scheduler, workers=args.workers,
                      progress=not args.quiet)
    counts = table["status"].value_counts().to_dict()
    print(f"results: {args.out}/results.parquet, {args.out}/results.csv ("
          + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + ")")
    if not counts.get("ok"):
        raise UserError(f"no sweep point finished ({len(table)} failed); their errors are in "
                        f"{args.out}/results.csv")
    if not args.no_figures:
        paths = study_figures(table, args.out)
        for path in paths:
            print(f"figure: {path}")
        if not paths:
            print("no figures: no swept value changes among the finished points")
    return 0
