"""longllava-sdk: fine-tune and run LongLLaVA (hybrid Mamba-Transformer MLLM, ~1000 images).

Public API::

    from longllava_sdk import Pipeline, LongLLaVAConfig, LongLLaVAForConditionalGeneration
    from longllava_sdk import LongLLaVAProcessor, Media, InputAdapter, TaskHead, hookimpl

Heavy modules (torch, transformers) load on first use of a name that needs them, so
``import longllava_sdk`` and the CLI's start-up stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import LongLLaVAError
from .hookspecs import hookimpl

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "InputAdapter": ".adapters",
    "resolve_adapter": ".adapters",
    "sample_indices": ".adapters",
    "available_adapters": ".adapters",
    "LongLLaVAConfig": ".config",
    "Media": ".media",
    "LongLLaVAForConditionalGeneration": ".modeling.modeling_longllava",
    "Pipeline": ".pipeline",
    "LongLLaVAProcessor": ".processing",
    "build_tokenizer": ".processing",
    "TaskHead": ".heads",
    "available_heads": ".heads",
    "get_plugin_manager": ".plugin_manager",
}

__all__ = ["LongLLaVAError", "hookimpl", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
