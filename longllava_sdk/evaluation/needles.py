"""Needles: rendered cards whose content is the answer, and an exact search for them.

A needle is a *card*: a white rectangle with a thin black border showing one value of a
needle kind:

========  ==========================================  =======================================
kind      the card shows                              vocabulary (the possible answers)
========  ==========================================  =======================================
word      a code word in black capitals               :data:`CODE_WORDS` (or a head's labels)
digit     one digit                                   ``0`` ... ``9``
colour    a filled square of a named colour           :data:`COLOURS` names
========  ==========================================  =======================================

Real photographs, video frames, CT slices or map tiles cannot contain such a card
pixel-for-pixel, so the answer is only in the needle. :func:`find_card` checks that
exactly: it finds every position where a card's pixels appear unchanged in an image,
which is how the generators verify that the answer card is in exactly the images it was
put in and that no other option's card is anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import ConfigError

__all__ = [
    "NEEDLE_KINDS",
    "CODE_WORDS",
    "COLOURS",
    "OPTION_LETTERS",
    "NeedleKind",
    "needle_kind",
    "render_card",
    "find_card",
    "format_options",
]

#: Code words: distinct capitals-only words that are not ordinary answers ("yes", "no", colours).
CODE_WORDS: tuple[str, ...] = (
    "ZEBRA", "KAYAK", "QUARTZ", "MANGO", "VIOLIN", "TUNDRA", "PIXEL", "GLACIER", "WALNUT", "COMET",
    "FALCON", "JIGSAW", "LAGOON", "NECTAR", "OYSTER", "PEPPER", "RADISH", "SAFARI", "TEAPOT", "VORTEX",
    "WIZARD", "YOGURT", "BANJO", "CACTUS", "DINGO", "EMBER", "FJORD", "GECKO", "HAZEL", "IGLOO",
    "JUNIPER", "KOALA",
)
#: Colour names and the RGB the colour card's square is filled with (far apart in RGB).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 80, 230), "yellow": (240, 210, 30),
    "magenta": (210, 40, 200), "cyan": (40, 200, 210), "orange": (245, 140, 20), "purple": (110, 40, 160),
}
DIGITS: tuple[str, ...] = tuple("0123456789")
#: Multiple-choice option letters, as VNBench writes them: ``(A) ...``.
OPTION_LETTERS = "ABCDEFGH"


@dataclass(frozen=True)
class NeedleKind:
    """How one kind of needle is rendered and asked about.

    Attributes:
        name: ``word``, ``digit`` or ``colour``.
        vocabulary: the values a card may show (the possible answers).
        card: the card in words, singular (``a card with a code word``).
        cards: the same, plural.
        what: what the question asks for (``code word``).
        whats: the same, plural.
    """

    name: str
    vocabulary: tuple[str, ...]
    card: str
    cards: str
    what: str
    whats: str

    def showing(self, value: str) -> str:
        """``a card with the code word ZEBRA`` / ``a card with a red square``: the card of one value."""
        if self.name == "colour":
            return f"a card with {'an' if value[:1] in 'aeiou' else 'a'} {value} square"
        return f"a card with the {self.what} {value}"

    def check_values(self, values: list[str]) -> list[str]:
        """``values`` as this kind renders them; raises :class:`ConfigError` for one it cannot render."""
        if not values:
            raise ConfigError(f"a {self.name} needle needs at least one value to show")
        out = []
        for value in values:
            text = str(value).strip()
            if self.name == "colour":
                if text.lower() not in COLOURS:
                    raise ConfigError(f"a colour needle cannot show {value!r}; known colours: {', '.join(COLOURS)}")
                text = text.lower()
            elif self.name == "digit":
                if text not in DIGITS:
                    raise ConfigError(f"a digit needle shows one digit 0-9, not {value!r}")
            elif not text or len(text) > 24 or "\n" in text:
                raise ConfigError(f"a word needle shows 1 to 24 characters on one line, not {value!r}")
            out.append(text)
        return out


NEEDLE_KINDS: dict[str, NeedleKind] = {
    "word": NeedleKind("word", CODE_WORDS, "a card with a code word", "cards with code words", "code word",
                       "code words"),
    "digit": NeedleKind("digit", DIGITS, "a card with a number", "cards with numbers", "number", "numbers"),
    "colour": NeedleKind("colour", tuple(COLOURS), "a card with a coloured square", "cards with coloured squares",
                         "colour of the square", "colours"),
}


def needle_kind(name: str) -> NeedleKind:
    """The needle kind called ``name`` (``word``, ``digit``, ``colour``)."""
    if name not in NEEDLE_KINDS:
        raise ConfigError(f"unknown needle kind {name!r}; choose one of {', '.join(NEEDLE_KINDS)}")
    return NEEDLE_KINDS[name]


def format_options(options: list[str]) -> str:
    """VNBench's option block: ``(A) first`` ... one per line."""
    return "\n".join(f"({OPTION_LETTERS[i]}) {option}" for i, option in enumerate(options))


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------

@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled scalable font: the same glyphs on every machine with this Pillow build.
    return ImageFont.load_default(size=size)


def _border(height: int) -> int:
    return max(1, height // 24)


@lru_cache(maxsize=256)
def _card(kind: str, value: str, height: int) -> Image.Image:
    border = _border(height)
    if kind == "colour":
        card = Image.new("RGB", (height, height), (255, 255, 255))
        draw = ImageDraw.Draw(card)
        inset = max(border + 1, height // 6)
        draw.rectangle([inset, inset, height - 1 - inset, height - 1 - inset], fill=COLOURS[value])
    else:
        font = _font(max(6, round(height * 0.62)))
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        left, top, right, bottom = probe.textbbox((0, 0), value, font=font)
        pad = max(2, height // 6)
        card = Image.new("RGB", (right - left + 2 * pad, height), (255, 255, 255))
        draw = ImageDraw.Draw(card)
        draw.text((pad - left, (height - (bottom - top)) // 2 - top), value, fill=(0, 0, 0), font=font)
    ImageDraw.Draw(card).rectangle([0, 0, card.width - 1, card.height - 1], outline=(0, 0, 0), width=border)
    return card


def render_card(kind: str, value: str, height: int) -> Image.Image:
    """The card of ``value`` (a value of needle kind ``kind``), ``height`` pixels tall.

    Word and digit cards are as wide as their text; colour cards are square. The same
    arguments always give the same pixels (the rendering is cached; callers get a copy).
    """
    if height < 4:
        raise ConfigError(f"a needle card needs at least 4 pixels of height, got {height}")
    needle_kind(kind).check_values([value])
    return _card(kind, value, int(height)).copy()


# ---------------------------------------------------------------------------------------------
# finding a card in an image
# ---------------------------------------------------------------------------------------------

class CardSearch:
    """Exact search for cards in one image.

    ``find(card)`` returns every top-left ``(x, y)`` where ``card`` appears pixel-for-pixel.
    A card is only ever pasted unchanged, so an exact search is the right test (and cheap):
    the positions where a 4 x 4 grid of the card's pixels (corners and centre included)
    all match the image are found with whole-array comparisons, then each such position is
    compared in full. Real images leave almost no position after the first few pixels.
    """

    def __init__(self, image: Image.Image) -> None:
        self.pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)

    def find(self, card: Image.Image) -> list[tuple[int, int]]:
        template = np.asarray(card.convert("RGB"), dtype=np.uint8)  # (h, w, 3)
        height, width, _ = self.pixels.shape
        h, w, _ = template.shape
        if h > height or w > width:
            return []
        rows, cols = height - h + 1, width - w + 1
        alive = np.ones((rows, cols), dtype=bool)
        for ty in np.linspace(0, h - 1, 4).round().astype(int):
            for tx in np.linspace(0, w - 1, 4).round().astype(int):
                # image pixel (y + ty, x + tx) for every candidate top-left (y, x)
                shifted = self.pixels[ty:ty + rows, tx:tx + cols]
                alive &= (shifted == template[ty, tx]).all(axis=2)
                if not alive.any():
                    return []
        found = []
        for y, x in np.argwhere(alive):
            if np.array_equal(self.pixels[y:y + h, x:x + w], template):
                found.append((int(x), int(y)))
        return found


def find_card(image: Image.Image, card: Image.Image) -> list[tuple[int, int]]:
    """Every top-left ``(x, y)`` at which ``card`` appears unchanged in ``image`` (see :class:`CardSearch`)."""
    return CardSearch(image).find(card)
