"""Text and image processing: the tag protocol, chat template, tokenizer and processor.

The processor and the tokenizer's transformers wrapper load on first use, so that
``processing.protocol`` (the tags; what ``longllava-sdk plan`` counts) imports without
torch or transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy_exports import lazy_exports

if TYPE_CHECKING:
    from .processor import IGNORE_INDEX, EncodedSample, LongLLaVAProcessor
    from .tokenizer import build_tokenizer

__all__ = ["IGNORE_INDEX", "EncodedSample", "LongLLaVAProcessor", "build_tokenizer"]
_LAZY = {"IGNORE_INDEX": ".processor", "EncodedSample": ".processor", "LongLLaVAProcessor": ".processor",
         "build_tokenizer": ".tokenizer"}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
