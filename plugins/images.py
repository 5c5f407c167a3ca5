"""Plain images and high-resolution images (Pillow).

The ``images`` adapter reads one image file, a folder of images or a list of image files
into RGB images. With ``high_res=True`` it reads one large image into the paper's
global-view-plus-sub-images structure (kind ``tiled``) using
:func:`longllava_sdk.highres.split_high_res`.

Reading is strict and bounded:

* **Format allowlist.** Only PNG, JPEG (and MPO, the multi-picture JPEG many phone cameras
  write), BMP, TIFF, WebP and GIF are decoded: the allowlist is passed to ``Image.open`` so
  no other Pillow plugin ever parses the bytes. An SVG or PDF renamed ``.png`` is refused
  with an error saying what the file really is. Animated GIF / WebP and multi-page TIFF give
  their first frame (counted in ``info["warnings"]``).
* **Decompression bombs.** The declared size is checked against ``max_pixels`` right after
  the header is parsed, before any pixel is decoded (Pillow's global
  ``Image.MAX_IMAGE_PIXELS`` is never modified; it still refuses images over twice its
  value on its own, which is reported the same way).
* **Memory.** Before a pixel is decoded, the decoded size of each image (its mode's bytes
  per pixel plus the 4-byte RGB copy) and of every image kept so far, plus for ``high_res``
  the tiles, is checked against ``max_decoded_bytes`` (1 GiB). TIFFs also have their
  strip/tile tables checked against the image size and the file
  (:mod:`longllava_plugins.tiff_layout`): a header that disagrees with its data is an error.
* **Tiles.** ``high_res`` splits into at most ``max_tiles`` (default 64) sub-images; larger
  images are shrunk to fit (``pad``) or resized to the grid (``grid``).
* **Time.** ``time_budget_s`` (60 s of CPU time) is checked between files and stages.
* **Truncation.** ``Image.verify()`` (PNG chunk CRCs...) then a full decode with
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` left ``False``: a truncated or corrupt file is an
  :class:`~longllava_sdk.errors.AdapterError`, never a partially grey image.
* **Orientation.** The EXIF orientation tag is applied (a portrait phone photo comes out
  portrait).
* **Colour.** Everything becomes 8-bit RGB. Transparency is composited on ``background``
  (white by default, the same white the paper pads sub-images with, so transparent margins
  and padding look alike to the model; pass the CLIP mean ``(122, 116, 104)`` to match
  LLaVA's ``expand2square`` instead). 16-bit greyscale is scaled by ``1/257`` (full range);
  32-bit integer and float images are min-max scaled over their finite values.

Output:

* ``high_res=False``: kind ``images``, one image per file (a folder is read in natural
  name order: ``img2`` before ``img10``), sampled evenly to ``max_images`` keeping the first
  and last. ``metadata[i]``: ``path``, ``format``, ``size`` (after EXIF rotation),
  ``n_frames``.
* ``high_res=True``: kind ``tiled``, ``images[0]`` the whole image as the released model's
  global view (padded to a square in the CLIP mean colour, resized to ``tile x tile``: see
  :func:`longllava_sdk.highres.global_view`), then ``rows x cols`` sub-images row-major, ``grid=(rows, cols)``. Each tile's
  metadata has ``row``, ``col`` and ``box`` (its ``(left, top, right, bottom)`` in the
  original image's pixels; parts on padding lie outside the image). The total, global view
  included, never exceeds ``max_images``: in ``pad`` mode the image is shrunk until its
  padded grid fits, in ``grid`` mode the grid is capped.

Example::

    from longllava_plugins.images import ImagesAdapter

    media = ImagesAdapter(high_res=True, split_mode="grid", max_tiles=6).load("scan.png")
    media.grid            # (2, 3) for a 3:2 page
    media.images[0].size  # (336, 336): the global view
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageFile, ImageOps

from longllava_sdk.adapters import (
    DEFAULT_MAX_DECODED_BYTES,
    DEFAULT_TIME_BUDGET_S,
    RGB_BYTES_PER_PIXEL,
    InputAdapter,
    Source,
    check_limit,
    check_time_budget,
    allowed_root,
    confine,
    current_allowed_root,
    format_bytes,
    guarded_load,
    local_source,
    open_confined,
    reading,
    sample_indices,
    validate_limit,
)
from longllava_sdk import local_files
from longllava_sdk.decode_cost import MODE_BYTES, DecodePlan, apply_decode_plan, plan_decode
from longllava_sdk.errors import AdapterError, ConfigError, ResourceLimitError, adapter_option_hint
from longllava_sdk.highres import (DEFAULT_MAX_TILES, WHITE, SplitMode, apply_plan, global_view, plan_high_res,
                                   plan_view_size, to_rgb)
from longllava_sdk.hookspecs import hookimpl
from longllava_sdk.media import IMAGE_FORMATS, DeferredImage, Media

from longllava_plugins.tiff_layout import SIGNATURES as TIFF_SIGNATURES, inspect_tiff

#: Pillow format names that are decoded (the SDK's one list); everything else is refused before decoding.
ALLOWED_FORMATS: tuple[str, ...] = IMAGE_FORMATS
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".tif", ".tiff", ".webp", ".gif")
#: Pillow's own hard limit (twice ``Image.MAX_IMAGE_PIXELS``): ~179 megapixels.
DEFAULT_MAX_PIXELS = 178_956_970
#: Decoded size over file size above which an image is refused (almost constant, or a header
#: declaring more pixels than the data holds: Pillow fills the missing rows silently).
DEFAULT_MAX_COMPRESSION_RATIO = 1000.0
#: Deflate's largest possible expansion: a PNG beyond it cannot hold the pixels it declares.
DEFLATE_MAX_RATIO = 1032
#: Bits per pixel of each mode as stored in the file (for the compression ratio).
_MODE_BITS = {"1": 1, "L": 8, "P": 8, "LA": 16, "PA": 16, "RGB": 24, "RGBA": 32, "RGBX": 32, "CMYK": 32,
              "YCbCr": 24, "LAB": 24, "HSV": 24, "I": 32, "F": 32, "I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16}
#: Bytes per pixel of each Pillow mode once decoded (for the memory check before decoding).
_MODE_BYTES = MODE_BYTES

_ALLOWED_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"), (b"II+\x00", "TIFF"), (b"MM\x00+", "TIFF"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"RIFF", "WEBP"),
)
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"<svg", "an SVG drawing"),
    (b"<?xml", "an XML document (SVG?)"),
    (b"%!PS", "a PostScript/EPS file"),
    (b"8BPS", "a Photoshop PSD file"),
    (b"\x00\x00\x01\x00", "a Windows icon"),
    (b"PK\x03\x04", "a ZIP archive"),
)


#: EXIF tag of the orientation (values 5-8 rotate the image by 90 degrees).
_EXIF_ORIENTATION = 0x0112

def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _describe_unknown(path: Path) -> str:
    with open_confined(path, what="image file") as handle:
        head = handle.read(64)
    if not head:
        return "empty file"
    for magic, fmt in _ALLOWED_SIGNATURES:
        if head.startswith(magic) and (fmt != "WEBP" or head[8:12] == b"WEBP"):
            hint = " (for scientific / multi-band TIFFs try adapter='geotiff')" if fmt == "TIFF" else ""
            return f"a {fmt} file that Pillow cannot decode (unsupported variant or corrupt header){hint}"
    stripped = head.lstrip()
    for magic, what in _SIGNATURES:
        if stripped.startswith(magic) or head.startswith(magic):
            return f"{what}, not an image in an allowed format ({', '.join(ALLOWED_FORMATS)})"
    return f"not an image in an allowed format ({', '.join(ALLOWED_FORMATS)}); file starts with {head[:16]!r}"


def _to_8bit_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """High-bit-depth greyscale to 8 bits, then RGB (alpha on ``background``)."""
    if image.mode.startswith("I;16"):
        array = np.asarray(image).astype(np.uint32)
        image = Image.fromarray((array // 257).astype(np.uint8))
    elif image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        finite = np.isfinite(array)
        if finite.any():
            low, high = float(array[finite].min()), float(array[finite].max())
            scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
        else:
            scaled = np.zeros_like(array)
        scaled[~finite] = 0.0
        image = Image.fromarray(np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8))
    return to_rgb(image, background)


class ImagesAdapter(InputAdapter):
    """Image files (PNG, JPEG, BMP, TIFF, WebP, GIF) to RGB, optionally split for high resolution.

    Args:
        high_res: read a single image as global view + sub-images (kind ``tiled``).
        tile: sub-image side in pixels (336 = the vision encoder's input).
        split_mode: ``"pad"`` (paper: white-pad to a multiple of ``tile``) or ``"grid"``
            (resize to the grid closest to the aspect ratio with at most ``max_tiles``).
        max_tiles: cap on the number of sub-images (default 64; in ``pad`` mode the image
            is shrunk until it fits). ``max_images - 1`` caps it too.
        max_pixels: refuse images declaring more pixels than this (decompression bombs);
            ``None`` leaves only Pillow's own limit.
        background: RGB colour transparency is composited on, and the padding colour.
        max_decoded_bytes: bound on the decoded data of one source (every image kept, its
            RGB copy, and the high-res tiles), checked from the headers before decoding.
        max_compression_ratio: refuse images whose declared pixels are more than this many
            times the file size (``None``: no check; a PNG beyond deflate's 1032:1 is refused
            regardless, since it cannot hold the pixels it declares).
        time_budget_s: CPU seconds one ``load`` may use (``None``: unlimited).
        defer_decoding: check every file's header, size, limits and (PNG) checksums now, but
            return :class:`~longllava_sdk.media.DeferredImage` objects decoded when the model
            needs their pixels (``max_decoded_bytes`` then bounds one image, not the list). The
            Pipeline sets it for lists of image files so that 1000 images are never decoded at
            once; ``high_res`` always decodes.

    Raises (from :meth:`load`):
        AdapterError: missing / empty / truncated / corrupt file, a format outside the
            allowlist, a declared size over ``max_pixels``, a URL, or ``high_res`` with
            more than one image.
    """

    name = "images"
    kind = "images"
    #: what a remote client may choose (never a limit: see InputAdapter.client_options)
    client_options = ("split_mode", "max_tiles", "background")
    extensions = IMAGE_EXTENSIONS
    priority = 200  # generic fallback: the geotiff adapter claims georeferenced .tif first

    def __init__(
        self,
        *,
        high_res: bool = False,
        tile: int = 336,
        split_mode: SplitMode = "pad",
        max_tiles: int | None = DEFAULT_MAX_TILES,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        background: tuple[int, int, int] = WHITE,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
        time_budget_s: float | None = DEFAULT_TIME_BUDGET_S,
        max_compression_ratio: float | None = DEFAULT_MAX_COMPRESSION_RATIO,
        defer_decoding: bool = False,
    ) -> None:
        if tile < 1:
            raise ValueError(f"tile must be >= 1, got {tile}")
        if split_mode not in ("pad", "grid"):
            raise ValueError(f"split_mode must be 'pad' or 'grid', got {split_mode!r}")
        if high_res and split_mode == "grid" and max_tiles is None:
            raise ValueError("split_mode='grid' needs max_tiles")
        if max_tiles is not None and max_tiles < 1:
            raise ValueError(f"max_tiles must be >= 1, got {max_tiles}")
        if max_pixels is not None and max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
        self.high_res = high_res
        self.tile = tile
        self.split_mode: SplitMode = split_mode
        self.max_tiles = max_tiles
        self.max_pixels = max_pixels
        self.background = tuple(background)
        self.max_decoded_bytes = validate_limit("max_decoded_bytes", max_decoded_bytes, allow_none=False)
        self.time_budget_s = validate_limit("time_budget_s", time_budget_s, integer=False)
        self.max_compression_ratio = validate_limit("max_compression_ratio", max_compression_ratio, integer=False)
        self.defer_decoding = bool(defer_decoding)

    # -- source listing -------------------------------------------------------------------
    def _list_files(self, source: Source) -> list[Path]:
        if isinstance(source, (list, tuple)):
            if not source:
                raise AdapterError("<empty list>", "no image files given")
            return [local_source(item, what="image file") for item in source]
        path = local_files.refuse_remote(source, what="image file")
        if path.is_dir():
            confine(path)
            # lstat-ed listing: a FIFO, socket or device named like an image is an error naming it
            files = sorted(local_files.regular_files(path, root=current_allowed_root(), suffixes=IMAGE_EXTENSIONS,
                                                     what="image file"), key=_natural_key)
            if not files:
                raise AdapterError(path, f"folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            for file in files:  # every file found, symlinks resolved, before any is opened
                confine(file)
            return files
        return [local_source(path, what="image file")]

    # -- one image ------------------------------------------------------------------------
    def _check_size(self, path: Path, image: Image.Image) -> None:
        width, height = image.size
        if width < 1 or height < 1:
            raise AdapterError(path, f"declares an empty image size {width}x{height}")
        if self.max_pixels is not None and width * height > self.max_pixels:
            raise AdapterError(
                path,
                f"declares {width}x{height} = {width * height:,} pixels, over the max_pixels limit of "
                f"{self.max_pixels:,} (possible decompression bomb); pass {adapter_option_hint('max_pixels', 'N')} to "
                "allow it",
            )

    @contextlib.contextmanager
    def _opened(self, path: Path) -> Iterator[Image.Image]:
        """The header of ``path`` parsed by an allowlisted Pillow opener, from a file opened as a
        regular file only (:func:`~longllava_sdk.adapters.open_confined`); both closed on exit."""
        Image.init()  # register every plugin so each allowlisted format name is known to open()
        with open_confined(path, what="image file") as handle:
            try:
                with warnings.catch_warnings():
                    # Our own limit applies; Pillow's warning below its hard limit is noise here.
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    # Only openers registered in this Pillow (MPO comes through the JPEG opener in new ones).
                    image = Image.open(handle, formats=[f for f in ALLOWED_FORMATS if f in Image.OPEN])
            except Image.DecompressionBombError as exc:
                raise AdapterError(path, f"refused by Pillow's decompression-bomb limit: {exc}") from exc
            except Image.UnidentifiedImageError as exc:
                raise AdapterError(path, _describe_unknown(path)) from exc
            except Exception as exc:  # Pillow raises many types on malformed headers
                raise AdapterError(path, f"unreadable image header: {type(exc).__name__}: {exc}") from exc
            with image:
                yield image

    def _check_ratio(self, path: Path, image: Image.Image) -> None:
        """Declared pixels against the file size: Pillow zero-fills rows a short stream lacks."""
        width, height = image.size
        stored = max(1, path.stat().st_size)
        declared = math.ceil(width * height * _MODE_BITS.get(image.mode, 32) / 8)
        if image.format == "PNG" and declared > DEFLATE_MAX_RATIO * stored:
            raise AdapterError(
                path, f"the PNG header declares {width} x {height} px ({image.mode}, {declared} bytes) but a "
                f"{stored}-byte file holds at most about {DEFLATE_MAX_RATIO * stored} (deflate cannot exceed {DEFLATE_MAX_RATIO}:1): "
                "wrong dimensions or truncated data",
            )
        if self.max_compression_ratio is not None:
            check_limit(
                path, round(declared / stored), round(self.max_compression_ratio), "max_compression_ratio",
                f"the ratio of the {format_bytes(declared)} of pixels declared ({width} x {height}, {image.mode}) to "
                f"the {format_bytes(stored)} file (an almost constant image, or a header declaring more pixels than "
                "the file holds)",
            )

    def _decoded_bytes(self, image: Image.Image) -> int:
        """Decoded bytes of ``image`` plus its RGB copy, from the header alone."""
        width, height = image.size
        per_pixel = _MODE_BYTES.get(image.mode, 4)
        rgb = 0 if image.mode == "RGB" else RGB_BYTES_PER_PIXEL
        return width * height * (per_pixel + rgb)

    def check_file(self, path: Path, *, extra_bytes: int = 0, plan: Any = None,
                   min_side: int | None = None) -> tuple[str, tuple[int, int], DecodePlan]:
        """Every check :meth:`read_image` makes before decoding; returns the format, the stored
        size (before EXIF orientation) and the :class:`~longllava_sdk.decode_cost.DecodePlan`.

        ``extra_bytes`` (decoded data already held for this source) and, when given, the
        bytes ``plan(size)`` returns (the high-res tiles) count against ``max_decoded_bytes``;
        what is left is the decode's budget: a JPEG over it is decoded at the DCT scale that
        fits (never below ``min_side`` on its longer side: default twice ``tile``), anything
        else over it is refused.
        """
        with open_confined(path, what="image file") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                raise AdapterError(path, "empty file")
            is_tiff = handle.read(4) in TIFF_SIGNATURES
        if is_tiff:  # strip/tile tables must match the image size and the file
            inspect_tiff(path, max_pixels=self.max_pixels, max_block_bytes=self.max_decoded_bytes, all_ifds=False)
        with self._opened(path) as image:
            fmt = image.format or "?"
            try:
                self._check_size(path, image)
                self._check_ratio(path, image)
                tiles = plan(image.size) if plan is not None else 0
                try:
                    decode = plan_decode(image, max_bytes=self.max_decoded_bytes - extra_bytes - tiles,
                                         min_side=min_side or 2 * self.tile, path=path)
                except ResourceLimitError:
                    needed = extra_bytes + self._decoded_bytes(image) + tiles
                    check_limit(path, needed, self.max_decoded_bytes, "max_decoded_bytes",
                                f"the decoded data of {image.size[0]} x {image.size[1]} px (mode {image.mode}, plus its "
                                "RGB copy" + (", the images already read" if extra_bytes else "")
                                + (" and the high-res tiles" if plan is not None else "") + ")", unit="bytes",
                                hint="lower max_images or max_tiles")
                    raise
                size = image.size
                image.verify()  # checks what the format allows without decoding (PNG CRCs...)
            except AdapterError:
                raise
            except Exception as exc:
                raise AdapterError(path, f"corrupt or truncated {fmt} file: {exc}") from exc
        return fmt, size, decode

    def read_image(self, path: Path, *, extra_bytes: int = 0, plan: Any = None,
                   min_side: int | None = None) -> tuple[Image.Image, dict[str, Any]]:
        """Decode one file strictly into RGB (after :meth:`check_file`; at the DCT scale its
        decode plan says for a JPEG over the budget); returns the image and its metadata."""
        fmt, _, decode = self.check_file(path, extra_bytes=extra_bytes, plan=plan, min_side=min_side)
        check_time_budget("before decoding")
        with self._opened(path) as image:  # verify() leaves the image unusable: reopen to decode
            try:
                n_frames = int(getattr(image, "n_frames", 1))
                image.seek(0)
                apply_decode_plan(image, decode)  # the decoder is told its target size
                image.load()
                if ImageFile.LOAD_TRUNCATED_IMAGES:
                    warnings.warn(
                        "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process: truncated images "
                        "cannot be detected", RuntimeWarning, stacklevel=2,
                    )
                oriented = ImageOps.exif_transpose(image)
                rgb = _to_8bit_rgb(oriented, self.background)
            except AdapterError:
                raise
            except Exception as exc:
                raise AdapterError(path, f"corrupt or truncated {fmt} file: {exc}") from exc
        meta = {"path": str(path), "format": fmt, "size": rgb.size, "n_frames": n_frames}
        if decode.reduce > 1:  # the full size, oriented as the decoded image is
            full = decode.size if (decode.size[0] >= decode.size[1]) == (rgb.size[0] >= rgb.size[1]) else decode.size[::-1]
            meta.update(decoded_at=f"1/{decode.reduce}", full_size=full)
        return rgb, meta

    # -- public ---------------------------------------------------------------------------
    @guarded_load
    def load(self, source: Source, *, max_images: int | None = None) -> Media:
        """Read ``source`` (file, folder or list of files) into :class:`Media`.

        Args:
            source: one image, a folder of images, or a list of image paths.
            max_images: budget on returned images (``None``: all); with ``high_res`` it
                counts the global view plus the tiles and must be at least 2.
        """
        if max_images is not None and max_images < 1:
            raise ConfigError(f"max_images must be >= 1, got {max_images}")
        files = self._list_files(source)
        if self.high_res:
            if len(files) != 1:
                raise AdapterError(files[0], f"high_res splits one image, got {len(files)} files")
            return self._load_high_res(files[0], max_images)
        warnings_: list[str] = []
        images, metadata = [], []
        held = 0
        for index in sample_indices(len(files), max_images):
            check_time_budget(f"at file {index + 1} of {len(files)}")
            if self.defer_decoding:
                image, meta = self._deferred(files[index])
            else:
                image, meta = self.read_image(files[index], extra_bytes=held)
                held += image.size[0] * image.size[1] * RGB_BYTES_PER_PIXEL
            meta["index"] = index
            if meta["n_frames"] > 1:
                warnings_.append(f"{files[index]}: {meta['n_frames']} frames, first frame used")
            images.append(image)
            metadata.append(meta)
        description = str(source) if not isinstance(source, (list, tuple)) else f"{files[0]} (+{len(files) - 1} more)"
        info = {"n_files": len(files), "sampled": len(images) < len(files), "warnings": warnings_}
        return Media("images", images, metadata, source=description, info=info)

    def _deferred(self, path: Path) -> tuple[DeferredImage, dict[str, Any]]:
        """Checked now, decoded later (by the same strict :meth:`read_image`)."""
        fmt, size, decode = self.check_file(path)
        if decode.reduce > 1:  # a JPEG decoded at a DCT scale: the size the deferred decode will give
            size = decode.decoded_size
        with self._opened(path) as header:
            n_frames = int(getattr(header, "n_frames", 1))
            if header.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # turned by 90 degrees when decoded
                size = (size[1], size[0])
        root = current_allowed_root()

        def decode() -> Image.Image:
            # The decode runs later, outside this load: it gets the same guard (typed errors
            # naming the file, the CPU-time budget) and the allowed root of the load back.
            with allowed_root(root), reading(self, path):
                return self.read_image(path)[0]

        image = DeferredImage(decode, size, str(path))
        return image, {"path": str(path), "format": fmt, "size": size, "n_frames": n_frames}

    def _load_high_res(self, path: Path, max_images: int | None) -> Media:
        if max_images is not None and max_images < 2:
            raise AdapterError(path, f"high_res needs max_images >= 2 (global view + tiles), got {max_images}")
        cap = self.max_tiles
        if max_images is not None:
            cap = max_images - 1 if cap is None else min(cap, max_images - 1)

        def tiles_bytes(size: tuple[int, int]) -> int:
            planned = plan_high_res(size, tile=self.tile, mode=self.split_mode, max_tiles=cap)
            rows, cols = planned.grid
            resized = planned.resized_size[0] * planned.resized_size[1] if planned.resized_size != size else 0
            canvas = rows * cols * self.tile * self.tile  # the padded canvas, then the tiles cut from it
            # the resized image, the padded canvas and the tiles cut from it, the global view's work
            return RGB_BYTES_PER_PIXEL * (resized + 2 * canvas + self.tile * self.tile) + \
                plan_view_size(size, self.tile).work_bytes

        def canvas_side(size: tuple[int, int]) -> int:  # a JPEG's DCT scale never goes below the split's canvas
            return max(plan_high_res(size, tile=self.tile, mode=self.split_mode, max_tiles=cap).canvas_size)

        with self._opened(path) as header:
            min_side = canvas_side(header.size)
        image, meta = self.read_image(path, plan=tiles_bytes, min_side=min_side)
        check_time_budget("before splitting")
        plan = plan_high_res(image.size, tile=self.tile, mode=self.split_mode, max_tiles=cap)
        tiles = apply_plan(image, plan, self.background)
        overview = global_view(image, self.tile)
        rows, cols = plan.grid
        tile_meta = [
            {"row": i // cols, "col": i % cols, "box": tuple(round(v, 3) for v in box)}
            for i, box in enumerate(plan.source_boxes(meta.get("full_size", image.size)))
        ]
        info = {
            "format": meta["format"],
            "size": image.size,
            "split": {
                "mode": plan.mode, "tile": plan.tile, "grid": plan.grid,
                "resized_size": plan.resized_size, "padding": plan.padding,
            },
            "warnings": [f"{meta['n_frames']} frames, first frame used"] if meta["n_frames"] > 1 else [],
        }
        if plan.mode == "pad" and plan.resized_size != image.size:
            info["warnings"].append(
                f"shrunk from {image.size[0]}x{image.size[1]} to {plan.resized_size[0]}x{plan.resized_size[1]} "
                f"to fit {cap} tiles"
            )
        return Media(
            "tiled", [overview, *tiles], [{"role": "global", **meta}, *tile_meta],
            source=str(path), grid=(rows, cols), info=info,
        )


@hookimpl
def longllava_register_adapters() -> list[type[InputAdapter]]:
    """Register the images adapter."""
    return [ImagesAdapter]
