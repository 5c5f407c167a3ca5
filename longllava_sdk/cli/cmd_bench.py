"""``longllava-sdk bench``: run the benchmark scripts in ``benchmarks/`` and print their figures.

Benchmarks print ratios measured side by side in one run (e.g. the SDK's selective scan vs.
transformers' Python-loop fallback); speed targets live here, never in tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..errors import ConfigError

#: suite name -> (script under benchmarks/, its arguments)
SUITES: dict[str, tuple[str, list[str]]] = {
    # the Python-loop reference at every length: ~20 s, and the 1024-token ratio is the point
    "scan": ("bench_scan.py", ["--full"]),
    "adapters-medical": ("bench_adapters_medical.py", []),
    "adapters-raster-video": ("bench_adapters_raster_video.py", []),
    "learnability": ("learnability.py", []),
    # hybrid vs a same-size Llama, 1..1000 images, 32K / 128K text, 1000 / 10,000-image streams:
    # tens of minutes on 2 cores (every case in its own process); `efficiency-quick` is the smoke
    "efficiency": ("bench_efficiency.py", ["--out", "bench-efficiency"]),
    "efficiency-quick": ("bench_efficiency.py", ["--quick", "--out", "bench-efficiency-quick"]),
}


def benchmarks_dir() -> Path:
    """The repository's ``benchmarks/`` folder (benchmarks run from a source checkout)."""
    candidate = Path(__file__).resolve().parents[2] / "benchmarks"
    if not candidate.is_dir():
        raise ConfigError(f"{candidate}: benchmarks/ not found; run `longllava-sdk bench` from a source checkout")
    return candidate


def bench(suite: list[str] | None = None) -> int:
    """Run benchmark suites and print their figures.

    Args:
        suite: suites to run (scan, adapters-medical, adapters-raster-video, learnability,
            efficiency, efficiency-quick); default: all but learnability and efficiency
            (each takes 10 minutes or more).
    """
    names = suite or [name for name in SUITES if name not in ("learnability", "efficiency")]
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise ConfigError(f"unknown benchmark suite(s) {unknown}; available: {', '.join(SUITES)}")
    folder = benchmarks_dir()
    status = 0
    for name in names:
        script, args = SUITES[name]
        print(f"== {name} ({script}) ==", flush=True)
        status |= subprocess.call([sys.executable, str(folder / script), *args])
    return status
