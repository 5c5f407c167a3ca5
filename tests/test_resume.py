"""Checkpoints: atomic + marker, newest complete one picked, bit-exact resume, output-dir policy.

The resume test follows transformers' own trainer tests: train N steps straight, then train
again from the checkpoint at step k to N, and compare every parameter (exactly), the
optimizer and scheduler states, the RNG state and the order of the samples seen.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

from longllava_sdk.errors import ConfigError, TrainingError
from trainer_fixtures import builtin_plugins, one_torch_thread  # noqa: F401  (autouse fixtures)
from trainer_fixtures import make_micro_model, write_colour_dataset


class RecordingCollator:
    """The training collator, remembering the sample ids of every batch it builds."""

    def __init__(self, inner):
        self.inner = inner
        self.batches: list[list[str]] = []

    def __call__(self, samples):
        self.batches.append([s.sample_id for s in samples])
        return self.inner(samples)


def _trainer(data_root, output_dir, mode: str):
    from transformers import set_seed

    from longllava_sdk.registry import available_heads
    from longllava_sdk.recipes import Recipe
    from longllava_sdk.training.collator import TrainingCollator
    from longllava_sdk.training.data import prepare_datasets
    from longllava_sdk.training.lora import LoraOptions, apply_lora
    from longllava_sdk.training.stages import apply_stage_freezing, get_stage
    from longllava_sdk.modeling.task_model import TaskModel
    from longllava_sdk.training.trainer import LongLLaVATrainer, PromptOnlyCollator, build_training_arguments

    recipe = Recipe.from_yaml(data_root / "recipe.yaml")
    model, processor = make_micro_model(seed=0)
    set_seed(0)
    head = available_heads()["classify"](64, recipe.head.labels, dropout=0.1)  # dropout: the RNG matters
    prepared = prepare_datasets(processor, recipe, head=head)
    if mode == "lora":
        backbone, _ = apply_lora(model, LoraOptions(r=4, alpha=8), problem_type=head.problem_type)
    else:
        apply_stage_freezing(model, get_stage("domain"), "classify", head)
        backbone = model
    args = build_training_arguments(output_dir, recipe.training, learning_rate=3e-3, epochs=1, max_steps=6,
                                    save_steps=3, logging_steps=1)
    collator = RecordingCollator(PromptOnlyCollator(TrainingCollator(processor)))
    trainer = LongLLaVATrainer(TaskModel(backbone, head), args, processor=processor, train_dataset=prepared.train,
                               data_collator=collator)
    return trainer, collator


def _optimizer_tensors(trainer):
    state = trainer.optimizer.state_dict()["state"]
    return {(k, name): v for k, entry in state.items() for name, v in entry.items() if torch.is_tensor(v)}


@pytest.mark.compat
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_resume_is_bit_exact(tmp_path, mode):
    data_root = tmp_path / "data"
    write_colour_dataset(data_root, n=16, head="classify", eval_fraction=0.0, training={"batch_size": 2})
    straight, straight_data = _trainer(data_root, tmp_path / "straight", mode)
    straight.train()
    rng_straight = torch.random.get_rng_state()
    assert straight.state.global_step == 6
    checkpoint = tmp_path / "straight" / "checkpoint-3"
    assert (checkpoint / "checkpoint_complete.json").is_file()
    weights = "adapter_model.safetensors" if mode == "lora" else "longllava_state.safetensors"
    assert (checkpoint / weights).is_file() and (checkpoint / "head.safetensors").is_file()

    resumed, resumed_data = _trainer(data_root, tmp_path / "resumed", mode)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    rng_resumed = torch.random.get_rng_state()
    assert resumed.state.global_step == 6

    a = dict(straight.model.named_parameters())
    b = dict(resumed.model.named_parameters())
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert different == []
    trained = [n for n, p in a.items() if p.requires_grad]
    assert trained and not torch.equal(a[trained[0]].detach(), _trainer(data_root, tmp_path / "fresh", mode)[0]
                                       .model.get_parameter(trained[0]))  # training did change the weights
    opt_a, opt_b = _optimizer_tensors(straight), _optimizer_tensors(resumed)
    assert opt_a.keys() == opt_b.keys() and all(torch.equal(opt_a[k], opt_b[k]) for k in opt_a)
    assert straight.lr_scheduler.state_dict() == resumed.lr_scheduler.state_dict()
    assert torch.equal(rng_straight, rng_resumed)
    # same samples in the same order after the skipped ones (the loader may prefetch one batch more)
    assert len(resumed_data.batches) >= 3
    assert resumed_data.batches == straight_data.batches[3:3 + len(resumed_data.batches)]
    assert sorted(sum(straight_data.batches[:6], [])) != sum(straight_data.batches[:6], [])  # shuffled


def test_newest_complete_checkpoint_is_picked(tmp_path):
    from longllava_sdk.training.checkpointing import latest_complete_checkpoint, list_checkpoints, staged_checkpoint

    run = tmp_path / "run"
    for step in (2, 4):
        with staged_checkpoint(run, step) as staging:
            (staging / "weights.bin").write_bytes(b"x" * (10 * step))
            (staging / "sub").mkdir()
            (staging / "sub" / "state.json").write_text("{}")
    assert latest_complete_checkpoint(run) == run / "checkpoint-4"
    # a newer folder without marker (killed mid-write by something else) is skipped
    shutil.copytree(run / "checkpoint-4", run / "checkpoint-6")
    (run / "checkpoint-6" / "checkpoint_complete.json").unlink()
    assert latest_complete_checkpoint(run) == run / "checkpoint-4"
    # a truncated file makes a checkpoint incomplete too
    (run / "checkpoint-4" / "weights.bin").write_bytes(b"x")
    assert latest_complete_checkpoint(run) == run / "checkpoint-2"
    assert [(s, c) for s, _, c in list_checkpoints(run)] == [(2, True), (4, False), (6, False)]
    marker = json.loads((run / "checkpoint-2" / "checkpoint_complete.json").read_text())
    assert marker["step"] == 2 and {k: v["size"] for k, v in marker["files"].items()} == \
        {"sub/state.json": 2, "weights.bin": 20}
    assert marker["files"]["weights.bin"]["sha256"] == hashlib.sha256(b"x" * 20).hexdigest()


def test_a_corrupt_or_missing_shard_falls_back_to_the_previous_checkpoint(tmp_path, caplog):
    """Never a silent partial load: damage is found (sizes always, SHA-256 on resume) and skipped."""
    import logging

    from longllava_sdk.training.checkpointing import checkpoint_problem, latest_complete_checkpoint, staged_checkpoint

    run = tmp_path / "run"
    for step in (2, 4, 6):
        with staged_checkpoint(run, step) as staging:
            (staging / "model-00001-of-00002.safetensors").write_bytes(bytes(range(256)) * step)
            (staging / "model-00002-of-00002.safetensors").write_bytes(b"\x01" * 100 * step)
    shard = run / "checkpoint-6" / "model-00002-of-00002.safetensors"
    shard.write_bytes(b"\x02" + shard.read_bytes()[1:])  # corrupted in place: same size
    assert checkpoint_problem(run / "checkpoint-6") is None  # the cheap check cannot see it...
    assert "corrupt" in checkpoint_problem(run / "checkpoint-6", verify=True)  # ...the checksum does
    (run / "checkpoint-4" / "model-00001-of-00002.safetensors").unlink()  # a missing shard
    assert "missing" in checkpoint_problem(run / "checkpoint-4")
    with caplog.at_level(logging.WARNING, logger="longllava_sdk"):
        assert latest_complete_checkpoint(run, verify=True) == run / "checkpoint-2"
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "checkpoint-6: model-00002-of-00002.safetensors is corrupt" in warned
    assert "checkpoint-4: model-00001-of-00002.safetensors is missing" in warned


def test_a_failed_save_leaves_no_checkpoint(tmp_path):
    from longllava_sdk.training.checkpointing import latest_complete_checkpoint, staged_checkpoint

    run = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with staged_checkpoint(run, 5) as staging:
            (staging / "weights.bin").write_bytes(b"partial")
            raise RuntimeError("disk full")
    assert not (run / "checkpoint-5").exists()
    assert latest_complete_checkpoint(run) is None
    with staged_checkpoint(run, 5) as staging:  # the stale partial folder is replaced
        (staging / "weights.bin").write_bytes(b"complete")
    assert latest_complete_checkpoint(run) == run / "checkpoint-5"
    assert not (run / ".checkpoint-5.partial").exists()


def test_output_directory_policy(tmp_path):
    from longllava_sdk.training.checkpointing import prepare_output_dir, staged_checkpoint

    run = tmp_path / "run"
    assert prepare_output_dir(run, run_info={"recipe": "x"}) is None
    assert json.loads((run / "longllava_run.json").read_text())["recipe"] == "x"
    with pytest.raises(TrainingError, match="resume=True .* overwrite=True"):
        prepare_output_dir(run)
    with pytest.raises(TrainingError, match="no complete checkpoint"):
        prepare_output_dir(run, resume=True)
    with staged_checkpoint(run, 7) as staging:
        (staging / "w").write_text("1")
    assert prepare_output_dir(run, resume=True) == run / "checkpoint-7"
    assert prepare_output_dir(run, overwrite=True) is None
    assert not (run / "checkpoint-7").exists()
    with pytest.raises(ConfigError):
        prepare_output_dir(run, resume=True, overwrite=True)
    with pytest.raises(TrainingError, match="no previous run"):
        prepare_output_dir(tmp_path / "never", resume=True)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(TrainingError, match="refuses to delete"):
        prepare_output_dir(foreign, overwrite=True)
    assert (foreign / "holiday.jpg").exists()


def test_a_run_that_died_before_its_first_checkpoint_restarts_with_the_same_arguments(tmp_path):
    from longllava_sdk.training.checkpointing import check_output_dir, prepare_output_dir

    run = tmp_path / "run"
    info = {"recipe": "x", "stage": "domain", "head": "classify"}
    prepare_output_dir(run, run_info=info)
    (run / "base-model").mkdir()
    (run / "base-model" / "config.json").write_text("{}")
    (run / ".checkpoint-3.partial").mkdir()  # killed while writing its first checkpoint
    (run / "run.json").write_text("{}")  # written at the start, like the log of the first steps
    (run / "trainer_log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    assert check_output_dir(run, run_info=info) is None  # the same command starts over...
    assert prepare_output_dir(run, run_info=info) is None
    assert sorted(p.name for p in run.iterdir()) == ["longllava_run.json"]  # ...cleanly
    with pytest.raises(TrainingError, match="not empty"):  # other settings: the folder is another run's
        check_output_dir(run, run_info={**info, "head": "multilabel"})


def test_resume_with_another_schedule_is_refused_unless_forced(tmp_path, capsys):
    """--max-steps 2 then --resume --max-steps 4: refused with the difference, or --force-schedule."""
    from longllava_sdk.cli import main
    from longllava_sdk.model_folders import read_training_info
    from longllava_sdk.training.finetuning import finetune
    from longllava_sdk.training.run_log import read_trainer_log
    from trainer_fixtures import write_micro_model

    recipe = write_colour_dataset(tmp_path / "data", n=8, head="classify", training={"batch_size": 2})
    base = write_micro_model(tmp_path / "base")
    run = tmp_path / "run"
    finetune(str(recipe), model=str(base), output=str(run), max_steps=2, save_steps=1)
    assert read_training_info(run / "checkpoint-2")["schedule"]["max_steps"] == 2

    with pytest.raises(TrainingError) as caught:
        finetune(str(recipe), model=str(base), output=str(run), max_steps=4, lr=0.01, save_steps=1, resume=True)
    message = str(caught.value)
    assert "resume=True would continue checkpoint-2 with another schedule: max_steps=4 (run: 2), lr=0.01 " \
           "(run: 0.001); repeat the run's values, or add force_schedule=True" in message, message

    capsys.readouterr()
    flags = ["finetune", "--domain", str(recipe), "--model", str(base), "--output", str(run), "--save-steps", "1",
             "--resume"]
    assert main(flags) == 1  # --max-steps left out: the run's 2 steps are not the recipe's epochs
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-steps not set (run: 2)" in err[0] and "--force-schedule" in err[0], err
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]  # nothing touched

    result = finetune(str(recipe), model=str(base), output=str(run), max_steps=4, save_steps=1, resume=True,
                      force_schedule=True)
    assert result.resumed_from == run / "checkpoint-2" and result.global_step == 4
    assert read_training_info(run / "checkpoint-4")["schedule"]["max_steps"] == 4  # the new schedule, recorded
    config = json.loads((run / "run.json").read_text())
    assert config["schedule_changes"] == ["max_steps=4 (run: 2)"] and config["resumed_from"].endswith("checkpoint-2")
    assert [r["step"] for r in read_trainer_log(run / "trainer_log.jsonl") if "loss" in r] == [1, 2, 3, 4]
