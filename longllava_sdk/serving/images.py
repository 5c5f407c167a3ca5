"""Image bytes from requests: ``data:`` URLs decoded under a size cap, headers checked before decoding.

A request's image is only *checked* here (format and declared size from its header, which
Pillow parses without decoding pixels); the pixels are decoded later, by the images adapter,
in the worker thread that runs the request, exactly as for an image file.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..media import IMAGE_FORMATS
from .api_errors import APIError

#: Pillow format names a request image may have: the SDK's one list (only these openers ever
#: parse request bytes).
ACCEPTED_FORMATS: tuple[str, ...] = IMAGE_FORMATS
#: The file suffix a checked image is stored under for the adapter (which claims by extension).
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
            "TIFF": ".tiff"}

_DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,",
                       re.IGNORECASE)


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header declares.

    Attributes:
        format: Pillow's format name (``PNG``...).
        width: declared width in pixels.
        height: declared height in pixels.
    """

    format: str
    width: int
    height: int

    @property
    def suffix(self) -> str:
        return SUFFIXES[self.format]


def decode_data_url(url: str, *, max_bytes: int, param: str) -> bytes:
    """The bytes of a base64 ``data:image/...`` URL, refused past ``max_bytes`` before decoding."""
    match = _DATA_URL.match(url)
    if match is None or not match.group("b64"):
        raise APIError(400, "a data URL must look like data:image/png;base64,<data>", code="invalid_image_url",
                       param=param)
    media_type = (match.group("type") or "").lower()
    if media_type and not media_type.startswith("image/"):
        raise APIError(400, f"a data URL of type {media_type} is not an image", code="invalid_image_url", param=param)
    payload = url[match.end():]
    # Four base64 characters carry three bytes: refuse an oversized image before decoding it.
    if (len(payload) // 4) * 3 > max_bytes + 3:
        raise APIError(413, f"the image is larger than this server's limit of {max_bytes} bytes",
                       code="image_too_large", param=param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "the data URL is not valid base64", code="invalid_image_url", param=param) from None
    if len(data) > max_bytes:
        raise APIError(413, f"the image is larger than this server's limit of {max_bytes} bytes",
                       code="image_too_large", param=param)
    if not data:
        raise APIError(400, "the data URL holds no data", code="invalid_image_url", param=param)
    return data


def check_image(source: bytes | Path, *, max_pixels: int, param: str, name: str) -> ImageHeader:
    """Format and size from the header of ``source`` (bytes or a file), without decoding pixels.

    Raises:
        APIError: 400 for anything that is not an image in :data:`ACCEPTED_FORMATS`, and for
            a declared size over ``max_pixels`` (a decompression bomb is refused here, before
            any pixel is decoded).
    """
    Image.init()  # every opener registered, so each accepted format name is known
    formats = [f for f in ACCEPTED_FORMATS if f in Image.OPEN]
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            # The server's own limit below is the one that applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream, formats=formats) as image:
                header = ImageHeader(str(image.format), *image.size)
    except Image.DecompressionBombError:
        raise APIError(400, f"{name}: declares more pixels than this server accepts", code="image_too_large",
                       param=param) from None
    except (Image.UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise APIError(400, f"{name}: not an image in an accepted format ({', '.join(ACCEPTED_FORMATS)})",
                       code="invalid_image", param=param) from None
    if header.width < 1 or header.height < 1:
        raise APIError(400, f"{name}: declares an empty image", code="invalid_image", param=param)
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise APIError(400, f"{name}: declares {header.width}x{header.height} = {pixels} pixels, over this server's "
                            f"limit of {max_pixels}", code="image_too_large", param=param)
    return header
