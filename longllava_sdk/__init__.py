"""longllava-sdk: fine-tune and run LongLLaVA (hybrid Mamba-Transformer MLLM, ~1000 images).

Public API::

    from longllava_sdk import Pipeline, LongLLaVAConfig, LongLLaVAForConditionalGeneration
    from longllava_sdk import LongLLaVAProcessor, Media, InputAdapter, TaskHead, hookimpl

``import longllava_sdk`` registers the model with transformers' Auto classes
(``AutoConfig``, ``AutoModel``, ``AutoModelForCausalLM``, ``AutoModelForImageTextToText``,
``AutoProcessor``), so a saved model folder loads with plain transformers + peft after a bare
import. That needs torch and transformers' configuration / model modules (about 3 s on a
cold start); everything else loads on first use of a name that needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import LongLLaVAError
from .hookspecs import hookimpl

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
}

__all__ = ["LongLLaVAError", "hookimpl", *_LAZY]

import os as _os  # noqa: E402

import torch as _torch  # noqa: E402

# accelerate imports DeepSpeed (when installed) inside every save_pretrained, and DeepSpeed then
# warns "Setting accelerator to CPU ... unable to detect it" on a machine without a GPU: advice
# a CPU user cannot act on. Naming the accelerator (DeepSpeed's documented override) keeps it
# quiet and changes nothing else; a GPU machine or a user's own setting is left alone.
if "DS_ACCELERATOR" not in _os.environ and not _torch.cuda.is_available():
    _os.environ["DS_ACCELERATOR"] = "cpu"

# Registration with transformers' Auto classes happens when these modules are imported.
from .modeling import modeling_longllava as _modeling  # noqa: E402,F401
from .processing import processor as _processor  # noqa: E402,F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
