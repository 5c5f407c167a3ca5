"""Efficiency of the hybrid vs. a transformer of the same size (the paper's Table 5 / Figure 1, on this CPU).

Two language models with the same width, depth, heads, KV heads, MLP width and vocabulary:

* ``hybrid``: the SDK's tiny preset (Jamba: 7 Mamba + 1 attention layer, MoE every other layer),
  inside :class:`~longllava_sdk.LongLLaVAForConditionalGeneration`, prefilled with the SDK's
  chunked prefill and images read lazily, one chunk at a time;
* ``transformer``: ``LlamaForCausalLM`` with 8 attention layers and a dense MLP, the same
  embeddings fed to it (same CLIP + projector, encoded by the same chunked feeder), prefilled
  in one pass as transformers does by default.

For every case: prefill time (images -> first-token logits, vision included), decode tokens/s
(greedy, one forward per token on the cache, the same loop for both models), peak RSS
(``VmHWM`` of a fresh process per case, so peaks do not mix) and the cache bytes (attention
KV + Mamba conv / SSM states). Then two memory runs on the streaming path: 1000 images through
the tiny hybrid, and 10,000 images through vision + chunked prefill of a Mamba-only variant
(the tiny preset with its attention layer made a Mamba layer, so nothing grows with the
prompt but the token ids), next to 1000 images of the same variant.

    python benchmarks/bench_efficiency.py --quick          # seconds: CI smoke
    python benchmarks/bench_efficiency.py                  # full: 1..1000 images, 32K / 128K text
    python benchmarks/bench_efficiency.py --out bench-out  # JSON + PNG plots in bench-out/

Every case runs in its own subprocess (``--case JSON``); the parent prints a table, the
decode profile (top ops, torch.profiler) and writes ``efficiency.json`` and the plots.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Before torch loads (as in tests/conftest.py): spinning OpenMP workers on a shared machine
# turn tiny decode ops into millisecond waits.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

try:
    import longllava_sdk  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUICK_IMAGES = (1, 8)
FULL_IMAGES = (1, 8, 64, 256, 1000)
QUICK_TEXT = (2048,)
FULL_TEXT = (32768, 131072)
PROMPT_TEXT = 64  # text tokens around the images in the image cases


# -----------------------------------------------------------------------------------------
# Worker side: one case in a fresh process
# -----------------------------------------------------------------------------------------


def _status_bytes(field: str) -> int:
    """A memory field of ``/proc/self/status`` (``VmHWM``: peak RSS, ``VmRSS``: current), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _peak_rss_bytes() -> int:
    return _status_bytes("VmHWM")


def _rss_bytes() -> int:
    return _status_bytes("VmRSS")


def _build_hybrid(mamba_only: bool = False):
    import copy

    from longllava_sdk import LongLLaVAConfig, LongLLaVAForConditionalGeneration
    from longllava_sdk.config import PRESETS

    if mamba_only:
        # No attention layer (period 9 > 8 layers): no KV cache at all. The context limit is
        # lifted for this measurement only (10,000 images = 1.44M tokens).
        text = dict(copy.deepcopy(PRESETS["tiny"]["text"]), attn_layer_period=9, attn_layer_offset=8,
                    max_position_embeddings=1 << 22)
        config = LongLLaVAConfig(vision_config=copy.deepcopy(PRESETS["tiny"]["vision"]), text_config=text,
                                 max_context=1 << 22)
    else:
        config = LongLLaVAConfig.from_preset("tiny")
    torch.manual_seed(0)
    return LongLLaVAForConditionalGeneration(config).eval()


def _build_transformer(text_config):
    """``LlamaForCausalLM`` with the tiny hybrid's width, depth, heads, KV heads, MLP width, vocab."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=text_config.vocab_size, hidden_size=text_config.hidden_size,
        intermediate_size=text_config.intermediate_size, num_hidden_layers=text_config.num_hidden_layers,
        num_attention_heads=text_config.num_attention_heads, num_key_value_heads=text_config.num_key_value_heads,
        max_position_embeddings=1 << 18, rms_norm_eps=text_config.rms_norm_eps, tie_word_embeddings=False,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(1)
    return LlamaForCausalLM(config).eval()


def _prompt(config, images: int, text: int) -> torch.Tensor:
    """``(1, L)``: BOS, ``text`` text tokens, then ``images`` placeholder runs, each + one separator."""
    gen = torch.Generator().manual_seed(0)
    ids = [1, *torch.randint(3, config.text_config.vocab_size, (max(0, text - 1),), generator=gen).tolist()]
    for _ in range(images):
        ids += [config.image_token_id] * config.tokens_per_image + [3]
    return torch.tensor([ids])


def _synthetic_pixels(index: torch.Tensor) -> torch.Tensor:
    """Deterministic, distinct ``(n, 3, 336, 336)`` images without holding them all (cheap to make)."""
    base = torch.linspace(-1.5, 1.5, 336 * 336).view(1, 1, 336, 336)
    shift = (index.float() % 97).view(-1, 1, 1, 1) * 0.01
    channel = torch.tensor([0.0, 0.3, -0.3]).view(1, 3, 1, 1)
    return (base + shift + channel).contiguous()


def _decode(model_step, first: torch.Tensor, steps: int) -> tuple[float, torch.Tensor]:
    """Best-of-2 seconds per token of a greedy loop of ``steps`` one-token forwards (after 2 warm-up steps)."""
    token = first
    for _ in range(2):
        token = model_step(token)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        for _ in range(steps):
            token = model_step(token)
        best = min(best, (time.perf_counter() - start) / steps)
    return best, token


def _profile(model_step, token: torch.Tensor, steps: int = 8, top: int = 8) -> list[dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            token = model_step(token)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "self_ms_per_token": round(e.self_cpu_time_total / 1e3 / steps, 3),
             "calls_per_token": round(e.count / steps, 1)} for e in rows]


def run_pipeline_case(case: dict[str, Any]) -> dict[str, Any]:
    """``Pipeline(prompt, images=[N PNG files])`` end to end: files -> adapter -> lazy pixels -> chunked prefill.

    The images are written first (distinct 336x336 PNGs in a temporary folder), then the
    tiny model is built; peak RSS covers decoding every file, the prefill and the answer.
    """
    import tempfile

    from PIL import Image

    from longllava_sdk import Pipeline
    from longllava_sdk.model_folders import create_model

    torch.set_num_threads(int(case.get("threads", 2)))
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i in range(case["images"]):
            path = Path(folder) / f"frame_{i:05d}.png"
            Image.new("RGB", (336, 336), (i % 251, (7 * i) % 253, (13 * i) % 255)).save(path)
            paths.append(str(path))
        model, processor = create_model("tiny")
        pipe = Pipeline(model, processor)
        baseline_rss = _rss_bytes()
        start = time.perf_counter()
        answer = pipe("Which frame differs from the others?", images=paths, max_new_tokens=case.get("decode", 4))
        elapsed = time.perf_counter() - start
    return dict(case, tokens=case["images"] * model.config.tokens_per_image, prefill_s=elapsed,
                answer_chars=len(answer), baseline_rss=baseline_rss, peak_rss=_peak_rss_bytes(),
                prefill_peak_rss=_peak_rss_bytes(), cache_bytes=0, cache_kv_bytes=0, cache_conv_bytes=0,
                cache_ssm_bytes=0)


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Measure one case in this (fresh) process."""
    if case["model"] == "pipeline":
        return run_pipeline_case(case)
    from longllava_sdk.modeling import cache_access
    from longllava_sdk.modeling.image_stream import ImageFeatureFeeder, IndexedImages
    from longllava_sdk.modeling.modeling_longllava import JAMBA_CACHE_ARGUMENT

    torch.set_num_threads(int(case.get("threads", 2)))
    kind = case["model"]
    hybrid = _build_hybrid(mamba_only=kind == "mamba-only")
    config = hybrid.config
    ids = _prompt(config, case["images"], case["text"])
    source = IndexedImages(case["images"], _synthetic_pixels) if case["images"] else None
    result: dict[str, Any] = dict(case, tokens=ids.shape[1])
    baseline_rss = _rss_bytes()
    with torch.inference_mode():
        if kind in ("hybrid", "mamba-only"):
            start = time.perf_counter()
            from longllava_sdk.modeling.chunked_prefill import MASK_BUDGET, chunked_prefill

            out = chunked_prefill(hybrid, ids, None, source, chunk_size=case.get("chunk", config.chunked_prefill_size),
                                  mask_budget=MASK_BUDGET if case.get("mask_budget", True) else None)
            result["prefill_s"] = time.perf_counter() - start
            cache, logits = out.cache, out.logits

            def step(token: torch.Tensor) -> torch.Tensor:
                o = hybrid.language_model(input_ids=token, use_cache=True, **{JAMBA_CACHE_ARGUMENT: cache})
                return o.logits[:, -1:].argmax(-1)
        else:
            llama = _build_transformer(config.text_config)
            baseline_rss = _rss_bytes()
            start = time.perf_counter()
            # Same embeddings as the hybrid gets (same vision tower, projector, streaming feeder).
            feeder = ImageFeatureFeeder(hybrid, ids, source)
            embeds = feeder.embed(0, ids.shape[1], ids)
            feeder.finish()
            from transformers import DynamicCache

            cache = DynamicCache(config=llama.config)
            logits = llama(inputs_embeds=embeds, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
            result["prefill_s"] = time.perf_counter() - start
            del embeds

            def step(token: torch.Tensor) -> torch.Tensor:
                o = llama(input_ids=token, past_key_values=cache, use_cache=True)
                return o.logits[:, -1:].argmax(-1)
        result["prefill_peak_rss"] = _peak_rss_bytes()
        sizes = cache_access.cache_bytes(cache)
        result.update(cache_kv_bytes=sizes.kv, cache_conv_bytes=sizes.conv, cache_ssm_bytes=sizes.ssm,
                      cache_bytes=sizes.total)
        if case.get("decode", 0):
            per_token, last = _decode(step, logits[:, -1:].argmax(-1), case["decode"])
            result["decode_ms_per_token"] = per_token * 1e3
            result["decode_tokens_per_s"] = 1.0 / per_token
            if case.get("profile"):
                result["profile"] = _profile(step, last)
    result["baseline_rss"] = baseline_rss
    result["peak_rss"] = _peak_rss_bytes()
    if kind == "mamba-only":
        # What the tiny hybrid's one attention layer would add at this length (keys + values, fp32).
        text = config.text_config
        head_dim = text.hidden_size // text.num_attention_heads
        result["hybrid_kv_bytes_at_this_length"] = ids.shape[1] * text.num_key_value_heads * head_dim * 2 * 4
    return result


# -----------------------------------------------------------------------------------------
# Parent side: cases, table, JSON, plots
# -----------------------------------------------------------------------------------------


def _spawn(case: dict[str, Any], timeout: float) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--case", json.dumps(case)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(case, error=f"timed out after {timeout:.0f} s")
    if done.returncode != 0:
        return dict(case, error=done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def plan(quick: bool) -> list[dict[str, Any]]:
    images = QUICK_IMAGES if quick else FULL_IMAGES
    texts = QUICK_TEXT if quick else FULL_TEXT
    decode = 8 if quick else 24
    cases: list[dict[str, Any]] = []
    for n in images:
        for model in ("hybrid", "transformer"):
            cases.append(dict(group="images", model=model, images=n, text=PROMPT_TEXT, decode=decode))
    for t in texts:
        for model in ("hybrid", "transformer"):
            cases.append(dict(group="text", model=model, images=0, text=t, decode=decode, profile=t == texts[-1]))
    # chunk-size sweep at a fixed prompt: fixed-size chunks, then the default (shrinking late chunks)
    sweep_text = 2048 if quick else 32768
    for chunk in ((256, 1024) if quick else (512, 1024, 2048, 4096)):
        cases.append(dict(group="chunk", model="hybrid", images=0, text=sweep_text, decode=0, chunk=chunk,
                          mask_budget=False))
    cases.append(dict(group="chunk", model="hybrid", images=0, text=sweep_text, decode=0))
    stream = (8, 32) if quick else (1000, 10000)
    cases.append(dict(group="stream", model="hybrid", images=stream[0], text=PROMPT_TEXT, decode=0))
    # the same prompt in one pass (images still streamed into the embeddings): time vs memory
    cases.append(dict(group="stream", model="hybrid", images=stream[0], text=PROMPT_TEXT, decode=0,
                      chunk=1 << 30, mask_budget=False))
    for n in (stream[0], stream[1]):
        cases.append(dict(group="stream", model="mamba-only", images=n, text=PROMPT_TEXT, decode=0))
    # the same number of images as files through the public API (adapter, lazy pixels, chunked prefill)
    cases.append(dict(group="pipeline", model="pipeline", images=stream[0], text=PROMPT_TEXT, decode=4))
    return cases


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f} MB"


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'group':7} {'model':12} {'images':>6} {'tokens':>8} {'chunk':>7} {'prefill s':>9} "
             f"{'decode tok/s':>12} {'peak RSS':>9} {'cache':>9} {'KV':>9} {'Mamba':>8}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['group']:7} {r['model']:12} {r['images']:>6} {'':>8} error: {r['error']}")
            continue
        tps = f"{r['decode_tokens_per_s']:.1f}" if "decode_tokens_per_s" in r else "-"
        chunk = "-" if r["model"] == "transformer" else (
            f"{r['chunk']}" + ("" if r.get("mask_budget", True) else "!") if "chunk" in r else "auto")
        lines.append(
            f"{r['group']:7} {r['model']:12} {r['images']:>6} {r['tokens']:>8} {chunk:>7} {r['prefill_s']:>9.2f} {tps:>12} "
            f"{_mb(r['peak_rss']):>9} {_mb(r['cache_bytes']):>9} {_mb(r['cache_kv_bytes']):>9} "
            f"{_mb(r['cache_conv_bytes'] + r['cache_ssm_bytes']):>8}"
        )
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Hybrid / transformer decode speed and prefill speed per (group, images, tokens)."""
    out = []
    by_key = {(r["group"], r["model"], r["images"], r["text"]): r for r in rows if "error" not in r}
    for (group, model, images, text), r in by_key.items():
        other = by_key.get((group, "transformer", images, text))
        if model != "hybrid" or other is None:
            continue
        entry = dict(group=group, images=images, tokens=r["tokens"],
                     prefill_speedup=other["prefill_s"] / r["prefill_s"],
                     cache_ratio=other["cache_bytes"] / max(1, r["cache_bytes"]),
                     peak_rss_ratio=other["peak_rss"] / r["peak_rss"])
        if "decode_tokens_per_s" in r and "decode_tokens_per_s" in other:
            entry["decode_speedup"] = r["decode_tokens_per_s"] / other["decode_tokens_per_s"]
        out.append(entry)
    return out


def plot(rows: list[dict[str, Any]], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image_rows = [r for r in rows if r["group"] == "images" and "error" not in r]
    written: list[Path] = []
    if not image_rows:  # e.g. --groups chunk
        return written
    for metric, label, scale, name in (
        ("prefill_s", "prefill time (s)", 1.0, "time_vs_images.png"),
        ("peak_rss", "peak RSS (MB)", 2**20, "memory_vs_images.png"),
    ):
        fig, axis = plt.subplots(figsize=(5.5, 3.8))
        for model, style in (("hybrid", "o-"), ("transformer", "s--")):
            points = sorted((r["images"], r[metric] / scale) for r in image_rows if r["model"] == model)
            if points:
                axis.plot(*zip(*points), style, label={"hybrid": "LongLLaVA tiny (hybrid)",
                                                       "transformer": "Llama, same size"}[model])
        if metric == "peak_rss":
            for model, style in (("hybrid", "o:"), ("transformer", "s:")):
                points = sorted((r["images"], r["cache_bytes"] / scale) for r in image_rows if r["model"] == model)
                if points:
                    axis.plot(*zip(*points), style, alpha=0.6, label=f"{model} cache")
        axis.set_xscale("log")
        axis.set_xlabel("images (144 tokens each)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        fig.tight_layout()
        path = folder / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized smoke (1 and 8 images, 2K text)")
    parser.add_argument("--out", type=Path, default=Path("bench-efficiency"), help="folder for JSON + PNG")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per case (default 2)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per case before it is abandoned")
    parser.add_argument("--groups", nargs="+", choices=("images", "text", "chunk", "stream", "pipeline"),
                        help="run only these groups of cases (default: all)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # worker mode: one case, JSON in and out
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return 0

    import platform

    cases = [c for c in plan(args.quick) if not args.groups or c["group"] in args.groups]
    print(f"{len(cases)} cases, each in a fresh process, {args.threads} torch threads; "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}", flush=True)
    rows = []
    for case in cases:
        case["threads"] = args.threads
        started = time.perf_counter()
        row = _spawn(case, args.timeout)
        rows.append(row)
        print(f"  {case['group']:6} {case['model']:11} images={case['images']:<5} text={case['text']:<6} "
              f"{time.perf_counter() - started:6.1f} s {'ERROR ' + row['error'] if 'error' in row else ''}",
              flush=True)
    print("\nchunk: tokens per prefill chunk ('auto': the config's size, late chunks shrunk to the mask "
          "budget; '!': fixed size, no budget; '-': one-shot prefill)")
    print(format_rows(rows))
    print()
    speed = ratios(rows)
    for entry in speed:
        decode = f"decode {entry['decode_speedup']:.2f}x" if "decode_speedup" in entry else ""
        print(f"hybrid vs transformer, {entry['group']} {entry['images']} images / {entry['tokens']} tokens: "
              f"{decode}  prefill {entry['prefill_speedup']:.2f}x  cache {entry['cache_ratio']:.1f}x smaller  "
              f"peak RSS {entry['peak_rss_ratio']:.2f}x")
    for r in rows:
        if r.get("profile"):
            print(f"\ndecode profile, {r['model']} at {r['tokens']} tokens "
                  f"({r['decode_ms_per_token']:.2f} ms/token): top ops by self CPU time")
            for op in r["profile"]:
                print(f"  {op['op']:52} {op['self_ms_per_token']:8.3f} ms/token  {op['calls_per_token']:6.1f} calls")
    stream = [r for r in rows if r["group"] == "stream" and "error" not in r]
    for r in stream:
        extra = (f"; the hybrid's attention KV at this length would add {_mb(r['hybrid_kv_bytes_at_this_length'])}"
                 if "hybrid_kv_bytes_at_this_length" in r else f"; KV cache {_mb(r['cache_kv_bytes'])}")
        mode = "one-shot prefill" if r.get("chunk", 0) >= r["tokens"] else "chunked prefill"
        print(f"streaming {r['model']} ({mode}): {r['images']} images ({r['tokens']} tokens) in {r['prefill_s']:.1f} s, "
              f"peak RSS {_mb(r['peak_rss'])} (model built: {_mb(r['baseline_rss'])}){extra}")
    for r in rows:
        if r["group"] == "pipeline" and "error" not in r:
            print(f"Pipeline(prompt, images=[{r['images']} PNG files], max_new_tokens={r['decode']}): "
                  f"{r['prefill_s']:.1f} s end to end, peak RSS {_mb(r['peak_rss'])} "
                  f"(model built: {_mb(r['baseline_rss'])})")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "efficiency.json").write_text(json.dumps(
        {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                     "threads": args.threads, "torch": torch.__version__},
         "mode": "quick" if args.quick else "full", "rows": rows, "ratios": speed}, indent=2))
    paths = plot(rows, args.out)
    print(f"\nwrote {args.out / 'efficiency.json'}" + "".join(f", {p}" for p in paths))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
