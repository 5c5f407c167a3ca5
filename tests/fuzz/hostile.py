"""The ``hostile`` fuzz target: inputs that are costly or special rather than corrupt (issue 15).

Byte mutation (the other targets) does not make these; each case here is built whole, from a
random choice of:

``special``
    a FIFO, a UNIX socket, or a symlink to ``/dev/zero`` / ``/dev/urandom``, given as the source
    of a random adapter (named ``.dcm``, ``.nii``, ``.nii.gz``, ``.tif``, ``.png``, ``.mp4``), or
    hidden in a DICOM series folder / an image folder among real files. Expected: a typed error
    within the time limit (a blocking ``open()`` is a ``hang``).
``aspect``
    an image of an extreme aspect ratio (20000 x 1..64, 65535 x 1..48, 1..8 x 60000...) in
    PNG, GIF, BMP or JPEG, read by the images adapter (plain, deferred, or ``high_res`` in
    either split mode), then every image becomes its 336 px view as the processor does
    (:func:`longllava_sdk.highres.square_view`). Expected: ok (or typed) within the address-space
    limit: the view never needs the square canvas.
``boxes``
    an MP4 / MOV whose ``trak`` box is repeated 2..3000 times, or whose top level repeats a
    ``free`` box thousands of times. Expected: typed (refused from the box headers) or ok, never a
    ``hang`` inside FFmpeg.
``many``
    a list of 2..8 large images (1000..2500 px a side, PNG / JPEG: sized so that decoding all of
    them fits the 10 s wall clock of a case on a loaded 2-core machine), read deferred and decoded one
    at a time into views as the Pipeline does. Expected: ok, with the memory of one image, not all.

Run: ``python -m tests.fuzz hostile --iterations 300 --seed 1 --out fuzz-out/hostile``.
"""

from __future__ import annotations

import os
import random
import socket
import struct
from pathlib import Path
from typing import Any

import numpy as np

CATEGORIES = ("special", "aspect", "boxes", "many")
_SPECIAL_NAMES = {"dicom": "slice.dcm", "nifti": "brain.nii", "nifti_gz": "brain.nii.gz", "geotiff": "scene.tif",
                  "images": "photo.png", "video": "clip.mp4"}
_DEVICES = ("/dev/zero", "/dev/urandom", "/dev/null")


def _special(path: Path, kind: str, keep: list[Any]) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))  # the case directory is short-lived; the socket object is kept open
        keep.append(server)
    else:
        path.symlink_to(kind)


def build_special(rng: random.Random, case_dir: Path, work: Path, keep: list[Any]) -> tuple[dict[str, Any], list[str]]:
    kind = rng.choice(("fifo", "socket", *_DEVICES))
    where = rng.choice(("source", "source", "dicom_folder", "image_folder"))
    if where == "dicom_folder":
        from bad_inputs.medical import write_ct_series

        folder = case_dir / "series"
        write_ct_series(folder, 3, shuffle=False)
        _special(folder / rng.choice(("IM9999", "zz.dcm", "a.dcm")), kind, keep)
        return {"adapter": "dicom", "source": str(folder), "options": {}}, [f"{kind} in a DICOM series folder"]
    if where == "image_folder":
        from PIL import Image

        folder = case_dir / "images"
        folder.mkdir()
        Image.new("RGB", (16, 16), (1, 2, 3)).save(folder / "a.png")
        _special(folder / "b.png", kind, keep)
        return {"adapter": "images", "source": str(folder), "options": {}}, [f"{kind} in an image folder"]
    target = rng.choice(tuple(_SPECIAL_NAMES))
    path = case_dir / _SPECIAL_NAMES[target]
    _special(path, kind, keep)
    adapter = "nifti" if target == "nifti_gz" else target
    return {"adapter": adapter, "source": str(path), "options": {}}, [f"{kind} given as a {adapter} source"]


def _extreme_size(rng: random.Random) -> tuple[int, int]:
    long = rng.choice((20000, 40000, 65535, 60000, 30001))
    short = rng.randint(1, 64)
    return (long, short) if rng.random() < 0.5 else (short, long)


def build_aspect(rng: random.Random, case_dir: Path, work: Path, keep: list[Any]) -> tuple[dict[str, Any], list[str]]:
    from PIL import Image

    size = _extreme_size(rng)
    fmt = rng.choice(("PNG", "GIF", "BMP", "JPEG"))
    if fmt == "JPEG":
        size = (min(size[0], 65500), min(size[1], 65500))
    pixels = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    path = case_dir / f"extreme.{ {'PNG': 'png', 'GIF': 'gif', 'BMP': 'bmp', 'JPEG': 'jpg'}[fmt] }"
    (image.convert("P") if fmt == "GIF" else image).save(path, format=fmt)
    mode = rng.choice(("plain", "deferred", "high_res_pad", "high_res_grid"))
    options: dict[str, Any] = {"max_compression_ratio": None}
    if mode == "deferred":
        options["defer_decoding"] = True
    elif mode.startswith("high_res"):
        options.update(high_res=True, split_mode=mode.rsplit("_", 1)[1], max_tiles=rng.choice((4, 16, 64)))
    return ({"call": f"{__package__}.hostile:load_and_view", "args": [str(path), options], "source": str(path)},
            [f"{fmt} {size[0]} x {size[1]}", mode])


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    found, offset = [], start
    while offset + 8 <= end:
        size, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if size < 8:
            break
        found.append((kind, offset, offset + size))
        offset += size
    return found


def build_boxes(rng: random.Random, case_dir: Path, work: Path, keep: list[Any]) -> tuple[dict[str, Any], list[str]]:
    seed = _video_seed(work)
    data = seed.read_bytes()
    moov = next((s, e) for kind, s, e in _boxes(data, 0, len(data)) if kind == b"moov")
    if rng.random() < 0.7:
        trak = next((s, e) for kind, s, e in _boxes(data, moov[0] + 8, moov[1]) if kind == b"trak")
        copies = rng.choice((2, 8, 65, 200, 1000, 3000))
        body = data[moov[0] + 8:moov[1]] + data[trak[0]:trak[1]] * copies
        data = data[:moov[0]] + struct.pack(">I4s", 8 + len(body), b"moov") + body + data[moov[1]:]
        step = f"trak box repeated {copies} more times"
    else:
        copies = rng.choice((100, 5000, 20000))
        data = data[:moov[0]] + struct.pack(">I4s", 8, b"free") * copies + data[moov[0]:]
        step = f"{copies} empty free boxes before moov"
    path = case_dir / rng.choice(("clip.mp4", "clip.mov"))
    path.write_bytes(data)
    return {"adapter": "video", "source": str(path), "options": {"max_side": 32}}, [step]


def _video_seed(work: Path) -> Path:
    path = work / "hostile-seed.mp4"
    if not path.exists():
        import av

        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=8)
            stream.width = stream.height = 32
            stream.pix_fmt = "yuv420p"
            for i in range(4):
                frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    return path


def _large_images(work: Path) -> list[Path]:
    from PIL import Image

    folder = work / "hostile-large"
    if not folder.exists():
        folder.mkdir()
        rng = np.random.default_rng(11)
        for k, side in enumerate((1000, 1500, 2000, 2500)):
            base = np.linspace(0, 255, side, dtype=np.uint8)
            pixels = np.stack([np.broadcast_to(base, (side, side)), np.broadcast_to(base[:, None], (side, side)),
                               rng.integers(0, 255, (side, side), dtype=np.uint8)], axis=-1)
            Image.fromarray(pixels).save(folder / f"large{k}.png", compress_level=1)
            Image.fromarray(pixels).save(folder / f"large{k}.jpg", quality=80)
    return sorted(folder.iterdir())


def build_many(rng: random.Random, case_dir: Path, work: Path, keep: list[Any]) -> tuple[dict[str, Any], list[str]]:
    files = _large_images(work)
    chosen = [str(rng.choice(files)) for _ in range(rng.randint(2, 8))]
    options = {"defer_decoding": True, "max_decoded_bytes": 320 << 20}
    return ({"call": f"{__package__}.hostile:load_and_view", "args": [chosen, options], "source": chosen[0]},
            [f"{len(chosen)} large images, deferred"])


BUILDERS = {"special": build_special, "aspect": build_aspect, "boxes": build_boxes, "many": build_many}


def build_case(rng: random.Random, case_dir: Path, work: Path, keep: list[Any]) -> tuple[dict[str, Any], list[str]]:
    """A job for :func:`fuzz.sandbox.run_job` and the steps that describe it (category first)."""
    category = rng.choice(CATEGORIES)
    job, steps = BUILDERS[category](rng, case_dir, work, keep)
    if "call" in job:
        job = {"kind": "call", **job}
    else:
        job = {"kind": "adapter", "max_images": 4, **job}
    job["watch"] = [str(case_dir)]
    return job, [category, *steps]


def load_and_view(source: Any, options: dict[str, Any]) -> int:
    """In the worker: the images adapter reads ``source``, then every image (decoded one at a
    time when deferred) becomes its 336 px view, as the processor makes it. Returns the count."""
    from longllava_plugins.images import ImagesAdapter

    from longllava_sdk.adapters import reading
    from longllava_sdk.highres import CLIP_MEAN_RGB, square_view
    from longllava_sdk.media import load_image

    adapter = ImagesAdapter(**options)
    media = adapter.load(source, max_images=None if not options.get("high_res") else 65)
    views = 0
    with reading(adapter, source):
        for item in media.images:
            view = square_view(load_image(item).convert("RGB"), 336, CLIP_MEAN_RGB)
            assert view.size == (336, 336)
            views += 1
    return views
