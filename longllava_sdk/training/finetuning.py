"""A whole fine-tuning run, in three steps: plan, run, report.

::

    from longllava_sdk.training import finetune

    result = finetune("medical")                      # plan_finetune + run_finetune
    result.model_dir                                  # what Pipeline.from_pretrained loads

* :func:`plan_finetune` decides everything and validates everything a run needs -- recipe,
  stage, head and labels, the base model, every data row (media read through the adapters),
  the output folder policy -- and touches no file. A bad ``--model`` or ``--data`` fails here,
  before the output folder exists.
* :func:`run_finetune` executes a plan: output folder, model, LoRA / freezing, the HF
  ``Trainer``, evaluation, exports (adapter + merged model, or the full model).
* the :class:`FinetuneResult` is the report: metrics, folders, and one evaluation sample as
  ``Pipeline`` arguments (the CLI turns it into a runnable snippet).

:func:`finetune` is both steps; its options are one :class:`FinetuneArgs` (the fields may also
be passed as keyword arguments). The ``longllava-sdk finetune`` command is that function, its
flags ``FinetuneArgs``' fields.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from transformers import TrainerCallback

from ..errors import ConfigError, TrainingError, option_hint
from ..isolation import DecodeLimits, requested_limits
from ..options import reject_unknown, take_options
from ..heads import TaskHead
from ..model_folders import (RANDOM_INIT_KEY, create_model, export_merged, load_model, random_init_of,
                             save_model)
from ..modeling.task_model import TaskModel
from ..contracts import check_head, check_labels
from ..plugin_manager import get_plugin_manager
from ..registry import get_head_class
from ..processing.processor import LongLLaVAProcessor
from ..recipes import HeadSettings, Recipe, load_recipe
from .checkpointing import (RUN_CONFIG_NAME, TRAINER_LOG_NAME, check_output_dir, file_sha256, kept_checkpoint,
                            prepare_output_dir, staged_export, storage_errors)
from .data import PreparedData, prepare_datasets, read_rows
from .loss_plot import LOSS_PLOT_NAME, plot_loss
from .run_log import read_trainer_log
from .schedule import SCHEDULE_TRAINING_ARGS, check_resume_schedule
from .stages import Stage, get_stage
from .trainer import LongLLaVATrainer, PromptOnlyCollator, build_training_arguments

logger = logging.getLogger(__name__)

__all__ = ["FinetuneArgs", "FinetunePlan", "FinetuneResult", "plan_finetune", "run_finetune", "finetune",
           "write_run_config", "MODEL_DIR"]

BASE_MODEL_DIR = "base-model"
#: The exported standalone model, whatever the update kind (LoRA merged or full).
MODEL_DIR = "model"
#: The name LoRA runs used for their merged model before it was ``model/``: kept as a relative
#: symlink to ``model`` so scripts written against it still load.
LEGACY_MERGED_DIR = "merged"
#: Data files up to this size are hashed into run.json (bigger ones: size and mtime).
_HASHED_DATA_BYTES = 256 << 20


@dataclass
class FinetunePlan:
    """Everything a run needs, decided and validated by :func:`plan_finetune` (no file written).

    Attributes:
        recipe: the recipe, with command-line overrides applied.
        stage: the training stage (freezing, default learning rate).
        head: the task head used to check labels and build targets (a fresh one is created,
            seeded, for training).
        lora: LoRA adapters on the language model (else full fine-tuning of what the stage trains).
        output_dir: the run folder; resume_from: the checkpoint to continue from.
        model_dir: the base model folder, or ``None`` for a new ``preset`` model.
        processor: the base model's processor (the data was validated with it).
        data: the validated train / eval datasets.
        learning_rate, epochs: resolved from the arguments, the recipe and the stage.
        options: the remaining run options (steps, DeepSpeed, logging...).
    """

    recipe: Recipe
    stage: Stage
    head: TaskHead
    lora: bool
    output_dir: Path
    resume_from: Path | None
    model_dir: Path | None
    preset: str
    processor: LongLLaVAProcessor
    data: PreparedData
    learning_rate: float
    epochs: float
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def schedule(self) -> dict[str, Any]:
        """What decides the optimisation: recorded in every checkpoint, compared on ``--resume``
        (:mod:`.schedule`)."""
        training = self.recipe.training
        extra = {**(self.recipe.training_args or {}), **self.options.get("training_args", {})}
        schedule: dict[str, Any] = {
            "max_steps": self.options.get("max_steps") or None, "epochs": self.epochs,
            "learning_rate": self.learning_rate, "batch_size": training.batch_size,
            "gradient_accumulation_steps": training.gradient_accumulation_steps,
            "warmup_ratio": training.warmup_ratio, "lr_scheduler": training.lr_scheduler,
            "weight_decay": training.weight_decay, "max_grad_norm": training.max_grad_norm, "seed": training.seed,
            "packing": training.packing, "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        }
        schedule.update({f"training_args.{k}": v for k, v in sorted(extra.items()) if k in SCHEDULE_TRAINING_ARGS})
        return schedule

    @property
    def random_init(self) -> str | None:
        """How the base weights were made when that was a random initialisation (a demo), else ``None``."""
        if self.model_dir is None:
            return f"{self.preset} preset, seed {self.recipe.training.seed}"
        return random_init_of(self.model_dir)

    @property
    def run_info(self) -> dict[str, Any]:
        """What ``longllava_run.json`` records (compared on a rerun of an unstarted run)."""
        return {"recipe": self.recipe.name, "stage": self.stage.name, "finetune": "lora" if self.lora else "full",
                "head": self.head.name,
                "base_model": str(self.model_dir) if self.model_dir else
                f"new {self.preset} model (seed {self.recipe.training.seed})"}


@dataclass
class FinetuneResult:
    """What a run produced.

    Attributes:
        output_dir: the run folder.
        model_dir: the standalone model ``Pipeline.from_pretrained`` loads (merged LoRA or
            full model); ``None`` when not exported (a stopped run, or DeepSpeed ZeRO-3 LoRA:
            merge afterwards).
        adapter_dir: the peft adapter (LoRA runs).
        metrics: the head's evaluation metrics (``eval_*``).
        evaluated_on: ``eval`` (held-out rows) or ``train`` (no held-out rows).
        head, stage, finetune: what ran.
        resumed_from: the checkpoint the run resumed from.
        train_seconds: wall time of ``trainer.train``; global_step: optimizer steps done.
        example: one evaluation sample as ``Pipeline`` arguments: ``prompt``, ``kwarg``
            (``images`` / ``video`` / ``volume`` / ``tiled``: the adapter's kind), ``source``,
            ``adapter``, ``adapter_options``, ``max_images``, ``labels``.
        stopped: the run stopped on a signal after saving a checkpoint (resume it).
        chance: the chance baselines of ``metrics`` (``{"eval_accuracy": {"majority": .., "random": ..}}``,
            :mod:`longllava_sdk.chance`).
        random_init: how the base weights were made when they were random (a demo run:
            expect metrics near chance), else ``None``.
        trained_rows: the number of training rows.
    """

    output_dir: Path
    model_dir: Path | None
    adapter_dir: Path | None
    metrics: dict[str, float]
    evaluated_on: str
    head: str
    stage: str
    finetune: str
    resumed_from: Path | None
    train_seconds: float
    global_step: int
    example: dict[str, Any] = field(default_factory=dict)
    generates: bool = True
    stopped: bool = False
    chance: dict[str, dict[str, float]] = field(default_factory=dict)
    random_init: str | None = None
    trained_rows: int = 0


# -- plan ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinetuneArgs:
    """What to train and how: the options of :func:`finetune` and ``longllava-sdk finetune``.

    Attributes:
        domain: a registered domain (medical, remote_sensing, video, or a plugin's) or a recipe .yaml file.
        model: base model directory (safetensors); default: a new randomly initialised --preset model.
        data: training data (LLaVA JSON/JSONL or a CSV/JSONL manifest) instead of the recipe's sample data.
        output: run directory (default runs/<domain>-<stage>-<lora|full>); must be empty unless --resume/--overwrite.
        stage: align, sft-single, sft-multi, text-sft or domain (default: the recipe's, domain).
        head: task head: generate, multilabel, classify or a plugin's head (default: the recipe's).
        full: full fine-tuning instead of LoRA.
        deepspeed: DeepSpeed preset (zero2, zero3, zero3-offload) or a DeepSpeed JSON file; launch with torchrun.
        resume: continue the run in --output from its newest complete checkpoint (refused when --max-steps,
            --epochs, --lr, --batch-size or the recipe's schedule differ from the run's; see --force-schedule).
        overwrite: delete the previous run in --output and start again.
        epochs: number of epochs (default: the recipe's).
        lr: peak learning rate (default: the recipe's, else the stage's; cosine schedule with 3 percent warm-up).
        batch_size: per-device batch size (default: the recipe's).
        max_steps: stop after this many optimizer steps (overrides --epochs).
        save_steps: checkpoint every N steps (default: 4 checkpoints per run).
        logging_steps: log the loss every N steps (default: about 20 log lines per run).
        report_to: logging integrations for the HF Trainer (none, tensorboard, wandb, ...).
        router_aux_loss_coef: add the MoE load-balancing loss with this weight (ignored for single-expert models).
        merge: after LoRA, also write a standalone merged model in model/ (what Pipeline loads).
        preset: model preset for a new model when --model is not given (tiny runs on CPU).
        adapter_options: options for the input adapters, KEY=VALUE (typed by each adapter's declared
            options; override the recipe's), e.g. allow_non_parallel=true.
        force_schedule: with --resume, continue under a schedule that differs from the run's (the weights
            will differ from an uninterrupted run).
        isolate_decoding: read every media file in a killable worker process under --decode-timeout and
            --decode-memory-mb (data you do not trust); a file past a limit is a bad row. Inputs are unchanged.
        decode_timeout: with --isolate-decoding, seconds one source may take to decode (its worker is killed after).
        decode_memory_mb: with --isolate-decoding, MiB a decoding worker's address space may grow by.
    """

    domain: str | None = None
    model: str | None = None
    data: str | None = None
    output: str | None = None
    stage: str | None = None
    head: str | None = None
    full: bool = False
    deepspeed: str | None = None
    resume: bool = False
    overwrite: bool = False
    epochs: float | None = None
    lr: float | None = None
    batch_size: int | None = None
    max_steps: int | None = None
    save_steps: int | None = None
    logging_steps: int | None = None
    report_to: str | None = None
    router_aux_loss_coef: float | None = None
    merge: bool = True
    preset: str = "tiny"
    adapter_options: dict[str, Any] | None = None
    force_schedule: bool = False
    isolate_decoding: bool = False
    decode_timeout: float = DecodeLimits.timeout_s
    decode_memory_mb: int = DecodeLimits.memory_mb


def finetune_args(args: FinetuneArgs | str | os.PathLike[str] | Recipe | None, fields: dict[str, Any]) -> FinetuneArgs:
    """``args`` (an object, or just the domain) with ``fields`` (FinetuneArgs' names) applied; ``fields`` is emptied."""
    if args is None or isinstance(args, FinetuneArgs):
        return take_options(fields, FinetuneArgs, args)
    return take_options(fields, FinetuneArgs, FinetuneArgs(domain=args))  # type: ignore[arg-type]


def plan_finetune(
    args: FinetuneArgs | str | os.PathLike[str] | Recipe | None = None,
    /,
    *,
    exit_on_sigterm: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
    training_args: dict[str, Any] | None = None,
    **fields: Any,
) -> FinetunePlan:
    """Decide and validate a run (arguments as :func:`finetune`); writes nothing.

    ``args`` is a :class:`FinetuneArgs`, or the domain; its fields may also be given as keyword
    arguments (``plan_finetune("medical", max_steps=10)``). ``exit_on_sigterm``, ``callbacks``
    (extra ``TrainerCallback`` objects) and ``training_args`` (extra ``TrainingArguments``
    values) are for Python callers.
    """
    a = finetune_args(args, fields)
    reject_unknown(fields, "plan_finetune")
    domain, model, data, output, stage, head = a.domain, a.model, a.data, a.output, a.stage, a.head
    batch_size, lr, preset = a.batch_size, a.lr, a.preset
    if domain is None:
        if data is None:
            raise ConfigError(f"nothing to train on: pass {option_hint('domain', 'NAME')} (a registered domain or a "
                              f"recipe .yaml) or {option_hint('data', 'FILE')}")
        recipe = Recipe(name="custom", stage=get_stage(stage or "domain").name, head=HeadSettings(type=head or "generate"))
    else:
        recipe = load_recipe(domain)
    if batch_size is not None:
        recipe = recipe.with_overrides(batch_size=int(batch_size))
    stage_obj = get_stage(stage or recipe.stage).with_freeze(recipe.freeze)
    head_cls = get_head_class(head or recipe.head.type)
    labels = list(recipe.head.labels)
    if head_cls.problem_type != "generate":
        if not labels and data is not None:
            labels = sorted({label for row in read_rows(data, recipe=recipe) for label in (row.labels or [])})
        problems = check_labels(head_cls, labels)
        if problems:
            raise ConfigError(f"the {head_cls.name} head cannot use the labels of recipe {recipe.name!r} "
                              f"({labels or 'none, and the data rows name none'}): {'; '.join(problems)}")
        if not stage_obj.head:
            raise ConfigError(f"stage {stage_obj.name} freezes the task head, so a {head_cls.name} head would never "
                              f"train; use {option_hint('stage', 'domain')} or unfreeze the head in the recipe")
        if recipe.training.packing:
            raise ConfigError(f"a {head_cls.name} head reads one sample per row: set training.packing: false")
        check_head(head_cls, labels)  # a plugin head that breaks its contract fails here, before any work
    use_lora = stage_obj.uses_lora(bool(a.full) or recipe.finetune == "full")
    training = recipe.training
    learning_rate = float(next(v for v in (lr, training.learning_rate, stage_obj.learning_rate) if v is not None))
    output_dir = Path(output) if output is not None else \
        Path("runs") / f"{recipe.name}-{stage_obj.name}-{'lora' if use_lora else 'full'}"

    # The base model's config and processor: from its folder, or what a new preset model gets.
    from ..config import LongLLaVAConfig

    if model is not None:
        model_dir: Path | None = Path(model)
        from ..model_folders import check_model_folder, read_processor

        # every check a load makes, before the data is prepared (the weights load much later)
        config = check_model_folder(model_dir)
        processor = read_processor(model_dir, config)
    else:
        model_dir = None
        config = LongLLaVAConfig.from_preset(preset)
        processor = LongLLaVAProcessor.for_config(config)
    task_head = head_cls(config.text_config.hidden_size, labels)
    prepared = prepare_datasets(processor, recipe, data_path=data, head=task_head,
                                max_length=min(training.max_length, config.max_context),
                                adapter_options=a.adapter_options,
                                isolate_decoding=requested_limits(a.isolate_decoding, a.decode_timeout,
                                                                  a.decode_memory_mb))
    plan = FinetunePlan(
        recipe=recipe, stage=stage_obj, head=task_head, lora=use_lora, output_dir=output_dir, resume_from=None,
        model_dir=model_dir, preset=preset, processor=processor, data=prepared, learning_rate=learning_rate,
        epochs=float(a.epochs if a.epochs is not None else training.epochs),
        options=dict(deepspeed=a.deepspeed, resume=a.resume, overwrite=a.overwrite, max_steps=a.max_steps,
                     save_steps=a.save_steps, logging_steps=a.logging_steps, report_to=a.report_to,
                     output_router_logits=a.router_aux_loss_coef is not None and a.router_aux_loss_coef > 0,
                     router_aux_loss_coef=a.router_aux_loss_coef, merge=a.merge, exit_on_sigterm=exit_on_sigterm,
                     callbacks=list(callbacks), training_args=dict(training_args or {}),
                     force_schedule=a.force_schedule, schedule_changes=[], arguments=asdict(a)),
    )
    plan.resume_from = check_output_dir(output_dir, resume=a.resume, overwrite=a.overwrite, run_info=plan.run_info)
    if plan.resume_from is not None:
        plan.options["schedule_changes"] = check_resume_schedule(plan.resume_from, plan.schedule,
                                                                 force=a.force_schedule)
    return plan


# -- run -----------------------------------------------------------------------------------------


def run_finetune(plan: FinetunePlan) -> FinetuneResult:
    """Execute ``plan``: output folder, model, training, evaluation, exports.

    Order matters for distributed runs: the DeepSpeed / gloo setup happens before
    ``TrainingArguments``, the model is built after it, and only the main process creates
    or deletes files in the output folder.
    """
    from transformers import set_seed

    from .checkpointing import latest_complete_checkpoint
    from .collator import PackedCollator, TrainingCollator
    from .distributed import prepare_distributed, prepare_model_for_distributed
    from .lora import apply_lora
    from .stages import apply_stage_freezing

    opts = plan.options
    recipe, training, output_dir = plan.recipe, plan.recipe.training, plan.output_dir
    is_main = int(os.environ.get("RANK", "0")) == 0
    resume_from = plan.resume_from
    if is_main:
        resume_from = prepare_output_dir(output_dir, resume=opts["resume"], overwrite=opts["overwrite"],
                                         run_info=plan.run_info)
        with storage_errors(output_dir, doing=f"writing {RUN_CONFIG_NAME}", kept=kept_checkpoint(output_dir),
                            resume=resume_from is not None):
            write_run_config(plan, resume_from)
    setup = prepare_distributed(opts["deepspeed"], run_dir=output_dir)

    # -- model ----------------------------------------------------------------------------------
    dtype = torch.bfloat16 if setup.training_arguments_kwargs().get("bf16") else torch.float32
    base_dir = plan.model_dir if plan.model_dir is not None else output_dir / BASE_MODEL_DIR
    extra_args = {**setup.training_arguments_kwargs(), **(recipe.training_args or {}), **opts["training_args"]}
    # TrainingArguments first (it sets up the process group), then the model (ZeRO-3 init).
    args_probe = build_training_arguments(output_dir, training, learning_rate=plan.learning_rate, epochs=plan.epochs,
                                          max_steps=opts["max_steps"], save_steps=opts["save_steps"],
                                          logging_steps=opts["logging_steps"], report_to=opts["report_to"],
                                          extra=extra_args)
    with args_probe.main_process_first(desc="base model"):
        if plan.model_dir is None and not (base_dir / "config.json").is_file():
            if not is_main:
                raise TrainingError(f"{base_dir}: the base model was not written by the main process")
            fresh, processor = create_model(plan.preset, seed=training.seed)
            with storage_errors(output_dir, doing=f"writing the new base model to {base_dir}",
                                kept="no checkpoint was written", resume=False):
                save_model(fresh, processor, base_dir, overwrite=True, info={RANDOM_INIT_KEY: plan.random_init})
        if not is_main and opts["resume"]:
            resume_from = latest_complete_checkpoint(output_dir)
    model, _ = load_model(base_dir, dtype=dtype)
    get_plugin_manager().call_checked("longllava_model_loaded", returns="nothing (ignored)", check=lambda r: True,
                                      model=model, config=model.config)
    if resume_from is not None and is_main:
        logger.info("resuming from %s (step %s)", resume_from, _step_of(resume_from))

    # -- data collation -------------------------------------------------------------------------
    processor = plan.processor
    train_dataset: Any = plan.data.train
    eval_dataset = plan.data.eval
    if not plan.head.generates:
        collator: Callable[..., Any] = PromptOnlyCollator(TrainingCollator(processor))
        eval_collator: Callable[..., Any] = collator
    elif training.packing:
        from .packing import PackedDataset

        train_dataset = PackedDataset(plan.data.train, max_length=training.max_length, seed=training.seed,
                                      strategy=training.packing_strategy)
        collator = PackedCollator(processor, reset_mamba_state=training.reset_mamba_state, mask_dtype=dtype)
        eval_collator = TrainingCollator(processor)
    else:
        collator = eval_collator = TrainingCollator(processor)

    # -- head, freezing, LoRA -------------------------------------------------------------------
    set_seed(training.seed)  # head and adapters initialise identically on every rank and on resume
    task_head = type(plan.head).from_config(plan.head.config_dict())
    task_head.to(dtype)
    if plan.lora:
        backbone, _ = apply_lora(model, recipe.lora, train_projector=plan.stage.projector,
                                 train_vision=plan.stage.vision, problem_type=task_head.problem_type)
        for param in task_head.parameters():
            param.requires_grad_(plan.stage.head)
    else:
        apply_stage_freezing(model, plan.stage, task_head.problem_type, task_head)
        backbone = model
    prepare_model_for_distributed(backbone, setup)
    task_model = TaskModel(backbone, task_head, output_router_logits=opts["output_router_logits"],
                           router_aux_loss_coef=opts["router_aux_loss_coef"])

    # -- train ----------------------------------------------------------------------------------
    world = max(1, setup.env.world_size)
    per_step = training.batch_size * training.gradient_accumulation_steps * world
    steps_per_epoch = max(1, math.ceil(len(train_dataset) / per_step))
    args = build_training_arguments(output_dir, training, learning_rate=plan.learning_rate, epochs=plan.epochs,
                                    max_steps=opts["max_steps"], save_steps=opts["save_steps"],
                                    logging_steps=opts["logging_steps"], report_to=opts["report_to"],
                                    extra=extra_args, steps_per_epoch=steps_per_epoch)
    plugin_callbacks = [cb for batch in get_plugin_manager().call_checked(
        "longllava_trainer_callbacks", returns="a list of transformers.TrainerCallback objects (or classes)",
        check=_is_callback_list, training_args=args, recipe=recipe) for cb in batch]
    info = {**plan.run_info, "base_model": str(base_dir.resolve()), "labels": list(task_head.labels),
            "schedule": plan.schedule, **({RANDOM_INIT_KEY: plan.random_init} if plan.random_init else {}),
            "trained_rows": len(plan.data.train)}
    trainer = LongLLaVATrainer(task_model, args, processor=processor, train_dataset=train_dataset,
                               eval_dataset=eval_dataset, data_collator=collator,
                               callbacks=[*opts["callbacks"], *plugin_callbacks],
                               exit_on_sigterm=opts["exit_on_sigterm"], run_info=info,
                               nan_policy=training.nan_policy)
    started = time.time()
    train_output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_seconds = time.time() - started
    mode = "lora" if plan.lora else "full"
    if trainer.stopped_by_signal:  # exit_on_sigterm=False
        return FinetuneResult(output_dir, None, None, {}, "none", task_head.name, plan.stage.name, mode, resume_from,
                              train_seconds, trainer.state.global_step, generates=task_head.generates, stopped=True)

    # -- evaluate -------------------------------------------------------------------------------
    evaluated_on = "eval" if eval_dataset is not None and len(eval_dataset) else "train"
    trainer.data_collator = eval_collator
    metrics = trainer.evaluate(eval_dataset if evaluated_on == "eval" else plan.data.train)
    metrics["train_loss"] = float(train_output.training_loss)

    # -- export ---------------------------------------------------------------------------------
    info["trained_steps"] = trainer.run_info["trained_steps"] = trainer.state.global_step
    # One name for the standalone model whatever the update kind: model/ (LoRA: merged; full: as trained).
    adapter_dir = output_dir / "adapter" if plan.lora else None
    model_dir_out: Path | None = output_dir / MODEL_DIR
    export_dir = adapter_dir if plan.lora else model_dir_out
    assert export_dir is not None
    guard = dict(kept=kept_checkpoint(output_dir))
    with storage_errors(output_dir, doing=f"exporting {export_dir.name}/", **guard):
        with staged_export(export_dir, is_main=is_main) as staging:  # no half-written export, ever
            with storage_errors(staging, doing=f"exporting {export_dir.name}/", **guard):
                trainer.save_model(str(staging))  # gathers ZeRO-3 weights when needed
                if is_main:
                    processor.save_pretrained(staging)
    merge_here = plan.lora and opts["merge"] and not trainer.zero3  # ZeRO-3: shards only; merge afterwards
    if plan.lora and not merge_here:
        model_dir_out = None
    chance = dict(trainer.last_chance)
    if is_main:
        if merge_here:
            with storage_errors(output_dir, doing=f"writing the merged model to {model_dir_out}", **guard):
                export_merged(backbone, processor, model_dir_out, head=task_head,
                              info={**info, "adapter": str(adapter_dir)}, overwrite=True)
            _legacy_alias(output_dir)
        summary = {"metrics": metrics, "chance": chance, "evaluated_on": evaluated_on, "train_seconds": train_seconds,
                   "global_step": trainer.state.global_step, **info}
        with storage_errors(output_dir, doing="writing the run's reports", **guard):
            (output_dir / "eval_metrics.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
            plot_loss(read_trainer_log(output_dir / TRAINER_LOG_NAME), output_dir / LOSS_PLOT_NAME,
                      title=f"{output_dir.name}: training loss")
    example = usage_example(eval_dataset if evaluated_on == "eval" else plan.data.train, recipe)
    return FinetuneResult(output_dir, model_dir_out, adapter_dir, metrics, evaluated_on, task_head.name,
                          plan.stage.name, mode, resume_from, train_seconds, trainer.state.global_step, example,
                          generates=task_head.generates, chance=chance, random_init=plan.random_init,
                          trained_rows=len(plan.data.train))


def _legacy_alias(output_dir: Path) -> None:
    """``merged -> model``: a relative symlink, so paths written for the old LoRA layout still load."""
    alias = output_dir / LEGACY_MERGED_DIR
    if alias.exists() and not alias.is_symlink():
        return  # a real folder of that name (not ours to replace)
    tmp = output_dir / f".{LEGACY_MERGED_DIR}.link-{os.getpid()}"
    try:
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(MODEL_DIR, tmp, target_is_directory=True)
        os.replace(tmp, alias)
    except OSError as exc:  # a filesystem without symlinks: the alias is a convenience
        logger.info("no %s alias for %s/ (%s)", LEGACY_MERGED_DIR, MODEL_DIR, exc)


def _package_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version
    import platform

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("longllava-sdk", "torch", "transformers", "peft", "accelerate", "deepspeed"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def _data_record(path: Path | None, rows: int | None) -> dict[str, Any] | None:
    if path is None:
        return None
    record: dict[str, Any] = {"path": str(path.resolve()), "rows": rows}
    try:
        stat = path.stat()
    except OSError:
        return record
    record["bytes"] = stat.st_size
    if stat.st_size <= _HASHED_DATA_BYTES and path.is_file():
        record["sha256"] = file_sha256(path)
    else:
        record["mtime"] = stat.st_mtime
    return record


def write_run_config(plan: FinetunePlan, resume_from: Path | None = None) -> Path:
    """Write ``run.json``: every option as resolved, the recipe, the schedule, versions and data hashes.

    A resumed run rewrites it with its own options, the checkpoint it resumed from and the
    schedule changes it was allowed (``--force-schedule``); the schedule each checkpoint was
    trained under stays in that checkpoint (``longllava_training.json``).
    """
    options = {k: v for k, v in plan.options.items() if k not in ("callbacks", "schedule_changes", "arguments")}
    eval_rows = plan.data.eval.rows if plan.data.eval is not None else None
    config = {
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": plan.run_info,
        "output_dir": str(plan.output_dir.resolve()),
        "model_dir": MODEL_DIR,
        "preset": plan.preset if plan.model_dir is None else None,
        RANDOM_INIT_KEY: plan.random_init,
        "learning_rate": plan.learning_rate,
        "epochs": plan.epochs,
        "schedule": plan.schedule,
        "arguments": plan.options.get("arguments"),  # the FinetuneArgs as given (flags / fields)
        "options": options,                          # as resolved for the run
        "recipe": plan.recipe.to_dict(),
        "data": {"train": _data_record(plan.data.data_path, len(plan.data.train)),
                 "eval_rows": None if eval_rows is None else len(eval_rows),
                 "root": str(plan.data.root)},
        "versions": _package_versions(),
        "resumed_from": str(resume_from) if resume_from is not None else None,
        "schedule_changes": list(plan.options.get("schedule_changes") or []),
    }
    path = plan.output_dir / RUN_CONFIG_NAME
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(config, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def finetune(args: FinetuneArgs | str | None = None, /, **fields: Any) -> FinetuneResult:
    """Fine-tune LongLLaVA (LoRA by default) on a domain recipe or your own data, evaluate and export it.

    With only --domain (e.g. `longllava-sdk finetune --domain medical`) this builds a new
    tiny model, trains LoRA on the recipe's bundled sample data, evaluates the task head,
    saves everything under runs/<domain>-<stage>-lora/ (adapter/, the merged model in model/,
    trainer_log.jsonl, training_loss.png, run.json) and prints how to run the result.
    Everything is validated (model, data rows and their media, output folder) before the
    output folder is created. A recipe .yaml is also a
    valid --config file (`finetune --config recipe.yaml` trains that recipe).

    Args:
        args: what to train and how (:class:`FinetuneArgs`; its fields are the command's flags),
            or just the domain; fields may also be given as keyword arguments, with
            :func:`plan_finetune`'s Python-only ones (``callbacks``, ``exit_on_sigterm``, ``training_args``).
    """
    return run_finetune(plan_finetune(args, **fields))


# -- report --------------------------------------------------------------------------------------


def usage_example(dataset: Any, recipe: Recipe) -> dict[str, Any]:
    """One sample's question and media as ``Pipeline`` arguments (the kwarg is the adapter's kind).

    Rows whose media are all plain images become ``images=[...]``; a row with one video /
    volume / tiled source becomes ``video=`` / ``volume=`` / ``tiled=``; other mixes are not
    expressible as keyword arguments and give a text-only example.
    """
    from ..registry import available_adapters

    try:
        row = dataset.rows[0]
        loader = dataset.loader
    except (AttributeError, IndexError):
        return {}
    prompt = next((t["content"] for t in row.turns if t["role"] == "user"), "")
    if not row.sources:
        return {"prompt": prompt}
    adapters = available_adapters()
    try:
        resolved = []
        for source in row.sources:
            paths = loader.resolve_paths(source)
            resolved.append((source, paths, loader.adapter_name(source, paths)))
    except Exception:  # noqa: BLE001 - the example is a convenience; training already validated the data
        return {}
    kinds = {adapters[name].kind if name in adapters else "images" for _, _, name in resolved}
    source, paths, adapter = resolved[0]
    if kinds == {"images"}:
        kwarg, value = "images", [str(p) for _, ps, _ in resolved for p in ps]
    elif len(resolved) == 1:
        kwarg = kinds.pop()
        value = [str(p) for p in paths] if len(paths) > 1 else str(paths[0])
    else:
        return {}
    options = recipe.adapter_options(adapter)
    declared = adapters[adapter].options() if adapter in adapters else {}
    options.update({k: v for k, v in loader.adapter_options.items() if k in declared})
    options.update(source.option_dict)
    return {"prompt": prompt, "kwarg": kwarg, "source": value, "adapter": adapter, "adapter_options": options,
            "max_images": recipe.adapter_max_images(adapter), "labels": list(row.labels or [])}


def _step_of(checkpoint: Path) -> str:
    return checkpoint.name.rsplit("-", 1)[-1]


def _is_callback_list(value: Any) -> bool:
    from transformers import TrainerCallback

    return isinstance(value, list) and all(
        isinstance(cb, TrainerCallback) or isinstance(cb, type) and issubclass(cb, TrainerCallback) for cb in value)
