"""The needle-in-a-haystack heatmap: accuracy by number of images (x) and needle depth (y).

Drawn with Pillow (a core dependency, so ``eval niah`` draws it on the plain install), red
(0 %) through yellow to green (100 %) like the paper's figure, every cell annotated with its
percentage, a colour bar on the right; a cell without a value stays grey.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont

from .store import atomic_write_bytes

__all__ = ["write_heatmap", "cell_colour"]

#: red (0 %) -> light orange (50 %) -> green (100 %), the paper's scale
_STOPS = ((0.0, (215, 48, 31)), (0.5, (253, 212, 158)), (1.0, (26, 152, 80)))
_CELL = (64, 30)  # width, height of one cell in pixels
_MARGIN = (90, 40, 110, 60)  # left, top, right (colour bar), bottom
_INK, _EMPTY = (40, 40, 40), (200, 200, 200)


def cell_colour(value: float) -> tuple[int, int, int]:
    """The colour of a cell holding ``value`` (0..1, clipped): linear between the scale's stops."""
    value = min(1.0, max(0.0, float(value)))
    for (low, a), (high, b) in zip(_STOPS, _STOPS[1:]):
        if value <= high:
            t = (value - low) / (high - low)
            return tuple(round(x + (y - x) * t) for x, y in zip(a, b))  # type: ignore[return-value]
    return _STOPS[-1][1]


def write_heatmap(cells: Sequence[dict[str, Any]], path: str | os.PathLike[str], *, metric: str = "accuracy",
                  title: str = "") -> Path:
    """Write a PNG of ``metric`` per (``num_images``, ``depth``) cell; returns ``path``.

    Args:
        cells: one dict per cell with ``num_images``, ``depth`` and ``metric`` (0..1).
        title: drawn above the plot.
    """
    counts = sorted({int(c["num_images"]) for c in cells})
    depths = sorted({float(c["depth"]) for c in cells})
    grid: dict[tuple[int, int], float] = {}
    for cell in cells:
        value = cell.get(metric)
        if value is not None and math.isfinite(float(value)):
            grid[depths.index(float(cell["depth"])), counts.index(int(cell["num_images"]))] = float(value)
    left, top, right, bottom = _MARGIN
    width = left + _CELL[0] * max(1, len(counts)) + right
    height = top + _CELL[1] * max(1, len(depths)) + bottom
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for row in range(len(depths)):
        for col in range(len(counts)):
            x0, y0 = left + col * _CELL[0], top + row * _CELL[1]
            value = grid.get((row, col))
            draw.rectangle([x0, y0, x0 + _CELL[0] - 1, y0 + _CELL[1] - 1],
                           fill=_EMPTY if value is None else cell_colour(value), outline="white")
            if value is not None:
                draw.text((x0 + _CELL[0] / 2, y0 + _CELL[1] / 2), f"{100 * value:.0f}", fill=_INK, font=font,
                          anchor="mm")
    plot_right, plot_bottom = left + _CELL[0] * len(counts), top + _CELL[1] * len(depths)
    for col, count in enumerate(counts):
        draw.text((left + (col + 0.5) * _CELL[0], plot_bottom + 6), str(count), fill=_INK, font=font, anchor="mt")
    for row, depth in enumerate(depths):
        draw.text((left - 6, top + (row + 0.5) * _CELL[1]), f"{100 * depth:.0f}%", fill=_INK, font=font, anchor="rm")
    draw.text(((left + plot_right) / 2, height - 18), "number of images", fill=_INK, font=font, anchor="mm")
    draw.text((8, top - 22), "needle depth", fill=_INK, font=font)
    if title:
        draw.text((width / 2, 8), title, fill=_INK, font=font, anchor="mt")
    # colour bar: 0 at the bottom, 1 at the top
    bar_x = plot_right + 30
    bar_height = max(60, plot_bottom - top)
    for y in range(bar_height):
        draw.line([(bar_x, top + y), (bar_x + 14, top + y)], fill=cell_colour(1 - y / max(1, bar_height - 1)))
    for fraction in (0.0, 0.5, 1.0):
        y = top + (1 - fraction) * (bar_height - 1)
        draw.text((bar_x + 20, y), f"{100 * fraction:.0f}%", fill=_INK, font=font, anchor="lm")
    draw.text((bar_x, top + bar_height + 6), metric, fill=_INK, font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())
