"""longllava-sdk: fine-tune and run LongLLaVA (hybrid Mamba-Transformer MLLM, ~1000 images).

Public API::

    from longllava_sdk import Pipeline, LongLLaVAConfig, LongLLaVAForConditionalGeneration
    from longllava_sdk import LongLLaVAProcessor, Media, InputAdapter, TaskHead, hookimpl

Importing the package is light (no torch, transformers or numba): every name loads on first
use. The model is registered with transformers' Auto classes (``AutoConfig``, ``AutoModel``,
``AutoModelForCausalLM``, ``AutoModelForImageTextToText``, ``AutoProcessor``) as soon as both
this package and transformers are imported, in either order: ``import longllava_sdk`` and a
saved folder loads with plain transformers + peft. (A post-import hook on ``transformers``
calls :func:`register_auto_classes`; a process that never imports transformers, such as
``longllava-sdk --help``, never pays for torch.)
"""

from __future__ import annotations

import sys as _sys
from typing import Any

import wrapt as _wrapt

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


#: the SDK's modules that register their class with the Auto classes when they are imported
_SELF_REGISTERING = {
    "longllava_sdk.config": "LongLLaVAConfig",
    "longllava_sdk.modeling.modeling_longllava": "LongLLaVAForConditionalGeneration",
    "longllava_sdk.processing.processor": "LongLLaVAProcessor",
}


def _register_when_transformers_loads(_transformers: Any) -> None:
    """Post-import hook on ``transformers``: register the Auto classes, unless the SDK is the importer.

    When one of the SDK's own class modules imports transformers, that module is still running
    (its class is not defined yet) and registers itself when it finishes; importing it again
    from here would meet a half-initialised module.
    """
    for module, name in _SELF_REGISTERING.items():
        loaded = _sys.modules.get(module)
        if loaded is not None and not hasattr(loaded, name):
            return
    register_auto_classes()


# Runs at once if transformers is already imported, else right after the caller imports it.
_wrapt.register_post_import_hook(_register_when_transformers_loads, "transformers")

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
