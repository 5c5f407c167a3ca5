"""Answer exporters (issue 18 item 2): DICOM SR into the source study, GeoJSON boxes on the map.

The SR is read back with pydicom and highdicom on the bundled CT series; the GeoJSON of a
full-scene box covers the bundled GeoTIFF's WGS84 bounds, and the same in a projected CRS.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longllava_sdk.cli import main
from longllava_sdk.errors import ConfigError, InputError, RegistryLookupError
from longllava_sdk.export import export_answer, list_exporters

REPO = Path(__file__).resolve().parents[1]
SERIES = REPO / "domains" / "medical" / "data" / "ct" / "series_01"
SCENE = REPO / "domains" / "remote_sensing" / "data" / "scenes" / "rmnp_01.tif"
ANSWER = "A 6 mm solid nodule in the right upper lobe; no effusion."


def test_builtin_exporters_come_through_the_hook():
    found = list_exporters()
    assert {"dicom-sr", "geojson"} <= set(found)
    assert found["dicom-sr"].source_kind == "volume" and found["geojson"].source_kind == "tiled"


# -- DICOM SR --------------------------------------------------------------------------------------


def test_dicom_sr_reads_back_in_the_source_study(tmp_path):
    import highdicom as hd
    import pydicom

    out = tmp_path / "answer.dcm"
    result = export_answer("dicom-sr", SERIES, ANSWER, out, model=str(tmp_path / "ct-lora"))
    assert result.output == out and out.is_file()
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(SERIES.glob("*.dcm"))]

    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
    assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
    assert ds.PatientID == sources[0].PatientID and ds.PatientName == sources[0].PatientName
    assert ds.SeriesInstanceUID != sources[0].SeriesInstanceUID  # its own series in that study
    assert (ds.CompletionFlag, ds.VerificationFlag) == ("PARTIAL", "UNVERIFIED")
    referenced = {ref.ReferencedSOPInstanceUID
                  for study in ds.CurrentRequestedProcedureEvidenceSequence
                  for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert referenced == {s.SOPInstanceUID for s in sources}

    sr = hd.sr.srread(out)
    assert isinstance(sr, hd.sr.EnhancedSR)
    items = {(item.ConceptNameCodeSequence[0].CodeMeaning): item for item in sr.ContentSequence}
    assert items["Finding"].TextValue == ANSWER
    assert items["Observer Type"].ConceptCodeSequence[0].CodeMeaning == "Device"
    assert items["Device Observer Name"].TextValue == "ct-lora"
    assert items["Device Observer Manufacturer"].TextValue == "longllava-sdk"
    algorithm = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in items["Finding"].ContentSequence}
    assert algorithm["Algorithm Family"].ConceptCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    assert "machine-learning model" in items["Comment"].TextValue
    hd.sr.EnhancedSR.from_dataset(ds)  # highdicom's own parser accepts it


def test_dicom_sr_refuses_overwrite_and_non_series(tmp_path):
    out = tmp_path / "answer.dcm"
    out.write_bytes(b"keep")
    with pytest.raises(InputError, match="already exists"):
        export_answer("dicom-sr", SERIES, ANSWER, out)
    assert out.read_bytes() == b"keep"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no DICOM file"):
        export_answer("dicom-sr", empty, ANSWER, tmp_path / "b.dcm")
    with pytest.raises(ConfigError, match=r"\.dcm"):
        export_answer("dicom-sr", SERIES, ANSWER, tmp_path / "b.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answer.dcm", "empty"]  # nothing littered


# -- GeoJSON ---------------------------------------------------------------------------------------


def _bounds_wgs84(path: Path) -> tuple[float, float, float, float]:
    import rasterio
    from rasterio.warp import transform_bounds

    with rasterio.open(path) as src:
        return transform_bounds(src.crs, "EPSG:4326", *src.bounds)


def _check_full_scene(path: Path, out: Path, tolerance: float) -> dict:
    result = export_answer("geojson", path, "The whole scene {<0><0><100><100>|<0>}", out)
    collection = json.loads(out.read_text())
    assert result.details["features"] == 1 and collection["type"] == "FeatureCollection"
    feature = collection["features"][0]
    ring = feature["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1]
    area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:])) / 2
    assert area > 0  # counter-clockwise exterior ring (RFC 7946)
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    west, south, east, north = _bounds_wgs84(path)
    assert min(lons) == pytest.approx(west, abs=tolerance) and max(lons) == pytest.approx(east, abs=tolerance)
    assert min(lats) == pytest.approx(south, abs=tolerance) and max(lats) == pytest.approx(north, abs=tolerance)
    return feature


def test_full_scene_box_covers_the_bundled_rasters_wgs84_bounds(tmp_path):
    feature = _check_full_scene(SCENE, tmp_path / "scene.geojson", 1e-6)
    props = feature["properties"]
    assert props["label"] == "The whole scene"
    assert props["box"] == [0, 0, 100, 100] and props["theta"] == 0
    import rasterio

    with rasterio.open(SCENE) as src:
        assert props["pixel_box"] == [0, 0, src.width, src.height]
        assert props["source_crs"] == src.crs.to_string()


def test_full_scene_box_in_a_projected_crs(tmp_path):
    """A UTM raster: the box goes through the affine transform and a real reprojection."""
    import numpy as np
    import rasterio
    from affine import Affine

    scene = tmp_path / "utm.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=200, height=100, count=1, dtype="uint8",
                       crs="EPSG:32613", transform=Affine(30, 0, 430000, 0, -30, 4480000)) as dst:
        dst.write(np.zeros((1, 100, 200), np.uint8))
    _check_full_scene(scene, tmp_path / "utm.geojson", 2e-6)


def test_boxes_labels_and_rotation(tmp_path):
    out = tmp_path / "b.geojson"
    answer = "[grounding] <p>a lake</p> {<10><20><30><40>|<90>}<delim>{<50><50><60><60>} and a road {<0><0><10><10>}"
    export_answer("geojson", SCENE, answer, out)
    features = json.loads(out.read_text())["features"]
    assert [f["properties"]["label"] for f in features] == ["a lake", "a lake", "a road"]
    # theta=90 about the centre turns a 20 x 20 (grid) box into itself: same extent
    rotated = export_answer("geojson", SCENE, "x {<10><10><30><50>|<90>}", tmp_path / "r.geojson")
    plain = export_answer("geojson", SCENE, "x {<10><10><30><50>|<0>}", tmp_path / "p.geojson")
    assert rotated.details["features"] == plain.details["features"] == 1
    box_r = json.loads((tmp_path / "r.geojson").read_text())["features"][0]["bbox"]
    box_p = json.loads((tmp_path / "p.geojson").read_text())["features"][0]["bbox"]
    width_r, height_r = box_r[2] - box_r[0], box_r[3] - box_r[1]
    width_p, height_p = box_p[2] - box_p[0], box_p[3] - box_p[1]
    assert width_r == pytest.approx(height_p, rel=0.05) and height_r == pytest.approx(width_p, rel=0.05)


def test_malformed_box_is_a_typed_error_naming_the_answer(tmp_path):
    answer = "the airport {<10><20><30>}"
    with pytest.raises(InputError, match=r"the airport \{<10><20><30>\}.*malformed box"):
        export_answer("geojson", SCENE, answer, tmp_path / "x.geojson")
    with pytest.raises(InputError, match="no .* box"):
        export_answer("geojson", SCENE, "nothing to see", tmp_path / "x.geojson")
    assert list(tmp_path.iterdir()) == []


def test_unknown_exporter_suggests_the_closest():
    with pytest.raises(RegistryLookupError, match="did you mean 'geojson'"):
        export_answer("geojsn", SCENE, "x", "x.geojson")


# -- CLI -------------------------------------------------------------------------------------------


def test_export_commands_from_the_cli(tmp_path, capsys):
    sr = tmp_path / "sr.dcm"
    assert main(["export", "dicom-sr", "--series", str(SERIES), "--answer", ANSWER, "--output", str(sr)]) == 0
    assert "referenced" in capsys.readouterr().out
    assert main(["export", "dicom-sr", "--series", str(SERIES), "--answer", ANSWER, "--output", str(sr)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    geo = tmp_path / "b.geojson"
    assert main(["export", "geojson", "--raster", str(SCENE), "--answer", "a {<0><0><50><50>}",
                 "--output", str(geo)]) == 0
    assert json.loads(geo.read_text())["features"][0]["properties"]["label"] == "a"


def test_infer_export_writes_the_answer_as_a_dicom_sr(tmp_path, tiny_checkpoint, capsys):
    import highdicom as hd

    out = tmp_path / "infer.dcm"
    status = main(["infer", "--model", str(tiny_checkpoint), "--volume", str(SERIES), "--prompt", "Findings?",
                   "--max-new-tokens", "6", "--no-stream", "--device", "cpu", "--export", "dicom-sr",
                   "--export-path", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    answer = captured.out.rstrip("\n")
    sr = hd.sr.srread(out)
    finding = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Finding")
    assert finding.TextValue == answer
    names = [i.TextValue for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning
             == "Device Observer Name"]
    assert names == [Path(tiny_checkpoint).name]


@pytest.mark.parametrize("argv, message", [
    (["--export", "geojsn", "--export-path", "x.geojson"], "did you mean 'geojson'"),
    (["--export", "geojson", "--export-path", "x.geojson"], "--tiled PATH"),
    (["--export", "dicom-sr"], "--export-path FILE"),
])
def test_infer_export_is_checked_before_the_model_loads(tmp_path, capsys, argv, message):
    status = main(["infer", "--model", str(tmp_path / "no-model"), "--prompt", "x", *argv])
    assert status == 1
    err = capsys.readouterr().err
    assert message in err and "no-model" not in err
