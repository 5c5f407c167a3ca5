"""One rank of the 2-process CPU training test; launched by tests/test_distributed.py via torchrun.

    python -m torch.distributed.run --nproc_per_node 2 --master_port P \\
        tests/distributed_worker.py --mode ddp|zero3 --model DIR --out DIR

It trains the tiny LongLLaVA for one epoch through the HF Trainer, with the SDK's
``prepare_distributed`` / ``prepare_model_for_distributed`` exactly as the trainer calls
them, and writes ``rank{R}.json``: world size, accelerate's view, the sample ids this rank
fed to the model, whether each step had images, losses, and digests of the full parameters
before and after training (gathered from the ZeRO-3 shards when sharded).

The dataset is read in order (no shuffling) so that the ranks get an image batch and a
text-only batch in the same step, and sample 0 carries 20 images (two CLIP calls of
``vision_chunk_size`` 16) while its partner has none: the cases where ZeRO-3 ranks would
issue different collectives without the SDK's dummy images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

import torch
from PIL import Image

from longllava_sdk.config import LongLLaVAConfig
from longllava_sdk.modeling.modeling_longllava import LongLLaVAForConditionalGeneration
from longllava_sdk.processing import LongLLaVAProcessor
from longllava_sdk.processing.processor import IGNORE_INDEX
from longllava_sdk.training.distributed import prepare_distributed, prepare_model_for_distributed

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220)}
# Sample ids with no image. In-order sharding over 2 ranks with batch 1 gives
# step 0: (0 image, 1 text), step 1: (2 text, 3 image), step 2: (4, 5) both images.
TEXT_ONLY = {1, 2}
NUM_SAMPLES = 6


def build_samples(processor: LongLLaVAProcessor, first_images: int = 1) -> list[dict]:
    """``NUM_SAMPLES`` one-turn samples; sample 0 carries ``first_images`` images."""
    samples = []
    names = list(COLOURS)
    for sample_id in range(NUM_SAMPLES):
        colour = names[sample_id % len(names)]
        if sample_id in TEXT_ONLY:
            messages = [{"role": "user", "content": "Say yes"}, {"role": "assistant", "content": "yes"}]
        else:
            count = first_images if sample_id == 0 else 1
            media = [Image.new("RGB", (32, 24), COLOURS[colour]) for _ in range(count)]
            messages = [{"role": "user", "content": "What color is the image?", "media": media},
                        {"role": "assistant", "content": colour}]
        encoded = processor.encode_conversation(messages)
        samples.append({"sample_id": sample_id, "input_ids": encoded.input_ids, "labels": encoded.labels,
                        "images": encoded.images})
    return samples


class Collator:
    """Right-padded batch with ``pixel_values`` only when the batch has images."""

    def __init__(self, processor: LongLLaVAProcessor):
        self.processor = processor

    def __call__(self, rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        pad = self.processor.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            attention_mask[i, :n] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask,
                 "sample_ids": torch.tensor([r["sample_id"] for r in rows])}
        images = [img for r in rows for img in r["images"]]
        if images:
            batch["pixel_values"] = self.processor.preprocess_images(images)
        return batch


def parameter_digest(model: torch.nn.Module) -> dict:
    """sha256 + float sum over all parameters in name order (gathered when ZeRO-3 sharded)."""
    params = list(model.named_parameters())
    sharded = any(hasattr(p, "ds_id") for _, p in params)
    if sharded:
        import deepspeed

        context = deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None)
    else:
        import contextlib

        context = contextlib.nullcontext()
    digest = hashlib.sha256()
    total = 0.0
    flat = []
    with context:
        for name, param in params:
            data = param.detach().to(torch.float32).contiguous().cpu()
            digest.update(name.encode())
            digest.update(data.numpy().tobytes())
            total += float(data.double().sum())
            flat.append(data.reshape(-1))
    vector = torch.cat(flat)
    return {"sha256": digest.hexdigest(), "sum": total, "numel": int(vector.numel()),
            "sample": vector[:: max(1, vector.numel() // 4096)].tolist()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["ddp", "zero3"], required=True)
    parser.add_argument("--model", required=True, help="saved tiny model directory (identical init for all runs)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--first-images", type=int, default=20,
                        help="images in sample 0 (> vision_chunk_size: several CLIP calls on one rank)")
    parser.add_argument("--no-safeguards", action="store_true",
                        help="skip prepare_model_for_distributed (shows the hazard it prevents)")
    args = parser.parse_args(argv)

    from transformers import Trainer, TrainingArguments
    from torch.utils.data import SequentialSampler

    out = Path(args.out)
    setup = prepare_distributed(deepspeed="zero3" if args.mode == "zero3" else None, run_dir=out / "run")
    training_args = TrainingArguments(
        output_dir=str(out / "run"), per_device_train_batch_size=1, num_train_epochs=1, learning_rate=1e-3,
        lr_scheduler_type="constant", max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to=[],
        remove_unused_columns=False, dataloader_num_workers=0, seed=0, disable_tqdm=True,
        **setup.training_arguments_kwargs(),
    )
    # Loaded after TrainingArguments, as users do: under ZeRO-3 this goes through zero.Init
    # and the weights arrive already partitioned.
    model = LongLLaVAForConditionalGeneration.from_pretrained(args.model)
    config = LongLLaVAConfig.from_pretrained(args.model)
    processor = LongLLaVAProcessor.for_config(config)
    if not args.no_safeguards:
        prepare_model_for_distributed(model, setup)
    before = parameter_digest(model)
    local_numel = sum(int(p.ds_tensor.numel()) if hasattr(p, "ds_tensor") else p.numel() for p in model.parameters())

    record: dict = {"seen": [], "step_has_images": [], "losses": []}

    class RecordingTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            record["seen"].extend(int(i) for i in inputs.pop("sample_ids"))
            record["step_has_images"].append("pixel_values" in inputs)
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = result[0] if return_outputs else result
            record["losses"].append(float(loss.detach()))
            return result

    trainer = RecordingTrainer(model=model, args=training_args, train_dataset=build_samples(processor, args.first_images),
                               data_collator=Collator(processor))
    trainer.train()

    import torch.distributed as dist

    after = parameter_digest(model)
    record.update(
        mode=args.mode,
        rank=dist.get_rank() if dist.is_initialized() else 0,
        world_size=dist.get_world_size() if dist.is_initialized() else 1,
        backend=dist.get_backend() if dist.is_initialized() else None,
        accelerate_num_processes=trainer.accelerator.num_processes,
        distributed_type=str(trainer.accelerator.distributed_type),
        deepspeed_enabled=bool(trainer.is_deepspeed_enabled),
        zero_stage=setup.zero_stage,
        local_numel=local_numel,
        before=before,
        after=after,
        global_step=trainer.state.global_step,
    )
    if args.mode == "zero3":
        trainer.save_model(str(out / "saved"))  # stage3_gather_16bit_weights_on_model_save
    rank = record["rank"]
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # DeepSpeed 0.19 calls collectives torch 2.13 deprecated: one warning per call.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    sys.exit(main())
