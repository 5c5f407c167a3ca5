"""One recurrent step of the selective scan in torch (the SSM half of a Mamba decode step).

The same step as mamba-ssm's ``selective_state_update``, which :mod:`.interface` uses instead
on CUDA when the package imports.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["selective_state_update_torch"]


def selective_state_update_torch(
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
) -> torch.Tensor:
    """``h <- exp(dt A) h + dt x B``; ``y = (C . h + D x) * silu(z)``.

    Args:
        state: ``(B, D, N)`` SSM state, updated in place.
        hidden_states, dt, z: ``(B, D)``; A: ``(D, N)``; B, C: ``(B, N)``; D, dt_bias: ``(D,)``.

    Returns:
        ``(B, D)`` in ``hidden_states.dtype``.
    """
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
