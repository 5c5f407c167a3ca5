"""``longllava-sdk data import`` / ``data formats``: each format on a small file laid out as its
public dataset ships, with real bundled media; bad rows named with their row number; the
manifest read back by the trainer's reader; a CT-RATE manifest fine-tuned end to end.

Fixtures are generated in the tests (TorchGeo style) from the real samples under
``domains/*/data`` (CT DICOM, MRI NIfTI, MP4 clips, PNG patches); nothing large is committed.
"""

from __future__ import annotations

import csv
import gzip
import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from longllava_sdk.errors import ConfigError, DatasetError, InputError

REPO = Path(__file__).resolve().parents[1]
MEDICAL = REPO / "domains" / "medical" / "data"
PATCHES = sorted((MEDICAL / "pathology").glob("*.png"))
CLIPS = sorted((REPO / "domains" / "video" / "data" / "clips").glob("*.mp4"))
NIFTI = MEDICAL / "mri" / "anatomical.nii"
IMPORTERS = ("import_llava", "import_llamafactory", "import_m3d_vqa", "import_m3d_cap", "import_ct_rate",
             "import_videochatgpt", "import_geochat", "npy", "nifti", "images", "video", "heads")
CT_RATE_LABELS = ["Medical material", "Arterial wall calcification", "Cardiomegaly", "Pericardial effusion",
                  "Coronary artery wall calcification", "Hiatal hernia", "Lymphadenopathy", "Emphysema",
                  "Atelectasis", "Lung nodule", "Lung opacity", "Pulmonary fibrotic sequela", "Pleural effusion",
                  "Mosaic attenuation pattern", "Peribronchial thickening", "Consolidation", "Bronchiectasis",
                  "Interlobular septal thickening"]


@pytest.fixture(autouse=True)
def builtin_importers():
    """The built-in importers and adapters, also when the installed entry points predate them."""
    from longllava_sdk.plugin_manager import get_plugin_manager

    manager = get_plugin_manager()
    for name in IMPORTERS:
        if not manager.has_plugin(name) and not manager.is_blocked(name):
            manager.register(importlib.import_module(f"longllava_plugins.{name}"), name=name)


def run_import(fmt, source, output, **kwargs):
    from longllava_sdk.data_import import import_dataset

    return import_dataset(fmt, str(source), output=str(output), **kwargs)


def read_back(manifest: Path):
    """The manifest through the trainer's own reader: every row parses without a problem."""
    from longllava_sdk.training.data import read_rows

    rows = read_rows(manifest)
    assert all(not row.problems for row in rows), [row.problems for row in rows]
    return rows


def problems_by_row(report):
    return {p.number: p.reason for p in report.problems}


# -- llava / llamafactory -------------------------------------------------------------------


def test_llava_json_imports_and_reads_back(tmp_path):
    root = tmp_path / "llava"
    (root / "coco" / "train2017").mkdir(parents=True)
    for index, patch in enumerate(PATCHES[:2]):
        shutil.copy(patch, root / "coco" / "train2017" / f"00000000{index}.png")
    records = [
        {"id": "a", "image": "coco/train2017/000000000.png",
         "conversations": [{"from": "human", "value": "<image>\nWhat stain is this?"},
                           {"from": "gpt", "value": "IHC."}]},
        {"id": "b", "image": "coco/train2017/missing.png",
         "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]},
        {"id": "c", "image": ["coco/train2017/000000000.png", "coco/train2017/000000001.png"],
         "conversations": [{"from": "human", "value": "<image>\nCompare."}, {"from": "gpt", "value": "Same."}]},
        {"id": "d", "conversations": [{"from": "human", "value": "Text only?"}, {"from": "gpt", "value": "Yes."}]},
        {"id": "e", "image": "coco/train2017/000000001.png",
         "conversations": [{"from": "human", "value": "No marker here."}, {"from": "gpt", "value": "Fine."}]},
        {"id": "a", "image": "coco/train2017/000000001.png",
         "conversations": [{"from": "human", "value": "<image>\nDup"}, {"from": "gpt", "value": "id"}]},
        {"id": "g", "image": "coco/train2017", "conversations": [{"from": "human", "value": "<image>\nQ"},
                                                                  {"from": "gpt", "value": "A"}]},
        {"id": "h", "image": "../outside.png", "conversations": [{"from": "human", "value": "<image>\nQ"},
                                                                 {"from": "gpt", "value": "A"}]},
        {"id": "i", "conversations": [{"from": "robot", "value": "Q"}, {"from": "gpt", "value": "A"}]},
    ]
    source = root / "llava_v1_5_mix665k.json"
    source.write_text(json.dumps(records))
    report = run_import("llava", source, root / "manifest.jsonl")
    assert report.imported == 3 and report.row_unit == "record"
    bad = problems_by_row(report)
    assert sorted(bad) == [2, 3, 6, 7, 8, 9]
    assert "not found" in bad[2] and "missing.png" in bad[2]
    assert "1 <image> marker(s) but 2 media" in bad[3]
    assert "duplicate id 'a' (also row 1)" in bad[6]
    assert "is a folder" in bad[7]
    assert "leaves the media root" in bad[8]
    assert "'robot'" in bad[9]
    rows = read_back(root / "manifest.jsonl")
    assert [row.id for row in rows] == ["a", "d", "e"]
    assert rows[0].sources[0].path == "coco/train2017/000000000.png"
    assert rows[2].turns[0]["content"].startswith("<image>\n")  # no marker: the image opens the question


def test_llamafactory_mllm_demo_layout(tmp_path):
    data = tmp_path / "data"
    (data / "mllm_demo_data").mkdir(parents=True)
    shutil.copy(PATCHES[0], data / "mllm_demo_data" / "1.jpg")
    shutil.copy(PATCHES[1], data / "mllm_demo_data" / "2.jpg")
    shutil.copy(CLIPS[0], data / "mllm_demo_data" / "1.mp4")
    records = [
        {"messages": [{"content": "<image>Who are they?", "role": "user"},
                      {"content": "Two cells.", "role": "assistant"},
                      {"content": "What are they doing?", "role": "user"},
                      {"content": "Nothing.", "role": "assistant"}],
         "images": ["mllm_demo_data/1.jpg"]},
        {"messages": [{"content": "<video>Why is this video funny?", "role": "user"},
                      {"content": "Because a rabbit.", "role": "assistant"}],
         "videos": ["mllm_demo_data/1.mp4"]},
        {"messages": [{"content": "<image><image>Two?", "role": "user"}, {"content": "One.", "role": "assistant"}],
         "images": ["mllm_demo_data/1.jpg"]},
        {"messages": [{"content": "<video><image>Order?", "role": "user"}, {"content": "x", "role": "assistant"}],
         "images": ["mllm_demo_data/2.jpg"], "videos": ["mllm_demo_data/1.mp4"]},
        {"messages": [{"content": "<image>Both?", "role": "user"}, {"content": "y", "role": "assistant"}],
         "images": ["mllm_demo_data/2.jpg"], "audios": ["a.wav"]},
        {"system": "You are a pathologist.",
         "messages": [{"content": "<image>and<video>", "role": "user"}, {"content": "z", "role": "assistant"}],
         "images": ["mllm_demo_data/2.jpg"], "videos": ["mllm_demo_data/1.mp4"]},
    ]
    source = data / "mllm_demo.json"
    source.write_text(json.dumps(records))
    report = run_import("llamafactory", source, data / "mllm.jsonl")
    bad = problems_by_row(report)
    assert report.imported == 3 and sorted(bad) == [3, 4, 5]
    assert "2 <image> marker(s) but 1 images" in bad[3]
    assert "<video> marker comes before an <image>" in bad[4]
    assert "audios" in bad[5]
    rows = read_back(data / "mllm.jsonl")
    assert [s.key for s in rows[1].sources] == ["video"] and rows[1].turns[0]["content"].startswith("<image>")
    assert rows[2].turns[0] == {"role": "system", "content": "You are a pathologist."}
    assert [s.key for s in rows[2].sources] == ["image", "video"]
    assert [t["role"] for t in rows[0].turns] == ["user", "assistant", "user", "assistant"]


# -- M3D -------------------------------------------------------------------------------------


def write_m3d_volume(path: Path, shape=(1, 8, 32, 32), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.random.default_rng(seed).random(shape, dtype=np.float32))


M3D_HEADER = ["Image Path", "Text", "Question Type", "Question", "Choice A", "Choice B", "Choice C", "Choice D",
              "Answer", "Answer Choice"]


def test_m3d_vqa_csv_layout(tmp_path):
    data_root = tmp_path / "Data" / "data"
    volume = "M3D_Cap_npy/ct_case/000006/Axial_non_contrast.npy"
    write_m3d_volume(data_root / volume)
    write_m3d_volume(data_root / "M3D_Cap_npy/ct_case/000007/Axial.npy", shape=(2, 8, 32, 32))
    (data_root / "M3D-VQA").mkdir()
    rows = [
        [volume, "Multiline\nfindings text", "1", "Which plane is this image in?", "Axial", "Sagittal",
         "Coronal", "Oblique", "Axial", "A"],
        [volume, "", "3", "Which organ?", "Liver", "Kidney", "Lung", "Heart", "Kidney", "E"],
        ["M3D_Cap_npy/ct_case/000007/Axial.npy", "t", "2", "Phase?", "a", "b", "c", "d", "a", "A"],
        [volume, "t", "4", "Abnormality?", "Cyst", "Mass", "Stone", "None", "Mass", "C"],
        ["M3D_Cap_npy/ct_case/999999/gone.npy", "t", "5", "Where?", "a", "b", "c", "d", "d", "D"],
        [volume, "t", "9", "", "a", "b", "c", "d", "d", "D"],
    ]
    source = data_root / "M3D-VQA" / "M3D_VQA_train.csv"
    with open(source, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(M3D_HEADER)
        writer.writerows(rows)
    report = run_import("m3d-vqa", source, data_root / "m3d_vqa.jsonl")
    bad = problems_by_row(report)
    # CSV line numbers as a spreadsheet shows them: header = 1, the two-line quoted cell is one row
    assert report.imported == 1 and sorted(bad) == [3, 4, 5, 6, 7] and report.row_unit == "line"
    assert "one of A, B, C, D" in bad[3]
    assert "2 channels" in bad[4]
    assert "is not the text of Choice C" in bad[5]
    assert "not found" in bad[6]
    assert "'Question' is empty" in bad[7]
    (row,) = read_back(data_root / "m3d_vqa.jsonl")
    assert row.turns[0]["content"] == ("<image>\nWhich plane is this image in? Choices: A. Axial B. Sagittal "
                                       "C. Coronal D. Oblique")
    assert row.turns[1]["content"] == "A. Axial"
    assert row.sources[0].adapter == "npy" and row.sources[0].key == "volume"
    lines = [line for line in report.problem_lines()]
    assert lines[0].startswith("M3D_VQA_train.csv line 3: ")


def test_m3d_cap_json_layout(tmp_path):
    data_root = tmp_path / "data"
    cap = data_root / "M3D_Cap_npy"
    for case in ("000006", "000007"):
        write_m3d_volume(cap / "ct_case" / case / "Axial_non_contrast.npy")
    (cap / "ct_case" / "000006" / "text.txt").write_text("A 3 cm hypodense lesion in the liver.")
    (cap / "ct_case" / "000007" / "text.txt").write_text("   ")
    document = {
        "train": [{"image": "M3D_Cap_npy/ct_case/000006/Axial_non_contrast.npy",
                   "text": "M3D_Cap_npy/ct_case/000006/text.txt"},
                  {"image": "M3D_Cap_npy/ct_case/000007/Axial_non_contrast.npy",
                   "text": "M3D_Cap_npy/ct_case/000007/text.txt"}],
        "validation": [{"image": "M3D_Cap_npy/ct_case/000006/Axial_non_contrast.npy",
                        "text": "M3D_Cap_npy/ct_case/000006/text.txt"},
                       {"image": "M3D_Cap_npy/ct_case/000006/Axial_non_contrast.npy"}],
    }
    source = cap / "M3D_Cap.json"
    source.write_text(json.dumps(document))
    report = run_import("m3d-cap", source, data_root / "m3d_cap.jsonl")
    bad = problems_by_row(report)
    assert report.imported == 2 and sorted(bad) == [2, 4]
    assert bad[2].startswith("train #2: ") and "is empty" in bad[2]
    assert bad[4].startswith("validation #2: ") and "'text' is missing" in bad[4]
    rows = read_back(data_root / "m3d_cap.jsonl")
    assert [r.split for r in rows] == ["train", "validation"]
    assert rows[0].turns[1]["content"] == "A 3 cm hypodense lesion in the liver."


# -- CT-RATE ---------------------------------------------------------------------------------


def write_ct_rate(root: Path, *, bad_rows: bool = True) -> Path:
    """A tiny CT-RATE ``dataset/`` tree with real .nii.gz volumes; returns the reports CSV."""
    dataset = root / "dataset"
    names = ["train_1_a_1.nii.gz", "train_1_a_2.nii.gz", "train_2_b_1.nii.gz"]
    raw = NIFTI.read_bytes()
    for name in names:
        split, patient, scan, _ = name.split("_", 3)
        folder = dataset / split / f"{split}_{patient}" / f"{split}_{patient}_{scan}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(gzip.compress(raw))
    reports = [
        ["train_1_a_1.nii.gz", "Cough.", "Non-contrast chest CT, 1 mm.", "A 6 mm nodule, right upper lobe.",
         "Pulmonary nodule."],
        ["train_1_a_2.nii.gz", "", "", "Emphysema in both upper lobes, \"centrilobular\", with bullae.",
         "Emphysema."],
        ["train_2_b_1.nii.gz", "Dyspnea.", "Standard.", "No focal lesion.", "Normal chest CT."],
    ]
    if bad_rows:
        reports += [
            ["train_3_a_1.nii.gz", "x", "y", "Missing volume.", "n/a"],
            ["train_2_b_1.nii.gz", "x", "y", "", "Findings empty."],
            ["scan42.nii.gz", "x", "y", "f", "i"],
        ]
    (dataset / "radiology_text_reports").mkdir(parents=True)
    source = dataset / "radiology_text_reports" / "train_reports.csv"
    with open(source, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"])
        writer.writerows(reports)
    (dataset / "multi_abnormality_labels").mkdir()
    with open(dataset / "multi_abnormality_labels" / "train_predicted_labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["VolumeName", *CT_RATE_LABELS])
        for name, present in (("train_1_a_1.nii.gz", {"Lung nodule"}),
                              ("train_1_a_2.nii.gz", {"Emphysema", "Arterial wall calcification"}),
                              ("train_2_b_1.nii.gz", set())):
            writer.writerow([name, *[int(label in present) for label in CT_RATE_LABELS]])
    return source


def test_ct_rate_reports_volumes_and_labels(tmp_path):
    source = write_ct_rate(tmp_path)
    manifest = tmp_path / "ct_rate.jsonl"
    report = run_import("ct-rate", source, manifest)
    bad = problems_by_row(report)
    assert report.imported == 3 and sorted(bad) == [5, 6, 7]
    assert "train/train_3/train_3_a/train_3_a_1.nii.gz" in bad[5] and "not found" in bad[5]
    assert "'Findings_EN' is empty" in bad[6]
    assert "does not follow CT-RATE" in bad[7]
    rows = read_back(manifest)
    assert [r.id for r in rows] == ["train_1_a_1", "train_1_a_2", "train_2_b_1"]
    assert rows[0].labels == ["Lung nodule"]
    assert rows[1].labels == ["Arterial wall calcification", "Emphysema"] and rows[2].labels == []
    assert rows[0].sources[0].path == "dataset/train/train_1/train_1_a/train_1_a_1.nii.gz"
    assert rows[0].turns[0]["content"].startswith("<image>\nClinical information: Cough.\nTechnique: ")
    assert rows[1].turns[1]["content"].startswith('Findings: Emphysema in both upper lobes, "centrilobular"')


def test_ct_rate_bad_label_values_are_reported(tmp_path):
    source = write_ct_rate(tmp_path, bad_rows=False)
    labels = source.parent.parent / "multi_abnormality_labels" / "train_predicted_labels.csv"
    lines = labels.read_text().splitlines()
    lines[2] = lines[2].replace(",1,", ",2,", 1)
    labels.write_text("\n".join(lines[:3]) + "\n")  # train_2_b_1 is no longer listed
    report = run_import("ct-rate", source, tmp_path / "m.jsonl")
    bad = problems_by_row(report)
    assert sorted(bad) == [3, 4]
    assert "line 3" in bad[3] and "must be 0 or 1" in bad[3]
    assert "not in the labels file" in bad[4]


def test_ct_rate_manifest_fine_tunes(tmp_path, capsys):
    """Done when: a manifest from `ct-rate` fine-tunes with `finetune --data` (multilabel head, 2 steps)."""
    import yaml

    from longllava_sdk.cli import main
    from trainer_fixtures import write_micro_model

    source = write_ct_rate(tmp_path)
    manifest = tmp_path / "ct_rate.jsonl"
    assert main(["data", "import", "ct-rate", str(source), "--output", str(manifest)]) == 0
    captured = capsys.readouterr()
    assert "ct-rate: imported 3 row(s)" in captured.out and "train_reports.csv line 5: " in captured.err
    recipe = yaml.safe_load((REPO / "domains" / "medical" / "recipe.yaml").read_text())
    recipe["head"]["labels"] = CT_RATE_LABELS
    recipe["max_images"] = 2
    recipe["adapters"] = {"nifti": {"max_images": 2}}
    recipe["training"].update(epochs=1, batch_size=1, max_length=512)
    recipe["lora"].update(r=2, alpha=4)
    recipe.pop("data")
    recipe_path = tmp_path / "ct_rate.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    base = write_micro_model(tmp_path / "base")
    out = tmp_path / "run"
    status = main(["finetune", "--domain", str(recipe_path), "--model", str(base), "--data", str(manifest),
                   "--output", str(out), "--max-steps", "2", "--no-merge"])
    printed = capsys.readouterr()
    assert status == 0, printed.err[-2000:]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "adapter" / "head.safetensors").is_file()


# -- Video-ChatGPT / GeoChat --------------------------------------------------------------------


def test_videochatgpt_videoinstruct_layout(tmp_path):
    videos = tmp_path / "activitynet"
    videos.mkdir()
    shutil.copy(CLIPS[0], videos / "v_k_ZXmr8pmrs.mp4")
    shutil.copy(CLIPS[1], videos / "v_9Pv2lUfQqk0.mkv")
    shutil.copy(CLIPS[2], videos / "v_sGuBbrlMxBs.mp4")
    records = [
        {"q": "What is the rabbit doing?", "a": "It stretches.", "video_id": "v_k_ZXmr8pmrs"},
        {"q": "What happens next?", "a": "Bikes pass.", "video_id": "v_9Pv2lUfQqk0"},
        {"q": "Without prefix?", "a": "Found.", "video_id": "sGuBbrlMxBs"},
        {"q": "Where is it?", "a": "Nowhere.", "video_id": "v_missing"},
        {"q": "", "a": "No question.", "video_id": "v_k_ZXmr8pmrs"},
        {"q": "Path?", "a": "No.", "video_id": "../v_k_ZXmr8pmrs"},
    ]
    source = videos / "VideoInstruct_Dataset.json"
    source.write_text(json.dumps(records))
    report = run_import("videochatgpt", source, videos / "videoinstruct.jsonl")
    bad = problems_by_row(report)
    assert report.imported == 3 and sorted(bad) == [4, 5, 6]
    assert "no video for video_id 'v_missing'" in bad[4]
    assert "'q' is empty" in bad[5]
    assert "plain id" in bad[6]
    rows = read_back(videos / "videoinstruct.jsonl")
    assert [r.sources[0].path for r in rows] == ["v_k_ZXmr8pmrs.mp4", "v_9Pv2lUfQqk0.mkv", "v_sGuBbrlMxBs.mp4"]
    assert rows[0].id == "v_k_ZXmr8pmrs-1" and rows[0].sources[0].key == "video"


def test_geochat_boxes_are_validated(tmp_path):
    from longllava_plugins.import_geochat import parse_boxes

    images = tmp_path / "share" / "GeoChat_Instruct"
    images.mkdir(parents=True)
    shutil.copy(PATCHES[0], images / "P0003_0004.png")

    def record(rid, answer, question="<image>\n[refer] give me the location of <p>the plane</p>"):
        return {"id": rid, "image": "P0003_0004.png",
                "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}

    records = [
        record("ok", "<p>plane</p> {<40><23><57><39>|<-45>}<delim>{<0><0><100><100>|<0>}"),
        record("order", "{<57><23><40><39>|<0>}"),
        record("range", "{<40><23><57><139>|<0>}"),
        record("angle", "{<40><23><57><39>|<120>}"),
        record("malformed", "{<40><23><57>|<0>}"),
        record("question-box", "It is a plane.", question="<image>\n[identify] {<10><10><20><20>|<15>}"),
    ]
    source = images.parent / "GeoChat_Instruct.json"
    source.write_text(json.dumps(records))
    report = run_import("geochat", source, images.parent / "geochat.jsonl", media_root=str(images))
    bad = problems_by_row(report)
    assert report.imported == 2 and sorted(bad) == [2, 3, 4, 5]
    assert "0 <= x1 < x2 <= 100" in bad[2] and "0 <= x1 < x2 <= 100" in bad[3]
    assert "angle 120" in bad[4] and "malformed box" in bad[5]
    rows = read_back(images.parent / "geochat.jsonl")
    assert rows[0].sources[0].path == "GeoChat_Instruct/P0003_0004.png"
    assert parse_boxes(rows[0].turns[1]["content"]) == [(40, 23, 57, 39, -45), (0, 0, 100, 100, 0)]


# -- the command -----------------------------------------------------------------------------


def test_data_formats_lists_every_format_with_its_media_lookup(capsys):
    from longllava_sdk.cli import main

    assert main(["data", "formats", "--json"]) == 0
    listed = {f["name"]: f for f in json.loads(capsys.readouterr().out)}
    assert {"llava", "llamafactory", "m3d-vqa", "m3d-cap", "ct-rate", "videochatgpt", "geochat"} <= set(listed)
    for entry in listed.values():
        assert entry["description"] and "\n" not in entry["description"]
        assert "--media-root" in entry["media_lookup"] or entry["media_lookup"]
    assert "radiology_text_reports" in listed["ct-rate"]["media_lookup"]
    assert main(["data", "formats"]) == 0
    table = capsys.readouterr().out
    assert "videochatgpt" in table and "media: <video_id>.mp4" in table


def test_data_import_refuses_unknown_formats_overwrites_and_outside_media(tmp_path, capsys):
    from longllava_sdk.cli import main

    import warnings

    source = write_ct_rate(tmp_path, bad_rows=False)
    manifest = tmp_path / "m.jsonl"
    assert main(["data", "import", "ct_rate", str(source), "--output", str(manifest)]) == 1
    assert "did you mean 'ct-rate'" in capsys.readouterr().err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["data", "import", "ct-rate", str(source), "--output", str(manifest)]) == 0
    assert not caught, [str(w.message) for w in caught]  # a quiet console
    out = capsys.readouterr().out
    assert "ct-rate: imported 3 row(s)" in out and "0 bad row(s)" in out and f"finetune --data {manifest}" in out
    first = manifest.read_bytes()
    assert main(["data", "import", "ct-rate", str(source), "--output", str(manifest)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "import", "ct-rate", str(source), "--output", str(manifest), "--overwrite"]) == 0
    assert manifest.read_bytes() == first
    inner = tmp_path / "dataset" / "sub" / "m.jsonl"
    assert main(["data", "import", "ct-rate", str(source), "--output", str(inner)]) == 1
    assert "not inside the manifest's folder" in capsys.readouterr().err and not inner.exists()
    assert main(["data", "import", "ct-rate", str(source), "--output", str(tmp_path / "m.json")]) == 1
    assert ".jsonl" in capsys.readouterr().err


def test_a_failed_import_leaves_the_existing_manifest_and_no_litter(tmp_path):
    source = write_ct_rate(tmp_path)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("previous\n")
    with pytest.raises(DatasetError, match="bad row"):
        run_import("ct-rate", source, manifest, overwrite=True, strict=True)
    assert manifest.read_text() == "previous\n"
    empty = tmp_path / "dataset" / "radiology_text_reports" / "none.csv"
    empty.write_text("VolumeName,ClinicalInformation_EN,Technique_EN,Findings_EN,Impressions_EN\n"
                     "scan.nii.gz,a,b,c,d\n")
    with pytest.raises(DatasetError, match="no row could be imported") as info:
        run_import("ct-rate", empty, tmp_path / "n.jsonl")
    assert any("line 2" in p for p in info.value.problems)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "m.jsonl"]
    with pytest.raises(InputError, match="lacks the column"):
        run_import("m3d-vqa", source, tmp_path / "x.jsonl", media_root=str(tmp_path))
    with pytest.raises(ConfigError, match="unknown dataset format"):
        run_import("nope", source, tmp_path / "x.jsonl")


def test_data_listing_modules_do_not_import_torch():
    """The data commands' modules and the importers load with torch unavailable.

    ``import longllava_sdk`` itself registers the model with transformers (torch); the child
    process stands the package in without running its ``__init__`` and makes ``import torch``
    fail, then imports every module ``data formats`` / ``data import`` / ``data deidentify`` use.
    """
    import subprocess
    import sys

    code = f"""
import importlib.abc, sys, types
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, NoTorch())
package = types.ModuleType("longllava_sdk")
package.__path__ = [{str(REPO / "longllava_sdk")!r}]
sys.modules["longllava_sdk"] = package
from longllava_sdk import hookspecs
package.hookimpl = hookspecs.hookimpl
import longllava_sdk.data_import, longllava_sdk.deidentify, longllava_sdk.cli.cmd_data
for name in {list(IMPORTERS[:8])!r}:
    __import__("longllava_plugins." + name)
assert "torch" not in sys.modules
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_jsonl_is_streamed_and_whole_file_problems_name_the_file(tmp_path, monkeypatch):
    from longllava_sdk import importers

    root = tmp_path / "d"
    root.mkdir()
    shutil.copy(PATCHES[0], root / "a.png")
    good = {"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}
    source = root / "data.jsonl"
    source.write_text(json.dumps(good) + "\n\n{not json\n" + json.dumps({**good, "id": "x"}) + "\n[1, 2]\n")
    report = run_import("llava", source, root / "m.jsonl")
    bad = problems_by_row(report)
    assert report.imported == 2 and sorted(bad) == [2, 4]  # records, blank lines not counted
    assert "not valid JSON" in bad[2] and "must be a JSON object" in bad[4]
    assert [r.id for r in read_back(root / "m.jsonl")] == ["data-1", "x"]

    as_json = root / "data.json"
    as_json.write_text(json.dumps([good] * 3))
    monkeypatch.setattr(importers, "MAX_JSON_BYTES", 100)
    with pytest.raises(InputError, match="convert it to JSON Lines"):
        run_import("llava", as_json, root / "n.jsonl")
    latin = root / "reports.csv"
    latin.write_bytes("VolumeName,ClinicalInformation_EN,Technique_EN,Findings_EN,Impressions_EN\n"
                      "train_1_a_1.nii.gz,caf\xe9,b,c,d\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        run_import("ct-rate", latin, root / "o.jsonl", media_root=str(root))
    assert sorted(p.name for p in root.iterdir()) == ["a.png", "data.json", "data.jsonl", "m.jsonl", "reports.csv"]
