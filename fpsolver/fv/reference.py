"""Plain-numpy twins of the numba kernels in :mod:`fpsolver.fv.kernels` (same arguments).

They follow the kernels' formulas with whole-array slicing and exist to test the kernels
(agreement to round-off) and to read the scheme without the index arithmetic.
"""

import numpy as np

from .kernels import DIFFUSION_CAP, FIRST_ORDER, JACOBIAN, PECLET_CENTRAL, SCHEME


def _saturate(s, big, sw, bigw, jac):
    """Twin of ``kernels._saturate`` (elementwise)."""
    sat = 2.0 * np.abs(s) > big
    q = np.where(sat, big / np.where(sat, 2.0 * np.abs(s), 1.0), 1.0)
    if jac == JACOBIAN:
        return np.where(sat, q * q * sw + np.where(s >= 0, 1.0, -1.0) * (1.0 - q) * bigw, sw)
    return np.where(sat, s * q * (2.0 - q), s)


def _edge_padded(x, axis):
    """x with ``axis`` moved first and one copy of each end cell added at that end: a
    missing neighbour (wall) counts as the cell itself, as in the kernels."""
    x = np.moveaxis(x, axis, 0)
    return np.concatenate([x[:1], x, x[-1:]])


def _face_cells(x, axis):
    """(ll, l, r, rr): the cells around each interior face along ``axis`` (moved first)."""
    pad = _edge_padded(x, axis)
    return pad[:-3], pad[1:-2], pad[2:-1], pad[3:]


def _advection(p, w, jac, u, dif, axis):
    """``kernels._flux``'s advection u·(face value) on the interior faces along ``axis``
    (velocities ``u``, axis first), or its derivative."""
    (pll, pl, pr, prr), (wll, wl, wr, wrr) = _face_cells(p, axis), _face_cells(w, axis)
    right = u < 0
    wup = np.where(right, wr, wl)
    if jac == FIRST_ORDER:
        return u * wup
    if dif != 0.0:
        with np.errstate(divide="ignore"):
            central = np.minimum(1.0, PECLET_CENTRAL * dif / np.abs(u))

    def slope(xll, xl, xr, xrr):  # along the flow
        a = np.where(right, xr - xrr, xl - xll)
        b = np.where(right, xl - xr, xr - xl)
        s = (a + 2.0 * b) / 3.0
        if dif != 0.0:
            s = s - central * (a - 2.0 * b + np.where(right, xll - xl, xrr - xr)) / 6.0
        return s

    up, s = np.where(right, pr, pl), slope(pll, pl, pr, prr)
    sign = np.where(up >= 0, 2.0, -2.0)
    face = wup + 0.5 * _saturate(s, sign * up, slope(wll, wl, wr, wrr), sign * wup, jac)
    if jac == SCHEME:
        with np.errstate(divide="ignore", invalid="ignore"):
            low = up * np.abs(up) / (2.0 * np.abs(s))
        face = np.where((s * up < 0) & (np.abs(s) > np.abs(up)), low, face)
    return u * face


def _diffusion_correction(p, w, jac, dif, axis):
    """``kernels._flux``'s fourth-order diffusion correction on the interior faces along
    ``axis``, or its derivative."""
    (pll, pl, pr, prr), (wll, wl, wr, wrr) = _face_cells(p, axis), _face_cells(w, axis)
    if jac == FIRST_ORDER or dif == 0.0:
        return np.zeros_like(pl)
    c = dif / 12.0 * (prr - 3.0 * pr + 3.0 * pl - pll)
    src, wsrc = np.where(c >= 0, pl, pr), np.where(c >= 0, wl, wr)
    sign = np.where(src >= 0, DIFFUSION_CAP * dif, -DIFFUSION_CAP * dif)
    return _saturate(c, sign * src, dif / 12.0 * (wrr - 3.0 * wr + 3.0 * wl - wll),
                     sign * wsrc, jac)


def _one_sided(w, axis):
    """(forward, backward) differences of w along ``axis``; 0 where the neighbour is missing."""
    d = np.diff(w, axis=axis)
    fwd = np.zeros_like(w)
    bwd = np.zeros_like(w)
    n = w.shape[axis]
    np.moveaxis(fwd, axis, 0)[: n - 1] = np.moveaxis(d, axis, 0)
    np.moveaxis(bwd, axis, 0)[1:] = np.moveaxis(d, axis, 0)
    return fwd, bwd


def _saturated(g, bound, gw, bw, jac):
    """Twin of ``kernels._saturated`` (elementwise, no overflow guards needed for tests)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(g == 0, 0.0, (np.abs(g) / bound) ** 4)
        value = np.where(g == 0, 0.0, g * (1.0 + q) ** -0.25)
        c = (1.0 + q) ** -1.25
        deriv = np.where(g == 0, gw, c * gw + c * q * g / bound * bw)
    return value if jac == SCHEME else deriv


def _cross_flux(p, w, jac, k, b, d, d_lim, inv_h):
    """Right-face fluxes −D_kb ∂_b w along axis k on the diagonal stencil: the linear part d,
    the saturated part d_lim, at p (twin of ``kernels._cross_run``)."""
    def diagonal(x, sign):
        fwd, bwd = (np.moveaxis(y, k, 0) for y in _one_sided(x, b))
        return fwd[1:] + bwd[:-1] if sign > 0 else bwd[1:] + fwd[:-1]

    pk, wk = (np.moveaxis(x, k, 0) for x in (p, w))
    cap = 2.0 * abs(d_lim) * inv_h[b]  # 4|dgl|, dgl = d_lim/(2h_b)
    g = 0.5 * d_lim * inv_h[b] * diagonal(p, d_lim)
    gw = 0.5 * d_lim * inv_h[b] * diagonal(w, d_lim)
    left = g < 0  # the flow goes from the left cell
    src = np.where(left, pk[:-1], pk[1:])
    sign = np.where(src >= 0, 1.0, -1.0)
    bound = cap * sign * src
    bw = cap * sign * np.where(left, wk[:-1], wk[1:])
    return -(0.5 * d * inv_h[b] * diagonal(w, d) + _saturated(g, bound, gw, bw, jac))


def face_fluxes(p, w, jac, shape, strides, vel0, velg, dif, cross, cross_lim, inv_h):
    """Twin of ``face_flux_kernel``: array (ndim, N) of right-face fluxes (0 at walls)."""
    shape = tuple(int(n) for n in shape)
    p = np.asarray(p).reshape(shape)
    w = np.asarray(w).reshape(shape)
    index = np.indices(shape)
    vel = [vel0[k] + np.tensordot(velg[k], index, axes=1) for k in range(len(shape))]
    out = np.zeros((len(shape),) + shape)
    with np.errstate(under="ignore"):
        for k in range(len(shape)):
            wk = np.moveaxis(w, k, 0)
            u = np.moveaxis(vel[k], k, 0)[:-1]
            pj = p if jac == JACOBIAN else w
            f = _advection(pj, w, jac, u, dif[k], k) + dif[k] * (wk[:-1] - wk[1:])
            f = f + _diffusion_correction(pj, w, jac, dif[k], k)
            for b in range(len(shape)):
                if cross[k, b] != 0.0 or cross_lim[k, b] != 0.0:
                    f = f + _cross_flux(pj, w, jac, k, b, cross[k, b], cross_lim[k, b], inv_h)
            np.moveaxis(out[k], k, 0)[:-1] = f
    return out.reshape(len(shape), -1)


def rate(p, w, jac, shape, strides, vel0, velg, dif, cross, cross_lim, inv_h):
    """Twin of ``rate_kernel``: −∇·F(w), flat (N,)."""
    flux = face_fluxes(p, w, jac, shape, strides, vel0, velg, dif, cross, cross_lim, inv_h)
    shape = tuple(int(n) for n in shape)
    out = np.zeros(shape)
    for k in range(len(shape)):
        f = flux[k].reshape(shape)
        left = np.zeros(shape)
        np.moveaxis(left, k, 0)[1:] = np.moveaxis(f, k, 0)[:-1]
        out -= (f - left) * inv_h[k]
    return out.ravel()


def line_solve(alpha, beta, tau, shape, strides, axis, rhs):
    """Twin of ``line_solve_kernel``: (I − τT_k)⁻¹ rhs line by line with solve_banded."""
    from scipy.linalg import solve_banded
    shape = tuple(int(n) for n in shape)
    a, b, r = (np.moveaxis(np.asarray(x).reshape(shape), axis, -1) for x in (alpha, beta, rhs))
    out = np.empty_like(r)
    n = shape[axis]
    for idx in np.ndindex(r.shape[:-1]):
        ab = np.zeros((3, n))
        ab[1] = 1.0 + tau * a[idx]
        ab[1, 1:] += tau * b[idx][:-1]
        ab[0, 1:] = -tau * b[idx][:-1]
        ab[2, :-1] = -tau * a[idx][:-1]
        out[idx] = solve_banded((1, 1), ab, r[idx])
    return np.moveaxis(out, -1, axis).ravel()


def ssp_rk3_step(p, h, *args, flush=0.0):
    """Twin of ``ssp_rk3_kernel``: one SSP-RK(n², 3) step from p, stages of length h
    (:func:`~fpsolver.fv.kernels.ssp_stages`), ``args`` the operator's, stage values of
    magnitude below ``flush`` set to 0."""
    from .kernels import ssp_stages

    return ssp_stages(np.asarray(p, dtype=float), h, lambda w: rate(w, w, SCHEME, *args),
                      lambda x: np.where(np.abs(x) < flush, 0.0, x))
