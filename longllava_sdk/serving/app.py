"""The ASGI application (Starlette): OpenAI-compatible routes over a :class:`~longllava_sdk.pipeline.Pipeline`.

Routes (docs/serving.md):

* ``GET /health``: ``{"status": "ready"}`` (200), or ``loading`` (503) while the model loads;
  open without the API key (for load balancers).
* ``GET /v1/models``, ``GET /v1/models/{id}``: the one model served.
* ``POST /v1/chat/completions``: chat with text and media parts; ``stream: true`` answers
  with server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``.
* ``POST /v1/classify``: the fine-tuned task head of a model folder that has one.

Request life: a full server answers 429 before the body is read; the body is read under a
size cap and a time limit and validated; the prompt's size is checked in bytes (413) before
anything tokenises it; the content is checked (paths, images, remote URLs) and the request's
peak memory planned before anything is decoded; the engine queues it or answers 413 / 429
(:meth:`Server.plan_memory`); events from the worker become the response. A client that goes away cancels
its generation: before the answer starts a watcher on the ASGI ``receive`` channel notices,
while streaming Starlette's own disconnect listener cancels the stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, AsyncIterator, Callable, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive

from ..errors import RegistryLookupError
from ..experts import check_experts
from ..isolation import DecodeLimits, stopping_when
from ..pipeline import Pipeline
from ..planner import RequestCost
from .api_errors import APIError, PathRedactor, error_body
from .content import ContentReader, Conversation
from .engine import Event, GenerationEngine, Job
from .generation import GenerationParams, MessageReader, run_chat, run_classify
from .remote import RemoteFetcher, RemotePolicy
from .schemas import ChatCompletionRequest, ChatMessage, ClassifyRequest, TextPart
from .security import APIKeyMiddleware, RootJail
from .settings import ServerSettings

logger = logging.getLogger("longllava_sdk.serving")

Body = TypeVar("Body", bound=BaseModel)
#: Status for a request whose client went away before its answer (nginx's convention);
#: nobody receives it, it only shows in access logs.
CLIENT_CLOSED = 499
#: Extra seconds the handler waits past ``request_timeout`` for a worker that cannot be
#: interrupted (media reading has no step at which to stop) before answering 504 itself.
TIMEOUT_GRACE = 5.0
_TYPE_NAME = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|[\w-]+\[.*\])$")
#: Share of the memory available at start (model loaded) that requests may plan to hold
#: together, when ``max_request_memory`` is not set; the rest is the decoding workers', the
#: allocator's and the machine's.
DEFAULT_BUDGET_SHARE = 0.5
#: Bytes of prompt text per token of the model's context (``max_prompt_kb`` unset): prompts
#: average 3-5 bytes per token, so a longer one cannot fit the context anyway.
PROMPT_BYTES_PER_TOKEN = 8
#: What the server holds per image once decoded: the 336 x 336 RGB image the vision encoder
#: sees (the decoding worker reduces it; the pixels of one vision batch are the planner's).
REDUCED_IMAGE_BYTES = 336 * 336 * 3


def default_memory_budget() -> int:
    """:data:`DEFAULT_BUDGET_SHARE` of the memory available now (``psutil``)."""
    import psutil

    return int(psutil.virtual_memory().available * DEFAULT_BUDGET_SHARE)


def _plan_dtype(pipeline: Pipeline) -> tuple[str, str]:
    """(device, dtype) of the served model in the planner's terms."""
    parameter = next(pipeline.model.parameters())
    device = "cuda" if parameter.device.type == "cuda" else "cpu"
    if (getattr(pipeline.config, "quantization", None) or {}).get("mode") == "int8":
        return device, "int8"
    return device, {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(parameter.dtype), "fp32")


class Server:
    """The state behind the routes: pipeline, settings, engine, content reader.

    Attributes:
        pipeline: the model (decoding in worker processes unless ``isolate_decoding`` is off).
        settings: limits and security switches.
        engine: admission and worker threads (its ``records`` tell how jobs ended).
        reader: request content checks and media reading.
        cost: the planner's model of a request's memory on this model.
        max_prompt_bytes: the largest prompt text, in UTF-8 bytes.
        created: when the server started (the model's ``created``).
    """

    def __init__(self, pipeline: Pipeline | None, settings: ServerSettings, *,
                 load: Callable[[], Pipeline] | None = None, address: Callable[[], str | None] | None = None,
                 on_load_error: Callable[[BaseException], None] | None = None) -> None:
        if pipeline is None and load is None:
            raise ValueError("give the server a pipeline or a function that loads one")
        self._pipeline: Pipeline | None = None
        self._load = load
        self._address = address
        self._on_load_error = on_load_error
        #: the exception that ended the model's load (the server then shuts down)
        self.load_error: BaseException | None = None
        self.settings = settings
        self.engine = GenerationEngine(settings, 0)  # its memory budget is set with the model (_adopt)
        self.cost: RequestCost | None = None
        self.max_prompt_bytes = 0
        policy = RemotePolicy(settings.allow_remote)
        fetcher = (RemoteFetcher(policy, max_bytes=settings.max_image_bytes, timeout=settings.remote_timeout,
                                 max_redirects=settings.max_redirects) if policy.enabled else None)
        self.reader = ContentReader(settings, RootJail(settings.root, settings.max_folder_entries), fetcher)
        self.created = int(time.time())
        if pipeline is not None:
            self._adopt(pipeline)

    def _adopt(self, pipeline: Pipeline) -> None:
        """Serve ``pipeline``: its decoding isolated, its request cost model, the memory budget, the prompt cap."""
        settings = self.settings
        device, dtype = _plan_dtype(pipeline)
        self.cost = RequestCost(pipeline.config, device=device, dtype=dtype)
        budget = settings.request_memory_bytes
        # Measured now, the model loaded: what is available is what requests can have.
        self.engine.memory_budget = budget if budget is not None else default_memory_budget()
        self.max_prompt_bytes = (int(settings.max_prompt_kb * 1024) if settings.max_prompt_kb is not None
                                 else PROMPT_BYTES_PER_TOKEN * int(pipeline.config.max_context))
        limits = DecodeLimits(timeout_s=settings.decode_timeout, memory_mb=settings.decode_memory_mb)
        self._pipeline = pipeline.isolated(limits) if settings.isolate_decoding else pipeline

    # -- model life --------------------------------------------------------------------------------
    @property
    def pipeline(self) -> Pipeline:
        """The model; a request that comes while it is still loading gets 503 (``model_loading``)."""
        if self._pipeline is None:
            raise APIError(503, "the model is still loading; retry when GET /health says ready", type="server_error",
                           code="model_loading", headers={"Retry-After": "5"})
        return self._pipeline

    @property
    def status(self) -> str:
        """``loading`` until the model is loaded, then ``ready`` (``failed`` if the load failed)."""
        if self.load_error is not None:
            return "failed"
        return "loading" if self._pipeline is None else "ready"

    async def start(self) -> None:
        """Load the model (when given a loader) while the server already answers, then log the ready line.

        The load runs in a thread, so ``/health`` answers ``loading`` meanwhile. The line
        ``ready: http://HOST:PORT (model NAME, N parameters)`` is logged once the model is
        loaded and the socket is bound (``address`` says where, ``None`` until bound).
        """
        if self._pipeline is None:
            assert self._load is not None
            try:
                load = self._load
                await asyncio.to_thread(lambda: self._adopt(load()))
            except BaseException as exc:  # noqa: BLE001 - reported to the operator, then the server stops
                self.load_error = exc
                if self._on_load_error is not None:
                    self._on_load_error(exc)
                return
        url = None
        if self._address is not None:
            while (url := self._address()) is None:
                await asyncio.sleep(0.02)
        parameters = sum(p.numel() for p in self._pipeline.model.parameters())
        logger.info("ready: %s(model %s, %s parameters)", f"{url} " if url else "", self.settings.model_name,
                    f"{parameters:,}")

    # -- helpers ----------------------------------------------------------------------------------
    def model_card(self) -> dict[str, Any]:
        return {"id": self.settings.model_name, "object": "model", "created": self.created,
                "owned_by": "longllava-sdk", "max_model_len": int(self.pipeline.config.max_context),
                "task_head": self.pipeline.head is not None}

    def check_model(self, name: str) -> None:
        if name != self.settings.model_name:
            raise APIError(404, f"the model {name!r} is not served here; this server serves "
                                f"{self.settings.model_name!r}", code="model_not_found", param="model")

    async def read_body(self, request: Request, schema: type[Body]) -> Body:
        """The JSON body as ``schema``; 413 past ``max_body_bytes``, 408 past ``body_timeout``, 400 when invalid."""
        limit = self.settings.max_body_bytes
        too_large = APIError(413, f"the request body is larger than this server's limit of {limit} bytes",
                             code="request_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        try:
            async with asyncio.timeout(self.settings.body_timeout):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > limit:
                        raise too_large
        except TimeoutError:
            raise APIError(408, f"the request body took longer than this server's limit of "
                                f"{self.settings.body_timeout:g} s to arrive", code="body_timeout",
                           headers={"Connection": "close"}) from None
        request.state.body_bytes = len(body)
        try:
            return schema.model_validate_json(bytes(body))
        except ValidationError as exc:
            raise APIError(400, describe_validation_error(exc), code="invalid_request") from None

    def check_prompt(self, messages: list[ChatMessage]) -> None:
        """413 when the messages' text is over ``max_prompt_bytes`` (UTF-8), before anything tokenises it."""
        _ = self.pipeline  # 503 while the model loads (the cap is the model's)
        size = sum(len(part.text.encode("utf-8", "surrogatepass")) for message in messages
                   for part in message.content if isinstance(part, TextPart))
        if size > self.max_prompt_bytes:
            raise APIError(413, f"the prompt's text is {size} bytes, over this server's limit of "
                                f"{self.max_prompt_bytes} bytes", code="prompt_too_large", param="messages",
                           details={"prompt_bytes": size, "limit_bytes": self.max_prompt_bytes})

    def plan_memory(self, conversation: Conversation, max_new_tokens: int, body_bytes: int = 0) -> int:
        """Bytes a request will hold at its peak, planned before anything is decoded.

        The planner's request lines (:class:`~longllava_sdk.planner.RequestCost`: KV cache
        and Mamba states of prompt + answer, one vision batch, a prefill chunk's
        activations...) for the most images the media can become and at most one token per
        byte of prompt text (capped by the context), plus what the server itself holds: the
        request body and every image reduced to 336 px.
        """
        images = self.reader.planned_images(self.pipeline, conversation)
        assert self.cost is not None  # set with the pipeline
        text_bytes = sum(len(turn.text.encode("utf-8", "surrogatepass")) for turn in conversation.turns)
        tokens = min(text_bytes + 64, int(self.pipeline.config.max_context)) + max_new_tokens  # + chat template
        data = sum(len(item.data or b"") for turn in conversation.turns for item in turn.media)
        return self.cost.peak(images=images, text_tokens=tokens) + images * REDUCED_IMAGE_BYTES + body_bytes + data

    def generation_params(self, payload: ChatCompletionRequest) -> GenerationParams:
        unsupported = {
            "n": payload.n not in (None, 1), "tools": bool(payload.tools),
            "tool_choice": payload.tool_choice not in (None, "none"), "logprobs": bool(payload.logprobs),
            "top_logprobs": payload.top_logprobs is not None,
            "response_format": payload.response_format not in (None, {"type": "text"}),
            "presence_penalty": bool(payload.presence_penalty), "frequency_penalty": bool(payload.frequency_penalty),
        }
        for name, used in unsupported.items():
            if used:
                raise APIError(400, f"{name} is not supported by this server", code="unsupported_parameter", param=name)
        max_tokens = payload.max_completion_tokens or payload.max_tokens or self.settings.default_max_tokens
        if max_tokens > self.settings.max_tokens:
            raise APIError(400, f"max_tokens {max_tokens} is over this server's limit of {self.settings.max_tokens}",
                           code="invalid_value", param="max_tokens")
        if payload.min_tokens and payload.min_tokens > max_tokens:
            raise APIError(400, f"min_tokens {payload.min_tokens} is over max_tokens {max_tokens}",
                           code="invalid_value", param="min_tokens")
        stop = tuple(payload.stop or ())
        return GenerationParams(max_new_tokens=max_tokens, min_new_tokens=payload.min_tokens,
                                temperature=payload.temperature, top_p=payload.top_p, stop=stop,
                                experts=self.experts(payload.experts))

    @staticmethod
    def experts(names: list[str] | None) -> tuple[str, ...] | None:
        """A request's ``experts`` field, checked against the installed experts (``None``: all of them)."""
        if names is None:
            return None
        try:
            return tuple(check_experts(names) or ())
        except RegistryLookupError as exc:
            raise APIError(400, str(exc), code="invalid_value", param="experts") from None

    def submit(self, kind: str, work: Callable[[Job, MessageReader], None], conversation: Conversation,
               redact: PathRedactor, request: Request, max_new_tokens: int = 0) -> Job:
        """Queue ``work(job, read_messages)`` (413 / 429 by its planned memory); ``read_messages``
        reads the media in the worker (decoding stops when the job should)."""
        prefix = "chatcmpl" if kind == "chat" else "clf"
        memory = self.plan_memory(conversation, max_new_tokens, getattr(request.state, "body_bytes", 0))

        def read(job: Job) -> list[dict[str, Any]]:
            with stopping_when(job.should_stop):
                return self.reader.read(self.pipeline, conversation, redact)

        job = Job(f"{prefix}-{uuid.uuid4().hex}", kind, lambda job: work(job, partial(read, job)), redact=redact,
                  max_new_tokens=max_new_tokens)
        self.engine.submit(job, memory)
        return job

    async def next_event(self, job: Job, gone: asyncio.Task[None]) -> Event | None:
        """The job's next event; ``None`` (and the job cancelled) when the client went away."""
        getter = asyncio.ensure_future(job.events.get())
        done, _ = await asyncio.wait({getter, gone}, timeout=self.settings.request_timeout + TIMEOUT_GRACE,
                                     return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        job.cancel()
        if gone in done:
            return None
        raise job.timeout_error()


async def _client_gone(receive: Receive) -> None:
    """Returns when the client disconnects (the body is read: the next message is the disconnect)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def describe_validation_error(exc: ValidationError) -> str:
    """Pydantic's errors as ``messages[0].content[1].image_url.url: Field required; ...`` (no input values)."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False)[:5]:
        where = ""
        previous: Any = None
        for part in error["loc"]:
            # A tagged union repeats the tag ('image_url', 'image_url'); a plain union names
            # its member types ('str', 'list[str]'): neither is a field the client wrote.
            if part == previous or (isinstance(part, str) and _TYPE_NAME.match(part)):
                continue
            where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
            previous = part
        problems.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    more = len(exc.errors()) - len(problems)
    return "invalid request: " + "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


def extension(done: dict[str, Any]) -> dict[str, Any]:
    """The SDK's extension field of a response (docs/serving.md): ``{"longllava": {"media_warnings": [...]}}``.

    ``media_warnings``: one line per warning an input adapter recorded about the request's
    media (a gap between CT slices, skipped files, masked bands...); empty when none.
    """
    return {"longllava": {"media_warnings": list(done.get("media_warnings") or ())}}


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


# -- routes ----------------------------------------------------------------------------------------
async def health(request: Request) -> Response:
    """``{"status": "ready"}`` (200) once the model answers; ``loading`` / ``failed`` with 503 before."""
    status = request.app.state.server.status
    return JSONResponse({"status": status}, status_code=200 if status == "ready" else 503)


async def list_models(request: Request) -> Response:
    server: Server = request.app.state.server
    return JSONResponse({"object": "list", "data": [server.model_card()]})


async def get_model(request: Request) -> Response:
    server: Server = request.app.state.server
    server.check_model(request.path_params["model_id"])
    return JSONResponse(server.model_card())


async def chat_completions(request: Request) -> Response:
    server: Server = request.app.state.server
    server.engine.check_capacity()  # a full server answers before reading anything
    payload = await server.read_body(request, ChatCompletionRequest)
    server.check_model(payload.model)
    params = server.generation_params(payload)
    server.check_prompt(payload.messages)
    redact = PathRedactor(server.settings.root)
    conversation = await server.reader.parse(payload.messages, redact)
    pipeline = server.pipeline
    job = server.submit("chat", lambda job, read: run_chat(job, pipeline, read, params), conversation, redact,
                        request, params.max_new_tokens)
    created = int(time.time())
    gone = asyncio.create_task(_client_gone(request.receive))
    streaming = False
    try:
        if payload.stream:
            event = await server.next_event(job, gone)  # "ready" once the media are read, or an error
            if event is None:
                return Response(status_code=CLIENT_CLOSED)
            if event[0] == "error":
                raise event[1]
            streaming = True
            include_usage = bool(payload.stream_options and payload.stream_options.include_usage)
            return StreamingResponse(_stream(job, server.settings.model_name, created, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        pieces: list[str] = []
        while True:
            event = await server.next_event(job, gone)
            if event is None:
                return Response(status_code=CLIENT_CLOSED)
            kind, data = event
            if kind == "error":
                raise data
            if kind == "delta":
                pieces.append(data)
            elif kind == "done":
                return JSONResponse({
                    "id": job.id, "object": "chat.completion", "created": created,
                    "model": server.settings.model_name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)},
                                 "logprobs": None, "finish_reason": data["finish_reason"]}],
                    "usage": data["usage"],
                    **extension(data),
                })
    finally:
        gone.cancel()  # while streaming, Starlette's own listener takes over the receive channel
        if not streaming:
            job.cancel()  # a no-op once done; stops the work if this handler is cancelled


async def _stream(job: Job, model: str, created: int, include_usage: bool) -> AsyncIterator[str]:
    """OpenAI's chunks as server-sent events; the generation stops if the client goes away."""
    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": job.id, "object": "chat.completion.chunk", "created": created, "model": model,
                                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": finish_reason}]}
        if include_usage:
            body["usage"] = None
        return body

    try:
        yield _sse(chunk({"role": "assistant", "content": ""}))
        while True:
            kind, data = await job.events.get()
            if kind == "delta":
                yield _sse(chunk({"content": data}))
            elif kind == "done":
                yield _sse({**chunk({}, data["finish_reason"]), **extension(data)})
                if include_usage:
                    yield _sse({"id": job.id, "object": "chat.completion.chunk", "created": created, "model": model,
                                "choices": [], "usage": data["usage"]})
                yield _sse("[DONE]")
                return
            elif kind == "error":
                yield _sse(data.body())  # the status line is sent already: the error travels in the stream
                return
    finally:
        # Reached on completion and when Starlette cancels the stream because the client
        # disconnected: then the generation stops at its next step.
        job.cancel()


async def classify(request: Request) -> Response:
    server: Server = request.app.state.server
    server.engine.check_capacity()
    payload = await server.read_body(request, ClassifyRequest)
    server.check_model(payload.model)
    if server.pipeline.head is None:
        raise APIError(404, "this model has no task head; use /v1/chat/completions", code="no_task_head")
    server.check_prompt(payload.messages)
    redact = PathRedactor(server.settings.root)
    conversation = await server.reader.parse(payload.messages, redact)
    if [turn.role for turn in conversation.turns] != ["user"]:
        raise APIError(400, "classify takes exactly one user message (its text and media)", code="invalid_request",
                       param="messages")
    pipeline = server.pipeline
    experts = server.experts(payload.experts)
    job = server.submit("classification", lambda job, read: run_classify(job, pipeline, read, experts), conversation,
                        redact, request)
    gone = asyncio.create_task(_client_gone(request.receive))
    try:
        while True:
            event = await server.next_event(job, gone)
            if event is None:
                return Response(status_code=CLIENT_CLOSED)
            if event[0] == "error":
                raise event[1]
            if event[0] == "done":
                return JSONResponse({"id": job.id, "object": "classification", "created": int(time.time()),
                                     "model": server.settings.model_name, "result": event[1]["result"],
                                     **extension(event[1])})
    finally:
        gone.cancel()
        job.cancel()


# -- errors ----------------------------------------------------------------------------------------
async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: "no such route", 405: "method not allowed on this route"}.get(exc.status_code, "request refused")
    return JSONResponse(error_body(message, type="invalid_request_error",
                                   code="not_found" if exc.status_code == 404 else None),
                        status_code=exc.status_code, headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Starlette logs the traceback for the operator; the client gets no internals.
    return JSONResponse(error_body("the server failed to process this request (details are in its log)",
                                   type="server_error", code="internal_error"), status_code=500)


def create_app(pipeline: Pipeline | None, settings: ServerSettings | None = None, *,
               load: Callable[[], Pipeline] | None = None, address: Callable[[], str | None] | None = None,
               on_load_error: Callable[[BaseException], None] | None = None) -> Starlette:
    """The ASGI app serving ``pipeline`` under ``settings`` (run it with uvicorn, or test it in-process).

    ``app.state.server`` is the :class:`Server` (its ``engine.records`` tell how each request
    ended). The engine's workers stop at the app's shutdown.

    Args:
        pipeline: the model, already loaded; or ``None`` and ``load``: a function that loads it,
            called in a thread at the app's startup, so the server listens (``/health`` says
            ``loading``, other routes 503) while the model loads.
        address: where the server listens (``http://HOST:PORT``; ``None`` until its socket is
            bound), for the ``ready:`` line.
        on_load_error: called with the exception when ``load`` fails (``serve`` stops uvicorn).
    """
    server = Server(pipeline, (settings or ServerSettings()).with_model_name("longllava"), load=load, address=address,
                    on_load_error=on_load_error)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        starting = asyncio.create_task(server.start())
        yield
        starting.cancel()
        server.engine.shutdown()

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/classify", classify, methods=["POST"]),
        ],
        middleware=[Middleware(APIKeyMiddleware, api_key=server.settings.api_key, open_paths=("/health",))],
        exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.state.server = server
    return app
