"""Training under faults: a failed checkpoint write, a NaN loss. Nothing good is ever lost."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

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
    """The writer fails mid-file (simulated: runs without root too; the real disk is below)."""
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
    assert message.startswith(f"{run / '.checkpoint-3.partial' / 'adapter_model.safetensors'}: no space left on "
                              "device (ENOSPC) while writing checkpoint-3;"), message
    assert f"{run / 'checkpoint-2'}, is intact" in message and "resume=True" in message and "\n" not in message
    assert checkpoint_problem(run / "checkpoint-2", verify=True) is None
    assert not (run / "checkpoint-3").exists()
    assert not (run / ".checkpoint-3.partial").exists()  # removed: no half-written folder, its space freed
    assert latest_complete_checkpoint(run, verify=True) == run / "checkpoint-2"
    assert not (run / "adapter").exists() and not (run / "model").exists()  # no export of a failed run

    monkeypatch.setattr(LongLLaVATrainer, "_save", original)  # space freed: resume finishes the run
    result = _run(tmp_path, resume=True)
    assert result.resumed_from == run / "checkpoint-2" and result.global_step == 4
    assert (run / "model" / "model.safetensors").is_file()


# -- real filesystems: a full disk, a read-only one -------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs mounted at ``tmp_path/disk`` (needs root / CAP_SYS_ADMIN, else skipped).

    Returns ``(path, remount)``: ``remount("ro")`` / ``remount("rw")`` flips it read-only.
    """
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")

    def remount(mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(disk)], check=True, capture_output=True)

    try:
        yield disk, remount
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


class _AfterSave(TrainerCallback):
    """Runs ``action`` once, right after the checkpoint of ``step`` was written."""

    def __init__(self, step: int, action) -> None:
        self.step, self.action = step, action

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.action()


def _fill(disk: Path) -> Path:
    filler = disk / "filler.bin"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def _finetune_into(tmp_path, output: Path, **kwargs):
    from longllava_sdk.training.finetuning import finetune, plan_finetune, run_finetune

    if not (tmp_path / "base").exists():
        write_colour_dataset(tmp_path / "data", n=12, head="classify", eval_fraction=0.25, training={"batch_size": 2})
        write_micro_model(tmp_path / "base")
    callbacks = kwargs.pop("callbacks", ())
    args = dict(model=str(tmp_path / "base"), output=str(output), max_steps=4, save_steps=1, **kwargs)
    if callbacks:
        return run_finetune(plan_finetune(str(tmp_path / "data" / "recipe.yaml"), callbacks=callbacks, **args))
    return finetune(str(tmp_path / "data" / "recipe.yaml"), **args)


def test_a_full_disk_is_a_checkpoint_error_and_the_run_resumes_once_space_is_freed(tmp_path, small_disk):
    from longllava_sdk.training.checkpointing import checkpoint_problem

    disk, _ = small_disk
    run = disk / "run"
    filled = {}
    with pytest.raises(CheckpointError) as caught:
        _finetune_into(tmp_path, run, callbacks=[_AfterSave(2, lambda: filled.setdefault("f", _fill(disk)))])
    message = str(caught.value)
    assert "no space left on device (ENOSPC) while writing" in message and "\n" not in message
    assert message.startswith(str(run)) and f"{run / 'checkpoint-2'}, is intact" in message, message
    assert checkpoint_problem(run / "checkpoint-2", verify=True) is None
    assert not [p.name for p in run.iterdir() if p.name.startswith(".checkpoint-")]  # nothing half-written left
    assert not (run / "checkpoint-3").exists() and not (run / "model").exists()

    filled["f"].unlink()  # space freed: --resume finishes from the intact checkpoint
    result = _finetune_into(tmp_path, run, resume=True)
    assert result.resumed_from == run / "checkpoint-2" and result.global_step == 4
    assert (run / "model" / "model.safetensors").is_file()


def test_a_read_only_output_is_one_error_line_and_loses_nothing(tmp_path, small_disk, capsys):
    from longllava_sdk.cli import main
    from longllava_sdk.training.checkpointing import checkpoint_problem

    disk, remount = small_disk
    run = disk / "run"
    with pytest.raises(CheckpointError) as caught:  # the filesystem turns read-only mid-run
        _finetune_into(tmp_path, run, callbacks=[_AfterSave(2, lambda: remount("ro"))])
    message = str(caught.value)
    assert "read-only file system (EROFS) while writing" in message and f"{run / 'checkpoint-2'}, is intact" in message
    assert checkpoint_problem(run / "checkpoint-2", verify=True) is None

    # the CLI: refused before any work, in one line that speaks CLI
    capsys.readouterr()
    code = main(["finetune", "--domain", str(tmp_path / "data" / "recipe.yaml"), "--model", str(tmp_path / "base"),
                 "--output", str(run), "--max-steps", "4", "--save-steps", "1", "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"error: {run}: read-only file system (EROFS)") and "--output DIR" in err[0], err[0]
    code = main(["finetune", "--domain", str(tmp_path / "data" / "recipe.yaml"), "--model", str(tmp_path / "base"),
                 "--output", str(disk / "new-run"), "--max-steps", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith(f"error: {disk}: read-only file system (EROFS) (the run "
                                                             f"folder {disk / 'new-run'} would be created in it)"), err


def test_torch_and_safetensors_write_failures_are_recognised_on_a_real_disk(tmp_path, small_disk):
    """torch.save says "unexpected pos 576 vs 534" on a full disk and "strerror: Read-only file
    system" on a read-only one; safetensors says "(os error 28)": all become the same typed fault."""
    from safetensors.torch import save_file

    from longllava_sdk.training.checkpointing import storage_fault

    disk, remount = small_disk
    folder = disk / "ckpt"
    folder.mkdir()
    _fill(disk)
    tensors = {"w": torch.zeros(200_000)}
    faults = {}
    for name, write in (("optimizer.pt", lambda p: torch.save(tensors, p)),
                        ("model.safetensors", lambda p: save_file(tensors, str(p)))):
        with pytest.raises(Exception) as raised:
            write(folder / name)
        faults[name] = storage_fault(raised.value, folder, doing="writing checkpoint-7", kept="kept")
    assert str(faults["optimizer.pt"]).startswith(f"{folder / 'optimizer.pt'}: no space left on device (ENOSPC)")
    assert "no space left on device (ENOSPC) while writing checkpoint-7; kept; free space" in str(faults["model.safetensors"])
    remount("ro")
    with pytest.raises(RuntimeError) as raised:
        torch.save(tensors, folder / "rng_state.pth")
    fault = storage_fault(raised.value, folder, doing="writing checkpoint-7", kept="kept")
    assert "read-only file system (EROFS) while writing checkpoint-7" in str(fault)


def test_a_file_size_limit_is_recognised_without_root(tmp_path):
    """RLIMIT_FSIZE makes the kernel fail writes with EFBIG: a real fault any user can cause."""
    script = f"""
import resource, signal, torch
from safetensors.torch import save_file
from longllava_sdk.training.checkpointing import storage_fault
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
folder = {str(tmp_path)!r}
try:
    save_file({{"w": torch.zeros(100_000)}}, folder + "/model.safetensors")
except Exception as exc:
    print(storage_fault(exc, folder, doing="writing checkpoint-1", kept="nothing lost"))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "file too large for the file-size limit (EFBIG) while writing checkpoint-1; nothing lost" in done.stdout


@pytest.mark.parametrize("code, cause", [(errno.EDQUOT, "disk quota exceeded (EDQUOT)"),
                                         (errno.EACCES, "permission denied (EACCES)"),
                                         (errno.EIO, "input/output error (EIO)")])
def test_each_storage_errno_has_its_own_cause(tmp_path, code, cause):
    from longllava_sdk.training.checkpointing import storage_errors

    with pytest.raises(CheckpointError) as caught:
        with storage_errors(tmp_path, doing="writing checkpoint-5", kept="kept"):
            raise OSError(code, os.strerror(code), str(tmp_path / "optimizer.pt"))
    assert str(caught.value).startswith(f"{tmp_path / 'optimizer.pt'}: {cause} while writing checkpoint-5; kept;")
    with pytest.raises(ValueError):  # anything else passes through untouched
        with storage_errors(tmp_path, doing="x", kept="y"):
            raise ValueError("not a storage fault")


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
