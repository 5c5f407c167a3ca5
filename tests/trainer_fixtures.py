"""Helpers for the trainer tests: a micro model and small generated datasets.

The micro model is the ``tiny`` preset with 56 px images pooled to 4 tokens, so one
training step on CPU takes tens of milliseconds instead of seconds; the code path is the
same as with 336 px / 144 tokens.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 60, 220)}


def ensure_builtin_plugins() -> None:
    """Register the built-in heads and image adapter if the installed entry points predate them."""
    import importlib

    from longllava_sdk.registry import available_adapters
    from longllava_sdk.registry import available_heads
    from longllava_sdk.plugin_manager import get_plugin_manager

    manager = get_plugin_manager()
    if "classify" not in available_heads() and not manager.has_plugin("heads"):
        manager.register(importlib.import_module("longllava_plugins.heads_hooks"), name="heads")
    for name in ("images", "video", "dicom", "nifti", "geotiff"):
        if name not in available_adapters() and not manager.has_plugin(name):
            try:
                manager.register(importlib.import_module(f"longllava_plugins.{name}"), name=name)
            except Exception:  # noqa: BLE001 - a plugin being edited must not break these tests
                pass


def micro_config(**overrides):
    from longllava_sdk import LongLLaVAConfig

    config = LongLLaVAConfig.from_preset("tiny", tokens_per_image=4, **overrides)
    config.vision_config.image_size = 56  # 4 x 4 patches -> pooled 2 x 2
    return config


def make_micro_model(seed: int = 0, **overrides):
    from longllava_sdk import LongLLaVAForConditionalGeneration, LongLLaVAProcessor

    config = micro_config(**overrides)
    torch.manual_seed(seed)
    model = LongLLaVAForConditionalGeneration(config)
    return model, LongLLaVAProcessor.for_config(config)


def write_micro_model(directory: Path, seed: int = 0, **overrides) -> Path:
    from longllava_sdk.model_folders import save_model

    model, processor = make_micro_model(seed, **overrides)
    return save_model(model, processor, directory)


def assert_auto_files(folder: Path) -> None:
    """``folder`` loads through transformers' Auto classes without the SDK's import (longllava_sdk/hf_auto.py)."""
    from longllava_sdk.hf_auto import AUTO_MAP, PROCESSOR_AUTO_MAP, SHIM_FILES

    assert json.loads((folder / "config.json").read_text())["auto_map"] == AUTO_MAP
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        data = json.loads((folder / name).read_text())
        assert data["processor_class"] == "LongLLaVAProcessor" and data["auto_map"] == PROCESSOR_AUTO_MAP, name
    for name in SHIM_FILES:
        assert (folder / name).is_file(), name
    assert (folder / "README.md").read_text().startswith("`import longllava_sdk`")


def square_image(colour: str, size: int = 56, seed: int = 0) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), (128, 128, 128))
    side = size // 2
    x, y = rng.randint(0, size - side), rng.randint(0, size - side)
    ImageDraw.Draw(image).rectangle([x, y, x + side - 1, y + side - 1], fill=COLOURS[colour])
    return image


def write_colour_dataset(root: Path, n: int = 12, head: str = "classify", eval_fraction: float = 0.25,
                         training: dict | None = None, name: str = "colours", stage: str = "domain",
                         finetune: str = "lora") -> Path:
    """Images of one coloured square each, a CSV manifest and a recipe; returns the recipe path.

    ``head``: ``classify`` (label = colour), ``multilabel`` (labels = colour + "square"),
    ``generate`` (answer = colour name).
    """
    root.mkdir(parents=True, exist_ok=True)
    colours = list(COLOURS)
    rows = []
    for index in range(n):
        colour = colours[index % len(colours)]
        path = root / f"img_{index:03d}.png"
        square_image(colour, seed=index).save(path)
        row = {"source": path.name, "question": "What colour is the square?", "id": f"s{index}"}
        if head == "generate":
            row["answer"] = colour
        elif head == "multilabel":
            row["labels"] = ";".join([colour, "square"])
        else:
            row["labels"] = colour
        rows.append(row)
    with open(root / "data.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    labels = colours + (["square"] if head == "multilabel" else [])
    recipe = {
        "name": name,
        "stage": stage,
        "finetune": finetune,
        "head": {"type": head, "labels": labels if head != "generate" else []},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"epochs": 1, "learning_rate": 1e-3, "batch_size": 2, "max_length": 256,
                     **(training or {})},
        "data": {"path": "data.csv", "eval_fraction": eval_fraction},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def sigterm_worker(data_root: Path, output: Path, resume: bool, stop_after: int) -> int:
    """Train a LoRA + classify run for up to 400 steps, one sample per step, printing each step.

    Used by the SIGTERM test in a subprocess (which gets the signal) and in-process to resume.
    No periodic checkpoints: only a SIGTERM-triggered save writes one. Returns the final step.
    """
    import time

    from transformers import TrainerCallback, set_seed

    from longllava_sdk.registry import available_heads
    from longllava_sdk.recipes import Recipe
    from longllava_sdk.training.checkpointing import latest_complete_checkpoint
    from longllava_sdk.training.collator import TrainingCollator
    from longllava_sdk.training.data import prepare_datasets
    from longllava_sdk.training.lora import LoraOptions, apply_lora
    from longllava_sdk.modeling.task_model import TaskModel
    from longllava_sdk.training.trainer import LongLLaVATrainer, PromptOnlyCollator, build_training_arguments

    ensure_builtin_plugins()
    recipe = Recipe.from_yaml(Path(data_root) / "recipe.yaml")
    model, processor = make_micro_model(seed=0)
    set_seed(0)
    head = available_heads()["classify"](64, recipe.head.labels)
    prepared = prepare_datasets(processor, recipe, head=head)
    backbone, _ = apply_lora(model, LoraOptions(r=4, alpha=8), problem_type=head.problem_type)

    class Progress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            (Path(output) / f"step-{state.global_step}").touch()
            print(f"step {state.global_step}", flush=True)
            if state.global_step >= stop_after:
                control.should_training_stop = True
            time.sleep(0.05)

    args = build_training_arguments(output, recipe.training, learning_rate=1e-3, epochs=1, max_steps=400,
                                    save_steps=10_000, logging_steps=1000, extra={"disable_tqdm": True})
    trainer = LongLLaVATrainer(TaskModel(backbone, head), args, processor=processor, train_dataset=prepared.train,
                               data_collator=PromptOnlyCollator(TrainingCollator(processor)), callbacks=[Progress()])
    start = latest_complete_checkpoint(output) if resume else None
    print(f"start {start.name if start else 'fresh'}", flush=True)
    trainer.train(resume_from_checkpoint=str(start) if start else None)
    print(f"final {trainer.state.global_step}", flush=True)
    return trainer.state.global_step


@pytest.fixture(scope="module", autouse=True)
def builtin_plugins():
    """Autouse in the trainer test modules that import it: the built-in plugins are registered."""
    ensure_builtin_plugins()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny matmuls on a shared 2-core machine: one thread avoids OpenMP spin contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
