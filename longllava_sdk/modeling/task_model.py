"""``TaskModel``: a LongLLaVA backbone plus a task head, with one ``forward``.

What the trainer trains and what ``Pipeline.classify`` runs. ``generate`` heads take the
language model's loss on the answer tokens; every other head reads the decoder's final
hidden states ``(B, L, H)`` and takes its own loss. The MoE router load-balancing loss is
added when ``output_router_logits`` is on (``router_aux_loss_coef`` times it); it is skipped
for single-expert models like LongLLaVA-9B, where transformers would raise.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .sequence_boundaries import mamba_sequence_boundaries

__all__ = ["TaskModel", "unwrap_longllava"]


def unwrap_longllava(model: nn.Module) -> nn.Module:
    """The LongLLaVA model inside peft / DDP / DeepSpeed / TaskModel wrappers."""
    for module in model.modules():
        if hasattr(module, "embed_inputs") and hasattr(module, "get_image_features") and hasattr(module, "config"):
            return module
    raise ConfigError(f"{type(model).__name__} contains no LongLLaVA model")


class TaskModel(nn.Module):
    """LongLLaVA backbone + task head, with one ``forward`` for the Trainer.

    Args:
        backbone: a :class:`~longllava_sdk.LongLLaVAForConditionalGeneration`, or a peft
            model around one.
        head: a :class:`~longllava_sdk.heads.TaskHead` (``generate`` heads have no weights).
        output_router_logits: add the MoE load-balancing loss (no-op for single-expert models).
        router_aux_loss_coef: its weight (``None``: the model config's).

    ``forward`` batch keys (from :mod:`~longllava_sdk.training.collator`): ``input_ids``
    ``(B, L)``, ``attention_mask`` ``(B, L)`` (or the packed-mask mapping), ``labels``
    ``(B, L)``, ``pixel_values`` ``(N, 3, S, S)``, ``head_labels`` ``(B,)`` / ``(B, C)``,
    ``position_ids`` ``(B, L)``, ``reset_mask`` ``(B, L)`` (Mamba state resets of packed
    samples). Returns ``{"loss", "logits"?, "aux_loss"?}``; ``logits`` are the head's
    ``(B, num_labels)`` (not returned for ``generate``: ``(B, L, V)`` is too large to keep).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, *, output_router_logits: bool = False,
                 router_aux_loss_coef: float | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        lm = unwrap_longllava(backbone)
        object.__setattr__(self, "_longllava", lm)  # not a submodule: no duplicate parameters
        self.output_router_logits = bool(output_router_logits)
        if router_aux_loss_coef is not None:
            lm.language_model.router_aux_loss_coef = float(router_aux_loss_coef)
        self.router_aux_loss_coef = float(lm.language_model.router_aux_loss_coef)
        # generate: the Trainer passes num_items_in_batch so token losses average over the whole
        # accumulated batch; head losses are per-sample means.
        self.accepts_loss_kwargs = self.generates

    @property
    def longllava(self) -> nn.Module:
        """The unwrapped LongLLaVA model."""
        return self._longllava

    @property
    def config(self) -> Any:
        """The LongLLaVA config (DeepSpeed's "auto" buckets read ``text_config.hidden_size``)."""
        return self._longllava.config

    @property
    def generates(self) -> bool:
        """Whether the head answers in text through the language model (LM loss, no head logits)."""
        return bool(getattr(self.head, "generates", False))

    @property
    def uses_router_loss(self) -> bool:
        return self.output_router_logits and self._longllava.config.text_config.num_experts > 1

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | dict[str, Any] | None = None,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        head_labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        reset_mask: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> dict[str, torch.Tensor]:
        if self.uses_router_loss and isinstance(attention_mask, dict):
            raise ConfigError("the MoE router loss needs a (B, L) attention mask; it cannot be combined with packing "
                              "(set output_router_logits off or packing: false)")
        resets = mamba_sequence_boundaries(reset_mask) if reset_mask is not None else contextlib.nullcontext()
        common = dict(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                      position_ids=position_ids, use_cache=False, output_router_logits=self.uses_router_loss)
        with resets:
            if self.generates:
                extra = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
                out = self.backbone(**common, labels=labels, **extra)
                result = {"loss": out.loss}
                if out.aux_loss is not None:
                    result["aux_loss"] = out.aux_loss
                return result
            hidden, out = self._final_hidden_states(common)
        if isinstance(attention_mask, dict) or attention_mask is None:
            if isinstance(attention_mask, dict):
                raise ConfigError(f"a {self.head.name} head pools one sample per row; packing is not supported")
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        logits = self.head(hidden, attention_mask)
        result = {"logits": logits}
        if head_labels is not None:
            loss = self.head.loss(logits, head_labels)
            if out.aux_loss is not None:
                result["aux_loss"] = out.aux_loss
                loss = loss + self.router_aux_loss_coef * out.aux_loss.to(loss.device)
            result["loss"] = loss
        return result

    def _final_hidden_states(self, common: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        """Run the backbone (through its own forward, so wrappers' hooks apply) and capture the
        decoder's ``last_hidden_state`` ``(B, L, H)``; token logits only for the last position."""
        captured: dict[str, torch.Tensor] = {}

        def grab(module: nn.Module, args: Any, output: Any) -> None:
            captured["hidden"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

        handle = self._longllava.language_model.model.register_forward_hook(grab)
        try:
            out = self.backbone(**common, logits_to_keep=1)
        finally:
            handle.remove()
        return captured["hidden"], out
