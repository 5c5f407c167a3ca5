"""The trainer: HF ``Trainer`` underneath, task heads, LoRA / full fine-tuning, atomic checkpoints.

Pieces, from the inside out:

* :class:`TaskModel` -- what the ``Trainer`` trains: the LongLLaVA backbone (plain, or a
  peft model around it) and a task head. ``generate`` heads take the LM loss; ``classify``
  and ``multilabel`` heads read the final hidden states ``(B, L, H)`` (only the prompt:
  the answer text is cut off, else the label would be in the input) and take the head's
  loss. The MoE router load-balancing loss is added when ``output_router_logits`` is on
  (``router_aux_loss_coef`` times it); it is skipped silently for single-expert models
  like LongLLaVA-9B, where transformers would raise.
* :class:`LongLLaVATrainer` -- ``transformers.Trainer`` with: checkpoints written atomically
  with a completeness marker (:mod:`.checkpointing`); resume from them bit-exactly
  (weights, optimizer, scheduler, RNG and data order through the Trainer's own
  machinery); SIGTERM -> checkpoint at the next step boundary -> exit 143; the
  first-step gradient check (:func:`.lora.check_gradients`); ``evaluate()`` producing the
  head's metrics (generated answers for ``generate``).
* :func:`run_finetune` -- a whole run from a recipe: output folder policy, model, data,
  stage freezing, LoRA, training, evaluation, export (adapter + merged model, or the full
  model, with head and processor files), as used by ``longllava-sdk finetune``.

Progress bars, logging and ``report_to`` are the Trainer's (``TrainingArguments``); the
schedule is cosine with ``warmup_steps=0.03`` (a ratio) unless the recipe says otherwise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import rotate_checkpoints

from ..errors import CheckpointError, ConfigError, TrainingError
from ..processing.processor import IGNORE_INDEX, EncodedSample
from .checkpointing import (
    SIGTERM_EXIT_CODE,
    GracefulStop,
    SigtermCallback,
    load_head,
    save_head,
    staged_checkpoint,
)
from .lora import check_gradients, raise_for_gradients, unwrap_longllava

logger = logging.getLogger(__name__)

__all__ = [
    "TaskModel",
    "LongLLaVATrainer",
    "GradientCheckCallback",
    "PromptOnlyCollator",
    "FinetuneResult",
    "run_finetune",
    "build_training_arguments",
    "answer_span",
    "save_task_model",
    "load_task_model_weights",
]

TRAINING_INFO_NAME = "longllava_training.json"
STATE_WEIGHTS_NAME = "longllava_state.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"


# ---------------------------------------------------------------------------------------------
# the trained module
# ---------------------------------------------------------------------------------------------

class TaskModel(nn.Module):
    """LongLLaVA backbone + task head, with one ``forward`` for the Trainer.

    Args:
        backbone: a :class:`~longllava_sdk.LongLLaVAForConditionalGeneration`, or a peft
            model around one.
        head: a :class:`~longllava_sdk.heads.TaskHead` (``generate`` heads have no weights).
        output_router_logits: add the MoE load-balancing loss (no-op for single-expert models).
        router_aux_loss_coef: its weight (``None``: the model config's).

    ``forward`` batch keys (from :mod:`~longllava_sdk.training.collator`): ``input_ids``
    ``(B, L)``, ``attention_mask`` ``(B, L)`` (or the packed-mask mapping), ``labels``
    ``(B, L)``, ``pixel_values`` ``(N, 3, S, S)``, ``head_labels`` ``(B,)`` / ``(B, C)``,
    ``position_ids`` ``(B, L)``, ``reset_mask`` ``(B, L)`` (Mamba state resets of packed
    samples). Returns ``{"loss", "logits"?, "aux_loss"?}``; ``logits`` are the head's
    ``(B, num_labels)`` (not returned for ``generate``: ``(B, L, V)`` is too large to keep).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, *, output_router_logits: bool = False,
                 router_aux_loss_coef: float | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        lm = unwrap_longllava(backbone)
        object.__setattr__(self, "_longllava", lm)  # not a submodule: no duplicate parameters
        self.output_router_logits = bool(output_router_logits)
        if router_aux_loss_coef is not None:
            lm.language_model.router_aux_loss_coef = float(router_aux_loss_coef)
        self.router_aux_loss_coef = float(lm.language_model.router_aux_loss_coef)
        self.head_type = getattr(head, "problem_type", "generate")
        # generate: the Trainer passes num_items_in_batch so token losses average over the whole
        # accumulated batch; classification losses are per-sample means.
        self.accepts_loss_kwargs = self.head_type == "generate"

    @property
    def longllava(self) -> nn.Module:
        """The unwrapped LongLLaVA model."""
        return self._longllava

    @property
    def config(self) -> Any:
        """The LongLLaVA config (DeepSpeed's "auto" buckets read ``text_config.hidden_size``)."""
        return self._longllava.config

    @property
    def uses_router_loss(self) -> bool:
        return self.output_router_logits and self._longllava.config.text_config.num_experts > 1

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | dict[str, Any] | None = None,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        head_labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        reset_mask: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> dict[str, torch.Tensor]:
        from ..modeling.mamba_kernels import mamba_sequence_boundaries

        if self.uses_router_loss and isinstance(attention_mask, dict):
            raise ConfigError("the MoE router loss needs a (B, L) attention mask; it cannot be combined with packing "
                              "(set output_router_logits off or packing: false)")
        resets = mamba_sequence_boundaries(reset_mask) if reset_mask is not None else contextlib.nullcontext()
        common = dict(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                      position_ids=position_ids, use_cache=False, output_router_logits=self.uses_router_loss)
        with resets:
            if self.head_type == "generate":
                extra = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
                out = self.backbone(**common, labels=labels, **extra)
                result = {"loss": out.loss}
                if out.aux_loss is not None:
                    result["aux_loss"] = out.aux_loss
                return result
            hidden, out = self._final_hidden_states(common)
        if isinstance(attention_mask, dict) or attention_mask is None:
            if isinstance(attention_mask, dict):
                raise ConfigError(f"a {self.head.name} head pools one sample per row; packing is not supported")
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        logits = self.head(hidden, attention_mask)
        result = {"logits": logits}
        if head_labels is not None:
            loss = self.head.loss(logits, head_labels)
            if out.aux_loss is not None:
                result["aux_loss"] = out.aux_loss
                loss = loss + self.router_aux_loss_coef * out.aux_loss.to(loss.device)
            result["loss"] = loss
        return result

    def _final_hidden_states(self, common: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        """Run the backbone (through its own forward, so wrappers' hooks apply) and capture the
        decoder's ``last_hidden_state`` ``(B, L, H)``; token logits only for the last position."""
        captured: dict[str, torch.Tensor] = {}

        def grab(module: nn.Module, args: Any, output: Any) -> None:
            captured["hidden"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

        handle = self._longllava.language_model.model.register_forward_hook(grab)
        try:
            out = self.backbone(**common, logits_to_keep=1)
        finally:
            handle.remove()
        return captured["hidden"], out


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
        max_new_tokens: cap for generated answers in ``evaluate``.
        run_info: extra facts written to ``longllava_training.json`` in checkpoints / exports.
        **kwargs: passed to ``transformers.Trainer`` (``train_dataset``, ``data_collator``,
            ``callbacks``...).
    """

    def __init__(self, model: TaskModel, args: TrainingArguments, *, processor: Any | None = None,
                 check_gradients: bool = True, exit_on_sigterm: bool = True, max_new_tokens: int = 64,
                 run_info: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.graceful_stop = GracefulStop()
        callbacks = list(kwargs.pop("callbacks", None) or [])
        callbacks.append(SigtermCallback(self.graceful_stop))
        if check_gradients:
            callbacks.append(GradientCheckCallback(self))
        kwargs.setdefault("processing_class", None)
        super().__init__(model=model, args=args, callbacks=callbacks, **kwargs)
        self.processor = processor
        self.exit_on_sigterm = exit_on_sigterm
        self.max_new_tokens = max_new_tokens
        self.run_info = dict(run_info or {})
        self.stopped_by_signal = False
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

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> Any:
        if inputs.get("pixel_values") is not None:
            self._images_since_step = True
        task_model = self.accelerator.unwrap_model(self.model)
        if task_model.head_type != "generate" and inputs.get("head_labels") is None:
            raise TrainingError(f"the {task_model.head.name} head needs head_labels in every batch (rows with labels)")
        if task_model.head_type == "generate" and inputs.get("labels") is None:
            raise TrainingError("the generate head needs labels (answer tokens) in every batch")
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    # -- checkpoints ---------------------------------------------------------------------------
    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """The Trainer's checkpoint, written into a staging folder and renamed when complete."""
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        run_dir = self._get_output_dir(trial=trial)
        step = self.state.global_step
        with staged_checkpoint(run_dir, step, is_main=self.args.should_save) as staging:
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
        if self.args.should_save:
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)

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
            if task_model.head_type == "generate":
                raw = self._evaluate_generate(task_model, dataset)
            else:
                raw = self._evaluate_head(task_model, dataset)
        finally:
            task_model.train(was_training)
        raw["runtime"] = time.time() - start
        raw["samples"] = float(len(dataset))
        metrics = {f"{metric_key_prefix}_{k}": float(v) for k, v in raw.items()}
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
        metrics = dict(task_model.head.metrics(predictions, targets))
        metrics["loss"] = sum(r[3] for r in unique) / max(len(unique), 1)
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
        if self.is_deepspeed_enabled and self.args.world_size > 1:
            from transformers.integrations import is_deepspeed_zero3_enabled

            synced = is_deepspeed_zero3_enabled()
        size = max(1, self.args.per_device_eval_batch_size)
        for first in range(0, len(indices), size):
            chunk = indices[first:first + size]
            samples = [dataset[i] for i in chunk]
            batch = self._to_device(self.data_collator(samples))
            losses = task_model(**batch)["loss"]
            prompts, references = [], []
            for sample in samples:
                start, end = answer_span(sample.labels)
                answer = [t for t in sample.input_ids[start:end] if t != eos]
                references.append(self.processor.decode(answer).strip())
                prompts.append(EncodedSample(list(sample.input_ids[:start]), [IGNORE_INDEX] * start,
                                             list(sample.images)))
            inputs = self._to_device(dict(self.processor.collate_for_generation(prompts)))
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(lm.vision_tower.dtype)
            longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references)
            generated = lm.generate(**inputs, max_new_tokens=min(self.max_new_tokens, longest + 8), do_sample=False,
                                    eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, synced_gpus=synced)
            prompt_len = inputs["input_ids"].shape[1]
            for j, index in enumerate(chunk):
                tokens = generated[j, prompt_len:].tolist()
                if eos in tokens:
                    tokens = tokens[:tokens.index(eos)]
                rows.append((index, self.processor.decode(tokens).strip(), references[j], float(losses)))
        unique = _dedupe(self._gather(rows))
        metrics = dict(task_model.head.metrics([r[1] for r in unique], [r[2] for r in unique]))
        metrics["loss"] = sum(r[3] for r in unique) / max(len(unique), 1)
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

def build_training_arguments(output_dir: str | os.PathLike[str], training: Any, *, learning_rate: float,
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


# ---------------------------------------------------------------------------------------------
# a whole run
# ---------------------------------------------------------------------------------------------

@dataclass
class FinetuneResult:
    """What :func:`run_finetune` produced.

    Attributes:
        output_dir: the run folder.
        model_dir: the standalone model ``Pipeline.from_pretrained`` loads (merged LoRA or
            full model), ``None`` when not exported (e.g. DeepSpeed ZeRO-3 LoRA: run ``merge``).
        adapter_dir: the peft adapter (LoRA runs).
        metrics: the head's evaluation metrics (``eval_*``).
        evaluated_on: ``eval`` (held-out rows) or ``train`` (no held-out rows).
        head: head name; stage, finetune: what ran.
        resumed_from: the checkpoint the run resumed from.
        train_seconds: wall time of ``trainer.train``.
        example: ``{"prompt", "kwarg", "source", "adapter_options", "max_images"}`` of one
            evaluation sample, for the usage snippet.
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


def _default_recipe(head: str | None, stage: str) -> Any:
    from ..recipes import HeadSettings, Recipe

    return Recipe(name="custom", stage=stage, head=HeadSettings(type=head or "generate"))


def load_base_model(model_dir: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """Model + processor from a local directory (safetensors only), as ``Pipeline`` loads them."""
    from ..checkpoint import check_weights_safe
    from ..config import LongLLaVAConfig
    from ..modeling.modeling_longllava import LongLLaVAForConditionalGeneration
    from ..processing import LongLLaVAProcessor

    path = Path(model_dir)
    check_weights_safe(path)
    config = LongLLaVAConfig.from_pretrained(path, local_files_only=True)
    model = LongLLaVAForConditionalGeneration.from_pretrained(path, config=config, dtype=dtype,
                                                              use_safetensors=True, local_files_only=True)
    processor = LongLLaVAProcessor.from_pretrained(path, config=config)
    return model, processor


def run_finetune(
    recipe: Any | None = None,
    *,
    model_dir: str | os.PathLike[str] | None = None,
    data: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    stage: str | None = None,
    head: str | None = None,
    full: bool = False,
    deepspeed: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    epochs: float | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    max_steps: int | None = None,
    save_steps: int | None = None,
    logging_steps: int | None = None,
    report_to: str | list[str] | None = None,
    output_router_logits: bool = False,
    router_aux_loss_coef: float | None = None,
    merge: bool = True,
    preset: str = "tiny",
    exit_on_sigterm: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
    training_args: dict[str, Any] | None = None,
) -> FinetuneResult:
    """Fine-tune LongLLaVA from a recipe; see ``longllava-sdk finetune --help`` for the arguments.

    Order matters for distributed runs: the DeepSpeed / gloo setup happens before
    ``TrainingArguments``, the model is built after it, and only the main process creates
    or deletes files in the output folder.
    """
    from ..plugin_manager import get_plugin_manager
    from ..recipes import load_recipe
    from .checkpointing import latest_complete_checkpoint, prepare_output_dir
    from .collator import PackedCollator, TrainingCollator
    from .data import prepare_datasets
    from .distributed import prepare_distributed, prepare_model_for_distributed
    from .lora import LoraOptions, apply_lora
    from .stages import apply_stage_freezing, get_stage

    # -- what to run ---------------------------------------------------------------------------
    if recipe is None:
        if data is None:
            raise ConfigError("nothing to train on: pass --domain NAME (a registered domain or a recipe .yaml) "
                              "or --data FILE")
        recipe = _default_recipe(head, stage or "domain")
    else:
        recipe = load_recipe(recipe)
    stage_obj = get_stage(stage or recipe.stage).with_freeze(recipe.freeze)
    head_type = head or recipe.head.type
    full = bool(full) or recipe.finetune == "full"
    use_lora = stage_obj.uses_lora(full)
    labels = list(recipe.head.labels)
    heads = _available_heads()
    if head_type not in heads:
        raise ConfigError(f"unknown head {head_type!r}; installed heads: {', '.join(sorted(heads)) or 'none'}")
    head_cls = heads[head_type]
    if head_cls.problem_type != "generate":
        if not labels and data is not None:
            labels = _labels_in(data, recipe)
        if not labels:
            raise ConfigError(f"the {head_type} head needs labels: the recipe {recipe.name!r} has none "
                              "(and the data rows name none)")
        if not stage_obj.head:
            raise ConfigError(f"stage {stage_obj.name} freezes the task head, so a {head_type} head would never train; "
                              "use --stage domain or unfreeze the head in the recipe")
        if recipe.training.packing:
            raise ConfigError(f"a {head_type} head classifies one sample per row: set training.packing: false")
    training = recipe.training
    if batch_size is not None:
        recipe = recipe.with_overrides(batch_size=int(batch_size))
        training = recipe.training
    epochs = float(epochs if epochs is not None else training.epochs)
    learning_rate = float(next(v for v in (lr, training.learning_rate, stage_obj.learning_rate) if v is not None))
    mode = "lora" if use_lora else "full"
    output_dir = Path(output) if output is not None else Path("runs") / f"{recipe.name}-{stage_obj.name}-{mode}"

    # -- processes, output folder ---------------------------------------------------------------
    rank = int(os.environ.get("RANK", "0"))
    is_main = rank == 0
    run_info = {"recipe": recipe.name, "stage": stage_obj.name, "finetune": mode, "head": head_type,
                "base_model": str(model_dir) if model_dir else f"new {preset} model (seed {training.seed})"}
    resume_from = None
    if is_main:
        resume_from = prepare_output_dir(output_dir, resume=resume, overwrite=overwrite, run_info=run_info)
    setup = prepare_distributed(deepspeed, run_dir=output_dir)

    # -- model + processor ----------------------------------------------------------------------
    bf16 = bool(setup.training_arguments_kwargs().get("bf16"))
    dtype = torch.bfloat16 if bf16 else torch.float32
    base_dir = Path(model_dir) if model_dir is not None else output_dir / "base-model"
    extra_args = {**setup.training_arguments_kwargs(), **(recipe.training_args or {}), **(training_args or {})}
    # TrainingArguments first (it sets up the process group), then the model (ZeRO-3 init).
    args_probe = build_training_arguments(output_dir, training, learning_rate=learning_rate, epochs=epochs,
                                          max_steps=max_steps, save_steps=save_steps, logging_steps=logging_steps,
                                          report_to=report_to, extra=extra_args)
    with args_probe.main_process_first(desc="base model"):
        if model_dir is None and not (base_dir / "config.json").is_file():
            if not is_main:
                raise TrainingError(f"{base_dir}: the base model was not written by the main process")
            from ..cli.cmd_model import create_model, save_model

            model, processor = create_model(preset, seed=training.seed)
            save_model(model, processor, base_dir, overwrite=True)
        if not is_main and resume:
            found = latest_complete_checkpoint(output_dir)
            resume_from = found
    model, processor = load_base_model(base_dir, dtype=dtype)
    get_plugin_manager().hook.longllava_model_loaded(model=model, config=model.config)

    # -- data -------------------------------------------------------------------------------------
    prepared = prepare_datasets(processor, recipe, data_path=data, head_type=head_type, label_names=labels,
                                max_length=min(training.max_length, model.config.max_context))
    train_dataset, eval_dataset = prepared.train, prepared.eval
    if training.packing:
        from .packing import PackedDataset

        train_dataset = PackedDataset(prepared.train, max_length=training.max_length, seed=training.seed,
                                      strategy=training.packing_strategy)
        collator: Callable[..., Any] = PackedCollator(processor, reset_mamba_state=training.reset_mamba_state,
                                                      mask_dtype=dtype)
        eval_collator: Callable[..., Any] = TrainingCollator(processor)
    else:
        collator = eval_collator = TrainingCollator(processor)
    if head_cls.problem_type != "generate":
        collator = eval_collator = PromptOnlyCollator(TrainingCollator(processor))

    # -- head, freezing, LoRA -----------------------------------------------------------------------
    from transformers import set_seed

    set_seed(training.seed)  # head and adapters initialise identically on every rank and on resume
    hidden = model.config.text_config.hidden_size
    task_head = head_cls(hidden, labels) if head_cls.problem_type != "generate" else head_cls(hidden)
    task_head.to(dtype)
    if use_lora:
        backbone, _ = apply_lora(model, LoraOptions.from_settings(recipe.lora), train_projector=stage_obj.projector,
                                      train_vision=stage_obj.vision, head_type=head_type)
        for param in task_head.parameters():
            param.requires_grad_(stage_obj.head)
    else:
        apply_stage_freezing(model, stage_obj, head_type, task_head)
        backbone = model
    prepare_model_for_distributed(backbone, setup)
    task_model = TaskModel(backbone, task_head, output_router_logits=output_router_logits,
                           router_aux_loss_coef=router_aux_loss_coef)

    # -- trainer --------------------------------------------------------------------------------------
    world = max(1, setup.env.world_size)
    per_step = training.batch_size * training.gradient_accumulation_steps * world
    steps_per_epoch = max(1, math.ceil(len(train_dataset) / per_step))
    args = build_training_arguments(output_dir, training, learning_rate=learning_rate, epochs=epochs,
                                    max_steps=max_steps, save_steps=save_steps, logging_steps=logging_steps,
                                    report_to=report_to, extra=extra_args, steps_per_epoch=steps_per_epoch)
    plugin_callbacks = [cb for batch in get_plugin_manager().hook.longllava_trainer_callbacks(
        training_args=args, recipe=recipe) for cb in (batch or [])]
    info = {**run_info, "base_model": str(base_dir.resolve()), "labels": labels}
    trainer = LongLLaVATrainer(task_model, args, processor=processor, train_dataset=train_dataset,
                               eval_dataset=eval_dataset, data_collator=collator, callbacks=[*callbacks, *plugin_callbacks],
                               exit_on_sigterm=exit_on_sigterm, run_info=info)
    started = time.time()
    train_output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_seconds = time.time() - started
    if trainer.stopped_by_signal:  # exit_on_sigterm=False
        return FinetuneResult(output_dir, None, None, {}, "none", head_type, stage_obj.name, mode, resume_from,
                              train_seconds, trainer.state.global_step)

    # -- evaluation --------------------------------------------------------------------------------------
    evaluated_on = "eval" if eval_dataset is not None and len(eval_dataset) else "train"
    trainer.data_collator = eval_collator
    metrics = trainer.evaluate(eval_dataset if evaluated_on == "eval" else prepared.train)
    metrics["train_loss"] = float(train_output.training_loss)

    # -- export --------------------------------------------------------------------------------------
    adapter_dir = output_dir / "adapter" if use_lora else None
    # what Pipeline loads: the merged model of a LoRA run, the model of a full run
    model_dir_out: Path | None = output_dir / ("merged" if use_lora else "model")
    export_dir = adapter_dir if use_lora else model_dir_out
    trainer.save_model(str(export_dir))  # gathers ZeRO-3 weights when needed
    merge_here = use_lora and merge and not _zero3(trainer)  # ZeRO-3: shards only; merge afterwards
    if use_lora and not merge_here:
        model_dir_out = None
    if is_main:
        processor.save_pretrained(export_dir)
        if merge_here:
            from ..checkpoint import atomic_directory
            from .lora import merge_lora

            merged = merge_lora(backbone)
            with atomic_directory(model_dir_out, overwrite=True) as staging:
                merged.save_pretrained(staging, safe_serialization=True)
                processor.save_pretrained(staging)
                save_head(task_head, staging)
                (staging / TRAINING_INFO_NAME).write_text(json.dumps({**info, "format": "merged",
                                                                      "adapter": str(adapter_dir)}, indent=2) + "\n")
        summary = {"metrics": metrics, "evaluated_on": evaluated_on, "train_seconds": train_seconds,
                   "global_step": trainer.state.global_step, **info}
        (output_dir / "eval_metrics.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    example = _usage_example(prepared, eval_dataset if evaluated_on == "eval" else prepared.train, recipe)
    return FinetuneResult(output_dir, model_dir_out, adapter_dir, metrics, evaluated_on, head_type, stage_obj.name,
                          mode, resume_from, train_seconds, trainer.state.global_step, example)


def _labels_in(data: str | os.PathLike[str], recipe: Any) -> list[str]:
    """The sorted label names used by the rows of ``data`` (for a head whose recipe lists none)."""
    from .data import read_rows

    return sorted({label for row in read_rows(data, recipe=recipe) for label in (row.labels or [])})


def _zero3(trainer: Trainer) -> bool:
    if not trainer.is_deepspeed_enabled:
        return False
    from transformers.integrations import is_deepspeed_zero3_enabled

    return bool(is_deepspeed_zero3_enabled())


def _available_heads() -> dict[str, type]:
    from ..heads import available_heads

    return available_heads()


_ADAPTER_KWARG = {"dicom": "volume", "nifti": "volume", "geotiff": "tiled", "video": "video", "images": "images"}


def _usage_example(prepared: Any, dataset: Any, recipe: Any) -> dict[str, Any]:
    """One sample's question and media, written as ``Pipeline`` arguments (for the printed snippet).

    Rows whose media are all plain images become ``images=[...]``; a row with one video /
    volume / GeoTIFF source becomes ``video=`` / ``volume=`` / ``tiled=``; other mixes are
    not expressible as keyword arguments and give a text-only example.
    """
    try:
        row = dataset.rows[0]
        loader = dataset.loader
    except (AttributeError, IndexError):
        return {}
    prompt = next((t["content"] for t in row.turns if t["role"] == "user"), "")
    if not row.sources:
        return {"prompt": prompt}
    try:
        resolved = []
        for source in row.sources:
            paths = loader.resolve_paths(source)
            resolved.append((source, paths, loader.adapter_name(source, paths[0])))
    except Exception:  # noqa: BLE001 - the snippet is a convenience; training already validated the data
        return {}
    kwargs = {_ADAPTER_KWARG.get(adapter, "images") for _, _, adapter in resolved}
    source, paths, adapter = resolved[0]
    if kwargs == {"images"}:
        kwarg, value = "images", [str(p) for _, ps, _ in resolved for p in ps]
    elif len(resolved) == 1:
        kwarg = kwargs.pop()
        value = [str(p) for p in paths] if len(paths) > 1 else str(paths[0])
    else:
        return {}
    options = recipe.adapter_options(adapter) if hasattr(recipe, "adapter_options") else {}
    options.update(source.option_dict)
    return {"prompt": prompt, "kwarg": kwarg, "source": value, "adapter": adapter, "adapter_options": options,
            "max_images": recipe.adapter_max_images(adapter) if hasattr(recipe, "adapter_max_images") else None,
            "labels": list(row.labels or [])}
