"""Checkpoints that are complete or absent, resume from the newest complete one, SIGTERM handling.

A run directory looks like::

    runs/medical-domain-lora/
      longllava_run.json            written when the run starts: marks the folder as a run
      checkpoint-20/                every file of one checkpoint, then the marker:
        checkpoint_complete.json      {"step": 20, "files": {name: size, ...}}
      checkpoint-40/ ...
      .checkpoint-60.partial/       a checkpoint being written (or killed while writing)

A checkpoint is written into ``.checkpoint-N.partial``, its marker is written last and the
folder is renamed to ``checkpoint-N`` (an atomic rename on POSIX filesystems). A checkpoint
folder without a marker, or whose files do not match the marker's sizes, is incomplete and
ignored by :func:`latest_complete_checkpoint`.

SIGTERM (SLURM pre-emption, Kubernetes eviction, ``timeout``): :class:`GracefulStop` turns
the signal into a flag; :class:`SigtermCallback` sees it at the next optimizer-step
boundary, asks the Trainer to save a checkpoint and stop, and the trainer then exits with
status 143 (128 + SIGTERM), the status schedulers expect from a terminated job.

Task heads are stored next to the weights as ``head_config.json`` (the head's
``config_dict()``) and ``head.safetensors``; :func:`load_head` rebuilds them.
"""

from __future__ import annotations

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

from ..errors import CheckpointError, ConfigError, TrainingError

logger = logging.getLogger(__name__)

__all__ = [
    "COMPLETE_MARKER",
    "RUN_MARKER",
    "HEAD_CONFIG_NAME",
    "HEAD_WEIGHTS_NAME",
    "SIGTERM_EXIT_CODE",
    "is_complete_checkpoint",
    "list_checkpoints",
    "latest_complete_checkpoint",
    "prepare_output_dir",
    "staged_checkpoint",
    "GracefulStop",
    "SigtermCallback",
    "save_head",
    "load_head",
    "load_classification_head",
]

COMPLETE_MARKER = "checkpoint_complete.json"
RUN_MARKER = "longllava_run.json"
HEAD_CONFIG_NAME = "head_config.json"
HEAD_WEIGHTS_NAME = "head.safetensors"
SIGTERM_EXIT_CODE = 143
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


# ---------------------------------------------------------------------------------------------
# completeness
# ---------------------------------------------------------------------------------------------

def _file_sizes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != COMPLETE_MARKER}


def write_complete_marker(directory: str | os.PathLike[str], step: int) -> Path:
    """Write the marker (last): the step and the size of every file in ``directory``."""
    directory = Path(directory)
    marker = {"step": int(step), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": _file_sizes(directory)}
    tmp = directory / f".{COMPLETE_MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=1) + "\n")
    os.replace(tmp, directory / COMPLETE_MARKER)
    return directory / COMPLETE_MARKER


def is_complete_checkpoint(directory: str | os.PathLike[str]) -> bool:
    """True when ``directory`` has a marker and every file it lists exists with the listed size."""
    directory = Path(directory)
    try:
        marker = json.loads((directory / COMPLETE_MARKER).read_text())
        files = marker["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not isinstance(files, dict) or not files:
        return False
    for name, size in files.items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[tuple[int, Path, bool]]:
    """``(step, path, complete)`` for every ``checkpoint-N`` folder, by step."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for child in output_dir.iterdir():
        match = _CHECKPOINT_DIR.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child, is_complete_checkpoint(child)))
    return sorted(found)


def latest_complete_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The complete checkpoint with the highest step in ``output_dir`` (``None`` if there is none).

    Incomplete ones (killed while being written, or damaged) are skipped with a warning.
    """
    checkpoints = list_checkpoints(output_dir)
    for step, path, complete in reversed(checkpoints):
        if complete:
            return path
        logger.warning("skipping incomplete checkpoint %s (no valid %s)", path, COMPLETE_MARKER)
    return None


# ---------------------------------------------------------------------------------------------
# output directory policy
# ---------------------------------------------------------------------------------------------

def prepare_output_dir(output_dir: str | os.PathLike[str], *, resume: bool = False, overwrite: bool = False,
                       run_info: dict[str, Any] | None = None) -> Path | None:
    """Check (and create) a run's output directory; return the checkpoint to resume from.

    * empty or missing: created; returns ``None``;
    * not empty: refused with :class:`TrainingError` unless ``resume`` (returns the newest
      complete checkpoint; none is an error) or ``overwrite`` (the old run is deleted; only
      a folder this SDK created, i.e. holding ``longllava_run.json``, is ever deleted).

    ``run_info`` is written to ``longllava_run.json`` (for a fresh or overwritten run).
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: pick one")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise TrainingError(f"{output_dir}: output path exists and is not a directory")
    non_empty = output_dir.is_dir() and any(output_dir.iterdir())
    if non_empty and resume:
        checkpoint = latest_complete_checkpoint(output_dir)
        if checkpoint is None:
            raise TrainingError(f"{output_dir}: --resume given but the folder holds no complete checkpoint "
                                f"(checkpoint-N with {COMPLETE_MARKER}); start a new run with --overwrite")
        return checkpoint
    if resume:
        raise TrainingError(f"{output_dir}: --resume given but there is no previous run in this folder")
    if non_empty:
        if not overwrite:
            raise TrainingError(f"{output_dir}: output directory exists and is not empty; pass --resume to "
                                "continue its run or --overwrite to replace it (or choose another --output)")
        if not (output_dir / RUN_MARKER).is_file():
            raise TrainingError(f"{output_dir}: --overwrite refuses to delete a folder that is not a longllava-sdk "
                                f"run (no {RUN_MARKER}); delete it yourself or choose another --output")
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


@contextmanager
def staged_checkpoint(run_dir: str | os.PathLike[str], step: int, *, is_main: bool = True) -> Iterator[Path]:
    """Yield ``run_dir/.checkpoint-{step}.partial`` to write into; on success, mark it complete
    and rename it to ``run_dir/checkpoint-{step}``.

    In multi-process runs every rank writes into the same staging folder (DeepSpeed writes
    one shard per rank); ``is_main`` (the saving process) prepares it, writes the marker and
    renames, with barriers in between. An exception leaves the partial folder behind, which
    is never mistaken for a checkpoint (wrong name, no marker) and is replaced next time.
    """
    run_dir = Path(run_dir)
    staging = run_dir / f".checkpoint-{step}.partial"
    final = run_dir / f"checkpoint-{step}"
    if is_main:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    _barrier()
    yield staging
    _barrier()
    if is_main:
        write_complete_marker(staging, step)
        if final.exists():  # e.g. saved again at the same step after a resume
            old = run_dir / f".checkpoint-{step}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
        _fsync_dir(run_dir)
    _barrier()


def _fsync_dir(directory: Path) -> None:
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


# ---------------------------------------------------------------------------------------------
# task heads on disk
# ---------------------------------------------------------------------------------------------

def save_head(head: torch.nn.Module, directory: str | os.PathLike[str],
              state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``head_config.json`` and (if it has weights) ``head.safetensors`` into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / HEAD_CONFIG_NAME).write_text(json.dumps(head.config_dict(), indent=2) + "\n")  # type: ignore[operator]
    tensors = state_dict if state_dict is not None else head.state_dict()
    if tensors:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(directory / HEAD_WEIGHTS_NAME),
                  metadata={"format": "pt"})


def read_head_config(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The saved head config of a model / checkpoint directory (``None`` when there is none)."""
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


def load_head(directory: str | os.PathLike[str], device: str | torch.device | None = None) -> torch.nn.Module | None:
    """Rebuild the task head saved in ``directory`` (``None`` if none was saved).

    Raises:
        CheckpointError: the head's name is not registered by any installed plugin, or its
            weights are missing / do not match the config.
    """
    from ..heads import available_heads

    config = read_head_config(directory)
    if config is None:
        return None
    heads = available_heads()
    name = config["name"]
    if name not in heads:
        raise CheckpointError(f"{Path(directory) / HEAD_CONFIG_NAME}: head {name!r} is not registered by any installed "
                              f"plugin (available: {', '.join(sorted(heads)) or 'none'})")
    head = heads[name].from_config(config)
    weights = Path(directory) / HEAD_WEIGHTS_NAME
    expected = head.state_dict()
    if expected:
        if not weights.is_file():
            raise CheckpointError(f"{directory}: head {name!r} has weights but {HEAD_WEIGHTS_NAME} is missing")
        from safetensors.torch import load_file

        state = load_file(str(weights))
        try:
            head.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{weights}: does not match head config ({exc})") from exc
    if device is not None:
        head.to(device)
    return head.eval()


def load_classification_head(directory: str | os.PathLike[str],
                             device: str | torch.device | None = None) -> torch.nn.Module | None:
    """The saved ``classify`` / ``multilabel`` head of ``directory``; ``None`` for none or a
    ``generate`` head (which is the language model's own ``lm_head``)."""
    config = read_head_config(directory)
    if config is None or config.get("problem_type") == "generate":
        return None
    return load_head(directory, device=device)
