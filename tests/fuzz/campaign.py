"""A fuzz campaign: mutate seeds, run each case in the sandbox, classify, save reproducers."""

from __future__ import annotations

import json
import platform
import random
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from .mutate import mutate, mutate_manifest
from .sandbox import ACCEPTABLE, OUTCOMES, run_job
from .targets import Seed, Target, build_target, ensure_tests_on_path


def _case(target: Target, seed: int, index: int) -> tuple[Any, bytes, list[str]]:
    """The seed file and mutated bytes of case ``index`` (deterministic in ``seed``)."""
    rng = random.Random(f"{target.name}:{seed}:{index}")
    chosen = rng.choice(target.seeds)
    if target.name == "manifest":
        data, steps = mutate_manifest(chosen.data.decode("utf-8"), Path(chosen.name).suffix, rng)
    else:
        others = [s.data for s in target.seeds if s.fmt == chosen.fmt and s is not chosen]
        data, steps = mutate(chosen.data, chosen.fmt, rng, others)
    return chosen, data, steps


def run_campaign(
    target_name: str,
    *,
    iterations: int,
    seed: int = 0,
    out: str | Path,
    timeout_s: float = 10.0,
    memory_mb: int = 2048,
    cases: list[int] | None = None,
    progress: Callable[[str], None] | None = print,
    keep_typed_examples: int = 0,
) -> dict[str, Any]:
    """Run ``iterations`` cases (or just ``cases``) against ``target_name``; returns the summary.

    Writes ``OUT/summary.json`` (``summary-replay.json`` when replaying ``cases``) and, for every case that is not ``ok``/``typed``,
    ``OUT/repro/<target>-s<seed>-<case>-<outcome><ext>`` plus a ``.json`` describing it.
    """
    ensure_tests_on_path()
    out = Path(out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    repro = out / "repro"
    if cases is None:
        shutil.rmtree(repro, ignore_errors=True)  # a new campaign: reproducers of this run only
    target = build_target(target_name, work)
    extra = target.setup(work) if target.setup else {}
    counts: Counter[str] = Counter({name: 0 for name in OUTCOMES})
    errors: Counter[str] = Counter()
    unnamed = 0
    findings: list[dict[str, Any]] = []
    typed_examples: list[dict[str, Any]] = []
    translated: Counter[str] = Counter()
    by_category: dict[str, Counter[str]] = {}  # built targets: outcomes per category (steps[0])
    slowest = {"wall_s": 0.0}
    biggest = {"rss_growth_mb": 0.0}
    started = time.monotonic()
    indices = list(cases) if cases is not None else list(range(iterations))
    for done, index in enumerate(indices, start=1):
        case_dir = work / "case"
        shutil.rmtree(case_dir, ignore_errors=True)
        case_dir.mkdir()
        alive: list[Any] = []  # objects a built case needs alive while it runs (a bound socket)
        if target.build is not None:  # built whole (special files, costly inputs), not mutated
            job, steps = target.build(random.Random(f"{target.name}:{seed}:{index}"), case_dir, work, alive)
            chosen, data = Seed(steps[0], b"", "built"), None
            path = Path(job["source"])
        else:
            chosen, data, steps = _case(target, seed, index)
            path = case_dir / chosen.name
            path.write_bytes(data)
        if target.build is not None:
            pass  # the builder made the job
        elif target.name == "manifest":
            job = {"kind": "manifest", "manifest": str(path), **extra}
            job["watch"] = [*extra.get("watch", []), str(case_dir)]
        else:
            job = {"kind": "adapter", "adapter": target.name, "options": {**target.options, **chosen.options},
                   "source": str(path), "max_images": target.max_images, "watch": [str(case_dir)]}
        try:
            result = run_job(job, timeout_s=timeout_s, memory_mb=memory_mb)
        finally:
            for item in alive:
                item.close()
        counts[result.outcome] += 1
        if target.build is not None:
            by_category.setdefault(steps[0], Counter())[result.outcome] += 1
        if result.error_type:
            errors[result.error_type.rsplit(".", 1)[-1]] += 1
        if result.outcome == "typed" and target.name != "manifest":
            inputs = [Path(a) for a in (job.get("args") or [[]])[0]] if isinstance((job.get("args") or [None])[0], list) else []
            named = result.error_path is not None and (
                Path(result.error_path) in (path, *inputs) or case_dir in Path(result.error_path).parents
            )
            unnamed += not named
        if result.wall_s > slowest["wall_s"]:
            slowest = {"wall_s": result.wall_s, "case": index, "outcome": result.outcome}
        if (result.rss_growth_mb or 0) > biggest["rss_growth_mb"]:
            biggest = {"rss_growth_mb": result.rss_growth_mb, "case": index, "outcome": result.outcome}
        record = {"case": index, "seed_file": chosen.name, "steps": steps, **result.as_dict()}
        if result.outcome not in ACCEPTABLE:
            repro.mkdir(parents=True, exist_ok=True)
            stem = f"{target.name}-s{seed}-{index:06d}-{result.outcome}"
            suffix = "".join(Path(chosen.name).suffixes)
            if data is not None:  # a built case is described by its steps (a FIFO cannot be saved)
                (repro / f"{stem}{suffix}").write_bytes(data)
            (repro / f"{stem}.json").write_text(json.dumps(record, indent=1, default=str))
            findings.append({k: record[k] for k in ("case", "seed_file", "outcome", "error_type", "message", "steps")})
            if progress:
                progress(f"[{target.name}] case {index}: {result.outcome} {result.error_type or ''} "
                         f"{(result.message or '')[:160]}")
        else:
            if result.outcome == "typed" and result.translated_from:
                # typed, but only thanks to the guard's catch-all: worth a look (a readable file
                # rejected because a library raised?), so the first few of each kind are kept
                translated[result.translated_from] += 1
                if translated[result.translated_from] <= 3:
                    keep = repro / "translated"
                    keep.mkdir(parents=True, exist_ok=True)
                    stem = f"{target.name}-s{seed}-{index:06d}-{result.translated_from.rsplit('.', 1)[-1]}"
                    if data is not None:
                        (keep / f"{stem}{''.join(Path(chosen.name).suffixes)}").write_bytes(data)
                    (keep / f"{stem}.json").write_text(json.dumps(record, indent=1, default=str))
            if result.outcome == "typed" and len(typed_examples) < keep_typed_examples:
                typed_examples.append({k: record[k] for k in ("case", "seed_file", "error_type", "message")})
        if progress and done % 50 == 0:
            progress(f"[{target.name}] {done}/{len(indices)} cases, {dict(+counts)}")
    summary = {
        "target": target.name,
        "seed": seed,
        "iterations": len(indices),
        "timeout_s": timeout_s,
        "memory_mb": memory_mb,
        "outcomes": dict(counts),
        "acceptable": sum(counts[o] for o in ACCEPTABLE),
        "findings": len(findings),
        "typed_not_naming_the_file": unnamed,
        "error_types": dict(errors.most_common()),
        "translated_by_guard": dict(translated.most_common()),
        "categories": {name: dict(found) for name, found in sorted(by_category.items())},
        "slowest_case": slowest,
        "largest_rss_growth": biggest,
        "elapsed_s": round(time.monotonic() - started, 1),
        "seeds": [s.name for s in target.seeds],
        "python": platform.python_version(),
        "cases_with_findings": findings,
        "typed_examples": typed_examples,
    }
    name = "summary.json" if cases is None else "summary-replay.json"  # a replay keeps the campaign's summary
    (out / name).write_text(json.dumps(summary, indent=1, default=str))
    return summary
