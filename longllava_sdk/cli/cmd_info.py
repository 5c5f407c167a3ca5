"""``longllava-sdk info``: parameter counts and structure of a preset or a checkpoint."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports stay inside the functions: the CLI starts fast
    from ..config import LongLLaVAConfig


def parameter_report(config: "LongLLaVAConfig") -> dict[str, float | int | str]:
    """Total and active parameter counts of ``config``, built on the meta device (no memory).

    ``active`` counts, in each MoE layer, only the ``num_experts_per_tok`` experts a token
    uses (the router itself is counted).
    """
    import torch

    from ..modeling.modeling_longllava import LongLLaVAForConditionalGeneration
    with torch.device("meta"):
        model = LongLLaVAForConditionalGeneration(config)
    counts = {"vision_tower": 0, "projector": 0, "language_model": 0}
    for name, param in model.named_parameters():
        counts[name.split(".")[0]] += param.numel()
    text = config.text_config
    inactive = 0
    for name, param in model.language_model.named_parameters():
        if ".experts." in name and text.num_experts > 1:
            inactive += param.numel() * (text.num_experts - text.num_experts_per_tok) // text.num_experts
    total = sum(counts.values())
    layer_types = text.layers_block_type
    return {
        "total": total,
        "active": total - inactive,
        "vision_tower": counts["vision_tower"],
        "projector": counts["projector"],
        "language_model": counts["language_model"],
        "layers": len(layer_types),
        "attention_layers": layer_types.count("attention"),
        "mamba_layers": layer_types.count("mamba"),
        "moe_layers": sum(1 for n in text.layers_num_experts if n > 1),
        "experts": text.num_experts,
        "top_k": text.num_experts_per_tok,
        "tokens_per_image": config.tokens_per_image,
        "pooling": config.pooling,
    }


def info(preset: str | None = None, model: str | None = None, json_output: bool = False) -> None:
    """Print parameter counts (total, active, per component), the layer layout and the Mamba kernels in use.

    Args:
        preset: a preset name (tiny, 9b, a13b); built on the meta device, no memory used.
        model: a checkpoint directory (its config.json is read).
        json_output: print JSON instead of a table.
    """
    from ..config import LongLLaVAConfig

    if model is not None and preset is not None:
        raise SystemExit("pass either --preset or --model, not both")
    if model is None:
        preset = preset or "tiny"
    config = LongLLaVAConfig.from_pretrained(model) if model else LongLLaVAConfig.from_preset(preset)
    report: dict[str, Any] = parameter_report(config)
    report["kernels"] = kernels = kernel_paths()
    if json_output:
        print(json.dumps(report, indent=2))
        return
    print(f"LongLLaVA {'preset ' + preset if preset else model}")
    for key, value in report.items():
        if key == "kernels":
            continue
        if isinstance(value, int) and value > 10_000:
            print(f"  {key:<17} {value:>16,d}  ({value / 1e9:.2f} B)")
        else:
            print(f"  {key:<17} {value}")
    for device, paths in kernels.items():
        print(f"  Mamba kernels on {device}:")
        for op, path in paths.items():
            print(f"    {op:<15} {path}")


def kernel_paths() -> dict[str, dict[str, str]]:
    """Which selective-scan and causal-conv implementations run, on CPU and (if present) CUDA."""
    import torch

    from ..modeling.kernels import kernel_report

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return {device: kernel_report(device) for device in devices}
