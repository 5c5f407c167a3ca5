"""Training recipes as data: one YAML file says what a fine-tuning run does.

A recipe names the input adapters (and their options), the prompt templates that turn a
manifest row into a conversation, the task head and its labels, the LoRA targets, the
hyper-parameters, the training stage and the sample data. Domains (``medical``,
``remote_sensing``, ``video`` and any third-party plugin's) are recipes registered through
the ``longllava_register_domains`` hook; :func:`load_recipe` finds one by name or path.

Example ``recipe.yaml`` (every section but ``name`` is optional; defaults shown in
:class:`Recipe` and its parts)::

    name: medical
    description: Chest-CT multi-label classification from DICOM series.
    stage: domain
    finetune: lora                     # lora | full
    head: {type: multilabel, labels: [Emphysema, Lung nodule]}
    max_images: 8                      # per sample
    adapters:
      dicom: {max_images: 8, options: {window: [lung, mediastinum, bone]}}
    prompts:
      user: "<image>\\n{question}"
      question: "Which of these findings are present: {label_list}?"
      label_answer: "{labels}"
      no_labels: "none"
    lora: {r: 8, alpha: 16, dropout: 0.05}
    training: {epochs: 3, learning_rate: 2.0e-4, batch_size: 1, max_length: 2048}
    data: {path: data/ct_labels.csv, eval_fraction: 0.25}

Relative paths in ``data`` resolve against the recipe file's folder. Every problem in a file
is reported at once in one :class:`~longllava_sdk.errors.ConfigError` whose lines name the
file and the field (``recipe.yaml: training.learning_rate: expected a positive number``).
"""

from __future__ import annotations

import copy
import os
import re
import string
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import yaml
from pydantic import BeforeValidator, Field, StrictBool, ValidationInfo, field_validator, model_validator

from . import local_files
from .errors import ConfigError, LongLLaVAError, unknown_name_error, unknown_name_message
from .validation import Model, format_problems, validate

__all__ = [
    "STAGES",
    "JAMBA_LORA_TARGET_MODULES",
    "JAMBA_LORA_TARGET_PARAMETERS",
    "AdapterSettings",
    "HeadSettings",
    "PromptTemplates",
    "LoraSettings",
    "TrainingSettings",
    "DataSettings",
    "Recipe",
    "load_recipe",
    "available_domains",
]

FINETUNE_MODES: tuple[str, ...] = ("lora", "full")
SCHEDULERS: tuple[str, ...] = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts",
                               "polynomial", "inverse_sqrt")
PACKING_STRATEGIES: tuple[str, ...] = ("ffd", "random")

#: LoRA targets measured to attach *and* receive gradients on transformers 5's Jamba: attention
#: q/k/v/o, the Mamba mixer's in/x/out projections and the dense MLP projections.
JAMBA_LORA_TARGET_MODULES: tuple[str, ...] = (
    "q_proj", "k_proj", "v_proj", "o_proj", "in_proj", "x_proj", "out_proj", "gate_proj", "up_proj", "down_proj",
)
#: Fused MoE expert weights are parameters, not ``nn.Linear``: peft reaches them by name.
JAMBA_LORA_TARGET_PARAMETERS: tuple[str, ...] = ("feed_forward.experts.gate_up_proj", "feed_forward.experts.down_proj")
#: Modules that must never be LoRA targets on Jamba, and why.
FORBIDDEN_LORA_TARGETS: dict[str, str] = {
    "dt_proj": "the Mamba mixer bypasses dt_proj's forward (it uses dt_proj.weight directly), so its LoRA "
               "gets no gradient and DDP fails",
    "conv1d": "peft cannot wrap the Mamba depthwise conv1d",
    "router": "peft cannot wrap the MoE router",
    "all-linear": "'all-linear' includes dt_proj, whose LoRA never receives a gradient on Jamba",
}
#: Names a prompt template may use.
TEMPLATE_FIELDS: tuple[str, ...] = ("question", "answer", "labels", "label_list", "id")


# ------------------------------------------------------------------------------------------
# Stages: the one table (the trainer applies them, see longllava_sdk.training.stages)
# ------------------------------------------------------------------------------------------

COMPONENTS: tuple[str, ...] = ("vision", "projector", "llm", "head")


@dataclass(frozen=True)
class Stage:
    """A named training stage.

    Attributes:
        name: ``align``, ``sft-single``, ``sft-multi``, ``text-sft`` or ``domain``.
        description: one line for listings and logs.
        vision, projector, llm, head: whether each component trains.
        finetune: default method for the LLM (``lora`` or ``full``); irrelevant when the
            LLM is frozen (only the projector trains in ``align``, in full).
        learning_rate: default peak learning rate when the recipe sets none: the official
            scripts' values for the paper's stages (``Align.sh`` 1e-4; ``SingleImageSFT.sh`` /
            ``MultiImageSFT.sh`` 1e-5), 2e-4 for the SDK's LoRA ``domain`` stage. Tiny-model
            recipes set their own, explicitly (see docs/training.md).
        epochs: default number of epochs.
    """

    name: str
    description: str
    vision: bool
    projector: bool
    llm: bool
    head: bool
    finetune: str
    learning_rate: float
    epochs: float = 1.0

    def trainable(self) -> dict[str, bool]:
        """``{component: trains}`` for the four components."""
        return {c: bool(getattr(self, c)) for c in COMPONENTS}

    def with_freeze(self, freeze: Mapping[str, bool] | None) -> "Stage":
        """A copy where ``freeze[component] = True`` freezes and ``False`` unfreezes a component."""
        if not freeze:
            return self
        unknown = sorted(set(freeze) - set(COMPONENTS))
        if unknown:
            raise ConfigError(f"stage {self.name}: unknown component(s) {unknown} in freeze; known: {COMPONENTS}")
        return replace(self, **{k: not bool(v) for k, v in freeze.items()})

    def uses_lora(self, full: bool) -> bool:
        """Whether the LLM is adapted through LoRA: only when it trains and ``full`` is not asked."""
        return self.llm and not full


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("align", "single-image alignment: train the projector only", vision=False, projector=True,
              llm=False, head=False, finetune="full", learning_rate=1e-4),
        Stage("sft-single", "single-image instruction tuning: LLM + projector", vision=False, projector=True,
              llm=True, head=False, finetune="full", learning_rate=1e-5),
        Stage("sft-multi", "multi-image / video instruction tuning: LLM + projector", vision=False,
              projector=True, llm=True, head=False, finetune="full", learning_rate=1e-5),
        Stage("text-sft", "pure-text instruction tuning: LLM only", vision=False, projector=False, llm=True,
              head=False, finetune="full", learning_rate=1e-5),
        Stage("domain", "domain fine-tuning: LLM (LoRA) + projector + task head", vision=False, projector=True,
              llm=True, head=True, finetune="lora", learning_rate=2e-4, epochs=3.0),
    )
}

STAGE_NAMES: tuple[str, ...] = tuple(STAGES)
#: Components a recipe's ``freeze`` may name.
FREEZE_KEYS: tuple[str, ...] = COMPONENTS


# ------------------------------------------------------------------------------------------
# Parts of a recipe: pydantic models (longllava_sdk.validation); every problem is collected
# ------------------------------------------------------------------------------------------

#: A strict positive integer (``2.5``, ``"2"`` and ``true`` are refused).
PositiveInt = Annotated[int, Field(strict=True, ge=1)]


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return value  # text such as "2e-4" (YAML 1.1 reads it as a string) is parsed by pydantic


def _string_list(value: Any) -> Any:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"expected a list of non-empty strings, got {value!r}")
    return [v.strip() for v in value]


#: A number (not a bool); text that reads as a number is accepted.
Number = Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False)]
#: A list of non-empty strings; one string is a list of one.
StringList = Annotated[list[str], BeforeValidator(_string_list)]


def _context(info: ValidationInfo, key: str, default: Any = None) -> Any:
    return (info.context or {}).get(key, default)


class AdapterSettings(Model):
    """Options for one input adapter (by adapter name) when it reads this recipe's data.

    Attributes:
        max_images: image budget for one source read by this adapter (``None``: the recipe's
            ``max_images``).
        options: keyword arguments for the adapter's constructor (e.g. DICOM ``window``).
    """

    max_images: PositiveInt | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class HeadSettings(Model):
    """The task head: any installed head by name (``generate`` -- LM answers --, ``multilabel``,
    ``classify``, or a plugin's), with its ``labels``. A recipe may write ``head: NAME``."""

    type: str = "generate"
    labels: StringList = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _name_only(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    @field_validator("type")
    @classmethod
    def _installed(cls, kind: str, info: ValidationInfo) -> str:
        if _context(info, "check_plugins"):
            from .registry import available_heads

            heads = available_heads()
            if kind not in heads:
                raise ValueError(unknown_name_message("head", kind, heads, listing="installed heads",
                                                      hint="(a plugin adds more through longllava_register_heads)"))
        return kind

    @field_validator("labels")
    @classmethod
    def _label_rules(cls, labels: list[str], info: ValidationInfo) -> list[str]:
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"duplicate labels {duplicates}")
        separated = [label for label in labels if ";" in label]
        if separated:
            raise ValueError(f"label {separated[0]!r} contains ';' (the multi-label separator in CSV manifests)")
        kind = info.data.get("type")  # absent when the type itself is wrong
        if kind is not None and _context(info, "check_plugins"):  # the head's own rules (classify needs two)
            from .contracts import check_labels
            from .registry import available_heads

            problems = check_labels(available_heads()[kind], labels)
            if problems:
                raise ValueError("; ".join(problems))
        return labels


class PromptTemplates(Model):
    """How a manifest row (source, question, answer / labels) becomes a conversation.

    Templates are ``str.format`` strings over ``question``, ``answer``, ``labels`` (the row's
    labels joined by ``", "``), ``label_list`` (all recipe labels joined by ``", "``) and ``id``.

    Attributes:
        user: the user turn; ``<image>`` marks where the source's images go (put first when
            absent).
        question: the question used for rows that have none.
        answer: the assistant turn for rows with an ``answer``.
        label_answer: the assistant turn for rows with labels (and no answer).
        no_labels: the assistant turn for a multi-label row with no label set.
    """

    user: str = "<image>\n{question}"
    question: str = "Describe this input."
    answer: str = "{answer}"
    label_answer: str = "{labels}"
    no_labels: str = "none"

    @field_validator("user", "question", "answer", "label_answer", "no_labels")
    @classmethod
    def _template(cls, text: str, info: ValidationInfo) -> str:
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except ValueError as exc:
            raise ValueError(f"not a valid format string: {exc}") from None
        bad = sorted(u for u in used if u not in TEMPLATE_FIELDS)
        if bad:
            raise ValueError(f"unknown placeholder(s) {bad}; allowed: {', '.join(TEMPLATE_FIELDS)}")
        if info.field_name == "user":
            if text.count("<image>") > 1:
                raise ValueError("a manifest row has one source: use at most one <image> marker")
            if "{question}" not in text:
                raise ValueError("must contain {question}")
        return text

    def render(self, template: str, values: dict[str, Any]) -> str:
        """Format one of the templates with ``values`` (missing names render empty)."""
        return template.format_map(_Defaulting(values))


class _Defaulting(dict):
    def __missing__(self, key: str) -> str:
        return ""


def forbidden_lora_target(target: str) -> str | None:
    """Why ``target`` can never be a LoRA target on Jamba (``None``: it may be one)."""
    why = FORBIDDEN_LORA_TARGETS.get(target) or FORBIDDEN_LORA_TARGETS.get(target.rsplit(".", 1)[-1])
    return f"{target!r} cannot be used as a LoRA target on LongLLaVA: {why}" if why else None


class LoraSettings(Model):
    """LoRA hyper-parameters and targets: the SDK's one LoRA type (recipes, the trainer and
    :func:`longllava_sdk.training.lora.apply_lora`), turned into a ``peft.LoraConfig`` by
    :func:`longllava_sdk.training.lora.build_lora_config`.

    Attributes:
        r: rank.
        alpha: scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapter input. peft's ``ParamWrapper`` (fused MoE experts)
            allows none, so when expert parameters are targeted the dropout is 0.
        target_modules: module-name suffixes to wrap, inside the language model only
            (default: every Jamba projection that trains; never ``dt_proj``).
        target_parameters: parameter names to wrap directly (fused MoE expert weights).
        init_lora_weights: peft's initialisation (``True``: A random, B zero, so the
            adapted model starts exactly as the base model).
    """

    r: PositiveInt = 8
    alpha: PositiveInt = 16
    dropout: Annotated[Number, Field(ge=0.0, lt=1.0)] = 0.05
    target_modules: StringList = Field(default_factory=lambda: list(JAMBA_LORA_TARGET_MODULES))
    target_parameters: StringList = Field(default_factory=lambda: list(JAMBA_LORA_TARGET_PARAMETERS))
    init_lora_weights: bool | str = True

    @field_validator("target_modules", "target_parameters")
    @classmethod
    def _trainable_targets(cls, targets: list[str], info: ValidationInfo) -> list[str]:
        if info.context:  # a recipe: reported with the file's other problems (apply_lora checks code's own)
            for target in targets:
                problem = forbidden_lora_target(target)
                if problem:
                    raise ValueError(problem)
        return targets

    @model_validator(mode="after")
    def _some_target(self, info: ValidationInfo) -> LoraSettings:
        if info.context and not self.target_modules and not self.target_parameters:
            raise ValueError("needs at least one of target_modules / target_parameters")
        return self


class TrainingSettings(Model):
    """Hyper-parameters. ``batch_size`` is per device; the effective batch is
    ``batch_size * gradient_accumulation_steps * world_size``.

    ``packing`` concatenates samples into ``max_length`` sequences
    (:mod:`longllava_sdk.training.packing`); ``reset_mamba_state`` makes the Mamba layers
    restart at every packed sample (see ``docs/data_formats.md``).
    """

    epochs: Annotated[Number, Field(gt=0.0)] = 3.0
    #: ``None``: the stage's default (the paper's 1e-4 for ``align``, 1e-5 for the instruction
    #: stages; 2e-4 for LoRA ``domain``), see :data:`longllava_sdk.training.stages.STAGES`.
    learning_rate: Annotated[Number, Field(gt=0.0)] | None = None
    batch_size: PositiveInt = 1
    gradient_accumulation_steps: PositiveInt = 1
    max_length: Annotated[int, Field(strict=True, ge=16)] = 4096
    warmup_ratio: Annotated[Number, Field(ge=0.0, lt=1.0)] = 0.03
    lr_scheduler: Literal[SCHEDULERS] = "cosine"  # type: ignore[valid-type]
    weight_decay: Annotated[Number, Field(ge=0.0)] = 0.0
    max_grad_norm: Annotated[Number, Field(ge=0.0)] = 1.0
    seed: Annotated[int, Field(strict=True, ge=0)] = 0
    packing: StrictBool = False
    packing_strategy: Literal[PACKING_STRATEGIES] = "ffd"  # type: ignore[valid-type]
    reset_mamba_state: StrictBool = False
    #: what a NaN / inf training loss does: ``stop`` the run (the last good checkpoint is kept)
    #: or ``skip`` that step's update.
    nan_policy: Literal["stop", "skip"] = "stop"


class DataSettings(Model):
    """Where the data is. Paths are absolute after loading (resolved against the recipe folder).

    Attributes:
        path: the training data (LLaVA JSON / JSONL or a manifest CSV / JSONL).
        root: the data root every path in the data must stay inside (default: ``path``'s folder).
        eval_path: separate evaluation data (same root rules).
        eval_fraction: held-out fraction of ``path`` when rows carry no ``split`` column and
            no ``eval_path`` is given (deterministic for a given ``seed``).
    """

    path: Path | None = None
    root: Path | None = None
    eval_path: Path | None = None
    eval_fraction: Annotated[Number, Field(ge=0.0, lt=1.0)] = 0.0

    @field_validator("path", "root", "eval_path", mode="before")
    @classmethod
    def _resolve(cls, raw: Any, info: ValidationInfo) -> Any:
        if raw is None:
            return None
        if not isinstance(raw, (str, os.PathLike)) or not os.fspath(raw).strip():
            raise ValueError(f"expected a path, got {raw!r}")
        path = Path(os.path.expanduser(os.fspath(raw)))
        base = _context(info, "base")
        if not path.is_absolute() and base is not None:
            path = (Path(base) / path).resolve()
        if base is not None:  # loaded from a file: the data must be there
            if info.field_name == "root" and not path.is_dir():
                raise ValueError(f"{path} is not a folder")
            if info.field_name != "root" and not path.exists():
                raise ValueError(f"{path} does not exist")
        return path

    @model_validator(mode="after")
    def _one_eval_rule(self) -> DataSettings:
        if self.eval_fraction and self.eval_path is not None:
            raise ValueError("give either eval_path or eval_fraction, not both")
        return self


_NAME = r"^[A-Za-z][A-Za-z0-9_.-]*$"


class Recipe(Model):
    """A training recipe (see the module docstring for the YAML form).

    Attributes:
        name: unique name (``--domain NAME``).
        description: one line for listings.
        stage: ``align``, ``sft-single``, ``sft-multi``, ``text-sft`` or ``domain``.
        finetune: ``lora`` or ``full``.
        head: task head type and labels.
        adapters: settings per adapter name (``dicom``, ``geotiff``, ``video``, ...).
        max_images: image budget per sample (``None``: unlimited, the context decides).
        prompts: templates for manifest rows.
        experts: the expert plugins whose findings enter each training prompt before the
            question (``longllava_expert_findings``; ``None``: every installed one, ``[]``: none).
            Train and serve with the same choice: the model learns the prompt it sees.
        lora: LoRA settings (used when ``finetune == "lora"``).
        training: hyper-parameters.
        data: data locations.
        freeze: optional per-component overrides of the stage's freezing
            (keys ``vision``, ``projector``, ``llm``, ``head``).
        training_args: extra ``transformers.TrainingArguments`` fields, passed through.
        source: the YAML file the recipe came from (``None`` if built in code).
    """

    name: Annotated[str, Field(pattern=_NAME)]
    description: str = ""
    stage: Literal[STAGE_NAMES] = "domain"  # type: ignore[valid-type]
    finetune: Literal[FINETUNE_MODES] = "lora"  # type: ignore[valid-type]
    head: HeadSettings = Field(default_factory=HeadSettings)
    adapters: dict[str, AdapterSettings] = Field(default_factory=dict)
    max_images: PositiveInt | None = None
    prompts: PromptTemplates = Field(default_factory=PromptTemplates)
    experts: list[str] | None = None
    lora: LoraSettings = Field(default_factory=LoraSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    freeze: dict[Literal[FREEZE_KEYS], StrictBool] = Field(default_factory=dict)  # type: ignore[valid-type]
    training_args: dict[str, Any] = Field(default_factory=dict)
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, name: Any) -> Any:
        if not isinstance(name, str) or not re.match(_NAME, name):
            raise ValueError(f"required: a name of letters, digits, '_', '-', '.' starting with a letter, "
                             f"got {name!r}")
        return name

    @field_validator("head", "adapters", "prompts", "lora", "training", "data", "freeze", "training_args",
                     mode="before")
    @classmethod
    def _empty_section(cls, value: Any) -> Any:
        return {} if value is None else value  # ``training:`` with nothing under it

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> "Recipe":
        """Load and validate a recipe file; :class:`ConfigError` lists every problem in it."""
        path = Path(path)
        try:  # a regular file only: a FIFO named as the recipe is refused, never blocks
            text = local_files.read_text(path, what="recipe file")
        except LongLLaVAError as exc:
            raise ConfigError(f"{path}: cannot read recipe: {getattr(exc, 'problem', exc)}") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        return cls.from_dict(raw, source=path)

    @classmethod
    def from_dict(cls, raw: Any, source: str | os.PathLike[str] | None = None) -> "Recipe":
        """Validate a mapping (e.g. parsed YAML); relative data paths resolve against ``source``'s folder.

        Raises:
            ConfigError: ``FILE: invalid recipe (N problem(s))`` and one ``field.path: problem``
                line per problem.
        """
        where = str(source) if source is not None else "<recipe>"
        if not isinstance(raw, dict):
            raise ConfigError(format_problems(where, [f"<top>: a recipe must be a mapping, got {type(raw).__name__}"],
                                              "recipe"))
        base = Path(source).resolve().parent if source is not None else Path.cwd()
        raw = {k: v for k, v in raw.items() if k != "source"}
        recipe = validate(cls, raw, where=where, what="recipe", context={"base": base, "check_plugins": True})
        recipe.source = Path(source).resolve() if source is not None else None
        return recipe

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML / JSON ready); ``from_dict(to_dict())`` rebuilds the recipe."""
        out = self.model_dump(mode="python")
        for key in ("path", "root", "eval_path"):
            value = out["data"][key]
            out["data"][key] = None if value is None else str(value)
        return out

    def with_overrides(self, **training: Any) -> "Recipe":
        """A copy with some :class:`TrainingSettings` fields replaced (validated like the YAML)."""
        known = set(TrainingSettings.model_fields)
        unknown = sorted(set(training) - known)
        if unknown:
            raise ConfigError(f"{self.name}: unknown training setting(s) {unknown}; known: {sorted(known)}")
        merged = {**self.training.model_dump(), **training}
        new_training = validate(TrainingSettings, merged, where=f"{self.name} (overrides)", what="recipe",
                                prefix="training")
        return self.model_copy(update={"training": new_training}, deep=True)

    # -- queries used by the data pipeline --------------------------------------------------
    def adapter_options(self, adapter: str | None) -> dict[str, Any]:
        """Constructor options for ``adapter`` (a copy; empty when the recipe names none)."""
        settings = self.adapters.get(adapter or "")
        return copy.deepcopy(settings.options) if settings else {}

    def adapter_max_images(self, adapter: str | None) -> int | None:
        """Per-source image budget for ``adapter``: its own, else the recipe's ``max_images``."""
        settings = self.adapters.get(adapter or "")
        if settings is not None and settings.max_images is not None:
            return settings.max_images
        return self.max_images

    @property
    def label_names(self) -> list[str]:
        return list(self.head.labels)


# ------------------------------------------------------------------------------------------
# Loading by name: the domain registry
# ------------------------------------------------------------------------------------------


def available_domains() -> dict[str, Recipe]:
    """Every recipe registered through the ``longllava_register_domains`` hook, by name.

    A recipe that fails to load is skipped with a warning naming the plugin and the problem;
    when two plugins register the same name the first wins (also warned).
    """
    recipes, _ = _collect_domains()
    return recipes


def load_recipe(name_or_path: str | os.PathLike[str] | Recipe) -> Recipe:
    """A recipe by registered domain name, or from a YAML file path.

    Raises:
        ConfigError: the file is invalid (every problem listed), or no domain has that name
            (the error lists the known ones and any recipe that failed to load).
    """
    if isinstance(name_or_path, Recipe):
        return name_or_path
    text = os.fspath(name_or_path)
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml") or path.exists() or os.sep in text:
        if not path.is_file():
            raise ConfigError(f"{path}: recipe file does not exist")
        return Recipe.from_yaml(path)
    recipes, failures = _collect_domains()
    if text in recipes:
        return recipes[text]
    normalised = text.replace("-", "_")
    if normalised in recipes:
        return recipes[normalised]
    failed = "".join(f"\n  could not load {where}: {problem}" for where, problem in failures)
    raise unknown_name_error("domain", text, recipes, hint=failed)


def _collect_domains() -> tuple[dict[str, Recipe], list[tuple[str, str]]]:
    from .plugin_manager import get_plugin_manager

    recipes: dict[str, Recipe] = {}
    owners: dict[str, str] = {}
    failures: list[tuple[str, str]] = []
    for plugin_name, batch in get_plugin_manager().collect("longllava_register_domains"):
        items = batch if isinstance(batch, (list, tuple)) else [batch]
        for item in items:
            try:
                recipe = item if isinstance(item, Recipe) else Recipe.from_yaml(item)
            except ConfigError as exc:
                failures.append((f"plugin {plugin_name!r}", str(exc)))
                warnings.warn(f"longllava_sdk plugin {plugin_name!r}: domain recipe skipped: {exc}", stacklevel=3)
                continue
            except TypeError as exc:
                failures.append((f"plugin {plugin_name!r}", f"{item!r} is not a recipe path or Recipe ({exc})"))
                continue
            if recipe.name in recipes:
                if recipes[recipe.name].source != recipe.source:
                    warnings.warn(f"domain {recipe.name!r} is registered by plugins {owners[recipe.name]!r} and "
                                  f"{plugin_name!r}; using the one from {owners[recipe.name]!r}", stacklevel=3)
                continue
            recipes[recipe.name], owners[recipe.name] = recipe, plugin_name
    return recipes, failures
