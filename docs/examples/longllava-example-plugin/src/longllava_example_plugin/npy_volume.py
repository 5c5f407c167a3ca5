"""An input adapter for ``.npy`` stacks of 2-D arrays: ``(slices, height, width)`` -> a volume.

The file is memory-mapped, so only the sampled slices are ever read, one at a time: a
50 GB stack costs the same memory as a 50 MB one. Pickled (object) arrays are refused,
as ``numpy.load(allow_pickle=False)`` would.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from longllava_sdk.adapters import InputAdapter, Source, sample_indices
from longllava_sdk.errors import AdapterError
from longllava_sdk.media import Media

NPY_MAGIC = b"\x93NUMPY"


class NpyVolumeAdapter(InputAdapter):
    """Reads a ``.npy`` array of shape ``(S, H, W)`` as ``S`` ordered grey slices.

    Args:
        window: ``(low, high)`` intensities mapped to black and white; default: the finite
            min and max over the sampled slices.
        spacing: distance between slices (e.g. mm), stored as ``slice_position``.
        default_max_images: slice budget when ``load`` gets ``max_images=None``.
    """

    name = "npy_volume"
    kind = "volume"
    extensions = (".npy",)

    def __init__(self, *, window: tuple[float, float] | None = None, spacing: float = 1.0,
                 default_max_images: int | None = 256) -> None:
        if window is not None and not float(window[0]) < float(window[1]):
            raise ValueError(f"window must be (low, high) with low < high, got {window!r}")
        self.window = None if window is None else (float(window[0]), float(window[1]))
        self.spacing = float(spacing)
        self.default_max_images = default_max_images

    @classmethod
    def claims(cls, path: Path) -> bool:
        """``.npy`` files that start with the NumPy magic bytes."""
        if not super().claims(path):
            return False
        try:
            with open(path, "rb") as handle:
                return handle.read(len(NPY_MAGIC)) == NPY_MAGIC
        except OSError:
            return False

    def load(self, source: Source, *, max_images: int | None = None) -> Media:
        if isinstance(source, (list, tuple)):
            raise AdapterError(str(source), f"{self.name} reads one .npy file, not a list")
        path = Path(source)
        volume = self._open(path)
        indices = sample_indices(volume.shape[0], max_images if max_images is not None else self.default_max_images)
        low, high = self.window or self._finite_range(path, volume, indices)
        high = high if high > low else low + 1.0  # a constant volume renders black, not NaN
        images, metadata = [], []
        for index in indices:  # one slice in memory at a time
            images.append(_to_rgb(np.asarray(volume[index], dtype=np.float32), low, high))
            metadata.append({"slice_index": index, "slice_position": index * self.spacing})
        return Media(
            kind="volume", images=images, metadata=metadata, source=str(path),
            info={"shape": tuple(volume.shape), "dtype": str(volume.dtype), "window": (low, high),
                  "total_slices": int(volume.shape[0])},
        )

    def _open(self, path: Path) -> np.ndarray:
        try:
            with open(path, "rb") as handle:
                magic = handle.read(len(NPY_MAGIC))
        except OSError as exc:
            raise AdapterError(path, f"cannot open: {exc.strerror or exc}") from exc
        if magic != NPY_MAGIC:
            raise AdapterError(path, "not a NumPy .npy file (wrong magic bytes)")
        try:
            volume = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:  # object dtype, truncated data, malformed header
            raise AdapterError(path, f"unreadable .npy array: {exc}") from exc
        if volume.ndim != 3 or 0 in volume.shape:
            raise AdapterError(path, f"expected a non-empty (slices, height, width) array, got shape {volume.shape}")
        if volume.dtype.kind not in "biuf":
            raise AdapterError(path, f"dtype {volume.dtype} is not a real number type")
        return volume

    @staticmethod
    def _finite_range(path: Path, volume: np.ndarray, indices: list[int]) -> tuple[float, float]:
        low, high = math.inf, -math.inf
        for index in indices:
            values = np.asarray(volume[index], dtype=np.float64)
            finite = values[np.isfinite(values)]
            if finite.size:
                low, high = min(low, float(finite.min())), max(high, float(finite.max()))
        if low == math.inf:
            raise AdapterError(path, "no finite values in the sampled slices")
        return low, high


def _to_rgb(values: np.ndarray, low: float, high: float) -> Image.Image:
    """``(H, W)`` intensities -> grey RGB image; NaN shows as black, +/-inf as white/black."""
    scaled = (np.nan_to_num(values, nan=low, posinf=high, neginf=low) - low) / (high - low)
    grey = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def describe(path: str | Path) -> dict[str, Any]:
    """Shape, dtype and finite value range of a ``.npy`` volume, reading one slice at a time."""
    adapter = NpyVolumeAdapter()
    volume = adapter._open(Path(path))
    low, high = adapter._finite_range(Path(path), volume, list(range(volume.shape[0])))
    return {"path": str(path), "shape": tuple(volume.shape), "dtype": str(volume.dtype), "min": low, "max": high}
