"""``longllava-sdk data deidentify`` on the bundled CT series, and the built-in ``npy`` volume adapter."""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from longllava_sdk.errors import AdapterError, DatasetError, InputError, ResourceLimitError, UnsupportedSourceError

REPO = Path(__file__).resolve().parents[1]
CT = REPO / "domains" / "medical" / "data" / "ct"


def copy_series(tmp_path: Path, names=("series_01", "series_02")) -> Path:
    src = tmp_path / "src"
    for name in names:
        shutil.copytree(CT / name, src / "DOE_JOHN" / name)
    # a private element, an overlay and a non-DICOM note, as exports from PACS carry
    first = src / "DOE_JOHN" / names[0] / "slice_00.dcm"
    dataset = pydicom.dcmread(first)
    block = dataset.private_block(0x0011, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "DOE, JOHN - MRN 1234")
    dataset.add_new(0x60000022, "LO", "overlay says John Doe")
    dataset.save_as(first)
    (src / "DOE_JOHN" / "notes.txt").write_text("patient John Doe")
    from pydicom.data import get_testdata_file

    shutil.copy(get_testdata_file("DICOMDIR", download=False), src / "DICOMDIR")  # records name the source files
    (src / "latest.dcm").symlink_to(first)  # a link to an instance already in the folder: read once
    return src


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_deidentify_replaces_consistently_keeps_pixels_and_never_writes_into_src(tmp_path, capsys):
    from longllava_sdk.cli import main

    src = copy_series(tmp_path)
    before = snapshot(src)
    out = tmp_path / "out"
    assert main(["data", "deidentify", str(src), "--output", str(out)]) == 0
    assert "de-identified 8 DICOM file(s)" in capsys.readouterr().out
    assert snapshot(src) == before  # the source is only read

    originals = {}
    for path in sorted(src.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        originals[(ds.SeriesInstanceUID, int(ds.InstanceNumber))] = ds
    outputs = [pydicom.dcmread(p) for p in sorted(out.rglob("*.dcm"))]
    assert len(outputs) == 8
    old_studies = {ds.StudyInstanceUID for ds in originals.values()}
    new_by_series: dict[str, set[str]] = {}
    for ds in outputs:
        assert ds.StudyInstanceUID not in old_studies
        assert "Demo" not in str(ds.PatientName) and not str(ds.PatientID).startswith("DEMO")
        assert ds.PatientIdentityRemoved == "YES"
        assert [item.CodeValue for item in ds.DeidentificationMethodCodeSequence] == ["113100", "113107"]
        assert not any(element.tag.is_private for element in ds)
        assert "ImageComments" not in ds and "SeriesDescription" not in ds and (0x6000, 0x0022) not in ds
        new_by_series.setdefault(ds.SeriesInstanceUID, set()).add(ds.StudyInstanceUID)
    # same study -> same new StudyInstanceUID; the two studies stay apart
    assert len(new_by_series) == 2 and all(len(studies) == 1 for studies in new_by_series.values())
    assert len({next(iter(s)) for s in new_by_series.values()}) == 2
    # dates shifted by one offset: intervals kept, values changed
    pairs = []
    for ds in outputs:
        match = [o for o in originals.values() if o.pixel_array.tobytes() == ds.pixel_array.tobytes()
                 and int(o.InstanceNumber) == int(ds.InstanceNumber)]
        assert match, "pixels changed"
        pairs.append((match[0], ds))
    for original, new in pairs:
        assert new.StudyDate != original.StudyDate and new.SOPInstanceUID != original.SOPInstanceUID
        np.testing.assert_array_equal(new.pixel_array, original.pixel_array)

    report = json.loads((out / "deidentify_report.json").read_text())
    assert report["skipped"] == 2 and len(report["files"]) == 8  # the note and the DICOMDIR
    assert report["tags"]["PatientName"]["replaced"] == 8 and report["tags"]["ImageComments"]["removed"] == 8
    assert "DOE" not in json.dumps(report) and "Demo" not in json.dumps(report)  # no values, no source names
    assert not any("DOE" in p.as_posix() for p in out.rglob("*"))

    # a non-empty output is refused without --overwrite; nothing is left behind
    assert main(["data", "deidentify", str(src), "--output", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "deidentify", str(src), "--output", str(src / "inside")]) == 1
    assert "inside the source" in capsys.readouterr().err and snapshot(src) == before
    assert main(["data", "deidentify", str(src), "--output", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_deidentify_refuses_burned_in_annotation_and_writes_nothing(tmp_path):
    from longllava_sdk.deidentify import deidentify

    src = copy_series(tmp_path, names=("series_03",))
    path = src / "DOE_JOHN" / "series_03" / "slice_01.dcm"
    dataset = pydicom.dcmread(path)
    dataset.BurnedInAnnotation = "YES"
    dataset.save_as(path)
    with pytest.raises(DatasetError, match="BurnedInAnnotation") as info:
        deidentify(str(src), output=str(tmp_path / "out"))
    assert info.value.problems == [info.value.problems[0]] and "slice_01.dcm" in info.value.problems[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    with pytest.raises(InputError, match="no such"):
        deidentify(str(tmp_path / "nope"), output=str(tmp_path / "out"))


@pytest.fixture
def npy_adapter():
    from longllava_sdk.plugin_manager import get_plugin_manager

    manager = get_plugin_manager()
    if not manager.has_plugin("npy") and not manager.is_blocked("npy"):
        manager.register(importlib.import_module("longllava_plugins.npy"), name="npy")
    from longllava_plugins.npy import NpyVolumeAdapter

    return NpyVolumeAdapter


def test_npy_adapter_reads_m3d_volumes_and_refuses_bad_files(tmp_path, npy_adapter):
    from longllava_sdk.registry import resolve_adapter

    # an M3D-shaped volume 1 x D x H x W in [0, 1]: slice i is the constant i / 9
    volume = np.repeat((np.arange(10, dtype=np.float32) / 9)[:, None, None], 16 * 24, axis=1).reshape(1, 10, 16, 24)
    path = tmp_path / "Axial_non_contrast.npy"
    np.save(path, volume)
    adapter = resolve_adapter(path, "npy", options={"window": "1,0.5"})
    media = adapter.load(path, max_images=4)
    assert media.kind == "volume" and len(media) == 4 and media.info["shape"] == (1, 10, 16, 24)
    indices = [m["slice_index"] for m in media.metadata]
    assert indices[0] == 0 and indices[-1] == 9
    for image, index in zip(media.images, indices):
        assert image.size == (24, 16)
        assert abs(int(np.asarray(image)[0, 0, 0]) - round(index / 9 * 255)) <= 1
    assert len(npy_adapter().load(tmp_path / "Axial_non_contrast.npy")) == 10  # 3-D (D, H, W) too: below

    cases = {}
    np.save(tmp_path / "stack.npy", volume[0])
    assert len(npy_adapter().load(tmp_path / "stack.npy", max_images=2)) == 2
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases["objects.npy"] = (UnsupportedSourceError, "not a real number type")
    np.save(tmp_path / "channels.npy", np.zeros((2, 3, 4, 4), np.float32))
    cases["channels.npy"] = (UnsupportedSourceError, "2 channels")
    np.save(tmp_path / "flat.npy", np.zeros((4, 4), np.float32))
    cases["flat.npy"] = (AdapterError, "expected a non-empty")
    (tmp_path / "truncated.npy").write_bytes(path.read_bytes()[:300])
    cases["truncated.npy"] = (AdapterError, "truncated")
    (tmp_path / "fake.npy").write_bytes(b"PK\x03\x04 not numpy")
    cases["fake.npy"] = (AdapterError, "magic")
    os.mkfifo(tmp_path / "fifo.npy")
    cases["fifo.npy"] = (AdapterError, "not a regular file|no such file")
    for name, (error, problem) in cases.items():
        with pytest.raises(error, match=problem) as info:
            npy_adapter().load(tmp_path / name)
        assert info.value.path == str(tmp_path / name)
    assert not npy_adapter.claims(tmp_path / "fake.npy") and not npy_adapter.claims(tmp_path / "fifo.npy")
    with pytest.raises(ResourceLimitError, match="max_decoded_bytes"):
        npy_adapter(max_decoded_bytes=1000).load(path)
