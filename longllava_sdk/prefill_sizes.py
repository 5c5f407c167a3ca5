"""The chunked prefill's sizes: chunk length and the attention-mask budget (no torch).

:mod:`longllava_sdk.modeling.chunked_prefill` runs the prefill with them and the memory
planner (:mod:`longllava_sdk.planner`) sizes its budget with them, without importing torch.
"""

from __future__ import annotations

import math

__all__ = ["DEFAULT_PREFILL_CHUNK", "DEFAULT_PREFILL_THRESHOLD", "MASK_BUDGET", "MIN_CHUNK", "effective_chunk"]

#: Tokens per prefill chunk by default (see docs/long_context.md for the measurement).
DEFAULT_PREFILL_CHUNK = 2048
#: Upper bound on ``chunk x (cached + chunk)``, the elements of the attention mask transformers
#: materialises for a chunk that continues a cache (SDPA cannot express a causal mask offset by
#: the cache length, so it gets a dense ``(B, 1, C, S)`` mask, converted to float inside): 2^25
#: elements is ~160 MB. Later chunks of a long prompt shrink to stay under it.
MASK_BUDGET = 1 << 25
#: Chunks never shrink below this many tokens for the mask budget (per-call overhead).
MIN_CHUNK = 256
#: Prompts longer than this are prefilled in chunks by default.
DEFAULT_PREFILL_THRESHOLD = 8192


def effective_chunk(chunk_size: int, cached: int, mask_budget: int | None = MASK_BUDGET) -> int:
    """Tokens of the next chunk when ``cached`` tokens precede it: ``chunk_size``, shrunk so that
    ``chunk * (cached + chunk) <= mask_budget`` (never below ``MIN_CHUNK`` or above ``chunk_size``)."""
    if mask_budget is None or chunk_size <= MIN_CHUNK:
        return chunk_size
    fit = int((-cached + math.sqrt(cached * cached + 4 * mask_budget)) / 2)
    return max(MIN_CHUNK, min(chunk_size, fit))
