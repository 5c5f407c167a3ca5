"""An expert model for the prompt: a Hounsfield-unit screen of a CT, lung-nodule candidates included.

The pattern of MONAI's VILA-M3 expert models: before the vision-language model answers, a
specialised measurement looks at the same CT and its findings enter the prompt as text. This
one is classical image processing, no weights, so it runs anywhere. It reports the tissue
composition of the slices shown (share of voxels in the standard HU ranges: air / lung below
-400, fat -190..-30, soft tissue -30..100, bone above 300) and, when aerated lung is in view,
counts nodule candidates:

1. the slices the ``dicom`` adapter read (``media.metadata[i]["file"]`` / ``["frame"]``) are
   re-read with pydicom as Hounsfield units (``RescaleSlope`` / ``RescaleIntercept``);
2. air is ``HU < -400``; per slice, air connected to the image border is outside the body,
   the rest is lung; the lung mask's holes are filled (``scipy.ndimage.binary_fill_holes``),
   which brings back what lies inside the lungs (vessels, nodules);
3. soft tissue inside the filled lungs (``HU >= -100``) is labelled in 3-D
   (``scipy.ndimage.label``); components whose equivalent sphere diameter is 3-30 mm are
   nodule candidates (smaller: noise; larger: mediastinum, vessels, consolidation).

It answers ``None`` (nothing added to the prompt) for anything but a CT volume; without lungs
in view it says so instead of counting. Bounded: at most :data:`MAX_VOXELS` voxels are read.

A screening aid for the language model's context, not a diagnosis: the text says
"candidates", and what the model makes of it is up to its fine-tuning.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: The largest volume measured (voxels): 512 x 512 x 512.
MAX_VOXELS = 512 ** 3
AIR_HU = -400.0
SOFT_TISSUE_HU = -100.0
MIN_DIAMETER_MM, MAX_DIAMETER_MM = 3.0, 30.0
#: The HU ranges of the composition line (name, low, high), the usual CT windows' tissue classes.
TISSUES = (("air/lung", -np.inf, -400.0), ("fat", -190.0, -30.0), ("soft tissue", -30.0, 100.0),
           ("bone", 300.0, np.inf))


def tissue_fractions(hu: np.ndarray) -> dict[str, float]:
    """Share of voxels in each :data:`TISSUES` range (low inclusive, high exclusive)."""
    return {name: float(((hu >= low) & (hu < high)).mean()) for name, low, high in TISSUES}


def hounsfield_volume(media: Any) -> tuple[np.ndarray, tuple[float, float, float]] | None:
    """``(HU volume (slices, rows, cols) float32, voxel size (slice, row, col) mm)`` of a CT ``Media``, or ``None``."""
    import pydicom

    if getattr(media, "kind", None) != "volume" or (media.info or {}).get("modality") != "CT":
        return None
    entries = [(m.get("file"), m.get("frame")) for m in media.metadata]
    if not entries or any(path is None for path, _ in entries):
        return None
    slices, spacing = [], None
    for path, frame in entries:
        dataset = pydicom.dcmread(path)
        rows, cols = int(dataset.Rows), int(dataset.Columns)
        if len(entries) * rows * cols > MAX_VOXELS:
            return None
        pixels = dataset.pixel_array
        if frame is not None and pixels.ndim == 3:
            pixels = pixels[int(frame)]
        slope, intercept = float(dataset.get("RescaleSlope", 1)), float(dataset.get("RescaleIntercept", 0))
        slices.append(pixels.astype(np.float32) * slope + intercept)
        if spacing is None and "PixelSpacing" in dataset:
            spacing = [float(v) for v in dataset.PixelSpacing]
    if len({s.shape for s in slices}) != 1:
        return None
    info_spacing = (media.info or {}).get("spacing") or {}
    thickness = info_spacing.get("slice") or 1.0
    row, col = spacing or (info_spacing.get("row") or 1.0, info_spacing.get("column") or 1.0)
    return np.stack(slices), (float(thickness), float(row), float(col))


def lung_nodule_candidates(hu: np.ndarray, voxel_mm: tuple[float, float, float]) -> dict[str, Any] | None:
    """Lung volume and nodule candidates of an HU volume ``(slices, rows, cols)``; ``None`` without lungs."""
    from scipy import ndimage

    air = hu < AIR_HU
    lungs = np.zeros_like(air)
    for index, plane in enumerate(air):
        labels, count = ndimage.label(plane)
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        inside = np.isin(labels, border[border > 0], invert=True) & plane
        lungs[index] = ndimage.binary_fill_holes(inside)
    voxel_ml = voxel_mm[0] * voxel_mm[1] * voxel_mm[2] / 1000.0
    lung_ml = float(lungs.sum()) * voxel_ml
    if lung_ml < 1.0:
        return None
    candidates, count = ndimage.label(lungs & (hu >= SOFT_TISSUE_HU))
    sizes = np.bincount(candidates.ravel())[1:] if count else np.zeros(0, np.int64)
    diameters = [2.0 * (3.0 * n * voxel_ml * 1000.0 / (4.0 * math.pi)) ** (1 / 3) for n in sizes]
    kept = sorted((d for d in diameters if MIN_DIAMETER_MM <= d <= MAX_DIAMETER_MM), reverse=True)
    return {"lung_ml": lung_ml, "candidates": len(kept), "largest_mm": kept[0] if kept else None}


def lung_findings(media: Any) -> str | None:
    """The expert's text for the prompt, or ``None`` (not a CT volume)."""
    loaded = hounsfield_volume(media)
    if loaded is None:
        return None
    hu, voxel_mm = loaded
    composition = ", ".join(f"{name} {share:.0%}" for name, share in tissue_fractions(hu).items())
    text = f"HU screen of {hu.shape[0]} CT slice(s): {composition}."
    measured = lung_nodule_candidates(hu, voxel_mm)
    if measured is None:
        return text + " No aerated lung in view (no nodule screen)."
    largest = (f", the largest about {measured['largest_mm']:.0f} mm across" if measured["largest_mm"] else "")
    return (text + f" {measured['candidates']} soft-tissue nodule candidate(s) of 3-30 mm inside "
            f"{measured['lung_ml']:.0f} mL of aerated lung{largest}.")
