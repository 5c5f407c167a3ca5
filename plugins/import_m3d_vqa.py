"""Importer ``m3d-vqa``: the M3D-VQA CSV files (``M3D-VQA/M3D_VQA_train.csv`` and its siblings).

Dataset: Bai et al., "M3D: Advancing 3D Medical Image Analysis with Multi-Modal Large
Language Models", arXiv:2404.00578 (2024); data https://huggingface.co/datasets/GoodBaiBai88/M3D-VQA,
code https://github.com/BAAI-DCAI/M3D.

Layout: one CSV per split with the header ::

    Image Path,Text,Question Type,Question,Choice A,Choice B,Choice C,Choice D,Answer,Answer Choice

``Image Path`` is relative to M3D's ``data_root`` (the folder holding ``M3D-VQA/`` and
``M3D_Cap_npy/``, so the default media root is the folder above the CSV's) and names a
``.npy`` volume shaped ``1 x D x H x W`` (float32 scaled to ``[0, 1]``, ``1 x 32 x 256 x 256``
in the release). ``Question Type`` is 1-5 (plane, phase, organ, abnormality, location).

Each row becomes M3D's closed-ended form: the question followed by ``Choices: A. ... B. ...
C. ... D. ...``, answered ``"<Answer Choice>. <Answer>"``; the volume is read by the ``npy``
adapter with the window ``1,0.5`` (the stored ``[0, 1]`` range, black to white).

Checked per row (CSV line, header = line 1): every column present and non-empty (``Text``
may be empty), ``Question Type`` 1-5 when numeric, ``Answer Choice`` one of A-D and
``Answer`` equal to that choice's text, the volume a regular ``.npy`` file inside the media
root whose header says ``1 x D x H x W`` (or ``D x H x W``) of a real dtype (no data read).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from longllava_sdk import hookimpl
from longllava_sdk.errors import AdapterError
from longllava_sdk.importers import (
    ImportedRow,
    Importer,
    MediaRef,
    RowIssue,
    RowProblem,
    converted,
    csv_records,
    required_text,
)
from longllava_plugins.npy import read_header

COLUMNS = ("Image Path", "Text", "Question Type", "Question", "Choice A", "Choice B", "Choice C", "Choice D",
           "Answer", "Answer Choice")
CHOICES = ("A", "B", "C", "D")
#: The stored values are in [0, 1]: a window of width 1 centred on 0.5 shows them as they are.
M3D_WINDOW = "1,0.5"


class M3DVqaImporter(Importer):
    """M3D-VQA CSV rows (closed-ended multiple choice over ``.npy`` CT volumes)."""

    name = "m3d-vqa"
    description = "M3D-VQA CSV (M3D_VQA_train.csv): multiple-choice questions on 1xDxHxW .npy CT volumes"
    media_lookup = "`Image Path` under --media-root (default: the folder above the CSV's, M3D's data_root)"
    row_unit = "line"

    def default_media_root(self, source: Path) -> Path:
        return source.parent.parent

    def iter_rows(self, source: Path, media_root: Path) -> Iterator[ImportedRow | RowProblem]:
        return converted(csv_records(source, COLUMNS),
                         lambda record, number: self.convert(record, number, source, media_root))

    def convert(self, record: dict[str, str], number: int, source: Path, media_root: Path) -> ImportedRow:
        question = required_text(record, "Question")
        choices = {letter: required_text(record, f"Choice {letter}") for letter in CHOICES}
        answer = required_text(record, "Answer")
        letter = required_text(record, "Answer Choice").upper()
        if letter not in CHOICES:
            raise RowIssue(f"'Answer Choice' must be one of A, B, C, D, got {record['Answer Choice']!r}")
        if answer.casefold() != choices[letter].casefold():
            raise RowIssue(f"'Answer' {answer!r} is not the text of Choice {letter} ({choices[letter]!r})")
        kind = required_text(record, "Question Type")
        if kind.isdigit() and not 1 <= int(kind) <= 5:
            raise RowIssue(f"'Question Type' must be 1-5 (plane, phase, organ, abnormality, location), got {kind}")
        volume = m3d_volume(self, media_root, source, required_text(record, "Image Path"))
        listed = " ".join(f"{c}. {choices[c]}" for c in CHOICES)
        turns = [("human", f"<image>\n{question} Choices: {listed}"), ("gpt", f"{letter}. {answer}")]
        return ImportedRow(number=number, id=f"{source.stem}-{number}", conversations=turns, media=[volume])


def m3d_volume(importer: Importer, media_root: Path, source: Path, relative: str) -> MediaRef:
    """An M3D ``.npy`` volume: found under the media root, its header checked (``1 x D x H x W``).

    M3D's paths are relative to its ``data_root``; when the media root is the default (the
    folder above the data file's) a path relative to the data file's own folder is accepted too.
    """
    if not relative.lower().endswith(".npy"):
        raise RowIssue(f"image {relative!r} is not a .npy volume")
    path = m3d_file(importer, media_root, source, relative, "image")
    try:
        shape, _dtype = read_header(path)
    except AdapterError as exc:
        raise RowIssue(f"image {relative!r}: {exc.problem}") from None
    if len(shape) == 4 and shape[0] != 1:
        raise RowIssue(f"image {relative!r} has shape {shape}; M3D volumes are 1 x D x H x W")
    return MediaRef((path,), "volume", "npy", (("window", M3D_WINDOW),))


def m3d_file(importer: Importer, media_root: Path, source: Path, relative: str, what: str) -> Path:
    """A file of an M3D record: under the media root, or (default root) under the data file's own folder."""
    try:
        return importer.find_media(media_root, relative, what)
    except RowIssue:
        if source.parent.parent != media_root:
            raise
        return importer.find_media(media_root, f"{source.parent.name}/{relative}", what)


@hookimpl
def longllava_register_importers():
    return [M3DVqaImporter]
