"""Training stages as named recipes, and which components each one trains.

LongLLaVA is trained progressively (paper §3.3); every stage starts from the previous one's
output (``--model runs/align/model``)::

    align       projector only            vision, LLM frozen          (image-caption pairs)
    sft-single  LLM + projector           vision frozen               (single-image instructions)
    sft-multi   LLM + projector           vision frozen               (multi-image / video, + replay)
    text-sft    LLM only                  vision, projector frozen    (pure-text instructions)
    domain      LLM + projector + head    vision frozen               (what most users run; LoRA)

A model has four *components*; a stage says which of them train:

* ``vision``: the CLIP tower (``vision_tower.*``);
* ``projector``: the MLP between CLIP and the LLM (``projector.*``);
* ``llm``: the Jamba language model (``language_model.*``), through LoRA adapters when
  fine-tuning with LoRA, in full otherwise;
* ``head``: the task head's own weights (``multilabel`` / ``classify`` heads; the
  ``generate`` head is the LLM's ``lm_head`` and has none).

``text-sft`` freezes the projector because text-only batches never reach it: a trainable
parameter that gets no gradient is an error (see :func:`~longllava_sdk.training.lora.check_gradients`).

Some parameters can never receive a gradient and are frozen whatever the switches say
(:func:`unreachable_parameters`): CLIP layers after ``vision_feature_layer`` and CLIP's
``post_layernorm`` (the model reads an intermediate hidden state, -2 by default), and the
LLM's ``lm_head`` when a classification head replaces it.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import torch
from torch import nn

from ..errors import ConfigError, unknown_name_error
from ..recipes import COMPONENTS, STAGES, Stage  # the one stage table (recipes name stages)

#: parameter-name prefix of each model component (on the unwrapped LongLLaVA model).
COMPONENT_PREFIXES: dict[str, str] = {"vision": "vision_tower.", "projector": "projector.", "llm": "language_model."}


def get_stage(name: str | Stage) -> Stage:
    """The stage called ``name`` (``sft_single`` and ``SFT-Single`` work too)."""
    if isinstance(name, Stage):
        return name
    key = str(name).strip().lower().replace("_", "-")
    if key not in STAGES:
        raise unknown_name_error("stage", str(name), STAGES)
    return STAGES[key]


def component_of(parameter_name: str) -> str | None:
    """Component owning a parameter of the unwrapped model (peft prefixes are stripped)."""
    name = strip_wrapper_prefixes(parameter_name)
    for component, prefix in COMPONENT_PREFIXES.items():
        if name.startswith(prefix):
            return component
    if name.startswith("head."):  # TaskModel.head
        return "head"
    return None


_WRAPPER_PREFIX = re.compile(r"^(?:module\.)?(?:backbone\.)?(?:base_model\.model\.)?")


def strip_wrapper_prefixes(name: str) -> str:
    """``backbone.base_model.model.projector.x`` -> ``projector.x`` (DDP / TaskModel / peft prefixes)."""
    return _WRAPPER_PREFIX.sub("", name, count=1)


def unreachable_parameters(model: nn.Module, problem_type: str = "generate") -> list[str]:
    """Names of parameters of the LongLLaVA ``model`` that no loss can reach.

    * CLIP encoder layers after ``vision_feature_layer`` and ``post_layernorm``: the model
      takes hidden state ``vision_feature_layer`` (-2: the output of the second-to-last
      layer), so the last layer and the final norm never touch the output.
    * ``language_model.lm_head`` when ``problem_type`` is not ``generate``: a classification
      head reads the final hidden states instead of token logits.
    """
    config = model.config
    n_layers = config.vision_config.num_hidden_layers
    feature_layer = config.vision_feature_layer
    # hidden_states[k] is the output of layer k-1 (hidden_states[0] = embeddings).
    used_layers = (feature_layer % (n_layers + 1))  # layers 0 .. used_layers-1 are used
    names = []
    for name, _ in model.named_parameters():
        match = re.match(r"vision_tower\.vision_model\.encoder\.layers\.(\d+)\.", name) or \
            re.match(r"vision_tower\.encoder\.layers\.(\d+)\.", name)
        if match and int(match.group(1)) >= used_layers:
            names.append(name)
        elif ".post_layernorm." in name and name.startswith("vision_tower."):
            names.append(name)
        elif problem_type != "generate" and name.startswith("language_model.lm_head."):
            names.append(name)
    return names


def apply_stage_freezing(model: nn.Module, stage: Stage, problem_type: str = "generate",
                         head: nn.Module | None = None) -> dict[str, int]:
    """Set ``requires_grad`` on the unwrapped LongLLaVA ``model`` (and ``head``) for full training.

    Components the stage trains get ``requires_grad=True`` except the parameters from
    :func:`unreachable_parameters`; everything else is frozen. (LoRA runs freeze the base
    model inside peft instead: see :func:`~longllava_sdk.training.lora.apply_lora`.)

    Returns:
        ``{component: trainable parameter count}``.
    """
    trains = stage.trainable()
    unreachable = set(unreachable_parameters(model, problem_type))
    counts = {c: 0 for c in COMPONENTS}
    for name, param in model.named_parameters():
        component = component_of(name)
        on = bool(component and trains[component]) and name not in unreachable
        param.requires_grad_(on)
        if on:
            counts[component] += param.numel()  # type: ignore[index]
    if head is not None:
        for param in head.parameters():
            param.requires_grad_(trains["head"])
            if trains["head"]:
                counts["head"] += param.numel()
    if not any(counts.values()):
        raise ConfigError(f"stage {stage.name}: nothing to train (every component is frozen)")
    return counts


def freeze_parameters(model: nn.Module, names: Iterable[str]) -> int:
    """Freeze the parameters whose (wrapper-stripped) names are in ``names``; returns how many."""
    wanted = set(names)
    frozen = 0
    for name, param in model.named_parameters():
        bare = strip_wrapper_prefixes(name)
        bare = re.sub(r"\.modules_to_save\.[^.]+\.", ".", bare)
        if bare in wanted and param.requires_grad:
            param.requires_grad_(False)
            frozen += 1
    return frozen


def trainable_summary(model: nn.Module) -> dict[str, Any]:
    """Trainable / total parameter counts, overall and per component (for logs and reports)."""
    total = trainable = 0
    per: dict[str, int] = {}
    for name, param in model.named_parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
            component = component_of(name) or "other"
            per[component] = per.get(component, 0) + param.numel()
    return {"trainable": trainable, "total": total, "per_component": per}


def describe_stages() -> str:
    """A table of the stages for ``--help`` texts and docs."""
    rows = []
    for stage in STAGES.values():
        parts = [c for c in COMPONENTS if getattr(stage, c)]
        rows.append(f"{stage.name:<11} trains {', '.join(parts):<26} default {stage.finetune}, lr {stage.learning_rate:g}")
    return "\n".join(rows)


def parameters_of(model: nn.Module, component: str) -> list[torch.nn.Parameter]:
    """The parameters of one component of the unwrapped model."""
    prefix = COMPONENT_PREFIXES[component]
    return [p for n, p in model.named_parameters() if strip_wrapper_prefixes(n).startswith(prefix)]
