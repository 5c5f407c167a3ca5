"""Writing a manifest file atomically: all rows or nothing, never a partial file.

The reader is :func:`longllava_sdk.training.data.read_rows` (what ``finetune --data`` runs);
this module writes the JSONL form it reads (one LLaVA row per line, ``docs/data_formats.md``)
without importing torch, so ``longllava-sdk data import`` starts fast.

Rows are streamed to a hidden temporary file in the target's folder and renamed onto the
target only when the writer closes without an error (``os.replace``: atomic on POSIX and
Windows). An existing target is refused unless ``overwrite`` is set, and is then replaced
in one step, so a reader sees the old manifest or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from .atomic import atomic_file
from .errors import ConfigError, InputError, option_hint

MANIFEST_SUFFIX = ".jsonl"


class ManifestWriter:
    """Appends rows to the temporary file of :func:`atomic_manifest` (one JSON object per line)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self.rows = 0

    def write(self, row: dict[str, Any]) -> None:
        self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.rows += 1


def check_manifest_target(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """The absolute target path, checked before any work: ``.jsonl``, not a folder, absent unless ``overwrite``."""
    target = Path(os.path.abspath(os.fspath(path)))
    if target.suffix.lower() != MANIFEST_SUFFIX:
        raise ConfigError(f"{target}: a manifest is written as JSON Lines; give the output a "
                          f"{MANIFEST_SUFFIX} name")
    if target.is_dir():
        raise InputError(target, "is a folder; the output is a manifest file")
    if target.exists() and not overwrite:
        raise InputError(target, f"already exists; pass {option_hint('overwrite')} to replace it")
    return target


@contextlib.contextmanager
def atomic_manifest(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[ManifestWriter]:
    """Write a JSONL manifest atomically: the file appears, complete, only if the block succeeds.

    Raises:
        ConfigError: the name does not end in ``.jsonl``.
        InputError: the target exists (without ``overwrite``) or is a folder.
    """
    target = check_manifest_target(path, overwrite=overwrite)
    with atomic_file(target, overwrite) as temporary:
        with open(temporary, "w", encoding="utf-8", newline="\n") as handle:
            yield ManifestWriter(handle)
