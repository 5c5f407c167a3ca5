"""The needle-in-a-haystack heatmap: accuracy by number of images (x) and needle depth (y).

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend switch,
so it never disturbs an interactive session), red (0 %) to green (100 %) like the paper's
figure, every cell annotated with its percentage. matplotlib is the ``[eval]`` extra.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, option_hint
from .store import atomic_write_bytes

__all__ = ["write_heatmap", "require_matplotlib"]


def require_matplotlib() -> None:
    """Raise :class:`ConfigError` (with the fix) when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ConfigError("the heatmap needs matplotlib: pip install 'longllava-sdk[eval]', or pass "
                          f"{option_hint('heatmap', False)}") from exc


def write_heatmap(cells: Sequence[dict[str, Any]], path: str | os.PathLike[str], *, metric: str = "accuracy",
                  title: str = "") -> Path:
    """Write a PNG of ``metric`` per (``num_images``, ``depth``) cell; returns ``path``.

    Args:
        cells: one dict per cell with ``num_images``, ``depth`` and ``metric`` (0..1).
        title: drawn above the plot.
    """
    require_matplotlib()
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.figure import Figure

    counts = sorted({int(c["num_images"]) for c in cells})
    depths = sorted({float(c["depth"]) for c in cells})
    grid = np.full((len(depths), len(counts)), np.nan)
    for cell in cells:
        value = cell.get(metric)
        if value is not None:
            grid[depths.index(float(cell["depth"])), counts.index(int(cell["num_images"]))] = float(value)
    figure = Figure(figsize=(max(4.0, 0.8 * len(counts) + 2.0), max(3.0, 0.5 * len(depths) + 1.8)), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = LinearSegmentedColormap.from_list("niah", ["#d7301f", "#fdd49e", "#1a9850"])
    image = axes.imshow(grid, cmap=colours, vmin=0.0, vmax=1.0, aspect="auto")
    for row in range(len(depths)):
        for col in range(len(counts)):
            if not np.isnan(grid[row, col]):
                axes.text(col, row, f"{100 * grid[row, col]:.0f}", ha="center", va="center", fontsize=8)
    axes.set_xticks(range(len(counts)), [str(n) for n in counts])
    axes.set_yticks(range(len(depths)), [f"{100 * d:.0f}%" for d in depths])
    axes.set_xlabel("number of images")
    axes.set_ylabel("needle depth")
    if title:
        axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes, label=metric)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())
