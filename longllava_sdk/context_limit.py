"""The model's context limit, checked for every input before any heavy work.

A prompt occupies ``images x tokens_per_image + text tokens`` positions. Jamba has no
positional embeddings, so nothing in the arithmetic breaks past any length, but the model
was only trained (and is only supported) up to ``config.max_context`` tokens, and memory
and time grow with the length (attention KV cache, prefill). :func:`check_context` is the
single check: the Pipeline calls it with the counts it knows before decoding images, and
the model calls :func:`check_input_ids` on what it is given (training included: the
trainer caps ``max_length`` at the context limit and every batch goes through the model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ProtocolError

if TYPE_CHECKING:  # torch only for the annotation: the planner reads the limits without it
    import torch

__all__ = ["context_tokens", "check_context", "check_input_ids", "max_images_for"]


def context_tokens(config: Any, *, text_tokens: int, images: int = 0) -> int:
    """Positions a prompt of ``text_tokens`` text tokens and ``images`` images occupies."""
    return int(text_tokens) + int(images) * int(config.tokens_per_image)


def max_images_for(config: Any, text_tokens: int) -> int:
    """The most images that fit the context next to ``text_tokens`` text tokens (0 if none do)."""
    return max(0, (int(config.max_context) - int(text_tokens)) // int(config.tokens_per_image))


def check_context(config: Any, *, text_tokens: int, images: int = 0, source: str | None = None) -> int:
    """Raise :class:`ProtocolError` when the prompt does not fit ``config.max_context``.

    Args:
        config: a :class:`~longllava_sdk.LongLLaVAConfig` (``max_context``, ``tokens_per_image``).
        text_tokens: text tokens of the prompt (tags and chat template included, image
            placeholders excluded).
        images: images (frames, slices, tiles) the prompt holds.
        source: what the prompt came from, for the message (a file, a dataset row...).

    Returns:
        The number of positions the prompt occupies.
    """
    total = context_tokens(config, text_tokens=text_tokens, images=images)
    limit = int(config.max_context)
    if total > limit:
        where = f"{source}: " if source else ""
        fit = max_images_for(config, text_tokens)
        raise ProtocolError(
            f"{where}the input needs {images} images x {config.tokens_per_image} tokens + {text_tokens} text tokens "
            f"= {total} tokens, more than the model's context of {limit} tokens (config.max_context); "
            f"at most {fit} images fit next to this text"
        )
    return total


def check_input_ids(config: Any, input_ids: torch.Tensor, cached_tokens: int = 0) -> int:
    """:func:`check_context` for tokenised input ``(B, L)`` (the longest row counts).

    Args:
        input_ids: ``(B, L)`` with ``image_token_id`` placeholders.
        cached_tokens: tokens already in the generation cache before ``input_ids``.

    Returns:
        The positions of the longest row, cache included.
    """
    if input_ids.dim() != 2:
        raise ProtocolError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    length = input_ids.shape[1] + int(cached_tokens)
    if length <= int(config.max_context):  # the common case: nothing to count
        return length
    placeholders = (input_ids == config.image_token_id).sum(dim=1)
    row = int(placeholders.argmax()) if input_ids.shape[0] > 1 else 0
    images = int(placeholders[row]) // int(config.tokens_per_image)
    return check_context(config, text_tokens=length - images * int(config.tokens_per_image), images=images)
