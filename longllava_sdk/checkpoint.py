"""Safe checkpoint I/O: safetensors only, atomic directory writes.

Pickle-based weight files (``.bin``, ``.pt``...) can execute code when loaded, so they are
refused unless the caller passes ``allow_pickle=True`` explicitly. Directories are written
to a temporary sibling and renamed into place, so an interrupted save never leaves a
half-written checkpoint where a complete one is expected.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from . import local_files
# The folder swap lives in .atomic (no torch); these names stay importable from here.
from .atomic import atomic_directory, replace_directory, sync_directory  # noqa: F401
from .errors import CheckpointError, LongLLaVAError, UnsafeCheckpointError, option_hint

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def model_file_names(directory: str | os.PathLike[str]) -> list[str]:
    """Names of the regular files of a model folder (its sub-folders aside), each ``lstat``-ed.

    transformers, tokenizers and safetensors open a model folder's files by path, so the folder
    is checked before any of them does: a FIFO, socket or device among its files (where
    ``open()`` would block or never end) is a :class:`CheckpointError` naming it
    (:func:`longllava_sdk.local_files.regular_files`).
    """
    try:
        return [p.name for p in local_files.regular_files(directory, skip_hidden=False, what="model file")]
    except LongLLaVAError as exc:
        raise CheckpointError(str(exc)) from None


def check_weights_safe(directory: str | os.PathLike[str], allow_pickle: bool = False) -> bool:
    """Check ``directory`` holds loadable weights; return ``True`` if they are safetensors.

    Raises:
        CheckpointError: no directory, no weight files at all, or a FIFO, socket or device
            among its files (see :func:`model_file_names`).
        UnsafeCheckpointError: only pickle weight files and ``allow_pickle`` is false.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory does not exist")
    names = model_file_names(directory)
    if any(n.endswith(".safetensors") for n in names):
        return True
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles and not allow_pickle:
        raise UnsafeCheckpointError(
            f"{directory}: weights are stored as pickle ({', '.join(pickles[:3])}), which can run arbitrary "
            f"code when loaded; convert them to safetensors, or pass {option_hint('allow_pickle')} if you trust "
            "the source"
        )
    if not pickles:
        raise CheckpointError(f"{directory}: no weight files (*.safetensors) found")
    return False


def stored_elements(directory: str | os.PathLike[str]) -> int:
    """Number of tensor elements the ``*.safetensors`` files of ``directory`` hold (headers only).

    Reading the headers costs kilobytes, whatever the weights weigh, so a corrupt or foreign
    file is named here instead of failing deep inside a loader.

    Raises:
        CheckpointError: a file that is not readable safetensors (truncated, not safetensors).
    """
    from safetensors import SafetensorError, safe_open

    total = 0
    for path in sorted(Path(directory).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    total += math.prod(handle.get_slice(key).get_shape())
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc}); save or download it "
                                  "again") from exc
    return total


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None`` -> CUDA if available else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` -> bf16 on CUDA, fp32 on CPU; strings like ``"bfloat16"`` accepted."""
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        try:
            return getattr(torch, dtype)
        except AttributeError as exc:
            raise CheckpointError(f"unknown dtype {dtype!r}") from exc
    return dtype
