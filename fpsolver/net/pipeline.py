"""A network run directory: configuration, reference network, eigen-directions, recording.

Files in ``RUN/``: ``config.json`` (:class:`NetConfig`), ``reference.pt`` (θ_ref, the
converged network recording starts from), ``eigen.h5`` (top-k Hessian eigenpairs at θ_ref
with gradient-noise projections; format ``fpsolver-net-eigen`` v1), ``record.h5`` (see
:mod:`fpsolver.net.record`), ``checkpoint.pt`` (resume state; the final weights at the end)
and, after ``eigen --at final``, ``eigen_final.h5``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import UserError
from ..io import atomic_replace, atomic_write_json
from . import hessian as hs
from .data import fixed_batches, load_images
from .files import EIGEN_FORMAT, EIGEN_VERSION, load_eigen
from .record import RecordSettings, record, train

METHODS = ("lanczos", "subspace")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# keys that may change between invocations on one run directory
MUTABLE = ("steps", "checkpoint_every", "device", "eigen_budget", "eigen_tol", "eigen_method",
           "k_final")


@dataclass(frozen=True)
class NetConfig:
    """Everything that defines a network run (defaults: the paper's protocol, THEORY.md §10).

    Units: steps, examples, pixels. ``init``: a state-dict file of an already trained model
    (else the network is trained from scratch for ``pretrain_steps`` first); with
    ``bn_mode = eval`` the BatchNorm statistics are then recalibrated on the Hessian subset;
    ``settle_steps`` of the recorded SGD itself (same η, β, λ, S, BatchNorm mode, i.i.d.
    batches) bring θ_ref close to the stationary regime the theory describes. ``bn_mode``
    applies to the Hessian, the noise estimate and the recorded SGD alike: ``eval`` freezes
    BatchNorm at its running statistics (the loss is then one fixed function of θ, as the
    theory assumes); ``train`` uses batch statistics as the paper did (noise then comes from
    mini-batch gradients of size ``batch_size``).
    """

    model: str = "resnet18"
    data: str = "auto"
    image_size: int = 32
    init: str | None = None
    pretrain_steps: int = 2000
    pretrain_lr: float = 0.05
    pretrain_batch_size: int = 128
    settle_steps: int = 500
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 256
    steps: int = 5000
    record_every: int = 1
    checkpoint_every: int = 500
    batches: str = "iid"
    seed: int = 0
    k: int = 30
    k_final: int = 0
    eigen_method: str = "lanczos"
    eigen_budget: int = 90
    eigen_tol: float = 1e-3
    hessian_subset: int = 40000
    hessian_batch: int = 256
    bn_mode: str = "eval"
    hessian_dtype: str = "float32"
    noise_subset: int = 512
    trace_probes: int = 8
    device: str = "auto"

    def __post_init__(self):
        positive = ("image_size", "pretrain_batch_size", "k", "eigen_budget", "hessian_subset",
                    "hessian_batch", "noise_subset")
        for key in positive:
            if getattr(self, key) < 1:
                raise UserError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        for key in ("pretrain_steps", "settle_steps", "trace_probes", "k_final"):
            if getattr(self, key) < 0:
                raise UserError(f"{key} must be >= 0, got {getattr(self, key)!r}")
        choices = {"eigen_method": METHODS, "bn_mode": hs.BN_MODES, "hessian_dtype": tuple(DTYPES),
                   "device": ("auto", "cpu", "cuda")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"{key} must be one of {', '.join(allowed)}, "
                                f"got {getattr(self, key)!r}")
        if self.pretrain_lr <= 0 or self.eigen_tol <= 0:
            raise UserError("pretrain_lr and eigen_tol must be > 0")
        self.settings  # validates the SGD settings  # noqa: B018

    @property
    def settings(self):
        """The :class:`RecordSettings` of the recording."""
        return RecordSettings(self.lr, self.momentum, self.weight_decay, self.batch_size,
                              self.steps, self.record_every, self.checkpoint_every, self.batches,
                              self.seed, train_mode=self.bn_mode == "train")

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown net configuration key {unknown[0]!r}")
        return cls(**values)


def demo_config(**overrides):
    """The built-in small CPU configuration (a few minutes on 2 cores)."""
    base = NetConfig(image_size=16, pretrain_steps=200, pretrain_lr=0.05, pretrain_batch_size=32,
                     settle_steps=300,
                     lr=0.01, momentum=0.9, weight_decay=1e-4, batch_size=16, steps=1000,
                     record_every=1, checkpoint_every=250, k=5, eigen_budget=30, eigen_tol=1e-3,
                     hessian_subset=256, hessian_batch=64, noise_subset=128, trace_probes=4,
                     device="cpu")
    return replace(base, **overrides)


def resolve_device(name):
    """"auto" → CUDA when available, else CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device = cuda but no CUDA device is available")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def build_network(name, num_classes):
    """A torchvision classification model with random weights (never downloads)."""
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise UserError(f"model must be a torchvision classification model (e.g. resnet18), got {name!r}")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def cross_entropy(output, target):
    """Mean cross-entropy of a batch (the loss, without weight decay)."""
    return torch.nn.functional.cross_entropy(output, target)


def open_config(run_dir, config=None):
    """The run's configuration: the stored one, checked against ``config`` when both exist
    (only :data:`MUTABLE` keys may differ; those take ``config``'s values); stores it."""
    path = Path(run_dir) / "config.json"
    if path.exists():
        stored = NetConfig.from_dict(json.loads(path.read_text()))
        if config is None:
            return stored
        for key, val in asdict(config).items():
            if key not in MUTABLE and getattr(stored, key) != val:
                raise UserError(f"{run_dir} was set up with {key} = {getattr(stored, key)!r}, not "
                                f"{val!r}; use a new run directory")
    elif config is None:
        raise UserError(f"{run_dir} holds no network run (config.json missing)")
    else:  # a new run: names that only torchvision or the file system can check, before any file
        from .data import SOURCES

        if config.data not in SOURCES and not Path(config.data).is_dir():
            raise UserError(f"data must be one of {', '.join(SOURCES)} or an existing directory, "
                            f"got {config.data!r}")
        build_network(config.model, 10)
    atomic_write_json(path, asdict(config))
    return config


def _context(config):
    """(data, model, device) for a configuration."""
    data = load_images(config.data, config.image_size, config.seed)
    model = build_network(config.model, data.num_classes)
    return data, model, resolve_device(config.device)


def prepare_reference(run_dir, config, log=print):
    """Train (or load ``init``) the network recording starts from; writes ``reference.pt``.

    Returns (data, model on device, device); re-uses an existing ``reference.pt``.
    """
    run_dir = Path(run_dir)
    data, model, device = _context(config)
    ref = run_dir / "reference.pt"
    if ref.exists():
        model.load_state_dict(torch.load(ref, map_location="cpu", weights_only=False)["model"])
        return data, model.to(device), device
    info = {"source": "init", "path": config.init}
    if config.init:
        try:
            state = torch.load(config.init, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError) as exc:
            raise UserError(f"init: cannot read {config.init} ({exc})".replace("\n", " ")) from None
        model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    model.to(device)
    if config.pretrain_steps and not config.init:
        log(f"pretraining {config.model} on {data.name} for {config.pretrain_steps} steps")
        t0 = time.perf_counter()
        loss = train(model, cross_entropy, data.train, config.pretrain_steps, config.pretrain_lr,
                     0.9, config.weight_decay, config.pretrain_batch_size, config.seed, device)
        info = {"source": "pretrain", "final_loss": loss, "seconds": time.perf_counter() - t0}
    if config.bn_mode == "eval":
        recalibrate_batchnorm(model, data.train, config.hessian_subset, config.hessian_batch,
                              config.seed, device)
    if config.settle_steps:
        log(f"settling for {config.settle_steps} steps of the recorded SGD (BatchNorm "
            f"{config.bn_mode})")
        info["settle_loss"] = train(model, cross_entropy, data.train, config.settle_steps,
                                    config.lr, config.momentum, config.weight_decay,
                                    config.batch_size, config.seed + 1, device, batches="iid",
                                    train_mode=config.bn_mode == "train")
    with atomic_replace(ref) as tmp:
        torch.save({"model": model.state_dict(), "info": info}, tmp)
    return data, model, device


def recalibrate_batchnorm(model, dataset, n, batch_size, seed, device):
    """Set BatchNorm running statistics to exact averages over ``n`` training examples
    (train-mode forward passes, no gradient), so the frozen (eval-mode) network matches
    what it was trained as. Other state is untouched."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the passes
    model.train()
    with torch.no_grad():
        for x, _ in fixed_batches(dataset, n, batch_size, seed, device):
            model(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


def compute_eigen(run_dir, config, at="reference", log=print):
    """Top-k Hessian eigenpairs (and gradient-noise projections) at θ_ref or at the final
    weights; writes ``eigen.h5`` or ``eigen_final.h5`` and returns its path."""
    run_dir = Path(run_dir)
    if at not in ("reference", "final"):
        raise UserError(f"at must be reference or final, got {at!r}")
    if at == "reference" and (run_dir / "record.h5").exists():
        raise UserError(f"{run_dir}/record.h5 holds projections on the current eigen.h5; "
                        "use --at final, or a new run directory")
    data, model, device = prepare_reference(run_dir, config, log)
    k = config.k
    if at == "final":
        ckpt = run_dir / "checkpoint.pt"
        if not ckpt.exists():
            raise UserError(f"{run_dir} has no recording yet (checkpoint.pt missing); run record first")
        model.load_state_dict(torch.load(ckpt, map_location=device, weights_only=False)["model"])
        k = config.k_final or config.k
    batches = fixed_batches(data.train, config.hessian_subset, config.hessian_batch, config.seed,
                            device)
    noise = fixed_batches(data.train, min(config.noise_subset, config.hessian_subset),
                          config.hessian_batch, config.seed, device)
    log(f"Hessian on {sum(len(y) for _, y in batches)} examples (BatchNorm in {config.bn_mode} "
        f"mode, {config.hessian_dtype}, {device}); {config.eigen_method}, budget "
        f"{config.eigen_budget} products")
    out = eigen_analysis(model, cross_entropy, batches, noise, k, method=config.eigen_method,
                         noise_group=1 if config.bn_mode == "eval" else config.batch_size,
                         budget=config.eigen_budget, tol=config.eigen_tol, seed=config.seed,
                         bn_mode=config.bn_mode, dtype=DTYPES[config.hessian_dtype],
                         device=device, trace_probes=config.trace_probes)
    log(out["message"])
    out["at"] = at
    path = run_dir / ("eigen.h5" if at == "reference" else "eigen_final.h5")
    save_eigen(path, out)
    return path


def eigen_analysis(model, loss_fn, batches, noise_batches, k, *, method="lanczos", budget=60,
                   tol=1e-3, seed=0, bn_mode="eval", dtype=None, device=None, trace_probes=0,
                   noise_group=1):
    """Top-k eigenpairs of the Hessian of the mean loss on ``batches`` at the model's weights,
    with the gradient projections the comparison needs. Returns a dict of arrays (k,) and
    (M, k) (``noise_samples``, from :func:`~fpsolver.net.hessian.gradient_noise` with
    ``noise_group``), ``vectors`` (k, n) and scalars (see :func:`save_eigen`)."""
    if method not in METHODS:
        raise UserError(f"eigen_method must be one of {', '.join(METHODS)}, got {method!r}")
    op = hs.HessianOperator(model, loss_fn, batches, bn_mode=bn_mode, dtype=dtype, device=device)
    solver = hs.lanczos if method == "lanczos" else hs.subspace_iteration
    result = solver(op.matvec, op.n, k, budget, tol=tol, seed=seed, dtype=op.dtype,
                    device=op.device)
    n_eigen = op.n_products
    loss, grad = op.gradient()
    g_proj, trace_sigma = hs.gradient_noise(op, noise_batches, result.vectors, noise_group, seed)
    trace_h = hs.trace_estimate(op, trace_probes, seed) if trace_probes else (np.nan, np.nan)
    theta = hs.flat(hs.trainable(op.model)).detach()
    vec = result.vectors
    return {"method": result.method, "n_products": n_eigen, "converged": result.converged,
            "tol": result.tol, "wall_time_s": result.wall_time_s, "message": result.message,
            "seconds_per_product": result.wall_time_s / max(n_eigen, 1), "bn_mode": bn_mode,
            "dtype": str(op.dtype).replace("torch.", ""), "device": str(op.device),
            "n_params": op.n, "n_samples": op.n_samples, "loss": loss,
            "trace_sigma": trace_sigma, "trace_h": trace_h[0], "trace_h_stderr": trace_h[1],
            "trace_probes": trace_probes, "eigenvalues": result.eigenvalues,
            "residuals": result.residuals, "history": np.asarray(result.history, float),
            "vectors": vec.cpu().numpy(), "grad_proj": (vec @ grad).double().cpu().numpy(),
            "theta_proj": (vec @ theta.to(vec)).double().cpu().numpy(),
            "noise_samples": g_proj, "noise_group": noise_group}


def save_eigen(path, out):
    """Write an eigen analysis (:func:`eigen_analysis`) atomically as ``fpsolver-net-eigen`` v1:
    datasets ``eigenvalues`` (k,), ``residuals`` (k,) = ‖Hu − hu‖/|h|, ``history`` (Lanczos
    Ritz estimates or subspace residuals per iteration), ``vectors`` (k, n) orthonormal,
    ``grad_proj`` (k,) = u_iᵀ∇L, ``theta_proj`` (k,) = u_iᵀθ, ``noise_samples`` (M, k)
    whose covariance estimates u_iᵀΣu_j (per-example gradients when ``noise_group`` = 1,
    else √S × mini-batch gradients); everything else as attributes (``trace_sigma`` = tr Σ, ``trace_h`` Hutchinson)."""
    arrays = ("eigenvalues", "residuals", "history", "vectors", "grad_proj", "theta_proj",
              "noise_samples")
    with atomic_replace(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"format": EIGEN_FORMAT, "version": EIGEN_VERSION})
        f.attrs.update({key: val for key, val in out.items() if key not in arrays})
        for key in arrays:
            f.create_dataset(key, data=np.asarray(out[key]))


def record_run(run_dir, config, log=print, progress=None):
    """Record continued training from θ_ref (computing eigen.h5 first if missing); resumes."""
    run_dir = Path(run_dir)
    if not (run_dir / "eigen.h5").exists():
        compute_eigen(run_dir, config, "reference", log)
    data, model, device = prepare_reference(run_dir, config, log)
    eig = load_eigen(run_dir / "eigen.h5", vectors=True)
    directions = torch.from_numpy(eig["vectors"]).to(device=device, dtype=torch.float32)
    meta = {"model": config.model, "data": data.name, "image_size": config.image_size,
            "device": device, "torch": torch.__version__}
    log(f"recording {config.steps} steps of SGD(lr={config.lr}, momentum={config.momentum}, "
        f"weight_decay={config.weight_decay}), batch {config.batch_size} ({config.batches}) on "
        f"{len(directions)} directions")
    return record(model, cross_entropy, data.train, directions, run_dir / "record.h5",
                  run_dir / "checkpoint.pt", config.settings, eigenvalues=eig["eigenvalues"],
                  device=device, meta=meta, progress=progress)
