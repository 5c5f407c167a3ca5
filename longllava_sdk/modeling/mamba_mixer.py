"""``LongLLaVAMambaMixer``: transformers' Jamba Mamba mixer running the SDK's kernels.

A subclass of transformers' ``JambaMambaMixer`` with the same submodules and parameters
(``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, the three RMSNorms, ``A_log``, ``D``,
``out_proj``: checkpoint keys and LoRA target names are transformers'), swapped into the
SDK's own models when they are built (:func:`swap_mamba_mixers`). transformers' module and
class are never changed: a stock ``JambaForCausalLM`` in the same process computes exactly
what it computed before.

Shapes (``B`` batch, ``L`` new tokens, ``H`` hidden size, ``D = mamba_expand * H`` channels,
``N`` state size, ``K`` conv width, ``R`` dt rank)::

    hidden_states (B, L, H) -> in_proj -> u, gate (B, D, L)
      u    <- silu(causal_conv1d(u))            cached conv inputs (B, D, K) in front, if any
      dt, B, C <- RMSNorms of x_proj(u)         (B, L, R), (B, L, N), (B, L, N)
      dt   <- dt_proj.weight @ dt               (B, D, L); bias and softplus inside the scan
      y    <- selective_scan(u, dt, A, B, C, D, gate)   from the cached SSM state (B, D, N), if any
    -> out_proj -> (B, L, H)

:meth:`LongLLaVAMambaMixer.forward` takes one of three paths, decided by the cache it receives:

1. **decode** (one token, the cache holds this layer's states): :meth:`~LongLLaVAMambaMixer.decode_step`,
   the fast path: ~20 tensor operations that update the cached states in place (transformers'
   mixer spends ~75 on a token, ~0.3 ms per layer on a CPU where the arithmetic takes a few
   microseconds);
2. **cache continuation** (several tokens after cached ones: chunked prefill):
   :meth:`~LongLLaVAMambaMixer.sequence_forward` from the cached conv inputs *and* the cached SSM
   state, read from the cache object itself (transformers' mixer restarts its scan from zeros
   there, which would forget everything before the chunk);
3. **train / prefill** (no cache, or an empty one): :meth:`~LongLLaVAMambaMixer.sequence_forward`
   from zeros, honouring packed-sample boundaries (:mod:`.sequence_boundaries`).

Slow paths, on purpose: a decode step with quantized or offloaded weights, while training with
grad, or with the fast step turned off (:func:`set_fast_decode`) runs the sequence path on its
one token; a cache that records its past for assisted decoding (which keeps per-token history
for a later crop) runs transformers' own ``JambaMambaMixer.forward``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.integrations.accelerate import force_accelerate_hooks
from transformers.models.jamba.modeling_jamba import JambaMambaMixer

from . import cache_access
from .kernels import causal_conv1d, causal_conv1d_update, selective_scan, selective_state_update
from .sequence_boundaries import reset_mask_for

__all__ = ["LongLLaVAMambaMixer", "swap_mamba_mixers", "set_fast_decode", "fast_decode_enabled"]


def _zero_padding(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """``(B, L, C)`` with padded positions zeroed (``attention_mask`` ``(B, L)``), as transformers' mixer does."""
    if attention_mask is None:
        return hidden_states
    return (hidden_states * attention_mask[:, :, None]).to(hidden_states.dtype)


def _linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``; a plain ``nn.Linear`` as one ``F.linear`` (no module-call overhead per token).

    LoRA-wrapped or quantized projections go through their own forward.
    """
    if type(module) is nn.Linear:
        return F.linear(x, module.weight, module.bias)
    return module(x)


def _rms(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """transformers' ``JambaRMSNorm`` (float32 statistics, weight applied in the input dtype) as one op."""
    out = F.rms_norm(x.float(), (x.shape[-1],), None, norm.variance_epsilon)
    return norm.weight * out.to(x.dtype)


class LongLLaVAMambaMixer(JambaMambaMixer):
    """transformers' Jamba Mamba mixer with the SDK's kernels, cache continuation and fast decode."""

    #: Take the fast decode step when it applies (per instance: :func:`set_fast_decode`).
    fast_decode: bool = True

    @classmethod
    def from_jamba(cls, mixer: JambaMambaMixer) -> LongLLaVAMambaMixer:
        """An SDK mixer holding ``mixer``'s very parameters, submodules, hooks and config."""
        return _with_class(mixer, cls)

    @force_accelerate_hooks(["conv1d", "dt_proj"])  # their weights are read directly, not called
    def forward(
        self,
        hidden_states: torch.Tensor,
        cache: Any = None,
        attention_mask: torch.Tensor | None = None,
        cache_params: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """One Mamba layer over ``L`` new tokens.

        Args:
            hidden_states: ``(B, L, H)``.
            cache: the hybrid generation cache (read and updated in place) or ``None``;
                ``cache_params`` is the name transformers < 5.23 passes it under.
            attention_mask: ``(B, L)`` 1 for real tokens (padding is zeroed before the conv and
                the scan) or ``None``.
            kwargs: accepted for signature compatibility with transformers' mixer; unused.

        Returns:
            ``(B, L, H)``.
        """
        cache = cache if cache is not None else cache_params
        layer = self.layer_idx
        if cache is not None and cache_access.is_recording_past(cache, layer):
            # Assisted decoding keeps per-token states for a later crop: transformers' own path.
            return super().forward(hidden_states, attention_mask=attention_mask,
                                   **{cache_access.MIXER_CACHE_ARGUMENT: cache})
        continuing = cache_access.has_previous_state(cache, layer)
        if continuing and hidden_states.shape[1] == 1 and self._decode_step_applies(hidden_states):
            # 1. decode
            return self.decode_step(hidden_states, cache)
        if continuing:
            # 2. cache continuation: the scan starts from the SSM state after the cached tokens
            return self.sequence_forward(hidden_states, cache, attention_mask,
                                         initial_state=cache_access.recurrent_state(cache, layer))
        # 3. train / prefill
        return self.sequence_forward(hidden_states, cache, attention_mask, initial_state=None)

    def _decode_step_applies(self, hidden_states: torch.Tensor) -> bool:
        if not self.fast_decode or (torch.is_grad_enabled() and self.training):
            return False
        if hasattr(self.config, "_is_quantized") or type(self.dt_proj) is not nn.Linear:
            return False  # a quantized dt_proj is only usable as a module
        return self.in_proj.weight.device == hidden_states.device  # offloaded (meta) weights: sequence path

    def decode_step(self, hidden_states: torch.Tensor, cache: Any) -> torch.Tensor:
        """Fast path: one token, reading and updating this layer's cached states in place.

        Args:
            hidden_states: ``(B, 1, H)``.
            cache: a cache that holds this layer's conv state ``(B, D, K)`` and SSM state ``(B, D, N)``.

        Returns:
            ``(B, 1, H)``, what the sequence path returns for this token.
        """
        layer = self.layer_idx
        conv_state = cache_access.conv_state(cache, layer)
        ssm_state = cache_access.recurrent_state(cache, layer)
        dtype = hidden_states.dtype
        u, gate = _linear(self.in_proj, hidden_states[:, 0]).chunk(2, dim=-1)       # (B, D) each
        u = causal_conv1d_update(u.unsqueeze(-1), conv_state, self.conv1d.weight[:, 0], self.conv1d.bias,
                                 activation=self.activation)[..., 0]
        rank, n = self.time_step_rank, self.ssm_state_size
        dt, B, C = _linear(self.x_proj, u).split([rank, n, n], dim=-1)
        dt = F.linear(_rms(dt, self.dt_layernorm), self.dt_proj.weight)            # (B, D); bias in the step
        A = -torch.exp(self.A_log.float())                                          # (D, N)
        bias = self.dt_proj.bias
        y = selective_state_update(ssm_state, u, dt, A, _rms(B, self.b_layernorm), _rms(C, self.c_layernorm),
                                   self.D, z=gate, dt_bias=None if bias is None else bias.float(), dt_softplus=True)
        cache_access.count_decoded_token(cache, layer)
        return _linear(self.out_proj, y.to(dtype)).unsqueeze(1)

    def sequence_forward(self, hidden_states: torch.Tensor, cache: Any, attention_mask: torch.Tensor | None,
                         initial_state: torch.Tensor | None) -> torch.Tensor:
        """Train / prefill (``initial_state`` None) and cache continuation: the mixer over ``L`` tokens.

        Args:
            hidden_states: ``(B, L, H)``.
            cache: ``None``, or the cache that receives this layer's last ``K`` conv inputs and
                final SSM state (and provides the cached conv inputs in front of the new ones).
            attention_mask: ``(B, L)`` or ``None``.
            initial_state: ``(B, D, N)`` SSM state after the cached tokens, or ``None`` (zeros).

        Returns:
            ``(B, L, H)``.
        """
        batch, length, _ = hidden_states.shape
        dtype = hidden_states.dtype
        reset_mask = reset_mask_for(batch, length, hidden_states.device)        # (B, L) or None
        projected = self.in_proj(_zero_padding(hidden_states, attention_mask)).transpose(1, 2)
        u, gate = projected.chunk(2, dim=1)                                     # (B, D, L) each
        if cache is not None:
            u = cache_access.conv_input_with_context(cache, self.layer_idx, u, self.conv_kernel_size)
        u = causal_conv1d(u, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation=self.activation,
                          reset_mask=reset_mask)[..., -length:]                  # (B, D, L)
        u = _zero_padding(u.transpose(1, 2), attention_mask)                    # (B, L, D)
        rank, n = self.time_step_rank, self.ssm_state_size
        time_step, B, C = torch.split(self.x_proj(u), [rank, n, n], dim=-1)
        time_step = self.dt_layernorm(time_step)                                # (B, L, R)
        B, C = self.b_layernorm(B), self.c_layernorm(C)                         # (B, L, N)
        if hasattr(self.config, "_is_quantized"):
            # a quantized dt_proj is only usable as a module (transformers does the same)
            time_step = (self.dt_proj(time_step) - self.dt_proj.bias).transpose(1, 2)
        else:
            time_step = self.dt_proj.weight @ time_step.transpose(1, 2)         # (B, D, L)
        A = -torch.exp(self.A_log.float())                                      # (D, N)
        dt_bias = self.dt_proj.bias.float() if self.dt_proj.bias is not None else None
        result = selective_scan(u.transpose(1, 2), time_step, A, B.transpose(1, 2), C.transpose(1, 2),
                                D=self.D.float(), z=gate, delta_bias=dt_bias, delta_softplus=True,
                                return_last_state=cache is not None, initial_state=initial_state,
                                reset_mask=reset_mask)
        if cache is not None:
            result, last_state = result
            cache_access.store_recurrent_state(cache, self.layer_idx, last_state)
        return self.out_proj(result.transpose(1, 2).to(dtype))


def _with_class(mixer: JambaMambaMixer, mixer_class: type[JambaMambaMixer]) -> Any:
    """``mixer``'s state under ``mixer_class``: nothing copied or re-initialised (drop ``mixer`` after)."""
    new = mixer_class.__new__(mixer_class)
    new.__dict__.update(mixer.__dict__)
    return new


def swap_mamba_mixers(model: nn.Module, mixer_class: type[JambaMambaMixer] = LongLLaVAMambaMixer) -> int:
    """Make every Jamba Mamba mixer inside ``model`` a ``mixer_class``, in place, sharing its parameters.

    ``LongLLaVAForConditionalGeneration`` calls it on its own language model when it is built;
    ``swap_mamba_mixers(model, JambaMambaMixer)`` turns them back into transformers' mixers
    (the scan benchmark compares both on one model).

    Returns:
        The number of mixers swapped.
    """
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, JambaMambaMixer) and type(child) is not mixer_class:
                setattr(parent, name, _with_class(child, mixer_class))
                swapped += 1
    return swapped


def set_fast_decode(model: nn.Module, enabled: bool) -> None:
    """Turn the fast decode step of every SDK mixer of ``model`` on or off (off: the sequence path)."""
    for module in model.modules():
        if isinstance(module, LongLLaVAMambaMixer):
            module.fast_decode = bool(enabled)


def fast_decode_enabled(model: nn.Module) -> bool:
    """Whether every Mamba mixer of ``model`` is an SDK mixer taking the fast decode step."""
    mixers = [m for m in model.modules() if isinstance(m, JambaMambaMixer)]
    return bool(mixers) and all(isinstance(m, LongLLaVAMambaMixer) and m.fast_decode for m in mixers)
