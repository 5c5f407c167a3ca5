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
    "int8": ("bench_int8.py", []),
    # `data import` rows/s and memory, JSONL streamed vs a JSON document, 10k / 100k rows; deidentify
    "data-import": ("bench_data_import.py", []),
    # the planner's predicted peak vs the measured one (VmHWM), 6 prefills in fresh processes
    "planner": ("bench_planner.py", []),
    "learnability": ("learnability.py", []),
    # ~2 minutes: 20 SIGKILLs of a real finetune run, each followed by --resume
    "fault-injection": ("fault_injection.py", ["--kills", "20"]),
    "niah-learning": ("bench_niah_learning.py", []),
    # 200 requests x 3 runs against `longllava-sdk serve` on loopback: ~1-2 minutes
    "serve": ("bench_serve.py", []),
    # hybrid vs a same-size Llama, 1..1000 images, 32K / 128K text, 1000 / 10,000-image streams:
    # tens of minutes on 2 cores (every case in its own process); `efficiency-quick` is the smoke
    "efficiency": ("bench_efficiency.py", ["--out", "bench-efficiency"]),
    "efficiency-quick": ("bench_efficiency.py", ["--quick", "--out", "bench-efficiency-quick"]),
    # fresh interpreters: --help / plan / plugins / data formats vs `import torch, transformers`
    "startup": ("bench_startup.py", []),
}
#: Suites run only when named: they train a model for minutes, or stress the machine on purpose.
_ON_REQUEST = {"efficiency", "learnability", "niah-learning", "fault-injection"}


def benchmarks_dir() -> Path:
    """The repository's ``benchmarks/`` folder (benchmarks run from a source checkout)."""
    candidate = Path(__file__).resolve().parents[2] / "benchmarks"
    if not candidate.is_dir():
        raise ConfigError(f"{candidate}: benchmarks/ not found; run `longllava-sdk bench` from a source checkout")
    return candidate


def bench(suite: list[str] | None = None) -> int:
    """Run benchmark suites and print their figures.

    Args:
        suite: suites to run (scan, adapters-medical, adapters-raster-video, int8, data-import, planner, serve, startup,
            efficiency-quick, efficiency, learnability, niah-learning, fault-injection); default: all
            but efficiency (tens of minutes), the two that train a model (up to 10 minutes each) and
            fault-injection (about 2 minutes of repeated SIGKILLs).
    """
    names = suite or [name for name in SUITES if name not in _ON_REQUEST]
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
