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
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable

import yaml

from . import local_files
from .errors import ConfigError, LongLLaVAError

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

STAGES: tuple[str, ...] = ("align", "sft-single", "sft-multi", "text-sft", "domain")
FINETUNE_MODES: tuple[str, ...] = ("lora", "full")
FREEZE_KEYS: tuple[str, ...] = ("vision", "projector", "llm", "head")
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
# Parts of a recipe
# ------------------------------------------------------------------------------------------


@dataclass
class AdapterSettings:
    """Options for one input adapter (by adapter name) when it reads this recipe's data.

    Attributes:
        max_images: image budget for one source read by this adapter (``None``: the recipe's
            ``max_images``).
        options: keyword arguments for the adapter's constructor (e.g. DICOM ``window``).
    """

    max_images: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class HeadSettings:
    """The task head: any installed head by name (``generate`` -- LM answers --, ``multilabel``,
    ``classify``, or a plugin's), with its ``labels``."""

    type: str = "generate"
    labels: list[str] = field(default_factory=list)


@dataclass
class PromptTemplates:
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

    def render(self, template: str, values: dict[str, Any]) -> str:
        """Format one of the templates with ``values`` (missing names render empty)."""
        return template.format_map(_Defaulting(values))


class _Defaulting(dict):
    def __missing__(self, key: str) -> str:
        return ""


@dataclass
class LoraSettings:
    """LoRA hyper-parameters and targets (the trainer owns their semantics).

    Attributes:
        r, alpha, dropout: the usual LoRA rank, scaling numerator and dropout.
        target_modules: module-name suffixes to wrap (default: every Jamba projection that
            trains; never ``dt_proj``).
        target_parameters: parameter names to wrap directly (fused MoE expert weights).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(JAMBA_LORA_TARGET_MODULES))
    target_parameters: list[str] = field(default_factory=lambda: list(JAMBA_LORA_TARGET_PARAMETERS))


@dataclass
class TrainingSettings:
    """Hyper-parameters. ``batch_size`` is per device; the effective batch is
    ``batch_size * gradient_accumulation_steps * world_size``.

    ``packing`` concatenates samples into ``max_length`` sequences
    (:mod:`longllava_sdk.training.packing`); ``reset_mamba_state`` makes the Mamba layers
    restart at every packed sample (see ``docs/data_formats.md``).
    """

    epochs: float = 3.0
    #: ``None``: the stage's default (the paper's 1e-4 for ``align``, 1e-5 for the instruction
    #: stages; 2e-4 for LoRA ``domain``), see :data:`longllava_sdk.training.stages.STAGES`.
    learning_rate: float | None = None
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_length: int = 4096
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    packing: bool = False
    packing_strategy: str = "ffd"
    reset_mamba_state: bool = False
    #: what a NaN / inf training loss does: ``stop`` the run (the last good checkpoint is kept)
    #: or ``skip`` that step's update.
    nan_policy: str = "stop"


@dataclass
class DataSettings:
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
    eval_fraction: float = 0.0


@dataclass
class Recipe:
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
        lora: LoRA settings (used when ``finetune == "lora"``).
        training: hyper-parameters.
        data: data locations.
        freeze: optional per-component overrides of the stage's freezing
            (keys ``vision``, ``projector``, ``llm``, ``head``).
        training_args: extra ``transformers.TrainingArguments`` fields, passed through.
        source: the YAML file the recipe came from (``None`` if built in code).
    """

    name: str
    description: str = ""
    stage: str = "domain"
    finetune: str = "lora"
    head: HeadSettings = field(default_factory=HeadSettings)
    adapters: dict[str, AdapterSettings] = field(default_factory=dict)
    max_images: int | None = None
    prompts: PromptTemplates = field(default_factory=PromptTemplates)
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    data: DataSettings = field(default_factory=DataSettings)
    freeze: dict[str, bool] = field(default_factory=dict)
    training_args: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None

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
        """Validate a mapping (e.g. parsed YAML); relative data paths resolve against ``source``'s folder."""
        where = str(source) if source is not None else "<recipe>"
        base = Path(source).resolve().parent if source is not None else Path.cwd()
        checker = _Checker(where)
        recipe = _parse_recipe(raw, checker, base)
        checker.raise_if_any()
        assert recipe is not None
        recipe.source = Path(source).resolve() if source is not None else None
        return recipe

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML / JSON ready); ``from_dict(to_dict())`` rebuilds the recipe."""
        out = asdict(self)
        out.pop("source")
        for key in ("path", "root", "eval_path"):
            value = out["data"][key]
            out["data"][key] = None if value is None else str(value)
        return out

    def with_overrides(self, **training: Any) -> "Recipe":
        """A copy with some :class:`TrainingSettings` fields replaced (validated like the YAML)."""
        known = {f.name for f in fields(TrainingSettings)}
        unknown = sorted(set(training) - known)
        if unknown:
            raise ConfigError(f"{self.name}: unknown training setting(s) {unknown}; known: {sorted(known)}")
        raw = self.to_dict()
        raw["training"].update({k: v for k, v in training.items()})
        checker = _Checker(f"{self.name} (overrides)")
        new_training = _parse_training(raw["training"], checker)
        checker.raise_if_any()
        return replace(copy.deepcopy(self), training=new_training)

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
    known = ", ".join(sorted(recipes)) or "none"
    failed = "".join(f"\n  could not load {where}: {problem}" for where, problem in failures)
    raise ConfigError(f"unknown domain {text!r}; available: {known}{failed}")


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


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------


class _Checker:
    """Collects ``file: field: problem`` lines; raises them all at once."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.problems: list[str] = []

    def add(self, field_name: str, problem: str) -> None:
        self.problems.append(f"{field_name}: {problem}")

    def raise_if_any(self) -> None:
        if self.problems:
            lines = "\n  ".join(self.problems)
            raise ConfigError(f"{self.where}: invalid recipe ({len(self.problems)} problem(s)):\n  {lines}")

    # typed getters: return the default (and record a problem) when the value is wrong
    def mapping(self, value: Any, name: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.add(name, f"expected a mapping, got {type(value).__name__}")
            return {}
        return value

    def unknown_keys(self, value: dict[str, Any], allowed: Iterable[str], name: str) -> None:
        allowed = list(allowed)
        for key in value:
            if key not in allowed:
                prefix = f"{name}." if name else ""
                self.add(f"{prefix}{key}", f"unknown field (allowed: {', '.join(allowed)})")

    def string(self, value: Any, name: str, default: str, choices: tuple[str, ...] | None = None) -> str:
        if value is None:
            return default
        if not isinstance(value, str):
            self.add(name, f"expected a string, got {type(value).__name__}")
            return default
        if choices is not None and value not in choices:
            self.add(name, f"{value!r} is not one of {', '.join(choices)}")
            return default
        return value

    def integer(self, value: Any, name: str, default: int | None, minimum: int = 1,
                optional: bool = False) -> int | None:
        if value is None:
            return default if not optional else None
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(name, f"expected an integer, got {value!r}")
            return default
        if value < minimum:
            self.add(name, f"must be >= {minimum}, got {value}")
            return default
        return value

    def number(self, value: Any, name: str, default: float, low: float, high: float | None = None,
               low_open: bool = False, high_open: bool = False) -> float:
        if value is None:
            return default
        if isinstance(value, str):  # YAML 1.1 reads "2e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.add(name, f"expected a number, got {value!r}")
            return default
        value = float(value)
        too_low = value <= low if low_open else value < low
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high or value != value:
            lo = "(" if low_open else "["
            hi = ")" if high_open else "]"
            self.add(name, f"must be in {lo}{low}, {high if high is not None else 'inf'}{hi}, got {value}")
            return default
        return value

    def boolean(self, value: Any, name: str, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.add(name, f"expected true or false, got {value!r}")
            return default
        return value

    def string_list(self, value: Any, name: str, default: list[str]) -> list[str]:
        if value is None:
            return list(default)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            self.add(name, f"expected a list of non-empty strings, got {value!r}")
            return list(default)
        return [v.strip() for v in value]


_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


def _parse_recipe(raw: Any, c: _Checker, base: Path) -> Recipe | None:
    if not isinstance(raw, dict):
        c.add("<top>", f"a recipe must be a mapping, got {type(raw).__name__}")
        return None
    c.unknown_keys(raw, [f.name for f in fields(Recipe) if f.name != "source"], "")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        c.add("name", f"required: a name of letters, digits, '_', '-', '.' starting with a letter, got {name!r}")
        name = "<invalid>"
    description = c.string(raw.get("description"), "description", "")
    stage = c.string(raw.get("stage"), "stage", "domain", STAGES)
    finetune = c.string(raw.get("finetune"), "finetune", "lora", FINETUNE_MODES)
    head = _parse_head(raw.get("head"), c)
    max_images = c.integer(raw.get("max_images"), "max_images", None, optional=True)
    adapters: dict[str, AdapterSettings] = {}
    for adapter_name, value in c.mapping(raw.get("adapters"), "adapters").items():
        value = c.mapping(value, f"adapters.{adapter_name}")
        c.unknown_keys(value, ("max_images", "options"), f"adapters.{adapter_name}")
        adapters[str(adapter_name)] = AdapterSettings(
            max_images=c.integer(value.get("max_images"), f"adapters.{adapter_name}.max_images", None, optional=True),
            options=dict(c.mapping(value.get("options"), f"adapters.{adapter_name}.options")),
        )
    prompts = _parse_prompts(raw.get("prompts"), c)
    lora = _parse_lora(raw.get("lora"), c)
    training = _parse_training(raw.get("training"), c)
    data = _parse_data(raw.get("data"), c, base)
    freeze_raw = c.mapping(raw.get("freeze"), "freeze")
    c.unknown_keys(freeze_raw, FREEZE_KEYS, "freeze")
    freeze = {k: c.boolean(v, f"freeze.{k}", False) for k, v in freeze_raw.items() if k in FREEZE_KEYS}
    training_args = dict(c.mapping(raw.get("training_args"), "training_args"))
    return Recipe(name=name, description=description, stage=stage, finetune=finetune, head=head, adapters=adapters,
                  max_images=max_images, prompts=prompts, lora=lora, training=training, data=data,
                  freeze=freeze, training_args=training_args)


def _parse_head(value: Any, c: _Checker) -> HeadSettings:
    if isinstance(value, str):
        value = {"type": value}
    value = c.mapping(value, "head")
    c.unknown_keys(value, ("type", "labels"), "head")
    from .plugin_manager import available_heads

    heads = available_heads()
    kind = c.string(value.get("type"), "head.type", "generate")
    if kind not in heads:
        c.add("head.type", f"{kind!r} is not an installed head; installed heads: {', '.join(sorted(heads))} "
                           "(a plugin adds more through longllava_register_heads)")
    labels = c.string_list(value.get("labels"), "head.labels", [])
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        c.add("head.labels", f"duplicate labels {duplicates}")
    if kind in heads:  # the head's own rules (``classify`` needs two labels...)
        for problem in heads[kind].check_labels(labels):
            c.add("head.labels", problem)
    for label in labels:
        if ";" in label:
            c.add("head.labels", f"label {label!r} contains ';' (the multi-label separator in CSV manifests)")
    return HeadSettings(type=kind, labels=labels)


def _parse_prompts(value: Any, c: _Checker) -> PromptTemplates:
    value = c.mapping(value, "prompts")
    names = [f.name for f in fields(PromptTemplates)]
    c.unknown_keys(value, names, "prompts")
    defaults = PromptTemplates()
    out: dict[str, str] = {}
    for name in names:
        text = c.string(value.get(name), f"prompts.{name}", getattr(defaults, name))
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except ValueError as exc:
            c.add(f"prompts.{name}", f"not a valid format string: {exc}")
            continue
        bad = sorted(u for u in used if u not in TEMPLATE_FIELDS)
        if bad:
            c.add(f"prompts.{name}", f"unknown placeholder(s) {bad}; allowed: {', '.join(TEMPLATE_FIELDS)}")
            continue
        out[name] = text
    user = out.get("user", defaults.user)
    if user.count("<image>") > 1:
        c.add("prompts.user", "a manifest row has one source: use at most one <image> marker")
    if "{question}" not in user:
        c.add("prompts.user", "must contain {question}")
    return PromptTemplates(**{**asdict(defaults), **out})


def _parse_lora(value: Any, c: _Checker) -> LoraSettings:
    value = c.mapping(value, "lora")
    c.unknown_keys(value, [f.name for f in fields(LoraSettings)], "lora")
    defaults = LoraSettings()
    modules = c.string_list(value.get("target_modules"), "lora.target_modules", defaults.target_modules)
    parameters = c.string_list(value.get("target_parameters"), "lora.target_parameters", defaults.target_parameters)
    for module in modules:
        leaf = module.rsplit(".", 1)[-1]
        if leaf in FORBIDDEN_LORA_TARGETS or module in FORBIDDEN_LORA_TARGETS:
            c.add("lora.target_modules", f"{module!r} cannot be a LoRA target: {FORBIDDEN_LORA_TARGETS.get(leaf) or FORBIDDEN_LORA_TARGETS[module]}")
    if not modules and not parameters:
        c.add("lora", "needs at least one of target_modules / target_parameters")
    return LoraSettings(
        r=c.integer(value.get("r"), "lora.r", defaults.r),
        alpha=c.integer(value.get("alpha"), "lora.alpha", defaults.alpha),
        dropout=c.number(value.get("dropout"), "lora.dropout", defaults.dropout, 0.0, 1.0, high_open=True),
        target_modules=modules,
        target_parameters=parameters,
    )


def _parse_training(value: Any, c: _Checker) -> TrainingSettings:
    value = c.mapping(value, "training")
    c.unknown_keys(value, [f.name for f in fields(TrainingSettings)], "training")
    d = TrainingSettings()
    return TrainingSettings(
        epochs=c.number(value.get("epochs"), "training.epochs", d.epochs, 0.0, low_open=True),
        learning_rate=(None if value.get("learning_rate") is None else
                       c.number(value.get("learning_rate"), "training.learning_rate", 0.0, 0.0, low_open=True)),
        batch_size=c.integer(value.get("batch_size"), "training.batch_size", d.batch_size),
        gradient_accumulation_steps=c.integer(value.get("gradient_accumulation_steps"),
                                              "training.gradient_accumulation_steps", d.gradient_accumulation_steps),
        max_length=c.integer(value.get("max_length"), "training.max_length", d.max_length, minimum=16),
        warmup_ratio=c.number(value.get("warmup_ratio"), "training.warmup_ratio", d.warmup_ratio, 0.0, 1.0,
                              high_open=True),
        lr_scheduler=c.string(value.get("lr_scheduler"), "training.lr_scheduler", d.lr_scheduler, SCHEDULERS),
        weight_decay=c.number(value.get("weight_decay"), "training.weight_decay", d.weight_decay, 0.0),
        max_grad_norm=c.number(value.get("max_grad_norm"), "training.max_grad_norm", d.max_grad_norm, 0.0),
        seed=c.integer(value.get("seed"), "training.seed", d.seed, minimum=0),
        packing=c.boolean(value.get("packing"), "training.packing", d.packing),
        packing_strategy=c.string(value.get("packing_strategy"), "training.packing_strategy", d.packing_strategy,
                                  PACKING_STRATEGIES),
        reset_mamba_state=c.boolean(value.get("reset_mamba_state"), "training.reset_mamba_state",
                                    d.reset_mamba_state),
        nan_policy=c.string(value.get("nan_policy"), "training.nan_policy", d.nan_policy, ("stop", "skip")),
    )


def _parse_data(value: Any, c: _Checker, base: Path) -> DataSettings:
    value = c.mapping(value, "data")
    c.unknown_keys(value, [f.name for f in fields(DataSettings)], "data")

    def path_of(key: str) -> Path | None:
        raw = value.get(key)
        if raw is None:
            return None
        if not isinstance(raw, (str, os.PathLike)) or not os.fspath(raw).strip():
            c.add(f"data.{key}", f"expected a path, got {raw!r}")
            return None
        p = Path(os.path.expanduser(os.fspath(raw)))
        return p if p.is_absolute() else (base / p).resolve()

    path, root, eval_path = path_of("path"), path_of("root"), path_of("eval_path")
    if path is not None and not path.exists():
        c.add("data.path", f"{path} does not exist")
    if eval_path is not None and not eval_path.exists():
        c.add("data.eval_path", f"{eval_path} does not exist")
    if root is not None and not root.is_dir():
        c.add("data.root", f"{root} is not a folder")
    eval_fraction = c.number(value.get("eval_fraction"), "data.eval_fraction", 0.0, 0.0, 1.0, high_open=True)
    if eval_fraction and eval_path is not None:
        c.add("data.eval_fraction", "give either eval_path or eval_fraction, not both")
    return DataSettings(path=path, root=root, eval_path=eval_path, eval_fraction=eval_fraction)
