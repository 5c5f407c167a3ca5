"""Request bodies of the HTTP API (pydantic), with the content-part extension.

Standard OpenAI content parts: ``{"type": "text", "text": ...}`` and ``{"type": "image_url",
"image_url": {"url": ..., "detail": ...}}``. The extension adds one part type per media kind,
all of the same shape (docs/serving.md)::

    {"type": "volume", "volume": {"path": "ct/series_01", "adapter_options": {"window": "lung"}}}
    {"type": "video",  "video":  {"path": "clips/a.mp4", "max_images": 32}}
    {"type": "tiled",  "tiled":  {"path": "scenes/s.tif", "adapter": "geotiff"}}
    {"type": "image",  "image":  {"path": "slides/a.png", "high_res": true}}

Unknown fields of the standard request are ignored (clients send many); unknown fields of an
extension part are refused (a misspelt ``adapter_option`` must not be silently dropped).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Standard(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Standard):
    type: Literal["text"]
    text: str


class ImageURL(_Standard):
    """``url``: a ``data:image/...;base64,`` URL, an ``http(s)://`` URL (allowlisted hosts only)
    or a server-side path under the root. ``detail: "high"`` reads the image in high resolution
    (global view + 336 px sub-images)."""

    url: str
    detail: Literal["auto", "low", "high"] = "auto"


class ImageURLPart(_Standard):
    type: Literal["image_url"]
    image_url: ImageURL


class MediaSource(_Strict):
    """A server-side source under the root, read by an adapter of the part's kind.

    Attributes:
        path: relative to the server root (or absolute inside it).
        adapter: force an adapter by name (it must read this kind).
        adapter_options: options for the adapter (those the server lets clients set).
        max_images: images this source may become (capped by the request's image budget).
    """

    path: str
    adapter: str | None = None
    adapter_options: dict[str, Any] = Field(default_factory=dict)
    max_images: Annotated[int, Field(ge=1)] | None = None


class ImageSource(MediaSource):
    high_res: bool = False


class VolumeSource(MediaSource):
    path: str | Annotated[list[str], Field(min_length=1)]  # type: ignore[assignment]  # a DICOM file list too


class ImagePart(_Strict):
    type: Literal["image"]
    image: ImageSource


class VideoPart(_Strict):
    type: Literal["video"]
    video: MediaSource


class VolumePart(_Strict):
    type: Literal["volume"]
    volume: VolumeSource


class TiledPart(_Strict):
    type: Literal["tiled"]
    tiled: MediaSource


ContentPart = Annotated[Union[TextPart, ImageURLPart, ImagePart, VideoPart, VolumePart, TiledPart],
                        Field(discriminator="type")]
#: The media part types of the extension, by media kind.
MEDIA_PARTS = ("image", "video", "volume", "tiled")


class ChatMessage(_Standard):
    """One message; ``developer`` is treated as ``system``. Tool and function messages are not supported."""

    role: Literal["system", "developer", "user", "assistant"]
    content: list[ContentPart] = Field(default_factory=list)

    @field_validator("content", mode="before")
    @classmethod
    def _text_as_part(cls, value: Any) -> Any:
        # A plain string is one text part (so validation errors name parts, not union members).
        if value is None:
            return []
        return [{"type": "text", "text": value}] if isinstance(value, str) else value


class StreamOptions(_Standard):
    include_usage: bool = False


class ChatCompletionRequest(_Standard):
    """``POST /v1/chat/completions``.

    ``temperature`` omitted or 0 is greedy decoding (the SDK's default; OpenAI's is 1).
    ``min_tokens`` is an extension (as in vLLM): generate at least that many tokens.
    ``experts`` is an extension: the expert plugins whose findings enter the user turns
    (``[]``: none; omitted or null: the server's default, every installed expert).
    """

    model: str
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: Annotated[list[str], Field(max_length=4)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    experts: Annotated[list[str], Field(max_length=64)] | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class ClassifyRequest(_Standard):
    """``POST /v1/classify`` (models with a fine-tuned task head): the messages' single user turn
    (text + media, same content parts as chat) is classified. ``experts`` as in chat."""

    model: str
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    experts: Annotated[list[str], Field(max_length=64)] | None = None
