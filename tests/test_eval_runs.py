"""``longllava-sdk eval`` end to end on the tiny model: every mode, resume, refusing changed settings,
and the same head metrics as the trainer's ``evaluate``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from longllava_sdk.errors import ConfigError
from trainer_fixtures import builtin_plugins, one_torch_thread  # noqa: F401  (autouse fixtures)

NIAH = dict(num_images=[2, 3], depths=[0.0, 1.0], device="cpu", progress=False)


@pytest.fixture(scope="module")
def head_checkpoints(tmp_path_factory, tiny_model_and_processor):
    """The tiny model saved with a (random) classify head over the remote-sensing zones and with a
    multilabel head over the medical recipe's findings."""
    import torch

    from longllava_sdk.model_folders import save_model
    from longllava_sdk.registry import get_head_class
    from longllava_sdk.recipes import load_recipe

    model, processor = tiny_model_and_processor
    root = tmp_path_factory.mktemp("heads")
    torch.manual_seed(0)
    folders = {}
    for name, domain in (("classify", "remote_sensing"), ("multilabel", "medical")):
        head = get_head_class(name)(model.config.text_config.hidden_size, list(load_recipe(domain).head.labels))
        folders[name] = save_model(model, processor, root / name, head=head)
    return folders


def test_niah_end_to_end(tiny_checkpoint, tmp_path):
    from longllava_sdk.evaluation import evaluate_niah

    out = tmp_path / "niah"
    report = evaluate_niah(model=str(tiny_checkpoint), output=str(out), answer_format="choice", **NIAH)
    assert report.scored == 4 and report.resumed == 0 and report.head == "generate"
    cells = report.groups["num_images x depth"]
    assert {(c["num_images"], c["depth"]) for c in cells} == {(2, 0.0), (2, 1.0), (3, 0.0), (3, 1.0)}
    assert all(c["items"] == 1 and 0.0 <= c["accuracy"] <= 1.0 for c in cells)
    saved = json.loads((out / "report.json").read_text())
    assert saved["metrics"] == report.metrics and saved["chance"] == 0.25 and len(saved["items"]) == 4
    for item in saved["items"]:
        assert item["needle_position"] == round(item["group"]["depth"] * (item["group"]["num_images"] - 1))
        assert item["reference"] in "ABCD" and item["options"][" ABCD".index(item["reference"]) - 1] == item["answer"]
        assert isinstance(item["prediction"], str) and item["score"] in (0.0, 1.0)
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    modes = {(out / name).stat().st_mode & 0o777 for name in ("report.json", "heatmap.png", "run.json", "items.jsonl")}
    assert len(modes) == 1  # atomically written files get the same permissions as plainly opened ones
    assert len((out / "items.jsonl").read_text().splitlines()) == 4
    assert "depth \\ images" in report.table and "chance 25.0%" in report.table


def test_vnbench_from_the_command_line(tiny_checkpoint, tmp_path, capsys):
    from longllava_sdk.cli import main

    out = tmp_path / "vnbench"
    argv = ["eval", "vnbench", "--model", str(tiny_checkpoint), "--num-images", "3", "--samples-per-task", "1",
            "--output", str(out), "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for row in ("retrieval", "ordering", "counting", "E (overlay)", "I (insert)"):
        assert row in printed
    report = json.loads((out / "report.json").read_text())
    assert len(report["items"]) == 6 and {g["task"] for g in report["groups"]["task"]} == {
        "retrieval", "ordering", "counting"}
    assert all(item["reference"] == item["answer_letter"] for item in report["items"])
    assert main(argv) == 0  # a finished run: everything is taken from items.jsonl
    assert "6 item(s) taken from an earlier run" in capsys.readouterr().out


def test_data_mode_on_a_domain_sample_with_generated_answers(tiny_checkpoint, tmp_path):
    from longllava_sdk.evaluation import evaluate_data

    report = evaluate_data(model=str(tiny_checkpoint), domain="remote_sensing_vqa", output=str(tmp_path / "d"),
                           device="cpu", progress=False, max_new_tokens=4)
    assert report.head == "generate" and report.groups["split"][0]["split"] == "eval"
    assert {"accuracy", "token_f1", "open_token_f1", "n_open"} <= set(report.metrics)
    assert all(record["target"] in {"bottom left", "bottom right", "top left", "top right"}
               for record in report.records)


def test_data_mode_matches_the_trainers_evaluate_for_a_classify_head(head_checkpoints, tmp_path):
    """Same rows, same head, same metrics function: ``eval data`` and ``LongLLaVATrainer.evaluate`` agree."""
    from longllava_sdk.evaluation import evaluate_data
    from longllava_sdk.model_folders import load_head, load_model
    from longllava_sdk.modeling.task_model import TaskModel
    from longllava_sdk.recipes import load_recipe
    from longllava_sdk.training.collator import TrainingCollator
    from longllava_sdk.training.data import prepare_datasets
    from longllava_sdk.training.trainer import LongLLaVATrainer, PromptOnlyCollator, build_training_arguments

    folder = head_checkpoints["classify"]
    report = evaluate_data(model=str(folder), domain="remote_sensing", output=str(tmp_path / "eval"), device="cpu",
                           progress=False)
    assert report.head == "classify"
    confusion = json.loads(report.report_path.read_text())["confusion"]
    assert confusion["labels"] == ["montane", "subalpine", "alpine"]
    assert sum(map(sum, confusion["matrix"])) == len(report.records)
    assert "confusion matrix" in report.table

    model, processor = load_model(folder)
    head = load_head(folder)
    recipe = load_recipe("remote_sensing")
    prepared = prepare_datasets(processor, recipe, head=head)
    args = build_training_arguments(tmp_path / "run", recipe.training, learning_rate=1e-3, epochs=1,
                                    extra={"per_device_eval_batch_size": 1})
    trainer = LongLLaVATrainer(TaskModel(model, head), args, processor=processor,
                               data_collator=PromptOnlyCollator(TrainingCollator(processor)))
    expected = {k[len("eval_"):]: v for k, v in trainer.evaluate(prepared.eval).items()}
    for key, value in report.metrics.items():
        assert expected[key] == pytest.approx(value), key
    # the chance baselines, computed from the same targets by both, and printed next to each metric
    assert report.extra["chance"] == {k[len("eval_"):]: v for k, v in trainer.last_chance.items()}
    assert set(report.extra["chance"]["accuracy"]) == {"majority", "random"}
    assert "chance: majority" in report.table and "note:" not in report.table  # nothing says it is random


def test_data_mode_reports_per_label_scores_for_a_multilabel_head(head_checkpoints, tmp_path):
    from longllava_sdk.evaluation import evaluate_data

    report = evaluate_data(model=str(head_checkpoints["multilabel"]), domain="medical", split="all",
                           output=str(tmp_path / "ml"), device="cpu", progress=False)
    labels = ["Lung nodule", "Emphysema", "Pleural effusion", "Arterial wall calcification"]
    for label in labels:
        assert {f"precision/{label}", f"recall/{label}", f"f1/{label}"} <= set(report.metrics)
    assert {"macro_precision", "macro_recall", "macro_f1"} <= set(report.metrics)
    assert {g["split"] for g in report.groups["split"]} == {"train", "eval"} and len(report.records) == 12
    assert all(len(record["prediction"]) == 4 for record in report.records)
    subset = report.extra["chance"]["subset_accuracy"]
    assert 0 < subset["random"] <= subset["majority"] <= 1  # the most common label set, over 12 rows


def test_a_random_weight_model_is_called_a_demo(head_checkpoints, tmp_path, capsys):
    """init-model records its random weights; eval data says so next to chance-level scores."""
    import shutil

    from longllava_sdk.cli import main
    from longllava_sdk.evaluation import evaluate_data
    from longllava_sdk.model_folders import random_init_of

    assert main(["init-model", str(tmp_path / "fresh"), "--seed", "3"]) == 0
    assert random_init_of(tmp_path / "fresh") == "tiny preset, seed 3"
    folder = shutil.copytree(head_checkpoints["classify"], tmp_path / "demo")
    (folder / "longllava_training.json").write_text(json.dumps({"random_init": "tiny preset, seed 0"}))
    report = evaluate_data(model=str(folder), domain="remote_sensing", output=str(tmp_path / "eval"), device="cpu",
                           progress=False)
    assert report.table.rstrip().endswith("expected to score near the chance baseline; fine-tune a pretrained model "
                                          "(model=DIR) for meaningful scores")
    assert "holds random weights (tiny preset, seed 0), never trained" in report.table
    assert json.loads(report.report_path.read_text())["random_init"] == "tiny preset, seed 0"


def test_an_interrupted_run_resumes_where_it_stopped(tiny_checkpoint, tmp_path, monkeypatch):
    from longllava_sdk.evaluation import evaluate_niah
    from longllava_sdk.evaluation.predict import Predictor

    reference = evaluate_niah(model=str(tiny_checkpoint), output=str(tmp_path / "whole"), heatmap=False, **NIAH)
    original = Predictor.predict
    calls: list[str] = []

    def dies_on_the_third(self, case):
        calls.append(case.reference)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the run
        return original(self, case)

    out = tmp_path / "run"
    monkeypatch.setattr(Predictor, "predict", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        evaluate_niah(model=str(tiny_checkpoint), output=str(out), heatmap=False, **NIAH)
    assert len((out / "items.jsonl").read_text().splitlines()) == 2 and not (out / "report.json").exists()
    # the process was killed while writing the third line: half a record, no newline
    with (out / "items.jsonl").open("a") as stream:
        stream.write('{"id": "niah-n3-d0-r0", "predic')
    calls.clear()
    monkeypatch.setattr(Predictor, "predict", lambda self, case: calls.append(case.reference) or original(self, case))
    resumed = evaluate_niah(model=str(tiny_checkpoint), output=str(out), heatmap=False, **NIAH)
    assert len(calls) == 2 and resumed.scored == 2 and resumed.resumed == 2
    lines = (out / "items.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)
    assert [r["prediction"] for r in resumed.records] == [r["prediction"] for r in reference.records]
    assert resumed.metrics == reference.metrics


def test_changed_settings_are_refused_or_start_a_new_folder(tiny_checkpoint, tmp_path):
    from longllava_sdk.evaluation import evaluate_niah
    from longllava_sdk.evaluation.runner import default_output_dir
    from longllava_sdk.evaluation.store import RunStore

    out = tmp_path / "run"
    small = dict(NIAH, num_images=[2], depths=[0.0])
    evaluate_niah(model=str(tiny_checkpoint), output=str(out), heatmap=False, **small)
    with pytest.raises(ConfigError, match=r"(?s)arguments.seed: was 0, now 1.*overwrite=True"):
        evaluate_niah(model=str(tiny_checkpoint), output=str(out), heatmap=False, seed=1, **small)
    (out / "notes.txt").write_text("mine")
    again = evaluate_niah(model=str(tiny_checkpoint), output=str(out), heatmap=False, seed=1, overwrite=True, **small)
    assert again.scored == 1 and json.loads((out / "run.json").read_text())["arguments"]["seed"] == 1
    assert (out / "notes.txt").read_text() == "mine"  # overwrite deletes the run's own files only
    # new weights in the same model folder are another model
    weights = Path(tiny_checkpoint) / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    try:
        with pytest.raises(ConfigError, match="model.files.model.safetensors"):
            evaluate_niah(model=str(tiny_checkpoint), output=str(out), heatmap=False, seed=1, **small)
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # without --output, other settings get another folder; a folder that is not a run is refused
    first = default_output_dir("niah", tiny_checkpoint, {"arguments": {"seed": 0}})
    assert first != default_output_dir("niah", tiny_checkpoint, {"arguments": {"seed": 1}})
    assert first == default_output_dir("niah", tiny_checkpoint, {"arguments": {"seed": 0}})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no evaluation run"):
        RunStore(tmp_path / "other", {"mode": "niah"})


def test_eval_needs_data_and_letter_labels(head_checkpoints, tiny_checkpoint):
    from longllava_sdk.evaluation import evaluate_data, evaluate_vnbench

    with pytest.raises(ConfigError, match="data file or a domain"):
        evaluate_data(model=str(tiny_checkpoint), device="cpu")
    with pytest.raises(ConfigError, match="option letters"):
        evaluate_vnbench(model=str(head_checkpoints["classify"]), device="cpu", num_images=[3])
