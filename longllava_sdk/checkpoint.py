"""Safe checkpoint I/O: safetensors only, atomic directory writes.

Pickle-based weight files (``.bin``, ``.pt``...) can execute code when loaded, so they are
refused unless the caller passes ``allow_pickle=True`` explicitly. Directories are written
to a temporary sibling and renamed into place, so an interrupted save never leaves a
half-written checkpoint where a complete one is expected.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from .errors import CheckpointError, UnsafeCheckpointError, option_hint

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def check_weights_safe(directory: str | os.PathLike[str], allow_pickle: bool = False) -> bool:
    """Check ``directory`` holds loadable weights; return ``True`` if they are safetensors.

    Raises:
        CheckpointError: no directory or no weight files at all.
        UnsafeCheckpointError: only pickle weight files and ``allow_pickle`` is false.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory does not exist")
    names = [p.name for p in directory.iterdir() if p.is_file()]
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


@contextmanager
def atomic_directory(target: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` only if the block succeeds.

    A non-empty ``target`` is refused unless ``overwrite`` is true; then it is replaced only
    after the new content is complete.
    """
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise CheckpointError(f"{target}: output exists and is not empty (pass {option_hint('overwrite')} to "
                              "replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_directory(staging, target)


def replace_directory(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Put the complete folder ``staging`` at ``target`` (same file system), replacing an existing
    ``target`` only now that the new content is whole; the parent folder is synced.

    The one swap behind :func:`atomic_directory` and the trainer's staged exports.
    """
    staging, target = Path(staging), Path(target)
    if target.exists():
        trash = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, trash)
        os.replace(staging, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, target)
    sync_directory(target.parent)


def sync_directory(directory: str | os.PathLike[str]) -> None:
    """``fsync`` a folder so that renames in it survive a crash (best effort: not every file
    system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
