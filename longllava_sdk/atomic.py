"""Folders and files that appear complete or not at all: one staging swap for every writer.

Folders: model exports (:mod:`longllava_sdk.checkpoint` re-exports these names), the trainer's
staged exports and ``data deidentify``. Files (:func:`atomic_file`): manifests written by
``data import`` and answers written by ``export``. No torch here, so torch-free commands can use it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import CheckpointError, InputError, option_hint


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


@contextmanager
def atomic_file(target: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target`` that is renamed onto it only if the block succeeds.

    The block writes the file at the yielded path (closing it); the file is then synced, made
    ``0644`` and moved onto ``target`` with ``os.replace`` (atomic), and the folder synced. A
    failing block removes the temporary file and leaves ``target`` as it was. A ``target``
    that appeared meanwhile is refused unless ``overwrite`` (callers check it before the work too).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial" + target.suffix, dir=target.parent)
    os.close(fd)
    try:
        yield Path(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; the output is an ordinary shared file
        if target.exists() and not overwrite:  # appeared while we were writing
            raise InputError(target, f"already exists; pass {option_hint('overwrite')} to replace it")
        os.replace(temporary, target)
        sync_directory(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
