"""The trainer: HF ``Trainer`` underneath, task heads, LoRA / full fine-tuning, atomic checkpoints.

:class:`LongLLaVATrainer` is ``transformers.Trainer`` for a
:class:`~longllava_sdk.modeling.task_model.TaskModel` (backbone + task head) with:
checkpoints written atomically with a completeness marker (:mod:`.checkpointing`); resume
from them bit-exactly (weights, optimizer, scheduler, RNG and data order through the
Trainer's own machinery); SIGTERM -> checkpoint at the next step boundary -> exit 143; the
first-step gradient check (:func:`.lora.check_gradients`); ``trainer_log.jsonl`` and numeric
console logs (:mod:`.run_log`); ``evaluate()`` producing the head's metrics (and their chance
baselines, :mod:`longllava_sdk.chance`) (generated answers for ``generate`` heads). Heads other than ``generate``
read only the prompt (:class:`PromptOnlyCollator`: the answer is cut off, else the label
would be in the input).

A whole run (plan, train, evaluate, export) is :mod:`.finetune`. Progress bars, logging and
``report_to`` are the Trainer's (``TrainingArguments``); the schedule is cosine with
``warmup_steps=0.03`` (a ratio) unless the recipe says otherwise.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import rotate_checkpoints

from ..chance import chance_baselines
from ..errors import CheckpointError, ConfigError, TrainingError
from ..model_folders import (
    ADAPTER_WEIGHTS_NAME,
    STATE_WEIGHTS_NAME,
    TRAINING_INFO_NAME,
    load_head,
    save_head,
)
from ..modeling.task_model import TaskModel
from ..processing.processor import IGNORE_INDEX, EncodedSample
from ..recipes import TrainingSettings
from .checkpointing import (SIGTERM_EXIT_CODE, GracefulStop, SigtermCallback, kept_checkpoint, staged_checkpoint,
                            storage_errors)
from .lora import check_gradients, raise_for_gradients
from .run_log import NumericPrinterCallback, NumericProgressCallback, TrainerLogCallback

logger = logging.getLogger(__name__)

__all__ = [
    "LongLLaVATrainer",
    "GradientCheckCallback",
    "PromptOnlyCollator",
    "build_training_arguments",
    "answer_span",
    "split_for_generation",
    "decode_generated",
    "save_task_model",
    "load_task_model_weights",
]


# ---------------------------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------------------------

def answer_span(labels: Sequence[int]) -> tuple[int, int]:
    """``(start, end)`` of the last run of non-ignored labels (the final answer), ``(len, len)`` if none."""
    end = len(labels)
    while end > 0 and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    if start == end:
        return len(labels), len(labels)
    return start, end


def prompt_only(sample: EncodedSample) -> EncodedSample:
    """The sample cut before its final answer: user turn(s) + the assistant header.

    This is exactly what ``processor(messages=..., add_generation_prompt=True)`` encodes at
    inference, so a classification head sees the same tokens in training and in ``Pipeline``.
    """
    start, _ = answer_span(sample.labels)
    cut = type(sample).__new__(type(sample))
    cut.__dict__.update(sample.__dict__)
    cut.input_ids = list(sample.input_ids[:start])
    cut.labels = [IGNORE_INDEX] * start
    return cut


def split_for_generation(sample: EncodedSample, processor: Any) -> tuple[EncodedSample, str]:
    """``(prompt, reference)``: the sample up to its final answer, and that answer as text.

    The prompt is :func:`prompt_only`'s cut as a plain :class:`EncodedSample` (what
    ``processor.collate_for_generation`` batches); the reference is the answer's tokens
    without ``<|endoftext|>``, decoded. Generation is scored by comparing what the model
    writes after the prompt with the reference (``LongLLaVATrainer.evaluate`` and
    ``longllava-sdk eval data`` both do it this way).
    """
    start, end = answer_span(sample.labels)
    eos = processor.tokenizer.eos_token_id
    answer = [t for t in sample.input_ids[start:end] if t != eos]
    prompt = EncodedSample(list(sample.input_ids[:start]), [IGNORE_INDEX] * start, list(sample.images))
    return prompt, processor.decode(answer).strip()


def decode_generated(tokens: Sequence[int], processor: Any) -> str:
    """The text of generated ``tokens`` (those after the prompt), cut at the first ``<|endoftext|>``."""
    tokens = [int(t) for t in tokens]
    eos = processor.tokenizer.eos_token_id
    if eos in tokens:
        tokens = tokens[:tokens.index(eos)]
    return processor.decode(tokens).strip()


class PromptOnlyCollator:
    """Wraps a collator so every sample loses its answer tokens (classification heads)."""

    def __init__(self, collator: Callable[[Sequence[EncodedSample]], dict[str, Any]]) -> None:
        self.collator = collator

    def __call__(self, samples: Sequence[EncodedSample]) -> dict[str, Any]:
        return self.collator([prompt_only(s) for s in samples])


# ---------------------------------------------------------------------------------------------
# saving / loading the trained weights
# ---------------------------------------------------------------------------------------------

def _is_peft(module: nn.Module) -> bool:
    return hasattr(module, "peft_config") and hasattr(module, "get_base_model")


def _split_state(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    backbone, head = {}, {}
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key.startswith("backbone."):
            backbone[key[len("backbone."):]] = value
        elif key.startswith("head."):
            head[key[len("head."):]] = value
    return backbone, head


def save_task_model(task_model: TaskModel, directory: str | os.PathLike[str], *, checkpoint: bool = False,
                    state_dict: dict[str, torch.Tensor] | None = None, info: dict[str, Any] | None = None) -> None:
    """Write the trained weights of ``task_model`` into ``directory``.

    * LoRA: the peft adapter (``adapter_config.json`` + ``adapter_model.safetensors``,
      projector included through ``modules_to_save``);
    * full: for checkpoints the raw state dict (``longllava_state.safetensors``, exact for
      resume); for exports ``save_pretrained`` (loadable by ``Pipeline``);
    * always the head (``head_config.json`` + ``head.safetensors``) and ``longllava_training.json``.

    ``state_dict`` is the gathered state of the whole ``TaskModel`` under DeepSpeed ZeRO-3.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    backbone_state, head_state = _split_state(state_dict) if state_dict is not None else (None, None)
    backbone = task_model.backbone
    if _is_peft(backbone):
        # The SDK never resizes the vocabulary: embeddings are not part of an adapter (and peft's
        # "auto" would look for a hub config to decide).
        backbone.save_pretrained(str(directory), state_dict=backbone_state, safe_serialization=True,
                                 save_embedding_layers=False)
        fmt = "lora"
    elif checkpoint:
        from safetensors.torch import save_file

        tensors = backbone_state if backbone_state is not None else backbone.state_dict()
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(directory / STATE_WEIGHTS_NAME),
                  metadata={"format": "pt"})
        backbone.config.save_pretrained(str(directory))
        fmt = "full"
    else:
        backbone.save_pretrained(str(directory), state_dict=backbone_state, safe_serialization=True)
        fmt = "full"
    save_head(task_model.head, directory, state_dict=head_state)
    meta = {"format": fmt, "head": task_model.head.name, **(info or {})}
    (directory / TRAINING_INFO_NAME).write_text(json.dumps(meta, indent=2, default=str) + "\n")


def load_task_model_weights(task_model: TaskModel, directory: str | os.PathLike[str]) -> None:
    """Load weights written by :func:`save_task_model` (a checkpoint) into ``task_model``, exactly.

    Raises:
        CheckpointError: files missing, or keys / shapes that do not match the model.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    backbone = task_model.backbone
    if _is_peft(backbone):
        from peft import set_peft_model_state_dict

        path = directory / ADAPTER_WEIGHTS_NAME
        if not path.is_file():
            raise CheckpointError(f"{directory}: no {ADAPTER_WEIGHTS_NAME} (was this a full fine-tuning run?)")
        state = load_file(str(path))
        result = set_peft_model_state_dict(backbone, state)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        missing = [k for k in (getattr(result, "missing_keys", []) or []) if "lora_" in k or "modules_to_save" in k]
        if unexpected or missing:
            raise CheckpointError(f"{path}: adapter does not match the model (unexpected {unexpected[:5]}, "
                                  f"missing {missing[:5]})")
    else:
        path = directory / STATE_WEIGHTS_NAME
        if not path.is_file():
            raise CheckpointError(f"{directory}: no {STATE_WEIGHTS_NAME} (was this a LoRA run?)")
        state = load_file(str(path))
        try:
            backbone.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: does not match the model: {exc}") from exc
    head_state = task_model.head.state_dict()
    if head_state:
        saved = load_head(directory)
        if saved is None:
            raise CheckpointError(f"{directory}: the run has a {task_model.head.name} head but no head files")
        try:
            task_model.head.load_state_dict(saved.state_dict(), strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{directory}: head weights do not match: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# callbacks
# ---------------------------------------------------------------------------------------------

NAN_POLICIES: tuple[str, ...] = ("stop", "skip")


class NonFiniteUpdateCallback(TrainerCallback):
    """``nan_policy="skip"``: drop the update of a step whose loss was NaN / inf.

    Every gradient is set to ``None`` just before the optimizer step, so the optimizer leaves
    the weights *and* its moments unchanged for that step (a zero gradient would still move
    Adam's weights through momentum); the step still counts, so data order and resume stay
    exact.
    """

    def __init__(self, trainer: "LongLLaVATrainer") -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.trainer._non_finite_in_step:
            return
        self.trainer._non_finite_in_step = False
        for param in self.trainer.model.parameters():
            param.grad = None
        self.trainer.skipped_steps.append(state.global_step + 1)
        logger.warning("step %d: the loss was not finite; its update was skipped (nan_policy: skip)",
                       state.global_step + 1)


class GradientCheckCallback(TrainerCallback):
    """After the first backward pass of a run: every trainable parameter must have a usable gradient.

    Vision / projector parameters are checked at the first step whose batch had images
    (a text-only batch cannot reach them). Under DeepSpeed the gradients are partitioned and
    already consumed when callbacks run, so the check is skipped there (logged).
    """

    def __init__(self, trainer: "LongLLaVATrainer") -> None:
        self.trainer = trainer
        self.pending: set[str] | None = None  # None: the first step is not checked yet

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.pending = None
        if self.trainer.is_deepspeed_enabled:
            logger.info("gradient check skipped under DeepSpeed (gradients are partitioned)")
            self.pending = set()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.pending is not None and not self.pending:
            return
        saw_images = self.trainer._images_since_step
        self.trainer._images_since_step = False
        params = self.trainer.model.named_parameters()
        if self.pending is None:
            # A batch without images cannot reach the vision tower or the projector: check them later.
            deferred = set() if saw_images else {"vision", "projector"}
            self.pending = deferred
            raise_for_gradients(check_gradients(params, skip_components=deferred))
        elif saw_images:
            pending, self.pending = self.pending, set()
            raise_for_gradients(check_gradients(params, only_components=pending))


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------

class LongLLaVATrainer(Trainer):
    """``transformers.Trainer`` for a :class:`TaskModel` (see the module docstring).

    Args:
        model: the :class:`TaskModel`.
        args: ``TrainingArguments`` (see :func:`build_training_arguments`).
        processor: the model's processor (generation in ``evaluate`` for ``generate`` heads).
        check_gradients: run :class:`GradientCheckCallback`.
        exit_on_sigterm: after a SIGTERM-triggered checkpoint, ``sys.exit(143)`` at the end of
            :meth:`train`; ``False`` returns normally with ``self.stopped_by_signal`` set.
        nan_policy: a NaN / inf training loss ``"stop"`` s the run with a :class:`TrainingError`
            before the update (no checkpoint is written after it, so the last good one is never
            overwritten), or ``"skip"`` s that step's update (:class:`NonFiniteUpdateCallback`).
        max_new_tokens: cap for generated answers in ``evaluate``.
        run_info: extra facts written to ``longllava_training.json`` in checkpoints / exports.
        **kwargs: passed to ``transformers.Trainer`` (``train_dataset``, ``data_collator``,
            ``callbacks``...).
    """

    def __init__(self, model: TaskModel, args: TrainingArguments, *, processor: Any | None = None,
                 check_gradients: bool = True, exit_on_sigterm: bool = True, max_new_tokens: int = 64,
                 run_info: dict[str, Any] | None = None, nan_policy: str = "stop", **kwargs: Any) -> None:
        if nan_policy not in NAN_POLICIES:
            raise ConfigError(f"nan_policy must be one of {', '.join(NAN_POLICIES)}, got {nan_policy!r}")
        if nan_policy == "skip" and args.deepspeed:
            raise ConfigError("nan_policy 'skip' cannot drop an update inside DeepSpeed's engine; use 'stop'")
        self.graceful_stop = GracefulStop()
        self.nan_policy = nan_policy
        self.skipped_steps: list[int] = []
        self._non_finite_in_step = False
        callbacks = list(kwargs.pop("callbacks", None) or [])
        callbacks.append(SigtermCallback(self.graceful_stop))
        if nan_policy == "skip":
            callbacks.append(NonFiniteUpdateCallback(self))
        if check_gradients:
            callbacks.append(GradientCheckCallback(self))
        callbacks.append(TrainerLogCallback())
        kwargs.setdefault("processing_class", None)
        super().__init__(model=model, args=args, callbacks=callbacks, **kwargs)
        # transformers prints logs with floats formatted into strings; swap in ours (numbers stay numbers)
        for theirs, ours in ((ProgressCallback, NumericProgressCallback), (PrinterCallback, NumericPrinterCallback)):
            if any(type(cb) is theirs for cb in self.callback_handler.callbacks):
                self.remove_callback(theirs)
                self.add_callback(ours)
        self.processor = processor
        self.exit_on_sigterm = exit_on_sigterm
        self.max_new_tokens = max_new_tokens
        self.run_info = dict(run_info or {})
        self.stopped_by_signal = False
        #: the chance baselines of the last ``evaluate`` (``{"eval_accuracy": {"majority": .., "random": ..}}``)
        self.last_chance: dict[str, dict[str, float]] = {}
        self._chance: dict[str, dict[str, float]] = {}
        self._images_since_step = False
        self._saving_checkpoint = False

    # -- training ----------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """``Trainer.train`` with SIGTERM handling; resuming needs an explicit checkpoint path
        (``True`` means the newest *complete* checkpoint in ``output_dir``)."""
        if resume_from_checkpoint is True:
            from .checkpointing import latest_complete_checkpoint

            found = latest_complete_checkpoint(self.args.output_dir)
            if found is None:
                raise TrainingError(f"{self.args.output_dir}: no complete checkpoint to resume from")
            resume_from_checkpoint = str(found)
        if resume_from_checkpoint and not self.is_deepspeed_enabled and self._finished(resume_from_checkpoint):
            return self._finish_from(resume_from_checkpoint)
        self.graceful_stop.requested = False
        self.graceful_stop.install()
        try:
            result = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        finally:
            self.graceful_stop.restore()
        if self.graceful_stop.requested:
            self.stopped_by_signal = True
            logger.warning("stopped by signal at step %d; checkpoint saved in %s", self.state.global_step,
                           self.args.output_dir)
            if self.exit_on_sigterm:
                sys.stdout.flush()
                sys.stderr.flush()
                sys.exit(SIGTERM_EXIT_CODE)
        return result

    def _finished(self, checkpoint: str | os.PathLike[str]) -> bool:
        """Whether ``checkpoint`` is already at the run's last step.

        transformers' loop checks for the end only after a step, so resuming from the final
        checkpoint would train one step too many (and a run killed while exporting would
        finish with other weights than an uninterrupted one).
        """
        from transformers import TrainerState

        try:
            state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
        except (OSError, ValueError):
            return False
        total = self.args.max_steps if self.args.max_steps > 0 else state.max_steps
        return bool(total) and state.global_step >= total

    def _finish_from(self, checkpoint: str | os.PathLike[str]) -> Any:
        """Load the final checkpoint's weights and state instead of training (see :meth:`_finished`)."""
        from transformers import TrainerState
        from transformers.trainer_utils import TrainOutput

        self._load_from_checkpoint(str(checkpoint))
        self.state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
        losses = [entry["loss"] for entry in self.state.log_history if "loss" in entry]
        loss = float(sum(losses) / len(losses)) if losses else float("nan")
        logger.info("%s is the run's last step (%d): nothing left to train", checkpoint, self.state.global_step)
        return TrainOutput(self.state.global_step, loss, {"train_loss": loss})

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> Any:
        if inputs.get("pixel_values") is not None:
            self._images_since_step = True
        task_model = self.accelerator.unwrap_model(self.model)
        if not task_model.generates and inputs.get("head_labels") is None:
            raise TrainingError(f"the {task_model.head.name} head needs head_labels in every batch (rows with labels)")
        if task_model.generates and inputs.get("labels") is None:
            raise TrainingError("the generate head needs labels (answer tokens) in every batch")
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        loss = result[0] if return_outputs else result
        if model.training and not bool(torch.isfinite(loss.detach()).all()):
            self._non_finite_loss(float(loss.detach().float().reshape(-1)[0]))
        return result

    def _non_finite_loss(self, value: float) -> None:
        step = self.state.global_step + 1
        if self.nan_policy == "skip":
            self._non_finite_in_step = True
            return
        from .checkpointing import latest_complete_checkpoint

        previous = latest_complete_checkpoint(self.args.output_dir)
        kept = f"the last complete checkpoint, {previous}, is untouched" if previous else "no checkpoint was written"
        raise TrainingError(f"the training loss is {value} at step {step}; stopped before the update ({kept}). "
                            "Lower the learning rate, check the data of this step, or set training.nan_policy: skip "
                            "in the recipe to drop such updates")

    # -- checkpoints ---------------------------------------------------------------------------
    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """The Trainer's checkpoint, written into a staging folder and renamed when complete.

        A write that fails on storage (disk full, quota, read-only filesystem, permission, I/O)
        ends the run with a one-line :class:`CheckpointError` naming the file, the cause and
        the last complete checkpoint, which is left untouched; the partial folder is removed
        (freeing what it took) and was never marked complete, so ``--resume`` cannot pick it.
        """
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        run_dir = self._get_output_dir(trial=trial)
        step = self.state.global_step
        guard = dict(doing=f"writing checkpoint-{step}", kept=kept_checkpoint(run_dir))
        with storage_errors(run_dir, **guard):  # the staging folder itself, the marker, the rename
            with staged_checkpoint(run_dir, step, is_main=self.args.should_save) as staging:
                with storage_errors(staging, **guard):  # inside: the partly written file still exists
                    self._write_checkpoint(staging)
        if self.args.should_save:
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)

    def _write_checkpoint(self, staging: Path) -> None:
        self._saving_checkpoint = True
        try:
            self.save_model(str(staging), _internal_call=True)
        finally:
            self._saving_checkpoint = False
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(str(staging))
            self._save_scaler(str(staging))
            self._save_rng_state(str(staging))
        if self.args.should_save:
            from transformers.trainer_callback import ExportableState

            for cb in [c for c in self.callback_handler.callbacks + [self.control] if isinstance(c, ExportableState)]:
                name = cb.__class__.__name__
                if isinstance(self.state.stateful_callbacks.get(name), list):
                    self.state.stateful_callbacks[name].append(cb.state())
                else:
                    self.state.stateful_callbacks[name] = cb.state()
            self.state.save_to_json(os.path.join(staging, "trainer_state.json"))

    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        task_model = self.accelerator.unwrap_model(self.model)
        save_task_model(task_model, output_dir, checkpoint=self._saving_checkpoint, state_dict=state_dict,
                        info=self.run_info)
        (Path(output_dir) / "training_args.json").write_text(self.args.to_json_string() + "\n")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        task_model = self.accelerator.unwrap_model(model if model is not None else self.model)
        load_task_model_weights(task_model, resume_from_checkpoint)

    @property
    def zero3(self) -> bool:
        """Whether DeepSpeed ZeRO-3 shards the parameters (weights must be gathered to use them)."""
        if not self.is_deepspeed_enabled:
            return False
        from transformers.integrations import is_deepspeed_zero3_enabled

        return bool(is_deepspeed_zero3_enabled())

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, eval_dataset: Any | None = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        """The head's metrics on ``eval_dataset`` (default: the trainer's), logged and returned.

        ``generate``: greedy answers vs reference answers (:func:`~longllava_plugins.heads.answer_metrics`)
        plus the teacher-forced loss; ``classify`` / ``multilabel``: the head's metrics of its
        predictions plus the loss.
        """
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise TrainingError("evaluate() needs an eval_dataset")
        start = time.time()
        task_model = self.accelerator.unwrap_model(self.model)
        was_training = task_model.training
        task_model.eval()
        try:
            if task_model.generates:
                raw = self._evaluate_generate(task_model, dataset)
            else:
                raw = self._evaluate_head(task_model, dataset)
        finally:
            task_model.train(was_training)
        raw["runtime"] = time.time() - start
        raw["samples"] = float(len(dataset))
        metrics = {f"{metric_key_prefix}_{k}": float(v) for k, v in raw.items()}
        self.last_chance = {f"{metric_key_prefix}_{k}": v for k, v in self._chance.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _shard(self, n: int) -> tuple[list[int], int]:
        """This process's indices of ``n`` items (padded so every rank runs the same batches)."""
        world, rank = self.args.world_size, self.args.process_index
        per_rank = math.ceil(n / world) if n else 0
        indices = [(rank + world * i) % max(n, 1) for i in range(per_rank)]
        return indices, per_rank

    def _gather(self, items: list[Any]) -> list[Any]:
        if self.args.world_size <= 1 or not torch.distributed.is_initialized():
            return items
        out: list[Any] = [None] * self.args.world_size
        torch.distributed.all_gather_object(out, items)
        return [x for part in out for x in part]

    def _batches(self, dataset: Any, indices: list[int], collate: Callable[[list[Any]], Any]) -> Iterable[tuple[list[int], Any]]:
        size = max(1, self.args.per_device_eval_batch_size)
        for first in range(0, len(indices), size):
            chunk = indices[first:first + size]
            yield chunk, collate([dataset[i] for i in chunk])

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self._prepare_inputs(batch)

    @torch.no_grad()
    def _evaluate_head(self, task_model: TaskModel, dataset: Any) -> dict[str, float]:
        indices, _ = self._shard(len(dataset))
        rows: list[tuple[int, list[Any], list[Any], float]] = []
        for chunk, batch in self._batches(dataset, indices, self.data_collator):
            batch = self._to_device(batch)
            out = task_model(**batch)
            predictions = task_model.head.predict(out["logits"]).cpu()
            targets = batch["head_labels"].cpu()
            loss = float(out["loss"]) if out.get("loss") is not None else float("nan")
            for j, index in enumerate(chunk):
                rows.append((index, predictions[j].tolist(), targets[j].tolist(), loss))
        unique = _dedupe(self._gather(rows))
        predictions = torch.tensor([r[1] for r in unique])
        targets = torch.tensor([r[2] for r in unique])
        head = task_model.head
        metrics = dict(head.metrics(predictions, targets))
        metrics["loss"] = sum(r[3] for r in unique) / max(len(unique), 1)
        self._chance = chance_baselines(lambda p, t: head.metrics(torch.tensor(p), torch.tensor(t)),
                                        [r[2] for r in unique])
        return metrics

    @torch.no_grad()
    def _evaluate_generate(self, task_model: TaskModel, dataset: Any) -> dict[str, float]:
        if self.processor is None:
            raise TrainingError("evaluating a generate head needs the processor (LongLLaVATrainer(processor=...))")
        lm = task_model.longllava
        tokenizer = self.processor.tokenizer
        eos = tokenizer.eos_token_id
        indices, _ = self._shard(len(dataset))
        rows: list[tuple[int, str, str, float]] = []
        synced = False
        if self.args.world_size > 1:
            synced = self.zero3
        size = max(1, self.args.per_device_eval_batch_size)
        for first in range(0, len(indices), size):
            chunk = indices[first:first + size]
            samples = [dataset[i] for i in chunk]
            batch = self._to_device(self.data_collator(samples))
            losses = task_model(**batch)["loss"]
            prompts, references = [], []
            for sample in samples:
                prompt, reference = split_for_generation(sample, self.processor)
                prompts.append(prompt)
                references.append(reference)
            inputs = self._to_device(dict(self.processor.collate_for_generation(prompts)))
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(lm.vision_tower.dtype)
            longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references)
            generated = lm.generate(**inputs, max_new_tokens=min(self.max_new_tokens, longest + 8), do_sample=False,
                                    eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, synced_gpus=synced)
            prompt_len = inputs["input_ids"].shape[1]
            for j, index in enumerate(chunk):
                prediction = decode_generated(generated[j, prompt_len:].tolist(), self.processor)
                rows.append((index, prediction, references[j], float(losses)))
        unique = _dedupe(self._gather(rows))
        head = task_model.head
        metrics = dict(head.metrics([r[1] for r in unique], [r[2] for r in unique]))
        metrics["loss"] = sum(r[3] for r in unique) / max(len(unique), 1)
        self._chance = chance_baselines(lambda p, t: dict(head.metrics(p, t)), [r[2] for r in unique])
        self.last_predictions = [{"index": r[0], "prediction": r[1], "reference": r[2]} for r in unique]
        return metrics


def _dedupe(rows: list[tuple]) -> list[tuple]:
    seen: dict[int, tuple] = {}
    for row in rows:
        seen.setdefault(row[0], row)
    return [seen[k] for k in sorted(seen)]


# ---------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------

def build_training_arguments(output_dir: str | os.PathLike[str], training: TrainingSettings, *, learning_rate: float,
                             epochs: float, max_steps: int | None = None, save_steps: int | None = None,
                             logging_steps: int | None = None, report_to: str | list[str] | None = None,
                             extra: dict[str, Any] | None = None, steps_per_epoch: int | None = None
                             ) -> TrainingArguments:
    """``TrainingArguments`` from a recipe's ``TrainingSettings`` (cosine, warmup ratio 0.03 by default).

    ``extra`` (recipe ``training_args``, DeepSpeed / gloo settings from
    :mod:`.distributed`) is applied last and may set any ``TrainingArguments`` field.
    """
    total = max_steps if max_steps else (math.ceil(epochs * steps_per_epoch) if steps_per_epoch else None)
    if save_steps is None:
        save_steps = max(1, total // 4) if total else 500
    if logging_steps is None:
        logging_steps = max(1, total // 20) if total else 10
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        num_train_epochs=float(epochs),
        max_steps=int(max_steps) if max_steps else -1,
        learning_rate=float(learning_rate),
        per_device_train_batch_size=int(training.batch_size),
        per_device_eval_batch_size=int(training.batch_size),
        gradient_accumulation_steps=int(training.gradient_accumulation_steps),
        warmup_steps=float(training.warmup_ratio),  # < 1: a ratio of the total steps
        lr_scheduler_type=str(training.lr_scheduler),
        weight_decay=float(training.weight_decay),
        max_grad_norm=float(training.max_grad_norm),
        seed=int(training.seed),
        data_seed=int(training.seed),
        logging_steps=int(logging_steps),
        logging_first_step=True,
        save_strategy="steps",
        save_steps=int(save_steps),
        save_total_limit=2,
        eval_strategy="no",
        report_to=report_to if report_to is not None else "none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    kwargs.update(extra or {})
    return TrainingArguments(**kwargs)
