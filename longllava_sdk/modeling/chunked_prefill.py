"""Chunked prefill: the prompt goes through the backbone ``C`` tokens at a time.

A one-shot prefill of ``L`` tokens holds ``(B, L, ·)`` activations in every layer (the Mamba
layers' ``(B, 2 * hidden, L)`` projections, the MoE's routed copies, CLIP features of every
image...). Here the prompt is cut into column ranges ``[s, s + C)``; each chunk's embeddings
are built (text embeddings plus the features of the images whose placeholders it holds, see
:mod:`.image_stream`), then run through ``JambaForCausalLM`` with the generation cache:

* attention layers append the chunk's keys / values to the KV cache and attend over
  everything so far (transformers builds the causal mask from the cache length and the 2D
  ``attention_mask[:, :s + C]``, so left padding is masked as in a one-shot pass);
* Mamba layers continue from the cached conv state (transformers prepends it) and from the
  cached SSM state (the SDK's mixer reads it from the cache, :mod:`.mamba_mixer`;
  transformers' mixer alone would restart the scan from zeros at every chunk);
* only the last position's logits are computed (``logits_to_keep=1``) unless asked for all.

Peak activation memory is therefore bounded by ``C``, not by the prompt; what still grows
with the prompt is the attention KV cache (``L x H_kv x d x 2`` per attention layer) and
the ``(C, s + C)`` attention mask of the current chunk.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from ..context_limit import check_input_ids
from ..errors import ProtocolError
from ..prefill_sizes import (  # noqa: F401 (re-exported: the sizes are torch-free for the planner)
    DEFAULT_PREFILL_CHUNK,
    DEFAULT_PREFILL_THRESHOLD,
    MASK_BUDGET,
    MIN_CHUNK,
    effective_chunk,
)
from . import cache_access
from .cache_access import JAMBA_CACHE_ARGUMENT
from .image_stream import ImageFeatureFeeder, as_image_source
from .sequence_boundaries import mamba_sequence_boundaries

__all__ = ["PrefillOutput", "chunked_prefill", "resolve_chunk_size", "DEFAULT_PREFILL_CHUNK",
           "DEFAULT_PREFILL_THRESHOLD", "MASK_BUDGET", "effective_chunk"]

@dataclass
class PrefillOutput:
    """What :func:`chunked_prefill` returns.

    Attributes:
        cache: the generation cache after the whole prompt (KV + Mamba conv / SSM states).
        logits: ``(B, 1, V)`` logits of the last position, or ``(B, L, V)`` with
            ``return_all_logits``.
        chunks: how many backbone calls the prompt took.
        images_encoded: how many images went through the vision tower.
    """

    cache: Any
    logits: torch.Tensor
    chunks: int
    images_encoded: int


def resolve_chunk_size(config: Any, prompt_length: int, requested: int | None = None) -> int | None:
    """The chunk size for a prompt of ``prompt_length`` tokens, or ``None`` for a one-shot prefill.

    Args:
        config: the model config (``chunked_prefill_size``, ``chunked_prefill_threshold``).
        requested: an explicit chunk size (``0`` or negative: never chunk); ``None`` uses the
            config: chunks of ``chunked_prefill_size`` for prompts longer than
            ``chunked_prefill_threshold``.
    """
    if requested is not None:
        size = int(requested)
        return size if 0 < size < prompt_length else None
    size = getattr(config, "chunked_prefill_size", DEFAULT_PREFILL_CHUNK)
    threshold = getattr(config, "chunked_prefill_threshold", DEFAULT_PREFILL_THRESHOLD)
    if not size or size <= 0 or prompt_length <= threshold:
        return None
    return int(size)


def chunked_prefill(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    images: Any = None,
    chunk_size: int = DEFAULT_PREFILL_CHUNK,
    image_count: int | None = None,
    reset_mask: torch.Tensor | None = None,
    cache: Any = None,
    return_all_logits: bool = False,
    mask_budget: int | None = MASK_BUDGET,
) -> PrefillOutput:
    """Run ``input_ids`` through ``model`` in chunks of ``chunk_size`` tokens, building the cache.

    Args:
        model: a :class:`~longllava_sdk.LongLLaVAForConditionalGeneration`.
        input_ids: ``(B, L)`` prompt with ``image_token_id`` placeholders (left padded for B > 1).
        attention_mask: ``(B, L)`` 1 for real tokens, 0 for padding; ``None``: all real.
        images: the prompt's images: a ``(N, 3, H, W)`` tensor, an
            :class:`~longllava_sdk.modeling.image_stream.ImageSource`, a loader callable or an
            iterable of pixel chunks in placeholder order (see :func:`as_image_source`).
        chunk_size: tokens per chunk (``>= 1``); any boundary is allowed, also inside an
            image's placeholder run.
        image_count: number of images for a callable / iterable ``images``.
        reset_mask: ``(B, L)`` bool packed-sample starts (Mamba state restarts there).
        cache: a cache to continue (its tokens precede ``input_ids``); ``None``: a new one.
        return_all_logits: keep the logits of every position (tests; ``(B, L, V)`` memory).
        mask_budget: cap on a chunk's attention-mask elements (see :data:`MASK_BUDGET`);
            ``None``: every chunk has ``chunk_size`` tokens.

    Returns:
        :class:`PrefillOutput`.

    Raises:
        ProtocolError: the prompt exceeds ``config.max_context``, or images and placeholders disagree.
    """
    if chunk_size < 1:
        raise ProtocolError(f"prefill chunk_size must be >= 1, got {chunk_size}")
    cfg = model.config
    check_input_ids(cfg, input_ids, cached_tokens=cache_access.cached_tokens(cache))
    if reset_mask is not None and tuple(reset_mask.shape) != tuple(input_ids.shape):
        raise ProtocolError(f"reset_mask has shape {tuple(reset_mask.shape)}, input_ids {tuple(input_ids.shape)}")
    feeder = ImageFeatureFeeder(model, input_ids, as_image_source(images, image_count))
    if cache is None:
        cache = cache_access.new_hybrid_cache(cfg.text_config)
    past = cache_access.cached_tokens(cache)
    if attention_mask is not None and attention_mask.shape[1] == input_ids.shape[1] and past:
        # The mask must cover the cached tokens too: assume they were all real.
        attention_mask = torch.cat([attention_mask.new_ones(attention_mask.shape[0], past), attention_mask], 1)


    # transformers cannot build the attention mask for a cache without attention layers (it asks
    # the cache for its length); such a model only needs the Mamba padding mask, passed ready-made.
    mamba_only = "attention" not in cfg.text_config.layers_block_type
    length = input_ids.shape[1]
    all_logits: list[torch.Tensor] = []
    logits = None
    chunks = 0
    budget = None if mamba_only else mask_budget
    start = 0
    while start < length:
        end = min(start + effective_chunk(chunk_size, past + start, budget), length)
        embeds = feeder.embed(start, end, input_ids)
        boundaries = (mamba_sequence_boundaries(reset_mask[:, start:end]) if reset_mask is not None
                      else contextlib.nullcontext())
        mask = None if attention_mask is None else attention_mask[:, : past + end]
        if mamba_only:
            padded = mask is not None and end - start > 1 and not bool(mask[:, past + start:].all())
            mask = {"linear_attention": mask[:, past + start:] if padded else None}
        with boundaries:
            out = model.language_model(
                inputs_embeds=embeds,
                # explicit: transformers would ask the cache, which an all-Mamba cache cannot answer
                position_ids=torch.arange(past + start, past + end, device=embeds.device).unsqueeze(0),
                attention_mask=mask,
                use_cache=True,
                logits_to_keep=0 if return_all_logits else 1,
                output_router_logits=False,
                **{JAMBA_CACHE_ARGUMENT: cache},
            )
        chunks += 1
        del embeds
        logits = out.logits
        if return_all_logits:
            all_logits.append(logits)
        start = end
    feeder.finish()
    if logits is None:
        raise ProtocolError("cannot prefill an empty prompt")
    return PrefillOutput(cache=cache, logits=torch.cat(all_logits, 1) if return_all_logits else logits,
                         chunks=chunks, images_encoded=feeder.encoded)
