"""``longllava-sdk data import`` / ``data formats``: public datasets -> the SDK's manifest.

:func:`import_dataset` runs an installed :class:`~longllava_sdk.importers.Importer` (chosen by
its name, the FORMAT) over a dataset file, checks every row it yields with the checks every
manifest row needs whatever its format, writes the good rows atomically as a JSONL manifest
(LLaVA rows, read back by ``finetune --data``) and returns an :class:`ImportReport` listing
every bad row with its number and reason. Nothing is dropped silently: a row is written or
it is in the report.

The manifest's media paths are written relative to the manifest's folder, the data root
``finetune --data MANIFEST`` resolves them against; so the media must lie inside that folder
(the import refuses a media root outside it before reading any row).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, DatasetError, InputError, option_hint, unknown_name_error
from .importers import (
    IMAGE_MARKER,
    MEDIA_KEYS,
    ROLES,
    ImportedRow,
    Importer,
    MediaRef,
    RowProblem,
    count_markers,
)
from .manifest import atomic_manifest, check_manifest_target
from .registry import available_importers

__all__ = ["ImportReport", "import_dataset", "list_formats", "get_importer"]


@dataclass
class ImportReport:
    """What an import did.

    Attributes:
        format: the importer's name.
        source: the dataset file read.
        output: the manifest written (``None`` when nothing was written).
        media_root: where media were looked up.
        imported: rows written.
        problems: every row not written, with its number and reason, in file order.
        row_unit: ``record`` (JSON / JSONL) or ``line`` (CSV, header = line 1).
    """

    format: str
    source: Path
    output: Path | None
    media_root: Path
    imported: int = 0
    problems: list[RowProblem] = field(default_factory=list)
    row_unit: str = "record"

    def summary(self) -> str:
        """One line: how many rows were imported and how many were not."""
        where = f" into {self.output}" if self.output is not None else ""
        return (f"{self.format}: imported {self.imported} row(s){where}; {len(self.problems)} bad row(s) "
                f"not imported")

    def problem_lines(self) -> list[str]:
        """``"<file> <unit> <n>: <reason>"`` for every bad row."""
        return [f"{self.source.name} {self.row_unit if p.number else 'file'}"
                f"{f' {p.number}' if p.number else ''}: {p.reason}" for p in self.problems]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings)."""
        return {"format": self.format, "source": str(self.source),
                "output": None if self.output is None else str(self.output), "media_root": str(self.media_root),
                "imported": self.imported, "bad_rows": len(self.problems), "row_unit": self.row_unit,
                "problems": [{"row": p.number, "reason": p.reason} for p in self.problems]}


def get_importer(name: str) -> type[Importer]:
    """The installed importer called ``name``; the error suggests the closest names."""
    importers = available_importers()
    if name in importers:
        return importers[name]
    raise unknown_name_error("dataset format", name, importers, listing="installed formats",
                             hint="(`longllava-sdk data formats` describes them)")


def list_formats() -> list[dict[str, str]]:
    """Every installed format: ``{"name", "description", "media_lookup"}``, sorted by name."""
    return [{"name": name, "description": cls.description, "media_lookup": cls.media_lookup}
            for name, cls in sorted(available_importers().items())]


def import_dataset(format: str, source: str, *, output: str, media_root: str | None = None,
                   overwrite: bool = False, strict: bool = False) -> ImportReport:
    """Import a public dataset file into a manifest that `finetune --data` reads.

    Every row is checked (required fields, value ranges, <image> markers against the media,
    media files that exist and are regular files); good rows are written, bad rows are
    reported with their row number (the 1-based record of a JSON / JSONL file, the line of a
    CSV with the header as line 1) and the reason. The manifest is written atomically; nothing
    is written when no row is good (or, with --strict, when any row is bad). `longllava-sdk
    data formats` lists the formats and where each looks up its media.

    Args:
        format: the dataset format (llava, llamafactory, m3d-vqa, m3d-cap, ct-rate, videochatgpt, geochat, or a plugin's).
        source: the dataset file, laid out as the public dataset ships it.
        output: the manifest to write (.jsonl); media paths in it are relative to its folder, so the media must lie inside that folder.
        media_root: the folder media paths are looked up in (default: the format's, see `data formats`).
        overwrite: replace an existing output manifest.
        strict: write nothing when any row is bad (the report still lists them all).
    """
    importer = get_importer(format)()
    source_path = Path(os.path.abspath(source))
    if not source_path.is_file():
        raise InputError(source_path, "no such dataset file" if not source_path.exists() else "not a regular file")
    target = check_manifest_target(output, overwrite=overwrite)
    root = Path(os.path.realpath(media_root if media_root is not None else importer.default_media_root(source_path)))
    if not root.is_dir():
        raise InputError(root, "the media root is not a folder" + ("" if media_root is not None else
                         f" (the {format} format's default; pass {option_hint('media_root', 'DIR')})"))
    manifest_dir = Path(os.path.realpath(target.parent))
    if not _inside(root, manifest_dir):
        raise ConfigError(
            f"the media root {root} is not inside the manifest's folder {manifest_dir}: `finetune --data` reads media "
            f"only inside the folder of its data file; write the manifest inside the media root's folder "
            f"(e.g. {option_hint('output', str(root / target.name))})")
    report = ImportReport(format=format, source=source_path, output=None, media_root=root,
                          row_unit=importer.row_unit)
    seen: dict[str, int] = {}
    try:
        with atomic_manifest(target, overwrite=overwrite) as writer:
            for item in importer.iter_rows(source_path, root):
                if isinstance(item, RowProblem):
                    report.problems.append(item)
                    continue
                reason = _row_problem(item, manifest_dir, seen)
                if reason is not None:
                    report.problems.append(RowProblem(item.number, reason))
                    continue
                seen[item.id] = item.number
                writer.write(manifest_row(item, manifest_dir))
            report.imported = writer.rows
            if writer.rows == 0 or (strict and report.problems):
                why = "no row could be imported" if writer.rows == 0 else \
                    f"{len(report.problems)} bad row(s) and {option_hint('strict')} is set; nothing was written"
                raise DatasetError(source_path, [why, *report.problem_lines()])
    except DatasetError:
        report.imported = 0
        raise
    report.output = target
    return report


def manifest_row(row: ImportedRow, manifest_dir: Path) -> dict[str, Any]:
    """The manifest (LLaVA) form of a checked row, media paths relative to ``manifest_dir``."""
    out: dict[str, Any] = {"id": row.id}
    for key in MEDIA_KEYS:
        refs = [m for m in row.media if m.key == key]
        if not refs:
            continue
        if key == "image" and all(len(m.paths) == 1 and m.adapter is None and not m.options for m in refs):
            paths = [_relative(m.paths[0], manifest_dir) for m in refs]
            out[key] = paths[0] if len(paths) == 1 else paths
            continue
        out[key] = [_source_object(m, manifest_dir) for m in refs]
        if len(out[key]) == 1:
            out[key] = out[key][0]
    out["conversations"] = [{"from": role, "value": text} for role, text in row.conversations]
    if row.labels is not None:
        out["labels"] = list(row.labels)
    if row.split:
        out["split"] = row.split
    return out


def _source_object(ref: MediaRef, manifest_dir: Path) -> dict[str, Any]:
    paths = [_relative(p, manifest_dir) for p in ref.paths]
    obj: dict[str, Any] = {"path": paths[0] if len(paths) == 1 else paths}
    if ref.adapter:
        obj["adapter"] = ref.adapter
    if ref.options:
        obj["options"] = dict(ref.options)
    return obj


def _relative(path: Path, manifest_dir: Path) -> str:
    return Path(os.path.relpath(os.path.realpath(path), manifest_dir)).as_posix()


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _row_problem(row: ImportedRow, manifest_dir: Path, seen: dict[str, int]) -> str | None:
    """What every manifest row needs, whatever its format (``None`` when the row is good)."""
    if not isinstance(row.id, str) or not row.id.strip():
        return "the row has no id"
    if row.id in seen:
        return f"duplicate id {row.id!r} (also row {seen[row.id]})"
    turns = row.conversations
    if not turns:
        return "empty conversation"
    for index, (role, text) in enumerate(turns):
        if role not in ROLES:
            return f"turn {index + 1} has role {role!r}; expected one of {', '.join(ROLES)}"
        if not isinstance(text, str):
            return f"turn {index + 1} has no text"
        if role == "system" and index != 0:
            return f"turn {index + 1}: a system turn may only open the conversation"
        if role == "gpt" and IMAGE_MARKER in text:
            return f"turn {index + 1}: an answer holds an {IMAGE_MARKER} marker; media belong to questions"
    if not any(role == "human" for role, _ in turns):
        return "no question (human turn)"
    if not any(role == "gpt" and text.strip() for role, text in turns):
        return "no answer (non-empty gpt turn)"
    markers = count_markers(turns)
    if markers != len(row.media):
        return f"{markers} {IMAGE_MARKER} marker(s) but {len(row.media)} media source(s)"
    order = [MEDIA_KEYS.index(m.key) for m in row.media]
    if order != sorted(order):
        return ("media of different kinds interleave (the manifest matches markers to all images first, then "
                "videos, volumes, scenes)")
    for ref in row.media:
        for path in ref.paths:
            real = Path(os.path.realpath(path))
            if not _inside(real, manifest_dir):
                return f"media file {path} resolves outside the manifest's folder {manifest_dir}"
    if row.labels is not None and not all(isinstance(label, str) and label.strip() for label in row.labels):
        return f"labels must be non-empty strings, got {row.labels!r}"
    return None
