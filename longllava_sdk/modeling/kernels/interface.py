"""Which implementation runs each Mamba operation: the one entry point per operation.

=============================  ===================================================================
operation                      implementations, in the order they are tried
=============================  ===================================================================
:func:`selective_scan`         mamba-ssm's CUDA ``selective_scan_fn`` (CUDA tensors, no initial
                               state, no packed boundaries, package importable) -> the numba CPU
                               kernels (:mod:`.scan_numba`) -> the chunked torch scan
                               (:mod:`.scan_torch`, any device)
:func:`causal_conv1d`          causal-conv1d's CUDA kernel (CUDA tensors, no packed boundaries)
                               -> torch (:mod:`.causal_conv1d`, boundary-aware when asked)
:func:`causal_conv1d_update`   causal-conv1d's CUDA update -> torch (decode: one column)
:func:`selective_state_update` mamba-ssm's CUDA step -> torch (:mod:`.selective_state_update`)
=============================  ===================================================================

The CUDA packages are imported from their own distributions (the ``cuda`` extra); nothing
here goes through, or changes, transformers' module. :func:`kernel_report` names what runs on
a device; :func:`announce_kernels` logs it once per process and device type.

``LONGLLAVA_SCAN_BACKEND`` (``auto``, ``numba``, ``torch``) or the ``backend`` argument forces
the CPU scan implementation.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, Literal

import torch

from ...errors import ConfigError, InputError
from . import scan_numba
from .causal_conv1d import causal_conv1d_torch, causal_conv1d_update_torch
from .scan_torch import selective_scan_torch
from .selective_state_update import selective_state_update_torch

__all__ = [
    "selective_scan",
    "selective_scan_backend",
    "causal_conv1d",
    "causal_conv1d_update",
    "selective_state_update",
    "kernel_report",
    "describe_kernels",
    "announce_kernels",
    "BACKEND_ENV",
]

logger = logging.getLogger(__name__)

ScanBackend = Literal["auto", "numba", "torch"]

#: Environment variable that forces the scan implementation: ``auto`` (default: numba on CPU
#: when it can run, torch otherwise), ``numba`` (error if it cannot run) or ``torch``.
BACKEND_ENV = "LONGLLAVA_SCAN_BACKEND"
_BACKENDS = ("auto", "numba", "torch")

#: (package, module, function) of each CUDA kernel the SDK can hand a call to.
_CUDA_KERNELS = {
    "selective_scan": ("mamba_ssm", "mamba_ssm.ops.selective_scan_interface", "selective_scan_fn"),
    "selective_state_update": ("mamba_ssm", "mamba_ssm.ops.triton.selective_state_update",
                               "selective_state_update"),
    "causal_conv1d": ("causal_conv1d", "causal_conv1d", "causal_conv1d_fn"),
    "causal_conv1d_update": ("causal_conv1d", "causal_conv1d", "causal_conv1d_update"),
}


@functools.cache
def _package_importable(name: str) -> bool:
    """Whether the CUDA kernel package ``name`` (``causal_conv1d``, ``mamba_ssm``) imports."""
    try:
        importlib.import_module(name)
    except Exception:  # not installed, or built without a usable CUDA
        return False
    return True


@functools.cache
def _cuda_function(operation: str) -> Callable | None:
    package, module, name = _CUDA_KERNELS[operation]
    if not _package_importable(package):
        return None
    try:
        return getattr(importlib.import_module(module), name, None)
    except Exception:  # a build without this kernel
        return None


def _cuda_kernel(operation: str, tensor: torch.Tensor) -> Callable | None:
    """The CUDA package's function for ``operation`` when ``tensor`` is on CUDA and it imports."""
    return _cuda_function(operation) if tensor.is_cuda else None


# --------------------------------------------------------------------------------------------
# Selective scan
# --------------------------------------------------------------------------------------------


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
    reset_mask: torch.Tensor | None = None,
    chunk_size: int = 64,
    backend: ScanBackend | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan with the semantics of mamba-ssm's ``selective_scan_fn``, plus state and resets.

    Args:
        u: input ``(Bt, D, L)``.
        delta: time steps before bias / softplus, ``(Bt, D, L)``.
        A: state matrix ``(D, N)``, expected negative (``-exp(A_log)``).
        B: input projection ``(Bt, N, L)``.
        C: output projection ``(Bt, N, L)``.
        D: skip weight ``(D,)`` or ``None``.
        z: gate ``(Bt, D, L)``; the output is multiplied by ``silu(z)``.
        delta_bias: ``(D,)`` added to ``delta`` before the softplus.
        delta_softplus: apply ``softplus`` to the time steps.
        return_last_state: also return the state after the last step.
        initial_state: state before the first step ``(Bt, D, N)``; zeros when ``None``.
        reset_mask: ``(Bt, L)`` bool; ``True`` at ``t`` zeroes the state before step ``t``
            (start of a new packed sample), so no state crosses a sample boundary.
        chunk_size: positions per chunk: the torch path's Python iterations per pass; on both
            SDK paths, the interval at which states are kept for the backward.
        backend: ``"auto"`` (numba kernels for CPU tensors when numba imports, the chunked torch
            path otherwise), ``"numba"`` (raise if the kernels cannot take these tensors) or
            ``"torch"``; ``None`` reads ``LONGLLAVA_SCAN_BACKEND`` (default ``auto``).

    Returns:
        ``out`` ``(Bt, D, L)`` in ``u.dtype``, and with ``return_last_state`` also the last
        state ``(Bt, D, N)`` in float32 (float64 for float64 inputs), like mamba-ssm.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state, reset_mask)
    if int(chunk_size) < 1:
        raise InputError(None, f"selective_scan: chunk_size must be >= 1, got {chunk_size}")
    requested = _requested_backend(backend)
    kernel = _cuda_kernel("selective_scan", u) if initial_state is None and reset_mask is None else None
    if kernel is not None:
        return kernel(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                      return_last_state=return_last_state)
    if requested != "torch":
        # Fast path: the fused numba kernels (CPU, float32/bf16/fp16).
        why_not = scan_numba.numba_unavailable_reason(u, delta, A, B, C, D, z, delta_bias, initial_state, reset_mask)
        if why_not is None:
            try:
                out, last_state = scan_numba.selective_scan_numba(
                    u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), initial_state, reset_mask,
                    int(chunk_size),
                )
                return (out, last_state) if return_last_state else out
            except scan_numba.KernelCompileError as exc:  # logged once; torch from now on
                why_not = str(exc)
        if requested == "numba":
            raise InputError(None, f"selective_scan: backend 'numba' was requested but {why_not}")
    # Slow path: the chunked torch implementation (any device, float64).
    out, last_state = selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                           initial_state, reset_mask, int(chunk_size))
    return (out, last_state) if return_last_state else out


def _requested_backend(backend: str | None) -> str:
    value = backend if backend is not None else os.environ.get(BACKEND_ENV, "auto")
    value = value.strip().lower() or "auto"
    if value not in _BACKENDS:
        source = "backend" if backend is not None else BACKEND_ENV
        raise ConfigError(f"selective_scan: {source}={value!r}; expected one of {', '.join(_BACKENDS)}")
    return value


def selective_scan_backend(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> str:
    """The SDK implementation the Mamba layers use for tensors of this device and dtype.

    Returns:
        ``"numba-cpu"`` (fused numba kernels) or ``"torch-chunked"`` (:mod:`.scan_torch`, on
        any other device too). Honours ``LONGLLAVA_SCAN_BACKEND``. (On CUDA, mamba-ssm's kernel
        may take the call first: :func:`kernel_report` says which.)
    """
    device = torch.device(device)
    requested = _requested_backend(None)
    if requested == "torch" or device.type != "cpu":
        return "torch-chunked"
    probe = torch.empty(0, dtype=dtype, device="cpu")  # explicit: a torch.device("meta") context must not leak in
    return "numba-cpu" if scan_numba.numba_unavailable_reason(probe) is None else "torch-chunked"


def _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state, reset_mask) -> None:
    def bad(problem: str) -> InputError:
        return InputError(None, f"selective_scan: {problem}")

    if u.dim() != 3:
        raise bad(f"u must be (batch, channels, length), got shape {tuple(u.shape)}")
    bsz, dim, length = u.shape
    if length == 0:
        raise bad("u has no time steps (length 0)")
    if A.dim() != 2 or A.shape[0] != dim:
        raise bad(f"A must be ({dim}, state_size), got shape {tuple(A.shape)}")
    n = A.shape[1]
    expected = {
        "delta": (delta, (bsz, dim, length)),
        "B": (B, (bsz, n, length)),
        "C": (C, (bsz, n, length)),
        "D": (D, (dim,)),
        "z": (z, (bsz, dim, length)),
        "delta_bias": (delta_bias, (dim,)),
        "initial_state": (initial_state, (bsz, dim, n)),
        "reset_mask": (reset_mask, (bsz, length)),
    }
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise bad(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
    if reset_mask is not None and reset_mask.dtype != torch.bool:
        raise bad(f"reset_mask must be a bool tensor, got {reset_mask.dtype}")
    if reset_mask is not None and reset_mask.requires_grad:
        raise bad("reset_mask cannot require grad")


# --------------------------------------------------------------------------------------------
# Causal convolution and the decode step
# --------------------------------------------------------------------------------------------


def causal_conv1d(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    reset_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Depthwise causal conv1d over ``(B, D, Lx)`` with weight ``(D, K)``; returns ``(B, D, Lx)``.

    ``reset_mask`` ``(B, L)``, ``L <= Lx``, marks packed-sample starts in the last ``L``
    columns (see :func:`~.causal_conv1d.causal_conv1d_torch`); only the torch path honours it.
    """
    kernel = _cuda_kernel("causal_conv1d", hidden_states) if reset_mask is None else None
    if kernel is not None:
        return kernel(hidden_states, weight, bias, activation=activation)
    return causal_conv1d_torch(hidden_states, weight, bias, activation=activation, reset_mask=reset_mask)


def _cuda_first(operation: str, torch_function: Callable) -> Callable:
    """``torch_function`` behind the CUDA package's kernel of the same arguments (CUDA tensors only)."""

    @functools.wraps(torch_function)
    def dispatch(*args: Any, **kwargs: Any) -> torch.Tensor:
        return (_cuda_kernel(operation, args[0]) or torch_function)(*args, **kwargs)

    return dispatch


#: New columns ``(B, D, S)`` through the conv from ``conv_state`` ``(B, D, K)`` (updated in place):
#: causal-conv1d's ``causal_conv1d_update`` on CUDA, else :func:`~.causal_conv1d.causal_conv1d_update_torch`.
causal_conv1d_update = _cuda_first("causal_conv1d_update", causal_conv1d_update_torch)
#: One recurrent step, ``state`` ``(B, D, N)`` updated in place: mamba-ssm's ``selective_state_update``
#: on CUDA, else :func:`~.selective_state_update.selective_state_update_torch`.
selective_state_update = _cuda_first("selective_state_update", selective_state_update_torch)


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------

_announced: set[str] = set()  # device types whose kernels were logged
_announce_lock = threading.Lock()


def kernel_report(device: torch.device | str = "cpu") -> dict[str, str]:
    """Which implementation each Mamba operation uses on ``device`` (for ``info`` and logs)."""
    on_cuda = torch.device(device).type == "cuda"
    conv = "causal-conv1d CUDA kernel" if on_cuda and _package_importable("causal_conv1d") else "torch conv1d"
    ssm = on_cuda and _package_importable("mamba_ssm")
    sdk_scan = {"numba-cpu": "SDK numba scan (fused CPU kernels, custom backward)",
                "torch-chunked": "SDK chunked scan (torch, custom backward)"}[selective_scan_backend(device)]
    return {
        "selective_scan": (f"mamba-ssm CUDA kernel ({sdk_scan} for packed / initial-state calls)" if ssm
                           else sdk_scan),
        "causal_conv1d": conv + " (SDK boundary-aware conv for packed samples)",
        "decode_step": ("mamba-ssm selective_state_update" if ssm else "SDK torch single-step update")
        + " + " + ("causal-conv1d update" if conv.startswith("causal") else "torch conv update"),
    }


def describe_kernels(device: torch.device | str = "cpu") -> str:
    """One line: the scan, conv and decode-step implementations in use on ``device``."""
    report = kernel_report(device)
    return f"scan: {report['selective_scan']}; conv: {report['causal_conv1d']}; decode: {report['decode_step']}"


def announce_kernels(device: str | torch.device) -> None:
    """Log (INFO, once per process and device type) which Mamba kernels run on ``device``.

    Called where a model is created or loaded for use, not where one is built: models are
    also built on the ``meta`` device (transformers' loading, the planner, checkpoint checks),
    which runs nothing and must not use up the one line.
    """
    kind = torch.device(device).type
    with _announce_lock:
        if kind in _announced:
            return
        _announced.add(kind)
    logger.info("Mamba kernels: %s", describe_kernels(kind))
