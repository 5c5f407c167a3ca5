"""Benchmark: GeoTIFF 10000 x 10000 tiling and 1000-frame video sampling (wall time, peak RSS).

Each measurement runs in a fresh subprocess so its peak RSS (``VmHWM`` from
``/proc/self/status``; ``resource.getrusage`` ``ru_maxrss`` where there is no ``/proc``, but
on Linux that one keeps the parent's peak across ``fork`` + ``exec``) is the adapter's own, not
the benchmark's or a previous case's. The subprocess
imports the SDK's light submodules (errors, media, adapters, hookspecs) without running
``longllava_sdk/__init__`` (which loads torch for the model classes), so the figure is what
the adapter costs, plus Python, numpy, Pillow and rasterio/PyAV. ``baseline_rss_mb`` is the
peak after those imports; ``adapter_rss_mb`` the increase caused by the load itself.

Inputs are generated once into ``$TMPDIR/longllava_bench`` and reused:

* ``scene_10k.tif``: 10000 x 10000, 3-band uint8, 512 x 512 tiles, deflate, overviews
  2/4/8/16 (like a delivered scene or a COG), UTM georeferencing, written strip by strip.
* ``long_video.mp4``: 9000 frames (5 min at 30 fps), 640 x 360 H.264, a keyframe every
  2 s, with moving content.

Run ``python benchmarks/bench_adapters_raster_video.py`` (add ``--quick`` for smaller
inputs); ``run()`` returns the rows as dicts for the SDK's benchmark command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RSS_TARGET_MB = 500

_WORKER = r"""
import importlib.util, json, resource, sys, time, types

def peak_rss_mb():
    # VmHWM is this exec'd image's own high-water mark; ru_maxrss on Linux keeps the parent's
    # peak across fork+exec, which would charge the benchmark's memory to the adapter.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

spec = importlib.util.find_spec("longllava_sdk")
package = types.ModuleType("longllava_sdk")  # the package without its heavy __init__ (torch)
package.__path__ = list(spec.submodule_search_locations)
sys.modules["longllava_sdk"] = package
params = json.loads(sys.argv[1])
if params["adapter"] == "geotiff":
    from longllava_plugins.geotiff import GeoTiffAdapter as Adapter
else:
    from longllava_plugins.video import VideoAdapter as Adapter
adapter = Adapter(**params["options"])
baseline = peak_rss_mb()
start = time.perf_counter()
media = adapter.load(params["source"], max_images=params["max_images"])
wall = time.perf_counter() - start
peak = peak_rss_mb()
print(json.dumps({
    "wall_s": round(wall, 3), "peak_rss_mb": round(peak, 1), "baseline_rss_mb": round(baseline, 1),
    "adapter_rss_mb": round(peak - baseline, 1), "images": len(media.images),
    "grid": media.grid, "image_size": list(media.images[-1].size),
    "seeks": media.info.get("seeks"), "effective_tile_size": media.info.get("effective_tile_size"),
}))
"""


def _cache_dir() -> Path:
    path = Path(tempfile.gettempdir()) / "longllava_bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_scene(path: Path, size: int = 10_000) -> Path:
    """A ``size x size`` 3-band uint8 GeoTIFF with overviews, written in 512-row strips."""
    import numpy as np
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    if path.exists():
        return path
    partial = path.with_suffix(".partial.tif")
    rng = np.random.default_rng(0)
    with rasterio.open(
        partial, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633",
        transform=from_origin(300000, 5100000, 10, 10), nodata=0, tiled=True, blockxsize=512, blockysize=512,
        compress="deflate", BIGTIFF="IF_SAFER",
    ) as dst:
        x = np.arange(size, dtype=np.float32)[None, :]
        for row in range(0, size, 512):
            rows = min(512, size - row)
            y = np.arange(row, row + rows, dtype=np.float32)[:, None]
            base = 120 + 60 * np.sin(x / 700.0) * np.cos(y / 500.0)
            strip = np.stack([base + 20 * k for k in range(3)]) + rng.integers(0, 12, (3, rows, size))
            strip = np.clip(strip, 1, 255).astype(np.uint8)
            strip[:, :, : max(0, 800 - row // 10)] = 0  # a nodata wedge along the left edge
            dst.write(strip, window=Window(0, row, size, rows))
    with rasterio.open(partial, "r+") as dst:
        dst.build_overviews([2, 4, 8, 16], Resampling.average)
    os.replace(partial, path)
    return path


def make_video(path: Path, frames: int = 9000, width: int = 640, height: int = 360, fps: int = 30) -> Path:
    """An H.264 MP4 with moving content; keyframe every 2 s."""
    import av
    import numpy as np

    if path.exists():
        return path
    partial = path.with_suffix(".partial.mp4")
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = 2 * fps
        stream.options = {"preset": "ultrafast", "crf": "28"}
        for index in range(frames):
            shift = (index * 4) % width
            array = np.empty((height, width, 3), np.uint8)
            array[..., 0] = (xx + shift) % 256
            array[..., 1] = (yy + index) % 256
            array[..., 2] = index % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(partial, path)
    return path


def _measure(name: str, adapter: str, source: Path, options: dict[str, Any], max_images: int | None) -> dict[str, Any]:
    params = {"adapter": adapter, "source": str(source), "options": options, "max_images": max_images}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _WORKER, json.dumps(params)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark {name} failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row.update({"name": name, "options": options, "max_images": max_images,
                "process_s": round(time.perf_counter() - started, 2)})
    if adapter == "geotiff":
        row["rss_target_mb"] = RSS_TARGET_MB
        row["meets_target"] = row["peak_rss_mb"] < RSS_TARGET_MB
    return row


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Generate (once) the inputs and measure each case in its own subprocess."""
    cache = _cache_dir()
    scene_size = 3000 if quick else 10_000
    scene = make_scene(cache / f"scene_{scene_size}.tif", scene_size)
    video_frames = 1500 if quick else 9000
    video = make_video(cache / f"long_video_{video_frames}.mp4", video_frames)
    size = f"{scene_size}x{scene_size}"
    return [
        _measure(f"geotiff {size} tile 1024 -> 336", "geotiff", scene, {"tile_size": 1024}, None),
        _measure(f"geotiff {size} tile 336 (native)", "geotiff", scene, {"tile_size": 336}, None),
        _measure(f"geotiff {size} tile 336, max_images 257 (coarsen)", "geotiff", scene, {"tile_size": 336}, 257),
        _measure(f"video {video_frames} frames -> 1000 uniform", "video", video, {"num_frames": 1000}, None),
        _measure(f"video {video_frames} frames -> 1000 uniform, max_side 672", "video", video,
                 {"num_frames": 1000, "max_side": 672}, None),
        _measure(f"video {video_frames} frames -> 32 uniform (seeking)", "video", video, {"num_frames": 32}, None),
    ]


def main(argv: list[str] | None = None) -> int:
    """Print the benchmark table (and the rows as JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3000 x 3000 scene and a 1500-frame video")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    rows = run(quick=args.quick)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'case':58} {'wall s':>8} {'peak RSS MB':>12} {'adapter MB':>11} {'images':>7}")
    for row in rows:
        print(f"{row['name']:58} {row['wall_s']:8.2f} {row['peak_rss_mb']:12.1f} {row['adapter_rss_mb']:11.1f} "
              f"{row['images']:7d}")
    failing = [row["name"] for row in rows if row.get("meets_target") is False]
    if failing:
        print(f"peak RSS over {RSS_TARGET_MB} MB: {', '.join(failing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
