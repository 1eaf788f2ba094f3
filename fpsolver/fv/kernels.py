"""Numba kernels of the finite-volume Fokker-Planck operator (2-D and 4-D phase space).

One kernel serves every dimension: arrays are flat (C order) with per-axis ``shape`` and
``strides`` (in elements), so the 2-D (d = 1) and 4-D (d = 2) operators share the face
fluxes below; :mod:`fpsolver.fv.reference` holds the plain-numpy twin of each kernel.

``vel[k, c]`` is the drift velocity b_k on the *right* face of cell c along axis k (the
last cell's right face is a wall and is never used), so it has the cell layout. The flux
through a face is F = u⁺(w_L + σ_L/2) + u⁻(w_R + σ_R/2) + (D_kk/h_k)(w_L − w_R)
− Σ_b D_kb ∂_b w: MUSCL advection with the van Leer limiter (σ the limited slope towards
the face in the upstream cell, 0 next to a wall), central diffusion (``dif[k]`` = D_kk/h_k,
0 on θ axes) and the cross-diffusion ``cross`` (off-diagonal D) on the diagonal stencil
matching its sign.

``jac`` = False evaluates the nonlinear scheme on ``w`` (``p`` unused); ``jac`` = True
applies its Jacobian at ``p`` to ``w``. The van Leer slope s(a, b) = 2ab/(a + b) is
homogeneous of degree one, so Jacobian(p)·p equals the scheme applied to p.
"""

import numpy as np
from numba import prange

from .policy import helper, kernel


@helper
def _slope(pu, p0, pd, wu, w0, wd, jac):
    """Van Leer slope σ of w at a cell towards a face (face value w0 + σ/2).

    ``u``/``d``: the upstream and downstream neighbours along the flow; σ = 2ab/(a + b)
    for a = w0 − wu, b = wd − w0 of one sign, else 0 (TVD: the face value stays between
    the neighbours). With ``jac`` the derivative at p, 2(b²δa + a²δb)/(a + b)², is applied
    to w; it is written with a/(a+b), b/(a+b) so tiny densities do not underflow to 0/0.
    """
    if jac:
        a = p0 - pu
        b = pd - p0
    else:
        a = w0 - wu
        b = wd - w0
    if (a > 0.0 and b > 0.0) or (a < 0.0 and b < 0.0):
        s = a + b
        alpha = a / s
        beta = b / s
        if jac:
            return 2.0 * (beta * beta * (w0 - wu) + alpha * alpha * (wd - w0))
        return 2.0 * a * beta
    return 0.0


@helper
def _face_flux(k, c, ik, idx, p, w, jac, shape, strides, vel, dif, cross, inv_h):
    """Flux through the right face (along axis k) of flat cell c with axis-k index ik
    (``idx``: the cell's indices on the other axes)."""
    st = strides[k]
    r = c + st
    u = vel[k, c]
    s = 0.0
    if u >= 0.0:
        if ik >= 1:
            s = _slope(p[c - st], p[c], p[r], w[c - st], w[c], w[r], jac)
        f = u * (w[c] + 0.5 * s)
    else:
        if ik + 2 <= shape[k] - 1:
            s = _slope(p[r + st], p[r], p[c], w[r + st], w[r], w[c], jac)
        f = u * (w[r] + 0.5 * s)
    f += dif[k] * (w[c] - w[r])
    for b in range(len(shape)):
        d = cross[k, b]
        if d != 0.0:
            sb = strides[b]
            ib = idx[b]
            g = 0.0
            if d > 0.0:
                if ib < shape[b] - 1:
                    g += w[r + sb] - w[r]
                if ib > 0:
                    g += w[c] - w[c - sb]
            else:
                if ib > 0:
                    g += w[r] - w[r - sb]
                if ib < shape[b] - 1:
                    g += w[c + sb] - w[c]
            f -= d * 0.5 * g * inv_h[b]
    return f


@helper
def _row_index(row, shape, idx):
    """Fill idx[:-1] with the indices of flat row ``row`` (a line along the last axis)."""
    div = 1
    for k in range(len(shape) - 2, -1, -1):
        idx[k] = (row // div) % shape[k]
        div *= shape[k]


@kernel
def rate_kernel(p, w, jac, shape, strides, vel, dif, cross, inv_h, out):
    """out = −∇·F(w) (flat, N): the scheme's dp/dt at w, or its Jacobian at p times w.

    Parallel over lines along the last axis; indices are carried, not divided out per cell.
    """
    nd = len(shape)
    nl = shape[nd - 1]
    for row in prange(w.size // nl):
        idx = np.empty(nd, dtype=np.int64)
        _row_index(row, shape, idx)
        for j in range(nl):
            idx[nd - 1] = j
            c = row * nl + j
            acc = 0.0
            for k in range(nd):
                ik = idx[k]
                if ik < shape[k] - 1:
                    acc -= _face_flux(k, c, ik, idx, p, w, jac, shape, strides, vel, dif,
                                      cross, inv_h) * inv_h[k]
                if ik > 0:
                    acc += _face_flux(k, c - strides[k], ik - 1, idx, p, w, jac, shape,
                                      strides, vel, dif, cross, inv_h) * inv_h[k]
            out[c] = acc


@kernel
def face_flux_kernel(p, w, jac, shape, strides, vel, dif, cross, inv_h, out):
    """out[k, c] = flux of w through the right face of cell c along axis k (0 at walls)."""
    nd = len(shape)
    nl = shape[nd - 1]
    for row in prange(w.size // nl):
        idx = np.empty(nd, dtype=np.int64)
        _row_index(row, shape, idx)
        for j in range(nl):
            idx[nd - 1] = j
            c = row * nl + j
            for k in range(nd):
                if idx[k] < shape[k] - 1:
                    out[k, c] = _face_flux(k, c, idx[k], idx, p, w, jac, shape, strides, vel,
                                           dif, cross, inv_h)
                else:
                    out[k, c] = 0.0


@kernel
def line_solve_kernel(alpha, beta, tau, shape, strides, axis, rhs, out):
    """Solve (I − τT_k)x = rhs along every line of ``axis`` (Thomas algorithm).

    T_k is the first-order line operator: face flux α_c x_c − β_c x_{c+1} on the right face
    of cell c (α, β ≥ 0 already divided by h; 0 on walls), so row c of I − τT_k is
    [−τα_{c−1}, 1 + τ(α_c + β_{c−1}), −τβ_c]: an M-matrix, no pivoting needed.
    """
    n = shape[axis]
    st = strides[axis]
    for line in prange(rhs.size // n):
        c0 = (line // st) * (st * n) + line % st
        cp = np.empty(n)
        dp = np.empty(n)
        prev_m = 0.0
        for i in range(n):
            c = c0 + i * st
            diag = 1.0 + tau * alpha[c]
            low = 0.0
            if i > 0:
                diag += tau * beta[c - st]
                low = -tau * alpha[c - st]
            up = -tau * beta[c] if i < n - 1 else 0.0
            m = diag - low * prev_m
            cp[i] = up / m
            dp[i] = (rhs[c] - low * (dp[i - 1] if i > 0 else 0.0)) / m
            prev_m = cp[i]
        x = 0.0
        for i in range(n - 1, -1, -1):
            x = dp[i] - cp[i] * x
            out[c0 + i * st] = x
