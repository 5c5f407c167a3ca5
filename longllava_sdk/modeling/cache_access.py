"""The one place where the SDK reads transformers' hybrid (attention KV + Mamba) cache.

transformers changed how a Mamba layer's state is read from the generation cache:

=====================  =========================================================================
transformers           reading layer ``i``'s conv / SSM state
=====================  =========================================================================
5.19 - 5.22            ``cache.has_previous_state(i)``, then ``cache.layers[i].conv_states[0]`` /
                       ``cache.layers[i].recurrent_states[0]``; the mixer takes ``cache_params=``
5.23 and later         ``cache.get_conv_state(i)`` / ``cache.get_recurrent_state(i)`` (``None``
                       before the layer's first update); the mixer takes ``cache=``
=====================  =========================================================================

Writing is the same public pair on every supported version: ``cache.update_conv_state(x, i,
conv_kernel_size=K)`` (stores the last ``K`` conv inputs, returns them behind the cached left
context) and ``cache.update_recurrent_state(state, i)``; 5.24 added a per-layer token count
that a decode step which updates the states in place must advance (``cache.increase_count``).

Everything else in the SDK calls the functions below, never the cache's attributes, so a
transformers upgrade that moves them again breaks here (and in
``tests/test_long_context.py::test_cache_access_matches_the_installed_transformers``), not
silently in the chunked prefill.

Shapes (``B`` batch, ``D`` Mamba channels = ``mamba_expand * hidden_size``, ``K`` conv width,
``N`` state size, ``H_kv`` KV heads, ``S`` cached tokens, ``d`` head dim)::

    conv state (B, D, K)    SSM state (B, D, N)    attention keys / values (B, H_kv, S, d)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, JambaConfig, JambaForCausalLM
from transformers.models.jamba.modeling_jamba import JambaMambaMixer

__all__ = [
    "MIXER_CACHE_ARGUMENT",
    "CacheBytes",
    "new_hybrid_cache",
    "has_previous_state",
    "conv_state",
    "recurrent_state",
    "is_recording_past",
    "conv_input_with_context",
    "store_recurrent_state",
    "count_decoded_token",
    "cached_tokens",
    "cache_bytes",
]


def cache_keyword(forward: Any, names: tuple[str, ...], owner: str) -> str:
    """The keyword under which ``forward`` takes the cache: the first of ``names`` it declares.

    transformers renames cache arguments between minor releases (``past_key_values`` ->
    ``cache`` for the model in 5.24, ``cache_params`` -> ``cache`` for the mixer in 5.23; the old
    names warn until 5.40). The SDK passes the cache under the name the installed version
    declares, read from the signature: no warning, and an upgrade that drops every known name
    fails loudly here (and in ``tests/test_generation_cache.py``).
    """
    parameters = inspect.signature(forward).parameters
    for name in names:
        if name in parameters:
            return name
    raise RuntimeError(
        f"the installed transformers' {owner} takes none of {', '.join(f'`{n}`' for n in names)}; this "
        "longllava-sdk version does not support it (see the transformers range in pyproject.toml)"
    )


#: ``cache`` on transformers >= 5.24, ``past_key_values`` before.
JAMBA_CACHE_ARGUMENT = cache_keyword(JambaForCausalLM.forward, ("cache", "past_key_values"),
                                     "JambaForCausalLM.forward")
#: ``cache`` on transformers >= 5.23, ``cache_params`` before.
MIXER_CACHE_ARGUMENT = cache_keyword(JambaMambaMixer.forward, ("cache", "cache_params"), "JambaMambaMixer.forward")

# transformers >= 5.23 exposes public getters; older versions only the per-layer dicts.
_HAS_GETTERS = hasattr(DynamicCache, "get_conv_state") and hasattr(DynamicCache, "get_recurrent_state")


def new_hybrid_cache(text_config: JambaConfig) -> DynamicCache:
    """An empty generation cache laid out for ``text_config``'s attention / Mamba layers."""
    return DynamicCache(config=text_config)


def _layer(cache: Any, layer_idx: int) -> Any | None:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise RuntimeError(f"{type(cache).__name__} has no `layers`; the SDK cannot read its Mamba states")
    return layers[layer_idx] if layer_idx < len(layers) else None


def has_previous_state(cache: Any, layer_idx: int) -> bool:
    """Whether Mamba layer ``layer_idx`` of ``cache`` already holds the state of earlier tokens."""
    if cache is None or _layer(cache, layer_idx) is None:
        return False
    if _HAS_GETTERS:
        return cache.get_recurrent_state(layer_idx) is not None
    return bool(cache.has_previous_state(layer_idx))


def conv_state(cache: Any, layer_idx: int) -> torch.Tensor | None:
    """Mamba layer ``layer_idx``'s conv state ``(B, D, K)`` (the last ``K`` inputs), or ``None``."""
    if not has_previous_state(cache, layer_idx):
        return None
    if _HAS_GETTERS:
        return cache.get_conv_state(layer_idx)
    return cache.layers[layer_idx].conv_states[0]


def recurrent_state(cache: Any, layer_idx: int) -> torch.Tensor | None:
    """Mamba layer ``layer_idx``'s SSM state ``(B, D, N)`` after the cached tokens, or ``None``.

    The tensor is the cache's own (transformers updates it in place), not a copy.
    """
    if not has_previous_state(cache, layer_idx):
        return None
    if _HAS_GETTERS:
        return cache.get_recurrent_state(layer_idx)
    return cache.layers[layer_idx].recurrent_states[0]


def is_recording_past(cache: Any, layer_idx: int) -> bool:
    """Whether layer ``layer_idx`` keeps its full conv history for a later crop (assisted decoding)."""
    layer = _layer(cache, layer_idx) if cache is not None else None
    return bool(getattr(layer, "record_past", False))


def conv_input_with_context(cache: Any, layer_idx: int, new_columns: torch.Tensor,
                            kernel_size: int) -> torch.Tensor:
    """Store the conv inputs of new tokens in ``cache`` and return them behind the cached context.

    Args:
        new_columns: ``(B, D, L)`` the conv inputs of the ``L`` new tokens.
        kernel_size: ``K``, the conv width (the cache keeps the last ``K`` inputs).

    Returns:
        ``(B, D, Lc + L)``: the layer's cached inputs (``Lc = K``; zero padding before the first
        tokens when ``L < K``) followed by ``new_columns``. The last ``L`` columns of a causal
        conv over it are the new tokens' outputs.
    """
    return cache.update_conv_state(new_columns, layer_idx, conv_kernel_size=kernel_size)


def store_recurrent_state(cache: Any, layer_idx: int, state: torch.Tensor) -> None:
    """Make ``state`` ``(B, D, N)`` Mamba layer ``layer_idx``'s SSM state after the tokens just run."""
    cache.update_recurrent_state(state, layer_idx)


def count_decoded_token(cache: Any, layer_idx: int) -> None:
    """Advance layer ``layer_idx``'s token count after a decode step that updated its states in place.

    (transformers >= 5.24 counts tokens per Mamba layer; earlier versions keep no such count.)
    """
    if hasattr(cache, "increase_count"):
        cache.increase_count(layer_idx, 0)


def cached_tokens(cache: Any) -> int:
    """Tokens the attention layers of ``cache`` hold (0 for an empty cache).

    A cache without any attention layer (an all-Mamba model) keeps no token count: 0.
    """
    if cache is None:
        return 0
    if not any(hasattr(layer, "keys") for layer in getattr(cache, "layers", ())):
        return 0
    return int(cache.get_seq_length())


@dataclass(frozen=True)
class CacheBytes:
    """Bytes held by a hybrid cache: attention keys + values, Mamba conv and SSM states."""

    kv: int
    conv: int
    ssm: int

    @property
    def total(self) -> int:
        return self.kv + self.conv + self.ssm


def cache_bytes(cache: Any) -> CacheBytes:
    """Measure the tensors a (hybrid or plain attention) cache holds, layer by layer."""
    kv = conv = ssm = 0
    for idx, layer in enumerate(getattr(cache, "layers", ())):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                kv += tensor.numel() * tensor.element_size()
        if not hasattr(layer, "conv_states"):  # an attention-only layer
            continue
        for state, kind in ((conv_state(cache, idx), "conv"), (recurrent_state(cache, idx), "ssm")):
            if isinstance(state, torch.Tensor):
                size = state.numel() * state.element_size()
                conv, ssm = (conv + size, ssm) if kind == "conv" else (conv, ssm + size)
    return CacheBytes(kv=kv, conv=conv, ssm=ssm)
