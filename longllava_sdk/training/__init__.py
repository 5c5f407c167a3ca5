"""Training: datasets, packing, stages, LoRA / full fine-tuning, checkpoints, whole runs.

``finetune(...)`` runs a recipe end to end (``plan_finetune`` + ``run_finetune``); it is the
``longllava-sdk finetune`` command.
"""

from __future__ import annotations

from typing import Any

__all__ = ["finetune", "plan_finetune", "run_finetune", "FinetuneArgs", "FinetunePlan", "FinetuneResult"]


def __getattr__(name: str) -> Any:  # the trainer imports torch / transformers: load on first use
    if name in __all__:
        from . import finetuning as module

        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
