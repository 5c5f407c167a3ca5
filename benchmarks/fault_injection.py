"""Fault injection in training: SIGKILL a real ``longllava-sdk finetune`` again and again, resume each time.

::

    python benchmarks/fault_injection.py --kills 20          # or: longllava-sdk bench --suite fault-injection

1. An uninterrupted reference run: a micro LongLLaVA (the tiny preset with 56 px images pooled
   to 4 tokens), LoRA + a classify head, ``--save-steps 1``.
2. The same command, SIGKILLed at random points -- most kills aimed *inside a checkpoint save*
   (the parent watches for the ``.checkpoint-N.partial`` folder and kills while it is being
   written), the others at random moments of start-up, training, evaluation or export -- and
   rerun with ``--resume`` after every kill (without it while no checkpoint exists yet: a run
   that died before its first checkpoint restarts with the same command).
3. Checks after every restart: the checkpoint the run logs (``resuming from ... (step k)``) is
   the newest complete one (size + SHA-256 verified); at the end, the exported adapter and
   head are bit-identical to the reference run's, and no checkpoint marked complete is damaged.

Prints one line per attempt and a summary; ``--json FILE`` writes it too. Exit status 1 on
any failed check.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 60, 220)}
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
_RESUMED = re.compile(r"resuming from (\S+) \(step (\d+)\)")


def write_problem(root: Path, n: int = 40) -> tuple[Path, Path]:
    """A colour-classification recipe over generated images, and a micro model folder."""
    from PIL import Image, ImageDraw

    from longllava_sdk import LongLLaVAConfig, LongLLaVAForConditionalGeneration, LongLLaVAProcessor
    from longllava_sdk.model_folders import save_model

    images = root / "data" / "img"
    images.mkdir(parents=True)
    rows = ["source,labels,split"]
    names = list(COLOURS)
    for index in range(n):
        colour = names[index % len(names)]
        image = Image.new("RGB", (56, 56), (128, 128, 128))
        ImageDraw.Draw(image).rectangle([12, 12, 40, 40], fill=COLOURS[colour])
        image.save(images / f"{index}.png")
        rows.append(f"img/{index}.png,{colour},{'eval' if index >= n - 3 else 'train'}")
    (root / "data" / "rows.csv").write_text("\n".join(rows) + "\n")
    recipe = root / "data" / "recipe.yaml"
    recipe.write_text(
        "name: colours\nhead: {type: classify, labels: [red, green, blue]}\nmax_images: 1\n"
        "prompts: {question: 'Which colour is the square?'}\n"
        "training: {epochs: 1, batch_size: 2, learning_rate: 1.0e-3, max_length: 256, seed: 0}\n"
        f"data: {{path: {root / 'data' / 'rows.csv'}}}\n")
    config = LongLLaVAConfig.from_preset("tiny", tokens_per_image=4)
    config.vision_config.image_size = 56
    import torch

    torch.manual_seed(0)
    save_model(LongLLaVAForConditionalGeneration(config), LongLLaVAProcessor.for_config(config), root / "base")
    return recipe, root / "base"


def command(recipe: Path, base: Path, output: Path, steps: int, resume: bool) -> list[str]:
    argv = [sys.executable, "-m", "longllava_sdk", "finetune", "--domain", str(recipe), "--model", str(base),
            "--output", str(output), "--max-steps", str(steps), "--save-steps", "1"]
    return argv + (["--resume"] if resume else [])


def partials(output: Path, since: float) -> set[str]:
    """``.checkpoint-N.partial`` folders made after ``since``: checkpoints being written now."""
    found: set[str] = set()
    if not output.is_dir():
        return found
    for child in output.iterdir():
        if child.name.startswith(".checkpoint-") and child.name.endswith(".partial"):
            try:
                if child.stat().st_mtime >= since:
                    found.add(child.name)
            except FileNotFoundError:  # renamed to checkpoint-N while we looked
                continue
    return found


def tensors_equal(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs to inject (at least)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of the run")
    parser.add_argument("--in-save", type=float, default=0.6, help="share of kills aimed inside a checkpoint save")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--json", type=Path, help="write the summary here")
    args = parser.parse_args()
    from longllava_sdk.training.checkpointing import checkpoint_problem, latest_complete_checkpoint, list_checkpoints

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="longllava-faults-"))
    failures: list[str] = []
    try:
        recipe, base = write_problem(work)
        reference = work / "reference"
        started = time.time()
        done = subprocess.run(command(recipe, base, reference, args.steps, False), env=ENV, capture_output=True,
                              text=True)
        ref_seconds = time.time() - started
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        print(f"reference run: {args.steps} steps in {ref_seconds:.1f} s")

        kills = in_save = resumes = attempts = completed = 0
        identical = True
        while kills < args.kills:  # a run that finishes before all kills are spent is checked, then a new one starts
            run = work / f"run-{completed}"
            while True:
                attempts += 1
                resume = latest_complete_checkpoint(run) is not None
                expected = latest_complete_checkpoint(run, verify=True) if resume else None
                launched = time.time()
                process = subprocess.Popen(command(recipe, base, run, args.steps, resume), env=ENV,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                how = "ran to the end"
                if kills < args.kills:
                    aim_at_save = rng.random() < args.in_save
                    deadline = time.time() + ref_seconds * 1.5
                    if aim_at_save:  # inside the j-th save of this attempt, j random over what is left
                        done_steps = int(expected.name.rsplit("-", 1)[1]) if expected else 0
                        target = rng.randint(1, max(1, min(10, args.steps - done_steps)))
                        seen: set[str] = set()
                        while process.poll() is None and time.time() < deadline and len(seen) < target:
                            seen |= partials(run, launched)
                            time.sleep(0.001)
                        time.sleep(rng.uniform(0.0, 0.02))  # somewhere inside that save
                    else:
                        time.sleep(rng.uniform(0.5, ref_seconds))
                    if process.poll() is None:
                        in_progress = bool(partials(run, launched))
                        process.send_signal(signal.SIGKILL)
                        kills += 1
                        in_save += int(in_progress)
                        how = "killed inside a checkpoint save" if in_progress else "killed"
                _, err = process.communicate()
                picked = _RESUMED.search(err or "")
                if resume:
                    resumes += 1 if picked else 0
                    if picked is None and process.returncode == 0:
                        failures.append(f"attempt {attempts}: resumed without logging the checkpoint")
                    elif picked is not None and Path(picked.group(1)) != expected:
                        failures.append(f"attempt {attempts}: resumed from {picked.group(1)}, newest complete is "
                                        f"{expected}")
                step_info = (f"resumed from step {picked.group(2)}" if picked else
                             "--resume (killed before loading)" if resume else "fresh start")
                print(f"attempt {attempts:2d}: {step_info:>31}, {how} (exit {process.returncode})", flush=True)
                for _step, folder, complete in list_checkpoints(run):
                    problem = checkpoint_problem(folder, verify=True) if complete else None
                    if problem:
                        failures.append(f"after attempt {attempts}: {folder.name} is marked complete but {problem}")
                if how == "ran to the end":
                    if process.returncode != 0:
                        failures.append(f"attempt {attempts}: exit {process.returncode}: {(err or '')[-800:]}")
                    break
            completed += 1
            same = all(tensors_equal(reference / "adapter" / name, run / "adapter" / name)
                       for name in ("adapter_model.safetensors", "head.safetensors"))
            print(f"run {completed} finished: adapter + head bit-identical to the uninterrupted run: "
                  f"{'yes' if same else 'NO'}", flush=True)
            identical = identical and same
            if not same:
                failures.append(f"run {completed}: the final adapter / head differ from the uninterrupted run's")
        summary = {"kills": kills, "kills_inside_save": in_save, "attempts": attempts, "resumes_checked": resumes,
                   "runs_completed": completed, "final_weights_bit_identical": identical, "failures": failures,
                   "steps": args.steps}
        print(f"\n{kills} SIGKILLs ({in_save} inside a checkpoint save), {attempts} attempts, {completed} run(s) "
              f"completed, {resumes} resumes each from the newest complete checkpoint; final adapter + head "
              f"bit-identical to the uninterrupted run: {'yes' if identical else 'NO'}")
        for failure in failures:
            print(f"FAILED: {failure}")
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
        return 1 if failures else 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder kept: {work}")


if __name__ == "__main__":
    sys.exit(main())
