"""LoRA on the Jamba backbone: which targets attach, the gradient check, the hook, merging."""

from __future__ import annotations

import re

import pytest
import torch

from longllava_sdk.errors import ConfigError, TrainingError
from trainer_fixtures import builtin_plugins, one_torch_thread  # noqa: F401  (autouse fixtures)
from trainer_fixtures import make_micro_model, square_image


def _batch(processor, answer="red"):
    sample = processor.encode_conversation([
        {"role": "user", "content": "What colour is the square?", "media": [square_image("red")]},
        {"role": "assistant", "content": answer},
    ])
    return {"input_ids": torch.tensor([sample.input_ids]), "labels": torch.tensor([sample.labels]),
            "pixel_values": processor.preprocess_images(sample.images)}


@pytest.mark.compat
def test_default_targets_attach_where_the_measurements_say():
    from longllava_sdk.training.lora import LoraOptions, apply_lora

    model, _ = make_micro_model()
    wrapped, report = apply_lora(model, LoraOptions(r=4, alpha=8, dropout=0.05))
    kinds = {name.rsplit(".", 1)[-1] for name in report.modules}
    assert kinds == {"q_proj", "k_proj", "v_proj", "o_proj", "in_proj", "x_proj", "out_proj",
                     "gate_proj", "up_proj", "down_proj"}
    assert all(name.startswith("language_model.model.layers.") for name in report.modules)
    # fused MoE experts through target_parameters, on every MoE layer (odd layers of the tiny preset)
    experts = sorted(report.parameters)
    assert experts and all(re.search(r"layers\.\d*[13579]\.feed_forward\.experts\.(gate_up_proj|down_proj)$", p)
                           for p in experts)
    assert len(experts) == 2 * 4  # 4 MoE layers x (gate_up_proj, down_proj)
    names = [n for n, _ in wrapped.named_modules()]
    assert not any("dt_proj.lora_A" in n for n in names)
    assert not any(n.startswith("base_model.model.vision_tower") and "lora_" in n for n in names)  # CLIP q/k/v untouched
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert any("projector.modules_to_save" in n for n in trainable)  # projector trained in full
    assert not any("vision_tower" in n for n in trainable)
    assert not any(n.endswith("feed_forward.experts.gate_up_proj") for n in trainable)  # base weights frozen
    assert report.missing_targets == []


def test_target_regex_stays_inside_the_language_model():
    from longllava_sdk.training.lora import target_module_regex

    regex = re.compile(target_module_regex(["q_proj", "in_proj"]))
    assert regex.fullmatch("language_model.model.layers.4.self_attn.q_proj")
    assert regex.fullmatch("language_model.model.layers.1.mamba.in_proj")
    assert not regex.fullmatch("vision_tower.encoder.layers.0.self_attn.q_proj")
    assert not regex.fullmatch("language_model.model.layers.1.mamba.dt_proj")


@pytest.mark.parametrize("bad", ["dt_proj", "mamba.dt_proj", "conv1d", "router", "all-linear"])
def test_forbidden_targets_are_refused(bad):
    from longllava_sdk.training.lora import LoraOptions, apply_lora

    model, _ = make_micro_model()
    with pytest.raises(ConfigError, match="cannot be used"):
        apply_lora(model, LoraOptions(target_modules=["q_proj", bad]))


def test_nothing_attached_fails_loudly():
    from longllava_sdk.training.lora import LoraOptions, apply_lora

    model, _ = make_micro_model()
    with pytest.raises(TrainingError, match="no LoRA adapter attached"):
        apply_lora(model, LoraOptions(target_modules=["no_such_proj"], target_parameters=[]))


@pytest.mark.compat
def test_every_trainable_parameter_gets_a_gradient_in_the_first_step():
    from longllava_sdk.training.lora import LoraOptions, apply_lora, check_gradients

    model, processor = make_micro_model()
    wrapped, _ = apply_lora(model, LoraOptions(r=4, alpha=8))
    wrapped(**_batch(processor)).loss.backward()
    assert check_gradients(wrapped.named_parameters()) == []
    # B starts at zero, so A's first gradient is exactly zero: the check accepts it only
    # because B's gradient is non-zero; zero B's gradient too and the pair is reported.
    name_b = next(n for n, _ in wrapped.named_parameters() if "q_proj.lora_B" in n)
    dict(wrapped.named_parameters())[name_b].grad.zero_()
    problems = check_gradients(wrapped.named_parameters())
    assert any("q_proj.lora_A" in p and "LoRA pair" in p for p in problems)
    assert any("q_proj.lora_B" in p and "all zeros" in p for p in problems)


def test_dt_proj_lora_is_caught_by_the_gradient_check():
    """dt_proj's LoRA is bypassed by the Mamba mixer: forcing it through peft must fail the check."""
    from peft import LoraConfig, get_peft_model

    from longllava_sdk.training.lora import check_gradients, raise_for_gradients

    model, processor = make_micro_model()
    wrapped = get_peft_model(model, LoraConfig(r=4, target_modules=r"language_model\..*\.(dt_proj|q_proj)"))
    wrapped(**_batch(processor)).loss.backward()
    problems = check_gradients(wrapped.named_parameters())
    assert problems and all("dt_proj" in p for p in problems)
    assert any("received no gradient" in p for p in problems)
    with pytest.raises(TrainingError, match="dt_proj"):
        raise_for_gradients(problems)


def test_single_expert_backbone_targets_dense_mlps_only():
    """The 9B has one expert per layer (dense MLPs everywhere): no expert parameters to wrap."""
    from longllava_sdk.training.lora import LoraOptions, apply_lora, check_gradients

    model, processor = _single_expert_model()
    wrapped, report = apply_lora(model, LoraOptions(r=4, alpha=8))
    assert report.parameters == []
    assert set(report.missing_targets) == {"feed_forward.experts.gate_up_proj", "feed_forward.experts.down_proj"}
    assert sum(1 for m in report.modules if m.endswith("gate_proj")) == 8  # every layer is dense
    out = wrapped(**_batch(processor), output_router_logits=True)  # transformers would raise IndexError here
    out.loss.backward()
    assert check_gradients(wrapped.named_parameters()) == []


def _single_expert_model():
    from longllava_sdk import LongLLaVAForConditionalGeneration, LongLLaVAProcessor
    from trainer_fixtures import micro_config

    config = micro_config()
    config.text_config.num_experts = 1
    config.text_config.num_experts_per_tok = 1
    torch.manual_seed(0)
    return LongLLaVAForConditionalGeneration(config), LongLLaVAProcessor.for_config(config)


def test_apply_lora_hook_replaces_the_default_wrapping():
    from peft import get_peft_model

    from longllava_sdk.hookspecs import hookimpl
    from longllava_sdk.plugin_manager import get_plugin_manager
    from longllava_sdk.training.lora import LoraOptions, apply_lora

    seen = {}

    class OnlyAttention:
        @hookimpl
        def longllava_apply_lora(self, model, lora_config):
            seen["config"] = lora_config
            lora_config.target_modules = r"language_model\.model\.layers\.\d+\.self_attn\.(q_proj|v_proj)"
            lora_config.target_parameters = None
            return get_peft_model(model, lora_config)

    manager = get_plugin_manager()
    manager.register(OnlyAttention(), name="test-only-attention-lora")
    try:
        model, _ = make_micro_model()
        _, report = apply_lora(model, LoraOptions(r=4, alpha=8))
    finally:
        manager.unregister(name="test-only-attention-lora")
    assert seen["config"].r == 4
    assert {m.rsplit(".", 1)[-1] for m in report.modules} == {"q_proj", "v_proj"}


@pytest.mark.compat
def test_merged_model_matches_the_adapted_model(tmp_path):
    from longllava_sdk.training.lora import LoraOptions, apply_lora, merge_lora

    model, processor = make_micro_model()
    wrapped, _ = apply_lora(model, LoraOptions(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.05)
    batch = _batch(processor)
    wrapped.eval()
    with torch.no_grad():
        adapted = wrapped(**batch).logits
        merged = merge_lora(wrapped).eval()
        plain = merged(**batch).logits
    assert type(merged).__name__ == "LongLLaVAForConditionalGeneration"
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert torch.allclose(adapted, plain, atol=1e-4)


def test_the_fast_decode_step_applies_an_unmerged_lora():
    """A decode step through LoRA-wrapped Mamba projections equals the sequence path's step."""
    from longllava_sdk.modeling import cache_access
    from longllava_sdk.modeling.mamba_mixer import set_fast_decode
    from longllava_sdk.training.lora import LoraOptions, apply_lora

    model, _ = make_micro_model()
    wrapped, _ = apply_lora(model, LoraOptions(r=4, alpha=8, dropout=0.0, target_modules=["in_proj", "out_proj"]))
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn_like(param) * 0.5)
    inner = wrapped.base_model.model.eval()
    ids = torch.randint(3, 200, (1, 10), generator=torch.Generator().manual_seed(0))
    steps = {}
    with torch.no_grad():
        for fast in (True, False):
            set_fast_decode(inner, fast)
            cache = inner.prefill(ids[:, :9], chunk_size=9).cache
            steps[fast] = inner(input_ids=ids[:, 9:], **{cache_access.JAMBA_CACHE_ARGUMENT: cache},
                                use_cache=True).logits
    set_fast_decode(inner, True)
    torch.testing.assert_close(steps[True], steps[False], rtol=1e-4, atol=1e-5)
