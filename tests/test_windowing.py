"""HU windowing shared by the DICOM and NIfTI adapters (plugins/windowing.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from longllava_sdk.errors import ConfigError
from longllava_plugins.windowing import (
    PRESETS,
    Window,
    apply_lut,
    apply_window,
    parse_window,
    parse_windows,
    percentile_window,
    planes_to_rgb,
    window_lut,
    window_to_rgb,
)


def reference_grey(values, width: float, level: float) -> np.ndarray:
    """Radiopaedia's definition: black at L - W/2, white at L + W/2, linear between, rounded."""
    scaled = (np.asarray(values, dtype=np.float64) - (level - width / 2.0)) / width * 255.0
    return np.floor(np.clip(scaled, 0.0, 255.0) + 0.5).astype(np.uint8)


def test_presets_match_radiology_references():
    assert PRESETS == {
        "lung": (1500.0, -600.0),
        "mediastinum": (350.0, 50.0),
        "abdomen": (400.0, 40.0),
        "liver": (150.0, 30.0),
        "bone": (1800.0, 400.0),
        "brain": (80.0, 40.0),
        "subdural": (200.0, 75.0),
    }
    brain = parse_window("brain")
    assert (brain.lower, brain.upper) == (0.0, 80.0)  # Radiopaedia: brain W80/L40 -> 0..80 HU
    assert parse_window("lung").label == "lung (W1500/L-600)"


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("LUNG ", (1500.0, -600.0)),
        ("400,40", (400.0, 40.0)),
        ("W400/L40", (400.0, 40.0)),
        ("w:1500 l:-600", (1500.0, -600.0)),
        ("350, 50", (350.0, 50.0)),
        ((80, 40), (80.0, 40.0)),
        (Window(10.0, 5.0), (10.0, 5.0)),
    ],
)
def test_parse_window_forms(spec, expected):
    window = parse_window(spec)
    assert (window.width, window.level) == expected


@pytest.mark.parametrize("spec", ["spleen", "400", "0,40", "-10,40", "nan,3", ("a", "b"), 42])
def test_parse_window_rejects_bad_specs(spec):
    with pytest.raises(ConfigError):
        parse_window(spec)


def test_parse_windows_one_or_three():
    assert [w.name for w in parse_windows("bone")] == ["bone"]
    assert [w.name for w in parse_windows(["lung", "mediastinum", "bone"])] == ["lung", "mediastinum", "bone"]
    assert len(parse_windows((400, 40))) == 1
    with pytest.raises(ConfigError, match="3 windows"):
        parse_windows(["lung", "bone"])
    with pytest.raises(ConfigError):
        parse_windows(["lung", "bone", "brain", "liver"])


def test_apply_window_matches_the_definition_for_any_dtype():
    rng = np.random.default_rng(0)
    hu = rng.integers(-1200, 2000, size=(64, 64)).astype(np.int16)
    for width, level in [(400, 40), (1500, -600), (80, 40), (1800, 400)]:
        expected = reference_grey(hu, width, level)
        for values in (hu, hu.astype(np.float64), hu.astype(np.float32), hu.astype(np.int32)):
            got = apply_window(values, Window(width, level))
            assert got.dtype == np.uint8
            assert np.array_equal(got, expected)


def test_apply_window_edges_nan_and_input_untouched():
    values = np.array([-1000.0, 0.0, 40.0, 80.0, 5000.0, np.nan], dtype=np.float32)
    before = values.copy()
    out = apply_window(values, parse_window("brain"))
    assert out.tolist() == [0, 0, 128, 255, 255, 0]
    assert np.array_equal(values, before, equal_nan=True)


def test_sigmoid_window():
    window = Window(100.0, 0.0, function="sigmoid")
    out = apply_window(np.array([-1e6, -50.0, 0.0, 50.0, 1e6]), window)
    assert out[0] == 0 and out[-1] == 255 and out[2] == 128
    assert list(out) == sorted(out)
    assert "sigmoid" in window.label


def test_window_to_rgb_grey_three_windows_mask_invert():
    hu = np.array([[-1000.0, 0.0, 40.0], [300.0, 1000.0, -600.0]], dtype=np.float32)  # (H=2, W=3)
    grey = window_to_rgb(hu, parse_windows("400,40"))
    assert isinstance(grey, Image.Image) and grey.mode == "RGB" and grey.size == (3, 2)
    arr = np.asarray(grey)
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    assert np.array_equal(arr[..., 0], reference_grey(hu, 400, 40))

    windows = parse_windows(["lung", "mediastinum", "bone"])
    rgb = np.asarray(window_to_rgb(hu, windows))
    for channel, (width, level) in enumerate([(1500, -600), (350, 50), (1800, 400)]):
        assert np.array_equal(rgb[..., channel], reference_grey(hu, width, level))
    assert rgb[0, 1].tolist() == [230, 91, 71]  # water (0 HU) in lung / mediastinum / bone windows

    mask = np.array([[True, False, False], [False, False, True]])
    inverted = np.asarray(window_to_rgb(hu, windows, mask=mask, invert=True))
    assert inverted[0, 0].tolist() == [0, 0, 0] and inverted[1, 2].tolist() == [0, 0, 0]  # masked: black
    assert np.array_equal(inverted[~mask], 255 - rgb[~mask])


def test_window_to_rgb_rejects_bad_shapes():
    with pytest.raises(ValueError):
        window_to_rgb(np.zeros((2, 2, 2)), parse_windows("bone"))
    with pytest.raises(ConfigError):
        window_to_rgb(np.zeros((2, 2)), [parse_window("bone")] * 2)


def test_percentile_window():
    values = np.concatenate([np.arange(101, dtype=np.float32), [np.nan, np.inf, -np.inf]])
    full = percentile_window(values, (0, 100))
    assert (full.lower, full.upper) == (0.0, 100.0)
    robust = percentile_window(values, (10, 90))
    assert robust.lower == pytest.approx(10.0) and robust.upper == pytest.approx(90.0)
    assert percentile_window(np.full(5, np.nan), (0, 100)) is None
    constant = percentile_window(np.full(9, 7.0))
    assert apply_window(np.array([7.0]), constant)[0] == 128
    with pytest.raises(ConfigError):
        percentile_window(values, (50, 10))


@pytest.mark.parametrize("dtype", ["<i2", ">i2", "<u2", ">u2", "u1", "i1"])
@pytest.mark.parametrize("slope, intercept", [(1.0, 0.0), (1.0, -1024.0), (0.5, -2000.0)])
def test_lookup_table_equals_float_path(dtype, slope, intercept):
    info = np.iinfo(np.dtype(dtype))
    raw = np.linspace(info.min, info.max, 4096).astype(dtype).reshape(64, 64)
    window = parse_window("lung")
    table = window_lut(window, raw.dtype, slope, intercept)
    assert table.shape == (2 ** (8 * raw.dtype.itemsize),) and table.dtype == np.uint8
    expected = apply_window(raw.astype(np.float32) * np.float32(slope) + np.float32(intercept), window)
    assert np.array_equal(apply_lut(raw, table), expected)
    assert window_lut(window, np.dtype("f4")) is None


def test_planes_to_rgb():
    planes = [np.full((2, 3), v, np.uint8) for v in (10, 20, 30)]
    image = planes_to_rgb(planes, mask=np.array([[True, False, False], [False] * 3]), invert=True)
    assert image.size == (3, 2) and np.asarray(image)[0, 1].tolist() == [245, 235, 225]
    assert np.asarray(image)[0, 0].tolist() == [0, 0, 0]
    with pytest.raises(ConfigError):
        planes_to_rgb(planes[:2])
