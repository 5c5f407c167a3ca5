"""Bad inputs for resource limits, header/data disagreements, confinement and the fuzz findings.

Part of the bad-input corpus (with :mod:`bad_inputs.medical` and :mod:`bad_inputs.raster_video`):
each case builds its source under a directory the test gives and names the typed error the
adapter must raise. Large *declared* sizes cost nothing to build: deflate streams of zeros are
assembled from one compressed segment repeated (:func:`raw_deflate_zeros`), sparse files
take no disk space, and TIFF directories are written with ``struct``
(:func:`classic_tiff`). ``tests/test_bad_inputs_isolated.py`` runs every case of the corpus
in a forked worker (address-space and wall-clock limits, no socket, nothing written).

:data:`READABLE_REGRESSIONS` lists inputs the fuzzing run found failing that must now *load*
(the correct behaviour for them is to read the file): non-UTF-8 container metadata,
non-finite or degenerate NIfTI affines, a sidecar ``.ovr`` pointing at the network (ignored).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np
import pydicom
import pydicom.filebase
import pydicom.filewriter
from PIL import Image
from pydicom.uid import DeflatedExplicitVRLittleEndian

from longllava_sdk.errors import AdapterError, LongLLaVAError, OutsideRootError, ResourceLimitError

from .medical import ct_template, pydicom_file, write_ct_series
from .raster_video import encode, good_geotiff

CHUNK = 1 << 24


@dataclass(frozen=True)
class Case:
    """One bad source.

    Attributes:
        name: short id.
        adapter: adapter name.
        build: writes the source under the given directory and returns it.
        error: the exact SDK error type expected.
        match: a fragment of the message (lower-case comparison).
        options: adapter options.
        confined: read under ``allowed_root(directory / "root")`` (confinement cases).
        names: ``"source"`` when the error must name the source itself, ``"inside"`` when it
            may name a file inside the source folder or the root.
    """

    name: str
    adapter: str
    build: Callable[[Path], Any]
    error: type[LongLLaVAError]
    match: str
    options: dict[str, Any] = field(default_factory=dict)
    confined: bool = False
    names: str = "source"


# ------------------------------------------------------------------------------------------
# builders shared by the cases
# ------------------------------------------------------------------------------------------
def raw_deflate_zeros(prefix: bytes, zeros: int, suffix: bytes = b"") -> bytes:
    """A raw deflate stream of ``prefix + zeros * b"\\0" + suffix`` built in milliseconds.

    Each piece is compressed by its own compressor and ended with a full flush (byte-aligned,
    history reset), so one compressed 16 MiB segment of zeros can be repeated; a final empty
    block ends the stream.
    """

    def segment(data: bytes) -> bytes:
        packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return packer.compress(data) + packer.flush(zlib.Z_FULL_FLUSH)

    parts = [segment(prefix)] if prefix else []
    full, rest = divmod(zeros, CHUNK)
    if full:
        parts.append(segment(bytes(CHUNK)) * full)
    if rest:
        parts.append(segment(bytes(rest)))
    if suffix:
        parts.append(segment(suffix))
    parts.append(zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush(zlib.Z_FINISH))
    return b"".join(parts)


def gzip_zeros(prefix: bytes, zeros: int, suffix: bytes = b"") -> bytes:
    """A gzip member holding ``prefix + zeros + suffix`` (CRC and size correct)."""
    crc = zlib.crc32(prefix)
    block = bytes(CHUNK)
    full, rest = divmod(zeros, CHUNK)
    for _ in range(full):
        crc = zlib.crc32(block, crc)
    crc = zlib.crc32(bytes(rest), crc)
    crc = zlib.crc32(suffix, crc)
    total = len(prefix) + zeros + len(suffix)
    head = b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + b"\x00\xff"
    return head + raw_deflate_zeros(prefix, zeros, suffix) + struct.pack("<II", crc, total & 0xFFFFFFFF)


def classic_tiff(entries: list[tuple[int, int, list[int] | bytes]], data: bytes = b"", *, big_endian: bool = False
                 ) -> bytes:
    """A one-IFD TIFF: ``data`` at byte 8, then out-of-line values, then the IFD.

    ``entries`` are ``(tag, field type, values)``; values are integers (types 3, 4, 16) or
    raw bytes (type 2, 7). Offsets into ``data`` are ``8 + position``.
    """
    order = ">" if big_endian else "<"
    sizes = {1: ("B", 1), 2: ("B", 1), 3: ("H", 2), 4: ("I", 4), 7: ("B", 1), 12: ("d", 8)}
    out = bytearray((b"MM\x00*" if big_endian else b"II*\x00") + b"\x00\x00\x00\x00") + data
    if len(out) % 2:
        out += b"\x00"
    fields = []
    for tag, kind, values in sorted(entries, key=lambda e: e[0]):
        code, width = sizes[kind]
        raw = bytes(values) if isinstance(values, (bytes, bytearray)) else b"".join(
            struct.pack(order + code, v) for v in values)
        count = len(raw) // width
        if len(raw) <= 4:
            fields.append(struct.pack(order + "HHI", tag, kind, count) + raw.ljust(4, b"\x00"))
        else:
            fields.append(struct.pack(order + "HHII", tag, kind, count, len(out)))
            out += raw
            if len(out) % 2:
                out += b"\x00"
    ifd = len(out)
    out += struct.pack(order + "H", len(fields)) + b"".join(fields) + struct.pack(order + "I", 0)
    out[4:8] = struct.pack(order + "I", ifd)
    return bytes(out)


def _nifti_header(shape: tuple[int, ...], dtype: Any = np.uint8, affine: np.ndarray | None = None) -> bytes:
    """A NIfTI-1 single-file header (352 bytes: header + empty extension flag) for ``shape``."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.eye(4) if affine is None else affine, code=1)
    header["vox_offset"] = 352
    return header.binaryblock + b"\x00\x00\x00\x00"


def _dicom_dataset_bytes(ds: pydicom.Dataset) -> bytes:
    """The explicit-VR little-endian encoding of ``ds`` (no preamble, no file meta)."""
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(buffer, ds)
    return buffer.getvalue()


def _dicom_meta_prefix(syntax: str, sop_class: str, sop_instance: str) -> bytes:
    """Preamble, ``DICM`` and a file meta group for ``syntax``."""
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = syntax
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    pydicom.filewriter.write_file_meta_info(buffer, meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + buffer.getvalue()


def _deflated_dicom(path: Path, rows: int, columns: int, frames: int = 1) -> Path:
    """A deflated CT whose pixel data (zeros) the header declares in full: tiny on disk."""
    ds = ct_template()
    del ds.PixelData
    ds.Rows, ds.Columns = rows, columns
    if frames > 1:
        ds.NumberOfFrames = frames
    length = rows * columns * 2 * frames
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length)
    body = raw_deflate_zeros(_dicom_dataset_bytes(ds) + pixel_header, length)
    path.write_bytes(_dicom_meta_prefix(DeflatedExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID) + body)
    return path


# ------------------------------------------------------------------------------------------
# DICOM
# ------------------------------------------------------------------------------------------
def _ct_bytes() -> bytearray:
    return bytearray(pydicom_file("CT_small.dcm").read_bytes())


def _dicom_unknown_vr_meta(d: Path) -> Path:
    raw = _ct_bytes()
    at = raw.index(b"\x02\x00\x10\x00", 132)  # (0002,0010) Transfer Syntax UID
    raw[at + 4:at + 6] = b"QQ"
    out = d / "unknown_vr_meta.dcm"
    out.write_bytes(bytes(raw))
    return out


def _dicom_unknown_vr_dataset(d: Path) -> Path:
    raw = _ct_bytes()
    at = raw.index(b"\x28\x00\x10\x00US")  # (0028,0010) Rows, explicit VR
    raw[at + 4:at + 6] = b"ZZ"
    out = d / "unknown_vr_rows.dcm"
    out.write_bytes(bytes(raw))
    return out


def _dicom_palette_without_lut(d: Path) -> Path:
    ds = ct_template()
    ds.PhotometricInterpretation = "PALETTE COLOR"
    out = d / "palette_no_lut.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def _dicom_rle_30000(d: Path) -> Path:
    ds = pydicom.dcmread(pydicom_file("MR_small_RLE.dcm"))
    ds.Rows = ds.Columns = 30000
    out = d / "rle_30000.dcm"
    ds.save_as(out)
    return out


def _dicom_deflated_16384(d: Path) -> Path:
    return _deflated_dicom(d / "deflated_16384.dcm", 16384, 16384)


def _dicom_deflated_million_frames(d: Path) -> Path:
    ds = ct_template()
    ds.NumberOfFrames = 1_000_000
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = d / "deflated_1e6_frames.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def _dicom_deflated_bomb_ratio(d: Path) -> Path:
    # 4096 x 4096 x 8 frames of zeros (256 MiB) in about 260 KB: ratio ~1000:1, frames within limits
    return _deflated_dicom(d / "deflated_bomb.dcm", 4096, 4096, frames=8)


def _dicom_deflated_truncated(d: Path) -> Path:
    raw = _deflated_dicom(d / "full.dcm", 64, 64).read_bytes()
    out = d / "deflated_truncated.dcm"
    out.write_bytes(raw[: len(raw) - 40])
    return out


def _dicom_deflated_short_pixels(d: Path) -> Path:
    ds = ct_template()
    ds.Rows = ds.Columns = 256  # CT_small holds 128 x 128 pixels
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = d / "deflated_short_pixels.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def _dicom_length_past_eof(d: Path) -> Path:
    raw = _ct_bytes()
    at = raw.index(b"\x08\x00\x18\x00UI")  # (0008,0018) SOP Instance UID
    # make it a long-VR element (UN) with a 2.5 GB length: the reader must not allocate it
    raw[at + 4:at + 8] = b"UN\x00\x00"
    raw[at + 8:at + 8] = struct.pack("<I", 2_570_500_764)
    out = d / "length_past_eof.dcm"
    out.write_bytes(bytes(raw))
    return out


def _dicom_too_many_frames_folder(d: Path) -> Path:
    folder = d / "many_slices"
    write_ct_series(folder, 5)
    return folder


def _dicom_time_budget(d: Path) -> Path:
    folder = d / "slow_series"
    write_ct_series(folder, 6)
    return folder


def _dicom_max_pixels_option(d: Path) -> Path:
    out = d / "ct.dcm"
    ct_template().save_as(out, enforce_file_format=True)
    return out


# ------------------------------------------------------------------------------------------
# NIfTI
# ------------------------------------------------------------------------------------------
def _nifti_gz_zero_volume(d: Path) -> Path:
    out = d / "zeros_2048x2048x300.nii.gz"
    out.write_bytes(gzip_zeros(_nifti_header((2048, 2048, 300)), 2048 * 2048 * 300))
    return out


def _nifti_sparse_volume(d: Path) -> Path:
    out = d / "sparse_2048x2048x300.nii"
    with out.open("wb") as handle:
        handle.write(_nifti_header((2048, 2048, 300)))
        handle.truncate(352 + 2048 * 2048 * 300)  # a hole: no disk space, reads as zeros
    return out


def _nifti_huge_slice(d: Path) -> Path:
    out = d / "huge_slice.nii"
    with out.open("wb") as handle:
        handle.write(_nifti_header((16384, 16384, 1)))
        handle.truncate(352 + 16384 * 16384)
    return out


def _nifti_gz_appended(d: Path) -> Path:
    data = np.arange(8 * 8 * 4, dtype=np.int16).tobytes()
    out = d / "appended.nii.gz"
    out.write_bytes(gzip_zeros(_nifti_header((8, 8, 4), np.int16) + data, 20 << 20))
    return out


def _nifti_gz_time_budget(d: Path) -> Path:
    out = d / "volume.nii.gz"
    out.write_bytes(gzip_zeros(_nifti_header((64, 64, 64), np.int16) + b"\x01" * 64, 64 * 64 * 64 * 2 - 64))
    return out


# ------------------------------------------------------------------------------------------
# GeoTIFF / TIFF
# ------------------------------------------------------------------------------------------
def _geo_tags() -> list[tuple[int, int, list[int] | bytes]]:
    return [(33550, 12, [10, 10, 0]), (33922, 12, [0, 0, 0, 500000, 5000000, 0]),
            (34735, 3, [1, 1, 0, 1, 1024, 0, 1, 1])]


def _tiff_samples_100000(d: Path) -> Path:
    spp = 100_000
    strip = bytes(64)
    entries = [(256, 4, [1]), (257, 4, [1]), (258, 3, [8] * spp), (259, 3, [8]), (262, 3, [1]),
               (273, 4, [8]), (277, 4, [spp]), (278, 4, [1]), (279, 4, [len(strip)]), *_geo_tags()]
    out = d / "samples_100000.tif"
    out.write_bytes(classic_tiff(entries, strip))
    return out


def _tiff_sparse_1e10(d: Path) -> Path:
    side, block = 100_000, 4096
    n = ((side + block - 1) // block) ** 2
    entries = [(256, 4, [side]), (257, 4, [side]), (258, 3, [8]), (259, 3, [8]), (262, 3, [1]), (277, 3, [1]),
               (322, 3, [block]), (323, 3, [block]), (324, 4, [0] * n), (325, 4, [0] * n), *_geo_tags()]
    out = d / "sparse_100000.tif"
    out.write_bytes(classic_tiff(entries))
    return out


def _tiff_length_count_changed(d: Path) -> Path:
    """A 30-row striped TIFF whose ImageLength entry count was changed: read from elsewhere."""
    width, rows = 64, 30
    strip = zlib.compress(bytes(width * rows))
    entries = [(256, 4, [width]), (257, 4, [rows]), (258, 3, [8]), (259, 3, [8]), (262, 3, [1]), (273, 4, [8]),
               (277, 3, [1]), (278, 4, [rows]), (279, 4, [len(strip)]), *_geo_tags()]
    raw = bytearray(classic_tiff(entries, strip))
    ifd = struct.unpack("<I", raw[4:8])[0]
    for k in range(struct.unpack("<H", raw[ifd:ifd + 2])[0]):
        at = ifd + 2 + 12 * k
        if struct.unpack("<H", raw[at:at + 2])[0] == 257:
            raw[at + 4:at + 8] = struct.pack("<I", 2)  # 2 LONGs no longer fit: the value is an offset,
            raw[at + 8:at + 12] = struct.pack("<I", 2)  # here into the header: a length in the millions
    out = d / "length_count_changed.tif"
    out.write_bytes(bytes(raw))
    return out


def _tiff_strip_past_eof(d: Path) -> Path:
    entries = [(256, 4, [32]), (257, 4, [32]), (258, 3, [8]), (259, 3, [8]), (262, 3, [1]), (273, 4, [8]),
               (277, 3, [1]), (278, 4, [32]), (279, 4, [900_000]), *_geo_tags()]
    out = d / "strip_past_eof.tif"
    out.write_bytes(classic_tiff(entries, zlib.compress(bytes(32 * 32))))
    return out


def _tiff_uncompressed_short(d: Path) -> Path:
    entries = [(256, 4, [64]), (257, 4, [64]), (258, 3, [8]), (259, 3, [1]), (262, 3, [1]), (273, 4, [8]),
               (277, 3, [1]), (278, 4, [64]), (279, 4, [100]), *_geo_tags()]
    out = d / "uncompressed_short.tif"
    out.write_bytes(classic_tiff(entries, bytes(100)))
    return out


def _tiff_ifd_loop(d: Path) -> Path:
    entries = [(256, 4, [8]), (257, 4, [8]), (258, 3, [8]), (259, 3, [1]), (262, 3, [1]), (273, 4, [8]),
               (277, 3, [1]), (278, 4, [8]), (279, 4, [64]), *_geo_tags()]
    raw = bytearray(classic_tiff(entries, bytes(64)))
    ifd = struct.unpack("<I", raw[4:8])[0]
    count = struct.unpack("<H", raw[ifd:ifd + 2])[0]
    raw[ifd + 2 + 12 * count:ifd + 6 + 12 * count] = struct.pack("<I", ifd)  # next IFD = itself
    out = d / "ifd_loop.tif"
    out.write_bytes(bytes(raw))
    return out


def _tiff_block_too_large(d: Path) -> Path:
    side = 20_000
    entries = [(256, 4, [side]), (257, 4, [side]), (258, 3, [8, 8, 8]), (259, 3, [8]), (262, 3, [2]),
               (273, 4, [8]), (277, 3, [3]), (278, 4, [side]), (279, 4, [64]), (284, 3, [1]), *_geo_tags()]
    out = d / "one_huge_strip.tif"
    out.write_bytes(classic_tiff(entries, bytes(64)))
    return out


def _gradient_geotiff(d: Path, name: str = "gradient.tif", side: int = 2000) -> Path:
    import rasterio
    from affine import Affine

    data = ((np.arange(side)[None, :] * 7 + np.arange(side)[:, None] * 3) % 251).astype(np.uint8)
    noise = np.random.default_rng(7).integers(0, 4, (side, side), dtype=np.uint8)
    path = d / name
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 5000000), tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate") as dst:
        dst.write((data + noise)[None])
    return path


def _geotiff_sidecar_vrt(d: Path) -> Path:
    path = good_geotiff(d / "scene.tif")
    port = int(os.environ.get("LONGLLAVA_CANARY_PORT", "9"))
    (d / "scene.tif.ovr").write_text(
        '<VRTDataset rasterXSize="150" rasterYSize="150">\n  <VRTRasterBand dataType="Byte" band="1">\n'
        f'    <SimpleSource><SourceFilename>/vsicurl/http://127.0.0.1:{port}/x.tif</SourceFilename>\n'
        "    <SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>\n</VRTDataset>\n"
    )
    return path


def _geotiff_sidecar_mask_text(d: Path) -> Path:
    path = good_geotiff(d / "masked.tif")
    (d / "masked.tif.msk").write_text("not a mask\n")
    return path


def _geotiff_small(d: Path) -> Path:
    return good_geotiff(d / "scene.tif", size=200)


# ------------------------------------------------------------------------------------------
# video
# ------------------------------------------------------------------------------------------
def _video(d: Path) -> Path:
    return encode(d / "clip.mp4", 50)


def _video_metadata_not_utf8(extension: str, codec: str) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        import av

        clean = d / f"clean.{extension}"
        with av.open(str(clean), "w") as container:
            container.metadata["title"] = "TITLEMARKERXYZ"
            stream = container.add_stream(codec, rate=10)
            stream.width = stream.height = 32
            stream.pix_fmt = "yuv420p"
            stream.metadata["handler_name"] = "HANDLERMARKER"
            rng = np.random.default_rng(0)
            for index in range(6):
                frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                                                   format="rgb24")
                frame.pts, frame.time_base = index, Fraction(1, 10)
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        raw = clean.read_bytes().replace(b"TITLEMARKERXYZ", b"TITLE\xff\xfe\xe9MARKER")
        raw = raw.replace(b"HANDLERMARKER", b"HAND\xe9\xe9RMARKER")  # same length: atoms intact
        out = d / f"metadata_not_utf8.{extension}"
        out.write_bytes(raw)
        clean.unlink()
        return out

    return build


# ------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------
def _png_declares_more_than_deflate_holds(d: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(8).integers(0, 255, (24, 32, 4), dtype=np.uint8), "RGBA").save(
        buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[20:24] = struct.pack(">I", 1 << 20)  # IHDR height 24 -> 1,048,576
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    out = d / "tall.png"
    out.write_bytes(bytes(data))
    return out


def _png_huge_bilevel(d: Path) -> Path:
    """A real 13000 x 13000 bilevel PNG (a few hundred KB): decodes to 169 Mpx."""
    side = 13000
    rows = np.random.default_rng(9).integers(0, 2, (64, side), dtype=bool)
    image = Image.fromarray(rows[np.arange(side) % 64])
    out = d / "page_13000.png"
    image.save(out, format="PNG", compress_level=1)
    return out


def _image_folder(d: Path) -> Path:
    folder = d / "frames"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(
            folder / f"f{k}.png")
    return folder


def _images_tiff_table_mismatch(d: Path) -> Path:
    entries = [(256, 4, [64]), (257, 4, [640]), (258, 3, [8]), (259, 3, [1]), (262, 3, [1]), (273, 4, [8]),
               (277, 3, [1]), (278, 4, [64]), (279, 4, [64 * 64])]
    out = d / "scan.tif"
    out.write_bytes(classic_tiff(entries, bytes(64 * 64)))
    return out


# ------------------------------------------------------------------------------------------
# confinement: files leaving the allowed root (directory / "root")
# ------------------------------------------------------------------------------------------
def _outside(d: Path) -> tuple[Path, Path]:
    root, outside = d / "root", d / "outside"
    root.mkdir(exist_ok=True)
    outside.mkdir(exist_ok=True)
    return root, outside


def _dicom_folder_symlinks_out(d: Path) -> Path:
    root, outside = _outside(d)
    series = write_ct_series(outside / "series", 3)
    folder = root / "ct"
    folder.mkdir()
    for k, path in enumerate(series):
        (folder / f"IM{k}").symlink_to(path)
    return folder


def _dicom_folder_one_link_out(d: Path) -> Path:
    root, outside = _outside(d)
    folder = root / "ct"
    inside = write_ct_series(folder, 3)
    stray = write_ct_series(outside / "other", 1, series_uid=pydicom.dcmread(inside[0]).SeriesInstanceUID)[0]
    (folder / "ZZ_linked").symlink_to(stray)
    return folder


def _dicom_list_with_link_out(d: Path) -> list[str]:
    root, outside = _outside(d)
    inside = write_ct_series(root / "ct", 2)
    stray = write_ct_series(outside / "x", 1)[0]
    (root / "ct" / "link.dcm").symlink_to(stray)
    return [str(inside[0]), str(inside[1]), str(root / "ct" / "link.dcm")]


def _images_folder_symlink_out(d: Path) -> Path:
    root, outside = _outside(d)
    folder = root / "photos"
    folder.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "a.png")
    Image.new("RGB", (8, 8), (4, 5, 6)).save(outside / "secret.png")
    (folder / "b.png").symlink_to(outside / "secret.png")
    return folder


def _link_to_outside(name: str, make: Callable[[Path], Path]) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        root, outside = _outside(d)
        target = make(outside)
        link = root / name
        link.symlink_to(target)
        return link

    return build


def _nifti_file(d: Path) -> Path:
    path = d / "brain.nii"
    nib.save(nib.Nifti1Image(np.arange(8 * 8 * 4, dtype=np.int16).reshape(8, 8, 4), np.eye(4)), str(path))
    return path


def _image_file(d: Path) -> Path:
    path = d / "photo.png"
    Image.new("RGB", (8, 8), (9, 9, 9)).save(path)
    return path


def _folder_link_out(d: Path) -> Path:
    root, outside = _outside(d)
    write_ct_series(outside / "series", 2)
    link = root / "series"
    link.symlink_to(outside / "series", target_is_directory=True)
    return link


RELIABILITY_BAD_INPUTS: list[Case] = [
    # untyped exceptions found by fuzzing (now typed, cause fixed)
    Case("dicom-unknown-vr-in-file-meta", "dicom", _dicom_unknown_vr_meta, AdapterError,
         "corrupt or truncated dicom header"),
    Case("dicom-unknown-vr-in-dataset", "dicom", _dicom_unknown_vr_dataset, AdapterError,
         "corrupt or truncated dicom header"),
    Case("dicom-palette-without-lut", "dicom", _dicom_palette_without_lut, AdapterError, "palette color lookup table"),
    Case("dicom-element-length-past-eof", "dicom", _dicom_length_past_eof, AdapterError, "remain in the file"),
    # resource limits checked from the header
    Case("dicom-rle-30000", "dicom", _dicom_rle_30000, AdapterError, "rle expands at most"),
    Case("dicom-deflated-16384", "dicom", _dicom_deflated_16384, ResourceLimitError, "max_pixels"),
    Case("dicom-deflated-1e6-frames", "dicom", _dicom_deflated_million_frames, ResourceLimitError, "max_frames"),
    Case("dicom-deflated-ratio", "dicom", _dicom_deflated_bomb_ratio, ResourceLimitError, "max_compression_ratio"),
    Case("dicom-deflated-truncated", "dicom", _dicom_deflated_truncated, AdapterError, "truncated"),
    Case("dicom-deflated-short-pixel-data", "dicom", _dicom_deflated_short_pixels, AdapterError,
         "pixel data holds"),
    Case("dicom-max-frames-option", "dicom", _dicom_too_many_frames_folder, ResourceLimitError, "max_frames",
         options={"max_frames": 3}, names="inside"),
    Case("dicom-max-pixels-option", "dicom", _dicom_max_pixels_option, ResourceLimitError, "max_pixels",
         options={"max_pixels": 10_000}),
    Case("dicom-output-over-max-decoded-bytes", "dicom", _dicom_max_pixels_option, ResourceLimitError,
         "max_decoded_bytes", options={"max_decoded_bytes": 50_000}),
    Case("dicom-time-budget", "dicom", _dicom_time_budget, ResourceLimitError, "time_budget_s",
         options={"time_budget_s": 1e-6}, names="inside"),
    Case("nifti-gz-2048x2048x300-zeros", "nifti", _nifti_gz_zero_volume, ResourceLimitError, "max_compression_ratio"),
    Case("nifti-2048x2048x300-sampled-slices", "nifti", _nifti_sparse_volume, ResourceLimitError, "max_decoded_bytes"),
    Case("nifti-slice-over-max-pixels", "nifti", _nifti_huge_slice, ResourceLimitError, "max_pixels"),
    Case("nifti-gz-longer-than-header", "nifti", _nifti_gz_appended, AdapterError, "more than"),
    Case("nifti-time-budget", "nifti", _nifti_gz_time_budget, ResourceLimitError, "time_budget_s",
         options={"time_budget_s": 1e-6}),
    Case("tiff-samples-per-pixel-100000", "geotiff", _tiff_samples_100000, ResourceLimitError, "max_bands"),
    Case("tiff-100000x100000-sparse", "geotiff", _tiff_sparse_1e10, ResourceLimitError, "max_compression_ratio"),
    Case("tiff-image-length-count-changed", "geotiff", _tiff_length_count_changed, AdapterError, "disagrees"),
    Case("tiff-strip-past-eof", "geotiff", _tiff_strip_past_eof, AdapterError, "past the end of the file"),
    Case("tiff-uncompressed-strip-short", "geotiff", _tiff_uncompressed_short, AdapterError, "disagrees"),
    Case("tiff-ifd-loop", "geotiff", _tiff_ifd_loop, AdapterError, "loops"),
    Case("tiff-one-strip-over-max-decoded-bytes", "geotiff", _tiff_block_too_large, ResourceLimitError,
         "max_decoded_bytes"),
    Case("geotiff-grid-over-max-tiles", "geotiff", _gradient_geotiff, AdapterError, "max_tiles",
         options={"tile_size": 16, "on_budget": "error"}),
    Case("geotiff-output-over-max-decoded-bytes", "geotiff", _gradient_geotiff, ResourceLimitError,
         "max_decoded_bytes", options={"tile_size": 16, "max_tiles": None}),
    Case("geotiff-time-budget", "geotiff", _geotiff_small, ResourceLimitError, "time_budget_s",
         options={"time_budget_s": 1e-6, "tile_size": 50}),
    Case("geotiff-sidecar-ovr-vrt-to-network", "geotiff", _geotiff_sidecar_vrt, AdapterError, "not a tiff",
         options={"sidecars": True}, names="inside"),
    Case("geotiff-sidecar-mask-not-tiff", "geotiff", _geotiff_sidecar_mask_text, AdapterError, "not a tiff",
         options={"sidecars": True}, names="inside"),
    Case("video-frame-over-max-pixels", "video", _video, ResourceLimitError, "max_pixels",
         options={"max_pixels": 1000}),
    Case("video-packets-over-max-frames", "video", _video, ResourceLimitError, "max_frames",
         options={"max_frames": 10}),
    Case("video-output-over-max-decoded-bytes", "video", _video, ResourceLimitError, "max_decoded_bytes",
         options={"max_decoded_bytes": 100_000, "num_frames": 40}),
    Case("png-declares-more-than-deflate-holds", "images", _png_declares_more_than_deflate_holds, AdapterError,
         "deflate cannot exceed"),
    Case("png-13000-high-res-over-max-decoded-bytes", "images", _png_huge_bilevel, ResourceLimitError,
         "max_decoded_bytes", options={"high_res": True, "max_tiles": 4096}),
    Case("images-folder-over-max-decoded-bytes", "images", _image_folder, ResourceLimitError, "max_decoded_bytes",
         options={"max_decoded_bytes": 150_000}, names="inside"),
    Case("images-tiff-strip-table-mismatch", "images", _images_tiff_table_mismatch, AdapterError, "disagrees"),
    # access outside the allowed root
    Case("dicom-folder-of-symlinks-out-of-root", "dicom", _dicom_folder_symlinks_out, OutsideRootError,
         "outside the allowed root", confined=True, names="inside"),
    Case("dicom-folder-one-symlink-out-of-root", "dicom", _dicom_folder_one_link_out, OutsideRootError,
         "outside the allowed root", confined=True, names="inside"),
    Case("dicom-file-list-symlink-out-of-root", "dicom", _dicom_list_with_link_out, OutsideRootError,
         "outside the allowed root", confined=True, names="inside"),
    Case("dicom-folder-symlink-out-of-root", "dicom", _folder_link_out, OutsideRootError,
         "outside the allowed root", confined=True, names="inside"),
    Case("images-folder-symlink-out-of-root", "images", _images_folder_symlink_out, OutsideRootError,
         "outside the allowed root", confined=True, names="inside"),
    Case("nifti-symlink-out-of-root", "nifti", _link_to_outside("brain.nii", _nifti_file), OutsideRootError,
         "outside the allowed root", confined=True),
    Case("geotiff-symlink-out-of-root", "geotiff", _link_to_outside("scene.tif", _geotiff_small), OutsideRootError,
         "outside the allowed root", confined=True),
    Case("video-symlink-out-of-root", "video", _link_to_outside("clip.mp4", _video), OutsideRootError,
         "outside the allowed root", confined=True),
    Case("images-symlink-out-of-root", "images", _link_to_outside("photo.png", _image_file), OutsideRootError,
         "outside the allowed root", confined=True),
]


# ------------------------------------------------------------------------------------------
# fuzz findings whose fix is to read the file
# ------------------------------------------------------------------------------------------
def _nifti_affine(name: str, affine: np.ndarray) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        img = nib.Nifti1Image(np.arange(8 * 8 * 4, dtype=np.int16).reshape(8, 8, 4), np.eye(4))
        img.set_sform(np.eye(4), code=1)
        raw = bytearray(img.to_bytes())
        raw[280:328] = struct.pack("<12f", *np.asarray(affine, dtype=np.float64)[:3].ravel())
        out = d / f"{name}.nii"
        out.write_bytes(bytes(raw))
        return out

    return build


_NAN = np.eye(4)
_NAN[0, 0] = np.nan
_INF = np.eye(4)
_INF[1, 1] = np.inf

READABLE_REGRESSIONS: list[Case] = [
    Case("video-mp4-metadata-not-utf8", "video", _video_metadata_not_utf8("mp4", "libx264"), LongLLaVAError, ""),
    Case("video-mov-metadata-not-utf8", "video", _video_metadata_not_utf8("mov", "libx264"), LongLLaVAError, ""),
    Case("video-mkv-metadata-not-utf8", "video", _video_metadata_not_utf8("mkv", "libx264"), LongLLaVAError, ""),
    Case("video-webm-metadata-not-utf8", "video", _video_metadata_not_utf8("webm", "libvpx"), LongLLaVAError, ""),
    Case("nifti-nan-in-sform", "nifti", _nifti_affine("nan_sform", _NAN), LongLLaVAError, "nan or infinite"),
    Case("nifti-inf-in-sform", "nifti", _nifti_affine("inf_sform", _INF), LongLLaVAError, "nan or infinite"),
    Case("nifti-degenerate-affine-1e30", "nifti", _nifti_affine("huge_affine", np.diag([1e30, 1e30, 1e30, 1.0])),
         LongLLaVAError, ""),
    Case("nifti-zero-affine", "nifti", _nifti_affine("zero_affine", np.diag([0.0, 0.0, 0.0, 1.0])), LongLLaVAError,
         "degenerate affine"),
    Case("geotiff-sidecar-ovr-vrt-ignored", "geotiff", _geotiff_sidecar_vrt, LongLLaVAError, ""),
]
"""``error`` is unused here; ``match`` is a fragment of ``info["warnings"]`` the load must report."""
