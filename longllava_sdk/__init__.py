"""longllava-sdk: fine-tune and run LongLLaVA (hybrid Mamba-Transformer MLLM, ~1000 images).

Public API::

    from longllava_sdk import Pipeline, LongLLaVAConfig, LongLLaVAForConditionalGeneration
    from longllava_sdk import LongLLaVAProcessor, Media, InputAdapter, TaskHead, hookimpl

Importing the package is light (no torch, transformers or numba): every name loads on first
use. The model is registered with transformers' Auto classes (``AutoConfig``, ``AutoModel``,
``AutoModelForCausalLM``, ``AutoModelForImageTextToText``, ``AutoProcessor``) by
:func:`register_auto_classes`, which the SDK calls whenever it loads or builds a model, and
``import longllava_sdk`` calls when transformers is already imported (``import transformers``
first, then ``import longllava_sdk``: a saved folder loads with plain transformers + peft).
Otherwise call ``longllava_sdk.register_auto_classes()`` before the Auto classes.
"""

from __future__ import annotations

import sys as _sys

from .errors import LongLLaVAError
from .hookspecs import hookimpl
from .lazy_exports import lazy_exports

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "InputAdapter": ".adapters",
    "sample_indices": ".adapters",
    "resolve_adapter": ".plugin_manager",
    "available_adapters": ".plugin_manager",
    "available_heads": ".plugin_manager",
    "LongLLaVAConfig": ".config",
    "Media": ".media",
    "LongLLaVAForConditionalGeneration": ".modeling.modeling_longllava",
    "Pipeline": ".pipeline",
    "LongLLaVAProcessor": ".processing",
    "build_tokenizer": ".processing",
    "TaskHead": ".heads",
    "get_plugin_manager": ".plugin_manager",
    "LoadOptions": ".options",
}

__all__ = ["LongLLaVAError", "hookimpl", "register_auto_classes", *_LAZY]



def register_auto_classes() -> None:
    """Register LongLLaVA with transformers' Auto classes (imports torch and transformers; idempotent)."""
    from .modeling import modeling_longllava  # noqa: F401  (registers config and models on import)
    from .processing import processor  # noqa: F401  (registers AutoProcessor on import)


if "transformers" in _sys.modules:  # the caller uses transformers already: the Auto classes work at once
    register_auto_classes()


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
