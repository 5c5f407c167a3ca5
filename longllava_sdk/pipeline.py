"""``Pipeline``: the one Python API class for inference.

::

    from longllava_sdk import Pipeline

    pipe = Pipeline.from_pretrained("runs/medical-lora/model")
    pipe("Is there a nodule?", volume="ct_series/")            # DICOM / NIfTI
    pipe("Which tiles show water?", tiled="scene.tif")          # GeoTIFF, global + tiles
    pipe("What happens?", video="clip.mp4")                     # sampled frames, <vid>..<t>..
    pipe("Compare them.", images=["a.png", "b.png"])            # multi-image
    for piece in pipe("Describe it.", images=["a.png"], stream=True):
        print(piece, end="")

    pipe.chat("What is in this image?", images=["a.png"])       # history keeps each turn's
    pipe.chat("And what colour is it?")                          # images with that turn

Every method takes the same media keywords (:class:`MediaOptions`, written once); each media
keyword asks for adapters of that media kind (``volume=`` only considers adapters whose
``kind`` is ``volume``...), so an installed plugin adapter is used exactly like a built-in.
"""

from __future__ import annotations

import copy
import glob
import logging
import os
import re
import threading
from typing import Any, Iterator, Mapping, Sequence, TypedDict, Unpack

import torch
from PIL import Image

from .config import LongLLaVAConfig
from .context_limit import check_context, max_images_for
from .errors import ConfigError, InputError
from .adapters import allowed_root, current_allowed_root
from .experts import check_experts, selected_experts
from .heads import TaskHead
from .isolation import DecodeLimits, run_isolated
from .media import Media
from .model_folders import load_head, load_model
from .modeling.modeling_longllava import LongLLaVAForConditionalGeneration
from .plugin_manager import get_plugin_manager
from .registry import resolve_adapter
from .processing.processor import LongLLaVAProcessor, MediaLike

PathLike = str | os.PathLike[str]

logger = logging.getLogger(__name__)

#: Characters that make a path string a glob pattern (``frames/*.png``).
_GLOB_MAGIC = re.compile(r"[*?[]")

#: Frames sampled from a video unless ``max_images`` says otherwise: the official chat's
#: ``frameNum=128`` and the paper's evaluation setting (its 1000-image results are an explicit
#: raise, e.g. ``max_images=1000``).
DEFAULT_VIDEO_FRAMES = 128


class MediaOptions(TypedDict, total=False):
    """The media keywords of every :class:`Pipeline` method.

    Attributes:
        video: a video file (kind ``video``; 128 frames by default, first and last kept).
        volume: a DICOM file / folder / list of files or a NIfTI file (kind ``volume``).
        tiled: a large raster such as a GeoTIFF scene (kind ``tiled``: global view + tiles).
        high_res: split each image into 336 px sub-images after a global view.
        adapter: force an adapter by name (it must read the kind the keyword asks for).
        adapter_options: options for the adapter; text values are typed by its declared
            options (``{"window": "lung"}``, ``{"allow_non_parallel": "true"}``).
        max_images: image budget per source (default: what fits the context; 128 for video).
        defer_decoding: image files are checked when collected and decoded when the model reads
            their pixels, one prefill chunk at a time (default ``True``, for adapters that
            declare the option); ``False`` decodes them at once (e.g. when the files are
            temporary).
    """

    video: PathLike
    volume: PathLike | Sequence[PathLike]
    tiled: PathLike
    high_res: bool
    adapter: str
    adapter_options: dict[str, Any]
    max_images: int
    defer_decoding: bool


class CallOptions(MediaOptions, total=False):
    """Media keywords, ``experts`` and the usual ``generate`` options (any other ``generate`` keyword works too).

    Attributes:
        experts: the expert plugins whose findings enter the prompt for this call (names as
            ``longllava-sdk plugins`` lists them; ``[]``: none); default: the pipeline's
            ``experts`` (all installed, unless set). See :mod:`longllava_sdk.experts`.
    """

    experts: Sequence[str] | None

    max_new_tokens: int
    min_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    top_k: int
    num_beams: int
    repetition_penalty: float


_MEDIA_KEYS = frozenset(MediaOptions.__annotations__)


class _Default:
    """The "not given" of a keyword whose ``None`` means something (``experts=None``: all installed)."""

    def __repr__(self) -> str:
        return "<the pipeline's setting>"


DEFAULT = _Default()
#: Which media kind each keyword asks for.
_KIND_OF = {"video": "video", "volume": "volume", "tiled": "tiled"}


#: The adapter option that asks for images decoded when their pixels are needed (see load_media).
DEFER_OPTION = "defer_decoding"
#: The adapter option bounding what one source (with deferred decoding: one image) may decode.
DECODE_BUDGET_OPTION = "max_decoded_bytes"
#: What one image of the ``images`` kind may decode through the Pipeline unless
#: ``adapter_options`` say otherwise (its pixels and RGB copy, and for ``high_res`` the split):
#: with the view's few tens of MB (:func:`~longllava_sdk.highres.plan_view_size`) this keeps one
#: input within ~400 MB of a small one. A JPEG over it is decoded at a 1/2-1/8 DCT scale; other
#: formats over it are refused naming the file (docs/reliability.md, "Decode cost").
PIPELINE_IMAGE_DECODE_BYTES = 320 << 20


def expand_glob(source: PathLike) -> PathLike | list[str]:
    """``source``, or the files a glob pattern (``frames/*.png``) names, in natural order (``img2`` before ``img10``).

    A path that exists is never treated as a pattern (a file may have ``[`` in its name).

    Raises:
        InputError: a pattern that matches no file.
    """
    text = os.fspath(source)
    if not _GLOB_MAGIC.search(text) or os.path.exists(text):
        return source
    matches = [m for m in glob.glob(text) if os.path.isfile(m)]
    if not matches:
        raise InputError(text, "no file matches this pattern")
    return sorted(matches, key=lambda name: [int(part) if part.isdigit() else part.lower()
                                             for part in re.split(r"(\d+)", name)])


def media_warnings(media: Media) -> list[str]:
    """The warnings an adapter recorded for ``media`` (``info["warnings"]``), one line each naming the source.

    Gaps between DICOM slices, irregular spacing, non-finite voxels, masked bands, skipped
    files...: :meth:`Pipeline.load_media` logs each (logger ``longllava_sdk.pipeline``,
    level WARNING), the CLI prints them, ``serve`` returns them (docs/serving.md).
    """
    source = str(media.source) if media.source else "<memory>"
    lines = []
    for warning in media.info.get("warnings") or ():
        text = " ".join(str(warning).split())
        lines.append(text if text.startswith(source) else f"{source}: {text}")
    return lines


class Pipeline:
    """Generation (and task-head prediction) with a LongLLaVA model and its processor.

    Args:
        model: a :class:`LongLLaVAForConditionalGeneration` (already on its device).
        processor: the matching :class:`LongLLaVAProcessor`.
        head: a fine-tuned task head other than ``generate`` (see :meth:`classify`);
            ``from_pretrained`` restores it from ``head_config.json`` + ``head.safetensors``
            through the installed plugins, whichever plugin provides it.
        isolate_decoding: read every source in a killable worker process under OS limits
            (:mod:`~longllava_sdk.isolation`; ``True``: the default :class:`DecodeLimits`), for
            files you do not trust; the worker hands back each image as the vision encoder
            sees it (336 px), so the model's input is bit-identical to in-process decoding.
            Off by default: it costs a process fork per source (see docs/reliability.md).
        experts: the expert plugins whose findings enter each user turn before the question
            (:mod:`longllava_sdk.experts`): ``None`` every installed one, ``[]`` none.
    """

    def __init__(self, model: LongLLaVAForConditionalGeneration, processor: LongLLaVAProcessor,
                 head: TaskHead | None = None, isolate_decoding: bool | DecodeLimits = False,
                 experts: Sequence[str] | None = None) -> None:
        self.model = model.eval()
        self.processor = processor
        self.head = head
        self.experts = check_experts(experts)
        self.history: list[dict[str, Any]] = []
        self.isolation: DecodeLimits | None = (
            (DecodeLimits() if isolate_decoding is True else isolate_decoding) or None)

    @classmethod
    def from_pretrained(cls, path: PathLike, device: str | torch.device = "auto", dtype: str | torch.dtype | None = None,
                        allow_pickle: bool = False, quantize: str | None = None,
                        isolate_decoding: bool | DecodeLimits = False,
                        experts: Sequence[str] | None = None) -> "Pipeline":
        """Load model, processor and task head from a local model folder (safetensors only unless ``allow_pickle``).

        ``quantize="int8"`` runs the language model's linear layers in 8 bits (Mamba and the
        vision path kept; :mod:`longllava_sdk.quantization`). ``isolate_decoding`` and
        ``experts``: as for the constructor.
        """
        model, processor = load_model(path, device=device, dtype=dtype, allow_pickle=allow_pickle, quantize=quantize)
        get_plugin_manager().call_checked("longllava_model_loaded", returns="nothing (ignored)", check=lambda r: True,
                                          model=model, config=model.config)
        head = load_head(path, device=next(model.parameters()).device)
        return cls(model, processor, head=None if head is None or head.generates else head,
                   isolate_decoding=isolate_decoding, experts=experts)

    def isolated(self, limits: DecodeLimits) -> "Pipeline":
        """This pipeline (same model and processor, no chat history) decoding in worker processes under ``limits``."""
        clone = copy.copy(self)
        clone.history = []
        clone.isolation = limits
        return clone

    @property
    def config(self) -> LongLLaVAConfig:
        return self.model.config

    # -- media ----------------------------------------------------------------------------------
    @property
    def default_max_images(self) -> int:
        """Images that fit the model's context next to a short prompt (adapters sample down to this)."""
        cfg = self.config
        per_image = cfg.tokens_per_image + 8  # tag tokens around each image
        return max(1, (cfg.max_context - 1024) // per_image)

    def load_media(self, source: PathLike | Sequence[PathLike], *, kind: str | None = None, adapter: str | None = None,
                   max_images: int | None = None, options: Mapping[str, Any] | None = None,
                   defer_decoding: bool = True) -> Media:
        """Read ``source`` through the adapter named ``adapter``, else the first of ``kind`` that claims it.

        With ``defer_decoding``, an adapter that declares that option gets it (unless
        ``options`` set it): its images are checked now and decoded when the model reads
        their pixels, one prefill chunk at a time. With :attr:`isolation` the whole read runs
        in a worker process (:func:`_load_reduced`) and comes back decoded, reduced to what the
        vision encoder sees.
        """
        options = dict(options or {})
        max_images = max_images or self.default_max_images
        if self.isolation is not None:
            name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else os.fspath(source[0])
            media = run_isolated(_load_reduced, self.processor, source, kind, adapter, max_images, options,
                                 current_allowed_root(), limits=self.isolation, source=name)
        else:
            media = _read(source, kind, adapter, max_images, options, defer_decoding)
        for line in media_warnings(media):
            logger.warning("%s", line)
        return media

    def collect_media(self, images: Sequence[MediaLike] | None = None, **media: Unpack[MediaOptions]
                      ) -> list[Media | Image.Image]:
        """The media of one message, in order: ``images`` then ``video`` / ``volume`` / ``tiled``."""
        unknown = sorted(set(media) - _MEDIA_KEYS)
        if unknown:
            raise TypeError(f"unknown media option(s) {unknown}; expected {', '.join(sorted(_MEDIA_KEYS))}")
        if isinstance(images, (str, os.PathLike)):  # one folder / file / glob, not a sequence of characters
            images = [images]
        adapter, budget = media.get("adapter"), media.get("max_images")
        if images is not None and len(images) > max_images_for(self.config, 0):  # refuse before decoding any
            check_context(self.config, text_tokens=0, images=len(images), source=f"{len(images)} images")
        options = dict(media.get("adapter_options") or {})
        high_res = bool(media.get("high_res", False))
        defer = bool(media.get("defer_decoding", True))
        collected: list[Media | Image.Image] = []
        for item in images or ():
            if isinstance(item, Media) or (isinstance(item, Image.Image) and not high_res):
                collected.append(item)
            elif isinstance(item, Image.Image):
                from .highres import DEFAULT_MAX_TILES, split_high_res

                overview, tiles, grid = split_high_res(item, max_tiles=DEFAULT_MAX_TILES)
                collected.append(Media(kind="tiled", images=[overview, *tiles], grid=grid, source="<PIL image>"))
            else:  # a path: the sub-image split of a file is an option of the images-kind adapter
                item_options = {**options, "high_res": True} if high_res else options
                collected.append(self.load_media(expand_glob(item), kind=None if adapter else "images",
                                                 adapter=adapter, max_images=budget, options=item_options,
                                                 defer_decoding=defer))
        for key, kind in _KIND_OF.items():
            source = media.get(key)
            if source is None:
                continue
            limit = budget
            if key == "video" and budget is None:
                limit = min(DEFAULT_VIDEO_FRAMES, self.default_max_images)
            collected.append(self.load_media(source, kind=kind, adapter=adapter, max_images=limit, options=options,
                                             defer_decoding=defer))
        return collected

    # -- generation -----------------------------------------------------------------------------
    def generation_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Greedy decoding by default; any ``generate`` option may be overridden."""
        tok = self.processor.tokenizer
        kwargs: dict[str, Any] = dict(max_new_tokens=256, do_sample=False, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id)
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return kwargs

    def inputs(self, messages: Sequence[Mapping[str, Any]],
               experts: Sequence[str] | None | _Default = DEFAULT) -> dict[str, Any]:
        """Model inputs for a conversation, on the model's device, ready for ``model.generate``.

        Each message is ``{"role", "content", "media"}`` with its own media (from
        :meth:`collect_media`); the generation prompt is added. For callers that drive
        ``generate`` themselves (the HTTP server adds its own streamer and stopping criteria).
        ``input_ids`` / ``attention_mask`` are ``(1, L)`` tensors; ``pixel_values`` (when the
        conversation has images) is an :class:`~longllava_sdk.modeling.image_stream.IndexedImages`
        that the model reads one prefill chunk at a time. Raises :class:`ProtocolError` when
        the conversation does not fit ``config.max_context``. ``experts``: whose findings enter
        the user turns (default: the pipeline's :attr:`experts`).
        """
        return self._inputs([dict(m) for m in messages], experts=experts)

    def _inputs(self, messages: list[dict[str, Any]], lazy_pixels: bool = True,
                experts: Sequence[str] | None | _Default = DEFAULT) -> dict[str, Any]:
        """Token ids, mask and pixels for generation; the context limit is checked before any pixel work.

        ``lazy_pixels``: images are preprocessed when the model asks for them (one prefill
        chunk at a time), so 1000 images never exist as one pixel tensor. ``experts``: whose
        findings enter the user turns (default: the pipeline's :attr:`experts`).
        """
        with selected_experts(self.experts if experts is DEFAULT else experts):  # type: ignore[arg-type]
            sample = self.processor.encode_conversation(messages, add_generation_prompt=True)
        images = len(sample.images)
        check_context(self.config, text_tokens=len(sample) - images * self.config.tokens_per_image, images=images,
                      source=self._describe_media(messages))
        device = next(self.model.parameters()).device
        batch = self.processor.collate_for_generation([sample], lazy_pixels=lazy_pixels, device=device,
                                                      dtype=self.model.vision_tower.dtype)
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if isinstance(inputs.get("pixel_values"), torch.Tensor):
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.vision_tower.dtype)
        return inputs

    @staticmethod
    def _describe_media(messages: list[dict[str, Any]]) -> str | None:
        sources = [getattr(m, "source", None) for message in messages for m in message.get("media") or ()]
        named = [s for s in sources if s and s != "<memory>"]
        return f"{named[0]} (+{len(named) - 1} more)" if len(named) > 1 else (named[0] if named else None)

    def _generate(self, messages: list[dict[str, Any]], stream: bool, **gen: Any) -> str | Iterator[str]:
        inputs = self._inputs(messages, experts=gen.pop("experts", DEFAULT))
        kwargs = self.generation_kwargs(**gen)
        prompt_len = inputs["input_ids"].shape[1]
        if not stream:
            with torch.inference_mode():
                output = self.model.generate(**inputs, **kwargs)
            return self.processor.decode(output[0, prompt_len:]).strip()
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**inputs, **kwargs, streamer=streamer)
            except BaseException as exc:  # surfaced in the caller's thread below
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()

        def pieces() -> Iterator[str]:
            for piece in streamer:
                if piece:
                    yield piece
            thread.join()
            if errors:
                raise errors[0]

        return pieces()

    @staticmethod
    def _split(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        media = {k: v for k, v in options.items() if k in _MEDIA_KEYS}
        return media, {k: v for k, v in options.items() if k not in _MEDIA_KEYS}

    def __call__(self, prompt: str, images: Sequence[MediaLike] | None = None, *, stream: bool = False,
                 **options: Unpack[CallOptions]) -> str | Iterator[str]:
        """Answer ``prompt`` about the given media; the text, or an iterator of pieces if ``stream``.

        Args:
            prompt: the question; may place media with ``<image>`` markers (one per item).
            images: image paths, PIL images or ``Media`` objects; or one path as a string:
                an image file, a folder of images or a glob pattern (``"frames/*.png"``),
                read as one source.
            stream: yield the answer piece by piece.
            options: media keywords (:class:`MediaOptions`) and ``generate`` options
                (``max_new_tokens``, ``do_sample``, ``temperature``...).
        """
        media, generation = self._split(options)
        messages = [{"role": "user", "content": prompt, "media": self.collect_media(images, **media)}]
        return self._generate(messages, stream, **generation)

    def chat(self, message: str, images: Sequence[MediaLike] | None = None, **options: Unpack[CallOptions]) -> str:
        """One chat turn (arguments as :meth:`__call__`); the history keeps every earlier turn with its own media."""
        media, generation = self._split(options)
        turn = {"role": "user", "content": message, "media": self.collect_media(images, **media)}
        answer = self._generate([*self.history, turn], False, **generation)
        assert isinstance(answer, str)
        self.history.extend([turn, {"role": "assistant", "content": answer}])
        return answer

    def classify(self, prompt: str, images: Sequence[MediaLike] | None = None,
                 experts: Sequence[str] | None | _Default = DEFAULT,
                 **media: Unpack[MediaOptions]) -> dict[str, Any]:
        """Run the fine-tuned task head on ``prompt`` + media (media keywords and ``experts`` as :meth:`__call__`).

        Returns:
            the head's :meth:`~longllava_sdk.heads.TaskHead.describe` of its logits, e.g.
            ``{"labels": [...], "scores": {label: probability}}`` for the built-in heads.
        """
        if self.head is None:
            raise ConfigError("this model has no task head to classify with; fine-tune one (a recipe's "
                              "head: {type: classify|multilabel|<plugin head>}), or call the pipeline to generate")
        from .modeling.task_model import TaskModel

        inputs = self._inputs([{"role": "user", "content": prompt, "media": self.collect_media(images, **media)}],
                              lazy_pixels=False, experts=experts)
        with torch.inference_mode():
            logits = TaskModel(self.model, self.head)(**inputs)["logits"][0]
        return self.head.describe(logits)

    def reset(self) -> None:
        """Forget the chat history."""
        self.history.clear()


def _read(source: PathLike | Sequence[PathLike], kind: str | None, adapter: str | None, max_images: int,
          options: dict[str, Any], defer_decoding: bool) -> Media:
    reader = resolve_adapter(source, adapter, kind=kind, options=options)
    declared = type(reader).options()
    extra: dict[str, Any] = {}
    if (defer_decoding and DEFER_OPTION in declared and DEFER_OPTION not in options
            and not options.get("high_res")):
        extra[DEFER_OPTION] = True
    if reader.kind == "images" and DECODE_BUDGET_OPTION in declared and DECODE_BUDGET_OPTION not in options:
        extra[DECODE_BUDGET_OPTION] = PIPELINE_IMAGE_DECODE_BYTES
    if extra:
        reader = resolve_adapter(source, reader.name, options={**options, **extra})
    return reader.load(source, max_images=max_images)


def _load_reduced(processor: LongLLaVAProcessor, source: PathLike | Sequence[PathLike], kind: str | None,
                  adapter: str | None, max_images: int, options: dict[str, Any], root: Any) -> Media:
    """In an isolated worker: read ``source`` and reduce every image to what the vision encoder sees.

    Images are decoded one at a time (deferred where the adapter can) and each becomes the
    ``(336, 336)`` RGB image the processor's padding, resize and crop make of it: the
    processor's own :meth:`~LongLLaVAProcessor.preprocess_images` output with its rescale and
    normalisation undone (exact: those intermediate pixels are 8-bit), so preprocessing it
    again in the parent gives the same tensor. A 36-MP image comes back as 339 KB.
    """
    import numpy as np

    with allowed_root(root):
        media = _read(source, kind, adapter, max_images, options, defer_decoding=True)
        ip = processor.image_processor
        mean = np.asarray(ip.image_mean, dtype=np.float64).reshape(3, 1, 1)
        std = np.asarray(ip.image_std, dtype=np.float64).reshape(3, 1, 1)
        reduced = []
        for image in media.images:
            pixels = processor.preprocess_images([image])[0].double().numpy()  # (3, S, S), normalised
            levels = np.rint((pixels * std + mean) / ip.rescale_factor).clip(0, 255).astype(np.uint8)
            reduced.append(Image.fromarray(levels.transpose(1, 2, 0), "RGB"))
    media.images = reduced
    return media

