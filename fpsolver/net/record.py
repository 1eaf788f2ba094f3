"""Record continued SGD training of a network, projected on fixed directions (HDF5).

The optimiser is exactly ``torch.optim.SGD(lr=η, momentum=β, weight_decay=λ)`` (THEORY.md
§2): buf_{k+1} = β buf_k + ĝ_B(θ_k) + λθ_k, θ_{k+1} = θ_k − η buf_{k+1}, buf_0 = 0. After
every ``record_every``-th update k the recorder stores (θ_k, buf_k); the velocity is
v_{k−1} = −buf_k, so each record is the "recorded" pair of the theory.

File format ``fpsolver-net-record`` version 1 (one HDF5 file; n records, k directions):

=============  ========  ==========================================================
dataset        shape     meaning
=============  ========  ==========================================================
step           (n,)      update count k since θ_ref (int64, increasing)
theta_proj     (n, k)    e_jᵀ(θ_k − θ_ref)
buf_proj       (n, k)    e_jᵀ buf_k  (velocity projection = −buf_proj)
dist2          (n,)      ‖θ_k − θ_ref‖²  (Δ(k); θ_ref = θ₀, the start of recording)
step_norm2     (n,)      η²‖buf_k‖² = ‖θ_k − θ_{k−1}‖²
theta_norm2    (n,)      ‖θ_k‖²
loss           (n,)      mini-batch loss of update k, L_B(θ_{k−1}) (no weight decay)
eigenvalues    (k,)      h_j of the directions (NaN when not eigenvectors)
=============  ========  ==========================================================

Root attributes: ``format``, ``version``, the hyperparameters ``lr``, ``momentum``,
``weight_decay``, ``batch_size``, ``batches`` ("iid": with replacement, "reshuffle":
epochs of a permutation), ``seed``, ``record_every``, ``steps`` (target), ``n_params``,
``k``, ``last_step`` (the last update whose state is checkpointed) and ``meta`` (JSON).

Resumable: every ``checkpoint_every`` updates the new records are appended to a copy of
the file that atomically replaces it, then the model, optimiser and θ_ref are saved
atomically to the checkpoint. Batches depend only on (seed, k), so a resumed run drops
records newer than its checkpoint and recomputes them: a killed and resumed run gives one
consistent file.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import UserError
from ..io import atomic_replace
from .data import get_batch
from .files import RECORD_FORMAT as FORMAT, RECORD_VERSION as VERSION, SERIES as _SERIES
from .hessian import flat, trainable

BATCHES = ("iid", "reshuffle")


@dataclass(frozen=True)
class RecordSettings:
    """Hyperparameters and schedule of a recording (units: steps)."""

    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 256
    steps: int = 1000
    record_every: int = 1
    checkpoint_every: int = 500
    batches: str = "iid"
    seed: int = 0
    train_mode: bool = True

    def __post_init__(self):
        checks = [("lr", self.lr > 0, "> 0"), ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
                  ("weight_decay", self.weight_decay >= 0, ">= 0"),
                  ("batch_size", self.batch_size >= 1, ">= 1"), ("steps", self.steps >= 1, ">= 1"),
                  ("record_every", self.record_every >= 1, ">= 1"),
                  ("checkpoint_every", self.checkpoint_every >= 1, ">= 1")]
        for key, ok, bound in checks:
            if not ok:
                raise UserError(f"{key} must be {bound}, got {getattr(self, key)!r}")
        if self.batches not in BATCHES:
            raise UserError(f"batches must be one of {', '.join(BATCHES)}, got {self.batches!r}")


def batch_indices(n_data, batch_size, step, seed, batches="iid"):
    """Example indices of the batch used by update ``step`` (1-based); depends only on
    (seed, step), so a resumed run sees the same batches."""
    if batches == "iid":
        return np.random.default_rng([seed, step, 0]).integers(0, n_data, batch_size)
    per_epoch = max(n_data // batch_size, 1)
    epoch, pos = divmod(step - 1, per_epoch)
    perm = np.random.default_rng([seed, epoch, 1]).permutation(n_data)
    return perm[pos * batch_size:(pos + 1) * batch_size]


def make_optimizer(model, lr, momentum, weight_decay):
    """PyTorch's SGD with heavy-ball momentum (dampening 0, no Nesterov)."""
    return torch.optim.SGD(trainable(model), lr=lr, momentum=momentum, weight_decay=weight_decay)


def sgd_step(model, optimizer, loss_fn, dataset, idx, device, train_mode=True):
    """One update on the examples ``idx``; returns the mini-batch loss before the update."""
    model.train(train_mode)
    x, y = get_batch(dataset, idx)
    dtype = next(model.parameters()).dtype
    x = x.to(device)
    x = x.to(dtype) if x.is_floating_point() else x
    y = y.to(device)
    y = y.to(dtype) if y.is_floating_point() else y
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def train(model, loss_fn, dataset, steps, lr, momentum=0.9, weight_decay=0.0, batch_size=32,
          seed=0, device="cpu", progress=None, batches="reshuffle", train_mode=True):
    """Unrecorded training (a fresh optimiser), e.g. to converge a network before recording;
    returns the mean mini-batch loss of the last 10 % of updates."""
    optimizer = make_optimizer(model, lr, momentum, weight_decay)
    losses = []
    for step in range(1, steps + 1):
        idx = batch_indices(len(dataset), batch_size, step, seed, batches)
        losses.append(sgd_step(model, optimizer, loss_fn, dataset, idx, device, train_mode))
        if progress:
            progress(step, steps)
        if not np.isfinite(losses[-1]):
            raise UserError(f"training diverged at step {step} (loss {losses[-1]}); lower the "
                            "pretrain learning rate")
    return float(np.mean(losses[-max(1, steps // 10):]))


def momentum_buffer(model, optimizer, out=None):
    """The flat momentum buffer buf_k (n,) (zeros before the first update), into ``out``."""
    bufs = []
    for p in trainable(model):
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        bufs.append((torch.zeros_like(p) if buf is None else buf).reshape(-1))
    with torch.no_grad():
        return torch.cat(bufs, out=out)


def _create(path, settings, directions, eigenvalues, n_params, meta):
    k = directions.shape[0]
    with atomic_replace(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"format": FORMAT, "version": VERSION, "n_params": n_params, "k": k,
                        "last_step": 0, "meta": json.dumps(meta or {})})
        f.attrs.update({key: val for key, val in asdict(settings).items()})
        f.create_dataset("step", shape=(0,), maxshape=(None,), dtype="i8", chunks=(4096,))
        for name in _SERIES:
            shape = (0, k) if name.endswith("proj") else (0,)
            chunks = (max(1, 4096 // k), k) if name.endswith("proj") else (4096,)
            f.create_dataset(name, shape=shape, maxshape=(None,) + shape[1:], dtype="f8",
                             chunks=chunks)
        eig = np.full(k, np.nan) if eigenvalues is None else np.asarray(eigenvalues, float)
        f.create_dataset("eigenvalues", data=eig)


def _rewrite(path, rows, last_step, keep_upto=None):
    """Atomically append ``rows`` (dict of lists) and set ``last_step``; ``keep_upto`` first
    drops records with step > keep_upto (resume)."""
    with atomic_replace(path) as tmp:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:
            if keep_upto is not None:
                n = int(np.searchsorted(f["step"][:], keep_upto, side="right"))
                for name in ("step",) + _SERIES:
                    f[name].resize(n, axis=0)
            n_new = len(rows["step"]) if rows else 0
            if n_new:
                n0 = f["step"].shape[0]
                for name in ("step",) + _SERIES:
                    f[name].resize(n0 + n_new, axis=0)
                    f[name][n0:] = np.asarray(rows[name])
            f.attrs["last_step"] = last_step


def _save_checkpoint(path, model, optimizer, theta_ref, step):
    with atomic_replace(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, "step": step,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "theta_ref": theta_ref.cpu()}, tmp)


def _check_same(path, settings):
    """The recording in ``path`` must have the same settings (``steps`` may grow)."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT or int(f.attrs.get("version", -1)) != VERSION:
            raise UserError(f"{path} is not an {FORMAT} v{VERSION} file")
        for key, val in asdict(settings).items():
            if key in ("steps", "checkpoint_every"):
                continue
            old = f.attrs[key]
            if (old.item() if hasattr(old, "item") else old) != val:
                raise UserError(f"{path} was recorded with {key} = {old!r}, not {val!r}; "
                                "record into a new directory")


def record(model, loss_fn, dataset, directions, path, checkpoint, settings, *, eigenvalues=None,
           device="cpu", meta=None, progress=None):
    """Continue training ``model`` with SGD and record projections on ``directions`` (k, n).

    Starts from the model's current weights (θ_ref = θ₀) with a zero buffer, or resumes
    from ``checkpoint`` when both it and ``path`` exist. Returns a dict with ``steps_run``,
    ``resumed_from``, ``wall_time_s`` and ``seconds_per_step``.
    """
    path, checkpoint = Path(path), Path(checkpoint)
    model.to(device)
    params = trainable(model)
    n_params = sum(p.numel() for p in params)
    if directions.ndim != 2 or directions.shape[1] != n_params:
        raise UserError(f"directions must have shape (k, {n_params}), got {tuple(directions.shape)}")
    dtype = params[0].dtype
    directions = directions.to(device=device, dtype=dtype)
    theta, diff, buf = (torch.empty(n_params, dtype=dtype, device=device) for _ in range(3))
    optimizer = make_optimizer(model, settings.lr, settings.momentum, settings.weight_decay)
    start = 0
    if path.exists() and checkpoint.exists():
        _check_same(path, settings)
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        theta_ref, start = state["theta_ref"].to(device), int(state["step"])
        _rewrite(path, None, start, keep_upto=start)
    else:
        theta_ref = flat(params).detach().clone()
        _create(path, settings, directions, eigenvalues, n_params, meta)
        _save_checkpoint(checkpoint, model, optimizer, theta_ref, 0)
    with h5py.File(path, "a") as f:
        f.attrs["steps"] = settings.steps
    rows = {name: [] for name in ("step",) + _SERIES}
    t0 = time.perf_counter()
    for step in range(start + 1, settings.steps + 1):
        idx = batch_indices(len(dataset), settings.batch_size, step, settings.seed, settings.batches)
        loss = sgd_step(model, optimizer, loss_fn, dataset, idx, device, settings.train_mode)
        if not np.isfinite(loss):
            raise UserError(f"SGD diverged at step {step} (loss {loss}); lower lr")
        if step % settings.record_every == 0:
            with torch.no_grad():  # preallocated flat vectors: no 3·n allocations per record
                torch.cat([p.reshape(-1) for p in params], out=theta)
                torch.sub(theta, theta_ref, out=diff)
                momentum_buffer(model, optimizer, out=buf)
                rows["step"].append(step)
                rows["theta_proj"].append((directions @ diff).double().cpu().numpy())
                rows["buf_proj"].append((directions @ buf).double().cpu().numpy())
                rows["dist2"].append(float(torch.dot(diff, diff)))
                rows["step_norm2"].append(settings.lr ** 2 * float(torch.dot(buf, buf)))
                rows["theta_norm2"].append(float(torch.dot(theta, theta)))
                rows["loss"].append(loss)
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            _rewrite(path, rows, step)
            _save_checkpoint(checkpoint, model, optimizer, theta_ref, step)
            rows = {name: [] for name in rows}
        if progress:
            progress(step, settings.steps)
    wall = time.perf_counter() - t0
    ran = settings.steps - start
    return {"steps_run": ran, "resumed_from": start, "wall_time_s": wall,
            "seconds_per_step": wall / ran if ran else float("nan")}
