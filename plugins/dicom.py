"""DICOM series adapter: a CT / MR series (file, folder or list of files) -> windowed RGB slices.

What it reads
    DICOM Part 10 files (``DICM`` marker at byte 128) with pydicom 3: single-frame series
    (one file per slice, the classic CT/MR export), enhanced multi-frame objects (Enhanced CT /
    MR: one file, per-frame positions and rescale in the functional groups) and legacy
    multi-frame objects with a ``GridFrameOffsetVector`` (RT Dose). Native (uncompressed,
    little/big endian, deflated) transfer syntaxes and RLE always work; 8-bit JPEG baseline /
    extended and JPEG 2000 decode through Pillow; JPEG lossless, JPEG-LS, 12-bit JPEG and
    HTJ2K need the optional decoders (``pip install 'longllava-sdk[dicom-codecs]'``).

How it reads (streaming, bounded memory)
    1. Every file's header is read with ``stop_before_pixels=True`` and reduced to a small
       record (series, position, orientation, rescale, padding, window); the pixel element's
       declared length is checked against the file size and against
       ``Rows x Columns x frames x samples x bits`` *without reading it*.
    2. Records are grouped by ``SeriesInstanceUID`` and one series is chosen.
    3. Slices are ordered in space, checked (gaps, tilt, non-parallel, localizers) and
       sampled down to ``max_images`` (first and last slice always kept).
    4. Only the sampled slices' pixels are decoded, one file at a time, and turned into RGB
       images straight away, so memory holds the output images plus one slice.

Ordering rules
    Slices are sorted by ``ImagePositionPatient`` projected on the slice normal
    ``n = row x col`` from ``ImageOrientationPatient`` (ascending; for a standard axial
    series that is feet to head), never by ``InstanceNumber`` (only used to break ties, and
    as the order of last resort when a series has no position/orientation at all, which is
    reported). Images are shown as stored: for standard axial/coronal orientations that is
    the radiological convention (patient's right on the image's left).

Pixel values
    Modality LUT per slice (``RescaleSlope`` / ``RescaleIntercept`` from the frame's
    functional groups, the shared groups or the top level; a ``ModalityLUTSequence`` through
    :func:`pydicom.pixels.apply_modality_lut`), so CT values are Hounsfield units. Then the
    window (see below); ``MONOCHROME1`` is inverted; ``PixelPaddingValue`` (and
    ``PixelPaddingRangeLimit``) pixels are masked to black in every channel. Colour images
    (RGB / YBR / palette) are passed through as RGB (windows do not apply).

Options
    window: ``"auto"`` (default: the window stored in each slice, ``WindowCenter`` /
        ``WindowWidth`` with its ``VOILUTFunction``, as a viewer would open it; robust
        percentile normalisation when the slices carry none), ``"dicom"`` (the stored window,
        an error when missing), ``None`` (percentile normalisation over the sampled slices,
        the choice for MR), a preset name (``lung``, ``mediastinum``, ``abdomen``, ``liver``,
        ``bone``, ``brain``, ``subdural``), ``"WIDTH,LEVEL"`` such as ``"400,40"``, or a list
        of three of those for R/G/B (``["lung", "mediastinum", "bone"]``). See
        :mod:`longllava_plugins.windowing`.
    series_uid: the ``SeriesInstanceUID`` to read when the source holds several series.
    max_images: budget of output slices (default 256), met by evenly spaced sampling
        keeping the first and last slice. ``load(max_images=...)`` overrides it.
    allow_non_parallel: keep slices whose orientation differs from the main stack (by more
        than 1 degree) and order them by projection on the main normal, with a warning,
        instead of raising.
    percentiles: ``(low, high)`` used by percentile normalisation; ``(0, 100)`` is min/max.

Output
    ``Media(kind="volume")``; ``metadata[i]``: ``slice_position`` (mm along the normal,
    ``None`` without geometry), ``position_patient`` (x, y, z mm), ``instance_number``,
    ``sop_instance_uid``, ``frame`` (index in a multi-frame file, else ``None``), ``file``,
    ``window`` (label actually applied). ``info``: ``series_uid``, ``series_description``,
    ``modality``, ``spacing`` (``{"row", "column", "slice"}`` in mm; ``slice`` is the median
    step between positions), ``orientation`` (the six direction cosines), ``plane``
    (axial / coronal / sagittal, ``oblique ...`` when > 25 degrees off), ``normal``,
    ``n_slices_total`` (after dropping localizers), ``n_slices_sampled``, ``window``,
    ``transfer_syntaxes``, ``warnings`` (list of strings: gaps, irregular spacing, duplicate
    positions, gantry tilt, small non-parallelism, dropped localizers, skipped files...).

Limits (each a keyword argument; over one: :class:`~longllava_sdk.errors.ResourceLimitError`)
    Checked in the header pass, before any pixel is decoded: ``max_pixels`` (2^26, e.g.
    8192 x 8192) per image, ``max_frames`` (20,000) images in the header pass (files x
    frames, so a ``NumberOfFrames`` of a million is refused before a record is built),
    ``max_decoded_bytes`` (1 GiB) per decoded frame, per deflated file (inflated and
    decoded whole) and for the output images (4 bytes per pixel),
    ``max_compression_ratio`` (1000) between a deflated file's declared pixel bytes and its
    size, and ``time_budget_s`` (60 s of CPU time, checked per file and per slice).
    Deflated files are inflated incrementally with that cap (never ``zlib.decompress`` of the
    whole file); RLE data that would have to expand more than RLE can (64:1) and pixel data
    shorter than ``Rows x Columns x frames x samples x bits`` are header/data disagreements
    (:class:`~longllava_sdk.errors.AdapterError`).

Errors (all name the file)
    :class:`~longllava_sdk.errors.AdapterError`: not a DICOM file, corrupt or truncated
    header or pixel data (strict: a truncated file is never read partially), missing Pixel
    Data, declared image size larger than the data, several series without ``series_uid``
    (the message lists each series with its description, modality and slice count), unknown
    ``series_uid``, non-parallel slices, images without geometry mixed with images with it.
    :class:`~longllava_sdk.errors.MissingDependencyError`: compressed transfer syntax without
    an installed decoder (names the syntax and its UID, and the extra to install).
    :class:`~longllava_sdk.errors.UnsupportedSourceError`: a transfer syntax no decoder
    exists for (unknown UID, MPEG/HEVC video).
    :class:`~longllava_sdk.errors.ConfigError`: invalid options.

Example::

    from longllava_plugins.dicom import DicomSeriesAdapter

    media = DicomSeriesAdapter(window=["lung", "mediastinum", "bone"], max_images=64).load("ct_folder/")
    media.images[0].mode                  # 'RGB'
    media.metadata[0]["slice_position"]   # lowest slice along the normal, in mm
    media.info["warnings"]                # e.g. ['gap of 5 mm between slices at ...']
"""

from __future__ import annotations

import io
import math
import os
import struct
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileDataset
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder
from pydicom.pixels.utils import as_pixel_options, get_expected_length
from pydicom.uid import UID

from longllava_sdk import local_files
from longllava_sdk.adapters import (
    DEFAULT_MAX_DECODED_BYTES,
    DEFAULT_TIME_BUDGET_S,
    RGB_BYTES_PER_PIXEL,
    InputAdapter,
    Source,
    check_limit,
    check_time_budget,
    confine,
    current_allowed_root,
    format_bytes,
    guarded_claims,
    guarded_load,
    local_source,
    open_confined,
    sample_indices,
    validate_limit,
)
from longllava_sdk.errors import (
    AdapterError,
    ConfigError,
    MissingDependencyError,
    ResourceLimitError,
    UnsupportedSourceError,
    adapter_option_hint,
)
from longllava_sdk.hookspecs import hookimpl
from longllava_sdk.media import Media
from longllava_plugins.windowing import (
    Window,
    WindowSpec,
    apply_lut,
    apply_window,
    parse_windows,
    percentile_window,
    planes_to_rgb,
    window_lut,
)

DEFAULT_MAX_IMAGES = 256
CODECS_HINT = "pip install 'longllava-sdk[dicom-codecs]'"
#: Slice normals closer than this (degrees) belong to one stack.
PARALLEL_TOLERANCE_DEG = 1.0
#: Deviations below this (degrees) are rounding noise in the stored cosines, not reported.
ANGLE_NOISE_DEG = 0.01
#: A few images at least this far (degrees) from the stack are localizers (scouts).
LOCALIZER_MIN_ANGLE_DEG = 10.0
#: A step longer than this times the median step is a gap (missing slices).
GAP_FACTOR = 1.5
#: Steps deviating more than this fraction from the median are reported as irregular.
IRREGULAR_FRACTION = 0.1
#: Positions closer than this (mm) along the normal are the same position.
DUPLICATE_MM = 0.01
#: Positions may run this far (degrees) off the normal before a tilt is reported.
TILT_TOLERANCE_DEG = 0.5
#: Percentile normalisation estimates its range from at most this many sampled slices.
NORMALISE_PROBE_SLICES = 16

#: Largest image (Rows x Columns) decoded by default: 8192 x 8192.
DEFAULT_MAX_PIXELS = 2**26
#: Most images (files x frames) the header pass indexes by default.
DEFAULT_MAX_FRAMES = 20_000
#: Declared pixel bytes over a deflated file's size above which it is refused.
DEFAULT_MAX_COMPRESSION_RATIO = 1000.0
#: Deflate's largest possible expansion; RLE (PackBits) expands at most 128 bytes from 2.
DEFLATE_MAX_RATIO = 1032
RLE_MAX_RATIO = 64
_INFLATE_CHUNK = 1 << 16
_INFLATE_STEP = 1 << 20

_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_PIXEL_TAGS = {0x7FE00010: "Pixel Data", 0x7FE00008: "Float Pixel Data", 0x7FE00009: "Double Float Pixel Data"}
_PIXEL_KEYWORDS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
#: Lookup tables kept per load (64 KiB each): one per (dtype, rescale, window) in practice.
_LUT_CACHE_SIZE = 64
_AUTO, _STORED, _NORMALISE, _FIXED = "auto", "dicom", "normalise", "fixed"


@dataclass(slots=True)
class _Slice:
    """What the header pass keeps of one image (a file, or one frame of a multi-frame file)."""

    path: str
    frame: int | None  # index in a multi-frame file, None for a single-frame file
    series_uid: str
    series_description: str
    modality: str
    sop_uid: str
    instance_number: int | None
    position: np.ndarray | None  # (3,) mm, patient coordinates (LPS)
    orientation: np.ndarray | None  # (6,) row and column direction cosines
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing) mm
    rows: int
    columns: int
    samples: int
    photometric: str
    transfer_syntax: UID
    slope: float
    intercept: float
    lut: Dataset | None  # group-0028 subset, only for ModalityLUTSequence / PALETTE COLOR
    padding: tuple[float, float] | None  # inclusive range of stored values that are padding
    voi: tuple[float, float, str] | None  # (centre, width, function) stored window
    is_localizer: bool
    spacing_between_slices: float | None
    pixel_offset: int | None  # file offset of the pixel data value; None for deflated files
    pixel_options: dict[str, Any]  # pydicom decoder options for this file (shared by its frames)


@dataclass(slots=True)
class _Limits:
    """The adapter's resource limits, handed to the header pass."""

    max_pixels: int
    max_frames: int
    max_decoded_bytes: int
    max_compression_ratio: float | None
    frames_seen: int = 0


class DicomSeriesAdapter(InputAdapter):
    """Reads one DICOM series into ordered, windowed RGB slices (see the module docstring).

    Args:
        window: ``"auto"`` (the window stored in each slice, else percentile normalisation),
            ``"dicom"`` (the stored window, an error when missing), a preset name (``lung``,
            ``mediastinum``, ``abdomen``, ``liver``, ``bone``, ``brain``, ``subdural``),
            ``"WIDTH,LEVEL"`` such as ``"400,40"``, three of those stacked as R/G/B
            (``lung,mediastinum,bone``), or ``None`` for percentile normalisation (MR).
        series_uid: the SeriesInstanceUID to read when a folder holds several series.
        max_images: slices returned at most (sampled evenly, first and last kept).
        allow_non_parallel: order slices whose orientations differ along the main normal
            instead of refusing them.
        percentiles: the normalisation percentiles when ``window`` is ``None``.
        max_pixels: largest image accepted (Rows x Columns).
        max_frames: images the header pass may index (files x frames).
        max_decoded_bytes: bound on one decoded frame, a deflated file inflated whole and the
            output images.
        max_compression_ratio: declared pixel bytes over a deflated file's size.
        time_budget_s: CPU seconds one load may use (``None``: unlimited).
    """

    name: ClassVar[str] = "dicom"
    kind: ClassVar[str] = "volume"
    #: what a remote client may choose (never a limit: see InputAdapter.client_options)
    client_options = ("window", "series_uid", "allow_non_parallel", "percentiles")
    data_error_libraries = {"pydicom": "pydicom"}
    extensions: ClassVar[tuple[str, ...]] = (".dcm", ".dicom", ".ima")

    def __init__(
        self,
        *,
        window: WindowSpec | Sequence[WindowSpec] | None = "auto",
        series_uid: str | None = None,
        max_images: int | None = DEFAULT_MAX_IMAGES,
        allow_non_parallel: bool = False,
        percentiles: tuple[float, float] = (0.5, 99.5),
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_frames: int = DEFAULT_MAX_FRAMES,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
        max_compression_ratio: float | None = DEFAULT_MAX_COMPRESSION_RATIO,
        time_budget_s: float | None = DEFAULT_TIME_BUDGET_S,
    ) -> None:
        super().__init__()
        self.windows: list[Window] = []
        if window is None:
            self.window_mode = _NORMALISE
        elif isinstance(window, str) and window.strip().lower() in (_AUTO, _STORED):
            self.window_mode = window.strip().lower()
        else:
            self.window_mode = _FIXED
            self.windows = parse_windows(window)
        if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
            raise ConfigError(f"max_images must be a positive integer or None, got {max_images!r}")
        if series_uid is not None and not isinstance(series_uid, str):
            raise ConfigError(f"series_uid must be a string, got {series_uid!r}")
        percentile_window(np.zeros(1, np.float32), tuple(percentiles))  # validates the pair
        self.series_uid = series_uid.strip() if series_uid else None
        self.max_images = max_images
        self.allow_non_parallel = bool(allow_non_parallel)
        self.percentiles = (float(percentiles[0]), float(percentiles[1]))
        self.max_pixels = validate_limit("max_pixels", max_pixels, allow_none=False)
        self.max_frames = validate_limit("max_frames", max_frames, allow_none=False)
        self.max_decoded_bytes = validate_limit("max_decoded_bytes", max_decoded_bytes, allow_none=False)
        self.max_compression_ratio = validate_limit("max_compression_ratio", max_compression_ratio, integer=False)
        self.time_budget_s = validate_limit("time_budget_s", time_budget_s, integer=False)

    @classmethod
    @guarded_claims
    def claims(cls, path: Path) -> bool:
        """A ``.dcm``/``.dicom``/``.ima`` file, any file with the ``DICM`` marker, or a folder holding one."""
        if path.is_dir():
            return _folder_has_dicom(path)
        return super().claims(path) or _has_dicm_marker(confine(path))

    # ------------------------------------------------------------------ loading
    @guarded_load
    def load(self, source: Source, *, max_images: int | None = None) -> Media:
        """Read ``source`` (file, folder or list) into at most ``max_images`` RGB slices."""
        budget = max_images if max_images is not None else self.max_images
        if budget is not None and budget < 1:
            raise ConfigError(f"max_images must be >= 1, got {budget}")
        where = _describe(source)
        warnings: list[str] = []

        records: list[_Slice] = []
        skipped: Counter[str] = Counter()
        limits = _Limits(self.max_pixels, self.max_frames, self.max_decoded_bytes, self.max_compression_ratio)
        for path, explicit in _collect_files(source):
            check_time_budget(f"in the header pass, after {len(records)} image(s)")
            found = _read_header(path, explicit, limits)
            if isinstance(found, str):
                skipped[found] += 1
            else:
                records.extend(found)
                limits.frames_seen = len(records)
        if skipped:
            warnings.append("skipped " + ", ".join(f"{n} file(s): {why}" for why, n in sorted(skipped.items())))
        if not records:
            reason = f" ({', '.join(f'{n} {why}' for why, n in skipped.items())})" if skipped else ""
            raise AdapterError(where, f"no DICOM images found{reason}")

        series = self._choose_series(records, where, warnings)
        ordered, geometry = _order_slices(series, self.allow_non_parallel, warnings)
        _check_decoders(ordered)
        sizes = Counter((s.rows, s.columns) for s in ordered)
        if len(sizes) > 1:
            shown = ", ".join(f"{n} x {r}x{c}" for (r, c), n in sizes.most_common())
            warnings.append(f"images differ in size ({shown}): not a regular volume grid")
        chosen = [ordered[i] for i in sample_indices(len(ordered), budget)]
        largest = max(s.rows * s.columns for s in chosen)
        check_limit(
            chosen[0].path, len(chosen) * largest * RGB_BYTES_PER_PIXEL, self.max_decoded_bytes,
            "max_decoded_bytes", f"the {len(chosen)} output image(s) of up to {largest:,} px (4 bytes per pixel)",
            unit="bytes", hint="lower max_images",
        )
        plan = self._window_plan(chosen, warnings)
        images = self._render(chosen, plan)

        first = ordered[0]
        metadata = [
            {
                "slice_position": None if s.position is None or geometry["normal"] is None
                else float(np.dot(s.position, geometry["normal"])),
                "position_patient": None if s.position is None else [float(v) for v in s.position],
                "instance_number": s.instance_number,
                "sop_instance_uid": s.sop_uid,
                "frame": s.frame,
                "file": s.path,
                "window": label,
            }
            for s, (_, label) in zip(chosen, images)
        ]
        info: dict[str, Any] = {
            "series_uid": first.series_uid,
            "series_description": first.series_description,
            "modality": first.modality,
            "spacing": {
                "row": first.pixel_spacing[0] if first.pixel_spacing else None,
                "column": first.pixel_spacing[1] if first.pixel_spacing else None,
                "slice": geometry["slice_spacing"],
            },
            "orientation": None if first.orientation is None else [float(v) for v in first.orientation],
            "normal": None if geometry["normal"] is None else [float(v) for v in geometry["normal"]],
            "plane": geometry["plane"],
            "order": geometry["order"],
            "n_slices_total": len(ordered),
            "n_slices_sampled": len(chosen),
            "window": plan["description"],
            "transfer_syntaxes": sorted({s.transfer_syntax.name for s in ordered}),
            "warnings": warnings,
        }
        return Media(kind="volume", images=[img for img, _ in images], metadata=metadata, source=where, info=info)

    def _choose_series(self, records: list[_Slice], where: str, warnings: list[str]) -> list[_Slice]:
        groups: dict[str, list[_Slice]] = {}
        for record in records:
            groups.setdefault(record.series_uid, []).append(record)
        listing = "\n  ".join(_series_line(uid, group) for uid, group in groups.items())
        if self.series_uid is not None:
            if self.series_uid not in groups:
                raise AdapterError(where, f"series_uid {self.series_uid!r} not found; series present:\n  {listing}")
            return groups[self.series_uid]
        # A series made only of localizers (scouts) is not a candidate volume.
        candidates = {uid: g for uid, g in groups.items() if not all(s.is_localizer for s in g)} or groups
        if len(candidates) > 1:
            raise AdapterError(
                where,
                f"holds {len(candidates)} image series; choose one with {adapter_option_hint('series_uid', 'UID')}"
                f":\n  {listing}",
            )
        for uid, group in groups.items():
            if uid not in candidates:
                warnings.append(f"ignored localizer-only series {_series_line(uid, group)}")
        return next(iter(candidates.values()))

    # ------------------------------------------------------------------ windows
    def _window_plan(self, chosen: list[_Slice], warnings: list[str]) -> dict[str, Any]:
        grey = [s for s in chosen if not _is_colour(s)]
        if len(grey) < len(chosen) and self.window_mode in (_FIXED, _STORED):
            warnings.append(
                f"{len(chosen) - len(grey)} colour image(s) shown as stored: windows apply to grey images only"
            )
        mode = self.window_mode
        if mode in (_AUTO, _STORED):
            missing = [s for s in grey if s.voi is None]
            if mode == _STORED and missing:
                raise AdapterError(
                    missing[0].path,
                    "window='dicom' but the image has no valid WindowCenter/WindowWidth; "
                    "use a preset, 'WIDTH,LEVEL' or window=None",
                )
            mode = _NORMALISE if missing or not grey else _STORED
        plan: dict[str, Any] = {"mode": mode}
        if mode == _FIXED:
            modality = chosen[0].modality
            if modality != "CT" and any(w.name for w in self.windows):
                warnings.append(
                    f"named presets assume CT Hounsfield units but the modality is {modality or 'unknown'}"
                )
            plan["description"] = _windows_label(self.windows)
        elif mode == _STORED:
            plan["description"] = "stored window of each slice (WindowCenter/WindowWidth)"
        else:
            window = self._estimate_window(grey) if grey else None
            plan["window"] = window
            plan["description"] = (
                f"percentile normalisation {self.percentiles[0]:g}-{self.percentiles[1]:g} % -> "
                f"{window.label if window else 'n/a (colour)'}"
            )
        return plan

    def _estimate_window(self, grey: list[_Slice]) -> Window:
        """Percentile window over a bounded probe of the sampled slices (decimated 4x in-plane)."""
        probe = [grey[i] for i in sample_indices(len(grey), NORMALISE_PROBE_SLICES)]
        pieces: list[np.ndarray] = []
        for _slot, record, raw in _decode(list(enumerate(probe)), self.max_decoded_bytes):
            values = _modality_values(raw, record)
            mask = _invalid_mask(raw, record)
            kept = values[::4, ::4] if mask is None else values[::4, ::4][~mask[::4, ::4]]
            pieces.append(np.asarray(kept, dtype=np.float32).ravel())
        window = percentile_window(np.concatenate(pieces), self.percentiles)
        if window is None:
            raise AdapterError(probe[0].path, "no valid pixel values: every pixel is padding or not finite")
        return window

    def _windows_for(self, record: _Slice, plan: dict[str, Any]) -> list[Window]:
        if plan["mode"] == _FIXED:
            return self.windows
        if plan["mode"] == _STORED:
            centre, width, function = record.voi  # type: ignore[misc]
            return [Window(width, centre, name="stored", function=function)]
        return [plan["window"]]

    # ------------------------------------------------------------------ pixels
    def _render(self, chosen: list[_Slice], plan: dict[str, Any]) -> list[tuple[Image.Image, str | None]]:
        """Decode the chosen slices and window them: ``(image, window label or None for colour)``."""
        out: list[tuple[Image.Image, str | None] | None] = [None] * len(chosen)
        luts: dict[tuple[Any, ...], np.ndarray | None] = {}
        for slot, record, raw in _decode(list(enumerate(chosen)), self.max_decoded_bytes):
            if _is_colour(record):
                out[slot] = (_colour_image(raw, record), None)
                continue
            windows = self._windows_for(record, plan)
            planes = _grey_planes(raw, record, windows, luts)
            mask = _invalid_mask(raw, record)
            image = planes_to_rgb(planes, mask=mask, invert=record.photometric == "MONOCHROME1")
            out[slot] = (image, _windows_label(windows))
        return out  # type: ignore[return-value]


# ---------------------------------------------------------------------- header pass
def _collect_files(source: Source) -> Iterator[tuple[str, bool]]:
    """``(path, explicit)`` for every candidate file; files found by walking a folder are not explicit."""
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not items:
        raise AdapterError("<empty list>", "no DICOM files given")
    seen: set[str] = set()
    for item in items:
        path = local_files.refuse_remote(item, what="DICOM file")
        if path.is_dir():
            confine(path)
            # lstat-ed walk: a FIFO, socket or device in the series folder is an error naming it
            for found in local_files.regular_files(path, root=current_allowed_root(), recursive=True,
                                                   what="DICOM file"):
                full = str(found)
                if full not in seen:
                    seen.add(full)
                    confine(full)  # a file of the folder may be a symlink leaving the allowed root
                    yield full, False
        elif path.exists():
            local_source(path, what="DICOM file")  # a regular file inside the allowed root
            if str(path) not in seen:
                seen.add(str(path))
                yield str(path), True
        else:
            raise AdapterError(path, "no such file or folder")


def _read_header(path: str, explicit: bool, limits: _Limits) -> list[_Slice] | str:
    """Records for the images in ``path``; for a folder file that is not an image, why it was skipped."""
    handle = open_confined(path, what="DICOM file")  # regular files only (a FIFO would block)
    with handle:
        size = os.fstat(handle.fileno()).st_size
        head = handle.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            if explicit:
                raise AdapterError(
                    path,
                    "not a DICOM file: no 'DICM' marker at byte 128 "
                    "(only DICOM Part 10 files with a file meta header are read)",
                )
            return "not DICOM"
        inflated: _InflatingReader | None = None
        try:
            # Every element value is converted inside this block: pydicom converts lazily, so a
            # corrupt value (unknown VR, bad length) only fails when it is first read.
            bounded = _BoundedReader(handle, size)
            bounded.seek(132)
            meta = _read_file_meta_info(bounded)
            syntax_text = str(meta.get("TransferSyntaxUID") or "")
            if syntax_text and UID(syntax_text).is_transfer_syntax and UID(syntax_text).is_deflated:
                ds, inflated = _read_deflated(path, handle, limits.max_decoded_bytes, stop_before_pixels=True)
                pixel_offset = inflated.tell()
            else:
                bounded.seek(0)
                ds = pydicom.dcmread(bounded, stop_before_pixels=True, force=False)
                pixel_offset = bounded.tell()
            if bounded.overrun is not None:
                position, asked, left = bounded.overrun
                raise AdapterError(
                    path, f"truncated or corrupt header: an element value at byte {position} declares {asked} "
                    f"bytes but only {left} remain in the file",
                )
            meta = getattr(ds, "file_meta", Dataset())
            sop_class = str(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID") or "")
            has_syntax = bool(meta.get("TransferSyntaxUID"))
            syntax = UID(str(meta.TransferSyntaxUID)) if has_syntax else UID("")
            has_image = ds.get("Rows") is not None and ds.get("Columns") is not None
        except (AdapterError, ResourceLimitError):
            raise
        except Exception as exc:  # pydicom raises many types for corrupt headers
            raise AdapterError(path, f"corrupt or truncated DICOM header ({type(exc).__name__}: {exc})") from exc
        # pydicom stops silently at the end of the file, even inside a value: a parse that
        # reaches EOF without meeting Pixel Data is complete only for non-image objects.
        at_eof = pixel_offset >= size if inflated is None else inflated.at_end()
        kind = UID(sop_class).name if sop_class else "unknown SOP class"
        if sop_class == _DICOMDIR_SOP_CLASS:
            if explicit:
                raise AdapterError(path, "is a DICOMDIR index, not an image; pass the folder that holds it")
            return "DICOMDIR index"
        if not has_syntax:
            if at_eof:
                raise AdapterError(path, f"truncated: the file ends after {size} bytes, inside its header")
            raise AdapterError(path, "file meta header has no Transfer Syntax UID (0002,0010)")
        if not has_image:
            if at_eof and "Image Storage" in kind:
                raise AdapterError(
                    path,
                    f"truncated: the file ends after {size} bytes, before the image attributes of this {kind} object",
                )
            if explicit:
                raise AdapterError(path, f"holds no image ({kind}): no Rows/Columns")
            return "no image (SR, RT plan, ...)"
        try:
            if inflated is not None:  # limits first: checking the data means inflating it
                _check_image_limits(path, ds, syntax, limits)
                location = _check_deflated_pixel_data(path, inflated, ds, size, limits)
            else:  # the data check reads a few bytes; a header/data mismatch is the truer error
                location = _check_pixel_data(path, handle, ds, syntax, pixel_offset, size)
                _check_image_limits(path, ds, syntax, limits)
            return _records(path, ds, syntax, location)
        except AdapterError:
            raise
        except Exception as exc:  # malformed values in the image modules
            raise AdapterError(path, f"invalid image attributes ({type(exc).__name__}: {exc})") from exc


def _check_image_limits(path: str, ds: Dataset, syntax: UID, limits: _Limits) -> None:
    """Image size, frame count and decoded bytes against the limits, from the header alone."""
    rows, columns = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames") or 1)
    samples = int(ds.get("SamplesPerPixel") or 1)
    bits = int(ds.get("BitsAllocated") or 16)
    if rows < 1 or columns < 1 or samples < 1 or not 1 <= bits <= 64:
        raise AdapterError(
            path, f"invalid image attributes: Rows {rows}, Columns {columns}, SamplesPerPixel {samples}, "
            f"BitsAllocated {bits}"
        )
    check_limit(path, rows * columns, limits.max_pixels, "max_pixels", f"one image ({rows} x {columns} px)")
    check_limit(
        path, limits.frames_seen + frames, limits.max_frames, "max_frames",
        f"the number of images to index ({limits.frames_seen} so far + NumberOfFrames {frames} in this file)",
    )
    frame_bytes = rows * columns * samples * math.ceil(bits / 8)
    check_limit(path, frame_bytes, limits.max_decoded_bytes, "max_decoded_bytes",
                f"one decoded frame ({rows} x {columns} px x {samples} sample(s) x {bits} bits)", unit="bytes")
    if syntax.is_transfer_syntax and syntax.is_deflated:
        check_limit(path, frame_bytes * frames, limits.max_decoded_bytes, "max_decoded_bytes",
                    f"the pixel data of this deflated file ({frames} frame(s), inflated and decoded whole)",
                    unit="bytes")
    if str(ds.get("PhotometricInterpretation") or "").strip().upper() == "PALETTE COLOR":
        has_lut = all(
            f"{c}PaletteColorLookupTableDescriptor" in ds
            and (f"{c}PaletteColorLookupTableData" in ds or f"Segmented{c}PaletteColorLookupTableData" in ds)
            for c in ("Red", "Green", "Blue")
        )
        if not has_lut:
            raise AdapterError(
                path, "PALETTE COLOR image without its Red/Green/Blue Palette Color Lookup Table "
                "(descriptor 0028,1101-1103 and data 0028,1201-1203): its colours cannot be shown"
            )


class _BoundedReader(io.RawIOBase):
    """A file that never hands out more than it holds: ``read(n)`` is capped at the bytes left.

    pydicom reads an element's value with ``read(length)``; with a corrupt length of 4 GB a
    plain file object allocates the whole buffer before finding the file is 40 KB. Capped
    reads come back short and pydicom reports the truncation instead.
    """

    def __init__(self, handle: Any, size: int) -> None:
        super().__init__()
        self._handle, self._size = handle, size
        self.overrun: tuple[int, int, int] | None = None  # (position, bytes asked, bytes left)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        position = self._handle.tell()
        left = max(0, self._size - position)
        if size is not None and size > left and size > 8 and self.overrun is None:
            self.overrun = (position, size, left)  # a value longer than the rest of the file
        return self._handle.read(left if size is None or size < 0 else min(size, left))

    def readinto(self, target: Any) -> int:
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()


def _at_pixel_data(tag: Any, vr: str | None, length: int) -> bool:
    return int(tag) in _PIXEL_TAGS


class _InflatingReader(io.RawIOBase):
    """The dataset of a Deflated Explicit VR Little Endian file, inflated only as far as it is read.

    pydicom itself inflates the whole file in one ``zlib.decompress`` call; this reader lets
    the header pass stop at Pixel Data, and caps what is ever inflated at ``limit`` bytes.
    """

    def __init__(self, handle: Any, path: str, limit: int) -> None:
        super().__init__()
        self._handle, self._path, self._limit = handle, path, limit
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buffer = bytearray()
        self._position = 0
        self._pending = b""
        self._finished = False  # the deflate stream ended (or the file did)
        self.inflated = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _next(self, room: int) -> bytes:
        """Up to ``room`` more inflated bytes ("" at the end of the stream)."""
        while not self._finished:
            if not self._pending:
                self._pending = self._handle.read(_INFLATE_CHUNK)
                if not self._pending:
                    self._finished = True
                    if not self._inflater.eof:
                        raise AdapterError(self._path, "truncated: the deflated dataset ends inside its deflate stream")
                    return b""
            out = self._inflater.decompress(self._pending, max(1, min(room, _INFLATE_STEP)))
            self._pending = self._inflater.unconsumed_tail
            if self._inflater.eof:
                self._finished = True
            if out:
                self.inflated += len(out)
                if self.inflated > self._limit:
                    raise ResourceLimitError(
                        self._path, f"the deflated dataset inflates to more than max_decoded_bytes="
                        f"{format_bytes(self._limit)}; pass {adapter_option_hint('max_decoded_bytes', 'N')} to allow "
                        "more",
                    )
                if self.inflated % (64 << 20) < len(out):
                    check_time_budget(f"inflating, {format_bytes(self.inflated)} so far")
                return out
        return b""

    def _fill(self, upto: int | None) -> None:
        while upto is None or len(self._buffer) < upto:
            out = self._next(_INFLATE_STEP if upto is None else upto - len(self._buffer))
            if not out:
                return
            self._buffer += out

    def read(self, size: int | None = -1) -> bytes:
        end = None if size is None or size < 0 else self._position + size
        self._fill(end)
        data = bytes(self._buffer[self._position : end])
        self._position += len(data)
        return data

    def readinto(self, target: Any) -> int:
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            self._fill(None)
            offset += len(self._buffer)
        elif whence == io.SEEK_CUR:
            offset += self._position
        self._position = max(0, offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def at_end(self) -> bool:
        self._fill(self._position + 1)
        return self._position >= len(self._buffer)

    def count_ahead(self, count: int) -> int:
        """How many of the next ``count`` bytes (from the current position) the stream holds.

        Bytes past what is buffered are inflated and dropped (nothing is kept): the header
        pass checks the pixel data is all there without holding it. Ends this reader's use.
        """
        have = max(0, len(self._buffer) - self._position)
        del self._buffer[:]
        total = have
        while total < count:
            out = self._next(count - total)
            if not out:
                break
            total += len(out)
        return min(total, count)


def _read_deflated(
    path: str, handle: Any, limit: int, *, stop_before_pixels: bool
) -> tuple[FileDataset, _InflatingReader]:
    """Read a deflated file with pydicom's dataset reader over a capped, incremental inflater."""
    bounded = _BoundedReader(handle, os.fstat(handle.fileno()).st_size)
    bounded.seek(0)
    preamble = read_preamble(bounded, False)
    file_meta = _read_file_meta_info(bounded)
    reader = _InflatingReader(handle, path, limit)
    dataset = read_dataset(reader, False, True, stop_when=_at_pixel_data if stop_before_pixels else None)
    ds = FileDataset(path, dataset, preamble, file_meta, False, True)
    return ds, reader


def _check_deflated_pixel_data(
    path: str, reader: _InflatingReader, ds: Dataset, size: int, limits: _Limits
) -> tuple[int | None, dict[str, Any]]:
    """The deflated stream holds a Pixel Data element with every byte the header declares."""
    head = reader.read(8)
    if len(head) < 8:
        raise AdapterError(path, "has image attributes but no Pixel Data element (missing or truncated)")
    group, element = struct.unpack("<HH", head[:4])
    tag = group << 16 | element
    if tag not in _PIXEL_TAGS:
        raise AdapterError(path, f"corrupt file: element ({group:04X},{element:04X}) where Pixel Data was expected")
    extra = reader.read(4)
    if len(extra) < 4:
        raise AdapterError(path, "truncated inside the Pixel Data element header")
    (length,) = struct.unpack("<L", extra)
    if length == 0xFFFFFFFF:
        raise AdapterError(path, "corrupt file: undefined-length Pixel Data in a deflated (native) file")
    _check_native_length(path, ds, length)
    expected = get_expected_length(ds)
    if expected > DEFLATE_MAX_RATIO * size:
        raise AdapterError(
            path, f"the header declares {expected} bytes of pixel data, but a {size}-byte deflated file can hold "
            f"at most about {DEFLATE_MAX_RATIO * size} (deflate cannot exceed {DEFLATE_MAX_RATIO}:1): wrong "
            "Rows/Columns/NumberOfFrames"
        )
    if limits.max_compression_ratio is not None:
        check_limit(path, round(expected / max(1, size)), round(limits.max_compression_ratio), "max_compression_ratio",
                    f"the ratio of the {format_bytes(expected)} of pixel data declared to the {format_bytes(size)} "
                    "file (an almost constant image or a decompression bomb)")
    available = reader.count_ahead(expected)
    if available < expected:
        raise AdapterError(
            path, f"truncated: the deflated Pixel Data holds {available} bytes, the header declares {expected}"
        )
    return None, {}


def _check_pixel_data(
    path: str, handle: Any, ds: Dataset, syntax: UID, offset: int, size: int
) -> tuple[int | None, dict[str, Any]]:
    """Strict reading: the pixel element exists and holds every byte the header declares.

    Returns where its value starts (``None`` for deflated files) and the element's keyword/VR
    for the decoder.
    """
    if not syntax.is_transfer_syntax:
        return None, {}  # unknown UID: refused by _check_decoders, naming it, if this series is chosen
    handle.seek(offset)
    head = handle.read(8)
    if len(head) < 8:
        raise AdapterError(path, "has image attributes but no Pixel Data element (missing, or the file is truncated)")
    endian = "<" if syntax.is_little_endian else ">"
    group, element = struct.unpack(f"{endian}HH", head[:4])
    tag = group << 16 | element
    if tag not in _PIXEL_TAGS:
        raise AdapterError(path, f"corrupt file: element ({group:04X},{element:04X}) where Pixel Data was expected")
    element_info = {"pixel_keyword": _PIXEL_KEYWORDS[tag]}
    if syntax.is_implicit_VR:
        (length,) = struct.unpack(f"{endian}L", head[4:8])
        start = offset + 8
    else:
        extra = handle.read(4)
        if len(extra) < 4:
            raise AdapterError(path, "truncated inside the Pixel Data element header")
        (length,) = struct.unpack(f"{endian}L", extra)
        start = offset + 12
        element_info["pixel_vr"] = head[4:6].decode("ascii", "replace")
    available = size - start
    if length == 0xFFFFFFFF:
        if not syntax.is_encapsulated:
            raise AdapterError(path, f"corrupt file: undefined-length Pixel Data in native syntax {syntax.name}")
        stored = _check_fragments(path, handle, start, size)
        if syntax == pydicom.uid.RLELossless:
            expected = get_expected_length(ds)
            if expected > RLE_MAX_RATIO * stored:
                raise AdapterError(
                    path, f"the header declares {expected} bytes of pixel data ({ds.Rows} x {ds.Columns} px), but "
                    f"its {stored} bytes of RLE data can decode to at most {RLE_MAX_RATIO * stored} (RLE expands at "
                    f"most {RLE_MAX_RATIO}:1): wrong Rows/Columns/NumberOfFrames or corrupt data",
                )
        return start, element_info
    if syntax.is_encapsulated:
        raise AdapterError(path, f"corrupt file: {syntax.name} needs encapsulated Pixel Data, found a defined length")
    if length > available:
        raise AdapterError(
            path, f"truncated: {_PIXEL_TAGS[tag]} declares {length} bytes but only {available} remain in the file"
        )
    _check_native_length(path, ds, length)
    return start, element_info


def _check_native_length(path: str, ds: Dataset, length: int) -> None:
    try:
        expected = get_expected_length(ds)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise AdapterError(path, f"incomplete Image Pixel module, cannot size the pixel data ({exc})") from exc
    if length < expected:
        frames = int(ds.get("NumberOfFrames") or 1)
        raise AdapterError(
            path,
            f"Pixel Data holds {length} bytes but the header declares {ds.Rows} x {ds.Columns} pixels x "
            f"{frames} frame(s) x {ds.SamplesPerPixel} sample(s) x {ds.BitsAllocated} bits = {expected} bytes "
            "(truncated data or wrong Rows/Columns)",
        )


def _check_fragments(path: str, handle: Any, start: int, size: int) -> int:
    """Walk the item headers of encapsulated pixel data; every fragment must end inside the file.

    Returns the bytes held by the items (offset table and fragments).
    """
    position = start
    stored = 0
    items = 0
    while True:
        items += 1
        if items % 4096 == 0:
            check_time_budget(f"walking the Pixel Data fragments, item {items}")
        handle.seek(position)
        head = handle.read(8)
        if len(head) < 8:
            raise AdapterError(path, "truncated: encapsulated Pixel Data ends without its sequence delimiter")
        group, element, length = struct.unpack("<HHL", head)
        if (group, element) == (0xFFFE, 0xE0DD):
            return stored
        if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            raise AdapterError(
                path, f"corrupt encapsulated Pixel Data: bad item ({group:04X},{element:04X}) at byte {position}"
            )
        position += 8 + length
        stored += length
        if position > size:
            raise AdapterError(
                path, f"truncated: a Pixel Data fragment of {length} bytes runs past the end of the file"
            )


def _records(path: str, ds: Dataset, syntax: UID, location: tuple[int | None, dict[str, Any]]) -> list[_Slice]:
    """One record per image: per frame for multi-frame objects (functional groups first)."""
    n_frames = int(ds.get("NumberOfFrames") or 1)
    if n_frames < 1:
        raise AdapterError(path, f"NumberOfFrames is {n_frames}")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) != n_frames:
        raise AdapterError(
            path, f"declares {n_frames} frames but has {len(per_frame)} Per-frame Functional Groups items"
        )
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    rows, columns = int(ds.Rows), int(ds.Columns)
    photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip().upper()
    image_type = tuple(str(v).upper() for v in _as_list(ds.get("ImageType")))
    lut = None
    if "ModalityLUTSequence" in ds or photometric == "PALETTE COLOR":
        lut = Dataset()
        for element in ds.group_dataset(0x0028):
            lut.add(element)
    padding = _padding_range(ds)
    top_position = _floats(ds.get("ImagePositionPatient"), 3)
    top_orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    offsets = _floats(ds.get("GridFrameOffsetVector"), n_frames) if n_frames > 1 else None
    has_per_frame_position = per_frame is not None and _group_value(
        per_frame[0], None, "PlanePositionSequence", "ImagePositionPatient"
    ) is not None

    common = {
        "path": path,
        "series_uid": str(ds.get("SeriesInstanceUID") or ""),
        "series_description": str(ds.get("SeriesDescription") or ""),
        "modality": str(ds.get("Modality") or ""),
        "sop_uid": str(ds.get("SOPInstanceUID") or ""),
        "instance_number": _int_or_none(ds.get("InstanceNumber")),
        "rows": rows,
        "columns": columns,
        "samples": int(ds.get("SamplesPerPixel") or 1),
        "photometric": photometric,
        "transfer_syntax": syntax,
        "lut": lut,
        "padding": padding,
        "spacing_between_slices": _float_or_none(ds.get("SpacingBetweenSlices")),
        "pixel_offset": location[0],
        "pixel_options": {**as_pixel_options(ds), **location[1], "transfer_syntax_uid": syntax}
        if syntax.is_transfer_syntax else {},
    }
    records = []
    for index in range(n_frames):
        item = per_frame[index] if per_frame is not None else None

        orientation = _floats(_group_value(item, shared, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        orientation = top_orientation if orientation is None else orientation
        position = _floats(_group_value(item, shared, "PlanePositionSequence", "ImagePositionPatient"), 3)
        if position is None:
            position = top_position
            if n_frames > 1 and not has_per_frame_position:
                if offsets is not None and position is not None and orientation is not None:
                    position = position + offsets[index] * _normal(orientation, path)
                else:
                    position = None  # frames without their own position: ordered by frame index
        frame_type = _as_list(_group_value(item, shared, "CTImageFrameTypeSequence", "FrameType")) + _as_list(
            _group_value(item, shared, "MRImageFrameTypeSequence", "FrameType")
        )
        centre = _first_float(_frame_value(ds, item, shared, "FrameVOILUTSequence", "WindowCenter"))
        width = _first_float(_frame_value(ds, item, shared, "FrameVOILUTSequence", "WindowWidth"))
        function = _frame_value(ds, item, shared, "FrameVOILUTSequence", "VOILUTFunction")
        function = str(function or "LINEAR").strip().upper()
        voi = None
        if centre is not None and width is not None and width > 0:
            voi = (centre, width, "sigmoid" if function == "SIGMOID" else "linear")
        slope = _float_or_none(_frame_value(ds, item, shared, "PixelValueTransformationSequence", "RescaleSlope"))
        intercept = _float_or_none(
            _frame_value(ds, item, shared, "PixelValueTransformationSequence", "RescaleIntercept")
        )
        spacing = _floats(_frame_value(ds, item, shared, "PixelMeasuresSequence", "PixelSpacing"), 2)
        records.append(
            _Slice(
                frame=index if n_frames > 1 else None,
                position=position,
                orientation=orientation,
                pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
                slope=1.0 if slope is None or slope == 0 else slope,
                intercept=0.0 if intercept is None else intercept,
                voi=voi,
                is_localizer="LOCALIZER" in image_type or "LOCALIZER" in (str(v).upper() for v in frame_type),
                **common,
            )
        )
    return records


def _group_value(item: Dataset | None, shared: Dataset | None, sequence: str, keyword: str) -> Any:
    """``keyword`` from the frame's functional group ``sequence``, else from the shared groups."""
    for groups in (item, shared):
        if groups is not None and sequence in groups:
            seq = groups[sequence].value
            if seq and keyword in seq[0]:
                return seq[0][keyword].value
    return None


def _frame_value(ds: Dataset, item: Dataset | None, shared: Dataset | None, sequence: str, keyword: str) -> Any:
    """The frame's functional-group value, else the shared groups', else the top-level attribute."""
    found = _group_value(item, shared, sequence, keyword)
    return ds.get(keyword) if found is None else found


def _padding_range(ds: Dataset) -> tuple[float, float] | None:
    value = _first_float(ds.get("PixelPaddingValue"))
    if value is None:
        return None
    limit = _first_float(ds.get("PixelPaddingRangeLimit"))
    bits = int(ds.get("BitsAllocated") or 16)
    if int(ds.get("PixelRepresentation") or 0) == 1:  # US/SS ambiguity: reinterpret as signed
        value = value - 2**bits if value >= 2 ** (bits - 1) else value
        if limit is not None and limit >= 2 ** (bits - 1):
            limit -= 2**bits
    if limit is None:
        return (value, value)
    return (min(value, limit), max(value, limit))


# ---------------------------------------------------------------------- geometry
def _order_slices(
    slices: list[_Slice], allow_non_parallel: bool, warnings: list[str]
) -> tuple[list[_Slice], dict[str, Any]]:
    """Drop localizers, check parallelism, sort along the normal, report gaps/tilt/duplicates."""
    geometry: dict[str, Any] = {"normal": None, "slice_spacing": None, "plane": None, "order": None}
    localizers = [s for s in slices if s.is_localizer]
    if localizers and len(localizers) < len(slices):
        warnings.append(f"dropped {len(localizers)} localizer image(s) (ImageType LOCALIZER): {_names(localizers)}")
        slices = [s for s in slices if not s.is_localizer]
    elif localizers:
        warnings.append("the series consists of localizer (scout) images only")

    located = [s for s in slices if s.position is not None and s.orientation is not None]
    if len(located) < len(slices):
        if located:
            missing = [s for s in slices if s.position is None or s.orientation is None]
            raise AdapterError(
                missing[0].path,
                f"{len(missing)} of {len(slices)} images lack ImagePositionPatient/ImageOrientationPatient; "
                "the series cannot be ordered in space",
            )
        if len(slices) > 1:
            warnings.append(
                "no ImagePositionPatient/ImageOrientationPatient: slices ordered by InstanceNumber "
                "(then frame); gaps and orientation cannot be checked"
            )
        geometry["order"] = "InstanceNumber (no geometry)"
        ordered = sorted(slices, key=lambda s: (_sortable(s.instance_number), s.path, s.frame or 0))
        return ordered, geometry

    normals = np.stack([_normal(s.orientation, s.path) for s in slices])  # (N, 3)
    keys = [tuple(np.round(n, 2)) for n in normals]
    main_key = Counter(keys).most_common(1)[0][0]
    reference = _unit(normals[[k == main_key for k in keys]].mean(axis=0))
    angles = np.degrees(np.arccos(np.clip(np.abs(normals @ reference), 0.0, 1.0)))
    off = angles > PARALLEL_TOLERANCE_DEG
    if off.any():
        strays = [s for s, o in zip(slices, off) if o]
        few = len(strays) <= max(2, int(0.05 * len(slices))) and len(strays) < len(slices) / 2
        if few and angles[off].min() >= LOCALIZER_MIN_ANGLE_DEG:
            warnings.append(
                f"dropped {len(strays)} image(s) whose orientation differs from the series by "
                f"{angles[off].min():.0f}-{angles[off].max():.0f} degrees (localizers): {_names(strays)}"
            )
            keep = ~off
            slices = [s for s, k in zip(slices, keep) if k]
            normals, angles = normals[keep], angles[keep]
            reference = _unit(normals.mean(axis=0))
            angles = np.degrees(np.arccos(np.clip(np.abs(normals @ reference), 0.0, 1.0)))
        elif allow_non_parallel:
            warnings.append(
                f"{len(strays)} of {len(slices)} images are not parallel to the main stack (up to "
                f"{angles.max():.1f} degrees); kept and ordered along the main normal ({adapter_option_hint('allow_non_parallel')})"
            )
        else:
            raise AdapterError(
                strays[0].path,
                f"slices are not parallel: {len(strays)} of {len(slices)} images of series "
                f"{slices[0].series_uid or '<no SeriesInstanceUID>'} deviate from the main orientation by up to "
                f"{angles.max():.1f} degrees, so they are not one volume; choose one stack "
                f"({adapter_option_hint('series_uid', 'UID')}) or pass {adapter_option_hint('allow_non_parallel')} "
                "to order them along the main normal anyway",
            )
    else:
        reference = _unit(normals.mean(axis=0))
        angles = np.degrees(np.arccos(np.clip(np.abs(normals @ reference), 0.0, 1.0)))
    if angles.max() > ANGLE_NOISE_DEG and angles.max() <= PARALLEL_TOLERANCE_DEG:
        warnings.append(f"slices are not exactly parallel (normals differ by up to {angles.max():.2f} degrees)")

    positions = np.stack([s.position for s in slices])  # (N, 3)
    along = positions @ reference  # (N,)
    order = sorted(
        range(len(slices)), key=lambda i: (along[i], _sortable(slices[i].instance_number), slices[i].frame or 0)
    )
    ordered = [slices[i] for i in order]
    along = along[order]
    geometry.update(normal=reference, plane=_plane(reference), order="ImagePositionPatient along the slice normal")
    if len(ordered) > 1:
        _check_spacing(ordered, along, warnings, geometry)
        span = positions[order[-1]] - positions[order[0]]
        if np.linalg.norm(span) > DUPLICATE_MM:
            tilt = math.degrees(math.acos(min(1.0, abs(float(np.dot(_unit(span), reference))))))
            if tilt > TILT_TOLERANCE_DEG:
                warnings.append(
                    f"slice positions run at {tilt:.1f} degrees to the slice normal (gantry tilt or sheared stack); "
                    "spacing is measured along the normal"
                )
    elif ordered[0].spacing_between_slices:
        geometry["slice_spacing"] = ordered[0].spacing_between_slices
    return ordered, geometry


def _check_spacing(ordered: list[_Slice], along: np.ndarray, warnings: list[str], geometry: dict[str, Any]) -> None:
    steps = np.diff(along)  # (N-1,) mm, >= 0 after sorting
    duplicate = steps < DUPLICATE_MM
    if duplicate.any():
        warnings.append(
            f"{int(duplicate.sum())} image(s) share a position with their neighbour (several echoes, phases or "
            "acquisitions in one series?); they are kept in InstanceNumber order"
        )
    distinct = steps[~duplicate]
    if distinct.size == 0:
        return
    median = float(np.median(distinct))
    geometry["slice_spacing"] = round(median, 6)
    gap_at = [i for i in range(len(steps)) if not duplicate[i] and steps[i] > GAP_FACTOR * median]
    for i in gap_at[:5]:
        missing = max(1, round(steps[i] / median) - 1)
        warnings.append(
            f"gap of {steps[i]:.2f} mm between slices at {along[i]:.2f} mm and {along[i + 1]:.2f} mm "
            f"(median spacing {median:.2f} mm: about {missing} missing slice(s)); "
            f"files {Path(ordered[i].path).name} -> {Path(ordered[i + 1].path).name}"
        )
    if len(gap_at) > 5:
        warnings.append(f"... and {len(gap_at) - 5} more gap(s)")
    irregular = [
        i for i in range(len(steps))
        if not duplicate[i] and i not in gap_at and abs(steps[i] - median) > IRREGULAR_FRACTION * median
    ]
    if irregular:
        values = steps[irregular]
        warnings.append(
            f"irregular spacing: {len(irregular)} step(s) deviate more than {IRREGULAR_FRACTION:.0%} from the "
            f"median {median:.2f} mm (from {values.min():.2f} to {values.max():.2f} mm)"
        )


def _plane(normal: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(normal)))
    name = ("sagittal", "coronal", "axial")[axis]
    return name if abs(normal[axis]) >= math.cos(math.radians(25)) else f"oblique (closest: {name})"


def _check_decoders(ordered: list[_Slice]) -> None:
    """Refuse, before decoding anything, pixel data no installed decoder can read."""
    seen: set[str] = set()
    for record in ordered:
        syntax = record.transfer_syntax
        if syntax in seen:
            continue
        seen.add(syntax)
        if not syntax.is_transfer_syntax:
            raise UnsupportedSourceError(
                record.path, f"unknown transfer syntax UID {syntax}: no DICOM decoder exists for it"
            )
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError as exc:
            raise UnsupportedSourceError(
                record.path, f"transfer syntax {syntax.name} ({syntax}) cannot be decoded by pydicom"
            ) from exc
        if not decoder.is_available:
            raise MissingDependencyError(
                record.path,
                f"pixel data is compressed with transfer syntax '{syntax.name}' ({syntax}) and no installed "
                f"decoder supports it; install the optional DICOM decoders: {CODECS_HINT} "
                f"(pydicom can use: {'; '.join(decoder.missing_dependencies)})",
            )


# ---------------------------------------------------------------------- decoding
def _decode(items: list[tuple[int, _Slice]], limit: int) -> Iterator[tuple[int, _Slice, np.ndarray]]:
    """Decode the listed images one file at a time: ``(slot, record, stored values)``.

    Values are the stored pixel values, shape ``(rows, columns)`` or ``(rows, columns, 3)``
    (YBR converted to RGB by pydicom). Each file is opened once and its decoder reads from the
    pixel data offset found by the header pass (no second header parse); frames of a
    multi-frame file are decoded in file order, only those asked for.
    """
    by_file: dict[str, list[tuple[int, _Slice]]] = {}
    for slot, record in items:
        by_file.setdefault(record.path, []).append((slot, record))
    for path, entries in by_file.items():
        syntax = entries[0][1].transfer_syntax
        entries.sort(key=lambda e: e[1].frame or 0)
        check_time_budget(f"decoding, {len(entries)} image(s) of this file to go")
        confine(path)
        try:
            if syntax.is_deflated:
                # The dataset is zlib-compressed as a whole: this one file is inflated in memory
                # (within max_decoded_bytes, checked by the header pass).
                with open_confined(path, what="DICOM file") as handle:  # pixel data <= limit (header pass); + room for the header
                    full, reader = _read_deflated(path, handle, limit + (16 << 20), stop_before_pixels=False)
                del reader
                array = full.pixel_array
                decoded = [array if r.frame is None else array[r.frame] for _, r in entries]
                for (slot, record), raw in zip(entries, decoded):
                    yield slot, record, _checked_shape(path, record, raw)
                continue
            decoder = get_decoder(syntax)
            with open_confined(path, what="DICOM file") as handle:
                for slot, record in entries:
                    check_time_budget("decoding")
                    handle.seek(record.pixel_offset)  # type: ignore[arg-type]
                    raw, _ = decoder.as_array(handle, index=record.frame, validate=True, **record.pixel_options)
                    yield slot, record, _checked_shape(path, record, raw)
        except (AdapterError, ResourceLimitError):
            raise
        except MemoryError:
            raise  # the load's guard reports it as a resource limit
        except Exception as exc:  # decoder errors: corrupt codestream, truncated fragments...
            decoder = get_decoder(syntax)
            if syntax.is_compressed and decoder.missing_dependencies and "not support" in str(exc):
                # e.g. 12-bit JPEG Extended: Pillow is installed but does not support this variant.
                raise MissingDependencyError(
                    path,
                    f"the installed decoders cannot decode this '{syntax.name}' ({syntax}) pixel data "
                    f"({type(exc).__name__}: {exc}); install the optional DICOM decoders: {CODECS_HINT}",
                ) from exc
            raise AdapterError(path, f"cannot decode pixel data ({syntax.name}): {type(exc).__name__}: {exc}") from exc


def _checked_shape(path: str, record: _Slice, raw: np.ndarray) -> np.ndarray:
    if raw.ndim == 3 and raw.shape[0] == 1 and record.samples == 1:
        raw = raw[0]  # a single frame asked of a one-frame object
    if raw.shape[:2] != (record.rows, record.columns):
        declared = (record.rows, record.columns)
        raise AdapterError(path, f"decoded frame has shape {raw.shape}, the header declares {declared}")
    return raw


def _modality_values(raw: np.ndarray, record: _Slice) -> np.ndarray:
    """Stored values -> modality values (HU for CT): ``(rows, columns)``, float32 unless untouched."""
    if record.lut is not None and "ModalityLUTSequence" in record.lut:
        return np.asarray(apply_modality_lut(raw, record.lut), dtype=np.float32)
    if record.slope == 1.0 and record.intercept == 0.0:
        return raw
    values = raw.astype(np.float32)
    if record.slope != 1.0:
        values *= np.float32(record.slope)
    values += np.float32(record.intercept)
    return values


def _grey_planes(
    raw: np.ndarray, record: _Slice, windows: list[Window], luts: dict[tuple[Any, ...], np.ndarray | None]
) -> list[np.ndarray]:
    """One uint8 plane per window. 8/16-bit integer data with a linear rescale goes through a
    lookup table (stored value -> grey, built once per series) instead of per-pixel float math;
    the result is identical, see :func:`longllava_plugins.windowing.window_lut`."""
    linear = record.lut is None or "ModalityLUTSequence" not in record.lut
    if linear and raw.dtype.kind in "iu" and raw.dtype.itemsize <= 2:
        planes = []
        for window in windows:
            key = (raw.dtype.str, record.slope, record.intercept, window)
            if key not in luts:
                if len(luts) >= _LUT_CACHE_SIZE:
                    luts.clear()
                luts[key] = window_lut(window, raw.dtype, record.slope, record.intercept)
            table = luts[key]
            if table is None:
                break
            planes.append(apply_lut(raw, table))
        else:
            return planes
    values = _modality_values(raw, record)
    return [apply_window(values, window) for window in windows]


def _invalid_mask(raw: np.ndarray, record: _Slice) -> np.ndarray | None:
    """True where a pixel carries no data: padding (on stored values) or non-finite (float data)."""
    mask = None
    if record.padding is not None:
        low, high = record.padding
        mask = raw == low if low == high else (raw >= low) & (raw <= high)
    if raw.dtype.kind == "f":
        bad = ~np.isfinite(raw)
        if bad.any():
            mask = bad if mask is None else mask | bad
    if mask is not None and not mask.any():
        return None
    return mask


def _is_colour(record: _Slice) -> bool:
    return record.samples == 3 or record.photometric == "PALETTE COLOR"


def _colour_image(raw: np.ndarray, record: _Slice) -> Image.Image:
    rgb = apply_color_lut(raw, record.lut) if record.photometric == "PALETTE COLOR" else raw
    if rgb.dtype != np.uint8:
        top = float(np.max(rgb)) if rgb.size else 0.0
        bits = max(8, int(math.ceil(math.log2(top + 1))) if top > 0 else 8)
        rgb = (rgb.astype(np.float32) * (255.0 / (2**bits - 1)) + 0.5).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")


# ---------------------------------------------------------------------- small helpers
def _normal(orientation: np.ndarray, path: str = "<series>") -> np.ndarray:
    """Unit slice normal ``row x column`` from the six direction cosines."""
    normal = np.cross(orientation[:3], orientation[3:])
    length = float(np.linalg.norm(normal))
    if length < 1e-6:
        raise AdapterError(path, f"degenerate ImageOrientationPatient {[float(v) for v in orientation]}")
    return normal / length


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / float(np.linalg.norm(vector))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


def _floats(value: Any, count: int) -> np.ndarray | None:
    items = _as_list(value)
    if len(items) != count:
        return None
    try:
        array = np.array([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array if np.isfinite(array).all() else None


def _first_float(value: Any) -> float | None:
    items = _as_list(value)
    return _float_or_none(items[0]) if items else None


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _sortable(number: int | None) -> float:
    return float("inf") if number is None else float(number)


def _names(records: list[_Slice], limit: int = 3) -> str:
    names = [Path(r.path).name + (f"[frame {r.frame}]" if r.frame is not None else "") for r in records[:limit]]
    return ", ".join(names) + (f" and {len(records) - limit} more" if len(records) > limit else "")


def _series_line(uid: str, group: list[_Slice]) -> str:
    first = group[0]
    localizers = sum(s.is_localizer for s in group)
    extra = f", {localizers} localizer(s)" if localizers else ""
    return (
        f"{uid or '<no SeriesInstanceUID>'}  '{first.series_description}'  {first.modality or '?'}  "
        f"{len(group)} image(s){extra}  (e.g. {Path(first.path).name})"
    )


def _windows_label(windows: Sequence[Window]) -> str:
    if len(windows) == 1:
        return windows[0].label
    return " ".join(f"{c}={w.label}" for c, w in zip("RGB", windows))


def _describe(source: Source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    items = list(source)
    return f"{items[0]} (+{len(items) - 1} more)" if len(items) > 1 else (str(items[0]) if items else "<empty list>")


def _has_dicm_marker(path: Path) -> bool:
    with open_confined(path, what="DICOM file") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _folder_has_dicom(folder: Path, limit: int = 64) -> bool:
    checked = 0
    for path in local_files.regular_files(folder, root=current_allowed_root(), recursive=True, what="DICOM file"):
        if _has_dicm_marker(path):
            return True
        checked += 1
        if checked >= limit:
            return False
    return False


@hookimpl
def longllava_register_adapters() -> list[type[InputAdapter]]:
    """Register :class:`DicomSeriesAdapter` (entry point ``dicom`` in the ``longllava_sdk`` group)."""
    return [DicomSeriesAdapter]
