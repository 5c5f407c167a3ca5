"""The run's log as numbers: ``trainer_log.jsonl`` in the run folder and numeric console lines.

``trainer_log.jsonl`` holds one JSON object per logged step, as LLaMA-Factory's file of that
name and the Trainer's ``log_history`` do, with numbers as numbers::

    {"step": 5, "total_steps": 20, "epoch": 0.25, "loss": 0.9436, "grad_norm": 1.82,
     "learning_rate": 0.000196, "elapsed": 12.4}
    {"step": 20, "total_steps": 20, "epoch": 1.0, "eval_loss": 0.71, "eval_accuracy": 0.5, ...}

``elapsed`` is seconds of training since the run began (a resumed run continues from the
last kept line). A resume first drops the lines logged after the checkpoint it resumes from
(they belong to the steps that are trained again), so the file always describes the weights
that exist. Non-finite values (a NaN loss) are written as ``null``: JSON has no NaN.

The console: transformers' progress callbacks print ``{'loss': '0.9436'}`` (floats formatted
into strings); :class:`NumericProgressCallback` / :class:`NumericPrinterCallback` print the
same line as JSON with numbers (``{"loss": 0.9436}``), rounded to 4 significant digits.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerCallback

from .checkpointing import TRAINER_LOG_NAME, kept_checkpoint, storage_errors

__all__ = ["TRAINER_LOG_NAME", "TrainerLogCallback", "NumericProgressCallback", "NumericPrinterCallback",
           "read_trainer_log", "console_numbers"]

#: Trainer log keys that are totals, not per-step figures (kept out of the console, as transformers does).
_NOT_SHOWN = ("total_flos",)


def _number(value: Any) -> Any:
    """A JSON-safe value: floats stay floats (non-finite -> ``None``), ints and strings as they are."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


def console_numbers(logs: dict[str, Any]) -> str:
    """``logs`` as one JSON line, floats rounded to 4 significant digits but still numbers."""
    shown = {}
    for key, value in logs.items():
        if key in _NOT_SHOWN:
            continue
        value = _number(value)
        shown[key] = float(f"{value:.4g}") if isinstance(value, float) else value
    return json.dumps(shown)


def read_trainer_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``trainer_log.jsonl`` (a torn last line, from a kill mid-write, is skipped)."""
    records = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class TrainerLogCallback(TrainerCallback):
    """Appends each ``on_log`` of the main process to ``<output_dir>/trainer_log.jsonl``.

    A write that fails on storage (disk full, read-only) ends the run with a one-line
    :class:`~longllava_sdk.errors.CheckpointError`, as a checkpoint write would.
    """

    def __init__(self) -> None:
        self._started = time.time()
        self._elapsed_before = 0.0

    def _path(self, args: Any) -> Path:
        return Path(args.output_dir) / TRAINER_LOG_NAME

    def _guard(self, args: Any) -> Any:
        return storage_errors(args.output_dir, doing=f"writing {TRAINER_LOG_NAME}",
                              kept=kept_checkpoint(args.output_dir))

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._started = time.time()
        self._elapsed_before = 0.0
        if not state.is_world_process_zero:
            return
        path = self._path(args)
        if not path.is_file():
            return
        kept = [r for r in read_trainer_log(path) if isinstance(r.get("step"), int) and r["step"] <= state.global_step]
        if state.global_step == 0:
            kept = []
        self._elapsed_before = max((float(r.get("elapsed") or 0.0) for r in kept), default=0.0)
        with self._guard(args):
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, path)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        record: dict[str, Any] = {"step": int(state.global_step), "total_steps": int(state.max_steps or 0)}
        if state.epoch is not None:
            record["epoch"] = round(float(state.epoch), 4)
        record.update({k: _number(v) for k, v in logs.items() if k not in ("step", "epoch")})
        record["elapsed"] = round(self._elapsed_before + time.time() - self._started, 3)
        with self._guard(args):
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            with open(self._path(args), "a") as handle:
                handle.write(json.dumps(record) + "\n")


class NumericProgressCallback(ProgressCallback):
    """transformers' progress bar, whose log lines keep numbers as numbers (see the module docstring)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and self.training_bar is not None and logs:
            self.training_bar.write(console_numbers(logs))


class NumericPrinterCallback(PrinterCallback):
    """transformers' printer (used when the progress bar is off), with numbers as numbers."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if state.is_local_process_zero and logs:
            print(console_numbers(logs))
