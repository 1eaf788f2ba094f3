"""Benchmark: ResNet-18 SGD step time, Hessian-vector product time, Lanczos cost per eigenpair.

    python benchmarks/net.py [--out benchmarks/results/net.json] [--image-size 32]
        [--batch-size 128] [--threads 1] [--k 5] [--budget 20] [--device auto]

Random inputs (no data set needed), torchvision resnet18(weights=None, num_classes=10), on
CUDA when available. Writes one JSON object: the device, sizes, seconds per SGD step (train
mode, forward + backward + torch.optim.SGD with momentum), seconds per HVP (double
back-prop, eval mode, one batch), the Lanczos wall time, products used and the seconds and
products per converged eigenpair, with the final residuals.
"""

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path


def _timed(fn, repeats, sync):
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/net.json")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--budget", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    import torch
    import torchvision

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fpsolver.io import atomic_write_json
    from fpsolver.net import hessian as hs, record

    torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen).to(device)
    model = torchvision.models.resnet18(weights=None, num_classes=10).to(device)
    loss_fn = torch.nn.functional.cross_entropy
    data = torch.utils.data.TensorDataset(x, y)
    opt = record.make_optimizer(model, 1e-4, 0.9, 1e-4)
    idx = list(range(args.batch_size))
    step_s = _timed(lambda: record.sgd_step(model, opt, loss_fn, data, idx, device), args.repeats,
                    sync)
    op = hs.HessianOperator(model, loss_fn, [(x, y)])
    v = torch.randn(op.n, generator=gen).to(device)
    hvp_s = _timed(lambda: op.matvec(v), args.repeats, sync)
    t0 = time.perf_counter()
    res = hs.lanczos(op.matvec, op.n, args.k, args.budget, tol=1e-3, dtype=torch.float32,
                     device=device)
    sync()
    lanczos_s = time.perf_counter() - t0
    converged = int((res.residuals <= 1e-3).sum())
    out = {
        "benchmark": "net", "device": device,
        "device_name": (torch.cuda.get_device_name() if device == "cuda"
                        else platform.processor() or platform.machine()),
        "torch": torch.__version__, "threads": args.threads, "image_size": args.image_size,
        "batch_size": args.batch_size, "n_params": op.n,
        "sgd_step_s": step_s, "hvp_s": hvp_s,
        "lanczos": {"k": args.k, "budget": args.budget, "wall_s": lanczos_s,
                    "products": res.n_products, "residuals": res.residuals.tolist(),
                    "eigenvalues": res.eigenvalues.tolist(), "converged_pairs": converged,
                    "s_per_eigenpair": lanczos_s / args.k,
                    "products_per_converged_pair": res.n_products / converged if converged else None},
    }
    atomic_write_json(args.out, out)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
