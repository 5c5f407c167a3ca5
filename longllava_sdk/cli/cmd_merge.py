"""``longllava-sdk merge``: fold a LoRA adapter into its base model, as a standalone model directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..errors import CheckpointError

_HEAD_FILES = ("head_config.json", "head.safetensors")


def resolve_base_model(adapter_dir: Path, base: str | None = None) -> Path:
    """The base model of an adapter: ``base``, else the one recorded at training time."""
    if base is not None:
        return Path(base)
    candidates: list[str] = []
    info = adapter_dir / "longllava_training.json"
    if info.is_file():
        recorded = json.loads(info.read_text()).get("base_model")
        if recorded:
            candidates.append(str(recorded))
    config = adapter_dir / "adapter_config.json"
    if config.is_file():
        recorded = json.loads(config.read_text()).get("base_model_name_or_path")
        if recorded:
            candidates.append(str(recorded))
    for candidate in candidates:
        path = Path(candidate)
        for option in (path, adapter_dir / path, adapter_dir.parent / path.name):
            if (option / "config.json").is_file():
                return option
    raise CheckpointError(f"{adapter_dir}: cannot find the base model (recorded: {candidates or 'nothing'}); "
                          "pass --base DIR")


def merge(adapter_dir: str, output: str, base: str | None = None, overwrite: bool = False) -> int:
    """Merge a LoRA adapter into its base model and write a standalone model loadable by Pipeline.

    The output holds the merged weights (safetensors), config, tokenizer / processor files and
    the task head (if the run trained one), so `Pipeline.from_pretrained(OUTPUT)` runs it.

    Args:
        adapter_dir: the adapter folder a LoRA run wrote (runs/<name>/adapter or a checkpoint-N folder).
        output: directory to write (must not exist or be empty unless --overwrite).
        base: the base model directory (default: the one recorded when training).
        overwrite: replace a non-empty output directory.
    """
    from peft import PeftModel

    from ..checkpoint import atomic_directory, check_weights_safe
    from ..processing import LongLLaVAProcessor
    from ..training.lora import merge_lora
    from ..training.trainer import load_base_model

    adapter = Path(adapter_dir)
    if not (adapter / "adapter_config.json").is_file():
        raise CheckpointError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    check_weights_safe(adapter)
    base_dir = resolve_base_model(adapter, base)
    model, processor = load_base_model(base_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    merged = merge_lora(peft_model)
    if (adapter / "tokenizer_config.json").is_file():
        processor = LongLLaVAProcessor.from_pretrained(adapter, config=merged.config)
    with atomic_directory(output, overwrite=overwrite) as staging:
        merged.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
        for name in _HEAD_FILES:
            if (adapter / name).is_file():
                shutil.copy2(adapter / name, staging / name)
        info = {"format": "merged", "adapter": str(adapter.resolve()), "base_model": str(base_dir.resolve())}
        (staging / "longllava_training.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"merged {adapter} into {base_dir}: wrote {output}\n"
          f"  from longllava_sdk import Pipeline\n  pipe = Pipeline.from_pretrained({str(Path(output).resolve())!r})")
    return 0
