"""Multi-token forwards that continue a cache start the Mamba scan from the cached state.

transformers' ``JambaMambaMixer.forward`` handles a cache in two ways: a one-token step uses
the cached conv and SSM states (decode), and any longer input runs the conv over the cached
left context (correct) but the selective scan from a *zero* SSM state, then overwrites the
cached state with the result. Feeding a prompt in chunks (chunked prefill) or appending
several tokens to a cache would therefore forget everything before the chunk in every Mamba
layer. The SDK fixes this without replacing the mixer: a forward pre-hook on each mixer
reads the layer's cached SSM state (through :mod:`.cache_access`) and opens
:func:`~longllava_sdk.modeling.mamba_kernels.mamba_initial_state` around the call, so the
SDK's scan dispatcher (which the mixer calls by name) starts from it; a forward hook closes
the block again, also when the forward raises.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers.models.jamba.modeling_jamba import JambaMambaMixer

from . import cache_access
from .mamba_kernels import mamba_initial_state

__all__ = ["attach_cache_continuation", "continuation_attached"]

_ATTR = "_longllava_continuation"


def _mixer_cache(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The cache a mixer call received: transformers' decoder layers pass it by keyword."""
    for name in (cache_access.MIXER_CACHE_ARGUMENT, "cache", "cache_params"):
        if kwargs.get(name) is not None:
            return kwargs[name]
    return args[1] if len(args) > 1 else None


def _enter(module: JambaMambaMixer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    hidden = args[0] if args else kwargs.get("hidden_states")
    cache = _mixer_cache(args, kwargs)
    state = None
    # One-token steps already use the cached state (transformers' decode path); only longer
    # inputs that follow cached tokens need it supplied.
    if cache is not None and hidden is not None and hidden.shape[1] > 1:
        state = cache_access.recurrent_state(cache, module.layer_idx)
    block = mamba_initial_state(state)
    block.__enter__()
    getattr(module, _ATTR).append(block)


def _exit(module: JambaMambaMixer, args: tuple[Any, ...], output: Any) -> None:
    stack = getattr(module, _ATTR)
    if stack:
        stack.pop().__exit__(None, None, None)


def attach_cache_continuation(model: nn.Module) -> list[RemovableHandle]:
    """Register the continuation hooks on every Jamba Mamba mixer inside ``model`` (idempotent).

    Returns:
        The hook handles registered by this call (empty when they were attached already).
    """
    handles: list[RemovableHandle] = []
    for module in model.modules():
        if isinstance(module, JambaMambaMixer) and not hasattr(module, _ATTR):
            setattr(module, _ATTR, [])
            handles.append(module.register_forward_pre_hook(_enter, with_kwargs=True))
            # always_call: the state block is closed even when the forward raises.
            handles.append(module.register_forward_hook(_exit, always_call=True))
    return handles


def continuation_attached(model: nn.Module) -> bool:
    """Whether every Mamba mixer of ``model`` carries the continuation hooks."""
    mixers = [m for m in model.modules() if isinstance(m, JambaMambaMixer)]
    return bool(mixers) and all(hasattr(m, _ATTR) for m in mixers)
