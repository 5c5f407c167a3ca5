"""The CLI speaks CLI: errors name flags, adapter options are flags, failures leave nothing behind."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from longllava_sdk.cli import available_commands, command_parser, main
from trainer_fixtures import builtin_plugins, one_torch_thread  # noqa: F401  (autouse fixtures)
from trainer_fixtures import write_colour_dataset, write_micro_model

MR700 = Path(__import__("pydicom").__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892003" / "MR700"


def _python_advice(text: str) -> list[str]:
    """Python-only spellings of advice (``name=True``, ``pass adapter=NAME``) in ``text``."""
    return re.findall(r"\b(?:pass|with|or)\s+[a-z_]+=(?:True|False|NAME|DIR|\.\.\.)", text)


def test_errors_under_the_cli_name_flags_not_keyword_arguments(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert main(["init-model", str(out)]) == 0
    capsys.readouterr()
    assert main(["init-model", str(out)]) == 1
    err = capsys.readouterr().err
    assert "--overwrite" in err and "overwrite=True" not in err and not _python_advice(err)


def test_python_callers_get_python_advice(tmp_path):
    from longllava_sdk.errors import CheckpointError
    from longllava_sdk.model_folders import create_model, save_model

    model, processor = create_model("tiny")
    save_model(model, processor, tmp_path / "m")
    with pytest.raises(CheckpointError, match=r"overwrite=True"):
        save_model(model, processor, tmp_path / "m")


def test_adapter_options_are_flags_typed_by_the_adapter(tiny_checkpoint, capsys):
    """pydicom's real MR700 folder holds non-parallel slices: the error names the CLI flag that reads it."""
    argv = ["infer", "--model", str(tiny_checkpoint), "--volume", str(MR700), "--prompt", "x", "--max-new-tokens",
            "2", "--no-stream", "--device", "cpu"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "--adapter-option allow_non_parallel=true" in err and "allow_non_parallel=True" not in err
    assert main([*argv, "--adapter-option", "allow_non_parallel=true"]) == 0
    assert capsys.readouterr().out.strip() != ""
    assert main([*argv, "--adapter-option", "allow_non_parallel=maybe"]) == 1
    assert "expected bool" in capsys.readouterr().err
    assert main([*argv, "--adapter-option", "no_such_option=1"]) == 1
    err = capsys.readouterr().err
    assert "no option(s) ['no_such_option']" in err and "allow_non_parallel" in err


def test_text_options_are_converted_by_the_declared_types():
    from longllava_sdk.registry import available_adapters

    dicom = available_adapters()["dicom"]
    options = dicom.coerce_options({"allow_non_parallel": "yes", "max_images": "12", "window": "lung,bone",
                                    "percentiles": "1,99", "series_uid": "1.2.3"})
    assert options == {"allow_non_parallel": True, "max_images": 12, "window": ["lung", "bone"],
                       "percentiles": (1.0, 99.0), "series_uid": "1.2.3"}
    assert dicom.coerce_options({"max_images": "none"}) == {"max_images": None}
    assert dicom.coerce_options({"allow_non_parallel": True}) == {"allow_non_parallel": True}  # typed values pass


def test_plugins_lists_an_adapters_options(capsys):
    assert main(["plugins", "--adapter", "dicom"]) == 0
    text = capsys.readouterr().out
    assert "allow_non_parallel: bool = False" in text and "series_uid: str | None = None" in text
    assert main(["plugins", "--adapter", "dicom", "--json"]) == 0
    listed = {o["name"]: o for o in json.loads(capsys.readouterr().out)["options"]}
    assert listed["allow_non_parallel"]["type"] == "bool"
    assert main(["plugins", "--adapter", "nope"]) == 1
    assert "installed:" in capsys.readouterr().err


def test_a_source_nobody_claims_gets_each_adapters_reason(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "emptydir"
    folder.mkdir()
    (folder / "a.txt").write_text("not an image")
    (folder / "b.txt").write_text("nor this")
    assert main(["infer", "--model", str(tiny_checkpoint), "--volume", str(folder), "--prompt", "x"]) == 1
    err = capsys.readouterr().err
    assert "no volume adapter can read this source" in err
    assert "dicom: no DICOM images found (2 not DICOM)" in err and "nifti:" in err
    assert "--adapter NAME" in err


def test_finetune_that_fails_before_training_leaves_nothing_and_reruns_cleanly(tmp_path, capsys):
    recipe = write_colour_dataset(tmp_path / "data", n=4, head="classify")
    out = tmp_path / "run"
    # a bad --model
    assert main(["finetune", "--domain", str(recipe), "--model", str(tmp_path / "nope"), "--output", str(out)]) == 1
    assert "nope" in capsys.readouterr().err and not out.exists()
    # unreadable --data (one line about the file, not a row report)
    notes = tmp_path / "notes.txt"
    notes.write_text("just notes")
    assert main(["finetune", "--data", str(notes), "--output", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {notes}: unknown data file type '.txt'; use .json, .jsonl or .csv"
    assert not out.exists()
    # a run that died after creating its folder but before its first checkpoint
    base = write_micro_model(tmp_path / "base")
    argv = ["finetune", "--domain", str(recipe), "--model", str(base), "--output", str(out), "--max-steps", "1"]
    from longllava_sdk.training.checkpointing import prepare_output_dir
    from longllava_sdk.training.finetuning import plan_finetune

    plan = plan_finetune(str(recipe), model=str(base), output=str(out), max_steps=1)
    prepare_output_dir(out, run_info=plan.run_info)  # what a killed run leaves
    assert main(argv) == 0, capsys.readouterr().err
    assert (out / "model" / "model.safetensors").is_file()


def test_resume_logs_the_checkpoint_it_picks(tmp_path, capsys, caplog):
    recipe = write_colour_dataset(tmp_path / "data", n=4, head="classify")
    base = write_micro_model(tmp_path / "base")
    out = tmp_path / "run"
    common = ["finetune", "--domain", str(recipe), "--model", str(base), "--output", str(out), "--save-steps", "1"]
    assert main([*common, "--max-steps", "2"]) == 0
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="longllava_sdk"):
        assert main([*common, "--max-steps", "3", "--resume", "--force-schedule"]) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"resuming from {out / 'checkpoint-2'} (step 2)" in m for m in messages), messages


def test_subcommand_help_shows_each_option_once():
    commands = {}
    for name, func in available_commands().items():
        for sub, f in (getattr(func, "subcommands", None) or {"": func}).items():
            commands[f"{name} {sub}".strip()] = f
    for name, func in commands.items():
        parser = command_parser(func)
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if action.help and len(action.help) > 25 and action.dest != "help":
                first = " ".join(action.help.split())[:40]
                assert text.count(first) == 1, f"{name}: {first!r} printed {text.count(first)} times"


def test_adapter_options_reach_eval_and_finetune(tiny_checkpoint, tmp_path, capsys):
    """--adapter-option is the same flag on every command that reads media."""
    series = Path(__file__).resolve().parents[1] / "domains" / "medical" / "data" / "ct" / "series_01"
    out = tmp_path / "niah"
    base = ["eval", "niah", "--model", str(tiny_checkpoint), "--haystack", str(series), "--num-images", "3",
            "--depths", "0.5", "--samples-per-cell", "1", "--device", "cpu", "--max-new-tokens", "2"]
    assert main([*base, "--adapter-option", "window=bone", "--output", str(out)]) == 0
    sources = json.loads((out / "run.json").read_text())["haystack"]["sources"]
    assert sources[0]["options"] == {"window": "bone"}
    assert main([*base, "--adapter-option", "window=nope", "--output", str(tmp_path / "bad")]) == 1
    assert "unknown window 'nope'" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    # finetune checks the options against the data's adapters before any training
    run = tmp_path / "run"
    assert main(["finetune", "--domain", "medical", "--model", str(tiny_checkpoint), "--output", str(run),
                 "--adapter-option", "window=nope"]) == 1
    assert "unknown window 'nope'" in capsys.readouterr().err and not run.exists()
