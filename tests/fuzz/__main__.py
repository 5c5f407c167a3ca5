"""``python -m tests.fuzz TARGET --iterations N --seed S --out DIR`` (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .campaign import run_campaign
from .targets import TARGET_NAMES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("target", choices=[*TARGET_NAMES, "all"], help="adapter to fuzz, or 'manifest' / 'all'")
    parser.add_argument("--iterations", type=int, default=300, help="cases to run (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="campaign seed; a case is reproducible from it")
    parser.add_argument("--out", default="fuzz-out", help="output folder (summary.json, repro/); per target with 'all'")
    parser.add_argument("--timeout", type=float, default=10.0, help="wall-clock limit per case, seconds")
    parser.add_argument("--memory-mb", type=int, default=2048, help="address-space growth allowed per case")
    parser.add_argument("--case", type=int, action="append", help="replay only this case (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    args = parser.parse_args(argv)
    targets = TARGET_NAMES if args.target == "all" else (args.target,)
    failed = False
    for name in targets:
        out = Path(args.out) / name if args.target == "all" else Path(args.out)
        summary = run_campaign(
            name, iterations=args.iterations, seed=args.seed, out=out, timeout_s=args.timeout,
            memory_mb=args.memory_mb, cases=args.case, progress=None if args.quiet else print,
        )
        keys = ("target", "seed", "iterations", "outcomes", "findings", "typed_not_naming_the_file",
                "translated_by_guard", "categories", "slowest_case", "largest_rss_growth", "elapsed_s")
        shown = {k: summary[k] for k in keys}
        print(json.dumps(shown))
        failed |= bool(summary["findings"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
