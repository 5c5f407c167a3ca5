"""LoRA for LongLLaVA's Jamba backbone, and the checks that it really trains.

Targets (measured with peft 0.21 on transformers 5.23's Jamba; see docs/training.md):

===============================  =========================================================
attention ``q/k/v/o_proj``        attach and train
Mamba ``in_proj x_proj out_proj`` attach and train
dense MLP ``gate/up/down_proj``   attach and train (every layer of the 9B, even layers of A13B)
fused experts                     ``feed_forward.experts.gate_up_proj`` / ``.down_proj`` are
                                  3-D parameters, reached with peft ``target_parameters``
                                  (peft's ``ParamWrapper``; it allows no LoRA dropout)
Mamba ``dt_proj``                 never: the mixer reads ``dt_proj.weight`` directly and
                                  bypasses the module's forward, so its LoRA gets no gradient
                                  (and DDP then fails on unused parameters). This is why
                                  ``all-linear`` is wrong here.
Mamba ``conv1d``, MoE ``router``  cannot be targeted by peft
===============================  =========================================================

Targets are matched only inside ``language_model`` (CLIP also has ``q_proj``/``k_proj``/...).
The projector (and the vision tower, when a stage trains it) are trained in full alongside
the adapters through peft's ``modules_to_save``, so the adapter directory holds everything
that changed. Task heads live outside the peft model and are trained in full.

:func:`check_gradients` is run by the trainer after the first backward pass: every
trainable parameter must have received a gradient that is finite and not all zeros, else
training stops with :class:`~longllava_sdk.errors.TrainingError` naming the parameters.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..errors import ConfigError, TrainingError
from ..model_folders import merge_lora  # re-exported: the one implementation
from ..modeling.task_model import unwrap_longllava  # re-exported
from ..recipes import JAMBA_LORA_TARGET_MODULES, JAMBA_LORA_TARGET_PARAMETERS, LoraSettings, forbidden_lora_target

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "DEFAULT_TARGET_PARAMETERS",
    "LoraOptions",
    "LoraReport",
    "target_module_regex",
    "build_lora_config",
    "apply_lora",
    "lora_report",
    "check_gradients",
    "merge_lora",
    "unwrap_longllava",
]

DEFAULT_TARGET_MODULES: tuple[str, ...] = tuple(JAMBA_LORA_TARGET_MODULES)
DEFAULT_TARGET_PARAMETERS: tuple[str, ...] = tuple(JAMBA_LORA_TARGET_PARAMETERS)
#: Where LoRA targets may live: the language model's decoder layers only.
LLM_LAYER_PREFIX = r"language_model\.model\.layers\.\d+\."


#: The LoRA settings type is the recipes' (one type for recipes, the trainer and this module).
LoraOptions = LoraSettings


@dataclass
class LoraReport:
    """What :func:`apply_lora` attached.

    Attributes:
        modules: names of wrapped ``nn.Linear`` modules (``q_proj`` ...).
        parameters: names of wrapped parameters (fused experts).
        by_target: number of attachments per requested target.
        missing_targets: requested targets present nowhere in this model (e.g. expert
            parameters on the dense 9B); not an error as long as something attached.
        full_modules: modules trained in full next to the adapters (``modules_to_save``).
        trainable_parameters / total_parameters: counts after wrapping.
    """

    modules: list[str]
    parameters: list[str]
    by_target: dict[str, int]
    missing_targets: list[str]
    full_modules: list[str]
    trainable_parameters: int
    total_parameters: int

    def summary(self) -> str:
        attached = ", ".join(f"{k} x{v}" for k, v in self.by_target.items() if v)
        missing = f"; not in this model: {', '.join(self.missing_targets)}" if self.missing_targets else ""
        full = f"; trained in full: {', '.join(self.full_modules)}" if self.full_modules else ""
        return (f"LoRA on {len(self.modules)} modules + {len(self.parameters)} expert parameters ({attached}){missing}"
                f"{full}; trainable {self.trainable_parameters:,} of {self.total_parameters:,} parameters")


def _check_targets(targets: Iterable[str]) -> None:
    for target in targets:
        problem = forbidden_lora_target(target)
        if problem:
            raise ConfigError(problem)


def target_module_regex(target_modules: Sequence[str]) -> str:
    """Regex (peft full-matches it against module names) selecting ``target_modules`` suffixes
    inside the language model's decoder layers only (never CLIP's identically named projections)."""
    if not target_modules:
        return r"(?!x)x"  # matches nothing
    alternatives = "|".join(re.escape(t.strip(".")) for t in target_modules)
    return rf"{LLM_LAYER_PREFIX}(?:.*\.)?(?:{alternatives})"


def _has_expert_parameters(model: nn.Module, targets: Sequence[str]) -> bool:
    return any(any(name.endswith("." + t) or name == t for t in targets) for name, _ in model.named_parameters())


def build_lora_config(model: nn.Module, options: LoraOptions, full_modules: Sequence[str] = ("projector",)) -> Any:
    """A peft ``LoraConfig`` for the unwrapped LongLLaVA ``model``.

    Args:
        model: the LongLLaVA model (used to see whether expert parameters exist).
        options: rank, alpha, dropout and targets.
        full_modules: top-level modules trained in full next to the adapters
            (``projector``, and ``vision_tower`` when the stage trains it).
    """
    from peft import LoraConfig

    _check_targets([*options.target_modules, *options.target_parameters])
    if not options.target_modules and not options.target_parameters:
        raise ConfigError("LoRA needs at least one target module or target parameter")
    parameters = [t for t in options.target_parameters if _has_expert_parameters(model, [t])]
    dropout = options.dropout
    if parameters and dropout:
        # peft's ParamWrapper (used for 3-D expert weights) rejects any dropout, and one
        # LoraConfig has one dropout: the adapters run without it.
        logger.info("LoRA dropout %.3g disabled: peft does not support dropout on fused MoE expert parameters",
                    dropout)
        dropout = 0.0
    return LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=dropout,
        target_modules=target_module_regex(options.target_modules),
        target_parameters=parameters or None,
        modules_to_save=list(full_modules) or None,
        init_lora_weights=options.init_lora_weights,
        bias="none",
    )


def apply_lora(model: nn.Module, options: LoraOptions | None = None, *, train_projector: bool = True,
               train_vision: bool = False, problem_type: str = "generate") -> tuple[nn.Module, LoraReport]:
    """Wrap the LongLLaVA ``model`` with LoRA adapters on its language model.

    The plugin hook ``longllava_apply_lora(model, lora_config)`` is asked first; a plugin that
    returns a model replaces the default ``peft.get_peft_model`` wrapping (it receives the
    ``LoraConfig`` built here and may use or ignore it). Either way the result is checked:
    at least one adapter must sit inside the language model and none outside it.

    Args:
        model: unwrapped LongLLaVA model.
        options: LoRA settings (defaults: :class:`LoraOptions`).
        train_projector / train_vision: train these modules in full (``modules_to_save``).
        problem_type: the task head's problem type; the parameters no loss can reach are frozen
            (see :func:`~longllava_sdk.training.stages.unreachable_parameters`).

    Returns:
        ``(peft model, report)``.

    Raises:
        ConfigError: a forbidden target (``dt_proj``, ``conv1d``, ``router``, ``all-linear``).
        TrainingError: no adapter attached, or one attached outside the language model.
    """
    from ..plugin_manager import get_plugin_manager
    from .stages import freeze_parameters, unreachable_parameters

    options = options or LoraOptions()
    full = [m for m, on in (("projector", train_projector), ("vision_tower", train_vision)) if on]
    config = build_lora_config(model, options, full)
    unreachable = unreachable_parameters(model, problem_type)
    expected = _expected_targets(model, options)
    wrapped = get_plugin_manager().call_checked(
        "longllava_apply_lora", returns="the model (a torch.nn.Module) with LoRA applied, or None",
        check=lambda m: isinstance(m, torch.nn.Module), firstresult=True, model=model, lora_config=config)
    by_plugin = wrapped is not None
    if wrapped is None:
        from peft import get_peft_model

        try:
            with warnings.catch_warnings():
                # peft < 0.19 flags transformers' fused-expert module type as "unsupported" although
                # its target_parameters path adapts it correctly (checked by lora_report below).
                warnings.filterwarnings("ignore", message="Unsupported layer type .*Experts", category=UserWarning)
                wrapped = get_peft_model(model, config)
        except ValueError as exc:  # peft's NoMatchingPeftModuleError and target errors
            raise TrainingError(f"no LoRA adapter attached: peft could not wrap the targets {options.target_modules} / "
                                f"{options.target_parameters} in the language model: {exc}") from exc
    freeze_parameters(wrapped, unreachable)
    report = lora_report(wrapped, options, full)
    # A plugin may choose other targets; the default wrapping must hit every one it was asked for.
    not_attached = [] if by_plugin else sorted(expected - set(report.modules) - set(report.parameters))
    if not_attached:
        raise TrainingError(f"LoRA did not attach to {len(not_attached)} targeted layer(s) of the language model: "
                            f"{', '.join(not_attached[:10])}")
    logger.info(report.summary())
    return wrapped, report


def _expected_targets(model: nn.Module, options: LoraOptions) -> set[str]:
    """Names of the modules / parameters of the unwrapped model that the options target."""
    regex = re.compile(target_module_regex(options.target_modules))
    expected = {name for name, module in model.named_modules()
                if isinstance(module, nn.Linear) and regex.fullmatch(name)}
    for name, _ in model.named_parameters():
        if name.startswith("language_model.") and any(name.endswith("." + t) for t in options.target_parameters):
            expected.add(name)
    return expected


def _is_lora_layer(module: nn.Module) -> bool:
    lora_a = getattr(module, "lora_A", None)
    return isinstance(lora_a, nn.ModuleDict) and len(lora_a) > 0


def lora_report(model: nn.Module, options: LoraOptions, full_modules: Sequence[str] = ()) -> LoraReport:
    """Inspect a wrapped model: where adapters sit; raises if none attached or any outside the LLM."""
    modules: list[str] = []
    parameters: list[str] = []
    outside: list[str] = []
    for name, module in model.named_modules():
        if not _is_lora_layer(module):
            continue
        bare = re.sub(r"^(?:base_model\.model\.)", "", name)
        bare = re.sub(r"(?:\.base_layer)+$", "", bare)
        if not bare.startswith("language_model."):
            outside.append(bare)
            continue
        param_name = getattr(module, "parameter_name", None)
        if param_name is not None:
            parameters.append(f"{bare}.{param_name}")
        else:
            modules.append(bare)
    if outside:
        raise TrainingError(f"LoRA adapters attached outside the language model: {', '.join(sorted(outside)[:10])}")
    if not modules and not parameters:
        raise TrainingError(
            "no LoRA adapter attached: none of the target modules "
            f"{options.target_modules} or parameters {options.target_parameters} exists in the language model"
        )
    by_target: dict[str, int] = {}
    for target in options.target_modules:
        by_target[target] = sum(1 for m in modules if m == target or m.endswith("." + target))
    for target in options.target_parameters:
        by_target[target] = sum(1 for p in parameters if p.endswith("." + target) or p == target)
    missing = [t for t, n in by_target.items() if n == 0]
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return LoraReport(modules, parameters, by_target, missing, list(full_modules), trainable, total)


# ---------------------------------------------------------------------------------------------
# gradient check
# ---------------------------------------------------------------------------------------------

def _lora_partner(name: str) -> str | None:
    """``...lora_A.<adapter>.weight`` -> ``...lora_B.<adapter>.weight``."""
    if ".lora_A." not in name:
        return None
    return name.replace(".lora_A.", ".lora_B.")


def check_gradients(named_parameters: Iterable[tuple[str, torch.Tensor]], *, skip_components: Iterable[str] = (),
                    only_components: Iterable[str] | None = None) -> list[str]:
    """Problems with the gradients after one backward pass (empty list: all good).

    Every parameter with ``requires_grad`` must have a gradient that is finite and not all
    zeros. One exact exception: a LoRA ``A`` matrix whose ``B`` partner is still all zeros
    (peft's default initialisation) has the gradient ``B^T g = 0`` by construction; for it
    the ``B`` partner must have a non-zero gradient instead, which proves the adapter is on
    the path of the loss.

    Args:
        named_parameters: ``model.named_parameters()``.
        skip_components: components (``vision``, ``projector``) not to check, because the
            batch could not reach them (a text-only batch).
        only_components: check only these components (``vision``, ``projector``, ``llm``,
            ``head``); ``None``: all.
    """
    from .stages import component_of

    params = dict(named_parameters)
    skip = set(skip_components)
    only = None if only_components is None else set(only_components)
    problems: list[str] = []
    for name, param in params.items():
        if not param.requires_grad:
            continue
        component = component_of(name)
        if component in skip or (only is not None and component not in only):
            continue
        grad = param.grad
        if grad is None:
            problems.append(f"{name}: received no gradient (not on the path of the loss)")
            continue
        if not bool(torch.isfinite(grad).all()):
            problems.append(f"{name}: gradient has NaN/inf values")
            continue
        if bool((grad != 0).any()):
            continue
        partner = _lora_partner(name)
        if partner is not None and partner in params and not bool((params[partner].detach() != 0).any()):
            partner_grad = params[partner].grad
            if partner_grad is not None and bool((partner_grad != 0).any()):
                continue  # zero-initialised B: A's gradient is exactly zero in the first step
            problems.append(f"{name}: LoRA pair received no non-zero gradient (its B matrix neither)")
            continue
        problems.append(f"{name}: gradient is all zeros")
    return problems


def raise_for_gradients(problems: Sequence[str]) -> None:
    """Raise :class:`TrainingError` listing ``problems`` (from :func:`check_gradients`)."""
    if problems:
        shown = "\n  ".join(problems[:40])
        more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
        raise TrainingError(
            f"{len(problems)} trainable parameter(s) did not receive a usable gradient in the first step; "
            f"they would never train (wrong LoRA target such as dt_proj, a frozen path, or a component the "
            f"data never reaches):\n  {shown}{more}"
        )
