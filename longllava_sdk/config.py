"""``LongLLaVAConfig``: CLIP vision config + Jamba text config + the multimodal settings.

Every setting that changes the model's behaviour is saved in ``config.json`` (the official
code forgets the pooling mode, so a reloaded model pooled differently from the trained one).

Presets (:meth:`LongLLaVAConfig.from_preset`):

======  ===========================================================================
tiny    a few-MB model for tests and the CPU demo; keeps the real structure: attention
        at layer offset 4 of every 8, MoE every other layer (4 experts, top-2), GQA,
        CLIP at 336 px / patch 14 (576 patches -> 144 tokens).
9b      LongLLaVA-9B: Jamba dims, 32 layers, hidden 4096, 1 expert (dense MLP
        everywhere), vocab 65536, CLIP ViT-L/14-336.
a13b    LongLLaVA-A13B: as 9b with 16 experts, top-2, on every other layer
        (~53B total, ~13B active parameters).
======  ===========================================================================
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from transformers import CLIPVisionConfig, JambaConfig, PretrainedConfig

from .errors import ConfigError, unknown_name_error
from .hf_auto import AUTO_MAP, register_auto_class, write_auto_files

# accelerate imports DeepSpeed (when installed) inside every save_pretrained, and DeepSpeed then
# warns "Setting accelerator to CPU ... unable to detect it" on a machine without a GPU: advice
# a CPU user cannot act on. Naming the accelerator (DeepSpeed's documented override) keeps it
# quiet and changes nothing else; a GPU machine or a user's own setting is left alone. Here
# because every model the SDK builds, loads or saves imports its config first.
if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
    os.environ["DS_ACCELERATOR"] = "cpu"

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


class LongLLaVAConfig(PretrainedConfig):
    """Configuration of :class:`~longllava_sdk.LongLLaVAForConditionalGeneration`.

    Args:
        vision_config: CLIP vision tower settings (dict or ``CLIPVisionConfig``; default CLIP
            ViT-L/14 at 336 px, the paper's).
        text_config: Jamba LLM settings (dict or ``JambaConfig``).
        vision_feature_layer: hidden-state index taken from CLIP (-2: the penultimate layer,
            as in LLaVA); the CLS token is always dropped.
        pooling: ``"2d"`` (bilinear to a ``sqrt(tokens_per_image)`` square grid, the paper's
            choice), ``"1d"`` (pool along the flattened patch sequence) or ``"none"``.
        tokens_per_image: tokens each image occupies in the LLM input (144 = 12 x 12).
        projector_type: ``"mlp2x_gelu"`` (Linear, GELU, Linear).
        image_token_id: id of the ``<image>`` placeholder; may lie outside the LLM vocabulary
            (its embedding is never looked up, image features are written there).
        vision_chunk_size: images encoded by CLIP at once (bounds activation memory).
        max_context: the longest input the model supports, in tokens (images x
            ``tokens_per_image`` + text); longer inputs are refused with ``ProtocolError``
            (:func:`longllava_sdk.context_limit.check_context`) and adapters' ``max_images``
            are sized from it. At most ``text_config.max_position_embeddings``.
        chunked_prefill_size: tokens per chunk of the SDK's chunked prefill (``generate`` /
            ``prefill``), an upper bound: late chunks of very long prompts shrink to keep the
            attention mask small (``chunked_prefill.MASK_BUDGET``). (Not named ``prefill_chunk_size``:
            transformers copies a model config's attribute of that name into its generation
            config and would then run its own chunking, which cannot split raw images.)
        chunked_prefill_threshold: prompts longer than this are prefilled in chunks by default.
    """

    model_type = "longllava"
    sub_configs = {"vision_config": CLIPVisionConfig, "text_config": JambaConfig}

    def __init__(
        self,
        vision_config: dict[str, Any] | CLIPVisionConfig | None = None,
        text_config: dict[str, Any] | JambaConfig | None = None,
        vision_feature_layer: int = -2,
        pooling: str = "2d",
        tokens_per_image: int = 144,
        projector_type: str = "mlp2x_gelu",
        image_token_id: int | None = None,
        vision_chunk_size: int = 16,
        max_context: int = 262144,
        chunked_prefill_size: int = 2048,
        chunked_prefill_threshold: int = 8192,
        **kwargs: Any,
    ) -> None:
        if vision_config is None:
            # The paper's tower. (transformers builds ``LongLLaVAConfig()`` with no arguments to
            # find default values, so the defaults must form a valid config.)
            vision_config = CLIPVisionConfig(**_CLIP_L14_336)
        elif isinstance(vision_config, dict):
            vision_config = CLIPVisionConfig(**vision_config)
        if isinstance(text_config, dict) or text_config is None:
            text_config = JambaConfig(**(text_config or {}))
        self.vision_config = vision_config
        self.text_config = text_config
        self.vision_feature_layer = vision_feature_layer
        self.pooling = pooling
        self.tokens_per_image = tokens_per_image
        self.projector_type = projector_type
        self.image_token_id = image_token_id if image_token_id is not None else text_config.vocab_size
        self.vision_chunk_size = vision_chunk_size
        self.max_context = max_context
        self.chunked_prefill_size = chunked_prefill_size
        self.chunked_prefill_threshold = chunked_prefill_threshold
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
        self.validate_multimodal()

    # -- derived geometry -------------------------------------------------------------------
    @property
    def patch_grid(self) -> int:
        """Patches per side of the CLIP grid (24 for 336 px / patch 14)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def num_patches(self) -> int:
        return self.patch_grid**2

    def validate_multimodal(self) -> None:
        """Raise :class:`ConfigError` if the multimodal settings cannot work together."""
        if self.pooling not in POOLING_MODES:
            raise ConfigError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        if self.projector_type not in PROJECTOR_TYPES:
            raise ConfigError(f"projector_type must be one of {PROJECTOR_TYPES}, got {self.projector_type!r}")
        if self.pooling == "none" and self.tokens_per_image != self.num_patches:
            raise ConfigError(
                f"pooling='none' keeps all {self.num_patches} patches, but tokens_per_image={self.tokens_per_image}"
            )
        if self.pooling == "2d":
            side = round(self.tokens_per_image**0.5)
            if side * side != self.tokens_per_image or side > self.patch_grid:
                raise ConfigError(
                    f"pooling='2d' needs tokens_per_image to be a square <= {self.num_patches}, "
                    f"got {self.tokens_per_image}"
                )
        if self.pooling == "1d" and not 0 < self.tokens_per_image <= self.num_patches:
            raise ConfigError(f"pooling='1d' needs 0 < tokens_per_image <= {self.num_patches}")
        # hidden_states holds the embedding output plus one entry per layer.
        states = self.vision_config.num_hidden_layers + 1
        if not -states <= self.vision_feature_layer < states:
            raise ConfigError(
                f"vision_feature_layer {self.vision_feature_layer} outside CLIP's {states} hidden states"
            )
        if not 0 < int(self.max_context) <= int(self.text_config.max_position_embeddings):
            raise ConfigError(
                f"max_context must be in 1..text_config.max_position_embeddings "
                f"({self.text_config.max_position_embeddings}), got {self.max_context}"
            )
        if int(self.chunked_prefill_size) < 1:
            raise ConfigError(f"chunked_prefill_size must be >= 1, got {self.chunked_prefill_size}")
        dt_rank = self.text_config.mamba_dt_rank
        if not isinstance(dt_rank, int):
            raise ConfigError("text_config.mamba_dt_rank must be an explicit int ('auto' changes the rank)")

    # -- persistence --------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike[str], push_to_hub: bool = False,
                        **kwargs: Any) -> None:
        """Write ``config.json`` with its ``auto_map``, the Auto-class module files and ``README.md``.

        Every model folder is written through here (``model.save_pretrained`` saves its
        config), so each loads with ``trust_remote_code=True`` in a process that never
        imported the SDK (:mod:`longllava_sdk.hf_auto`).
        """
        self.auto_map = dict(AUTO_MAP)
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        write_auto_files(save_directory, model_card=True)

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoConfig") -> None:
        """Nothing to do: :meth:`save_pretrained` writes the folder's ``auto_map`` and module files.

        transformers calls this on a class loaded with ``trust_remote_code=True``; its own
        version would make every later save copy the SDK's ``config.py`` into the folder.
        """

    # -- presets ------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "LongLLaVAConfig":
        """Build the config of a named preset (``tiny``, ``9b``, ``a13b``); ``overrides`` set top-level fields."""
        key = name.lower().replace("-", "")
        aliases = {"longllava9b": "9b", "a13b": "a13b", "53ba13b": "a13b", "longllavaa13b": "a13b"}
        key = aliases.get(key, key)
        if key not in PRESETS:
            raise unknown_name_error("preset", name, PRESETS)
        preset = copy.deepcopy(PRESETS[key])
        kwargs: dict[str, Any] = dict(preset["multimodal"])
        kwargs.update(overrides)
        return cls(vision_config=preset["vision"], text_config=preset["text"], **kwargs)


register_auto_class(LongLLaVAConfig)
