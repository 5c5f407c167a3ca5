"""Haystacks of real images with needle cards inserted at chosen positions.

* :class:`HaystackPool`: real images read through the input adapters from any media sources
  (video files, GeoTIFF scenes, DICOM series, NIfTI volumes, image files) or from a domain
  recipe's bundled data, seen as one long sequence: the frames of source 1, then those of
  source 2, ... and round again. A haystack of ``N`` images is ``N`` consecutive positions
  from a seeded start. The pool keeps only the image *count* of every source: a haystack's
  images are decoded when it is built, each source it touches read once, so memory holds
  one haystack (plus the source being read), never the pool.
* :class:`HaystackPlan`: every decision about one haystack, made from a seed without
  touching a pixel (cheap to list a whole sweep, and what a resumed run compares).
* :func:`build_haystack`: the images of a plan. ``insert`` adds each needle as an image of
  its own (a grey canvas the size of the next frame with the card in the middle: VNBench's
  inserted needles); ``overlay`` pastes the card onto the real frame at that position
  (VNBench's edited frames). Either way a needle at position ``p`` is image ``p`` of the
  result, and the result has exactly ``num_images`` images.
* :func:`verify_haystack`: proves, with :func:`~.needles.find_card`, that each needle's card
  is in exactly the images it was put in and that the cards of ``absent`` values are in none.
"""

from __future__ import annotations

import bisect
import os
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from PIL import Image

from ..errors import ConfigError, InputError
from ..registry import resolve_adapter
from .needles import CardSearch, needle_kind, render_card

__all__ = ["HaystackSource", "HaystackPool", "Placement", "HaystackPlan", "Haystack", "build_haystack",
           "verify_haystack", "INSERTIONS", "CANVAS_GREY"]

#: ``insert``: a needle is an extra image; ``overlay``: a needle is pasted onto a real frame.
INSERTIONS: tuple[str, ...] = ("insert", "overlay")
#: Background of an inserted needle image.
CANVAS_GREY = (128, 128, 128)


@dataclass(frozen=True)
class HaystackSource:
    """One media source of a pool.

    Attributes:
        path: a file or folder (a DICOM series folder, a video, a GeoTIFF...).
        adapter: the adapter to read it with (default: the first installed one that claims it).
        options: options for that adapter (``{"window": "lung"}``; text values are typed by
            the adapter's declared options).
    """

    path: str
    adapter: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)


class HaystackPool:
    """Real images from media sources, as one long cyclic sequence (see the module docstring).

    Args:
        sources: paths or :class:`HaystackSource` objects, in pool order.
        images_per_source: at most this many images from one source (the adapter samples:
            uniformly in time for a video, slices for a volume, tiles for a scene).
        frame_size: every image is scaled (keeping its aspect ratio) so its longer side is
            this many pixels -- the model's image size, so a card's size relative to the
            frame is what the model sees.
        keep_in_memory: keep every source's scaled images after their first read. Only for a
            small pool used for many haystacks (training data: 144 frames at 56 px are 2 MB);
            an evaluation pool is read per haystack, so memory holds one haystack.

    Reading every source once here counts its images (the counts fix the pool's length);
    the images themselves are dropped at once.

    Raises:
        ConfigError: no sources, or a budget / size below 1.
        InputError: a source no adapter can read (the adapters' reasons included).
    """

    def __init__(self, sources: Sequence[str | os.PathLike[str] | HaystackSource], *, images_per_source: int = 64,
                 frame_size: int = 336, keep_in_memory: bool = False) -> None:
        if not sources:
            raise ConfigError("a haystack needs at least one media source")
        if images_per_source < 1 or frame_size < 8:
            raise ConfigError(f"images_per_source must be >= 1 and frame_size >= 8, got {images_per_source} "
                              f"and {frame_size}")
        self.sources = [s if isinstance(s, HaystackSource) else HaystackSource(os.fspath(s)) for s in sources]
        self.images_per_source = int(images_per_source)
        self.frame_size = int(frame_size)
        self.keep_in_memory = bool(keep_in_memory)
        self._kept: dict[int, list[Image.Image]] = {}
        self.counts = [len(self._read(index)) for index in range(len(self.sources))]
        empty = [s.path for s, n in zip(self.sources, self.counts) if n == 0]
        if empty:
            raise InputError(empty[0], "gave no images for the haystack")
        # pool position -> (source, image within the source): prefix sums of the counts
        self._starts = [sum(self.counts[:i]) for i in range(len(self.counts))]

    @classmethod
    def from_domain(cls, name: str, adapter_options: Mapping[str, Any] | None = None,
                    **kwargs: Any) -> "HaystackPool":
        """A pool of every media source in a domain recipe's data, in data-file order (each once).

        The sources are read with the options their rows give (``adapter_options`` on top) and
        the pool's budget, not the recipe's sampling options (they would thin the sources out:
        a haystack wants every frame).
        """
        from ..recipes import load_recipe
        from ..training.data import MediaLoader, read_rows

        recipe = load_recipe(name)
        data = recipe.data
        paths = [p for p in (data.path, data.eval_path) if p is not None]
        if not paths:
            raise ConfigError(f"domain {recipe.name!r} has no data to build a haystack from")
        loader = MediaLoader(data.root or paths[0].parent, recipe)
        seen: dict[str, HaystackSource] = {}
        for path in paths:
            for row in read_rows(path, recipe=recipe):
                for source in row.sources:
                    resolved = loader.resolve_paths(source)
                    if len(resolved) != 1:  # a multi-file source: a pool source is one path
                        continue
                    key = str(resolved[0])
                    seen.setdefault(key, HaystackSource(key, source.adapter, dict(source.options or {})))
        if not seen:
            raise ConfigError(f"domain {recipe.name!r} lists no single-path media sources for a haystack")
        extra = dict(adapter_options or {})
        return cls([HaystackSource(s.path, s.adapter, {**s.options, **extra}) for s in seen.values()], **kwargs)

    # -- facts ----------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Distinct images in the pool (a longer haystack repeats them, round the pool)."""
        return sum(self.counts)

    def describe(self) -> dict[str, Any]:
        """JSON facts: the sources, their image counts and the pool's settings (part of a run's identity)."""
        sources = [{"path": s.path, "adapter": s.adapter, "options": dict(s.options), "images": n}
                   for s, n in zip(self.sources, self.counts)]
        return {"sources": sources, "images": self.size, "images_per_source": self.images_per_source,
                "frame_size": self.frame_size}

    # -- images ----------------------------------------------------------------------------------
    def _read(self, index: int) -> list[Image.Image]:
        """The images of source ``index``, scaled to ``frame_size``."""
        if index in self._kept:
            return self._kept[index]
        source = self.sources[index]
        reader = resolve_adapter(source.path, source.adapter, options=dict(source.options))
        images = [self._fit(image) for image in reader.load(source.path, max_images=self.images_per_source).images]
        if self.keep_in_memory:
            self._kept[index] = images
        return images

    def _fit(self, image: Image.Image) -> Image.Image:
        image = image.convert("RGB")
        scale = self.frame_size / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return image if size == image.size else image.resize(size, Image.Resampling.BICUBIC)

    def locate(self, position: int) -> tuple[int, int]:
        """``(source index, image index in that source)`` of a pool position (taken modulo the size)."""
        position %= self.size
        source = bisect.bisect_right(self._starts, position) - 1
        return source, position - self._starts[source]

    def window(self, start: int, count: int) -> list[Image.Image]:
        """``count`` consecutive images from pool position ``start`` (wrapping round), each a fresh copy.

        Every source the window touches is read once; positions that repeat (a window longer
        than the pool) get separate copies, so pasting a card on one leaves the others as they are.
        """
        wanted: dict[int, list[tuple[int, int]]] = {}
        for offset in range(count):
            source, index = self.locate(start + offset)
            wanted.setdefault(source, []).append((offset, index))
        out: list[Image.Image | None] = [None] * count
        for source, slots in wanted.items():
            images = self._read(source)
            if len(images) != self.counts[source]:
                raise InputError(self.sources[source].path, f"gave {len(images)} images, {self.counts[source]} "
                                 "when the pool was built (did the file change?)")
            for offset, index in slots:
                out[offset] = images[index].copy()
            del images
        return [image for image in out if image is not None]


@dataclass(frozen=True)
class Placement:
    """A needle: the card of ``value`` at ``position`` (index in the finished haystack)."""

    position: int
    value: str


@dataclass(frozen=True)
class HaystackPlan:
    """Everything about one haystack, decided before any image is read.

    Attributes:
        num_images: images in the finished haystack, needles included.
        start: pool position of its first real image.
        insertion: ``insert`` or ``overlay`` (:data:`INSERTIONS`).
        kind: the needle kind (``word``, ``digit``, ``colour``).
        placements: the needles, by position (distinct positions).
        needle_scale: card height as a fraction of the shortest frame side of the haystack.
        seed: where overlay cards land on their frames.
    """

    num_images: int
    start: int
    insertion: str
    kind: str
    placements: tuple[Placement, ...]
    needle_scale: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.insertion not in INSERTIONS:
            raise ConfigError(f"unknown insertion {self.insertion!r}; choose one of {', '.join(INSERTIONS)}")
        positions = [p.position for p in self.placements]
        if len(set(positions)) != len(positions):
            raise ConfigError(f"needle positions must be distinct, got {positions}")
        if any(not 0 <= p < self.num_images for p in positions):
            raise ConfigError(f"needle positions {positions} do not fit a haystack of {self.num_images} images")
        if not 0.0 < self.needle_scale <= 1.0:
            raise ConfigError(f"needle_scale must be in (0, 1], got {self.needle_scale}")

    @property
    def real_images(self) -> int:
        """Images taken from the pool: all of them for ``overlay``, all but the needles for ``insert``."""
        return self.num_images - (len(self.placements) if self.insertion == "insert" else 0)

    def to_json(self) -> dict[str, Any]:
        return {"num_images": self.num_images, "start": self.start, "insertion": self.insertion,
                "needles": [{"position": p.position, "value": p.value} for p in self.placements]}


@dataclass
class Haystack:
    """A built haystack.

    Attributes:
        images: ``num_images`` RGB images in order, the needles among them.
        plan: the plan it was built from.
        card_height: the height every card of this haystack was rendered at.
        card_boxes: ``position -> (x, y, width, height)`` of the card on that image.
    """

    images: list[Image.Image]
    plan: HaystackPlan
    card_height: int
    card_boxes: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)

    def card(self, value: str) -> Image.Image:
        """The card of ``value`` exactly as this haystack renders cards."""
        return render_card(self.plan.kind, value, self.card_height)


def _card_height(plan: HaystackPlan, frames: Sequence[Image.Image], frame_size: int, values: Iterable[str]) -> int:
    """One card height for the whole haystack: ``needle_scale`` of the shortest frame side, lowered
    until the widest card fits the narrowest frame (so every card fits every frame)."""
    short = min((min(f.size) for f in frames), default=frame_size)
    narrow = min((f.width for f in frames), default=frame_size)
    height = max(4, round(plan.needle_scale * short))
    while height > 4 and max(render_card(plan.kind, v, height).width for v in values) > narrow:
        height -= 1
    return height


def build_haystack(plan: HaystackPlan, pool: HaystackPool, *, extra_values: Iterable[str] = ()) -> Haystack:
    """The images of ``plan``: real images from ``pool`` with the needle cards inserted / overlaid.

    ``extra_values`` are values whose cards must also fit (the answer options that are *not*
    in the haystack, so :func:`verify_haystack` can look for them at the same size).
    """
    frames = pool.window(plan.start, plan.real_images)
    values = {p.value for p in plan.placements} | set(extra_values)
    height = _card_height(plan, frames, pool.frame_size, values)
    rng = random.Random(plan.seed)
    boxes: dict[int, tuple[int, int, int, int]] = {}
    images = list(frames)
    for placement in sorted(plan.placements, key=lambda p: p.position):
        card = render_card(plan.kind, placement.value, height)
        if plan.insertion == "insert":
            # the canvas takes the size of the frame it precedes (the last frame's at the end)
            neighbour = images[min(placement.position, len(images) - 1)] if images else None
            size = neighbour.size if neighbour is not None else (pool.frame_size, pool.frame_size)
            canvas = Image.new("RGB", size, CANVAS_GREY)
            x, y = (size[0] - card.width) // 2, (size[1] - card.height) // 2
            canvas.paste(card, (x, y))
            images.insert(placement.position, canvas)
        else:
            frame = images[placement.position]
            x = rng.randint(0, frame.width - card.width)
            y = rng.randint(0, frame.height - card.height)
            frame.paste(card, (x, y))
        boxes[placement.position] = (x, y, card.width, card.height)
    if len(images) != plan.num_images:  # a bookkeeping error, never an input problem
        raise AssertionError(f"built {len(images)} images for a plan of {plan.num_images}")
    return Haystack(images, plan, height, boxes)


def verify_haystack(haystack: Haystack, absent: Iterable[str] = ()) -> None:
    """Check that the answer is only in the needles.

    Every needle value's card must appear in exactly the images the plan put it in, and the
    card of every ``absent`` value (the wrong options) in no image at all.

    Raises:
        InputError: a card is missing, duplicated or present where it must not be -- e.g. a
            haystack source that already shows such a card (the answer would not be only in
            the needle).
    """
    expected: dict[str, set[int]] = {}
    for placement in haystack.plan.placements:
        expected.setdefault(placement.value, set()).add(placement.position)
    for value in absent:
        if value in expected:
            raise ConfigError(f"value {value!r} is both a needle and an absent option")
        expected[value] = set()
    cards = {value: haystack.card(value) for value in expected}
    found: dict[str, set[int]] = {value: set() for value in expected}
    for index, image in enumerate(haystack.images):
        search = CardSearch(image)
        for value, card in cards.items():
            if search.find(card):
                found[value].add(index)
    wrong = {value: (sorted(found[value]), sorted(expected[value])) for value in expected
             if found[value] != expected[value]}
    if wrong:
        details = "; ".join(f"{needle_kind(haystack.plan.kind).what} {value!r} found in images {got}, expected {want}"
                            for value, (got, want) in wrong.items())
        raise InputError("<haystack>", f"the answer is not only in the needle: {details}")

