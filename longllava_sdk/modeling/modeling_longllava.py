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
``language_model.lm_head``; its Mamba mixers are
:class:`~longllava_sdk.modeling.mamba_mixer.LongLLaVAMambaMixer`, same parameter names).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
from torch import nn
from transformers import CLIPVisionModel
from transformers import GenerationMixin, JambaForCausalLM, PreTrainedModel
from transformers.modeling_outputs import MoeCausalLMOutputWithPast

from ..config import LongLLaVAConfig
from ..context_limit import check_input_ids
from ..errors import ProtocolError
from ..hf_auto import register_auto_class
from . import cache_access
from .cache_access import JAMBA_CACHE_ARGUMENT
from .chunked_prefill import PrefillOutput, chunked_prefill, resolve_chunk_size
from .image_stream import ImageSource, TensorImages, as_image_source
from .mamba_mixer import swap_mamba_mixers
from .pooling import pool_image_features
from .projector import MultiModalProjector
from .sequence_boundaries import boundaries_checkpoint_context_fn, mamba_sequence_boundaries


def images_in_step(input_ids: torch.Tensor, step_length: int, tokens_per_image: int,
                   image_token_id: int) -> torch.Tensor | None:
    """Indices of the images whose placeholders lie in the last ``step_length`` columns.

    Generation feeds the model the prompt (or a chunk of it), then one token per step; a step
    needs exactly the images whose placeholder runs it contains, whatever the cache argument
    is called. Images are numbered row-major over the batch (as :meth:`embed_inputs` counts
    them).

    Args:
        input_ids: ``(B, L)`` the whole sequence so far.
        step_length: how many trailing columns this step feeds.

    Returns:
        ``(K,)`` long tensor of image indices, or ``None`` when the step holds no placeholder.

    Raises:
        ProtocolError: the step boundary cuts through an image's placeholder run.
    """
    is_image = input_ids == image_token_id
    start = input_ids.shape[1] - step_length
    inside = is_image[:, start:].sum(dim=1)
    if int(inside.sum()) == 0:
        return None
    before = is_image[:, :start].sum(dim=1)
    if bool(((before % tokens_per_image) != 0).any()) or bool(((inside % tokens_per_image) != 0).any()):
        raise ProtocolError(f"a generation step starting at column {start} cuts through an image's placeholders")
    per_row_total = (before + inside) // tokens_per_image
    row_offsets = torch.cumsum(per_row_total, 0) - per_row_total
    first = row_offsets + before // tokens_per_image
    return torch.cat([torch.arange(int(f), int(f) + int(n)) for f, n in zip(first, inside // tokens_per_image)])


def _keep_boundaries(checkpoint_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """``torch.utils.checkpoint`` kwargs that re-activate Mamba reset masks in the recompute."""
    kwargs: dict[str, Any] = {"use_reentrant": False}
    kwargs.update(checkpoint_kwargs or {})
    if not kwargs["use_reentrant"]:
        kwargs.setdefault("context_fn", boundaries_checkpoint_context_fn)
    return kwargs


class LongLLaVAPreTrainedModel(PreTrainedModel):
    config_class = LongLLaVAConfig
    config: LongLLaVAConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["JambaAttentionDecoderLayer", "JambaMambaDecoderLayer", "CLIPEncoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_sdpa = True
    _supports_flash_attn = True
    # Mamba layers carry recurrent state: no assisted decoding / cache cropping.
    _is_stateful = True

    @classmethod
    def register_for_auto_class(cls, auto_class: str | type = "AutoModel") -> None:
        """Nothing to do: the config's ``save_pretrained`` writes the ``auto_map`` and module files.

        transformers calls this on a class loaded with ``trust_remote_code=True``; its own
        version would make every later save copy the SDK's modeling sources into the folder.
        """

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
        self.vision_tower = CLIPVisionModel(config.vision_config)
        self.projector = MultiModalProjector(config.vision_config.hidden_size, config.text_config.hidden_size)
        self.language_model = JambaForCausalLM(config.text_config)
        # This instance's Mamba mixers become LongLLaVAMambaMixers (same parameters): the SDK's
        # kernels, chunked prefill from the cached state, fast decode. transformers is not touched.
        swap_mamba_mixers(self.language_model)
        self.post_init()

    # Activation (gradient) checkpointing that keeps packed-sample Mamba resets in the
    # recompute: the recomputation runs in the backward, outside the forward's ``reset_mask``
    # context; ``boundaries_checkpoint_context_fn`` re-activates the mask there (non-reentrant
    # only). transformers 5.23 renamed the entry point (``gradient_checkpointing_enable`` became
    # a deprecated alias of ``activation_checkpointing_enable``, which the Trainer calls); the
    # SDK overrides whichever one the installed version routes through, and
    # :meth:`enable_activation_checkpointing` calls it without a deprecation warning.
    if hasattr(PreTrainedModel, "activation_checkpointing_enable"):  # transformers >= 5.23

        def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict[str, Any] | None = None,
                                            every_n_layers: int = 1, offload: bool = False) -> None:
            super().activation_checkpointing_enable(_keep_boundaries(activation_checkpointing_kwargs),
                                                    every_n_layers=every_n_layers, offload=offload)

    else:  # transformers < 5.23

        def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None,
                                          every_n_layers: int = 1, offload: bool = False) -> None:
            super().gradient_checkpointing_enable(_keep_boundaries(gradient_checkpointing_kwargs),
                                                  every_n_layers=every_n_layers, offload=offload)

    if hasattr(PreTrainedModel, "is_activation_checkpointing"):  # transformers >= 5.23

        @property
        def is_gradient_checkpointing(self) -> bool:
            # peft still reads the pre-5.23 name, which now warns on every read.
            return self.is_activation_checkpointing

    def enable_activation_checkpointing(self, every_n_layers: int = 1, offload: bool = False,
                                        **checkpoint_kwargs: Any) -> None:
        """Turn activation checkpointing on (packed-sample boundaries kept), on any supported transformers."""
        enable = getattr(self, "activation_checkpointing_enable", None) or self.gradient_checkpointing_enable
        enable(checkpoint_kwargs or None, every_n_layers=every_n_layers, offload=offload)

    def disable_activation_checkpointing(self) -> None:
        """Turn activation checkpointing off again."""
        disable = getattr(self, "activation_checkpointing_disable", None) or self.gradient_checkpointing_disable
        disable()

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
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_router_logits: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        reset_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> MoeCausalLMOutputWithPast:
        """Run the model.

        Args:
            input_ids: ``(B, L)`` token ids with ``image_token_id`` placeholders.
            pixel_values: ``(N, 3, H, W)`` images for the placeholders in ``input_ids``.
            attention_mask: ``(B, L)`` 1 for real tokens, or a precomputed mask mapping.
            cache: the hybrid generation cache (attention KV + Mamba conv/SSM states);
                ``past_key_values`` is accepted as the older name. It is handed to the
                backbone under whichever name the installed transformers declares.
            labels: ``(B, L)`` targets, ``-100`` where no loss is taken.
            reset_mask: ``(B, L)`` bool, True at the first token of each packed sample: the
                Mamba layers restart their state there (see ``PackedCollator``).
            output_router_logits: add the MoE load-balancing loss; ignored (with no error)
                when no layer has more than one expert, like LongLLaVA-9B.

        Returns:
            ``MoeCausalLMOutputWithPast`` with ``logits`` ``(B, L, V)`` and ``loss``.
        """
        if cache is None:
            cache = past_key_values
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            # Before any image is encoded: the prompt (and what the cache holds) must fit the context.
            check_input_ids(self.config, input_ids, cached_tokens=cache_access.cached_tokens(cache))
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
        kwargs[JAMBA_CACHE_ARGUMENT] = cache
        boundaries = mamba_sequence_boundaries(reset_mask) if reset_mask is not None else contextlib.nullcontext()
        with boundaries:
            return self.language_model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                labels=labels,
                use_cache=use_cache,
                output_router_logits=output_router_logits,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor,
                                      pixel_values: torch.Tensor | ImageSource | None = None,
                                      **kwargs: Any) -> dict[str, Any]:
        """transformers' step preparation, plus the images of this step's placeholders.

        Decided by the step's tokens, never by which cache keyword is present: the prefill
        (or a prefill chunk) gets the images it holds placeholders for; decode steps, whose
        single new token is never a placeholder, get none (the caches hold what the images
        contributed). ``pixel_values`` may be a lazy :class:`ImageSource` (only the step's
        images are read from it).
        """
        inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        step_ids = inputs.get("input_ids")
        if pixel_values is None or step_ids is None:
            return inputs
        index = images_in_step(input_ids, step_ids.shape[1], self.config.tokens_per_image,
                               self.config.image_token_id)
        if index is None:
            return inputs
        if isinstance(pixel_values, torch.Tensor):
            inputs["pixel_values"] = pixel_values if len(index) == len(pixel_values) else pixel_values[index]
        else:
            inputs["pixel_values"] = pixel_values.take(index)
        return inputs

    # -- long prompts: chunked prefill, lazy images --------------------------------------------
    @torch.no_grad()
    def prefill(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        images: torch.Tensor | ImageSource | Any = None,
        *,
        chunk_size: int | None = None,
        image_count: int | None = None,
        cache: Any = None,
        return_all_logits: bool = False,
    ) -> PrefillOutput:
        """Build the generation cache for a prompt, ``chunk_size`` tokens at a time.

        Only the images whose placeholders lie in the current chunk are read from ``images``
        and encoded (see :mod:`~longllava_sdk.modeling.image_stream`), so neither all pixels
        nor all CLIP features of a 1000-image prompt exist at once.

        Args:
            input_ids: ``(B, L)`` prompt (left padded when ``B > 1``).
            attention_mask: ``(B, L)``; ``None``: no padding.
            images: ``(N, 3, H, W)`` tensor, :class:`ImageSource`, loader callable or
                iterable of pixel chunks in placeholder order.
            chunk_size: tokens per chunk; ``None``: ``config.chunked_prefill_size``.
            image_count: number of images for a callable / iterable ``images``.
            cache: a cache to continue; ``None`` starts a new one.
            return_all_logits: return ``(B, L, V)`` logits instead of the last position's.

        Returns:
            :class:`~longllava_sdk.modeling.chunked_prefill.PrefillOutput` (``cache``, ``logits``).
        """
        size = chunk_size if chunk_size is not None else self.config.chunked_prefill_size
        return chunked_prefill(self, input_ids, attention_mask, images, chunk_size=int(size),
                               image_count=image_count, cache=cache, return_all_logits=return_all_logits)

    def generate(self, inputs: torch.Tensor | None = None, generation_config: Any = None,
                 **kwargs: Any) -> Any:
        """transformers' ``generate``, with a chunked prefill for long prompts and lazy images.

        Besides every ``generate`` option this takes:

        * ``pixel_values``: a tensor as before, or any lazy image source accepted by
          :meth:`prefill` (``image_count=`` for a callable / iterable);
        * ``prefill_chunk_size``: tokens per prefill chunk; ``0`` prefills in one pass. By
          default, prompts longer than ``config.chunked_prefill_threshold`` are prefilled in
          chunks of ``config.chunked_prefill_size``. (A ``generation_config.prefill_chunk_size``
          is taken over the same way: transformers' own chunking cannot split raw images.)

        Chunked path: :meth:`prefill` builds the cache for all prompt columns but the last,
        then transformers' ``generate`` continues from that cache (its first step feeds the
        last column) and decodes as usual, so sampling, stopping criteria and streamers all
        apply unchanged. Greedy output equals the one-shot prefill's. Beam search,
        ``num_return_sequences > 1``, ``inputs_embeds`` or a caller's cache use transformers'
        one-shot prefill.
        """
        requested = kwargs.pop("prefill_chunk_size", None)
        config = generation_config if generation_config is not None else self.generation_config
        if getattr(config, "prefill_chunk_size", None) is not None:
            # transformers' own chunked prefill cannot split raw pixel_values: the SDK's takes over.
            generation_config = copy.deepcopy(config)
            requested = generation_config.prefill_chunk_size if requested is None else requested
            generation_config.prefill_chunk_size = None
        source = as_image_source(kwargs.pop("pixel_values", None), kwargs.pop("image_count", None))
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        chunk = None
        if isinstance(input_ids, torch.Tensor) and self._can_prefill_in_chunks(input_ids, generation_config, kwargs):
            check_input_ids(self.config, input_ids)
            chunk = resolve_chunk_size(self.config, input_ids.shape[1], requested)
        if chunk is None:
            if source is not None:
                kwargs["pixel_values"] = source.pixel_values if isinstance(source, TensorImages) else source
            return super().generate(inputs, generation_config, **kwargs)

        attention_mask = kwargs.get("attention_mask")
        split = input_ids.shape[1] - 1  # generate's own first step feeds the last column
        result = self.prefill(input_ids[:, :split], None if attention_mask is None else attention_mask[:, :split],
                              source, chunk_size=chunk)
        kwargs[JAMBA_CACHE_ARGUMENT] = result.cache
        return super().generate(inputs, generation_config, **kwargs)

    def _can_prefill_in_chunks(self, input_ids: torch.Tensor, generation_config: Any, kwargs: dict[str, Any]) -> bool:
        """Whether :meth:`generate` may build the cache with :meth:`prefill` first."""
        if input_ids.dim() != 2 or input_ids.shape[1] < 2:
            return False
        if kwargs.get("inputs_embeds") is not None or kwargs.get("use_cache") is False:
            return False
        if any(kwargs.get(name) is not None for name in ("cache", "past_key_values", "assistant_model")):
            return False
        config = generation_config if generation_config is not None else self.generation_config
        for name in ("num_beams", "num_return_sequences"):
            if int(kwargs.get(name) or getattr(config, name, 1) or 1) > 1:
                return False
        # The last column goes through generate's first step, which cannot take part of an image.
        return not bool((input_ids[:, -1] == self.config.image_token_id).any())


register_auto_class(LongLLaVAForConditionalGeneration)
