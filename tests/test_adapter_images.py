"""The images adapter: real images shipped in scikit-image's wheel plus generated edge cases."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from longllava_plugins.images import DEFAULT_MAX_PIXELS, ImagesAdapter
from longllava_sdk.errors import AdapterError
from longllava_sdk.media import Media


@pytest.fixture(scope="module")
def skimage_data() -> Path:
    """scikit-image's bundled sample images (a ``[test]`` extra; real files from a wheel)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        pytest.fail("scikit-image is not installed (pip install -e '.[test]')")
    return Path(spec.origin).parent / "data"


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("astronaut.png", (512, 512)),  # RGB PNG
        ("camera.png", (512, 512)),  # greyscale PNG
        ("horse.png", (400, 328)),  # RGBA PNG
        ("hubble_deep_field.jpg", (1000, 872)),  # JPEG
        ("rocket.jpg", (640, 427)),
        ("chelsea.png", (451, 300)),  # carries an EXIF orientation tag (1 = upright)
    ],
)
def test_real_images_from_scikit_image(skimage_data, name, size):
    media = ImagesAdapter().load(skimage_data / name)
    assert isinstance(media, Media) and media.kind == "images"
    (image,) = media.images
    assert image.mode == "RGB" and image.size == size
    assert media.metadata[0]["path"].endswith(name)
    assert np.asarray(image).std() > 5  # real content, not a blank


def test_real_greyscale_is_replicated_and_pixels_preserved(skimage_data):
    media = ImagesAdapter().load(skimage_data / "camera.png")
    array = np.asarray(media.images[0])
    original = np.asarray(Image.open(skimage_data / "camera.png"))
    np.testing.assert_array_equal(array[..., 0], original)
    np.testing.assert_array_equal(array[..., 0], array[..., 2])


def test_alpha_is_composited_on_the_background(skimage_data, tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 10:, 3] = 255  # right half opaque red, left half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "half.png")
    white = np.asarray(ImagesAdapter().load(tmp_path / "half.png").images[0])
    assert (white[:, :10] == 255).all() and (white[:, 10:] == (200, 0, 0)).all()
    clip_mean = (122, 116, 104)
    grey = np.asarray(ImagesAdapter(background=clip_mean).load(tmp_path / "half.png").images[0])
    assert (grey[:, :10] == clip_mean).all()
    # real RGBA file with translucent pixels: out = a * colour + (1 - a) * white
    original = np.asarray(Image.open(skimage_data / "horse.png")).astype(np.float64)
    out = np.asarray(ImagesAdapter().load(skimage_data / "horse.png").images[0]).astype(np.float64)
    alpha = original[..., 3:] / 255.0
    np.testing.assert_allclose(out, alpha * original[..., :3] + (1 - alpha) * 255.0, atol=1.0)


def test_real_animated_gif_and_multipage_tiff_give_first_frame(skimage_data):
    media = ImagesAdapter().load([skimage_data / "no_time_for_that_tiny.gif", skimage_data / "multipage.tif"])
    assert [m["n_frames"] for m in media.metadata] == [24, 2]
    assert len(media.info["warnings"]) == 2
    first = Image.open(skimage_data / "no_time_for_that_tiny.gif").convert("RGB")
    np.testing.assert_array_equal(np.asarray(media.images[0]), np.asarray(first))


def test_real_tiff_pillow_cannot_decode_is_a_clear_error(skimage_data):
    # float64 planar RGB written by tifffile: a valid TIFF that Pillow cannot decode
    with pytest.raises(AdapterError, match="TIFF file that Pillow cannot decode.*geotiff") as info:
        ImagesAdapter().load(skimage_data / "multipage_rgb.tif")
    assert info.value.path.endswith("multipage_rgb.tif")


def test_folder_natural_order_and_sampling_keeps_first_and_last(tmp_path):
    for i in range(12):
        Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"junk")
    media = ImagesAdapter().load(tmp_path)
    assert [Path(m["path"]).name for m in media.metadata] == [f"img{i}.png" for i in range(12)]
    sampled = ImagesAdapter().load(tmp_path, max_images=4)
    names = [Path(m["path"]).name for m in sampled.metadata]
    assert len(names) == 4 and names[0] == "img0.png" and names[-1] == "img11.png"
    assert sampled.info["sampled"] is True
    assert [int(np.asarray(im)[0, 0, 0]) for im in sampled.images] == [m["index"] * 20 for m in sampled.metadata]


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((100, 200, 3), np.uint8)
    array[:20, :20] = (255, 0, 0)  # red marker, top-left as stored
    image = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display" (portrait phone photo)
    path = tmp_path / "portrait.jpg"
    image.save(path, exif=exif, quality=95)
    out = np.asarray(ImagesAdapter().load(path).images[0])
    assert out.shape[:2] == (200, 100)
    assert out[5, -5, 0] > 200 and out[5, -5, 1] < 60  # marker now top-right
    assert out[-5, 5, 0] < 60


def test_sixteen_bit_and_float_images_are_scaled(tmp_path):
    ramp16 = (np.arange(256 * 4, dtype=np.uint32).reshape(4, 256) * 64).astype(np.uint16)
    Image.fromarray(ramp16).save(tmp_path / "ramp16.png")
    out = np.asarray(ImagesAdapter().load(tmp_path / "ramp16.png").images[0])
    np.testing.assert_array_equal(out[..., 0], (ramp16.astype(np.uint32) // 257).astype(np.uint8))
    values = np.linspace(-3.0, 5.0, 64, dtype=np.float32).reshape(8, 8)
    values[0, 0] = np.nan
    Image.fromarray(values, mode="F").save(tmp_path / "float.tif")
    out = np.asarray(ImagesAdapter().load(tmp_path / "float.tif").images[0])
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255 and out[0, 1, 0] == 0


def test_high_res_pad_mode(skimage_data):
    media = ImagesAdapter(high_res=True).load(skimage_data / "hubble_deep_field.jpg")
    assert media.kind == "tiled" and media.grid == (3, 3)
    assert len(media.images) == 1 + 9
    assert media.metadata[0]["role"] == "global"
    assert all(im.size == (336, 336) for im in media.images)
    assert [(m["row"], m["col"]) for m in media.metadata[1:]] == [(r, c) for r in range(3) for c in range(3)]
    # padding 1008 - 1000 = 8 (4 + 4) horizontally, 1008 - 872 = 136 (68 + 68) vertically
    assert media.info["split"]["padding"] == (4, 68, 4, 68)
    assert media.metadata[1]["box"] == (-4, -68, 332, 268)
    assert media.tile_rows() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_high_res_budget_and_grid_mode(skimage_data):
    capped = ImagesAdapter(high_res=True).load(skimage_data / "hubble_deep_field.jpg", max_images=5)
    assert len(capped.images) <= 5 and capped.grid[0] * capped.grid[1] <= 4
    assert any("shrunk" in w for w in capped.info["warnings"])
    grid = ImagesAdapter(high_res=True, split_mode="grid", max_tiles=6).load(skimage_data / "rocket.jpg")
    assert grid.grid == (2, 3)  # 640x427 ~ 3:2
    assert grid.info["split"]["padding"] == (0, 0, 0, 0)
    with pytest.raises(AdapterError, match="one image"):
        ImagesAdapter(high_res=True).load([skimage_data / "rocket.jpg", skimage_data / "camera.png"])


def test_format_allowlist_refuses_formats_pillow_could_read(tmp_path):
    path = tmp_path / "icon.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(path, format="ICO")  # readable by Pillow, not allowed
    with pytest.raises(AdapterError, match="Windows icon") as info:
        ImagesAdapter().load(path)
    assert info.value.path == str(path)


def test_decompression_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(path)
    before = Image.MAX_IMAGE_PIXELS

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(AdapterError, match="max_pixels"):
        ImagesAdapter(max_pixels=300 * 299).load(path)
    assert Image.MAX_IMAGE_PIXELS == before  # the global is never touched
    assert DEFAULT_MAX_PIXELS == 2 * Image.MAX_IMAGE_PIXELS


def test_globals_left_untouched(skimage_data):
    ImagesAdapter().load(skimage_data / "rocket.jpg")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_urls_and_missing_files(tmp_path):
    with pytest.raises(AdapterError, match="only local image files"):
        ImagesAdapter().load("https://example.invalid/cat.png")
    with pytest.raises(AdapterError, match="no such file"):
        ImagesAdapter().load(tmp_path / "missing.png")
    with pytest.raises(AdapterError, match="no image files"):
        ImagesAdapter().load(tmp_path)


def test_claims_by_extension():
    assert ImagesAdapter.claims(Path("a/b/photo.JPG"))
    assert not ImagesAdapter.claims(Path("clip.mp4"))


def test_deferred_decoding_checks_now_and_decodes_the_same_pixels_later(skimage_data, tmp_path):
    from longllava_sdk.media import DeferredImage

    files = [skimage_data / name for name in ("astronaut.png", "camera.png", "horse.png", "rocket.jpg")]
    portrait = tmp_path / "portrait.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # decoded turned by 90 degrees
    Image.new("RGB", (60, 40), (10, 200, 30)).save(portrait, exif=exif)
    eager = ImagesAdapter().load([*files, portrait])
    deferred = ImagesAdapter(defer_decoding=True).load([*files, portrait])
    assert all(isinstance(image, DeferredImage) for image in deferred.images)
    for lazy, image, meta in zip(deferred.images, eager.images, deferred.metadata):
        assert lazy.size == image.size == meta["size"]
        np.testing.assert_array_equal(np.asarray(lazy.load()), np.asarray(image))
    assert deferred.images[-1].size == (40, 60)


def test_deferred_decoding_refuses_bad_headers_at_load_and_names_a_file_broken_later(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:-30])
    with pytest.raises(AdapterError, match="truncated.png"):
        ImagesAdapter(defer_decoding=True).load([good, truncated])
    media = ImagesAdapter(defer_decoding=True).load([good])
    good.write_bytes(good.read_bytes()[:-30])  # damaged after the check, before the decode
    with pytest.raises(AdapterError, match="good.png"):
        media.images[0].load()
    good.unlink()  # gone before the decode: still a typed error naming it, not FileNotFoundError
    with pytest.raises(AdapterError, match="good.png"):
        media.images[0].load()


def test_deferred_decoding_keeps_the_allowed_root_of_its_load(tmp_path):
    from longllava_sdk.adapters import allowed_root
    from longllava_sdk.errors import OutsideRootError

    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    inside = root / "a.png"
    Image.new("RGB", (32, 32), (10, 200, 10)).save(inside)
    Image.new("RGB", (32, 32), (10, 10, 200)).save(outside / "b.png")
    with allowed_root(root):
        media = ImagesAdapter(defer_decoding=True).load(inside)
    assert media.images[0].load().getpixel((0, 0)) == (10, 200, 10)  # decoded outside the block, confined
    inside.unlink()
    inside.symlink_to(outside / "b.png")  # swapped for a link out of the root after the check
    with pytest.raises(OutsideRootError, match="a.png"):
        media.images[0].load()
