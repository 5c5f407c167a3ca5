"""Importer ``m3d-cap``: the M3D-Cap image-text pairs (``M3D_Cap_npy/M3D_Cap.json``).

Dataset: Bai et al., "M3D: Advancing 3D Medical Image Analysis with Multi-Modal Large
Language Models", arXiv:2404.00578 (2024); data https://huggingface.co/datasets/GoodBaiBai88/M3D-Cap,
code https://github.com/BAAI-DCAI/M3D.

Layout: a JSON object of splits, each a list of image / text pairs, both paths relative to
M3D's ``data_root`` (the folder holding ``M3D_Cap_npy/``)::

    {"train": [{"image": "M3D_Cap_npy/ct_case/000006/Axial_non_contrast.npy",
                "text": "M3D_Cap_npy/ct_case/000006/text.txt"}, ...],
     "validation": [...], "test": [...]}

``image`` is a ``.npy`` volume ``1 x D x H x W`` (float32 in ``[0, 1]``), ``text`` a UTF-8
text file holding the case's findings (M3D's ``m3d_cap_data_prepare.py`` writes it). Each
pair becomes a captioning conversation, "Describe the findings of this CT volume." answered
with the text; the split name goes into the row's ``split`` (``validation`` / ``test`` rows
are held out by ``finetune``). A bare JSON list of pairs is read too.

Records are numbered 1, 2, ... in file order across the splits (the problems name the
split too). Checked: ``image`` and ``text`` present; the volume a regular ``.npy`` file with a
``1 x D x H x W`` header; the text file a regular file of at most 1 MiB of non-empty UTF-8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from longllava_sdk import hookimpl, local_files
from longllava_sdk.errors import InputError
from longllava_sdk.importers import ImportedRow, Importer, RowIssue, RowProblem, json_document, required_text
from longllava_plugins.import_m3d_vqa import m3d_file, m3d_volume

QUESTION = "Describe the findings of this CT volume."
MAX_TEXT_BYTES = 1 << 20


class M3DCapImporter(Importer):
    """M3D-Cap image / text pairs (``.npy`` CT volumes and their caption files)."""

    name = "m3d-cap"
    description = "M3D-Cap JSON (M3D_Cap.json): {split: [{image: .npy volume, text: caption .txt}]}"
    media_lookup = "`image` and `text` under --media-root (default: the folder above the JSON's, M3D's data_root)"

    def default_media_root(self, source: Path) -> Path:
        return source.parent.parent

    def iter_rows(self, source: Path, media_root: Path) -> Iterator[ImportedRow | RowProblem]:
        document = json_document(source)
        if isinstance(document, list):
            splits: list[tuple[str | None, Any]] = [(None, document)]
        elif isinstance(document, dict) and all(isinstance(v, list) for v in document.values()):
            splits = list(document.items())
        else:
            raise InputError(source, "expected M3D_Cap.json's layout: an object of splits, each a list of "
                                     "{image, text} pairs (or one list of pairs)")
        number = 0
        for split, records in splits:
            for index, record in enumerate(records, start=1):
                number += 1
                where = f"{split} #{index}: " if split else ""
                try:
                    yield self.convert(record, number, split, source, media_root)
                except RowIssue as issue:
                    yield RowProblem(number, f"{where}{issue}")

    def convert(self, record: Any, number: int, split: str | None, source: Path, media_root: Path) -> ImportedRow:
        if not isinstance(record, dict):
            raise RowIssue(f"a pair must be an object with 'image' and 'text', got {type(record).__name__}")
        image = required_text(record, "image")
        volume = m3d_volume(self, media_root, source, image)
        caption = self._caption(media_root, source, required_text(record, "text"))
        case = Path(image)
        return ImportedRow(number=number, id=f"{case.parent.name}-{case.stem}-{number}",
                           conversations=[("human", f"<image>\n{QUESTION}"), ("gpt", caption)],
                           media=[volume], split=split)

    def _caption(self, media_root: Path, source: Path, relative: str) -> str:
        path = m3d_file(self, media_root, source, relative, "text file")
        size = path.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise RowIssue(f"text file {relative!r} is {size} bytes; a caption is at most {MAX_TEXT_BYTES}")
        try:  # a regular file only (a FIFO named as the caption is refused, never blocks)
            text = local_files.read_text(path, what="text file").strip()
        except InputError as exc:
            raise RowIssue(f"text file {relative!r}: {exc.problem}") from None
        if not text:
            raise RowIssue(f"text file {relative!r} is empty")
        return text


@hookimpl
def longllava_register_importers():
    return [M3DCapImporter]
