"""Images handed to the model lazily, and their features computed one prefill chunk at a time.

A prompt with 1000 images needs 1000 x 3 x 336 x 336 float32 pixels (1.35 GB) if they are
materialised at once, and CLIP's 576-token features for all of them. The chunked prefill
(:mod:`.chunked_prefill`) instead asks an :class:`ImageSource` for the images whose
placeholders fall inside the current chunk only, encodes them, writes their 144 tokens
over the placeholders, and forgets them once their last placeholder has been consumed. An
image whose placeholder run is cut by a chunk boundary keeps its projected features
(``(144, C_text)``, small) until the next chunk. So at most one chunk's worth of pixels and
CLIP activations exists at a time, however many images the prompt holds.

Image ``k`` is the ``k``-th run of ``tokens_per_image`` placeholder ids, counted row-major
over the batch, exactly as :meth:`LongLLaVAForConditionalGeneration.embed_inputs` counts.

Sources (any of them can be passed where the model takes images):

* a ``(N, 3, H, W)`` tensor (:class:`TensorImages`);
* ``IndexedImages(count, load)``: random access, ``load(index (n,) long) -> (n, 3, H, W)``
  (e.g. decode images ``index`` from files);
* ``StreamedImages(chunks, count)``: an iterable of ``(n, 3, H, W)`` pixel chunks in
  placeholder order, read once, front to back (e.g. a processor's generator). Images are
  read only when a prefill chunk needs them; batch > 1 may need images out of row-major
  order, in which case the ones read ahead are buffered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch

from ..errors import ProtocolError

__all__ = [
    "ImageSource",
    "TensorImages",
    "IndexedImages",
    "StreamedImages",
    "as_image_source",
    "ImageFeatureFeeder",
]


@runtime_checkable
class ImageSource(Protocol):
    """Pixels of the images of a prompt, fetched by image index."""

    @property
    def count(self) -> int | None:
        """Number of images, or ``None`` when a stream does not know it in advance."""
        ...

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """Pixels of the images ``index`` (``(n,)`` long, ascending) as ``(n, 3, H, W)``."""
        ...


class TensorImages:
    """An :class:`ImageSource` over an already materialised ``(N, 3, H, W)`` tensor."""

    def __init__(self, pixel_values: torch.Tensor) -> None:
        if pixel_values.dim() != 4:
            raise ProtocolError(f"pixel_values must be (N, 3, H, W), got shape {tuple(pixel_values.shape)}")
        self.pixel_values = pixel_values

    @property
    def count(self) -> int:
        return self.pixel_values.shape[0]

    def take(self, index: torch.Tensor) -> torch.Tensor:
        return self.pixel_values[index.to(self.pixel_values.device)]


class IndexedImages:
    """A random-access :class:`ImageSource`: ``load(index (n,) long) -> (n, 3, H, W)``."""

    def __init__(self, count: int, load: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self._count = int(count)
        self.load = load

    @property
    def count(self) -> int:
        return self._count

    def take(self, index: torch.Tensor) -> torch.Tensor:
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= self.count):
            raise ProtocolError(f"image index {index.tolist()} outside the {self.count} images of the source")
        pixels = self.load(index)
        if pixels.dim() != 4 or pixels.shape[0] != len(index):
            raise ProtocolError(f"the image loader returned shape {tuple(pixels.shape)} for {len(index)} images; "
                                "expected (n, 3, H, W)")
        return pixels


class StreamedImages:
    """An :class:`ImageSource` reading ``(n, 3, H, W)`` pixel chunks from an iterable, once.

    Args:
        chunks: pixel chunks in placeholder order (any chunk sizes).
        count: total number of images, when known (checked against the placeholders before
            any image is read); ``None`` checks it when the stream ends.
    """

    def __init__(self, chunks: Iterable[torch.Tensor], count: int | None = None) -> None:
        self._chunks: Iterator[torch.Tensor] = iter(chunks)
        self._count = count
        self._buffer: dict[int, torch.Tensor] = {}  # read, not taken yet
        self._next = 0  # index of the next image the iterable will yield
        self._exhausted = False

    @property
    def count(self) -> int | None:
        return self._count

    def _read_until(self, last: int) -> None:
        while self._next <= last:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._exhausted = True
                raise ProtocolError(f"the image stream ended after {self._next} images, but the prompt has "
                                    f"placeholders for image {last + 1} at least")
            if chunk.dim() == 3:
                chunk = chunk.unsqueeze(0)
            for image in chunk:
                self._buffer[self._next] = image
                self._next += 1

    def take(self, index: torch.Tensor) -> torch.Tensor:
        wanted = [int(i) for i in index]
        if not wanted:
            raise ProtocolError("take() needs at least one image index")
        self._read_until(max(wanted))
        missing = [i for i in wanted if i not in self._buffer]
        if missing:
            raise ProtocolError(f"images {missing} were already consumed from the stream (it is read once)")
        return torch.stack([self._buffer.pop(i) for i in wanted])

    def finish(self) -> None:
        """Check that the stream holds no image beyond the ones the prompt used."""
        if self._buffer:
            raise ProtocolError(f"{len(self._buffer)} streamed images were never used by a placeholder")
        if not self._exhausted and next(self._chunks, None) is not None:
            raise ProtocolError(f"the image stream yields more images than the prompt's {self._next} placeholders")


def as_image_source(images: Any, count: int | None = None) -> ImageSource | None:
    """Wrap whatever the caller passed as images into an :class:`ImageSource`.

    Args:
        images: ``None``, a ``(N, 3, H, W)`` tensor, an :class:`ImageSource`, a callable
            ``load(index) -> pixels`` (needs ``count``) or an iterable of pixel chunks.
        count: number of images for a callable or an iterable.
    """
    if images is None:
        return None
    # Before the protocol check: a tensor has a `take` method of its own (flat indexing).
    if isinstance(images, torch.Tensor):
        return TensorImages(images)
    if isinstance(images, ImageSource):
        return images
    if callable(images):
        if count is None:
            raise ProtocolError("a callable image loader needs the number of images (count=...)")
        return IndexedImages(count, images)
    if isinstance(images, Iterable):
        return StreamedImages(images, count)
    raise ProtocolError(f"cannot use {type(images).__name__} as images: pass a tensor, an ImageSource, "
                        "a loader callable or an iterable of pixel chunks")


class ImageFeatureFeeder:
    """Embeds one prefill chunk at a time, encoding only the images that chunk needs.

    Args:
        model: a :class:`~longllava_sdk.LongLLaVAForConditionalGeneration` (its
            ``get_image_features`` and input embeddings are used).
        input_ids: ``(B, L)`` the whole prompt.
        source: the prompt's images, or ``None`` for a text-only prompt.

    Raises:
        ProtocolError: placeholder count and image count disagree (when the source knows its count).
    """

    def __init__(self, model: Any, input_ids: torch.Tensor, source: ImageSource | None) -> None:
        cfg = model.config
        self.model = model
        self.tokens = cfg.tokens_per_image
        self.vision_chunk = max(1, int(cfg.vision_chunk_size))
        self.image_token_id = cfg.image_token_id
        self.pad_id = cfg.text_config.pad_token_id or 0
        self.source = source
        self.image_mask = input_ids == cfg.image_token_id  # (B, L)
        placeholders = int(self.image_mask.sum())
        known = 0 if source is None else source.count
        if known is not None and placeholders != known * self.tokens:
            raise ProtocolError(
                f"the input has {placeholders} image placeholder tokens "
                f"({placeholders / self.tokens:g} images of {self.tokens} tokens) but {known} images were given"
            )
        # Row-major rank of every placeholder: image = rank // T, token within it = rank % T.
        self.rank = (self.image_mask.flatten().cumsum(0) - 1).view_as(self.image_mask)
        self.images = placeholders // self.tokens
        self.pending: dict[int, torch.Tensor] = {}  # image -> (T, C_text) projected features
        self.encoded = 0

    def embed(self, start: int, end: int, input_ids: torch.Tensor) -> torch.Tensor:
        """``inputs_embeds`` ``(B, end - start, C_text)`` for columns ``start:end`` of the prompt."""
        ids = input_ids[:, start:end]
        mask = self.image_mask[:, start:end]
        embeds = self.model.get_input_embeddings()(ids.masked_fill(mask, self.pad_id))
        if not bool(mask.any()):
            return embeds
        ranks = self.rank[:, start:end][mask]  # row-major, as masked_scatter fills
        image, token = ranks // self.tokens, ranks % self.tokens
        needed = torch.unique(image)  # ascending
        missing = torch.tensor([int(i) for i in needed if int(i) not in self.pending], dtype=torch.long)
        # Pixels are read ``vision_chunk_size`` images at a time, however long the prefill chunk:
        # a one-shot prefill of 1000 images never holds 1000 images' pixels.
        for group in missing.split(self.vision_chunk) if len(missing) else ():
            features = self.model.get_image_features(self.source.take(group))  # (n, T, C_text)
            self.encoded += len(group)
            for i, feat in zip(group.tolist(), features):
                self.pending[i] = feat
        stacked = torch.stack([self.pending[int(i)] for i in needed])  # (n_needed, T, C_text)
        rows = stacked[torch.searchsorted(needed, image), token]
        # An image is finished once its last placeholder has been embedded (runs are contiguous).
        for i in image[token == self.tokens - 1].tolist():
            self.pending.pop(int(i), None)
        return embeds.masked_scatter(mask.unsqueeze(-1), rows.to(embeds.dtype))

    def finish(self) -> None:
        """Check that every image was used and release what is left."""
        if self.pending:
            raise ProtocolError(f"images {sorted(self.pending)} have placeholder runs shorter than {self.tokens}")
        if isinstance(self.source, StreamedImages):
            self.source.finish()
