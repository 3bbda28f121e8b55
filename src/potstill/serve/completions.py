"""``POST /v1/completions``: the legacy text-completions API (``client.completions.create``), which
vLLM serves beside chat and batch jobs use for a list of prompts in one request.

Each prompt is one user message under the run's instruction, as the student was trained, routed as
a chat would be (``Service.answer``), logged as a chat row of its own (so watch, redistill and import
read it), and answered as one choice; the prompts of one request are answered concurrently, so the
serving batcher batches them. vLLM's structured-output fields and ``response_format`` work as on chat.
``max_tokens`` unset is the task's budget, not OpenAI's 16. Token-id prompts, ``echo``, ``suffix``,
``best_of`` and ``n`` above 1 are refused by name. Streamed, a choice answered by the student (or
from the ledger) comes as one chunk once routed, and one that escalates as the teacher writes it
(``serve.streaming``); several prompts' choices go out as each comes (``several``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal, NamedTuple

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field

from potstill.models.utf8_tail import split
from potstill.serve.schemas import GeneratedRequest, StreamOptions
from potstill.serve.streaming import LiveText, OnAnswer, OnFailure, Piece, failure_body, first_piece, relay

COMPLETIONS = "/v1/completions"
DONE = "data: [DONE]\n\n"


class CompletionRequest(GeneratedRequest):
    model: str = Field(..., description="A name GET /v1/models lists; the router picks the student or the teacher.")
    prompt: str | list[Any] = Field(..., description="A prompt, or a list of them (one choice each); each is one "
                                    "user message under the run's instruction. Token ids are not served.")
    max_tokens: int | None = Field(None, ge=1, strict=True, description="Unset: the task's budget (OpenAI's "
                                   "default, 16, would cut most answers).")
    logprobs: int | None = Field(None, ge=0, le=20, strict=True, description="Each token's log-probability and "
                                 "this many likeliest alternatives, in the legacy form.")
    stream: bool | None = Field(False, strict=True)
    n: int | None = Field(None, ge=1, le=1, strict=True, description="Only one choice per prompt is served.")
    stream_options: StreamOptions | None = Field(None, description="With stream: include_usage sends a last "
                                                 "chunk, before [DONE], with no choices and the request's usage.")
    best_of: int | None = Field(None, ge=1, le=1, strict=True, description="Only 1.")
    echo: bool | None = Field(None, strict=True, description="Not served: the prompt is not returned.")
    suffix: str | None = Field(None, description="Not served: there is no insertion.")

    def prompts(self) -> list[str]:
        """The prompts as text, or ValueError naming the first that is not."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if not self.prompt:
            raise ValueError("expected a string or a non-empty list of strings")
        for i, p in enumerate(self.prompt):
            if not isinstance(p, str):
                raise ValueError(f"item {i} is not a string (token-id prompts are not served: send the text)")
        return list(self.prompt)


class CompletionChoice(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str
    index: int
    logprobs: dict[str, Any] | None = None
    finish_reason: Literal["stop", "length"] = "stop"


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice] = Field(..., description="One per prompt, in order; each carries its route "
                                            "as potstill (answered_by, reason, confidence, ...).")
    usage: dict[str, int]


def legacy_logprobs(content: Sequence[dict[str, Any]] | None, at: int = 0) -> dict[str, Any] | None:
    """Chat's ``logprobs.content`` (token, logprob, top_logprobs) in the legacy completions form:
    ``tokens``, ``token_logprobs``, ``top_logprobs`` (a token -> log-prob map per position) and
    ``text_offset`` (each token's character offset in the text, the first at ``at``): counted in the
    characters its ``bytes`` finish, so a token holding part of a character (``bytes:\\xe8\\xa6``, a
    token of 14 characters) stands where that character does."""
    if content is None:
        return None
    offsets = []
    tail = b""  # the bytes of a character the tokens so far leave unfinished
    for t in content:
        offsets.append(at)
        whole = split(tail + bytes(t["bytes"])) if t.get("bytes") is not None else None
        text, tail = whole if whole is not None else (t["token"], b"")
        at += len(text)
    return {"tokens": [t["token"] for t in content], "token_logprobs": [t["logprob"] for t in content],
            "top_logprobs": [{a["token"]: a["logprob"] for a in t.get("top_logprobs", [])} for t in content],
            "text_offset": offsets}


def add_completions_route(app: FastAPI, service: Any, requests: Counter, latency: Histogram, bearer: list,
                          log_error: Any) -> None:
    from potstill.serve.app import (ERRORS, APIError, _format, _live_headers, _owner, _record, _route_headers,
                                    _unknown_model, failure_reply, logged_failure)

    s = service.cfg.serve

    @app.post(COMPLETIONS, response_model=Completion, dependencies=bearer, responses=ERRORS)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        state = request.scope.setdefault("state", {})
        if _owner(service, body.model) is None:
            raise _unknown_model(service, body.model)
        if body.stream_options is not None and not body.stream:  # as chat completions refuses it
            raise APIError(400, "stream_options: only allowed when stream is true", "stream_options")
        for name, why in (("echo", "the prompt is not returned"), ("suffix", "there is no insertion")):
            if getattr(body, name):
                raise APIError(400, f"{name}: not served here ({why})", name)
        try:
            prompts = body.prompts()
        except ValueError as e:
            raise APIError(400, f"prompt: {e}", "prompt") from None
        if len(prompts) > s.max_messages:
            raise APIError(400, f"prompt: at most {s.max_messages} prompts per request", "prompt")
        if not all(p.strip() for p in prompts):
            raise APIError(400, "prompt: every prompt needs text", "prompt")
        fmt = _format(body)
        logged = body.model_dump(exclude_none=True, exclude={"prompt"})
        cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        answered: list[Any] = []  # each prompt's answer as it is logged: a stream's usage adds them up

        def sent(events: AsyncIterator[str]) -> AsyncIterator[str]:
            """A stream as sent: with the usage chunk before its [DONE] where the client asked for it."""
            if not (body.stream_options and body.stream_options.include_usage):
                return events
            return _with_usage(events, lambda: _usage_chunk(cid, created, *_totals(answered, body.model)))

        def own(messages: list[dict]) -> dict[str, Any]:
            """A prompt's own state: its row, answered or failed, is its own (the prompts share the
            request's state, where the first row logged kept the others' failures from theirs). The
            request's is marked logged: a prompt's failure raised as the request's error has its row."""
            state["logged"] = True
            return {**state, "logged": False,
                    "logged_request": {**logged, "messages": messages, "endpoint": COMPLETIONS}}

        def record(messages: list[dict]) -> OnAnswer:
            def log(served: Any) -> Awaitable[dict[str, Any]]:
                answered.append(served)
                mine = own(messages)
                return _record(service, mine, served, mine["logged_request"], requests, latency)
            return log

        def failed(messages: list[dict]) -> OnFailure:
            return lambda e: asyncio.to_thread(logged_failure, own(messages), failure_reply(service, e, COMPLETIONS),
                                               log_error)

        async def settled(messages: list[dict], answering: Awaitable[Any]) -> tuple[Any, dict]:
            """A prompt's answer and its route, logged; or its failure, logged and raised."""
            try:
                served = await answering
            except Exception as e:
                await failed(messages)(e)
                raise
            return served, await record(messages)(served)

        async def one(prompt: str) -> tuple[Any, dict]:
            messages = [{"role": "user", "content": prompt}]
            return await settled(messages, service.answer(messages, body.max_tokens, body.stops(),
                                                          logprobs=body.logprobs, response_format=fmt))

        if body.stream and len(prompts) == 1 and service.streams():
            # One prompt that escalates: its text streams as the teacher writes it, as chat's does.
            messages = [{"role": "user", "content": prompts[0]}]
            live_text = LiveText(body.stops(), body.logprobs)
            task, first = await first_piece(service.answer(messages, body.max_tokens, body.stops(), logprobs=body.logprobs,
                                                          response_format=fmt, live_text=live_text), live_text)
            if first is not None:
                events = live_events(task, live_text, first, service.teacher_name, body.logprobs is not None,
                                     record(messages), failed(messages), cid=cid, created=created)
                return StreamingResponse(sent(events), media_type="text/event-stream",
                                         headers=_live_headers(live_text))
            results = [await settled(messages, task)]
        elif body.stream and len(prompts) > 1:
            # Each choice as soon as it is answered, an escalation as the teacher writes it.
            events = several(
                prompts, lambda messages, live_text: service.answer(
                    messages, body.max_tokens, body.stops(), logprobs=body.logprobs, response_format=fmt,
                    live_text=live_text),
                lambda: LiveText(body.stops(), body.logprobs) if service.streams() else None, record, failed,
                service.teacher_name, body.logprobs is not None, cid, created)
            first = await anext(events)  # a prompt failing before anything went out: the request's error
            return StreamingResponse(sent(_chain(first, events)), media_type="text/event-stream")
        else:
            results = await asyncio.gather(*(one(p) for p in prompts))
        choices = [{"text": served.content, "index": i,
                    "logprobs": legacy_logprobs(served.logprobs) if body.logprobs is not None else None,
                    "finish_reason": served.finish_reason, "potstill": route}
                   for i, (served, route) in enumerate(results)]
        model, usage = _totals([served for served, _ in results], body.model)
        first = results[0][0]
        headers = _route_headers(first.answered_by, first.reason, first.confidence, first.student) \
            if len(results) == 1 else {}
        result = {"id": cid, "object": "text_completion", "created": created, "model": model,
                  "choices": choices, "usage": usage}
        if body.stream:
            return StreamingResponse(sent(_sse(result)), media_type="text/event-stream", headers=headers)
        return JSONResponse(result, headers=headers)


def _totals(answers: Sequence[Any], asked: str) -> tuple[str, dict[str, int]]:
    """The model that gave ``answers`` (``asked``, the name the client sent, where several did) and
    their usage, all prompts' tokens."""
    models = {served.model for served in answers}
    n_in, n_out = sum(served.input_tokens for served in answers), sum(served.output_tokens for served in answers)
    return (models.pop() if len(models) == 1 else asked), {"prompt_tokens": n_in, "completion_tokens": n_out,
                                                          "total_tokens": n_in + n_out}


def _usage_chunk(cid: str, created: int, model: str, usage: dict[str, int]) -> str:
    """The last chunk of a stream asked with ``stream_options.include_usage``, as OpenAI and vLLM send it."""
    obj = {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": [], "usage": usage}
    return f"data: {json.dumps(obj)}\n\n"


async def _with_usage(events: AsyncIterator[str], usage: Callable[[], str]) -> AsyncIterator[str]:
    """``events`` with ``usage()`` before their ``[DONE]``: once every answer is logged (a stream
    that ends in an error has none). Closed with it: a live answer whose client left is still
    logged when ``events`` closes (``streaming.settle_later``)."""
    async with contextlib.aclosing(events):
        async for event in events:
            if event == DONE:
                yield usage()
            yield event


class _Failure(str):
    """The error event that ends a live choice's stream (``relay``'s failure): with several prompts,
    the whole response ends there too."""


def live_events(task: asyncio.Future, live_text: LiveText, first: Piece, model: str, logprobs: bool,
                record: OnAnswer, failed: OnFailure, index: int = 0, cid: str | None = None,
                created: int | None = None, last: bool = True) -> AsyncIterator[str]:
    """One prompt's completion events for a live escalation (``relay``): each piece of text as a
    chunk as it comes (choice ``index``, with its tokens' legacy ``logprobs`` where asked), then the
    rest of the text with the finish and the route (``record`` logs the answer and returns it), and
    ``[DONE]`` where it is the ``last`` choice; or the error body ``failed`` logs and returns."""
    cid, created = cid or f"cmpl-{uuid.uuid4().hex[:24]}", created if created is not None else int(time.time())
    at = 0  # the text offset of the next token whose log-probs go out

    def chunk(piece: Piece, finish: str | None = None, **extra: Any) -> str:
        nonlocal at
        lps = legacy_logprobs(piece.logprobs, at) if logprobs else None
        at += sum(len(t["token"]) for t in piece.logprobs)
        return _chunk(cid, created, model, {"text": piece.text, "index": index, "logprobs": lps,
                                            "finish_reason": finish, **extra})

    def closing(served: Any, route: dict[str, Any], rest: Piece) -> list[str]:
        return [chunk(rest, served.finish_reason, potstill=route)] + ([DONE] if last else [])

    return relay(task, live_text, first, record, failed, [], chunk, closing,
                 lambda body: _Failure(f"data: {json.dumps(body)}\n\n"))


def _chunk(cid: str, created: int, model: str, choice: dict[str, Any]) -> str:
    obj = {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": [choice]}
    return f"data: {json.dumps(obj)}\n\n"


# The answers of several streamed prompts still running for a client that left (a task needs a reference).
_PUMPS: set[asyncio.Task] = set()


class _Failed(NamedTuple):
    """A prompt's failure, logged: the exception and the error body it was logged with."""
    error: BaseException
    body: dict[str, Any]


async def several(prompts: list[str], answer: Callable[[list[dict], LiveText | None], Awaitable[Any]],
                  live: Callable[[], LiveText | None], record: Callable[[list[dict]], OnAnswer],
                  failed: Callable[[list[dict]], OnFailure], model: str, logprobs: bool, cid: str,
                  created: int) -> AsyncIterator[str]:
    """Several prompts streamed: all asked at once, each choice's events (its ``index``) sent as they
    come, choices interleaved: a student's answer (or one from the ledger) as one chunk once it is
    routed, an escalation as the teacher writes it (``live``, where the teacher streams), then
    ``[DONE]``. ``answer(messages, live_text)`` routes one prompt; ``record(messages)`` logs its
    answer, ``failed(messages)`` its failure. A prompt that fails before anything went out raises
    here (the request's error, as unstreamed); after, its error event ends the stream. Every answer
    and every failure is logged, the client there or not. Its chunks are ``cid``, made at ``created``."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, prompt: str) -> None:
        messages = [{"role": "user", "content": prompt}]
        live_text = live()
        try:
            answering = answer(messages, live_text)
            task, first = await first_piece(answering, live_text) if live_text is not None else \
                (asyncio.ensure_future(answering), None)
            if first is not None:
                async for event in live_events(task, live_text, first, model, logprobs, record(messages),
                                               failed(messages), index=i, cid=cid, created=created, last=False):
                    queue.put_nowait(event)
            else:
                served = await task
                route = await record(messages)(served)
                queue.put_nowait(_chunk(cid, created, served.model, {
                    "text": served.content, "index": i,
                    "logprobs": legacy_logprobs(served.logprobs) if logprobs else None,
                    "finish_reason": served.finish_reason, "potstill": route}))
        except Exception as e:  # noqa: BLE001 - the request's error, or an error event
            queue.put_nowait(_Failed(e, await failure_body(failed(messages), e)))
        finally:
            queue.put_nowait(None)  # this prompt is done

    for i, prompt in enumerate(prompts):
        t = asyncio.ensure_future(pump(i, prompt))
        _PUMPS.add(t)
        t.add_done_callback(_PUMPS.discard)
    left, started = len(prompts), False
    while left:
        item = await queue.get()
        if item is None:
            left -= 1
        elif isinstance(item, _Failed):
            if not started:
                raise item.error
            yield f"data: {json.dumps(item.body)}\n\n"
            return
        else:
            started = True
            yield item
            if isinstance(item, _Failure):
                return
    yield DONE


async def _chain(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for event in rest:
        yield event


async def _sse(result: dict[str, Any]) -> AsyncIterator[str]:
    """The answers as server-sent events in the completions chunk form: each choice's whole text in
    one chunk (routed on the whole answer, as chat streams it), then ``[DONE]``."""
    for choice in result["choices"]:
        chunk = {k: result[k] for k in ("id", "object", "created", "model")}
        yield f"data: {json.dumps({**chunk, 'choices': [choice]})}\n\n"
    yield DONE
