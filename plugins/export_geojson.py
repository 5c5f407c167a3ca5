"""Exporter ``geojson``: GeoChat boxes in an answer about a GeoTIFF scene -> GeoJSON polygons on the map.

``longllava-sdk export geojson --raster SCENE --answer TEXT --output OUT.geojson`` writes an
RFC 7946 FeatureCollection with one Polygon per ``{<x1><y1><x2><y2>|<theta>}`` box of the
answer (grammar: :mod:`longllava_plugins.geochat_boxes`).

Which pixels a box means
    The 0-100 grid spans the image the model saw as the scene: the ``geotiff`` adapter's
    ``images[0]``, a thumbnail of the **whole raster** that keeps its aspect ratio (the tiles
    after it are detail views of the same extent). So ``x`` runs over the raster's width and
    ``y`` over its height: pixel column ``x / 100 * width``, row ``y / 100 * height``, whatever
    the tile size, stride or thumbnail size of the run. (A box about one tile would need the
    tile named in the answer; GeoChat's format has no such field.)

Rotation
    ``theta`` rotates the box about its centre, in degrees, in pixel space with rows running
    down: positive is clockwise as the image is shown (north up for a north-up raster).
    The rotation is applied to the pixel rectangle before georeferencing.

Georeferencing
    Each edge of the (rotated) pixel rectangle is densified (:data:`EDGE_POINTS` points), taken
    through the raster's affine transform to its CRS, then through
    ``rasterio.warp.transform`` to EPSG:4326 (WGS84), longitude first. The exterior ring is
    closed and counter-clockwise (RFC 7946's right-hand rule). Each feature has a ``bbox``.

Properties of each feature
    ``label`` (the phrase before the box), ``box`` (the 0-100 box ``[x1, y1, x2, y2]``),
    ``theta``, ``pixel_box`` (``[col_min, row_min, col_max, row_max]`` of the unrotated box in
    source pixels), ``source_crs`` (the raster's CRS as text), ``text`` (the box as written),
    ``index`` (its order in the answer). The collection's top-level ``properties`` hold the
    answer, the raster file name, its size and CRS.

The raster's header only is read (size, transform, CRS), by GDAL's GTiff driver alone, with
no sidecar files. An answer without a box is an :class:`~longllava_sdk.errors.InputError`
(nothing to put on a map), as is a malformed box (naming the answer).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from longllava_sdk import hookimpl
from longllava_sdk.errors import InputError
from longllava_sdk.exporters import Exporter, ExportResult
from longllava_plugins.geochat_boxes import GRID, BoxSyntaxError, GeoBox, parse_boxes
from longllava_plugins.tiff_layout import is_tiff

#: Points per edge of a box's ring (corners included): a box in a projected CRS maps to a
#: curve in longitude / latitude, so straight edges are densified.
EDGE_POINTS = 8
#: Decimal places of the coordinates (7 places of a degree: ~1 cm).
PRECISION = 7


def raster_geometry(path: Path) -> tuple[int, int, Any, Any]:
    """``(width, height, affine transform, CRS)`` of a GeoTIFF, from its header only.

    Raises:
        InputError: not a TIFF, unreadable by GDAL's GTiff driver, or without a CRS.
    """
    import rasterio
    from rasterio.errors import RasterioIOError

    if not path.is_file():
        raise InputError(path, "is not a file; --raster names a GeoTIFF scene")
    if not is_tiff(path):
        raise InputError(path, "is not a TIFF file (a GeoTIFF starts with a TIFF signature)")
    env = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_PAM_ENABLED": "NO",
           "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".none"}
    try:
        with rasterio.Env(**env), rasterio.open(path, driver="GTiff") as src:
            width, height, transform, crs = src.width, src.height, src.transform, src.crs
    except RasterioIOError as exc:
        raise InputError(path, f"GDAL cannot read it as a GeoTIFF: {exc}") from exc
    if crs is None:
        raise InputError(path, "has no coordinate reference system; its boxes cannot be placed on a map")
    if transform.is_identity:
        raise InputError(path, "has no georeferencing transform (pixel coordinates only)")
    return width, height, transform, crs


def box_pixel_ring(box: GeoBox, width: int, height: int, edge_points: int = EDGE_POINTS) -> list[tuple[float, float]]:
    """The box's outline in source pixels ``(col, row)``: rotated, densified, closed.

    Corners in order top-left, top-right, bottom-right, bottom-left (before rotation), so the
    ring runs clockwise on screen, counter-clockwise once rows point north (see the module
    docstring); the last point repeats the first.
    """
    left, right = box.x1 / GRID * width, box.x2 / GRID * width
    top, bottom = box.y1 / GRID * height, box.y2 / GRID * height
    cx, cy = (left + right) / 2, (top + bottom) / 2
    corners = [(left, top), (right, top), (right, bottom), (left, bottom)]
    ring = []
    for (ax, ay), (bx, by) in zip(corners, corners[1:] + corners[:1]):
        for step in range(edge_points - 1):
            t = step / (edge_points - 1)
            ring.append((ax + (bx - ax) * t, ay + (by - ay) * t))
    angle = math.radians(box.theta)
    cos, sin = math.cos(angle), math.sin(angle)
    rotated = [(cx + (x - cx) * cos - (y - cy) * sin, cy + (x - cx) * sin + (y - cy) * cos) for x, y in ring]
    return rotated + rotated[:1]


def _signed_area(ring: list[list[float]]) -> float:
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:])) / 2


def box_feature(box: GeoBox, index: int, width: int, height: int, transform: Any, crs: Any) -> dict[str, Any]:
    """One GeoJSON Feature (Polygon in EPSG:4326, RFC 7946) for ``box`` on a raster of that geometry."""
    from rasterio.transform import xy
    from rasterio.warp import transform as warp

    pixels = box_pixel_ring(box, width, height)
    # offset="ul": a pixel coordinate (col, row) is a point on the grid lines, not a pixel centre
    xs, ys = xy(transform, [row for _, row in pixels], [col for col, _ in pixels], offset="ul")
    lons, lats = warp(crs, "EPSG:4326", list(xs), list(ys))
    ring = [[round(lon, PRECISION), round(lat, PRECISION)] for lon, lat in zip(lons, lats)]
    ring[-1] = ring[0]  # rounding must not open the ring
    if _signed_area(ring) < 0:  # RFC 7946 section 3.1.6: exterior rings counter-clockwise
        ring.reverse()
    lon_values, lat_values = [p[0] for p in ring], [p[1] for p in ring]
    return {
        "type": "Feature",
        "bbox": [min(lon_values), min(lat_values), max(lon_values), max(lat_values)],
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "index": index,
            "label": box.label,
            "box": [box.x1, box.y1, box.x2, box.y2],
            "theta": box.theta,
            "pixel_box": [round(box.x1 / GRID * width, 3), round(box.y1 / GRID * height, 3),
                          round(box.x2 / GRID * width, 3), round(box.y2 / GRID * height, 3)],
            "source_crs": crs.to_string(),
            "text": box.text,
        },
    }


class GeoJsonExporter(Exporter):
    """GeoChat boxes in an answer about a GeoTIFF scene -> an RFC 7946 FeatureCollection of polygons."""

    name = "geojson"
    description = ("GeoJSON (RFC 7946, EPSG:4326): one polygon per GeoChat {<x1><y1><x2><y2>|<theta>} box of the "
                   "answer, placed through the raster's transform and CRS")
    source_kind = "tiled"
    source_option = "raster"
    source_help = "the GeoTIFF scene the answer is about (its boxes are on a 0-100 grid over the whole scene)"
    suffixes = (".geojson", ".json")

    def check_source(self, source: Path) -> None:
        raster_geometry(source)

    def export(self, source: Path, answer: str, output: Path) -> ExportResult:
        try:
            boxes = parse_boxes(answer)
        except BoxSyntaxError as exc:
            raise InputError(None, f"answer {_shown(answer)}: {exc}") from None
        if not boxes:
            raise InputError(None, f"answer {_shown(answer)} holds no {{<x1><y1><x2><y2>|<theta>}} box to export")
        width, height, transform, crs = raster_geometry(source)
        features = [box_feature(box, index, width, height, transform, crs) for index, box in enumerate(boxes)]
        collection = {
            "type": "FeatureCollection",
            "properties": {"answer": answer, "raster": source.name, "width": width, "height": height,
                           "source_crs": crs.to_string()},
            "features": features,
        }
        with open(output, "w", encoding="utf-8") as handle:
            json.dump(collection, handle, ensure_ascii=False, indent=1)
            handle.write("\n")
        return ExportResult(exporter=self.name, output=output,
                            summary=f"{len(features)} polygon(s) in EPSG:4326 from {source.name} ({crs.to_string()})",
                            details={"features": len(features), "source_crs": crs.to_string()})


def _shown(answer: str, limit: int = 120) -> str:
    return repr(answer if len(answer) <= limit else answer[:limit] + "...")


@hookimpl
def longllava_register_exporters() -> list[type[Exporter]]:
    return [GeoJsonExporter]
