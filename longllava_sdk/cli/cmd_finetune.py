"""``longllava-sdk finetune``: fine-tune LongLLaVA on a domain recipe or your own data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def finetune(
    domain: str | None = None,
    model: str | None = None,
    data: str | None = None,
    output: str | None = None,
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
    report_to: str | None = None,
    router_aux_loss_coef: float | None = None,
    merge: bool = True,
    preset: str = "tiny",
) -> int:
    """Fine-tune LongLLaVA (LoRA by default) on a domain recipe or your own data, evaluate and export it.

    With only --domain (e.g. `longllava-sdk finetune --domain medical`) this builds a new
    tiny model, trains LoRA on the recipe's bundled sample data, evaluates the task head,
    saves everything under runs/<domain>-<stage>-lora/ (adapter/ and the merged model in merged/)
    and prints how to run the result.

    Args:
        domain: a registered domain (medical, remote_sensing, video, or a plugin's) or a recipe .yaml file.
        model: base model directory (safetensors); default: a new randomly initialised --preset model.
        data: training data (LLaVA JSON/JSONL or a CSV/JSONL manifest) instead of the recipe's sample data.
        output: run directory (default runs/<domain>-<stage>-<lora|full>); must be empty unless --resume/--overwrite.
        stage: align, sft-single, sft-multi, text-sft or domain (default: the recipe's, domain).
        head: task head: generate, multilabel or classify (default: the recipe's).
        full: full fine-tuning instead of LoRA.
        deepspeed: DeepSpeed preset (zero2, zero3, zero3-offload) or a DeepSpeed JSON file; launch with torchrun.
        resume: continue the run in --output from its newest complete checkpoint.
        overwrite: delete the previous run in --output and start again.
        epochs: number of epochs (default: the recipe's).
        lr: peak learning rate (default: the recipe's; cosine schedule with warm-up over the first 3 percent of steps).
        batch_size: per-device batch size (default: the recipe's).
        max_steps: stop after this many optimizer steps (overrides --epochs).
        save_steps: checkpoint every N steps (default: 4 checkpoints per run).
        report_to: logging integrations for the HF Trainer (none, tensorboard, wandb, ...).
        router_aux_loss_coef: add the MoE load-balancing loss with this weight (ignored for single-expert models).
        merge: after LoRA, also write a standalone merged model (what Pipeline loads).
        preset: model preset for a new model when --model is not given (tiny runs on CPU).
    """
    import os

    from ..training.trainer import run_finetune

    started = time.time()
    result = run_finetune(
        domain, model_dir=model, data=data, output=output, stage=stage, head=head, full=full,
        deepspeed=deepspeed, resume=resume, overwrite=overwrite, epochs=epochs, lr=lr, batch_size=batch_size,
        max_steps=max_steps, save_steps=save_steps, report_to=report_to,
        output_router_logits=router_aux_loss_coef is not None and router_aux_loss_coef > 0,
        router_aux_loss_coef=router_aux_loss_coef, merge=merge, preset=preset,
    )
    if os.environ.get("RANK", "0") != "0":  # one report per run, from the main process
        return 0
    if result.model_dir is None and result.adapter_dir is None:
        print(f"stopped at step {result.global_step}; resume with --resume --output {result.output_dir}")
        return 0
    print(format_report(result, time.time() - started))
    return 0


def format_report(result: Any, wall_seconds: float) -> str:
    """What was trained, the metrics, where the model is and a ``Pipeline`` snippet that runs it."""
    lines = [f"\nfinetune done: stage {result.stage}, {result.finetune}, head {result.head}, "
             f"{result.global_step} steps, {result.train_seconds:.0f}s training, {wall_seconds:.0f}s total"]
    shown = {k: v for k, v in result.metrics.items() if not k.startswith(("eval_runtime", "eval_samples", "epoch"))
             and "/" not in k}
    lines.append(f"metrics on the {result.evaluated_on} set: " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items()))
    lines.append(f"run folder: {Path(result.output_dir).resolve()}")
    if result.adapter_dir is not None:
        lines.append(f"LoRA adapter (peft format): {Path(result.adapter_dir).resolve()}")
    if result.model_dir is None:
        lines.append(f"merge the adapter into a standalone model with:\n  longllava-sdk merge {result.adapter_dir} "
                     f"{Path(result.output_dir) / 'merged'}")
        return "\n".join(lines)
    model_dir = Path(result.model_dir).resolve()
    lines.append(f"model (load with Pipeline): {model_dir}")
    lines.append("\nrun it:\n" + pipeline_snippet(model_dir, result.head, result.example))
    return "\n".join(lines)


def pipeline_snippet(model_dir: Path, head: str, example: dict[str, Any]) -> str:
    """Python code running the model on one of the evaluation samples."""
    prompt = example.get("prompt") or "Describe the input."
    args = [repr(prompt)]
    if example.get("kwarg"):
        args.append(f"{example['kwarg']}={example['source']!r}")
        if example.get("adapter_options"):
            args.append(f"adapter_options={example['adapter_options']!r}")
        if example.get("max_images"):
            args.append(f"max_images={int(example['max_images'])}")
    if head == "generate":
        args.append("max_new_tokens=32")
    call = "pipe.classify" if head != "generate" else "pipe"
    return (f"    from longllava_sdk import Pipeline\n"
            f"    pipe = Pipeline.from_pretrained({str(model_dir)!r})\n"
            f"    print({call}({', '.join(args)}))")
