"""Proof that the needle-in-a-haystack metric sees learning: fine-tune on CPU, evaluate before and after.

Task: a haystack of real video frames (the bundled ``video`` domain clips) with one needle
image: a card with a coloured square (red, green, blue or yellow), inserted at a random
depth. "What is the colour of the square?" -- only the needle answers it; chance is 1/4.

The model is the ``tiny`` preset from random weights at the learnability benchmark's
CPU-friendly scale (``benchmarks/learnability.py``: 56 px images pooled to 1 token, every
component trained, batch 32, lr 2e-3, cosine schedule, a curriculum of 2 to 8 images per
sample, one count per batch) with the built-in ``classify`` head over the four colour names.
Training samples come from the same generator as the evaluation (:mod:`longllava_sdk.evaluation`),
with seeds the evaluation never uses.

Both the untrained and the fine-tuned model folder are evaluated with
``longllava-sdk eval niah`` (:func:`~longllava_sdk.evaluation.evaluate_niah`): a sweep of
2 / 4 / 8 / 16 / 32 / 64 images x depths 0 / 25 / 50 / 75 / 100 %, 8 haystacks per cell,
scored through the saved head; each run writes its report and heatmap. Training never sees
more than 8 images, so the 16- to 64-image columns measure length generalisation.

    python benchmarks/bench_niah_learning.py            # ~10 minutes on 2 cores
    longllava-sdk bench --suite niah-learning           # the same
    python benchmarks/bench_niah_learning.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: no spinning on shared cores
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # learnability.py, next to this file
try:
    import longllava_sdk  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import learnability  # noqa: E402  (the model scale, the time budget: one place)


@dataclass
class Settings:
    """Knobs of the experiment."""

    colours: list[str] = field(default_factory=lambda: ["red", "green", "blue", "yellow"])
    min_train_images: int = 2
    max_train_images: int = 8
    eval_num_images: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32, 64])
    eval_depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    eval_samples_per_cell: int = 8
    image_size: int = 56
    tokens_per_image: int = 1
    needle_scale: float = 1.0
    insertion: str = "insert"
    haystack_domain: str = "video"
    train_samples: int = 4_800
    batch_size: int = 32
    learning_rate: float = 2e-3
    seed: int = 0
    threads: int = 2
    time_budget_s: float = 420.0
    output: str = "eval-runs/niah-learning"


class NeedleTrainingSet(Dataset):
    """Needle-in-a-haystack training samples, generated when asked for (sample ``i`` from its own seed).

    The number of images is drawn per block of ``block`` consecutive samples (one batch
    under sequential sampling) so a batch is not padded (as in ``learnability.py``).
    """

    def __init__(self, processor: Any, head: Any, pool: Any, settings: Settings, block: int) -> None:
        self.processor, self.head, self.pool, self.settings, self.block = processor, head, pool, settings, block

    def __len__(self) -> int:
        return self.settings.train_samples

    def __getitem__(self, index: int) -> Any:
        from longllava_sdk.evaluation.haystack import HaystackPlan, Placement
        from longllava_sdk.evaluation.niah import HAYSTACK_MEDIA_KIND, NiahItem, build_niah_haystack, stable_rng
        from longllava_sdk.media import Media
        from longllava_sdk.training.data import TrainingSample

        s = self.settings
        count = stable_rng(s.seed, "train-count", index // self.block).randint(s.min_train_images, s.max_train_images)
        rng = stable_rng(s.seed, "train", index)  # the evaluation's items use the key "niah": never these
        depth = rng.random()
        value = rng.choice(s.colours)
        plan = HaystackPlan(num_images=count, start=rng.randrange(self.pool.size), insertion=s.insertion, kind="colour",
                            placements=(Placement(round(depth * (count - 1)), value),), needle_scale=s.needle_scale,
                            seed=rng.randrange(2 ** 31))
        item = NiahItem(f"train-{index}", count, depth, value, (), (), plan)
        haystack = build_niah_haystack(item, self.pool, verify=False)
        media = Media(kind=HAYSTACK_MEDIA_KIND, images=haystack.images, source="<haystack>")
        messages = [{"role": "user", "content": f"<image>\n{item.question()}", "media": [media]},
                    {"role": "assistant", "content": value}]
        encoded = self.processor.encode_conversation(messages)
        return TrainingSample(input_ids=encoded.input_ids, labels=encoded.labels, images=encoded.images,
                              head_labels=self.head.encode_targets([value], value), sample_id=item.id)


def _evaluate(model_dir: Path, output: Path, settings: Settings) -> Any:
    from longllava_sdk.evaluation import evaluate_niah

    return evaluate_niah(model=str(model_dir), output=str(output), num_images=settings.eval_num_images,
                         depths=settings.eval_depths, samples_per_cell=settings.eval_samples_per_cell, needle="colour",
                         insertion=settings.insertion, haystack_domain=settings.haystack_domain,
                         needle_scale=settings.needle_scale, seed=settings.seed, device="cpu", overwrite=True,
                         progress=False)


def run(settings: Settings | None = None, verbose: bool = True) -> dict[str, Any]:
    """Evaluate an untrained model, fine-tune it on needle samples, evaluate again; returns the figures."""
    import tempfile

    from longllava_sdk.evaluation import HaystackPool
    from longllava_sdk.model_folders import save_model
    from longllava_sdk.modeling.task_model import TaskModel
    from longllava_sdk.registry import get_head_class
    from longllava_sdk.recipes import TrainingSettings
    from longllava_sdk.training.collator import TrainingCollator
    from longllava_sdk.training.stages import apply_stage_freezing, get_stage
    from longllava_sdk.training.trainer import LongLLaVATrainer, PromptOnlyCollator, build_training_arguments

    settings = settings or Settings()
    torch.set_num_threads(settings.threads)
    started = time.time()
    output = Path(settings.output)
    scale = learnability.Settings(image_size=settings.image_size, tokens_per_image=settings.tokens_per_image,
                                  seed=settings.seed)
    model, processor = learnability.build_model(scale)
    hidden = model.config.text_config.hidden_size
    torch.manual_seed(settings.seed)
    head = get_head_class("classify")(hidden, list(settings.colours), dropout=0.0)

    save_model(model, processor, output / "model-before", head=head, overwrite=True)
    before = _evaluate(output / "model-before", output / "eval-before", settings)

    pool = HaystackPool.from_domain(settings.haystack_domain, frame_size=settings.image_size, keep_in_memory=True)
    train = NeedleTrainingSet(processor, head, pool, settings, block=settings.batch_size)
    stage = get_stage("domain").with_freeze({"vision": False})  # every component trains, from scratch
    apply_stage_freezing(model, stage, "classify", head)
    training = TrainingSettings(batch_size=settings.batch_size, seed=settings.seed, warmup_ratio=0.03,
                                lr_scheduler="cosine", max_grad_norm=1.0)
    steps = -(-settings.train_samples // settings.batch_size)
    with tempfile.TemporaryDirectory() as scratch:
        args = build_training_arguments(
            scratch, training, learning_rate=settings.learning_rate, epochs=1, steps_per_epoch=steps,
            logging_steps=max(1, steps // 20),
            extra={"disable_tqdm": not verbose, "save_strategy": "no", "train_sampling_strategy": "sequential"},
        )
        budget = learnability._time_budget_callback(settings.time_budget_s)
        trainer = LongLLaVATrainer(TaskModel(model, head), args, processor=processor, train_dataset=train,
                                   data_collator=PromptOnlyCollator(TrainingCollator(processor)), callbacks=[budget])
        if not verbose:
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        train_start = time.time()
        trainer.train()
        train_seconds = time.time() - train_start
    save_model(model, processor, output / "model-after", head=head, overwrite=True)
    after = _evaluate(output / "model-after", output / "eval-after", settings)

    def cells(report: Any, key: str) -> dict[str, float]:
        return {str(g[key]): g["accuracy"] for g in report.groups[key]}

    return {
        "accuracy_before": before.metrics["accuracy"],
        "accuracy_after": after.metrics["accuracy"],
        "chance": before.extra["chance"],
        "after_by_num_images": cells(after, "num_images"),
        "after_by_depth": cells(after, "depth"),
        "before_by_num_images": cells(before, "num_images"),
        "eval_items": len(after.records),
        "steps": trainer.state.global_step,
        "train_samples_seen": min(trainer.state.global_step * settings.batch_size, len(train)),
        "stopped_by_time_budget": budget.hit,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - started, 1),
        "threads": settings.threads,
        "heatmap_before": str(before.heatmap_path),
        "heatmap_after": str(after.heatmap_path),
        "report_after": str(after.report_path),
        "table_after": after.table,
        "settings": asdict(settings),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: every scalar :class:`Settings` field is a flag; exit 0 when the fine-tuned accuracy
    is at least twice chance."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    for name, value in asdict(Settings()).items():
        if isinstance(value, list):
            continue
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or training logs")
    options = vars(parser.parse_args(argv))
    as_json, quiet = options.pop("json"), options.pop("quiet")
    result = run(Settings(**options), verbose=not quiet)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        budget = " (stopped by the time budget)" if result["stopped_by_time_budget"] else ""
        by_count = ", ".join(f"{n} images {100 * a:.0f}%" for n, a in result["after_by_num_images"].items())
        print(f"\nniah-learning: what colour is the square on the needle card among real video frames? "
              f"(4 colours, chance {result['chance']:.1%})\n"
              f"  before fine-tuning: NIAH accuracy {result['accuracy_before']:.1%} on {result['eval_items']} "
              f"haystacks\n"
              f"  after fine-tuning:  NIAH accuracy {result['accuracy_after']:.1%} ({by_count})\n"
              f"  fine-tuned from scratch: {result['steps']} steps, {result['train_samples_seen']} samples{budget}, "
              f"{result['train_seconds']:.0f} s training, {result['total_seconds']:.0f} s total "
              f"({result['threads']} threads)\n"
              f"  heatmaps: {result['heatmap_before']} (before), {result['heatmap_after']} (after)\n\n"
              f"{result['table_after']}")
    return 0 if result["accuracy_after"] >= 2 * result["chance"] else 1


if __name__ == "__main__":
    sys.exit(main())
