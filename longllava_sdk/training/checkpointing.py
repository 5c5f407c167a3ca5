"""Checkpoints that are complete or absent, resume from the newest complete one, SIGTERM handling.

A run directory looks like::

    runs/medical-domain-lora/
      longllava_run.json            written when the run starts: marks the folder as a run
      run.json, trainer_log.jsonl   the resolved configuration; one JSON object per logged step
      checkpoint-20/                every file of one checkpoint, then the marker:
        checkpoint_complete.json      {"step": 20, "files": {name: size, ...}}
      checkpoint-40/ ...
      .checkpoint-60.partial/       a checkpoint being written (or killed while writing)

A checkpoint is written into ``.checkpoint-N.partial``, its marker is written last and the
folder is renamed to ``checkpoint-N`` (an atomic rename on POSIX filesystems). A checkpoint
folder without a marker, or whose files do not match the marker's sizes, is incomplete and
ignored by :func:`latest_complete_checkpoint`.

Storage faults (disk full, quota, read-only filesystem, permission denied, file-size limit,
I/O error) are recognised whatever layer reports them -- an ``OSError``, safetensors'
``SafetensorError`` ("os error 28"), torch.save's ``RuntimeError: [enforce fail at
inline_container.cc...]`` -- and become one-line :class:`~longllava_sdk.errors.CheckpointError`
s naming the file, the cause and what was kept (:func:`storage_fault`); the staging folder of
the failed write is removed.

SIGTERM (SLURM pre-emption, Kubernetes eviction, ``timeout``): :class:`GracefulStop` turns
the signal into a flag; :class:`SigtermCallback` sees it at the next optimizer-step
boundary, asks the Trainer to save a checkpoint and stop, and the trainer then exits with
status 143 (128 + SIGTERM), the status schedulers expect from a terminated job.

Task heads are stored next to the weights (:mod:`longllava_sdk.model_folders`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers.trainer_callback import TrainerCallback

from ..atomic import replace_directory, sync_directory
from ..errors import CheckpointError, ConfigError, TrainingError, option_hint

logger = logging.getLogger(__name__)

__all__ = [
    "COMPLETE_MARKER",
    "RUN_MARKER",
    "RUN_CONFIG_NAME",
    "TRAINER_LOG_NAME",
    "SIGTERM_EXIT_CODE",
    "is_complete_checkpoint",
    "list_checkpoints",
    "latest_complete_checkpoint",
    "checkpoint_problem",
    "check_output_dir",
    "check_writable",
    "kept_checkpoint",
    "prepare_output_dir",
    "staged_checkpoint",
    "staged_export",
    "storage_fault",
    "storage_errors",
    "GracefulStop",
    "SigtermCallback",
]

COMPLETE_MARKER = "checkpoint_complete.json"
RUN_MARKER = "longllava_run.json"
#: The resolved configuration of a run (written by :func:`~.finetuning.write_run_config`).
RUN_CONFIG_NAME = "run.json"
#: One JSON object per logged step (:mod:`.run_log`).
TRAINER_LOG_NAME = "trainer_log.jsonl"
SIGTERM_EXIT_CODE = 143
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


# ---------------------------------------------------------------------------------------------
# completeness
# ---------------------------------------------------------------------------------------------

_HASH_CHUNK = 8 * 1024 * 1024


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 8 MiB chunks (bounded memory for multi-GB shards)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _file_records(directory: Path) -> dict[str, dict[str, Any]]:
    return {str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != COMPLETE_MARKER}


def write_complete_marker(directory: str | os.PathLike[str], step: int) -> Path:
    """Write the marker (last): the step and the size and SHA-256 of every file in ``directory``."""
    directory = Path(directory)
    marker = {"step": int(step), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": _file_records(directory)}
    tmp = directory / f".{COMPLETE_MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=1) + "\n")
    os.replace(tmp, directory / COMPLETE_MARKER)
    return directory / COMPLETE_MARKER


def checkpoint_problem(directory: str | os.PathLike[str], verify: bool = False) -> str | None:
    """Why ``directory`` is not a usable checkpoint (``None``: it is).

    Always checked: the marker exists and every file it lists exists with the listed size (a
    kill during the save, a missing or truncated shard). With ``verify`` every file's SHA-256
    is recomputed too (a shard corrupted in place: same size, other bytes).
    """
    directory = Path(directory)
    try:
        marker = json.loads((directory / COMPLETE_MARKER).read_text())
        files = marker["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no valid {COMPLETE_MARKER} (killed while saving?)"
    if not isinstance(files, dict) or not files:
        return f"{COMPLETE_MARKER} lists no files"
    for name, record in files.items():
        size, digest = (record, None) if isinstance(record, int) else (record.get("size"), record.get("sha256"))
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the marker recorded {size}"
        if verify and digest is not None and file_sha256(path) != digest:
            return f"{name} is corrupt (its SHA-256 differs from the one recorded when it was saved)"
    return None


def is_complete_checkpoint(directory: str | os.PathLike[str], verify: bool = False) -> bool:
    """True when :func:`checkpoint_problem` finds nothing wrong."""
    return checkpoint_problem(directory, verify=verify) is None


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[tuple[int, Path, bool]]:
    """``(step, path, complete)`` for every ``checkpoint-N`` folder, by step (sizes checked, not hashes)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for child in output_dir.iterdir():
        match = _CHECKPOINT_DIR.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child, is_complete_checkpoint(child)))
    return sorted(found)


def latest_complete_checkpoint(output_dir: str | os.PathLike[str], verify: bool = False) -> Path | None:
    """The complete checkpoint with the highest step in ``output_dir`` (``None`` if there is none).

    Incomplete or damaged ones (killed while being written, a missing / truncated shard, with
    ``verify`` also a corrupt one) are skipped with a warning naming the problem, so a resume
    falls back to the previous good checkpoint instead of loading a partial one.
    """
    for _step, path, _ in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(path, verify=verify)
        if problem is None:
            return path
        logger.warning("skipping checkpoint %s: %s", path, problem)
    return None


# ---------------------------------------------------------------------------------------------
# storage faults
# ---------------------------------------------------------------------------------------------

#: errno -> (the cause in words, what to do about it).
_STORAGE_ERRNOS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device (ENOSPC)", "free space"),
    errno.EDQUOT: ("disk quota exceeded (EDQUOT)", "free space within your quota or raise it"),
    errno.EROFS: ("read-only file system (EROFS)", "make the output folder writable"),
    errno.EACCES: ("permission denied (EACCES)", "make the output folder writable for this user"),
    errno.EPERM: ("operation not permitted (EPERM)", "make the output folder writable for this user"),
    errno.EFBIG: ("file too large for the file-size limit (EFBIG)", "raise the limit (ulimit -f)"),
    errno.EIO: ("input/output error (EIO)", "check the disk"),
}
_BY_STRERROR = {os.strerror(code): code for code in _STORAGE_ERRNOS}
#: What torch.save's C++ writer (caffe2's PyTorchStreamWriter) puts in its RuntimeError.
_TORCH_WRITER = ("inline_container.cc", "PytorchStreamWriter")
#: Below this much free space a write that failed without saying why is taken for a full disk.
_NEARLY_FULL = 1 << 20


def _storage_errno(exc: BaseException) -> int | None:
    """The errno behind a failed write, however the writing library reported it.

    ``OSError`` carries it; safetensors' Rust writer says ``(os error 28)``; torch.save's
    C++ writer says ``strerror: Read-only file system`` when ``open`` fails.
    """
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        return exc.errno
    text = str(exc)
    found = re.search(r"\(os error (\d+)\)", text)
    if found and int(found.group(1)) in _STORAGE_ERRNOS:
        return int(found.group(1))
    found = re.search(r"strerror: ([^\n]+?)\s*$", text, re.MULTILINE)
    if found and found.group(1).strip() in _BY_STRERROR:
        return _BY_STRERROR[found.group(1).strip()]
    return None


def _free_bytes(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                stats = os.statvfs(candidate)
            except OSError:
                return None
            return stats.f_bavail * stats.f_frsize
    return None


def _file_named(exc: BaseException, folder: Path, since_ns: int) -> Path:
    """The file a failed write was writing: the exception's own ``filename``, else the newest
    file under ``folder`` created since the write began (a partly written ``optimizer.pt``),
    else ``folder`` itself (the library removed its temporary file, or nothing was created)."""
    name = getattr(exc, "filename", None)
    if name:
        return Path(name)
    newest: tuple[int, Path] | None = None
    if folder.is_dir():
        for path in folder.rglob("*"):
            try:
                mtime = path.stat().st_mtime_ns
            except OSError:
                continue
            if path.is_file() and mtime >= since_ns and (newest is None or mtime > newest[0]):
                newest = (mtime, path)
    return newest[1] if newest else folder


def storage_fault(exc: BaseException, folder: str | os.PathLike[str], *, doing: str, kept: str,
                  resume: bool = True, since_ns: int = 0) -> CheckpointError | None:
    """A one-line :class:`CheckpointError` for ``exc`` if it is a storage fault, else ``None``.

    Args:
        exc: what the write raised (``OSError``, ``SafetensorError``, torch.save's ``RuntimeError``).
        folder: where it was writing (the file is found inside it, see :func:`_file_named`).
        doing: what was being written, for the message (``"writing checkpoint-3"``).
        kept: what is intact, for the message (``"the last complete checkpoint, ..., is intact"``).
        resume: advise rerunning with ``--resume`` (a run with a checkpoint to continue from);
            else advise another ``--output``.
        since_ns: when the write began (``time.time_ns()``), to find the file it was writing.

    torch.save's writer reports a full disk only as ``unexpected pos 576 vs 534``: a failure of
    that writer is taken for a full disk when under 1 MiB is free, else reported as it is
    (with a word on quotas, which ``statvfs`` cannot see).
    """
    if isinstance(exc, CheckpointError):
        return None
    folder = Path(folder)
    code = _storage_errno(exc)
    if code is None and not any(mark in str(exc) for mark in _TORCH_WRITER):
        return None
    where = _file_named(exc, folder, since_ns)
    if code is None:
        free = _free_bytes(folder)
        if free is not None and free < _NEARLY_FULL:
            code = errno.ENOSPC
    if code is None:
        cause = f"torch.save failed ({' '.join(str(exc).split())}; is the disk full or over its quota?)"
        advice = "check the space and quota of the output folder"
    else:
        cause, advice = _STORAGE_ERRNOS[code]
    then = (f" and rerun with {option_hint('resume')}" if resume
            else f" or choose another {option_hint('output', 'DIR')}")
    return CheckpointError(f"{where}: {cause} while {doing}; {kept}; {advice}{then}")


@contextmanager
def storage_errors(folder: str | os.PathLike[str], *, doing: str, kept: str, resume: bool = True) -> Iterator[None]:
    """Turn a storage fault raised inside the block into :func:`storage_fault`'s ``CheckpointError``."""
    since = time.time_ns()
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a storage fault
        error = storage_fault(exc, folder, doing=doing, kept=kept, resume=resume, since_ns=since)
        if error is None:
            raise
        raise error from exc


def kept_checkpoint(run_dir: str | os.PathLike[str]) -> str:
    """``"the last complete checkpoint, <path>, is intact"`` (or that none exists) for fault messages."""
    previous = latest_complete_checkpoint(run_dir) if Path(run_dir).is_dir() else None
    return f"the last complete checkpoint, {previous}, is intact" if previous else "no earlier checkpoint exists"


# ---------------------------------------------------------------------------------------------
# output directory policy
# ---------------------------------------------------------------------------------------------

#: What a run folder holds before its first checkpoint: a rerun may start it over.
_BEFORE_FIRST_CHECKPOINT = {RUN_MARKER, RUN_CONFIG_NAME, TRAINER_LOG_NAME, "base-model"}


def _unstarted(output_dir: Path) -> bool:
    """A run folder of this SDK that died before writing its first checkpoint or any export."""
    if not (output_dir / RUN_MARKER).is_file():
        return False
    for child in output_dir.iterdir():
        if child.name in _BEFORE_FIRST_CHECKPOINT or (child.name.startswith(".checkpoint-")
                                                      and child.name.endswith(".partial")):
            continue
        if child.name.startswith(".") and (".tmp-" in child.name or ".deleting-" in child.name):
            continue  # an interrupted atomic write of base-model/
        return False
    return True


def check_output_dir(output_dir: str | os.PathLike[str], *, resume: bool = False, overwrite: bool = False,
                     run_info: dict[str, Any] | None = None) -> Path | None:
    """Decide what a run does with its output folder, without touching it; return the checkpoint to resume.

    * missing, empty, or a run of the same settings that stopped before its first checkpoint
      (``run_info`` equal to the one it recorded): a fresh run;
    * not empty: refused with :class:`TrainingError` unless ``resume`` (the newest complete
      checkpoint; none is an error) or ``overwrite`` (allowed only for a folder this SDK
      created, i.e. holding ``longllava_run.json``).
    """
    if resume and overwrite:
        raise ConfigError(f"{option_hint('resume')} and {option_hint('overwrite')} contradict each other: pick one")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise TrainingError(f"{output_dir}: output path exists and is not a directory")
    check_writable(output_dir)
    non_empty = output_dir.is_dir() and any(output_dir.iterdir())
    if resume:
        checkpoint = latest_complete_checkpoint(output_dir, verify=True) if non_empty else None
        if checkpoint is None:
            what = "holds no complete checkpoint (checkpoint-N with " + COMPLETE_MARKER + ")" if non_empty \
                else "holds no previous run"
            raise TrainingError(f"{output_dir}: {option_hint('resume')} given but the folder {what}; start a new run "
                                f"with {option_hint('overwrite')}")
        return checkpoint
    if non_empty and not overwrite and not (_unstarted(output_dir) and _same_run(output_dir, run_info)):
        raise TrainingError(f"{output_dir}: output directory exists and is not empty; pass {option_hint('resume')} "
                            f"to continue its run or {option_hint('overwrite')} to replace it (or choose another "
                            f"{option_hint('output', 'DIR')})")
    if non_empty and not (output_dir / RUN_MARKER).is_file():
        raise TrainingError(f"{output_dir}: {option_hint('overwrite')} refuses to delete a folder that is not a "
                            f"longllava-sdk run (no {RUN_MARKER}); delete it yourself or choose another "
                            f"{option_hint('output', 'DIR')}")
    return None


def check_writable(output_dir: str | os.PathLike[str]) -> None:
    """Refuse (:class:`CheckpointError`) a run folder that cannot be written, before any work.

    The folder, or its nearest existing parent, must be writable: a read-only filesystem
    (``statvfs``'s ``ST_RDONLY``) or missing permission is named now rather than after the
    data was prepared. Disk space cannot be checked this way (a checkpoint's size is known
    only when it is written): a full disk is reported when a write fails (:func:`storage_fault`).
    """
    output_dir = Path(output_dir)
    existing = next((p for p in (output_dir, *output_dir.parents) if p.exists()), None)
    if existing is None or os.access(existing, os.W_OK | os.X_OK):
        return
    try:
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    cause = _STORAGE_ERRNOS[errno.EROFS if read_only else errno.EACCES][0]
    where = "" if existing == output_dir else f" (the run folder {output_dir} would be created in it)"
    raise CheckpointError(f"{existing}: {cause}{where}; nothing was written; make it writable or choose another "
                          f"{option_hint('output', 'DIR')}")


def _same_run(output_dir: Path, run_info: dict[str, Any] | None) -> bool:
    if not run_info:
        return False
    try:
        recorded = json.loads((output_dir / RUN_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return all(recorded.get(k) == v for k, v in run_info.items())


def prepare_output_dir(output_dir: str | os.PathLike[str], *, resume: bool = False, overwrite: bool = False,
                       run_info: dict[str, Any] | None = None) -> Path | None:
    """Apply :func:`check_output_dir`'s decision: create (or clear) the folder; return the checkpoint to resume.

    ``run_info`` is written to ``longllava_run.json`` for a fresh run.
    """
    output_dir = Path(output_dir)
    checkpoint = check_output_dir(output_dir, resume=resume, overwrite=overwrite, run_info=run_info)
    if checkpoint is not None:
        return checkpoint
    with storage_errors(output_dir, doing="creating the run folder", kept="no checkpoint was written", resume=False):
        if output_dir.is_dir() and any(output_dir.iterdir()):
            trash = output_dir.with_name(f".{output_dir.name}.deleting-{os.getpid()}")
            os.replace(output_dir, trash)
            shutil.rmtree(trash, ignore_errors=True)
        output_dir.mkdir(parents=True, exist_ok=True)
        info = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(run_info or {})}
        (output_dir / RUN_MARKER).write_text(json.dumps(info, indent=1, default=str) + "\n")
    return None


# ---------------------------------------------------------------------------------------------
# atomic checkpoint directories
# ---------------------------------------------------------------------------------------------

def _dist() -> tuple[bool, int]:
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    return initialised, (torch.distributed.get_rank() if initialised else 0)


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _fresh_staging(staging: Path, is_main: bool) -> None:
    """An empty ``staging`` folder (a leftover from a killed attempt is removed), then a barrier."""
    if is_main:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    _barrier()


@contextmanager
def staged_export(target: str | os.PathLike[str], *, is_main: bool = True) -> Iterator[Path]:
    """Yield ``.<name>.partial`` beside ``target`` to write an export into; rename it to ``target``
    only when the block completes (an interrupted or failed export leaves no half-written
    ``target``). Collective in multi-process runs, like :func:`staged_checkpoint`."""
    target = Path(target)
    staging = target.with_name(f".{target.name}.partial")
    _fresh_staging(staging, is_main)
    try:
        yield staging
    except BaseException:
        if is_main:  # a failed write (a full disk) leaves nothing behind and frees what it took
            shutil.rmtree(staging, ignore_errors=True)
        raise
    _barrier()
    if is_main:
        replace_directory(staging, target)
    _barrier()


@contextmanager
def staged_checkpoint(run_dir: str | os.PathLike[str], step: int, *, is_main: bool = True) -> Iterator[Path]:
    """Yield ``run_dir/.checkpoint-{step}.partial`` to write into; on success, mark it complete
    and rename it to ``run_dir/checkpoint-{step}``.

    In multi-process runs every rank writes into the same staging folder (DeepSpeed writes
    one shard per rank); ``is_main`` (the saving process) prepares it, writes the marker and
    renames, with barriers in between. An exception (a full disk) removes the partial folder,
    freeing what it took; a kill leaves it behind, where it is never mistaken for a checkpoint
    (wrong name, no marker) and is replaced next time.
    """
    run_dir = Path(run_dir)
    staging = run_dir / f".checkpoint-{step}.partial"
    final = run_dir / f"checkpoint-{step}"
    _fresh_staging(staging, is_main)
    try:
        yield staging
        _barrier()
        if is_main:
            write_complete_marker(staging, step)
    except BaseException:
        if is_main:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if is_main:
        if final.exists() and is_complete_checkpoint(final):
            # Saved again at the same step (a resume at the last step): the complete one holds the
            # same state. Replacing it would take two renames, and a kill between them would
            # leave no checkpoint-N at all, so the new copy is dropped instead.
            shutil.rmtree(staging, ignore_errors=True)
        else:
            if final.exists():  # damaged: never the newest complete checkpoint, safe to drop first
                shutil.rmtree(final)
            os.replace(staging, final)
        sync_directory(run_dir)
    _barrier()


# ---------------------------------------------------------------------------------------------
# SIGTERM
# ---------------------------------------------------------------------------------------------

class GracefulStop:
    """Turns SIGTERM into a flag that training checks at step boundaries.

    ``install()`` only works in the main thread (Python delivers signals there); elsewhere
    it does nothing and says so. ``restore()`` puts the previous handler back.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)) -> None:
        self.signals = signals
        self.requested = False
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.requested:
            logger.warning("received signal %d: saving a checkpoint at the next step boundary, then exiting with %d",
                           signum, SIGTERM_EXIT_CODE)
        self.requested = True
        self.received = signum

    def install(self) -> "GracefulStop":
        if threading.current_thread() is not threading.main_thread():
            logger.info("not in the main thread: SIGTERM handling left to the caller")
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def __enter__(self) -> "GracefulStop":
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.restore()


class SigtermCallback(TrainerCallback):
    """At the end of each optimizer step, if a stop was requested (on any rank): save and stop.

    In multi-process runs the flag is OR-reduced across ranks every step, so all ranks stop
    at the same step even when the signal reached only some of them.
    """

    def __init__(self, stop: GracefulStop) -> None:
        self.stop = stop

    def _requested_anywhere(self, args: Any) -> bool:
        flag = self.stop.requested
        initialised, _ = _dist()
        if initialised:
            device = args.device if getattr(args.device, "type", "cpu") != "cpu" else torch.device("cpu")
            tensor = torch.tensor([1.0 if flag else 0.0], device=device)
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
            flag = bool(tensor.item() > 0)
            self.stop.requested = self.stop.requested or flag
        return flag

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self._requested_anywhere(args):
            control.should_save = True
            control.should_training_stop = True
        return control
