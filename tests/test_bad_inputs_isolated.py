"""The whole bad-input corpus, each case in a forked worker with the limits a laptop has.

Every case of ``bad_inputs.medical``, ``bad_inputs.raster_video`` and ``bad_inputs.reliability``
is built here, then loaded in a fresh fork (``fuzz.sandbox``) whose address space may grow
by at most 2 GiB and which is killed after 10 s. Each must raise exactly the typed SDK error
the case names, naming the file, without any Python-level socket connection and without
creating or modifying a file. A listening socket on 127.0.0.1 (the *canary*, referenced by
the crafted ``.ovr`` sidecar VRT) proves GDAL's own C-level network code never connected.

The fuzz findings whose fix is to *read* the file (``READABLE_REGRESSIONS``) must load, under
the same limits.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from bad_inputs.medical import MEDICAL_BAD_INPUTS
from bad_inputs.raster_video import RASTER_VIDEO_BAD_INPUTS
from bad_inputs.reliability import READABLE_REGRESSIONS, RELIABILITY_BAD_INPUTS
from fuzz.sandbox import run_job

# rasterio's own use of affine's deprecated `*` while the builders write GeoTIFFs
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
TIMEOUT_S = 10.0
MEMORY_MB = 2048


@dataclass(frozen=True)
class Spec:
    name: str
    adapter: str
    build: Callable[[Path], Any]
    error: type
    match: str
    options: dict[str, Any]
    names: str  # "source", "inside" or "url"
    confined: bool = False
    readable_if_decoder: str | None = None


def _specs() -> list[Spec]:
    specs = [Spec(c.name, c.adapter, c.build, c.error, c.match, c.options, "inside",
                  readable_if_decoder=c.needs_missing_decoder) for c in MEDICAL_BAD_INPUTS]
    specs += [Spec(c.name, c.adapter, c.build, c.error, c.match, c.options, "source" if c.is_file else "url")
              for c in RASTER_VIDEO_BAD_INPUTS]
    specs += [Spec(c.name, c.adapter, c.build, c.error, c.match, c.options, c.names, c.confined)
              for c in RELIABILITY_BAD_INPUTS]
    return specs


CASES = _specs()


class Canary:
    """A TCP listener on 127.0.0.1 that records every connection made to it."""

    def __init__(self) -> None:
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.connections: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, address = self.server.accept()
            except (socket.timeout, OSError):
                continue
            self.connections.append(address)
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.server.close()


@pytest.fixture(scope="module")
def canary():
    listener = Canary()
    previous = os.environ.get("LONGLLAVA_CANARY_PORT")
    os.environ["LONGLLAVA_CANARY_PORT"] = str(listener.port)
    yield listener
    listener.close()
    if previous is None:
        os.environ.pop("LONGLLAVA_CANARY_PORT", None)
    else:
        os.environ["LONGLLAVA_CANARY_PORT"] = previous


def _job(spec: Spec, source: Any, directory: Path) -> dict[str, Any]:
    return {
        "kind": "adapter", "adapter": spec.adapter, "options": spec.options,
        "source": [str(s) for s in source] if isinstance(source, (list, tuple)) else str(source),
        "root": str(directory / "root") if spec.confined else None,
        "watch": [str(directory)],
    }


def test_corpus_covers_every_category():
    assert len(CASES) >= 80
    assert len({c.name for c in CASES}) == len(CASES)
    names = {c.name for c in CASES}
    for needed in (
        # untyped exceptions found by fuzzing
        "dicom-unknown-vr-in-file-meta", "dicom-palette-without-lut",
        # resource limits that did not hold before allocation
        "tiff-samples-per-pixel-100000", "tiff-100000x100000-sparse", "nifti-gz-2048x2048x300-zeros",
        "nifti-2048x2048x300-sampled-slices", "dicom-rle-30000", "dicom-deflated-16384",
        "dicom-deflated-1e6-frames", "tiff-image-length-count-changed", "png-13000-high-res-over-max-decoded-bytes",
        # access outside what was asked
        "dicom-folder-of-symlinks-out-of-root", "images-folder-symlink-out-of-root",
        "geotiff-sidecar-ovr-vrt-to-network",
    ):
        assert needed in names, needed
    readable = {c.name for c in READABLE_REGRESSIONS}
    assert {"video-mp4-metadata-not-utf8", "video-mov-metadata-not-utf8", "video-mkv-metadata-not-utf8",
            "video-webm-metadata-not-utf8", "nifti-nan-in-sform", "nifti-degenerate-affine-1e30",
            "geotiff-sidecar-ovr-vrt-ignored"} <= readable


@pytest.mark.timeout(120)
@pytest.mark.parametrize("spec", CASES, ids=lambda spec: spec.name)
def test_bad_input_in_isolation(spec: Spec, tmp_path, canary):
    source = spec.build(tmp_path)
    result = run_job(_job(spec, source, tmp_path), timeout_s=TIMEOUT_S, memory_mb=MEMORY_MB)
    assert not result.sockets, result.sockets
    assert not result.written, result.written
    if spec.readable_if_decoder and get_decoder(UID(spec.readable_if_decoder)).is_available:
        assert result.outcome == "ok" and result.n_images, result  # the decoder is installed here
        return
    assert result.outcome == "typed", result
    expected = f"{spec.error.__module__}.{spec.error.__qualname__}"
    assert result.error_type == expected, result  # "typed": it ended before the sandbox's timeout killed it
    assert result.problem is not None and spec.match in result.problem.lower(), result.problem
    named = result.error_path
    assert named is not None and named in result.message
    if spec.names == "url":
        assert named == str(source)
    else:
        first = Path(source[0] if isinstance(source, (list, tuple)) else source)
        where = Path(named)
        inside = spec.names == "inside" and (first in where.parents or tmp_path in where.parents)
        assert where == first or where.resolve() == first.resolve() or inside, f"error names {where}, source {first}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("spec", READABLE_REGRESSIONS, ids=lambda spec: spec.name)
def test_fuzz_finding_now_reads(spec, tmp_path, canary):
    source = spec.build(tmp_path)
    job = {"kind": "adapter", "adapter": spec.adapter, "options": spec.options, "source": str(source),
           "watch": [str(tmp_path)]}
    result = run_job(job, timeout_s=TIMEOUT_S, memory_mb=MEMORY_MB)
    assert result.outcome == "ok", result
    assert result.n_images and result.n_images >= 1
    assert not result.sockets and not result.written
    if spec.match:
        assert any(spec.match in w.lower() for w in result.warnings), result.warnings


def test_no_connection_reached_the_canary(canary):
    """Runs after the cases above: GDAL never followed the ``.ovr`` VRT to /vsicurl/ (C-level sockets)."""
    assert canary.connections == []
