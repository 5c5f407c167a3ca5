"""The CLI: commands are plain functions; the parser is derived from their signatures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from longllava_sdk.cli import BUILTIN_PLUGIN, available_commands, main, parse_command

BUILTIN_COMMANDS = {"info", "init-model", "infer", "convert-official", "plugins", "finetune", "merge", "serve", "plan", "bench"}


def test_every_builtin_command_is_available_with_help():
    commands = available_commands()
    assert BUILTIN_COMMANDS <= set(commands)
    for name, func in commands.items():
        assert func.__doc__, f"command {name} has no docstring"


def test_builtin_commands_come_through_the_command_hook_like_a_plugins():
    from longllava_sdk.plugin_manager import get_plugin_manager

    available_commands()
    manager = get_plugin_manager()
    record = next(r for r in manager.list_plugins() if r.name == BUILTIN_PLUGIN)
    assert record.hooks == ["longllava_register_commands"]
    names = {getattr(f, "command_name", f.__name__.replace("_", "-"))
             for _, batch in manager.collect("longllava_register_commands") for f in batch}
    assert BUILTIN_COMMANDS <= names


def test_library_functions_are_the_commands():
    """finetune / merge have exactly the library function's signature: a new option is one edit."""
    import inspect

    from longllava_sdk.model_folders import merge_adapter
    from longllava_sdk.serving import serve
    from longllava_sdk.training.finetuning import finetune

    commands = available_commands()
    assert inspect.signature(commands["serve"]) == inspect.signature(serve)
    assert inspect.signature(commands["finetune"]) == inspect.signature(finetune)
    assert inspect.signature(commands["merge"]) == inspect.signature(merge_adapter)


def test_signature_becomes_flags():
    from longllava_sdk.options import LoadOptions

    _, _, args, _ = parse_command(["infer", "--model", "m", "--prompt", "p", "--image", "a.png", "b.png",
                                   "--max-new-tokens", "7", "--no-stream", "--dtype", "bf16"])
    assert args["image"] == ["a.png", "b.png"] and args["max_new_tokens"] == 7 and args["stream"] is False
    assert args["load"] == LoadOptions(device="auto", dtype="bfloat16")  # a parameter object from flat flags


def test_info_prints_paper_parameter_counts(capsys):
    assert main(["info", "--preset", "a13b", "--json-output"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 51e9 < report["total"] < 54e9 and 12e9 < report["active"] < 13.5e9
    assert report["attention_layers"] == 4 and report["mamba_layers"] == 28


def test_init_model_then_infer_from_the_console_script(tmp_path, rgb_images):
    out = tmp_path / "tiny"
    assert main(["init-model", str(out)]) == 0
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    # a second init into the same non-empty folder is refused, nothing overwritten
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert main(["init-model", str(out)]) == 1
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    image = tmp_path / "red.png"
    rgb_images[0].save(image)
    run = subprocess.run(
        [sys.executable, "-m", "longllava_sdk", "infer", "--model", str(out), "--image", str(image),
         "--prompt", "What colour?", "--max-new-tokens", "4", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() != ""
    # a quiet console: transformers' weight-loading bar at most, no warning a user cannot act on
    noise = [line for line in run.stderr.splitlines() if "warn" in line.lower() or "Traceback" in line]
    assert not noise, noise
    assert "Mamba kernels: scan:" in run.stderr  # which backend runs, once (issue 7)


def test_sdk_errors_become_exit_code_1_with_message(tmp_path, capsys):
    assert main(["infer", "--model", str(tmp_path / "missing"), "--prompt", "x"]) == 1
    assert "missing" in capsys.readouterr().err


def test_unknown_preset_is_a_clear_error(capsys):
    assert main(["info", "--preset", "70b"]) == 1
    assert "unknown preset '70b'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["--help"]])
def test_help_lists_commands(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse exits after --help
        code = exc.code
    text = capsys.readouterr().out
    assert code in (0, 2) and "finetune" in text and "convert-official" in text


def test_bench_rejects_unknown_suites_and_knows_its_scripts(capsys):
    from longllava_sdk.cli.cmd_bench import SUITES, benchmarks_dir

    assert main(["bench", "--suite", "nope"]) == 1
    assert "unknown benchmark suite" in capsys.readouterr().err
    for script, _args in SUITES.values():
        assert (benchmarks_dir() / script).is_file(), script
