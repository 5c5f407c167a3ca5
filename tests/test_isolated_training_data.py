"""Isolated decoding of training and evaluation data (``finetune`` / ``eval data --isolate-decoding``).

The media of every row are read in killable worker processes (:mod:`longllava_sdk.isolation`)
when asked: the samples are bit-identical to in-process reading, and a file that runs a
decoder past its limits is one bad row of the whole-dataset validation report, naming the
file, with nothing written.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from PIL import Image

from longllava_sdk.cli import main
from longllava_sdk.errors import ConfigError, DatasetError
from longllava_sdk.isolation import DecodeLimits, requested_limits
from longllava_sdk.training.data import prepare_datasets
from longllava_sdk.training.run_log import read_trainer_log
from trainer_fixtures import builtin_plugins, one_torch_thread  # noqa: F401  (autouse fixtures)
from trainer_fixtures import write_colour_dataset, write_micro_model

#: A decoding worker may grow by this much: a 56 x 56 PNG fits, a 6000 x 6000 one (108 MB of pixels) does not.
TINY_MB = 32


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def _with_huge_png(root):
    """A colour dataset whose manifest gains a row with a 6000 x 6000 PNG (118 KB on disk)."""
    recipe = write_colour_dataset(root, n=4, head="classify", eval_fraction=0.0)
    Image.new("RGB", (6000, 6000), (10, 20, 30)).save(root / "huge.png")
    with open(root / "data.csv", "a") as handle:
        handle.write("huge.png,What colour is the square?,s-huge,red\n")
    return recipe


def test_isolated_samples_are_bit_identical(tmp_path):
    from longllava_sdk.config import LongLLaVAConfig
    from longllava_sdk.processing.processor import LongLLaVAProcessor
    from longllava_sdk.recipes import load_recipe

    recipe = load_recipe(write_colour_dataset(tmp_path / "data", n=3, head="generate", eval_fraction=0.0))
    processor = LongLLaVAProcessor.for_config(LongLLaVAConfig.from_preset("tiny"))
    plain = prepare_datasets(processor, recipe, max_length=256)
    isolated = prepare_datasets(processor, recipe, max_length=256, isolate_decoding=DecodeLimits(memory_mb=512))
    assert isolated.train.loader.isolation == DecodeLimits(memory_mb=512)
    assert plain.train.loader.isolation is None
    for index in range(len(plain.train)):
        a, b = plain.train.encode(index), isolated.train.encode(index)
        assert a.input_ids == b.input_ids and a.labels == b.labels
        assert len(a.images) == len(b.images) == 1
        assert all(x.mode == y.mode and x.size == y.size and x.tobytes() == y.tobytes()
                   for x, y in zip(a.images, b.images))


def test_finetune_isolate_decoding_trains_with_the_same_first_loss(tmp_path):
    recipe = write_colour_dataset(tmp_path / "data", n=4, head="classify", eval_fraction=0.0)
    base = write_micro_model(tmp_path / "base")
    losses = []
    for name, extra in (("plain", []), ("isolated", ["--isolate-decoding"])):
        out = tmp_path / name
        status, printed, err = _run(["finetune", "--domain", str(recipe), "--model", str(base), "--output", str(out),
                                     "--max-steps", "2", "--logging-steps", "1", "--no-merge", *extra])
        assert status == 0, (printed + err)[-2000:]
        steps = [r for r in read_trainer_log(out / "trainer_log.jsonl") if "loss" in r]
        assert [r["step"] for r in steps][:1] == [1]
        losses.append(steps[0]["loss"])
        assert json.loads((out / "run.json").read_text())["arguments"]["isolate_decoding"] is bool(extra)
    assert losses[0] == losses[1]


def test_a_file_over_the_decode_memory_limit_is_a_bad_row_naming_it(tmp_path):
    recipe = _with_huge_png(tmp_path / "data")
    base = write_micro_model(tmp_path / "base")
    out = tmp_path / "run"
    status, printed, err = _run(["finetune", "--domain", str(recipe), "--model", str(base), "--output", str(out),
                                 "--max-steps", "1", "--isolate-decoding", "--decode-memory-mb", str(TINY_MB)])
    assert status == 1
    bad = [line for line in err.splitlines() if "huge.png" in line]
    assert bad and f"more memory than its limit of {TINY_MB} MiB" in bad[0] and "DecodeLimitError" in bad[0], err
    assert "1 invalid row(s)" in err and "line 6 (id 's-huge')" in bad[0], err  # the other rows read fine
    assert not out.exists()  # nothing written


def test_eval_data_reports_the_row_too(tmp_path):
    from longllava_sdk.evaluation.dataset import evaluate_data

    recipe = _with_huge_png(tmp_path / "data")
    model = write_micro_model(tmp_path / "model")
    with pytest.raises(DatasetError) as caught:
        evaluate_data(model=str(model), domain=str(recipe), output=str(tmp_path / "eval"), progress=False,
                      isolate_decoding=True, decode_memory_mb=TINY_MB)
    assert len(caught.value.problems) == 1 and "huge.png" in caught.value.problems[0]
    assert "memory" in caught.value.problems[0]
    assert not (tmp_path / "eval").exists()


def test_print_config_shows_the_options_and_limits_are_checked(tmp_path):
    status, printed, err = _run(["finetune", "--domain", "medical", "--isolate-decoding", "--decode-timeout", "5",
                                 "--print-config"])
    assert status == 0, err
    assert "isolate_decoding: true" in printed and "decode_timeout: 5.0" in printed
    assert f"decode_memory_mb: {DecodeLimits.memory_mb}" in printed
    assert requested_limits(False) is None
    assert requested_limits(True) == DecodeLimits()
    with pytest.raises(ConfigError, match="decode_timeout"):
        requested_limits(True, decode_timeout=0)


def test_code_read_from_stdin_gets_advice_not_a_crash(tmp_path):
    """multiprocessing's fork server re-imports ``__main__``: ``python - <<EOF`` cannot be re-imported,
    so isolation refuses with advice instead of reporting every read as a crashed worker."""
    import subprocess
    import sys
    from pathlib import Path

    script = ("import os\n"
              "from longllava_sdk.isolation import DecodeLimits, run_isolated\n"
              "run_isolated(os.getpid, limits=DecodeLimits(timeout_s=30))\n")
    root = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**__import__("os").environ, "PYTHONPATH": root})
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("longllava_sdk.errors.ConfigError:") and "'<stdin>'" in last and "isolate_decoding=False" in last
    # the same call from a file works (with the main guard any multiprocessing program needs)
    body = script.splitlines()
    (tmp_path / "run.py").write_text("\n".join(body[:2]) + "\nif __name__ == '__main__':\n    print(" + body[2] + ")\n")
    done = subprocess.run([sys.executable, str(tmp_path / "run.py")], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**__import__("os").environ, "PYTHONPATH": root})
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) > 0
