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

import os
from typing import Any

import torch
from transformers import CLIPVisionConfig, JambaConfig, PretrainedConfig

from .config_view import _CLIP_L14_336, PRESETS, PatchGeometry, preset_dicts  # noqa: F401 (PRESETS re-exported)
from .config_view import validate_multimodal as _validate_multimodal
from .hf_auto import AUTO_MAP, register_auto_class, write_auto_files

# accelerate imports DeepSpeed (when installed) inside every save_pretrained, and DeepSpeed then
# warns "Setting accelerator to CPU ... unable to detect it" on a machine without a GPU: advice
# a CPU user cannot act on. Naming the accelerator (DeepSpeed's documented override) keeps it
# quiet and changes nothing else; a GPU machine or a user's own setting is left alone. Here
# because every model the SDK builds, loads or saves imports its config first.
if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
    os.environ["DS_ACCELERATOR"] = "cpu"

# The presets' numbers live in the torch-free config_view (the planner reads them without transformers).


class LongLLaVAConfig(PatchGeometry, PretrainedConfig):
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

    def validate_multimodal(self) -> None:
        """Raise :class:`ConfigError` if the multimodal settings cannot work together."""
        _validate_multimodal(self)

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
        preset = preset_dicts(name)
        kwargs: dict[str, Any] = dict(preset["multimodal"])
        kwargs.update(overrides)
        return cls(vision_config=preset["vision"], text_config=preset["text"], **kwargs)


register_auto_class(LongLLaVAConfig)
