"""Hook specifications: every extension point of the SDK.

Plugins implement these with ``@longllava_sdk.hookimpl`` and register through the
``longllava_sdk`` entry-point group; the built-in adapters, heads and domains do the same.
Each hook is documented in ``docs/plugin_hooks.md`` (signature, arguments, return value,
example); ``tests/test_hook_docs.py`` fails when a hook here lacks a docstring, a section
there, or a test.

Kinds of hooks:

* ``longllava_register_*`` return lists; the SDK concatenates every plugin's list.
* ``firstresult`` hooks (``longllava_apply_lora``) stop at the first non-``None`` answer.
* any hook may be wrapped with ``@hookimpl(wrapper=True)`` (a generator whose ``yield``
  returns the other implementations' result) where a plugin needs to act around them.

An implementation may accept any subset of a hook's arguments, by name; an implementation
whose name is not a hook below, or that asks for an argument the hook does not pass, is
rejected by :mod:`longllava_sdk.plugin_manager` (named in the error, other plugins unaffected).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import peft
    import torch
    from transformers import TrainerCallback, TrainingArguments

    from .adapters import InputAdapter
    from .config import LongLLaVAConfig
    from .exporters import Exporter
    from .heads import TaskHead
    from .importers import Importer
    from .media import Media

PROJECT_NAME = "longllava_sdk"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def longllava_register_adapters() -> list[type[InputAdapter]]:
    """Return input adapter classes (subclasses of ``longllava_sdk.adapters.InputAdapter``)."""


@hookspec
def longllava_register_heads() -> list[type[TaskHead]]:
    """Return task head classes (subclasses of ``longllava_sdk.heads.TaskHead``)."""


@hookspec
def longllava_register_domains() -> list[str | os.PathLike[str] | Any]:
    """Return domain recipes: paths to recipe YAML files or ``longllava_sdk.recipes.Recipe`` objects."""


@hookspec
def longllava_register_commands() -> list[Callable[..., Any]]:
    """Return plain functions to add as ``longllava-sdk`` sub-commands (name from the function)."""


@hookspec
def longllava_register_importers() -> list[type[Importer]]:
    """Return dataset importer classes (subclasses of ``longllava_sdk.importers.Importer``)."""


@hookspec
def longllava_register_exporters() -> list[type[Exporter]]:
    """Return answer exporter classes (subclasses of ``longllava_sdk.exporters.Exporter``)."""


@hookspec
def longllava_expert_findings(media: Media) -> str | None:
    """Return an expert model's findings about one media source as text for the prompt, or ``None``."""


@hookspec
def longllava_model_loaded(model: torch.nn.Module, config: LongLLaVAConfig) -> None:
    """Called after a model is built or loaded, before it is used or trained."""


@hookspec(firstresult=True)
def longllava_apply_lora(model: torch.nn.Module, lora_config: peft.LoraConfig) -> torch.nn.Module | None:
    """Return the model with LoRA applied to replace the default peft wrapping, or ``None``."""


@hookspec
def longllava_trainer_callbacks(training_args: TrainingArguments,
                                recipe: Any) -> list[TrainerCallback]:  # recipe: longllava_sdk.recipes.Recipe
    """Return extra ``transformers.TrainerCallback`` objects for a training run."""
