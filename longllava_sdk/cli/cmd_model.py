"""``longllava-sdk init-model``: write a fresh random-weight model + tokenizer + processor."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # heavy imports stay inside the functions: the CLI starts fast
    from ..modeling.modeling_longllava import LongLLaVAForConditionalGeneration
    from ..processing import LongLLaVAProcessor


def create_model(preset: str = "tiny", seed: int = 0) -> tuple["LongLLaVAForConditionalGeneration", "LongLLaVAProcessor"]:
    """A randomly initialised model of ``preset`` and a processor with the local tokenizer."""
    import torch

    from ..config import LongLLaVAConfig
    from ..modeling.modeling_longllava import LongLLaVAForConditionalGeneration
    from ..processing import LongLLaVAProcessor

    config = LongLLaVAConfig.from_preset(preset)
    torch.manual_seed(seed)
    model = LongLLaVAForConditionalGeneration(config)
    return model, LongLLaVAProcessor.for_config(config)


def save_model(model: "LongLLaVAForConditionalGeneration", processor: "LongLLaVAProcessor", output: str | Path,
               overwrite: bool = False) -> Path:
    """Write model (safetensors) and processor files to ``output`` atomically."""
    from ..checkpoint import atomic_directory

    with atomic_directory(output, overwrite=overwrite) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
    return Path(output)


def init_model(output: str, preset: str = "tiny", seed: int = 0, overwrite: bool = False) -> None:
    """Write a fresh random-weight model, its tokenizer and processor files to OUTPUT.

    Args:
        output: directory to create (must not exist or be empty unless --overwrite).
        preset: model preset (tiny for tests and CPU demos; 9b/a13b need a lot of memory).
        seed: random seed of the initialisation.
        overwrite: replace a non-empty output directory.
    """
    model, processor = create_model(preset, seed)
    path = save_model(model, processor, output, overwrite)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {preset} model ({n:,} parameters) to {path}")
