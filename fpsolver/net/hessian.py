"""Hessian eigen-directions of a network's loss: HVPs, Lanczos, subspace iteration.

Algorithms see only a mat-vec on flat parameter vectors (n,); the operator
:class:`HessianOperator` supplies it by double back-prop of the mean loss over a fixed data
subset. Every eigenpair comes with its residual ‖Hu − hu‖/|h| and every solver has an
explicit budget of Hessian-vector products.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from ..errors import UserError

BN_MODES = ("eval", "train")


def flat(tensors):
    """Concatenate tensors into one flat vector (n,)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vector, like):
    """Split a flat vector (n,) into views shaped like the tensors in ``like``."""
    out, start = [], 0
    for t in like:
        out.append(vector[start:start + t.numel()].view_as(t))
        start += t.numel()
    return out


def trainable(model):
    """The parameters that are trained, in ``model.parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


@contextmanager
def _preserved_buffers(model):
    """Restore every buffer (BatchNorm running statistics, counters) on exit."""
    saved = [b.detach().clone() for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(model.buffers(), saved):
                b.copy_(s)


def _is_batchnorm(module):
    return isinstance(module, torch.nn.modules.batchnorm._BatchNorm)


def set_bn_mode(model, bn_mode):
    """Model in eval mode; with ``bn_mode="train"`` the BatchNorm layers use batch statistics."""
    if bn_mode not in BN_MODES:
        raise UserError(f"bn_mode must be one of {', '.join(BN_MODES)}, got {bn_mode!r}")
    model.eval()
    if bn_mode == "train":
        for module in model.modules():
            if _is_batchnorm(module):
                module.train()


class HessianOperator:
    """v ↦ Hv for the mean loss over a fixed data subset (flat vectors (n,)).

    ``batches``: a re-iterable of (x, y) tensor pairs (the fixed subset; the mean is
    weighted by batch size, so unequal last batches are fine). ``loss_fn(output, y)`` must
    return the batch *mean*. ``bn_mode="eval"`` (default) uses BatchNorm running
    statistics, ``"train"`` batch statistics (as the paper's code did; running statistics
    are restored after every product). ``dtype``: computes in a copy of the model cast to
    this dtype (e.g. ``torch.float64``). Counts products in ``n_products``.
    """

    def __init__(self, model, loss_fn, batches, *, bn_mode="eval", dtype=None, device=None):
        set_bn_mode(model, bn_mode)  # validates bn_mode before any copy
        device = torch.device(device) if device is not None else next(model.parameters()).device
        dtype = dtype or next(model.parameters()).dtype
        self.model = copy.deepcopy(model).to(device=device, dtype=dtype)
        set_bn_mode(self.model, bn_mode)
        self.loss_fn, self.batches, self.bn_mode = loss_fn, batches, bn_mode
        self.device, self.dtype = device, dtype
        self.params = trainable(self.model)
        self.n = sum(p.numel() for p in self.params)
        self.n_samples = sum(len(y) for _, y in batches)
        if self.n_samples == 0:
            raise UserError("the Hessian subset is empty (hessian_subset must be >= 1)")
        self.n_products = 0

    def cast(self, x, y):
        """A batch on the operator's device and dtype (integer labels stay integer)."""
        x = x.to(self.device)
        x = x.to(self.dtype) if x.is_floating_point() else x
        y = y.to(self.device)
        return x, (y.to(self.dtype) if y.is_floating_point() else y)

    def matvec(self, vector):
        """Hv (n,) by double back-prop, summed over batches with weights n_b/N."""
        v = unflat(vector.to(device=self.device, dtype=self.dtype), self.params)
        acc = torch.zeros(self.n, device=self.device, dtype=self.dtype)
        with _preserved_buffers(self.model):
            for x, y in self.batches:
                x, y = self.cast(x, y)
                loss = self.loss_fn(self.model(x), y)
                grads = torch.autograd.grad(loss, self.params, create_graph=True)
                dot = sum((g * vi).sum() for g, vi in zip(grads, v))
                hv = torch.autograd.grad(dot, self.params)
                acc.add_(flat(hv), alpha=len(y) / self.n_samples)
        self.n_products += 1
        return acc

    def gradient(self):
        """(mean loss, ∇L (n,)) over the subset."""
        acc = torch.zeros(self.n, device=self.device, dtype=self.dtype)
        total = 0.0
        with _preserved_buffers(self.model):
            for x, y in self.batches:
                x, y = self.cast(x, y)
                loss = self.loss_fn(self.model(x), y)
                acc.add_(flat(torch.autograd.grad(loss, self.params)), alpha=len(y) / self.n_samples)
                total += float(loss.detach()) * len(y) / self.n_samples
        return total, acc


def gradient_noise(op, batches, vectors, group=1, seed=0):
    """Gradient-noise samples of ``op``'s model projected on ``vectors`` (k, n).

    ``group = 1``: one row per example, G_ni = u_iᵀ∇ℓ_n, BatchNorm in eval mode (one example
    per pass). ``group = S > 1``: rows √S·u_iᵀĝ_B for max(8, ⌈N/S⌉) batches of S examples
    drawn with replacement from ``batches``, in the operator's BatchNorm mode (``train``
    uses batch statistics, as SGD does; running statistics are restored), since
    Cov ĝ_B = Σ/S. Either way the rows' covariance estimates Σ projected (Σ the per-example
    gradient covariance, THEORY.md §1). Returns (rows (M, k), tr Σ estimate).
    """
    vectors = vectors.to(device=op.device, dtype=op.dtype)
    xs, ys = zip(*[op.cast(x, y) for x, y in batches])
    x_all, y_all = torch.cat(xs), torch.cat(ys)
    n = len(y_all)
    if group == 1:
        chunks = [[i] for i in range(n)]
    else:
        rng = np.random.default_rng([seed, 2])
        chunks = [rng.integers(0, n, group) for _ in range(max(8, -(-n // group)))]
    rows, sq = [], 0.0
    total = torch.zeros(op.n, device=op.device, dtype=torch.float64)
    set_bn_mode(op.model, "eval" if group == 1 else op.bn_mode)
    try:
        with _preserved_buffers(op.model):
            for idx in chunks:
                idx = torch.as_tensor(idx, device=op.device)
                loss = op.loss_fn(op.model(x_all[idx]), y_all[idx])
                g = flat(torch.autograd.grad(loss, op.params)) * np.sqrt(group)
                rows.append((vectors @ g).double().cpu().numpy())
                g = g.double()
                total += g
                sq += float(g @ g)
    finally:
        set_bn_mode(op.model, op.bn_mode)
    mean = total / len(chunks)
    return np.array(rows), sq / len(chunks) - float(mean @ mean)


def trace_estimate(op, probes, seed=0):
    """Hutchinson estimate of tr H with ``probes`` Rademacher vectors: (mean, standard error)."""
    gen = torch.Generator().manual_seed(int(seed))
    values = []
    for _ in range(probes):
        z = (torch.randint(0, 2, (op.n,), generator=gen) * 2 - 1).to(op.device, op.dtype)
        values.append(float(z @ op.matvec(z)))
    values = np.array(values)
    err = values.std(ddof=1) / np.sqrt(probes) if probes > 1 else float("nan")
    return float(values.mean()), float(err)


@dataclass
class EigenResult:
    """Top-k eigenpairs, largest first.

    ``eigenvalues`` (k,), ``vectors`` (k, n) torch tensor (orthonormal rows), ``residuals``
    (k,) = ‖Hu − hu‖/|h|, ``n_products`` HVPs used, ``converged`` (all residuals ≤ tol).
    """

    eigenvalues: np.ndarray
    vectors: torch.Tensor
    residuals: np.ndarray
    n_products: int
    method: str
    converged: bool
    tol: float
    wall_time_s: float
    history: list = field(default_factory=list)

    @property
    def message(self):
        state = "converged" if self.converged else "budget exhausted before convergence"
        return (f"{self.method}: {state} after {self.n_products} Hessian-vector products, "
                f"max residual {self.residuals.max():.3g} (tol {self.tol:.3g})")


def _start_vectors(n, cols, seed, dtype, device):
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(cols, n, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def _check_budget(k, budget, n, need):
    if k < 1 or k > n:
        raise UserError(f"k must be between 1 and the number of parameters {n}, got {k}")
    if budget < need:
        raise UserError(f"eigen budget must be at least {need} Hessian-vector products for k = {k}, "
                        f"got {budget}")


def _ritz(q, hq, k):
    """Rayleigh-Ritz on the rows of q (m, n) with hq = Hq: top-k (values, U, residuals)."""
    t = (q @ hq.T).double().cpu().numpy()
    t = (t + t.T) / 2
    vals, s = np.linalg.eigh(t)
    order = np.argsort(vals)[::-1][:k]
    vals, s = vals[order], torch.from_numpy(s[:, order].copy()).to(q)
    u = s.T @ q
    hu = s.T @ hq
    lam = torch.from_numpy(vals.copy()).to(q)
    res = torch.linalg.vector_norm(hu - lam[:, None] * u, dim=1).double().cpu().numpy()
    return vals, u, res / np.maximum(np.abs(vals), np.finfo(float).tiny)


def lanczos(matvec, n, k, budget, *, tol=1e-6, seed=0, dtype=torch.float64, device="cpu"):
    """Top-k (largest algebraic) eigenpairs by Lanczos with full re-orthogonalisation.

    Stops when the Ritz estimates |β_j s_ji|/|h_i| of the top k fall below ``tol`` or after
    ``budget`` products. Stores the Krylov basis Q and HQ (memory 2·budget·n numbers), so the
    final residuals ‖Hu − hu‖/|h| are explicit and cost no extra product.
    """
    _check_budget(k, budget, n, k)
    start = time.perf_counter()
    m = min(budget, n)
    q = torch.zeros(m, n, dtype=dtype, device=device)
    hq = torch.zeros(m, n, dtype=dtype, device=device)
    v = _start_vectors(n, 1, seed, dtype, device)[0]
    q[0] = v / torch.linalg.vector_norm(v)
    alphas, betas, history = [], [], []
    used = 0
    for j in range(m):
        w = matvec(q[j])
        used += 1
        hq[j] = w
        alphas.append(float(q[j] @ w))
        for _ in range(2):  # "twice is enough" (Kahan-Parlett)
            w = w - q[:j + 1].T @ (q[:j + 1] @ w)
        beta = float(torch.linalg.vector_norm(w))
        if j + 1 >= k:
            vals, s = eigh_tridiagonal(np.array(alphas), np.array(betas))
            top = np.argsort(vals)[::-1][:k]
            est = np.abs(beta * s[-1, top]) / np.maximum(np.abs(vals[top]), np.finfo(float).tiny)
            history.append(float(est.max()))
            if est.max() <= tol:
                break
        if j + 1 == m or beta <= 1e-14 * max(abs(a) for a in alphas):
            break  # budget spent, or an invariant subspace was found (exact Ritz pairs)
        betas.append(beta)
        q[j + 1] = w / beta
    vals, u, res = _ritz(q[:used], hq[:used], k)
    return EigenResult(vals, u, res, used, "lanczos", bool(res.max() <= tol), tol,
                       time.perf_counter() - start, history)


def subspace_iteration(matvec, n, k, budget, *, block=None, tol=1e-6, seed=0,
                       dtype=torch.float64, device="cpu"):
    """Top-k eigenpairs by subspace iteration V ← qr(HV) (the paper's method) with
    Rayleigh-Ritz, so values come sorted and residuals are explicit at no extra cost.

    ``block`` columns (default k + max(2, k//2)); converges to the largest |h|, at rate
    |h_{block+1}/h_i| per iteration; stops at residual ≤ ``tol`` or after ``budget`` products.
    """
    block = min(n, block or k + max(2, k // 2))
    if block < k:
        raise UserError(f"subspace block must be at least k = {k}, got {block}")
    _check_budget(k, budget, n, block)
    start = time.perf_counter()
    v = torch.linalg.qr(_start_vectors(n, block, seed, dtype, device).T)[0].T.contiguous()
    used, history = 0, []
    while True:
        hv = torch.stack([matvec(row) for row in v])
        used += block
        vals, u, res = _ritz(v, hv, block)
        history.append(float(res[:k].max()))
        if res[:k].max() <= tol or used + block > budget:
            break
        v = torch.linalg.qr(hv.T)[0].T.contiguous()
    return EigenResult(vals[:k], u[:k], res[:k], used, "subspace", bool(res[:k].max() <= tol), tol,
                       time.perf_counter() - start, history)
