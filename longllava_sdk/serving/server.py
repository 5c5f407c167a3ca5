"""``serve``: load a model folder and serve it over HTTP with uvicorn (``longllava-sdk serve``).

Imports nothing outside the standard library at module level: the CLI builds the command's
flags from this signature even where the ``serve`` extra is not installed.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

from typing import Any

from ..errors import ConfigError, option_hint
from ..options import LoadOptions, reject_unknown, take_options
from .settings import ServerSettings

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
    model: str | None = None,
    *,
    settings: ServerSettings | None = None,
    load: LoadOptions | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    access_log: bool = True,
    log_level: str = "info",
    **fields: Any,
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (chat completions, SSE streaming, media parts).

    Binds 127.0.0.1 unless told otherwise; see docs/serving.md for the endpoints, the
    content-part extension (volume / video / tiled / image paths) and the security defaults.
    Runs until interrupted (Ctrl-C). `serve DIR` is accepted for `serve --model DIR`. The server
    listens while the model loads (``GET /health`` answers ``loading`` with 503, then ``ready``)
    and logs ``ready: http://HOST:PORT (model NAME, N parameters)`` when it can answer.

    Args:
        model: model folder (safetensors), from init-model, finetune or convert-official.
        settings: the server's limits and security switches (:class:`ServerSettings`; its fields
            are flat flags on the CLI: --root, --max-queue...). Its api_key defaults to the
            LONGLLAVA_API_KEY environment variable (preferred: flags show in the process list).
        load: device / dtype / int8 quantization of the model (:class:`~longllava_sdk.options.LoadOptions`).
        host: address to bind; anything but loopback exposes the model to the network
            (then set an API key).
        port: TCP port (0: any free port; the log says which).
        access_log: log one line per request.
        log_level: uvicorn's log level (critical, error, warning, info, debug).
        fields: :class:`ServerSettings` / :class:`~longllava_sdk.options.LoadOptions` fields by name
            (``root="/data"``, ``quantize="int8"``).
    """
    require_serve_extra()
    settings = take_options(fields, ServerSettings, settings)
    load = take_options(fields, LoadOptions, load)
    reject_unknown(fields, "serve")
    if model is None:
        raise ConfigError(f"which model? pass {option_hint('model', 'DIR')}")
    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be 0-65535, got {port} ({option_hint('port', 'N')})")
    settings = settings.with_model_name(Path(model).resolve().name)
    if settings.api_key is None and os.environ.get(API_KEY_ENV):
        settings = settings.model_copy(update={"api_key": os.environ[API_KEY_ENV]})
    import uvicorn

    from ..model_folders import check_model_folder
    from ..pipeline import Pipeline
    from .app import create_app
    from .connections import uvicorn_options
    from .remote import RemotePolicy

    RemotePolicy(settings.allow_remote)  # a malformed entry fails here, before the model loads
    check_model_folder(model)  # a wrong folder fails in a second, before the server listens

    load_options = load.kwargs()

    def load_pipeline() -> Pipeline:
        pipeline = Pipeline.from_pretrained(model, **load_options)
        if settings.isolate_decoding:
            from ..isolation import warm_up

            warm_up()  # the decoding workers' fork server imports the SDK once: before "ready"
        return pipeline

    def failed(exc: BaseException) -> None:  # the load failed: stop listening, serve() raises it
        runner.should_exit = True

    # The server listens while the model loads (GET /health: "loading", 503); the app logs
    # "ready: http://HOST:PORT (model NAME, N parameters)" when both are done.
    app = create_app(None, settings, load=load_pipeline, address=lambda: listening_url(runner), on_load_error=failed)
    runner = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                                           **uvicorn_options(settings)))
    if not _is_loopback(host) and settings.api_key is None:
        logger.warning("serving on %s without an API key: anyone who can reach this address can use the model "
                       "(set %s or pass %s)", host, API_KEY_ENV, option_hint("api_key", "KEY"))
    logger.info("model %r; server-side paths: %s; remote images: %s; API key: %s", settings.model_name,
                f"under {settings.root}" if settings.root else "refused",
                ", ".join(settings.allow_remote) if settings.allow_remote else "refused",
                "required" if settings.api_key else "not required")
    try:
        runner.run()
    except KeyboardInterrupt:  # Ctrl-C: uvicorn shut down cleanly and re-raised the signal (as uvicorn.run does)
        pass
    error = app.state.server.load_error
    if error is not None:
        raise error


def listening_url(runner: object) -> str | None:
    """``http://HOST:PORT`` of a started ``uvicorn.Server`` (the port it really bound: ``--port 0``); ``None`` before."""
    if not getattr(runner, "started", False):
        return None
    for server in getattr(runner, "servers", ()):
        for sock in server.sockets or ():
            host, port = sock.getsockname()[:2]
            return f"http://{f'[{host}]' if ':' in host else host}:{port}"
    return None
