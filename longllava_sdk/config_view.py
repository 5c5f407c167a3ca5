"""A torch-free view of a LongLLaVA config: the presets, a model folder's ``config.json``, and their sizes.

:class:`~longllava_sdk.config.LongLLaVAConfig` is a transformers ``PretrainedConfig`` (importing
it loads torch and transformers, ~5 s). What only needs the config's numbers -- the memory
planner (``longllava-sdk plan``), the context limit, parameter counts -- reads them from a
:class:`ConfigView` instead: the preset's dicts (:data:`PRESETS`, which ``LongLLaVAConfig``
builds from too) or ``config.json`` read as JSON, with the defaults of the keys a hand-written
file may leave out. :func:`validate_multimodal` is the one check of the multimodal settings;
``LongLLaVAConfig`` runs it too.

:func:`parameter_shapes` lists every parameter of the model a config describes, by the name
and shape ``LongLLaVAForConditionalGeneration`` gives it, without building anything
(``tests/test_config_view.py`` checks it against the model built on the ``meta`` device, name
by name, for every preset and a model folder's config).
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError, unknown_name_error
from .prefill_sizes import DEFAULT_PREFILL_CHUNK, DEFAULT_PREFILL_THRESHOLD

__all__ = ["PRESETS", "ConfigView", "PatchGeometry", "TextView", "VisionView", "preset_dicts", "validate_multimodal",
           "parameter_shapes", "SKIPPED", "skipped_module",
           "POOLING_MODES", "PROJECTOR_TYPES", "MULTIMODAL_DEFAULTS", "JAMBA_DEFAULTS", "CLIP_VISION_DEFAULTS"]

POOLING_MODES = ("2d", "1d", "none")
PROJECTOR_TYPES = ("mlp2x_gelu",)

# CLIP ViT-L/14 at 336 px (openai/clip-vit-large-patch14-336), the paper's vision tower.
_CLIP_L14_336 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)
# Jamba-v0.1 dimensions as released with LongLLaVA (llava/model/language_model/Jamba/config.json).
_JAMBA_V01 = dict(
    vocab_size=65536, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, attn_layer_period=8, attn_layer_offset=4,
    expert_layer_period=2, expert_layer_offset=1, num_experts=16, num_experts_per_tok=2,
    mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=256, mamba_conv_bias=True,
    mamba_proj_bias=False, rms_norm_eps=1e-6, tie_word_embeddings=False, router_aux_loss_coef=0.001,
    pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=262144,
)

#: preset name -> ``vision`` (CLIPVisionConfig kwargs), ``text`` (JambaConfig kwargs),
#: ``multimodal`` (LongLLaVAConfig kwargs); see :mod:`longllava_sdk.config` for the table.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    image_size=336, patch_size=14, projection_dim=32, hidden_act="quick_gelu"),
        text=dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
                  num_attention_heads=4, num_key_value_heads=2, attn_layer_period=8, attn_layer_offset=4,
                  expert_layer_period=2, expert_layer_offset=1, num_experts=4, num_experts_per_tok=2,
                  mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=8,
                  mamba_conv_bias=True, mamba_proj_bias=False, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  max_position_embeddings=262144),
        # The real models' context (docs/long_context.md#context-limits): Jamba has no
        # positional embeddings and the tiny model keeps their layer pattern, so 1000 images
        # x 144 tokens fit as they do for 9B / A13B, and long-context paths run on the CPU demo.
        multimodal=dict(max_context=262144),
    ),
    "9b": dict(vision=_CLIP_L14_336, text=dict(_JAMBA_V01, num_experts=1, num_experts_per_tok=1),
               multimodal=dict(max_context=262144)),
    "a13b": dict(vision=_CLIP_L14_336, text=dict(_JAMBA_V01), multimodal=dict(max_context=262144)),
}
#: Budgets of what :meth:`ConfigView.from_folder` reads and :func:`parameter_shapes` lists (a few
#: dozen entries per layer): far beyond any released model (Jamba 1.5 Large: 72 layers, CLIP: 48).
MAX_CONFIG_BYTES = 4 << 20
MAX_LAYERS = 4096
_ALIASES = {"longllava9b": "9b", "a13b": "a13b", "53ba13b": "a13b", "longllavaa13b": "a13b"}

#: ``LongLLaVAConfig``'s defaults (its signature uses these; ``vision_config`` defaults to CLIP L/14-336).
MULTIMODAL_DEFAULTS: dict[str, Any] = dict(
    vision_feature_layer=-2, pooling="2d", tokens_per_image=144, projector_type="mlp2x_gelu",
    vision_chunk_size=16, max_context=262144, chunked_prefill_size=DEFAULT_PREFILL_CHUNK,
    chunked_prefill_threshold=DEFAULT_PREFILL_THRESHOLD,
)
#: ``transformers.JambaConfig()``'s defaults of the fields read here (a test compares them with
#: the installed transformers', so a change there fails instead of miscounting).
JAMBA_DEFAULTS: dict[str, Any] = dict(
    vocab_size=65536, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, attn_layer_period=8, attn_layer_offset=4, expert_layer_period=2,
    expert_layer_offset=1, num_experts=16, num_experts_per_tok=2, mamba_d_state=16, mamba_d_conv=4,
    mamba_expand=2, mamba_dt_rank="auto", mamba_conv_bias=True, mamba_proj_bias=False,
    tie_word_embeddings=False, max_position_embeddings=262144,
)
#: ``transformers.CLIPVisionConfig()``'s defaults of the fields read here (tested as above).
CLIP_VISION_DEFAULTS: dict[str, Any] = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, num_channels=3,
    image_size=224, patch_size=32,
)


def preset_dicts(name: str) -> dict[str, dict[str, Any]]:
    """A copy of the preset ``name``'s ``vision`` / ``text`` / ``multimodal`` dicts (aliases accepted)."""
    key = name.lower().replace("-", "")
    key = _ALIASES.get(key, key)
    if key not in PRESETS:
        raise unknown_name_error("preset", name, PRESETS)
    return copy.deepcopy(PRESETS[key])


def _fields(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` with the values ``values`` sets (a ``null`` in a config.json keeps the default)."""
    return {key: default if values.get(key) is None else values[key] for key, default in defaults.items()}


@dataclass(frozen=True)
class VisionView:
    """The CLIP vision tower's sizes."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_channels: int
    image_size: int
    patch_size: int


@dataclass(frozen=True)
class TextView:
    """The Jamba language model's sizes, with its layer pattern."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    attn_layer_period: int
    attn_layer_offset: int
    expert_layer_period: int
    expert_layer_offset: int
    num_experts: int
    num_experts_per_tok: int
    mamba_d_state: int
    mamba_d_conv: int
    mamba_expand: int
    mamba_dt_rank: int
    mamba_conv_bias: bool
    mamba_proj_bias: bool
    tie_word_embeddings: bool
    max_position_embeddings: int
    head_dim: int  # per attention head (``hidden_size // num_attention_heads`` unless the config says)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TextView":
        known = _fields(values, JAMBA_DEFAULTS)
        if values.get("num_key_value_heads", 0) is None:  # as JambaConfig: one KV head per head
            known["num_key_value_heads"] = known["num_attention_heads"]
        if known["mamba_dt_rank"] == "auto":  # as JambaConfig resolves it
            known["mamba_dt_rank"] = math.ceil(known["hidden_size"] / 16)
        for kind in ("attn", "expert"):  # as JambaConfig.validate_architecture
            if not 0 <= known[f"{kind}_layer_offset"] < known[f"{kind}_layer_period"]:
                raise ConfigError(f"text_config.{kind}_layer_offset ({known[f'{kind}_layer_offset']}) must be in "
                                  f"0..{kind}_layer_period - 1 ({known[f'{kind}_layer_period']})")
        head_dim = values.get("head_dim") or known["hidden_size"] // known["num_attention_heads"]
        return cls(**known, head_dim=int(head_dim))

    @property
    def layers_block_type(self) -> list[str]:
        """``"attention"`` or ``"mamba"`` per layer (as ``JambaConfig.layers_block_type``)."""
        return ["attention" if i % self.attn_layer_period == self.attn_layer_offset else "mamba"
                for i in range(self.num_hidden_layers)]

    @property
    def layers_num_experts(self) -> list[int]:
        """Experts per layer's feed-forward (1: a dense MLP), as ``JambaConfig.layers_num_experts``."""
        return [self.num_experts if i % self.expert_layer_period == self.expert_layer_offset else 1
                for i in range(self.num_hidden_layers)]

    def all_attention(self) -> "TextView":
        """This config with every layer an attention layer (same width, heads, KV heads, FFN pattern)."""
        return replace(self, attn_layer_period=1, attn_layer_offset=0)


class PatchGeometry:
    """The CLIP patch grid of a config with a ``vision_config`` (shared by the view and ``LongLLaVAConfig``)."""

    @property
    def patch_grid(self) -> int:
        """Patches per side of the CLIP grid (24 for 336 px / patch 14)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def num_patches(self) -> int:
        return self.patch_grid**2


@dataclass(frozen=True)
class ConfigView(PatchGeometry):
    """The numbers of a :class:`~longllava_sdk.config.LongLLaVAConfig`, read without torch or transformers.

    Attribute names are ``LongLLaVAConfig``'s, so code that reads sizes takes either.
    """

    vision_config: VisionView
    text_config: TextView
    vision_feature_layer: int = MULTIMODAL_DEFAULTS["vision_feature_layer"]
    pooling: str = MULTIMODAL_DEFAULTS["pooling"]
    tokens_per_image: int = MULTIMODAL_DEFAULTS["tokens_per_image"]
    projector_type: str = MULTIMODAL_DEFAULTS["projector_type"]
    vision_chunk_size: int = MULTIMODAL_DEFAULTS["vision_chunk_size"]
    max_context: int = MULTIMODAL_DEFAULTS["max_context"]
    chunked_prefill_size: int = MULTIMODAL_DEFAULTS["chunked_prefill_size"]
    chunked_prefill_threshold: int = MULTIMODAL_DEFAULTS["chunked_prefill_threshold"]
    source: str = field(default="", compare=False)  # what it was read from, for messages

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "") -> "ConfigView":
        """From ``LongLLaVAConfig.to_dict()`` / ``config.json``'s content (missing keys take the defaults)."""
        vision = values.get("vision_config")
        vision = _CLIP_L14_336 if vision is None else vision  # LongLLaVAConfig's default tower
        view = cls(vision_config=VisionView(**_fields(vision, CLIP_VISION_DEFAULTS)),
                   text_config=TextView.from_dict(values.get("text_config") or {}),
                   **_fields(values, MULTIMODAL_DEFAULTS), source=source)
        validate_multimodal(view)
        for part in ("vision_config", "text_config"):
            layers = getattr(view, part).num_hidden_layers
            if not 0 <= layers <= MAX_LAYERS:
                raise ConfigError(f"{part}.num_hidden_layers must be in 0..{MAX_LAYERS}, got {layers}")
        return view

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ConfigView":
        """The preset ``name`` (``tiny``, ``9b``, ``a13b``); ``overrides`` set top-level fields."""
        preset = preset_dicts(name)
        return cls.from_dict(dict(preset["multimodal"], **overrides, vision_config=preset["vision"],
                                  text_config=preset["text"]), source=f"preset {name}")

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str]) -> "ConfigView":
        """The ``config.json`` of a model folder (from init-model, finetune, merge or convert-official)."""
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise ConfigError(f"{folder}: no config.json (expected a model folder from init-model, finetune or merge)")
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {size:,} bytes, more than a config.json holds ({MAX_CONFIG_BYTES:,} at most)")
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable JSON config ({exc})") from None
        if not isinstance(values, dict) or values.get("model_type", "longllava") != "longllava":
            raise ConfigError(f"{path}: not a LongLLaVA config (model_type {values.get('model_type')!r})"
                              if isinstance(values, dict) else f"{path}: not a JSON object")
        try:
            return cls.from_dict(values, source=str(path))
        except (AttributeError, TypeError, ValueError, ZeroDivisionError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{path}: {exc}") from None

    @classmethod
    def of(cls, config: Any) -> "ConfigView":
        """``config`` as a view: a view itself, or a ``LongLLaVAConfig`` (through its ``to_dict()``)."""
        return config if isinstance(config, cls) else cls.from_dict(config.to_dict())

    def with_(self, **changes: Any) -> "ConfigView":
        """A copy with top-level fields changed (``tokens_per_image=64``)."""
        return replace(self, **changes)


def validate_multimodal(config: Any) -> None:
    """Raise :class:`ConfigError` if the multimodal settings of ``config`` (a view or a ``LongLLaVAConfig``) cannot work together."""
    grid = config.vision_config.image_size // config.vision_config.patch_size
    patches = grid * grid
    if config.pooling not in POOLING_MODES:
        raise ConfigError(f"pooling must be one of {POOLING_MODES}, got {config.pooling!r}")
    if config.projector_type not in PROJECTOR_TYPES:
        raise ConfigError(f"projector_type must be one of {PROJECTOR_TYPES}, got {config.projector_type!r}")
    if config.pooling == "none" and config.tokens_per_image != patches:
        raise ConfigError(f"pooling='none' keeps all {patches} patches, but tokens_per_image={config.tokens_per_image}")
    if config.pooling == "2d":
        side = round(config.tokens_per_image**0.5)
        if side * side != config.tokens_per_image or side > grid:
            raise ConfigError(
                f"pooling='2d' needs tokens_per_image to be a square <= {patches}, got {config.tokens_per_image}"
            )
    if config.pooling == "1d" and not 0 < config.tokens_per_image <= patches:
        raise ConfigError(f"pooling='1d' needs 0 < tokens_per_image <= {patches}")
    # hidden_states holds the embedding output plus one entry per layer.
    states = config.vision_config.num_hidden_layers + 1
    if not -states <= config.vision_feature_layer < states:
        raise ConfigError(f"vision_feature_layer {config.vision_feature_layer} outside CLIP's {states} hidden states")
    if not 0 < int(config.max_context) <= int(config.text_config.max_position_embeddings):
        raise ConfigError(
            f"max_context must be in 1..text_config.max_position_embeddings "
            f"({config.text_config.max_position_embeddings}), got {config.max_context}"
        )
    if int(config.chunked_prefill_size) < 1:
        raise ConfigError(f"chunked_prefill_size must be >= 1, got {config.chunked_prefill_size}")
    if not isinstance(config.text_config.mamba_dt_rank, int):
        raise ConfigError("text_config.mamba_dt_rank must be an explicit int ('auto' changes the rank)")


# -----------------------------------------------------------------------------------------
# Parameters, counted from the config
# -----------------------------------------------------------------------------------------

#: Name parts of modules int8 leaves in their dtype (:mod:`longllava_sdk.quantization`).
SKIPPED = ("mamba", "vision_tower", "projector", "lm_head", "embed_tokens")


def skipped_module(name: str) -> bool:
    """Whether the module called ``name`` stays in its dtype under int8."""
    return any(part in name.split(".") or part in name for part in SKIPPED)


def _linear(shapes: dict[str, tuple[int, ...]], linears: set[str], name: str, out: int, inp: int, bias: bool) -> None:
    shapes[f"{name}.weight"] = (out, inp)
    linears.add(f"{name}.weight")
    if bias:
        shapes[f"{name}.bias"] = (out,)


def _vision_shapes(v: VisionView, shapes: dict[str, tuple[int, ...]], linears: set[str]) -> None:
    """``CLIPVisionModel``: patch + position embeddings, pre / post layer norms, ``L`` encoder layers."""
    h, p = v.hidden_size, "vision_tower"
    positions = (v.image_size // v.patch_size) ** 2 + 1  # patches + CLS
    shapes[f"{p}.embeddings.class_embedding"] = (h,)
    shapes[f"{p}.embeddings.patch_embedding.weight"] = (h, v.num_channels, v.patch_size, v.patch_size)
    shapes[f"{p}.embeddings.position_embedding.weight"] = (positions, h)
    shapes[f"{p}.pre_layrnorm.weight"] = shapes[f"{p}.pre_layrnorm.bias"] = (h,)
    for i in range(v.num_hidden_layers):
        layer = f"{p}.encoder.layers.{i}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            _linear(shapes, linears, f"{layer}.self_attn.{proj}", h, h, True)
        shapes[f"{layer}.layer_norm1.weight"] = shapes[f"{layer}.layer_norm1.bias"] = (h,)
        _linear(shapes, linears, f"{layer}.mlp.fc1", v.intermediate_size, h, True)
        _linear(shapes, linears, f"{layer}.mlp.fc2", h, v.intermediate_size, True)
        shapes[f"{layer}.layer_norm2.weight"] = shapes[f"{layer}.layer_norm2.bias"] = (h,)
    shapes[f"{p}.post_layernorm.weight"] = shapes[f"{p}.post_layernorm.bias"] = (h,)


def _language_shapes(t: TextView, prefix: str, shapes: dict[str, tuple[int, ...]], linears: set[str]) -> None:
    """``JambaForCausalLM``: embeddings, Mamba / attention mixers, dense MLP / MoE feed-forwards, norms, lm_head."""
    h, model = t.hidden_size, f"{prefix}model"
    inner, rank, state = t.mamba_expand * h, t.mamba_dt_rank, t.mamba_d_state
    shapes[f"{model}.embed_tokens.weight"] = (t.vocab_size, h)
    for i, (kind, experts) in enumerate(zip(t.layers_block_type, t.layers_num_experts)):
        layer = f"{model}.layers.{i}"
        if kind == "mamba":
            m = f"{layer}.mamba"
            shapes[f"{m}.A_log"] = (inner, state)
            shapes[f"{m}.D"] = (inner,)
            shapes[f"{m}.conv1d.weight"] = (inner, 1, t.mamba_d_conv)  # depthwise
            if t.mamba_conv_bias:
                shapes[f"{m}.conv1d.bias"] = (inner,)
            _linear(shapes, linears, f"{m}.in_proj", 2 * inner, h, t.mamba_proj_bias)
            _linear(shapes, linears, f"{m}.x_proj", rank + 2 * state, inner, False)
            _linear(shapes, linears, f"{m}.dt_proj", inner, rank, True)
            _linear(shapes, linears, f"{m}.out_proj", h, inner, t.mamba_proj_bias)
            shapes[f"{m}.dt_layernorm.weight"] = (rank,)
            shapes[f"{m}.b_layernorm.weight"] = shapes[f"{m}.c_layernorm.weight"] = (state,)
        else:
            a = f"{layer}.self_attn"
            _linear(shapes, linears, f"{a}.q_proj", t.num_attention_heads * t.head_dim, h, False)
            _linear(shapes, linears, f"{a}.k_proj", t.num_key_value_heads * t.head_dim, h, False)
            _linear(shapes, linears, f"{a}.v_proj", t.num_key_value_heads * t.head_dim, h, False)
            _linear(shapes, linears, f"{a}.o_proj", h, t.num_attention_heads * t.head_dim, False)
        f = f"{layer}.feed_forward"
        if experts > 1:
            # the router is a bare parameter and the experts fused 3-D tensors (no nn.Linear)
            shapes[f"{f}.router.weight"] = (experts, h)
            shapes[f"{f}.experts.gate_up_proj"] = (experts, 2 * t.intermediate_size, h)
            shapes[f"{f}.experts.down_proj"] = (experts, h, t.intermediate_size)
        else:
            _linear(shapes, linears, f"{f}.gate_proj", t.intermediate_size, h, False)
            _linear(shapes, linears, f"{f}.up_proj", t.intermediate_size, h, False)
            _linear(shapes, linears, f"{f}.down_proj", h, t.intermediate_size, False)
        shapes[f"{layer}.input_layernorm.weight"] = shapes[f"{layer}.pre_ff_layernorm.weight"] = (h,)
    shapes[f"{model}.final_layernorm.weight"] = (h,)
    if not t.tie_word_embeddings:  # tied: lm_head is embed_tokens, counted once (under its name)
        _linear(shapes, linears, f"{prefix}lm_head", t.vocab_size, h, False)


def parameter_shapes(config: ConfigView, *, language_model_only: bool = False,
                     text: TextView | None = None) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """Every parameter's name and shape, and the names of the ``nn.Linear`` weights among them.

    Args:
        config: the model's config.
        language_model_only: only ``language_model.*`` (what a bare ``JambaForCausalLM`` holds).
        text: the language model's sizes instead of ``config.text_config`` (the all-attention twin).

    Returns:
        ``(shapes, linear_weights)``: names as ``LongLLaVAForConditionalGeneration.named_parameters()``
        gives them (tied weights once), and the ``.weight`` names of its ``nn.Linear`` layers.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    linears: set[str] = set()
    text = text or config.text_config
    if not language_model_only:
        _vision_shapes(config.vision_config, shapes, linears)
        _linear(shapes, linears, "projector.linear_1", text.hidden_size, config.vision_config.hidden_size, True)
        _linear(shapes, linears, "projector.linear_2", text.hidden_size, text.hidden_size, True)
    _language_shapes(text, "language_model.", shapes, linears)
    return shapes, linears

