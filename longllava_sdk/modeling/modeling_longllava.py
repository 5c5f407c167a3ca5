"""``LongLLaVAForConditionalGeneration``: CLIP -> 2D pooling -> MLP projector -> Jamba.

Data flow for a batch with ``N`` images in total::

    pixel_values (N, 3, 336, 336)
      -> CLIPVisionModel, hidden state of layer ``vision_feature_layer`` (-2), CLS dropped
         (N, 576, C_vision)                       # encoded ``vision_chunk_size`` images at a time
      -> pool_image_features (2d bilinear)        (N, 144, C_vision)
      -> MultiModalProjector                      (N, 144, C_text)
      -> written, in order, over the ``image_token_id`` placeholder runs of
         input_ids (B, L)                         -> inputs_embeds (B, L, C_text)
      -> JambaForCausalLM (Mamba + attention hybrid, no positional embeddings)
         logits (B, L, V), loss

Submodules (and so checkpoint key prefixes): ``vision_tower`` (transformers
``CLIPVisionModel``), ``projector`` (``linear_1``, ``linear_2``), ``language_model``
(transformers ``JambaForCausalLM``: ``language_model.model.layers.{i}...``,
``language_model.lm_head``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, CLIPVisionModel
from transformers import GenerationMixin, JambaForCausalLM, PreTrainedModel
from transformers.modeling_outputs import MoeCausalLMOutputWithPast

from ..config import LongLLaVAConfig
from ..errors import ProtocolError
from .mamba_kernels import boundaries_checkpoint_context_fn, install_mamba_kernels, mamba_sequence_boundaries
from .pooling import pool_image_features
from .projector import MultiModalProjector


class LongLLaVAPreTrainedModel(PreTrainedModel):
    config_class = LongLLaVAConfig
    config: LongLLaVAConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["JambaAttentionDecoderLayer", "JambaMambaDecoderLayer", "CLIPEncoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = True
    # Mamba layers carry recurrent state: no assisted decoding / cache cropping.
    _is_stateful = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, MultiModalProjector):
            std = self.config.text_config.initializer_range
            for linear in (module.linear_1, module.linear_2):
                nn.init.normal_(linear.weight, mean=0.0, std=std)
                nn.init.zeros_(linear.bias)


class LongLLaVAForConditionalGeneration(LongLLaVAPreTrainedModel, GenerationMixin):
    """The LongLLaVA hybrid multimodal model (see module docstring for shapes)."""

    def __init__(self, config: LongLLaVAConfig) -> None:
        super().__init__(config)
        install_mamba_kernels()
        self.vision_tower = CLIPVisionModel(config.vision_config)
        self.projector = MultiModalProjector(config.vision_config.hidden_size, config.text_config.hidden_size)
        self.language_model = JambaForCausalLM(config.text_config)
        self.post_init()

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict[str, Any] | None = None,
                                        every_n_layers: int = 1, offload: bool = False) -> None:
        """Activation (gradient) checkpointing that keeps packed-sample Mamba resets in the recompute.

        The recomputation runs in the backward, outside the forward's ``reset_mask`` context;
        ``boundaries_checkpoint_context_fn`` re-activates the mask there (non-reentrant only).
        """
        kwargs: dict[str, Any] = {"use_reentrant": False}
        kwargs.update(activation_checkpointing_kwargs or {})
        if not kwargs["use_reentrant"]:
            kwargs.setdefault("context_fn", boundaries_checkpoint_context_fn)
        super().activation_checkpointing_enable(kwargs, every_n_layers=every_n_layers, offload=offload)

    # -- embeddings API used by generate / peft / resize ---------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self) -> nn.Module:
        return self.language_model.model

    # -- vision path -------------------------------------------------------------------------
    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode images to LLM-space tokens.

        Args:
            pixel_values: ``(N, 3, H, W)`` CLIP-normalised images.

        Returns:
            ``(N, tokens_per_image, text_hidden)`` in the language model's dtype.

        Images go through CLIP ``vision_chunk_size`` at a time, so encoding 1000 images
        never holds 1000 sets of CLIP activations. When the tower is frozen, no autograd
        graph is kept for it.
        """
        cfg = self.config
        tower_trainable = torch.is_grad_enabled() and any(p.requires_grad for p in self.vision_tower.parameters())
        tower_dtype = self.vision_tower.get_input_embeddings().weight.dtype
        feature_chunks = []
        for chunk in pixel_values.split(max(1, cfg.vision_chunk_size)):
            with torch.set_grad_enabled(tower_trainable):
                out = self.vision_tower(pixel_values=chunk.to(tower_dtype), output_hidden_states=True)
                patches = out.hidden_states[cfg.vision_feature_layer][:, 1:]  # drop CLS
            feature_chunks.append(pool_image_features(patches, cfg.pooling, cfg.tokens_per_image))
        features = torch.cat(feature_chunks, dim=0)
        projector_dtype = self.projector.linear_1.weight.dtype
        return self.projector(features.to(projector_dtype)).to(self.get_input_embeddings().weight.dtype)

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Text embeddings with image features written over the placeholder positions.

        Args:
            input_ids: ``(B, L)``; image ``k`` occupies the ``k``-th run of
                ``tokens_per_image`` placeholder ids, counted row-major across the batch.
            pixel_values: ``(N, 3, H, W)`` or ``None``.

        Returns:
            ``(B, L, text_hidden)``.
        """
        cfg = self.config
        image_mask = input_ids == cfg.image_token_id
        # The placeholder id may lie outside the vocabulary: never look it up.
        safe_ids = input_ids.masked_fill(image_mask, cfg.text_config.pad_token_id or 0)
        embeds = self.get_input_embeddings()(safe_ids)
        n_placeholders = int(image_mask.sum())
        n_images = 0 if pixel_values is None else pixel_values.shape[0]
        if n_placeholders != n_images * cfg.tokens_per_image:
            raise ProtocolError(
                f"the input has {n_placeholders} image placeholder tokens "
                f"({n_placeholders / cfg.tokens_per_image:g} images of {cfg.tokens_per_image} tokens) "
                f"but {n_images} images were given"
            )
        if n_images == 0:
            return embeds
        features = self.get_image_features(pixel_values)
        return embeds.masked_scatter(image_mask.unsqueeze(-1), features.reshape(-1, features.shape[-1]))

    # -- forward / generate --------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | dict[str, Any] | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_router_logits: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        reset_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> MoeCausalLMOutputWithPast:
        """Run the model.

        Args:
            input_ids: ``(B, L)`` token ids with ``image_token_id`` placeholders.
            pixel_values: ``(N, 3, H, W)`` images for the placeholders in ``input_ids``.
            attention_mask: ``(B, L)`` 1 for real tokens, or a precomputed mask mapping.
            labels: ``(B, L)`` targets, ``-100`` where no loss is taken.
            reset_mask: ``(B, L)`` bool, True at the first token of each packed sample: the
                Mamba layers restart their state there (see ``PackedCollator``).
            output_router_logits: add the MoE load-balancing loss; ignored (with no error)
                when no layer has more than one expert, like LongLLaVA-9B.

        Returns:
            ``MoeCausalLMOutputWithPast`` with ``logits`` ``(B, L, V)`` and ``loss``.
        """
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            inputs_embeds = self.embed_inputs(input_ids, pixel_values)
        elif pixel_values is not None:
            raise ValueError("pixel_values cannot be combined with inputs_embeds; embed images yourself")
        if output_router_logits is None:
            output_router_logits = self.config.text_config.output_router_logits
        if output_router_logits and self.config.text_config.num_experts <= 1:
            # transformers' load-balancing loss indexes router logits that single-expert
            # (dense) models never produce; there is nothing to balance anyway.
            output_router_logits = False
        # Packed samples: Mamba state restarts at each sample (an outer boundaries block, if any, stays in force
        # when no reset_mask is passed).
        boundaries = mamba_sequence_boundaries(reset_mask) if reset_mask is not None else contextlib.nullcontext()
        with boundaries:
            return self.language_model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                labels=labels,
                use_cache=use_cache,
                output_router_logits=output_router_logits,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                                      is_first_iteration: bool | None = False, **kwargs: Any) -> dict[str, Any]:
        inputs = super().prepare_inputs_for_generation(input_ids, is_first_iteration=is_first_iteration, **kwargs)
        # Images are consumed by the prefill; later steps feed one new token each and the
        # Mamba/attention caches already hold everything the images contributed.
        if is_first_iteration or kwargs.get("past_key_values") is None:
            inputs["pixel_values"] = pixel_values
        return inputs


AutoModel.register(LongLLaVAConfig, LongLLaVAForConditionalGeneration)
AutoModelForCausalLM.register(LongLLaVAConfig, LongLLaVAForConditionalGeneration)
AutoModelForImageTextToText.register(LongLLaVAConfig, LongLLaVAForConditionalGeneration)
