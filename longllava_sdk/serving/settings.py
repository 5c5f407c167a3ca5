"""``ServerSettings``: every limit and security switch of the HTTP server, validated once.

The defaults are the safe ones: no server-side paths (``root=None``), no remote URLs (empty
``allow_remote``), one generation at a time with a short queue, and caps on body size, images
per request and pixels per image. A pydantic model (the SDK's one validation stack, a core
dependency): the CLI imports this module to build its flags even where the ``serve`` extra is
not installed. Every problem is reported at once, each with the option that sets it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError, option_hint
from ..isolation import DecodeLimits
from ..validation import problems

MIB = 1024 * 1024

Positive = Field(gt=0)
NonNegative = Field(ge=0)


class ServerSettings(BaseModel):
    """Limits and security switches of one server (see docs/serving.md).

    Attributes:
        model_name: the model id clients send as ``model`` and ``/v1/models`` lists; default: the
            served folder's name (``serve``), ``longllava`` (an app built by ``create_app``).
        root: the only folder server-side paths may name (symlinks resolved); ``None``
            refuses every server-side path.
        api_key: required as ``Authorization: Bearer KEY`` on every route but ``/health``;
            ``None`` means no authentication (only sensible on 127.0.0.1).
        allow_remote: hosts (``images.example.org``, ``*.example.org``) and IP networks
            (``203.0.113.0/24``, ``127.0.0.1``) ``image_url`` may fetch from; empty refuses
            every remote URL. Private, loopback and link-local addresses are refused unless
            a network entry lists them.
        max_body_mb: largest request body, in MiB.
        max_image_mb: largest image after base64 decoding or download, in MiB.
        max_images: images per request, all sources together (frames, slices and tiles count).
        max_image_pixels: pixels an image may declare in its header (checked before decoding).
        max_tokens: the most ``max_tokens`` a request may ask for.
        default_max_tokens: ``max_tokens`` when a request gives none.
        max_concurrent: generations running at once (each in a worker thread).
        max_queue: requests waiting for a worker; one more is answered 429 at once.
        request_timeout: seconds from acceptance to the last token (queue wait, media
            reading and generation together); past it the request ends with 504.
        remote_timeout: seconds for each remote fetch (connect + read).
        max_redirects: redirects a remote fetch follows (each target checked again).
        max_folder_entries: files and folders a server-side folder (a DICOM series) may hold.
        client_adapter_options: adapter options a client may set; ``None`` (default): those
            each adapter declares in its ``client_options`` (options that choose *what* is
            read, never a limit).
        max_request_memory: the server-wide memory budget of requests in flight ("4GiB",
            "512MiB"): each request is admitted by its planned peak (docs/serving.md); one over
            the whole budget gets 413, one over what is left 429. ``None``: half of the memory
            available when the server starts (after the model is loaded).
        max_prompt_kb: largest prompt text (all messages), in KiB of UTF-8, checked before
            tokenising (413); ``None``: 8 bytes per token of the model's context.
        isolate_decoding: decode media in killable worker processes under ``decode_timeout``
            and ``decode_memory_mb`` (OS limits); off only for trusted inputs.
        decode_timeout: seconds one media part may take to decode (its worker is killed after).
        decode_memory_mb: MiB a decoding worker's address space may grow by.
        header_timeout: seconds a connection may take to send a complete request head.
        keep_alive_timeout: seconds an idle keep-alive connection stays open.
        body_timeout: seconds a client may take to send a request body.
        max_connections: open connections; more are closed at once (and requests past it
            get 503).
    """


    # protected_namespaces=(): `model_name` is a setting, not pydantic API (pydantic < 2.10 warns)
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    model_name: Annotated[str, Field(min_length=1)] | None = None
    root: Path | None = None
    api_key: str | None = None
    allow_remote: tuple[str, ...] = ()
    max_body_mb: Annotated[float, Positive] = 32.0
    max_image_mb: Annotated[float, Positive] = 20.0
    max_images: Annotated[int, Positive] = 256
    max_image_pixels: Annotated[int, Positive] = 40_000_000
    max_tokens: Annotated[int, Positive] = 4096
    default_max_tokens: Annotated[int, Positive] = 256
    max_concurrent: Annotated[int, Positive] = 1
    max_queue: Annotated[int, NonNegative] = 4
    request_timeout: Annotated[float, Positive] = 300.0
    remote_timeout: Annotated[float, Positive] = 10.0
    max_redirects: Annotated[int, NonNegative] = 3
    max_folder_entries: Annotated[int, Positive] = 10_000
    client_adapter_options: tuple[str, ...] | None = None
    max_request_memory: str | None = None
    max_prompt_kb: Annotated[float, Positive] | None = None
    isolate_decoding: bool = True
    decode_timeout: Annotated[float, Positive] = DecodeLimits.timeout_s
    decode_memory_mb: Annotated[int, Positive] = DecodeLimits.memory_mb
    header_timeout: Annotated[float, Positive] = 10.0
    keep_alive_timeout: Annotated[float, Positive] = 5.0
    body_timeout: Annotated[float, Positive] = 60.0
    max_connections: Annotated[int, Positive] = 256

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:  # one ConfigError, each problem with the option that sets it
            lines = []
            for line in problems(exc, type(self)):
                name = line.split(":", 1)[0].split(".")[0]
                hint = option_hint(name, "DIR" if name == "root" else "NAME" if name == "model_name" else "N")
                lines.append(f"{line} ({hint})" if name in type(self).model_fields else line)
            raise ConfigError("invalid server settings: " + "; ".join(lines)) from None

    @field_validator("model_name")
    @classmethod
    def _named(cls, name: str | None) -> str | None:
        if name is not None and not name.strip():
            raise ValueError("the model name must not be empty")
        return name

    @field_validator("root")
    @classmethod
    def _real_root(cls, root: Path | None) -> Path | None:
        if root is None:
            return None
        given = Path(root).expanduser()
        if not given.is_dir():
            raise ValueError(f"{given}: the server root must be an existing folder")
        # Resolved once: every client path is compared with the real folder, symlinks followed.
        return given.resolve(strict=True)

    @field_validator("max_request_memory")
    @classmethod
    def _memory(cls, size: str | None) -> str | None:
        if size is not None:
            _memory_bytes(size)  # a malformed size fails here, before the model loads
        return size

    @field_validator("api_key")
    @classmethod
    def _key(cls, key: str | None) -> str | None:
        return key if key is not None and key.strip() else None

    @model_validator(mode="after")
    def _token_defaults(self) -> ServerSettings:
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(f"default_max_tokens ({self.default_max_tokens}) is above max_tokens ({self.max_tokens})")
        return self

    def with_model_name(self, default: str) -> ServerSettings:
        """These settings, with ``default`` as the model name when none was set."""
        return self if self.model_name is not None else self.model_copy(update={"model_name": default})

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * MIB)

    @property
    def max_image_bytes(self) -> int:
        return int(self.max_image_mb * MIB)

    @property
    def request_memory_bytes(self) -> int | None:
        """``max_request_memory`` in bytes (``None``: chosen from the machine at start)."""
        return None if self.max_request_memory is None else _memory_bytes(self.max_request_memory)

    @property
    def capacity(self) -> int:
        """Requests the server holds at once (running + queued); the next one gets 429."""
        return self.max_concurrent + self.max_queue


def _memory_bytes(text: str) -> int:
    from ..units import parse_size  # the SDK's one size rule: 4GiB, 512MiB (GB = 10^9)

    return parse_size(text, default_unit="gib", what="max_request_memory", example="4GiB or 512MiB")
