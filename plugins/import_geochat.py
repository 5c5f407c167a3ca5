"""Importer ``geochat``: GeoChat-Instruct conversations with oriented boxes on a 0-100 grid.

Dataset: Kuckreja et al., "GeoChat: Grounded Large Vision-Language Model for Remote
Sensing", CVPR 2024, https://github.com/mbzuai-oryx/GeoChat (``GeoChat_Instruct.json``).

Layout: LLaVA conversations (see the ``llava`` importer: ``id``, ``image`` relative to the
image folder, ``conversations`` with ``from`` / ``value``) whose turns carry GeoChat's task
tags (``[refer]``, ``[grounding]``, ``[identify]``...) and boxes written as::

    {<x1><y1><x2><y2>|<theta>}

``x1 y1 x2 y2`` are the box's left, top, right, bottom on a 0-100 grid over the image
(``x`` across, ``y`` down), ``theta`` its rotation in degrees (-90 to 90); several boxes follow
each other, possibly separated by ``<delim>``. The text is kept as is, so a model fine-tuned on
the manifest answers in GeoChat's format.

Checked per record, besides the ``llava`` checks: every ``{<`` starts a well-formed box
(four coordinates, optional ``|<theta>``, numbers), ``0 <= x1 < x2 <= 100``,
``0 <= y1 < y2 <= 100`` and ``-90 <= theta <= 90`` (the grammar: :mod:`longllava_plugins.geochat_boxes`,
shared with the ``geojson`` exporter). Media root default: the JSON's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longllava_sdk import hookimpl
from longllava_sdk.importers import ImportedRow, RowIssue
from longllava_plugins import geochat_boxes
from longllava_plugins.import_llava import LlavaImporter

def parse_boxes(text: str) -> list[tuple[float, float, float, float, float]]:
    """Every box in ``text`` as ``(x1, y1, x2, y2, theta)``, validated (raises :class:`RowIssue`)."""
    try:
        return [(b.x1, b.y1, b.x2, b.y2, b.theta) for b in geochat_boxes.parse_boxes(text)]
    except geochat_boxes.BoxSyntaxError as exc:
        raise RowIssue(str(exc)) from None


class GeoChatImporter(LlavaImporter):
    """GeoChat-Instruct: LLaVA conversations with ``{<x1><y1><x2><y2>|<theta>}`` boxes, validated."""

    name = "geochat"
    description = "GeoChat-Instruct JSON (GeoChat_Instruct.json): LLaVA conversations with {<x1><y1><x2><y2>|<theta>} boxes"
    media_lookup = "`image` paths under --media-root (default: the JSON file's folder)"

    def convert(self, record: Any, number: int, source: Path, media_root: Path) -> ImportedRow:
        row = super().convert(record, number, source, media_root)
        for index, (_role, text) in enumerate(row.conversations, start=1):
            try:
                parse_boxes(text)
            except RowIssue as issue:
                raise RowIssue(f"turn {index}: {issue}") from None
        return row


@hookimpl
def longllava_register_importers():
    return [GeoChatImporter]
