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

The processor is also a transformers ``ProcessorMixin`` registered with ``AutoProcessor``, with
the calling conventions of transformers' processors (docs/checkpoints.md, "Plain transformers,
peft and the HF pipeline"):

* ``processor(text=prompt, images=[...])`` takes an already chat-templated prompt and expands
  each ``<image>`` (inside the protocol's ``<img><image></img>``) to ``tokens_per_image``
  placeholder ids; ``processor(messages=conversation)`` templates an SDK conversation itself.
* ``processor.apply_chat_template(conversation)`` renders the Jinja template saved with the
  processor (``protocol.CHAT_TEMPLATE``), from SDK messages or HF content parts.
* ``decode`` / ``batch_decode`` / ``post_process_image_text_to_text`` drop the placeholder id.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence, Tuple

import torch
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from PIL import Image
from transformers import (AutoTokenizer, BatchFeature, CLIPImageProcessorPil, PreTrainedTokenizerBase,
                          PreTrainedTokenizerFast, ProcessorMixin)

from ..config import LongLLaVAConfig
from ..checkpoint import model_file_names
from ..errors import CheckpointError, InputError, ProtocolError
from ..experts import current_experts, expert_findings, render_findings
from ..hf_auto import PROCESSOR_AUTO_MAP, add_processor_auto_map, register_auto_class, write_auto_files
from ..highres import mean_colour, square_view, trim_to_aspect
from ..media import DeferredImage, Media, load_image
from . import protocol
from .tokenizer import build_tokenizer

IGNORE_INDEX = -100
#: The SDK's processor settings (what SDK versions before the transformers integration read).
PROCESSOR_CONFIG = "longllava_processor.json"
#: transformers' processor config: ``processor_class`` (what ``AutoProcessor`` dispatches on)
#: and the same settings.
HF_PROCESSOR_CONFIG = "processor_config.json"
#: the CLIP image processor's settings (transformers' name)
IMAGE_PROCESSOR_CONFIG = "preprocessor_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
#: The settings both files hold; a folder whose two files disagree is refused.
_SETTINGS = ("tokens_per_image", "image_token_id", "pad_to_square")
Truncation = Literal["error", "drop"]
#: How a template segment is labelled: ``ignore`` (-100), ``copy`` (its own ids, an answer) or
#: ``eos`` (the separator after a non-final answer: ``\n`` in the input, ``<|endoftext|>`` as
#: its label, as the official ``preprocess_jamba`` pairs ``conv_jambaInput`` / ``conv_jambaLabel``).
LabelMode = Literal["ignore", "copy", "eos"]
Segment = Tuple[str, LabelMode]
MediaLike = Media | Image.Image | str | os.PathLike[str]
Conversation = Sequence[Mapping[str, Any]]
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass
class EncodedSample:
    """One tokenized sample: ``input_ids``/``labels`` of equal length and its images in order."""

    input_ids: list[int]
    labels: list[int]
    images: list[Image.Image] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


def as_media(item: MediaLike) -> Media:
    """Wrap a PIL image or a local image path as single-image :class:`Media`; pass ``Media`` through.

    Raises:
        InputError: ``item`` is a URL: images are read from local files only (nothing is
            downloaded behind the caller's back).
    """
    if isinstance(item, Media):
        return item
    if isinstance(item, Image.Image):
        return Media(kind="images", images=[item.convert("RGB")])
    if isinstance(item, str) and _URL.match(item):
        raise InputError(item, "images are read from local files only; download it and pass the local path")
    from ..registry import resolve_adapter

    return resolve_adapter(item, kind="images").load(item)


def _raise_template_error(message: str) -> None:
    raise TemplateError(message)


# One sandboxed environment for every render: the template is data from a model folder, so it
# may not reach Python internals. ``raise_exception`` is the helper chat templates conventionally
# call (transformers' renderer defines the same name), so a saved template renders the same here
# and in transformers.
_JINJA = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)
_JINJA.globals["raise_exception"] = _raise_template_error


class LongLLaVAProcessor(ProcessorMixin):
    """Tokenizer, CLIP image processor and tag protocol for LongLLaVA.

    Args:
        tokenizer: any HF tokenizer (the checkpoint's Jamba tokenizer, or
            :func:`~longllava_sdk.processing.tokenizer.build_tokenizer` for tests).
        image_processor: a PIL-based ``CLIPImageProcessorPil`` (336 px for LongLLaVA).
        tokens_per_image: placeholder ids per image (must match the model config).
        image_token_id: the placeholder id (the model config's ``image_token_id``).
        pad_to_square: pad images to squares in the CLIP mean colour before resizing.
        chat_template: the Jinja chat template (default: :data:`protocol.CHAT_TEMPLATE`, the
            released model's layout).
    """

    #: The marker each image occupies in templated text (HF processors expose the name).
    image_token = protocol.IMAGE_PLACEHOLDER

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: CLIPImageProcessorPil,
        tokens_per_image: int = 144,
        image_token_id: int | None = None,
        pad_to_square: bool = True,
        chat_template: str | None = None,
    ) -> None:
        # ProcessorMixin takes its sub-processors from the names of this signature's parameters
        # (``tokenizer``, ``image_processor``), checks their types and stores the template.
        super().__init__(tokenizer, image_processor, chat_template=chat_template or protocol.CHAT_TEMPLATE)
        self.tokens_per_image = int(tokens_per_image)
        self.image_token_id = len(tokenizer) if image_token_id is None else int(image_token_id)
        self.pad_to_square = bool(pad_to_square)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    # -- construction / persistence ------------------------------------------------------------
    @classmethod
    def for_config(cls, config: Any, tokenizer: PreTrainedTokenizerBase | None = None) -> "LongLLaVAProcessor":
        """A processor matching ``config`` (a ``LongLLaVAConfig``); builds the local tokenizer if none is given."""
        tokenizer = tokenizer or build_tokenizer(config.text_config.vocab_size)
        return cls(tokenizer, _image_processor_for(config), config.tokens_per_image, config.image_token_id)

    @property
    def settings(self) -> dict[str, Any]:
        """The settings saved next to the tokenizer and image processor."""
        return {"tokens_per_image": self.tokens_per_image, "image_token_id": self.image_token_id,
                "pad_to_square": self.pad_to_square}

    def save_pretrained(self, save_directory: str | os.PathLike[str], push_to_hub: bool = False,
                        **kwargs: Any) -> list[str]:
        """Write the processor files into a local directory (never to a hub).

        Writes the tokenizer files, ``preprocessor_config.json`` (CLIP settings),
        ``longllava_processor.json`` (the SDK's settings), ``processor_config.json`` (the same
        settings, ``processor_class`` and ``auto_map``, which ``AutoProcessor`` reads; the image
        processor and tokenizer configs name them too), ``chat_template.jinja`` and the
        Auto-class module files (:func:`longllava_sdk.hf_auto.write_auto_files`). Returns the paths of the processor config files.
        """
        if push_to_hub:
            raise InputError(save_directory, "the SDK saves processors locally only; upload the folder yourself")
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)
        (directory / PROCESSOR_CONFIG).write_text(json.dumps(self.settings, indent=2) + "\n")
        hf_config = {"processor_class": LongLLaVAProcessor.__name__, "auto_map": PROCESSOR_AUTO_MAP, **self.settings}
        (directory / HF_PROCESSOR_CONFIG).write_text(json.dumps(hf_config, indent=2) + "\n")
        # AutoProcessor reads processor_class / auto_map from whichever config it finds first:
        # every one of them names this processor, so it never falls back to a bare tokenizer.
        for name in (IMAGE_PROCESSOR_CONFIG, "tokenizer_config.json"):
            if (directory / name).is_file():
                add_processor_auto_map(directory / name, LongLLaVAProcessor.__name__)
        write_auto_files(directory)
        # Written after the tokenizer, which writes its own template (if it has one) to this name.
        (directory / CHAT_TEMPLATE_FILE).write_text(self.chat_template)
        return [str(directory / PROCESSOR_CONFIG), str(directory / HF_PROCESSOR_CONFIG)]

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoProcessor") -> None:
        """Nothing to do: :meth:`save_pretrained` writes the ``auto_map`` and module files.

        transformers calls this on a class loaded with ``trust_remote_code=True``.
        """

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], config: Any | None = None,
                        **kwargs: Any) -> "LongLLaVAProcessor":
        """Load tokenizer, image settings and chat template from a local directory (never from a hub).

        ``AutoProcessor.from_pretrained`` and ``transformers.pipeline`` call this with their
        loader options (``revision``, ``token``, ``trust_remote_code``, ``device_map``...):
        they concern hubs and models, and are ignored; no remote code ever runs. ``subfolder``
        is honoured; ``tokens_per_image``, ``image_token_id``, ``pad_to_square`` and
        ``chat_template`` override the saved values.

        Args:
            directory: the folder (a model folder, or a processor-only folder such as a LoRA
                run's ``adapter/``).
            config: the model's ``LongLLaVAConfig``, for folders that lack processor settings
                (default: the folder's own ``config.json``, if it is a LongLLaVA one).
        """
        directory = Path(directory) / str(kwargs.get("subfolder") or "")
        if not directory.is_dir():
            raise InputError(directory, "processor directory does not exist (processors load from local folders only)")
        try:  # tokenizers opens its files by path: a FIFO among them would block it
            model_file_names(directory)
        except CheckpointError as exc:
            raise InputError(directory, str(exc)) from None
        if (directory / "tokenizer.json").exists():
            # The generic fast class reads tokenizer.json as written. The class named in the
            # released tokenizer_config.json (LlamaTokenizer) would, in transformers 5, rebuild
            # the pre-tokenizer with a "▁" prefix and change Jamba's ids.
            tokenizer = PreTrainedTokenizerFast.from_pretrained(directory, local_files_only=True)
        else:
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
        tokenizer.padding_side = "left"
        settings = cls._read_settings(directory)
        has_image_settings = (directory / "preprocessor_config.json").exists()
        if config is None and not (has_image_settings and {"tokens_per_image", "image_token_id"} <= set(settings)):
            config = _folder_config(directory)
        if has_image_settings:
            image_processor = CLIPImageProcessorPil.from_pretrained(directory, local_files_only=True)
        elif config is not None:
            image_processor = _image_processor_for(config)
        else:
            raise InputError(directory, "no preprocessor_config.json and no model config to derive image settings")
        if config is not None:
            for key in ("tokens_per_image", "image_token_id"):
                settings.setdefault(key, getattr(config, key))
        settings.update({key: kwargs[key] for key in _SETTINGS if key in kwargs})
        chat_template = kwargs.get("chat_template")
        if chat_template is None and (directory / CHAT_TEMPLATE_FILE).is_file():
            chat_template = (directory / CHAT_TEMPLATE_FILE).read_text()
        return cls(tokenizer, image_processor, chat_template=chat_template, **settings)

    @classmethod
    def _read_settings(cls, directory: Path) -> dict[str, Any]:
        """The settings of ``longllava_processor.json`` and ``processor_config.json`` (which must agree)."""
        settings: dict[str, Any] = {}
        for name in (PROCESSOR_CONFIG, HF_PROCESSOR_CONFIG):
            path = directory / name
            if not path.is_file():
                continue
            try:
                data = json.loads(path.read_text())
            except ValueError as exc:
                raise InputError(path, f"not valid JSON ({exc})") from exc
            if not isinstance(data, dict):
                raise InputError(path, "expected a JSON object")
            named = data.get("processor_class", cls.__name__)
            if name == HF_PROCESSOR_CONFIG and named not in {cls.__name__, LongLLaVAProcessor.__name__}:
                raise InputError(path, f"this folder's processor is a {named}, not a LongLLaVA processor")
            for key in _SETTINGS:
                if key not in data:
                    continue
                if key in settings and settings[key] != data[key]:
                    raise InputError(directory, f"{PROCESSOR_CONFIG} and {HF_PROCESSOR_CONFIG} disagree on {key} "
                                                f"({settings[key]!r} vs {data[key]!r}); fix or delete one of them")
                settings[key] = data[key]
        return settings

    # -- images ------------------------------------------------------------------------------------
    @property
    def image_side(self) -> int:
        """``S``: the side of the square the vision tower reads (336 for LongLLaVA)."""
        crop = self.image_processor.crop_size  # a dict in older transformers, a SizeDict in 5.x
        return int(crop["height"] if isinstance(crop, Mapping) else crop.height)

    def preprocess_images(self, images: Sequence[Image.Image | DeferredImage]) -> torch.Tensor:
        """``(N, 3, S, S)`` CLIP-normalised pixels for ``N`` RGB images (pad-to-square first).

        Each image becomes its ``S x S`` view before the CLIP processor sees it
        (:func:`~longllava_sdk.highres.square_view`: the released model's pad-to-square in the
        CLIP mean, then resize), so the memory of one image is its decoded pixels plus a view,
        whatever its aspect ratio: a 20000 x 20 image is never padded to 20000 x 20000.
        Images are decoded (deferred ones) and converted one at a time.
        """
        background = mean_colour(self.image_processor.image_mean)
        side = self.image_side
        prepared = []
        for item in images:
            image = load_image(item).convert("RGB")  # deferred images are decoded here, one at a time
            prepared.append(square_view(image, side, background) if self.pad_to_square else trim_to_aspect(image, 2.0))
            del image
        return self.image_processor(images=prepared, return_tensors="pt")["pixel_values"]

    # -- text ----------------------------------------------------------------------------------------
    def render_content(self, content: str, media: Sequence[MediaLike] = (), *, findings: bool = False
                       ) -> tuple[str, list[Image.Image]]:
        """Place ``media`` into ``content`` with the tag protocol; return the text and its images in order.

        ``findings`` (a user turn): the selected expert plugins' findings about the media
        (:mod:`longllava_sdk.experts`) go after the last media item, before the question::

            <media tags>\nExpert findings:\n- name: text\n<question>

        With no expert installed (or ``experts=[]``) the text is exactly the released format.
        """
        items = [as_media(m) for m in media]
        markers = content.count(protocol.IMAGE_PLACEHOLDER)
        images = [img for item in items for img in item.images]
        block = ""
        if findings and items:
            found = [pair for item in items for pair in expert_findings(item, current_experts())]
            block = render_findings(found)
        if markers == 0:
            rendered = "".join(protocol.render_media(item) for item in items)
            question = (block + "\n" + content) if block else content
            return (rendered + "\n" + question if rendered else question), images
        if markers != len(items):
            raise ProtocolError(
                f"the text has {markers} <image> marker(s) but {len(items)} media item(s) were attached to it"
            )
        pieces = content.split(protocol.IMAGE_PLACEHOLDER)
        if block:  # after the last media item, before the question that follows it
            pieces[-1] = "\n" + block + (pieces[-1] if pieces[-1].startswith("\n") else "\n" + pieces[-1])
        out = pieces[0]
        for item, piece in zip(items, pieces[1:]):
            out += protocol.render_media(item) + piece
        return out, images

    def render_conversation(self, messages: Conversation, add_generation_prompt: bool = False) -> str:
        """The SDK's own rendering of a conversation (the layout training and :class:`Pipeline` use).

        :meth:`apply_chat_template` renders the same string through the Jinja template.
        """
        return "".join(text for text, _ in self._segments(messages, add_generation_prompt)[0])

    def _segments(self, messages: Conversation, add_generation_prompt: bool
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
            if not isinstance(content, str):
                raise ProtocolError(f"message {index}: content parts (a list) are rendered by apply_chat_template; "
                                    "the SDK's conversations hold text and a `media` list")
            text, message_images = self.render_content(content, message.get("media", message.get("images", ())),
                                                       findings=role == "user")
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
    def _role(message: Mapping[str, Any]) -> str:
        role = str(message.get("role") or message.get("from") or "")
        return protocol.ROLE_ALIASES.get(role.lower(), role)

    # -- the chat template -------------------------------------------------------------------------
    def _template_messages(self, messages: Conversation) -> tuple[list[dict[str, Any]], list[Image.Image]]:
        """Messages as the Jinja template reads them, and their images in placeholder order.

        SDK messages (text with a ``media`` list, LLaVA's ``from`` / ``value``) have their media
        rendered into the text here, so every media kind (video, volume, tiled) keeps its tags;
        HF content parts keep their order, each image part holding one image (a PIL image or a
        local path under ``image``, ``path`` or ``url``).
        """
        rendered: list[dict[str, Any]] = []
        images: list[Image.Image] = []
        for index, message in enumerate(messages):
            role = self._role(message)
            content = message.get("content", message.get("value"))
            media = message.get("media", message.get("images"))
            if isinstance(content, str) or content is None:
                text, found = self.render_content(content or "", media or (), findings=role == "user")
                rendered.append({"role": role, "content": text})
                images.extend(found)
                continue
            if media:
                raise ProtocolError(f"message {index}: put its images either in its content parts or in `media`, "
                                    "not both")
            parts: list[dict[str, Any]] = []
            for part in content:
                kind = part.get("type") if isinstance(part, Mapping) else None
                if kind == "text":
                    parts.append({"type": "text", "text": str(part.get("text") or "")})
                elif kind == "image":
                    images.append(self._part_image(index, part))
                    parts.append({"type": "image"})
                else:
                    raise ProtocolError(f"message {index}: content part {part!r} is not a text or image part "
                                        "(video, volumes and tiled rasters go in a message's `media` list)")
            rendered.append({"role": role, "content": parts})
        return rendered, images

    @staticmethod
    def _part_image(index: int, part: Mapping[str, Any]) -> Image.Image:
        sources = [part[key] for key in ("image", "path", "url") if part.get(key) is not None]
        if len(sources) != 1:
            raise ProtocolError(f"message {index}: an image part needs exactly one of `image` (a PIL image or a "
                                f"local path), `path` or `url` (a local path); got {sorted(part)}")
        media = as_media(sources[0])
        if len(media.images) != 1:
            raise ProtocolError(f"message {index}: an image part holds one image, {sources[0]!r} has "
                                f"{len(media.images)}; put multi-image media in a message's `media` list")
        return media.images[0]

    def _render_template(self, messages: Conversation, template: str, add_generation_prompt: bool,
                         continue_final_message: bool, variables: Mapping[str, Any]
                         ) -> tuple[str, list[Image.Image]]:
        rendered_messages, images = self._template_messages(messages)
        try:
            # The tokenizer's special tokens are variables too, as transformers passes them.
            text = _JINJA.from_string(template).render({
                **self.tokenizer.special_tokens_map, **variables,
                "messages": rendered_messages, "add_generation_prompt": add_generation_prompt})
        except TemplateError as exc:
            raise ProtocolError(f"the chat template refused the conversation: {exc}") from exc
        if continue_final_message:
            # As transformers does: the prompt stops right after the final message's text, so
            # generation continues that message instead of closing it.
            final = rendered_messages[-1]["content"] if rendered_messages else ""
            if not isinstance(final, str):
                final = next((p["text"] for p in reversed(final) if p["type"] == "text"), "")
            final = final.strip()
            if not final or final not in text:
                raise ProtocolError("continue_final_message needs a final message with text to continue")
            text = text[: text.rindex(final) + len(final)]
        return text, images

    def apply_chat_template(  # type: ignore[override]
        self,
        conversation: Conversation | Sequence[Conversation],
        chat_template: str | None = None,
        *,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        tokenize: bool = False,
        return_dict: bool = False,
        return_tensors: str | None = "pt",
        processor_kwargs: Mapping[str, Any] | None = None,
        **template_variables: Any,
    ) -> str | list[str] | BatchFeature | torch.Tensor:
        """Render a conversation (or a batch of them) with the Jinja chat template; optionally tokenize it.

        transformers' conventions: the result is the prompt string (a list for a batch);
        ``tokenize=True`` runs the processor on it (``return_dict=True``: the whole
        ``BatchFeature`` with ``pixel_values``; else ``input_ids``). The template is the one saved
        with the processor unless ``chat_template`` is given.

        Messages are SDK messages (``content`` text with a ``media`` list; LLaVA's ``from`` /
        ``value``) or HF messages whose ``content`` is a list of ``{"type": "text", "text": ...}``
        and ``{"type": "image", "image": <PIL image or local path>}`` parts. Images are read
        from local files only.

        Args:
            add_generation_prompt: end with the assistant header (what generation continues).
            continue_final_message: end right after the final message's text (a prefilled answer
                the model continues); excludes ``add_generation_prompt``.
            processor_kwargs: options for the processor call when tokenizing (``max_length``).
            template_variables: extra variables for the template (the default one uses none).

        Raises:
            ProtocolError: the template refuses the conversation (a system message that does not
                open it, an unknown role or part type), or images and placeholders disagree.
        """
        if chat_template is not None and not isinstance(chat_template, str):
            raise TypeError("chat_template must be a template string; pass add_generation_prompt= by keyword")
        if add_generation_prompt and continue_final_message:
            raise ValueError("add_generation_prompt and continue_final_message exclude each other")
        unsupported = sorted(set(template_variables) & {"tools", "documents", "return_assistant_tokens_mask"})
        if any(template_variables[name] for name in unsupported):
            raise ValueError(f"{', '.join(unsupported)}: not supported by LongLLaVA's chat template (training "
                             "labels come from processor.encode_conversation)")
        variables = {k: v for k, v in template_variables.items() if k not in unsupported}
        template = chat_template if chat_template is not None else self.chat_template
        batched = bool(conversation) and not isinstance(conversation[0], Mapping)
        conversations: list[Conversation] = list(conversation) if batched else [conversation]  # type: ignore[list-item]
        rendered = [self._render_template(c, template, add_generation_prompt, continue_final_message, variables)
                    for c in conversations]
        texts = [text for text, _ in rendered]
        if not tokenize:
            return texts if batched else texts[0]
        images = [found for _, found in rendered]
        encoded = self(text=texts, images=images if any(images) else None, return_tensors=return_tensors,
                       **dict(processor_kwargs or {}))
        return encoded if return_dict else encoded["input_ids"]

    # -- tokenization ------------------------------------------------------------------------------
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
        messages: Conversation,
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
        self._check_placeholders(input_ids, len(images))
        if not self._fits(input_ids, len(images), max_length, truncation):
            return None
        return EncodedSample(input_ids, labels, images)

    def _check_placeholders(self, input_ids: Sequence[int], n_images: int, where: str = "") -> None:
        n_placeholders = list(input_ids).count(self.image_token_id)
        if n_placeholders != n_images * self.tokens_per_image:
            raise ProtocolError(f"{where}{n_placeholders // self.tokens_per_image} image placeholders in the text "
                                f"but {n_images} images")

    def _fits(self, input_ids: Sequence[int], n_images: int, max_length: int | None,
              truncation: Truncation) -> bool:
        if max_length is None or len(input_ids) <= max_length:
            return True
        if truncation == "drop":
            return False
        raise ProtocolError(
            f"sample is {len(input_ids)} tokens ({n_images} images x {self.tokens_per_image}) but "
            f"max_length is {max_length}; truncating would cut through media (use fewer images or "
            "truncation='drop')"
        )

    def __call__(  # type: ignore[override]
        self,
        text: str | Sequence[str] | None = None,
        images: MediaLike | Sequence[MediaLike] | Sequence[Sequence[MediaLike]] | None = None,
        *,
        messages: Conversation | Sequence[Conversation] | None = None,
        add_generation_prompt: bool = True,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
        padding: bool | str = True,
    ) -> BatchFeature:
        """Model inputs for generation: ``input_ids`` / ``attention_mask`` ``(B, L)`` left-padded, ``pixel_values``.

        Pass either

        * ``text``: prompts already in the chat template (transformers' convention: from
          :meth:`apply_chat_template`, or written by hand), one string or a list. Each
          ``<image>`` (the protocol writes ``<img><image></img>`` per image) becomes
          ``tokens_per_image`` placeholder ids; ``images`` holds the images in placeholder
          order, as one flat list (split over the prompts by their placeholder counts) or one
          list per prompt; or
        * ``messages``: an SDK conversation (or a list of them), templated here
          (``add_generation_prompt`` applies to this form only).

        Raises:
            ProtocolError: placeholders and images disagree, or a prompt exceeds ``max_length``
                (media are never cut).
        """
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors={return_tensors!r}: the processor returns torch tensors ('pt')")
        samples: list[EncodedSample] = []
        if messages is not None:
            if text is not None or images is not None:
                raise ValueError("pass text (and images) or messages, not both")
            conversations = [messages] if messages and isinstance(messages[0], Mapping) else list(messages)
            for conversation in conversations:
                sample = self.encode_conversation(conversation, add_generation_prompt=add_generation_prompt,
                                                  max_length=max_length)
                assert sample is not None  # truncation="error" raises instead of dropping
                samples.append(sample)
        else:
            if text is None:
                raise ValueError("pass text (a chat-templated prompt, see apply_chat_template) or messages")
            texts = [text] if isinstance(text, str) else list(text) if isinstance(text, (list, tuple)) else []
            if not texts or not all(isinstance(t, str) for t in texts):
                raise TypeError("text must be a prompt string or a list of them (pass images= by keyword)")
            for index, (prompt, prompt_images) in enumerate(zip(texts, self._images_per_text(texts, images))):
                ids = self.tokenize(prompt)
                self._check_placeholders(ids, len(prompt_images), where=f"prompt {index}: " if len(texts) > 1 else "")
                self._fits(ids, len(prompt_images), max_length, "error")
                samples.append(EncodedSample(ids, [IGNORE_INDEX] * len(ids), prompt_images))
        if padding in (False, "do_not_pad") and len({len(s) for s in samples}) > 1:
            raise ValueError("prompts of different lengths in one batch are left-padded to the longest (padding=True)")
        return self.collate_for_generation(samples)

    def _images_per_text(self, texts: Sequence[str], images: Any) -> list[list[Image.Image]]:
        """``images`` (None, one image, a flat list or one list per text) as one image list per text."""
        if images is None:
            return [[] for _ in texts]
        if isinstance(images, (Image.Image, Media, str, os.PathLike)):
            images = [images]
        images = list(images)
        nested = bool(images) and all(isinstance(item, (list, tuple)) for item in images)
        if nested:
            if len(images) != len(texts):
                raise ProtocolError(f"{len(texts)} prompts but {len(images)} image lists")
            return [[img for item in group for img in as_media(item).images] for group in images]
        flat = [img for item in images for img in as_media(item).images]
        per_text: list[list[Image.Image]] = []
        start = 0
        for prompt in texts:
            count = prompt.count(protocol.IMAGE_PLACEHOLDER)
            per_text.append(flat[start:start + count])
            start += count
        if start != len(flat):
            raise ProtocolError(f"{start} image placeholders in the text but {len(flat)} images")
        return per_text

    def collate_for_generation(self, samples: Iterable[EncodedSample], *, lazy_pixels: bool = False,
                               device: torch.device | str | None = None, dtype: torch.dtype | None = None
                               ) -> BatchFeature:
        """Left-pad ``samples`` into one batch (their images, in order, as ``pixel_values``).

        ``lazy_pixels``: ``pixel_values`` is an :class:`~longllava_sdk.modeling.image_stream.IndexedImages`
        that preprocesses images only when the model asks for them (one prefill chunk at a
        time), on ``device`` / in ``dtype``, instead of a ``(N, 3, S, S)`` tensor of every
        image at once (1.35 GB for 1000 images in float32).
        """
        samples = list(samples)
        if not samples:
            raise ProtocolError("nothing to encode: every sample was dropped")
        width = max(len(s) for s in samples)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(samples), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
        for row, sample in enumerate(samples):  # left padding: generation appends on the right
            input_ids[row, width - len(sample):] = torch.tensor(sample.input_ids, dtype=torch.long)
            attention_mask[row, width - len(sample):] = 1
        data: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        all_images = [img for s in samples for img in s.images]
        if all_images and lazy_pixels:
            from ..modeling.image_stream import IndexedImages

            def load(index: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, 3, S, S)
                pixels = self.preprocess_images([all_images[i] for i in index.tolist()])
                return pixels.to(device=device or pixels.device, dtype=dtype or pixels.dtype)

            data["pixel_values"] = IndexedImages(len(all_images), load)
        elif all_images:
            data["pixel_values"] = self.preprocess_images(all_images)
        return BatchFeature(data)

    # -- decoding ----------------------------------------------------------------------------------
    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True,  # type: ignore[override]
               **kwargs: Any) -> str:
        """Text of ``ids`` without the image placeholder id (which may lie outside the vocabulary)."""
        kept = [int(i) for i in ids if int(i) != self.image_token_id]
        return self.tokenizer.decode(kept, skip_special_tokens=skip_special_tokens, **kwargs)

    def batch_decode(self, sequences: Sequence[Sequence[int]] | torch.Tensor,  # type: ignore[override]
                     skip_special_tokens: bool = True, **kwargs: Any) -> list[str]:
        """:meth:`decode` of each sequence of a batch."""
        return [self.decode(ids, skip_special_tokens=skip_special_tokens, **kwargs) for ids in sequences]

    def post_process_image_text_to_text(self, generated_outputs: Sequence[Sequence[int]] | torch.Tensor,
                                        skip_special_tokens: bool = True, **kwargs: Any) -> list[str]:
        """Decoded texts of ``generate``'s ``(B, L)`` output (what transformers' image-text-to-text pipeline calls)."""
        if isinstance(generated_outputs, torch.Tensor) and generated_outputs.ndim == 1:
            generated_outputs = generated_outputs.unsqueeze(0)
        return self.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)


def _image_processor_for(config: Any) -> CLIPImageProcessorPil:
    size = config.vision_config.image_size
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _folder_config(directory: Path) -> LongLLaVAConfig | None:
    """The folder's ``config.json`` if it is a LongLLaVA one (a processor-only folder has none)."""
    path = directory / "config.json"
    try:
        model_type = json.loads(path.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    if model_type != LongLLaVAConfig.model_type:
        return None
    return LongLLaVAConfig.from_pretrained(directory, local_files_only=True)


# ``AutoProcessor.from_pretrained(folder)`` finds this class by the folder's config (model type
# ``longllava``) or by ``processor_class`` in its processor_config.json; the model and config
# classes register in their own modules, through the same function (longllava_sdk/hf_auto.py).
register_auto_class(LongLLaVAProcessor, config_class=LongLLaVAConfig)
