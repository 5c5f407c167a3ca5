"""The raster / video / image bad-input corpus: each file is generated on the fly.

:data:`RASTER_VIDEO_BAD_INPUTS` lists every bad source with the adapter that must refuse it and
the typed error expected; ``tests/test_bad_inputs_raster_video.py`` runs them all. Builders
write into a directory the test provides; sources that are not files (URLs, ``/vsicurl/``)
are returned as strings.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import av
import numpy as np
import rasterio
from PIL import Image
from affine import Affine

from longllava_sdk.errors import AdapterError, LongLLaVAError, ResourceLimitError


@dataclass(frozen=True)
class BadInput:
    """One bad source: how to build it, which adapter reads it, and the typed error expected.

    Attributes:
        name: short id (test id).
        adapter: ``"geotiff"``, ``"video"`` or ``"images"``.
        build: writes the bad file under the given directory and returns the source to load.
        error: the exact SDK error type expected.
        match: a fragment the message must contain (lower-case comparison).
        options: adapter options.
        is_file: whether the source is a file the error must name (False for URLs).
    """

    name: str
    adapter: str
    build: Callable[[Path], Any]
    error: type[LongLLaVAError]
    match: str
    options: dict[str, Any] = field(default_factory=dict)
    is_file: bool = True


# ---------------------------------------------------------------------------------------
# GeoTIFF
# ---------------------------------------------------------------------------------------
def good_geotiff(path: Path, size: int = 300) -> Path:
    """A valid 3-band tiled, compressed GeoTIFF (random data, so it does not compress away)."""
    data = np.random.default_rng(1).integers(0, 255, (3, size, size), dtype=np.uint8)
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633",
        transform=Affine(10, 0, 500000, 0, -10, 5000000), tiled=True, blockxsize=128, blockysize=128,
        compress="deflate",
    ) as dst:
        dst.write(data)
    return path


def _truncated_tiff(directory: Path) -> Path:
    data = good_geotiff(directory / "full.tif").read_bytes()
    path = directory / "truncated.tif"
    path.write_bytes(data[: len(data) // 2])  # IFD intact, half the tiles gone
    return path


def _wrong_magic_tiff(directory: Path) -> Path:
    path = directory / "wrong_magic.tif"
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="PNG")  # a PNG named .tif
    path.write_bytes(buffer.getvalue())
    return path


def _vrt_disguised(directory: Path) -> Path:
    good_geotiff(directory / "real.tif")
    path = directory / "scene.tif"
    path.write_text(
        '<VRTDataset rasterXSize="300" rasterYSize="300">\n'
        '  <VRTRasterBand dataType="Byte" band="1"><SimpleSource>\n'
        '    <SourceFilename relativeToVRT="1">/vsicurl/http://127.0.0.1:9/secret.tif</SourceFilename>\n'
        "    <SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>\n</VRTDataset>\n"
    )
    return path


def _huge_declared_tiff(directory: Path) -> Path:
    path = directory / "bomb.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # 200000 x 200000 declared, no tile written: a few kB on disk, 40 gigapixels claimed
        with rasterio.open(
            path, "w", driver="GTiff", width=200_000, height=200_000, count=1, dtype="uint8",
            tiled=True, blockxsize=4096, blockysize=4096, compress="deflate", SPARSE_OK=True,
        ):
            pass
    return path


def _corrupt_ifd_tiff(directory: Path) -> Path:
    path = directory / "corrupt_ifd.tif"
    path.write_bytes(b"II*\x00" + struct.pack("<I", 0x7FFFFFF0) + os.urandom(256))  # IFD offset past EOF
    return path


def _empty(name: str) -> Callable[[Path], Path]:
    def build(directory: Path) -> Path:
        path = directory / name
        path.write_bytes(b"")
        return path

    return build


# ---------------------------------------------------------------------------------------
# video
# ---------------------------------------------------------------------------------------
def encode(path: Path, n: int, codec: str = "libx264", fmt: str | None = None, size: int = 64) -> Path:
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width = stream.height = size
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(n):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if n == 0:
            container.start_encoding()  # write the header even without a frame
    return path


def _zero_frame_video(directory: Path) -> Path:
    return encode(directory / "zero_frames.avi", 0, codec="mpeg4")


def _truncated_mp4(directory: Path) -> Path:
    data = encode(directory / "full.mp4", 50).read_bytes()  # moov atom written at the end
    path = directory / "truncated.mp4"
    path.write_bytes(data[: len(data) // 2])
    return path


def _not_a_video(directory: Path) -> Path:
    path = directory / "notes.mp4"
    path.write_text("These are meeting notes, not a video.\n" * 20)
    return path


def _unknown_codec(directory: Path) -> Path:
    data = encode(directory / "mjpeg.avi", 5, codec="mjpeg").read_bytes()
    path = directory / "unknown_codec.avi"
    path.write_bytes(data.replace(b"MJPG", b"ZQZQ"))  # a FourCC no FFmpeg decoder knows
    return path


def _all_packets_corrupt(directory: Path) -> Path:
    source = encode(directory / "mjpeg.avi", 12, codec="mjpeg")
    path = directory / "all_corrupt.avi"
    with av.open(str(source)) as src, av.open(str(path), "w") as dst:
        in_stream = src.streams.video[0]
        out_stream = dst.add_stream_from_template(in_stream)
        for packet in src.demux(in_stream):
            if not packet.size:
                continue
            bad = av.Packet(bytes(np.random.default_rng(packet.pts).integers(0, 255, packet.size, dtype=np.uint8)))
            bad.pts, bad.dts, bad.time_base = packet.pts, packet.dts, packet.time_base
            bad.stream = out_stream
            dst.mux(bad)
    return path


def _audio_only(directory: Path) -> Path:
    path = directory / "voice.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        for index in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 8000, index * 1024, Fraction(1, 8000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _hls_playlist(directory: Path) -> Path:
    path = directory / "stream.mp4"
    path.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:9/seg0.ts\n#EXT-X-ENDLIST\n")
    return path


# ---------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------
def _png_bytes(size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _truncated_png(directory: Path) -> Path:
    path = directory / "truncated.png"
    data = _png_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def _truncated_jpeg(directory: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(
        buffer, format="JPEG", quality=90
    )
    path = directory / "truncated.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def _png_bad_crc(directory: Path) -> Path:
    data = bytearray(_png_bytes())
    idat = data.find(b"IDAT")
    data[idat + 10] ^= 0xFF  # flip a byte of compressed data: the chunk CRC no longer matches
    path = directory / "bad_crc.png"
    path.write_bytes(bytes(data))
    return path


def _png_huge_dims(directory: Path) -> Path:
    data = bytearray(_png_bytes((8, 8)))
    # IHDR at offset 8: length(4) "IHDR"(4) width(4) height(4) ...; patch the size and fix the CRC
    data[16:24] = struct.pack(">II", 200_000, 200_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path = directory / "bomb.png"
    path.write_bytes(bytes(data))
    return path


def _svg_renamed(directory: Path) -> Path:
    path = directory / "diagram.png"
    path.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
    )
    return path


def _pdf_renamed(directory: Path) -> Path:
    path = directory / "report.png"
    path.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")
    return path


def _url(text: str) -> Callable[[Path], str]:
    return lambda directory: text


RASTER_VIDEO_BAD_INPUTS: list[BadInput] = [
    # GeoTIFF
    BadInput("tiff_truncated", "geotiff", _truncated_tiff, AdapterError, "truncated"),
    BadInput("tiff_wrong_magic", "geotiff", _wrong_magic_tiff, AdapterError, "not a tiff"),
    BadInput("tiff_vrt_disguised", "geotiff", _vrt_disguised, AdapterError, "vrt"),
    BadInput("tiff_huge_declared_dims", "geotiff", _huge_declared_tiff, ResourceLimitError, "decompression bomb"),
    BadInput("tiff_corrupt_ifd", "geotiff", _corrupt_ifd_tiff, AdapterError, "corrupt tiff"),
    BadInput("tiff_empty", "geotiff", _empty("empty.tif"), AdapterError, "empty file"),
    BadInput("tiff_vsicurl", "geotiff", _url("/vsicurl/http://127.0.0.1:9/scene.tif"), AdapterError,
             "virtual file systems", is_file=False),
    BadInput("tiff_http_url", "geotiff", _url("http://127.0.0.1:9/scene.tif"), AdapterError, "only local",
             is_file=False),
    # video
    BadInput("video_zero_frames", "video", _zero_frame_video, AdapterError, "zero-frame"),
    BadInput("video_truncated_mp4", "video", _truncated_mp4, AdapterError, "truncated"),
    BadInput("video_not_a_video", "video", _not_a_video, AdapterError, "not a video"),
    BadInput("video_unknown_codec", "video", _unknown_codec, AdapterError, "unknown or unsupported codec"),
    BadInput("video_all_packets_corrupt", "video", _all_packets_corrupt, AdapterError, "no decodable"),
    BadInput("video_empty", "video", _empty("empty.mp4"), AdapterError, "empty file"),
    BadInput("video_audio_only", "video", _audio_only, AdapterError, "no video stream"),
    BadInput("video_hls_playlist", "video", _hls_playlist, AdapterError, "playlist"),
    BadInput("video_rtmp_url", "video", _url("rtmp://127.0.0.1:9/live"), AdapterError, "only local",
             is_file=False),
    BadInput("video_pipe_protocol", "video", _url("pipe:0"), AdapterError, "protocols", is_file=False),
    BadInput("video_file_protocol", "video", _url("file:/etc/hostname"), AdapterError, "protocols", is_file=False),
    # images
    BadInput("png_truncated", "images", _truncated_png, AdapterError, "truncated"),
    BadInput("jpeg_truncated", "images", _truncated_jpeg, AdapterError, "truncated"),
    BadInput("png_bad_crc", "images", _png_bad_crc, AdapterError, "corrupt"),
    BadInput("png_huge_declared_dims", "images", _png_huge_dims, AdapterError, "decompression"),
    BadInput("svg_renamed_png", "images", _svg_renamed, AdapterError, "svg"),
    BadInput("pdf_renamed_png", "images", _pdf_renamed, AdapterError, "pdf"),
    BadInput("image_empty", "images", _empty("empty.jpg"), AdapterError, "empty file"),
]
