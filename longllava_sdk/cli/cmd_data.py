"""``longllava-sdk data``: import public datasets into manifests, list the formats, de-identify DICOM.

The commands are the library's functions (:func:`~longllava_sdk.data_import.import_dataset`,
:func:`~longllava_sdk.deidentify.deidentify`) with a presenter each; none imports torch.
"""

from __future__ import annotations

import json as _json
import sys
from typing import Any

from ..data_import import ImportReport, list_formats


def formats(json: bool = False) -> int:
    """List the dataset formats `data import` reads: name, one-line description, where media are looked up.

    Args:
        json: print a JSON list instead of the table.
    """
    found = list_formats()
    if json:
        print(_json.dumps(found, indent=2))
        return 0
    if not found:
        print("no dataset importer is installed (a plugin adds one through longllava_register_importers)")
        return 0
    width = max(len(f["name"]) for f in found)
    for entry in found:
        print(f"{entry['name'].ljust(width)}  {entry['description']}")
        print(f"{''.ljust(width)}  media: {entry['media_lookup']}")
    print("\nimport one with: longllava-sdk data import FORMAT SOURCE --output MANIFEST.jsonl [--media-root DIR]")
    return 0


def present_import(report: ImportReport) -> int:
    """Bad rows on stderr (one line each), the summary on stdout."""
    for line in report.problem_lines():
        print(f"  {line}", file=sys.stderr)
    print(report.summary())
    if report.output is not None:
        print(f"train on it with: longllava-sdk finetune --data {report.output}")
    return 0


def present_deidentify(report: Any) -> int:
    """The one-line summary on stdout (the per-file / per-tag report is the JSON file it names)."""
    print(report.summary())
    return 0
