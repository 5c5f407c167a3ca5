"""CLI start-up: wall time of light commands next to ``python -c "import torch, transformers"``.

::

    python benchmarks/bench_startup.py            # or: longllava-sdk bench --suite startup
    python benchmarks/bench_startup.py --rounds 7

Every measurement is a fresh interpreter (``python -m longllava_sdk ...``), the cases
interleaved round by round so that a busy machine slows them alike; the median of the rounds
is printed with its ratio to the torch + transformers import. Targets (issue 16): ``--help``
well under half of it, ``plan`` under three quarters. The last column says which of torch /
transformers / numba the command imported (none is the point).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

PROBE = ("import runpy, sys\n"
         "sys.argv = ['longllava-sdk', *sys.argv[1:]]\n"
         "try:\n"
         "    runpy.run_module('longllava_sdk', run_name='__main__')\n"
         "except SystemExit:\n"
         "    pass\n"
         "print('HEAVY=' + ','.join(m for m in ('torch', 'transformers', 'numba') if m in sys.modules), file=sys.stderr)\n")

#: case name -> (command line after ``longllava-sdk``, target ratio to the reference or None)
CASES: dict[str, tuple[list[str], float | None]] = {
    "longllava-sdk --help": (["--help"], 0.5),
    "longllava-sdk plan --preset 9b --images 1000 --gpu-memory 80GB --quantize int8":
        (["plan", "--preset", "9b", "--images", "1000", "--gpu-memory", "80GB", "--quantize", "int8"], 0.75),
    "longllava-sdk plugins": (["plugins"], None),
    "longllava-sdk data formats": (["data", "formats"], None),
    "longllava-sdk finetune --help": (["finetune", "--help"], None),
}
REFERENCE = 'python -c "import torch, transformers"'


def _run(argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    heavy = next((line.split("=", 1)[1] for line in done.stderr.splitlines() if line.startswith("HEAVY=")), "")
    return elapsed, heavy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="fresh interpreters per case (median printed)")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in [REFERENCE, *CASES]}
    heavy: dict[str, str] = {}
    for _ in range(args.rounds):
        times[REFERENCE].append(_run([sys.executable, "-c", "import torch, transformers"])[0])
        for name, (argv, _target) in CASES.items():
            elapsed, heavy[name] = _run([sys.executable, "-c", PROBE, *argv])
            times[name].append(elapsed)
    reference = statistics.median(times[REFERENCE])
    width = max(len(name) for name in times)
    print(f"{'command':<{width}}  median s  vs import  target  imports")
    print(f"{REFERENCE:<{width}}  {reference:8.2f}  {1.0:8.2f}x")
    status = 0
    for name, (_argv, target) in CASES.items():
        median = statistics.median(times[name])
        ratio = median / reference
        verdict = "" if target is None else (f"<{target:.2f}x " + ("ok" if ratio < target else "MISSED"))
        print(f"{name:<{width}}  {median:8.2f}  {ratio:8.2f}x  {verdict:<9} {heavy[name] or 'none of torch/transformers/numba'}")
        if target is not None and ratio >= target:
            status = 1
    print(f"\n{args.rounds} rounds, interleaved; each a fresh `{sys.executable}`")
    return status


if __name__ == "__main__":
    sys.exit(main())
