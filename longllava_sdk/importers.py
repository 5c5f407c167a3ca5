"""Dataset importers: the contract every ``longllava-sdk data import FORMAT`` plugin implements.

An importer turns a dataset file laid out the way its public dataset ships (LLaVA JSON,
LLaMA-Factory ShareGPT, M3D-VQA CSV, CT-RATE reports...) into rows of the SDK's manifest
(LLaVA conversations, ``docs/data_formats.md``). It is registered through the
``longllava_register_importers`` hook, built-ins exactly like third-party ones; the engine
(:mod:`longllava_sdk.data_import`) chooses one by its :attr:`Importer.name` only.

What an importer does, row by row (:meth:`Importer.iter_rows`):

* reads one record of the file and checks what belongs to its format (required fields
  present, values in range, the format's own markers);
* finds the record's media the way the dataset's own code does (:meth:`Importer.find_media`
  for a path, or the dataset's folder convention) and checks that each is a regular file;
* yields an :class:`ImportedRow`, or a :class:`RowProblem` naming the row and the reason.

The engine then checks what every manifest row needs whatever its format (``<image>``
markers against the media, ids unique, media inside the manifest's folder), writes the good
rows atomically and reports the bad ones; nothing is dropped silently.

Row numbers are those a user finds the record by: the 1-based record index in a JSON /
JSONL file (:func:`json_records`), the line number in a CSV with the header as line 1, as a
spreadsheet shows it (:func:`csv_records`).

This module imports neither torch nor the model: ``data formats`` and ``data import`` start
without them.
"""

from __future__ import annotations

import csv
import json
import os
import stat
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Sequence

from .errors import InputError

__all__ = [
    "IMAGE_MARKER",
    "MEDIA_KEYS",
    "MediaRef",
    "ImportedRow",
    "RowProblem",
    "RowIssue",
    "Importer",
    "json_records",
    "csv_records",
    "converted",
    "regular_file",
    "required_text",
]

#: The SDK's media marker in a user turn (one per media source, in source order).
IMAGE_MARKER = "<image>"
#: Manifest keys that hold media, in the order their ``<image>`` markers are matched
#: (the same order ``longllava_sdk.training.data.SOURCE_KEYS`` reads them back in).
MEDIA_KEYS: tuple[str, ...] = ("image", "video", "volume", "tiled")
#: Roles of a manifest conversation (LLaVA ``from`` values).
ROLES: tuple[str, ...] = ("system", "human", "gpt")


class RowIssue(Exception):
    """Raised inside an importer while it builds one row: that row becomes a :class:`RowProblem`."""


@dataclass(frozen=True)
class MediaRef:
    """One media source of a row, found and checked by the importer.

    Attributes:
        paths: the file (or files of one multi-file source, e.g. a DICOM series), absolute.
        key: the manifest key: ``image``, ``video``, ``volume`` or ``tiled`` (the media kind
            whose adapters may read it).
        adapter: an adapter name the row pins (``None``: the adapter that claims the file).
        options: adapter options for this source.
    """

    paths: tuple[Path, ...]
    key: str = "image"
    adapter: str | None = None
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.key not in MEDIA_KEYS:
            raise ValueError(f"media key must be one of {MEDIA_KEYS}, got {self.key!r}")
        if not self.paths:
            raise ValueError("a media source needs at least one path")


@dataclass
class ImportedRow:
    """One good row, in the manifest's terms (a LLaVA conversation).

    Attributes:
        number: the row number in the source file (see the module docstring).
        id: the sample id (unique in the manifest).
        conversations: ``(role, text)`` turns, role ``system`` / ``human`` / ``gpt``; human
            turns hold one ``<image>`` marker per media source, in ``media`` order.
        media: the row's media sources.
        labels: head labels (a multilabel head's present findings), or ``None``.
        split: ``train`` / ``validation`` / ``test``..., or ``None``.
    """

    number: int
    id: str
    conversations: list[tuple[str, str]]
    media: list[MediaRef] = field(default_factory=list)
    labels: list[str] | None = None
    split: str | None = None


@dataclass(frozen=True)
class RowProblem:
    """A row that is not imported, and why.

    Attributes:
        number: the row number in the source file (``0``: the file as a whole).
        reason: what is wrong, in words a user can act on.
    """

    number: int
    reason: str


class Importer(ABC):
    """Reads one public dataset layout into manifest rows.

    Subclasses set the class attributes and implement :meth:`iter_rows`; they register
    through ``longllava_register_importers``.

    Attributes:
        name: the FORMAT of ``longllava-sdk data import FORMAT`` (unique).
        description: one line for ``longllava-sdk data formats``: the dataset and its file.
        media_lookup: one line saying where the media of a row are looked up, relative to
            the media root, and what the default media root is.
        row_unit: ``"record"`` (JSON / JSONL: 1-based record index) or ``"line"`` (CSV:
            the line with the header as line 1), how :attr:`RowProblem.number` counts.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    media_lookup: ClassVar[str]
    row_unit: ClassVar[str] = "record"

    def default_media_root(self, source: Path) -> Path:
        """The media root when ``--media-root`` is not given: the folder of ``source`` by default."""
        return source.parent

    @abstractmethod
    def iter_rows(self, source: Path, media_root: Path) -> Iterator[ImportedRow | RowProblem]:
        """Yield one :class:`ImportedRow` or :class:`RowProblem` per record of ``source``, in file order.

        Args:
            source: the dataset file (checked to be a regular file).
            media_root: the folder media paths are looked up in (absolute, symlinks resolved).

        Raises:
            InputError: the file as a whole cannot be read (not JSON, missing CSV columns).
        """

    # -- helpers for subclasses -----------------------------------------------------------

    @staticmethod
    def find_media(media_root: Path, relative: Any, what: str = "media file") -> Path:
        """``media_root / relative``, checked to be a regular file inside the media root.

        Raises:
            RowIssue: not a relative path string, leaves the media root, missing or not a
                regular file.
        """
        if not isinstance(relative, str) or not relative.strip():
            raise RowIssue(f"{what} must be a path string, got {relative!r}")
        text = relative.strip()
        if "\x00" in text or "://" in text:
            raise RowIssue(f"{what} {text!r} is not a local path")
        candidate = Path(text)
        if candidate.is_absolute():
            raise RowIssue(f"{what} {text!r} is absolute; the dataset's paths are relative to the media root")
        joined = media_root / candidate
        real = Path(os.path.realpath(joined))
        if not (real == media_root or media_root in real.parents):
            raise RowIssue(f"{what} {text!r} leaves the media root {media_root}")
        return regular_file(real, what, shown=text)


def regular_file(path: Path, what: str = "media file", *, shown: str | None = None) -> Path:
    """``path`` if it is a regular file (symlinks followed), else :class:`RowIssue` saying why."""
    label = shown if shown is not None else str(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise RowIssue(f"{what} {label!r} not found (looked for {path})") from None
    except OSError as exc:
        raise RowIssue(f"{what} {label!r} cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise RowIssue(f"{what} {label!r} is {kind} ({path})")
    return path


def required_text(record: dict[str, Any], key: str) -> str:
    """The non-empty string ``record[key]`` (whitespace stripped), else :class:`RowIssue`."""
    value = record.get(key)
    if value is None or (isinstance(value, float) and value != value):  # absent, or NaN from a CSV tool
        raise RowIssue(f"required field {key!r} is missing")
    if not isinstance(value, str):
        raise RowIssue(f"field {key!r} must be text, got {type(value).__name__}")
    if not value.strip():
        raise RowIssue(f"required field {key!r} is empty")
    return value.strip()


def json_records(path: Path) -> list[tuple[int, Any]]:
    """``(1-based record number, record)`` of a ``.json`` list or a ``.jsonl`` file.

    A JSONL line that is not valid JSON becomes a record holding a :class:`RowProblem`
    (the importer yields it as is); blank JSONL lines are not records.

    Raises:
        InputError: unreadable file, a ``.json`` that is not valid JSON or not a list.
    """
    text = _read_text(path)
    if path.suffix.lower() == ".jsonl":
        records: list[tuple[int, Any]] = []
        for line in text.splitlines():
            if not line.strip():
                continue
            number = len(records) + 1
            try:
                records.append((number, json.loads(line)))
            except (json.JSONDecodeError, RecursionError) as exc:
                records.append((number, RowProblem(number, f"not valid JSON: {getattr(exc, 'msg', exc)}")))
        return records
    data = _json_document(path, text)
    if not isinstance(data, list):
        raise InputError(path, f"expected a JSON list of records, got {type(data).__name__}")
    return [(index, record) for index, record in enumerate(data, start=1)]


def json_document(path: Path) -> Any:
    """The parsed JSON document of ``path`` (:class:`InputError` naming the file if it is not JSON)."""
    return _json_document(path, _read_text(path))


def csv_records(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, record)`` of a CSV with a header row; the header is line 1.

    Numbers count records as a spreadsheet shows them (a quoted cell spanning several
    physical lines is still one row). Cells are stripped; a record with more cells than the
    header yields a ``None`` key (the importer reports it).

    Raises:
        InputError: unreadable file, no header, or header without the ``required`` columns.
    """
    text = _read_text(path)
    reader = csv.DictReader(text.splitlines(keepends=True))
    header = [name.strip() for name in (reader.fieldnames or [])]
    missing = [name for name in required if name not in header]
    if not header or missing:
        raise InputError(path, f"CSV header lacks the column(s) {missing or list(required)}; it has {header}")
    reader.fieldnames = header
    for number, record in enumerate(reader, start=2):
        yield number, {k: (v.strip() if isinstance(v, str) else v) for k, v in record.items()}


def converted(records: Iterable[tuple[int, Any]], convert: Callable[[Any, int], ImportedRow]
              ) -> Iterator[ImportedRow | RowProblem]:
    """Each ``(number, record)`` through ``convert(record, number)``, in order: the loop of an importer.

    A :class:`RowIssue` raised by ``convert`` becomes that row's :class:`RowProblem`; a record
    that already is one (an invalid JSONL line) and a CSV record with more cells than header
    columns are yielded as problems without calling ``convert``.
    """
    for number, record in records:
        if isinstance(record, RowProblem):
            yield record
            continue
        if isinstance(record, dict) and None in record:
            yield RowProblem(number, f"{len(record[None])} more cell(s) than header columns")
            continue
        try:
            yield convert(record, number)
        except RowIssue as issue:
            yield RowProblem(number, str(issue))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read the dataset file: {exc}") from exc


def _json_document(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON: {exc}") from exc
    except RecursionError:
        raise InputError(path, "JSON nested too deeply to be a dataset file") from None


def count_markers(turns: Iterable[tuple[str, str]], marker: str = IMAGE_MARKER) -> int:
    """How many ``marker`` occur in the human turns."""
    return sum(text.count(marker) for role, text in turns if role == "human")
