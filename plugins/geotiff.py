"""GeoTIFF scenes as a global thumbnail plus a grid of georeferenced tiles (rasterio).

The ``geotiff`` adapter turns one GeoTIFF (satellite or aerial scene, DEM, land-cover map)
into a ``tiled`` :class:`~longllava_sdk.media.Media`: ``images[0]`` is a thumbnail of the
whole scene, then tiles of ``tile_size`` source pixels every ``stride`` pixels, row-major
from the top-left, with ``grid = (rows, cols)``. It is built for scenes far larger than
memory: the raster is never read whole.

Reading
    * **Only GeoTIFF, only local.** The file must start with a TIFF or BigTIFF signature
      (``II*\\0``, ``MM\\0*``, ``II+\\0``, ``MM\\0+``) and is opened with GDAL's ``GTiff``
      driver alone. A GDAL VRT (XML that can point at any file or URL) is refused even when
      renamed ``.tif``, and so are ``/vsi*`` virtual paths and URLs (``http://``,
      ``s3://``...).
    * **Checked before GDAL opens it.** The TIFF directories are read with ``struct``
      (:mod:`longllava_plugins.tiff_layout`): the declared size against ``max_pixels``, the
      samples per pixel against ``max_bands``, the decoded bytes of one strip/tile (all
      samples of a pixel-interleaved block) against ``max_decoded_bytes``, and the strip/tile
      tables against the image size and the file (count, every block inside the file,
      uncompressed blocks complete). A header that disagrees with the data is an
      :class:`~longllava_sdk.errors.AdapterError`, never a partial or zero-filled read.
    * **No sidecars, no network.** GDAL runs with ``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``
      and ``GDAL_PAM_ENABLED=NO``, so no ``.ovr``, ``.msk``, ``.aux.xml`` or world file next
      to the TIFF is read (``sidecars=True`` allows ``.ovr``/``.msk`` files that are real TIFFs
      inside the allowed root, and ``.aux.xml``), and with ``CPL_VSIL_CURL_ALLOWED_EXTENSIONS``
      matching nothing plus ``GDAL_HTTP_*`` timeouts of a second, so ``/vsicurl/`` and its
      relatives never connect, whatever a file references.
    * **Bands** by 1-based index (``bands=(4, 3, 2)``) or by name (``bands=("B4", "B3",
      "B2")``): names match band descriptions case-insensitively, and Sentinel-2 style names
      are normalised, so ``"B4"`` finds a band described ``"B04"`` or ``"B4 - Red"`` and
      ``"B8A"`` finds ``"B8A"``. Give one band (rendered grey) or three (R, G, B). Default:
      B4/B3/B2 when the descriptions have them, else the bands whose colour interpretation
      is red/green/blue, else the first three (or the only) non-alpha bands. A single
      paletted band (land-cover maps) is rendered through its colour table.
    * **Masks.** GDAL's per-band mask is honoured: the nodata value, an internal or external
      mask band, or an alpha band; NaN and infinities count as missing too. Missing pixels
      are black and never enter statistics. Each tile's ``valid_fraction`` (share of its
      area holding valid data, area outside the raster counting as missing) is in its
      metadata.

Contrast
    A per-band percentile stretch (2-98 % by default) maps each band to 0..255. The
    percentiles are computed on one decimated read of the scene (at most ``stats_max_side``
    pixels on the long side, served from the internal overviews when present), excluding
    missing pixels, so every tile uses the *same* stretch and tiles are comparable.
    ``value_range=(lo, hi)`` fixes the range for all bands instead (e.g. ``(0, 3000)`` for
    Sentinel-2 L2A reflectance); ``percentiles=None`` uses the data type's range for
    integers and the min/max for floats. The stretch used is in ``info["stretch"]``.

Tiles
    Windows are read one at a time (``rasterio`` windowed reads: only the blocks under the
    window are decoded). Tiles reaching past the right or bottom edge are padded with
    missing (black) pixels, so the grid stays regular and a raster smaller than one tile
    gives a single padded tile. Tiles are delivered at ``output_size`` pixels (default 336,
    the vision encoder's input; GDAL's ``average`` resampling, or the overviews, do the
    reduction; smaller tiles are enlarged after rendering) so hundreds of tiles stay small;
    ``output_size=None`` keeps the native
    ``tile_size``. Each tile's metadata holds ``row``, ``col``, ``window`` (its
    ``(col_off, row_off, width, height)`` in source pixels), ``bounds`` (its
    ``(left, bottom, right, top)`` in the raster's CRS, from ``rasterio.windows.bounds``)
    and ``valid_fraction``. ``drop_empty=0.05`` drops tiles with less than 5 % valid area;
    the kept tiles keep their ``row``/``col`` so the processor still renders the grid rows.

Budget
    ``max_images`` counts the thumbnail plus every tile of the grid (before ``drop_empty``,
    so the result does not depend on the data); ``max_tiles`` (default 1024) caps the grid
    too, when ``max_images`` is ``None`` or larger. When the grid is too large a GIS analyst
    wants to know, not to get silently missing tiles, so holes are never made:
    ``on_budget="coarsen"`` (default) grows the tile size and stride by the same factor
    until the grid fits, keeping full coverage at a coarser ground resolution (reported in
    ``info["effective_tile_size"]``, ``info["effective_stride"]`` and ``info["warnings"]``);
    ``on_budget="error"`` raises an :class:`~longllava_sdk.errors.AdapterError` naming the
    grid, the budget and a ``tile_size``/``stride`` that would fit.

Limits (checked from the header before the reads; each a keyword argument)
    ``max_pixels`` (2^34) per image, ``max_bands`` (1024) samples per pixel, ``max_tiles``
    (1024) tiles, ``max_decoded_bytes`` (1 GiB: the output images at 4 bytes per pixel, the
    largest read, and any single strip/tile), ``time_budget_s`` (60 s of CPU time, checked
    between tiles). Over a limit: :class:`~longllava_sdk.errors.ResourceLimitError` naming
    the option.

Source-level facts in ``info``: ``crs`` (e.g. ``"EPSG:32633"``, ``None`` when not
georeferenced), ``transform`` (GDAL order), ``res``, ``bounds``, ``width``, ``height``,
``count``, ``dtype``, ``bands`` (indexes used), ``band_names``, ``nodata``, ``stretch``,
``tile_size``, ``stride``, ``output_size``, ``n_tiles``, ``n_dropped``, ``warnings``.

Example::

    from longllava_plugins.geotiff import GeoTiffAdapter

    adapter = GeoTiffAdapter(bands=("B4", "B3", "B2"), tile_size=512, drop_empty=0.05)
    media = adapter.load("S2A_T33UUP_20240601.tif", max_images=257)
    media.grid                   # (rows, cols)
    media.metadata[1]["bounds"]  # first tile, in the scene's CRS
"""

from __future__ import annotations

import math
import re
import struct
import warnings
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from PIL import Image

from longllava_sdk.adapters import (
    DEFAULT_MAX_DECODED_BYTES,
    DEFAULT_TIME_BUDGET_S,
    RGB_BYTES_PER_PIXEL,
    InputAdapter,
    Source,
    check_limit,
    check_time_budget,
    confine,
    format_bytes,
    guarded_claims,
    guarded_load,
    local_source,
    open_confined,
    validate_limit,
)
from longllava_sdk.errors import AdapterError, adapter_option_hint
from longllava_sdk.hookspecs import hookimpl
from longllava_sdk.media import Media
from longllava_plugins.tiff_layout import inspect_tiff

TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: Tags whose presence makes a TIFF a GeoTIFF (pixel scale, tie point, transformation, geokeys).
GEO_TAGS = frozenset({33550, 33922, 34264, 34735})
#: 2**34 pixels (e.g. 131072 x 131072): larger declared sizes are treated as decompression bombs.
DEFAULT_MAX_PIXELS = 2**34
#: Hyperspectral scenes have a few hundred bands; more is treated as a corrupt header.
DEFAULT_MAX_BANDS = 1024
#: Tiles per scene when ``max_images`` does not bound the grid more tightly.
DEFAULT_MAX_TILES = 1024
#: Decoded size over stored size above which a raster is refused (almost all constant or
#: sparse: a decompression bomb). Deflate itself cannot exceed about 1032:1.
DEFAULT_MAX_COMPRESSION_RATIO = 1000.0
#: GDAL configuration for every SDK read: no sidecar files, no network.
GDAL_SAFE_OPTIONS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing: no .ovr/.msk/.aux.xml/world file
    "GDAL_PAM_ENABLED": "NO",  # no .aux.xml read or written
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".longllava-network-disabled",  # /vsicurl/ & co. open nothing
    "GDAL_HTTP_TIMEOUT": "1",
    "GDAL_HTTP_CONNECTTIMEOUT": "1",
    "GDAL_HTTP_MAX_RETRY": "0",
    "GDAL_HTTP_PROXY": "",
    "CPL_VSIL_CURL_USE_HEAD": "NO",
    "GDAL_ENABLE_WMS_CACHE": "NO",
}
#: Sidecar files GDAL would look for next to ``scene.tif`` (``sidecars=True`` only).
_SIDECAR_SUFFIXES = (".ovr", ".msk")
_S2_NAME = re.compile(r"^B0*([1-9][0-9]?)(A?)(?![0-9A-Z])")

BandSpec = Sequence[int | str]


# ---------------------------------------------------------------------------------------
# header sniffing (no GDAL involved)
# ---------------------------------------------------------------------------------------
def _read_head(path: Path, size: int = 16) -> bytes:
    with open_confined(path, what="GeoTIFF file") as handle:
        return handle.read(size)


def _first_ifd_tags(path: Path) -> set[int] | None:
    """Tag numbers of the first IFD of a (Big)TIFF, or ``None`` if the header is not TIFF."""
    try:
        with open_confined(path, what="GeoTIFF file") as handle:  # a FIFO is refused, never blocks
            head = handle.read(16)
            if head[:4] not in TIFF_SIGNATURES:
                return None
            order = "<" if head[:2] == b"II" else ">"
            big = head[2:4] in (b"+\x00", b"\x00+")
            offset = struct.unpack(order + ("Q" if big else "I"), head[8:16] if big else head[4:8])[0]
            handle.seek(offset)
            count_raw = handle.read(8 if big else 2)
            count = struct.unpack(order + ("Q" if big else "H"), count_raw)[0]
            entry = 20 if big else 12
            raw = handle.read(entry * min(count, 4096))
            return {
                struct.unpack(order + "H", raw[i : i + 2])[0] for i in range(0, len(raw) - entry + 1, entry)
            }
    except (OSError, struct.error):
        return None


def _sniff(path: Path) -> None:
    """Refuse anything that is not a (Big)TIFF before GDAL sees it."""
    head = _read_head(path, 64)
    if not head:
        raise AdapterError(path, "empty file")
    if head[:4] in TIFF_SIGNATURES:
        return
    stripped = head.lstrip()
    if stripped.startswith(b"<VRTDataset") or stripped.startswith(b"<"):
        raise AdapterError(
            path,
            "is a GDAL VRT / XML file, not a TIFF: VRTs can point at other files and network "
            "sources, so only real GeoTIFF files are opened",
        )
    raise AdapterError(path, f"not a TIFF file (no TIFF/BigTIFF signature; starts with {head[:8]!r})")


# ---------------------------------------------------------------------------------------
# band selection and contrast
# ---------------------------------------------------------------------------------------
def canonical_band_name(name: str) -> str:
    """``"B04"`` / ``"b4 - red"`` -> ``"B4"``, ``"B8A"`` -> ``"B8A"``; other names upper-cased."""
    text = name.strip().upper()
    match = _S2_NAME.match(text)
    return f"B{match.group(1)}{match.group(2)}" if match else text


def resolve_bands(
    requested: BandSpec | None,
    descriptions: Sequence[str | None],
    colorinterp: Sequence[Any],
    path: Path | str = "<raster>",
) -> list[int]:
    """1-based band indexes for ``requested`` (indexes or names), or the default bands."""
    from rasterio.enums import ColorInterp

    count = len(descriptions)
    non_alpha = [i for i in range(1, count + 1) if colorinterp[i - 1] != ColorInterp.alpha]
    exact = {d.strip().lower(): i for i, d in enumerate(descriptions, 1) if d}
    canonical: dict[str, list[int]] = {}
    for i, d in enumerate(descriptions, 1):
        if d:
            canonical.setdefault(canonical_band_name(d), []).append(i)
    if requested is None:
        if all(len(canonical.get(b, ())) == 1 for b in ("B4", "B3", "B2")):
            return [canonical[b][0] for b in ("B4", "B3", "B2")]
        rgb = [colorinterp.index(ci) + 1 for ci in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
               if ci in colorinterp]
        if len(rgb) == 3:
            return rgb
        if not non_alpha:
            raise AdapterError(path, "raster has only alpha bands")
        return non_alpha[:3] if len(non_alpha) >= 3 else non_alpha[:1]
    if isinstance(requested, (str, int)):
        requested = [requested]
    requested = list(requested)
    if len(requested) not in (1, 3):
        raise AdapterError(path, f"select 1 band (grey) or 3 bands (R, G, B), got {len(requested)}: {requested}")
    resolved: list[int] = []
    for item in requested:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not 1 <= int(item) <= count:
                raise AdapterError(path, f"band index {item} out of range 1..{count} (indexes are 1-based)")
            resolved.append(int(item))
            continue
        if not isinstance(item, str):
            raise AdapterError(path, f"band {item!r} is neither an index nor a name")
        if exact.get(item.strip().lower()):
            resolved.append(exact[item.strip().lower()])
            continue
        matches = canonical.get(canonical_band_name(item), [])
        if len(matches) == 1:
            resolved.append(matches[0])
            continue
        named = [f"{i}={d!r}" for i, d in enumerate(descriptions, 1) if d]
        if len(matches) > 1:
            raise AdapterError(path, f"band name {item!r} matches several bands {matches}: use indexes")
        if not named:
            raise AdapterError(
                path, f"band name {item!r} needs band descriptions, and this file has none: use indexes 1..{count}"
            )
        raise AdapterError(path, f"no band named {item!r}; bands: {', '.join(named)}")
    return resolved


def _valid_mask(data: np.ma.MaskedArray) -> np.ndarray:
    """(bands, h, w) masked read -> (bands, h, w) bool, True where valid and finite."""
    values = np.ma.getdata(data)
    valid = ~np.ma.getmaskarray(data)
    if np.issubdtype(values.dtype, np.floating):
        valid &= np.isfinite(values)
    return valid


def _dtype_range(dtype: np.dtype) -> tuple[float, float]:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return 0.0, 1.0


def compute_stretch(
    data: np.ma.MaskedArray,
    percentiles: tuple[float, float] | None,
    value_range: tuple[float, float] | None,
) -> list[tuple[float, float]]:
    """Per-band ``(lo, hi)`` from a (decimated) masked read ``(bands, h, w)``, missing pixels excluded."""
    valid = _valid_mask(data)
    values = np.ma.getdata(data)
    ranges: list[tuple[float, float]] = []
    for band in range(values.shape[0]):
        if value_range is not None:
            lo, hi = float(value_range[0]), float(value_range[1])
        else:
            samples = values[band][valid[band]]
            if samples.size == 0:
                lo, hi = _dtype_range(values.dtype)
            elif percentiles is None:
                if np.issubdtype(values.dtype, np.integer):
                    lo, hi = _dtype_range(values.dtype)
                else:
                    lo, hi = float(samples.min()), float(samples.max())
            else:
                lo, hi = (float(v) for v in np.percentile(samples.astype(np.float64), percentiles))
        if not hi > lo:  # constant band: centre it instead of dividing by zero
            lo, hi = lo - 0.5, lo + 0.5
        ranges.append((lo, hi))
    return ranges


def render_rgb(
    data: np.ma.MaskedArray,
    stretch: list[tuple[float, float]] | None,
    palette: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Masked ``(bands, h, w)`` -> ``(h, w, 3)`` uint8 RGB (missing = black) and the valid mask."""
    valid_bands = _valid_mask(data)
    valid = valid_bands.all(axis=0)
    values = np.ma.getdata(data)
    if palette is not None:
        index = np.clip(values[0], 0, len(palette) - 1).astype(np.intp)
        rgb = palette[index]
    else:
        assert stretch is not None
        channels = []
        for band, (lo, hi) in enumerate(stretch):
            scaled = (values[band].astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
            channels.append(np.clip(np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0), 0, 255))
        if len(channels) == 1:
            channels *= 3
        rgb = np.round(np.stack(channels, axis=-1)).astype(np.uint8)
    rgb[~valid] = 0
    return rgb, valid


# ---------------------------------------------------------------------------------------
# grid
# ---------------------------------------------------------------------------------------
def grid_shape(width: int, height: int, tile: int, stride: int) -> tuple[int, int]:
    """``(rows, cols)`` of windows of ``tile`` every ``stride`` covering the raster (last ones padded)."""
    rows = 1 + math.ceil(max(0, height - tile) / stride)
    cols = 1 + math.ceil(max(0, width - tile) / stride)
    return rows, cols


def fit_grid(width: int, height: int, tile: int, stride: int, max_tiles: int) -> tuple[int, int]:
    """Smallest ``(tile', stride')``, scaled together from ``(tile, stride)``, whose grid has <= ``max_tiles``."""

    def count(t: int) -> int:
        rows, cols = grid_shape(width, height, t, max(1, math.ceil(t * stride / tile)))
        return rows * cols

    low, high = tile, max(tile, width, height)
    while low < high:
        mid = (low + high) // 2
        if count(mid) <= max_tiles:
            high = mid
        else:
            low = mid + 1
    return low, max(1, math.ceil(low * stride / tile))


class GeoTiffAdapter(InputAdapter):
    """One GeoTIFF -> thumbnail + row-major grid of georeferenced tiles (kind ``tiled``).

    Args:
        bands: 1 or 3 bands, by 1-based index or by name (band description or Sentinel-2
            name such as ``"B4"``/``"B8A"``); ``None`` picks true colour when it can.
        tile_size: tile side in source pixels.
        stride: step between tiles in source pixels (``None`` = ``tile_size``; smaller
            values overlap tiles).
        output_size: side of each delivered tile image (``None`` = ``tile_size``).
        percentiles: per-band stretch percentiles, or ``None`` for the data range.
        value_range: fixed ``(lo, hi)`` stretch for every band (overrides ``percentiles``).
        drop_empty: drop tiles whose valid area fraction is below this (``None`` keeps all).
        on_budget: ``"coarsen"`` or ``"error"`` when the grid exceeds ``max_images - 1``.
        max_pixels: refuse rasters declaring more pixels than this.
        stats_max_side: long side of the decimated read used for statistics and thumbnail.
        resampling: GDAL resampling for reduced reads (``"average"``, ``"bilinear"``,
            ``"nearest"``...); paletted (categorical) bands always use ``"nearest"``.
        palette: render a single paletted band through its colour table.
        gdal_cache_mb: GDAL block cache for this read (bounds memory on huge scenes).
        max_bands: refuse files declaring more samples per pixel than this.
        max_tiles: most tiles per scene (the grid is coarsened, or ``on_budget="error"``
            raises, beyond it); ``None`` leaves only ``max_images``.
        max_decoded_bytes: bound on the decoded data of the source: output images
            (4 bytes per pixel), the largest single read, and any one strip/tile.
        time_budget_s: CPU seconds one ``load`` may use, checked between tiles (``None``:
            unlimited).
        max_compression_ratio: refuse rasters whose decoded size is more than this many
            times the bytes stored for them (sparse blocks store none).
        sidecars: also read ``scene.tif.ovr`` / ``scene.tif.msk`` (only when they are TIFFs
            inside the allowed root) and ``.aux.xml`` metadata; off by default.
    """

    name = "geotiff"
    kind = "tiled"
    #: what a remote client may choose (never a limit: see InputAdapter.client_options)
    client_options = ("bands", "percentiles", "value_range", "drop_empty", "resampling", "palette", "max_tiles")
    data_error_libraries = {"rasterio": "rasterio/GDAL", "affine": "rasterio/GDAL"}
    extensions = (".tif", ".tiff", ".gtif", ".gtiff")
    priority = 50  # before the generic images adapter, which also reads .tif

    def __init__(
        self,
        *,
        bands: BandSpec | None = None,
        tile_size: int = 336,
        stride: int | None = None,
        output_size: int | None = 336,
        percentiles: tuple[float, float] | None = (2.0, 98.0),
        value_range: tuple[float, float] | None = None,
        drop_empty: float | None = None,
        on_budget: Literal["coarsen", "error"] = "coarsen",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        stats_max_side: int = 1024,
        resampling: str = "average",
        palette: bool = True,
        gdal_cache_mb: int = 64,
        max_bands: int = DEFAULT_MAX_BANDS,
        max_tiles: int | None = DEFAULT_MAX_TILES,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
        time_budget_s: float | None = DEFAULT_TIME_BUDGET_S,
        max_compression_ratio: float | None = DEFAULT_MAX_COMPRESSION_RATIO,
        sidecars: bool = False,
    ) -> None:
        from rasterio.enums import Resampling

        if tile_size < 1:
            raise ValueError(f"tile_size must be >= 1, got {tile_size}")
        if stride is not None and stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if output_size is not None and output_size < 1:
            raise ValueError(f"output_size must be >= 1, got {output_size}")
        if percentiles is not None and not 0 <= percentiles[0] < percentiles[1] <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {percentiles}")
        if value_range is not None and not value_range[1] > value_range[0]:
            raise ValueError(f"value_range must be (lo, hi) with hi > lo, got {value_range}")
        if drop_empty is not None and not 0 <= drop_empty <= 1:
            raise ValueError(f"drop_empty is a fraction in [0, 1], got {drop_empty}")
        if on_budget not in ("coarsen", "error"):
            raise ValueError(f"on_budget must be 'coarsen' or 'error', got {on_budget!r}")
        try:
            self.resampling = Resampling[resampling]
        except KeyError:
            raise ValueError(f"unknown resampling {resampling!r}; one of {[r.name for r in Resampling]}") from None
        self.bands = bands
        self.tile_size = tile_size
        self.stride = stride or tile_size
        self.output_size = output_size
        self.percentiles = None if percentiles is None else (float(percentiles[0]), float(percentiles[1]))
        self.value_range = value_range
        self.drop_empty = drop_empty
        self.on_budget = on_budget
        self.max_pixels = max_pixels
        self.stats_max_side = stats_max_side
        self.palette = palette
        self.gdal_cache_mb = gdal_cache_mb
        self.max_pixels = validate_limit("max_pixels", max_pixels, allow_none=False)
        self.max_bands = validate_limit("max_bands", max_bands, allow_none=False)
        self.max_tiles = validate_limit("max_tiles", max_tiles)
        self.max_decoded_bytes = validate_limit("max_decoded_bytes", max_decoded_bytes, allow_none=False)
        self.time_budget_s = validate_limit("time_budget_s", time_budget_s, integer=False)
        self.max_compression_ratio = validate_limit("max_compression_ratio", max_compression_ratio, integer=False)
        self.sidecars = bool(sidecars)

    def _gdal_options(self) -> dict[str, Any]:
        options: dict[str, Any] = dict(GDAL_SAFE_OPTIONS)
        if self.sidecars:
            options["GDAL_DISABLE_READDIR_ON_OPEN"] = "FALSE"
            options["GDAL_PAM_ENABLED"] = "YES"
        # rasterio hands an int GDAL_CACHEMAX to GDALSetCacheMax64: bytes, not MB
        options["GDAL_CACHEMAX"] = self.gdal_cache_mb * 1024 * 1024
        return options

    def _check_sidecars(self, path: Path) -> None:
        """With ``sidecars=True``: external overviews/masks must be TIFFs inside the allowed root."""
        for suffix in _SIDECAR_SUFFIXES:
            for candidate in (path.with_name(path.name + suffix), path.with_suffix(suffix)):
                if candidate.exists():
                    confine(candidate)
                    with open_confined(candidate, what="sidecar file") as handle:
                        head = handle.read(4)
                    if head not in TIFF_SIGNATURES:
                        raise AdapterError(
                            candidate, f"sidecar {suffix} file is not a TIFF (a VRT or other format could point at "
                            "other files or the network); remove it or read with "
                            f"{adapter_option_hint('sidecars', False)}",
                        )
                    inspect_tiff(candidate, max_pixels=self.max_pixels, max_bands=self.max_bands,
                                 max_block_bytes=self.max_decoded_bytes)
        confine(path)  # errors name the scene again
    @classmethod
    @guarded_claims
    def claims(cls, path: Path) -> bool:
        """``.tif``/``.tiff`` that carry GeoTIFF tags, or that are not TIFFs at all (to explain why)."""
        if not super().claims(path):
            return False
        confine(path)
        tags = _first_ifd_tags(path)
        return tags is None or bool(tags & GEO_TAGS)

    # -----------------------------------------------------------------------------------
    @guarded_load
    def load(self, source: Source, *, max_images: int | None = None) -> Media:
        """Read one GeoTIFF into a thumbnail + tiles :class:`Media` (see the module docstring)."""
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioError

        if max_images is not None and max_images < 2:
            raise AdapterError(
                str(source), f"a tiled scene needs max_images >= 2 (thumbnail + tiles), got {max_images}"
            )
        path = local_source(source, "geotiff", what="GeoTIFF file")
        _sniff(path)
        layout = inspect_tiff(path, max_pixels=self.max_pixels, max_bands=self.max_bands,
                              max_block_bytes=self.max_decoded_bytes)
        main = layout.images[0]
        if self.max_compression_ratio is not None and main.decoded_bytes > self.max_compression_ratio * max(
            1, main.stored_bytes
        ):
            ratio = main.decoded_bytes / max(1, main.stored_bytes)
            sparse = f", {main.n_sparse} of {main.n_blocks} blocks sparse (not stored)" if main.n_sparse else ""
            check_limit(
                path, round(ratio), round(self.max_compression_ratio), "max_compression_ratio",
                f"the decoded-to-stored size ratio ({format_bytes(main.decoded_bytes)} decoded from "
                f"{format_bytes(main.stored_bytes)} of blocks{sparse}; an almost empty raster or a decompression bomb)",
            )
        if self.sidecars:
            self._check_sidecars(path)
        with rasterio.Env(**self._gdal_options()), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            # rasterio.windows.bounds uses affine's deprecated `*`; not ours to fix
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            try:
                src = rasterio.open(path, driver="GTiff")
            except RasterioError as exc:
                raise AdapterError(path, f"cannot read as GeoTIFF: GDAL cannot open it ({exc})") from exc
            with src:
                if src.driver != "GTiff":  # belt and braces: never read through another driver
                    raise AdapterError(path, f"opened by GDAL driver {src.driver!r}, only GTiff is allowed")
                media = self._load(src, path, max_images)
        sparse = layout.images[0].n_sparse
        if sparse:
            media.info["warnings"].append(
                f"{sparse} of {layout.images[0].n_blocks} blocks are sparse (not written: read as nodata/zero)"
            )
        return media

    def _load(self, src: Any, path: Path, max_images: int | None) -> Media:
        from rasterio.enums import ColorInterp, Resampling
        from rasterio.windows import Window, bounds as window_bounds

        width, height = src.width, src.height
        if width * height > self.max_pixels:
            raise AdapterError(
                path,
                f"declares {width}x{height} = {width * height:,} pixels, over max_pixels={self.max_pixels:,} "
                f"(possible decompression bomb); pass {adapter_option_hint('max_pixels', 'N')} to allow it",
            )
        check_limit(path, src.count, self.max_bands, "max_bands", "the number of bands")
        dtype = np.dtype(src.dtypes[0])
        if np.issubdtype(dtype, np.complexfloating):
            raise AdapterError(path, f"complex data ({dtype}) cannot be rendered as an image; convert it first")
        warnings_: list[str] = []
        bands = resolve_bands(self.bands, src.descriptions, src.colorinterp, path)
        palette = None
        if self.palette and len(bands) == 1 and src.colorinterp[bands[0] - 1] == ColorInterp.palette:
            try:
                palette = _palette_lut(src.colormap(bands[0]))
            except ValueError:
                palette = None
        resampling = Resampling.nearest if palette is not None else self.resampling

        # Plan the grid first: every limit is checked before the first pixel read.
        scale = min(1.0, self.stats_max_side / max(width, height))
        stats_shape = (len(bands), max(1, round(height * scale)), max(1, round(width * scale)))
        out_side = self.output_size or self.tile_size
        tile, stride = self.tile_size, self.stride
        rows, cols = grid_shape(width, height, tile, stride)
        caps = [(max_images - 1, "max_images")] if max_images is not None else []
        if self.max_tiles is not None:
            caps.append((self.max_tiles, "max_tiles"))
        budget, budget_name = min(caps) if caps else (None, "")
        if budget is not None and rows * cols > budget:
            fit_tile, fit_stride = fit_grid(width, height, tile, stride, budget)
            if self.on_budget == "error":
                limit = (f"the budget of {budget} (max_images={max_images} minus the thumbnail)"
                         if budget_name == "max_images" else f"max_tiles={budget}")
                raise AdapterError(
                    path,
                    f"{width}x{height} px with tile_size={tile}, stride={stride} gives a {rows}x{cols} grid "
                    f"= {rows * cols} tiles, over {limit}; use tile_size={fit_tile}, stride={fit_stride}, raise "
                    f"{budget_name}, or on_budget='coarsen'",
                )
            warnings_.append(
                f"{rows}x{cols} grid exceeds the budget of {budget} tiles ({budget_name}): "
                f"tile_size {tile}->{fit_tile}, "
                f"stride {stride}->{fit_stride} (coarser ground resolution, full coverage)"
            )
            tile, stride = fit_tile, fit_stride
            rows, cols = grid_shape(width, height, tile, stride)
            if self.output_size is None:
                out_side = self.tile_size  # keep the requested pixel size per tile image
        factor = out_side / tile
        side = out_side if factor < 1 else tile
        itemsize = dtype.itemsize + 1 + 4  # values, mask, float32 rendering
        largest_read = len(bands) * max(side * side, stats_shape[1] * stats_shape[2]) * itemsize
        outputs = (1 + rows * cols) * out_side * out_side * RGB_BYTES_PER_PIXEL
        check_limit(
            path, outputs + largest_read, self.max_decoded_bytes, "max_decoded_bytes",
            f"the decoded data ({rows * cols} tile(s) + thumbnail of {out_side} x {out_side} px, and a read of "
            f"{len(bands)} band(s) x {side} x {side} px)", unit="bytes",
            hint="lower max_images / max_tiles, or raise tile_size",
        )

        # One decimated read (overviews when present) for the statistics and the thumbnail.
        overview = self._read(src, path, bands, None, stats_shape, Resampling.nearest)
        stretch = None if palette is not None else compute_stretch(overview, self.percentiles, self.value_range)
        if not _valid_mask(overview).any():
            warnings_.append("no valid pixel in the decimated read: the scene looks empty (all nodata)")
        thumb_rgb, _ = render_rgb(overview, stretch, palette)
        del overview
        thumbnail = Image.fromarray(thumb_rgb)
        thumbnail.thumbnail((out_side, out_side), Image.Resampling.LANCZOS)

        images: list[Image.Image] = [thumbnail]
        metadata: list[dict[str, Any]] = [
            {"role": "global", "window": (0, 0, width, height), "bounds": tuple(src.bounds), "size": (width, height)}
        ]
        dropped = 0
        for row in range(rows):
            for col in range(cols):
                check_time_budget(f"at tile row {row}, column {col} of {rows}x{cols}")
                col_off, row_off = col * stride, row * stride
                read_w, read_h = min(tile, width - col_off), min(tile, height - row_off)
                window = Window(col_off, row_off, read_w, read_h)
                # Reduce in GDAL (overview-aware, reads only this window's blocks); enlarge in PIL.
                out_w = max(1, min(side, round(read_w * side / tile)))
                out_h = max(1, min(side, round(read_h * side / tile)))
                data = self._read(
                    src, path, bands, window, (len(bands), out_h, out_w),
                    resampling if (out_w, out_h) != (read_w, read_h) else Resampling.nearest,
                )
                rgb, valid = render_rgb(data, stretch, palette)
                del data
                valid_fraction = float(valid.sum()) / float(side * side)
                if self.drop_empty is not None and valid_fraction < self.drop_empty:
                    dropped += 1
                    continue
                canvas = np.zeros((side, side, 3), np.uint8)
                canvas[:out_h, :out_w] = rgb
                tile_image = Image.fromarray(canvas)
                if side != out_side:
                    enlarge = Image.Resampling.NEAREST if palette is not None else Image.Resampling.BICUBIC
                    tile_image = tile_image.resize((out_side, out_side), enlarge)
                images.append(tile_image)
                full = Window(col_off, row_off, tile, tile)
                metadata.append({
                    "row": row, "col": col,
                    "window": (col_off, row_off, tile, tile),
                    "bounds": tuple(float(v) for v in window_bounds(full, src.transform)),
                    "valid_fraction": round(valid_fraction, 6),
                })
        if dropped:
            warnings_.append(f"dropped {dropped} of {rows * cols} tiles with valid fraction < {self.drop_empty}")
        info = {
            "crs": src.crs.to_string() if src.crs else None,
            "transform": tuple(src.transform.to_gdal()),
            "res": tuple(src.res),
            "bounds": tuple(src.bounds),
            "width": width, "height": height, "count": src.count, "dtype": str(dtype),
            "bands": bands,
            "band_names": [src.descriptions[b - 1] for b in bands],
            "nodata": src.nodata,
            "stretch": stretch,
            "palette": palette is not None,
            "tile_size": self.tile_size, "stride": self.stride,
            "effective_tile_size": tile, "effective_stride": stride,
            "output_size": out_side,
            "n_tiles": rows * cols, "n_dropped": dropped,
            "overviews": src.overviews(bands[0]),
            "warnings": warnings_,
        }
        return Media("tiled", images, metadata, source=str(path), grid=(rows, cols), info=info)

    @staticmethod
    def _read(src: Any, path: Path, bands: list[int], window: Any, out_shape: tuple[int, int, int],
              resampling: Any) -> np.ma.MaskedArray:
        from rasterio.errors import RasterioError

        try:
            return src.read(bands, window=window, out_shape=out_shape, masked=True, resampling=resampling)
        except (RasterioError, OSError, ValueError) as exc:
            where = "decimated overview read" if window is None else (
                f"window col_off={window.col_off}, row_off={window.row_off}, {window.width}x{window.height}"
            )
            detail = str(exc.__cause__ or exc.__context__ or exc)
            raise AdapterError(path, f"read failed ({where}): {detail}; the file may be truncated or corrupt") from exc


def _palette_lut(colormap: dict[int, tuple[int, ...]]) -> np.ndarray:
    size = max(256, max(colormap) + 1)
    lut = np.zeros((size, 3), np.uint8)
    for value, color in colormap.items():
        lut[value] = color[:3]
    return lut


@hookimpl
def longllava_register_adapters() -> list[type[InputAdapter]]:
    """Register the GeoTIFF adapter."""
    return [GeoTiffAdapter]
