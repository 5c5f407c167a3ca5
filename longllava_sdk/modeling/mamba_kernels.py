"""The one place where the SDK plugs its Mamba kernels into transformers' Jamba.

transformers 5's ``JambaMambaMixer.forward`` calls four module-level functions of
``transformers.models.jamba.modeling_jamba`` by their global names at call time (the class
decorator ``use_kernelized_func`` only registers them for the optional ``kernels`` Hub
package and does not change that lookup). :func:`install_mamba_kernels` replaces those four
module attributes with the SDK's dispatchers:

===============================  ==============================================================
transformers' name               SDK dispatcher: CUDA kernel when usable, else the SDK's torch path
===============================  ==============================================================
``mamba_selective_scan``         :func:`dispatch_selective_scan` -- mamba-ssm ``selective_scan_fn``
                                 on CUDA without initial state / boundaries; else the SDK's chunked
                                 :func:`~longllava_sdk.modeling.selective_scan.selective_scan`
``causal_conv1d_fn``             :func:`dispatch_causal_conv1d` -- causal-conv1d on CUDA; else
                                 ``F.conv1d`` (or :func:`causal_conv1d_torch` at packed boundaries)
``causal_conv1d_update``         :func:`dispatch_causal_conv1d_update` (one decode step)
``mamba_selective_state_update`` :func:`dispatch_selective_state_update` (one decode step)
===============================  ==============================================================

Why all four: transformers' own CPU fallbacks print "falling back to its reference PyTorch
implementation ... install causal_conv1d" on every run, advice a CPU user cannot follow
(those packages need CUDA). The SDK's torch paths compute the same thing without it, and the
CUDA packages are still used whenever they are installed and the tensors are on a GPU.
``tests/test_kernel_dispatch.py`` runs a model and fails if transformers stops routing
through these names.

Packed samples: wrap a forward in ``with mamba_sequence_boundaries(reset_mask):`` where
``reset_mask`` (batch, length) is True at the first token of every packed sample. The mixer's
signature stays as it is; the dispatchers read the mask from a context variable.

Continuing from a cache: transformers' mixer starts every multi-token scan from a zero SSM
state, even when the cache holds the state of earlier tokens (it only uses the cached state
for one-token decode steps). Inside ``with mamba_initial_state(state):`` the scan dispatcher
starts from ``state`` instead; :mod:`~longllava_sdk.modeling.cache_continuation` enters that
block around every Mamba mixer call that continues a cache (chunked prefill).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..errors import InputError
from .selective_scan import selective_scan

__all__ = [
    "announce_kernels",
    "install_mamba_kernels",
    "uninstall_mamba_kernels",
    "mamba_kernels_installed",
    "mamba_sequence_boundaries",
    "current_reset_mask",
    "mamba_initial_state",
    "boundaries_checkpoint_context_fn",
    "reset_mask_from_position_ids",
    "dispatch_selective_scan",
    "dispatch_causal_conv1d",
    "dispatch_causal_conv1d_update",
    "dispatch_selective_state_update",
    "causal_conv1d_torch",
    "kernel_report",
]

logger = logging.getLogger(__name__)

_JAMBA_MODULE = "transformers.models.jamba.modeling_jamba"
_PATCHED_NAMES = ("mamba_selective_scan", "causal_conv1d_fn", "causal_conv1d_update", "mamba_selective_state_update")
_originals: dict[str, Callable] = {}
_install_lock = threading.Lock()

_reset_mask_var: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(
    "longllava_mamba_reset_mask", default=None
)
_initial_state_var: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(
    "longllava_mamba_initial_state", default=None
)


@contextmanager
def mamba_initial_state(state: torch.Tensor | None) -> Iterator[None]:
    """Start the selective scans called inside the block from ``state`` instead of zeros.

    Args:
        state: ``(B, D, N)`` SSM state after the tokens already processed, or ``None``
            (start from zeros, transformers' behaviour). A scan whose input does not match
            ``(B, D, N)`` raises :class:`InputError` rather than silently ignoring it.
    """
    token = _initial_state_var.set(state)
    try:
        yield
    finally:
        _initial_state_var.reset(token)


# --------------------------------------------------------------------------------------------
# Sequence boundaries (packed samples)
# --------------------------------------------------------------------------------------------


@contextmanager
def mamba_sequence_boundaries(reset_mask: torch.Tensor | None) -> Iterator[None]:
    """Make every Mamba layer called inside the block respect packed-sample boundaries.

    Args:
        reset_mask: (batch, length) bool, True at the first token of each packed sample: the
            SSM state is zeroed before that token and the causal convolution does not reach
            back past it. ``None`` turns boundaries off inside the block.
    """
    if reset_mask is not None:
        if not isinstance(reset_mask, torch.Tensor) or reset_mask.dim() != 2:
            got = tuple(reset_mask.shape) if isinstance(reset_mask, torch.Tensor) else type(reset_mask).__name__
            raise InputError(
                None, f"mamba_sequence_boundaries: reset_mask must be a (batch, length) tensor, got {got}"
            )
        reset_mask = reset_mask.to(torch.bool)
    token = _reset_mask_var.set(reset_mask)
    try:
        yield
    finally:
        _reset_mask_var.reset(token)


def boundaries_checkpoint_context_fn():
    """``context_fn`` for ``torch.utils.checkpoint`` (non-reentrant) that keeps boundaries.

    Gradient checkpointing reruns layer forwards during the backward, possibly after the
    ``with mamba_sequence_boundaries(...)`` block has closed or on autograd's worker thread,
    where the context variable is unset. This captures the mask active at the original forward
    and re-activates it for the recomputation; ``LongLLaVAForConditionalGeneration`` installs it
    whenever activation checkpointing is turned on::

        torch.utils.checkpoint.checkpoint(layer, hidden, use_reentrant=False,
                                          context_fn=boundaries_checkpoint_context_fn)
    """
    mask = _reset_mask_var.get()
    return contextlib.nullcontext(), mamba_sequence_boundaries(mask)


def current_reset_mask() -> torch.Tensor | None:
    """The (batch, length) reset mask set by the innermost :func:`mamba_sequence_boundaries`."""
    return _reset_mask_var.get()


def reset_mask_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Reset mask for packed rows whose position ids restart at 0 for every sample.

    (HF's ``DataCollatorWithFlattening`` produces such ``position_ids``.) (B, L) -> (B, L) bool.
    """
    return position_ids == 0


def _mask_for(name: str, batch: int, length: int, device: torch.device, at_end: bool = False):
    """The active reset mask checked against a (batch, ..., length) input; None if inactive."""
    mask = _reset_mask_var.get()
    if mask is None:
        return None
    if mask.shape[0] != batch or (mask.shape[1] != length and not (at_end and mask.shape[1] < length)):
        raise InputError(
            None,
            f"{name}: the active mamba_sequence_boundaries mask has shape {tuple(mask.shape)} but the "
            f"Mamba layer sees batch {batch} and length {length}",
        )
    return mask.to(device)


# --------------------------------------------------------------------------------------------
# Selective scan dispatch
# --------------------------------------------------------------------------------------------


@functools.cache
def _mamba_ssm_selective_scan() -> Callable | None:
    """mamba-ssm's CUDA ``selective_scan_fn`` or None when the package cannot be imported."""
    try:
        module = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    except Exception:  # not installed, or installed without a usable CUDA build
        return None
    return getattr(module, "selective_scan_fn", None)


@functools.cache
def _package_importable(name: str) -> bool:
    """Whether the CUDA kernel package ``name`` (``causal_conv1d``, ``mamba_ssm``) imports."""
    try:
        importlib.import_module(name)
    except Exception:  # not installed, or built without a usable CUDA
        return False
    return True


def _use_cuda_package(tensor: torch.Tensor, package: str) -> bool:
    """Hand the call to transformers' function (which then runs ``package``'s kernel)?"""
    return tensor.is_cuda and _package_importable(package)


def dispatch_selective_scan(
    hidden_states: torch.Tensor,
    dt: torch.Tensor,
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
    **_ignored,
):
    """Drop-in for transformers' ``mamba_selective_scan`` (same arguments and results).

    ``use_mambapy`` / ``use_associative_scan`` (passed by the mixer) are accepted and ignored.
    ``reset_mask`` defaults to the one of the active :func:`mamba_sequence_boundaries`,
    ``initial_state`` to the one of the active :func:`mamba_initial_state`.
    """
    if initial_state is None:
        initial_state = _initial_state_var.get()
        if initial_state is not None:
            expected = (hidden_states.shape[0], hidden_states.shape[1], A.shape[1])
            if tuple(initial_state.shape) != expected:
                raise InputError(None, f"mamba_selective_scan: the active mamba_initial_state has shape "
                                       f"{tuple(initial_state.shape)} but the scan needs {expected}")
    if reset_mask is None:
        batch, _, length = hidden_states.shape
        reset_mask = _mask_for("mamba_selective_scan", batch, length, hidden_states.device)
    if hidden_states.is_cuda and initial_state is None and reset_mask is None:
        kernel = _mamba_ssm_selective_scan()
        if kernel is not None:
            return kernel(
                hidden_states, dt, A, B, C, D=D, z=z, delta_bias=delta_bias,
                delta_softplus=delta_softplus, return_last_state=return_last_state,
            )
    return selective_scan(
        hidden_states, dt, A, B, C, D=D, z=z, delta_bias=delta_bias,
        delta_softplus=delta_softplus, return_last_state=return_last_state,
        initial_state=initial_state, reset_mask=reset_mask,
    )


# --------------------------------------------------------------------------------------------
# Causal convolution with boundaries
# --------------------------------------------------------------------------------------------


def causal_conv1d_torch(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    reset_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Depthwise causal conv1d as K shifted multiply-adds, optionally stopping at boundaries.

    Without a mask, the same result as transformers' ``causal_conv1d_fn`` (``F.conv1d`` with
    K - 1 left padding) up to float rounding; any device.

    Args:
        hidden_states: (B, D, Lx). With a cache, the first Lx - L columns are the cached left
            context (or zero padding); they count as part of the first sample of the row.
        weight: (D, K); bias: (D,) or None; activation: an ``ACT2FN`` name or None.
        reset_mask: (B, L) bool, L <= Lx, aligned with the last L columns of
            ``hidden_states``; True where a packed sample starts. An output column then only
            sees inputs of its own sample.

    Returns:
        (B, D, Lx) in ``hidden_states.dtype``.
    """
    length = hidden_states.shape[-1]
    kernel = weight.shape[-1]
    x = hidden_states.to(weight.dtype)
    segment = None
    if reset_mask is not None:
        starts = reset_mask.to(torch.int32)
        if starts.shape[1] < length:
            starts = torch.nn.functional.pad(starts, (length - starts.shape[1], 0))
        segment = starts.cumsum(-1)  # (B, Lx): index of the packed sample of every column
    out = x * weight[:, kernel - 1, None]
    for lag in range(1, min(kernel, length)):
        shifted = x[..., :-lag] * weight[:, kernel - 1 - lag, None]
        if segment is not None:
            # the input `lag` steps back counts only if it belongs to the same sample
            shifted = shifted * (segment[:, lag:] == segment[:, :-lag]).to(x.dtype)[:, None, :]
        out[..., lag:] += shifted
    if bias is not None:
        out = out + bias[:, None]
    return _activate(out, activation).to(hidden_states.dtype)


def _activate(x: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return x
    if activation in ("silu", "swish"):  # Jamba's; skips the registry lookup on every decode step
        return F.silu(x)
    from transformers.activations import ACT2FN

    return ACT2FN[activation](x)


def dispatch_causal_conv1d(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    **kwargs,
) -> torch.Tensor:
    """Drop-in for transformers' ``causal_conv1d_fn``; respects active sequence boundaries.

    Args:
        hidden_states: ``(B, D, L)``; weight: ``(D, K)``; bias: ``(D,)`` or None.

    Returns:
        ``(B, D, L)``.

    Paths: boundaries active -> :func:`causal_conv1d_torch` (any device); CUDA with
    causal-conv1d installed -> transformers' function (the fused kernel); otherwise a
    depthwise ``F.conv1d`` with ``K - 1`` left padding (the same arithmetic as transformers'
    reference path, without its "install causal_conv1d" warning).
    """
    batch, channels, length = hidden_states.shape
    mask = _mask_for("causal_conv1d_fn", batch, length, hidden_states.device, at_end=True)
    if mask is not None:
        return causal_conv1d_torch(hidden_states, weight, bias, activation=activation, reset_mask=mask)
    if _use_cuda_package(hidden_states, "causal_conv1d"):
        return _originals["causal_conv1d_fn"](hidden_states, weight, bias, activation=activation, **kwargs)
    out = F.conv1d(hidden_states.to(weight.dtype), weight.unsqueeze(1), bias, padding=weight.shape[-1] - 1,
                   groups=channels)[..., :length]
    return _activate(out, activation).to(hidden_states.dtype)


def dispatch_causal_conv1d_update(
    hidden_states: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    **kwargs,
) -> torch.Tensor:
    """Drop-in for transformers' ``causal_conv1d_update`` (decode: new columns through the conv).

    Args:
        hidden_states: ``(B, D, S)`` the new columns (``S = 1`` when decoding).
        conv_state: ``(B, D, K)`` the last ``K`` inputs; updated in place to end with the new ones.
        weight: ``(D, K)``; bias: ``(D,)`` or None.

    Returns:
        ``(B, D, S)``.
    """
    if _use_cuda_package(hidden_states, "causal_conv1d"):
        return _originals["causal_conv1d_update"](hidden_states, conv_state, weight, bias, activation=activation,
                                                  **kwargs)
    steps = hidden_states.shape[-1]
    if steps == 1:
        # Decode: shift the state one column in place and take a multiply-sum. oneDNN's
        # convolution over K = 4 columns costs ~0.1 ms of thread-pool start-up per call, far
        # more than its arithmetic (measured: benchmarks/bench_efficiency.py decode profile).
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = hidden_states[:, :, 0]
        out = torch.einsum("bdk,dk->bd", conv_state.to(weight.dtype), weight)
        if bias is not None:
            out = out + bias
        return _activate(out, activation).to(hidden_states.dtype).unsqueeze(-1)
    window = torch.cat([conv_state, hidden_states], dim=-1).to(weight.dtype)
    conv_state.copy_(window[..., -conv_state.shape[-1]:])
    out = F.conv1d(window, weight.unsqueeze(1), bias, groups=hidden_states.shape[1])[..., -steps:]
    return _activate(out, activation).to(hidden_states.dtype)


def dispatch_selective_state_update(
    state: torch.Tensor,
    hidden_states: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    **kwargs,
) -> torch.Tensor:
    """Drop-in for transformers' ``mamba_selective_state_update``: one recurrent step.

    Args:
        state: ``(B, D, N)`` SSM state, updated in place.
        hidden_states, dt, z: ``(B, D)``; A: ``(D, N)``; B, C: ``(B, N)``; D, dt_bias: ``(D,)``.

    Returns:
        ``(B, D)``: ``y = C . h + D * x``, gated by ``silu(z)``, in ``hidden_states.dtype``.
    """
    if _use_cuda_package(hidden_states, "mamba_ssm"):
        return _originals["mamba_selective_state_update"](state, hidden_states, dt, A, B, C, D, z=z,
                                                          dt_bias=dt_bias, dt_softplus=dt_softplus, **kwargs)
    # Few, fused operations: at decode time this runs once per Mamba layer and token, and each
    # tensor operation costs microseconds of dispatch on a CPU, more than its arithmetic.
    x = hidden_states.float()
    dt = dt.float() if dt_bias is None else dt.float() + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    decay = torch.exp(dt.unsqueeze(-1) * A.float())                      # (B, D, N)
    new_state = torch.baddbmm(state.float() * decay, (dt * x).unsqueeze(-1), B.float().unsqueeze(1))
    state.copy_(new_state)
    out = torch.bmm(new_state, C.float().unsqueeze(-1)).squeeze(-1)      # (B, D)
    if D is not None:
        out = torch.addcmul(out, x, D.float())
    if z is not None:
        out = out * F.silu(z.float())
    return out.to(hidden_states.dtype)


# --------------------------------------------------------------------------------------------
# Installation
# --------------------------------------------------------------------------------------------

_replacements: dict[str, Callable] = {
    "mamba_selective_scan": dispatch_selective_scan,
    "causal_conv1d_fn": dispatch_causal_conv1d,
    "causal_conv1d_update": dispatch_causal_conv1d_update,
    "mamba_selective_state_update": dispatch_selective_state_update,
}


_announced: set[str] = set()  # device types whose kernels were logged


def install_mamba_kernels() -> bool:
    """Point transformers' Jamba at the SDK's dispatchers. Idempotent and thread-safe.

    Returns:
        True if this call installed them, False if they were installed already.
    """
    module = importlib.import_module(_JAMBA_MODULE)
    with _install_lock:
        if all(getattr(module, name) is _replacements[name] for name in _PATCHED_NAMES):
            return False
        missing = [name for name in _PATCHED_NAMES if not callable(getattr(module, name, None))]
        if missing:
            # transformers moved or renamed a function the SDK replaces: the mixer would bypass
            # the SDK (a ~50x slower scan, no packed-sample boundaries). Refuse loudly.
            raise RuntimeError(f"{_JAMBA_MODULE} no longer defines {missing}; this longllava-sdk version does "
                               "not support the installed transformers (see the range in pyproject.toml)")
        for name in _PATCHED_NAMES:
            current = getattr(module, name)
            if current is not _replacements[name]:
                _originals[name] = current
            setattr(module, name, _replacements[name])
        return True


def announce_kernels(device: str | torch.device) -> None:
    """Log (INFO, once per process and device type) which Mamba kernels run on ``device``.

    Called where a model is created or loaded for use, not where one is built: models are
    also built on the ``meta`` device (transformers' loading, the planner, checkpoint checks),
    which runs nothing and must not use up the one line.
    """
    kind = torch.device(device).type
    with _install_lock:
        if kind in _announced:
            return
        _announced.add(kind)
    logger.info("Mamba kernels: %s", describe_kernels(kind))


def uninstall_mamba_kernels() -> bool:
    """Restore transformers' own functions (used by tests and the benchmark).

    Returns:
        True if something was restored.
    """
    module = importlib.import_module(_JAMBA_MODULE)
    with _install_lock:
        restored = False
        for name in _PATCHED_NAMES:
            if getattr(module, name) is _replacements[name] and name in _originals:
                setattr(module, name, _originals[name])
                restored = True
        return restored


def mamba_kernels_installed() -> bool:
    """Whether the Jamba mixer currently resolves to the SDK's dispatchers."""
    module = importlib.import_module(_JAMBA_MODULE)
    return all(getattr(module, name) is _replacements[name] for name in _PATCHED_NAMES)


def kernel_report(device: torch.device | str = "cpu") -> dict[str, str]:
    """Which implementation each Mamba operation uses on ``device`` (for ``info`` and logs)."""
    from .selective_scan import selective_scan_backend

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
        "installed": "yes" if mamba_kernels_installed() else "no",
    }


def describe_kernels(device: torch.device | str = "cpu") -> str:
    """One line: the scan, conv and decode-step implementations in use on ``device``."""
    report = kernel_report(device)
    return f"scan: {report['selective_scan']}; conv: {report['causal_conv1d']}; decode: {report['decode_step']}"
