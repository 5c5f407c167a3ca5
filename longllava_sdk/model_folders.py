"""Model folders: the one home for creating, saving, loading and exporting model directories.

A model folder is what ``Pipeline.from_pretrained`` loads and what training writes::

    config.json + model*.safetensors        the LongLLaVA model (safetensors only)
    tokenizer*.json, preprocessor_config.json, longllava_processor.json, processor_config.json,
    chat_template.jinja                     the processor (AutoProcessor loads it too)
    head_config.json + head.safetensors     the task head, when one was trained
    longllava_training.json                 how the folder was made (base model, adapter, random_init...)

A LoRA run also writes an *adapter* folder (peft's ``adapter_config.json`` +
``adapter_model.safetensors``); :func:`merge_adapter` folds it into its base model and writes
a standalone model folder. Both ``Pipeline`` and the trainer use this module; it sits below
both (it imports neither).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError

from .checkpoint import (PICKLE_SUFFIXES, atomic_directory, check_weights_safe, resolve_device, resolve_dtype,
                         stored_elements)
from .errors import CheckpointError, option_hint

if TYPE_CHECKING:
    from .config import LongLLaVAConfig
    from .heads import TaskHead
    from .modeling.modeling_longllava import LongLLaVAForConditionalGeneration
    from .processing.processor import LongLLaVAProcessor

logger = logging.getLogger(__name__)

__all__ = [
    "HEAD_CONFIG_NAME", "HEAD_WEIGHTS_NAME", "TRAINING_INFO_NAME", "STATE_WEIGHTS_NAME",
    "ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME",
    "create_model", "save_model", "load_model", "save_head", "read_head_config", "load_head",
    "read_training_info", "random_init_of", "RANDOM_INIT_KEY", "resolve_base_model", "merge_lora", "export_merged", "merge_adapter",
]

HEAD_CONFIG_NAME = "head_config.json"
HEAD_WEIGHTS_NAME = "head.safetensors"
TRAINING_INFO_NAME = "longllava_training.json"
#: Full fine-tuning checkpoints keep the raw state dict (exact for resume).
STATE_WEIGHTS_NAME = "longllava_state.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"


# -- whole models --------------------------------------------------------------------------------


def create_model(preset: str = "tiny", seed: int = 0
                 ) -> tuple[LongLLaVAForConditionalGeneration, LongLLaVAProcessor]:
    """A randomly initialised model of ``preset`` and a processor with the local tokenizer."""
    from .config import LongLLaVAConfig
    from .modeling.kernels import announce_kernels
    from .modeling.modeling_longllava import LongLLaVAForConditionalGeneration
    from .processing.processor import LongLLaVAProcessor

    config = LongLLaVAConfig.from_preset(preset)
    torch.manual_seed(seed)
    model = LongLLaVAForConditionalGeneration(config)
    announce_kernels("cpu")
    return model, LongLLaVAProcessor.for_config(config)


def save_model(model: torch.nn.Module, processor: LongLLaVAProcessor, output: str | os.PathLike[str], *,
               head: TaskHead | None = None, head_from: str | os.PathLike[str] | None = None,
               info: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write a model folder atomically: weights (safetensors), processor files, optional head and info.

    Args:
        head: a task head to save with the model; or ``head_from``: a folder whose saved head
            files are copied as they are (no need for the head's plugin to be installed).

    Raises:
        CheckpointError: ``output`` exists and is not empty, and ``overwrite`` is false.
    """
    with atomic_directory(output, overwrite=overwrite) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
        if head is not None:
            save_head(head, staging)
        elif head_from is not None:
            for name in (HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME):
                if (Path(head_from) / name).is_file():
                    shutil.copy2(Path(head_from) / name, staging / name)
        if info is not None:
            (staging / TRAINING_INFO_NAME).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return Path(output)


def load_model(path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
               dtype: str | torch.dtype | None = None, allow_pickle: bool = False, quantize: str | None = None
               ) -> tuple[LongLLaVAForConditionalGeneration, LongLLaVAProcessor]:
    """Model and processor from a local model folder (never a hub; safetensors unless ``allow_pickle``).

    Args:
        device: ``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda:1"``...
        dtype: ``None``/``"auto"``: bf16 on CUDA, fp32 on CPU.
        quantize: ``"int8"``: the language model's linear layers in 8 bits, Mamba and the
            vision path kept (:mod:`longllava_sdk.quantization`): torch dynamic quantization on
            CPU, bitsandbytes LLM.int8 on CUDA.

    Raises:
        CheckpointError: no such folder, no weights; UnsafeCheckpointError: pickle weights
            without ``allow_pickle``.
    """
    from .modeling.kernels import announce_kernels
    from .modeling.modeling_longllava import LongLLaVAForConditionalGeneration
    from .processing.processor import LongLLaVAProcessor

    from .quantization import QUANTIZE_MODES, bitsandbytes_config, quantize_model

    path = Path(path)
    target = resolve_device(device)
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise CheckpointError(f"unknown {option_hint('quantize', quantize)}; supported: {', '.join(QUANTIZE_MODES)}")
    config = check_model_folder(path, allow_pickle=allow_pickle)
    processor = read_processor(path, config)  # before the weights: a bad folder fails in a second
    use_safetensors = check_weights_safe(path, allow_pickle=allow_pickle)
    extra: dict[str, Any] = {}
    if quantize is not None and target.type == "cuda":  # bitsandbytes quantizes while loading
        extra = {"quantization_config": bitsandbytes_config(), "device_map": {"": target.index or 0}}
    try:
        model = LongLLaVAForConditionalGeneration.from_pretrained(
            path, config=config, dtype=resolve_dtype(dtype, target), use_safetensors=use_safetensors,
            local_files_only=True, **extra,
        )
    except (pickle.UnpicklingError, EOFError, SafetensorError) as exc:
        # a weight file that passed the header check but not the loader (a corrupt pickle, a
        # safetensors file cut short after its header)
        files = ", ".join(sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", *PICKLE_SUFFIXES)))
        raise CheckpointError(f"{path}: the weight files ({files}) cannot be read ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]}); save or download them again") from exc
    if not extra:
        model = model.to(target)
    announce_kernels(target)
    if quantize is not None and target.type == "cpu":
        logger.info(quantize_model(model, quantize).summary())
    return model, processor


def check_model_folder(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> "LongLLaVAConfig":
    """Every check a model folder gets before its weights are read; returns its config.

    Weights present and safe (:func:`check_weights_safe`), ``config.json`` readable
    (:func:`read_model_config`) and, for safetensors, no larger than the weights
    (:func:`check_weights_match_config`).
    """
    use_safetensors = check_weights_safe(path, allow_pickle=allow_pickle)
    config = read_model_config(path)
    if use_safetensors:
        check_weights_match_config(path, config)
    return config


def read_processor(path: str | os.PathLike[str], config: "LongLLaVAConfig") -> "LongLLaVAProcessor":
    """The processor saved in a model folder (tokenizer, image processor, chat template).

    Raises:
        CheckpointError: processor files missing or unreadable (named with the folder).
    """
    from .processing.processor import LongLLaVAProcessor

    try:
        return LongLLaVAProcessor.from_pretrained(path, config=config)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path}: the processor files (tokenizer.json, preprocessor_config.json, "
                              f"longllava_processor.json) cannot be read ({str(exc).splitlines()[0][:200]}); save "
                              "the model folder with longllava-sdk (init-model, finetune, merge, convert-official)"
                              ) from exc


def read_model_config(path: str | os.PathLike[str]) -> "LongLLaVAConfig":
    """The ``config.json`` of a model folder.

    transformers builds a default config when the file is missing, which here would mean
    allocating a 9B model for a folder that holds a tiny one; a missing file is an error.

    Raises:
        CheckpointError: no ``config.json``, or one that is not a LongLLaVA config.
    """
    from .config import LongLLaVAConfig

    file = Path(path) / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{file}: missing; a model folder needs the config.json saved with its weights")
    try:
        return LongLLaVAConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{file}: not a readable LongLLaVA config ({exc})") from exc


def meta_model(config: "LongLLaVAConfig") -> "LongLLaVAForConditionalGeneration":
    """The model of ``config`` on the ``meta`` device: every parameter's shape, no memory."""
    from .modeling.modeling_longllava import LongLLaVAForConditionalGeneration

    with torch.device("meta"):
        return LongLLaVAForConditionalGeneration(config)


def check_weights_match_config(path: str | os.PathLike[str], config: "LongLLaVAConfig") -> None:
    """Refuse a folder whose ``config.json`` describes a larger model than its weights hold.

    Counted on the ``meta`` device (no memory) before anything is allocated, so a config that
    does not belong to its weights fails in a second instead of allocating, and initialising
    at random, a model many times the size of the files.

    Raises:
        CheckpointError: the config needs more parameters than the safetensors files store.
    """
    stored = stored_elements(path)
    needed = sum(p.numel() for p in meta_model(config).parameters())
    if needed > stored:
        raise CheckpointError(f"{Path(path) / 'config.json'}: describes a model of {needed:,} parameters but the "
                              f"weight files hold {stored:,} values; the config and the weights do not belong "
                              "together")


#: Key of ``longllava_training.json`` saying the weights started from a random initialisation
#: (``"tiny preset, seed 0"``): written by ``init-model`` and by fine-tunes of a new preset model,
#: carried into every model made from such a folder, so reports can say "a random-weight demo".
RANDOM_INIT_KEY = "random_init"


def random_init_of(directory: str | os.PathLike[str]) -> str | None:
    """How a model folder's weights were randomly initialised (``"tiny preset, seed 0"``), or
    ``None`` for weights that came from a real checkpoint (or a folder that does not say)."""
    value = read_training_info(directory).get(RANDOM_INIT_KEY)
    return str(value) if value else None


def read_training_info(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """``longllava_training.json`` of a folder (``{}`` when absent or unreadable)."""
    path = Path(directory) / TRAINING_INFO_NAME
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


# -- task heads --------------------------------------------------------------------------------


def save_head(head: TaskHead, directory: str | os.PathLike[str],
              state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``head_config.json`` and (if it has weights) ``head.safetensors`` into ``directory``.

    ``state_dict`` replaces the head's own (the gathered weights under DeepSpeed ZeRO-3).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / HEAD_CONFIG_NAME).write_text(json.dumps(head.config_dict(), indent=2) + "\n")
    tensors = state_dict if state_dict is not None else head.state_dict()
    if tensors:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(directory / HEAD_WEIGHTS_NAME),
                  metadata={"format": "pt"})


def read_head_config(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The saved head config of a folder (``None`` when there is none)."""
    path = Path(directory) / HEAD_CONFIG_NAME
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or "name" not in config:
        raise CheckpointError(f"{path}: a head config needs at least a 'name'")
    return config


def load_head(directory: str | os.PathLike[str], device: str | torch.device | None = None) -> TaskHead | None:
    """Rebuild the task head saved in ``directory`` through the installed plugins (``None`` if none was saved).

    Raises:
        CheckpointError: the head's name is not registered by any installed plugin, or its
            weights are missing / do not match the config.
    """
    from .registry import available_heads

    config = read_head_config(directory)
    if config is None:
        return None
    heads = available_heads()
    name = config["name"]
    if name not in heads:
        raise CheckpointError(f"{Path(directory) / HEAD_CONFIG_NAME}: head {name!r} is not registered by any installed "
                              f"plugin (available: {', '.join(sorted(heads)) or 'none'}); install the plugin that "
                              "provides it")
    head = heads[name].from_config(config)
    weights = Path(directory) / HEAD_WEIGHTS_NAME
    if head.state_dict():
        if not weights.is_file():
            raise CheckpointError(f"{directory}: head {name!r} has weights but {HEAD_WEIGHTS_NAME} is missing")
        from safetensors.torch import load_file

        try:
            head.load_state_dict(load_file(str(weights)), strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{weights}: does not match head config ({exc})") from exc
    if device is not None:
        head.to(device)
    return head.eval()


# -- LoRA adapters -----------------------------------------------------------------------------


def resolve_base_model(adapter_dir: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> Path:
    """The base model of an adapter folder: ``base``, else the one recorded at training time."""
    if base is not None:
        return Path(base)
    adapter_dir = Path(adapter_dir)
    candidates: list[str] = []
    recorded = read_training_info(adapter_dir).get("base_model")
    if recorded:
        candidates.append(str(recorded))
    config = adapter_dir / ADAPTER_CONFIG_NAME
    if config.is_file():
        try:
            recorded = json.loads(config.read_text()).get("base_model_name_or_path")
        except ValueError:
            recorded = None
        if recorded:
            candidates.append(str(recorded))
    for candidate in candidates:
        path = Path(candidate)
        for option in (path, adapter_dir / path, adapter_dir.parent / path.name):
            if (option / "config.json").is_file():
                return option
    raise CheckpointError(f"{adapter_dir}: cannot find the base model (recorded: {candidates or 'nothing'}); "
                          f"pass {option_hint('base', 'DIR')}")


def merge_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Fold LoRA adapters into the base weights (``merge_and_unload``); returns the plain LongLLaVA model.

    ``modules_to_save`` copies (the projector) replace the originals, so the result computes
    exactly what the adapted model computes.
    """
    from .modeling.task_model import unwrap_longllava

    if not hasattr(model, "merge_and_unload"):
        raise CheckpointError(f"{type(model).__name__} has no LoRA adapters to merge")
    return unwrap_longllava(model.merge_and_unload())


def export_merged(peft_model: torch.nn.Module, processor: LongLLaVAProcessor, output: str | os.PathLike[str], *,
                  head: TaskHead | None = None, head_from: str | os.PathLike[str] | None = None,
                  info: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Merge ``peft_model``'s adapters and write the standalone model folder ``output`` (see :func:`save_model`)."""
    return save_model(merge_lora(peft_model), processor, output, head=head, head_from=head_from,
                      info={**(info or {}), "format": "merged"}, overwrite=overwrite)


def merge_adapter(adapter_dir: str | os.PathLike[str], output: str | os.PathLike[str], *,
                  base: str | os.PathLike[str] | None = None, overwrite: bool = False) -> Path:
    """Merge a LoRA adapter folder into its base model; write a standalone model loadable by Pipeline.

    The output holds the merged weights, config, tokenizer / processor files and the task
    head of the run (if it trained one).

    Args:
        adapter_dir: the adapter folder a LoRA run wrote (``runs/<name>/adapter`` or a checkpoint folder).
        output: the model folder to write (must not exist or be empty unless ``overwrite``).
        base: the base model folder (default: the one recorded when training).
        overwrite: replace a non-empty output folder.

    Raises:
        CheckpointError: not an adapter folder, base model not found, output not empty.
    """
    from peft import PeftModel

    from .processing.processor import LongLLaVAProcessor

    adapter = Path(adapter_dir)
    if not (adapter / ADAPTER_CONFIG_NAME).is_file():
        raise CheckpointError(f"{adapter}: not a LoRA adapter folder (no {ADAPTER_CONFIG_NAME})")
    check_weights_safe(adapter)
    base_dir = resolve_base_model(adapter, base)
    model, processor = load_model(base_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    if (adapter / "tokenizer_config.json").is_file():
        processor = LongLLaVAProcessor.from_pretrained(adapter, config=model.config)
    info = {"adapter": str(adapter.resolve()), "base_model": str(base_dir.resolve())}
    if random_init_of(base_dir):
        info[RANDOM_INIT_KEY] = random_init_of(base_dir)
    return export_merged(peft_model, processor, output, head_from=adapter, info=info, overwrite=overwrite)
