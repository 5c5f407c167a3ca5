"""OpenAI-compatible HTTP serving of a LongLLaVA model (``longllava-sdk serve``; docs/serving.md).

::

    from longllava_sdk.serving import serve, create_app, ServerSettings

    serve("runs/medical-lora/model", root="/data/studies")       # blocks; 127.0.0.1:8000
    app = create_app(pipeline, ServerSettings(root=Path("/data")))  # an ASGI app to embed or test

Modules: ``app`` (routes), ``content`` (messages and media parts), ``security`` (API key,
root jail), ``remote`` (allowlisted image fetching), ``images`` (data URLs, header checks),
``engine`` (worker threads, queue, 429), ``generation`` (the generate call), ``detokenize``
(answer text), ``settings`` (limits), ``server`` (``serve``). The server's libraries come with
the ``serve`` extra; only :func:`create_app` and :func:`serve` need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .server import API_KEY_ENV, serve
from .settings import ServerSettings

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from ..pipeline import Pipeline


def create_app(pipeline: "Pipeline | None", settings: ServerSettings | None = None, **loading: Any) -> "Starlette":
    """The ASGI app serving ``pipeline`` (see :func:`longllava_sdk.serving.app.create_app`; ``loading``:
    its ``load`` / ``address`` / ``on_load_error`` arguments)."""
    from .server import require_serve_extra

    require_serve_extra()
    from .app import create_app as build

    return build(pipeline, settings, **loading)


__all__ = ["API_KEY_ENV", "ServerSettings", "create_app", "serve"]
