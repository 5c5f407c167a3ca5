"""Batching for training: padded batches, and packed batches whose samples cannot see each other.

:class:`TrainingCollator` (one sample per row)::

    input_ids       (B, L) long, right-padded with the pad id
    attention_mask  (B, L) long, 1 on real tokens
    labels          (B, L) long, -100 on prompts and padding
    pixel_values    (N, 3, S, S) float, every image of the batch in placeholder order
                    (row-major: row 0's images first); absent when the batch has none
    head_labels     (B,) long (classify) or (B, C) float (multilabel); absent for generate

:class:`PackedCollator` (several samples per row, from
:class:`~longllava_sdk.training.packing.PackedDataset`)::

    input_ids, labels, pixel_values   as above (right-padded to the longest pack)
    attention_mask  PackedAttentionMask (a dict):
                    {"full_attention": (B, 1, L, L) additive float mask,
                     "linear_attention": (B, L) long padding mask, or None without padding,
                     "padding_mask": (B, L) long, 1 on real tokens}
                    the mapping form transformers 5's JambaModel takes as is: attention
                    layers see a block-diagonal causal mask (a token attends to earlier
                    tokens of its own sample only), Mamba layers see the padding mask
    position_ids    (B, L) long, restarting at 0 at every sample (the usual packed-sequence
                    convention; Jamba uses no positional embeddings, so this is information)
    reset_mask      (B, L) bool, True at the first token of every sample; only with
                    ``reset_mamba_state=True``. The model's forward then runs its Mamba layers
                    inside ``mamba_sequence_boundaries(reset_mask)`` so no state crosses samples.

The 4-D mask works with the ``eager`` and ``sdpa`` attention implementations; it must have
the model's dtype (``mask_dtype``), which SDPA requires. It costs ``B * L * L`` elements, so
for very long packs prefer fewer, shorter packs.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import ProtocolError
from ..processing.processor import IGNORE_INDEX, EncodedSample, LongLLaVAProcessor
from .data import as_tensor_head_labels

__all__ = ["TrainingCollator", "PackedCollator", "PackedAttentionMask", "segment_ids_for", "block_causal_mask", "reset_mask_for",
           "position_ids_for"]


def _width(lengths: Sequence[int], multiple: int | None) -> int:
    width = max(lengths)
    if multiple:
        width = -(-width // multiple) * multiple
    return width


def _pad_rows(samples: Sequence[EncodedSample], width: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    for row, sample in enumerate(samples):  # right padding: training never appends tokens
        if len(sample.input_ids) != len(sample.labels):
            raise ProtocolError(f"sample {row}: {len(sample.input_ids)} input ids but {len(sample.labels)} labels")
        n = len(sample.input_ids)
        input_ids[row, :n] = torch.tensor(sample.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(sample.labels, dtype=torch.long)
    return input_ids, labels


def _pixel_values(processor: LongLLaVAProcessor, samples: Sequence[EncodedSample]) -> torch.Tensor | None:
    images = [image for sample in samples for image in sample.images]
    return processor.preprocess_images(images) if images else None


class TrainingCollator:
    """Pads a list of samples (one per row) into a training batch (see the module docstring).

    Args:
        processor: supplies the pad id and the image preprocessing.
        pad_to_multiple_of: round the batch length up (e.g. 8 for tensor cores).
    """

    def __init__(self, processor: LongLLaVAProcessor, *, pad_to_multiple_of: int | None = None) -> None:
        self.processor = processor
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, samples: Sequence[EncodedSample]) -> dict[str, Any]:
        if not samples:
            raise ProtocolError("cannot collate an empty batch")
        pad_id = self.processor.tokenizer.pad_token_id or 0
        width = _width([len(s.input_ids) for s in samples], self.pad_to_multiple_of)
        input_ids, labels = _pad_rows(samples, width, pad_id)
        attention_mask = torch.zeros_like(input_ids)
        for row, sample in enumerate(samples):
            attention_mask[row, : len(sample.input_ids)] = 1
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        pixel_values = _pixel_values(self.processor, samples)
        if pixel_values is not None:
            batch["pixel_values"] = pixel_values
        head_labels = as_tensor_head_labels([getattr(s, "head_labels", None) for s in samples])
        if head_labels is not None:
            batch["head_labels"] = head_labels
        return batch


def segment_ids_for(sample_lengths: Sequence[Sequence[int]], width: int) -> torch.Tensor:
    """``(B, width)`` long: index of the sample each token belongs to in its row; ``-1`` on padding."""
    segments = torch.full((len(sample_lengths), width), -1, dtype=torch.long)
    for row, lengths in enumerate(sample_lengths):
        start = 0
        for index, n in enumerate(lengths):
            segments[row, start:start + n] = index
            start += n
        if start > width:
            raise ProtocolError(f"row {row}: samples total {start} tokens but the batch is {width} wide")
    return segments


def block_causal_mask(segment_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive ``(B, 1, L, L)`` mask: 0 where query ``i`` may attend key ``j``, dtype-min elsewhere.

    ``i`` attends ``j`` when ``j <= i`` and both belong to the same sample. A padding token
    (segment ``-1``) attends only to itself, so no softmax row is empty (no NaN) and padding
    never reaches a real token.
    """
    length = segment_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    real = (segment_ids >= 0)[:, :, None]
    diagonal = torch.eye(length, dtype=torch.bool, device=segment_ids.device)[None]
    allowed = (same & causal[None] & real) | diagonal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def reset_mask_for(segment_ids: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool: True at the first token of every sample (and where padding starts)."""
    reset = torch.ones_like(segment_ids, dtype=torch.bool)
    reset[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    return reset


def position_ids_for(segment_ids: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` long: position of each token inside its own sample (0 on padding)."""
    starts = reset_mask_for(segment_ids)
    index = torch.arange(segment_ids.shape[1], device=segment_ids.device).expand_as(segment_ids)
    last_start = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    positions = index - last_start
    return positions.masked_fill(segment_ids < 0, 0)


class PackedAttentionMask(dict):
    """The attention-mask mapping JambaModel takes as is, plus the ``(B, L)`` ``padding_mask``.

    Keys: ``full_attention`` (4-D additive mask), ``linear_attention`` (padding mask or
    ``None``) and ``padding_mask`` (``(B, L)`` long, 1 on real tokens). transformers' Jamba
    hands the same ``attention_mask`` object to its MoE load-balancing loss, which reshapes
    it as a 2-D padding mask; :meth:`reshape` / :attr:`shape` answer with ``padding_mask`` so
    ``output_router_logits=True`` works on packed batches (padding excluded). Being a
    ``dict``, it is moved to the device key by key by the Trainer / accelerate.
    """

    def reshape(self, *shape: int) -> torch.Tensor:
        return self["padding_mask"].reshape(*shape)

    @property
    def shape(self) -> torch.Size:
        return self["padding_mask"].shape


class PackedCollator:
    """Batches packed rows so that samples in one row do not attend to each other.

    Args:
        processor: supplies the pad id and the image preprocessing.
        reset_mamba_state: also emit ``reset_mask`` so the model restarts the Mamba state
            (SSM state and convolution window) at every sample. Without it the Mamba layers
            carry state from one packed sample into the next (see ``docs/data_formats.md``).
        mask_dtype: dtype of the 4-D attention mask; use the model's dtype (SDPA needs it).
        pad_to_multiple_of: round the batch length up.

    Items may be :class:`~longllava_sdk.training.packing.PackedSample` (with
    ``sample_lengths``) or plain samples (one sample per row).
    """

    def __init__(self, processor: LongLLaVAProcessor, *, reset_mamba_state: bool = False,
                 mask_dtype: torch.dtype = torch.float32, pad_to_multiple_of: int | None = None) -> None:
        if not mask_dtype.is_floating_point:
            raise ValueError(f"mask_dtype must be a floating dtype (the mask is additive), got {mask_dtype}")
        self.processor = processor
        self.reset_mamba_state = reset_mamba_state
        self.mask_dtype = mask_dtype
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, packs: Sequence[EncodedSample]) -> dict[str, Any]:
        if not packs:
            raise ProtocolError("cannot collate an empty batch")
        pad_id = self.processor.tokenizer.pad_token_id or 0
        width = _width([len(p.input_ids) for p in packs], self.pad_to_multiple_of)
        input_ids, labels = _pad_rows(packs, width, pad_id)
        lengths = [list(getattr(p, "sample_lengths", None) or [len(p.input_ids)]) for p in packs]
        for row, (pack, row_lengths) in enumerate(zip(packs, lengths)):
            if sum(row_lengths) != len(pack.input_ids):
                raise ProtocolError(f"pack {row}: sample_lengths sum to {sum(row_lengths)} but it has "
                                    f"{len(pack.input_ids)} tokens")
        segments = segment_ids_for(lengths, width)
        padding = (segments >= 0).long()
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": PackedAttentionMask(
                full_attention=block_causal_mask(segments, self.mask_dtype),
                linear_attention=None if bool(padding.all()) else padding,
                padding_mask=padding,
            ),
            "position_ids": position_ids_for(segments),
        }
        if self.reset_mamba_state:
            batch["reset_mask"] = reset_mask_for(segments)
        pixel_values = _pixel_values(self.processor, packs)
        if pixel_values is not None:
            batch["pixel_values"] = pixel_values
        return batch
