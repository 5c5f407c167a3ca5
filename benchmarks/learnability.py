"""Learnability proof: the tiny model learns a multi-image task from scratch, on CPU, in minutes.

Task: K images (default 8), each with one coloured square on a noisy background; exactly
one square is red. "Which of the images contains the red square?" -- the model answers the
image's number. Chance is 1/K (12.5 % for K = 8).

Everything is the SDK's real stack, started from random weights: the ``tiny`` preset
(CLIP tower -> 2D pooling -> projector -> Jamba with Mamba, attention and MoE layers),
the processor's chat template and tag protocol, the training collator, ``TaskModel`` with
the ``generate`` head (the answer is generated text), ``LongLLaVATrainer`` (HF Trainer,
cosine schedule with 3 % warm-up) and its ``evaluate()``, which generates the answers of a
held-out set greedily and scores them with the head's exact-match accuracy.

What makes it learn fast enough for a 2-core CPU (all measured, see docs/training.md):

* full fine-tuning of every component, the vision tower included: a random CLIP has to
  learn what "red" is, so nothing can stay frozen;
* the prompt names the images ("Image 1: <image> Image 2: <image> ..."), as multi-image
  prompts do in practice: the number before an image reaches its tokens through the
  Mamba state, and the attention layer can look the red image up and copy its number;
* small images: 112 px (8 x 8 CLIP patches) pooled to 4 tokens per image (2D pooling,
  as the paper's 24 x 24 -> 12 x 12 but at a smaller scale), so 8 images are ~120 tokens.
  The 336 px / 144-token default is the same code path, ~40x more tokens per step;
* one OpenMP thread (2 shared cores: a second spinning thread only slows tiny matmuls).

    python benchmarks/learnability.py            # prints the accuracy and the times, writes nothing
    python benchmarks/learnability.py --json     # the same result as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

try:
    import longllava_sdk  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DISTRACTOR_COLOURS = [(30, 160, 40), (40, 70, 220), (230, 210, 40), (40, 200, 210), (200, 60, 200),
                      (240, 240, 240), (250, 140, 20), (120, 80, 40)]
RED = (220, 20, 20)


@dataclass
class Settings:
    """Knobs of the experiment (defaults: the configuration that reaches >= 90 %)."""

    num_images: int = 8
    min_train_images: int = 8
    image_size: int = 112
    tokens_per_image: int = 4
    train_samples: int = 4000
    eval_samples: int = 200
    batch_size: int = 16
    learning_rate: float = 3e-3
    epochs: float = 1.0
    head: str = "generate"
    label_images: bool = True
    seed: int = 0
    threads: int = 1
    time_budget_s: float = 540.0


def draw_sample(rng: random.Random, settings: Settings, count: int) -> tuple[list[Image.Image], int]:
    """``count`` images with one square each; returns them and the 0-based index of the red one."""
    size = settings.image_size
    target = rng.randrange(count)
    images = []
    for index in range(count):
        background = tuple(rng.randint(90, 150) for _ in range(3))
        image = Image.new("RGB", (size, size), background)
        draw = ImageDraw.Draw(image)
        for _ in range(30):  # speckle noise so "any colour" is not the same as "a square"
            x, y = rng.randrange(size), rng.randrange(size)
            draw.point((x, y), fill=tuple(rng.randint(60, 190) for _ in range(3)))
        side = rng.randint(size // 4, size // 2)
        x, y = rng.randint(0, size - side), rng.randint(0, size - side)
        colour = RED if index == target else rng.choice(DISTRACTOR_COLOURS)
        draw.rectangle([x, y, x + side - 1, y + side - 1], fill=colour)
        images.append(image)
    return images, target


def question(settings: Settings, count: int) -> str:
    if settings.label_images:
        listing = " ".join(f"Image {i + 1}: <image>" for i in range(count))
    else:
        listing = "<image>" * count
    return f"{listing}\nWhich of the images contains the red square?"


def build_model(settings: Settings):
    from longllava_sdk import LongLLaVAConfig, LongLLaVAForConditionalGeneration, LongLLaVAProcessor

    config = LongLLaVAConfig.from_preset("tiny", tokens_per_image=settings.tokens_per_image)
    config.vision_config.image_size = settings.image_size
    config.validate_multimodal()
    torch.manual_seed(settings.seed)
    model = LongLLaVAForConditionalGeneration(config)
    return model, LongLLaVAProcessor.for_config(config)


def make_samples(processor: Any, settings: Settings, count: int, seed: int, min_images: int | None = None) -> list[Any]:
    """Encoded conversations (answer = the red image's number) with ``head_labels`` = its index.

    Each sample has between ``min_images`` (default: ``num_images``) and ``num_images`` images.
    """
    from longllava_sdk.training.data import TrainingSample

    rng = random.Random(seed)
    low = settings.num_images if min_images is None else min_images
    samples = []
    for n in range(count):
        images, target = draw_sample(rng, settings, rng.randint(low, settings.num_images))
        messages = [{"role": "user", "content": question(settings, len(images)), "media": images},
                    {"role": "assistant", "content": str(target + 1)}]
        encoded = processor.encode_conversation(messages)
        samples.append(TrainingSample(input_ids=encoded.input_ids, labels=encoded.labels, images=encoded.images,
                                      head_labels=target, sample_id=f"{seed}-{n}"))
    return samples


class TimeBudget:
    """A TrainerCallback that stops training when the wall-clock budget is spent."""

    def __new__(cls, seconds: float):
        from transformers import TrainerCallback

        class _Budget(TrainerCallback):
            def __init__(self) -> None:
                self.start = time.time()
                self.hit = False

            def on_step_end(self, args, state, control, **kwargs):
                if time.time() - self.start > seconds:
                    self.hit = True
                    control.should_training_stop = True

        return _Budget()


def run(settings: Settings | None = None, output_dir: str | os.PathLike[str] | None = None,
        verbose: bool = True) -> dict[str, Any]:
    """Train from scratch and evaluate on held-out samples; returns accuracy, chance and timings."""
    import tempfile

    from longllava_sdk.heads import available_heads
    from longllava_sdk.recipes import TrainingSettings
    from longllava_sdk.training.collator import TrainingCollator
    from longllava_sdk.training.stages import apply_stage_freezing, get_stage
    from longllava_sdk.training.trainer import LongLLaVATrainer, PromptOnlyCollator, TaskModel, build_training_arguments

    settings = settings or Settings()
    torch.set_num_threads(settings.threads)
    started = time.time()
    model, processor = build_model(settings)
    train = make_samples(processor, settings, settings.train_samples, seed=settings.seed + 1,
                         min_images=settings.min_train_images)
    held_out = make_samples(processor, settings, settings.eval_samples, seed=settings.seed + 10_000)
    data_seconds = time.time() - started

    heads = available_heads()
    hidden = model.config.text_config.hidden_size
    if settings.head == "generate":
        head = heads["generate"](hidden)
        collator: Any = TrainingCollator(processor)
    else:
        head = heads["classify"](hidden, [str(i + 1) for i in range(settings.num_images)], dropout=0.0)
        collator = PromptOnlyCollator(TrainingCollator(processor))
    stage = get_stage("domain").with_freeze({"vision": False})  # everything trains, from scratch
    apply_stage_freezing(model, stage, settings.head, head)
    training = TrainingSettings(batch_size=settings.batch_size, seed=settings.seed, warmup_ratio=0.03,
                                lr_scheduler="cosine", max_grad_norm=1.0)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(output_dir) if output_dir else Path(scratch)
        steps_per_epoch = -(-len(train) // settings.batch_size)
        args = build_training_arguments(out, training, learning_rate=settings.learning_rate, epochs=settings.epochs,
                                        save_steps=10**9, logging_steps=max(1, steps_per_epoch // 10),
                                        steps_per_epoch=steps_per_epoch,
                                        extra={"disable_tqdm": not verbose, "save_strategy": "no"})
        budget = TimeBudget(settings.time_budget_s)
        trainer = LongLLaVATrainer(TaskModel(model, head), args, processor=processor, train_dataset=train,
                                   data_collator=collator, callbacks=[budget], max_new_tokens=3)
        train_start = time.time()
        trainer.train()
        train_seconds = time.time() - train_start
        eval_start = time.time()
        metrics = trainer.evaluate(held_out)
        eval_seconds = time.time() - eval_start
    return {
        "accuracy": metrics["eval_accuracy"],
        "chance": 1.0 / settings.num_images,
        "num_images": settings.num_images,
        "held_out_samples": len(held_out),
        "train_samples_seen": trainer.state.global_step * settings.batch_size,
        "steps": trainer.state.global_step,
        "stopped_by_time_budget": budget.hit,
        "data_seconds": round(data_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "total_seconds": round(time.time() - started, 1),
        "settings": asdict(settings),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Settings()
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or training logs")
    options = vars(parser.parse_args(argv))
    as_json, quiet = options.pop("json"), options.pop("quiet")
    result = run(Settings(**options), verbose=not quiet)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(f"\nlearnability: {result['num_images']} images, which one holds the red square?\n"
              f"  held-out accuracy {result['accuracy']:.1%} on {result['held_out_samples']} samples "
              f"(chance {result['chance']:.1%})\n"
              f"  {result['steps']} steps, {result['train_samples_seen']} samples seen, "
              f"train {result['train_seconds']:.0f}s, eval {result['eval_seconds']:.0f}s, "
              f"total {result['total_seconds']:.0f}s (data generation {result['data_seconds']:.0f}s)")
    return 0 if result["accuracy"] >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
