"""NIfTI volume adapter: a ``.nii`` / ``.nii.gz`` file -> windowed RGB slices along a named axis.

What it reads
    NIfTI-1 and NIfTI-2 single files (magic ``n+1`` / ``n+2``), gzip-compressed or not, 2-D to
    4-D (trailing singleton dimensions are ignored), any real voxel type nibabel reads (ints,
    floats). Header/image pairs (``.hdr``/``.img``), complex, RGB and 5-D+ (vector / tensor
    field) images are refused.

Canonical orientation
    Slices are taken from the volume reoriented to **RAS+** (x to the patient's Right, y
    Anterior, z Superior), the orientation ``nibabel.as_closest_canonical`` produces: the
    voxel axes are permuted and flipped according to ``nibabel.orientations.io_orientation``
    of the image affine (sform when its code is set, else qform). Unlike
    ``as_closest_canonical`` the reorientation is done per slice on nibabel's array proxy,
    so the volume is never loaded whole. Slices along ``axis``:

    ==========  ======================  ==============================  =====================
    axis        slices perpendicular    slice order                     image rows / columns
    ==========  ======================  ==============================  =====================
    axial       to S (z)                inferior -> superior            top = anterior
    coronal     to A (y)                posterior -> anterior           top = superior
    sagittal    to R (x)                left -> right                   top = superior
    ==========  ======================  ==============================  =====================

    Images follow the radiological convention, as DICOM viewers show standard series: the
    patient's right is on the image's left (axial, coronal); anterior is on the left
    (sagittal).

How it reads (bounded memory)
    1. The header is validated (``sizeof_hdr``, magic) from the first bytes, then
       ``vox_offset + prod(shape) x bytes per voxel`` is checked against the file size - for
       ``.nii.gz`` against the decompressed size, counted by streaming the gzip data in 1 MiB
       chunks (which also verifies the CRC), or read from the gzip trailer with
       ``verify_gzip=False`` - **before** any array is allocated.
    2. Only the sampled slices are kept. When the slice axis is the on-disk slowest axis
       (``axial`` for the usual scanner order) each sampled slice is read through the proxy
       (``img.dataobj[..., k]``) in file order; otherwise the volume is streamed in 16 MiB
       slabs along the slowest axis and the sampled slices are assembled from them. Memory
       holds the sampled slices (float32) plus one slab.
    3. Values are scaled by ``scl_slope`` / ``scl_inter`` (nibabel's proxy applies them; a
       slope of 0 means unscaled, as the standard says).

Options
    axis: ``"axial"`` (default), ``"coronal"`` or ``"sagittal"``.
    window: ``None`` (default: robust percentile normalisation over the sampled slices, the
        choice for MR and other non-HU data), a CT preset (``lung``, ``mediastinum``,
        ``abdomen``, ``liver``, ``bone``, ``brain``, ``subdural``), ``"WIDTH,LEVEL"``, or a
        list of three for R/G/B - the same windows as the DICOM adapter
        (:mod:`longllava_plugins.windowing`).
    volume_index: which volume of a 4-D image (required when it holds more than one).
    max_images: budget of output slices (default 256), met by evenly spaced sampling
        keeping the first and last slice. ``load(max_images=...)`` overrides it.
    percentiles: ``(low, high)`` for normalisation; ``(0, 100)`` is min/max.
    verify_gzip: stream the whole ``.nii.gz`` once to verify its decompressed size and CRC
        before reading (default). ``False`` checks the size from the gzip trailer (ISIZE)
        instead, which saves one decompression pass on large files; corruption is then only
        detected where slices are read (still an error, never a partial result), and the
        CRC is not verified.

Limits (each a keyword argument; over one: :class:`~longllava_sdk.errors.ResourceLimitError`)
    All checked from the header before any voxel is read. ``max_pixels`` (2^26) per slice
    (and per stored plane when slices are assembled across the slowest axis);
    ``max_decoded_bytes`` (1 GiB) for the sampled slices (float32) plus their RGB images
    (4 bytes per pixel); ``max_compression_ratio`` (1000) between the bytes the header
    declares and the size of a ``.nii.gz`` (beyond deflate's own maximum of about 1032:1 the
    header is simply wrong: an :class:`~longllava_sdk.errors.AdapterError`);
    ``time_budget_s`` (60 s of CPU time, checked per MiB of gzip data and per slice or slab). The gzip stream is never decompressed whole: it is
    streamed in 1 MiB chunks, and a stream longer than the header declares (plus 16 MiB) is
    an error.

Non-finite voxels
    NaN and +/-inf voxels are masked (black in every channel, excluded from normalisation)
    and counted in ``info["warnings"]``; a volume whose sampled slices hold no finite value
    is an error.

Output
    ``Media(kind="volume")``; ``metadata[i]``: ``slice_position`` (mm, world coordinate
    along the slice axis, at the slice centre), ``slice_index`` (index along the canonical
    axis), ``voxel_index`` (index along the stored axis), ``window``. ``info``: ``orientation`` (``"RAS"``),
    ``original_orientation`` (axis codes of the file, e.g. ``"LAS"``), ``affine_source``,
    ``axis``, ``spacing`` (``{"slice", "row", "column"}`` mm), ``shape``, ``dtype``,
    ``scl_slope``, ``scl_inter``, ``n_volumes``, ``volume_index``, ``n_slices_total``,
    ``n_slices_sampled``, ``window``, ``nifti_version``, ``warnings``.

Errors (all name the file)
    :class:`~longllava_sdk.errors.AdapterError`: wrong magic / not NIfTI, truncated file,
    header dimensions larger than the data, corrupt gzip, 4-D without ``volume_index`` (or
    out of range), empty dimensions, no finite voxel.
    :class:`~longllava_sdk.errors.UnsupportedSourceError`: complex / RGB voxels, 5-D+.
    :class:`~longllava_sdk.errors.ConfigError`: invalid options.

Example::

    from longllava_plugins.nifti import NiftiVolumeAdapter

    media = NiftiVolumeAdapter(axis="coronal", window="bone", max_images=32).load("ct.nii.gz")
    media.info["original_orientation"]   # e.g. 'LPS'
    media.metadata[0]["slice_position"]   # most posterior slice, mm
"""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import nibabel as nib
import numpy as np
from nibabel.orientations import aff2axcodes, io_orientation
from PIL import Image

from longllava_sdk.adapters import (
    DEFAULT_MAX_DECODED_BYTES,
    DEFAULT_TIME_BUDGET_S,
    RGB_BYTES_PER_PIXEL,
    InputAdapter,
    Source,
    check_limit,
    check_time_budget,
    format_bytes,
    guarded_load,
    local_source,
    open_confined,
    sample_indices,
    validate_limit,
)
from longllava_sdk.errors import AdapterError, ConfigError, UnsupportedSourceError, adapter_option_hint
from longllava_sdk.hookspecs import hookimpl
from longllava_sdk.media import Media
from longllava_plugins.windowing import Window, WindowSpec, parse_windows, percentile_window, window_to_rgb

DEFAULT_MAX_IMAGES = 256
#: Slab size when assembling slices across the on-disk slowest axis.
SLAB_BYTES = 16 << 20
#: Canonical (RAS) axis each slicing direction is perpendicular to.
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
#: At most this many values feed the normalisation percentiles.
NORMALISE_MAX_VALUES = 4_000_000
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
#: Largest slice (rows x columns) decoded by default: 8192 x 8192.
DEFAULT_MAX_PIXELS = 2**26
#: Declared (decompressed) bytes over the .nii.gz size above which the header is refused.
DEFAULT_MAX_COMPRESSION_RATIO = 1000.0
#: A gzip stream may run this far past what the header declares (extensions, padding).
GZIP_SLACK_BYTES = 16 << 20
#: Deflate's largest possible expansion (258-byte matches coded in about 2 bits).
DEFLATE_MAX_RATIO = 1032


class NiftiVolumeAdapter(InputAdapter):
    """Reads one NIfTI volume into RAS-oriented, windowed RGB slices (see the module docstring).

    Args:
        axis: slicing axis in RAS: ``axial``, ``coronal`` or ``sagittal``.
        window: a CT window (a preset name such as ``lung``, ``"WIDTH,LEVEL"``, or three of
            those stacked as R/G/B), or ``None`` for percentile normalisation (MR).
        volume_index: which volume of a 4-D image (time point, diffusion direction).
        max_images: slices returned at most (sampled evenly, first and last kept).
        percentiles: the normalisation percentiles when ``window`` is ``None``.
        verify_gzip: read a ``.nii.gz`` to its end to check its CRC (catches truncation).
        max_pixels: largest slice accepted (rows x columns).
        max_decoded_bytes: bound on the sampled slices as float32 plus their RGB images.
        max_compression_ratio: declared bytes over the ``.nii.gz`` file size.
        time_budget_s: CPU seconds one load may use (``None``: unlimited).
    """

    name: ClassVar[str] = "nifti"
    kind: ClassVar[str] = "volume"
    #: what a remote client may choose (never a limit: see InputAdapter.client_options)
    client_options = ("axis", "window", "volume_index", "percentiles")
    data_error_libraries = {"nibabel": "nibabel"}
    extensions: ClassVar[tuple[str, ...]] = (".nii", ".nii.gz")

    def __init__(
        self,
        *,
        axis: str = "axial",
        window: WindowSpec | Sequence[WindowSpec] | None = None,
        volume_index: int | None = None,
        max_images: int | None = DEFAULT_MAX_IMAGES,
        percentiles: tuple[float, float] = (0.5, 99.5),
        verify_gzip: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
        max_compression_ratio: float | None = DEFAULT_MAX_COMPRESSION_RATIO,
        time_budget_s: float | None = DEFAULT_TIME_BUDGET_S,
    ) -> None:
        super().__init__()
        if not isinstance(axis, str) or axis.strip().lower() not in AXES:
            raise ConfigError(f"axis must be one of {', '.join(AXES)}, got {axis!r}")
        if volume_index is not None and (isinstance(volume_index, bool) or not isinstance(volume_index, int)):
            raise ConfigError(f"volume_index must be an integer, got {volume_index!r}")
        if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
            raise ConfigError(f"max_images must be a positive integer or None, got {max_images!r}")
        percentile_window(np.zeros(1, np.float32), tuple(percentiles))  # validates the pair
        self.axis = axis.strip().lower()
        self.windows: list[Window] | None = None if window is None else parse_windows(window)
        self.volume_index = volume_index
        self.max_images = max_images
        self.percentiles = (float(percentiles[0]), float(percentiles[1]))
        self.verify_gzip = bool(verify_gzip)
        self.max_pixels = validate_limit("max_pixels", max_pixels, allow_none=False)
        self.max_decoded_bytes = validate_limit("max_decoded_bytes", max_decoded_bytes, allow_none=False)
        self.max_compression_ratio = validate_limit("max_compression_ratio", max_compression_ratio, integer=False)
        self.time_budget_s = validate_limit("time_budget_s", time_budget_s, integer=False)

    @guarded_load
    def load(self, source: Source, *, max_images: int | None = None) -> Media:
        """Read the volume in ``source`` into at most ``max_images`` RGB slices along ``axis``."""
        path = _single_path(source)
        budget = max_images if max_images is not None else self.max_images
        if budget is not None and budget < 1:
            raise ConfigError(f"max_images must be >= 1, got {budget}")
        warnings: list[str] = []

        compressed = _check_container(path)
        version = _check_header_bytes(path, compressed)
        # nibabel opens the path itself: it is checked again right before (a regular file)
        local_source(path, what="NIfTI file")
        try:
            img = nib.load(str(path), mmap=False, keep_file_open=True)
        except Exception as exc:  # nibabel raises ImageFileError, HeaderDataError, ValueError...
            raise AdapterError(path, f"nibabel cannot read the header ({type(exc).__name__}: {exc})") from exc
        try:
            return self._load_image(path, img, compressed, version, budget, warnings)
        finally:
            _close(img)

    def _load_image(
        self, path: Path, img: Any, compressed: bool, version: int, budget: int | None, warnings: list[str]
    ) -> Media:
        header = img.header
        shape = tuple(int(n) for n in img.shape)
        dtype = np.dtype(header.get_data_dtype())
        if dtype.kind == "c" or dtype.fields is not None or dtype.kind not in "uifb":
            raise UnsupportedSourceError(path, f"voxel type {dtype} (complex / RGB / structured) is not supported")
        while len(shape) > 4 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) > 4:
            raise UnsupportedSourceError(
                path, f"{len(shape)}-D image {shape} (vector or tensor field) is not supported"
            )
        if any(n < 1 for n in shape):
            raise AdapterError(path, f"empty image: dimensions {shape}")

        offset = int(img.dataobj.offset)
        needed = offset + int(np.prod(shape, dtype=object)) * dtype.itemsize
        if not compressed or not self.verify_gzip:
            _check_data_size(path, compressed, needed, verify_gzip=False)  # cheap: file size / gzip trailer
        if compressed:
            stored_size = path.stat().st_size
            if needed > DEFLATE_MAX_RATIO * stored_size + GZIP_SLACK_BYTES:
                raise AdapterError(
                    path,
                    f"truncated or wrong header: dimensions {shape} ({dtype}) declare {needed} bytes of header + data, "
                    f"but a {stored_size}-byte gzip file decompresses to at most about "
                    f"{DEFLATE_MAX_RATIO * stored_size} bytes (deflate cannot exceed {DEFLATE_MAX_RATIO}:1)",
                )
            if self.max_compression_ratio is not None:
                check_limit(
                    path, round(needed / max(1, stored_size)), round(self.max_compression_ratio),
                    "max_compression_ratio",
                    f"the ratio of the {format_bytes(needed)} the header declares (shape {shape}, {dtype}) to the "
                    f"{format_bytes(stored_size)} gzip file (an almost constant volume or a decompression bomb)",
                )

        n_volumes = shape[3] if len(shape) == 4 else 1
        volume = self._volume_index(path, n_volumes, shape)

        spatial = tuple(shape[:3]) + (1,) * (3 - min(3, len(shape)))
        ornt, affine_source = _orientation(img, warnings)
        source_axis = {int(ornt[s, 0]): s for s in range(3)}  # canonical axis -> stored axis
        flipped = {s: ornt[s, 1] < 0 for s in range(3)}
        canonical = AXES[self.axis]
        stored = source_axis[canonical]
        count = spatial[stored]
        picks = sample_indices(count, budget)  # canonical indices along the slice axis
        self._check_limits(path, spatial, stored, len(picks))
        if compressed and self.verify_gzip:
            _check_data_size(path, compressed, needed, verify_gzip=True)  # streams the whole gzip data once

        stored_indices = [count - 1 - k if flipped[stored] else k for k in picks]
        slices = _read_slices(path, img, shape, volume, stored, stored_indices)
        slices = [_to_display(raw, stored, ornt) for raw in slices]

        finite_total = sum(int(np.isfinite(s).sum()) for s in slices)
        bad_total = sum(s.size for s in slices) - finite_total
        if finite_total == 0:
            raise AdapterError(path, "the volume holds no finite voxel values (NaN/inf only) in the sampled slices")
        if bad_total:
            warnings.append(f"{bad_total} non-finite voxel(s) (NaN/inf) in the sampled slices are masked black")

        if self.windows is None:
            window = percentile_window(_normalisation_sample(slices), self.percentiles)
            windows = [window]  # finite values exist, so window is not None
            described = f"percentile normalisation {self.percentiles[0]:g}-{self.percentiles[1]:g} % -> {window.label}"
        else:
            windows = self.windows
            described = _windows_label(windows)
        label = _windows_label(windows)  # type: ignore[arg-type]

        images: list[Image.Image] = []
        for index in range(len(slices)):
            values = slices[index]
            mask = ~np.isfinite(values)
            images.append(window_to_rgb(values, windows, mask=mask if mask.any() else None))  # type: ignore[arg-type]
            slices[index] = None  # type: ignore[call-overload]  # free as we go

        with np.errstate(all="ignore"):
            canonical_affine = np.asarray(img.affine, dtype=np.float64) @ _reorient_matrix(ornt, spatial)
        zooms = [float(z) for z in header.get_zooms()[:3]] + [1.0] * (3 - min(3, len(header.get_zooms())))
        in_plane = [a for a in range(3) if a != canonical]  # canonical (column axis, row axis)
        metadata = []
        for k in picks:
            voxel = np.ones(4)  # homogeneous RAS voxel coordinate of the slice centre
            for axis in in_plane:
                voxel[axis] = (spatial[source_axis[axis]] - 1) / 2.0
            voxel[canonical] = k
            with np.errstate(all="ignore"):
                position = float((canonical_affine @ voxel)[canonical])
            metadata.append(
                {
                    "slice_position": position if np.isfinite(position) else None,
                    "slice_index": int(k),
                    "voxel_index": int(count - 1 - k if flipped[stored] else k),
                    "window": label,
                }
            )
        # nibabel moves scl_slope/inter from the loaded header into the proxy (which applies them).
        slope, inter = getattr(img.dataobj, "slope", None), getattr(img.dataobj, "inter", None)
        info = {
            "orientation": "RAS",
            "original_orientation": _axis_codes(img.affine),
            "affine_source": affine_source,
            "axis": self.axis,
            "spacing": {
                "slice": zooms[stored],
                "row": zooms[source_axis[in_plane[1]]],
                "column": zooms[source_axis[in_plane[0]]],
            },
            "shape": list(shape),
            "dtype": str(dtype),
            "scl_slope": None if slope is None else float(slope),
            "scl_inter": None if inter is None else float(inter),
            "n_volumes": n_volumes,
            "volume_index": volume,
            "n_slices_total": count,
            "n_slices_sampled": len(picks),
            "window": described,
            "nifti_version": version,
            "warnings": warnings,
        }
        return Media(kind="volume", images=images, metadata=metadata, source=str(path), info=info)

    def _check_limits(self, path: Path, spatial: tuple[int, ...], stored: int, n_picks: int) -> None:
        """Slice size and decoded bytes of the sampled slices, before any voxel is read."""
        rest = [a for a in range(3) if a != stored]
        slice_pixels = spatial[rest[0]] * spatial[rest[1]]
        check_limit(path, slice_pixels, self.max_pixels, "max_pixels",
                    f"one {self.axis} slice ({spatial[rest[0]]} x {spatial[rest[1]]} voxels)")
        if stored != 2:  # slices assembled from slabs of whole stored planes along the slowest axis
            check_limit(path, spatial[0] * spatial[1], self.max_pixels, "max_pixels",
                        f"one stored plane ({spatial[0]} x {spatial[1]} voxels, read whole to assemble "
                        f"{self.axis} slices)")
        needed = n_picks * slice_pixels * (4 + RGB_BYTES_PER_PIXEL)
        check_limit(path, needed, self.max_decoded_bytes, "max_decoded_bytes",
                    f"the {n_picks} sampled slice(s) of {spatial[rest[0]]} x {spatial[rest[1]]} voxels (float32 "
                    "values and RGB images)", unit="bytes", hint="lower max_images")

    def _volume_index(self, path: Path, n_volumes: int, shape: tuple[int, ...]) -> int | None:
        if n_volumes == 1:
            if self.volume_index not in (None, 0):
                raise AdapterError(path, f"volume_index={self.volume_index} but the image holds one volume {shape}")
            return 0 if len(shape) == 4 else None
        if self.volume_index is None:
            raise AdapterError(
                path,
                f"is a 4-D image with {n_volumes} volumes (shape {shape}: time points, diffusion directions...); "
                f"pass {adapter_option_hint('volume_index', f'0..{n_volumes - 1}')} to choose one",
            )
        if not 0 <= self.volume_index < n_volumes:
            raise AdapterError(
                path, f"volume_index={self.volume_index} out of range: the image holds {n_volumes} volumes"
            )
        return self.volume_index


# ---------------------------------------------------------------------- validation
def _single_path(source: Source) -> Path:
    if isinstance(source, (list, tuple)) and len(source) != 1:
        raise AdapterError(
            f"{source[0]} (+{len(source) - 1} more)" if source else "<empty list>",
            "the NIfTI adapter reads one file per source",
        )
    return local_source(source, "NIfTI", what="NIfTI file")  # local, a regular file, inside the allowed root


@contextlib.contextmanager
def _open_gzip(path: Path) -> Iterator[gzip.GzipFile]:
    """The decompressed stream of a regular file (opened by :func:`open_confined`)."""
    with open_confined(path, what="NIfTI file") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as stream:
        yield stream


def _check_container(path: Path) -> bool:
    """True for gzip data; the name and the content must agree."""
    with open_confined(path, what="NIfTI file") as handle:
        magic = handle.read(2)
    is_gzip = magic == _GZIP_MAGIC
    named_gzip = path.name.lower().endswith(".gz")
    if named_gzip and not is_gzip:
        raise AdapterError(path, "named .gz but is not gzip-compressed (no 1f 8b magic)")
    if is_gzip and not named_gzip:
        raise AdapterError(path, "is gzip-compressed but not named .nii.gz; rename it")
    return is_gzip


def _check_header_bytes(path: Path, compressed: bool) -> int:
    """NIfTI version (1 or 2) from ``sizeof_hdr`` and the magic string, else AdapterError."""
    try:
        if compressed:
            with _open_gzip(path) as handle:
                head = handle.read(544)
        else:
            with open_confined(path, what="NIfTI file") as handle:
                head = handle.read(544)
    except (OSError, EOFError, zlib.error) as exc:
        raise AdapterError(path, f"corrupt gzip data ({type(exc).__name__}: {exc})") from exc
    if len(head) < 348:
        raise AdapterError(path, f"truncated: {len(head)} bytes, shorter than a NIfTI header (348)")
    for endian in "<>":
        (size,) = struct.unpack(f"{endian}i", head[:4])
        if size == 348:
            magic = head[344:348]
            if magic == b"n+1\x00":
                return 1
            if magic == b"ni1\x00":
                raise AdapterError(path, "NIfTI-1 header of a .hdr/.img pair (magic 'ni1'); only single files are read")
            raise AdapterError(path, f"not a NIfTI file: sizeof_hdr is 348 but the magic is {magic!r}, not b'n+1\\x00'")
        if size == 540:
            if len(head) < 540:
                raise AdapterError(path, f"truncated: {len(head)} bytes, shorter than a NIfTI-2 header (540)")
            magic = head[4:12]
            if magic[:3] == b"n+2":
                return 2
            raise AdapterError(path, f"not a NIfTI-2 file: magic is {magic!r}")
    raise AdapterError(path, f"not a NIfTI file: sizeof_hdr field is {head[:4].hex()} (expected 348 or 540)")


def _check_data_size(path: Path, compressed: bool, needed: int, verify_gzip: bool) -> None:
    """The header's ``vox_offset + voxels x bytes`` must fit in the (decompressed) file."""
    if not compressed:
        size = path.stat().st_size
        if size < needed:
            raise AdapterError(
                path,
                f"truncated or wrong header: dimensions declare {needed} bytes of header + data, the file has {size}",
            )
        return
    if not verify_gzip:
        _check_gzip_trailer(path, needed)
        return
    total = 0
    cap = needed + GZIP_SLACK_BYTES
    try:
        with _open_gzip(path) as stream:
            while True:
                check_time_budget(f"verifying the gzip stream, {format_bytes(total)} decompressed")
                chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > cap:
                    raise AdapterError(
                        path,
                        f"the gzip stream decompresses to more than {format_bytes(cap)}, far more than the "
                        f"{needed} bytes of header + data the dimensions declare (corrupt header or appended data)",
                    )
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        where = f" after {total} decompressed bytes" if total else ""
        raise AdapterError(path, f"corrupt or truncated gzip data{where} ({type(exc).__name__}: {exc})") from exc
    if total < needed:
        raise AdapterError(
            path,
            f"truncated or wrong header: dimensions declare {needed} bytes of header + data, "
            f"the gzip stream decompresses to {total}",
        )


def _check_gzip_trailer(path: Path, needed: int) -> None:
    """Cheap size check from the gzip trailer (ISIZE = uncompressed size mod 2**32).

    Deflate expands at most ~1032:1, so a member smaller than ``2**32 / 1032`` bytes holds
    less than 4 GiB and its ISIZE is exact; for larger files ISIZE is only known modulo
    2**32 and the check is skipped (a short stream then fails while slices are read).
    """
    compressed = path.stat().st_size
    if compressed < 18:
        raise AdapterError(path, f"truncated: {compressed} bytes cannot hold a gzip member")
    with open_confined(path, what="NIfTI file") as handle:
        handle.seek(-4, os.SEEK_END)
        (isize,) = struct.unpack("<I", handle.read(4))
    if compressed * 1032 < 2**32 and isize < needed:
        raise AdapterError(
            path,
            f"truncated or wrong header: dimensions declare {needed} bytes of header + data, "
            f"the gzip trailer says the stream decompresses to {isize}",
        )


# ---------------------------------------------------------------------- geometry
def _orientation(img: Any, warnings: list[str]) -> tuple[np.ndarray, str]:
    """``io_orientation`` of the affine (stored axis -> [RAS axis, flip]) and which affine it is."""
    header = img.header
    source = "sform" if int(header["sform_code"]) > 0 else "qform" if int(header["qform_code"]) > 0 else "none"
    if source == "none":
        warnings.append("no sform/qform: orientation unknown, the voxel grid is assumed to be RAS")
    affine = np.asarray(img.affine, dtype=np.float64)
    ras = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    if not np.isfinite(affine).all():
        warnings.append(f"the {source} affine holds NaN or infinite values: the voxel grid is assumed to be RAS")
        return ras, source
    with np.errstate(all="ignore"):
        ornt = io_orientation(affine)
    if not np.isfinite(ornt).all() or sorted(int(a) for a in ornt[:3, 0]) != [0, 1, 2]:
        warnings.append("degenerate affine (an axis has no direction): the voxel grid is assumed to be RAS")
        ornt = ras
    return ornt[:3], source


def _axis_codes(affine: np.ndarray) -> str:
    """Axis codes of the file's affine (``"LAS"``...), ``"?"`` for an axis without a direction."""
    matrix = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(matrix).all():
        return "???"
    with np.errstate(all="ignore"):
        codes = aff2axcodes(matrix)
    return "".join(code or "?" for code in codes)


def _reorient_matrix(ornt: np.ndarray, spatial: tuple[int, int, int]) -> np.ndarray:
    """Canonical voxel (i, j, k, 1) -> stored voxel, so ``affine @ it`` is the RAS affine."""
    matrix = np.zeros((4, 4))
    matrix[3, 3] = 1.0
    for stored in range(3):
        axis, flip = int(ornt[stored, 0]), ornt[stored, 1]
        if flip < 0:
            matrix[stored, axis] = -1.0
            matrix[stored, 3] = spatial[stored] - 1
        else:
            matrix[stored, axis] = 1.0
    return matrix


def _to_display(plane: np.ndarray, stored: int, ornt: np.ndarray) -> np.ndarray:
    """Stored-axes slice ``(a, b)`` (a < b, the two stored axes other than ``stored``) -> display image.

    First to canonical RAS in-plane order (c1 < c2) with flips, then rows = c2 reversed and
    columns = c1 reversed (radiological convention).
    """
    rest = [s for s in range(3) if s != stored]
    if int(ornt[rest[0], 0]) > int(ornt[rest[1], 0]):
        plane = plane.T
        rest = rest[::-1]
    if ornt[rest[0], 1] < 0:
        plane = plane[::-1, :]
    if ornt[rest[1], 1] < 0:
        plane = plane[:, ::-1]
    return np.ascontiguousarray(plane.T[::-1, ::-1], dtype=np.float32)


# ---------------------------------------------------------------------- reading
def _read_slices(
    path: Path, img: Any, shape: tuple[int, ...], volume: int | None, stored: int, indices: list[int]
) -> list[np.ndarray]:
    """Slices at stored ``indices`` along stored axis ``stored``, each ``(a, b)`` float32, in input order."""
    proxy = img.dataobj
    spatial = tuple(shape[:3]) + (1,) * (3 - min(3, len(shape)))
    ndim_stored = len(proxy.shape)

    def read(region: tuple[slice | int, slice | int, slice | int]) -> np.ndarray:
        key: list[Any] = list(region[: min(3, ndim_stored)])
        if ndim_stored >= 4:
            key.append(volume if volume is not None else 0)
            key.extend([0] * (ndim_stored - 4))
        try:
            block = np.asarray(proxy[tuple(key)], dtype=np.float32)
        except Exception as exc:  # zlib / EOF / short read on corrupt data
            raise AdapterError(
                path, f"cannot read voxel data: the file is truncated or corrupt ({type(exc).__name__}: {exc})"
            ) from exc
        expected = tuple(
            len(range(*r.indices(spatial[i]))) if isinstance(r, slice) else None for i, r in enumerate(region)
        )
        return block.reshape(tuple(n for n in expected if n is not None))

    full = slice(None)
    out: list[np.ndarray | None] = [None] * len(indices)
    order = sorted(range(len(indices)), key=lambda i: indices[i])  # file order: forward seeks only
    slowest = 2
    if stored == slowest:
        for i in order:
            check_time_budget(f"reading slice {indices[i]}")
            out[i] = read((full, full, indices[i]))
        return out  # type: ignore[return-value]

    rest = [s for s in range(3) if s != stored]
    buffers = {i: np.empty((spatial[rest[0]], spatial[rest[1]]), dtype=np.float32) for i in range(len(indices))}
    plane_bytes = spatial[0] * spatial[1] * 4
    step = max(1, SLAB_BYTES // max(1, plane_bytes))
    for z0 in range(0, spatial[slowest], step):
        z1 = min(spatial[slowest], z0 + step)
        check_time_budget(f"reading planes {z0}..{z1 - 1}")
        slab = read((full, full, slice(z0, z1)))  # (nx, ny, dz)
        for i in order:
            index = indices[i]
            piece = slab[index, :, :] if stored == 0 else slab[:, index, :]
            buffers[i][:, z0:z1] = piece
        del slab
    return [buffers[i] for i in range(len(indices))]


def _normalisation_sample(slices: list[np.ndarray]) -> np.ndarray:
    total = sum(s.size for s in slices)
    stride = max(1, int(np.ceil(np.sqrt(total / NORMALISE_MAX_VALUES))))
    return np.concatenate([s[::stride, ::stride].ravel() for s in slices])


def _windows_label(windows: Sequence[Window]) -> str:
    if len(windows) == 1:
        return windows[0].label
    return " ".join(f"{c}={w.label}" for c, w in zip("RGB", windows))


def _close(img: Any) -> None:
    """Close the file nibabel keeps open (``keep_file_open=True``)."""
    opener = getattr(img.dataobj, "_opener", None)
    if opener is not None:
        try:
            opener.close_if_mine()
        except Exception:  # closing is best effort
            pass


@hookimpl
def longllava_register_adapters() -> list[type[InputAdapter]]:
    """Register :class:`NiftiVolumeAdapter` (entry point ``nifti`` in the ``longllava_sdk`` group)."""
    return [NiftiVolumeAdapter]
