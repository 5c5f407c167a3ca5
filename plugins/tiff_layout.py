"""TIFF / BigTIFF structure checks done before GDAL or Pillow decode anything.

A TIFF's image file directories (IFDs) declare the image size, the samples per pixel, the
block (strip or tile) layout and, for every block, where its bytes are and how many there
are. Decoders trust those numbers: libtiff fills blocks the tables do not list, GDAL
allocates whole blocks (all samples of a pixel-interleaved block at once), and a few
changed bytes can turn a 5 KB file into a multi-gigabyte decode. :func:`inspect_tiff`
reads the directories with ``struct`` (no pixel is decoded) and checks, before any decoder
runs:

* the limits the adapter was given: pixels per image, samples per pixel (bands), decoded
  bytes of one block (the smallest unit a decoder allocates);
* that the header agrees with the data: the number of strip/tile offsets and byte counts
  equals what the image size and block size imply, every block lies inside the file, and an
  uncompressed block holds at least the bytes its size declares.

A block with offset 0 and byte count 0 is *sparse* (GDAL writes such files with
``SPARSE_OK``: the block reads as nodata); sparse blocks are counted, not refused.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass

import numpy as np

from longllava_sdk.adapters import check_limit, format_bytes
from longllava_sdk.errors import AdapterError
from longllava_sdk.local_files import open_regular

SIGNATURES = {b"II*\x00": ("<", False), b"MM\x00*": (">", False), b"II+\x00": ("<", True), b"MM\x00+": (">", True)}
#: Field type -> (struct code, size) for the integer types the layout tags may use.
_INT_TYPES = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4), 16: ("Q", 8), 6: ("b", 1), 8: ("h", 2), 9: ("i", 4), 17: ("q", 8)}
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_TAGS = {
    254: "NewSubfileType", 256: "ImageWidth", 257: "ImageLength", 258: "BitsPerSample", 259: "Compression",
    273: "StripOffsets", 277: "SamplesPerPixel", 278: "RowsPerStrip", 279: "StripByteCounts",
    284: "PlanarConfiguration", 322: "TileWidth", 323: "TileLength", 324: "TileOffsets", 325: "TileByteCounts",
}
#: At most this many IFDs are followed (overviews and masks of a GeoTIFF; pages of a multi-page TIFF).
MAX_IFDS = 64


@dataclass
class TiffImage:
    """What one IFD declares (no pixel read)."""

    index: int
    width: int
    height: int
    samples: int
    bits: int
    planar: int  # 1 = pixel-interleaved (chunky), 2 = one plane per sample
    compression: int
    subfile_type: int
    tiled: bool
    block_width: int
    block_height: int
    n_blocks: int
    n_sparse: int = 0
    stored_bytes: int = 0  # sum of the byte counts of the blocks present

    @property
    def block_bytes(self) -> int:
        """Decoded bytes of one full block (every sample of it when pixel-interleaved)."""
        per_pixel = self.samples if self.planar == 1 else 1
        return math.ceil(self.block_width * per_pixel * self.bits / 8) * self.block_height

    @property
    def decoded_bytes(self) -> int:
        """Decoded bytes of the whole image (every sample)."""
        return math.ceil(self.width * self.samples * self.bits / 8) * self.height

    @property
    def role(self) -> str:
        if self.index == 0:
            return "the image"
        if self.subfile_type & 4:
            return f"mask IFD {self.index}"
        if self.subfile_type & 1:
            return f"overview IFD {self.index}"
        return f"page {self.index + 1}"


@dataclass
class TiffLayout:
    """The file's IFDs, the first being the main image."""

    path: str
    size: int
    bigtiff: bool
    images: list[TiffImage]


class _Reader:
    def __init__(self, handle, path: str, size: int, order: str, big: bool) -> None:
        self.handle, self.path, self.size, self.order, self.big = handle, path, size, order, big

    def read(self, offset: int, length: int, what: str) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise AdapterError(
                self.path, f"corrupt TIFF: {what} at byte {offset} (+{length}) lies past the end of the file "
                f"({self.size} bytes; truncated?)"
            )
        self.handle.seek(offset)
        data = self.handle.read(length)
        if len(data) != length:
            raise AdapterError(self.path, f"truncated TIFF: {what} ends past the end of the file")
        return data

    def entries(self, offset: int, index: int) -> tuple[dict[int, tuple[int, int, bytes, int]], int]:
        """``{tag: (type, count, value field, field offset)}`` and the next IFD offset."""
        head = 8 if self.big else 2
        (count,) = struct.unpack(self.order + ("Q" if self.big else "H"), self.read(offset, head, f"IFD {index}"))
        size = 20 if self.big else 12
        if count == 0 or offset + head + count * size > self.size:
            raise AdapterError(
                self.path, f"corrupt TIFF: IFD {index} declares {count} entries, which do not fit in the file"
            )
        raw = self.read(offset + head, count * size + (8 if self.big else 4), f"IFD {index}")
        found: dict[int, tuple[int, int, bytes, int]] = {}
        for k in range(count):
            entry = raw[k * size : (k + 1) * size]
            tag, kind = struct.unpack(self.order + "HH", entry[:4])
            if self.big:
                (n,) = struct.unpack(self.order + "Q", entry[4:12])
                field = entry[12:20]
            else:
                (n,) = struct.unpack(self.order + "I", entry[4:8])
                field = entry[8:12]
            found.setdefault(tag, (kind, n, field, offset + head + k * size))
        (next_offset,) = struct.unpack(self.order + ("Q" if self.big else "I"), raw[count * size :])
        return found, next_offset

    def values(self, entry: tuple[int, int, bytes, int], tag: int, index: int, limit: int | None = None) -> np.ndarray:
        """The integer values of a tag (all of them, or the first ``limit``)."""
        kind, count, field, _ = entry
        name = _TAGS.get(tag, str(tag))
        if kind not in _INT_TYPES:
            raise AdapterError(self.path, f"corrupt TIFF: {name} of IFD {index} has field type {kind}, not an integer")
        if count == 0:
            raise AdapterError(self.path, f"corrupt TIFF: {name} of IFD {index} has no value")
        code, width = _INT_TYPES[kind]
        wanted = count if limit is None else min(count, limit)
        inline = 8 if self.big else 4
        if count * width <= inline:
            data = field[: wanted * width]
        else:
            (offset,) = struct.unpack(self.order + ("Q" if self.big else "I"), field)
            if offset + count * width > self.size:
                raise AdapterError(
                    self.path, f"corrupt TIFF: the {count} values of {name} (IFD {index}) would run past the end "
                    f"of the file ({self.size} bytes)"
                )
            data = self.read(offset, wanted * width, name)
        dtype = np.dtype(code).newbyteorder(self.order)
        return np.frombuffer(data, dtype=dtype).astype(np.int64 if code in "bhiq" else np.uint64)


def inspect_tiff(
    path: str | os.PathLike[str],
    *,
    max_pixels: int | None,
    max_bands: int | None = None,
    max_block_bytes: int | None = None,
    all_ifds: bool = True,
    pixels_option: str = "max_pixels",
    bands_option: str = "max_bands",
    bytes_option: str = "max_decoded_bytes",
) -> TiffLayout:
    """Read and check the TIFF directories of ``path`` (see the module docstring).

    Args:
        max_pixels: largest ``width x height`` of any checked IFD (``None``: unchecked).
        max_bands: largest ``SamplesPerPixel``.
        max_block_bytes: largest decoded block (a whole strip or tile, all its samples).
        all_ifds: check every IFD (overviews, masks, pages), not only the first.
        pixels_option, bands_option, bytes_option: the adapter options named in limit errors.

    Raises:
        AdapterError: a malformed directory, or one that disagrees with the data.
        ResourceLimitError: a limit is exceeded.
    """
    text = os.fspath(path)
    with open_regular(text, what="TIFF file") as handle:  # regular files only: a FIFO never blocks
        size = os.fstat(handle.fileno()).st_size
        head = handle.read(16)
        if head[:4] not in SIGNATURES:
            raise AdapterError(text, f"not a TIFF file (starts with {head[:8]!r})")
        order, big = SIGNATURES[head[:4]]
        if big:
            if len(head) < 16:
                raise AdapterError(text, "truncated BigTIFF header")
            (first,) = struct.unpack(order + "Q", head[8:16])
        else:
            if len(head) < 8:
                raise AdapterError(text, "truncated TIFF header")
            (first,) = struct.unpack(order + "I", head[4:8])
        reader = _Reader(handle, text, size, order, big)
        images: list[TiffImage] = []
        seen: set[int] = set()
        offset = first
        while offset and len(images) < (MAX_IFDS if all_ifds else 1):
            if offset in seen:
                raise AdapterError(text, f"corrupt TIFF: IFD chain loops back to byte {offset}")
            seen.add(offset)
            image, offset = _image(reader, offset, len(images), max_pixels, max_bands, max_block_bytes,
                                   pixels_option, bands_option, bytes_option)
            images.append(image)
        if not images:
            raise AdapterError(text, "corrupt TIFF: the header points at no image directory (IFD offset 0)")
    return TiffLayout(text, size, big, images)


def _image(reader: _Reader, offset: int, index: int, max_pixels: int | None, max_bands: int | None,
           max_block_bytes: int | None, pixels_option: str, bands_option: str, bytes_option: str
           ) -> tuple[TiffImage, int]:
    path = reader.path
    entries, next_offset = reader.entries(offset, index)

    def scalar(tag: int, default: int | None = None) -> int:
        if tag not in entries:
            if default is None:
                raise AdapterError(path, f"corrupt TIFF: IFD {index} has no {_TAGS[tag]} (required)")
            return default
        return int(reader.values(entries[tag], tag, index, limit=1)[0])

    width, height = scalar(256), scalar(257)
    where = "" if index == 0 else f" ({'IFD ' + str(index)})"
    if width < 1 or height < 1:
        raise AdapterError(path, f"corrupt TIFF: image size {width} x {height}{where}")
    samples = scalar(277, 1)
    if samples < 1:
        raise AdapterError(path, f"corrupt TIFF: SamplesPerPixel is {samples}{where}")
    check_limit(path, width * height, max_pixels, pixels_option,
                f"the declared size {width} x {height}{where} (possible decompression bomb)")
    check_limit(path, samples, max_bands, bands_option, f"SamplesPerPixel (bands){where}")
    bits_entry = entries.get(258)
    bits = int(reader.values(bits_entry, 258, index, limit=min(samples, 4096)).max()) if bits_entry else 1
    if not 1 <= bits <= 128:
        raise AdapterError(path, f"corrupt TIFF: BitsPerSample is {bits}{where}")
    planar = scalar(284, 1)
    if planar not in (1, 2):
        raise AdapterError(path, f"corrupt TIFF: PlanarConfiguration is {planar}{where} (1 or 2 expected)")
    compression = scalar(259, 1)
    subfile = scalar(254, 0)
    tiled = 322 in entries or 323 in entries or 324 in entries
    if tiled:
        block_w, block_h = scalar(322), scalar(323)
        if block_w < 1 or block_h < 1:
            raise AdapterError(path, f"corrupt TIFF: tile size {block_w} x {block_h}{where}")
        across, down = math.ceil(width / block_w), math.ceil(height / block_h)
        offsets_tag, counts_tag, unit = 324, 325, "tile"
    else:
        rows = scalar(278, height)
        if rows < 1:
            raise AdapterError(path, f"corrupt TIFF: RowsPerStrip is {rows}{where}")
        block_w, block_h = width, min(rows, height)
        across, down = 1, math.ceil(height / block_h)
        offsets_tag, counts_tag, unit = 273, 279, "strip"
    planes = samples if planar == 2 else 1
    expected = across * down * planes
    image = TiffImage(index, width, height, samples, bits, planar, compression, subfile, tiled, block_w, block_h,
                      expected)
    check_limit(path, image.block_bytes, max_block_bytes, bytes_option,
                f"one {unit} of {block_w} x {block_h} px x {samples if planar == 1 else 1} sample(s) x {bits} bits"
                f"{where} (the smallest unit a decoder allocates)", unit="bytes")
    for tag in (offsets_tag, counts_tag):
        if tag not in entries:
            raise AdapterError(path, f"corrupt TIFF: IFD {index} has no {_TAGS[tag]}")
        declared = entries[tag][1]
        if declared != expected:
            raise AdapterError(
                path,
                f"the TIFF header disagrees with its data{where}: {width} x {height} px in {block_w} x {block_h} "
                f"{unit}s{' x ' + str(planes) + ' planes' if planes > 1 else ''} make {expected} {unit}(s), but "
                f"{_TAGS[tag]} lists {declared} (corrupt size or layout fields)",
            )
    offsets = reader.values(entries[offsets_tag], offsets_tag, index).astype(np.uint64)
    counts = reader.values(entries[counts_tag], counts_tag, index).astype(np.uint64)
    sparse = (offsets == 0) & (counts == 0)
    image.n_sparse = int(sparse.sum())
    present = ~sparse
    image.stored_bytes = int(counts[present].sum())
    ends = offsets[present] + counts[present]
    if ends.size and int(ends.max()) > reader.size:
        k = int(np.flatnonzero(present)[int(np.argmax(ends))])
        raise AdapterError(
            path,
            f"truncated: {unit} {k}{where} declares {int(counts[k])} bytes at byte {int(offsets[k])}, past the end "
            f"of the file ({reader.size} bytes)",
        )
    if compression == 1 and present.any():
        # uncompressed: a block must hold every byte of its rows (the last strip may be shorter)
        needed = np.full(expected, image.block_bytes, dtype=np.uint64)
        if not tiled:
            last_rows = height - (down - 1) * block_h
            per_row = image.block_bytes // block_h
            needed.reshape(planes, down)[:, -1] = per_row * last_rows
        short = present & (counts < needed)
        if short.any():
            k = int(np.flatnonzero(short)[0])
            raise AdapterError(
                path,
                f"the TIFF header disagrees with its data{where}: uncompressed {unit} {k} holds {int(counts[k])} "
                f"bytes but its size declares {format_bytes(int(needed[k]))} (truncated data or wrong dimensions)",
            )
    return image, next_offset


def is_tiff(path: str | os.PathLike[str]) -> bool:
    """Whether the file starts with a TIFF / BigTIFF signature."""
    with open_regular(path, what="TIFF file") as handle:
        return handle.read(4) in SIGNATURES
