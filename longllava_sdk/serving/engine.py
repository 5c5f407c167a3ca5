"""Admission and worker threads: bounded concurrency, a short queue, a fast 429 when full.

The model runs in worker threads (``max_concurrent``, one by default: on one GPU or a few
CPU cores, parallel generations on the same weights only share the same compute), never on
the event loop, which keeps answering ``/health``, streaming other requests' tokens and
refusing excess requests while a generation runs. A request takes a place (running or
queued) and its planned peak memory out of the server's memory budget, or is refused at
once: 413 when its plan alone is over the budget, 429 with ``Retry-After`` when the places
or the budget are taken by other requests. Admission is a few comparisons on the event
loop; it never waits for a worker. A place and its memory are given back only when the
worker has really stopped, so a cancelled generation still running can never overlap the
next one (media decoding runs in worker processes that are killed on their timeout, so a
worker always stops).

A :class:`Job` talks to its request handler through an asyncio queue of events
(``ready`` / ``delta`` / ``done`` / ``error``). The handler cancels it when the client goes
away; the generation checks the flag at every step (:meth:`Job.should_stop`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Literal

from ..errors import LongLLaVAError, http_interface
from ..units import format_bytes
from .api_errors import APIError, PathRedactor, from_sdk_error
from .settings import ServerSettings

logger = logging.getLogger("longllava_sdk.serving")

EventKind = Literal["ready", "delta", "done", "error"]
Event = tuple[EventKind, Any]
#: How a job ended: the answer was complete (``eos``, ``length``, ``stop``: a stop string),
#: the client went away (``cancelled``), it ran past ``request_timeout`` (``timeout``), or
#: ``error``.
Outcome = Literal["queued", "running", "eos", "length", "stop", "done", "cancelled", "timeout", "error"]


@dataclass(frozen=True)
class JobRecord:
    """What the engine remembers of a finished job (the last few hundred; tests and logs read it).

    Attributes:
        id: the response id (``chatcmpl-...``).
        kind: ``chat`` or ``classification``.
        outcome: how it ended (:data:`Outcome`).
        steps: tokens generated.
        max_new_tokens: the generation limit it had.
        queued_s: seconds between acceptance and a worker taking it.
        run_s: seconds in the worker.
    """

    id: str
    kind: str
    outcome: str
    steps: int
    max_new_tokens: int
    queued_s: float
    run_s: float


class Job:
    """One request's work, run in a worker thread, reporting through :attr:`events`.

    Args:
        id: the response id.
        kind: ``chat`` or ``classification``.
        work: the body, called in the worker thread with the job; it emits ``ready``,
            ``delta`` and ``done`` events and raises :class:`APIError` for the client.
        redact: how paths are shown in the messages of SDK errors it raises.
        max_new_tokens: the generation limit (for the record).
    """

    def __init__(self, id: str, kind: str, work: Callable[["Job"], None], *, redact: PathRedactor,
                 max_new_tokens: int = 0) -> None:
        self.id = id
        self.kind = kind
        self.work = work
        self.redact = redact
        self.max_new_tokens = max_new_tokens
        self.steps = 0
        self.outcome: Outcome = "queued"
        self.memory = 0  # bytes of the server's memory budget this job holds
        self.timeout = float("inf")
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.future: concurrent.futures.Future[None] | None = None
        self._cancel = threading.Event()
        self._enough = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepted = self._started = self._ended = time.monotonic()
        self._deadline = float("inf")

    # -- called on the event loop ---------------------------------------------------------------
    def accept(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self.timeout = timeout
        self._accepted = time.monotonic()
        self._deadline = self._accepted + timeout

    def cancel(self) -> None:
        """Stop the job: dropped from the queue, or its generation stops at the next step."""
        self._cancel.set()
        if self.future is not None:
            self.future.cancel()  # succeeds only while it is still queued

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def record(self) -> JobRecord:
        return JobRecord(self.id, self.kind, self.outcome, self.steps, self.max_new_tokens,
                         round(self._started - self._accepted, 4), round(self._ended - self._started, 4))

    # -- called in the worker thread ------------------------------------------------------------
    def emit(self, kind: EventKind, payload: Any = None) -> None:
        """Hand an event to the request handler (thread-safe)."""
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass

    @property
    def timed_out(self) -> bool:
        return time.monotonic() > self._deadline

    def stop_generation(self) -> None:
        """The answer is complete (a stop string): end the generation at the next step."""
        self._enough.set()

    def should_stop(self) -> bool:
        """Checked by the generation at every step."""
        return self._cancel.is_set() or self._enough.is_set() or self.timed_out

    def timeout_error(self) -> APIError:
        return APIError(504, f"the request took longer than this server's limit of {self.timeout:g} s",
                        type="timeout_error", code="timeout")

    def run(self) -> None:
        self._started = time.monotonic()
        self.outcome = "running"
        try:
            if self.cancelled:
                self.outcome = "cancelled"
                return
            if self.timed_out:
                raise self.timeout_error()
            with http_interface():  # SDK errors advise request fields ("adapter": "NAME"), not keywords
                self.work(self)
            if self.cancelled and self.outcome == "running":
                self.outcome = "cancelled"
        except APIError as exc:
            self.outcome = "timeout" if exc.code == "timeout" else "error"
            self.emit("error", exc)
        except LongLLaVAError as exc:
            self.outcome = "error"
            self.emit("error", from_sdk_error(exc, self.redact))
        except Exception:
            # The details are for the operator; the client gets no internals.
            logger.exception("request %s failed", self.id)
            self.outcome = "error"
            self.emit("error", APIError(500, "the server failed to process this request (details are in its log)",
                                        type="server_error", code="internal_error"))
        finally:
            self._ended = time.monotonic()


class GenerationEngine:
    """Runs jobs in worker threads within the server's capacity.

    Args:
        settings: ``max_concurrent`` workers, ``max_queue`` waiting places, ``request_timeout``.
        memory_budget: bytes the requests in flight may plan to hold together.
    """

    def __init__(self, settings: ServerSettings, memory_budget: int) -> None:
        self.settings = settings
        self.memory_budget = int(memory_budget)
        self.reserved = 0  # bytes held by running + queued jobs; touched on the event loop only
        self.active = 0  # running + queued; touched on the event loop only
        self.records: deque[JobRecord] = deque(maxlen=512)
        self._jobs: set[Job] = set()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=settings.max_concurrent,
                                                               thread_name_prefix="longllava-serve")

    def check_capacity(self) -> None:
        """429 at once when every place is taken (before the request's body is even read)."""
        if self.active >= self.settings.capacity:
            raise APIError(429, f"the server is busy ({self.settings.max_concurrent} running, "
                                f"{self.settings.max_queue} queued); retry shortly",
                           type="rate_limit_error", code="server_busy", headers={"Retry-After": "1"})

    def submit(self, job: Job, memory: int = 0) -> None:
        """Queue ``job``, holding ``memory`` bytes of the budget; 413 / 429 at once when it cannot be.

        Raises:
            APIError: 413 ``request_too_costly`` when ``memory`` alone is over the budget
                (no retry can help); 429 ``server_busy`` when the places or the memory left
                are taken.
        """
        details = {"planned_memory_bytes": int(memory), "memory_limit_bytes": self.memory_budget}
        if memory > self.memory_budget:
            raise APIError(413, f"the request would need {format_bytes(memory)} of memory at its peak (planned before "
                                f"decoding), over this server's limit of {format_bytes(self.memory_budget)} per request; send "
                                "fewer or smaller images, a shorter prompt or a lower max_tokens",
                           code="request_too_costly", details=details)
        self.check_capacity()
        if self.reserved + memory > self.memory_budget:
            raise APIError(429, f"the server is busy: requests in flight hold {format_bytes(self.reserved)} of its "
                                f"{format_bytes(self.memory_budget)} memory budget and this one needs {format_bytes(memory)}; "
                                "retry shortly", type="rate_limit_error", code="server_busy",
                           headers={"Retry-After": "1"}, details={**details, "memory_in_use_bytes": self.reserved})
        loop = asyncio.get_running_loop()
        job.accept(loop, self.settings.request_timeout)
        job.memory = int(memory)
        self.reserved += job.memory
        self.active += 1
        self._jobs.add(job)
        job.future = self._executor.submit(job.run)

        def finished(_: concurrent.futures.Future[None]) -> None:
            try:
                loop.call_soon_threadsafe(self._finished, job)
            except RuntimeError:  # loop closed at shutdown
                pass

        # Fires when the worker has really returned (or the job left the queue unstarted).
        job.future.add_done_callback(finished)

    def _finished(self, job: Job) -> None:
        self.active -= 1
        self.reserved -= job.memory
        self._jobs.discard(job)
        if job.outcome == "queued":
            job.outcome = "cancelled"
        self.records.append(job.record())

    async def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until no job is running or queued (tests, shutdown); whether it became idle."""
        deadline = time.monotonic() + timeout
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return not self.active

    def shutdown(self) -> None:
        """Cancel every job and stop the workers (a running generation stops at its next step)."""
        for job in list(self._jobs):
            job.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
