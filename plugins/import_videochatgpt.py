"""Importer ``videochatgpt``: Video-ChatGPT's VideoInstruct question / answer file.

Dataset: Maaz et al., "Video-ChatGPT: Towards Detailed Video Understanding via Large Vision
and Language Models", ACL 2024, https://github.com/mbzuai-oryx/Video-ChatGPT (the 100K
VideoInstruct set, ``VideoInstruct_Dataset.json``, over ActivityNet videos).

Layout: a JSON list of question / answer pairs, several per video::

    [{"q": "What is the man doing in the video?", "a": "The man is ...", "video_id": "v_k_ZXmr8pmrs"}, ...]

The video file is found by its id in the media root (default: the folder of the JSON file),
``<video_id><ext>`` with the first extension of ``.mp4 .mkv .webm .avi .mov .m4v .mpg .mpeg``
that exists (ActivityNet ships several containers), then ``v_<video_id><ext>`` for ids given
without ActivityNet's ``v_`` prefix. Each pair becomes a one-turn conversation over the video
(read by the video adapters); ids are ``<video_id>-<record number>``.

Checked per record (1-based): an object with non-empty ``q``, ``a`` and ``video_id`` (a plain
file name: no folder, no ``..``), and a video file that exists as a regular file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from longllava_sdk import hookimpl
from longllava_sdk.importers import (
    ImportedRow,
    Importer,
    MediaRef,
    RowIssue,
    RowProblem,
    converted,
    json_records,
    required_text,
)

#: Containers looked for, in this order, when finding a video by its id.
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg")


class VideoChatGptImporter(Importer):
    """VideoInstruct (Video-ChatGPT) ``q`` / ``a`` / ``video_id`` records."""

    name = "videochatgpt"
    description = "Video-ChatGPT VideoInstruct JSON (VideoInstruct_Dataset.json): video_id + q + a"
    media_lookup = ("<video_id>.mp4 (or .mkv .webm .avi .mov .m4v .mpg .mpeg; then v_<video_id>.*) in "
                    "--media-root (default: the JSON file's folder)")

    def iter_rows(self, source: Path, media_root: Path) -> Iterator[ImportedRow | RowProblem]:
        return converted(json_records(source), lambda record, number: self.convert(record, number, media_root))

    def convert(self, record: Any, number: int, media_root: Path) -> ImportedRow:
        if not isinstance(record, dict):
            raise RowIssue(f"a record must be a JSON object, got {type(record).__name__}")
        question, answer = required_text(record, "q"), required_text(record, "a")
        video_id = record.get("video_id")
        if isinstance(video_id, int) and not isinstance(video_id, bool):
            video_id = str(video_id)
        video_id = required_text({"video_id": video_id}, "video_id")
        video = self.find_video(media_root, video_id)
        return ImportedRow(number=number, id=f"{video_id}-{number}",
                           conversations=[("human", f"<image>\n{question}"), ("gpt", answer)],
                           media=[MediaRef((video,), "video")])

    def find_video(self, media_root: Path, video_id: str) -> Path:
        """The first existing ``<id><ext>`` (then ``v_<id><ext>``) in the media root."""
        if "/" in video_id or "\\" in video_id or video_id in (".", ".."):
            raise RowIssue(f"video_id {video_id!r} must be a plain id, not a path")
        names = [video_id] + ([f"v_{video_id}"] if not video_id.startswith("v_") else [])
        for name in names:
            for extension in VIDEO_EXTENSIONS:
                if (media_root / f"{name}{extension}").exists():
                    return self.find_media(media_root, f"{name}{extension}", "video")
        raise RowIssue(f"no video for video_id {video_id!r} in {media_root} (looked for {video_id}.mp4 and "
                       f"{', '.join(VIDEO_EXTENSIONS[1:])})")


@hookimpl
def longllava_register_importers():
    return [VideoChatGptImporter]
