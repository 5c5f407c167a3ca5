"""The body of a chat job (and of a classify job), run in a worker thread.

``model.generate`` gets two hooks: a streamer that receives every generated id (it feeds the
:class:`~.detokenize.TextAssembler` and counts steps) and a stopping criterion that asks the
job whether to go on (client gone, stop string found, time limit passed), so a generation
ends within one step of any of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ..errors import LongLLaVAError
from ..media import Media
from ..pipeline import Pipeline, media_warnings
from .api_errors import APIError, from_sdk_error
from .detokenize import TextAssembler
from .engine import Job

#: Reads the request's media in the worker thread and returns the Pipeline's messages.
MessageReader = Callable[[], list[dict[str, Any]]]


@dataclass(frozen=True)
class GenerationParams:
    """A request's decoding options.

    Attributes:
        max_new_tokens: the most tokens to generate.
        min_new_tokens: the fewest (the ``min_tokens`` extension); ``None``: no minimum.
        temperature: ``None`` or 0: greedy decoding; otherwise sampling at this temperature.
        top_p: nucleus sampling mass (sampling only).
        stop: stop strings.
        experts: the expert plugins whose findings enter the prompt (``()``: none); ``None``:
            the pipeline's setting. Not a ``generate`` option: it shapes the prompt.
    """

    max_new_tokens: int
    min_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    experts: tuple[str, ...] | None = None

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if self.min_new_tokens:
            kwargs["min_new_tokens"] = self.min_new_tokens
        if self.temperature:
            # OpenAI's sampling has no top-k: disable transformers' default of 50.
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p or 1.0, top_k=0)
        else:
            kwargs["do_sample"] = False
        return kwargs


class _EachToken(BaseStreamer):
    """Calls ``on_token`` with every generated id (``generate`` first puts the prompt: skipped)."""

    def __init__(self, on_token: Callable[[int], None]) -> None:
        self.on_token = on_token
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.on_token(int(token))

    def end(self) -> None:
        pass


class _UntilJobSaysStop(StoppingCriteria):
    def __init__(self, job: Job) -> None:
        self.job = job

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        stop = self.job.should_stop()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def request_media_warnings(messages: list[dict[str, Any]], redact: Callable[[str], str]) -> list[str]:
    """What the adapters recorded about the request's media (gaps, skipped files...), paths as the client named them.

    Returned in the response's ``longllava.media_warnings`` (docs/serving.md).
    """
    return [redact(line) for message in messages for media in message.get("media") or ()
            if isinstance(media, Media) for line in media_warnings(media)]


def run_chat(job: Job, pipeline: Pipeline, read_messages: MessageReader, params: GenerationParams) -> None:
    """Read the media, check the context, generate; emits ``ready``, ``delta``s and ``done``."""
    messages = read_messages()
    if job.should_stop():
        _end_early(job)
        return
    try:
        inputs = pipeline.inputs(messages, **({} if params.experts is None else {"experts": list(params.experts)}))
    except LongLLaVAError as exc:
        raise from_sdk_error(exc, job.redact) from None
    prompt_tokens = int(inputs["input_ids"].shape[1])
    context = int(pipeline.config.max_context)
    if prompt_tokens + params.max_new_tokens > context:
        raise APIError(400, f"the prompt is {prompt_tokens} tokens (media included) and max_tokens is "
                            f"{params.max_new_tokens}: together over the model's context of {context} tokens",
                       code="context_length_exceeded", param="max_tokens")
    job.emit("ready", {"prompt_tokens": prompt_tokens})

    assembler = TextAssembler(pipeline.processor.decode, params.stop)

    def on_token(token: int) -> None:
        job.steps += 1
        piece = assembler.push(token)
        if piece:
            job.emit("delta", piece)
        if assembler.stopped:
            job.stop_generation()

    with torch.inference_mode():
        pipeline.model.generate(**inputs, **pipeline.generation_kwargs(**params.generate_kwargs()),
                                streamer=_EachToken(on_token),
                                stopping_criteria=StoppingCriteriaList([_UntilJobSaysStop(job)]))
    if not assembler.stopped and (job.cancelled or job.timed_out):
        _end_early(job)
        return
    tail = assembler.finish()
    if tail:
        job.emit("delta", tail)
    eos = pipeline.processor.tokenizer.eos_token_id
    if assembler.stopped:
        job.outcome, finish_reason = "stop", "stop"
    elif assembler.ids and assembler.ids[-1] == eos:
        job.outcome, finish_reason = "eos", "stop"
    else:
        job.outcome, finish_reason = "length", "length"
    job.emit("done", {"finish_reason": finish_reason,
                      "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": job.steps,
                                "total_tokens": prompt_tokens + job.steps},
                      "media_warnings": request_media_warnings(messages, job.redact)})


def run_classify(job: Job, pipeline: Pipeline, read_messages: MessageReader,
                 experts: tuple[str, ...] | None = None) -> None:
    """Read the single user turn's media and run the task head; emits ``done`` with its answer.

    ``experts``: the expert plugins whose findings enter the prompt (``()``: none; ``None``: the
    pipeline's default, every installed expert).
    """
    messages = read_messages()
    if job.should_stop():
        _end_early(job)
        return
    turn = messages[0]
    try:
        result = pipeline.classify(turn["content"], images=turn["media"],
                                   **({} if experts is None else {"experts": list(experts)}))
    except LongLLaVAError as exc:
        raise from_sdk_error(exc, job.redact) from None
    job.outcome = "done"
    job.emit("done", {"result": result, "media_warnings": request_media_warnings(messages, job.redact)})


def _end_early(job: Job) -> None:
    if job.cancelled:
        job.outcome = "cancelled"  # nobody is listening any more
        return
    raise job.timeout_error()
