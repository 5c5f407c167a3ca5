"""How the CLI shows the results of library calls (reports, runnable snippets)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

_STARTED = time.time()


def present_finetune(result: Any) -> int:
    """Print a finished (or stopped) run: what trained, metrics, folders, a snippet that runs it."""
    if os.environ.get("RANK", "0") != "0":  # one report per run, from the main process
        return 0
    if result.stopped:
        print(f"stopped at step {result.global_step}; resume with --resume --output {result.output_dir}")
        return 0
    print(format_report(result, time.time() - _STARTED))
    return 0


def format_report(result: Any, wall_seconds: float) -> str:
    """What was trained, the metrics (next to their chance baselines), where the model is and a
    ``Pipeline`` snippet that runs it."""
    from ..evaluation.tables import metrics_table, random_weights_note

    lines = [f"\nfinetune done: stage {result.stage}, {result.finetune}, head {result.head}, "
             f"{result.global_step} steps, {result.train_seconds:.0f}s training, {wall_seconds:.0f}s total"]
    shown = {k: v for k, v in result.metrics.items() if not k.startswith(("eval_runtime", "eval_samples", "epoch"))
             and "/" not in k}
    rows = result.metrics.get("eval_samples")
    counted = f" ({int(rows)} rows)" if rows else ""
    lines.append(f"metrics on the {result.evaluated_on} set{counted}, next to the chance baselines "
                 "(always the most common answer / guessing from the answer distribution):")
    lines.append(metrics_table(shown, chance=result.chance))
    note = random_weights_note(result.random_init, result.global_step, result.trained_rows)
    if note:
        lines.append(note)
    out = Path(result.output_dir).resolve()
    lines.append(f"run folder: {out} (run.json, trainer_log.jsonl, training_loss.png, eval_metrics.json)")
    if result.adapter_dir is not None:
        lines.append(f"LoRA adapter (peft format): {Path(result.adapter_dir).resolve()}")
    if result.model_dir is None:
        lines.append(f"merge the adapter into a standalone model with:\n  longllava-sdk merge {result.adapter_dir} "
                     f"{Path(result.output_dir) / 'model'}")
        return "\n".join(lines)
    model_dir = Path(result.model_dir).resolve()
    lines.append(f"model (load with Pipeline): {model_dir}")
    lines.append("\nrun it:\n" + pipeline_snippet(model_dir, result.generates, result.example))
    return "\n".join(lines)


def pipeline_snippet(model_dir: Path, generates: bool, example: dict[str, Any]) -> str:
    """Python code running the model on one of the evaluation samples."""
    prompt = example.get("prompt") or "Describe the input."
    args = [repr(prompt)]
    if example.get("kwarg"):
        args.append(f"{example['kwarg']}={example['source']!r}")
        if example.get("adapter_options"):
            args.append(f"adapter_options={example['adapter_options']!r}")
        if example.get("max_images"):
            args.append(f"max_images={int(example['max_images'])}")
    if generates:
        args.append("max_new_tokens=32")
    call = "pipe" if generates else "pipe.classify"
    return (f"    from longllava_sdk import Pipeline\n"
            f"    pipe = Pipeline.from_pretrained({str(model_dir)!r})\n"
            f"    print({call}({', '.join(args)}))")


def present_merge(output: Path) -> int:
    """Print where the merged model went and how to load it."""
    print(f"wrote merged model {output}\n"
          f"  from longllava_sdk import Pipeline\n  pipe = Pipeline.from_pretrained({str(Path(output).resolve())!r})")
    return 0


def present_eval(report: Any) -> int:
    """Print an evaluation's table, where its files are, and what was resumed."""
    lines = [report.table, ""]
    if report.resumed:
        lines.append(f"{report.resumed} item(s) taken from an earlier run with these settings, "
                     f"{report.scored} scored now")
    lines.append(f"report (per-item predictions and metrics): {Path(report.report_path).resolve()}")
    if report.heatmap_path is not None:
        lines.append(f"heatmap: {Path(report.heatmap_path).resolve()}")
    print("\n".join(lines))
    return 0


def present_plan(result: Any) -> int:
    """Print a :class:`~longllava_sdk.planner.MemoryPlan` as its budget table."""
    from ..planner import format_plan

    print(format_plan(result))
    return 0
