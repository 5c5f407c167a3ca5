"""What a new user meets in the first hour (issue 17): images as one string, adapters' warnings
reaching the user, ``infer`` on a head model saying what its flags do.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from longllava_sdk import Pipeline
from longllava_sdk.errors import InputError
from trainer_fixtures import builtin_plugins, one_torch_thread  # noqa: F401  (autouse fixtures)
from trainer_fixtures import write_micro_model

CT_SERIES = Path(__file__).resolve().parents[1] / "domains" / "medical" / "data" / "ct" / "series_01"


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return Pipeline.from_pretrained(tiny_checkpoint, device="cpu")


@pytest.fixture
def frames(tmp_path) -> Path:
    """frames/img1.png ... img10.png (natural order differs from text order) and a note."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in (1, 2, 10):
        Image.new("RGB", (40, 30), (index * 20, 0, 0)).save(folder / f"img{index}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture
def gappy_ct(tmp_path) -> Path:
    """The bundled real CT series with its second slice dropped: a gap the DICOM adapter records."""
    folder = tmp_path / "ct_gap"
    shutil.copytree(CT_SERIES, folder)
    (folder / "slice_01.dcm").unlink()
    return folder


# -- images= as one string -----------------------------------------------------------------------


@pytest.mark.parametrize("form", ["folder", "folder-slash", "glob", "pathlib"])
def test_images_string_is_one_source_like_a_list_of_one(pipe, frames, form):
    source = {"folder": str(frames), "folder-slash": f"{frames}/", "glob": str(frames / "img*.png"),
              "pathlib": frames}[form]
    (single,) = pipe.collect_media(source)
    (listed,) = pipe.collect_media([source])
    assert len(single.images) == len(listed.images) == 3
    sizes = [image.size for image in single.images]
    assert sizes == [(40, 30)] * 3
    assert isinstance(pipe("Describe.", images=source, max_new_tokens=2), str)


def test_glob_is_read_in_natural_order_and_an_empty_glob_is_an_error(pipe, frames):
    (media,) = pipe.collect_media(str(frames / "img*.png"))
    assert [Path(m["path"]).name for m in media.metadata] == ["img1.png", "img2.png", "img10.png"]
    with pytest.raises(InputError, match=r"no file matches"):
        pipe.collect_media(str(frames / "*.jpg"))


# -- adapters' warnings reach the user -----------------------------------------------------------


def test_pipeline_logs_each_adapter_warning_naming_the_file(pipe, gappy_ct, caplog):
    with caplog.at_level(logging.WARNING, logger="longllava_sdk"):
        (media,) = pipe.collect_media(volume=gappy_ct)
    assert media.info["warnings"], "the adapter recorded nothing: the sample is not gappy any more"
    records = [r for r in caplog.records if r.name.startswith("longllava_sdk") and r.levelno == logging.WARNING]
    assert len(records) == len(media.info["warnings"])
    for record in records:
        message = record.getMessage()
        assert message.startswith(str(gappy_ct)) and "\n" not in message
    assert "spacing" in records[0].getMessage()


def test_complete_series_logs_nothing(pipe, caplog):
    with caplog.at_level(logging.WARNING, logger="longllava_sdk"):
        (media,) = pipe.collect_media(volume=CT_SERIES)
    assert not media.info.get("warnings")
    assert not [r for r in caplog.records if r.name.startswith("longllava_sdk")]


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "longllava_sdk", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cwd)


def test_cli_prints_adapter_warnings_one_line_each(tiny_checkpoint, gappy_ct):
    done = _cli("infer", "--model", str(tiny_checkpoint), "--volume", str(gappy_ct), "--prompt", "Any nodule?",
                "--max-new-tokens", "2", "--no-stream", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert len(lines) == 1 and str(gappy_ct) in lines[0] and "irregular spacing" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


# -- infer on a head model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def head_model(tmp_path_factory) -> tuple[Path, Path]:
    """A micro model folder with a (random) classify head, and one of its images."""
    from longllava_sdk.heads import TaskHead
    from longllava_sdk.model_folders import save_head
    from longllava_sdk.registry import available_heads

    from trainer_fixtures import square_image

    root = tmp_path_factory.mktemp("head")
    folder = write_micro_model(root / "model")
    head = available_heads()["classify"](hidden_size=64, labels=["red", "blue"])
    assert isinstance(head, TaskHead)
    save_head(head, folder)
    image = root / "red.png"
    square_image("red").save(image)
    return folder, image


def test_infer_on_a_head_model_says_what_prompt_and_max_new_tokens_do(head_model):
    folder, image = head_model
    done = _cli("infer", "--model", str(folder), "--image", str(image), "--prompt", "What colour?",
                "--max-new-tokens", "5", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert '"labels"' in done.stdout
    notes = [line for line in done.stderr.splitlines() if "task head" in line]
    assert len(notes) == 1, done.stderr
    assert "--prompt is the head's input prompt" in notes[0] and "--max-new-tokens does not apply" in notes[0]
    done = _cli("infer", "--model", str(folder), "--image", str(image), "--prompt", "What colour?", "--device", "cpu")
    assert done.returncode == 0 and "--max-new-tokens" not in done.stderr and "head's input prompt" in done.stderr


# -- every README command runs on the README's install -------------------------------------------


def test_the_niah_heatmap_needs_no_plotting_library(tmp_path):
    """``eval niah`` (a README command) draws its heatmap on the core install: no matplotlib."""
    script = (
        "import sys; sys.modules['matplotlib'] = None  # as if it were not installed\n"
        "from longllava_sdk.evaluation.heatmap import write_heatmap\n"
        "cells = [{'num_images': n, 'depth': d, 'accuracy': a} for n, d, a in "
        "[(1, 0.0, 1.0), (1, 1.0, 0.0), (8, 0.0, 0.5), (8, 1.0, None)]]\n"
        f"write_heatmap(cells, {str(tmp_path / 'h.png')!r}, title='t')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from longllava_sdk.evaluation.heatmap import _CELL, _MARGIN, cell_colour

    image = Image.open(tmp_path / "h.png").convert("RGB")
    left, top = _MARGIN[0], _MARGIN[1]

    def centre_left(row: int, col: int) -> tuple[int, int, int]:  # beside the annotation
        return image.getpixel((left + col * _CELL[0] + 4, top + row * _CELL[1] + _CELL[1] // 2))

    assert centre_left(0, 0) == cell_colour(1.0) and cell_colour(1.0)[1] > cell_colour(1.0)[0]  # green
    assert centre_left(1, 0) == cell_colour(0.0) and cell_colour(0.0)[0] > cell_colour(0.0)[1]  # red
    assert centre_left(0, 1) == cell_colour(0.5)
    assert centre_left(1, 1) == (200, 200, 200)  # no value: grey


def test_cli_image_takes_a_folder_or_a_quoted_glob(tiny_checkpoint, frames):
    for source in (str(frames), str(frames / "img*.png")):
        done = _cli("infer", "--model", str(tiny_checkpoint), "--image", source, "--prompt", "Describe.",
                    "--max-new-tokens", "2", "--no-stream", "--device", "cpu")
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
