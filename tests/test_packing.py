"""Media-aware packing, packed collation, and packed == separate logits."""

from __future__ import annotations

import importlib
import json
import random

import pytest
import torch
from PIL import Image

from longllava_sdk.errors import ConfigError, DatasetError
from longllava_sdk.processing import IGNORE_INDEX
from longllava_sdk.training.collator import (
    PackedCollator,
    TrainingCollator,
    block_causal_mask,
    position_ids_for,
    reset_mask_for,
    segment_ids_for,
)
from longllava_sdk.training.data import prepare_datasets
from longllava_sdk.training.packing import PackedDataset, PackedSample, pack_samples


def _check_packing(lengths, max_length, packs, report):
    placed = [i for pack in packs for i in pack]
    assert len(placed) == len(set(placed))  # no sample in two packs (never split)
    assert set(placed) | {i for i, _ in report.did_not_fit} == set(range(len(lengths)))  # none dropped silently
    assert all(lengths[i] > max_length for i, _ in report.did_not_fit)
    assert all(sum(lengths[i] for i in pack) <= max_length for pack in packs)
    assert all(pack for pack in packs)


@pytest.mark.parametrize("strategy", ["ffd", "random"])
def test_pack_samples_invariants_and_determinism(strategy):
    rng = random.Random(0)
    for trial in range(20):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 60))] + [301, 450]
        packs, report = pack_samples(lengths, 300, seed=trial, strategy=strategy)
        _check_packing(lengths, 300, packs, report)
        assert sorted(report.did_not_fit) == [(len(lengths) - 2, 301), (len(lengths) - 1, 450)]
        assert pack_samples(lengths, 300, seed=trial, strategy=strategy).packs == packs
        assert report.num_packs == len(packs) and 0 < report.fill_ratio <= 1
    assert "did not fit" in str(report) and "#" in str(report)


def test_ffd_packs_tightly_and_random_follows_seeded_order():
    packs, report = pack_samples([6, 5, 4, 3, 2], 10, seed=0)
    assert sorted(sorted(p) for p in packs) == [[0, 3], [1, 2]] or len(packs) == 2
    assert report.num_packs == 2 and report.fill_ratio == 1.0
    # image-heavy samples (tokens_per_image=144 each) and small ones share packs without splitting
    lengths = [4 * 144 + 30, 144 + 20, 60, 2 * 144 + 25, 40, 3 * 144 + 10]
    packs, _ = pack_samples(lengths, 1024, seed=3)
    assert len(packs) == 2
    random_packs, _ = pack_samples(list(range(1, 30)), 40, seed=5, strategy="random")
    order = [i for pack in random_packs for i in pack]
    expected = list(range(29))
    random.Random(5).shuffle(expected)
    assert order == expected  # concatenation in the seeded random order (next fit)
    assert pack_samples(list(range(1, 30)), 40, seed=6, strategy="random").packs != random_packs
    with pytest.raises(ConfigError):
        pack_samples([1, 2], 10, strategy="best")
    with pytest.raises(ConfigError):
        pack_samples([1, 0], 10)


def test_mask_helpers_block_diagonal_causal():
    segments = segment_ids_for([[2, 3], [4]], 6)
    assert segments.tolist() == [[0, 0, 1, 1, 1, -1], [0, 0, 0, 0, -1, -1]]
    mask = block_causal_mask(segments, torch.float32)
    assert mask.shape == (2, 1, 6, 6)
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],  # padding attends only to itself
    ]
    assert mask.min() == torch.finfo(torch.float32).min
    assert reset_mask_for(segments)[0].tolist() == [True, False, True, False, False, True]
    assert position_ids_for(segments).tolist() == [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 0, 0]]
    assert block_causal_mask(segments, torch.bfloat16).dtype == torch.bfloat16


@pytest.fixture(scope="module")
def text_dataset(tmp_path_factory, processor):
    root = tmp_path_factory.mktemp("packing")
    from longllava_sdk.registry import available_adapters
    from longllava_sdk.plugin_manager import get_plugin_manager

    if "images" not in available_adapters() and not get_plugin_manager().has_plugin("images"):
        get_plugin_manager().register(importlib.import_module("longllava_plugins.images"), name="images")
    Image.new("RGB", (30, 20), (250, 10, 10)).save(root / "red.png")
    rows = [{"id": f"t{i}", "conversations": [{"from": "human", "value": "word " * (3 + 4 * i)},
                                              {"from": "gpt", "value": f"answer {i}"}]} for i in range(6)]
    rows.append({"id": "img", "image": "red.png",
                 "conversations": [{"from": "human", "value": "<image> colour?"}, {"from": "gpt", "value": "red"}]})
    (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return prepare_datasets(processor, data_path=root / "d.jsonl", max_length=400).train


def test_packed_dataset_concatenates_whole_samples(text_dataset, processor):
    lengths = text_dataset.lengths
    assert lengths[-1] > processor.tokens_per_image  # the image counts tokens_per_image tokens
    packed = PackedDataset(text_dataset, max_length=400, seed=1)
    assert sorted(i for pack in packed.packs for i in pack) == list(range(len(text_dataset)))
    assert packed.lengths == [sum(lengths[i] for i in p) for p in packed.packs]
    for index, pack in enumerate(packed.packs):
        item = packed[index]
        assert item.sample_lengths == [lengths[i] for i in pack] and len(item.input_ids) <= 400
        assert item.input_ids == [t for i in pack for t in text_dataset[i].input_ids]
        starts = [sum(item.sample_lengths[:k]) for k in range(len(pack))]
        assert all(item.labels[s] == IGNORE_INDEX for s in starts)
        eos = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        ends = [s + n - 1 for s, n in zip(starts, item.sample_lengths)]
        assert all(item.input_ids[e] == eos for e in ends)  # samples separated by <|endoftext|>
        assert len(item.images) == sum(len(text_dataset[i].images) for i in pack)
    with pytest.raises(DatasetError, match="not packed"):
        PackedDataset(text_dataset, max_length=min(lengths) + 1)
    with pytest.warns(UserWarning, match="did not fit"):
        loose = PackedDataset(text_dataset, max_length=max(lengths) - 1, strict=False)
    assert loose.report.did_not_fit == [(lengths.index(max(lengths)), max(lengths))]


def _pair(processor):
    image = Image.new("RGB", (40, 30), (200, 30, 30))
    a = processor.encode_conversation([{"role": "user", "content": "What colour? <image>", "media": [image]},
                                       {"role": "assistant", "content": "red"}])
    b = processor.encode_conversation([{"role": "user", "content": "Say hello to the world"},
                                       {"role": "assistant", "content": "hello world"}])
    c = processor.encode_conversation([{"role": "user", "content": "Count: one two"},
                                       {"role": "assistant", "content": "three"}])
    return a, b, c


def _packed_vs_separate(model, processor, resets=(False,)):
    """Max |packed - alone| logit difference of (sample A, sample B packed after A, sample C in row 2) per reset."""
    a, b, c = _pair(processor)
    packs = [PackedSample(a.input_ids + b.input_ids, a.labels + b.labels, a.images + b.images,
                          sample_lengths=[len(a), len(b)]),
             PackedSample(c.input_ids, c.labels, [], sample_lengths=[len(c)])]
    with torch.no_grad():
        alone = [model(**TrainingCollator(processor)([s])).logits[0] for s in (a, b, c)]
    results = []
    for reset in resets:
        batch = PackedCollator(processor, reset_mamba_state=reset)(packs)
        assert ("reset_mask" in batch) == reset
        with torch.no_grad():
            packed = model(**batch).logits
        results.append([
            (packed[0, : len(a)] - alone[0]).abs().max().item(),
            (packed[0, len(a): len(a) + len(b)] - alone[1]).abs().max().item(),
            (packed[1, : len(c)] - alone[2]).abs().max().item(),
        ])
    return results


def test_attention_path_packed_equals_separate():
    """Attention-only layers: the block-diagonal mask alone makes packed logits exact."""
    from longllava_sdk import LongLLaVAConfig, LongLLaVAForConditionalGeneration
    from longllava_sdk.config import PRESETS
    from longllava_sdk.processing import LongLLaVAProcessor

    text = dict(PRESETS["tiny"]["text"], attn_layer_period=1, attn_layer_offset=0, num_hidden_layers=2)
    config = LongLLaVAConfig(vision_config=PRESETS["tiny"]["vision"], text_config=text, max_context=4096)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = LongLLaVAForConditionalGeneration(config).eval()
    assert set(model.config.text_config.layer_types) == {"full_attention"}
    (diffs,) = _packed_vs_separate(model, LongLLaVAProcessor.for_config(config))
    assert max(diffs) < 1e-5, diffs


def test_hybrid_model_mamba_state_leaks_without_reset_and_not_with_it(tiny_model, processor):
    (first, second, other_row), with_reset = _packed_vs_separate(tiny_model, processor, resets=(False, True))
    assert first < 1e-5 and other_row < 1e-5  # causal: nothing before the first sample
    assert second > 1e-3  # the Mamba layers carried sample A's state into sample B
    assert max(with_reset) < 1e-4, with_reset  # every layer, Mamba included, restarts at the boundary


def test_packed_collator_batch_layout(processor, tiny_model):
    a, b, c = _pair(processor)
    pack = PackedSample(a.input_ids + b.input_ids, a.labels + b.labels, a.images + b.images,
                        sample_lengths=[len(a), len(b)])
    batch = PackedCollator(processor, mask_dtype=torch.bfloat16)([pack, c])  # plain samples are one-sample rows
    width = len(a) + len(b)
    assert batch["input_ids"].shape == (2, width) and batch["labels"][1, len(c):].eq(IGNORE_INDEX).all()
    assert batch["attention_mask"]["full_attention"].shape == (2, 1, width, width)
    assert batch["attention_mask"]["full_attention"].dtype == torch.bfloat16
    assert batch["attention_mask"]["linear_attention"][1].tolist() == [1] * len(c) + [0] * (width - len(c))
    assert batch["position_ids"][0, len(a)].item() == 0 and batch["position_ids"][0, len(a) - 1] == len(a) - 1
    assert batch["pixel_values"].shape[0] == 1
    full = PackedCollator(processor)([pack])
    assert full["attention_mask"]["linear_attention"] is None  # no padding: Mamba layers skip masking
    with pytest.raises(ValueError):
        PackedCollator(processor, mask_dtype=torch.long)

    # MoE load balancing reads the mapping as a 2-D padding mask (transformers passes it through)
    from transformers.models.jamba.modeling_jamba import load_balancing_loss_func

    mask = batch["attention_mask"]
    moved = type(mask)({k: v for k, v in mask.items()})  # what Trainer / accelerate do when moving to a device
    assert moved.reshape(-1).tolist() == mask["padding_mask"].reshape(-1).tolist() and moved.shape == (2, width)
    batch["attention_mask"] = PackedCollator(processor)([pack, c])["attention_mask"]
    with torch.no_grad():
        out = tiny_model(**batch, output_router_logits=True)
    text_config = tiny_model.config.text_config
    expected = load_balancing_loss_func(out.router_logits, text_config.num_experts, text_config.num_experts_per_tok,
                                        batch["attention_mask"]["padding_mask"])
    assert out.router_logits is not None and len(out.router_logits) > 0 and float(expected) > 0
    assert torch.isfinite(out.loss) and torch.allclose(out.aux_loss, expected)
