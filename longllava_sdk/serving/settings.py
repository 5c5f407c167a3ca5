"""``ServerSettings``: every limit and security switch of the HTTP server, validated once.

The defaults are the safe ones: no server-side paths (``root=None``), no remote URLs (empty
``allow_remote``), one generation at a time with a short queue, and caps on body size, images
per request and pixels per image. Standard library only: the CLI imports this module to build
its flags even where the ``serve`` extra is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, option_hint

MIB = 1024 * 1024

#: Adapter options a client may set in a content part. Only options that change *what* is read
#: (window, series, clip, bands...) are listed: options that are themselves limits
#: (``max_pixels``, ``max_side``, ``output_size``, ``tile_size``, ``gdal_cache_mb``...) stay as
#: the operator configured the adapters, so a request cannot raise its own resource budget.
#: A third-party adapter's options are refused until the operator lists them
#: (``--client-adapter-options``).
DEFAULT_CLIENT_ADAPTER_OPTIONS: tuple[str, ...] = (
    # volumes
    "window", "series_uid", "allow_non_parallel", "percentiles", "axis", "volume_index",
    # video
    "sampling", "num_frames", "fps", "start", "end", "keep_endpoints", "stream",
    # rasters
    "bands", "value_range", "drop_empty", "palette", "resampling",
    # images
    "split_mode", "max_tiles", "background",
)


@dataclass(frozen=True)
class ServerSettings:
    """Limits and security switches of one server (see docs/serving.md).

    Attributes:
        model_name: the model id clients send as ``model`` and ``/v1/models`` lists.
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
        client_adapter_options: adapter options a client may set (see
            :data:`DEFAULT_CLIENT_ADAPTER_OPTIONS`).
        max_request_memory: the server-wide memory budget of requests in flight ("4GB",
            "512MB"): each request is admitted by its planned peak (docs/serving.md); one over
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

    model_name: str = "longllava"
    root: Path | None = None
    api_key: str | None = None
    allow_remote: tuple[str, ...] = ()
    max_body_mb: float = 32.0
    max_image_mb: float = 20.0
    max_images: int = 256
    max_image_pixels: int = 40_000_000
    max_tokens: int = 4096
    default_max_tokens: int = 256
    max_concurrent: int = 1
    max_queue: int = 4
    request_timeout: float = 300.0
    remote_timeout: float = 10.0
    max_redirects: int = 3
    max_folder_entries: int = 10_000
    client_adapter_options: tuple[str, ...] = DEFAULT_CLIENT_ADAPTER_OPTIONS
    max_request_memory: str | None = None
    max_prompt_kb: float | None = None
    isolate_decoding: bool = True
    decode_timeout: float = 30.0
    decode_memory_mb: int = 2048
    header_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    body_timeout: float = 60.0
    max_connections: int = 256

    def __post_init__(self) -> None:
        if not self.model_name.strip():
            raise ConfigError(f"the model name must not be empty ({option_hint('model_name', 'NAME')})")
        if self.root is not None:
            given = Path(self.root).expanduser()
            if not given.is_dir():
                raise ConfigError(f"{given}: the server root must be an existing folder ({option_hint('root', 'DIR')})")
            # Resolved once: every client path is compared with the real folder, symlinks followed.
            object.__setattr__(self, "root", given.resolve(strict=True))
        if self.api_key is not None and not self.api_key.strip():
            object.__setattr__(self, "api_key", None)
        object.__setattr__(self, "allow_remote", tuple(self.allow_remote))
        object.__setattr__(self, "client_adapter_options", tuple(self.client_adapter_options))
        positive = {
            "max_body_mb": self.max_body_mb, "max_image_mb": self.max_image_mb,
            "max_images": self.max_images, "max_image_pixels": self.max_image_pixels,
            "max_tokens": self.max_tokens, "default_max_tokens": self.default_max_tokens,
            "max_concurrent": self.max_concurrent, "request_timeout": self.request_timeout,
            "remote_timeout": self.remote_timeout, "max_folder_entries": self.max_folder_entries,
            "decode_timeout": self.decode_timeout, "decode_memory_mb": self.decode_memory_mb,
            "header_timeout": self.header_timeout, "keep_alive_timeout": self.keep_alive_timeout,
            "body_timeout": self.body_timeout, "max_connections": self.max_connections,
            "max_prompt_kb": self.max_prompt_kb if self.max_prompt_kb is not None else 1,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value} ({option_hint(name, 'N')})")
        for name, value in {"max_queue": self.max_queue, "max_redirects": self.max_redirects}.items():
            if value < 0:
                raise ConfigError(f"{name} must be 0 or more, got {value} ({option_hint(name, 'N')})")
        if self.max_request_memory is not None:
            _memory_bytes(self.max_request_memory)  # a malformed size fails here, before the model loads
        if self.default_max_tokens > self.max_tokens:
            raise ConfigError(f"default_max_tokens ({self.default_max_tokens}) is above max_tokens ({self.max_tokens})")

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
    from ..planner import parse_memory  # the planner's sizes: 4GB, 512MB (GB = GiB)

    try:
        return parse_memory(text)
    except ConfigError as exc:
        raise ConfigError(f"max_request_memory: {exc} ({option_hint('max_request_memory', 'SIZE')})") from None
