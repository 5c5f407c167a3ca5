"""Importer ``llamafactory``: LLaMA-Factory's multimodal ShareGPT files.

Layout (LLaMA-Factory's ``data/mllm_demo.json`` and ``data/mllm_video_demo.json``, described
in its ``data/README.md``; Zheng et al., "LlamaFactory: Unified Efficient Fine-Tuning of 100+
Language Models", ACL 2024 demo, https://github.com/hiyouga/LLaMA-Factory)::

    [{"messages": [{"role": "user", "content": "<image>Who are they?"},
                   {"role": "assistant", "content": "They're Kane and Gretzka from Bayern Munich."}],
      "images": ["mllm_demo_data/1.jpg"]},
     {"messages": [{"role": "user", "content": "<video>Why is this video funny?"},
                   {"role": "assistant", "content": "Because a baby is reading, and he is so cute!"}],
      "videos": ["mllm_demo_data/1.mp4"]}]

``images`` / ``videos`` are paths relative to LLaMA-Factory's ``dataset_dir`` (its
``media_dir`` default), here ``--media-root``, default: the folder of the JSON file. Each
``<image>`` / ``<video>`` marker in the user turns stands for the next image / video, as in
LLaMA-Factory, which refuses a record whose marker count differs from its media; so does
this importer. The ShareGPT default columns (``conversations`` with ``from`` / ``value``)
and an optional ``system`` column are read too. ``audios`` are not supported (the row is
reported).

In the manifest, every marker becomes the SDK's ``<image>``, images read by the image
adapters and videos by the video adapters. The manifest attaches all images before all
videos, so a record whose text puts a ``<video>`` before an ``<image>`` is reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from longllava_sdk import hookimpl
from longllava_sdk.importers import (
    IMAGE_MARKER,
    ImportedRow,
    Importer,
    MediaRef,
    RowIssue,
    RowProblem,
    converted,
    json_records,
)
from longllava_plugins.import_llava import parse_turns, record_id

VIDEO_MARKER = "<video>"


class LlamaFactoryImporter(Importer):
    """LLaMA-Factory ShareGPT multimodal records (``messages`` + ``images`` / ``videos``)."""

    name = "llamafactory"
    description = "LLaMA-Factory ShareGPT multimodal JSON/JSONL (mllm_demo.json): messages + images/videos"
    media_lookup = "`images` / `videos` paths under --media-root (default: the JSON file's folder, LLaMA-Factory's dataset_dir)"

    def iter_rows(self, source: Path, media_root: Path) -> Iterator[ImportedRow | RowProblem]:
        return converted(json_records(source), lambda record, number: self.convert(record, number, source, media_root))

    def convert(self, record: Any, number: int, source: Path, media_root: Path) -> ImportedRow:
        if not isinstance(record, dict):
            raise RowIssue(f"a record must be a JSON object, got {type(record).__name__}")
        field = "messages" if "messages" in record else "conversations"
        turns = parse_turns(record.get(field), field)
        system = record.get("system")
        if system not in (None, ""):
            if not isinstance(system, str):
                raise RowIssue(f"'system' must be text, got {system!r}")
            if turns[0][0] == "system":
                raise RowIssue("both a 'system' column and a system turn")
            turns = [("system", system)] + turns
        if record.get("audios"):
            raise RowIssue("'audios' are not supported by the SDK (no audio adapter)")
        images = _paths(record, "images")
        videos = _paths(record, "videos")
        counts = {marker: sum(text.count(marker) for role, text in turns if role == "human")
                  for marker in (IMAGE_MARKER, VIDEO_MARKER)}
        for marker, listed, column in ((IMAGE_MARKER, images, "images"), (VIDEO_MARKER, videos, "videos")):
            if counts[marker] != len(listed):
                raise RowIssue(f"{counts[marker]} {marker} marker(s) but {len(listed)} {column}")
        for role, text in turns:
            if role != "human" and (IMAGE_MARKER in text or VIDEO_MARKER in text):
                raise RowIssue("an assistant or system turn holds a media marker")
        if images and videos:
            sequence = "".join(text for role, text in turns if role == "human")
            if sequence.find(VIDEO_MARKER) < sequence.rfind(IMAGE_MARKER):
                raise RowIssue("a <video> marker comes before an <image> marker; the manifest attaches all "
                               "images before all videos")
        media = [MediaRef((self.find_media(media_root, p, "image"),), "image") for p in images]
        media += [MediaRef((self.find_media(media_root, p, "video"),), "video") for p in videos]
        turns = [(role, text.replace(VIDEO_MARKER, IMAGE_MARKER)) for role, text in turns]
        return ImportedRow(number=number, id=record_id(record, source, number), conversations=turns, media=media)


def _paths(record: dict[str, Any], column: str) -> list[str]:
    value = record.get(column)
    if value in (None, []):
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise RowIssue(f"'{column}' must be a list of paths, got {value!r}")


@hookimpl
def longllava_register_importers():
    return [LlamaFactoryImporter]
