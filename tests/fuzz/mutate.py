"""Seeded mutations of real files: byte-level and header-field aware.

Byte-level: bit flips, byte overwrites, "interesting" integers (0, 1, -1, 2^n +/- 1, 2^31,
2^32 - 1...) written at random offsets, truncation, insertion, deletion, chunk duplication,
splicing two seeds, and corruption of text runs with bytes that are not UTF-8 (container
metadata, DICOM strings, TIFF ASCII tags).

Field-aware: each format's header is walked to find the fields that matter (sizes, counts,
offsets, value representations, tags), and one of them gets an interesting value:

* DICOM: every element's VR and length field, and the values of Rows, Columns,
  BitsAllocated, SamplesPerPixel, NumberOfFrames, PhotometricInterpretation, transfer
  syntax; deflated files are inflated, mutated and deflated again;
* NIfTI-1/2: dim, datatype, bitpix, vox_offset, scl_slope/inter, qform/sform codes,
  quaternion and srow (NaN, inf, 1e30, 0), sizeof_hdr, magic; ``.nii.gz`` is decompressed,
  mutated and recompressed (or mutated compressed);
* TIFF/BigTIFF: every IFD entry's type, count and value/offset, the width/length/samples/
  bits/rows-per-strip/tile values, entries of the strip and tile tables, GeoKey directory
  and GeoDoubleParams entries, the next-IFD offsets;
* MP4/MOV: every atom's size, and 32-bit fields of the sample tables and headers;
  Matroska/WebM: EBML element sizes (including "unknown size");
* PNG: chunk lengths, IHDR fields (with the CRC fixed half of the time so the mutation gets
  past the CRC check); JPEG: segment lengths and SOF dimensions; GIF/BMP/WebP: header sizes;
* manifests (JSON / JSONL / CSV): values replaced by hostile ones (paths leaving the root,
  URLs, symlinks, huge numbers, wrong types, deep nesting), keys dropped, rows duplicated.

Every mutation is drawn from a :class:`random.Random`, so a case is reproducible from its
seed.
"""

from __future__ import annotations

import gzip
import json
import random
import struct
import zlib
from dataclasses import dataclass
from typing import Callable

INTERESTING = [0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 1000, 1023, 1024, 4095, 4096,
               32767, 32768, 65535, 65536, 100000, 1 << 20, 1 << 24, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40,
               2**63 - 1, 2**64 - 1]
FLOATS = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e30, -1e30, 1e-30, 1e300, 3.4e38, 1.0, -1.0]


@dataclass
class Field:
    """A header field: byte offset, size, byte order and a name for the case description."""

    offset: int
    size: int
    order: str  # "<" or ">"
    name: str
    kind: str = "int"  # "int", "float", "text" or "vr"


def _pack_int(value: int, size: int, order: str) -> bytes:
    return (value % (1 << (8 * size))).to_bytes(size, "little" if order == "<" else "big")


def _interesting_int(rng: random.Random, size: int, current: int | None = None) -> int:
    choice = rng.random()
    if current is not None and choice < 0.3:
        return current + rng.choice([-1, 1, -2, 2, 7, 100, -100, current, -current])
    if choice < 0.85:
        return rng.choice(INTERESTING)
    return rng.getrandbits(8 * size)


def set_field(data: bytearray, field: Field, rng: random.Random) -> str:
    """Overwrite ``field`` in ``data`` with an interesting value; returns a description."""
    end = field.offset + field.size
    if end > len(data):
        return "field out of range (skipped)"
    if field.kind == "float":
        value = rng.choice(FLOATS)
        code = {4: "f", 8: "d"}[field.size]
        try:
            data[field.offset:end] = struct.pack(field.order + code, value)
        except OverflowError:  # 1e300 in a float32 field: its infinity
            value = float("inf") if value > 0 else float("-inf")
            data[field.offset:end] = struct.pack(field.order + code, value)
        return f"{field.name} = {value!r}"
    if field.kind == "vr":
        vr = rng.choice([b"ZZ", b"\x00\x00", b"OB", b"OW", b"UN", b"SQ", b"UL", b"US", b"FD", b"DS", b"IS", b"UI",
                         b"LO", b"OF", b"AT", b"xx", b"\xff\xfe"])
        data[field.offset:end] = vr
        return f"{field.name} = {vr!r}"
    if field.kind == "text":
        text = rng.choice([b"9" * field.size, b"-1".ljust(field.size), b"0".ljust(field.size),
                           b"1e9".ljust(field.size), b"\xff" * field.size, b"nan".ljust(field.size),
                           (b"\xc3\x28\xff\xfe" * field.size)[: field.size],
                           bytes(rng.getrandbits(8) for _ in range(field.size))])[: field.size]
        data[field.offset:end] = text
        return f"{field.name} = {text!r}"
    current = int.from_bytes(data[field.offset:end], "little" if field.order == "<" else "big")
    value = _interesting_int(rng, field.size, current)
    data[field.offset:end] = _pack_int(value, field.size, field.order)
    return f"{field.name} {current} -> {value % (1 << (8 * field.size))}"


# ------------------------------------------------------------------------------------------
# field finders
# ------------------------------------------------------------------------------------------
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_DICOM_VALUES = {
    (0x0028, 0x0010): "Rows", (0x0028, 0x0011): "Columns", (0x0028, 0x0100): "BitsAllocated",
    (0x0028, 0x0101): "BitsStored", (0x0028, 0x0102): "HighBit", (0x0028, 0x0002): "SamplesPerPixel",
    (0x0028, 0x0103): "PixelRepresentation", (0x0028, 0x0006): "PlanarConfiguration",
    (0x0028, 0x0008): "NumberOfFrames", (0x0028, 0x0004): "PhotometricInterpretation",
    (0x0002, 0x0010): "TransferSyntaxUID", (0x0028, 0x1052): "RescaleIntercept", (0x0028, 0x1053): "RescaleSlope",
    (0x0020, 0x0037): "ImageOrientationPatient", (0x0020, 0x0032): "ImagePositionPatient",
    (0x0028, 0x1101): "RedPaletteColorLookupTableDescriptor", (0x0028, 0x3002): "LUTDescriptor",
}


def dicom_fields(data: bytes, start: int = 132, explicit: bool = True, order: str = "<") -> list[Field]:
    """VR, length and key values of the elements of a DICOM stream (tolerant walk)."""
    fields: list[Field] = []
    pos = start
    guard = 0
    while pos + 8 <= len(data) and guard < 5000:
        guard += 1
        group, element = struct.unpack(order + "HH", data[pos:pos + 4])
        if group == 0xFFFE:  # item / delimiter: 4-byte length, step inside
            fields.append(Field(pos + 4, 4, order, f"item ({group:04X},{element:04X}) length"))
            pos += 8
            continue
        vr = data[pos + 4:pos + 6]
        is_explicit = explicit and vr.isalpha() and vr.isupper()
        if group == 0x0002:
            is_explicit, this_order = vr.isalpha() and vr.isupper(), "<"
        else:
            this_order = order
        name = _DICOM_VALUES.get((group, element), f"({group:04X},{element:04X})")
        if is_explicit:
            fields.append(Field(pos + 4, 2, this_order, f"{name} VR", "vr"))
            if vr in _LONG_VRS:
                if pos + 12 > len(data):
                    break  # a truncated long-VR header ends the walk
                (length,) = struct.unpack(this_order + "L", data[pos + 8:pos + 12])
                fields.append(Field(pos + 8, 4, this_order, f"{name} length"))
                value = pos + 12
            else:
                (length,) = struct.unpack(this_order + "H", data[pos + 6:pos + 8])
                fields.append(Field(pos + 6, 2, this_order, f"{name} length"))
                value = pos + 8
        else:
            (length,) = struct.unpack(this_order + "L", data[pos + 4:pos + 8])
            fields.append(Field(pos + 4, 4, this_order, f"{name} length"))
            value = pos + 8
        if (group, element) in _DICOM_VALUES and length != 0xFFFFFFFF and value + length <= len(data):
            if length in (2, 4) and vr in (b"US", b"UL", b"SS", b"SL") or (not is_explicit and length in (2, 4)
                                                                          and name not in ("NumberOfFrames",)):
                fields.append(Field(value, length, this_order, f"{name} value"))
            elif length:
                fields.append(Field(value, length, this_order, f"{name} value", "text"))
        if length == 0xFFFFFFFF or vr == b"SQ":
            pos = value  # undefined length or sequence: walk into it
        else:
            pos = value + length
    return fields


def nifti_fields(data: bytes) -> list[Field]:
    if len(data) < 348:
        return []
    order = "<" if struct.unpack("<i", data[:4])[0] in (348, 540) else ">"
    (size,) = struct.unpack(order + "i", data[:4])
    if size == 540 and len(data) >= 540:
        out = [Field(0, 4, order, "sizeof_hdr"), Field(4, 8, order, "magic", "text"),
               Field(12, 2, order, "datatype"), Field(14, 2, order, "bitpix"),
               Field(168, 8, order, "vox_offset"), Field(176, 8, order, "scl_slope", "float"),
               Field(184, 8, order, "scl_inter", "float"), Field(344, 4, order, "qform_code"),
               Field(348, 4, order, "sform_code")]
        out += [Field(16 + 8 * i, 8, order, f"dim[{i}]") for i in range(8)]
        out += [Field(80 + 8 * i, 8, order, f"pixdim[{i}]", "float") for i in range(8)]
        out += [Field(352 + 8 * i, 8, order, f"quatern/qoffset[{i}]", "float") for i in range(6)]
        out += [Field(400 + 8 * i, 8, order, f"srow[{i}]", "float") for i in range(12)]
        return out
    out = [Field(0, 4, order, "sizeof_hdr"), Field(70, 2, order, "datatype"), Field(72, 2, order, "bitpix"),
           Field(108, 4, order, "vox_offset", "float"), Field(112, 4, order, "scl_slope", "float"),
           Field(116, 4, order, "scl_inter", "float"), Field(252, 2, order, "qform_code"),
           Field(254, 2, order, "sform_code"), Field(344, 4, order, "magic", "text"), Field(39, 1, order, "dim_info")]
    out += [Field(40 + 2 * i, 2, order, f"dim[{i}]") for i in range(8)]
    out += [Field(76 + 4 * i, 4, order, f"pixdim[{i}]", "float") for i in range(8)]
    out += [Field(256 + 4 * i, 4, order, f"quatern/qoffset[{i}]", "float") for i in range(6)]
    out += [Field(280 + 4 * i, 4, order, f"srow[{i}]", "float") for i in range(12)]
    return out


_TIFF_NAMES = {256: "ImageWidth", 257: "ImageLength", 258: "BitsPerSample", 259: "Compression",
               262: "Photometric", 273: "StripOffsets", 277: "SamplesPerPixel", 278: "RowsPerStrip",
               279: "StripByteCounts", 284: "PlanarConfig", 322: "TileWidth", 323: "TileLength",
               324: "TileOffsets", 325: "TileByteCounts", 338: "ExtraSamples", 339: "SampleFormat",
               320: "ColorMap", 34735: "GeoKeyDirectory", 34736: "GeoDoubleParams", 34737: "GeoAsciiParams",
               33550: "ModelPixelScale", 33922: "ModelTiepoint", 42112: "GDAL_METADATA", 42113: "GDAL_NODATA"}
_TIFF_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8, 17: 8, 18: 8}


def tiff_fields(data: bytes) -> list[Field]:
    head = data[:4]
    if head[:2] not in (b"II", b"MM") or len(data) < 16:
        return []
    order = "<" if head[:2] == b"II" else ">"
    big = head[2:4] in (b"+\x00", b"\x00+")
    fields = [Field(8 if big else 4, 8 if big else 4, order, "first IFD offset")]
    offset = struct.unpack(order + ("Q" if big else "I"), data[8:16] if big else data[4:8])[0]
    seen: set[int] = set()
    while offset and offset not in seen and offset + 8 < len(data) and len(seen) < 16:
        seen.add(offset)
        count = struct.unpack(order + ("Q" if big else "H"), data[offset:offset + (8 if big else 2)])[0]
        base, size = offset + (8 if big else 2), (20 if big else 12)
        if count > 4096 or base + count * size + (8 if big else 4) > len(data):
            break
        fields.append(Field(offset, 8 if big else 2, order, f"IFD@{offset} entry count"))
        for k in range(count):
            entry = base + k * size
            tag, kind = struct.unpack(order + "HH", data[entry:entry + 4])
            name = _TIFF_NAMES.get(tag, f"tag {tag}")
            width = 8 if big else 4
            n = struct.unpack(order + ("Q" if big else "I"), data[entry + 4:entry + 4 + width])[0]
            fields.append(Field(entry + 2, 2, order, f"{name} type"))
            fields.append(Field(entry + 4, width, order, f"{name} count"))
            fields.append(Field(entry + 4 + width, width, order, f"{name} value/offset"))
            item = _TIFF_SIZES.get(kind, 1)
            if n * item > width and n < 1 << 20:
                where = struct.unpack(order + ("Q" if big else "I"), data[entry + 4 + width:entry + 4 + 2 * width])[0]
                if kind in (3, 4, 16, 12, 11) and where + n * item <= len(data):
                    for j in sorted({0, n - 1, n // 2}):
                        fields.append(Field(where + j * item, item, order, f"{name}[{j}]",
                                            "float" if kind in (11, 12) else "int"))
        next_at = base + count * size
        fields.append(Field(next_at, 8 if big else 4, order, f"IFD@{offset} next offset"))
        offset = struct.unpack(order + ("Q" if big else "I"), data[next_at:next_at + (8 if big else 4)])[0]
    return fields


_MP4_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"udta", b"edts", b"dinf", b"mvex", b"moof",
                   b"traf", b"ilst", b"sinf", b"schi"}


def mp4_fields(data: bytes, start: int = 0, end: int | None = None, depth: int = 0) -> list[Field]:
    end = len(data) if end is None else end
    fields: list[Field] = []
    pos = start
    while pos + 8 <= end and depth < 8 and len(fields) < 4000:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        fields.append(Field(pos, 4, ">", f"atom {kind!r} size"))
        if size < 8 or pos + size > end:
            break
        if kind in _MP4_CONTAINERS:
            fields += mp4_fields(data, pos + 8, pos + size, depth + 1)
        elif kind == b"meta":
            fields += mp4_fields(data, pos + 12, pos + size, depth + 1)
        elif kind == b"data" and size > 16:  # iTunes-style metadata value (title, encoder...)
            fields.append(Field(pos + 16, size - 16, ">", "metadata text", "text"))
        elif depth >= 2 and kind[:1] == b"\xa9":  # QuickTime text atoms (©nam, ©too...)
            fields += mp4_fields(data, pos + 8, pos + size, depth + 1)
        elif kind in (b"stsz", b"stco", b"co64", b"stts", b"stss", b"stsc", b"ctts", b"mdhd", b"mvhd", b"tkhd",
                      b"hdlr", b"elst", b"stsd", b"avcC", b"hvcC", b"esds", b"sidx", b"trun", b"tfhd"):
            for k in range(pos + 8, min(pos + size, pos + 8 + 64) - 3, 4):
                fields.append(Field(k, 4, ">", f"{kind.decode('latin-1')}+{k - pos}"))
        pos += size
    return fields


_EBML_STRINGS = {0x4487: "TagString", 0x45A3: "TagName", 0x7BA9: "Title", 0x4D80: "MuxingApp",
                 0x5741: "WritingApp", 0x22B59C: "Language", 0x86: "CodecID", 0x536E: "Name", 0x4282: "DocType"}
_EBML_MASTERS = {0x1A45DFA3, 0x18538067, 0x1549A966, 0x1654AE6B, 0xAE, 0xE0, 0x1F43B675, 0xA0, 0x1254C367,
                 0x7373, 0x67C8, 0x1C53BB6B, 0xBB, 0xB7, 0x114D9B74, 0x4DBB}


def _vint(data: bytes, pos: int) -> tuple[int, int] | None:
    if pos >= len(data) or data[pos] == 0:
        return None
    width = 8 - data[pos].bit_length() + 1
    if pos + width > len(data):
        return None
    return int.from_bytes(data[pos:pos + width], "big"), width


def ebml_fields(data: bytes, start: int = 0, end: int | None = None, depth: int = 0) -> list[Field]:
    end = len(data) if end is None else end
    fields: list[Field] = []
    pos = start
    while pos < end and depth < 8 and len(fields) < 4000:
        element = _vint(data, pos)
        if element is None:
            break
        ident, id_width = element
        size = _vint(data, pos + id_width)
        if size is None:
            break
        raw, size_width = size
        value = raw & ((1 << (7 * size_width)) - 1)
        fields.append(Field(pos + id_width, size_width, ">", f"EBML 0x{ident:X} size"))
        body = pos + id_width + size_width
        if ident in _EBML_MASTERS:
            fields += ebml_fields(data, body, min(end, body + value), depth + 1)
        elif ident in _EBML_STRINGS and 0 < value and body + value <= end:
            fields.append(Field(body, value, ">", f"EBML {_EBML_STRINGS[ident]}", "text"))
        elif value in (1, 2, 4, 8) and body + value <= end:
            fields.append(Field(body, value, ">", f"EBML 0x{ident:X} value"))
        if value == (1 << (7 * size_width)) - 1:  # unknown size: only masters, stop here
            break
        pos = body + value
    return fields


def png_fields(data: bytes) -> list[Field]:
    fields: list[Field] = []
    pos = 8
    while pos + 12 <= len(data) and len(fields) < 200:
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        fields.append(Field(pos, 4, ">", f"PNG {kind!r} length"))
        if kind == b"IHDR":
            fields += [Field(pos + 8, 4, ">", "IHDR width"), Field(pos + 12, 4, ">", "IHDR height"),
                       Field(pos + 16, 1, ">", "IHDR bit depth"), Field(pos + 17, 1, ">", "IHDR colour type"),
                       Field(pos + 20, 1, ">", "IHDR interlace")]
        elif kind in (b"acTL", b"fcTL"):
            fields += [Field(pos + 8 + 4 * k, 4, ">", f"{kind.decode()}+{4 * k}") for k in range(min(6, length // 4))]
        pos += 12 + length
    return fields


def jpeg_fields(data: bytes) -> list[Field]:
    fields: list[Field] = []
    pos = 2
    while pos + 4 <= len(data) and len(fields) < 200:
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        fields.append(Field(pos + 2, 2, ">", f"JPEG FF{marker:02X} length"))
        if marker in (0xC0, 0xC1, 0xC2, 0xC3):
            fields += [Field(pos + 4, 1, ">", "SOF precision"), Field(pos + 5, 2, ">", "SOF height"),
                       Field(pos + 7, 2, ">", "SOF width"), Field(pos + 9, 1, ">", "SOF components")]
        if marker == 0xDA:
            break
        pos += 2 + length
    return fields


def generic_fields(data: bytes) -> list[Field]:
    """Header integers of GIF / BMP / WebP (and a 32-bit grid over the first bytes of anything)."""
    if data[:3] == b"GIF":
        return [Field(6, 2, "<", "GIF width"), Field(8, 2, "<", "GIF height"), Field(10, 1, "<", "GIF flags")]
    if data[:2] == b"BM":
        return [Field(2, 4, "<", "BMP size"), Field(10, 4, "<", "BMP offset"), Field(14, 4, "<", "BMP header size"),
                Field(18, 4, "<", "BMP width"), Field(22, 4, "<", "BMP height"), Field(28, 2, "<", "BMP bits"),
                Field(30, 4, "<", "BMP compression"), Field(46, 4, "<", "BMP colours")]
    if data[:4] == b"RIFF":
        return [Field(4, 4, "<", "RIFF size"), Field(16, 4, "<", "chunk size"), Field(26, 2, "<", "VP8 width"),
                Field(28, 2, "<", "VP8 height")]
    return [Field(k, 4, "<", f"u32@{k}") for k in range(0, min(len(data), 256) - 3, 4)]


def fields_for(data: bytes, fmt: str) -> list[Field]:
    if fmt == "dicom":
        return dicom_fields(data)
    if fmt == "nifti":
        return nifti_fields(data)
    if fmt == "tiff":
        return tiff_fields(data)
    if fmt == "mp4":
        return mp4_fields(data)
    if fmt == "mkv":
        return ebml_fields(data)
    if fmt == "png":
        return png_fields(data)
    if fmt == "jpeg":
        return jpeg_fields(data)
    return generic_fields(data)


# ------------------------------------------------------------------------------------------
# byte-level mutations
# ------------------------------------------------------------------------------------------
def _flip(data: bytearray, rng: random.Random) -> str:
    n = rng.choice([1, 1, 2, 4, 8, 16])
    for _ in range(n):
        k = rng.randrange(len(data))
        data[k] ^= 1 << rng.randrange(8)
    return f"flip {n} bit(s)"


def _overwrite(data: bytearray, rng: random.Random) -> str:
    k = rng.randrange(len(data))
    n = min(rng.choice([1, 2, 4, 8]), len(data) - k)
    data[k:k + n] = bytes(rng.getrandbits(8) for _ in range(n))
    return f"overwrite {n} byte(s) at {k}"


def _interesting(data: bytearray, rng: random.Random) -> str:
    size = rng.choice([1, 2, 4, 8])
    if len(data) <= size:
        return _flip(data, rng)
    limit = min(len(data) - size, 4096) if rng.random() < 0.7 else len(data) - size
    k = rng.randrange(limit + 1)
    order = rng.choice("<>")
    value = _interesting_int(rng, size)
    data[k:k + size] = _pack_int(value, size, order)
    return f"int{8 * size}{'le' if order == '<' else 'be'} {value} at {k}"


def _truncate(data: bytearray, rng: random.Random) -> str:
    keep = rng.choice([rng.randrange(len(data)), len(data) - rng.randrange(1, min(len(data), 4096) + 1),
                       rng.randrange(min(len(data), 2048))])
    del data[max(1, keep):]
    return f"truncate to {len(data)} bytes"


def _insert(data: bytearray, rng: random.Random) -> str:
    k = rng.randrange(len(data) + 1)
    n = rng.choice([1, 4, 16, 256, 4096])
    data[k:k] = bytes(rng.getrandbits(8) for _ in range(n)) if rng.random() < 0.5 else bytes([rng.getrandbits(8)]) * n
    return f"insert {n} byte(s) at {k}"


def _delete(data: bytearray, rng: random.Random) -> str:
    k = rng.randrange(len(data))
    n = min(rng.choice([1, 4, 16, 256, 4096]), len(data) - k - 1) or 1
    del data[k:k + n]
    return f"delete {n} byte(s) at {k}"


def _duplicate(data: bytearray, rng: random.Random) -> str:
    k = rng.randrange(len(data))
    n = min(rng.choice([16, 256, 4096]), len(data) - k)
    chunk = bytes(data[k:k + n])
    at = rng.randrange(len(data) + 1)
    data[at:at] = chunk * rng.choice([1, 2, 8])
    return f"duplicate {n} byte(s) from {k} at {at}"


def _strings(data: bytearray, rng: random.Random) -> str:
    runs, start = [], None
    for k, b in enumerate(data[: 1 << 20]):
        if 0x20 <= b < 0x7F:
            start = k if start is None else start
        else:
            if start is not None and k - start >= 4:
                runs.append((start, k))
            start = None
    if not runs:
        return _overwrite(data, rng)
    long_runs = [r for r in runs if r[1] - r[0] >= 8]
    a, b = rng.choice(long_runs if long_runs and rng.random() < 0.8 else runs)
    k = rng.randrange(a, b)
    junk = rng.choice([b"\xff", b"\xfe\xff", b"\xc3", b"\x80\x80", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
    data[k:k + len(junk)] = junk[: max(0, min(len(junk), b - k))] or junk[:1]
    return f"non-UTF-8 bytes {junk!r} in text at {k}"


BYTE_MUTATIONS: list[tuple[Callable[[bytearray, random.Random], str], int]] = [
    (_flip, 4), (_overwrite, 2), (_interesting, 4), (_truncate, 2), (_insert, 1), (_delete, 1), (_duplicate, 1),
    (_strings, 2),
]


def _weighted(rng: random.Random, choices: list[tuple[Callable[[bytearray, random.Random], str], int]]):
    total = sum(w for _, w in choices)
    pick = rng.randrange(total)
    for fn, weight in choices:
        if pick < weight:
            return fn
        pick -= weight
    return choices[-1][0]


def _fix_png_crcs(data: bytearray) -> None:
    pos = 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        end = pos + 8 + length
        if end + 4 > len(data):
            return
        data[end:end + 4] = struct.pack(">I", zlib.crc32(bytes(data[pos + 4:end])) & 0xFFFFFFFF)
        pos = end + 4


def _dicom_deflated(data: bytes) -> int | None:
    """Offset where a deflated DICOM's compressed dataset starts, else None."""
    if data[128:132] != b"DICM" or b"1.2.840.10008.1.2.1.99" not in data[132:2048]:
        return None
    pos = 132
    while pos + 8 <= len(data):
        group = struct.unpack("<H", data[pos:pos + 2])[0]
        if group != 0x0002:
            return pos
        vr = data[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            pos += 12 + struct.unpack("<L", data[pos + 8:pos + 12])[0]
        else:
            pos += 8 + struct.unpack("<H", data[pos + 6:pos + 8])[0]
    return None


def mutate(data: bytes, fmt: str, rng: random.Random, others: list[bytes] | None = None) -> tuple[bytes, list[str]]:
    """One mutated copy of ``data`` (format ``fmt``) and the steps applied."""
    steps: list[str] = []
    # containers: mutate the inner bytes (then re-encode) half of the time
    if fmt == "nifti" and data[:2] == b"\x1f\x8b" and rng.random() < 0.6:
        inner, more = mutate(gzip.decompress(data), "nifti", rng, None)
        return gzip.compress(inner, compresslevel=1, mtime=0), ["inside gzip:", *more]
    if fmt == "dicom" and rng.random() < 0.6:
        start = _dicom_deflated(data)
        if start is not None:
            try:
                inner = zlib.decompress(data[start:], -zlib.MAX_WBITS)
            except zlib.error:
                inner = None
            if inner is not None:
                buf = bytearray(inner)
                fields = dicom_fields(bytes(buf), 0)
                if fields:
                    steps.append("inside deflate: " + set_field(buf, rng.choice(fields), rng))
                packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
                return data[:start] + packer.compress(bytes(buf)) + packer.flush(), steps
    buf = bytearray(data)
    rounds = rng.choice([1, 1, 1, 2, 3])
    for _ in range(rounds):
        if not buf:
            buf = bytearray(b"\x00")
        roll = rng.random()
        if roll < 0.5:
            fields = fields_for(bytes(buf), fmt)
            if fields:
                steps.append(set_field(buf, rng.choice(fields), rng))
                continue
        if roll < 0.58 and others:
            other = rng.choice(others)
            cut_a, cut_b = rng.randrange(len(buf) + 1), rng.randrange(len(other) + 1)
            buf = buf[:cut_a] + bytearray(other[cut_b:])
            steps.append(f"splice at {cut_a} with another seed from {cut_b}")
            continue
        steps.append(_weighted(rng, BYTE_MUTATIONS)(buf, rng))
    if fmt == "png" and rng.random() < 0.5:
        _fix_png_crcs(buf)
        steps.append("PNG CRCs fixed")
    return bytes(buf), steps


# ------------------------------------------------------------------------------------------
# manifests
# ------------------------------------------------------------------------------------------
HOSTILE_VALUES: list[object] = [
    None, -1, 0, 2**63, 1e308, float("nan"), True, [], {}, "", " ", "../outside/secret.png", "/etc/passwd",
    "escape.png", "escape_dir", "escape_dir/inner.png", "http://127.0.0.1:9/x.png", "file:///etc/passwd",
    "/vsicurl/http://127.0.0.1:9/x.tif", "rtmp://127.0.0.1:9/live", "pipe:0", "a" * 5000, "\udcff",
    "images/img0.png\x00.png", "images", ".", "..", "~/x.png", "C:\\\\x.png", "<image>" * 50,
    {"path": "../outside/secret.png"}, {"path": "images/img0.png", "adapter": "nope"},
    {"path": "images/img0.png", "options": {"max_pixels": 1}}, {"path": "images/img0.png", "options": {"bogus": 1}},
    {"path": "series", "adapter": "dicom", "options": {"max_frames": "x"}}, [["nested"]] * 3,
    {"path": ["images/img0.png", "escape.png"]}, {"path": "images/img0.png", "options": {"high_res": True}},
    {"path": "escape_dir", "adapter": "images"}, {"path": "escape_dir", "adapter": "dicom"},
    {"path": "series_link", "adapter": "dicom"}, {"path": ["series/IM0000", "escape_dir/IM0000"], "adapter": "dicom"},
]


def _walk(value: object, rng: random.Random, depth: int = 0) -> object:
    if isinstance(value, dict) and value:
        key = rng.choice(list(value))
        roll = rng.random()
        out = dict(value)
        if roll < 0.15:
            del out[key]
        elif roll < 0.6 or depth > 3:
            out[key] = rng.choice(HOSTILE_VALUES)
        else:
            out[key] = _walk(value[key], rng, depth + 1)
        return out
    if isinstance(value, list) and value:
        out_list = list(value)
        k = rng.randrange(len(out_list))
        roll = rng.random()
        if roll < 0.2:
            out_list.insert(k, out_list[k])
        elif roll < 0.35:
            out_list.insert(k, rng.choice(HOSTILE_VALUES))
        else:
            out_list[k] = _walk(out_list[k], rng, depth + 1)
        return out_list
    return rng.choice(HOSTILE_VALUES)


def mutate_manifest(text: str, suffix: str, rng: random.Random) -> tuple[bytes, list[str]]:
    """Structure-aware mutation of a JSON / JSONL / CSV manifest, sometimes followed by byte-level ones."""
    steps: list[str] = []
    roll = rng.random()
    if suffix == ".json" and roll < 0.7:
        out = json.dumps(_walk(json.loads(text), rng), allow_nan=True)
        steps.append("json value mutation")
        if rng.random() < 0.05:
            out = "[" + "[" * 3000 + "]" * 3000 + "]"
            steps.append("deep nesting")
    elif suffix == ".jsonl" and roll < 0.7:
        lines = text.splitlines()
        k = rng.randrange(len(lines))
        lines[k] = json.dumps(_walk(json.loads(lines[k]), rng), allow_nan=True)
        if rng.random() < 0.1:
            lines.insert(k, "[" * 5000)
        out = "\n".join(lines) + "\n"
        steps.append(f"jsonl line {k + 1} mutation")
    elif suffix == ".csv" and roll < 0.7:
        lines = text.splitlines()
        k = rng.randrange(1, len(lines)) if len(lines) > 1 else 0
        cells = lines[k].split(",")
        j = rng.randrange(len(cells))
        value = rng.choice(HOSTILE_VALUES)
        cells[j] = value if isinstance(value, str) else json.dumps(value)
        if rng.random() < 0.2:
            cells.append('"unterminated')
        lines[k] = ",".join(cells)
        out = "\n".join(lines) + "\n"
        steps.append(f"csv line {k + 1} cell {j} mutation")
    else:
        out = text
    data = out.encode("utf-8", "surrogateescape")
    if roll >= 0.6:
        data, more = mutate(data, "text", rng)
        steps += more
    return data, steps
