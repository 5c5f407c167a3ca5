"""NIfTI volume adapter (plugins/nifti.py) on nibabel's bundled files and generated volumes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import longllava_plugins.nifti as nifti_plugin
from bad_inputs.medical import nibabel_file, write_nifti
from longllava_plugins.nifti import NiftiVolumeAdapter
from longllava_sdk.errors import AdapterError, ConfigError
from longllava_plugins.windowing import Window, apply_window

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


def grey(image: Image.Image) -> np.ndarray:
    arr = np.asarray(image)
    assert image.mode == "RGB" and arr.dtype == np.uint8
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    return arr[..., 0]


def expected_slices(img, axis: str, window: Window, volume: int | None = None) -> list[np.ndarray]:
    """Reference built the eager way: nibabel's as_closest_canonical + full get_fdata.

    Display convention: rows = second in-plane RAS axis reversed, columns = first reversed.
    """
    canonical = nib.as_closest_canonical(img)
    data = canonical.get_fdata()
    if volume is not None:
        data = data[..., volume]
    moved = np.moveaxis(data, AXES[axis], 0)
    return [apply_window(plane.T[::-1, ::-1], window) for plane in moved]


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_real_file_matches_nibabel_canonical(axis):
    path = nibabel_file("anatomical.nii")  # LAS, big-endian int16
    window = Window(8000.0, 4000.0)
    media = NiftiVolumeAdapter(axis=axis, window=window, max_images=None).load(path)
    reference = expected_slices(nib.load(path), axis, window)
    assert len(media) == len(reference) == nib.load(path).shape[AXES[axis]]
    for image, expected in zip(media.images, reference):
        assert np.array_equal(grey(image), expected)
    assert media.info["original_orientation"] == "LAS" and media.info["orientation"] == "RAS"
    positions = [m["slice_position"] for m in media.metadata]
    assert np.all(np.diff(positions) == pytest.approx(2.0))  # ascending along R, A or S


def test_real_4d_files_need_a_volume_index():
    path = nibabel_file("example4d.nii.gz")
    with pytest.raises(AdapterError, match="pass volume_index=0..1"):
        NiftiVolumeAdapter().load(path)
    window = Window(800.0, 400.0)
    media = NiftiVolumeAdapter(window=window, volume_index=1, max_images=None).load(path)
    reference = expected_slices(nib.load(path), "axial", window, volume=1)
    assert all(np.array_equal(grey(i), e) for i, e in zip(media.images, reference))
    assert media.info["n_volumes"] == 2 and media.info["volume_index"] == 1
    with pytest.raises(AdapterError, match="out of range"):
        NiftiVolumeAdapter(volume_index=2).load(path)

    nifti2 = NiftiVolumeAdapter(volume_index=0).load(nibabel_file("example_nifti2.nii.gz"))
    assert nifti2.info["nifti_version"] == 2 and len(nifti2) == 12
    functional = NiftiVolumeAdapter(volume_index=19, axis="coronal").load(nibabel_file("functional.nii"))
    assert len(functional) == 21 and functional.images[0].size == (17, 3)


def test_reorientation_of_a_permuted_flipped_affine_is_lazy_and_correct(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 1000, size=(7, 9, 11)).astype(np.int16)
    # stored axes: 0 -> Superior (flipped: I), 1 -> Left (R flipped), 2 -> Anterior
    affine = np.array([[0, -1.5, 0, 10], [0, 0, 2.0, -20], [-3.0, 0, 0, 30], [0, 0, 0, 1]], dtype=float)
    path = write_nifti(tmp_path / "odd.nii.gz", data, affine)
    window = Window(2000.0, 0.0)
    monkeypatch.setattr(nifti_plugin, "SLAB_BYTES", 7 * 9 * 4 * 2)  # force several slabs
    reads: list[tuple[int, ...]] = []
    original = nib.arrayproxy.ArrayProxy.__getitem__

    def spy(self, slicer):
        block = original(self, slicer)
        reads.append(block.shape)
        return block

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__getitem__", spy)
    NiftiVolumeAdapter(axis="sagittal", window=window, max_images=3).load(path)
    # sagittal = stored axis 1, not the slowest: streamed as 2-plane slabs of (7, 9), never whole
    assert reads and max(int(np.prod(r)) for r in reads) <= 7 * 9 * 2
    reads.clear()
    NiftiVolumeAdapter(axis="coronal", window=window, max_images=3).load(path)
    assert reads == [(7, 9)] * 3  # coronal = stored axis 2 (slowest): exactly the 3 sampled slices
    img = nib.load(path)
    assert "".join(nib.aff2axcodes(img.affine)) == "ILA"
    for axis in AXES:
        media = NiftiVolumeAdapter(axis=axis, window=window, max_images=None).load(path)
        reference = expected_slices(img, axis, window)
        assert len(media) == len(reference)
        assert all(np.array_equal(grey(i), e) for i, e in zip(media.images, reference)), axis
        canonical_affine = nib.as_closest_canonical(img).affine
        k = AXES[axis]
        assert media.metadata[1]["slice_position"] - media.metadata[0]["slice_position"] == pytest.approx(
            canonical_affine[k, k]
        )
    assert media.info["spacing"] == {"slice": 3.0, "row": 2.0, "column": 1.5}  # axial: S | A rows, R columns


def test_scl_slope_and_inter_are_honoured(tmp_path):
    data = np.stack([np.full((6, 5), 10 * k, dtype=np.int16) for k in range(4)], axis=-1)  # (6, 5, 4)
    path = write_nifti(tmp_path / "scaled.nii", data, slope=2.0, inter=-100.0)
    img = nib.load(path)
    assert (img.dataobj.slope, img.dataobj.inter) == (2.0, -100.0)  # nibabel keeps them on the proxy
    scaled = [2.0 * 10 * k - 100.0 for k in range(4)]
    assert np.allclose(img.get_fdata()[0, 0, :], scaled)  # nibabel's own reading as the reference
    media = NiftiVolumeAdapter(window="200,0").load(path)
    window = Window(200.0, 0.0)
    for image, value in zip(media.images, scaled):
        assert np.unique(grey(image)).tolist() == [int(apply_window(np.array([value]), window)[0])]
    assert media.info["scl_slope"] == 2.0 and media.info["scl_inter"] == -100.0


def test_nan_and_inf_are_masked_and_reported(tmp_path):
    data = np.tile(np.arange(8, dtype=np.float32)[:, None, None], (1, 8, 3)) * 100.0
    data[0, 0, :] = np.nan
    data[1, 1, 1] = np.inf
    data[2, 2, 2] = -np.inf
    media = NiftiVolumeAdapter(window=None, percentiles=(0, 100)).load(write_nifti(tmp_path / "nan.nii", data))
    assert any(w.startswith("5 non-finite voxel(s)") for w in media.info["warnings"])
    first = grey(media.images[0])  # axial slice 0; display (row = A reversed, col = R reversed)
    assert first[-1, -1] == 0  # voxel (0, 0) NaN -> black
    assert first[0, 0] == 255  # voxel (7, 7) = 700 = the finite maximum: white (inf ignored)
    assert grey(media.images[1])[-2, -2] == 0 and grey(media.images[2])[-3, -3] == 0


def test_sampling_keeps_first_and_last_and_2d_images(tmp_path):
    data = np.zeros((4, 4, 30), dtype=np.uint8)
    media = NiftiVolumeAdapter(max_images=4).load(write_nifti(tmp_path / "long.nii.gz", data))
    assert [m["slice_index"] for m in media.metadata] == [0, 10, 19, 29]
    assert len(NiftiVolumeAdapter(max_images=4).load(tmp_path / "long.nii.gz", max_images=2)) == 2
    flat_path = write_nifti(tmp_path / "flat.nii.gz", np.ones((5, 3), np.float32))
    flat = NiftiVolumeAdapter(verify_gzip=False).load(flat_path)
    assert len(flat) == 1 and flat.images[0].size == (5, 3)


def test_slice_position_is_world_coordinate(tmp_path):
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    affine[:3, 3] = (-10.0, -20.0, -50.0)
    media = NiftiVolumeAdapter().load(write_nifti(tmp_path / "z.nii", np.zeros((4, 4, 5), np.int16), affine))
    assert [m["slice_position"] for m in media.metadata] == pytest.approx([-50.0, -47.5, -45.0, -42.5, -40.0])


def test_claims_options_and_registration():
    from pathlib import Path

    assert NiftiVolumeAdapter.claims(Path("a/brain.nii")) and NiftiVolumeAdapter.claims(Path("b/BRAIN.NII.GZ"))
    assert not NiftiVolumeAdapter.claims(Path("c/brain.nii.bak"))
    assert nifti_plugin.longllava_register_adapters() == [NiftiVolumeAdapter]
    for options in ({"axis": "oblique"}, {"window": "nope"}, {"volume_index": "1"}, {"max_images": 0}):
        with pytest.raises(ConfigError):
            NiftiVolumeAdapter(**options)
    with pytest.raises(AdapterError, match="one file"):
        NiftiVolumeAdapter().load(["a.nii", "b.nii"])
