"""Forward+backward time of the tiny Jamba language model: transformers' fallback vs. the SDK's scan.

Both run in the same process on the same model and the same tokens, side by side:

* ``reference``: transformers 5's own torch fallback for ``mamba_selective_scan`` (a Python
  loop over every time step) and its ``causal_conv1d_fn``;
* ``ours``: the same model after :func:`longllava_sdk.modeling.mamba_kernels.install_mamba_kernels`
  (chunked scan with a recomputing backward, shifted-sum causal conv).

The reference grows about quadratically (its backward allocates a full-sequence gradient per
step): ~9 s at 1024 tokens on one quiet thread, minutes on a busy machine, so by default it only
runs up to 512 tokens. One torch thread by default (``--threads``), for steady timings.

    python benchmarks/bench_scan.py            # 256/512/1024, reference up to 512
    python benchmarks/bench_scan.py --quick    # one timed run each, reference at 256 only
    python benchmarks/bench_scan.py --full     # reference at every length
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

try:
    from longllava_sdk.modeling import mamba_kernels
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from longllava_sdk.modeling import mamba_kernels

DEFAULT_LENGTHS = (256, 512, 1024)


def tiny_text_config():
    """The Jamba config of the SDK's ``tiny`` preset (hidden 64, 8 layers, 4 experts top-2)."""
    from longllava_sdk.config import LongLLaVAConfig

    return LongLLaVAConfig.from_preset("tiny").text_config


def _forward_backward_seconds(model, ids: torch.Tensor, repeats: int, warmup: bool):
    """Best wall time of ``repeats`` forward+backward passes, and the logits of the last one."""
    best = float("inf")
    logits = None
    for i in range(repeats + int(warmup)):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        out = model(ids, labels=ids, use_cache=False)
        out.loss.backward()
        elapsed = time.perf_counter() - start
        if i >= int(warmup):
            best = min(best, elapsed)
        logits = out.logits.detach()
    return best, logits


def run(
    lengths=DEFAULT_LENGTHS,
    include_reference: bool = True,
    reference_max_tokens: int | None = 512,
    repeats: int = 3,
    batch_size: int = 1,
    seed: int = 0,
) -> list[dict]:
    """Time forward+backward of the tiny Jamba LM at each length, ours vs. transformers' fallback.

    Args:
        lengths: sequence lengths in tokens.
        include_reference: also time transformers' Python-loop fallback.
        reference_max_tokens: skip the fallback above this length (None: never skip).
        repeats: timed runs of our scan per length (best is reported, after one warm-up run);
            the fallback runs once per length (it is dominated by its Python loop).
        batch_size: sequences per batch.
        seed: seed for weights and tokens.

    Returns:
        One dict per length: ``tokens``, ``batch_size``, ``ours_s``, ``reference_s`` (None when
        skipped), ``speedup`` (reference / ours, or None) and ``max_logit_diff`` between the two
        (None when the reference was skipped).
    """
    from transformers import JambaForCausalLM

    config = tiny_text_config()
    torch.manual_seed(seed)
    model = JambaForCausalLM(config).train()
    was_installed = mamba_kernels.mamba_kernels_installed()
    rows = []
    try:
        # One short pass through each path first, so one-time set-up costs are not timed.
        warm_ids = torch.randint(3, config.vocab_size, (batch_size, 32),
                                 generator=torch.Generator().manual_seed(seed))
        for install in (True, False) if include_reference else (True,):
            if install:
                mamba_kernels.install_mamba_kernels()
            else:
                mamba_kernels.uninstall_mamba_kernels()
            _forward_backward_seconds(model, warm_ids, 1, warmup=False)
        for length in lengths:
            ids = torch.randint(3, config.vocab_size, (batch_size, length),
                                generator=torch.Generator().manual_seed(seed + length))
            mamba_kernels.install_mamba_kernels()
            ours_s, ours_logits = _forward_backward_seconds(model, ids, repeats, warmup=True)
            row = {"tokens": length, "batch_size": batch_size, "ours_s": ours_s,
                   "reference_s": None, "speedup": None, "max_logit_diff": None}
            if include_reference and (reference_max_tokens is None or length <= reference_max_tokens):
                mamba_kernels.uninstall_mamba_kernels()
                ref_s, ref_logits = _forward_backward_seconds(model, ids, 1, warmup=False)
                row.update(reference_s=ref_s, speedup=ref_s / ours_s,
                           max_logit_diff=float((ref_logits - ours_logits).abs().max()))
            rows.append(row)
    finally:
        if was_installed:
            mamba_kernels.install_mamba_kernels()
        else:
            mamba_kernels.uninstall_mamba_kernels()
    return rows


def format_table(rows: list[dict]) -> str:
    def fmt(value, spec):
        return "skipped" if value is None else format(value, spec)

    lines = [f"{'tokens':>7} {'fallback fwd+bwd':>17} {'ours fwd+bwd':>13} {'speedup':>9} {'max |dlogit|':>13}"]
    for r in rows:
        lines.append(
            f"{r['tokens']:>7} {fmt(r['reference_s'], '>16.3f') + ('s' if r['reference_s'] is not None else ''):>17}"
            f" {r['ours_s']:>12.3f}s {fmt(r['speedup'], '>8.1f') + ('x' if r['speedup'] is not None else ''):>9}"
            f" {fmt(r['max_logit_diff'], '>13.2e'):>13}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=lambda s: tuple(int(x) for x in s.split(",")),
                        default=DEFAULT_LENGTHS, help="comma-separated token counts (default 256,512,1024)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="one timed run per length, fallback at <= 256 tokens only")
    mode.add_argument("--full", action="store_true", help="run the fallback at every length (slow)")
    parser.add_argument("--no-reference", action="store_true", help="time only the SDK's scan")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared 2-core machine two threads "
                             "fight other jobs and times swing 10x; 0 = torch's default)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    reference_max = None if args.full else (256 if args.quick else 512)
    rows = run(
        lengths=args.lengths,
        include_reference=not args.no_reference,
        reference_max_tokens=reference_max,
        repeats=1 if args.quick else 3,
        batch_size=args.batch_size,
    )
    print(f"tiny Jamba LM (preset 'tiny' text config), batch {args.batch_size}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
