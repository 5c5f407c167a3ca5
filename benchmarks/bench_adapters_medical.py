"""Benchmark: DICOM series and NIfTI volumes -> windowed RGB slices per second.

Generates (into a temporary directory, deleted afterwards) a synthetic chest-like CT of
``N_SLICES`` (300) slices of 512 x 512 int16, as a DICOM series (one file per slice, explicit
VR little endian, shuffled file names) and as NIfTI (``.nii`` and ``.nii.gz``), then times
the adapters reading all slices (``max_images=None``):

* ``dicom``: header pass over 300 files + decode + modality LUT + one window (lung);
* ``dicom-3win``: the same with three windows stacked as R/G/B;
* ``dicom-sampled``: ``max_images=64`` (headers for all 300, pixels for 64);
* ``nifti-axial`` (per-slice proxy reads) and ``nifti-coronal`` (slab streaming), ``.nii``;
* ``nifti-gz-axial``: ``.nii.gz`` including the CRC-verifying decompression pass;
* ``nifti-gz-trailer``: the same with ``verify_gzip=False`` (size from the gzip trailer).

Run: ``python benchmarks/bench_adapters_medical.py`` (prints a table; ``run()`` returns rows).
Peak RSS is the process peak (``ru_maxrss``) after each case, so it only grows.
"""

from __future__ import annotations

import copy
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from pydicom.data import get_testdata_file

N_SLICES = 300
SIZE = 512


def _phantom(size: int, z: float, rng: np.random.Generator) -> np.ndarray:
    """(size, size) int16 HU: air, body ellipse, two lungs, a spine disc, noise; varies with z."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    hu[(xx / 0.42) ** 2 + (yy / 0.3) ** 2 < 1] = 40.0
    lung_r = 0.12 + 0.04 * np.sin(z / 40.0)
    for cx in (-0.18, 0.18):
        hu[((xx - cx) / lung_r) ** 2 + ((yy + 0.02) / (lung_r * 1.5)) ** 2 < 1] = -850.0
    hu[(xx**2 + (yy - 0.2) ** 2) < 0.04**2] = 700.0
    hu += rng.normal(0.0, 15.0, size=hu.shape).astype(np.float32)
    return np.clip(hu, -1024, 3071).astype(np.int16)


def _write_dicom_series(folder: Path, n: int, size: int) -> None:
    folder.mkdir(parents=True)
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    template.Rows = template.Columns = size
    template.RescaleSlope, template.RescaleIntercept = 1, -1024
    if "PixelPaddingValue" in template:
        del template.PixelPaddingValue
    series_uid = pydicom.uid.generate_uid()
    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    base = [_phantom(size, z, rng) for z in range(0, n, 25)]  # a few distinct slices, reused
    for i in range(n):
        ds = copy.copy(template)  # shallow: every element we change is reassigned
        ds.file_meta = copy.deepcopy(template.file_meta)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = int(order[i]) + 1
        ds.ImagePositionPatient = [-180.0, -180.0, -300.0 + 1.25 * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelData = (base[i // 25].astype(np.int32) + 1024).astype(np.int16).tobytes()
        ds.save_as(folder / f"IM{int(order[i]):05d}", enforce_file_format=True)


def _write_nifti(folder: Path, n: int, size: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    volume = np.empty((size, size, n), dtype=np.int16)
    base = [_phantom(size, z, rng) for z in range(0, n, 25)]
    for z in range(n):
        volume[:, :, z] = base[z // 25].T
    affine = np.diag([-0.7, -0.7, 1.25, 1.0])
    img = nib.Nifti1Image(volume, affine)
    plain, packed = folder / "ct.nii", folder / "ct.nii.gz"
    nib.save(img, str(plain))
    nib.save(img, str(packed))
    return plain, packed


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _time(name: str, load: Any) -> dict[str, Any]:
    start, cpu_start = time.perf_counter(), time.process_time()
    media = load()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "case": name,
        "slices": len(media),
        "seconds": round(seconds, 3),
        "slices_per_s": round(len(media) / seconds, 1),
        # CPU time of this process: the figure to compare on a busy (shared) machine
        "cpu_seconds": round(cpu, 3),
        "slices_per_cpu_s": round(len(media) / cpu, 1) if cpu > 0 else None,
        "image_size": media.images[0].size,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def run(n_slices: int = N_SLICES, size: int = SIZE) -> list[dict[str, Any]]:
    """Generate the data, time every case, return one dict per case."""
    from longllava_plugins.dicom import DicomSeriesAdapter
    from longllava_plugins.nifti import NiftiVolumeAdapter

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_medical_") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        _write_dicom_series(root / "ct", n_slices, size)
        plain, packed = _write_nifti(root, n_slices, size)
        generated = time.perf_counter() - start
        print(f"generated {n_slices} x {size}x{size} slices (DICOM + NIfTI) in {generated:.1f} s", file=sys.stderr)

        three = ["lung", "mediastinum", "bone"]
        cases = [
            ("dicom", lambda: DicomSeriesAdapter(window="lung", max_images=None).load(root / "ct")),
            ("dicom-3win", lambda: DicomSeriesAdapter(window=three, max_images=None).load(root / "ct")),
            ("dicom-sampled", lambda: DicomSeriesAdapter(window="lung", max_images=64).load(root / "ct")),
            ("nifti-axial", lambda: NiftiVolumeAdapter(window="lung", max_images=None).load(plain)),
            ("nifti-coronal", lambda: NiftiVolumeAdapter(axis="coronal", window="lung", max_images=None).load(plain)),
            ("nifti-gz-axial", lambda: NiftiVolumeAdapter(window="lung", max_images=None).load(packed)),
            (
                "nifti-gz-trailer",
                lambda: NiftiVolumeAdapter(window="lung", max_images=None, verify_gzip=False).load(packed),
            ),
        ]
        for name, load in cases:
            rows.append(_time(name, load))
    return rows


def main() -> None:
    rows = run()
    header = (
        f"{'case':<18}{'slices':>7}{'wall s':>9}{'slices/s':>10}{'CPU s':>8}{'slices/CPU-s':>14}{'peak RSS MB':>13}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['case']:<18}{row['slices']:>7}{row['seconds']:>9.2f}{row['slices_per_s']:>10.1f}"
            f"{row['cpu_seconds']:>8.2f}{row['slices_per_cpu_s'] or 0:>14.1f}{row['peak_rss_mb']:>13.0f}"
        )


if __name__ == "__main__":
    main()
