"""Sparse assembly of the operator's Jacobian by probing the numba kernel.

The stencil of a cell reaches ±2 cells along every axis (MUSCL) and the four diagonals of
each cross-diffused velocity pair. Colouring cells by (i_k mod 5) on every axis makes every
two stencil members of a row differ in colour, so one Jacobian-vector product per colour
yields every entry: 25 products in 2-D, 625 in 4-D (small grids only). The matrix is
therefore exactly the kernel's Jacobian (or the first-order operator W's matrix).
"""

import itertools

import numpy as np
import scipy.sparse as sp


def _offsets(op):
    """Stencil offsets (tuples of per-axis shifts) of one row."""
    n = len(op.shape)
    offs = {(0,) * n}
    for k in range(n):
        for s in range(-2, 3):
            offs.add(tuple(s if a == k else 0 for a in range(n)))
    for a, b in zip(*np.nonzero(op.cross)):
        for sa, sb in itertools.product((-1, 1), repeat=2):
            offs.add(tuple(sa if x == a else sb if x == b else 0 for x in range(n)))
    return sorted(offs)


def jacobian_matrix(op, p, first_order=False):
    """CSR matrix of ``op.jacobian_apply(p, ·)`` (N × N; rate(p) = matrix @ p), or with
    ``first_order`` that of ``op.first_order_apply`` (p unused)."""
    periods = np.full(len(op.shape), 5)
    idx = np.indices(op.shape).reshape(len(op.shape), -1)
    mult = np.concatenate([np.cumprod(periods[::-1])[::-1][1:], [1]])
    color = ((idx % periods[:, None]) * mult[:, None]).sum(axis=0)
    n_colors = int(np.prod(periods))
    probes = np.empty((n_colors, op.size))
    for q in range(n_colors):
        probe = (color == q).astype(float)
        probes[q] = op.first_order_apply(probe) if first_order else op.jacobian_apply(p, probe)
    rows, cols, vals = [], [], []
    shape = np.array(op.shape)[:, None]
    for off in _offsets(op):
        j = idx + np.array(off)[:, None]
        ok = np.all((j >= 0) & (j < shape), axis=0)
        rr = np.nonzero(ok)[0]
        cc = np.ravel_multi_index(j[:, ok], op.shape)
        rows.append(rr)
        cols.append(cc)
        vals.append(probes[color[cc], rr])
    m = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(op.size, op.size))
    m.eliminate_zeros()
    return m


def pinned(matrix, r):
    """``matrix`` (sparse, N×N) with row r replaced by the unit row e_r, as CSC: a singular
    operator whose columns sum to zero, with the one equation its others imply dropped."""
    keep = np.ones(matrix.shape[0])
    keep[r] = 0.0
    unit = sp.csr_matrix(([1.0], ([r], [r])), shape=matrix.shape)
    return (sp.diags(keep) @ matrix.tocsr() + unit).tocsc()


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
