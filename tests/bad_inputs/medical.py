"""Synthetic DICOM / NIfTI builders and the medical bad-input corpus.

Everything is generated on the fly from pydicom's bundled ``CT_small.dcm`` (and other files
inside the pydicom wheel, never downloaded) or from numpy arrays, into a directory the test
fixture provides. :data:`MEDICAL_BAD_INPUTS` lists each bad file with the typed error the
adapter must raise; ``tests/test_bad_inputs_medical.py`` runs them all.
"""

from __future__ import annotations

import copy
import functools
import gzip
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import nibabel as nib
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from longllava_sdk.errors import AdapterError, LongLLaVAError, MissingDependencyError, UnsupportedSourceError

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"


def pydicom_file(name: str) -> Path:
    """A test file shipped inside the pydicom wheel (never downloaded)."""
    found = get_testdata_file(name, download=False)
    if found is None:
        raise FileNotFoundError(f"{name} is not bundled with this pydicom wheel")
    return Path(found)


def nibabel_file(name: str) -> Path:
    """A test file shipped inside the nibabel wheel."""
    path = Path(nib.__file__).parent / "tests" / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} is not bundled with this nibabel wheel")
    return path


@functools.lru_cache(maxsize=1)
def _ct_small() -> Dataset:
    return pydicom.dcmread(pydicom_file("CT_small.dcm"))


def ct_template() -> Dataset:
    """A fresh copy of CT_small.dcm (128 x 128, int16, slope 1, intercept -1024)."""
    return copy.deepcopy(_ct_small())


def uid(seed: str) -> str:
    """A deterministic DICOM UID."""
    return generate_uid(entropy_srcs=[seed])


def write_ct_series(
    folder: Path,
    n: int = 8,
    *,
    spacing: float = 2.5,
    positions: Sequence[Sequence[float]] | None = None,
    orientation: Sequence[float] | Sequence[Sequence[float]] = AXIAL,
    origin: Sequence[float] = (-80.0, -80.0, -100.0),
    series_uid: str | None = None,
    description: str = "synthetic CT",
    hu: Callable[[int], float | np.ndarray] = lambda i: 10.0 * i,
    slope: float = 1.0,
    intercept: float = -1024.0,
    photometric: str = "MONOCHROME2",
    padding_value: int | None = None,
    image_type: Sequence[str] | Callable[[int], Sequence[str]] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    shuffle: bool = True,
    seed: int = 0,
    extension: str = "",
    modality: str = "CT",
) -> list[Path]:
    """Write an ``n``-slice series built from CT_small; return the files in *spatial* order.

    Slice ``i`` (spatial order, ascending along the normal) sits at ``positions[i]`` (default:
    ``origin + i * spacing * normal``) and holds ``hu(i)`` Hounsfield units everywhere (or
    the ``(128, 128)`` array it returns). With ``shuffle`` the file names and InstanceNumbers
    follow a random permutation, so only the positions tell the order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or uid(f"series-{folder}-{description}-{seed}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n) if shuffle else np.arange(n)
    orientations = [orientation] * n if np.ndim(orientation) == 1 else list(orientation)
    paths = []
    for i in range(n):
        ds = ct_template()
        ori = np.asarray(orientations[i], dtype=float)
        normal = np.cross(ori[:3], ori[3:])
        pos = positions[i] if positions is not None else np.asarray(origin) + i * spacing * normal
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in ori]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = description
        ds.Modality = modality
        ds.SOPInstanceUID = uid(f"{series_uid}-{i}")
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = int(perm[i]) + 1
        ds.ImageType = list(image_type(i) if callable(image_type) else image_type)
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PhotometricInterpretation = photometric
        if padding_value is None:
            if "PixelPaddingValue" in ds:
                del ds.PixelPaddingValue
        else:
            ds.PixelPaddingValue = padding_value
        values = np.broadcast_to(np.asarray(hu(i), dtype=np.float64), (ds.Rows, ds.Columns))
        stored = np.round((values - intercept) / slope).astype(np.int16)
        ds.PixelData = stored.tobytes()
        path = folder / f"IM{int(perm[i]):04d}{extension}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_enhanced_ct(
    path: Path,
    hu_per_frame: Sequence[float],
    z_per_frame: Sequence[float],
    *,
    rescale_per_frame: Sequence[tuple[float, float]] | None = None,
    rows: int = 16,
    columns: int = 16,
    n_per_frame_items: int | None = None,
) -> Path:
    """An Enhanced CT (multi-frame) object: positions and rescale in the functional groups.

    Frame ``f`` lies at z = ``z_per_frame[f]`` and holds ``hu_per_frame[f]`` HU, stored with
    that frame's ``(slope, intercept)`` from ``rescale_per_frame`` (per-frame groups); the
    orientation and pixel spacing are in the shared groups.
    """
    n = len(hu_per_frame)
    rescale = list(rescale_per_frame or [(1.0, -1024.0)] * n)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENHANCED_CT_STORAGE
    meta.MediaStorageSOPInstanceUID = uid(f"enhanced-{path}")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    ds.SOPClassUID = ENHANCED_CT_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid(f"study-{path}")
    ds.SeriesInstanceUID = uid(f"enhanced-series-{path}")
    ds.SeriesDescription = "enhanced CT"
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.NumberOfFrames = n

    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = list(AXIAL)
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    measures = Dataset()
    measures.PixelSpacing = [0.7, 0.7]
    measures.SliceThickness = 1.0
    shared.PixelMeasuresSequence = DicomSequence([measures])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    items, frames = [], []
    for f in range(n):
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [-5.0, -5.0, float(z_per_frame[f])]
        item.PlanePositionSequence = DicomSequence([position])
        transform = Dataset()
        slope, intercept = rescale[f]
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slope, intercept, "HU"
        item.PixelValueTransformationSequence = DicomSequence([transform])
        content = Dataset()
        content.InStackPositionNumber = f + 1
        item.FrameContentSequence = DicomSequence([content])
        items.append(item)
        frames.append(np.full((rows, columns), round((hu_per_frame[f] - intercept) / slope), dtype=np.int16))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(items[: n if n_per_frame_items is None else n_per_frame_items])
    ds.PixelData = np.stack(frames).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nifti(
    path: Path,
    data: np.ndarray,
    affine: np.ndarray | None = None,
    *,
    slope: float | None = None,
    inter: float | None = None,
    version: int = 1,
) -> Path:
    """Save ``data`` as NIfTI (gzip when the name ends with .gz); optional raw scl_slope/inter."""
    klass = nib.Nifti2Image if version == 2 else nib.Nifti1Image
    img = klass(data, np.eye(4) if affine is None else affine)
    img.set_sform(img.affine, code=1)
    img.set_qform(img.affine, code=1)
    nib.save(img, str(path))
    if slope is not None:
        # nibabel chooses scl_slope/inter itself on save; write the raw header fields instead,
        # so the stored integers stay as given and the header carries the scaling.
        _patch_slope(path, slope, inter or 0.0)
    return path


def _patch_slope(path: Path, slope: float, inter: float) -> None:
    compressed = path.name.endswith(".gz")
    raw = gzip.decompress(path.read_bytes()) if compressed else path.read_bytes()
    raw = bytearray(raw)
    raw[112:120] = struct.pack("<ff", slope, inter)
    path.write_bytes(gzip.compress(bytes(raw)) if compressed else bytes(raw))


def _nifti_bytes(data: np.ndarray) -> bytearray:
    img = nib.Nifti1Image(data, np.eye(4))
    img.set_sform(np.eye(4), code=1)
    return bytearray(img.to_bytes())


# ---------------------------------------------------------------------- corpus
@dataclass
class BadInput:
    """One bad source: how to build it, which adapter reads it, and the typed error expected.

    Attributes:
        name: short id (test id).
        adapter: ``"dicom"`` or ``"nifti"``.
        build: writes the bad file(s) under the given directory and returns the source to load.
        error: the SDK error type expected (an exact type, not just a base class).
        match: a fragment the message must contain (lower-case comparison).
        options: adapter options.
        needs_missing_decoder: a transfer syntax UID whose decoder must be absent (else skipped).
    """

    name: str
    adapter: str
    build: Callable[[Path], Any]
    error: type[LongLLaVAError]
    match: str
    options: dict[str, Any] = field(default_factory=dict)
    needs_missing_decoder: str | None = None


def _copy(name: str, directory: Path, target: str | None = None) -> Path:
    out = directory / (target or name)
    shutil.copyfile(pydicom_file(name), out)
    return out


def _ct_bytes() -> bytes:
    return pydicom_file("CT_small.dcm").read_bytes()


def _dicom_truncated_pixels(d: Path) -> Path:
    out = d / "truncated_pixels.dcm"
    out.write_bytes(_ct_bytes()[:-5000])
    return out


def _dicom_truncated_header(d: Path) -> Path:
    out = d / "truncated_header.dcm"
    out.write_bytes(_ct_bytes()[:700])
    return out


def _dicom_not_dicom(d: Path) -> Path:
    out = d / "notes.dcm"
    out.write_text("this is a text file, not a DICOM image\n" * 10)
    return out


def _dicom_wrong_magic(d: Path) -> Path:
    raw = bytearray(_ct_bytes())
    raw[128:132] = b"DICX"
    out = d / "wrong_magic.dcm"
    out.write_bytes(bytes(raw))
    return out


def _dicom_missing_pixel_data(d: Path) -> Path:
    ds = ct_template()
    del ds.PixelData
    out = d / "no_pixels.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def _dicom_huge_dims(d: Path) -> Path:
    ds = ct_template()
    ds.Rows, ds.Columns = 60000, 60000
    out = d / "huge_dims.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def _dicom_jpegls(d: Path) -> Path:
    return _copy("MR_small_jpeg_ls_lossless.dcm", d, "jpegls.dcm")


def _dicom_unknown_syntax(d: Path) -> Path:
    ds = ct_template()
    ds.file_meta.TransferSyntaxUID = UID("1.2.826.0.1.3680043.9.9999.42")
    out = d / "unknown_syntax.dcm"
    ds.save_as(out)
    return out


def _dicom_truncated_encapsulated(d: Path) -> Path:
    out = d / "rle_truncated.dcm"
    out.write_bytes(pydicom_file("MR_small_RLE.dcm").read_bytes()[:-1500])
    return out


def _dicom_corrupt_rle(d: Path) -> Path:
    ds = pydicom.dcmread(pydicom_file("MR_small_RLE.dcm"))
    raw = bytearray(ds.PixelData)
    # Item tag (8) + empty offset table item (8) + fragment item header (8): then the RLE header,
    # whose first word is the number of segments; 15 is the maximum, 99 is impossible.
    start = raw.index(b"\xfe\xff\x00\xe0", 8) + 8
    raw[start : start + 4] = struct.pack("<L", 99)
    ds.PixelData = bytes(raw)
    out = d / "rle_corrupt.dcm"
    ds.save_as(out)
    return out


def _dicom_mixed_series(d: Path) -> Path:
    folder = d / "mixed"
    write_ct_series(folder / "a", 3, description="CHEST 1mm", seed=1)
    write_ct_series(folder / "b", 4, description="CHEST 5mm", seed=2)
    return folder


def _dicom_non_parallel(d: Path) -> Path:
    folder = d / "fan"
    orientations = []
    for i in range(6):
        a = np.radians(5.0 * i)  # each slice tilted 5 degrees more about the x axis
        orientations.append((1.0, 0.0, 0.0, 0.0, float(np.cos(a)), float(np.sin(a))))
    positions = [(0.0, 0.0, 3.0 * i) for i in range(6)]
    write_ct_series(folder, 6, orientation=orientations, positions=positions)
    return folder


def _dicom_geometry_mix(d: Path) -> Path:
    folder = d / "geometry_mix"
    paths = write_ct_series(folder, 4)
    ds = pydicom.dcmread(paths[2])
    del ds.ImagePositionPatient
    ds.save_as(paths[2])
    return folder


def _dicom_truncated_in_folder(d: Path) -> Path:
    folder = d / "series_with_truncated_slice"
    paths = write_ct_series(folder, 5)
    paths[3].write_bytes(paths[3].read_bytes()[:2000])  # cut inside the header
    return folder


def _dicom_empty_folder(d: Path) -> Path:
    folder = d / "no_dicom"
    folder.mkdir()
    (folder / "README.txt").write_text("exported by a viewer; images missing\n")
    return folder


def _dicom_frames_mismatch(d: Path) -> Path:
    return write_enhanced_ct(d / "frames_mismatch.dcm", [0, 10, 20, 30, 40], [0, 1, 2, 3, 4], n_per_frame_items=4)


def _nifti_truncated(d: Path) -> Path:
    out = d / "truncated.nii"
    out.write_bytes(bytes(_nifti_bytes(np.zeros((32, 32, 16), np.int16)))[:-3000])
    return out


def _huge_header(gz: bool, d: Path) -> Path:
    raw = _nifti_bytes(np.zeros((8, 8, 4), np.int16))
    raw[40:56] = struct.pack("<8h", 3, 4096, 4096, 4096, 1, 1, 1, 1)
    out = d / ("huge_dims.nii.gz" if gz else "huge_dims.nii")
    out.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
    return out


def _nifti_4d(d: Path) -> Path:
    return write_nifti(d / "fmri.nii.gz", np.zeros((8, 8, 4, 5), np.int16))


def _nifti_wrong_magic(d: Path) -> Path:
    raw = _nifti_bytes(np.zeros((8, 8, 4), np.int16))
    raw[344:348] = b"abc\x00"
    out = d / "wrong_magic.nii"
    out.write_bytes(bytes(raw))
    return out


def _nifti_gz_corrupt(d: Path) -> Path:
    rng = np.random.default_rng(0)
    packed = bytearray(gzip.compress(bytes(_nifti_bytes(rng.integers(0, 1000, (32, 32, 16)).astype(np.int16)))))
    middle = len(packed) // 2
    packed[middle : middle + 64] = bytes(64)  # zero a run inside the deflate stream
    out = d / "corrupt.nii.gz"
    out.write_bytes(bytes(packed))
    return out


def _nifti_gz_truncated(d: Path) -> Path:
    rng = np.random.default_rng(1)
    packed = gzip.compress(bytes(_nifti_bytes(rng.integers(0, 1000, (32, 32, 16)).astype(np.int16))))
    out = d / "truncated.nii.gz"
    out.write_bytes(packed[: len(packed) // 2])
    return out


def _nifti_nan_only(d: Path) -> Path:
    return write_nifti(d / "nan_only.nii", np.full((8, 8, 4), np.nan, np.float32))


def _nifti_not_gzip(d: Path) -> Path:
    out = d / "plain.nii.gz"
    out.write_bytes(bytes(_nifti_bytes(np.zeros((8, 8, 4), np.int16))))
    return out


def _nifti_complex(d: Path) -> Path:
    return write_nifti(d / "complex.nii", np.zeros((8, 8, 4), np.complex64))


def _nifti_text(d: Path) -> Path:
    out = d / "notes.nii"
    out.write_text("not a nifti file at all\n" * 40)
    return out


MEDICAL_BAD_INPUTS: list[BadInput] = [
    BadInput("dicom-truncated-pixel-data", "dicom", _dicom_truncated_pixels, AdapterError, "truncated"),
    BadInput("dicom-truncated-header", "dicom", _dicom_truncated_header, AdapterError, "truncated"),
    BadInput("dicom-not-dicom", "dicom", _dicom_not_dicom, AdapterError, "not a dicom file"),
    BadInput("dicom-wrong-magic", "dicom", _dicom_wrong_magic, AdapterError, "'dicm' marker"),
    BadInput("dicom-missing-pixel-data", "dicom", _dicom_missing_pixel_data, AdapterError, "no pixel data"),
    BadInput("dicom-huge-rows-columns", "dicom", _dicom_huge_dims, AdapterError, "60000 x 60000"),
    BadInput(
        "dicom-jpegls-without-decoder", "dicom", _dicom_jpegls, MissingDependencyError, "longllava-sdk[dicom-codecs]",
        needs_missing_decoder="1.2.840.10008.1.2.4.80",
    ),
    BadInput(
        "dicom-unknown-transfer-syntax", "dicom", _dicom_unknown_syntax, UnsupportedSourceError,
        "unknown transfer syntax",
    ),
    BadInput("dicom-truncated-encapsulated", "dicom", _dicom_truncated_encapsulated, AdapterError, "truncated"),
    BadInput("dicom-corrupt-rle", "dicom", _dicom_corrupt_rle, AdapterError, "cannot decode"),
    BadInput("dicom-mixed-series", "dicom", _dicom_mixed_series, AdapterError, "series_uid="),
    BadInput("dicom-non-parallel", "dicom", _dicom_non_parallel, AdapterError, "not parallel"),
    BadInput("dicom-geometry-mix", "dicom", _dicom_geometry_mix, AdapterError, "lack imagepositionpatient"),
    BadInput("dicom-truncated-slice-in-folder", "dicom", _dicom_truncated_in_folder, AdapterError, "truncated"),
    BadInput("dicom-folder-without-dicom", "dicom", _dicom_empty_folder, AdapterError, "no dicom images found"),
    BadInput("dicom-frames-vs-functional-groups", "dicom", _dicom_frames_mismatch, AdapterError, "per-frame"),
    BadInput("nifti-truncated", "nifti", _nifti_truncated, AdapterError, "truncated"),
    BadInput("nifti-huge-dims", "nifti", functools.partial(_huge_header, False), AdapterError, "dimensions declare"),
    BadInput("nifti-gz-huge-dims", "nifti", functools.partial(_huge_header, True), AdapterError, "decompresses to"),
    BadInput(
        "nifti-gz-huge-dims-trailer-check", "nifti", functools.partial(_huge_header, True), AdapterError,
        "gzip trailer", options={"verify_gzip": False},
    ),
    BadInput("nifti-gz-truncated-unverified", "nifti", _nifti_gz_truncated, AdapterError, "truncated",
             options={"verify_gzip": False}),
    BadInput("nifti-4d-without-volume-index", "nifti", _nifti_4d, AdapterError, "volume_index"),
    BadInput("nifti-wrong-magic", "nifti", _nifti_wrong_magic, AdapterError, "not a nifti"),
    BadInput("nifti-gz-corrupt", "nifti", _nifti_gz_corrupt, AdapterError, "gzip"),
    BadInput("nifti-gz-truncated", "nifti", _nifti_gz_truncated, AdapterError, "gzip"),
    BadInput("nifti-nan-only", "nifti", _nifti_nan_only, AdapterError, "no finite"),
    BadInput("nifti-named-gz-not-gzip", "nifti", _nifti_not_gzip, AdapterError, "not gzip"),
    BadInput("nifti-complex-voxels", "nifti", _nifti_complex, UnsupportedSourceError, "complex"),
    BadInput("nifti-text-file", "nifti", _nifti_text, AdapterError, "not a nifti"),
]
