"""CPU fast path of the selective scan: the numba kernels behind a torch autograd Function.

:func:`~longllava_sdk.modeling.kernels.interface.selective_scan` calls
:func:`selective_scan_numba` for CPU tensors when :func:`numba_unavailable_reason` returns
``None``; otherwise it takes the chunked torch path (:mod:`.scan_torch`). This module only
converts between torch and the kernels of :mod:`.scan_numba_kernels` (imported on first use,
so importing the SDK does not import numba):

* tensors are handed over as NumPy views, without copies where the layout allows (see
  :func:`_flat`); the kernels compute in float32 whatever the input dtype (float64 inputs stay
  on the torch path, which computes in float64);
* forward without grad: one kernel call, nothing saved;
* forward with grad: the same kernel also writes the state at every ``chunk_size``-th step
  (``(Bt, ceil(L / chunk_size), N, D)`` floats); the backward kernel recomputes the states
  inside each chunk from those checkpoints, so memory stays ``O(L · D · N / chunk_size)``;
* numba runs as many threads as torch (``torch.get_num_threads()``; fewer for small problems),
  one kernel at a time (numba's ``workqueue`` threading layer must not be entered by two
  threads at once);
* the kernels are compiled (or loaded from numba's cache) before the first real call, so a
  machine where numba cannot build them falls back to the torch path (:func:`_ensure_compiled`);
* numba's compile-time warnings are silenced: they are about the kernels, not the caller.

Outputs are returned as ``(Bt, D, L)`` views of time-major ``(Bt, L, D)`` memory, which is the
layout the Jamba mixer's ``out_proj`` reads next (``scan_out.transpose(1, 2)`` is then
contiguous).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import warnings
from types import ModuleType

import numpy as np
import torch

__all__ = ["numba_unavailable_reason", "selective_scan_numba", "numba_version", "KernelCompileError"]

#: Largest channel block of the forward kernel (its state is N x 128 floats: 8 KiB for N = 16).
FORWARD_WIDTH = 128
#: Channel block of the backward kernel: its per-chunk buffers are ~2 x chunk x N x width
#: floats (512 KiB at chunk 64, N 16), sized to stay in a core's L2.
BACKWARD_WIDTH = 64
_MIN_WIDTH = 16
#: State updates (t, d, n) below which another thread is not worth starting (~0.3 ms of work).
MIN_WORK_PER_THREAD = 1 << 20

_kernel_lock = threading.Lock()
logger = logging.getLogger(__name__)


#: Why the kernels failed to compile on this machine (then every call takes the torch path).
_compile_failure: str | None = None
#: Kernels known to compile here: "forward", "backward".
_compiled: set[str] = set()


class KernelCompileError(RuntimeError):
    """numba could not compile a kernel here; the caller falls back to the torch path."""


@functools.cache
def _import_kernels() -> tuple[ModuleType | None, str | None]:
    """(kernel module, None) or (None, why numba cannot be used)."""
    try:
        import numba  # noqa: F401

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from . import scan_numba_kernels
    except Exception as exc:  # not installed, incompatible with this NumPy / llvmlite
        return None, f"numba cannot be imported ({type(exc).__name__}: {exc})"
    return scan_numba_kernels, None


def numba_version() -> str | None:
    """The installed numba's version, or None when it cannot be imported."""
    module, _ = _import_kernels()
    if module is None:
        return None
    import numba

    return numba.__version__


def numba_unavailable_reason(*tensors: torch.Tensor | None) -> str | None:
    """Why the numba kernels cannot run these tensors, or ``None`` when they can.

    The kernels run on CPU tensors of float32, bfloat16 or float16 (computing in float32);
    float64 inputs keep the torch path, which computes in float64.
    """
    present = [t for t in tensors if t is not None]
    for t in present:
        if t.device.type != "cpu":
            return f"tensors are on {t.device.type}, the numba kernels run on CPU"
        if t.dtype == torch.float64:
            return "float64 inputs (the numba kernels compute in float32)"
        if t.dtype.is_complex:
            return f"{t.dtype} inputs"
    if torch.compiler.is_compiling():
        return "torch.compile is tracing (numba calls are opaque to it)"
    if _compile_failure is not None:
        return _compile_failure
    return _import_kernels()[1]


# --------------------------------------------------------------------------------------------
# torch <-> kernel layouts
# --------------------------------------------------------------------------------------------

_NO_ARRAY = np.zeros(1, dtype=np.float32)
_NO_STRIDES = np.zeros(3, dtype=np.int64)


def _flat(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """A (Bt, D, L) float32 CPU tensor as a flat NumPy view of its memory + strides.

    Returns the 1-D buffer that starts at ``x[0, 0, 0]`` and ends at ``x[-1, -1, -1]``, and
    the element strides (batch, time, channel). No copy: the kernels read any layout tile by
    tile.
    """
    x = x.detach()
    sb, sd, st = x.stride()
    bsz, dim, length = x.shape
    span = 1 + (bsz - 1) * sb + (dim - 1) * sd + (length - 1) * st
    flat = torch.as_strided(x, (span,), (1,)).numpy()
    return flat, np.array([sb, st, sd], dtype=np.int64)


def _grad_buffer(like: torch.Tensor) -> torch.Tensor:
    """Uninitialised float32 (Bt, D, L) gradient in the layout of ``like``: time-major memory
    when ``like`` is time-major (channel stride 1), channel-major otherwise. Autograd then
    passes it on (or accumulates it into a leaf) without a transposing copy."""
    bsz, dim, length = like.shape
    if like.stride(1) == 1 and dim > 1:
        return torch.empty(bsz, length, dim, dtype=torch.float32).transpose(1, 2)
    return torch.empty(bsz, dim, length, dtype=torch.float32)


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float32)


def _time_major(x: torch.Tensor) -> np.ndarray:
    """(Bt, F, L) tensor -> C-contiguous float32 (Bt, L, F) array (a view when it already is)."""
    return _f32(x).transpose(1, 2).contiguous().numpy()


def _vector(x: torch.Tensor | None, dim: int) -> np.ndarray:
    if x is None:
        return np.zeros(dim, dtype=np.float32)
    return _f32(x).contiguous().numpy()


def _threads(work: int) -> int:
    """numba threads for ``work`` (batch x steps x channels x states) state updates: as many
    as torch uses, but one per ``MIN_WORK_PER_THREAD`` at most (starting threads costs more
    than small problems take; on a busy machine a waiting thread can stall for milliseconds)."""
    wanted = max(1, work // MIN_WORK_PER_THREAD)
    return max(1, min(torch.get_num_threads(), _numba_max_threads(), wanted))


def _numba_max_threads() -> int:
    import numba

    return numba.config.NUMBA_NUM_THREADS


def _run(kernel, threads: int, *args) -> None:
    """Call a parallel kernel with ``threads`` numba threads, one caller at a time.

    numba's ``omp`` threading layer shares the OpenMP runtime that torch uses and sets its
    thread count when it starts (to all cores), which would silently undo a user's
    ``torch.set_num_threads``; torch's setting is put back after the call.
    """
    import numba

    torch_threads = torch.get_num_threads()
    with _kernel_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", numba.NumbaWarning)
        numba.set_num_threads(threads)
        try:
            kernel(*args)
        finally:
            if torch.get_num_threads() != torch_threads:
                torch.set_num_threads(torch_threads)


def _width(dim: int, largest: int, threads: int, batch: int = 1) -> int:
    """Channels per work item: ``largest``, halved (not below 16) while items < threads."""
    width = largest
    while width > _MIN_WIDTH and batch * math.ceil(dim / width) < threads:
        width //= 2
    return width


class _Inputs:
    """The scan's inputs as the kernels take them (see scan_forward's docstring)."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, reset_mask):
        self.bsz, self.dim, self.length = u.shape
        self.n_state = A.shape[1]
        # Half-precision inputs are upcast once here (a copy); float32 ones are views.
        self.u_t, self.delta_t = _f32(u), _f32(delta)
        self.z_t = None if z is None else _f32(z)
        self.u, self.u_s = _flat(self.u_t)
        self.delta, self.delta_s = _flat(self.delta_t)
        self.z, self.z_s = (_NO_ARRAY, _NO_STRIDES) if z is None else _flat(self.z_t)
        self.A_t = _f32(A).t().contiguous().numpy()
        self.B = _time_major(B)
        self.C = _time_major(C)
        self.D = _vector(D, self.dim)
        self.bias = _vector(delta_bias, self.dim)
        self.has_reset = reset_mask is not None
        self.reset = (
            reset_mask.to(torch.uint8).contiguous().numpy() if self.has_reset
            else np.zeros((1, 1), dtype=np.uint8)
        )


def _forward(x: _Inputs, h0: torch.Tensor | None, softplus: bool, chunk: int | None):
    """Run the forward kernel. Returns out (Bt, L, D), last (Bt, D, N), ckpt or None (torch)."""
    kernels, _ = _import_kernels()
    out = torch.empty(x.bsz, x.length, x.dim, dtype=torch.float32)
    last = torch.empty(x.bsz, x.dim, x.n_state, dtype=torch.float32)
    save = chunk is not None
    ckpt = torch.empty(x.bsz, math.ceil(x.length / chunk) if save else 0, x.n_state, x.dim,
                       dtype=torch.float32)
    h0_np = np.zeros((1, 1, 1), dtype=np.float32) if h0 is None else _f32(h0).contiguous().numpy()
    threads = _threads(x.bsz * x.length * x.dim * x.n_state)
    width = _width(x.dim, FORWARD_WIDTH, threads, x.bsz)
    _run(kernels.scan_forward, threads,
         x.delta, x.delta_s, x.u, x.u_s, x.z, x.z_s, x.A_t, x.B, x.C, x.D, x.bias, h0_np, x.reset,
         out.numpy(), last.numpy(), ckpt.numpy(), x.z_t is not None, h0 is not None, x.has_reset,
         bool(softplus), save, int(chunk or 1), width)
    return out, last, (ckpt if save else None)


def _ensure_compiled(backward: bool) -> None:
    """Compile (or load from numba's cache) the kernels a call needs, on a 2-step problem.

    Every call hands the kernels the same argument types, so this is the only compilation of
    the process. Doing it here, before any real work, means a kernel that numba cannot build
    on this machine is found while the caller can still take the torch path: the failure is
    logged once and :func:`numba_unavailable_reason` reports it from then on. Raises
    :class:`KernelCompileError` in that case.
    """
    global _compile_failure
    needed = {"forward", "backward"} if backward else {"forward"}
    if needed <= _compiled:
        return
    import numba

    g = torch.Generator().manual_seed(0)
    u, delta, z = (torch.randn(1, 2, 2, generator=g) for _ in range(3))
    A = -torch.ones(2, 2)
    B, C = torch.randn(1, 2, 2, generator=g), torch.randn(1, 2, 2, generator=g)
    try:
        x = _Inputs(u, delta, A, B, C, None, z, None, None)
        _, _, ckpt = _forward(x, None, True, 1)
        _compiled.add("forward")
        if backward:
            _backward(x, ckpt, True, 1, torch.ones(1, 2, 2), None, u, delta, z)
            _compiled.add("backward")
    except numba.core.errors.NumbaError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _compile_failure = f"the numba kernels failed to compile here ({type(exc).__name__}: {first_line})"
        logger.warning("selective scan: %s; using the chunked torch scan instead", _compile_failure)
        raise KernelCompileError(_compile_failure) from exc


def selective_scan_numba(
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
    """The selective scan with the numba kernels; same arguments as ``interface.selective_scan``.

    Shapes are checked by the caller. Returns ``out`` (Bt, D, L) in ``u.dtype`` and the last
    state (Bt, D, N) in float32. With grad enabled and any input requiring grad, the result
    is differentiable (numba backward kernel); otherwise nothing is saved.

    Raises:
        KernelCompileError: numba cannot compile the kernels on this machine (before any work
            is done, so the caller can use the torch path).
    """
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    _ensure_compiled(backward=needs_grad)
    if needs_grad:
        return _NumbaScanFunction.apply(
            u, delta, A, B, C, D, z, delta_bias, initial_state, reset_mask,
            bool(delta_softplus), int(chunk_size),
        )
    x = _Inputs(u, delta, A, B, C, D, z, delta_bias, reset_mask)
    out, last, _ = _forward(x, initial_state, delta_softplus, None)
    return out.transpose(1, 2).to(u.dtype), last


class _NumbaScanFunction(torch.autograd.Function):
    """Whole selective scan (bias, softplus, SSM, D skip, z gate) on the numba kernels."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, reset_mask, softplus, chunk_size):
        x = _Inputs(u, delta, A, B, C, D, z, delta_bias, reset_mask)
        out, last, ckpt = _forward(x, h0, softplus, chunk_size)  # ckpt[:, 0] is h0 (or 0)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, h0, reset_mask, ckpt)
        ctx.softplus = softplus
        ctx.chunk_size = chunk_size
        return out.transpose(1, 2).to(u.dtype), last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out, g_last):
        u, delta, A, B, C, D, z, delta_bias, h0, reset_mask, ckpt = ctx.saved_tensors
        x = _Inputs(u, delta, A, B, C, D, z, delta_bias, reset_mask)
        g_u, g_delta, g_A_t, g_B, g_C, g_D, g_z, g_bias, g_h0 = _backward(
            x, ckpt, ctx.softplus, ctx.chunk_size, g_out, g_last, u, delta, z
        )

        def cast(g, like):
            return None if like is None else g.to(like.dtype)

        return (
            cast(g_u, u),
            cast(g_delta, delta),
            cast(g_A_t.t(), A),
            cast(g_B, B),
            cast(g_C, C),
            cast(g_D, D),
            cast(g_z, z),
            cast(g_bias, delta_bias),
            cast(g_h0, h0),
            None,
            None,
            None,
        )


def _backward(x: _Inputs, ckpt: torch.Tensor, softplus: bool, chunk: int, g_out, g_last, u, delta, z):
    """Run the backward kernel. Returns float32 gradients of u, delta (in their layouts),
    A transposed (N, D), B, C (Bt, N, L), D, delta_bias (D,), z (or None), h0 (Bt, D, N)."""
    kernels, _ = _import_kernels()
    bsz, dim, length, n_state = x.bsz, x.dim, x.length, x.n_state
    if g_out is None:
        g_out = torch.zeros(bsz, length, dim, dtype=torch.float32).transpose(1, 2)
    g_out_np, g_out_s = _flat(_f32(g_out))
    has_g_last = g_last is not None
    g_last_np = _f32(g_last).contiguous().numpy() if has_g_last else np.zeros((1, 1, 1), np.float32)

    threads = _threads(bsz * length * dim * n_state)
    width = _width(dim, BACKWARD_WIDTH, threads)
    # Each group of channel blocks owns its rows of the dB / dC partial sums (no shared writes).
    groups = max(1, min(threads, math.ceil(dim / width)))
    g_delta, g_u = _grad_buffer(delta), _grad_buffer(u)
    g_z = _grad_buffer(z) if z is not None else None
    (g_delta_np, g_delta_s), (g_u_np, g_u_s) = _flat(g_delta), _flat(g_u)
    g_z_np, g_z_s = (_NO_ARRAY, _NO_STRIDES) if z is None else _flat(g_z)
    g_A_t = torch.empty(n_state, dim, dtype=torch.float32)
    g_D = torch.empty(dim, dtype=torch.float32)
    g_bias = torch.empty(dim, dtype=torch.float32)
    g_h0 = torch.empty(bsz, dim, n_state, dtype=torch.float32)
    g_B_part = torch.zeros(groups, bsz, length, n_state, dtype=torch.float32)
    g_C_part = torch.zeros(groups, bsz, length, n_state, dtype=torch.float32)
    _run(kernels.scan_backward, threads,
         x.delta, x.delta_s, x.u, x.u_s, x.z, x.z_s, g_out_np, g_out_s, x.A_t, x.B, x.C, x.D,
         x.bias, x.reset, ckpt.numpy(), g_last_np, g_delta_np, g_delta_s, g_u_np, g_u_s,
         g_z_np, g_z_s, g_A_t.numpy(), g_D.numpy(), g_bias.numpy(), g_h0.numpy(),
         g_B_part.numpy(), g_C_part.numpy(), z is not None, x.has_reset, bool(softplus),
         has_g_last, int(chunk), width)
    return (g_u, g_delta, g_A_t, g_B_part.sum(0).transpose(1, 2), g_C_part.sum(0).transpose(1, 2),
            g_D, g_z, g_bias, g_h0)
