"""``longllava-sdk finetune`` and ``merge`` end to end.

The fast tests run the exact code path of ``finetune --domain X`` on a micro model and a
generated recipe; the ``slow`` ones run the bundled domains with no other argument, from a
fresh working directory, and execute the printed ``Pipeline`` snippet.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import warnings
import sys
import textwrap
from pathlib import Path

import pytest

from longllava_sdk.cli import main
from trainer_fixtures import builtin_plugins, one_torch_thread  # noqa: F401  (autouse fixtures)
from trainer_fixtures import assert_auto_files, write_colour_dataset, write_micro_model

REPO = Path(__file__).resolve().parents[1]


def snippet_from(output: str) -> str:
    """The indented Python block printed after "run it:"."""
    block = output.split("run it:\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory):
    """One `finetune` run shared by the tests below: (root, recipe, base model, run folder, stdout)."""
    root = tmp_path_factory.mktemp("cli")
    recipe = write_colour_dataset(root / "data", n=8, head="classify")
    base = write_micro_model(root / "base")
    out = root / "run"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = main(["finetune", "--domain", str(recipe), "--model", str(base), "--output", str(out)])
    assert status == 0, stdout.getvalue()[-2000:]
    # a quiet console: no warning a user cannot act on reaches a finetune run
    assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught]
    return root, recipe, base, out, stdout.getvalue()


def test_finetune_end_to_end_and_the_printed_snippet_works(classify_run, capsys):
    root, recipe, base, out, printed = classify_run
    assert f"model (load with Pipeline): {(out / 'model').resolve()}" in printed
    assert "metrics on the eval set (2 rows), next to the chance baselines" in printed
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/head.safetensors",
                 "adapter/tokenizer.json", "model/model.safetensors", "model/head_config.json",
                 "model/longllava_processor.json", "eval_metrics.json"):
        assert (out / name).is_file(), name
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert checkpoints and all((c / "checkpoint_complete.json").is_file() for c in checkpoints)
    namespace: dict = {}
    exec(snippet_from(printed), namespace)  # noqa: S102 - the snippet the user is told to run
    result = capsys.readouterr().out
    assert "'labels': [" in result and "'scores': {'red'" in result

    # the same output folder again is refused, naming the way out
    assert main(["finetune", "--domain", str(recipe), "--model", str(base), "--output", str(out)]) == 1
    assert "--resume" in capsys.readouterr().err


def test_merge_writes_a_standalone_model_equal_to_the_run_export(classify_run, capsys):
    from longllava_sdk import Pipeline
    from trainer_fixtures import square_image

    root, recipe, base, out, _printed = classify_run
    merged = root / "merged-again"
    assert main(["merge", str(out / "adapter"), str(merged)]) == 0
    assert "Pipeline.from_pretrained" in capsys.readouterr().out
    assert {"model.safetensors", "config.json", "tokenizer.json", "head_config.json", "head.safetensors"} <= \
        {p.name for p in merged.iterdir()}
    assert_auto_files(merged)  # loads with transformers' Auto classes (trust_remote_code=True) without the SDK import
    assert_auto_files(out / "merged")
    image = square_image("blue", seed=3)
    a = Pipeline.from_pretrained(out / "model", device="cpu").classify("What colour is the square?", images=[image])
    b = Pipeline.from_pretrained(merged, device="cpu").classify("What colour is the square?", images=[image])
    assert a["labels"] == b["labels"]
    assert all(abs(a["scores"][k] - b["scores"][k]) < 1e-5 for k in a["scores"])
    assert main(["merge", str(out / "adapter"), str(merged)]) == 1  # exists: refused without --overwrite
    assert main(["merge", str(out / "model"), str(root / "x")]) == 1  # not an adapter folder


def test_the_run_folder_is_what_hf_and_llama_factory_users_look_for(classify_run):
    """trainer_log.jsonl with numbers, the loss curve, run.json, model/ (and the old merged/ name)."""
    import json

    from PIL import Image

    from longllava_sdk.model_folders import check_model_folder
    from longllava_sdk.training.run_log import read_trainer_log

    root, recipe, base, out, printed = classify_run
    records = read_trainer_log(out / "trainer_log.jsonl")
    steps = [r for r in records if "loss" in r]
    assert steps and [r["step"] for r in steps] == sorted(r["step"] for r in steps)
    for record in steps:
        assert all(isinstance(record[k], (int, float)) and not isinstance(record[k], bool)
                   for k in ("step", "total_steps", "epoch", "loss", "learning_rate", "grad_norm", "elapsed")), record
    evaluation = [r for r in records if "eval_accuracy" in r]
    assert len(evaluation) == 1 and isinstance(evaluation[0]["eval_loss"], float)
    # the console prints the same numbers as numbers, not as strings ('loss': '0.9436')
    logged = [json.loads(line[line.index("{"):]) for line in printed.splitlines() if '{"loss": ' in line]
    assert logged and all(isinstance(entry["loss"], float) for entry in logged)
    assert "'loss': '" not in printed
    with Image.open(out / "training_loss.png") as image:
        assert image.format == "PNG" and image.size == (960, 560)
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 4  # a drawn curve, not a blank canvas
    config = json.loads((out / "run.json").read_text())
    assert config["model_dir"] == "model" and config["run"]["head"] == "classify"
    assert config["schedule"]["learning_rate"] == 1e-3 and config["schedule"]["batch_size"] == 2
    assert config["recipe"]["training"]["batch_size"] == 2 and config["options"]["max_steps"] is None
    assert config["arguments"]["domain"] == str(recipe) and config["arguments"]["force_schedule"] is False
    assert {"torch", "transformers", "peft"} <= set(config["versions"])
    assert len(config["data"]["train"]["sha256"]) == 64 and config["data"]["train"]["rows"] == 6
    # one name for the model; the old LoRA name is a relative link to it
    assert os.readlink(out / "merged") == "model"
    check_model_folder(out / "merged")
    summary = json.loads((out / "eval_metrics.json").read_text())
    assert set(summary["chance"]["eval_accuracy"]) == {"majority", "random"}


def test_full_finetune_generate_head_and_overwrite(tmp_path, capsys):
    recipe = write_colour_dataset(tmp_path / "data", n=6, head="generate", eval_fraction=0.34)
    base = write_micro_model(tmp_path / "base")
    out = tmp_path / "run"
    out.mkdir()
    (out / "longllava_run.json").write_text("{}")  # an earlier run of the SDK
    (out / "stale.txt").write_text("from the earlier run")
    args = ["finetune", "--domain", str(recipe), "--model", str(base), "--output", str(out), "--full",
            "--max-steps", "2", "--overwrite", "--lr", "1e-3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "stage domain, full, head generate, 2 steps" in printed
    assert not (out / "adapter").exists() and not (out / "stale.txt").exists()
    assert (out / "model" / "model.safetensors").is_file()
    assert_auto_files(out / "model")
    namespace: dict = {}
    exec(snippet_from(printed), namespace)  # noqa: S102
    assert capsys.readouterr().out.strip() != ""  # the generated answer (random weights: any text)


def test_finetune_errors_are_clear(tmp_path, capsys):
    assert main(["finetune"]) == 1
    assert "nothing to train on" in capsys.readouterr().err
    assert main(["finetune", "--domain", "no-such-domain"]) == 1
    err = capsys.readouterr().err
    assert "unknown domain 'no-such-domain'" in err and "medical" in err
    recipe = write_colour_dataset(tmp_path / "data", n=4, head="classify")
    assert main(["finetune", "--domain", str(recipe), "--stage", "align", "--output", str(tmp_path / "r")]) == 1
    assert "freezes the task head" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("domain", ["medical", "remote_sensing", "video"])
def test_bundled_domain_with_no_other_argument(tmp_path, domain):
    """`longllava-sdk finetune --domain X` from a fresh folder; the printed snippet runs."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "longllava_sdk", "finetune", "--domain", domain], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    noise = [line for line in done.stderr.splitlines() if "warn" in line.lower() or "Traceback" in line]
    assert not noise, noise  # a quiet console
    assert (tmp_path / "runs" / f"{domain}-domain-lora" / "model" / "model.safetensors").is_file()
    ran = subprocess.run([sys.executable, "-c", snippet_from(done.stdout)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.strip()


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("deepspeed", [None, "zero3"])
def test_two_process_finetune_through_the_cli(tmp_path, deepspeed):
    """`torchrun --nproc_per_node 2 -m longllava_sdk finetune ...` on CPU (gloo): DDP and ZeRO-3."""
    if deepspeed:
        pytest.importorskip("deepspeed")
    recipe = write_colour_dataset(tmp_path / "data", n=8, head="classify")
    base = write_micro_model(tmp_path / "base")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "longllava_sdk",
               "finetune", "--domain", str(recipe), "--model", str(base), "--output", str(out), "--max-steps", "2"]
    if deepspeed:
        command += ["--deepspeed", deepspeed]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "checkpoint_complete.json").is_file()
    if deepspeed:  # ZeRO shards of both ranks inside the one atomic checkpoint; merge is a separate step
        assert len(list((checkpoint / "global_step2").glob("*optim_states.pt"))) == 2
        assert not (out / "model").exists() and "longllava-sdk merge" in done.stdout
    else:
        assert (out / "model" / "model.safetensors").is_file()
