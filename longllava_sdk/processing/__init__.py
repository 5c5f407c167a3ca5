"""Text and image processing: the tag protocol, chat template, tokenizer and processor.

The processor and the tokenizer's transformers wrapper load on first use, so that
``processing.protocol`` (the tags; what ``longllava-sdk plan`` counts) imports without
torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .processor import IGNORE_INDEX, EncodedSample, LongLLaVAProcessor
    from .tokenizer import build_tokenizer

__all__ = ["IGNORE_INDEX", "EncodedSample", "LongLLaVAProcessor", "build_tokenizer"]
_LAZY = {"IGNORE_INDEX": ".processor", "EncodedSample": ".processor", "LongLLaVAProcessor": ".processor",
         "build_tokenizer": ".tokenizer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
