"""DICOM series adapter (plugins/dicom.py) on pydicom's bundled files and generated series."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder

import longllava_plugins.dicom as dicom_plugin
from bad_inputs.medical import AXIAL, pydicom_file, write_ct_series, write_enhanced_ct
from longllava_plugins.dicom import DicomSeriesAdapter
from longllava_sdk.registry import resolve_adapter
from longllava_sdk.errors import AdapterError, ConfigError


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    """pydicom fetches some test files from the network on demand: make that impossible here."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to download pydicom test data")

    monkeypatch.setattr(pydicom.data.data_manager, "data_path_with_download", refuse)


def grey(image: Image.Image) -> np.ndarray:
    """The single grey plane of a grey RGB image (asserting R == G == B)."""
    arr = np.asarray(image)
    assert image.mode == "RGB" and arr.dtype == np.uint8
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    return arr[..., 0]


def windowed(hu, width: float, level: float) -> np.ndarray:
    """Reference: black at L - W/2, white at L + W/2, linear, rounded half up."""
    scaled = (np.asarray(hu, dtype=np.float64) - (level - width / 2.0)) / width * 255.0
    return np.floor(np.clip(scaled, 0, 255) + 0.5).astype(np.uint8)


def one_value(image: Image.Image) -> int:
    values = np.unique(grey(image))
    assert values.size == 1, values
    return int(values[0])


# ---------------------------------------------------------------------- real files
def test_ct_small_hounsfield_units_and_metadata():
    path = pydicom_file("CT_small.dcm")
    media = DicomSeriesAdapter(window="400,40").load(path)
    ds = pydicom.dcmread(path)
    hu = apply_modality_lut(ds.pixel_array, ds)  # pydicom's own modality LUT as the reference
    assert media.kind == "volume" and len(media) == 1
    diff = np.abs(grey(media.images[0]).astype(int) - windowed(hu, 400, 40).astype(int))
    assert diff.max() == 0
    meta = media.metadata[0]
    assert meta["sop_instance_uid"] == ds.SOPInstanceUID
    assert meta["instance_number"] == int(ds.InstanceNumber)
    assert meta["slice_position"] == pytest.approx(float(ds.ImagePositionPatient[2]))
    assert meta["window"] == "W400/L40"
    info = media.info
    assert info["modality"] == "CT" and info["series_uid"] == ds.SeriesInstanceUID
    assert info["spacing"]["row"] == pytest.approx(float(ds.PixelSpacing[0]))
    assert info["orientation"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0] and info["plane"] == "axial"
    assert info["n_slices_total"] == 1 and info["warnings"] == []


def test_mr_small_encodings_decode_identically():
    """Little/big endian, implicit VR, RLE and (Pillow) JPEG 2000 lossless give the same pixels."""
    reference = DicomSeriesAdapter().load(pydicom_file("MR_small.dcm"))
    assert reference.info["window"].startswith("stored window")
    assert reference.metadata[0]["window"] == "stored (W1600/L600)"
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    assert np.array_equal(grey(reference.images[0]), windowed(ds.pixel_array, 1600, 600))
    names = ["MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm", "MR_small_padded.dcm"]
    if get_decoder(pydicom.uid.JPEG2000Lossless).is_available:
        names.append("MR_small_jp2klossless.dcm")
    for name in names:
        media = DicomSeriesAdapter().load(pydicom_file(name))
        assert np.array_equal(np.asarray(media.images[0]), np.asarray(reference.images[0])), name


@pytest.mark.parametrize(
    "name, window",
    [
        ("JPEG2000.dcm", "400,100"),  # 16-bit JPEG 2000 (Pillow)
        ("MR_small_jp2klossless.dcm", "1600,600"),
        ("MR_small_RLE.dcm", "1600,600"),  # pydicom's own RLE decoder
        ("SC_rgb_jpeg_dcmtk.dcm", None),  # colour JPEG baseline (Pillow), YBR -> RGB
        ("SC_rgb_rle.dcm", None),
    ],
)
def test_compressed_real_files_match_pydicom(name, window):
    path = pydicom_file(name)
    ds = pydicom.dcmread(path)
    if not get_decoder(ds.file_meta.TransferSyntaxUID).is_available:
        # without the optional decoder the adapter must say which syntax and which extra
        from longllava_sdk.errors import MissingDependencyError

        with pytest.raises(MissingDependencyError, match=r"longllava-sdk\[dicom-codecs\]") as caught:
            DicomSeriesAdapter(window=window or "lung").load(path)
        assert ds.file_meta.TransferSyntaxUID.name in str(caught.value)
        return
    media = DicomSeriesAdapter(window=window or "lung").load(path)
    reference = ds.pixel_array
    if ds.SamplesPerPixel == 3:
        assert np.array_equal(np.asarray(media.images[0]), reference)
    else:
        width, level = (float(v) for v in window.split(","))
        assert np.array_equal(grey(media.images[0]), windowed(apply_modality_lut(reference, ds), width, level))


def test_twelve_bit_jpeg_needs_the_codecs_extra():
    from longllava_sdk.errors import MissingDependencyError

    path = pydicom_file("JPGExtended.dcm")  # 12-bit JPEG Extended: Pillow cannot decode it
    decoder = get_decoder(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    if set(decoder.available_plugins) - {"pillow"}:  # a 12-bit capable decoder is installed: it must decode
        media = DicomSeriesAdapter(window="lung").load(path)
        assert len(media.images) == 1 and media.images[0].mode == "RGB"
        return
    with pytest.raises(MissingDependencyError, match=r"JPEG Extended.*longllava-sdk\[dicom-codecs\]"):
        DicomSeriesAdapter(window="lung").load(path)


def test_deflated_file():
    path = pydicom_file("image_dfl.dcm")
    media = DicomSeriesAdapter(window="256,128").load(path)
    expected = windowed(pydicom.dcmread(path).pixel_array, 256, 128)
    assert np.array_equal(grey(media.images[0]), expected)
    assert media.info["transfer_syntaxes"] == ["Deflated Explicit VR Little Endian"]


def test_rt_dose_frames_ordered_by_grid_frame_offsets():
    path = pydicom_file("rtdose.dcm")
    media = DicomSeriesAdapter(window=None).load(path)
    ds = pydicom.dcmread(path)
    assert len(media) == int(ds.NumberOfFrames) == 15
    z0 = float(ds.ImagePositionPatient[2])
    expected = [z0 + float(o) for o in ds.GridFrameOffsetVector]
    assert [m["slice_position"] for m in media.metadata] == pytest.approx(sorted(expected))
    assert [m["frame"] for m in media.metadata] == list(range(15))
    assert media.info["spacing"]["slice"] == pytest.approx(5.0)


def test_colour_and_palette_images_pass_through():
    ybr = pydicom_file("examples_ybr_color.dcm")
    media = DicomSeriesAdapter(max_images=3).load(ybr)
    frames = pydicom.pixels.pixel_array(ybr)  # RGB after pydicom's YBR conversion
    assert [m["frame"] for m in media.metadata] == [0, 14, 29]
    assert np.array_equal(np.asarray(media.images[1]), frames[14])
    assert any("no ImagePositionPatient" in w for w in media.info["warnings"])

    palette = pydicom_file("examples_palette.dcm")
    media = DicomSeriesAdapter(window="lung").load(palette)
    ds = pydicom.dcmread(palette)
    rgb = apply_color_lut(ds.pixel_array, ds)
    expected = (rgb.astype(np.float32) * (255.0 / 65535.0) + 0.5).astype(np.uint8) if rgb.dtype != np.uint8 else rgb
    assert np.array_equal(np.asarray(media.images[0]), expected)
    assert any("colour" in w for w in media.info["warnings"])


def test_stored_window_required_by_window_dicom():
    with pytest.raises(AdapterError, match="WindowCenter"):
        DicomSeriesAdapter(window="dicom").load(pydicom_file("CT_small.dcm"))
    media = DicomSeriesAdapter(window="dicom").load(pydicom_file("MR_small.dcm"))
    assert media.metadata[0]["window"] == "stored (W1600/L600)"
    auto = DicomSeriesAdapter().load(pydicom_file("CT_small.dcm"))  # no stored window: normalised
    assert auto.info["window"].startswith("percentile normalisation")


def test_named_preset_on_mr_is_reported():
    media = DicomSeriesAdapter(window="brain").load(pydicom_file("MR_small.dcm"))
    assert any("Hounsfield" in w and "MR" in w for w in media.info["warnings"])


# ---------------------------------------------------------------------- generated series
def test_orders_by_position_not_instance_number_or_file_name(tmp_path):
    paths = write_ct_series(tmp_path / "ct", 12, spacing=2.5, hu=lambda i: 10.0 * i)
    media = DicomSeriesAdapter(window="400,60").load(tmp_path / "ct")
    positions = [m["slice_position"] for m in media.metadata]
    assert positions == pytest.approx([-100.0 + 2.5 * i for i in range(12)])
    assert [one_value(img) for img in media.images] == [int(windowed(10.0 * i, 400, 60)) for i in range(12)]
    instance_numbers = [m["instance_number"] for m in media.metadata]
    assert instance_numbers != sorted(instance_numbers)  # shuffled on purpose: ignored for ordering
    assert [Path(m["file"]).name for m in media.metadata] == [p.name for p in paths]
    assert media.info["spacing"]["slice"] == pytest.approx(2.5)
    assert media.info["n_slices_total"] == 12 and media.info["warnings"] == []
    # the same files given as a shuffled list, with a non-DICOM file in the folder: same result
    (tmp_path / "ct" / "README.txt").write_text("notes")
    from_folder = DicomSeriesAdapter(window="400,60").load(tmp_path / "ct")
    assert any("not DICOM" in w for w in from_folder.info["warnings"])
    listed = DicomSeriesAdapter(window="400,60").load([str(p) for p in reversed(paths)])
    assert [m["sop_instance_uid"] for m in listed.metadata] == [m["sop_instance_uid"] for m in media.metadata]


def test_sagittal_series_orders_along_its_normal(tmp_path):
    sagittal = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # normal = row x col = (-1, 0, 0)
    write_ct_series(tmp_path / "sag", 5, orientation=sagittal, spacing=3.0, hu=lambda i: 100.0 * i)
    media = DicomSeriesAdapter(window="1000,200").load(tmp_path / "sag")
    assert media.info["plane"] == "sagittal" and media.info["normal"] == pytest.approx([-1.0, 0.0, 0.0])
    assert [one_value(img) for img in media.images] == [int(windowed(100.0 * i, 1000, 200)) for i in range(5)]
    assert np.all(np.diff([m["slice_position"] for m in media.metadata]) == pytest.approx(3.0))


def test_gap_and_irregular_spacing_reported(tmp_path):
    z = [0.0, 2.5, 5.0, 7.5, 12.5, 15.0, 17.5, 20.3, 22.8]  # 10.0 missing; 17.5 -> 20.3 is 12 % long
    write_ct_series(tmp_path / "gap", len(z), positions=[(0.0, 0.0, v) for v in z])
    media = DicomSeriesAdapter(window="lung").load(tmp_path / "gap")
    warnings = media.info["warnings"]
    assert any("gap of 5.00 mm" in w and "about 1 missing" in w and "7.50 mm and 12.50 mm" in w for w in warnings)
    assert any(w.startswith("irregular spacing: 1 step") for w in warnings)
    assert media.info["spacing"]["slice"] == pytest.approx(2.5)
    assert len(media) == len(z)


def test_localizers_are_dropped_and_reported(tmp_path):
    folder = tmp_path / "with_scouts"
    write_ct_series(folder / "axial", 6, series_uid="1.2.3.4.100", hu=lambda i: 10.0 * i)
    write_ct_series(  # a scout tagged LOCALIZER in the same series
        folder / "scout", 1, series_uid="1.2.3.4.100", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        origin=(0, 0, 3.0), seed=5,
    )
    write_ct_series(  # a coronal image in the same series, not tagged: caught by its orientation
        folder / "coronal", 1, series_uid="1.2.3.4.100", orientation=(1, 0, 0, 0, 0, -1), origin=(0, 0, 4.0), seed=6,
    )
    media = DicomSeriesAdapter(window="400,40").load(folder)
    assert len(media) == 6 and media.info["n_slices_total"] == 6
    warnings = " | ".join(media.info["warnings"])
    assert "1 localizer image(s) (ImageType LOCALIZER)" in warnings
    assert "orientation differs from the series by 90" in warnings


def test_several_series_need_a_choice(tmp_path):
    folder = tmp_path / "study"
    write_ct_series(folder / "thin", 3, series_uid="1.2.3.1", description="CHEST 1mm")
    write_ct_series(folder / "thick", 4, series_uid="1.2.3.2", description="CHEST 5mm", hu=lambda i: 500.0)
    with pytest.raises(AdapterError) as caught:
        DicomSeriesAdapter().load(folder)
    message = str(caught.value)
    assert "holds 2 image series" in message and str(folder) in message
    assert "1.2.3.1  'CHEST 1mm'  CT  3 image(s)" in message and "1.2.3.2  'CHEST 5mm'  CT  4 image(s)" in message
    media = DicomSeriesAdapter(series_uid="1.2.3.2", window="bone").load(folder)
    assert len(media) == 4 and media.info["series_description"] == "CHEST 5mm"
    with pytest.raises(AdapterError, match="series_uid '9.9' not found"):
        DicomSeriesAdapter(series_uid="9.9").load(folder)
    # a series made only of localizers is not a candidate volume
    write_ct_series(folder / "scout", 1, series_uid="1.2.3.9", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    shutil.rmtree(folder / "thick")
    media = DicomSeriesAdapter().load(folder)
    assert media.info["series_uid"] == "1.2.3.1"
    assert any("ignored localizer-only series 1.2.3.9" in w for w in media.info["warnings"])


def test_non_parallel_slices_error_or_allowed(tmp_path):
    orientations = [(1.0, 0.0, 0.0, 0.0, float(np.cos(a)), float(np.sin(a))) for a in np.radians([0, 0, 0, 6, 12, 18])]
    write_ct_series(tmp_path / "fan", 6, orientation=orientations, positions=[(0, 0, 4.0 * i) for i in range(6)])
    with pytest.raises(AdapterError, match="not parallel: 3 of 6 images"):
        DicomSeriesAdapter().load(tmp_path / "fan")
    media = DicomSeriesAdapter(allow_non_parallel=True, window="lung").load(tmp_path / "fan")
    assert len(media) == 6
    assert any("allow_non_parallel=True" in w for w in media.info["warnings"])


def test_tilt_small_non_parallelism_and_duplicates_reported(tmp_path):
    tilted = [(0.0, 0.5 * i, 2.0 * i) for i in range(5)]  # positions drift in y: ~14 degrees off the normal
    write_ct_series(tmp_path / "tilt", 5, positions=tilted)
    warnings = DicomSeriesAdapter(window="lung").load(tmp_path / "tilt").info["warnings"]
    assert any("gantry tilt" in w for w in warnings)

    a = np.radians(0.3)
    slight = [AXIAL if i % 2 else (1.0, 0.0, 0.0, 0.0, float(np.cos(a)), float(np.sin(a))) for i in range(4)]
    write_ct_series(tmp_path / "slight", 4, orientation=slight, positions=[(0, 0, 2.0 * i) for i in range(4)])
    warnings = DicomSeriesAdapter(window="lung").load(tmp_path / "slight").info["warnings"]
    assert any("not exactly parallel" in w for w in warnings)

    write_ct_series(tmp_path / "dup", 4, positions=[(0, 0, 0), (0, 0, 2), (0, 0, 2), (0, 0, 4)])
    media = DicomSeriesAdapter(window="lung").load(tmp_path / "dup")
    assert any("share a position" in w for w in media.info["warnings"])
    assert media.info["spacing"]["slice"] == pytest.approx(2.0)


def test_monochrome1_inverted_and_padding_black(tmp_path):
    def hu(i):
        values = np.full((128, 128), 40.0)
        values[:16, :16] = -2000 * 1.0 - 1024.0  # stored value -2000 = PixelPaddingValue
        return values

    write_ct_series(tmp_path / "m1", 2, hu=hu, photometric="MONOCHROME1", padding_value=-2000)
    media = DicomSeriesAdapter(window="400,0").load(tmp_path / "m1")
    plane = grey(media.images[0])
    assert plane[:16, :16].max() == 0  # padding: black even though MONOCHROME1 would make it white
    assert np.all(plane[16:, 16:] == 255 - windowed(40.0, 400, 0))  # inverted
    normal = DicomSeriesAdapter(window="400,0").load(write_ct_series(tmp_path / "m2", 1, hu=lambda i: 40.0)[0])
    assert one_value(normal.images[0]) == int(windowed(40.0, 400, 0))


def test_three_windows_stack_to_rgb(tmp_path):
    write_ct_series(tmp_path / "rgb", 2, hu=lambda i: 0.0)
    media = DicomSeriesAdapter(window=["lung", "mediastinum", "bone"]).load(tmp_path / "rgb")
    arr = np.asarray(media.images[0])
    assert arr.shape == (128, 128, 3) and arr[0, 0].tolist() == [230, 91, 71]
    assert media.metadata[0]["window"] == "R=lung (W1500/L-600) G=mediastinum (W350/L50) B=bone (W1800/L400)"


def test_rescale_slope_intercept_per_slice(tmp_path):
    write_ct_series(tmp_path / "a" / "x", 2, hu=lambda i: 100.0, slope=1.0, intercept=-1024.0, series_uid="1.9.1")
    write_ct_series(tmp_path / "a" / "y", 2, hu=lambda i: 100.0, slope=0.5, intercept=-2000.0, series_uid="1.9.1",
                    origin=(-80, -80, -95), seed=3)
    media = DicomSeriesAdapter(window="400,40").load(tmp_path / "a")
    assert len(media) == 4
    assert {one_value(img) for img in media.images} == {int(windowed(100.0, 400, 40))}


def test_max_images_keeps_first_and_last_and_decodes_only_those(tmp_path, monkeypatch):
    write_ct_series(tmp_path / "long", 20, spacing=1.0)
    decoded = []
    real = dicom_plugin._checked_shape  # called once per decoded frame
    monkeypatch.setattr(dicom_plugin, "_checked_shape", lambda path, *a: decoded.append(path) or real(path, *a))
    media = DicomSeriesAdapter(window="lung", max_images=5).load(tmp_path / "long")
    assert [m["slice_position"] for m in media.metadata] == pytest.approx([-100.0 + i for i in (0, 5, 10, 14, 19)])
    assert len(decoded) == 5  # headers are read for all 20, pixels only for the 5 sampled
    assert media.info["n_slices_total"] == 20 and media.info["n_slices_sampled"] == 5
    assert len(DicomSeriesAdapter(window="lung", max_images=5).load(tmp_path / "long", max_images=2)) == 2


def test_percentile_normalisation_over_the_volume(tmp_path):
    write_ct_series(tmp_path / "mr", 5, hu=lambda i: 100.0 * i, modality="MR", intercept=0.0)
    media = DicomSeriesAdapter(window=None, percentiles=(0, 100)).load(tmp_path / "mr")
    values = [one_value(img) for img in media.images]
    assert values[0] == 0 and values[-1] == 255 and values == sorted(values)


def test_enhanced_multiframe_uses_functional_groups(tmp_path):
    hu = [300.0, -100.0, 200.0, 0.0, 100.0]
    z = [4.0, 0.0, 3.0, 1.0, 2.0]  # frames stored out of spatial order
    rescale = [(1.0, -1024.0), (2.0, -2048.0), (1.0, -1024.0), (0.5, -100.0), (2.0, 0.0)]
    path = write_enhanced_ct(tmp_path / "enhanced.dcm", hu, z, rescale_per_frame=rescale)
    media = DicomSeriesAdapter(window="500,100").load(path)
    assert [m["slice_position"] for m in media.metadata] == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0])
    assert [m["frame"] for m in media.metadata] == [1, 3, 4, 2, 0]
    assert [one_value(img) for img in media.images] == [int(windowed(v, 500, 100)) for v in sorted(hu)]
    assert media.info["spacing"] == {"row": 0.7, "column": 0.7, "slice": pytest.approx(1.0)}
    sampled = DicomSeriesAdapter(window="500,100", max_images=2).load(path)
    assert [m["frame"] for m in sampled.metadata] == [1, 0]


# ---------------------------------------------------------------------- contract and registration
def test_claims_and_registration(tmp_path):
    paths = write_ct_series(tmp_path / "series", 2)  # extensionless files, as scanners export them
    assert DicomSeriesAdapter.claims(tmp_path / "series")
    assert DicomSeriesAdapter.claims(paths[0])
    png = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(png)
    assert not DicomSeriesAdapter.claims(png)
    assert dicom_plugin.longllava_register_adapters() == [DicomSeriesAdapter]
    adapter = resolve_adapter(str(tmp_path / "series"), options={"window": "lung"})  # through the installed entry point
    assert isinstance(adapter, DicomSeriesAdapter) and adapter.windows[0].name == "lung"


def test_medical_plugins_declared_and_valid_for_pluggy():
    import tomllib

    import longllava_plugins.nifti as nifti_plugin
    from longllava_sdk.plugin_manager import create_plugin_manager

    declared = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    entry_points = declared["project"]["entry-points"]["longllava_sdk"]
    assert entry_points["dicom"] == "longllava_plugins.dicom"
    assert entry_points["nifti"] == "longllava_plugins.nifti"
    manager = create_plugin_manager(autoload=False)
    manager.register(dicom_plugin, name="dicom-under-test")
    manager.register(nifti_plugin, name="nifti-under-test")
    found = [cls for batch in manager.hook.longllava_register_adapters() for cls in batch]
    assert {cls.name for cls in found} == {"dicom", "nifti"}


@pytest.mark.parametrize(
    "options", [{"window": "spleen"}, {"window": ["lung", "bone"]}, {"max_images": 0}, {"percentiles": (90, 10)}]
)
def test_invalid_options(options):
    with pytest.raises(ConfigError):
        DicomSeriesAdapter(**options)
