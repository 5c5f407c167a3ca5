"""Peak memory of one extreme image through ``Pipeline``, next to the same call with a small image.

Issue 15's bound: the peak RSS of any single input through ``Pipeline`` / ``infer`` stays within
~400 MB of the same call with a small image. Each case runs in a fresh process (so peaks do not
mix): the file is written first, then the tiny model is built, then
``pipe(prompt, images=[file], max_new_tokens=1)`` runs; the row reports the peak RSS
(``VmHWM``) above the process's RSS once the model is built, next to the small image's:

* ``small``: a 64 x 48 PNG (the reference);
* ``strip``: the issue's 1.3 KB PNG of 20000 x 20 px (was 5.97 GB: padded to 20000 x 20000);
* ``needle``: a 1 x 60000 PNG;
* ``wide_gif`` / ``wide_gif_highres``: a 65535 x 48 GIF, plain and ``high_res=True`` (was a
  ~17 GB canvas);
* ``photo36``: a 6000 x 6000 PNG (36 MP, decoded whole: within the Pipeline's decode budget);
* ``jpeg100``: a 10000 x 10000 JPEG (100 MP: over the budget at full size, decoded at a DCT
  scale);
* ``png100``: a 10000 x 10000 PNG (over the budget and not reducible: refused, typed, naming it).

    python benchmarks/bench_extreme_inputs.py            # every case
    python benchmarks/bench_extreme_inputs.py --cases small strip

Figures depend on the machine; the ratio that matters is each row's growth against ``small``,
measured side by side in one run.
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

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    import longllava_sdk  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_efficiency import _status_bytes  # noqa: E402  (VmRSS / VmHWM of this process)

#: name -> (file name, writer arguments, Pipeline media options)
CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "small": ("small.png", {"size": (64, 48)}, {}),
    "strip": ("strip.png", {"size": (20000, 20), "solid": True}, {}),
    "needle": ("needle.png", {"size": (1, 60000), "solid": True}, {}),
    "wide_gif": ("wide.gif", {"size": (65535, 48)}, {}),
    "wide_gif_highres": ("wide.gif", {"size": (65535, 48)}, {"high_res": True}),
    "photo36": ("photo36.png", {"size": (6000, 6000)}, {}),
    "jpeg100": ("jpeg100.jpg", {"size": (10000, 10000)}, {}),
    "png100": ("png100.png", {"size": (10000, 10000)}, {}),
}
#: The bound of issue 15 ("within ~400 MB of the same call with a small image").
BOUND_MB = 400


def write_input(path: Path, size: tuple[int, int], solid: bool = False) -> None:
    """A real-looking image of ``size``: a smooth gradient with a little noise (compressible, but not
    the near-constant data the adapters refuse as a decompression bomb), or a solid colour."""
    import numpy as np
    from PIL import Image

    width, height = size
    if solid:
        Image.new("RGB", size, (200, 40, 40)).save(path)
        return
    rng = np.random.default_rng(0)
    rows = []
    for top in range(0, height, 1024):  # built in bands: the writer's own memory stays small
        h = min(1024, height - top)
        y = (np.arange(top, top + h) * 255 // max(1, height - 1)).astype(np.uint8)[:, None]
        x = (np.arange(width) * 255 // max(1, width - 1)).astype(np.uint8)[None, :]
        band = np.stack([np.broadcast_to(x, (h, width)), np.broadcast_to(y, (h, width)),
                         np.broadcast_to((x // 2 + y // 2), (h, width))], axis=-1)
        rows.append((band + rng.integers(0, 24, band.shape, dtype=np.uint8)).astype(np.uint8))
    image = Image.fromarray(np.concatenate(rows))
    if path.suffix == ".gif":
        image.convert("L").convert("P").save(path)
    elif path.suffix == ".jpg":
        image.save(path, quality=85)
    else:
        image.save(path, compress_level=1)


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """One case in this (fresh) process: build the tiny model, run the Pipeline, report the peak."""
    import torch

    from longllava_sdk import Pipeline
    from longllava_sdk.errors import LongLLaVAError
    from longllava_sdk.model_folders import create_model

    torch.set_num_threads(2)
    model, processor = create_model("tiny")
    pipe = Pipeline(model, processor)
    baseline = _status_bytes("VmRSS")
    start = time.perf_counter()
    result: dict[str, Any] = dict(case)
    try:
        pipe("Describe the image.", images=[case["path"]], max_new_tokens=1, **case["options"])
        result["outcome"] = "ok"
    except LongLLaVAError as exc:
        result["outcome"] = f"{type(exc).__name__}: {str(exc)[:160]}"
    result.update(seconds=time.perf_counter() - start, baseline_rss=baseline, peak_rss=_status_bytes("VmHWM"))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=tuple(CASES), default=list(CASES), help="cases to run")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per case")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return 0
    names = ["small", *[n for n in args.cases if n != "small"]]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            file_name, writer, options = CASES[name]
            path = Path(folder) / file_name
            if not path.exists():
                write_input(path, **writer)
            case = {"name": name, "path": str(path), "options": options, "file_bytes": path.stat().st_size}
            done = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], capture_output=True,
                                  text=True, timeout=args.timeout)
            if done.returncode != 0:
                rows.append(dict(case, outcome=f"crashed: {done.stderr.strip().splitlines()[-1:]}"))
            else:
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  {name:18} {rows[-1].get('seconds', 0):6.1f} s", flush=True)
    small = next(r for r in rows if r["name"] == "small")
    reference = small["peak_rss"] - small["baseline_rss"]
    print(f"\n{'case':18} {'file':>10} {'peak - model':>13} {'vs small':>10}  outcome")
    worst = 0.0
    for r in rows:
        if "peak_rss" not in r:
            print(f"{r['name']:18} {r['file_bytes'] / 2**20:9.1f}M {'-':>13} {'-':>10}  {r['outcome']}")
            worst = float("inf")
            continue
        grown = r["peak_rss"] - r["baseline_rss"]
        worst = max(worst, (grown - reference) / 2**20)
        print(f"{r['name']:18} {r['file_bytes'] / 2**20:9.1f}M {grown / 2**20:11.0f}MB {(grown - reference) / 2**20:+8.0f}MB"
              f"  {r['outcome']}")
    print(f"\nlargest growth over the small image: {worst:+.0f} MB (bound: ~{BOUND_MB} MB)")
    return 0 if worst <= BOUND_MB * 1.1 else 1


if __name__ == "__main__":
    sys.exit(main())
