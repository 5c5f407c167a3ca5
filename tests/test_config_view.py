"""The torch-free config view and the parameter shapes counted from it equal the real model's.

``longllava-sdk plan`` counts parameters from the config (:func:`parameter_shapes`) instead of
building the model; these tests build it on the ``meta`` device (no memory) and compare name
by name, shape by shape, so a change in transformers' Jamba / CLIP modules fails here.
"""

from __future__ import annotations

import inspect
import json
import math

import pytest
import torch
from transformers import CLIPVisionConfig, JambaConfig

from longllava_sdk.config import LongLLaVAConfig
from longllava_sdk.config_view import (
    CLIP_VISION_DEFAULTS,
    JAMBA_DEFAULTS,
    MULTIMODAL_DEFAULTS,
    ConfigView,
    parameter_shapes,
)
from longllava_sdk.errors import ConfigError
from longllava_sdk.model_folders import meta_model
from longllava_sdk.planner import architectures


def _meta_shapes(config: LongLLaVAConfig) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    model = meta_model(config)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    linears = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    return shapes, linears


@pytest.mark.parametrize("preset", ["tiny", "9b", "a13b"])
def test_parameter_shapes_are_the_meta_built_models(preset):
    config = LongLLaVAConfig.from_preset(preset)
    view = ConfigView.from_preset(preset)
    assert view == ConfigView.of(config)  # the preset read directly == the transformers config's numbers
    shapes, linears = parameter_shapes(view)
    meta, meta_linears = _meta_shapes(config)
    assert shapes == meta and linears == meta_linears
    assert sum(math.prod(s) for s in shapes.values()) == sum(p.numel() for p in meta_model(config).parameters())


def test_the_planners_counts_equal_the_meta_models_numel_by_category():
    """What the planner printed before it stopped building the model: the same numbers."""
    from longllava_sdk.planner import _category
    from longllava_sdk.quantization import skipped_module

    for preset in ("tiny", "a13b"):
        config = LongLLaVAConfig.from_preset(preset)
        hybrid, twin = architectures(ConfigView.from_preset(preset))
        model = meta_model(config)
        counts: dict[str, int] = {}
        for name, param in model.named_parameters():
            counts[_category(name)] = counts.get(_category(name), 0) + param.numel()
        quantizable = sum(m.weight.numel() for n, m in model.named_modules()
                          if isinstance(m, torch.nn.Linear) and n.startswith("language_model.") and not skipped_module(n))
        assert hybrid.parameters == counts and hybrid.quantizable == quantizable
        # the all-attention twin: JambaForCausalLM of the same text config with every layer attention
        from transformers import JambaForCausalLM

        values = {k: v for k, v in config.text_config.to_dict().items() if k not in ("layer_types", "layers_block_type")}
        with torch.device("meta"):
            lm = JambaForCausalLM(type(config.text_config)(**dict(values, attn_layer_period=1, attn_layer_offset=0)))
        twin_lm = sum(p.numel() for p in lm.parameters())
        assert sum(twin.parameters.values()) == twin_lm + counts["vision tower"] + counts["projector"]
        assert twin.attention_layers == config.text_config.num_hidden_layers and twin.mamba_layers == 0


def test_a_model_folders_config_json(tmp_path):
    """config.json as save_pretrained writes it, and a hand-written one leaning on defaults."""
    odd = LongLLaVAConfig(
        vision_config=dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
                           image_size=224, patch_size=16),
        text_config=dict(vocab_size=300, hidden_size=96, intermediate_size=40, num_hidden_layers=6,
                         num_attention_heads=6, num_key_value_heads=3, attn_layer_period=3, attn_layer_offset=1,
                         expert_layer_period=3, expert_layer_offset=2, num_experts=3, num_experts_per_tok=1,
                         mamba_d_state=8, mamba_d_conv=3, mamba_expand=3, mamba_dt_rank=5, mamba_proj_bias=True,
                         mamba_conv_bias=False, max_position_embeddings=4096),
        tokens_per_image=49, max_context=4096)
    odd.save_pretrained(tmp_path / "saved")
    view = ConfigView.from_folder(tmp_path / "saved")
    assert view == ConfigView.of(odd) and view.tokens_per_image == 49
    assert parameter_shapes(view) == _meta_shapes(odd)

    sparse = {"text_config": {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
                              "intermediate_size": 32, "vocab_size": 100, "num_experts": 2},
              "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                "num_attention_heads": 2, "image_size": 336, "patch_size": 14}}
    (tmp_path / "hand").mkdir()
    (tmp_path / "hand" / "config.json").write_text(json.dumps(sparse))
    view = ConfigView.from_folder(tmp_path / "hand")
    assert view.text_config.mamba_dt_rank == 4  # "auto": ceil(64 / 16), as JambaConfig resolves it
    assert parameter_shapes(view) == _meta_shapes(LongLLaVAConfig(**sparse))


def test_bad_config_json_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        ConfigView.from_folder(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable JSON config"):
        ConfigView.from_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="not a LongLLaVA config"):
        ConfigView.from_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"tokens_per_image": 150}))
    with pytest.raises(ConfigError, match="square"):
        ConfigView.from_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"attn_layer_offset": 9}}))
    with pytest.raises(ConfigError, match="attn_layer_offset"):
        ConfigView.from_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"num_hidden_layers": 10**9}}))
    with pytest.raises(ConfigError, match="num_hidden_layers must be in 0..4096"):  # refused before counting
        ConfigView.from_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"vision_config": [1, 2]}))
    with pytest.raises(ConfigError, match="config.json"):
        ConfigView.from_folder(tmp_path)
    (tmp_path / "config.json").write_text(" " * (5 << 20))
    with pytest.raises(ConfigError, match="more than a config.json holds"):
        ConfigView.from_folder(tmp_path)


def test_defaults_are_the_installed_transformers_and_the_configs():
    """The view fills missing keys with these: a change upstream must fail here, not miscount."""
    jamba, clip = JambaConfig(), CLIPVisionConfig()
    assert {k: getattr(jamba, k) for k in JAMBA_DEFAULTS if k != "mamba_dt_rank"} == {
        k: v for k, v in JAMBA_DEFAULTS.items() if k != "mamba_dt_rank"}
    assert jamba.mamba_dt_rank == math.ceil(jamba.hidden_size / 16)  # "auto", resolved
    assert {k: getattr(clip, k) for k in CLIP_VISION_DEFAULTS} == CLIP_VISION_DEFAULTS
    signature = inspect.signature(LongLLaVAConfig.__init__).parameters
    assert {k: signature[k].default for k in MULTIMODAL_DEFAULTS} == MULTIMODAL_DEFAULTS
    assert ConfigView.from_dict({}) == ConfigView.of(LongLLaVAConfig())


def test_the_planners_tag_count_is_the_sdk_tokenizers():
    from longllava_sdk.planner import _tokens_of
    from longllava_sdk.processing.protocol import FRAME_SEPARATOR, IMAGE, IMAGE_PLACEHOLDER, VIDEO_END, VIDEO_START
    from longllava_sdk.processing.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    for text in (IMAGE.replace(IMAGE_PLACEHOLDER, ""), VIDEO_START + VIDEO_END, FRAME_SEPARATOR, "What is shown?"):
        assert _tokens_of(text) == len(tokenizer(text, add_special_tokens=False)["input_ids"]) > 0

