"""Numba kernels of the finite-volume Fokker-Planck operator (2-D and 4-D phase space).

Arrays are flat (C order) with per-axis ``shape`` and ``strides`` (in elements); the last
axis (v_d) is contiguous. The kernels walk the grid one *row* (a line along the last axis)
at a time, and every face flux of a row is a loop over that contiguous axis with no
branches, so LLVM vectorises it; threads take contiguous ranges of rows and reuse each
outer-axis face flux for both cells it separates.
:mod:`fpsolver.fv.reference` holds the plain-numpy twin of each kernel.

Face velocities are not stored: the drift is affine, so the velocity b_k on the right face
of the cell with indices i is ``vel0[k] + Σ_l velg[k, l]·i_l`` (built by the operator).
The flux through a face is F = u⁺(w_L + σ_L/2) + u⁻(w_R − σ_R/2) + (D_kk/h_k)(w_L − w_R)
− D_kb ∂_b w: MUSCL advection with third-order slopes (fourth-order central face values on
the v axes up to cell Péclet number 2) saturated for positivity (σ the slope of the upwind
cell along the flow, :func:`_flux`; a wall counts as the cell itself), fourth-order
diffusion (``dif[k]`` = D_kk/h_k, 0 on θ axes; :func:`_flux`) and
the cross-diffusion between the two velocity axes (``cross``, off-diagonal D, d = 2 only):
on the diagonal stencil matching its sign, ``cross`` linear and ``cross_lim`` (the part
beyond what keeps that stencil an M-matrix) with its flux saturated (:func:`_saturated`).

``jac`` = SCHEME evaluates the nonlinear scheme on ``w`` (``p`` unused); JACOBIAN applies
its Jacobian at ``p`` to ``w``; FIRST_ORDER applies the first-order operator W (no slopes;
pass no saturated cross-diffusion) to ``w``. The saturated slope is homogeneous of degree
one, so Jacobian(p)·p equals the scheme applied to p.
"""

import numpy as np
from numba import prange

from ..borrow import borrowed
from .policy import helper, kernel, subroutine
from .stores import prefetch, store_fence, stream_store
from .sync import atomic_add, wait_for

SCHEME, JACOBIAN, FIRST_ORDER = 0, 1, 2  # what the kernels' ``jac`` asks for
# the fourth-order diffusion correction stays below this times dif·|p| of its source cell
DIFFUSION_CAP = 0.5
# v axes: advective face values central (fourth order) up to this cell Péclet number
# |u|h/D, beyond it blended back toward the upwind-biased κ = 1/3 value as PECLET_CENTRAL/Pe
# (2: where central differencing of drift-diffusion stops being an M-matrix)
PECLET_CENTRAL = 2.0
# software prefetch, this many cells beyond the farthest row the stencil reaches (1024-8192
# alike): the hardware prefetcher left the kernel latency-bound beyond the cache (2048²,
# 2 threads: rate 0.91 → 1.02-1.11e9 cells/s, stage 0.66 → 0.95-1.02e9; 64⁴ 0.37 → 0.46e9)
PREFETCH_AHEAD = 2048
LANES = 256  # lines eliminated together by the line solver ...
MIN_CONTIGUOUS_LANES = 16  # ... taken from one contiguous block when it has this many


@helper
def _saturates(s, big):
    """Whether s saturates against the bound B (|s| > B/2): the test of :func:`_saturation`,
    and alone that of :func:`_flux`'s smooth path, so that both paths agree on it."""
    return 2.0 * abs(s) > big


@helper
def _saturation(s, big):
    """(saturated, q) for :func:`_saturate_with`: :func:`_saturates`, and q = B/(2|s|) in
    [0, 1) there (B elsewhere). The one division of a saturation."""
    sat = _saturates(s, big)
    return sat, big / (2.0 * abs(s) if sat else 1.0)


@helper
def _saturate_with(s, sat, q, sw, bigw, jac):
    """The saturated s from :func:`_saturation`'s (sat, q) for the bound B: s where
    |s| ≤ B/2, beyond that sign(s)·(B − B²/(4|s|)) (B ≥ 0): C¹, increasing in s, |value| <
    B, homogeneous of degree one in (s, B). JACOBIAN: its derivative at (s, B) applied to
    (sw, bigw). Branch-free."""
    if jac == JACOBIAN:
        sign_s = 1.0 if s >= 0.0 else -1.0
        return q * q * sw + sign_s * (1.0 - q) * bigw if sat else sw
    return s * q * (2.0 - q) if sat else s


@helper
def _flux(u, dif, wll, wl, wr, wrr, pll, pl, pr, prr, jac, diffusive, smooth):
    """(flux, saturated): the flux through the face between cells l and r (ll = l, rr = r
    at a wall), w the density (or the direction of the Jacobian at p), and whether its
    slope or its diffusion correction saturates.

    Advection: the upwind cell's value plus half its slope along the flow, the third-order
    (κ = 1/3) MUSCL slope (a + 2b)/3 from its upstream (a) and downstream (b) differences,
    saturated (:func:`_saturate_with`) below 2|p| of that cell: face values in (0, 2p), so
    positive with outflow ≤ 2|u|p, and the plain κ = 1/3 slope wherever |slope| ≤ |p|
    (every resolved cell). Smooth extrema keep their slope, where the TVD limiter this
    replaces clipped it to 0 and left a first-order error at every maximum. On the
    ``diffusive`` (v) axes the slope also takes −c·(a − 2b + d)/6, d the next difference
    downstream, c = min(1, PECLET_CENTRAL·dif/|u|): at c = 1 the face value is the central
    fourth-order (7(p₀ + p₁) − p₋₁ − p₂)/12, so the v axes are fourth order wherever the cell
    Péclet number |u|h/D is at most 2; beyond, c = 2/Pe turns it back toward the
    upwind-biased κ = 1/3 value (weakly damped tails: the central value everywhere left
    β = 0.999, η = 0.01 unconverged after 40 Newton steps at 64²). The saturation, and so
    the positivity bound, is the same. Stationary L1, default case, 32² / 36² / 64² / 128²:
    1.08e-2 / 8.11e-3 / 1.69e-3 / 2.21e-4 with κ = 1/3 → 6.82e-3 / 4.87e-3 / 9.66e-4 /
    1.27e-4; benchmark transient 40² / 48² / 64²: 4.83e-3 / 2.93e-3 / 1.28e-3 → 3.59e-3 /
    2.12e-3 / 9.15e-4; β = 0.9, η = 0.1 at 128²: 2.79e-4 → 1.49e-4; β = 0.99, η = 0.05:
    1.78e-3 → 1.01e-3. Where the slope saturates against the density (|s| > |p|, s·p < 0)
    the scheme's face value p + σ/2 is computed as pq/2 = p|p|/(2|s|): the sum cancelled to
    ±1e-16·p and gave empty cells next to a steep front densities of −1e-60. Diffusion: the
    fourth-order flux dif·(15(w_l − w_r) + w_rr − w_ll)/12 (from cell averages), written as
    the central flux dif·(w_l − w_r) plus a correction saturated below DIFFUSION_CAP·dif·|p|
    of the cell it flows out of (positive under a step shortened accordingly,
    :meth:`FPOperator.max_rate`). Default case, stationary L1 at 64² / 128² / 256²:
    TVD 3.8e-3 / 6.5e-4 / 1.5e-4; these slopes with central diffusion 1.34e-3 / 4.4e-4 /
    1.34e-4 (order 1.7: the diffusion error is then the larger); with the fourth-order
    diffusion 1.69e-3 / 2.21e-4 / 2.82e-5 (orders 2.94, 2.97). FIRST_ORDER: upwind and
    central only. ``diffusive`` (a compile-time constant): False on the θ axes (dif = 0),
    which then skip the diffusion terms and their division. ``smooth`` (a compile-time
    constant, SCHEME only): the flux as if nothing saturated, without the saturations'
    divisions and selects: the same bits wherever nothing does (:func:`_outer_run`).
    Branch-free, so the face loop vectorises (a loop split at the sign change of u ran 3.6×
    slower)."""
    right = u < 0.0
    if jac == FIRST_ORDER:
        return u * (wr if right else wl) + dif * (wl - wr), False
    up = pr if right else pl  # the upwind cell ...
    a = pr - prr if right else pl - pll  # ... and its differences along the flow
    b = pl - pr if right else pr - pl
    slope = (a + 2.0 * b) * (1.0 / 3.0)
    if diffusive:  # toward the central fourth-order face value where |u|/dif ≤ PECLET_CENTRAL
        central = min(1.0, PECLET_CENTRAL * dif / abs(u))
        d = pll - pl if right else prr - pr  # the next difference downstream
        slope -= central * (a - 2.0 * b + d) * (1.0 / 6.0)
    sign_up = 1.0 if up >= 0.0 else -1.0
    wup = wr if right else wl
    if jac == JACOBIAN:  # directions of a, b (d) and p_up
        aw = wr - wrr if right else wl - wll
        bw = wl - wr if right else wr - wl
        sw = (aw + 2.0 * bw) * (1.0 / 3.0)
        if diffusive:
            dw = wll - wl if right else wrr - wr
            sw -= central * (aw - 2.0 * bw + dw) * (1.0 / 6.0)
    else:
        sw = 0.0
    if smooth:  # the test alone: unsaturated, _saturate_with returns the slope
        sat = _saturates(slope, 2.0 * sign_up * up)
        face = wup + 0.5 * slope
    else:
        sat, q = _saturation(slope, 2.0 * sign_up * up)
        # σ along the flow: σ_l, or −σ_r for u < 0
        face = wup + 0.5 * _saturate_with(slope, sat, q, sw, 2.0 * sign_up * wup, jac)
        if jac == SCHEME:  # saturated against p: p + σ/2 = pq/2, without the cancellation
            # that left face values of −1e-16·p; & (not and): a select, no branch
            face = 0.5 * up * q if sat & (slope * up < 0.0) else face
    advection = u * face
    if not diffusive:
        return advection, sat
    c = dif * (1.0 / 12.0) * (prr - 3.0 * pr + 3.0 * pl - pll)
    src = pl if c >= 0.0 else pr  # the cell the correction flows out of
    sign_src = 1.0 if src >= 0.0 else -1.0
    cap = DIFFUSION_CAP * dif
    if smooth:
        sat_c = _saturates(c, cap * sign_src * src)
        corr = c
    else:
        if jac == JACOBIAN:  # directions of c and p_src
            cw = dif * (1.0 / 12.0) * (wrr - 3.0 * wr + 3.0 * wl - wll)
            wsrc = wl if c >= 0.0 else wr
        else:
            cw = wsrc = 0.0
        sat_c, q_c = _saturation(c, cap * sign_src * src)
        corr = _saturate_with(c, sat_c, q_c, cw, cap * sign_src * wsrc, jac)
    return advection + dif * (wl - wr) + corr, sat | sat_c


@helper
def _row_velocity(k, idx, ik, vel0, velg):
    """Velocity b_k on the right faces along axis k at the row's first cell; idx: the row's
    indices on the outer axes, with ik replacing idx[k]."""
    nd = vel0.size
    u = vel0[k]
    for m in range(nd - 1):
        u += velg[k, m] * (ik if m == k else idx[m])
    return u


@helper
def _face_loop(lo, hi, u0, du, dk, w, p, ll, l, r, rr, jac, smooth, out, o):
    """out[o + j] = flux through face j (u = u0 + du·j) for j in [lo, hi); the face's
    cells ll, l, r, rr sit at flat offsets ll + j, l + j, r + j, rr + j. Returns how many
    of the faces saturate (``smooth``: :func:`_flux`'s smooth path). Offsets into the
    shared arrays, not slices: a slice increments the array's reference count, an atomic
    that the two threads' cores fight over (4-D ran 1.7× slower on two threads than on
    one with slices)."""
    # unsigned indices: numba skips the negative-index wrap-around that would make every
    # load a select (the loop then vectorises: 4-D kernel ~2× faster than signed offsets)
    ll, l, r, rr, o = np.uint64(ll), np.uint64(l), np.uint64(r), np.uint64(rr), np.uint64(o)
    n = 0
    if dk == 0.0:  # a θ axis: advection only
        for j in range(np.uint64(lo), np.uint64(hi)):
            f, sat = _flux(u0 + du * j, dk, w[ll + j], w[l + j], w[r + j], w[rr + j],
                           p[ll + j], p[l + j], p[r + j], p[rr + j], jac, False, smooth)
            out[o + j] = f
            n += sat
    else:
        for j in range(np.uint64(lo), np.uint64(hi)):
            f, sat = _flux(u0 + du * j, dk, w[ll + j], w[l + j], w[r + j], w[rr + j],
                           p[ll + j], p[l + j], p[r + j], p[rr + j], jac, True, smooth)
            out[o + j] = f
            n += sat
    return n


# faces per chunk of a scheme run that tries the smooth path first, and the shortest run
# that does (:func:`_outer_run`)
SMOOTH_CHUNK = 64
SMOOTH_MIN_RUN = 128


@helper
def _outer_run(lo, hi, u0, du, dk, w, p, ll, l, r, rr, jac, modes, k, out, o):
    """:func:`_face_loop` over faces [lo, hi) along axis k. The scheme (SCHEME) goes in
    chunks of SMOOTH_CHUNK faces: a chunk takes the smooth path (no saturation's division
    or selects) while the last chunk along axis k had no saturated face (``modes[k]``, kept
    across the task's rows), and is evaluated again in full if one of its faces saturates;
    every face that does not saturate gets the same bits on both paths. A resolved density
    saturates only in its far tails (the default case's stationary Gaussian: a κ = 1/3
    slope beyond the cell's density in either direction in no cell at 128², in 44 % of
    the cells at 64²). One thread, ns per cell update on that Gaussian: 128² 1.99 → 1.62,
    256² 1.87 → 1.42 (two threads 0.95 → 0.71), 2048² 2.68 → 2.11; on random densities,
    which saturate in every chunk, within ±1 % (44² to 256², 32⁴). Runs shorter than
    SMOOTH_MIN_RUN take the full path at once: trying the smooth one made rows of 44 and
    32 cells 7-13 % slower on any density."""
    if jac != SCHEME or hi - lo < SMOOTH_MIN_RUN:
        _face_loop(lo, hi, u0, du, dk, w, p, ll, l, r, rr, jac, False, out, o)
        return
    for c0 in range(lo, hi, SMOOTH_CHUNK):
        c1 = min(hi, c0 + SMOOTH_CHUNK)
        if modes[k] and _face_loop(c0, c1, u0, du, dk, w, p, ll, l, r, rr, SCHEME, True,
                                   out, o) == 0:
            continue
        modes[k] = _face_loop(c0, c1, u0, du, dk, w, p, ll, l, r, rr, SCHEME, False,
                              out, o) == 0


@helper
def _outer_row_flux(k, c, ik, idx, p, w, jac, shape, strides, vel0, velg, dif, cross,
                    cross_lim, inv_h, modes, out, o):
    """out[o:o + nl] = fluxes through the right faces along outer axis k of the row starting
    at flat cell c (axis-k index ik < shape[k] − 1); ``modes`` as :func:`_outer_run`."""
    nd = shape.size
    nl = shape[nd - 1]
    st = strides[k]
    cll = c - st if ik >= 1 else c
    crr = c + 2 * st if ik + 2 <= shape[k] - 1 else c + st
    u0 = _row_velocity(k, idx, ik, vel0, velg)
    _outer_run(0, nl, u0, velg[k, nd - 1], dif[k], w, p, cll, c, c + st, crr, jac, modes, k,
               out, o)
    if k == nd - 2 and (cross[k, nd - 1] != 0.0 or cross_lim[k, nd - 1] != 0.0):
        # −D_kb ∂_b w, b the last axis
        dg = 0.5 * cross[k, nd - 1] * inv_h[nd - 1]
        dgl = 0.5 * cross_lim[k, nd - 1] * inv_h[nd - 1]
        r = c + st  # the first and last faces' b-neighbour is the cell itself (wall)
        _cross_run(0, 1, p, w, c, r, c, c + 1, r, r + 1, dg, dgl, jac, out, o)
        _cross_run(1, nl - 1, p, w, c, r, c - 1, c + 1, r - 1, r + 1, dg, dgl, jac, out, o)
        _cross_run(nl - 1, nl, p, w, c, r, c - 1, c, r - 1, r, dg, dgl, jac, out, o)


@helper
def _diagonal_stencil(l, r, lm, lp, rm, rp, positive):
    """Offsets (a, b, c, e) with 2h_b ∂_b w = w[a] − w[b] + w[c] − w[e] on the face between
    cells l and r, on the diagonal stencil matching the sign of D_ab (``positive``): the
    differences of r up and l down axis b, or the reverse. Chosen once per run of faces, so
    the loop loads contiguously: chosen per face, LLVM selected the addresses and gathered
    (4-D rate kernel, one thread, ns per cell update on a Zen 5 VM: 16·16·16·128 8.7 → 6.7;
    32⁴, with four 32-face runs per row, unchanged at 6.1)."""
    if positive:
        return rp, r, l, lm
    return r, rm, lp, l


@helper
def _saturated(g, gw, pl, pr, wl, wr, cap, jac):
    """The saturated cross term: g/(1 + (|g|/B)⁴)^¼ with B = cap·p of the cell the flow −g
    leaves (l for g < 0), i.e. sign(g)·min(|g|, B)/(1 + t⁴)^¼ with t = min/max of |g|, B.
    Unchanged where |g| ≪ B (relative change (|g|/B)⁴/4), never beyond ±B (a flow out of a
    cell at most cap times its density: positive), smooth (a hard clip made the 4-D Newton
    iteration stall at its kinks) and homogeneous of degree one. With ``jac`` its
    derivative at (g, B) applied to (gw, B_w). Branch-free, so the face loop vectorises."""
    left = g < 0.0
    ps = pl if left else pr
    sign_p = 1.0 if ps >= 0.0 else -1.0  # |p|: defined for negative densities too
    bound = cap * sign_p * ps
    bw = cap * sign_p * (wl if left else wr)
    a = abs(g)
    lo = min(a, bound)
    hi = max(a, bound)
    t = lo / (hi if hi > 0.0 else 1.0)
    t4 = t * t * t * t
    root = 1.0 / np.sqrt(np.sqrt(1.0 + t4))
    sign = -1.0 if left else 1.0
    if jac == SCHEME:
        return sign * lo * root
    below = a <= bound
    t5 = t4 * t
    return root / (1.0 + t4) * ((1.0 if below else t5) * gw +
                                (t5 if below else 1.0) * sign * bw)


@subroutine
def _cross_run(lo, hi, p, w, l, r, lm, lp, rm, rp, dg, dgl, jac, out, o):
    """out[o + j] −= (dg + dgl)·(2h_b ∂_b w) for the faces j in [lo, hi) between cells
    l + j and r + j (their b-neighbours at lm + j, lp + j, rm + j, rp + j; flat offsets,
    wrapping unsigned arithmetic): the negative of the cross-diffusive flux. dg = D_ab/(2h_b)
    of the linear part, on the diagonal stencil matching its sign; dgl that of the
    saturated part (:func:`_saturated`, flow out of a cell ≤ 4|dgl|·p = 2|D_ab|/h_b·p)."""
    l, r, lm, lp = np.uint64(l), np.uint64(r), np.uint64(lm), np.uint64(lp)
    rm, rp, o = np.uint64(rm), np.uint64(rp), np.uint64(o)
    if dg != 0.0:
        a, b, c, e = _diagonal_stencil(l, r, lm, lp, rm, rp, dg > 0.0)
        for j in range(np.uint64(lo), np.uint64(hi)):
            out[o + j] -= dg * (w[a + j] - w[b + j] + w[c + j] - w[e + j])
    if dgl != 0.0:
        cap = 4.0 * abs(dgl)
        a, b, c, e = _diagonal_stencil(l, r, lm, lp, rm, rp, dgl > 0.0)
        for j in range(np.uint64(lo), np.uint64(hi)):
            g = dgl * (p[a + j] - p[b + j] + p[c + j] - p[e + j])
            gw = dgl * (w[a + j] - w[b + j] + w[c + j] - w[e + j])
            out[o + j] -= _saturated(g, gw, p[l + j], p[r + j], w[l + j], w[r + j], cap, jac)


@helper
def _padded_row(src, c, nl, pad):
    """pad[:nl + 3] = the row src[c:c + nl] with its first cell once before it and its last
    cell twice after it: a wall counts as the cell itself."""
    c, n = np.uint64(c), np.uint64(nl)
    pad[0] = src[c]
    for j in range(n):
        pad[j + np.uint64(1)] = src[c + j]
    pad[nl + 1] = pad[nl + 2] = src[c + n - np.uint64(1)]


@helper
def _last_row_flux(c, idx, p, w, jac, shape, strides, vel0, velg, dif, cross, cross_lim,
                   inv_h, modes, out, o, padw, padp):
    """out[o:o + nl − 1] = fluxes through the interior faces along the last axis of the row
    starting at flat cell c; out[o + nl − 1] is scratch. padw, padp: scratch of nl + 3."""
    nd = shape.size
    nl = shape[nd - 1]
    k = nd - 1
    u0 = _row_velocity(k, idx, 0, vel0, velg)
    # one run over all nl faces of the padded row, the wall face nl − 1 included (its value
    # unused): with the two faces next to the walls computed apart, and the run's scalar
    # remainder, the 48² SSP step took 13-17 % longer on one thread (10.7-11.0 → 9.2-9.6 ms
    # for the benchmark transient), 256² alike
    _padded_row(w, c, nl, padw)
    if jac == JACOBIAN:
        _padded_row(p, c, nl, padp)
        pr = padp
    else:
        pr = padw
    _outer_run(0, nl, u0, velg[k, k], dif[k], padw, pr, 0, 1, 2, 3, jac, modes, k, out, o)
    b = nd - 2
    if nd >= 2 and (cross[k, b] != 0.0 or cross_lim[k, b] != 0.0):
        # −D_kb ∂_b w, b the last outer axis
        dg = 0.5 * cross[k, b] * inv_h[b]
        dgl = 0.5 * cross_lim[k, b] * inv_h[b]
        cp = c + strides[b] if idx[b] < shape[b] - 1 else c
        cm = c - strides[b] if idx[b] > 0 else c
        _cross_run(0, nl - 1, p, w, c, c + 1, cm, cp, cm + 1, cp + 1, dg, dgl, jac, out, o)


@helper
def _row_index(row, shape, idx):
    """Fill idx[:-1] with the outer-axis indices of row ``row``."""
    div = 1
    for k in range(shape.size - 2, -1, -1):
        idx[k] = (row // div) % shape[k]
        div *= shape[k]


@helper
def _next_row_index(shape, idx):
    """Advance idx[:-1], the outer-axis indices of a row, to the next row's."""
    for k in range(shape.size - 2, -1, -1):
        idx[k] += 1
        if idx[k] < shape[k]:
            return
        idx[k] = 0


@helper
def _row_rate(row, r0, idx, p, w, jac, shape, strides, vel0, velg, dif, cross, cross_lim,
              inv_h, acc, buf, ring, padw, padp, modes):
    """The divergence −∇·F(w) of one row of a task that started at row r0, in two parts:
    acc = the outer axes' part, buf[1:nl] = the last axis' interior face fluxes between
    buf[0] = buf[nl] = 0 (the walls); the row's rate is acc[j] + (buf[j] − buf[j + 1])·
    inv_h[-1], which :func:`_task_rows` adds as it stores. acc: scratch of the row's
    length, buf of nl + 1; ``ring`` holds, per outer axis k, the right-face fluxes of the
    last strides[k]/nl rows: the left faces of this row are the right faces of the row one
    step down axis k, computed once (again only where that row precedes r0). Each outer
    axis' fluxes go to buf and then, in one loop, into acc and the ring (a loop each for
    the left and right faces, one to clear acc and one for the last axis: one thread, ns
    per cell update, same bits: 256² 2.00 → 1.94, 32⁴ 6.08 → 5.94, 16·16·16·128 6.65 →
    6.30)."""
    nd = shape.size
    nl = shape[nd - 1]
    c = row * nl
    off = 0
    for k in range(nd - 1):
        ik = idx[k]
        ih = inv_h[k]
        step = 1  # rows between neighbours along axis k ...
        phase = 0  # ... and row % step, from the indices (integer division is slow)
        for m in range(nd - 2, k, -1):
            phase += idx[m] * step
            step *= shape[m]
        slot = np.uint64(off + phase * nl)
        left = ik > 0
        if left and row - step < r0:
            _outer_row_flux(k, c - strides[k], ik - 1, idx, p, w, jac, shape, strides, vel0,
                            velg, dif, cross, cross_lim, inv_h, modes, ring, slot)
        # acc = (acc + left face·ih) − right face·ih, acc taken as 0 on the first axis
        first = k == 0
        if ik < shape[k] - 1:
            _outer_row_flux(k, c, ik, idx, p, w, jac, shape, strides, vel0, velg, dif, cross,
                            cross_lim, inv_h, modes, buf, 0)
            for j in range(np.uint64(nl)):
                old = ring[slot + j] if left else 0.0
                new = buf[j]
                ring[slot + j] = new
                acc[j] = ((0.0 if first else acc[j]) + old * ih) - new * ih
        else:  # the last cell along axis k: its left faces only
            for j in range(np.uint64(nl)):
                acc[j] = (0.0 if first else acc[j]) + ring[slot + j] * ih
        off += strides[k]
    _last_row_flux(c, idx, p, w, jac, shape, strides, vel0, velg, dif, cross, cross_lim,
                   inv_h, modes, buf, 1, padw, padp)
    buf[0] = buf[nl] = 0.0


@helper
def _rows_per_task(n_rows, tasks):
    """Rows per parallel task for ``tasks`` tasks (callers pass the thread count: one
    contiguous block per thread; prange schedules statically, so more tasks only repeated
    the per-task set-up and halo faces: 16 tasks on 2 threads made the SSP step 18-27 %
    slower on 24²-96² grids). The result does not depend on it."""
    tasks = max(1, min(n_rows, tasks))
    return (n_rows + tasks - 1) // tasks


@helper
def _task_scratch(shape, strides):
    """A task's scratch (idx, acc, buf, padw, padp, ring, modes) for :func:`_task_rows`
    (modes: :func:`_outer_run`'s, smooth first on every axis)."""
    nd = shape.size
    nl = shape[nd - 1]
    ring_size = 0
    for k in range(nd - 1):
        ring_size += strides[k]
    return (np.zeros(nd, dtype=np.int64), np.empty(nl), np.empty(nl + 1), np.empty(nl + 3),
            np.empty(nl + 3), np.empty(ring_size), np.ones(nd, dtype=np.bool_))


@helper
def _borrowed_operator(shape, strides, vel0, velg, dif, cross, cross_lim, inv_h):
    """The operator's arrays (:meth:`FPOperator.kernel_args`) as borrowed views."""
    return (borrowed(shape), borrowed(strides), borrowed(vel0), borrowed(velg),
            borrowed(dif), borrowed(cross), borrowed(cross_lim), borrowed(inv_h))


@helper
def _task_rows(task, per, p, w, jac, a, x, b, c, shape, strides, vel0, velg, dif, cross,
               cross_lim, inv_h, stream, flush, scratch, out):
    """Rows [task·per, task·per + per) of out = a·x + b·w + c·L(w) (L the scheme's rate,
    or its Jacobian at p applied to w with ``jac``), values of magnitude below ``flush``
    stored as 0 (NaN kept); ``scratch`` from :func:`_task_scratch` holds the ring buffer.
    Each row first prefetches the rows its successors will reach (PREFETCH_AHEAD).
    ``stream``: write out with non-temporal stores (:mod:`fpsolver.fv.stores`). The rows
    work on borrowed views of every array (:mod:`fpsolver.borrow`), which the caller
    holds for the call: the reference counting of the arrays passed to the helpers per row
    took half the time of a 24-cell row (one thread: 10.9-11.4 → 5.7-6.0 ns per cell
    update; benchmark transient, two threads, best of three interleaved runs: 48² 15.6 →
    11.1 ms, 64² 39.1 → 28.7, 96² 102 → 78, 128² 246 → 192 ms; 4-D 32⁴ rate kernel, two
    threads, 0.08-0.11e9 → 0.12-0.19e9 cells/s)."""
    p, w, x, out = borrowed(p), borrowed(w), borrowed(x), borrowed(out)
    shape, strides, vel0, velg, dif, cross, cross_lim, inv_h = _borrowed_operator(
        shape, strides, vel0, velg, dif, cross, cross_lim, inv_h)
    idx, acc, buf = borrowed(scratch[0]), borrowed(scratch[1]), borrowed(scratch[2])
    padw, padp, ring = borrowed(scratch[3]), borrowed(scratch[4]), borrowed(scratch[5])
    modes = borrowed(scratch[6])
    nd = shape.size
    nl = shape[nd - 1]
    n_rows = w.size // nl
    r0 = task * per
    n = np.uint64(w.size)
    ih = inv_h[nd - 1]
    src = w if a == 0.0 else x  # x is not read when its weight is 0
    _row_index(r0, shape, idx)
    for row in range(r0, min(n_rows, r0 + per)):
        for k in range(nd - 1):  # the farthest rows this task reads next along axis k
            ahead = np.uint64(row * nl + 2 * strides[k] + PREFETCH_AHEAD)
            if ahead + np.uint64(nl) <= n:
                for j in range(np.uint64(0), np.uint64(nl), np.uint64(8)):  # 64-B lines
                    prefetch(w, ahead + j)
                    if jac == JACOBIAN:
                        prefetch(p, ahead + j)
        if jac == JACOBIAN:
            _row_rate(row, r0, idx, p, w, JACOBIAN, shape, strides, vel0, velg, dif, cross,
                      cross_lim, inv_h, acc, buf, ring, padw, padp, modes)
        else:  # SCHEME, FIRST_ORDER: p is not read
            _row_rate(row, r0, idx, w, w, jac, shape, strides, vel0, velg, dif, cross,
                      cross_lim, inv_h, acc, buf, ring, padw, padp, modes)
        o = np.uint64(row * nl)
        if stream:
            for j in range(np.uint64(nl)):
                rate = acc[j] + (buf[j] - buf[j + np.uint64(1)]) * ih
                v = a * src[o + j] + b * w[o + j] + c * rate
                stream_store(out, o + j, 0.0 if abs(v) < flush else v)
        else:
            for j in range(np.uint64(nl)):
                rate = acc[j] + (buf[j] - buf[j + np.uint64(1)]) * ih
                v = a * src[o + j] + b * w[o + j] + c * rate
                out[o + j] = 0.0 if abs(v) < flush else v
        _next_row_index(shape, idx)
    if stream:
        store_fence()


@kernel
def rate_kernel(p, w, jac, shape, strides, vel0, velg, dif, cross, cross_lim, inv_h, stream,
                tasks, out):
    """out = −∇·F(w) (flat, N): the scheme's dp/dt at w, or its Jacobian at p times w.
    One task per thread takes a contiguous range of rows; each face flux is computed once,
    except the left faces of a task's first rows along each outer axis. ``stream``:
    non-temporal stores into out (for grids larger than the cache); ``tasks``: parallel
    tasks (:func:`_rows_per_task`)."""
    nl = shape[shape.size - 1]
    n_rows = w.size // nl
    per = _rows_per_task(n_rows, tasks)
    for task in prange((n_rows + per - 1) // per):
        _task_rows(task, per, p, w, jac, 0.0, w, 0.0, 1.0, shape, strides, vel0, velg, dif,
                   cross, cross_lim, inv_h, stream, 0.0, _task_scratch(shape, strides), out)


@kernel
def colour_probe_kernel(p, colour, jac, shape, strides, vel0, velg, dif, cross, cross_lim,
                        inv_h, out):
    """out[q] = the Jacobian at p (``jac`` = JACOBIAN; FIRST_ORDER: W, p unused) applied to
    the indicator of colour q (``colour`` (N,) int), for q < out.shape[0] (out (Q, N)): the
    probes of :func:`fpsolver.fv.assemble.jacobian_matrix` in one call, a probe per task,
    each over all rows on one thread (25 calls of :func:`rate_kernel` from Python spent
    most of their time in dispatch: the whole 32² assembly 0.90 → 0.34 ms)."""
    n = colour.size
    n_rows = n // shape[shape.size - 1]
    for q in prange(out.shape[0]):
        w = np.empty(n)
        for i in range(n):
            w[i] = 1.0 if colour[i] == q else 0.0
        pp = p if jac == JACOBIAN else w
        _task_rows(0, n_rows, pp, w, jac, 0.0, w, 0.0, 1.0, shape, strides, vel0, velg, dif,
                   cross, cross_lim, inv_h, False, 0.0, _task_scratch(shape, strides), out[q])


# SSP-RK(n², 3) with this n: n² stages, SSP coefficient n² − n. n = 10 needs 5-12 % fewer
# stages for the benchmark transient and ran it about that much faster (48²-96²), but
# takes 4.5× longer steps (time error ∝ step³) and 100-stage kernel calls
SSP_N = 5


def _ssp_stage_table(n):
    """(reads, writes, blend stage) of Ketcheson's low-storage SSP-RK(n², 3) (2008) over
    the buffers (p, s1, s2, out): stage i reads buffer reads[i] and writes writes[i]; the
    blend stage n(n + 1)/2 − 1 (from 0) also takes blend·s1, s1 holding the state after the
    first (n − 1)(n − 2)/2 stages. Built backwards from ``out``, the other stages
    alternating between s2 and out, so s1 is written once and p never (n ≥ 3: for n = 2
    the saved state would be p itself)."""
    if n < 3:
        raise ValueError(f"SSP-RK(n², 3) tables need n >= 3, got {n}")
    save = (n - 1) * (n - 2) // 2
    held = [3]  # held[-1]: the buffer that holds the state after the stages so far
    for stage in range(n * n - 1, 0, -1):
        held.append(1 if stage == save else 2 if held[-1] != 2 else 3)
    held = [0] + held[::-1]
    return tuple(held[:-1]), tuple(held[1:]), n * (n + 1) // 2 - 1


SSP_READS, SSP_WRITES, SSP_BLEND_STAGE = _ssp_stage_table(SSP_N)
SSP_STAGES = SSP_N * SSP_N  # rate evaluations per step
SSP_COEFFICIENT = float(SSP_N * SSP_N - SSP_N)  # positive up to this × the Euler bound
# the blend stage's weight n/(2n − 1) (≥ 1/2, so 1 − blend is exact: the two sum to 1)
SSP_BLEND = SSP_N / (2.0 * SSP_N - 1.0)


@kernel
def ssp_rk3_kernel(p, h, shape, strides, vel0, velg, dif, cross, cross_lim, inv_h, stream,
                   tasks, flush, s1, s2, out, stats):
    """``steps`` = stats.shape[0] SSP-RK(n², 3) steps from p (flat, N; s1, s2 scratch,
    none of them p): n² forward-Euler stages o = a·s1 + b·(w + h·L(w)) per step, each one
    pass over the rows, in one call (one call per stage from Python spent more time in
    dispatch than in the stages on grids up to ~100²; one call per step, with its tracker
    bookkeeping, 10 % of the benchmark transient at 44²). Step i reads p and writes out
    for even i, reads out and writes p for odd i: the result is in out for an odd number
    of steps, in p for an even one (p unchanged by one step). stats (steps, blocks, 3):
    per step and block of rows (:func:`_rows_per_task` with ``tasks``), the sum, minimum
    and maximum of the step's result (:func:`_block_stats`). ``stream``, ``tasks``: as
    :func:`rate_kernel`. The tasks stay alive
    across the stages: one per block of rows, each takes its own block first (its rows are
    in its core's cache) and any block not yet taken, and waits for the previous stage's
    last block on an atomic counter (:mod:`fpsolver.fv.sync`) instead of a fork-join of
    the thread pool per stage (benchmark transient, best of four runs, two threads: 48²
    17.1 → 14.2 ms, 128² 240 → 217 ms; two such runs at once on the two cores, 96²: 217-335
    → 101-122 ms). A task only waits for blocks that a running task has taken, so tasks
    run one after another on one thread finish too. Stage values of
    magnitude below ``flush`` are stored as 0: far tails that decay into subnormal numbers
    (below 2.2e-308) made every arithmetic operation on them ~100× slower (a displaced
    plain-SGD start at 128², 612 subnormal cells: 5.8 ms per step instead of 1.6 ms)."""
    nl = shape[shape.size - 1]
    n_rows = p.size // nl
    per = _rows_per_task(n_rows, tasks)
    blocks = (n_rows + per - 1) // per
    even, odd = (p, s1, s2, out), (out, s1, s2, p)
    stages = stats.shape[0] * SSP_STAGES
    taken = np.zeros(stages * blocks, dtype=np.int64)  # per stage and block: claimed
    done = np.zeros(stages, dtype=np.int64)  # per stage: blocks finished
    for worker in prange(blocks):
        scratch = _task_scratch(shape, strides)
        for stage in range(stages):
            step, in_step = stage // SSP_STAGES, stage % SSP_STAGES
            a = SSP_BLEND if in_step == SSP_BLEND_STAGE else 0.0
            b = 1.0 - a
            bufs = even if step % 2 == 0 else odd
            w = bufs[SSP_READS[in_step]]
            o = bufs[SSP_WRITES[in_step]]
            for j in range(blocks):  # its own block first (its rows are in its cache)
                block = (worker + j) % blocks
                if atomic_add(taken, stage * blocks + block, 1) > 0:
                    continue
                if stage > 0:
                    wait_for(done, stage - 1, blocks)
                _task_rows(block, per, w, w, SCHEME, a, s1, b, b * h, shape, strides, vel0,
                           velg, dif, cross, cross_lim, inv_h, stream, flush, scratch, o)
                if in_step == SSP_STAGES - 1:
                    lo = block * per * nl
                    total, low, high = _block_stats(o, lo, min(p.size, lo + per * nl))
                    stats[step, block, 0] = total
                    stats[step, block, 1] = low
                    stats[step, block, 2] = high
                atomic_add(done, stage, 1)


def ssp_stats_array(n_cells, row_length, tasks, steps=1):
    """An array for :func:`ssp_rk3_kernel`'s ``stats`` over ``steps`` steps with ``tasks``
    tasks: (steps, blocks of rows, 3)."""
    n_rows = n_cells // row_length
    return np.empty((steps, -(-n_rows // _rows_per_task(n_rows, tasks)), 3))


def ssp_stages(y, h, rate, store=None):
    """One SSP-RK(n², 3) step from y in numpy, through the same stage table as
    :func:`ssp_rk3_kernel` (its twin, and the step on the moment dynamics): stages of
    length h, ``rate(w)`` the right-hand side, ``store(x)`` what a stage keeps of its value
    x (default: x)."""
    bufs = [y, None, None, None]  # p, s1, s2, out
    for stage, (src, dst) in enumerate(zip(SSP_READS, SSP_WRITES)):
        a = SSP_BLEND if stage == SSP_BLEND_STAGE else 0.0
        w = bufs[src]
        x = (a * bufs[1] if a else 0.0) + (1.0 - a) * (w + h * rate(w))
        bufs[dst] = x if store is None else store(x)
    return bufs[SSP_WRITES[-1]]


# cells summed in order before their sum joins the block's (:func:`_block_stats`)
STATS_CHUNK = 256


@helper
def _block_stats(o, lo, hi):
    """(sum, min, max) of o[lo:hi]: the sum in chunks of STATS_CHUNK cells (rounding error
    of order (STATS_CHUNK + n/STATS_CHUNK)·ε instead of n·ε); NaN or inf make the sum
    non-finite."""
    total = 0.0
    low, high = np.inf, -np.inf
    for c in range(lo, hi, STATS_CHUNK):
        part = 0.0
        for j in range(np.uint64(c), np.uint64(min(hi, c + STATS_CHUNK))):
            v = o[j]
            part += v
            low = min(low, v)
            high = max(high, v)
        total += part
    return total, low, high


@helper
def _task_faces(task, per, p, w, jac, shape, strides, vel0, velg, dif, cross, cross_lim,
                inv_h, scratch, out):
    """Rows [task·per, task·per + per) of :func:`face_flux_kernel` (``out`` flat, ndim·N;
    ``scratch`` from :func:`_task_scratch`), on borrowed views as in :func:`_task_rows`."""
    p, w, out = borrowed(p), borrowed(w), borrowed(out)
    shape, strides, vel0, velg, dif, cross, cross_lim, inv_h = _borrowed_operator(
        shape, strides, vel0, velg, dif, cross, cross_lim, inv_h)
    idx, padw, padp = borrowed(scratch[0]), borrowed(scratch[3]), borrowed(scratch[4])
    modes = borrowed(scratch[6])
    nd = shape.size
    nl = shape[nd - 1]
    size = w.size
    r0 = task * per
    _row_index(r0, shape, idx)
    for row in range(r0, min(size // nl, r0 + per)):
        c = row * nl
        for k in range(nd - 1):
            if idx[k] < shape[k] - 1:
                _outer_row_flux(k, c, idx[k], idx, p, w, jac, shape, strides, vel0, velg,
                                dif, cross, cross_lim, inv_h, modes, out, k * size + c)
            else:
                for j in range(nl):
                    out[k * size + c + j] = 0.0
        _last_row_flux(c, idx, p, w, jac, shape, strides, vel0, velg, dif, cross,
                       cross_lim, inv_h, modes, out, (nd - 1) * size + c, padw, padp)
        out[(nd - 1) * size + c + nl - 1] = 0.0
        _next_row_index(shape, idx)


@kernel
def face_flux_kernel(p, w, jac, shape, strides, vel0, velg, dif, cross, cross_lim, inv_h,
                     tasks, out):
    """out[k, c] = flux of w through the right face of cell c along axis k (0 at walls);
    ``tasks`` as :func:`rate_kernel`."""
    nl = shape[shape.size - 1]
    n_rows = w.size // nl
    per = _rows_per_task(n_rows, tasks)
    flat = out.reshape(out.size)
    pp = p if jac == JACOBIAN else w
    for task in prange((n_rows + per - 1) // per):
        _task_faces(task, per, pp, w, jac, shape, strides, vel0, velg, dif, cross, cross_lim,
                    inv_h, _task_scratch(shape, strides), flat)


@helper
def _line_coefficients(u, wall, dh, inv_h):
    """(α, β) of the first-order line operator on a right face with velocity u: upwind
    u⁺ + D/h and u⁻ + D/h, divided by h; 0 on the wall face."""
    a = (max(u, 0.0) + dh) * inv_h
    b = (max(-u, 0.0) + dh) * inv_h
    return (0.0, 0.0) if wall else (a, b)


@helper
def _group_velocity(g, axis, shape, vel0, velg):
    """Face velocity along ``axis`` at the first cell of group g (g numbers the index
    combinations of the axes before ``axis``; the later axes' indices are 0)."""
    u = vel0[axis]
    for l in range(axis - 1, -1, -1):
        u += velg[axis, l] * (g % shape[l])
        g //= shape[l]
    return u


@helper
def _thomas_lanes(x, cp, ub, du, tau, dh, ih):
    """Solve (I − τT)y = x in place for each lane m of x (n, lanes), T the first-order line
    operator with face velocity ub[m] + du·i on the right face of cell i. The lane loop is
    innermost, contiguous and unsigned-indexed, so it vectorises; one division per cell."""
    n, lanes = x.shape
    a_prev = np.zeros(lanes)
    b_prev = np.zeros(lanes)
    for i in range(n):
        wall = i == n - 1
        first = i == 0
        ip = max(i - 1, 0)
        for m in range(np.uint64(lanes)):
            a, b = _line_coefficients(ub[m] + du * i, wall, dh, ih)
            low = -tau * a_prev[m]
            den = 1.0 + tau * (a + b_prev[m])
            if not first:
                den -= low * cp[ip, m]
            inv = 1.0 / den
            x[i, m] = (x[i, m] - (0.0 if first else low * x[ip, m])) * inv
            cp[i, m] = -tau * b * inv
            a_prev[m] = a
            b_prev[m] = b
    for i in range(n - 2, -1, -1):
        for m in range(np.uint64(lanes)):
            x[i, m] -= cp[i, m] * x[i + 1, m]


@kernel
def line_solve_kernel(tau, shape, strides, axis, vel0, velg, dif, inv_h, offsets, rhs, out):
    """Solve (I − τT_k)x = rhs along every line of ``axis`` k (Thomas algorithm).

    T_k is the first-order line operator: face flux α_c x_c − β_c x_{c+1} on the right face
    of cell c (α = (u⁺ + D_kk/h)/h, β = (u⁻ + D_kk/h)/h from the face velocity u; 0 on
    walls), so row c of I − τT_k is [−τα_{c−1}, 1 + τ(α_c + β_{c−1}), −τβ_c]: an M-matrix,
    no pivoting. Lines are eliminated in groups ("lanes") copied to a scratch array with
    the lane index contiguous: for outer axes the lines through a contiguous block of the
    later axes (``offsets[m]`` = Σ_{l>k} velg[k, l]·i_l of block cell m), for the last
    axis LANES consecutive rows (transposed in and out).
    """
    n = shape[axis]
    st = strides[axis]
    n_groups = rhs.size // (n * st)
    if st >= MIN_CONTIGUOUS_LANES:  # lanes: a contiguous piece of one group's block
        per_group = (st + LANES - 1) // LANES
        n_tasks = n_groups * per_group
    else:  # lanes: whole blocks of several groups
        per_group = 0
        n_tasks = (n_groups * st + LANES - 1) // LANES
    for task in prange(n_tasks):
        if per_group:
            g = task // per_group
            first = g * st + (task % per_group) * LANES  # lane = g·st + block cell
            width = min(g * st + st, first + LANES) - first
        else:
            first = task * LANES
            width = min(n_groups * st, first + LANES) - first
        base = np.empty(width, dtype=np.int64)
        ub = np.empty(width)
        g_prev = -1
        ug = 0.0
        for m in range(width):
            g, c = divmod(first + m, st)
            if g != g_prev:
                ug = _group_velocity(g, axis, shape, vel0, velg)
                g_prev = g
            base[m] = g * n * st + c
            ub[m] = ug + offsets[c]
        x = np.empty((n, width))
        cp = np.empty((n, width))
        if per_group:  # the lanes are contiguous: plain copies
            b0 = np.uint64(base[0])
            for i in range(n):
                row = b0 + np.uint64(i * st)
                for m in range(np.uint64(width)):
                    x[i, m] = rhs[row + m]
        else:  # lanes gathered from several groups (the last axis: a transposition)
            for i in range(n):
                for m in range(width):
                    x[i, m] = rhs[base[m] + i * st]
        _thomas_lanes(x, cp, ub, velg[axis, axis], tau, dif[axis], inv_h[axis])
        if per_group:
            for i in range(n):
                row = b0 + np.uint64(i * st)
                for m in range(np.uint64(width)):
                    out[row + m] = x[i, m]
        else:
            for i in range(n):
                for m in range(width):
                    out[base[m] + i * st] = x[i, m]
