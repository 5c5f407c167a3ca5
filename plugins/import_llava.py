"""Importer ``llava``: LLaVA conversation files, the form ``finetune --data`` reads.

Layout (LLaVA-1.5's ``llava_v1_5_mix665k.json``, Liu et al., "Improved Baselines with Visual
Instruction Tuning", CVPR 2024, https://github.com/haotian-liu/LLaVA): a JSON list (or a
JSONL file) of records::

    {"id": "000000033471",
     "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                       {"from": "gpt", "value": "The bus is white and red."}]}

``image`` is a path or a list of paths relative to the image folder (LLaVA's
``--image_folder``; here ``--media-root``, default: the folder of the JSON file), one
``<image>`` marker each. The SDK's other source keys (``video``, ``volume``, ``tiled``: a path,
a list of files of one source, or ``{"path", "adapter", "options"}``), ``labels`` and
``split`` pass through. Records without media (LLaVA's text-only ShareGPT turns) are kept.

Checked per record: an object; ``conversations`` a non-empty list of ``from`` (human / gpt /
system, also user / assistant) and string ``value``; ``<image>`` markers equal to the number
of sources (a record with sources and no marker at all gets them at the start of its first
question, as LLaVA's own preprocessing does); every media file exists, is a regular file and
stays inside the media root. A record without ``id`` gets ``<file stem>-<record number>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from longllava_sdk import hookimpl
from longllava_sdk.importers import (
    IMAGE_MARKER,
    MEDIA_KEYS,
    ImportedRow,
    Importer,
    MediaRef,
    RowIssue,
    RowProblem,
    converted,
    count_markers,
    json_records,
)

#: ``from`` values of LLaVA files and their manifest roles.
ROLE_NAMES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt", "system": "system"}


class LlavaImporter(Importer):
    """LLaVA JSON / JSONL conversations (``image`` paths, ``conversations`` with ``from`` / ``value``)."""

    name = "llava"
    description = "LLaVA conversation JSON/JSONL (llava_v1_5_mix665k.json layout): image + conversations"
    media_lookup = "`image` (and video/volume/tiled) paths under --media-root (default: the JSON file's folder)"

    def iter_rows(self, source: Path, media_root: Path) -> Iterator[ImportedRow | RowProblem]:
        return converted(json_records(source), lambda record, number: self.convert(record, number, source, media_root))

    def convert(self, record: Any, number: int, source: Path, media_root: Path) -> ImportedRow:
        """One LLaVA record -> a row (raises :class:`RowIssue`)."""
        if not isinstance(record, dict):
            raise RowIssue(f"a record must be a JSON object, got {type(record).__name__}")
        turns = parse_turns(record.get("conversations"), "conversations")
        media: list[MediaRef] = []
        for key in MEDIA_KEYS:
            value = record.get(key)
            if value in (None, "", []):
                continue
            media.extend(self.media_refs(value, key, media_root))
        turns = with_markers(turns, len(media))
        labels = record.get("labels")
        if labels is not None:
            if isinstance(labels, str):
                labels = [part.strip() for part in labels.split(";") if part.strip()]
            elif not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
                raise RowIssue(f"'labels' must be a string or a list of strings, got {labels!r}")
        split = record.get("split")
        if split is not None and not isinstance(split, str):
            raise RowIssue(f"'split' must be text, got {split!r}")
        return ImportedRow(number=number, id=record_id(record, source, number), conversations=turns, media=media,
                           labels=labels, split=split or None)

    def media_refs(self, value: Any, key: str, media_root: Path) -> list[MediaRef]:
        """The sources of one media key (LLaVA forms: path, list, ``{"path", "adapter", "options"}``)."""
        if isinstance(value, str):
            return [MediaRef((self.find_media(media_root, value, key),), key)]
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"path", "adapter", "options"})
            if unknown:
                raise RowIssue(f"'{key}' has unknown field(s) {unknown} (allowed: path, adapter, options)")
            path = value.get("path")
            paths = path if isinstance(path, list) and path else [path]
            adapter, options = value.get("adapter"), value.get("options") or {}
            if adapter is not None and not isinstance(adapter, str):
                raise RowIssue(f"'{key}.adapter' must be an adapter name, got {adapter!r}")
            if not isinstance(options, dict):
                raise RowIssue(f"'{key}.options' must be an object, got {options!r}")
            found = tuple(self.find_media(media_root, p, key) for p in paths)
            return [MediaRef(found, key, adapter, tuple(sorted(options.items())))]
        if isinstance(value, list) and value:
            if key == "image":  # one source per image path
                return [ref for item in value for ref in self.media_refs(item, key, media_root)]
            if all(isinstance(v, dict) for v in value):  # several sources of this kind
                return [ref for item in value for ref in self.media_refs(item, key, media_root)]
            if all(isinstance(v, str) for v in value):  # the files of one source (a DICOM series)
                return [MediaRef(tuple(self.find_media(media_root, v, key) for v in value), key)]
        raise RowIssue(f"'{key}' must be a path, a list of paths or an object with 'path', got {value!r}")


def parse_turns(conversations: Any, field: str) -> list[tuple[str, str]]:
    """``[{"from"|"role": ..., "value"|"content": ...}]`` -> ``[(role, text)]`` (raises :class:`RowIssue`)."""
    if not isinstance(conversations, list) or not conversations:
        raise RowIssue(f"'{field}' must be a non-empty list of turns")
    turns = []
    for index, turn in enumerate(conversations, start=1):
        if not isinstance(turn, dict):
            raise RowIssue(f"turn {index} of '{field}' must be an object")
        speaker = turn.get("from", turn.get("role"))
        role = ROLE_NAMES.get(str(speaker).lower()) if isinstance(speaker, str) else None
        if role is None:
            raise RowIssue(f"turn {index} has speaker {speaker!r}; expected human/user, gpt/assistant or system")
        text = turn.get("value", turn.get("content"))
        if not isinstance(text, str):
            raise RowIssue(f"turn {index} ({speaker}) has no text")
        turns.append((role, text))
    return turns


def with_markers(turns: list[tuple[str, str]], n_media: int) -> list[tuple[str, str]]:
    """``turns`` whose markers match ``n_media``; with no marker at all, they open the first question."""
    markers = count_markers(turns)
    if markers == n_media:
        return turns
    if markers == 0 and n_media:
        first = next(i for i, (role, _) in enumerate(turns + [("human", "")]) if role == "human")
        if first == len(turns):
            raise RowIssue("the record has media but no question (human turn) to attach them to")
        role, text = turns[first]
        return turns[:first] + [(role, (IMAGE_MARKER + "\n") * n_media + text)] + turns[first + 1:]
    raise RowIssue(f"{markers} {IMAGE_MARKER} marker(s) but {n_media} media source(s)")


def record_id(record: dict[str, Any], source: Path, number: int) -> str:
    """The record's ``id`` as text, or ``<file stem>-<number>``."""
    value = record.get("id")
    if value is None or (isinstance(value, str) and not value.strip()):
        return f"{source.stem}-{number}"
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise RowIssue(f"'id' must be text or a number, got {value!r}")
    return str(value).strip()


@hookimpl
def longllava_register_importers():
    return [LlavaImporter]
