"""The contract between input adapters and the processor.

An input adapter turns one source (a file, a folder, a list of files) into a :class:`Media`:
an ordered list of RGB PIL images plus the structure the processor needs to render the
paper's tag protocol:

========  ===================================================  ===========================
kind      images                                               rendered as
========  ===================================================  ===========================
images    independent images                                   ``<img><image></img>`` each
video     frames in time order, ``metadata[i]["timestamp"]``   ``<vid>`` frames joined by
                                                               ``<t>`` ``</vid>``
volume    slices in patient order (``slice_position``)        ``<img><image></img>`` each
tiled     ``images[0]`` = global view, then ``grid`` tiles     global, ``\\n``, tile rows
          row-major, top-left to bottom-right                  separated by ``\\n``
other     a plugin's own kind (``spectrogram``...)             like ``images``
========  ===================================================  ===========================

Adapters never return more than ``max_images`` images (they sample, keeping the first and
last slice / frame) so the processor never has to drop anything silently.

An image may also be a :class:`DeferredImage`: checked by the adapter (header, size,
limits) but decoded only when the processor needs its pixels, one prefill chunk at a time,
so a prompt of 1000 image files never holds 1000 decoded images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import re
from typing import Any, Callable

from PIL import Image

#: A media kind is an open word: the built-in kinds below, or any a plugin adapter declares
#: (rendered like ``images``: one ``<img><image></img>`` per image).
MediaKind = str
IMAGES: MediaKind = "images"
VIDEO: MediaKind = "video"
VOLUME: MediaKind = "volume"
TILED: MediaKind = "tiled"
#: The kinds the SDK itself renders specially or reads through a ``Pipeline`` keyword.
MEDIA_KINDS: tuple[str, ...] = (IMAGES, VIDEO, VOLUME, TILED)
_KIND = re.compile(r"^[a-z][a-z0-9_]*$")

#: Pillow format names an image file may have, wherever one is read (the images adapter, the
#: HTTP server's data URLs and downloads); only these openers ever parse image bytes. OpenAI
#: accepts PNG, JPEG, WebP and GIF; BMP and TIFF are common in imaging; MPO is a JPEG variant.
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF")


class DeferredImage:
    """An image whose pixels are decoded on :meth:`load`, each time it is asked for.

    Args:
        load: returns the RGB ``PIL.Image`` (raising the adapter's typed error if the file
            turns out to be unreadable after all).
        size: ``(width, height)`` as :meth:`load` will return it, known from the header.
        source: the file, for messages.
    """

    __slots__ = ("_load", "size", "source")

    def __init__(self, load: Callable[[], Image.Image], size: tuple[int, int], source: str) -> None:
        self._load = load
        self.size = (int(size[0]), int(size[1]))
        self.source = source

    def load(self) -> Image.Image:
        return self._load()

    def __repr__(self) -> str:
        return f"DeferredImage({self.source!r}, size={self.size})"


def load_image(image: "Image.Image | DeferredImage") -> Image.Image:
    """The decoded image: ``image`` itself, or a :class:`DeferredImage` decoded now."""
    return image.load() if isinstance(image, DeferredImage) else image


@dataclass
class Media:
    """Images from one source, in order, with the structure the tag protocol renders.

    Attributes:
        kind: ``images``, ``video``, ``volume``, ``tiled`` or a plugin's own kind (a
            lower-case word; rendered like ``images``).
        images: RGB ``PIL.Image`` objects (or :class:`DeferredImage` ones), in rendering order.
        metadata: one dict per image (e.g. ``timestamp`` in seconds for video,
            ``slice_position`` in mm for volumes, ``window`` and ``bounds`` for tiles).
        source: the path (or description) the images came from; used in error messages.
        grid: ``(rows, cols)`` of the tile grid that follows the global image (``tiled`` only).
            When near-empty tiles were dropped, each remaining tile's metadata carries its
            ``row`` and ``col``; the processor renders rows from those.
        info: source-level facts (series UID, spacing, CRS, fps, warnings about gaps...).
    """

    kind: MediaKind
    images: list[Image.Image | DeferredImage]
    metadata: list[dict[str, Any]] = field(default_factory=list)
    source: str = "<memory>"
    grid: tuple[int, int] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not _KIND.match(self.kind):
            raise ValueError(f"{self.source}: media kind must be a lower-case word such as "
                             f"{', '.join(MEDIA_KINDS)} or a plugin's own, got {self.kind!r}")
        if not self.metadata:
            self.metadata = [{} for _ in self.images]
        if len(self.metadata) != len(self.images):
            raise ValueError(
                f"{self.source}: {len(self.images)} images but {len(self.metadata)} metadata entries"
            )
        if self.kind == "tiled":
            if self.grid is None:
                raise ValueError(f"{self.source}: tiled media needs grid=(rows, cols)")
            rows, cols = self.grid
            n_tiles = len(self.images) - 1
            if n_tiles == rows * cols:
                for i, meta in enumerate(self.metadata[1:]):
                    meta.setdefault("row", i // cols)
                    meta.setdefault("col", i % cols)
            elif not 0 <= n_tiles < rows * cols or not all("row" in m for m in self.metadata[1:]):
                raise ValueError(
                    f"{self.source}: tiled media with grid {rows}x{cols} needs 1 global image + at most "
                    f"{rows * cols} tiles (each with a 'row' in its metadata when some were dropped), "
                    f"got {len(self.images)} images"
                )
        elif self.grid is not None:
            raise ValueError(f"{self.source}: grid is only meaningful for tiled media, not {self.kind}")
        if not self.images:
            raise ValueError(f"{self.source}: media holds no images")

    def __len__(self) -> int:
        return len(self.images)

    def tile_rows(self) -> list[list[int]]:
        """Indices into ``images`` of the tiles of each non-empty grid row, top to bottom."""
        if self.kind != "tiled":
            raise ValueError(f"{self.source}: tile_rows() is only defined for tiled media")
        rows: dict[int, list[int]] = {}
        for index in range(1, len(self.images)):
            rows.setdefault(int(self.metadata[index]["row"]), []).append(index)
        return [rows[r] for r in sorted(rows)]
