"""From OpenAI-style messages to the Pipeline's messages, each turn with its own media.

Two steps, on purpose in two places:

* :meth:`ContentReader.parse` runs in the request handler, before the request takes a
  place in the queue: it validates every part, resolves server-side paths inside the root,
  decodes ``data:`` URLs, fetches allowlisted remote images and checks image headers. A
  bad request is refused at once, without waiting for a worker.
* :meth:`ContentReader.read` runs in the worker thread once the request has its turn: the
  adapters read and decode the media (the expensive part), inside the request's image budget.
  With ``isolate_decoding`` (the default) every media part is read in a killable worker
  process (:mod:`longllava_sdk.isolation`) that hands back each image as the vision encoder
  sees it (336 px), so the server never holds a full-resolution decode.

Media placement follows the processor: without ``<image>`` markers in the text a turn's media
go before its text (the layout the model was trained on); with markers, one per media part,
each goes where its marker is.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ..adapters import allowed_root
from ..errors import LongLLaVAError
from ..media import Media
from ..pipeline import DEFAULT_VIDEO_FRAMES, MediaOptions, Pipeline
from .api_errors import APIError, PathRedactor, from_sdk_error
from .images import check_image, decode_data_url
from .remote import RemoteFetcher
from .schemas import ChatMessage, ImagePart, ImageURLPart, TextPart, VideoPart, VolumePart
from .security import RootJail
from .settings import ServerSettings


@dataclass
class MediaItem:
    """One media part of a message, checked but not read yet.

    Attributes:
        kind: the media kind asked for: ``images``, ``video``, ``volume`` or ``tiled``.
        param: where it is in the request (``messages[1].content[2]``).
        name: how messages name it (a path relative to the root, or ``image from a data URL``).
        path: the resolved server-side path(s), for path sources.
        data: the image bytes, for ``data:`` URLs and remote images.
        suffix: the file suffix ``data`` is stored under for the adapter.
        high_res: read the image as global view + sub-images.
        adapter: an adapter forced by name.
        adapter_options: options for the adapter.
        max_images: images this part may become (the request budget caps it too).
        files: image files found (a file: 1, a folder: its images), for the memory plan.
    """

    kind: str
    param: str
    name: str
    path: Path | list[Path] | None = None
    data: bytes | None = None
    suffix: str = ""
    high_res: bool = False
    adapter: str | None = None
    adapter_options: dict[str, Any] = field(default_factory=dict)
    max_images: int | None = None
    files: int = 0


@dataclass
class Turn:
    """One message: role (``system``, ``user``, ``assistant``), text and media in order."""

    role: str
    text: str
    media: list[MediaItem] = field(default_factory=list)


@dataclass
class Conversation:
    """A request's messages, checked, media not read yet."""

    turns: list[Turn]

    @property
    def media_parts(self) -> int:
        return sum(len(turn.media) for turn in self.turns)


class ContentReader:
    """Checks and reads the content of a request under a server's settings.

    Args:
        settings: the server's limits.
        jail: where server-side paths may point.
        fetcher: remote image fetching, ``None`` when no host is allowlisted (then every
            remote URL is refused).
    """

    def __init__(self, settings: ServerSettings, jail: RootJail, fetcher: RemoteFetcher | None) -> None:
        self.settings = settings
        self.jail = jail
        self.fetcher = fetcher

    # -- in the request handler -------------------------------------------------------------
    async def parse(self, messages: Sequence[ChatMessage], redact: PathRedactor) -> Conversation:
        """Check every message and part; :class:`APIError` for the first problem."""
        turns = []
        for m_index, message in enumerate(messages):
            role = "system" if message.role == "developer" else message.role
            texts: list[str] = []
            media: list[MediaItem] = []
            for p_index, part in enumerate(message.content):
                param = f"messages[{m_index}].content[{p_index}]"
                if isinstance(part, TextPart):
                    texts.append(part.text)
                    continue
                if role != "user":
                    raise APIError(400, f"only user messages may carry media, not {message.role} messages",
                                   code="invalid_content", param=param)
                media.append(await self._media(part, param, redact))
            turns.append(Turn(role, "\n".join(texts), media))
        conversation = Conversation(turns)
        if conversation.media_parts > self.settings.max_images:
            raise APIError(400, f"the request has {conversation.media_parts} media parts; this server reads at most "
                                f"{self.settings.max_images} images per request", code="too_many_images")
        return conversation

    async def _media(self, part: Any, param: str, redact: PathRedactor) -> MediaItem:
        if isinstance(part, ImageURLPart):
            return await self._image_url(part, param, redact)
        kind = ("images" if isinstance(part, ImagePart) else "video" if isinstance(part, VideoPart)
                else "volume" if isinstance(part, VolumePart) else "tiled")
        source = getattr(part, part.type)
        self._check_options(source.adapter_options, param, kind, source.adapter)
        item = MediaItem(kind=kind, param=param, name="", adapter=source.adapter,
                         adapter_options=dict(source.adapter_options), max_images=source.max_images,
                         high_res=bool(getattr(source, "high_res", False)))
        # Filesystem work (stat, a folder walk, a header read) off the event loop.
        return await asyncio.to_thread(self._server_path, item, source.path, redact)

    def _server_path(self, item: MediaItem, raw: str | list[str], redact: PathRedactor) -> MediaItem:
        raws = [raw] if isinstance(raw, str) else raw
        paths = [self.jail.resolve(p, param=item.param, redact=redact) for p in raws]
        item.path = paths[0] if isinstance(raw, str) else paths
        item.name = redact.public(paths[0]) + (f" (+{len(paths) - 1} more)" if len(paths) > 1 else "")
        if item.kind == "images":
            for path in paths:
                if path.is_file():
                    check_image(path, max_pixels=self.settings.max_image_pixels, param=item.param,
                                name=redact.public(path))
                    item.files += 1
                else:
                    item.files += self._check_folder_images(path, item.param, redact)
        return item

    def _check_folder_images(self, folder: Path, param: str, redact: PathRedactor) -> int:
        """The pixel cap for every image in a folder of images (files that are not images are
        left to the adapter, which skips them); how many images it holds."""
        found = 0
        for path in sorted(folder.iterdir()):
            if not path.is_file():
                continue
            try:
                check_image(path, max_pixels=self.settings.max_image_pixels, param=param, name=redact.public(path))
                found += 1
            except APIError as exc:
                if exc.code != "invalid_image":
                    raise
        return found

    async def _image_url(self, part: ImageURLPart, param: str, redact: PathRedactor) -> MediaItem:
        url = part.image_url.url.strip()
        item = MediaItem(kind="images", param=param, name="", high_res=part.image_url.detail == "high")
        scheme = url.split(":", 1)[0].lower() if ":" in url.split("/", 1)[0] else ""
        if scheme == "data":
            data = await asyncio.to_thread(decode_data_url, url, max_bytes=self.settings.max_image_bytes, param=param)
            item.name = f"the data URL image at {param}"
        elif scheme in ("http", "https"):
            if self.fetcher is None:
                raise APIError(400, "remote URL refused: this server fetches no remote URLs (its operator allows hosts "
                                    "with --allow-remote)", code="remote_url_refused", param=param)
            data = await self.fetcher.fetch(url, param=param)
            item.name = f"the remote image at {param}"
        elif scheme:
            raise APIError(400, f"image_url scheme {scheme!r} is not supported (data:, http(s): or a server-side path)",
                           code="invalid_image_url", param=param)
        else:
            return await asyncio.to_thread(self._server_path, item, url, redact)
        header = await asyncio.to_thread(check_image, data, max_pixels=self.settings.max_image_pixels, param=param,
                                         name=item.name)
        item.data, item.suffix, item.files = data, header.suffix, 1
        return item

    def _check_options(self, options: dict[str, Any], param: str, kind: str, adapter: str | None) -> None:
        if not options:
            return
        allowed_names = self.settings.client_adapter_options
        if allowed_names is None:  # what the adapters that may read this part declare
            from ..registry import available_adapters

            adapters = available_adapters()
            chosen = [adapters[adapter]] if adapter in adapters else [
                cls for cls in adapters.values() if adapter is None and cls.kind == kind]
            allowed_names = tuple(dict.fromkeys(o for cls in chosen for o in cls.client_options))
        refused = sorted(set(options) - set(allowed_names))
        if refused:
            allowed = ", ".join(allowed_names) or "none"
            raise APIError(400, f"adapter option(s) {', '.join(refused)} are fixed by this server's operator; "
                                f"clients may set: {allowed}", code="adapter_option_refused", param=param)

    def planned_images(self, pipeline: Pipeline, conversation: Conversation) -> int:
        """The most images the conversation's media can become (before any is decoded): a plain
        image part its files, any other part its budget; the request's cap over all."""
        planned = 0
        for turn in conversation.turns:
            for item in turn.media:
                if item.kind == "images" and not item.high_res:
                    planned += min(item.files, item.max_images or item.files)
                else:
                    planned += item.max_images or self._default_budget(pipeline, item.kind)
        return min(planned, self.settings.max_images)

    # -- in the worker thread -----------------------------------------------------------------
    def read(self, pipeline: Pipeline, conversation: Conversation, redact: PathRedactor) -> list[dict[str, Any]]:
        """The Pipeline's messages: every turn with its media read by the adapters, within the image budget."""
        left = self.settings.max_images
        messages: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory(prefix="longllava-serve-") as scratch:
            for turn in conversation.turns:
                media: list[Media | Image.Image] = []
                for item in turn.media:
                    if left < 1:
                        raise self._over_budget(item.param)
                    source = self._source(item, Path(scratch), redact)
                    limit = min(item.max_images or self._default_budget(pipeline, item.kind), left)
                    # The adapters confine every file they open to the jail's root (uploads: the
                    # scratch folder), closing the gap between the jail's check and the open and
                    # covering the files an adapter finds by itself.
                    root = Path(scratch) if item.data is not None else self.jail.root
                    try:
                        with allowed_root(root):
                            loaded = self._collect(pipeline, item, source, limit)
                    except LongLLaVAError as exc:
                        raise from_sdk_error(exc, redact, param=item.param) from None
                    left -= sum(len(m.images) if isinstance(m, Media) else 1 for m in loaded)
                    if left < 0:
                        raise self._over_budget(item.param)
                    media.extend(loaded)
                messages.append({"role": turn.role, "content": turn.text, "media": media})
        return messages

    def _source(self, item: MediaItem, scratch: Path, redact: PathRedactor) -> Path | list[Path]:
        if item.data is not None:
            # The images adapter reads files: a checked data URL / remote image is read exactly
            # like an uploaded file (format allowlist, truncation check, EXIF orientation).
            path = scratch / f"image_{len(os.listdir(scratch))}{item.suffix}"
            path.write_bytes(item.data)
            redact.add(path, item.name)
            return path
        assert item.path is not None
        # Checked again right before the adapter opens it: the tree may have changed since.
        paths = item.path if isinstance(item.path, list) else [item.path]
        checked = [self.jail.check(p, param=item.param, redact=redact) for p in paths]
        return checked if isinstance(item.path, list) else checked[0]

    @staticmethod
    def _default_budget(pipeline: Pipeline, kind: str) -> int:
        if kind == "video":
            return min(DEFAULT_VIDEO_FRAMES, pipeline.default_max_images)
        return pipeline.default_max_images

    @staticmethod
    def _collect(pipeline: Pipeline, item: MediaItem, source: Path | list[Path],
                 limit: int) -> list[Media | Image.Image]:
        # Decoded now: uploads live in a scratch folder only while the request is read, and a
        # server-side file must be read while it is the file the jail checked.
        options: MediaOptions = {"adapter_options": item.adapter_options, "max_images": limit, "defer_decoding": False}
        if item.adapter is not None:
            options["adapter"] = item.adapter
        if item.kind == "images":
            assert isinstance(source, Path)
            options["high_res"] = item.high_res
            return pipeline.collect_media([source], **options)
        if item.kind == "volume":
            options["volume"] = source
        else:
            assert isinstance(source, Path)
            options["video" if item.kind == "video" else "tiled"] = source
        return pipeline.collect_media(**options)

    def _over_budget(self, param: str) -> APIError:
        return APIError(400, f"the request's media hold more than {self.settings.max_images} images, this server's "
                             "limit per request (ask for fewer with max_images)", code="too_many_images", param=param)
