"""``longllava-sdk data deidentify``: DICOM files -> de-identified copies, with a report.

The DICOM PS3.15 Annex E **Basic Application Level Confidentiality Profile**, through
`dicognito <https://github.com/blairconrad/dicognito>`_ (a maintained anonymizer on pydicom)
plus the profile's removals dicognito leaves to the caller:

* dicognito replaces, consistently within one run: every UID (same source UID -> same new
  UID, so the instances of one study keep one new ``StudyInstanceUID`` and series, frames of
  reference and references stay linked), person names, patient / accession / study ids,
  addresses, institution and station names, and shifts every date and time by one offset per
  run (intervals between dates are kept: the profile's *Retain Longitudinal Temporal
  Information with Modified Dates* option);
* then the SDK removes the profile's "X" attributes that hold free text or patient
  characteristics (:data:`REMOVED_KEYWORDS`: descriptions, comments, history, age, size,
  weight...), every private element, and overlay (60xx) and curve (50xx) groups, which can
  carry burned-in text; and records the method: ``PatientIdentityRemoved = YES``,
  ``DeidentificationMethodCodeSequence`` = DCM 113100 (Basic Application Confidentiality
  Profile) + 113107 (Retain Longitudinal Temporal Information Modified Dates Option),
  ``LongitudinalTemporalInformationModified = MODIFIED``.

Pixel data are not touched. A file whose ``BurnedInAnnotation`` is ``YES`` cannot be
de-identified from its header and stops the run (nothing is written); so does a file pydicom
cannot read as DICOM unless it is simply not DICOM (no ``DICM`` preamble), which is skipped
and counted, as is a DICOMDIR (its records point at the source file names; make a new one for
the output if a viewer needs it). Output files are named by their new UIDs (``<StudyUID>/<SeriesUID>/<SOPUID>.dcm``)
because source file and folder names often hold patient names.

Safety: the source is only read (the output may not lie inside it, nor it inside the output);
the output folder appears complete or not at all (written in a staging folder beside it and
renamed); a non-empty output is refused without ``overwrite``. The report
(``deidentify_report.json`` in the output) lists per output file and per tag what was
replaced, removed or added, never a value and never a source name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import local_files
from .atomic import atomic_directory
from .errors import DatasetError, InputError, option_hint

__all__ = ["DeidentifyReport", "deidentify", "REMOVED_KEYWORDS", "REPORT_NAME"]

REPORT_NAME = "deidentify_report.json"
#: Media Storage Directory Storage (a DICOMDIR): skipped, its references would name the source files.
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
#: Largest DICOM file read (bytes); a larger one stops the run before it is read.
MAX_FILE_BYTES = 4 << 30
#: PS3.15 Table E.1-1 attributes with action X (remove) that dicognito keeps: free text,
#: descriptions and patient characteristics.
REMOVED_KEYWORDS: tuple[str, ...] = (
    "AdditionalPatientHistory", "AdmittingDiagnosesDescription", "Allergies", "DerivationDescription",
    "DeviceSerialNumber", "EthnicGroup", "ImageComments", "InstitutionalDepartmentName", "MedicalAlerts",
    "Occupation", "PatientAge", "PatientComments", "PatientSize", "PatientState", "PatientWeight",
    "PerformedProcedureStepDescription", "ProtocolName", "ReasonForStudy", "RequestAttributesSequence",
    "RequestedProcedureDescription", "ScheduledProcedureStepDescription", "SeriesDescription", "SmokingStatus",
    "StudyComments", "StudyDescription", "VisitComments", "ContentSequence", "LastMenstrualDate",
    "PregnancyStatus", "SpecialNeeds", "PatientBirthTime", "OtherPatientNames", "PatientMotherBirthName",
)
#: DCM codes of the profile and option applied (PS3.16 CID 7050).
METHOD_CODES = (("113100", "Basic Application Confidentiality Profile"),
                ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))


@dataclass
class DeidentifyReport:
    """What a de-identification run changed.

    Attributes:
        output: the output folder.
        files: per output file (relative path): ``{"replaced": [...], "removed": [...], "added": [...]}`` keywords.
        tags: per tag keyword: ``{"replaced": n, "removed": n, "added": n}`` over all files.
        skipped: source files not copied (not DICOM, or a DICOMDIR), relative to the source.
    """

    output: Path
    files: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    tags: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: files written, tags changed, files skipped."""
        changed = sum(sum(counts.values()) for counts in self.tags.values())
        return (f"de-identified {len(self.files)} DICOM file(s) into {self.output} (Basic Application Level "
                f"Confidentiality Profile): {changed} element change(s) over {len(self.tags)} tag(s); "
                f"{len(self.skipped)} non-DICOM / DICOMDIR file(s) skipped; report: {self.output / REPORT_NAME}")

    def to_dict(self) -> dict[str, Any]:
        return {"profile": [f"DCM {code} {meaning}" for code, meaning in METHOD_CODES], "files": self.files,
                "tags": self.tags, "skipped": len(self.skipped)}


def deidentify(src: str, *, output: str, overwrite: bool = False, seed: str | None = None) -> DeidentifyReport:
    """De-identify DICOM files (DICOM PS3.15 Basic Application Level Confidentiality Profile) into a new folder.

    Run it on DICOM exported from a hospital system before the files leave it, and before
    importing them into a training manifest: UIDs, names, ids and dates are replaced
    consistently (a study keeps one new StudyInstanceUID), free-text and private tags are
    removed, pixels are untouched. SRC is only read. A report of what changed, per file and
    per tag, is written as deidentify_report.json in the output.

    Args:
        src: a DICOM file or a folder of them (walked recursively; non-DICOM files are skipped).
        output: the folder to write (must not be inside SRC); it appears complete or not at all.
        overwrite: replace a non-empty output folder.
        seed: make the replacement values reproducible across runs (keep it secret: it links the new ids to the old).
    """
    import pydicom
    from dicognito.anonymizer import Anonymizer

    source = Path(os.path.realpath(src))
    target = Path(os.path.abspath(output))
    if not source.exists():
        raise InputError(source, "no such file or folder")
    real_target = Path(os.path.realpath(target))
    if real_target == source or source in real_target.parents or real_target in source.parents:
        raise InputError(target, f"the output may not be inside the source {source} (nor hold it); the source is "
                                 "only read")
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise InputError(target, f"exists and is not an empty folder; pass {option_hint('overwrite')} to replace it")
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file() or p.is_symlink())
    anonymizer = Anonymizer(seed=seed)
    report = DeidentifyReport(output=target)
    problems: list[str] = []
    with atomic_directory(target, overwrite=overwrite) as staging:
        seen: set[str] = set()
        for path in files:
            shown = path.name if path == source else path.relative_to(source).as_posix()
            problem = _check_file(path, source)
            if problem is not None:
                problems.append(f"{shown}: {problem}")
                continue
            real = os.path.realpath(path)
            if real in seen:  # a link to a file of the source already read: one instance, written once
                continue
            seen.add(real)
            if not _is_dicom(path):
                report.skipped.append(shown)
                continue
            try:
                dataset = pydicom.dcmread(path)
            except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a corrupt file
                problems.append(f"{shown}: unreadable DICOM ({type(exc).__name__}: {exc})")
                continue
            if str(dataset.get("BurnedInAnnotation", "")).upper() == "YES":
                problems.append(f"{shown}: BurnedInAnnotation is YES; text in the pixels cannot be removed from the "
                                "header (blank it with a pixel tool first)")
                continue
            sop_class = dataset.get("SOPClassUID") or dataset.file_meta.get("MediaStorageSOPClassUID", "")
            if str(sop_class) == DICOMDIR_SOP_CLASS:
                report.skipped.append(shown)  # its file references name the source files: regenerate one
                continue
            missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if not dataset.get(k)]
            if missing:
                problems.append(f"{shown}: no {', '.join(missing)}; not an image instance the SDK can file")
                continue
            before = _elements(dataset)
            try:
                anonymizer.anonymize(dataset)
                _basic_profile_removals(dataset)
            except Exception as exc:  # noqa: BLE001 - a malformed element dicognito cannot rewrite
                problems.append(f"{shown}: cannot de-identify ({type(exc).__name__}: {exc})")
                continue
            changes = _diff(before, _elements(dataset))
            relative = Path(str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID),
                            f"{dataset.SOPInstanceUID}.dcm")
            destination = staging / relative
            if destination.exists():
                problems.append(f"{shown}: a second file with the same SOPInstanceUID")
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            dataset.save_as(destination, enforce_file_format=True)
            report.files[relative.as_posix()] = changes
            for action, keywords in changes.items():
                for keyword in keywords:
                    report.tags.setdefault(keyword, {"replaced": 0, "removed": 0, "added": 0})[action] += 1
        if problems:
            raise DatasetError(source, problems)
        if not report.files:
            raise DatasetError(source, ["no DICOM file found"])
        (staging / REPORT_NAME).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return report


def _check_file(path: Path, source: Path) -> str | None:
    if path.is_symlink():
        real = Path(os.path.realpath(path))
        if not (real == source or source in real.parents):
            return f"a link to {real}, outside the source; not followed"
    if not path.is_file():
        return "not a regular file"
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        return f"{size} bytes, over the {MAX_FILE_BYTES}-byte limit of one DICOM file"
    return None


def _is_dicom(path: Path) -> bool:
    """A DICOM Part 10 file: ``DICM`` after the 128-byte preamble."""
    with local_files.open_regular(path, what="DICOM file") as handle:  # a FIFO is refused, never blocks
        header = handle.read(132)
    return len(header) == 132 and header[128:] == b"DICM"


def _elements(dataset: Any) -> dict[str, str]:
    """``keyword -> value text`` of the file meta and top-level elements (sequences as text), pixels excluded."""
    found = {}
    for element in [*dataset.file_meta, *dataset]:
        if element.keyword == "PixelData":
            continue
        key = element.keyword or str(element.tag)
        found[key] = repr(element.value)
    return found


def _diff(before: dict[str, str], after: dict[str, str]) -> dict[str, list[str]]:
    return {"replaced": sorted(k for k in before if k in after and before[k] != after[k]),
            "removed": sorted(k for k in before if k not in after),
            "added": sorted(k for k in after if k not in before)}


def _basic_profile_removals(dataset: Any) -> None:
    """The profile's removals dicognito leaves to the caller, and the method attributes."""
    from pydicom.dataset import Dataset

    dataset.remove_private_tags()
    for keyword in REMOVED_KEYWORDS:
        if keyword in dataset:
            delattr(dataset, keyword)
    for tag in [t for t in dataset.keys() if t.group in range(0x5000, 0x5100, 2) or t.group in range(0x6000, 0x6100, 2)]:
        del dataset[tag]
    dataset.PatientIdentityRemoved = "YES"
    dataset.LongitudinalTemporalInformationModified = "MODIFIED"
    codes = []
    for value, meaning in METHOD_CODES:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        codes.append(item)
    dataset.DeidentificationMethodCodeSequence = codes
