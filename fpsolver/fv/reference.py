"""Plain-numpy twins of the numba kernels in :mod:`fpsolver.fv.kernels` (same arguments).

They follow the kernels' formulas with whole-array slicing and exist to test the kernels
(agreement to round-off) and to read the scheme without the index arithmetic.
"""

import numpy as np

from .kernels import SLOPE_CAP_BETA


def _limited(a, b, aw, bw, jac):
    """Twin of ``kernels._slope`` (elementwise): the slope along the flow from the upstream
    (a) and downstream (b) differences of p, or its derivative applied to aw, bw."""
    same = ((a > 0) & (b > 0)) | ((a < 0) & (b < 0))
    s = np.where(same, a + b, 1.0)
    alpha, beta = a / s, b / s
    if jac:
        val = np.where(beta > SLOPE_CAP_BETA, 2.0 * aw, 8.0 / 3.0 * beta ** 3 * aw
                       + 4.0 / 3.0 * alpha ** 2 * (alpha + 3.0 * beta) * bw)
    else:
        val = a * np.minimum(4.0 / 3.0 * (beta + beta * beta), 2.0)
    return np.where(same, val, 0.0)


def _slopes(p, w, jac, axis):
    """(forward, backward): limited cell slopes of w along ``axis`` for flow in the +axis
    and in the −axis direction, each measured along its flow (Jacobian at p if ``jac``);
    0 at both ends."""
    thirds = (slice(None, -2), slice(1, -1), slice(2, None))
    pm, p0, pp = (np.moveaxis(p if jac else w, axis, 0)[s] for s in thirds)
    wm, w0, wp = (np.moveaxis(w, axis, 0)[s] for s in thirds)
    back, fwd, wback, wfwd = p0 - pm, pp - p0, w0 - wm, wp - w0
    out = np.zeros((2,) + np.moveaxis(w, axis, 0).shape)
    out[0, 1:-1] = _limited(back, fwd, wback, wfwd, jac)
    out[1, 1:-1] = _limited(-fwd, -back, -wfwd, -wback, jac)  # upstream: the next cell
    return out


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
    return deriv if jac else value


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
            up, down = _slopes(p, w, jac, k)
            f = np.where(u >= 0, u * (wk[:-1] + 0.5 * up[:-1]), u * (wk[1:] + 0.5 * down[1:]))
            f = f + dif[k] * (wk[:-1] - wk[1:])
            for b in range(len(shape)):
                if cross[k, b] != 0.0 or cross_lim[k, b] != 0.0:
                    f = f + _cross_flux(p if jac else w, w, jac, k, b, cross[k, b],
                                        cross_lim[k, b], inv_h)
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


def ssp_rk93_step(p, h, blend, *args):
    """Twin of ``ssp_rk93_kernel``: one SSP-RK(9,3) step from p, stages of length h,
    ``args`` the operator's (its buffer table, stage by stage)."""
    from .kernels import SSP93_BLEND_STAGE, SSP93_READS, SSP93_WRITES

    bufs = [np.asarray(p, dtype=float), None, None, None]
    for stage, (src, dst) in enumerate(zip(SSP93_READS, SSP93_WRITES)):
        a = blend if stage == SSP93_BLEND_STAGE else 0.0
        w = bufs[src]
        bufs[dst] = (a * bufs[1] if a else 0.0) + (1.0 - a) * (w + h * rate(w, w, False, *args))
    return bufs[SSP93_WRITES[-1]]
