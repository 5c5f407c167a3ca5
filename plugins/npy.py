"""NumPy volume adapter ``npy``: a ``.npy`` array ``(D, H, W)`` or ``(1, D, H, W)`` -> slices.

What it reads
    One ``.npy`` file (NumPy format versions 1-3) holding a real-valued array of shape
    ``(D, H, W)`` (``D`` slices of ``H x W``) or ``(1, D, H, W)`` (channel-first with one
    channel: the layout of M3D-Cap / M3D-VQA volumes, ``1 x 32 x 256 x 256`` float32 in
    ``[0, 1]``). Slices are taken along ``D`` in stored order. Object (pickled) arrays,
    structured and complex dtypes, more than one channel and other ranks are refused.

How it reads (bounded memory)
    1. The path must be a regular file (not a FIFO or device) inside the allowed root.
    2. The header is parsed with ``numpy.lib.format`` (magic, version, shape, dtype, order)
       and the file size is checked against ``header + prod(shape) x itemsize`` **before**
       any array is made, so a truncated file or a header declaring terabytes is an error
       rather than an allocation.
    3. The data is memory-mapped (``np.load(mmap_mode="r", allow_pickle=False)``): only the
       sampled slices are read, one at a time, converted to float32 and windowed.

Options
    window: ``None`` (default: percentile normalisation over the sampled slices), a CT
        preset name (``lung``, ``bone``...), ``"WIDTH,LEVEL"`` or three of those for R/G/B
        (:mod:`longllava_plugins.windowing`). M3D volumes are already scaled to ``[0, 1]``:
        ``"1,0.5"`` shows them as stored.
    percentiles: ``(low, high)`` of the normalisation when ``window`` is ``None``.
    max_images: slice budget (default 256), met by even sampling that keeps the first and
        last slice; ``load(max_images=...)`` overrides it.
    max_pixels, max_decoded_bytes, time_budget_s: limits checked before decoding
        (:class:`~longllava_sdk.errors.ResourceLimitError` names the option to raise).

Priority
    ``priority = 110``: a third-party ``.npy`` adapter (default priority 100) that claims a
    file is asked first; name this one with ``adapter: npy`` (the M3D importers do).

Output
    ``Media(kind="volume")``; ``metadata[i]``: ``slice_index``, ``window``. ``info``:
    ``shape``, ``dtype``, ``n_slices_total``, ``n_slices_sampled``, ``window``, ``warnings``
    (non-finite values, masked black).

Example::

    from longllava_plugins.npy import NpyVolumeAdapter

    media = NpyVolumeAdapter(window="1,0.5").load("M3D_Cap_npy/ct_case/000006/Axial_non_contrast.npy", max_images=8)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
from numpy.lib import format as npy_format

from longllava_sdk.adapters import (
    DEFAULT_MAX_DECODED_BYTES,
    DEFAULT_TIME_BUDGET_S,
    RGB_BYTES_PER_PIXEL,
    InputAdapter,
    Source,
    check_limit,
    check_time_budget,
    guarded_claims,
    guarded_load,
    local_source,
    open_confined,
    sample_indices,
    validate_limit,
)
from longllava_sdk.errors import AdapterError, ConfigError, UnsupportedSourceError
from longllava_sdk.hookspecs import hookimpl
from longllava_sdk.media import Media
from longllava_plugins.windowing import Window, WindowSpec, parse_windows, percentile_window, window_to_rgb

NPY_MAGIC = b"\x93NUMPY"
DEFAULT_MAX_IMAGES = 256
DEFAULT_MAX_PIXELS = 2**26
#: At most this many values feed the normalisation percentiles.
NORMALISE_MAX_VALUES = 4_000_000


class NpyVolumeAdapter(InputAdapter):
    """Reads a ``(D, H, W)`` or ``(1, D, H, W)`` ``.npy`` volume as ``D`` slices (see the module docstring).

    Args:
        window: a window (preset, ``"WIDTH,LEVEL"``) or three for R/G/B; ``None``: percentiles.
        percentiles: the normalisation percentiles when ``window`` is ``None``.
        max_images: slices returned at most (sampled evenly, first and last kept).
        max_pixels: largest slice accepted (rows x columns).
        max_decoded_bytes: bound on the sampled slices as float32 plus their RGB images.
        time_budget_s: CPU seconds one load may use (``None``: unlimited).
    """

    name: ClassVar[str] = "npy"
    kind: ClassVar[str] = "volume"
    #: what a remote client may choose (never a limit: see InputAdapter.client_options)
    client_options = ("window", "percentiles")
    extensions: ClassVar[tuple[str, ...]] = (".npy",)
    priority: ClassVar[int] = 110

    def __init__(
        self,
        *,
        window: WindowSpec | Sequence[WindowSpec] | None = None,
        percentiles: tuple[float, float] = (0.5, 99.5),
        max_images: int | None = DEFAULT_MAX_IMAGES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
        time_budget_s: float | None = DEFAULT_TIME_BUDGET_S,
    ) -> None:
        super().__init__()
        if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int)
                                       or max_images < 1):
            raise ConfigError(f"max_images must be a positive integer or None, got {max_images!r}")
        percentile_window(np.zeros(1, np.float32), tuple(percentiles))  # validates the pair
        self.windows: list[Window] | None = None if window is None else parse_windows(window)
        self.percentiles = (float(percentiles[0]), float(percentiles[1]))
        self.max_images = max_images
        self.max_pixels = validate_limit("max_pixels", max_pixels, allow_none=False)
        self.max_decoded_bytes = validate_limit("max_decoded_bytes", max_decoded_bytes, allow_none=False)
        self.time_budget_s = validate_limit("time_budget_s", time_budget_s, integer=False)

    @classmethod
    @guarded_claims
    def claims(cls, path: Path) -> bool:
        """``.npy`` regular files that start with the NumPy magic bytes."""
        if not path.name.lower().endswith(".npy") or not path.is_file():
            return False
        with open_confined(path, what=".npy file") as handle:
            return handle.read(len(NPY_MAGIC)) == NPY_MAGIC

    @guarded_load
    def load(self, source: Source, *, max_images: int | None = None) -> Media:
        """Read at most ``max_images`` windowed RGB slices of the volume in ``source``."""
        path = local_source(source, self.name, what=".npy file")
        budget = max_images if max_images is not None else self.max_images
        if budget is not None and budget < 1:
            raise ConfigError(f"max_images must be >= 1, got {budget}")
        shape, dtype = read_header(path)
        depth, height, width = shape[-3:]
        check_limit(path, height * width, self.max_pixels, "max_pixels", f"a {height} x {width} slice")
        indices = sample_indices(depth, budget)
        needed = len(indices) * height * width * (4 + RGB_BYTES_PER_PIXEL)
        check_limit(path, needed, self.max_decoded_bytes, "max_decoded_bytes",
                    f"{len(indices)} sampled slice(s) need", unit="bytes")
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if array.shape != shape or array.dtype != dtype:  # the file changed between the checks
            raise AdapterError(path, f"the array is {array.shape} {array.dtype}, its header said {shape} {dtype}")
        volume = array[0] if array.ndim == 4 else array
        slices: list[np.ndarray] = []
        for index in indices:
            check_time_budget(f"at slice {index}")
            slices.append(np.asarray(volume[index], dtype=np.float32))
        del array, volume  # drop the mapping before decoding images
        warnings: list[str] = []
        non_finite = sum(int((~np.isfinite(s)).sum()) for s in slices)
        if non_finite:
            warnings.append(f"{non_finite} non-finite value(s) in the sampled slices, shown black")
        windows = self.windows or [self._auto_window(path, slices)]
        images, metadata = [], []
        for index, values in zip(indices, slices):
            mask = ~np.isfinite(values)
            images.append(window_to_rgb(values, windows, mask=mask if mask.any() else None))
            metadata.append({"slice_index": index, "window": [w.label for w in windows]})
        return Media(kind="volume", images=images, metadata=metadata, source=str(path), info={
            "shape": tuple(shape), "dtype": str(dtype), "n_slices_total": depth, "n_slices_sampled": len(indices),
            "window": [w.label for w in windows], "warnings": warnings})

    def _auto_window(self, path: Path, slices: list[np.ndarray]) -> Window:
        stride = max(1, sum(s.size for s in slices) // NORMALISE_MAX_VALUES)
        values = np.concatenate([s.ravel()[::stride] for s in slices])
        window = percentile_window(values, self.percentiles)
        if window is None:
            raise AdapterError(path, "no finite value in the sampled slices")
        return window


def read_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` of a ``.npy`` volume, checked against the file size before any data is read.

    Raises:
        AdapterError: not a regular file, not NumPy, truncated, an empty or wrongly shaped array.
        UnsupportedSourceError: object / structured / complex dtypes, several channels.
    """
    with open_confined(path, what=".npy file") as handle:  # regular files only (fstat of the opened file)
        size = os.fstat(handle.fileno()).st_size
        if handle.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise AdapterError(path, "not a NumPy .npy file (wrong magic bytes)")
        handle.seek(0)
        try:
            version = npy_format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(handle)
            else:  # 3.0 only adds UTF-8 field names, i.e. structured dtypes, which are refused anyway
                raise UnsupportedSourceError(path, f".npy format version {version[0]}.{version[1]} (structured "
                                                   "arrays) is not supported")
        except ValueError as exc:
            raise AdapterError(path, f"unreadable .npy header: {exc}") from exc
        offset = handle.tell()
    dtype = np.dtype(dtype)
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in "biuf":
        raise UnsupportedSourceError(path, f"dtype {dtype} is not a real number type (object, structured and "
                                           "complex arrays are refused)")
    shape = tuple(int(n) for n in shape)
    if len(shape) == 4 and shape[0] != 1:
        raise UnsupportedSourceError(path, f"shape {shape}: {shape[0]} channels; a volume has one (1 x D x H x W)")
    if len(shape) not in (3, 4) or 0 in shape:
        raise AdapterError(path, f"expected a non-empty (D, H, W) or (1, D, H, W) array, got shape {shape}")
    needed = offset + int(np.prod(shape, dtype=object)) * dtype.itemsize
    if size < needed:
        raise AdapterError(path, f"truncated: shape {shape} ({dtype}) needs {needed} bytes, the file has {size}")
    del fortran  # memory-mapped either way: a slice of a Fortran-ordered array is a strided read
    return shape, dtype


@hookimpl
def longllava_register_adapters():
    return [NpyVolumeAdapter]
