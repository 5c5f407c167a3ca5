"""Numba CPU kernels of the selective scan: one pass over time per block of channels.

Imported lazily by :mod:`longllava_sdk.modeling.kernels.scan_numba` (importing this module
imports numba). Everything here works on NumPy views of torch tensors, in float32.

Why this shape of kernel (docs/selective_scan.md has the measurements):

* The scan is a recurrence in time but independent across channels. Each work item owns a
  block of ``W`` channels of one batch row and walks the whole sequence once, keeping the
  block's state ``h`` (N, W) in a small local array that stays in L1. Nothing of size
  (L, D, N) is ever written to memory: the (t, d, n) work is done in registers/L1, and memory
  traffic is just the (L, D) inputs and outputs once.
* The innermost loops run over the channels of the block (``j``), with ``n`` and ``t`` outside:
  every channel does the same arithmetic with its own ``dt``/``A``, so LLVM vectorises them
  (16 float32 lanes with AVX-512) without any horizontal reduction (``y = sum_n C_n h_n`` is
  accumulated lane-wise over the ``n`` loop).
* ``exp``/``log1p`` are written out below (range reduction + polynomial) because LLVM cannot
  vectorise calls to libm's ``expf`` (numba only gets vector ``exp`` from Intel SVML, which
  is not a dependency); a scalar ``expf`` per (t, d, n) would cost more than everything else.
* Every function uses ``error_model="numpy"``: numba's default Python error model checks each
  float division for zero, and that branch alone stops the vectoriser.
* Inputs reach the kernels as flat 1-D float32 buffers plus ``(batch, time, channel)``
  strides, so the transposed views the Jamba mixer passes (``delta`` and ``z`` are
  ``(B, L, D)`` memory seen as ``(B, D, L)``; ``u`` is ``(B, D, L)``) are read in place, tile
  by tile, without a copy. Outputs are written time-major ``(B, L, D)``.
* Parallelism: ``prange`` over work items (forward) or over groups of channel blocks
  (backward, where each group owns its own accumulators for the cross-channel gradients of
  ``B`` and ``C``, so no two threads write the same memory).

Recurrence (channel d, state n, step t; see scan_torch.py)::

    dt = softplus(delta + bias);  a = exp(dt * A) (0 at a reset);  h = a * h + dt * u * B
    y = sum_n C h;  out = (y + D u) * z * sigmoid(z)
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic

__all__ = ["scan_forward", "scan_backward", "exp_f32", "log1p_unit_f32", "jit", "TILE"]

#: Time steps of the input tiles the forward kernel reads at once (per block of channels).
TILE = 32

# Compilation options shared by every kernel. ``contract`` lets LLVM fuse a*b+c into FMAs;
# no ``reassoc``: it could undo the two-constant range reduction of ``exp_f32``.
_OPTS = dict(error_model="numpy", fastmath={"contract"}, nogil=True)
# Only the two dot products of the backward (sums over the channels of a block) may be
# reassociated, which is what lets LLVM vectorise them.
_REDUCE_OPTS = dict(error_model="numpy", fastmath={"contract", "reassoc"}, nogil=True)


def jit(**options):
    """``numba.njit(cache=True, **options)``, or without the cache where numba has none.

    The compiled kernels are cached next to this file or, when the package directory is
    read-only, in numba's user cache directory (``NUMBA_CACHE_DIR`` overrides both); numba
    refuses ``cache=True`` at decoration time only when it finds no writable place at all,
    and then the kernels are compiled in every process instead.
    """

    def decorate(function):
        try:
            return njit(cache=True, **options)(function)
        except RuntimeError:  # "cannot cache function ...: no locator available for file ..."
            return njit(**options)(function)

    return decorate

_F = np.float32
_ZERO, _HALF, _ONE, _TWO = _F(0.0), _F(0.5), _F(1.0), _F(2.0)
# exp: x = k ln2 + r, |r| <= ln2 / 2, exp(x) = 2^k exp(r). ln2 split in two (Cody-Waite) so
# that k * _LN2_HI is exact in float32 and r keeps full precision.
_LOG2E = _F(1.4426950408889634)
_LN2_HI = _F(0.693359375)
_LN2_LO = _F(-2.121944400546905828e-4)
# Arguments are clamped to where 2^k is a normal float32. Below -87 the result (< 1.7e-38)
# is a decay that has already wiped the state out; above 88 only sigmoid(-z) of a very
# negative gate can land, and there the clamp still gives 1 / (1 + e^88) == 0 in float32.
_EXP_LO, _EXP_HI = _F(-87.0), _F(88.0)
# Taylor coefficients 1/k! up to degree 7: truncation error 0.347^8 / 8! = 5e-9 relative.
_C2, _C3, _C4, _C5, _C6, _C7 = (_F(1 / 2), _F(1 / 6), _F(1 / 24), _F(1 / 120), _F(1 / 720), _F(1 / 5040))
# log1p(v) = 2 atanh(s), s = v / (2 + v) in [0, 1/3] for v in [0, 1]: odd series in s up to
# s^15 / 15 (next term (1/3)^17 / 17 = 5e-10 relative).
_L3, _L5, _L7, _L9, _L11, _L13, _L15 = (_F(1 / 3), _F(1 / 5), _F(1 / 7), _F(1 / 9), _F(1 / 11), _F(1 / 13), _F(1 / 15))


@intrinsic
def _pow2_f32(typingctx, k):
    """2^k for an integral float32 k in [-126, 127], built from the exponent bits."""
    if k != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        exponent = builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127))
        return builder.bitcast(builder.shl(exponent, ir.Constant(i32, 23)), ir.FloatType())

    return types.float32(types.float32), codegen


@jit(inline="always", **_OPTS)
def exp_f32(x):
    """exp(x) in float32, vectorisable; relative error ~1e-7 on [-87, 88] (clamped outside)."""
    x = x if x > _EXP_LO else _EXP_LO
    x = x if x < _EXP_HI else _EXP_HI
    k = np.floor(x * _LOG2E + _HALF)
    r = x - k * _LN2_HI
    r = r - k * _LN2_LO
    p = _C7
    p = p * r + _C6
    p = p * r + _C5
    p = p * r + _C4
    p = p * r + _C3
    p = p * r + _C2
    p = p * r + _ONE
    p = p * r + _ONE
    return p * _pow2_f32(k)


@jit(inline="always", **_OPTS)
def log1p_unit_f32(v):
    """log(1 + v) for v in [0, 1], float32, vectorisable (no cancellation for small v)."""
    s = v / (_TWO + v)
    s2 = s * s
    p = _L15
    p = p * s2 + _L13
    p = p * s2 + _L11
    p = p * s2 + _L9
    p = p * s2 + _L7
    p = p * s2 + _L5
    p = p * s2 + _L3
    p = p * s2 + _ONE
    return _TWO * s * p


@jit(inline="always", **_OPTS)
def _softplus(x):
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|): no overflow for any x."""
    ax = x if x > _ZERO else -x
    return (x if x > _ZERO else _ZERO) + log1p_unit_f32(exp_f32(-ax))


@jit(inline="always", **_OPTS)
def _sigmoid(x):
    return _ONE / (_ONE + exp_f32(-x))


@jit(**_OPTS)
def _load_tile(flat, strides, b, t0, d0, nt, w, tile):
    """tile[i, j] = x[b, t0 + i, d0 + j] for i < nt, j < w, x given as (flat, strides).

    ``strides`` = (batch, time, channel) in elements. Time-major memory (channel stride 1,
    e.g. ``delta`` and ``z`` from the Jamba mixer) is copied row by row; channel-major
    memory (time stride 1, e.g. ``u``) column by column, contiguous reads either way.
    """
    sb, st, sd = strides[0], strides[1], strides[2]
    base = b * sb + t0 * st + d0 * sd
    if sd == 1:
        for i in range(nt):
            row = flat[base + i * st: base + i * st + w]
            for j in range(w):
                tile[i, j] = row[j]
    elif st == 1:
        for j in range(w):
            col = flat[base + j * sd: base + j * sd + nt]
            for i in range(nt):
                tile[i, j] = col[i]
    else:
        for i in range(nt):
            for j in range(w):
                tile[i, j] = flat[base + i * st + j * sd]


@jit(**_OPTS)
def _store_tile(tile, nt, w, flat, strides, b, t0, d0):
    """x[b, t0 + i, d0 + j] = tile[i, j]: the inverse of :func:`_load_tile`, same layouts."""
    sb, st, sd = strides[0], strides[1], strides[2]
    base = b * sb + t0 * st + d0 * sd
    if sd == 1:
        for i in range(nt):
            row = flat[base + i * st: base + i * st + w]
            for j in range(w):
                row[j] = tile[i, j]
    elif st == 1:
        for j in range(w):
            col = flat[base + j * sd: base + j * sd + nt]
            for i in range(nt):
                col[i] = tile[i, j]
    else:
        for i in range(nt):
            for j in range(w):
                flat[base + i * st + j * sd] = tile[i, j]


@jit(**_OPTS)
def _time_steps(dt, nt, w, bias, d0, softplus):
    """In place: dt[i, j] <- softplus(dt[i, j] + bias[d0 + j]) (or without softplus)."""
    bb = bias[d0: d0 + w]
    if softplus:
        for i in range(nt):
            for j in range(w):
                dt[i, j] = _softplus(dt[i, j] + bb[j])
    else:
        for i in range(nt):
            for j in range(w):
                dt[i, j] = dt[i, j] + bb[j]


@jit(**_OPTS)
def _forward_block(b, d0, w, delta, delta_s, u, u_s, z, z_s, A_t, B, C, Dskip, bias, h0, reset,
                   out, last, ckpt, has_z, has_h0, has_reset, softplus, save_ckpt, chunk, width):
    """One work item of :func:`scan_forward`: channels d0:d0+w of batch row b, all steps."""
    length = B.shape[1]
    n_state = B.shape[2]
    a_blk = np.empty((n_state, width), dtype=np.float32)
    h = np.zeros((n_state, width), dtype=np.float32)
    for n in range(n_state):
        for j in range(w):
            a_blk[n, j] = A_t[n, d0 + j]
            if has_h0:
                h[n, j] = h0[b, d0 + j, n]
    d_blk = Dskip[d0: d0 + w]
    dt = np.empty((TILE, width), dtype=np.float32)
    uu = np.empty((TILE, width), dtype=np.float32)
    zz = np.empty((TILE, width), dtype=np.float32)
    y = np.empty(width, dtype=np.float32)
    for t0 in range(0, length, TILE):
        nt = min(TILE, length - t0)
        _load_tile(delta, delta_s, b, t0, d0, nt, w, dt)
        _time_steps(dt, nt, w, bias, d0, softplus)
        _load_tile(u, u_s, b, t0, d0, nt, w, uu)
        if has_z:
            _load_tile(z, z_s, b, t0, d0, nt, w, zz)
        for i in range(nt):
            t = t0 + i
            if save_ckpt and t % chunk == 0:  # state entering chunk t // chunk
                ck = ckpt[b, t // chunk]
                for n in range(n_state):
                    for j in range(w):
                        ck[n, d0 + j] = h[n, j]
            if has_reset and reset[b, t]:
                h[:, :w] = _ZERO
            for j in range(w):
                y[j] = _ZERO
            # (Direct 2-D indexing: a row view per (t, n) would cost two atomic refcount
            # updates per row, more than the arithmetic on it.)
            for n in range(n_state):
                bn = B[b, t, n]
                cn = C[b, t, n]
                for j in range(w):
                    dtj = dt[i, j]
                    hv = exp_f32(dtj * a_blk[n, j]) * h[n, j] + dtj * uu[i, j] * bn
                    h[n, j] = hv
                    y[j] += cn * hv
            o = out[b, t, d0: d0 + w]
            if has_z:
                for j in range(w):
                    zj = zz[i, j]
                    o[j] = (y[j] + d_blk[j] * uu[i, j]) * zj * _sigmoid(zj)
            else:
                for j in range(w):
                    o[j] = y[j] + d_blk[j] * uu[i, j]
    for n in range(n_state):
        for j in range(w):
            last[b, d0 + j, n] = h[n, j]


@jit(parallel=True, **_OPTS)
def scan_forward(delta, delta_s, u, u_s, z, z_s, A_t, B, C, Dskip, bias, h0, reset,
                 out, last, ckpt, has_z, has_h0, has_reset, softplus, save_ckpt, chunk, width):
    """Forward selective scan, fused from ``delta`` to the gated output.

    Args (float32 unless said; Bt batch, L steps, D channels, N state size):
        delta, u, z: flat buffers with (batch, time, channel) element strides ``*_s``
            (int64 (3,)); ``z`` is ignored unless ``has_z``.
        A_t: (N, D) = A transposed.  B, C: (Bt, L, N).  Dskip, bias: (D,) (zeros when unused).
        h0: (Bt, D, N) initial state, read if ``has_h0``.  reset: (Bt, L) uint8, read if
            ``has_reset``: nonzero at t zeroes the state before step t.
        out: (Bt, L, D) written.  last: (Bt, D, N) written, the state after the last step.
        ckpt: (Bt, ceil(L / chunk), N, D) written if ``save_ckpt``: the state entering every
            chunk of ``chunk`` steps (before that step's reset), for the backward.
        width: channels per work item.
    """
    bsz = B.shape[0]
    dim = A_t.shape[1]
    n_blocks = (dim + width - 1) // width
    for item in prange(bsz * n_blocks):
        b = item // n_blocks
        d0 = (item % n_blocks) * width
        w = min(width, dim - d0)
        _forward_block(b, d0, w, delta, delta_s, u, u_s, z, z_s, A_t, B, C, Dskip, bias, h0, reset,
                       out, last, ckpt, has_z, has_h0, has_reset, softplus, save_ckpt, chunk, width)


@jit(**_REDUCE_OPTS)
def _dot_state(s, i, n, v, w):
    """sum_j s[i, n, j] * v[j] for j < w (reassociated, hence vectorised)."""
    acc = _ZERO
    for j in range(w):
        acc += s[i, n, j] * v[j]
    return acc


@jit(**_REDUCE_OPTS)
def _dot_row(g, n, v, w):
    """sum_j g[n, j] * v[j] for j < w (reassociated, hence vectorised)."""
    acc = _ZERO
    for j in range(w):
        acc += g[n, j] * v[j]
    return acc


@jit(**_OPTS)
def _backward_block(grp, b, d0, w, delta, delta_s, u, u_s, z, z_s, g_out, g_out_s, A_t, B, C, Dskip,
                    bias, reset, ckpt, g_last, g_delta, g_delta_s, g_u, g_u_s, g_z, g_z_s, g_A_blk, g_D_blk,
                    g_bias_blk, g_h0, g_B_part, g_C_part, has_z, has_reset, softplus, has_g_last, chunk,
                    width):
    """Backward of channels d0:d0+w of batch row b; adds into the *_blk accumulators (N or
    (N, width)) and into this group's g_B_part / g_C_part rows, writes the rest."""
    length = B.shape[1]
    n_state = B.shape[2]
    a_blk = np.empty((n_state, width), dtype=np.float32)
    g = np.zeros((n_state, width), dtype=np.float32)  # dL/dh at the current step
    for n in range(n_state):
        for j in range(w):
            a_blk[n, j] = A_t[n, d0 + j]
            if has_g_last:
                g[n, j] = g_last[b, d0 + j, n]
    d_blk = Dskip[d0: d0 + w]
    bb = bias[d0: d0 + w]
    # Per chunk: states (s[0] = entering state, s[i + 1] = after step i), decays, inputs.
    s = np.empty((chunk + 1, n_state, width), dtype=np.float32)
    decay = np.empty((chunk, n_state, width), dtype=np.float32)
    dt_raw = np.empty((chunk, width), dtype=np.float32)
    dt = np.empty((chunk, width), dtype=np.float32)
    uu = np.empty((chunk, width), dtype=np.float32)
    zz = np.empty((chunk, width), dtype=np.float32)
    go = np.empty((chunk, width), dtype=np.float32)
    y = np.empty((chunk, width), dtype=np.float32)
    # gradients of the chunk, stored in the layout of the caller's gradient buffers at its end
    gu_tile = np.empty((chunk, width), dtype=np.float32)
    gd_tile = np.empty((chunk, width), dtype=np.float32)
    gz_tile = np.empty((chunk, width), dtype=np.float32)
    gp = np.empty(width, dtype=np.float32)
    du = np.empty(width, dtype=np.float32)
    g_du = np.empty(width, dtype=np.float32)
    g_dt = np.empty(width, dtype=np.float32)
    n_chunks = (length + chunk - 1) // chunk
    for c in range(n_chunks - 1, -1, -1):
        t0 = c * chunk
        nt = min(chunk, length - t0)
        _load_tile(delta, delta_s, b, t0, d0, nt, w, dt_raw)
        for i in range(nt):
            for j in range(w):
                dt[i, j] = dt_raw[i, j]
        _time_steps(dt, nt, w, bias, d0, softplus)
        _load_tile(u, u_s, b, t0, d0, nt, w, uu)
        _load_tile(g_out, g_out_s, b, t0, d0, nt, w, go)
        if has_z:
            _load_tile(z, z_s, b, t0, d0, nt, w, zz)
        # Recompute the chunk's states from the checkpoint (a reset makes that step's decay 0).
        ck = ckpt[b, c]
        for n in range(n_state):
            for j in range(w):
                s[0, n, j] = ck[n, d0 + j]
        for i in range(nt):
            t = t0 + i
            keep = _ZERO if (has_reset and reset[b, t]) else _ONE
            for j in range(w):
                y[i, j] = _ZERO
            for n in range(n_state):
                bn = B[b, t, n]
                cn = C[b, t, n]
                for j in range(w):
                    dtj = dt[i, j]
                    a = exp_f32(dtj * a_blk[n, j]) * keep
                    decay[i, n, j] = a
                    hv = a * s[i, n, j] + dtj * uu[i, j] * bn
                    s[i + 1, n, j] = hv
                    y[i, j] += cn * hv
        # softplus'(x) = sigmoid(x), for the whole chunk at once (reuses dt_raw).
        if softplus:
            for i in range(nt):
                for j in range(w):
                    dt_raw[i, j] = _sigmoid(dt_raw[i, j] + bb[j])
        # Adjoint, backwards through the chunk.
        for i in range(nt - 1, -1, -1):
            t = t0 + i
            if has_z:
                for j in range(w):
                    zj = zz[i, j]
                    sg = _sigmoid(zj)
                    pre = y[i, j] + d_blk[j] * uu[i, j]
                    gp[j] = go[i, j] * zj * sg
                    gz_tile[i, j] = go[i, j] * pre * sg * (_ONE + zj * (_ONE - sg))
            else:
                for j in range(w):
                    gp[j] = go[i, j]
            for j in range(w):
                g_D_blk[j] += gp[j] * uu[i, j]
                du[j] = dt[i, j] * uu[i, j]
                g_du[j] = _ZERO
                g_dt[j] = _ZERO
            # (Direct indexing, no row views: see the forward block.)
            for n in range(n_state):
                bn = B[b, t, n]
                cn = C[b, t, n]
                for j in range(w):
                    g[n, j] += cn * gp[j]
                g_C_part[grp, b, t, n] += _dot_state(s, i + 1, n, gp, w)
                g_B_part[grp, b, t, n] += _dot_row(g, n, du, w)
                for j in range(w):
                    gj = g[n, j]
                    a = decay[i, n, j]
                    g_du[j] += gj * bn
                    x = gj * a * s[i, n, j]  # dL/d(dt A) at this step
                    g_dt[j] += x * a_blk[n, j]
                    g_A_blk[n, j] += x * dt[i, j]
                    g[n, j] = gj * a
            for j in range(w):
                gu_tile[i, j] = gp[j] * d_blk[j] + g_du[j] * dt[i, j]
                gd_tile[i, j] = g_dt[j] + g_du[j] * uu[i, j]
            if softplus:
                for j in range(w):
                    gd_tile[i, j] *= dt_raw[i, j]
            for j in range(w):
                g_bias_blk[j] += gd_tile[i, j]
        _store_tile(gu_tile, nt, w, g_u, g_u_s, b, t0, d0)
        _store_tile(gd_tile, nt, w, g_delta, g_delta_s, b, t0, d0)
        if has_z:
            _store_tile(gz_tile, nt, w, g_z, g_z_s, b, t0, d0)
    for n in range(n_state):
        for j in range(w):
            g_h0[b, d0 + j, n] = g[n, j]


@jit(parallel=True, **_OPTS)
def scan_backward(delta, delta_s, u, u_s, z, z_s, g_out, g_out_s, A_t, B, C, Dskip, bias, reset, ckpt,
                  g_last, g_delta, g_delta_s, g_u, g_u_s, g_z, g_z_s, g_A_t, g_D, g_bias, g_h0, g_B_part,
                  g_C_part, has_z, has_reset, softplus, has_g_last, chunk, width):
    """Gradients of :func:`scan_forward` (with its ``ckpt``), given g_out (and g_last).

    Args beyond scan_forward's (float32; G = g_B_part.shape[0] groups):
        g_out: flat buffer + strides, dL/d out.  g_last: (Bt, D, N), dL/d last, if has_g_last.
        g_delta, g_u, g_z: flat buffers + strides like the inputs, written (g_z only if has_z).  g_A_t: (N, D), g_D, g_bias:
        (D,), g_h0: (Bt, D, N) written.  g_B_part, g_C_part: (G, Bt, L, N), zero on entry; the
        caller sums them over G.
    Each group takes a contiguous range of channel blocks, for every batch row.
    """
    bsz = B.shape[0]
    n_state = B.shape[2]
    dim = A_t.shape[1]
    n_blocks = (dim + width - 1) // width
    n_groups = g_B_part.shape[0]
    for grp in prange(n_groups):
        for blk in range(grp * n_blocks // n_groups, (grp + 1) * n_blocks // n_groups):
            d0 = blk * width
            w = min(width, dim - d0)
            g_A_blk = np.zeros((n_state, width), dtype=np.float32)
            g_D_blk = np.zeros(width, dtype=np.float32)
            g_bias_blk = np.zeros(width, dtype=np.float32)
            for b in range(bsz):
                _backward_block(grp, b, d0, w, delta, delta_s, u, u_s, z, z_s, g_out, g_out_s, A_t, B, C,
                                Dskip, bias, reset, ckpt, g_last, g_delta, g_delta_s, g_u, g_u_s, g_z,
                                g_z_s, g_A_blk, g_D_blk, g_bias_blk, g_h0, g_B_part, g_C_part, has_z,
                                has_reset, softplus, has_g_last, chunk, width)
            for j in range(w):
                g_D[d0 + j] = g_D_blk[j]
                g_bias[d0 + j] = g_bias_blk[j]
                for n in range(n_state):
                    g_A_t[n, d0 + j] = g_A_blk[n, j]
