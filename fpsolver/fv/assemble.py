"""Sparse assembly of the operator's Jacobian by probing the numba kernel.

The stencil of a cell reaches ±2 cells along every axis (MUSCL) and the four diagonals of
each cross-diffused velocity pair. A colouring of the cells under which every two stencil
members of a row differ in colour yields every entry with one Jacobian-vector product per
colour (:func:`_colouring`: 10 products in 2-D, 17 in 4-D, 23 with cross-diffusion; the
colouring by (i_k mod 5) on every axis took 25 and 625). The matrix is therefore exactly
the kernel's Jacobian (or the first-order operator W's matrix).
"""

import functools
import itertools

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from . import kernels
from .band import band_lu
from .policy import threads_for


def _offsets(ndim, cross_pairs):
    """Stencil offsets (tuples of per-axis shifts) of one row; ``cross_pairs``: the axis
    pairs (a, b) with cross-diffusion."""
    offs = {(0,) * ndim}
    for k in range(ndim):
        for s in range(-2, 3):
            offs.add(tuple(s if a == k else 0 for a in range(ndim)))
    for a, b in cross_pairs:
        for sa, sb in itertools.product((-1, 1), repeat=2):
            offs.add(tuple(sa if x == a else sb if x == b else 0 for x in range(ndim)))
    return sorted(offs)


@functools.lru_cache(maxsize=8)
def _colouring(offsets):
    """(m, k) of the linear colouring c(i) = k·i mod m (k₀ = 1, k (ndim,)) with the fewest
    colours m under which the stencil ``offsets`` (tuples of per-axis shifts) of every row
    differ in colour: a row's members i + o get k·i + k·o, distinct mod m when the k·o are.
    The search ends by m = 5^ndim, where k = (1, 5, 25, …) is the colouring by
    (i_k mod 5) (stencils within ±2)."""
    offs = np.array(offsets)
    ndim = offs.shape[1]
    for m in itertools.count(len(offs)):
        for rest in itertools.product(range(m), repeat=ndim - 1):
            k = np.array((1, *rest))
            if np.unique(offs @ k % m).size == len(offs):
                return m, k


@functools.lru_cache(maxsize=8)
def _pattern(shape, cross_pairs):
    """The Jacobian's CSC pattern on a grid of ``shape``: (colour of each cell (N,),
    :func:`_colouring`), row indices, column pointers, and for every stored entry its flat
    index into the probes (colours × N): the entry (i, j) is probe colour(j) at row i).
    Read-only: the operator's grid and stencil fix it, so repeated assemblies (Newton
    steps, implicit steppers) reuse it (assembly and :func:`pinned`, the same matrices as
    before: 40² 1.9 → 0.9 ms, 128² 10.7 → 4.1 ms)."""
    ndim, size = len(shape), int(np.prod(shape))
    idx = np.indices(shape).reshape(ndim, -1)
    offsets = _offsets(ndim, cross_pairs)
    m, k = _colouring(tuple(offsets))
    color = k @ idx % m
    rows, cols = [], []
    for off in offsets:
        j = idx + np.array(off)[:, None]
        ok = np.all((j >= 0) & (j < np.array(shape)[:, None]), axis=0)
        rows.append(np.nonzero(ok)[0])
        cols.append(np.ravel_multi_index(j[:, ok], shape))
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    order = np.lexsort((rows, cols))
    rows, cols = rows[order], cols[order]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=size))])
    source = color[cols] * size + rows
    for a in (color, rows, indptr, source):
        a.setflags(write=False)
    return color, rows, indptr, source


def _cross_pairs(op):
    """The axis pairs (a, b) of ``op`` with cross-diffusion (the pattern's key)."""
    return tuple((int(a), int(b)) for a, b in zip(*np.nonzero(op.cross)))


def _probes(op, p, first_order):
    """The colour probes of the Jacobian at p (or of W): (colours, N), probe q at row i the
    entry (i, j) of the cell j of colour q in reach of i; with the pattern (:func:`_pattern`)."""
    pattern = _pattern(tuple(op.shape), _cross_pairs(op))
    probes = np.empty((int(pattern[0].max()) + 1, op.size))
    with threads_for(probes.size):
        kernels.colour_probe_kernel(np.empty(0) if first_order else op.flat(p), pattern[0],
                                    kernels.FIRST_ORDER if first_order else kernels.JACOBIAN,
                                    *op.kernel_args(first_order), probes)
    return probes, pattern


def jacobian_matrix(op, p, first_order=False):
    """CSC matrix of ``op.jacobian_apply(p, ·)`` (N × N; rate(p) = matrix @ p), or with
    ``first_order`` that of ``op.first_order_apply`` (p unused); entries that are exactly
    0 (saturated slopes; the first-order operator's ±2 neighbours) are not stored."""
    probes, (_, rows, indptr, source) = _probes(op, p, first_order)
    m = sp.csc_matrix((probes.ravel()[source], rows.copy(), indptr.copy()),
                      shape=(op.size, op.size))
    m.eliminate_zeros()
    return m


def pinned(matrix, r):
    """``matrix`` (sparse, N×N) with row r replaced by the unit row e_r, as CSC: a singular
    operator whose columns sum to zero, with the one equation its others imply dropped."""
    m = sp.csc_matrix(matrix, copy=True)
    m.sort_indices()
    m.data[m.indices == r] = 0.0
    lo, hi = m.indptr[r], m.indptr[r + 1]
    at = lo + np.searchsorted(m.indices[lo:hi], r)
    if at < hi and m.indices[at] == r:  # the diagonal is stored: set it in place
        m.data[at] = 1.0
    else:
        m = (m + sp.csc_matrix(([1.0], ([r], [r])), shape=m.shape)).tocsc()
    m.eliminate_zeros()
    return m


def marginal_matrix(apply, basis, position_shape):
    """CSR matrix (M × M, M = Π position_shape) of R·J·P: J the linear map ``apply`` (flat
    N → flat N), P the basis with one column per position cell (``basis`` (M, N/M): the
    column of cell j is basis[j] on that cell's velocity block, zero elsewhere), R the sum
    over each position cell's velocity block. A position cell's rate depends on position
    cells within ±2 along each position axis, so colouring position cells by (j_k mod 5)
    yields every entry in 5^d products (d = len(position_shape))."""
    d = len(position_shape)
    m = basis.shape[0]
    idx = np.indices(position_shape).reshape(d, -1)
    color = np.ravel_multi_index(idx % 5, (5,) * d)
    rows, cols, vals = [], [], []
    for q, residue in enumerate(np.ndindex((5,) * d)):
        summed = apply((basis * (color == q)[:, None]).ravel()).reshape(m, -1).sum(axis=1)
        # the member j of colour q in reach of cell i: j_k ≡ residue_k (mod 5), |i_k − j_k| ≤ 2
        j = idx + (np.array(residue)[:, None] - idx + 2) % 5 - 2
        ok = np.all((j >= 0) & (j < np.array(position_shape)[:, None]), axis=0)
        rows.append(np.nonzero(ok)[0])
        cols.append(np.ravel_multi_index(j[:, ok], position_shape))
        vals.append(summed[ok])
    out = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(m, m))
    out.eliminate_zeros()
    return out


# The band LU (:func:`~fpsolver.fv.band.band_lu`) for :func:`pinned_jacobian_lu` where
# LAPACK's pivoted work N·kl·(kl + ku) is at most this. Measured with LAPACK's gbtrf (the
# LU without pivoting is faster): one BLAS thread, pinned stationary Jacobian (kl = ku =
# 2n), factorisation with assembly and one solve, banded vs SuperLU: 32² 1.6 + 0.1 vs
# 4.6 + 0.09 ms, 48² (4.2e7) 6.2 + 0.5 vs 11.6 + 0.25, 64² (1.3e8) 18 + 1.8 vs 22 + 0.5,
# 96² 78 vs 70: the banded solves cost more, so callers that solve many times per
# factorisation (implicit steps, the 4-D coarse correction) keep SuperLU
BAND_MAX_WORK = 5e7


def sparse_lu(matrix):
    """SuperLU factorisation (``solve(b)``) of a sparse N×N operator matrix, with
    minimum-degree order on A + Aᵀ and diagonal pivots unless one is below 0.1 of its
    column's largest entry (SuperLU's SymmetricMode; the stencil's pattern is symmetric).
    The pinned stationary Jacobian, against COLAMD with partial pivoting (two timings each):
    40² 8.8 → 4.5 ms, 128² 150-206 → 87-128 ms, 256² 1.19-1.21 → 0.71-0.91 s, 20-35 % less
    fill, the same residual (1e-12-1e-10)."""
    return spla.splu(sp.csc_matrix(matrix), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.1,
                     options={"SymmetricMode": True})


@functools.lru_cache(maxsize=8)
def _band_layout(shape, cross_pairs, lumped):
    """Where the Jacobian's entries (:func:`_pattern`) go in LAPACK's band storage with kl
    rows for the fill (column-major, A[i, j] at flat i − j + kl + ku + (2kl + ku + 1)·j):
    (kl, ku, order, position, slots, sources, added_slots, added_sources). Entries land at
    ``slots`` from the probes' flat ``sources``, then ``added_*`` are added on top.
    ``order`` (N,): the cell of each band row (None: cell order), ``position`` its inverse.

    ``lumped`` (2-D): cells numbered along θ first, so the v±1 couplings sit n_θ off the
    diagonal, and each v±2 coupling (the fourth-order v flux) lumped onto the v±1 entry of
    its column, one cell nearer: columns still sum to 0, and the band is n_θ wide instead of
    2n_v (a quarter of the factorisation work, half the solve's). Default case, against the
    exact Jacobian: I − A⁻¹J has spectral radius 0.13-0.15 (24², 32²; lumped along the rows
    0.40-0.53, dropping the couplings 1.5-2.4). Read-only."""
    _, rows, indptr, sources = _pattern(shape, cross_pairs)
    cols = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    order = position = None
    added = np.zeros(rows.size, dtype=bool)
    if lumped:
        n_theta, n_v = shape
        cell = np.arange(n_theta * n_v)
        position = cell % n_v * n_theta + cell // n_v
        order = np.argsort(position)
        rows, cols = position[rows], position[cols]
        added = np.abs(rows - cols) > n_theta  # the v±2 couplings ...
        rows = np.where(added, cols + np.sign(rows - cols) * n_theta, rows)  # ... onto v±1
    kl, ku = int(np.max(rows - cols)), int(np.max(cols - rows))
    slots = rows - cols + kl + ku + (2 * kl + ku + 1) * cols
    out = (order, position, slots[~added], sources[~added], slots[added], sources[added])
    for a in out:
        if a is not None:
            a.setflags(write=False)
    return (kl, ku, *out)


def lumps(op):
    """Whether :func:`pinned_jacobian_lu` with ``lumped`` factorises the lumped Jacobian:
    2-D grids whose lumped band (kl = ku = n_θ, :func:`_band_layout`) is within
    BAND_MAX_WORK."""
    if op.grid.ndim != 2:
        return False
    n_theta = op.shape[0]
    return op.size * n_theta * 2 * n_theta <= BAND_MAX_WORK


def pinned_jacobian_lu(op, p, r, lumped=False):
    """LU (``solve(b)``) of the Jacobian at p (:func:`jacobian_matrix`) with row r replaced
    by the unit row e_r (:func:`pinned`): a band LU (:func:`~fpsolver.fv.band.band_lu`),
    assembled straight into band storage, where N·kl·(kl + ku) ≤ BAND_MAX_WORK, else SuperLU
    (:func:`sparse_lu`). ``lumped``: where :func:`lumps`, the band LU of the approximate
    Jacobian with the v±2 couplings lumped (:func:`_band_layout`) for chord steps, banded
    up to 70² (exact: 48²)."""
    lumped = lumped and lumps(op)
    kl, ku, order, position, slots, sources, added_slots, added_sources = _band_layout(
        tuple(op.shape), _cross_pairs(op), lumped)
    n = op.size
    if n * kl * (kl + ku) > BAND_MAX_WORK:
        return sparse_lu(pinned(jacobian_matrix(op, p), r))
    probes = _probes(op, p, False)[0].ravel()
    r = r if position is None else position[r]
    cols = np.arange(max(0, r - kl), min(n, r + ku + 1))

    def assemble():
        band = np.zeros((n, 2 * kl + ku + 1))  # its transpose: band storage, column-major
        flat = band.ravel()
        flat[slots] = probes[sources]
        flat[added_slots] += probes[added_sources]  # each on a distinct slot
        band[cols, r - cols + kl + ku] = 0.0  # row r ...
        band[r, kl + ku] = 1.0  # ... becomes e_r
        return band.T

    return band_lu(assemble, kl, ku, order)
