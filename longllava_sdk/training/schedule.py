"""The optimisation schedule of a run, recorded in every checkpoint and compared on ``--resume``.

A resumed run continues the weights, optimizer, scheduler and data order of its checkpoint;
it finishes with the same weights as an uninterrupted run only if the schedule is the same.
Changing ``--max-steps`` (or the epochs, the learning rate, the batch size, the gradient
accumulation, the warm-up, the number of processes...) silently would give another run under
the old name, so :func:`check_resume_schedule` refuses it and lists every difference::

    runs/ct: --resume would continue checkpoint-10 with another schedule: --max-steps 10 (run: 20),
    --lr 0.001 (run: 0.0002); repeat the run's values, or add --force-schedule to continue with these

``force_schedule`` accepts the new schedule (the checkpoints written from then on record it).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import TrainingError, option_hint
from ..model_folders import TRAINING_INFO_NAME

logger = logging.getLogger(__name__)

__all__ = ["SCHEDULE_TRAINING_ARGS", "schedule_differences", "check_resume_schedule", "recorded_schedule"]

#: ``TrainingArguments`` fields that change the optimisation when set through ``training_args``.
SCHEDULE_TRAINING_ARGS: frozenset[str] = frozenset({
    "max_steps", "num_train_epochs", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
    "warmup_steps", "warmup_ratio", "lr_scheduler_type", "lr_scheduler_kwargs", "weight_decay", "max_grad_norm",
    "seed", "data_seed", "optim", "optim_args", "adam_beta1", "adam_beta2", "adam_epsilon",
})

#: schedule key -> the option that sets it (a finetune argument), or None for recipe / environment keys.
_OPTIONS: dict[str, str | None] = {
    "max_steps": "max_steps", "epochs": "epochs", "learning_rate": "lr", "batch_size": "batch_size",
}


def _describe(key: str, value: Any) -> str:
    """``--max-steps 10`` (CLI) / ``max_steps=10`` (Python); recipe keys as ``training.<key> <value>``."""
    option = _OPTIONS.get(key)
    if option is not None:
        if value is None:  # --max-steps not set / max_steps not set
            return option_hint(option, "VALUE").replace("VALUE", "not set").replace("=not set", " not set")
        return option_hint(option, value)
    if key == "world_size":
        return f"{value} process(es)"
    if key.startswith("training_args."):
        return f"{key} {json.dumps(value, default=str)}"
    return f"recipe training.{key} {value}"


def schedule_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Each schedule key whose value differs, as ``"--max-steps 10 (run: 20)"``, in ``current``'s order.

    The epochs do not count when both runs set ``max_steps`` (the step count then decides).
    """
    differences = []
    ignored = {"epochs"} if current.get("max_steps") and recorded.get("max_steps") else set()
    for key in list(current) + [k for k in recorded if k not in current]:
        if key in ignored:
            continue
        now, then = current.get(key), recorded.get(key)
        if _same(now, then):
            continue
        differences.append(f"{_describe(key, now)} (run: {'not set' if then is None else then})")
    return differences


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def recorded_schedule(checkpoint: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The schedule a checkpoint was trained under (its ``longllava_training.json``), ``None`` if unrecorded."""
    try:
        info = json.loads((Path(checkpoint) / TRAINING_INFO_NAME).read_text())
    except (OSError, ValueError):
        return None
    schedule = info.get("schedule") if isinstance(info, dict) else None
    return schedule if isinstance(schedule, dict) else None


def check_resume_schedule(checkpoint: str | os.PathLike[str], schedule: dict[str, Any], *,
                          force: bool = False) -> list[str]:
    """Refuse to resume ``checkpoint`` under another ``schedule`` unless ``force``; return the differences.

    Raises:
        TrainingError: the schedules differ and ``force`` is false (the message lists them).
    """
    checkpoint = Path(checkpoint)
    recorded = recorded_schedule(checkpoint)
    if recorded is None:
        logger.info("%s records no schedule (written by an older SDK): the resumed schedule is not compared",
                    checkpoint)
        return []
    differences = schedule_differences(recorded, schedule)
    if differences and not force:
        raise TrainingError(f"{checkpoint.parent}: {option_hint('resume')} would continue {checkpoint.name} with "
                            f"another schedule: {', '.join(differences)}; repeat the run's values, or add "
                            f"{option_hint('force_schedule')} to continue with these (the weights will then differ "
                            "from an uninterrupted run)")
    if differences:
        logger.warning("resuming %s with another schedule (forced): %s", checkpoint, ", ".join(differences))
    return differences
