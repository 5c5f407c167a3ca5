"""The Mamba mixer's depthwise causal convolution in torch: whole sequences and decode steps.

Shapes (``B`` batch, ``D`` channels, ``K`` kernel width, ``L`` new columns)::

    hidden_states (B, D, L)    weight (D, K)    bias (D,)    conv_state (B, D, K)

:func:`causal_conv1d_torch` is a depthwise ``F.conv1d`` with ``K - 1`` left padding, the
arithmetic of transformers' reference path (without its "install causal_conv1d" advice, which
a CPU user cannot follow); with a ``reset_mask`` it runs as ``K`` shifted multiply-adds so
that no output column reaches back past the start of its packed sample.
:func:`causal_conv1d_update_torch` pushes new columns through the conv from a cached state.
:mod:`.interface` hands both to the causal-conv1d CUDA package instead when it can.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["causal_conv1d_torch", "causal_conv1d_update_torch", "activate"]


def activate(x: torch.Tensor, activation: str | None) -> torch.Tensor:
    """``ACT2FN[activation](x)``; SiLU (Jamba's) directly, skipping the registry on every decode step."""
    if activation is None:
        return x
    if activation in ("silu", "swish"):
        return F.silu(x)
    from transformers.activations import ACT2FN

    return ACT2FN[activation](x)


def causal_conv1d_torch(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    reset_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Depthwise causal conv1d, optionally stopping at packed-sample boundaries.

    Args:
        hidden_states: ``(B, D, Lx)``. With a cache, the first ``Lx - L`` columns are the
            cached left context (or zero padding); they count as part of the row's first sample.
        weight: ``(D, K)``; bias: ``(D,)`` or None; activation: an ``ACT2FN`` name or None.
        reset_mask: ``(B, L)`` bool, ``L <= Lx``, aligned with the last ``L`` columns of
            ``hidden_states``; True where a packed sample starts. An output column then only
            sees inputs of its own sample.

    Returns:
        ``(B, D, Lx)`` in ``hidden_states.dtype``.
    """
    length = hidden_states.shape[-1]
    kernel = weight.shape[-1]
    x = hidden_states.to(weight.dtype)
    if reset_mask is None:
        # Fast path: one oneDNN depthwise convolution.
        out = F.conv1d(x, weight.unsqueeze(1), bias, padding=kernel - 1, groups=x.shape[1])[..., :length]
        return activate(out, activation).to(hidden_states.dtype)
    # Boundaries: K shifted multiply-adds, each masked where it would cross into another sample.
    starts = reset_mask.to(torch.int32)
    if starts.shape[1] < length:
        starts = F.pad(starts, (length - starts.shape[1], 0))
    segment = starts.cumsum(-1)  # (B, Lx): index of the packed sample of every column
    out = x * weight[:, kernel - 1, None]
    for lag in range(1, min(kernel, length)):
        shifted = x[..., :-lag] * weight[:, kernel - 1 - lag, None]
        # the input `lag` steps back counts only if it belongs to the same sample
        shifted = shifted * (segment[:, lag:] == segment[:, :-lag]).to(x.dtype)[:, None, :]
        out[..., lag:] += shifted
    if bias is not None:
        out = out + bias[:, None]
    return activate(out, activation).to(hidden_states.dtype)


def causal_conv1d_update_torch(
    hidden_states: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """New columns through the conv, continuing from ``conv_state`` (updated in place).

    Args:
        hidden_states: ``(B, D, S)`` the new columns (``S = 1`` when decoding).
        conv_state: ``(B, D, K)`` the last ``K`` inputs; on return it ends with the new ones.
        weight: ``(D, K)``; bias: ``(D,)`` or None.

    Returns:
        ``(B, D, S)`` in ``hidden_states.dtype``.
    """
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
        return activate(out, activation).to(hidden_states.dtype).unsqueeze(-1)
    window = torch.cat([conv_state, hidden_states], dim=-1).to(weight.dtype)
    conv_state.copy_(window[..., -conv_state.shape[-1]:])
    out = F.conv1d(window, weight.unsqueeze(1), bias, groups=hidden_states.shape[1])[..., -steps:]
    return activate(out, activation).to(hidden_states.dtype)
