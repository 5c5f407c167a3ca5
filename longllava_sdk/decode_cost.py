"""What decoding an image will cost, computed from its header before any pixel is decoded.

"Bound by cost, not by count": an image's pixel count says little about what reading it
allocates (a 1.3 KB PNG of 20000 x 20 pixels used to need a 1.6 GB square canvas). This
module prices the two allocations that depend on the input:

* the **decode**: the pixels the decoder produces times the bytes per pixel of their mode,
  plus the RGB copy the SDK converts to (Pillow keeps RGB in 4 bytes a pixel). JPEGs can be
  decoded at 1/2, 1/4 or 1/8 of their size in the DCT domain (Pillow's ``Image.draft``):
  :func:`plan_decode` picks the largest scale whose cost fits the budget (full size whenever it
  fits, so ordinary photos decode exactly as before) and never below the size the output
  needs; PNG, GIF, BMP, WebP and TIFF decode whole, so their cost is known exactly and is
  refused past the budget;
* the **view**: :func:`longllava_sdk.highres.plan_view_size` (a few tens of MB at most,
  whatever the aspect ratio).

:func:`decode_cost` is the one-call form for code that prices requests before admitting them
(the server's decode workers, an admission check): bytes of a path or of an in-memory file.
The images adapter uses :func:`plan_decode` and :func:`apply_decode_plan` on the image it
opened.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass

from PIL import Image

from .errors import AdapterError, ResourceLimitError, adapter_option_hint
from .highres import plan_view_size
from .local_files import open_regular
from .media import IMAGE_FORMATS

#: Bytes per pixel of each Pillow mode once decoded.
MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 4, "PA": 4, "La": 4, "RGB": 4, "RGBA": 4, "RGBa": 4, "RGBX": 4,
              "CMYK": 4, "YCbCr": 4, "LAB": 4, "HSV": 4, "I": 4, "F": 4, "I;16": 2, "I;16L": 2, "I;16B": 2,
              "I;16N": 2}
#: Bytes per pixel of the RGB image everything is converted to.
RGB_BYTES = 4
#: Formats whose decoder can reduce in the DCT domain (``Image.draft``), and the scales it offers.
_DRAFT_FORMATS = ("JPEG", "MPO")
_DRAFT_SCALES = (1, 2, 4, 8)


@dataclass(frozen=True)
class DecodePlan:
    """How an image will be decoded and what it costs.

    Attributes:
        format: Pillow's format name.
        mode: the mode the decoder produces.
        size: ``(width, height)`` the header declares.
        reduce: the DCT scale denominator the decoder is told (1 = full size; 2, 4, 8 for JPEG).
        decoded_size: ``(width, height)`` the decoder will produce.
        bytes: decoded pixels x bytes per pixel of ``mode``, plus the RGB copy (0 for RGB).
    """

    format: str
    mode: str
    size: tuple[int, int]
    reduce: int
    decoded_size: tuple[int, int]
    bytes: int


def _cost(size: tuple[int, int], mode: str) -> int:
    pixels = size[0] * size[1]
    return pixels * (MODE_BYTES.get(mode, 4) + (0 if mode == "RGB" else RGB_BYTES))


def plan_decode(image: Image.Image, *, max_bytes: int | None = None, min_side: int = 1,
                path: str | os.PathLike[str] | None = None, option: str = "max_decoded_bytes") -> DecodePlan:
    """The cheapest faithful decode of an opened (not yet loaded) Pillow image.

    Full size when its cost fits ``max_bytes`` (``None``: no budget); otherwise, for JPEG, the
    largest DCT reduction (1/2, 1/4, 1/8) that fits and still leaves the longer side at least
    ``min_side`` pixels (what the output needs: twice a 336 px view, or the high-res canvas).

    Raises:
        ResourceLimitError: nothing fits the budget (naming ``path`` and ``option``).
    """
    width, height = image.size
    fmt, mode = image.format or "?", image.mode
    full = _cost((width, height), mode)
    if max_bytes is None or full <= max_bytes:
        return DecodePlan(fmt, mode, (width, height), 1, (width, height), full)
    if fmt in _DRAFT_FORMATS:
        for scale in _DRAFT_SCALES[1:]:
            reduced = (math.ceil(width / scale), math.ceil(height / scale))
            if max(reduced) < min_side:
                break
            cost = _cost(reduced, mode)
            if cost <= max_bytes:
                return DecodePlan(fmt, mode, (width, height), scale, reduced, cost)
    raise ResourceLimitError(
        path or "<image>",
        f"decoding {width} x {height} px ({fmt}, mode {mode}) needs {full:,} bytes, over the limit "
        f"{option}={max_bytes:,}" + (" even at 1/8 scale" if fmt in _DRAFT_FORMATS else "")
        + f"; pass {adapter_option_hint(option, 'N')} to allow more",
    )


def apply_decode_plan(image: Image.Image, plan: DecodePlan) -> Image.Image:
    """Tell the decoder its target size (``Image.draft``) before ``load()``; returns ``image``."""
    if plan.reduce > 1:
        width, height = plan.size
        image.draft(image.mode, (max(1, width // plan.reduce), max(1, height // plan.reduce)))
        if image.size != plan.decoded_size:  # pragma: no cover - Pillow chose another scale
            raise AdapterError(getattr(image, "filename", None) or "<image>",
                               f"the decoder reduced to {image.size}, not the planned {plan.decoded_size}")
    return image


def decode_cost(source: str | os.PathLike[str] | bytes, *, side: int = 336, max_bytes: int | None = None,
                formats: tuple[str, ...] = IMAGE_FORMATS) -> int:
    """Bytes one image will need in memory to become a ``side x side`` view: its decode
    (:func:`plan_decode`, reduced for JPEG when ``max_bytes`` asks) plus the view's work
    (:func:`~longllava_sdk.highres.plan_view_size`). Reads only the header.

    Args:
        source: a path (opened as a regular file only:
            :func:`~longllava_sdk.local_files.open_regular`) or the file's bytes.
        side: the view's side.
        max_bytes: the decode budget (a JPEG over it is priced at the DCT scale that fits).
        formats: Pillow formats allowed to parse the header.

    Raises:
        AdapterError: not an image in ``formats``; ResourceLimitError: over ``max_bytes``;
        SpecialFileError: a FIFO, socket or device.
    """
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else os.fspath(source)
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open_regular(source)
    try:
        Image.init()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                image = Image.open(handle, formats=[f for f in formats if f in Image.OPEN])
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                raise AdapterError(name, f"not a readable image ({type(exc).__name__}: {exc})") from None
        with image:
            plan = plan_decode(image, max_bytes=max_bytes, min_side=2 * side, path=name)
        return plan.bytes + plan_view_size(plan.decoded_size, side).work_bytes
    finally:
        handle.close()
