"""``serve``: load a model folder and serve it over HTTP with uvicorn (``longllava-sdk serve``).

Imports nothing outside the standard library at module level: the CLI builds the command's
flags from this signature even where the ``serve`` extra is not installed.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

from ..errors import ConfigError, option_hint
from .settings import DEFAULT_CLIENT_ADAPTER_OPTIONS, ServerSettings

logger = logging.getLogger("longllava_sdk.serving")

#: Read when no API key is passed (keeps the key out of the process list and shell history).
API_KEY_ENV = "LONGLLAVA_API_KEY"


def require_serve_extra() -> None:
    """Raise :class:`ConfigError` naming the extra when the server's libraries are missing."""
    missing = []
    for module in ("starlette", "uvicorn", "pydantic", "httpx"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ConfigError(f"serving needs {', '.join(missing)}: pip install 'longllava-sdk[serve]'")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    root: str | None = None,
    api_key: str | None = None,
    model_name: str | None = None,
    allow_remote: list[str] | None = None,
    max_concurrent: int = 1,
    max_queue: int = 4,
    max_images: int = 256,
    max_image_pixels: int = 40_000_000,
    max_body_mb: float = 32.0,
    max_image_mb: float = 20.0,
    max_tokens: int = 4096,
    default_max_tokens: int = 256,
    request_timeout: float = 300.0,
    client_adapter_options: list[str] | None = None,
    max_request_memory: str | None = None,
    max_prompt_kb: float | None = None,
    isolate_decoding: bool = True,
    decode_timeout: float = 30.0,
    decode_memory_mb: int = 2048,
    header_timeout: float = 10.0,
    max_connections: int = 256,
    device: str = "auto",
    dtype: str | None = None,
    quantize: str | None = None,
    access_log: bool = True,
    log_level: str = "info",
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (chat completions, SSE streaming, media parts).

    Binds 127.0.0.1 unless told otherwise; see docs/serving.md for the endpoints, the
    content-part extension (volume / video / tiled / image paths) and the security defaults.
    Runs until interrupted (Ctrl-C).

    Args:
        model: model folder (safetensors), from init-model, finetune or convert-official.
        host: address to bind; anything but loopback exposes the model to the network
            (then set an API key).
        port: TCP port (0: any free port; the log says which).
        root: folder server-side paths may name (symlinks resolved inside it); default: none,
            every server-side path is refused.
        api_key: required as 'Authorization: Bearer KEY' on every route but /health; default:
            the LONGLLAVA_API_KEY environment variable (preferred: flags show in the process list).
        model_name: the model id clients send (default: the folder's name).
        allow_remote: hosts (example.org, *.example.org) and IP networks (203.0.113.0/24) image
            URLs may be fetched from; default: none, every remote URL is refused.
        max_concurrent: generations running at once.
        max_queue: requests waiting for a generation slot; one more gets 429 at once.
        max_images: images per request (frames, slices and tiles included).
        max_image_pixels: pixels an image may declare in its header (checked before decoding).
        max_body_mb: largest request body in MiB.
        max_image_mb: largest image (decoded data URL or download) in MiB.
        max_tokens: the most max_tokens a request may ask for.
        default_max_tokens: max_tokens when a request gives none.
        request_timeout: seconds a request may take from acceptance to its last token (504 after).
        client_adapter_options: adapter options clients may set in content parts (default: the
            options that choose what is read, e.g. window, series_uid, sampling, bands; never
            limits such as max_pixels).
        max_request_memory: memory the requests in flight may plan to hold together, e.g. 4GB
            (one planned over it: 413; over what is left: 429); default: half of the memory
            available once the model is loaded.
        max_prompt_kb: largest prompt text in KiB (413); default: 8 bytes per context token.
        isolate_decoding: decode media in killable worker processes (--no-isolate-decoding
            only for trusted inputs).
        decode_timeout: seconds one media part may take to decode (then 422 decode_timeout).
        decode_memory_mb: MiB a decoding worker may grow by (then 422 decode_memory).
        header_timeout: seconds a connection may take to send its request head.
        max_connections: open connections (more are closed at once).
        device: auto, cpu, cuda, cuda:1...
        dtype: float32, bfloat16, float16 (default: bf16 on GPU, fp32 on CPU).
        quantize: int8: the language model's linear layers in 8 bits, Mamba and vision kept
            (docs/quantization.md).
        access_log: log one line per request.
        log_level: uvicorn's log level (critical, error, warning, info, debug).
    """
    require_serve_extra()
    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be 0-65535, got {port} ({option_hint('port', 'N')})")
    settings = ServerSettings(
        model_name=model_name or Path(model).resolve().name,
        root=Path(root) if root is not None else None,
        api_key=api_key if api_key is not None else os.environ.get(API_KEY_ENV),
        allow_remote=tuple(allow_remote or ()),
        max_body_mb=max_body_mb, max_image_mb=max_image_mb, max_images=max_images,
        max_image_pixels=max_image_pixels, max_tokens=max_tokens, default_max_tokens=default_max_tokens,
        max_concurrent=max_concurrent, max_queue=max_queue, request_timeout=request_timeout,
        client_adapter_options=tuple(client_adapter_options if client_adapter_options is not None
                                     else DEFAULT_CLIENT_ADAPTER_OPTIONS),
        max_request_memory=max_request_memory, max_prompt_kb=max_prompt_kb, isolate_decoding=isolate_decoding,
        decode_timeout=decode_timeout, decode_memory_mb=decode_memory_mb, header_timeout=header_timeout,
        max_connections=max_connections,
    )
    import uvicorn

    from ..pipeline import Pipeline
    from .app import create_app
    from .connections import uvicorn_options
    from .remote import RemotePolicy

    RemotePolicy(settings.allow_remote)  # a malformed entry fails here, before the model loads
    pipeline = Pipeline.from_pretrained(model, device=device, dtype=dtype, quantize=quantize)
    app = create_app(pipeline, settings)
    if settings.isolate_decoding:
        from ..isolation import warm_up

        warm_up()  # the decoding workers' fork server imports the SDK once: before the first request
    if not _is_loopback(host) and settings.api_key is None:
        logger.warning("serving on %s without an API key: anyone who can reach this address can use the model "
                       "(set %s or pass %s)", host, API_KEY_ENV, option_hint("api_key", "KEY"))
    logger.info("model %r; server-side paths: %s; remote images: %s; API key: %s", settings.model_name,
                f"under {settings.root}" if settings.root else "refused",
                ", ".join(settings.allow_remote) if settings.allow_remote else "refused",
                "required" if settings.api_key else "not required")
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log, **uvicorn_options(settings))
