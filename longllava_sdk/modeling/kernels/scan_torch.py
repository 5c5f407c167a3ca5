"""The selective scan in torch: the reference / fallback path (any device, float64 too).

:func:`~longllava_sdk.modeling.kernels.interface.selective_scan` calls
:func:`selective_scan_torch` when neither mamba-ssm's CUDA kernel nor the numba CPU kernels
(:mod:`.scan_numba`) can take the tensors, or when ``LONGLLAVA_SCAN_BACKEND=torch``.

transformers' fallback for ``mamba_selective_scan`` loops over every time step in Python and
lets autograd keep every step, which makes training impractical on CPU (minutes at 1K tokens).
This path computes the same thing with the sequence cut into chunks:

* inside a chunk the recurrence runs step by step, but for many chunks at once (one Python
  iteration per position *within* a chunk, not per token);
* a short sequential pass over chunk boundaries carries the true states from chunk to chunk;
* every decay is ``exp`` of a non-positive number (``dt * A`` and cumulative sums of it inside
  a chunk), so nothing can overflow however long the decay horizon is;
* all arithmetic is float32 (float64 for float64 inputs), the output has the input dtype;
* the backward is a custom :class:`torch.autograd.Function` that keeps only the states at chunk
  boundaries and recomputes the states inside a chunk when it needs them.

Shapes (``Bt`` = batch, ``D`` = channels / ``intermediate_size``, ``N`` = state size,
``L`` = sequence length)::

    u, delta, z : (Bt, D, L)     A : (D, N) (negative)     B, C : (Bt, N, L)
    D, delta_bias : (D,)         initial_state : (Bt, D, N)  reset_mask : (Bt, L) bool

Recurrence (per batch row, channel d and state n)::

    dt_t = softplus(delta_t + delta_bias)             (or without softplus)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t  (h_{t-1} := 0 where reset_mask[t])
    y_t  = sum_n C_t h_t + D * u_t ;  out_t = y_t * silu(z_t)

See docs/selective_scan.md for the chunked form, the memory bound and the derivation of the
backward pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["selective_scan_torch", "MAX_GROUP_ELEMENTS"]

#: Upper bound on the number of elements of one (chunk_len, Bt, chunks, D, N) working tensor.
#: Chunks are processed in groups small enough to stay under it (at least one chunk per group),
#: so peak memory is a handful of such tensors, independent of the sequence length.
MAX_GROUP_ELEMENTS = 1 << 22


def selective_scan_torch(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    initial_state: torch.Tensor | None,
    reset_mask: torch.Tensor | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked torch scan; arguments as :func:`~.interface.selective_scan` (checked there).

    Returns:
        ``out`` ``(Bt, D, L)`` in ``u.dtype`` and the last state ``(Bt, D, N)`` in float32
        (float64 for float64 inputs); differentiable with respect to every float input.
    """
    return _SelectiveScanFunction.apply(
        u, delta, A, B, C, D, z, delta_bias, initial_state, reset_mask, bool(delta_softplus), int(chunk_size),
    )


# --------------------------------------------------------------------------------------------
# Layout helpers. Inside the scan everything is time-major per chunk: (T, Bt, nC, ...), so that
# the step t of every chunk is one contiguous slice x[t] of shape (Bt, G, D, N).
# --------------------------------------------------------------------------------------------


def _to_chunks(x: torch.Tensor, chunk: int, n_chunks: int, pad_value: float = 0.0) -> torch.Tensor:
    """(Bt, F, L) -> (T, Bt, nC, F), padding the end of the sequence with ``pad_value``."""
    bsz, feat, length = x.shape
    x = x.transpose(1, 2)
    pad = chunk * n_chunks - length
    if pad:
        x = F.pad(x, (0, 0, 0, pad), value=pad_value)
    return x.reshape(bsz, n_chunks, chunk, feat).permute(2, 0, 1, 3).contiguous()


def _from_chunks(x: torch.Tensor, length: int) -> torch.Tensor:
    """(T, Bt, nC, F) -> (Bt, F, L), dropping the padding."""
    chunk, bsz, n_chunks, feat = x.shape
    x = x.permute(1, 2, 0, 3).reshape(bsz, n_chunks * chunk, feat)[:, :length]
    return x.transpose(1, 2).contiguous()


class _Chunks:
    """The scan's inputs cut into chunks, plus the grouping of chunks that bounds memory.

    Because ``A`` does not depend on time, the decay accumulated over any span of steps is
    ``exp(A * sum(dt))``: the cumulative sums run over (T, Bt, nC, D) time steps, never over a
    (.., D, N) tensor, and ``A * sum(dt) <= 0`` always.
    """

    def __init__(self, dt, du, B, C, keep, A, chunk_size):
        bsz, dim, length = dt.shape
        self.length = length
        self.chunk = min(chunk_size, length)
        self.n_chunks = math.ceil(length / self.chunk)
        self.A = A  # (D, N)
        # Padded steps have dt = 0 and du = 0: decay exp(0) = 1 and no input, so the state
        # after the padding equals the state after the last real step.
        self.dt = _to_chunks(dt, self.chunk, self.n_chunks)  # (T, Bt, nC, D)
        self.du = _to_chunks(du, self.chunk, self.n_chunks)  # (T, Bt, nC, D)
        self.B = _to_chunks(B, self.chunk, self.n_chunks)  # (T, Bt, nC, N)
        self.C = _to_chunks(C, self.chunk, self.n_chunks)  # (T, Bt, nC, N)
        # keep = 0 where the state is reset before the step; (T, Bt, nC) or None.
        self.keep = None
        if keep is not None:
            self.keep = _to_chunks(keep[:, None, :], self.chunk, self.n_chunks, 1.0)[..., 0]
        per_chunk = self.chunk * bsz * dim * A.shape[1]
        step = max(1, MAX_GROUP_ELEMENTS // per_chunk)
        self.groups = [(g, min(g + step, self.n_chunks)) for g in range(0, self.n_chunks, step)]

    def _buffer(self, g0: int, g1: int) -> torch.Tensor:
        T, bsz, _, dim = self.dt.shape
        return self.dt.new_empty(T, bsz, g1 - g0, dim, self.A.shape[1])

    def decay(self, g0: int, g1: int) -> torch.Tensor:
        """Per-step decay ``exp(dt_t * A)`` (0 at a reset) for chunks g0:g1, (T, Bt, G, D, N)."""
        a = torch.mul(self.dt[:, :, g0:g1, :, None], self.A, out=self._buffer(g0, g1)).exp_()
        if self.keep is not None:
            a.mul_(self.keep[:, :, g0:g1, None, None])
        return a

    def inputs(self, g0: int, g1: int) -> torch.Tensor:
        """``dt_t * u_t * B_t`` for chunks g0:g1, (T, Bt, G, D, N)."""
        return torch.mul(
            self.du[:, :, g0:g1, :, None], self.B[:, :, g0:g1, None, :], out=self._buffer(g0, g1)
        )

    def output_grads(self, gy: torch.Tensor, g0: int, g1: int) -> torch.Tensor:
        """``C_t outer gy_t`` (what y_t sends back to h_t) for chunks g0:g1, (T, Bt, G, D, N)."""
        return torch.mul(
            gy[:, :, g0:g1, :, None], self.C[:, :, g0:g1, None, :], out=self._buffer(g0, g1)
        )

    def total_decay(self) -> torch.Tensor:
        """Decay across each whole chunk, ``exp(A * sum_t dt_t)`` (0 if reset), (nC, Bt, D, N)."""
        total = torch.exp(self.dt.sum(0).transpose(0, 1)[..., None] * self.A)
        if self.keep is not None:
            total.mul_(self.keep.prod(0).transpose(0, 1)[..., None, None])
        return total


def _run_recurrence(a: torch.Tensor, x: torch.Tensor, start: torch.Tensor | None) -> torch.Tensor:
    """In place on ``x``: x[t] <- a[t] * x[t-1] + x[t] with x[-1] := start; returns x.

    One Python iteration per position in the chunk; each updates all chunks of the group.
    """
    if start is not None:
        x[0].addcmul_(a[0], start)
    for t in range(1, x.shape[0]):
        x[t].addcmul_(a[t], x[t - 1])
    return x


def _final_local_state(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """State at the end of each chunk when the chunk starts from zero, (Bt, G, D, N).

    Same recurrence as :func:`_run_recurrence` but keeps only the running state, so ``x``
    stays intact for the second pass.
    """
    h = x[0]
    for t in range(1, x.shape[0]):
        h = torch.addcmul(x[t], a[t], h)
    return h.clone() if x.shape[0] == 1 else h


def _scan_forward(ch: _Chunks, h0: torch.Tensor | None):
    """Returns y (T, Bt, nC, D) and the boundary states H (nC + 1, Bt, D, N); H[c] enters chunk c."""
    T, bsz, n_chunks, dim = ch.dt.shape
    n = ch.A.shape[1]
    single = len(ch.groups) == 1

    # Pass 1 (chunks in parallel): each chunk's end state when it starts from zero.
    end_local = ch.dt.new_empty(n_chunks, bsz, dim, n)
    kept = None
    if n_chunks > 1:
        for g0, g1 in ch.groups:
            a, x = ch.decay(g0, g1), ch.inputs(g0, g1)
            end_local[g0:g1] = _final_local_state(a, x).transpose(0, 1)
            kept = (a, x) if single else None
            del a, x

    # The short sequential pass: carry the true state across chunk boundaries.
    H = ch.dt.new_empty(n_chunks + 1, bsz, dim, n)
    if h0 is None:
        H[0].zero_()
    else:
        H[0].copy_(h0)
    total = ch.total_decay()
    for c in range(n_chunks - 1):
        torch.addcmul(end_local[c], total[c], H[c], out=H[c + 1])
    del end_local

    # Pass 2 (chunks in parallel): rerun each chunk from its true incoming state, read y out.
    y = ch.dt.new_empty(T, bsz, n_chunks, dim)
    for g0, g1 in ch.groups:
        a, x = kept if kept is not None else (ch.decay(g0, g1), ch.inputs(g0, g1))
        kept = None
        hs = _run_recurrence(a, x, H[g0:g1].transpose(0, 1))
        if g1 == n_chunks:
            H[-1] = hs[-1, :, -1]
        torch.matmul(hs, ch.C[:, :, g0:g1, :, None], out=y[:, :, g0:g1, :, None])
        del a, x, hs
    return y, H


def _scan_backward(ch: _Chunks, H: torch.Tensor, gy: torch.Tensor, g_last: torch.Tensor | None):
    """Gradients of the core scan.

    Args:
        ch: the chunked inputs; H: boundary states from the forward (nC + 1, Bt, D, N);
        gy: gradient w.r.t. y, (T, Bt, nC, D); g_last: gradient w.r.t. H[nC] or None.

    Returns:
        g_dt, g_du (T, Bt, nC, D), g_B, g_C (T, Bt, nC, N), g_A (D, N), g_h0 (Bt, D, N).
    """
    T, bsz, n_chunks, dim = ch.dt.shape
    n = ch.A.shape[1]
    single = len(ch.groups) == 1

    # Pass 1 (chunks in parallel, backwards in time): the adjoint recurrence from a zero
    # terminal gives what each chunk's own outputs send back to its incoming state.
    into_start = ch.dt.new_empty(n_chunks, bsz, dim, n)
    kept = None
    for g0, g1 in ch.groups:
        a, q = ch.decay(g0, g1), ch.output_grads(gy, g0, g1)
        g = q[T - 1]
        for t in range(T - 2, -1, -1):
            g = torch.addcmul(q[t], a[t + 1], g)
        into_start[g0:g1] = (a[0] * g).transpose(0, 1)
        kept = (a, q) if single else None
        del a, q, g

    # Pass 2 (sequential over chunks, backwards): gradient w.r.t. the state at each chunk end.
    total = ch.total_decay()
    g_end = ch.dt.new_empty(n_chunks, bsz, dim, n)
    if g_last is None:
        g_end[-1].zero_()
    else:
        g_end[-1].copy_(g_last)
    for c in range(n_chunks - 1, 0, -1):
        torch.addcmul(into_start[c], total[c], g_end[c], out=g_end[c - 1])
    g_h0 = into_start[0] + total[0] * g_end[0]
    del into_start, total

    # Pass 3 (chunks in parallel): recompute the states inside the chunks from the stored
    # boundary states, rerun the adjoint recurrence with the true terminals, reduce to grads.
    g_dt = torch.empty_like(ch.dt)
    g_du = torch.empty_like(ch.du)
    g_B = torch.empty_like(ch.B)
    g_C = torch.empty_like(ch.C)
    g_A = torch.zeros_like(ch.A)
    for g0, g1 in ch.groups:
        a, gh = kept if kept is not None else (ch.decay(g0, g1), ch.output_grads(gy, g0, g1))
        kept = None
        start = H[g0:g1].transpose(0, 1)  # (Bt, G, D, N)
        hs = _run_recurrence(a, ch.inputs(g0, g1), start)
        # gh[t] = dL/dh_t = C_t gy_t + a[t+1] gh[t+1], ending with the chunk-end gradient.
        gh[-1].add_(g_end[g0:g1].transpose(0, 1))
        for t in range(T - 2, -1, -1):
            gh[t].addcmul_(a[t + 1], gh[t + 1])
        # y_t = C_t . h_t ; x_t = du_t * B_t
        torch.matmul(gy[:, :, g0:g1, None, :], hs, out=g_C[:, :, g0:g1, None, :])
        torch.matmul(gh, ch.B[:, :, g0:g1, :, None], out=g_du[:, :, g0:g1, :, None])
        torch.matmul(ch.du[:, :, g0:g1, None, :], gh, out=g_B[:, :, g0:g1, None, :])
        # dL/d(dt_t A) = gh_t * a_t * h_{t-1}
        g_dtA = a.mul_(gh)
        del gh
        g_dtA[1:].mul_(hs[:-1])
        g_dtA[0].mul_(start)
        del hs
        g_dt[:, :, g0:g1] = (g_dtA * ch.A).sum(-1)
        g_A += g_dtA.mul_(ch.dt[:, :, g0:g1, :, None]).sum((0, 1, 2))
        del g_dtA, a
    return g_dt, g_du, g_B, g_C, g_A, g_h0


class _SelectiveScanFunction(torch.autograd.Function):
    """Whole selective scan (bias, softplus, SSM, D skip, z gate) with a recomputing backward."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, reset_mask, softplus, chunk_size):
        # Autocast would run the matmuls below in bf16/fp16; the scan must accumulate in fp32.
        with torch.autocast(device_type=u.device.type, enabled=False):
            return _SelectiveScanFunction._forward(
                ctx, u, delta, A, B, C, D, z, delta_bias, h0, reset_mask, softplus, chunk_size
            )

    @staticmethod
    def _forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, reset_mask, softplus, chunk_size):
        cdt = torch.float64 if u.dtype == torch.float64 else torch.float32
        uf, delta_f = u.to(cdt), delta.to(cdt)
        dt_raw = delta_f if delta_bias is None else delta_f + delta_bias.to(cdt)[:, None]
        dt = F.softplus(dt_raw) if softplus else dt_raw
        keep = None if reset_mask is None else (~reset_mask).to(cdt)
        ch = _Chunks(dt, dt * uf, B.to(cdt), C.to(cdt), keep, A.to(cdt), chunk_size)
        y_chunks, H = _scan_forward(ch, None if h0 is None else h0.to(cdt))
        y = _from_chunks(y_chunks, ch.length)
        del ch, y_chunks
        out = y if D is None else y + D.to(cdt)[:, None] * uf
        if z is not None:
            out = out * F.silu(z.to(cdt))
        last_state = H[-1].clone()

        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, h0, reset_mask, H, y)
        ctx.softplus = softplus
        ctx.chunk_size = chunk_size
        ctx.device_type = u.device.type
        return out.to(u.dtype), last_state

    @staticmethod
    def backward(ctx, g_out, g_last):
        with torch.autocast(device_type=ctx.device_type, enabled=False):
            return _SelectiveScanFunction._backward(ctx, g_out, g_last)

    @staticmethod
    def _backward(ctx, g_out, g_last):
        u, delta, A, B, C, D, z, delta_bias, h0, reset_mask, H, y = ctx.saved_tensors
        cdt = H.dtype
        uf, delta_f = u.to(cdt), delta.to(cdt)
        dt_raw = delta_f if delta_bias is None else delta_f + delta_bias.to(cdt)[:, None]
        dt = F.softplus(dt_raw) if ctx.softplus else dt_raw
        g_out = torch.zeros_like(uf) if g_out is None else g_out.to(cdt)

        # Gate and skip: out = (y + D u) * silu(z)
        g_z = None
        if z is not None:
            zf = z.to(cdt)
            sig = torch.sigmoid(zf)
            pre_gate = y if D is None else y + D.to(cdt)[:, None] * uf
            if ctx.needs_input_grad[6]:
                g_z = g_out * pre_gate * sig * (1 + zf * (1 - sig))
            g_pre = g_out * zf * sig
        else:
            g_pre = g_out
        g_D = None
        g_u = torch.zeros_like(uf)
        if D is not None:
            g_D = (g_pre * uf).sum((0, 2))
            g_u += g_pre * D.to(cdt)[:, None]

        keep = None if reset_mask is None else (~reset_mask).to(cdt)
        ch = _Chunks(dt, dt * uf, B.to(cdt), C.to(cdt), keep, A.to(cdt), ctx.chunk_size)
        gy = _to_chunks(g_pre, ch.chunk, ch.n_chunks)
        g_dt_c, g_du_c, g_B_c, g_C_c, g_A, g_h0 = _scan_backward(
            ch, H, gy, None if g_last is None else g_last.to(cdt)
        )
        length = ch.length
        del ch, gy
        g_du = _from_chunks(g_du_c, length)
        g_dt = _from_chunks(g_dt_c, length) + g_du * uf
        g_u += g_du * dt
        if ctx.softplus:
            g_dt = g_dt * torch.sigmoid(dt_raw)
        g_bias = None if delta_bias is None else g_dt.sum((0, 2)).to(delta_bias.dtype)

        def cast(g, like):
            return None if like is None else g.to(like.dtype)

        return (
            cast(g_u, u),
            cast(g_dt, delta),
            cast(g_A, A),
            cast(_from_chunks(g_B_c, length), B),
            cast(_from_chunks(g_C_c, length), C),
            None if D is None else g_D.to(D.dtype),
            None if z is None else (g_z.to(z.dtype) if g_z is not None else None),
            g_bias,
            None if h0 is None else g_h0.to(h0.dtype),
            None,
            None,
            None,
        )
