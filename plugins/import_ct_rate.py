"""Importer ``ct-rate``: CT-RATE radiology reports with their chest-CT volumes (and labels).

Dataset: Hamamci et al., "Developing Generalist Foundation Models from a Multimodal Dataset
for 3D Computed Tomography", arXiv:2403.17834 (2024); data
https://huggingface.co/datasets/ibrahimhamamci/CT-RATE.

Layout (the dataset repository's ``dataset/`` folder)::

    dataset/
      radiology_text_reports/train_reports.csv        VolumeName, ClinicalInformation_EN,
                                                      Technique_EN, Findings_EN, Impressions_EN
      multi_abnormality_labels/train_predicted_labels.csv   VolumeName + one 0/1 column per
                                                      abnormality (18 in the release)
      train/train_1/train_1_a/train_1_a_1.nii.gz      <split>/<split>_<patient>/
      valid/valid_1/valid_1_a/valid_1_a_1.nii.gz        <split>_<patient>_<scan>/<VolumeName>

The SOURCE is a reports CSV. Each volume is found by the dataset's folder convention from
its ``VolumeName`` (``train_12_b_2.nii.gz`` -> ``train/train_12/train_12_b/``) under the media
root, default: the folder above ``radiology_text_reports/`` (``dataset/``); a ``<split>_fixed/``
tree (the re-oriented release) is looked in when ``<split>/`` lacks the file.

Labels: when ``multi_abnormality_labels/`` beside ``radiology_text_reports/`` holds exactly one
CSV for the reports' split (its name starts with ``train`` / ``valid`` like the reports'),
each row gets ``labels``: the names of the columns that are 1, which a ``multilabel`` head
whose labels are those column names trains on (``docs/data_formats.md``). Without that folder
rows carry no labels.

Each row becomes a report-generation conversation: the clinical information and technique in
the question, ``Findings: ...`` and ``Impression: ...`` as the answer. Checked per row (CSV
line, header = line 1): ``VolumeName`` follows the convention, ``Findings_EN`` and
``Impressions_EN`` non-empty, the volume a regular ``.nii.gz`` file inside the media root,
and with labels: the volume listed in the labels CSV with every value 0 or 1.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from longllava_sdk import hookimpl
from longllava_sdk.errors import InputError
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

COLUMNS = ("VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN")
VOLUME_NAME = re.compile(r"^(?P<split>[a-z]+)_(?P<patient>\d+)_(?P<scan>[a-z]+)_(?P<recon>\d+)\.nii\.gz$")
LABELS_FOLDER = "multi_abnormality_labels"
QUESTION = "Write the findings and the impression of this chest CT."


class CtRateImporter(Importer):
    """CT-RATE reports CSV rows, volumes found by VolumeName, optional multi-abnormality labels."""

    name = "ct-rate"
    description = "CT-RATE reports CSV (radiology_text_reports/*.csv) + .nii.gz volumes + optional abnormality labels"
    media_lookup = ("<split>/<split>_N/<split>_N_a/<VolumeName> under --media-root (default: the folder above "
                    "radiology_text_reports/); labels from multi_abnormality_labels/ beside it")
    row_unit = "line"

    def default_media_root(self, source: Path) -> Path:
        return source.parent.parent

    def iter_rows(self, source: Path, media_root: Path) -> Iterator[ImportedRow | RowProblem]:
        labels_file = find_labels_csv(source)
        labels = read_labels(labels_file) if labels_file is not None else None
        yield from converted(csv_records(source, COLUMNS),
                             lambda record, number: self.convert(record, number, media_root, labels, labels_file))

    def convert(self, record: dict[str, str], number: int, media_root: Path,
                labels: dict[str, tuple[int, list[str] | str]] | None, labels_file: Path | None) -> ImportedRow:
        name = required_text(record, "VolumeName")
        volume = self.volume_path(media_root, name)
        findings = required_text(record, "Findings_EN")
        impression = required_text(record, "Impressions_EN")
        context = [f"{title}: {record[column].strip()}" for title, column in
                   (("Clinical information", "ClinicalInformation_EN"), ("Technique", "Technique_EN"))
                   if isinstance(record.get(column), str) and record[column].strip()]
        question = "\n".join(["<image>", *context, QUESTION])
        answer = f"Findings: {findings}\nImpression: {impression}"
        row_labels = None
        if labels is not None:
            if name not in labels:
                raise RowIssue(f"{name} is not in the labels file {labels_file.name}")  # type: ignore[union-attr]
            line, found = labels[name]
            if isinstance(found, str):
                raise RowIssue(f"labels file {labels_file.name} line {line}: {found}")  # type: ignore[union-attr]
            row_labels = found
        return ImportedRow(number=number, id=name.removesuffix(".nii.gz"), conversations=[("human", question),
                           ("gpt", answer)], media=[MediaRef((volume,), "volume")], labels=row_labels)

    def volume_path(self, media_root: Path, name: str) -> Path:
        """The volume of ``name`` by the dataset's folder convention (raises :class:`RowIssue`)."""
        match = VOLUME_NAME.match(name)
        if match is None:
            raise RowIssue(f"VolumeName {name!r} does not follow CT-RATE's <split>_<patient>_<scan>_<n>.nii.gz")
        split, patient, scan = match["split"], match["patient"], match["scan"]
        relative = f"{split}_{patient}/{split}_{patient}_{scan}/{name}"
        try:
            return self.find_media(media_root, f"{split}/{relative}", "volume")
        except RowIssue as first:
            fixed = media_root / f"{split}_fixed"
            if not fixed.is_dir():
                raise first from None
            return self.find_media(media_root, f"{split}_fixed/{relative}", "volume")


def find_labels_csv(reports: Path) -> Path | None:
    """The labels CSV of the reports' split in ``multi_abnormality_labels/`` beside their folder, if any."""
    folder = reports.parent.parent / LABELS_FOLDER
    if not folder.is_dir():
        return None
    prefix = "valid" if reports.name.lower().startswith("valid") else reports.name.lower().split("_")[0]
    candidates = sorted(p for p in folder.glob("*.csv") if p.name.lower().startswith(prefix) and p.is_file())
    if len(candidates) > 1:
        raise InputError(folder, f"several label files for the {prefix!r} split: "
                                 f"{', '.join(p.name for p in candidates)}; keep one")
    return candidates[0] if candidates else None


def read_labels(path: Path) -> dict[str, tuple[int, list[str] | str]]:
    """``VolumeName -> (line, present label names)``, or ``(line, problem)`` for a bad line."""
    labels: dict[str, tuple[int, list[str] | str]] = {}
    columns: list[str] | None = None
    for number, record in csv_records(path, ("VolumeName",)):
        if columns is None:
            columns = [c for c in record if c not in ("VolumeName", None)]
            if not columns:
                raise InputError(path, "the labels CSV has no label column besides VolumeName")
        name = record.get("VolumeName") or ""
        if None in record:
            labels[name] = (number, f"{len(record[None])} more cell(s) than header columns")
            continue
        bad = {c: record[c] for c in columns if record.get(c) not in ("0", "1", "0.0", "1.0")}
        if bad:
            labels[name] = (number, f"label values must be 0 or 1, got {bad}")
            continue
        labels[name] = (number, [c for c in columns if record[c] in ("1", "1.0")])
    return labels


@hookimpl
def longllava_register_importers():
    return [CtRateImporter]
