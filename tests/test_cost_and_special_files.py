"""Cost before work in the image path, and regular files only (issue 15, items 1 and 2).

* The released model's pad-to-square-then-resize view is built without the square canvas when
  that canvas would be large: a 20000 x 20 PNG through the processor runs under an address-space
  limit that the old code (a 20000 x 20000 canvas, 1.6 GB) cannot meet; a 65535 x 48 GIF with
  ``high_res`` splits within a bound.
* JPEGs over the decode budget are decoded at a DCT scale; other formats over it are refused
  naming the file (``decode_cost`` prices both from the header).
* A FIFO, socket or device anywhere the SDK reads a file is a typed error within seconds (each
  test has a 30 s timeout: a blocking ``open()`` fails it).
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longllava_sdk import local_files
from longllava_sdk.adapters import allowed_root
from longllava_sdk.decode_cost import decode_cost
from longllava_sdk.errors import (CheckpointError, ConfigError, InputError, OutsideRootError, ResourceLimitError,
                                  SpecialFileError)
from longllava_sdk.highres import CLIP_MEAN_RGB, expand_to_square, plan_view_size, square_view
from longllava_sdk.registry import resolve_adapter

from bad_inputs.medical import write_ct_series

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = pytest.mark.timeout(30)


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _run_limited(code: str, limit_mb: int) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter whose address space may grow ``limit_mb`` past what its
    imports took (RLIMIT_AS set after them): an allocation beyond fails with MemoryError."""
    prelude = textwrap.dedent(f"""
        import resource, sys
        import numpy as np, torch
        from PIL import Image
        import longllava_sdk.processing.processor, longllava_plugins.images
        def _vsz():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (_vsz() + {limit_mb} * 2**20, resource.RLIM_INFINITY))
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=240, cwd=ROOT)  # imports are slow on a loaded machine


# ---------------------------------------------------------------------------------------------
# resize before padding
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(300, 200), (41, 999), (64, 48), (337, 336)])
def test_square_view_is_the_official_pad_then_resize_on_normal_images(size):
    image = _noise(*size, seed=1)
    expected = expand_to_square(image, CLIP_MEAN_RGB).resize((336, 336), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(square_view(image, 336)), np.asarray(expected))


@pytest.mark.parametrize("size", [(300, 200), (41, 999), (64, 48), (4000, 30), (3, 2000), (1, 1), (777, 1234)])
def test_banded_view_matches_pad_then_resize_within_one_grey_level(size, monkeypatch):
    """The path used for large canvases, forced on every size: same layout, at most 1 level apart."""
    import longllava_sdk.highres as highres

    image = _noise(*size, seed=2)
    expected = np.asarray(expand_to_square(image, CLIP_MEAN_RGB).resize((336, 336), Image.Resampling.BICUBIC))
    monkeypatch.setattr(highres, "EXACT_CANVAS_BYTES", 0)
    banded = np.asarray(highres.square_view(image, 336)).astype(int)
    assert np.abs(banded - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("size", [(20000, 20), (60, 60000), (65535, 48)])
def test_extreme_aspect_ratios_are_letterboxed_not_stretched(size):
    image = Image.new("RGB", size, (250, 10, 10))
    view = np.asarray(square_view(image, 336)).astype(int)
    plan = plan_view_size(size)
    assert view.shape == (336, 336, 3) and not plan.exact
    left, top, right, bottom = plan.content_box
    changed = np.argwhere(np.abs(view - np.array(CLIP_MEAN_RGB)).sum(-1) > 6)
    across, along = (0, 1) if size[0] > size[1] else (1, 0)
    centre = ((top + bottom) / 2, (left + right) / 2)[across]
    # the content is a line through the centre (a few pixels thick) spanning the long side
    assert changed.size and np.abs(changed[:, across] - centre).max() <= 3
    assert changed[:, along].max() - changed[:, along].min() >= 300
    far = view[:100] if size[0] > size[1] else view[:, :100]
    assert (far == np.array(CLIP_MEAN_RGB)).all()  # the padding is the CLIP mean, untouched
    assert plan.work_bytes < 128 << 20


def test_one_pixel_wide_image_is_a_view_of_padding():
    view = np.asarray(square_view(Image.new("RGB", (1, 60000), (0, 0, 0)), 336)).astype(int)
    assert view.shape == (336, 336, 3)
    assert (np.abs(view - np.array(CLIP_MEAN_RGB)).max(axis=(0, 2))[np.r_[0:165, 171:336]] == 0).all()


def test_processor_views_a_20000x20_png_without_the_square_canvas(tmp_path):
    """The old processor padded to 20000 x 20000 (1.6 GB) before resizing: under a 700 MB
    address-space allowance it failed with MemoryError; the view needs a few tens of MB."""
    path = tmp_path / "strip.png"
    Image.new("RGB", (20000, 20), (250, 10, 10)).save(path)
    assert path.stat().st_size < 4096  # the 1.3 KB file
    result = _run_limited(f"""
        from transformers import CLIPImageProcessorPil
        from longllava_sdk.processing.processor import LongLLaVAProcessor
        from longllava_sdk.processing.tokenizer import build_tokenizer
        ip = CLIPImageProcessorPil(size={{"shortest_edge": 336}}, crop_size={{"height": 336, "width": 336}})
        processor = LongLLaVAProcessor(build_tokenizer(1000), ip, tokens_per_image=4)
        pixels = processor.preprocess_images([Image.open({str(path)!r})])
        print(tuple(pixels.shape), float(pixels[0, :, :100].abs().max()), float(pixels[0, 0, 160:176].max()))
    """, limit_mb=700)
    assert result.returncode == 0, result.stderr[-2000:]
    shape, padding, content = result.stdout.split(")")[0] + ")", *result.stdout.split(")")[1].split()
    assert shape == "(1, 3, 336, 336)"
    assert float(padding) < 0.02  # CLIP-mean padding normalises to ~0
    assert float(content) > 0.3  # the red strip is there, in the centre rows


def test_high_res_65535x48_gif_splits_within_a_bound(tmp_path):
    """Used to ask for a 65535^2 canvas (~17 GB) for the global view after every limit check."""
    path = tmp_path / "wide.gif"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 65535), dtype=np.uint8), "L").convert("P").save(path)
    result = _run_limited(f"""
        from longllava_plugins.images import ImagesAdapter
        media = ImagesAdapter(high_res=True).load({str(path)!r})
        print(media.grid, len(media.images), media.images[0].size, {{im.size for im in media.images}})
    """, limit_mb=700)
    assert result.returncode == 0, result.stderr[-2000:]
    grid, count = result.stdout.split(")")[0] + ")", int(result.stdout.split(")")[1].split()[0])
    rows, cols = eval(grid)  # noqa: S307 - our own subprocess's printed tuple
    assert rows * cols <= 64 and count == rows * cols + 1
    assert "{(336, 336)}" in result.stdout


# ---------------------------------------------------------------------------------------------
# decode cost
# ---------------------------------------------------------------------------------------------
def test_decode_cost_prices_from_the_header(tmp_path):
    png = tmp_path / "a.png"
    _noise(640, 480).save(png)
    cost = decode_cost(png)
    assert 640 * 480 * 4 <= cost < 640 * 480 * 4 + (64 << 20)
    assert decode_cost(png.read_bytes()) == cost
    with pytest.raises(ResourceLimitError, match="a.png.*max_decoded_bytes"):
        decode_cost(png, max_bytes=100_000)


def test_jpeg_over_the_budget_is_decoded_at_a_dct_scale_png_is_refused(tmp_path):
    from longllava_plugins.images import ImagesAdapter

    jpeg, png = tmp_path / "big.jpg", tmp_path / "big.png"
    image = _noise(2400, 1600, seed=4).resize((2400, 1600))
    image.save(jpeg, quality=90)
    image.save(png)
    budget = 2400 * 1600 * 4 // 3  # a third of the full decode
    media = ImagesAdapter(max_decoded_bytes=budget).load(jpeg)
    assert media.metadata[0]["decoded_at"] == "1/2" and media.images[0].size == (1200, 800)
    full = ImagesAdapter().load(jpeg).images[0]  # within the default budget: full size, as before
    assert full.size == (2400, 1600)
    with pytest.raises(ResourceLimitError, match=r"big\.png.*max_decoded_bytes"):
        ImagesAdapter(max_decoded_bytes=budget).load(png)
    deferred = ImagesAdapter(max_decoded_bytes=budget, defer_decoding=True).load(jpeg).images[0]
    assert deferred.size == (1200, 800) and deferred.load().size == (1200, 800)


# ---------------------------------------------------------------------------------------------
# regular files only
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def fifo(tmp_path):
    def make(name: str, folder: Path = tmp_path) -> Path:
        path = folder / name
        os.mkfifo(path)
        return path
    return make


@TIMEOUT
@pytest.mark.parametrize("name,kind", [("scan.tif", "tiled"), ("brain.nii", "volume"), ("brain.nii.gz", "volume"),
                                       ("photo.png", "images"), ("clip.mp4", "video"), ("slice.dcm", "volume")])
def test_fifo_given_as_a_source_is_a_typed_error(fifo, name, kind):
    path = fifo(name)
    with pytest.raises(SpecialFileError, match=f"{name}.*FIFO"):
        resolve_adapter(str(path), kind=kind).load(str(path), max_images=4)


@TIMEOUT
@pytest.mark.parametrize("adapter", ["geotiff", "nifti", "images", "video", "dicom"])
def test_fifo_named_adapter_is_refused_before_opening(fifo, adapter):
    path = fifo("input.tif" if adapter == "geotiff" else "input.nii" if adapter == "nifti" else "input.bin")
    with pytest.raises(SpecialFileError, match="FIFO"):
        resolve_adapter(str(path), adapter).load(str(path), max_images=4)


@TIMEOUT
def test_fifo_inside_a_dicom_series_folder_is_named(tmp_path, fifo):
    series = tmp_path / "series"
    write_ct_series(series, n=4)
    fifo("zz_slice.dcm", series)
    with pytest.raises(SpecialFileError, match="zz_slice.dcm.*FIFO"):
        resolve_adapter(str(series), kind="volume").load(str(series), max_images=4)


@TIMEOUT
def test_fifo_and_socket_in_an_image_folder(tmp_path, fifo):
    folder = tmp_path / "images"
    folder.mkdir()
    _noise(32, 32).save(folder / "a.png")
    fifo("b.png", folder)
    from longllava_plugins.images import ImagesAdapter

    with pytest.raises(SpecialFileError, match="b.png.*FIFO"):
        ImagesAdapter().load(str(folder))
    os.unlink(folder / "b.png")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(folder / "c.png"))
        with pytest.raises(SpecialFileError, match="c.png.*socket"):
            ImagesAdapter().load(str(folder))


@TIMEOUT
def test_device_through_a_symlink_is_refused(tmp_path):
    link = tmp_path / "zero.png"
    link.symlink_to("/dev/zero")
    with pytest.raises(SpecialFileError, match="character device"):
        local_files.open_regular(link)
    from longllava_plugins.images import ImagesAdapter

    with pytest.raises(SpecialFileError, match="zero.png"):
        ImagesAdapter().load(str(link))


@TIMEOUT
def test_manifest_recipe_and_model_folder_fifos(tmp_path, fifo, tiny_checkpoint):
    from longllava_sdk.recipes import Recipe
    from longllava_sdk.training.data import read_rows

    with pytest.raises(InputError, match="train.jsonl.*FIFO"):
        read_rows(fifo("train.jsonl"))
    with pytest.raises(ConfigError, match="recipe.yaml.*FIFO"):
        Recipe.from_yaml(fifo("recipe.yaml"))
    folder = tmp_path / "model"
    folder.mkdir()
    for item in Path(tiny_checkpoint).iterdir():
        if item.is_file():
            (folder / item.name).symlink_to(item)
    fifo("tokenizer.json.lock", folder)
    from longllava_sdk.checkpoint import check_weights_safe

    with pytest.raises(CheckpointError, match="tokenizer.json.lock.*FIFO"):
        check_weights_safe(folder)
    from longllava_sdk.processing.processor import LongLLaVAProcessor

    with pytest.raises(InputError, match="tokenizer.json.lock.*FIFO"):
        LongLLaVAProcessor.from_pretrained(folder)


def test_pipeline_gives_each_image_a_decode_budget(tiny_model, processor, tmp_path, monkeypatch):
    import longllava_sdk.pipeline as pipeline_module

    path = tmp_path / "photo.png"
    _noise(400, 300).save(path)
    pipe = pipeline_module.Pipeline(tiny_model, processor)
    assert len(pipe.load_media(str(path), kind="images").images) == 1
    monkeypatch.setattr(pipeline_module, "PIPELINE_IMAGE_DECODE_BYTES", 100_000)
    with pytest.raises(ResourceLimitError, match="photo.png.*max_decoded_bytes"):
        pipe.load_media(str(path), kind="images")
    explicit = pipe.load_media(str(path), kind="images", options={"max_decoded_bytes": 10 << 20})
    assert len(explicit.images) == 1  # the caller's budget wins


def test_open_regular_reads_regular_files_and_keeps_the_root(tmp_path):
    inside = tmp_path / "root" / "a.bin"
    inside.parent.mkdir()
    inside.write_bytes(b"data")
    with local_files.open_regular(inside, root=inside.parent) as handle:
        assert handle.read() == b"data"
    outside = tmp_path / "b.bin"
    outside.write_bytes(b"x")
    (inside.parent / "link.bin").symlink_to(outside)
    with pytest.raises(OutsideRootError):
        local_files.open_regular(inside.parent / "link.bin", root=inside.parent)
    with allowed_root(inside.parent), pytest.raises(OutsideRootError):
        from longllava_plugins.images import ImagesAdapter

        ImagesAdapter().load(str(inside.parent / "link.bin"))
    with pytest.raises(InputError, match="only local"):
        local_files.local_file("http://example.com/a.png")


# ---------------------------------------------------------------------------------------------
# repeated container boxes
# ---------------------------------------------------------------------------------------------
def _boxes(data: bytes, start: int, end: int):
    offset = start
    while offset + 8 <= end:
        size, kind = struct.unpack(">I4s", data[offset:offset + 8])
        yield kind, offset, offset + size
        offset += size


@TIMEOUT
def test_mp4_with_a_repeated_track_box_is_refused_before_ffmpeg(tmp_path):
    from longllava_plugins.video import MAX_TRACKS, VideoAdapter

    from test_adapter_video import encode_video

    source = encode_video(tmp_path / "clip.mp4", [np.zeros((32, 32, 3), np.uint8)] * 4)
    data = source.read_bytes()
    moov = next((s, e) for kind, s, e in _boxes(data, 0, len(data)) if kind == b"moov")
    trak = next((s, e) for kind, s, e in _boxes(data, moov[0] + 8, moov[1]) if kind == b"trak")
    extra = data[trak[0]:trak[1]] * (MAX_TRACKS + 1)
    body = data[moov[0] + 8:moov[1]] + extra
    new_moov = struct.pack(">I4s", 8 + len(body), b"moov") + body
    bad = tmp_path / "many_tracks.mp4"
    bad.write_bytes(data[:moov[0]] + new_moov + data[moov[1]:])
    assert len(VideoAdapter().load(str(source), max_images=2).images) >= 1
    with pytest.raises(ResourceLimitError, match="many_tracks.mp4.*trak"):
        VideoAdapter().load(str(bad), max_images=2)


def test_read_bytes_limit(tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps(list(range(1000))))
    with pytest.raises(InputError, match="more than"):
        local_files.read_bytes(path, limit=100)
    assert json.loads(local_files.read_text(path)) == list(range(1000))
    assert io.BytesIO(local_files.read_bytes(path)).read(1) == b"["
