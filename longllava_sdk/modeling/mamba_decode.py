"""One decode step of a Jamba Mamba mixer in few operations (the SDK's fast decode path).

After a long prompt, each generated token costs the hybrid O(1) per Mamba layer, but on a
CPU that O(1) is dominated by per-operation overhead, not arithmetic: transformers' mixer
spends ~75 tensor operations on one token (transposes, dtype round trips, three RMSNorms of
eight operations each, a oneDNN convolution over 4 columns, the SSM update as a dozen
broadcasts), about 0.3 ms per Mamba layer on the tiny preset where the arithmetic is a few
microseconds. This module computes the same step in ~20 operations:

    x (B, H) -> in_proj -> u, gate (B, D)
    u  <- silu(sum_k conv_state[:, :, k] * w[:, k] + b)      conv state shifted in place
    dt, B, C <- RMSNorms of x_proj(u) (one fused ``rms_norm`` each)
    dt <- softplus(dt_proj(dt) + dt_bias)                     (B, D)
    h  <- exp(dt * A) * h + (dt * u) B                        SSM state (B, D, N), in place
    y  <- (h C + D * u) * silu(gate) -> out_proj              (B, H)

:func:`install_fast_decode` puts it in front of the mixers of a model (a class-level
``forward`` wrapper that only flagged mixers take): one-token steps on a cache that already holds the layer's state take
it; everything else (prefill, training, a cache recording its past for assisted decoding,
offloaded / meta weights, quantized models) runs transformers' mixer unchanged.
``tests/test_fast_decode.py`` checks the step against transformers' mixer on the installed
version, so a change of the mixer's weights or arithmetic fails there.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.jamba.modeling_jamba import JambaMambaMixer

from . import cache_access

__all__ = ["mixer_decode_step", "install_fast_decode", "set_fast_decode", "fast_decode_enabled"]

_JAMBA = importlib.import_module("transformers.models.jamba.modeling_jamba")
_ENABLED = "_longllava_fast_decode"
_original_forward = JambaMambaMixer.forward


def _rms(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """transformers' ``JambaRMSNorm`` (float32 statistics, weight applied in the input dtype) as one op."""
    out = F.rms_norm(x.float(), (x.shape[-1],), None, norm.variance_epsilon)
    return norm.weight * out.to(x.dtype)


def mixer_decode_step(mixer: JambaMambaMixer, hidden_states: torch.Tensor, conv_state: torch.Tensor,
                      ssm_state: torch.Tensor) -> torch.Tensor:
    """One token through ``mixer``, reading and updating its cached states in place.

    Args:
        hidden_states: ``(B, 1, H)``; conv_state: ``(B, D, K)``; ssm_state: ``(B, D, N)``.

    Returns:
        ``(B, 1, H)``, what ``mixer(hidden_states, cache)`` returns for a decode step.
    """
    dtype = hidden_states.dtype
    x = hidden_states[:, 0]
    projected = F.linear(x, mixer.in_proj.weight, mixer.in_proj.bias)        # (B, 2D)
    u, gate = projected.chunk(2, dim=-1)
    # The two kernels are looked up on transformers' module at call time, as its mixer does: the
    # SDK's dispatchers (CUDA packages on a GPU, the lean torch steps here otherwise).
    u = _JAMBA.causal_conv1d_update(u.unsqueeze(-1), conv_state, mixer.conv1d.weight[:, 0], mixer.conv1d.bias,
                                    activation=mixer.activation)[..., 0]
    rank, n = mixer.time_step_rank, mixer.ssm_state_size
    dt, B, C = F.linear(u, mixer.x_proj.weight).split([rank, n, n], dim=-1)
    dt = _rms(dt, mixer.dt_layernorm)
    B = _rms(B, mixer.b_layernorm)
    C = _rms(C, mixer.c_layernorm)
    dt = F.linear(dt, mixer.dt_proj.weight)                                   # bias added in the step
    A = -torch.exp(mixer.A_log.float())
    bias = mixer.dt_proj.bias
    y = _JAMBA.mamba_selective_state_update(ssm_state, u, dt, A, B, C, mixer.D, z=gate,
                                            dt_bias=None if bias is None else bias.float(), dt_softplus=True)
    return F.linear(y.to(dtype), mixer.out_proj.weight, mixer.out_proj.bias).unsqueeze(1)


def _fast_path_applies(mixer: JambaMambaMixer, hidden_states: torch.Tensor, cache: Any) -> bool:
    if not getattr(mixer, _ENABLED, False) or cache is None or hidden_states.shape[1] != 1:
        return False
    if torch.is_grad_enabled() and mixer.training:
        return False
    if hasattr(mixer.config, "_is_quantized") or mixer.in_proj.weight.device != hidden_states.device:
        return False  # quantized linears / offloaded (meta) weights: transformers' path handles those
    layer = mixer.layer_idx
    return cache_access.has_previous_state(cache, layer) and not cache_access.is_recording_past(cache, layer)


@functools.wraps(_original_forward)  # keeps transformers' signature visible (the cache keyword is read from it)
def _forward(self: JambaMambaMixer, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``JambaMambaMixer.forward`` with the fast decode step in front (for mixers that enabled it)."""
    if getattr(self, _ENABLED, False):
        cache = None
        for name in (cache_access.MIXER_CACHE_ARGUMENT, "cache", "cache_params"):
            if kwargs.get(name) is not None:
                cache = kwargs[name]
                break
        if cache is None and args:
            cache = args[0]
        if _fast_path_applies(self, hidden_states, cache):
            layer = self.layer_idx
            return mixer_decode_step(self, hidden_states, cache_access.conv_state(cache, layer),
                                     cache_access.recurrent_state(cache, layer))
    return _original_forward(self, hidden_states, *args, **kwargs)


def install_fast_decode(model: nn.Module, enabled: bool = True) -> int:
    """Enable (or disable) the fast decode step for every Jamba mixer of ``model``.

    The step sits in front of ``JambaMambaMixer.forward`` for the whole class (installed once,
    like the kernels), but only mixers flagged here take it; others keep transformers' forward.

    Returns:
        The number of mixers flagged.
    """
    if JambaMambaMixer.forward is not _forward:
        JambaMambaMixer.forward = _forward
    count = 0
    for module in model.modules():
        if isinstance(module, JambaMambaMixer):
            setattr(module, _ENABLED, bool(enabled))
            count += 1
    return count


def set_fast_decode(model: nn.Module, enabled: bool) -> None:
    """Turn the fast decode step on or off (off: transformers' mixer for every step)."""
    install_fast_decode(model, enabled)


def fast_decode_enabled(model: nn.Module) -> bool:
    """Whether every mixer of ``model`` takes the fast decode step."""
    mixers = [m for m in model.modules() if isinstance(m, JambaMambaMixer)]
    return bool(mixers) and JambaMambaMixer.forward is _forward and all(getattr(m, _ENABLED, False) for m in mixers)
