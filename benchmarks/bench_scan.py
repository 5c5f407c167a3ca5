"""Selective scan: the SDK's implementations against transformers' fallback, side by side.

Everything runs in one process on the same inputs, one case after the other:

1. **scan forward, no grad** (batch 1, N = 16, with D, z gate, delta bias and softplus),
   8192 tokens x 512 channels (the tiny mixer width) and 2048 tokens x 8192 channels (the 9B
   width): transformers' ``mamba_selective_scan`` torch loop, the SDK's chunked torch path and
   the SDK's numba kernels;
2. **scan forward + backward** at the tiny model's mixer shape (1024 tokens x 128 channels),
   the same three;
3. **tiny Jamba LM forward + backward** (preset ``tiny``) at 256 / 512 / 1024 tokens: one
   ``JambaForCausalLM`` with transformers' own mixers (its fallback) vs. the same model with the
   SDK's ``LongLLaVAMambaMixer`` swapped in (``swap_mamba_mixers``, as LongLLaVA models get them).

Each case prints the time, the ratio against transformers' loop and GFLOP/s. The FLOP count
is nominal and the same for every implementation (docs/selective_scan.md): per batch row,
step and channel ``7 N + 8`` for the forward, three times that for forward + backward; for
the LM, the scan's FLOPs of its Mamba layers plus twice the multiply-adds of every matmul
(counted by ``torch.utils.flop_counter`` on the forward), times three.

Times are the best of several runs after a warm-up (the loop and the chunked torch path,
which take seconds, run fewer times). One torch thread by default (``--threads``); numba uses
as many threads as torch.

    python benchmarks/bench_scan.py            # everything, fallback LM up to 512 tokens
    python benchmarks/bench_scan.py --full     # fallback LM at every length (1024: ~10-20 s)
    python benchmarks/bench_scan.py --quick    # one timed run per case, LM fallback at 256 only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

try:
    import longllava_sdk  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from longllava_sdk.modeling.kernels import scan_numba
from longllava_sdk.modeling.kernels.interface import selective_scan, selective_scan_backend

DEFAULT_LENGTHS = (256, 512, 1024)
#: (tokens, channels) of the forward cases
FORWARD_SHAPES = ((8192, 512), (2048, 8192))
#: (tokens, channels) of the forward+backward scan case: the tiny preset's mixer
TRAIN_SHAPE = (1024, 128)
N_STATE = 16


# --------------------------------------------------------------------------------------------
# FLOP counts (see docs/selective_scan.md, "Measured speed")
# --------------------------------------------------------------------------------------------


def scan_flops(batch: int, length: int, dim: int, n_state: int, backward: bool = False) -> int:
    """Nominal FLOPs of one selective scan with bias, softplus, D and z.

    Per (batch row, step, channel, state): dt*A, exp, a*h, du*B, +, C*h, += y: 7.
    Per (batch row, step, channel): +bias, softplus, dt*u, D*u, +, sigmoid, *z, *gate: 8.
    Forward + backward: 3x the forward (the usual convention; recomputation is not counted).
    """
    forward = batch * length * dim * (7 * n_state + 8)
    return 3 * forward if backward else forward


def _best(fn, repeats: int, warmup: bool = True):
    """Best wall time of ``repeats`` calls of ``fn`` (after one untimed call) and the last result."""
    result = fn() if warmup else None
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


# --------------------------------------------------------------------------------------------
# Scan cases
# --------------------------------------------------------------------------------------------


def mixer_like_inputs(length: int, dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random scan inputs in the layouts transformers' Jamba mixer passes.

    ``delta``, ``z``, ``B``, ``C`` are (1, ., L) views of time-major (1, L, .) memory (outputs of
    linear layers, transposed); ``u`` is a (1, D, L) slice of a longer causal-conv output.
    """
    g = torch.Generator().manual_seed(seed)
    conv = torch.randn(1, dim, length + 3, generator=g)
    return {
        "u": conv[..., :length],
        "delta": (torch.randn(1, length, dim, generator=g) * 0.5 - 1.0).transpose(1, 2),
        "A": -torch.exp(torch.randn(dim, N_STATE, generator=g) * 0.5) * torch.arange(1, N_STATE + 1),
        "B": torch.randn(1, length, N_STATE, generator=g).transpose(1, 2),
        "C": torch.randn(1, length, N_STATE, generator=g).transpose(1, 2),
        "D": torch.randn(dim, generator=g),
        "z": torch.randn(1, length, 2 * dim, generator=g).transpose(1, 2)[:, dim:],
        "delta_bias": torch.randn(dim, generator=g) * 0.3,
    }


def _transformers_loop():
    """transformers' own ``mamba_selective_scan`` (the SDK never replaces it)."""
    from transformers.models.jamba import modeling_jamba

    return modeling_jamba.mamba_selective_scan


def _scan_callables(x: dict[str, torch.Tensor]):
    loop = _transformers_loop()
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"])

    def transformers_loop():
        return loop(*args, delta_softplus=True)

    def sdk_torch():
        return selective_scan(*args, delta_softplus=True, backend="torch")

    def sdk_numba():
        return selective_scan(*args, delta_softplus=True, backend="numba")

    return {"transformers_loop": transformers_loop, "sdk_torch": sdk_torch, "sdk_numba": sdk_numba}


def run_scan_forward(shapes=FORWARD_SHAPES, repeats: int = 5, slow_repeats: int = 2) -> list[dict]:
    """Forward, no grad, of each (tokens, channels): times, ratios, GFLOP/s, max |diff|."""
    rows = []
    for length, dim in shapes:
        x = mixer_like_inputs(length, dim)
        fns = _scan_callables(x)
        with torch.no_grad():
            numba_s, numba_out = _best(fns["sdk_numba"], repeats)
            loop_s, loop_out = _best(fns["transformers_loop"], slow_repeats, warmup=False)
            torch_s, torch_out = _best(fns["sdk_torch"], 1, warmup=False)
        flops = scan_flops(1, length, dim, N_STATE)
        rows.append(_row("forward", length, dim, flops, loop_s, torch_s, numba_s,
                         float((numba_out - loop_out).abs().max()), float((torch_out - loop_out).abs().max())))
        del x, fns, numba_out, loop_out, torch_out
    return rows


def run_scan_train(shape=TRAIN_SHAPE, repeats: int = 5, slow_repeats: int = 1) -> dict:
    """Forward + backward of one scan (all inputs require grad), each implementation."""
    length, dim = shape
    x = mixer_like_inputs(length, dim, seed=1)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
    g_out = torch.randn(1, dim, length, generator=torch.Generator().manual_seed(2))
    fns = _scan_callables(leaves)
    grads = {}

    def train(name):
        def step():
            for v in leaves.values():
                v.grad = None
            fns[name]().backward(g_out)
            return leaves["delta"].grad.clone()
        return step

    numba_s, grads["numba"] = _best(train("sdk_numba"), repeats)
    torch_s, grads["torch"] = _best(train("sdk_torch"), repeats)
    loop_s, grads["loop"] = _best(train("transformers_loop"), slow_repeats, warmup=False)
    flops = scan_flops(1, length, dim, N_STATE, backward=True)
    return _row("forward+backward", length, dim, flops, loop_s, torch_s, numba_s,
                float((grads["numba"] - grads["loop"]).abs().max()),
                float((grads["torch"] - grads["loop"]).abs().max()))


def _row(case, length, dim, flops, loop_s, torch_s, numba_s, numba_diff, torch_diff) -> dict:
    return {
        "case": case, "tokens": length, "channels": dim, "gflop": flops / 1e9,
        "transformers_loop_s": loop_s, "sdk_torch_s": torch_s, "sdk_numba_s": numba_s,
        "numba_vs_loop": loop_s / numba_s, "torch_vs_loop": loop_s / torch_s,
        "numba_gflops": flops / numba_s / 1e9, "torch_gflops": flops / torch_s / 1e9,
        "loop_gflops": flops / loop_s / 1e9,
        "numba_max_abs_diff": numba_diff, "torch_max_abs_diff": torch_diff,
    }


# --------------------------------------------------------------------------------------------
# Tiny LM case
# --------------------------------------------------------------------------------------------


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


def lm_flops(model, config, ids: torch.Tensor) -> int:
    """Nominal forward+backward FLOPs of the LM: 3 x (matmul FLOPs of the forward, counted by
    torch's FlopCounterMode with the SDK's mixers, + the scan FLOPs of its Mamba
    layers)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(ids, use_cache=False)
    n_mamba = sum(kind == "mamba" for kind in config.layers_block_type)
    dim = config.mamba_expand * config.hidden_size
    scan = n_mamba * scan_flops(ids.shape[0], ids.shape[1], dim, config.mamba_d_state)
    return 3 * (counter.get_total_flops() + scan)


def run_lm(lengths=DEFAULT_LENGTHS, include_reference: bool = True, reference_max_tokens: int | None = 512,
           repeats: int = 3, batch_size: int = 1, seed: int = 0) -> list[dict]:
    """Time forward+backward of the tiny Jamba LM at each length, ours vs. transformers' fallback.

    Returns one dict per length: ``tokens``, ``batch_size``, ``ours_s``, ``reference_s`` (None
    when skipped), ``speedup``, ``max_logit_diff``, ``gflop`` and ``ours_gflops``.
    """
    from transformers import JambaForCausalLM
    from transformers.models.jamba.modeling_jamba import JambaMambaMixer

    from longllava_sdk.modeling.mamba_mixer import swap_mamba_mixers

    config = tiny_text_config()
    torch.manual_seed(seed)
    model = JambaForCausalLM(config).train()

    def use(sdk: bool) -> None:
        """The same parameters under the SDK's mixers or transformers' own."""
        if sdk:
            swap_mamba_mixers(model)
        else:
            swap_mamba_mixers(model, JambaMambaMixer)

    rows = []
    # One short pass through each path first, so one-time set-up costs are not timed.
    warm_ids = torch.randint(3, config.vocab_size, (batch_size, 32), generator=torch.Generator().manual_seed(seed))
    for sdk in (True, False) if include_reference else (True,):
        use(sdk)
        _forward_backward_seconds(model, warm_ids, 1, warmup=False)
    for length in lengths:
        ids = torch.randint(3, config.vocab_size, (batch_size, length),
                            generator=torch.Generator().manual_seed(seed + length))
        use(True)
        flops = lm_flops(model, config, ids)
        ours_s, ours_logits = _forward_backward_seconds(model, ids, repeats, warmup=True)
        row = {"tokens": length, "batch_size": batch_size, "ours_s": ours_s,
               "reference_s": None, "speedup": None, "max_logit_diff": None,
               "gflop": flops / 1e9, "ours_gflops": flops / ours_s / 1e9, "reference_gflops": None}
        if include_reference and (reference_max_tokens is None or length <= reference_max_tokens):
            use(False)
            ref_s, ref_logits = _forward_backward_seconds(model, ids, 1, warmup=False)
            row.update(reference_s=ref_s, speedup=ref_s / ours_s, reference_gflops=flops / ref_s / 1e9,
                       max_logit_diff=float((ref_logits - ours_logits).abs().max()))
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def format_scan_table(rows: list[dict]) -> str:
    head = (f"{'case':<17} {'tokens x ch':>12} {'GFLOP':>6} | {'transformers loop':>17} | "
            f"{'SDK torch-chunked':>26} | {'SDK numba-cpu':>26} | {'max|diff|':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = f"{r['tokens']}x{r['channels']}"
        lines.append(
            f"{r['case']:<17} {shape:>12} {r['gflop']:>6.3f} | "
            f"{r['transformers_loop_s']:>7.3f}s {r['loop_gflops']:>5.2f} GF/s | "
            f"{r['sdk_torch_s']:>7.3f}s {r['torch_vs_loop']:>6.1f}x {r['torch_gflops']:>5.2f} GF/s | "
            f"{r['sdk_numba_s']:>7.4f}s {r['numba_vs_loop']:>6.1f}x {r['numba_gflops']:>5.1f} GF/s | "
            f"{r['numba_max_abs_diff']:>8.1e}"
        )
    return "\n".join(lines)


def format_lm_table(rows: list[dict]) -> str:
    def fmt(value, spec, unit=""):
        return "skipped" if value is None else format(value, spec) + unit

    head = (f"{'tokens':>7} {'GFLOP':>6} | {'fallback fwd+bwd':>22} | {'SDK fwd+bwd':>19} | "
            f"{'speedup':>8} | {'max |dlogit|':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['tokens']:>7} {r['gflop']:>6.2f} | "
            f"{fmt(r['reference_s'], '>8.3f', 's'):>9} {fmt(r['reference_gflops'], '>5.2f', ' GF/s'):>12} | "
            f"{r['ours_s']:>6.3f}s {r['ours_gflops']:>6.2f} GF/s | "
            f"{fmt(r['speedup'], '>7.1f', 'x'):>8} | {fmt(r['max_logit_diff'], '>12.2e'):>12}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=lambda s: tuple(int(x) for x in s.split(",")),
                        default=DEFAULT_LENGTHS, help="LM token counts (default 256,512,1024)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="one timed run per case, LM fallback at <= 256 tokens only")
    mode.add_argument("--full", action="store_true", help="run the LM fallback at every length (slow)")
    parser.add_argument("--no-reference", action="store_true", help="LM: time only the SDK")
    parser.add_argument("--skip-scan", action="store_true", help="only the LM table")
    parser.add_argument("--skip-lm", action="store_true", help="only the scan table")
    parser.add_argument("--batch-size", type=int, default=1, help="LM batch size")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch (and numba) threads (default 1: on a shared 2-core machine two threads "
                             "fight other jobs and times swing 10x; 0 = torch's default)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    repeats = 1 if args.quick else 5
    result = {}
    if not args.skip_scan:
        result["scan"] = run_scan_forward(repeats=repeats, slow_repeats=1 if args.quick else 2)
        result["scan"].append(run_scan_train(repeats=repeats))
    if not args.skip_lm:
        result["lm"] = run_lm(
            lengths=args.lengths,
            include_reference=not args.no_reference,
            reference_max_tokens=None if args.full else (256 if args.quick else 512),
            repeats=1 if args.quick else 3,
            batch_size=args.batch_size,
        )
    print(f"{_machine()}; torch {torch.__version__}, numba {scan_numba.numba_version()}, "
          f"{torch.get_num_threads()} thread(s); CPU scan backend: {selective_scan_backend()}")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if "scan" in result:
        print(f"\nselective scan, batch 1, N={N_STATE}, D + z gate + delta bias + softplus, float32 "
              "(time, ratio vs transformers' loop, GFLOP/s):")
        print(format_scan_table(result["scan"]))
    if "lm" in result:
        print(f"\ntiny Jamba LM (preset 'tiny' text config), batch {args.batch_size}, forward+backward of the loss:")
        print(format_lm_table(result["lm"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
