"""The hybrid model: shapes through every stage, pooling, presets, save/load, generation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longllava_sdk import LongLLaVAConfig, LongLLaVAForConditionalGeneration
from longllava_sdk.cli.cmd_info import parameter_report
from longllava_sdk.errors import ConfigError, ProtocolError
from longllava_sdk.modeling.pooling import pool_image_features


def _image_ids(config, n_images: int, prefix=(1, 5, 6), suffix=(7, 8, 9)) -> torch.Tensor:
    ids = list(prefix)
    for _ in range(n_images):
        ids += [config.image_token_id] * config.tokens_per_image + [10]
    return torch.tensor([ids + list(suffix)])


@pytest.mark.compat
def test_shapes_through_every_stage(tiny_model, tiny_config):
    cfg = tiny_config
    pixels = torch.randn(3, 3, 336, 336)
    out = tiny_model.vision_tower(pixel_values=pixels, output_hidden_states=True)
    layer = out.hidden_states[cfg.vision_feature_layer]
    assert layer.shape == (3, 577, cfg.vision_config.hidden_size)  # CLS + 24*24 patches
    pooled = pool_image_features(layer[:, 1:], cfg.pooling, cfg.tokens_per_image)
    assert pooled.shape == (3, 144, cfg.vision_config.hidden_size)
    features = tiny_model.get_image_features(pixels)
    assert features.shape == (3, 144, cfg.text_config.hidden_size)
    ids = _image_ids(cfg, 3)
    embeds = tiny_model.embed_inputs(ids, pixels)
    assert embeds.shape == (1, ids.shape[1], cfg.text_config.hidden_size)
    # the image features sit exactly at the placeholder positions, in order
    mask = ids[0] == cfg.image_token_id
    assert torch.allclose(embeds[0, mask], features.reshape(-1, features.shape[-1]), atol=1e-6)
    logits = tiny_model(input_ids=ids, pixel_values=pixels).logits
    assert logits.shape == (1, ids.shape[1], cfg.text_config.vocab_size)


def test_vision_chunking_does_not_change_features(tiny_model):
    pixels = torch.randn(5, 3, 336, 336)
    chunk = tiny_model.config.vision_chunk_size
    try:
        tiny_model.config.vision_chunk_size = 2
        chunked = tiny_model.get_image_features(pixels)
        tiny_model.config.vision_chunk_size = 16
        whole = tiny_model.get_image_features(pixels)
    finally:
        tiny_model.config.vision_chunk_size = chunk
    assert torch.allclose(chunked, whole, atol=1e-5)


def test_2d_pooling_equals_2x2_average_and_official_interpolate():
    features = torch.randn(4, 576, 32)
    pooled = pool_image_features(features, "2d", 144)
    grid = features.transpose(1, 2).reshape(4, 32, 24, 24)
    average = F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)
    assert torch.allclose(pooled, average, atol=1e-6)
    official = F.interpolate(grid, (12, 12), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    assert torch.equal(pooled, official)


def test_1d_and_none_pooling():
    features = torch.randn(2, 576, 8)
    assert pool_image_features(features, "none", 576) is features
    one_d = pool_image_features(features, "1d", 144)
    # linear resampling, align_corners=False: output i samples position 4i + 1.5 of the input
    assert torch.allclose(one_d[:, 0], features[:, 1:3].mean(1), atol=1e-6)


@pytest.mark.parametrize("pooling,tokens", [("2d", 150), ("2d", 625), ("none", 144), ("bogus", 144)])
def test_invalid_multimodal_settings_are_refused(pooling, tokens):
    with pytest.raises(ConfigError):
        LongLLaVAConfig.from_preset("tiny", pooling=pooling, tokens_per_image=tokens)


@pytest.mark.compat
def test_multimodal_settings_survive_save_load(tmp_path):
    cfg = LongLLaVAConfig.from_preset("tiny", pooling="1d", tokens_per_image=64, vision_feature_layer=-1)
    cfg.save_pretrained(tmp_path)
    loaded = LongLLaVAConfig.from_pretrained(tmp_path)
    assert (loaded.pooling, loaded.tokens_per_image, loaded.vision_feature_layer) == ("1d", 64, -1)
    assert loaded.projector_type == "mlp2x_gelu" and loaded.image_token_id == cfg.image_token_id
    assert loaded.text_config.mamba_dt_rank == cfg.text_config.mamba_dt_rank


def test_tiny_preset_keeps_the_real_structure(tiny_config):
    text = tiny_config.text_config
    assert [i for i, t in enumerate(text.layers_block_type) if t == "attention"] == [4]
    assert text.layers_num_experts == [1, 4] * 4  # MoE every other layer
    assert text.num_key_value_heads < text.num_attention_heads  # GQA
    assert tiny_config.num_patches == 576 and tiny_config.tokens_per_image == 144


def test_preset_parameter_counts_match_the_paper():
    nine = parameter_report(LongLLaVAConfig.from_preset("9b"))
    # LongLLaVA-9B: Jamba with only expert 0 kept -> ~9.3 B in the LLM, + CLIP ViT-L/14-336.
    assert abs(nine["language_model"] / 1e9 - 9.3) < 0.15
    assert 0.30e9 < nine["vision_tower"] < 0.31e9
    assert nine["total"] == nine["active"]
    assert (nine["attention_layers"], nine["mamba_layers"], nine["moe_layers"]) == (4, 28, 0)
    a13b = parameter_report(LongLLaVAConfig.from_preset("a13b"))
    # LongLLaVA-A13B: ~52-53 B total, ~13 B active (16 experts, top-2, every other layer).
    assert 51e9 < a13b["total"] < 54e9
    assert 12e9 < a13b["active"] < 13.5e9
    assert a13b["moe_layers"] == 16


def test_placeholder_image_mismatch_names_both_numbers(tiny_model, tiny_config):
    ids = _image_ids(tiny_config, 2)
    with pytest.raises(ProtocolError, match=r"288 image placeholder tokens .*2 images.* 1 images were given"):
        tiny_model(input_ids=ids, pixel_values=torch.randn(1, 3, 336, 336))


@pytest.mark.compat
def test_save_load_round_trip_gives_identical_logits(tiny_model, tiny_checkpoint, tiny_config):
    loaded = LongLLaVAForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    ids = _image_ids(tiny_config, 2)
    pixels = torch.randn(2, 3, 336, 336)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids, pixel_values=pixels).logits,
                           tiny_model(input_ids=ids, pixel_values=pixels).logits)


@pytest.mark.compat
def test_generate_with_cache_equals_without_cache(tiny_model, tiny_config):
    ids = _image_ids(tiny_config, 2)
    pixels = torch.randn(2, 3, 336, 336)
    kwargs = dict(input_ids=ids, pixel_values=pixels, max_new_tokens=12, do_sample=False, min_new_tokens=12)
    with torch.no_grad():
        cached = tiny_model.generate(**kwargs, use_cache=True)
        uncached = tiny_model.generate(**kwargs, use_cache=False)
    assert cached.shape[1] == ids.shape[1] + 12
    assert torch.equal(cached, uncached)


@pytest.mark.compat
def test_cache_holds_mamba_and_attention_state(tiny_model, tiny_config):
    ids = _image_ids(tiny_config, 1)
    with torch.no_grad():
        out = tiny_model(input_ids=ids, pixel_values=torch.randn(1, 3, 336, 336), use_cache=True)
    cache = out.past_key_values
    attention_layer = tiny_config.text_config.layers_block_type.index("attention")
    assert cache.get_seq_length(attention_layer) == ids.shape[1]
    # transformers 5.23 added the accessor; before it the layer held the list itself
    state = (cache.get_recurrent_state(0, state_idx=0) if hasattr(cache, "get_recurrent_state")
             else cache.layers[0].recurrent_states[0])
    inner = tiny_config.text_config.mamba_expand * tiny_config.text_config.hidden_size
    assert state.shape == (1, inner, tiny_config.text_config.mamba_d_state)


def test_router_aux_loss_on_single_expert_model_does_not_crash():
    cfg = LongLLaVAConfig.from_preset("tiny")
    cfg.text_config.num_experts = 1
    cfg.text_config.num_experts_per_tok = 1
    model = LongLLaVAForConditionalGeneration(cfg)
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    out = model(input_ids=ids, labels=ids, output_router_logits=True)
    assert torch.isfinite(out.loss)


def test_router_aux_loss_is_added_for_moe(tiny_model):
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10]])
    plain = tiny_model(input_ids=ids, labels=ids, output_router_logits=False)
    with_aux = tiny_model(input_ids=ids, labels=ids, output_router_logits=True)
    assert with_aux.aux_loss is not None and with_aux.aux_loss > 0
    expected = plain.loss + tiny_model.config.text_config.router_aux_loss_coef * with_aux.aux_loss
    assert torch.allclose(with_aux.loss, expected, atol=1e-5)


@pytest.mark.compat
def test_gradient_checkpointing_keeps_packed_mamba_resets():
    torch.manual_seed(0)
    model = LongLLaVAForConditionalGeneration(LongLLaVAConfig.from_preset("tiny")).train()
    ids = torch.randint(3, 500, (1, 40))
    reset = torch.zeros(1, 40, dtype=torch.bool)
    reset[0, [0, 17]] = True  # two packed samples: state restarts at token 17

    def grads():
        model.zero_grad()
        model(input_ids=ids, labels=ids, reset_mask=reset).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.enable_activation_checkpointing()
    try:
        checkpointed = grads()
    finally:
        model.disable_activation_checkpointing()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-5), name
