"""Packed-sample boundaries for the Mamba layers: where the SSM state and the conv restart.

Wrap a forward in ``with mamba_sequence_boundaries(reset_mask):`` where ``reset_mask``
``(B, L)`` is True at the first token of every packed sample; every
:class:`~longllava_sdk.modeling.mamba_mixer.LongLLaVAMambaMixer` called inside reads it with
:func:`reset_mask_for`. Why a context variable and not an argument: the mask has to cross
transformers' ``JambaModel`` and decoder layers, which call the mixer with a fixed set of
arguments (hidden states, cache, attention mask). The cached state of a chunked prefill, by
contrast, travels in the cache object the mixer receives and needs no such channel.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..errors import InputError

__all__ = [
    "mamba_sequence_boundaries",
    "current_reset_mask",
    "reset_mask_for",
    "boundaries_checkpoint_context_fn",
    "reset_mask_from_position_ids",
]

_reset_mask_var: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(
    "longllava_mamba_reset_mask", default=None
)


@contextmanager
def mamba_sequence_boundaries(reset_mask: torch.Tensor | None) -> Iterator[None]:
    """Make every Mamba layer called inside the block respect packed-sample boundaries.

    Args:
        reset_mask: ``(batch, length)`` bool, True at the first token of each packed sample:
            the SSM state is zeroed before that token and the causal convolution does not
            reach back past it. ``None`` turns boundaries off inside the block.
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


def current_reset_mask() -> torch.Tensor | None:
    """The ``(batch, length)`` reset mask set by the innermost :func:`mamba_sequence_boundaries`."""
    return _reset_mask_var.get()


def reset_mask_for(batch: int, length: int, device: torch.device) -> torch.Tensor | None:
    """The active reset mask for a Mamba layer input of ``batch`` rows and ``length`` tokens.

    Returns:
        ``(batch, length)`` bool on ``device``, or ``None`` outside any boundaries block.

    Raises:
        InputError: the active mask does not have that shape.
    """
    mask = _reset_mask_var.get()
    if mask is None:
        return None
    if tuple(mask.shape) != (batch, length):
        raise InputError(
            None,
            f"Mamba mixer: the active mamba_sequence_boundaries mask has shape {tuple(mask.shape)} but the "
            f"Mamba layer sees batch {batch} and length {length}",
        )
    return mask.to(device)


def boundaries_checkpoint_context_fn():
    """``context_fn`` for ``torch.utils.checkpoint`` (non-reentrant) that keeps boundaries.

    Activation checkpointing reruns layer forwards during the backward, possibly after the
    ``with mamba_sequence_boundaries(...)`` block has closed or on autograd's worker thread,
    where the context variable is unset. This captures the mask active at the original forward
    and re-activates it for the recomputation; ``LongLLaVAForConditionalGeneration`` installs it
    whenever activation checkpointing is turned on::

        torch.utils.checkpoint.checkpoint(layer, hidden, use_reentrant=False,
                                          context_fn=boundaries_checkpoint_context_fn)
    """
    mask = _reset_mask_var.get()
    return contextlib.nullcontext(), mamba_sequence_boundaries(mask)


def reset_mask_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Reset mask for packed rows whose position ids restart at 0 for every sample.

    (HF's ``DataCollatorWithFlattening`` produces such ``position_ids``.) ``(B, L) -> (B, L)`` bool.
    """
    return position_ids == 0
