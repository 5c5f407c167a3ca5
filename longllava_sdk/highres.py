"""The paper's high-resolution sub-image split, as a pure function.

LongLLaVA reads a large image as one *global* view followed by its sub-images
("main image ``\\n`` sub-images, top-left to bottom-right, ``\\n`` between rows", paper
section 3.2). :func:`split_high_res` produces exactly that structure; the images adapter
(``longllava_plugins.images``) and the processor both call it.

Two modes:

``pad`` (the paper's split)
    The image is padded with ``fill`` (white) up to the next multiple of ``tile`` on both
    axes and cut into ``tile x tile`` sub-images. The padding is centred, and odd
    padding is split ``before = p // 2``, ``after = p - p // 2``. (The official code pads
    ``(new - old) // 2`` on *both* sides, so an odd padding makes the canvas one pixel short
    and the last row/column of tiles misaligned; this implementation fixes that.) With
    ``max_tiles`` the image is first shrunk (aspect ratio kept) to the largest size whose
    padded grid has at most ``max_tiles`` tiles.

``grid`` (capped grid)
    Choose the ``(rows, cols)`` grid with ``rows * cols <= max_tiles`` whose aspect ratio
    ``cols / rows`` is closest (in log space) to the image's ``width / height``; among equally
    close grids, the smallest one that holds the image at native resolution, else the
    largest. The image is resized (not padded) to ``cols * tile x rows * tile`` and cut.

In both modes the global view is what the released model saw: the whole image padded to a
centred square in the CLIP mean colour (122, 116, 104), as the official ``expand2square``,
then resized to ``tile x tile`` (bicubic, as CLIP's processor resizes), so every returned
image is ``tile x tile`` RGB. Sub-image padding stays white, as in the official split.

Cost before work: :func:`square_view` computes that padded-then-resized view without the
square canvas when the canvas would be large (a 20000 x 20 image would need a 20000 x 20000
one, 1.6 GB): it resizes the rows and columns the view's pixels read and pads the rest, so
its memory follows the output (``tile x tile``), not the input's longer side. Splits are
planned from the size alone (:func:`plan_high_res`) and ``max_tiles`` bounds the canvas the
sub-images are cut from.

Example::

    >>> from PIL import Image
    >>> global_view, tiles, (rows, cols) = split_high_res(Image.new("RGB", (1000, 500)))
    >>> (rows, cols), len(tiles), global_view.size
    ((2, 3), 6, (336, 336))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from typing import Sequence

from PIL import Image

SplitMode = Literal["pad", "grid"]
RGB = tuple[int, int, int]
WHITE: RGB = (255, 255, 255)
#: Default cap on high-resolution sub-images (the global view comes on top): the images adapter's
#: ``max_tiles`` and the Pipeline's split of an in-memory image with ``high_res=True``.
DEFAULT_MAX_TILES = 64
#: Square canvases up to this many bytes (RGB, 4 bytes a pixel: sides up to 2896 px) are built
#: and resized whole, bit-identical to the official ``expand2square`` + CLIP processor; larger
#: ones are never allocated (:func:`square_view`'s banded path, within one grey level of it).
EXACT_CANVAS_BYTES = 32 << 20
#: Pixels of one band of the banded path (16 MiB of RGB).
_BAND_PIXELS = 1 << 22
#: Bicubic's filter support (Pillow's), in source pixels at scale 1.
_BICUBIC_SUPPORT = 2.0
#: OpenAI CLIP's per-channel normalisation mean (the LongLLaVA vision tower's).
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)


def mean_colour(image_mean: Sequence[float]) -> RGB:
    """The pad colour the released models were trained with: ``int(m * 255)`` per channel.

    Truncated, not rounded, as the official ``expand2square(image, tuple(int(x*255) for x in
    image_mean))`` (``cli.py`` / ``llava/train/train.py``): CLIP's mean gives (122, 116, 104).
    """
    return tuple(int(m * 255) for m in image_mean)  # type: ignore[return-value]


CLIP_MEAN_RGB: RGB = mean_colour(CLIP_MEAN)


def expand_to_square(image: Image.Image, background: RGB) -> Image.Image:
    """Pad ``image`` to a centred square of its longer side, filled with ``background``.

    LongLLaVA was trained on images padded with the CLIP mean colour (LLaVA's ``pad``
    aspect-ratio mode), so inference must pad the same way rather than centre-crop. The
    offset is ``(long - short) // 2`` before, as the official ``expand2square``.
    """
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def trim_to_aspect(image: Image.Image, max_ratio: float) -> Image.Image:
    """``image`` with its longer side centre-cropped to at most ``max_ratio`` times the shorter one.

    For processors that resize the shortest edge and centre-crop a square (``pad_to_square``
    off): the crop keeps only the centre, so the rest of an extreme image (a 20000 x 20 strip
    would be resized to 336000 x 336 first) is cut before resizing. The kept margin
    (``max_ratio >= 2``) is wider than the resize's filter reaches into the final crop.
    """
    width, height = image.size
    short = min(width, height)
    keep = max(short, math.ceil(short * max_ratio))
    if width > keep:
        left = (width - keep) // 2
        return image.crop((left, 0, left + keep, height))
    if height > keep:
        top = (height - keep) // 2
        return image.crop((0, top, width, top + keep))
    return image


@dataclass(frozen=True)
class HighResPlan:
    """Geometry of a split, computed from the image size alone (no pixels touched).

    Attributes:
        mode: ``"pad"`` or ``"grid"``.
        tile: side of each square sub-image, in output pixels.
        grid: ``(rows, cols)``.
        resized_size: ``(width, height)`` the image is resized to before padding/cutting
            (equal to the input size in ``pad`` mode unless ``max_tiles`` forced a shrink).
        padding: ``(left, top, right, bottom)`` fill added around the resized image
            (all zero in ``grid`` mode).
    """

    mode: SplitMode
    tile: int
    grid: tuple[int, int]
    resized_size: tuple[int, int]
    padding: tuple[int, int, int, int]

    @property
    def canvas_size(self) -> tuple[int, int]:
        """``(width, height)`` of the padded canvas: ``(cols * tile, rows * tile)``."""
        rows, cols = self.grid
        return cols * self.tile, rows * self.tile

    def tile_boxes(self) -> list[tuple[int, int, int, int]]:
        """``(left, top, right, bottom)`` of each tile on the canvas, row-major."""
        rows, cols = self.grid
        t = self.tile
        return [(c * t, r * t, (c + 1) * t, (r + 1) * t) for r in range(rows) for c in range(cols)]

    def source_boxes(self, original_size: tuple[int, int]) -> list[tuple[float, float, float, float]]:
        """Each tile's ``(left, top, right, bottom)`` in the *original* image's pixel frame.

        Parts of a tile that fall on padding map outside ``[0, width] x [0, height]``.
        """
        sx = original_size[0] / self.resized_size[0]
        sy = original_size[1] / self.resized_size[1]
        left_pad, top_pad = self.padding[0], self.padding[1]
        return [
            ((l - left_pad) * sx, (t - top_pad) * sy, (r - left_pad) * sx, (b - top_pad) * sy)
            for l, t, r, b in self.tile_boxes()
        ]


def _split_padding(total: int) -> tuple[int, int]:
    # The off-by-one fix: an odd total puts the extra pixel after, never drops it.
    return total // 2, total - total // 2


def _padded_grid(width: int, height: int, tile: int) -> tuple[int, int]:
    return math.ceil(height / tile), math.ceil(width / tile)


def _pad_plan(width: int, height: int, tile: int, max_tiles: int | None) -> HighResPlan:
    new_w, new_h = width, height
    rows, cols = _padded_grid(width, height, tile)
    if max_tiles is not None and rows * cols > max_tiles:
        # Largest scale s such that ceil(w*s/t) * ceil(h*s/t) <= max_tiles: for each admissible
        # grid the best scale is min(cols*t/w, rows*t/h); take the best over all grids.
        best: tuple[float, int, int] | None = None
        for r in range(1, max_tiles + 1):
            c = max_tiles // r
            scale = min(c * tile / width, r * tile / height)
            if best is None or scale > best[0]:
                best = (scale, r, c)
        assert best is not None
        scale = best[0]
        new_w = max(1, min(width, math.floor(width * scale)))
        new_h = max(1, min(height, math.floor(height * scale)))
        rows, cols = _padded_grid(new_w, new_h, tile)
    left, right = _split_padding(cols * tile - new_w)
    top, bottom = _split_padding(rows * tile - new_h)
    return HighResPlan("pad", tile, (rows, cols), (new_w, new_h), (left, top, right, bottom))


def _grid_plan(width: int, height: int, tile: int, max_tiles: int) -> HighResPlan:
    target = math.log(width / height)
    candidates = [(r, c) for r in range(1, max_tiles + 1) for c in range(1, max_tiles // r + 1)]
    errors = {rc: abs(math.log(rc[1] / rc[0]) - target) for rc in candidates}
    best_error = min(errors.values())
    closest = sorted((rc for rc in candidates if errors[rc] <= best_error + 1e-9), key=lambda rc: rc[0] * rc[1])
    # Among equally close grids: the smallest that needs no upsampling, else the largest.
    covering = [rc for rc in closest if rc[1] * tile >= width and rc[0] * tile >= height]
    rows, cols = covering[0] if covering else closest[-1]
    return HighResPlan("grid", tile, (rows, cols), (cols * tile, rows * tile), (0, 0, 0, 0))


def plan_high_res(
    size: tuple[int, int], tile: int = 336, mode: SplitMode = "pad", max_tiles: int | None = None
) -> HighResPlan:
    """Compute the split geometry for an image of ``size = (width, height)``.

    Raises:
        ValueError: non-positive size or tile, unknown mode, ``max_tiles < 1``, or ``grid``
            mode without ``max_tiles``.
    """
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {size}")
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    if max_tiles is not None and max_tiles < 1:
        raise ValueError(f"max_tiles must be >= 1, got {max_tiles}")
    if mode == "pad":
        return _pad_plan(width, height, tile, max_tiles)
    if mode == "grid":
        if max_tiles is None:
            raise ValueError("mode='grid' needs max_tiles (the cap on rows * cols)")
        return _grid_plan(width, height, tile, max_tiles)
    raise ValueError(f"unknown split mode {mode!r}; expected 'pad' or 'grid'")


def to_rgb(image: Image.Image, background: RGB = WHITE) -> Image.Image:
    """``image`` as RGB, with any transparency composited on ``background``."""
    if image.mode == "RGB":
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def global_view(image: Image.Image, tile: int = 336, background: RGB = CLIP_MEAN_RGB) -> Image.Image:
    """The whole image as a ``tile x tile`` global view, the way the released model saw it.

    Padded to a centred square in ``background`` (the CLIP mean colour), then resized with
    bicubic resampling; fed to CLIP's processor, this gives the very pixels the official code
    produces from the original image (``expand2square`` + ``CLIPImageProcessor``), while only a
    ``tile x tile`` image is kept.
    """
    return square_view(to_rgb(image), tile, background)


@dataclass(frozen=True)
class ViewPlan:
    """Where an image lands in its ``side x side`` view (pad to a centred square, then resize).

    Attributes:
        side: the view's side in pixels.
        canvas: the side of the square the official code pads to (the input's longer side).
        content_box: ``(left, top, right, bottom)`` of the image in the view, in view pixels
            (floats: the resize maps the canvas's pixel edges, not centres); the rest is padding.
        work_bytes: bytes :func:`square_view` allocates besides the input and the view (the
            exact path's canvas, or the banded path's intermediate and one band).
    """

    side: int
    canvas: int
    content_box: tuple[float, float, float, float]
    work_bytes: int

    @property
    def exact(self) -> bool:
        """True when the view is built from the whole square canvas (bit-identical to the official code)."""
        return self.canvas * self.canvas * 4 <= EXACT_CANVAS_BYTES


def plan_view_size(size: tuple[int, int], side: int = 336) -> ViewPlan:
    """The geometry and working memory of :func:`square_view` for an image of ``size = (width, height)``.

    Pure arithmetic (no pixels): a decode worker or an admission check can price a view before
    decoding anything. ``work_bytes`` is at most a few tens of MB whatever the aspect ratio
    (``side x`` the longer input side for the intermediate of the banded path, plus a 16 MiB
    band), against ``4 * max(size) ** 2`` for padding first.
    """
    width, height = int(size[0]), int(size[1])
    if width < 1 or height < 1 or side < 1:
        raise ValueError(f"image size and side must be positive, got {size} and {side}")
    canvas = max(width, height)
    scale = side / canvas
    left, top = (canvas - width) // 2, (canvas - height) // 2
    box = (left * scale, top * scale, (left + width) * scale, (top + height) * scale)
    if canvas * canvas * 4 <= EXACT_CANVAS_BYTES:
        work = 4 * canvas * canvas
    else:
        _, _, cy0, cy1 = _view_span(top, height, canvas, side)
        work = 4 * (side * (cy1 - cy0) + _BAND_PIXELS + side * side)
    return ViewPlan(side, canvas, box, work)


def _view_span(offset: int, length: int, canvas: int, side: int) -> tuple[int, int, int, int]:
    """One axis of the banded path: the output pixels ``[o0, o1)`` whose bicubic window touches
    the image (``length`` pixels at ``offset`` on a ``canvas``-pixel axis), and the canvas
    pixels ``[c0, c1)`` those windows read (Pillow's window: centre +- 2 * scale, +1 margin)."""
    scale = canvas / side
    support = _BICUBIC_SUPPORT * max(scale, 1.0)
    o0 = max(0, math.floor((offset - support) / scale - 0.5) - 1)
    o1 = min(side, math.ceil((offset + length + support) / scale - 0.5) + 2)
    c0 = max(0, math.floor((o0 + 0.5) * scale - support) - 1)
    c1 = min(canvas, math.ceil((o1 - 0.5) * scale + support) + 2)
    return o0, o1, c0, c1


def square_view(image: Image.Image, side: int, background: RGB = CLIP_MEAN_RGB) -> Image.Image:
    """``expand_to_square(image, background).resize((side, side), BICUBIC)``, without the square canvas.

    ``image`` is RGB. Up to :data:`EXACT_CANVAS_BYTES` of canvas (sides up to 2896 px: every
    ordinary photo) the canvas is built and resized: bit-identical to the official
    ``expand2square`` + CLIP processor. Beyond, the same separable bicubic resize is done in
    two passes over only what the view reads: each band of image rows, with the padding its
    filter windows reach, is resized horizontally into a ``side x (image rows + margin)``
    intermediate (the rows above and below are padding, which resizes to padding), and that
    is resized vertically and pasted on a ``side x side`` view of ``background``. Memory then
    follows the view (:func:`plan_view_size`), and the pixels differ from the whole-canvas
    resize by at most one grey level (the resize's fixed-point weights are computed from
    sub-boxes, which rounds some of them differently); the content is letterboxed, never
    stretched.
    """
    width, height = image.size
    canvas = max(width, height)
    if canvas * canvas * 4 <= EXACT_CANVAS_BYTES:
        square = expand_to_square(image, background)
        return square if square.size == (side, side) else square.resize((side, side), Image.Resampling.BICUBIC)
    left, top = (canvas - width) // 2, (canvas - height) // 2
    x0, x1, cx0, cx1 = _view_span(left, width, canvas, side)
    y0, y1, cy0, cy1 = _view_span(top, height, canvas, side)
    # Box edges as integer products over one division: the last edge lands exactly on the canvas edge.
    intermediate = Image.new("RGB", (side, cy1 - cy0), background)
    band = max(1, _BAND_PIXELS // (cx1 - cx0))
    for first in range(0, height, band):
        rows = min(band, height - first)
        strip = Image.new("RGB", (cx1 - cx0, rows), background)
        strip.paste(image.crop((0, first, width, first + rows)), (left - cx0, 0))
        resized = strip.resize((x1 - x0, rows), Image.Resampling.BICUBIC,
                               box=(x0 * canvas / side - cx0, 0, x1 * canvas / side - cx0, rows))
        intermediate.paste(resized, (x0, top + first - cy0))
        del strip, resized
    view = Image.new("RGB", (side, side), background)
    columns = intermediate.resize((side, y1 - y0), Image.Resampling.BICUBIC,
                                  box=(0, y0 * canvas / side - cy0, side, y1 * canvas / side - cy0))
    view.paste(columns, (0, y0))
    return view


def apply_plan(image: Image.Image, plan: HighResPlan, fill: RGB = WHITE) -> list[Image.Image]:
    """Cut ``image`` into the plan's tiles (row-major), each ``tile x tile`` RGB."""
    rgb = to_rgb(image, fill)
    if rgb.size != plan.resized_size:
        rgb = rgb.resize(plan.resized_size, Image.Resampling.BICUBIC)
    if plan.padding != (0, 0, 0, 0):
        canvas = Image.new("RGB", plan.canvas_size, fill)
        canvas.paste(rgb, (plan.padding[0], plan.padding[1]))
    else:
        canvas = rgb
    return [canvas.crop(box) for box in plan.tile_boxes()]


def split_high_res(
    image: Image.Image,
    tile: int = 336,
    mode: SplitMode = "pad",
    max_tiles: int | None = None,
    fill: RGB = WHITE,
) -> tuple[Image.Image, list[Image.Image], tuple[int, int]]:
    """Split ``image`` into a global view plus sub-images, the paper's high-res input.

    Args:
        image: any PIL image; converted to RGB (transparency composited on ``fill``).
        tile: side of each sub-image (336 = the CLIP-336 encoder's input).
        mode: ``"pad"`` (paper: white-pad to a multiple of ``tile``) or ``"grid"``
            (resize to the grid closest to the aspect ratio under ``max_tiles``).
        max_tiles: cap on ``rows * cols``; required for ``grid``, optional for ``pad``
            (where the image is shrunk until the padded grid fits).
        fill: sub-image padding colour (white, as in the paper).

    Returns:
        ``(global_image, tiles, (rows, cols))``: ``global_image`` is :func:`global_view`;
        ``tiles`` has ``rows * cols`` images of
        ``tile x tile``, row-major from the top-left.
    """
    plan = plan_high_res(image.size, tile=tile, mode=mode, max_tiles=max_tiles)
    tiles = apply_plan(image, plan, fill)
    return global_view(image, tile), tiles, plan.grid
