"""Measure one prefill of the tiny model in a fresh process for tests/test_planner.py.

    python tests/planner_worker.py '{"text": 8192, "images": 0, "mode": "one-shot"}'

Prints JSON: ``runtime`` (RSS with the model built, minus its weights: Python, torch,
transformers' model code, the SDK) and
``peak`` (the process's ``VmHWM`` after the prefill). The prompt is what
:func:`longllava_sdk.planner.plan_memory` counts: ``text`` text tokens, then per image
``tokens_per_image`` placeholders and one tag token.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def main() -> None:
    case = json.loads(sys.argv[1])
    from longllava_sdk import LongLLaVAConfig, LongLLaVAForConditionalGeneration
    from longllava_sdk.modeling.chunked_prefill import MASK_BUDGET, chunked_prefill
    from longllava_sdk.modeling.image_stream import IndexedImages

    torch.set_num_threads(2)
    config = LongLLaVAConfig.from_preset("tiny")
    torch.manual_seed(0)
    model = LongLLaVAForConditionalGeneration(config).eval()
    # The runtime: everything but the weights (building the model imports transformers' model code)
    runtime = _status("VmRSS") - sum(p.numel() * p.element_size() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    ids = [1, *torch.randint(3, config.text_config.vocab_size, (case["text"] - 1,), generator=gen).tolist()]
    for _ in range(case["images"]):
        ids += [config.image_token_id] * config.tokens_per_image + [3]
    side = config.vision_config.image_size

    def pixels(index: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, 3, S, S), distinct images
        return torch.linspace(-1, 1, 3 * side * side).view(1, 3, side, side) + index.view(-1, 1, 1, 1) * 1e-3

    source = IndexedImages(case["images"], pixels) if case["images"] else None
    one_shot = case["mode"] == "one-shot"
    with torch.inference_mode():
        chunked_prefill(model, torch.tensor([ids]), None, source,
                        chunk_size=(1 << 30) if one_shot else config.chunked_prefill_size,
                        mask_budget=None if one_shot else MASK_BUDGET)
    print(json.dumps({"runtime": runtime, "peak": _status("VmHWM"), "tokens": len(ids)}))


if __name__ == "__main__":
    main()
