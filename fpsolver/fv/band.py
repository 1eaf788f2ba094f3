"""Band LU factorisations for the 2-D stationary solve (:func:`~fpsolver.fv.pinned_jacobian_lu`).

Both take the matrix in LAPACK's band storage, ``band`` ((2kl + ku + 1, N), Fortran order,
overwritten): A[i, j] at band[kl + ku + i − j, j], the first kl rows left for the fill of
row interchanges; ``order`` (N,): the unknown of each band row and column (None: the
identity); ``solve(b)`` (b (N,), not changed) returns x with A x = b.

:class:`NoPivotBandLu` eliminates without row interchanges in numba (column by column, each
update a contiguous axpy that vectorises) and checks itself with one solve of a known
answer; :func:`band_lu` falls back to LAPACK's pivoted gbtrf (:class:`LapackBandLu`) where
that check misses. Without pivoting the factors keep the band (no fill rows: N·kl·ku
multiply-adds instead of gbtrf's N·kl·(kl + ku)), and the solves are axpys over contiguous
columns instead of gbtrs's one BLAS call per column. The pinned stationary Jacobians are
what partial pivoting handles without need: gbtrf swaps rows at nearly every column
(advection makes the downwind entry of a column as large as its diagonal), yet without
swaps the entries of U stayed within 1.16 times the largest entry of A at the Gaussian
start on the default, high-momentum and overdamped cases at 16²-64² (2.2 at 70²; at the
converged densities up to 68, high momentum at 64²), and solutions matched gbtrf's to
6e-14 relative (16²-64²).
"""

import functools

import numpy as np
import scipy.linalg as sla

from .policy import single_threaded_blas, subroutine

# a factorisation without pivoting is kept when it solves A x = A x₀ for the test vector
# x₀ (:func:`_test_vector`) to this relative max-norm error. Measured: 2e-15-7.5e-12 on the
# default, high-momentum and overdamped cases at 16²-70² (60 factorisations, none missed);
# random rough densities on a 12×10 grid 2e-13-1.6e-10 (gbtrf's own 2e-13-1.3e-11), the
# last one missed and went to gbtrf
VERIFY_TOL = 1e-10


@subroutine
def _band_matvec(ab, kl, ku, x, out):
    """out = A x for A in band storage ``ab`` ((N, ldab): LAPACK's array transposed, so
    column j of A is the contiguous row ab[j])."""
    n, ldab = ab.shape
    f = ab.ravel()
    for i in range(n):
        out[i] = 0.0
    for j in range(n):
        xj = x[j]
        base = np.uint64(j * ldab + kl + ku - j)  # f[base + i] = A[i, j]
        for i in range(np.uint64(max(0, j - ku)), np.uint64(min(n, j + kl + 1))):
            out[i] += f[base + i] * xj


@subroutine
def _factor(ab, kl, ku, inv_pivot):
    """A = LU in place without row interchanges (ab as in :func:`_band_matvec`): the
    multipliers of L below the diagonal, U on and above it; inv_pivot (N,) = 1/U_kk.
    Returns −1, or the first column whose pivot is zero or not finite (ab then partly
    eliminated)."""
    n, ldab = ab.shape
    f = ab.ravel()
    diag = kl + ku
    for k in range(n):
        kb = k * ldab + diag  # f[kb + s] = A[k + s, k]
        pivot = f[kb]
        if not 0.0 < abs(pivot) < np.inf:
            return k
        inv = 1.0 / pivot
        inv_pivot[k] = inv
        below = np.uint64(min(kl, n - 1 - k))
        column = np.uint64(kb)
        for s in range(np.uint64(1), below + np.uint64(1)):
            f[column + s] *= inv
        for t in range(1, min(ku, n - 1 - k) + 1):
            target = np.uint64((k + t) * ldab + diag - t)  # f[target + s] = A[k + s, k + t]
            u = f[target]
            if u != 0.0:
                for s in range(np.uint64(1), below + np.uint64(1)):
                    f[target + s] -= f[column + s] * u
    return -1


@subroutine
def _solve(ab, kl, ku, inv_pivot, order, b, x):
    """x = (LU)⁻¹ b from :func:`_factor`'s factors, the unknowns in band order ``order``
    (N,): x[order[i]] is band unknown i, b[order[i]] band equation i."""
    n, ldab = ab.shape
    f = ab.ravel()
    diag = kl + ku
    y = np.empty(n)
    for i in range(n):
        y[i] = b[order[i]]
    for k in range(n):  # L y = b: column k of L below its unit diagonal
        yk = y[k]
        base = np.uint64(k * ldab + diag - k)  # f[base + i] = L[i, k]
        for i in range(np.uint64(k + 1), np.uint64(min(n, k + kl + 1))):
            y[i] -= f[base + i] * yk
    for k in range(n - 1, -1, -1):  # U x = y: column k of U above its diagonal
        yk = y[k] * inv_pivot[k]
        y[k] = yk
        base = np.uint64(k * ldab + diag - k)  # f[base + i] = U[i, k]
        for i in range(np.uint64(max(0, k - ku)), np.uint64(k)):
            y[i] -= f[base + i] * yk
    for i in range(n):
        x[order[i]] = y[i]


@functools.lru_cache(maxsize=8)
def _identity(n):
    """The order 0, 1, …, N − 1, read-only like the band layouts' orders (one compiled
    variant of :func:`_solve`)."""
    order = np.arange(n)
    order.setflags(write=False)
    return order


@functools.lru_cache(maxsize=8)
def _test_vector(n):
    """The known answer x₀ (N,) of :class:`NoPivotBandLu`'s check: entries in [1, 2), no
    pattern that the matrix's structure could hide an error in. Read-only."""
    x = np.random.default_rng(20261127).uniform(1.0, 2.0, n)
    x.setflags(write=False)
    return x


class NoPivotBandLu:
    """LU without pivoting of a band matrix (module docstring), ``verified`` when a solve
    of A x = A x₀ returns x₀ to VERIFY_TOL; ``error`` is that relative error (inf where a
    pivot was zero or not finite)."""

    def __init__(self, band, kl, ku, order=None):
        ab = np.ascontiguousarray(band.T)  # (N, ldab): column j of A contiguous (no copy
        # for the Fortran-order band the module expects)
        n = ab.shape[0]
        self.kl, self.ku, self._ab = kl, ku, ab
        self.order = _identity(n) if order is None else order
        x0 = _test_vector(n)
        b0 = np.empty(n)
        _band_matvec(ab, kl, ku, x0, b0)
        self._inv_pivot = np.empty(n)
        self.error = np.inf
        if _factor(ab, kl, ku, self._inv_pivot) < 0:
            x = np.empty(n)
            _solve(ab, kl, ku, self._inv_pivot, _identity(n), b0, x)
            self.error = float(np.abs(x - x0).max() / np.abs(x0).max())
        self.verified = self.error <= VERIFY_TOL

    def solve(self, b):
        """x with A x = b (b (N,), not changed)."""
        x = np.empty(b.shape[0])
        _solve(self._ab, self.kl, self.ku, self._inv_pivot, self.order, b, x)
        return x


class LapackBandLu:
    """LU with partial pivoting of a band matrix by LAPACK's gbtrf; ``solve(b)`` by gbtrs.
    An exactly singular matrix raises RuntimeError, as SuperLU does. The factorisation runs
    on one BLAS thread (:func:`~fpsolver.fv.policy.single_threaded_blas`); the solves,
    level-2 BLAS, without the limit, which took 50-80 µs of a 100-400 µs solve (32²-48²)."""

    def __init__(self, band, kl, ku, order=None):
        gbtrf, self._gbtrs = sla.get_lapack_funcs(("gbtrf", "gbtrs"), (band,))
        with single_threaded_blas():
            self.lu, self.piv, info = gbtrf(band, kl, ku, overwrite_ab=True)
        if info > 0:
            raise RuntimeError(f"Factor is exactly singular (pivot {info - 1} is 0)")
        self.kl, self.ku, self.order = kl, ku, order

    def solve(self, b):
        """x with A x = b (b (N,), not changed)."""
        if self.order is None:
            x, info = self._gbtrs(self.lu, self.kl, self.ku, b, self.piv)
        else:
            y, info = self._gbtrs(self.lu, self.kl, self.ku, b[self.order], self.piv,
                                  overwrite_b=True)
            x = np.empty_like(y)
            x[self.order] = y
        if info != 0:
            raise RuntimeError(f"LAPACK gbtrs failed (info {info})")
        return x


def band_lu(assemble, kl, ku, order=None):
    """LU (``solve(b)``) of the band matrix that ``assemble()`` returns in band storage
    (module docstring): :class:`NoPivotBandLu` when it verifies, else
    :class:`LapackBandLu` of a second ``assemble()``."""
    lu = NoPivotBandLu(assemble(), kl, ku, order)
    return lu if lu.verified else LapackBandLu(assemble(), kl, ku, order)
