"""``LongLLaVAProcessor``: tokenizer + CLIP image processing + the tag protocol.

It turns conversations with attached media into model inputs::

    messages = [{"role": "user", "content": "Is there a nodule?", "media": [ct_volume]},
                {"role": "assistant", "content": "Yes, in the right upper lobe."}]
    sample = processor.encode_conversation(messages)
    # sample.input_ids: list[int] with tokens_per_image placeholder ids per image
    # sample.labels:    same length, -100 on everything but assistant answers (+ <|endoftext|>)
    # sample.images:    list of PIL images, in placeholder order

A message's ``media`` items (``Media`` objects, PIL images or image paths) belong to that
message. If its text holds ``<image>`` markers, there must be one per media item and each is
replaced by that item's protocol string; otherwise the media are put before the text.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence, Tuple

import torch
from PIL import Image
from transformers import (AutoTokenizer, BatchFeature, CLIPImageProcessorPil, PreTrainedTokenizerBase,
                          PreTrainedTokenizerFast)

from ..errors import InputError, ProtocolError
from ..highres import expand_to_square, mean_colour
from ..media import Media
from . import protocol
from .tokenizer import build_tokenizer

IGNORE_INDEX = -100
PROCESSOR_CONFIG = "longllava_processor.json"
Truncation = Literal["error", "drop"]
#: How a template segment is labelled: ``ignore`` (-100), ``copy`` (its own ids, an answer) or
#: ``eos`` (the separator after a non-final answer: ``\n`` in the input, ``<|endoftext|>`` as
#: its label, as the official ``preprocess_jamba`` pairs ``conv_jambaInput`` / ``conv_jambaLabel``).
LabelMode = Literal["ignore", "copy", "eos"]
Segment = Tuple[str, LabelMode]
MediaLike = Media | Image.Image | str | os.PathLike[str]


@dataclass
class EncodedSample:
    """One tokenized sample: ``input_ids``/``labels`` of equal length and its images in order."""

    input_ids: list[int]
    labels: list[int]
    images: list[Image.Image] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


def as_media(item: MediaLike) -> Media:
    """Wrap a PIL image or an image path as single-image :class:`Media`; pass ``Media`` through."""
    if isinstance(item, Media):
        return item
    if isinstance(item, Image.Image):
        return Media(kind="images", images=[item.convert("RGB")])
    from ..plugin_manager import resolve_adapter

    return resolve_adapter(item, kind="images").load(item)


class LongLLaVAProcessor:
    """Tokenizer, CLIP image processor and tag protocol for LongLLaVA.

    Args:
        tokenizer: any HF tokenizer (the checkpoint's Jamba tokenizer, or
            :func:`~longllava_sdk.processing.tokenizer.build_tokenizer` for tests).
        image_processor: a PIL-based ``CLIPImageProcessorPil`` (336 px for LongLLaVA).
        tokens_per_image: placeholder ids per image (must match the model config).
        image_token_id: the placeholder id (the model config's ``image_token_id``).
        pad_to_square: pad images to squares in the CLIP mean colour before resizing.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: CLIPImageProcessorPil,
        tokens_per_image: int = 144,
        image_token_id: int | None = None,
        pad_to_square: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.tokens_per_image = tokens_per_image
        self.image_token_id = len(tokenizer) if image_token_id is None else image_token_id
        self.pad_to_square = pad_to_square
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    # -- construction / persistence ------------------------------------------------------------
    @classmethod
    def for_config(cls, config: Any, tokenizer: PreTrainedTokenizerBase | None = None) -> "LongLLaVAProcessor":
        """A processor matching ``config`` (a ``LongLLaVAConfig``); builds the local tokenizer if none is given."""
        size = config.vision_config.image_size
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        tokenizer = tokenizer or build_tokenizer(config.text_config.vocab_size)
        return cls(tokenizer, image_processor, config.tokens_per_image, config.image_token_id)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)
        settings = {"tokens_per_image": self.tokens_per_image, "image_token_id": self.image_token_id,
                    "pad_to_square": self.pad_to_square}
        (directory / PROCESSOR_CONFIG).write_text(json.dumps(settings, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], config: Any | None = None) -> "LongLLaVAProcessor":
        """Load tokenizer and image settings from a local directory (never from a hub)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise InputError(directory, "processor directory does not exist")
        if (directory / "tokenizer.json").exists():
            # The generic fast class reads tokenizer.json as written. The class named in the
            # released tokenizer_config.json (LlamaTokenizer) would, in transformers 5, rebuild
            # the pre-tokenizer with a "▁" prefix and change Jamba's ids.
            tokenizer = PreTrainedTokenizerFast.from_pretrained(directory, local_files_only=True)
        else:
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
        tokenizer.padding_side = "left"
        if (directory / "preprocessor_config.json").exists():
            image_processor = CLIPImageProcessorPil.from_pretrained(directory, local_files_only=True)
        elif config is not None:
            size = config.vision_config.image_size
            image_processor = CLIPImageProcessorPil(size={"shortest_edge": size},
                                                    crop_size={"height": size, "width": size})
        else:
            raise InputError(directory, "no preprocessor_config.json and no model config to derive image settings")
        settings: dict[str, Any] = {}
        if (directory / PROCESSOR_CONFIG).exists():
            settings = json.loads((directory / PROCESSOR_CONFIG).read_text())
        elif config is not None:
            settings = {"tokens_per_image": config.tokens_per_image, "image_token_id": config.image_token_id}
        return cls(tokenizer, image_processor, **settings)

    # -- images ------------------------------------------------------------------------------------
    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``(N, 3, S, S)`` CLIP-normalised pixels for ``N`` RGB images (pad-to-square first)."""
        background = mean_colour(self.image_processor.image_mean)
        prepared = [img.convert("RGB") for img in images]
        if self.pad_to_square:
            prepared = [expand_to_square(img, background) for img in prepared]
        return self.image_processor(images=prepared, return_tensors="pt")["pixel_values"]

    # -- text ----------------------------------------------------------------------------------------
    def render_content(self, content: str, media: Sequence[MediaLike] = ()) -> tuple[str, list[Image.Image]]:
        """Place ``media`` into ``content`` with the tag protocol; return the text and its images in order."""
        items = [as_media(m) for m in media]
        markers = content.count(protocol.IMAGE_PLACEHOLDER)
        images = [img for item in items for img in item.images]
        if markers == 0:
            rendered = "".join(protocol.render_media(item) for item in items)
            return (rendered + "\n" + content if rendered else content), images
        if markers != len(items):
            raise ProtocolError(
                f"the text has {markers} <image> marker(s) but {len(items)} media item(s) were attached to it"
            )
        pieces = content.split(protocol.IMAGE_PLACEHOLDER)
        out = pieces[0]
        for item, piece in zip(items, pieces[1:]):
            out += protocol.render_media(item) + piece
        return out, images

    def apply_chat_template(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The conversation as one prompt string (media rendered as placeholders)."""
        return "".join(text for text, _ in self._segments(messages, add_generation_prompt)[0])

    def _segments(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool
                  ) -> tuple[list[Segment], list[Image.Image]]:
        """(text, label mode) pieces of the templated conversation, plus images in order.

        The layout is the official ``conv_jambaInput`` one: every answer but the last of the
        conversation ends with ``\n`` (labelled ``<|endoftext|>``), the last with
        ``<|endoftext|>``; a history rendered for generation therefore ends each earlier answer
        with ``\n``, exactly as the released model saw multi-turn data in training.
        """
        segments: list[Segment] = []
        images: list[Image.Image] = []
        system = ""
        roles = [self._role(message) for message in messages]
        last_answer = max((i for i, role in enumerate(roles) if role == "assistant"), default=-1)
        for index, (role, message) in enumerate(zip(roles, messages)):
            content = message.get("content", message.get("value", "")) or ""
            text, message_images = self.render_content(content, message.get("media", message.get("images", ())))
            images.extend(message_images)
            if role == "system":
                if index != 0:
                    raise ProtocolError("a system message may only open the conversation")
                system = text + "\n"
            elif role == "user":
                segments.append((system + protocol.user_turn(text), "ignore"))
                system = ""
            elif role == "assistant":
                segments.append((protocol.ASSISTANT_HEADER, "ignore"))
                segments.append((text, "copy"))
                final = index == last_answer and not add_generation_prompt
                segments.append((protocol.EOS, "copy") if final else (protocol.TURN_SEPARATOR, "eos"))
            else:
                raise ProtocolError(f"message {index} has unknown role {role!r} (user, assistant or system)")
        if add_generation_prompt:
            segments.append((protocol.ASSISTANT_HEADER, "ignore"))
        return segments, images

    @staticmethod
    def _role(message: dict[str, Any]) -> str:
        role = str(message.get("role") or message.get("from") or "")
        return protocol.ROLE_ALIASES.get(role.lower(), role)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text``, each ``<image>`` expanded to ``tokens_per_image`` placeholder ids."""
        ids: list[int] = []
        for i, piece in enumerate(text.split(protocol.IMAGE_PLACEHOLDER)):
            if i:
                ids.extend([self.image_token_id] * self.tokens_per_image)
            if piece:
                ids.extend(self.tokenizer(piece, add_special_tokens=False)["input_ids"])
        return ids

    def encode_conversation(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool = False,
        max_length: int | None = None,
        truncation: Truncation = "error",
    ) -> EncodedSample | None:
        """Tokenize a conversation; labels keep only assistant answers, each closed by ``<|endoftext|>``.

        Media are never cut: a sample longer than ``max_length`` raises
        :class:`ProtocolError` (``truncation="error"``) or is dropped whole (``"drop"``:
        returns ``None``, the caller reports it).
        """
        segments, images = self._segments(messages, add_generation_prompt)
        eos_id = self.tokenizer.convert_tokens_to_ids(protocol.EOS)
        input_ids: list[int] = []
        labels: list[int] = []
        for text, mode in segments:
            ids = self.tokenize(text)
            input_ids.extend(ids)
            if mode == "copy":
                labels.extend(ids)
            elif mode == "eos":  # the answer's end is learnt as <|endoftext|> where the input has "\n"
                labels.extend([eos_id] + [IGNORE_INDEX] * (len(ids) - 1))
            else:
                labels.extend([IGNORE_INDEX] * len(ids))
        n_placeholders = input_ids.count(self.image_token_id)
        if n_placeholders != len(images) * self.tokens_per_image:
            raise ProtocolError(
                f"{n_placeholders // self.tokens_per_image} image placeholders in the text but {len(images)} images"
            )
        if max_length is not None and len(input_ids) > max_length:
            if truncation == "drop":
                return None
            raise ProtocolError(
                f"sample is {len(input_ids)} tokens ({len(images)} images x {self.tokens_per_image}) but "
                f"max_length is {max_length}; truncating would cut through media (use fewer images or "
                "truncation='drop')"
            )
        return EncodedSample(input_ids, labels, images)

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: Sequence[MediaLike] | Sequence[Sequence[MediaLike]] | None = None,
        *,
        messages: Sequence[dict[str, Any]] | Sequence[Sequence[dict[str, Any]]] | None = None,
        add_generation_prompt: bool = True,
        max_length: int | None = None,
        return_tensors: str = "pt",
    ) -> BatchFeature:
        """Model inputs for generation: ``input_ids`` / ``attention_mask`` ``(B, L)`` left-padded, ``pixel_values``.

        Pass either raw ``text`` (a prompt, or a list of prompts, with ``images`` for each)
        which is wrapped in the chat template as one user turn, or full ``messages``.
        """
        if messages is None:
            if text is None:
                raise ValueError("pass text or messages")
            texts = [text] if isinstance(text, str) else list(text)
            if images is None:
                per_text: list[Sequence[MediaLike]] = [()] * len(texts)
            elif isinstance(text, str):
                per_text = [images]  # type: ignore[list-item]
            else:
                per_text = list(images)  # type: ignore[arg-type]
            if len(per_text) != len(texts):
                raise ProtocolError(f"{len(texts)} prompts but {len(per_text)} image lists")
            conversations = [[{"role": "user", "content": t, "media": m}] for t, m in zip(texts, per_text)]
        else:
            conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)  # type: ignore
        encoded = [self.encode_conversation(c, add_generation_prompt=add_generation_prompt, max_length=max_length)
                   for c in conversations]
        return self.collate_for_generation(encoded)  # type: ignore[arg-type]

    def collate_for_generation(self, samples: Iterable[EncodedSample]) -> BatchFeature:
        samples = list(samples)
        width = max(len(s) for s in samples)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(samples), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
        for row, sample in enumerate(samples):  # left padding: generation appends on the right
            input_ids[row, width - len(sample):] = torch.tensor(sample.input_ids, dtype=torch.long)
            attention_mask[row, width - len(sample):] = 1
        data: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        all_images = [img for s in samples for img in s.images]
        if all_images:
            data["pixel_values"] = self.preprocess_images(all_images)
        return BatchFeature(data)

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids if int(i) != self.image_token_id]
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
