"""Int8 vs float32: memory saved and agreement on a fixed prompt set, side by side in one run.

::

    python benchmarks/bench_int8.py            # or: longllava-sdk bench --suite int8

Two random-weight models (no checkpoint can be downloaded here): the ``tiny`` preset, and a
``dense`` model shaped like LongLLaVA-9B's layers (one expert: dense SwiGLU MLPs, where
most of a real model's weights are) at a CPU-friendly width. For each: weight bytes before /
after, next-token logit error (max |diff| relative to max |logit|) and greedy-token
agreement over 24 prompts with images (12 new tokens each), and decode time per token.
Random weights are a harsh case for agreement (no margin between top tokens); trained
models agree more.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch


def _models() -> dict[str, object]:
    from longllava_sdk import LongLLaVAConfig

    dense = LongLLaVAConfig.from_preset("tiny")
    text = dense.text_config
    text.hidden_size, text.intermediate_size = 512, 2048
    text.num_attention_heads, text.num_key_value_heads = 8, 2
    text.num_experts, text.num_experts_per_tok = 1, 1
    text.mamba_dt_rank = 32
    return {"tiny": LongLLaVAConfig.from_preset("tiny"), "dense (9B-shaped layers, width 512)": dense}


def _prompts(processor, n: int, seed: int):
    from PIL import Image, ImageDraw

    rng = torch.Generator().manual_seed(seed)
    prompts = []
    words = ["What is shown?", "Describe the scan.", "Which image contains the red square?", "Is there a nodule?"]
    for index in range(n):
        image = Image.new("RGB", (96, 96), tuple(int(c) for c in torch.randint(0, 255, (3,), generator=rng)))
        ImageDraw.Draw(image).rectangle([20, 20, 60, 60], fill=(220, 30, 30))
        batch = processor(messages=[{"role": "user", "content": words[index % len(words)], "media": [image]}])
        prompts.append(dict(batch))
    return prompts


def measure(config, prompts_n: int, new_tokens: int) -> dict[str, float]:
    from longllava_sdk import LongLLaVAForConditionalGeneration, LongLLaVAProcessor
    from longllava_sdk.quantization import model_bytes, quantize_model

    torch.manual_seed(0)
    fp32 = LongLLaVAForConditionalGeneration(config).eval()
    int8 = copy.deepcopy(fp32)
    report = quantize_model(int8)
    processor = LongLLaVAProcessor.for_config(config)
    errors, agree, total = [], 0, 0
    times = {"fp32": 0.0, "int8": 0.0}
    for inputs in _prompts(processor, prompts_n, seed=1):
        with torch.no_grad():
            a = fp32(**inputs).logits[:, -1]
            b = int8(**inputs).logits[:, -1]
        errors.append(float((a - b).abs().max() / a.abs().max()))
        outs = {}
        for name, model in (("fp32", fp32), ("int8", int8)):
            started = time.perf_counter()
            with torch.no_grad():
                outs[name] = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                            do_sample=False)
            times[name] += time.perf_counter() - started
        agree += int((outs["fp32"] == outs["int8"]).all(dim=0)[-new_tokens:].sum())
        total += new_tokens
    return {"bytes_fp32": model_bytes(fp32), "bytes_int8": report.bytes_after,
            "lm_bytes_fp32": model_bytes(fp32.language_model), "lm_bytes_int8": model_bytes(int8.language_model),
            "quantized_layers": len(report.quantized), "max_rel_logit_error": max(errors),
            "mean_rel_logit_error": sum(errors) / len(errors), "greedy_agreement": agree / total,
            "ms_per_token_fp32": 1e3 * times["fp32"] / total, "ms_per_token_int8": 1e3 * times["int8"] / total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'model':<38} {'weights fp32':>12} {'int8':>9} {'saved':>6} {'LM saved':>8} | {'logit err max/mean':>18} "
          f"| {'greedy agree':>12} | {'ms/token fp32 -> int8':>21}")
    for name, config in _models().items():
        r = measure(config, args.prompts, args.new_tokens)
        print(f"{name:<38} {r['bytes_fp32'] / 2**20:>9.1f} MiB {r['bytes_int8'] / 2**20:>5.1f} MiB "
              f"{1 - r['bytes_int8'] / r['bytes_fp32']:>6.0%} {1 - r['lm_bytes_int8'] / r['lm_bytes_fp32']:>8.0%} | "
              f"{r['max_rel_logit_error']:>8.4f} / {r['mean_rel_logit_error']:.4f} | {r['greedy_agreement']:>12.1%} | "
              f"{r['ms_per_token_fp32']:>8.2f} -> {r['ms_per_token_int8']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
