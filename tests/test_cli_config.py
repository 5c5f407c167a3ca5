"""Every command takes --config FILE and --print-config; a bad command line is one line, status 2.

* ``COMMAND ... --print-config > f.yaml`` then ``COMMAND --config f.yaml`` gives the function
  exactly the arguments the flags gave (for every built-in command), and for ``plan`` the same
  printed output end to end;
* a domain recipe is a valid ``finetune`` config;
* unknown flags, commands and modes get "did you mean", in one line, status 2, no traceback;
* ``longllava-sdk --help``, ``plugins`` and ``plan`` start without torch / transformers / numba.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from longllava_sdk.cli import available_commands, main, parse_command


def _argv(tmp_path: Path) -> dict[str, list[str]]:
    """Each built-in command with non-default values for options of every kind."""
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    return {
        "info": ["info", "--preset", "a13b", "--json-output"],
        "init-model": ["init-model", "out", "--seed", "3", "--overwrite"],
        "infer": ["infer", "--model", "m", "--prompt", "p", "--image", "a.png", "b.png", "--adapter-option",
                  "window=lung", "--adapter-option", "allow_non_parallel=true", "--dtype", "bf16", "--no-stream",
                  "--export", "geojson", "--export-path", "o.geojson"],
        "convert-official": ["convert-official", "src", "dst", "--dtype", "bfloat16", "--allow-pickle"],
        "plugins": ["plugins", "--json", "--adapter", "dicom"],
        "finetune": ["finetune", "--domain", "medical", "--lr", "0.001", "--max-steps", "3", "--no-merge",
                     "--adapter-option", "window=lung", "--full"],
        "merge": ["merge", "adapter", "merged", "--overwrite"],
        "eval niah": ["eval", "niah", "--model", "m", "--num-images", "2", "4", "--depths", "0", "0.5", "--seed", "3",
                      "--haystack", "a.mp4", "b.mp4", "--device", "cpu", "--no-heatmap"],
        "eval vnbench": ["eval", "vnbench", "--model", "m", "--tasks", "counting", "--quantize", "int8",
                         "--needle-scale", "0.25"],
        "eval data": ["eval", "data", "--model", "m", "--domain", "medical", "--split", "all", "--dtype", "float16"],
        "serve": ["serve", "m", "--root", str(root), "--max-queue", "2", "--allow-remote", "a.org", "*.b.org",
                  "--quantize", "int8", "--port", "0", "--no-access-log"],
        "plan": ["plan", "--preset", "tiny", "--images", "10", "--dtype", "int8", "--device", "cpu"],
        "bench": ["bench", "--suite", "scan", "int8"],
        "data formats": ["data", "formats", "--json"],
        "data import": ["data", "import", "llava", "src.json", "--output", "o.jsonl", "--strict"],
        "data deidentify": ["data", "deidentify", "in", "--output", "out", "--seed", "s"],
        "export dicom-sr": ["export", "dicom-sr", "--series", "ct", "--answer", "a", "--output", "o.dcm",
                            "--model", "m", "--series-number", "12", "--overwrite"],
        "export geojson": ["export", "geojson", "--raster", "s.tif", "--answer", "a {<0><0><9><9>}", "--output",
                           "o.geojson"],
    }


def _all_commands() -> set[str]:
    names = set()
    for name, func in available_commands().items():
        subcommands = getattr(func, "subcommands", None)
        names |= {f"{name} {sub}" for sub in subcommands} if subcommands else {name}
    return names


def test_every_builtin_command_is_covered(tmp_path):
    assert set(_argv(tmp_path)) == _all_commands()


@pytest.mark.parametrize("command", sorted(_argv(Path("/tmp"))))
def test_print_config_then_config_reproduces_the_call(command, tmp_path, capsys):
    argv = _argv(tmp_path)[command]
    func, args, kwargs, _ = parse_command(argv)
    assert main([*argv, "--print-config"]) == 0
    config = tmp_path / "run.yaml"
    config.write_text(capsys.readouterr().out)
    words = command.split()
    again_func, again_args, again_kwargs, _ = parse_command([*words, "--config", str(config)])
    assert repr(again_func) == repr(func) and again_args == args and again_kwargs == kwargs
    # later flags override the file
    if command == "plan":
        _, _, override, _ = parse_command([*words, "--config", str(config), "--images", "3"])
        assert override["images"] == 3 and override["load"] == kwargs["load"]


def test_plan_from_its_printed_config_prints_the_same_plan(tmp_path, capsys):
    argv = ["plan", "--preset", "tiny", "--images", "20", "--device", "cpu", "--gpu-memory", "8GB"]
    assert main(argv) == 0
    direct = capsys.readouterr().out
    assert main([*argv, "--print-config"]) == 0
    config = tmp_path / "plan.yaml"
    config.write_text(capsys.readouterr().out)
    assert main(["plan", "--config", str(config)]) == 0
    assert capsys.readouterr().out == direct and "images" in direct


def test_a_domain_recipe_is_a_finetune_config():
    import longllava_domains

    recipe = Path(longllava_domains.__file__).parent / "medical" / "recipe.yaml"
    _, args, kwargs, _ = parse_command(["finetune", "--config", str(recipe), "--max-steps", "2"])
    assert args[0].domain == str(recipe) and args[0].max_steps == 2 and not kwargs


def test_serve_model_positional_is_the_model_flag(tmp_path):
    _, args, kwargs, _ = parse_command(["serve", "runs/x/merged", "--port", "0"])
    _, args2, kwargs2, _ = parse_command(["serve", "--model", "runs/x/merged", "--port", "0"])
    assert kwargs == kwargs2 and kwargs["model"] == "runs/x/merged"


def test_one_dtype_vocabulary():
    _, _, plan_int8, _ = parse_command(["plan", "--dtype", "int8"])
    _, _, plan_quant, _ = parse_command(["plan", "--quantize", "int8"])
    assert plan_int8["load"] == plan_quant["load"]
    _, _, infer, _ = parse_command(["infer", "--model", "m", "--prompt", "p", "--dtype", "bf16"])
    _, _, infer_long, _ = parse_command(["infer", "--model", "m", "--prompt", "p", "--dtype", "bfloat16"])
    assert infer["load"] == infer_long["load"] and infer["load"].dtype == "bfloat16"


@pytest.mark.parametrize("argv, expected", [
    (["finetune", "--domian", "medical"], "did you mean --domain?"),
    (["finetune", "--max-step", "3"], "did you mean --max-steps?"),
    (["finetun", "--domain", "medical"], "did you mean 'finetune'?"),
    (["eval", "nia", "--model", "m"], "did you mean 'niah'?"),
    (["plan", "--images", "many"], "--images: expected int"),
    (["infer", "--model", "m"], "missing --prompt"),
])
def test_bad_command_lines_are_one_line_with_status_2(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_misspelt_key_in_a_config_file_gets_did_you_mean(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("domian: medical\n")
    assert main(["finetune", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "'domian' (did you mean 'domain'?)" in err and len(err.strip().splitlines()) == 1


def test_bad_values_of_parameter_objects_speak_cli(capsys):
    assert main(["plan", "--dtype", "int4"]) == 1
    assert "--dtype" in capsys.readouterr().err


LIGHT = """
import sys
from longllava_sdk.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "transformers", "numba") if m in sys.modules)
print("HEAVY", ",".join(heavy))
"""


PLAN_README = ["plan", "--preset", "9b", "--images", "1000", "--gpu-memory", "80GiB", "--quantize", "int8"]
PLAN_VIDEO_CPU = ["plan", "--preset", "a13b", "--video-frames", "64", "--device", "cpu", "--gpu-memory", "24GiB"]


@pytest.mark.parametrize("argv", [["--help"], ["plugins"], ["plugins", "--json"], ["data", "formats"],
                                  PLAN_README, PLAN_VIDEO_CPU])
def test_help_listings_and_plan_do_not_import_torch(argv):
    """The start-up contract (issue 16): light commands load none of torch / transformers / numba.

    ``plan`` counts the model from its config (no meta build), tags with ``tokenizers`` alone.
    """
    done = subprocess.run([sys.executable, "-c", LIGHT, *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "HEAVY", done.stdout[-500:]
    if argv[0] == "plan":
        assert "max images (memory)" in done.stdout
    if argv == ["plugins", "--json"]:
        assert json.loads(done.stdout.rsplit("HEAVY", 1)[0])


def test_import_longllava_sdk_is_light_and_registers_with_transformers_when_it_is_loaded():
    light = ("import sys, longllava_sdk; "
             "print(sorted(m for m in ('torch', 'transformers', 'numba') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", light], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]
    # transformers first, then the SDK: the Auto classes know the model at once
    auto = ("import transformers, longllava_sdk; from transformers import AutoConfig; "
            "print(type(AutoConfig.for_model('longllava')).__name__)")
    done = subprocess.run([sys.executable, "-c", auto], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "LongLLaVAConfig", done.stderr[-2000:]


def test_a_closed_pipe_ends_quietly_with_141():
    """`longllava-sdk data formats | head -0`: the reader is gone before the first line."""
    proc = subprocess.Popen([sys.executable, "-m", "longllava_sdk", "data", "formats"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141 and "Traceback" not in err and "Exception ignored" not in err, err


def _documented_command_lines() -> list[tuple[str, str]]:
    import re
    import shlex

    root = Path(__file__).resolve().parents[1]
    found = []
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", path.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip().removeprefix("$ ")
                if line.startswith("longllava-sdk "):
                    line = re.split(r" #| \| | > | && ", line)[0].strip().removesuffix(" &")  # & backgrounds
                    found.append((path.name, shlex.join(shlex.split(line)[1:])))  # quoted words stay one
    return found


def test_every_documented_command_line_parses():
    """A flag renamed in the code but not in README.md / docs/ fails here."""
    import shlex

    from longllava_sdk.errors import ConfigError

    lines = _documented_command_lines()
    assert len(lines) > 15
    for name, line in lines:
        try:
            parse_command(shlex.split(line))
        except SystemExit:
            pass
        except ConfigError:
            pass  # a value checked against this machine (a --root that does not exist here)
        except Exception as exc:  # noqa: BLE001 - the message names the line
            pytest.fail(f"{name}: longllava-sdk {line}: {exc}")
