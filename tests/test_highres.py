"""The paper's sub-image split (pad mode, with the odd-padding fix) and the capped-grid mode."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from longllava_sdk.highres import CLIP_MEAN_RGB, global_view, plan_high_res, split_high_res


def _gradient(width: int, height: int) -> Image.Image:
    """An image whose every pixel is unique enough to locate: R = x % 256, G = y % 256, B = (x + y) // 8."""
    x = np.arange(width)[None, :].repeat(height, 0)
    y = np.arange(height)[:, None].repeat(width, 1)
    array = np.stack([x % 256, y % 256, ((x + y) // 8) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(array)


def _reassemble(tiles: list[Image.Image], grid: tuple[int, int], tile: int) -> np.ndarray:
    rows, cols = grid
    canvas = np.zeros((rows * tile, cols * tile, 3), np.uint8)
    for index, image in enumerate(tiles):
        r, c = divmod(index, cols)
        canvas[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = np.asarray(image)
    return canvas


def test_pad_mode_grid_sizes_and_global_first():
    overview, tiles, grid = split_high_res(Image.new("RGB", (1000, 500), (10, 20, 30)))
    assert grid == (2, 3)
    assert len(tiles) == 6
    assert overview.size == (336, 336)
    assert all(t.size == (336, 336) and t.mode == "RGB" for t in tiles)


@pytest.mark.parametrize("size", [(337, 336), (336, 337), (500, 401), (1009, 673), (50, 30)])
def test_pad_mode_odd_padding_keeps_every_pixel(size):
    """The official code pads (new - old) // 2 on both sides and loses a pixel when odd: not here."""
    width, height = size
    image = _gradient(width, height)
    plan = plan_high_res(size, tile=336, mode="pad")
    _, tiles, grid = split_high_res(image)
    rows, cols = grid
    assert grid == (math.ceil(height / 336), math.ceil(width / 336))
    left, top, right, bottom = plan.padding
    assert left + width + right == cols * 336 and top + height + bottom == rows * 336
    assert (left, right) == ((cols * 336 - width) // 2, cols * 336 - width - (cols * 336 - width) // 2)
    assert (top, bottom) == ((rows * 336 - height) // 2, rows * 336 - height - (rows * 336 - height) // 2)
    canvas = _reassemble(tiles, grid, 336)
    np.testing.assert_array_equal(canvas[top : top + height, left : left + width], np.asarray(image))
    # padding is white, on every side that has some
    assert (canvas[:top] == 255).all() and (canvas[top + height :] == 255).all()
    assert (canvas[:, :left] == 255).all() and (canvas[:, left + width :] == 255).all()


def test_pad_mode_exact_multiple_has_no_padding_and_is_row_major():
    quadrants = np.zeros((672, 672, 3), np.uint8)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    for index, colour in enumerate(colours):
        r, c = divmod(index, 2)
        quadrants[r * 336 : (r + 1) * 336, c * 336 : (c + 1) * 336] = colour
    _, tiles, grid = split_high_res(Image.fromarray(quadrants))
    assert grid == (2, 2)
    assert plan_high_res((672, 672)).padding == (0, 0, 0, 0)
    assert [tuple(np.asarray(t)[100, 100]) for t in tiles] == colours


def test_pad_mode_max_tiles_shrinks_to_the_largest_fitting_size():
    plan = plan_high_res((4000, 3000), tile=336, mode="pad", max_tiles=12)
    rows, cols = plan.grid
    assert rows * cols <= 12
    new_w, new_h = plan.resized_size
    assert abs(new_w / new_h - 4000 / 3000) < 0.01
    # one pixel larger in the same aspect ratio would need more tiles: the shrink is minimal
    grow = (new_w + 2) / new_w
    bigger = (math.ceil(new_w * grow), math.ceil(new_h * grow))
    assert math.ceil(bigger[0] / 336) * math.ceil(bigger[1] / 336) > 12
    _, tiles, grid = split_high_res(Image.new("RGB", (4000, 3000)), max_tiles=12)
    assert len(tiles) == grid[0] * grid[1] <= 12


@pytest.mark.parametrize(
    ("size", "max_tiles", "expected"),
    [
        ((1000, 500), 8, (2, 4)),  # 2:1, 1x2 too small for the image -> 2x4
        ((600, 300), 8, (1, 2)),  # 2:1 and 1x2 (672x336) already holds it
        ((300, 300), 9, (1, 1)),
        ((2000, 2000), 9, (3, 3)),
        ((3000, 1000), 6, (1, 3)),
        ((1000, 3000), 6, (3, 1)),
        ((1500, 1000), 6, (2, 3)),
    ],
)
def test_grid_mode_picks_closest_aspect_under_cap(size, max_tiles, expected):
    overview, tiles, grid = split_high_res(Image.new("RGB", size), mode="grid", max_tiles=max_tiles)
    assert grid == expected
    assert len(tiles) == expected[0] * expected[1]
    assert overview.size == (336, 336)


def test_grid_mode_resizes_without_padding():
    image = _gradient(700, 350)
    plan = plan_high_res(image.size, mode="grid", max_tiles=8)
    assert plan.padding == (0, 0, 0, 0)
    assert plan.resized_size == (plan.grid[1] * 336, plan.grid[0] * 336)
    _, tiles, grid = split_high_res(image, mode="grid", max_tiles=8)
    canvas = _reassemble(tiles, grid, 336)
    expected = np.asarray(image.resize(plan.resized_size, Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(canvas, expected)


def test_global_view_is_padded_in_the_clip_mean_not_squashed():
    image = Image.new("RGB", (1000, 250), (0, 0, 0))
    view = global_view(image, 336)
    array = np.asarray(view)
    assert view.size == (336, 336)
    # CLIP-mean bands above and below (the released model's padding), never white
    assert (array[0] == CLIP_MEAN_RGB).all() and (array[-1] == CLIP_MEAN_RGB).all()
    assert (array[168] == 0).all()  # the image itself spans the full width


def test_tile_boxes_map_back_to_the_source():
    plan = plan_high_res((700, 400), tile=336, mode="pad")
    boxes = plan.source_boxes((700, 400))
    left, top = plan.padding[:2]
    assert boxes[0] == (-left, -top, 336 - left, 336 - top)
    assert len(boxes) == plan.grid[0] * plan.grid[1]


def test_non_rgb_inputs_are_converted():
    rgba = Image.new("RGBA", (400, 400), (255, 0, 0, 0))
    _, tiles, _ = split_high_res(rgba)
    assert tiles[0].mode == "RGB"
    assert tuple(np.asarray(tiles[0])[200, 200]) == (255, 255, 255)  # transparent -> white
    _, tiles, _ = split_high_res(Image.new("L", (100, 100), 7))
    assert tuple(np.asarray(tiles[0])[168, 168]) == (7, 7, 7)


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "grid"}, {"mode": "tiles"}, {"tile": 0}, {"max_tiles": 0}],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        split_high_res(Image.new("RGB", (10, 10)), **kwargs)
