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
import io
import json
import os
import stat
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Sequence

from . import local_files
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
#: Largest ``.json`` document parsed whole (its Python objects take several times its size);
#: ``.jsonl`` and ``.csv`` files are streamed and have no limit.
MAX_JSON_BYTES = 1 << 30
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


def json_records(path: Path) -> Iterator[tuple[int, Any]]:
    """``(1-based record number, record)`` of a ``.json`` list or a ``.jsonl`` file.

    A ``.jsonl`` file is streamed line by line (any size); a blank line is not a record and a
    line that is not valid JSON is a record holding a :class:`RowProblem` (the importer yields
    it as is). A ``.json`` document is parsed whole, so it may be at most
    :data:`MAX_JSON_BYTES` (Python objects take several times the file's size).

    Raises:
        InputError: unreadable file, a ``.json`` over the size limit, not valid JSON or not a list.
    """
    if path.suffix.lower() == ".jsonl":
        return _jsonl_records(path)
    data = json_document(path)
    if not isinstance(data, list):
        raise InputError(path, f"expected a JSON list of records, got {type(data).__name__}")
    return iter(enumerate(data, start=1))


def _jsonl_records(path: Path) -> Iterator[tuple[int, Any]]:
    number = 0
    with _open_text(path) as handle:
        for line in _lines(path, handle):
            if not line.strip():
                continue
            number += 1
            try:
                yield number, json.loads(line)
            except (json.JSONDecodeError, RecursionError) as exc:
                yield number, RowProblem(number, f"not valid JSON: {getattr(exc, 'msg', exc)}")


def json_document(path: Path) -> Any:
    """The parsed JSON document of ``path``, at most :data:`MAX_JSON_BYTES` (:class:`InputError` naming the file)."""
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise InputError(path, f"{size:,} bytes of JSON is over the {MAX_JSON_BYTES:,}-byte limit of a document "
                               "parsed whole; convert it to JSON Lines (one record per line, read streaming), "
                               "e.g. `jq -c '.[]' data.json > data.jsonl`")
    with _open_text(path) as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"not valid JSON: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise InputError(path, f"not UTF-8 text: {exc}") from exc
        except RecursionError:
            raise InputError(path, "JSON nested too deeply to be a dataset file") from None


def csv_records(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, record)`` of a CSV with a header row (streamed); the header is line 1.

    Numbers count records as a spreadsheet shows them (a quoted cell spanning several
    physical lines is still one row). Cells are stripped; a record with more cells than the
    header has a ``None`` key (:func:`converted` reports it).

    Raises:
        InputError: unreadable file, no header, a header without the ``required`` columns, or
            a line the CSV reader cannot parse (a cell over the reader's field limit).
    """
    with _open_text(path) as handle:
        reader = csv.DictReader(_lines(path, handle))
        try:
            header = [name.strip() for name in (reader.fieldnames or [])]
        except csv.Error as exc:
            raise InputError(path, f"unreadable CSV header: {exc}") from exc
        missing = [name for name in required if name not in header]
        if not header or missing:
            raise InputError(path, f"CSV header lacks the column(s) {missing or list(required)}; it has {header}")
        reader.fieldnames = header
        number = 1
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise InputError(path, f"line {number + 1}: unreadable CSV ({exc})") from exc
            number += 1
            yield number, {k: (v.strip() if isinstance(v, str) else v) for k, v in record.items()}


def _open_text(path: Path) -> Any:
    try:  # a regular file only: a FIFO named as the dataset file is refused, never blocks
        raw = local_files.open_regular(path, what="dataset file")
    except InputError as exc:
        raise InputError(path, f"cannot read the dataset file: {exc.problem}") from None
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def _lines(path: Path, handle: Any) -> Iterator[str]:
    """The handle's lines; a decoding error becomes an :class:`InputError` naming the file."""
    try:
        yield from handle
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text: {exc}") from exc


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


def count_markers(turns: Iterable[tuple[str, str]], marker: str = IMAGE_MARKER) -> int:
    """How many ``marker`` occur in the human turns."""
    return sum(text.count(marker) for role, text in turns if role == "human")
