"""Reliability machinery of the adapters: error translation, confinement, limits, GDAL isolation.

The bad-input corpus (``tests/test_bad_inputs_isolated.py``) checks every adapter against bad
files; these tests pin down the shared mechanisms themselves.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from bad_inputs.medical import write_ct_series
from bad_inputs.raster_video import good_geotiff
from longllava_plugins.dicom import DicomSeriesAdapter
from longllava_plugins.geotiff import GDAL_SAFE_OPTIONS, GeoTiffAdapter
from longllava_plugins.images import ImagesAdapter
from longllava_plugins.nifti import NiftiVolumeAdapter
from longllava_plugins.video import VideoAdapter
from longllava_sdk.adapters import (
    InputAdapter,
    allowed_root,
    check_time_budget,
    confine,
    current_allowed_root,
    guarded_claims,
    guarded_load,
    reading,
)
from longllava_sdk.errors import (
    AdapterError,
    ConfigError,
    DatasetError,
    MissingDependencyError,
    OutsideRootError,
    ResourceLimitError,
)
from longllava_sdk.media import Media

pytestmark = pytest.mark.filterwarnings(
    "ignore::PendingDeprecationWarning", "ignore::rasterio.errors.NotGeoreferencedWarning"
)


class _Probe(InputAdapter):
    """A test adapter that raises what it is told to, from inside a guarded load."""

    name: ClassVar[str] = "probe"
    kind: ClassVar[str] = "images"
    extensions: ClassVar[tuple[str, ...]] = (".probe",)

    def __init__(self, raise_: BaseException | None = None) -> None:
        super().__init__()
        self.raise_ = raise_
        self.time_budget_s = None

    @classmethod
    @guarded_claims
    def claims(cls, path: Path) -> bool:
        confine(path)
        return path.read_bytes().startswith(b"PROBE")

    @guarded_load
    def load(self, source, *, max_images=None) -> Media:
        confine(source)
        if self.raise_ is not None:
            raise self.raise_
        return Media("images", [Image.new("RGB", (2, 2))], [{}], source=str(source))


# ------------------------------------------------------------------------------------------
# error translation
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raised", "expected", "fragment"),
    [
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), AdapterError, "corrupt or unsupported"),
        (OSError(5, "I/O error"), AdapterError, "corrupt or unsupported"),
        (MemoryError(), ResourceLimitError, "ran out of memory"),
        (ModuleNotFoundError("No module named 'pylibjpeg'", name="pylibjpeg"), MissingDependencyError, "pylibjpeg"),
        (TypeError("sequence item 0: expected str instance, NoneType found"), AdapterError, "internal error"),
    ],
)
def test_guard_translates_library_errors_naming_the_file(tmp_path, raised, expected, fragment):
    path = tmp_path / "x.probe"
    path.write_bytes(b"PROBE")
    with pytest.raises(AdapterError) as caught:
        _Probe(raised).load(path)
    error = caught.value
    assert type(error) is expected
    assert error.path == str(path) and str(path) in str(error)
    assert fragment in error.problem
    assert error.__cause__ is raised
    assert error.translated_from == f"{type(raised).__module__}.{type(raised).__qualname__}"
    assert error.internal == isinstance(raised, TypeError)


def test_guard_lets_typed_errors_and_base_exceptions_through(tmp_path):
    path = tmp_path / "x.probe"
    path.write_bytes(b"PROBE")
    own = ConfigError("bad option")
    with pytest.raises(ConfigError) as caught:
        _Probe(own).load(path)
    assert caught.value is own
    with pytest.raises(KeyboardInterrupt):
        _Probe(KeyboardInterrupt()).load(path)


@pytest.mark.parametrize("error_class", ["CPLE_AppDefinedError", "CPLE_NotSupportedError", "CPLE_OpenFailedError"])
def test_any_gdal_error_class_from_band_resolution_is_typed(tmp_path, monkeypatch, error_class):
    """The fuzz run saw CPLE_AppDefinedError escape while bands were resolved: any CPLE_* is typed."""
    import rasterio._err

    import longllava_plugins.geotiff as geotiff

    path = good_geotiff(tmp_path / "scene.tif", size=64)
    gdal_error = getattr(rasterio._err, error_class)(1, 2, "corrupt GeoKeyDirectory")

    def broken(*args, **kwargs):
        raise gdal_error

    monkeypatch.setattr(geotiff, "resolve_bands", broken)
    with pytest.raises(AdapterError) as caught:
        GeoTiffAdapter().load(path)
    assert caught.value.path == str(path) and caught.value.__cause__ is gdal_error
    assert "rasterio/GDAL" in caught.value.problem and error_class in caught.value.problem


def test_errors_inside_a_folder_name_the_file_not_the_folder(tmp_path, monkeypatch):
    import longllava_plugins.dicom as dicom

    paths = write_ct_series(tmp_path / "ct", 3, shuffle=False)
    original = dicom._records

    def flaky(path, ds, syntax, location):
        if path.endswith("IM0001"):
            raise NotImplementedError("Unknown Value Representation 'QQ'")
        return original(path, ds, syntax, location)

    monkeypatch.setattr(dicom, "_records", flaky)
    with pytest.raises(AdapterError) as caught:
        DicomSeriesAdapter().load(tmp_path / "ct")
    assert caught.value.path == str(paths[1])


def test_guarded_claims_is_false_for_unreadable_files_but_reports_confinement(tmp_path):
    outside = tmp_path / "outside.probe"
    outside.write_bytes(b"PROBE")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.probe").symlink_to(outside)
    assert _Probe.claims(outside) is True
    assert _Probe.claims(tmp_path / "missing.probe") is False  # FileNotFoundError -> not claimed
    with allowed_root(root), pytest.raises(OutsideRootError):
        _Probe.claims(root / "link.probe")


def test_every_builtin_entry_point_is_guarded():
    for adapter in (DicomSeriesAdapter, NiftiVolumeAdapter, GeoTiffAdapter, VideoAdapter, ImagesAdapter):
        assert getattr(adapter.load, "__longllava_guarded__", False), adapter
        if "claims" in adapter.__dict__:
            assert getattr(adapter.__dict__["claims"].__func__, "__longllava_guarded__", False), adapter


# ------------------------------------------------------------------------------------------
# confinement
# ------------------------------------------------------------------------------------------
def test_allowed_root_is_a_context_variable(tmp_path):
    inner = tmp_path / "a"
    inner.mkdir()
    assert current_allowed_root() is None
    with allowed_root(tmp_path):
        assert current_allowed_root() == Path(os.path.realpath(tmp_path))
        with allowed_root(inner):
            assert current_allowed_root() == Path(os.path.realpath(inner))
            with allowed_root(None):
                assert current_allowed_root() is None
        seen = []
        thread = threading.Thread(target=lambda: seen.append(current_allowed_root()))
        thread.start()
        thread.join()
        assert seen == [None]  # another thread starts unconfined
    assert current_allowed_root() is None


def test_confine_resolves_symlinks_and_dotdot(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("x")
    (root / "ok.txt").write_text("y")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    (root / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    with allowed_root(root):
        assert confine(root / "ok.txt") == root / "ok.txt"
        assert confine(root / "sub" / ".." / "ok.txt")
        for bad in (root / "link.txt", root / "sub" / ".." / ".." / "secret.txt", root / "dirlink" / "secret.txt"):
            with pytest.raises(OutsideRootError, match="outside the allowed root"):
                confine(bad)
    assert confine(root / "link.txt")  # no root: no confinement


def test_training_validation_rejects_rows_whose_folders_hold_escaping_symlinks(tmp_path):
    from longllava_sdk import LongLLaVAConfig, LongLLaVAProcessor
    from longllava_sdk.training.data import prepare_datasets

    proc = LongLLaVAProcessor.for_config(LongLLaVAConfig.from_preset("tiny"))
    root, outside = tmp_path / "data", tmp_path / "outside"
    write_ct_series(root / "ct_ok", 2, shuffle=False)
    for k, path in enumerate(write_ct_series(outside / "ct", 2, shuffle=False)):
        (root / "ct_links").mkdir(exist_ok=True)
        (root / "ct_links" / f"IM{k}").symlink_to(path)
    (root / "photos").mkdir()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(root / "photos" / "a.png")
    Image.new("RGB", (16, 16), (4, 5, 6)).save(tmp_path / "secret.png")
    (root / "photos" / "b.png").symlink_to(tmp_path / "secret.png")
    rows = [
        {"id": "good", "volume": {"path": "ct_ok", "adapter": "dicom"},
         "conversations": [{"from": "human", "value": "<image> ?"}, {"from": "gpt", "value": "ct"}]},
        {"id": "ct-escape", "volume": {"path": "ct_links", "adapter": "dicom"},
         "conversations": [{"from": "human", "value": "<image> ?"}, {"from": "gpt", "value": "ct"}]},
        {"id": "photo-escape", "image": {"path": "photos", "adapter": "images"},
         "conversations": [{"from": "human", "value": "<image> ?"}, {"from": "gpt", "value": "x"}]},
    ]
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DatasetError) as caught:
        prepare_datasets(proc, data_path=data, max_length=100_000)
    problems = caught.value.problems
    assert len(problems) == 2, problems
    escape = {p.split("(id ")[1].split(")")[0]: p for p in problems}
    assert set(escape) == {"'ct-escape'", "'photo-escape'"}
    assert all("outside the allowed root" in p for p in problems)


# ------------------------------------------------------------------------------------------
# limits and their defaults
# ------------------------------------------------------------------------------------------
def test_high_res_tiles_are_capped_by_default(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1000, 1000, 3), dtype=np.uint8)).save(path)
    media = ImagesAdapter(high_res=True, tile=32).load(path)  # 32 x 32 = 1024 tiles uncapped
    rows, cols = media.grid
    assert rows * cols <= 64 and len(media.images) == 1 + rows * cols
    assert any("to fit 64 tiles" in w for w in media.info["warnings"])
    more = ImagesAdapter(high_res=True, tile=32, max_tiles=256).load(path)
    assert 64 < more.grid[0] * more.grid[1] <= 256


def test_geotiff_tiles_are_capped_without_max_images(tmp_path):
    path = good_geotiff(tmp_path / "scene.tif", size=400)
    media = GeoTiffAdapter(tile_size=8, max_tiles=100).load(path)
    assert media.info["n_tiles"] <= 100
    assert any("max_tiles" in w for w in media.info["warnings"])


def test_limit_options_are_validated():
    for adapter, option in ((DicomSeriesAdapter, "max_frames"), (NiftiVolumeAdapter, "max_pixels"),
                            (GeoTiffAdapter, "max_bands"), (VideoAdapter, "max_decoded_bytes"),
                            (ImagesAdapter, "time_budget_s")):
        with pytest.raises(ConfigError, match=option):
            adapter(**{option: -1})


def test_limit_options_are_typed_keyword_arguments():
    """The CLI builds ``--adapter-option KEY=VALUE`` parsing from these signatures."""
    import inspect

    for adapter in (DicomSeriesAdapter, NiftiVolumeAdapter, GeoTiffAdapter, VideoAdapter, ImagesAdapter):
        parameters = inspect.signature(adapter.__init__).parameters
        for option in ("max_decoded_bytes", "time_budget_s"):
            assert parameters[option].kind is inspect.Parameter.KEYWORD_ONLY
            assert parameters[option].annotation is not inspect.Parameter.empty
            assert option in (adapter.__doc__ or "") + (inspect.getmodule(adapter).__doc__ or "")


def test_time_budget_is_checked_between_units():
    with reading("probe", "source.bin", time_budget_s=1e-9):
        sum(range(100_000))
        with pytest.raises(ResourceLimitError, match="time_budget_s=1e-09"):
            check_time_budget("after some work")
    check_time_budget()  # outside a load: nothing to enforce


def test_gdal_runs_without_sidecars_or_network(tmp_path):
    """A sidecar .ovr (a real TIFF with wrong content) is not read unless sidecars=True asks."""
    import rasterio

    path = good_geotiff(tmp_path / "scene.tif", size=256)
    with rasterio.open(path) as src, rasterio.open(
        tmp_path / "scene.tif.ovr", "w", driver="GTiff", width=128, height=128, count=3, dtype="uint8"
    ) as ovr:
        assert src.count == 3
        ovr.write(np.full((3, 128, 128), 7, np.uint8))
    default = GeoTiffAdapter(stats_max_side=128).load(path)
    assert default.info["overviews"] == []
    with_sidecars = GeoTiffAdapter(stats_max_side=128, sidecars=True).load(path)
    assert with_sidecars.info["overviews"] == [2]
    assert GDAL_SAFE_OPTIONS["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert GDAL_SAFE_OPTIONS["GDAL_PAM_ENABLED"] == "NO"
    assert not (tmp_path / "scene.tif.aux.xml").exists()
