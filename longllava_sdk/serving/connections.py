"""Connection limits uvicorn does not have: a deadline for the request head, a cap on open connections.

uvicorn (0.40-0.55) closes idle keep-alive connections (``timeout_keep_alive``) and answers
503 past ``limit_concurrency``, but it has no timeout for reading a request's head: a client
that opens a connection and sends its headers one byte a minute (slowloris) holds it forever,
and 900 of them hold 900 sockets. :class:`GuardedH11Protocol` (uvicorn's h11 protocol,
subclassed, passed to uvicorn as ``http=``) adds both:

* every connection must deliver a complete request head within ``header_timeout`` seconds
  of its first byte (or of its opening / the previous response), else it is closed;
* a connection opened while ``max_connections`` are open is closed at once.

:func:`uvicorn_options` is what ``serve`` passes to ``uvicorn.run`` (tests build their
servers from it too). The body is bounded by the app (``body_timeout``, ``max_body_mb``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import ServerSettings

#: h11's limit on a request head (bytes); a longer head is answered 400.
MAX_HEAD_BYTES = 64 * 1024


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline and a connection cap (see the module)."""

    header_timeout: float = 10.0
    max_connections: int = 256

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.max_connections:
            self.logger.warning("closing a connection: %d are open, this server's limit is %d",
                                len(self.connections), self.max_connections)
            transport.close()
            return
        self._watch_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    # -- the head deadline ----------------------------------------------------------------------
    def _watch_head(self) -> None:
        """Armed while the client owes a request head (h11 says ``IDLE``), disarmed once it came."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)
        elif not waiting:
            self._stop_head_timer()

    def _stop_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def uvicorn_options(settings: ServerSettings) -> dict[str, Any]:
    """``uvicorn.run`` / ``uvicorn.Config`` keywords enforcing ``settings``' connection limits."""
    protocol = type("ServerH11Protocol", (GuardedH11Protocol,),
                    {"header_timeout": settings.header_timeout, "max_connections": settings.max_connections})
    return {"http": protocol, "timeout_keep_alive": settings.keep_alive_timeout,
            "limit_concurrency": settings.max_connections, "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
            "server_header": False}
