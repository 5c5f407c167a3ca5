"""``Pipeline``: the one Python API class for inference.

::

    from longllava_sdk import Pipeline

    pipe = Pipeline.from_pretrained("runs/medical-lora/merged")
    pipe("Is there a nodule?", volume="ct_series/")            # DICOM / NIfTI
    pipe("Which tiles show water?", tiled="scene.tif")          # GeoTIFF, global + tiles
    pipe("What happens?", video="clip.mp4")                     # sampled frames, <vid>..<t>..
    pipe("Compare them.", images=["a.png", "b.png"])            # multi-image
    for piece in pipe("Describe it.", images=["a.png"], stream=True):
        print(piece, end="")

    pipe.chat("What is in this image?", images=["a.png"])       # history keeps each turn's
    pipe.chat("And what colour is it?")                          # images with that turn
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from PIL import Image

from .adapters import resolve_adapter
from .checkpoint import check_weights_safe, resolve_device, resolve_dtype
from .config import LongLLaVAConfig
from .media import Media
from .modeling.modeling_longllava import LongLLaVAForConditionalGeneration
from .processing.processor import LongLLaVAProcessor, MediaLike

PathLike = str | os.PathLike[str]

#: Frames sampled from a video unless ``max_images`` says otherwise: the official chat's
#: ``frameNum=128`` and the paper's evaluation setting (its 1000-image results are an explicit
#: raise, e.g. ``max_images=1000``).
DEFAULT_VIDEO_FRAMES = 128


class Pipeline:
    """Generation with a LongLLaVA model and its processor.

    Args:
        model: a :class:`LongLLaVAForConditionalGeneration` (already on its device).
        processor: the matching :class:`LongLLaVAProcessor`.
        head: a fine-tuned ``classify`` / ``multilabel`` task head (see :meth:`classify`);
            ``from_pretrained`` restores it from ``head_config.json`` + ``head.safetensors``.
    """

    def __init__(self, model: LongLLaVAForConditionalGeneration, processor: LongLLaVAProcessor,
                 head: Any | None = None) -> None:
        self.model = model.eval()
        self.processor = processor
        self.head = head
        self.history: list[dict[str, Any]] = []

    @classmethod
    def from_pretrained(
        cls,
        path: PathLike,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
        allow_pickle: bool = False,
    ) -> "Pipeline":
        """Load model + processor from a local directory (safetensors only unless ``allow_pickle``)."""
        path = Path(path)
        use_safetensors = check_weights_safe(path, allow_pickle=allow_pickle)
        target = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, target)
        config = LongLLaVAConfig.from_pretrained(path, local_files_only=True)
        model = LongLLaVAForConditionalGeneration.from_pretrained(
            path, config=config, dtype=torch_dtype, use_safetensors=use_safetensors, local_files_only=True,
        ).to(target)
        processor = LongLLaVAProcessor.from_pretrained(path, config=config)
        from .plugin_manager import get_plugin_manager

        get_plugin_manager().hook.longllava_model_loaded(model=model, config=config)
        from .training.checkpointing import load_classification_head

        return cls(model, processor, head=load_classification_head(path, device=target))

    # -- media ----------------------------------------------------------------------------------
    @property
    def default_max_images(self) -> int:
        """Images that fit the model's context next to a short prompt (adapters sample down to this)."""
        cfg = self.model.config
        per_image = cfg.tokens_per_image + 8  # tag tokens around each image
        return max(1, (cfg.max_context - 1024) // per_image)

    def load_media(self, source: PathLike | Sequence[PathLike], adapter: str | None = None,
                   max_images: int | None = None, **options: Any) -> Media:
        """Read ``source`` through the adapter that claims it (or the one named ``adapter``)."""
        budget = max_images or self.default_max_images
        return resolve_adapter(source, adapter, **options).load(source, max_images=budget)

    def _collect_media(self, images: Sequence[MediaLike] | None, video: PathLike | None,
                       volume: PathLike | Sequence[PathLike] | None, tiled: PathLike | None,
                       high_res: bool, adapter: str | None, adapter_options: dict[str, Any] | None,
                       max_images: int | None) -> list[Media | Image.Image]:
        options = dict(adapter_options or {})
        media: list[Media | Image.Image] = []
        for item in images or ():
            if isinstance(item, (Image.Image, Media)) and not high_res:
                media.append(item)
            elif isinstance(item, Image.Image):
                from .highres import split_high_res

                global_view, tiles, grid = split_high_res(item)
                media.append(Media(kind="tiled", images=[global_view, *tiles], grid=grid, source="<PIL image>"))
            elif high_res:  # the sub-image split is the images adapter's option
                media.append(self.load_media(item, adapter or "images", max_images, high_res=True, **options))
            else:
                media.append(self.load_media(item, adapter, max_images, **options))
        if video is not None:
            frames = max_images or min(DEFAULT_VIDEO_FRAMES, self.default_max_images)
            media.append(self.load_media(video, adapter or "video", frames, **options))
        if volume is not None:
            media.append(self.load_media(volume, adapter, max_images, **options))
        if tiled is not None:
            media.append(self.load_media(tiled, adapter, max_images, **options))
        return media

    # -- generation -----------------------------------------------------------------------------
    def generation_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Greedy decoding by default; any ``generate`` option may be overridden."""
        tok = self.processor.tokenizer
        kwargs: dict[str, Any] = dict(max_new_tokens=256, do_sample=False, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id)
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return kwargs

    def _generate(self, messages: list[dict[str, Any]], stream: bool, **gen: Any) -> str | Iterator[str]:
        batch = self.processor(messages=messages, add_generation_prompt=True)
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in batch.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.vision_tower.dtype)
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

    def __call__(
        self,
        prompt: str,
        images: Sequence[MediaLike] | None = None,
        *,
        video: PathLike | None = None,
        volume: PathLike | Sequence[PathLike] | None = None,
        tiled: PathLike | None = None,
        high_res: bool = False,
        adapter: str | None = None,
        adapter_options: dict[str, Any] | None = None,
        max_images: int | None = None,
        stream: bool = False,
        **generation: Any,
    ) -> str | Iterator[str]:
        """Answer ``prompt`` about the given media; returns the text, or an iterator of pieces if ``stream``.

        Args:
            prompt: the question; may place media with ``<image>`` markers (one per item).
            images: image paths, PIL images or ``Media`` objects.
            video: a video file (sampled evenly to ``max_images`` frames, first and last kept;
                default 128, the paper's setting).
            volume: a DICOM file/folder/list or a NIfTI file.
            tiled: a GeoTIFF (global thumbnail + tiles).
            high_res: split each image into 336 px sub-images after a global view.
            adapter: force an adapter by name; ``adapter_options`` are passed to it.
            generation: ``generate`` options (``max_new_tokens``, ``do_sample``, ``temperature``...).
        """
        media = self._collect_media(images, video, volume, tiled, high_res, adapter, adapter_options, max_images)
        messages = [{"role": "user", "content": prompt, "media": media}]
        return self._generate(messages, stream, **generation)

    def chat(
        self,
        message: str,
        images: Sequence[MediaLike] | None = None,
        *,
        video: PathLike | None = None,
        volume: PathLike | Sequence[PathLike] | None = None,
        tiled: PathLike | None = None,
        high_res: bool = False,
        adapter: str | None = None,
        adapter_options: dict[str, Any] | None = None,
        max_images: int | None = None,
        **generation: Any,
    ) -> str:
        """One chat turn; the history keeps every earlier turn with its own images attached."""
        media = self._collect_media(images, video, volume, tiled, high_res, adapter, adapter_options, max_images)
        turn = {"role": "user", "content": message, "media": media}
        answer = self._generate([*self.history, turn], False, **generation)
        assert isinstance(answer, str)
        self.history.extend([turn, {"role": "assistant", "content": answer}])
        return answer

    def classify(self, prompt: str, images: Sequence[MediaLike] | None = None, *, video: PathLike | None = None,
                 volume: PathLike | Sequence[PathLike] | None = None, tiled: PathLike | None = None,
                 high_res: bool = False, adapter: str | None = None, adapter_options: dict[str, Any] | None = None,
                 max_images: int | None = None) -> dict[str, Any]:
        """Run the fine-tuned ``classify`` / ``multilabel`` head on ``prompt`` + media (arguments as ``__call__``).

        Returns:
            ``{"labels": [predicted labels], "scores": {label: probability}}`` (softmax for
            ``classify``, per-label sigmoid for ``multilabel``).
        """
        if self.head is None:
            raise ValueError("this model has no classification head; fine-tune one with "
                             "`longllava-sdk finetune --head classify|multilabel`, or call the pipeline to generate")
        from .training.trainer import TaskModel

        media = self._collect_media(images, video, volume, tiled, high_res, adapter, adapter_options, max_images)
        batch = self.processor(messages=[{"role": "user", "content": prompt, "media": media}],
                               add_generation_prompt=True)
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in batch.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.vision_tower.dtype)
        with torch.inference_mode():
            logits = TaskModel(self.model, self.head)(**inputs)["logits"][0].float()
        scores = logits.sigmoid() if self.head.problem_type == "multi_label" else logits.softmax(-1)
        predicted = self.head.predict(logits[None])[0]
        if self.head.problem_type == "multi_label":
            chosen = [label for label, on in zip(self.head.labels, predicted.tolist()) if on]
        else:
            chosen = [self.head.labels[int(predicted)]]
        return {"labels": chosen, "scores": {label: float(p) for label, p in zip(self.head.labels, scores.tolist())}}

    def reset(self) -> None:
        """Forget the chat history."""
        self.history.clear()
