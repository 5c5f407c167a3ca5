"""Grey-level windowing shared by the DICOM and NIfTI adapters.

A *window* maps a range of scanner values (Hounsfield units for CT) onto display grey
levels: ``level`` (also called centre) is the value shown mid-grey, ``width`` the range shown
from black to white. Values ``<= level - width/2`` are black, ``>= level + width/2`` white,
linear in between (the usual radiology definition; it differs from DICOM PS3.3 C.11.2.1.2's
integer-centred ``LINEAR`` function by less than one unit at the top of the range).

One window gives a grey image (the same value in R, G and B); three windows give one window
per channel (R, G, B), the common way to show a model lung, soft tissue and bone at once.

Named CT presets (width, level) in HU, from Radiopaedia's "Windowing (CT)" table unless noted:

=============  =======  =======  ==================================================
name           width    level    note
=============  =======  =======  ==================================================
lung           1500     -600
mediastinum    350      50
abdomen        400      40       Radiopaedia gives L50; L40 is the other common value
liver          150      30
bone           1800     400
brain          80       40
subdural       200      75       middle of Radiopaedia's W130-300 / L50-100 range
=============  =======  =======  ==================================================

Example::

    >>> import numpy as np
    >>> hu = np.array([[-1000.0, 0.0], [40.0, 1000.0]], dtype=np.float32)
    >>> image = window_to_rgb(hu, parse_windows("brain"))
    >>> np.asarray(image)[..., 0].tolist()
    [[0, 0], [128, 255]]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
from PIL import Image

from longllava_sdk.errors import ConfigError

#: Named presets: name -> (width, level) in Hounsfield units.
PRESETS: dict[str, tuple[float, float]] = {
    "lung": (1500.0, -600.0),
    "mediastinum": (350.0, 50.0),
    "abdomen": (400.0, 40.0),
    "liver": (150.0, 30.0),
    "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0),
    "subdural": (200.0, 75.0),
}

# "W,L", "W/L", "W1500/L-600", "W:1500 L:-600" (case-insensitive).
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_WL_PATTERN = re.compile(rf"^\s*(?:w\s*:?\s*)?({_NUMBER})\s*[,/ ]\s*(?:l\s*:?\s*)?({_NUMBER})\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Window:
    """One display window: values in ``[level - width/2, level + width/2]`` span black to white.

    Attributes:
        width: range of values shown from black to white (> 0).
        level: value shown mid-grey (window centre).
        name: the preset name, ``None`` for a custom window.
        function: ``"linear"`` (default) or ``"sigmoid"`` (DICOM VOI LUT Function SIGMOID).
    """

    width: float
    level: float
    name: str | None = None
    function: str = "linear"

    def __post_init__(self) -> None:
        if not np.isfinite(self.width) or not np.isfinite(self.level):
            raise ConfigError(f"window width and level must be finite, got W{self.width}/L{self.level}")
        if self.width <= 0:
            raise ConfigError(f"window width must be > 0, got {self.width}")
        if self.function not in ("linear", "sigmoid"):
            raise ConfigError(f"window function must be 'linear' or 'sigmoid', got {self.function!r}")

    @property
    def lower(self) -> float:
        """Values at or below this are black."""
        return self.level - self.width / 2.0

    @property
    def upper(self) -> float:
        """Values at or above this are white."""
        return self.level + self.width / 2.0

    @property
    def label(self) -> str:
        """Human-readable description, e.g. ``lung (W1500/L-600)`` or ``W400/L40``."""
        wl = f"W{_fmt(self.width)}/L{_fmt(self.level)}"
        if self.function == "sigmoid":
            wl += " sigmoid"
        return f"{self.name} ({wl})" if self.name else wl


WindowSpec = Union[str, Window, tuple[float, float]]


def _fmt(value: float) -> str:
    return f"{value:g}"


def parse_window(spec: WindowSpec) -> Window:
    """Turn a preset name, ``"W,L"`` string, ``(width, level)`` tuple or :class:`Window` into a Window.

    Raises:
        ConfigError: unknown preset name, malformed string, or width <= 0.
    """
    if isinstance(spec, Window):
        return spec
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in PRESETS:
            width, level = PRESETS[key]
            return Window(width, level, name=key)
        match = _WL_PATTERN.match(spec)
        if match:
            return Window(float(match.group(1)), float(match.group(2)))
        raise ConfigError(
            f"unknown window {spec!r}: use a preset ({', '.join(PRESETS)}) or 'WIDTH,LEVEL' such as '400,40'"
        )
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and all(isinstance(v, (int, float)) for v in spec):
        return Window(float(spec[0]), float(spec[1]))
    raise ConfigError(f"cannot read a window from {spec!r}: use a preset name, 'WIDTH,LEVEL' or (width, level)")


def parse_windows(spec: WindowSpec | Sequence[WindowSpec]) -> list[Window]:
    """One window (grey output) or exactly three (R, G, B) from a spec or a list of specs.

    ``"lung"``, ``"1500,-600"``, ``(1500, -600)`` -> one window;
    ``["lung", "mediastinum", "bone"]`` -> three. A list of one is accepted too.

    Raises:
        ConfigError: not 1 or 3 windows, or any window invalid.
    """
    if isinstance(spec, (str, Window)):
        return [parse_window(spec)]
    if isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(v, (int, float)) for v in spec):
        return [parse_window(spec)]
    if isinstance(spec, (list, tuple)):
        windows = [parse_window(s) for s in spec]
        if len(windows) not in (1, 3):
            raise ConfigError(f"give 1 window (grey) or 3 windows (R, G, B), got {len(windows)}: {list(spec)!r}")
        return windows
    raise ConfigError(f"cannot read windows from {spec!r}")


def apply_window(values: np.ndarray, window: Window, out: np.ndarray | None = None) -> np.ndarray:
    """Map ``values`` (any shape, any real dtype) to uint8 grey levels through ``window``.

    NaN maps to 0; callers that want other masked pixels black use :func:`window_to_rgb`'s mask.
    Vectorised: a few passes over a float32 scratch buffer, no per-pixel Python.
    """
    scratch = np.asarray(values, dtype=np.float32)
    if scratch is values or not scratch.flags.writeable:
        scratch = scratch.copy()
    if window.function == "sigmoid":
        # DICOM PS3.3 C.11.2.1.3.1: y = ymax / (1 + exp(-4 (x - c) / w)).
        np.subtract(scratch, np.float32(window.level), out=scratch)
        np.multiply(scratch, np.float32(-4.0 / window.width), out=scratch)
        np.fmin(scratch, np.float32(80.0), out=scratch)  # exp overflow guard; saturates anyway
        np.exp(scratch, out=scratch)
        scratch += 1.0
        np.divide(np.float32(255.0), scratch, out=scratch)
    else:
        np.subtract(scratch, np.float32(window.lower), out=scratch)
        np.multiply(scratch, np.float32(255.0 / window.width), out=scratch)
    # fmax/fmin instead of clip: they return the non-NaN operand, so NaN becomes 0 for free.
    np.fmax(scratch, np.float32(0.0), out=scratch)
    np.fmin(scratch, np.float32(255.0), out=scratch)
    scratch += 0.5
    if out is None:
        return scratch.astype(np.uint8)
    np.copyto(out, scratch, casting="unsafe")
    return out


def window_to_rgb(
    values: np.ndarray,
    windows: Sequence[Window],
    *,
    mask: np.ndarray | None = None,
    invert: bool = False,
) -> Image.Image:
    """Window a 2-D slice into an RGB ``PIL.Image``.

    Args:
        values: ``(H, W)`` modality values (HU for CT), any real dtype.
        windows: one window (grey: R = G = B) or three (one per channel, R, G, B).
        mask: optional ``(H, W)`` bool, True where pixels carry no data (padding, NaN): they
            are black in every channel, whatever the window or ``invert``.
        invert: show high values dark (DICOM ``MONOCHROME1``), applied before the mask.

    Returns:
        ``PIL.Image`` in mode ``RGB``, size ``(W, H)``, uint8.
    """
    if values.ndim != 2:
        raise ValueError(f"window_to_rgb expects a 2-D slice, got shape {values.shape}")
    if len(windows) not in (1, 3):
        raise ConfigError(f"give 1 window (grey) or 3 windows (R, G, B), got {len(windows)}")
    return planes_to_rgb([apply_window(values, window) for window in windows], mask=mask, invert=invert)


def planes_to_rgb(
    planes: Sequence[np.ndarray], *, mask: np.ndarray | None = None, invert: bool = False
) -> Image.Image:
    """One uint8 ``(H, W)`` plane (grey, R = G = B) or three (R, G, B) -> RGB ``PIL.Image``.

    The planes are modified in place: ``invert`` (``255 - v``) first, then ``mask`` to 0.
    """
    if len(planes) not in (1, 3):
        raise ConfigError(f"give 1 plane (grey) or 3 planes (R, G, B), got {len(planes)}")
    for plane in planes:
        if invert:
            np.subtract(np.uint8(255), plane, out=plane)
        if mask is not None:
            plane[mask] = 0
    if len(planes) == 1:
        return Image.fromarray(planes[0], mode="L").convert("RGB")
    return Image.fromarray(np.dstack(planes), mode="RGB")


#: Integer types whose every stored value fits a lookup table.
_LUT_DTYPES = (np.uint8, np.int8, np.uint16, np.int16)


def window_lut(window: Window, dtype: np.dtype, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray | None:
    """uint8 table mapping every stored value of an 8/16-bit integer ``dtype`` to its grey level.

    Entry ``u`` is for the stored value whose bits, read as unsigned, equal ``u`` (so signed
    data is looked up through ``raw.view(unsigned)``, see :func:`apply_lut`). The value is
    the one :func:`apply_window` gives for ``float32(stored) * slope + intercept``: the same
    arithmetic, done once for the 65 536 possible values instead of once per pixel. ``None``
    for other dtypes.
    """
    dtype = np.dtype(dtype).newbyteorder("=")  # tables are indexed by native-order bits
    if dtype.type not in _LUT_DTYPES:
        return None
    unsigned = np.dtype(f"u{dtype.itemsize}")
    stored = np.arange(2 ** (8 * dtype.itemsize), dtype=np.uint32).astype(unsigned).view(dtype)
    values = stored.astype(np.float32)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return apply_window(values, window)


def apply_lut(raw: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Grey levels of integer ``raw`` through a table from :func:`window_lut` (same shape, uint8)."""
    if not raw.dtype.isnative:  # big-endian data: the table is indexed by native-order bits
        raw = raw.astype(raw.dtype.newbyteorder("="))
    unsigned = raw.view(np.dtype(f"u{raw.dtype.itemsize}"))
    return np.take(lut, unsigned)


def percentile_window(
    values: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5), *, name: str = "auto"
) -> Window | None:
    """A window spanning the given percentiles of the finite values (``None`` if there are none).

    Used for ``window=None`` (MR and other non-HU data): ``(0, 100)`` is min/max
    normalisation, the default ``(0.5, 99.5)`` ignores a few outlier voxels.
    """
    low_p, high_p = percentiles
    if not 0.0 <= low_p < high_p <= 100.0:
        raise ConfigError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    flat = np.asarray(values, dtype=np.float32).ravel()
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return None
    low, high = (float(v) for v in np.percentile(flat, [low_p, high_p]))
    if not high > low:  # constant image: a unit window centred on the value shows it mid-grey
        return Window(1.0, low, name=name)
    return Window(high - low, (high + low) / 2.0, name=name)
