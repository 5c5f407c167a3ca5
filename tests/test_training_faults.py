"""Training under faults: a failed checkpoint write, a NaN loss. Nothing good is ever lost."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from longllava_sdk.errors import CheckpointError, TrainingError
from trainer_fixtures import builtin_plugins, one_torch_thread  # noqa: F401  (autouse fixtures)
from trainer_fixtures import write_colour_dataset, write_micro_model

ADAPTER = "adapter_model.safetensors"


def _run(tmp_path, name="run", **overrides):
    from longllava_sdk.training.finetuning import finetune

    if not (tmp_path / "base").exists():
        write_colour_dataset(tmp_path / "data", n=12, head="classify", eval_fraction=0.25,
                             training={"batch_size": 2, **overrides.pop("training", {})})
        write_micro_model(tmp_path / "base")
    recipe, base = tmp_path / "data" / "recipe.yaml", tmp_path / "base"
    kwargs = dict(model=str(base), output=str(tmp_path / name), max_steps=4, save_steps=1)
    kwargs.update(overrides)
    return finetune(str(recipe), **kwargs)


def _weights(folder):
    return load_file(str(folder / ADAPTER))


def test_a_failed_checkpoint_write_fails_cleanly_and_keeps_the_previous_one(tmp_path, monkeypatch):
    from longllava_sdk.training.checkpointing import checkpoint_problem, latest_complete_checkpoint
    from longllava_sdk.training.trainer import LongLLaVATrainer

    original = LongLLaVATrainer._save

    def disk_full_at_step_3(self, output_dir=None, state_dict=None):
        if self.state.global_step == 3:
            (Path(output_dir) / "adapter_model.safetensors").write_bytes(b"half a shard")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, output_dir, state_dict)

    monkeypatch.setattr(LongLLaVATrainer, "_save", disk_full_at_step_3)
    with pytest.raises(CheckpointError) as caught:
        _run(tmp_path)
    run = tmp_path / "run"
    message = str(caught.value)
    assert "writing checkpoint-3 failed (No space left on device)" in message
    assert f"{run / 'checkpoint-2'}, is intact" in message and "resume=True" in message
    assert checkpoint_problem(run / "checkpoint-2", verify=True) is None
    assert not (run / "checkpoint-3").exists()
    assert (run / ".checkpoint-3.partial").exists()  # left behind, never marked complete
    assert latest_complete_checkpoint(run, verify=True) == run / "checkpoint-2"
    assert not (run / "adapter").exists() and not (run / "merged").exists()  # no export of a failed run

    monkeypatch.setattr(LongLLaVATrainer, "_save", original)  # space freed: resume finishes the run
    result = _run(tmp_path, resume=True)
    assert result.resumed_from == run / "checkpoint-2" and result.global_step == 4
    assert (run / "merged" / "model.safetensors").is_file()


def _nan_at_training_step(monkeypatch, step: int) -> None:
    from longllava_sdk.modeling.task_model import TaskModel

    forward = TaskModel.forward
    calls = {"training": 0}

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if self.training:
            calls["training"] += 1
            if calls["training"] == step and "loss" in out:
                out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(TaskModel, "forward", poisoned)


def test_a_nan_loss_stops_the_run_and_never_overwrites_the_last_good_checkpoint(tmp_path, monkeypatch):
    _nan_at_training_step(monkeypatch, 3)
    with pytest.raises(TrainingError) as caught:
        _run(tmp_path)
    run = tmp_path / "run"
    assert "the training loss is nan at step 3" in str(caught.value)
    assert f"{run / 'checkpoint-2'}, is untouched" in str(caught.value)
    assert "nan_policy: skip" in str(caught.value)
    assert not (run / "checkpoint-3").exists()
    assert all(torch.isfinite(t).all() for t in _weights(run / "checkpoint-2").values())


def test_nan_policy_skip_drops_exactly_that_update(tmp_path, monkeypatch):
    _nan_at_training_step(monkeypatch, 3)
    result = _run(tmp_path, training={"nan_policy": "skip"}, max_steps=3)  # keeps checkpoints 2 and 3
    run = tmp_path / "run"
    assert result.global_step == 3
    before, after = (_weights(run / f"checkpoint-{s}") for s in (2, 3))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # step 3's update was dropped whole
    assert all(torch.isfinite(t).all() for t in after.values())
    trained = load_file(str(run / "adapter" / ADAPTER))
    assert all(torch.equal(trained[k], after[k]) for k in after)


def test_without_the_fault_every_step_changes_the_weights(tmp_path):
    """The control for the skip test: the same run without NaN changes the weights at step 3."""
    _run(tmp_path, max_steps=3)
    before, after = (_weights(tmp_path / "run" / f"checkpoint-{s}") for s in (2, 3))
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_nan_policy_is_validated():
    from longllava_sdk.errors import ConfigError
    from longllava_sdk.recipes import Recipe

    with pytest.raises(ConfigError, match="training.nan_policy"):
        Recipe.from_dict({"name": "x", "training": {"nan_policy": "ignore"}})
