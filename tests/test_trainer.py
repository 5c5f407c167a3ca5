"""Stages, the TaskModel / LongLLaVATrainer, schedule, router loss, hooks, evaluation."""

from __future__ import annotations

import math

import pytest
import torch

from longllava_sdk.errors import ConfigError, TrainingError
from trainer_fixtures import builtin_plugins, one_torch_thread  # noqa: F401  (autouse fixtures)
from trainer_fixtures import make_micro_model, write_colour_dataset, write_micro_model


def _trainable_components(model):
    from longllava_sdk.training.stages import component_of

    return {component_of(n) for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("stage, expected", [
    ("align", {"projector"}),
    ("sft-single", {"projector", "llm"}),
    ("sft-multi", {"projector", "llm"}),
    ("text-sft", {"llm"}),
    ("domain", {"projector", "llm"}),
])
def test_stage_freezing_by_component(stage, expected):
    from longllava_sdk.training.stages import apply_stage_freezing, get_stage

    model, _ = make_micro_model()
    apply_stage_freezing(model, get_stage(stage))
    assert _trainable_components(model) == expected
    assert not any(p.requires_grad for p in model.vision_tower.parameters())


def test_freeze_switches_and_unreachable_parameters():
    from longllava_sdk.training.stages import apply_stage_freezing, get_stage

    model, _ = make_micro_model()
    stage = get_stage("domain").with_freeze({"vision": False, "projector": True})
    counts = apply_stage_freezing(model, stage, problem_type="single_label")
    assert counts["vision"] > 0 and counts["projector"] == 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # CLIP layer 1 (after vision_feature_layer=-2) and post_layernorm never reach the output
    assert not any(n.startswith("vision_tower.encoder.layers.1.") for n in trainable)
    assert not any("post_layernorm" in n for n in trainable)
    assert any(n.startswith("vision_tower.encoder.layers.0.") for n in trainable)
    assert "language_model.lm_head.weight" not in trainable  # a classify head replaces it
    with pytest.raises(ConfigError):
        get_stage("pretrain")
    with pytest.raises(ConfigError):
        get_stage("align").with_freeze({"decoder": True})


@pytest.mark.compat
def test_cosine_schedule_with_three_percent_warmup(tmp_path):
    from longllava_sdk.recipes import TrainingSettings
    from longllava_sdk.modeling.task_model import TaskModel
    from longllava_sdk.training.trainer import LongLLaVATrainer, build_training_arguments
    from longllava_sdk.registry import available_heads

    args = build_training_arguments(tmp_path, TrainingSettings(), learning_rate=1e-3, epochs=1)
    assert args.lr_scheduler_type == "cosine" and args.warmup_steps == pytest.approx(0.03)
    model, _ = make_micro_model()
    task = TaskModel(model, available_heads()["generate"](64))
    trainer = LongLLaVATrainer(task, args)
    trainer.create_optimizer_and_scheduler(num_training_steps=100)
    lrs = []
    for _ in range(101):
        lrs.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert lrs[0] == 0.0 and lrs[3] == pytest.approx(1e-3)  # 3 warm-up steps of 100
    assert lrs[3 + 97 // 2] == pytest.approx(5e-4, rel=0.05)  # half-way through the cosine
    assert lrs[100] == pytest.approx(0.0, abs=1e-9)


def _micro_batch(processor):
    from trainer_fixtures import square_image

    sample = processor.encode_conversation([
        {"role": "user", "content": "Which colour?", "media": [square_image("red")]},
        {"role": "assistant", "content": "red"}])
    ids = torch.tensor([sample.input_ids] * 2)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([sample.labels] * 2),
            "pixel_values": processor.preprocess_images(sample.images * 2)}


def test_router_aux_loss_is_added_for_moe_and_skipped_for_one_expert():
    from longllava_sdk.registry import available_heads
    from longllava_sdk.modeling.task_model import TaskModel

    model, processor = make_micro_model()
    batch = _micro_batch(processor)
    plain = TaskModel(model, available_heads()["generate"](64))(**batch)
    with_aux = TaskModel(model, available_heads()["generate"](64), output_router_logits=True,
                         router_aux_loss_coef=0.5)(**batch)
    assert "aux_loss" in with_aux and with_aux["aux_loss"] > 0
    assert torch.allclose(with_aux["loss"], plain["loss"] + 0.5 * with_aux["aux_loss"])
    # classification heads add it too
    head = available_heads()["classify"](64, ["a", "b"])
    out = TaskModel(model, head, output_router_logits=True, router_aux_loss_coef=0.5)(
        **batch, head_labels=torch.tensor([0, 1]))
    assert torch.allclose(out["loss"], head.loss(out["logits"], torch.tensor([0, 1])) + 0.5 * out["aux_loss"])

    dense, processor = _dense_model()  # LongLLaVA-9B-like: 1 expert per layer
    out = TaskModel(dense, available_heads()["generate"](64), output_router_logits=True,
                    router_aux_loss_coef=0.5)(**_micro_batch(processor))
    assert torch.isfinite(out["loss"]) and "aux_loss" not in out


def _dense_model():
    from longllava_sdk import LongLLaVAForConditionalGeneration, LongLLaVAProcessor
    from trainer_fixtures import micro_config

    config = micro_config()
    config.text_config.num_experts = 1
    config.text_config.num_experts_per_tok = 1
    torch.manual_seed(0)
    return LongLLaVAForConditionalGeneration(config), LongLLaVAProcessor.for_config(config)


def test_classification_heads_never_see_the_answer():
    from longllava_sdk.processing.processor import IGNORE_INDEX
    from longllava_sdk.training.data import TrainingSample
    from longllava_sdk.training.trainer import answer_span, prompt_only

    sample = TrainingSample(input_ids=[5, 6, 7, 8, 9, 2], labels=[-100, -100, -100, 8, 9, 2], head_labels=1)
    assert answer_span(sample.labels) == (3, 6)
    cut = prompt_only(sample)
    assert cut.input_ids == [5, 6, 7] and cut.labels == [IGNORE_INDEX] * 3 and cut.head_labels == 1
    assert sample.input_ids == [5, 6, 7, 8, 9, 2]  # the original is untouched


@pytest.mark.compat
def test_finetune_run_with_hook_callbacks_and_head_metrics(tmp_path):
    from transformers import TrainerCallback

    from longllava_sdk.hookspecs import hookimpl
    from longllava_sdk.plugin_manager import get_plugin_manager
    from longllava_sdk.training.finetuning import finetune

    steps: list[int] = []

    class Recorder(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    class Plugin:
        @hookimpl
        def longllava_trainer_callbacks(self, training_args, recipe):
            assert recipe.name == "colours" and training_args.output_dir
            return [Recorder()]

    recipe = write_colour_dataset(tmp_path / "data", n=8, head="multilabel", training={"batch_size": 2})
    base = write_micro_model(tmp_path / "base")
    manager = get_plugin_manager()
    manager.register(Plugin(), name="test-recorder")
    try:
        result = finetune(str(recipe), model=str(base), output=str(tmp_path / "run"), max_steps=3,
                          router_aux_loss_coef=0.01)
    finally:
        manager.unregister(name="test-recorder")
    assert steps == [1, 2, 3]
    assert result.evaluated_on == "eval" and result.head == "multilabel"
    for key in ("eval_accuracy", "eval_macro_f1", "eval_macro_precision", "eval_macro_recall", "eval_loss",
                "eval_f1/red", "eval_precision/square"):
        assert key in result.metrics
    assert (result.output_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (result.model_dir / "head.safetensors").is_file()
    assert (result.output_dir / "eval_metrics.json").is_file()


def test_trainer_stops_on_a_parameter_without_gradient(tmp_path):
    """A LoRA on dt_proj (bypassed by the Mamba mixer) must stop training at the first step."""
    from peft import LoraConfig, get_peft_model

    from longllava_sdk.registry import available_heads
    from longllava_sdk.recipes import Recipe
    from longllava_sdk.training.collator import TrainingCollator
    from longllava_sdk.training.data import prepare_datasets
    from longllava_sdk.modeling.task_model import TaskModel
    from longllava_sdk.training.trainer import LongLLaVATrainer, build_training_arguments

    recipe = Recipe.from_yaml(write_colour_dataset(tmp_path / "data", n=4, head="generate"))
    model, processor = make_micro_model()
    prepared = prepare_datasets(processor, recipe)
    wrapped = get_peft_model(model, LoraConfig(r=4, target_modules=r"language_model\..*\.(dt_proj|in_proj)"))
    args = build_training_arguments(tmp_path / "run", recipe.training, learning_rate=1e-3, epochs=1, max_steps=2)
    trainer = LongLLaVATrainer(TaskModel(wrapped, available_heads()["generate"](64)), args, processor=processor,
                               train_dataset=prepared.train, data_collator=TrainingCollator(processor))
    with pytest.raises(TrainingError, match=r"dt_proj\.lora_[AB]"):
        trainer.train()


@pytest.mark.compat
def test_generate_evaluation_reports_vqa_metrics(tmp_path):
    from longllava_sdk.registry import available_heads
    from longllava_sdk.recipes import Recipe
    from longllava_sdk.training.collator import TrainingCollator
    from longllava_sdk.training.data import prepare_datasets
    from longllava_sdk.modeling.task_model import TaskModel
    from longllava_sdk.training.trainer import LongLLaVATrainer, build_training_arguments

    recipe = Recipe.from_yaml(write_colour_dataset(tmp_path / "data", n=4, head="generate", eval_fraction=0.5))
    model, processor = make_micro_model()
    prepared = prepare_datasets(processor, recipe)
    args = build_training_arguments(tmp_path / "run", recipe.training, learning_rate=1e-3, epochs=1)
    trainer = LongLLaVATrainer(TaskModel(model, available_heads()["generate"](64)), args, processor=processor,
                               data_collator=TrainingCollator(processor), max_new_tokens=4)
    metrics = trainer.evaluate(prepared.eval)
    assert {"eval_accuracy", "eval_token_f1", "eval_bleu1", "eval_loss", "eval_n_open"} <= set(metrics)
    assert metrics["eval_samples"] == len(prepared.eval)
    assert math.isfinite(metrics["eval_loss"])
    assert len(trainer.last_predictions) == len(prepared.eval)
    assert {p["reference"] for p in trainer.last_predictions} <= {"red", "green", "blue"}
