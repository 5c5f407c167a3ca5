"""GeoChat's box grammar, shared by the ``geochat`` importer and the ``geojson`` exporter.

GeoChat (Kuckreja et al., CVPR 2024) writes an oriented box in text as::

    {<x1><y1><x2><y2>|<theta>}

``x1 y1 x2 y2`` are the box's left, top, right, bottom on a 0-100 grid over the image the
model saw (``x`` across, ``y`` down), ``theta`` its rotation in degrees (-90 to 90; the
``|<theta>`` part may be absent: 0). Several boxes of one object follow each other, possibly
separated by ``<delim>``; the object's phrase comes before them (in grounding answers inside
``<p>...</p>``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER = r"(-?\d+(?:\.\d+)?)"
#: One GeoChat box: ``{<x1><y1><x2><y2>|<theta>}`` (the angle part optional).
BOX = re.compile(r"\{<" + r"><".join([_NUMBER] * 4) + r">(?:\|<" + _NUMBER + r">)?\}")
GRID = 100.0
_PHRASE = re.compile(r"<p>(.*?)</p>", re.DOTALL)
_TAGS = re.compile(r"\[[a-z_ ]+\]|</?p>|<delim>", re.IGNORECASE)


class BoxSyntaxError(ValueError):
    """A ``{<`` that does not start a well-formed box, or a box out of range (the message says which)."""


@dataclass(frozen=True)
class GeoBox:
    """One box of an answer.

    Attributes:
        x1, y1, x2, y2: left, top, right, bottom on the 0-100 grid.
        theta: rotation in degrees about the box's centre.
        label: the phrase before the box (``""`` when there is none).
        text: the box as written.
    """

    x1: float
    y1: float
    x2: float
    y2: float
    theta: float
    label: str
    text: str


def parse_boxes(text: str) -> list[GeoBox]:
    """Every box in ``text``, validated, with the phrase before it as its label.

    A box's label is the text between the previous box (or the start) and it, with GeoChat's
    task tags and ``<delim>`` removed: the content of the last ``<p>...</p>`` there when
    present, else the last clause (after the last ``.``, ``;``, ``:`` or line break). Boxes
    separated only by ``<delim>`` / commas / ``and`` share the label of the first.

    Raises:
        BoxSyntaxError: a malformed box, ``x1 >= x2`` / ``y1 >= y2``, a coordinate outside
            0..100 or an angle outside -90..90 (naming the box).
    """
    boxes: list[GeoBox] = []
    matched = {m.start(): m for m in BOX.finditer(text)}
    previous_end, label = 0, ""
    for start in (m.start() for m in re.finditer(r"\{<", text)):
        match = matched.get(start)
        if match is None:
            snippet = text[start:start + 40].split("}")[0] + "}"
            raise BoxSyntaxError(f"malformed box {snippet!r}: expected {{<x1><y1><x2><y2>|<theta>}}")
        x1, y1, x2, y2 = (float(v) for v in match.groups()[:4])
        theta = float(match.group(5)) if match.group(5) is not None else 0.0
        if not (0 <= x1 < x2 <= GRID and 0 <= y1 < y2 <= GRID):
            raise BoxSyntaxError(f"box {match.group(0)} is not 0 <= x1 < x2 <= 100 and 0 <= y1 < y2 <= 100")
        if not -90 <= theta <= 90:
            raise BoxSyntaxError(f"box {match.group(0)}: angle {theta:g} is outside -90..90 degrees")
        phrase = _phrase(text[previous_end:start])
        if phrase:
            label = phrase
        boxes.append(GeoBox(x1, y1, x2, y2, theta, label, match.group(0)))
        previous_end = match.end()
    return boxes


def _phrase(between: str) -> str:
    tagged = _PHRASE.findall(between)
    if tagged:
        return " ".join(tagged[-1].split())
    plain = _TAGS.sub(" ", between)
    clause = re.split(r"[.;:\n]", plain)[-1]
    clause = re.sub(r"^\W*(?:and|or)\b|[\s,]*(?:and|or)?[\s,]*$", "", clause.strip(), flags=re.IGNORECASE)
    clause = re.sub(r"\s+(?:at|in|is at|are at|located at)$", "", clause.strip(), flags=re.IGNORECASE)
    return " ".join(clause.split())
