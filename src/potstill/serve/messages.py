"""Anthropic's Messages API for the server (``POST /v1/messages``, the anthropic SDK's
``client.messages.create``, and ``/v1/messages/count_tokens``), so an application that called a
Claude teacher switches to the student by its ``base_url`` and key alone, as an OpenAI client does.

Read in chat completions' terms (which the router, the teachers and the ledger speak): text
blocks to text, an assistant's ``tool_use`` blocks to its ``tool_calls``, a user's ``tool_result``
blocks to tool turns, client tools (``input_schema``) to function tools; the answer back as text
and ``tool_use`` blocks with Anthropic's ``stop_reason``. Errors have Anthropic's shape
(``{"type": "error", "error": {"type", "message"}}``); the key comes as ``x-api-key`` or a bearer
token. A ``system`` prompt is replaced by the run's instruction, as on chat completions; images,
documents, server tools and extended thinking are 400s. A ``stream`` answer comes as Anthropic's
events: an escalation's as the teacher writes it (``serve.stream_teacher``), else each block in one
delta."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field, field_validator

from potstill.ledger import ServedCall
from potstill.messages_format import chat_messages
from potstill.responses_format import ResponsesInputError, json_type
from potstill.serve.streaming import LiveText, OnAnswer, OnFailure, Piece, first_piece, relay
from potstill.teachers.base import join_fragment
from potstill.tool_calls import unanswered_result

MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
#: Anthropic's error type for each status.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 409: "invalid_request_error",
               413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}


class _AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    """An error as Anthropic's API shapes it."""

    type: str = "error"
    error: _AnthropicErrorDetail


#: The errors these routes document (the Messages API's shape).
ERRORS = {code: {"model": AnthropicError} for code in (400, 401, 404, 413, 500, 502)}


def error_body(status: int, message: str) -> dict[str, Any]:
    """An error as Anthropic's API shapes it."""
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}


class MessagesRequest(BaseModel):
    """``POST /v1/messages`` (Anthropic's Messages API) for text and client tools."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(..., description="A name GET /v1/models lists; the router picks the student or the teacher.")
    max_tokens: int = Field(..., ge=1, strict=True, description="Most tokens to answer with.")
    messages: list[Any] = Field(..., description="user and assistant turns: text, tool_use and tool_result blocks.")
    system: str | list[Any] | None = Field(None, description="Accepted and replaced by the run's instruction, which "
                                           "the student was trained with.")
    stop_sequences: list[str] | None = Field(None, max_length=16)
    stream: bool = Field(False, strict=True)
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    tools: list[Any] | None = Field(None, description="Client tools ({name, description, input_schema}); a request "
                                    "that lets the model use one goes to the teacher.")
    tool_choice: dict[str, Any] | None = Field(None, description="{type: auto | any | tool (name) | none}.")
    metadata: dict[str, Any] | None = None

    @field_validator("stop_sequences")
    @classmethod
    def _stops(cls, v: list[str] | None) -> list[str] | None:
        if any(not s for s in v or []):  # an empty one would end every answer before it began
            raise ValueError("a stop sequence must not be empty")
        return v


class CountRequest(BaseModel):
    """``POST /v1/messages/count_tokens``."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[Any]
    system: str | list[Any] | None = None
    tools: list[Any] | None = None
    tool_choice: dict[str, Any] | None = None


def chat_tools(tools: list[Any] | None, tool_choice: dict[str, Any] | None) -> dict[str, Any] | None:
    """Anthropic client tools and ``tool_choice`` as chat completions' tool request (choice 'none' kept;
    None where there are no tools)."""
    choice = (tool_choice or {}).get("type", "auto")
    if choice not in ("auto", "any", "tool", "none"):
        raise ResponsesInputError("tool_choice.type", f"{choice!r} is not one of auto, any, tool, none")
    if not tools:
        if choice not in ("auto", "none"):
            raise ResponsesInputError("tool_choice", "only allowed when tools are given")
        return None
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type") not in (None, "custom"):
            kind = t.get("type") if isinstance(t, dict) else json_type(t)
            raise ResponsesInputError(f"tools.{i}.type", f"{kind!r}: only client tools (name, input_schema) are "
                                      "served here; server tools such as web search are Anthropic's own")
        if not isinstance(t.get("name"), str) or not t["name"]:
            raise ResponsesInputError(f"tools.{i}.name", "required, a string")
        if not isinstance(t.get("input_schema"), dict):
            raise ResponsesInputError(f"tools.{i}.input_schema", "required, a JSON Schema object")
        out.append({"type": "function", "function": {
            "name": t["name"], "parameters": t["input_schema"],
            **({"description": t["description"]} if isinstance(t.get("description"), str) else {})}})
    names = [t["function"]["name"] for t in out]
    if choice == "none":
        picked: Any = "none"
    elif choice == "tool":
        if tool_choice.get("name") not in names:
            raise ResponsesInputError("tool_choice.name", f"{tool_choice.get('name')!r} is not in tools")
        picked = {"type": "function", "function": {"name": tool_choice["name"]}}
    else:
        picked = "required" if choice == "any" else "auto"
    parallel = False if (tool_choice or {}).get("disable_parallel_tool_use") else None
    return {"tools": out, "tool_choice": picked, "parallel_tool_calls": parallel}


def _input(arguments: str) -> dict[str, Any]:
    """A tool call's arguments as a tool_use block's input (an object)."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"arguments": arguments}


def message_body(served: ServedCall, stops: list[str], route: dict[str, Any], mid: str) -> dict[str, Any]:
    """The Messages API answer ``mid`` for a routed chat (``route``: the ``potstill`` object the client gets)."""
    calls = served.extra.get("tool_calls") or []
    content = ([{"type": "text", "text": served.content}] if served.content or not calls else []) + [
        {"type": "tool_use", "id": c["id"], "name": c["function"]["name"], "input": _input(c["function"]["arguments"])}
        for c in calls]
    stop_sequence = None
    if served.finish_reason == "stop" and stops:  # which stop string cut it: the next text of the whole answer
        whole = served.extra.get("teacher_output") or served.student_output or ""
        stop_sequence = next((s for s in stops if whole[len(served.content):].startswith(s)), None)
    reason = {"length": "max_tokens", "tool_calls": "tool_use"}.get(served.finish_reason) or \
        ("stop_sequence" if stop_sequence is not None else "end_turn")
    return {"id": mid, "type": "message", "role": "assistant", "model": served.model,
            "content": content, "stop_reason": reason, "stop_sequence": stop_sequence,
            "usage": {"input_tokens": served.input_tokens, "output_tokens": served.output_tokens,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
            "potstill": route}


def _event(kind: str, **fields: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n"


def events(message: dict[str, Any]) -> Iterator[str]:
    """Anthropic's server-sent events for a whole answer: each block in one delta. message_delta's usage
    is the whole answer's, input side too, as Anthropic repeats it there (its counts are cumulative): a
    client that takes the usage from the last event finds the input tokens."""
    event = _event
    opening = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
               "usage": {**message["usage"], "output_tokens": 0}}
    opening.pop("potstill")
    yield event("message_start", message=opening)
    for i, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield event("content_block_start", index=i, content_block={"type": "text", "text": ""})
            yield event("content_block_delta", index=i, delta={"type": "text_delta", "text": block["text"]})
        else:
            yield event("content_block_start", index=i, content_block={**block, "input": {}})
            yield event("content_block_delta", index=i,
                        delta={"type": "input_json_delta", "partial_json": json.dumps(block["input"])})
        yield event("content_block_stop", index=i)
    yield event("message_delta", delta={"stop_reason": message["stop_reason"],
                                        "stop_sequence": message["stop_sequence"]},
                usage=message["usage"], potstill=message["potstill"])
    yield event("message_stop")


def live_events(task: Any, live_text: LiveText, first: Piece, model: str, stops: list[str], mid: str,
                record: OnAnswer, failed: OnFailure) -> AsyncIterator[str]:
    """Anthropic's events for one live escalation (``relay``): the message opened; a text block
    at the first text and a ``tool_use`` block at each call's first fragment (the block before it
    stopped), text and the call's input JSON as deltas as the teacher writes them; then the rest of
    the text, the last block stopped, ``message_delta`` with the stop reason, the usage and the
    route (``record``: the ledger row, returning the route), and ``message_stop``; or an ``error``
    event with what ``failed`` logs and returns."""
    # The prompt's tokens as the teacher counted them before writing (an Anthropic teacher's own
    # message_start), as Anthropic opens its stream with them; where the teacher reports them at its
    # end only (an OpenAI-compatible one), 0 here. message_delta's usage, cumulative and final, has the count.
    opening = {"id": mid, "type": "message", "role": "assistant", "model": model,
               "content": [], "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": live_text.input_tokens or 0, "output_tokens": 0}}
    blocks: list[Any] = []  # as they went out: "text", or a tool call's index
    joined: dict[int, dict[str, Any]] = {}  # tool call index -> its id, name and arguments so far

    def open_block(kind: Any, block: dict[str, Any]) -> list[str]:
        out = [_event("content_block_stop", index=len(blocks) - 1)] if blocks else []
        blocks.append(kind)
        return out + [_event("content_block_start", index=len(blocks) - 1, content_block=block)]

    def delta(piece: Piece) -> str:
        out: list[str] = []
        if piece.text:
            if not blocks or blocks[-1] != "text":
                out += open_block("text", {"type": "text", "text": ""})
            out.append(_event("content_block_delta", index=len(blocks) - 1,
                              delta={"type": "text_delta", "text": piece.text}))
        for f in piece.tool_calls:
            i, arguments = f.get("index", 0), (f.get("function") or {}).get("arguments")
            join_fragment(joined, f)
            if i not in blocks:
                out += open_block(i, {"type": "tool_use", "id": joined[i]["id"], "name": joined[i]["name"],
                                      "input": {}})
            if arguments:
                out.append(_event("content_block_delta", index=blocks.index(i),
                                  delta={"type": "input_json_delta", "partial_json": arguments}))
        return "".join(out)

    def closing(served: ServedCall, route: dict[str, Any], rest: Piece) -> Iterator[str]:
        if rest.text:
            yield delta(Piece(text=rest.text))
        if blocks:
            yield _event("content_block_stop", index=len(blocks) - 1)
        done = message_body(served, stops, route, mid)
        yield _event("message_delta", delta={"stop_reason": done["stop_reason"], "stop_sequence": done["stop_sequence"]},
                     usage=done["usage"], potstill=route)
        yield _event("message_stop")

    def failure(body: dict[str, Any]) -> str:
        kind = "invalid_request_error" if body["error"].get("type") == "invalid_request_error" else "api_error"
        return _event("error", error={"type": kind, "message": body["error"]["message"]})

    return relay(task, live_text, first, record, failed, [_event("message_start", message=opening)], delta, closing,
                 failure)


def add_messages_route(app: FastAPI, service: Any, requests: Counter, latency: Histogram, bearer: list,
                       log_error: Any) -> None:
    """``POST /v1/messages`` and ``/v1/messages/count_tokens``: routed, logged and metered as a chat
    completion is (the ledger row's request carries the chat as ``messages``, Anthropic's kept as
    ``anthropic_messages``)."""
    from potstill.serve.app import (APIError, _live_headers, _owner, _record, _route_headers, _servable_tools,
                                    _shown, _stream_failure, _unknown_model)
    from potstill.serve.responses import student_view
    from potstill.serve.tokenize import student_prompt_ids

    s = service.cfg.serve

    def read(body: MessagesRequest | CountRequest) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        if _owner(service, body.model) is None:
            raise _unknown_model(service, body.model)
        thinking = (body.model_extra or {}).get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") == "enabled":
            raise APIError(400, "thinking: the student does not think; send no thinking", "thinking")
        try:
            chat = chat_messages(body.messages)
            tools = chat_tools(body.tools, body.tool_choice)
        except ResponsesInputError as e:
            raise APIError(400, str(e), e.param) from None
        if len(chat) > s.max_messages:
            raise APIError(400, f"messages: at most {s.max_messages} messages per request", "messages")
        if not any(m["role"] == "user" and m["content"].strip() for m in chat):
            raise APIError(400, "messages: needs a user turn with text", "messages")
        orphan = unanswered_result(chat)
        if orphan is not None:  # as chat's tool message that answers no call: the teacher would refuse it
            raise APIError(400, f"messages: each tool_result block answers a tool_use block of the assistant turn "
                           f"before it; tool_use_id {_shown(chat[orphan]['tool_call_id'])} answers none", "messages")
        return chat, tools

    @app.post(MESSAGES, dependencies=bearer,
              responses={**ERRORS, 200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}})
    async def messages(body: MessagesRequest, request: Request) -> Any:
        state = request.scope.setdefault("state", {})
        chat, tools = read(body)
        tools = _servable_tools(service, tools)
        view = student_view(chat)
        stops = body.stop_sequences or []
        live_text = LiveText(stops, None) if body.stream and service.streams() else None
        answering = service.answer(view, body.max_tokens, stops, teacher_messages=chat if chat != view else None,
                                   tools=tools, live_text=live_text)
        mid = f"msg_{uuid.uuid4().hex[:24]}"  # the message's id, in its ledger row too (potstill requests --id)
        logged = {**body.model_dump(exclude_none=True, exclude={"messages"}), "messages": chat,
                  "anthropic_messages": body.messages, "endpoint": MESSAGES, "response_id": mid}
        task, first = await first_piece(answering, live_text) if live_text is not None else (None, None)
        if first is not None:  # the teacher's first piece came before its whole answer: streamed as it is written
            events_ = live_events(task, live_text, first, service.teacher_name, stops, mid,
                                  lambda served: _record(service, state, served, logged, requests, latency),
                                  lambda e: asyncio.to_thread(_stream_failure, service, state, e, log_error))
            return StreamingResponse(events_, media_type="text/event-stream", headers=_live_headers(live_text))
        served = task.result() if task is not None else await answering
        route = await _record(service, state, served, logged, requests, latency)
        message = message_body(served, stops, route, mid)
        headers = _route_headers(served.answered_by, served.reason, served.confidence, served.student)
        if body.stream:
            return StreamingResponse(events(message), media_type="text/event-stream", headers=headers)
        return JSONResponse(message, headers=headers)

    @app.post(COUNT_TOKENS, dependencies=bearer, responses=ERRORS)
    async def count_tokens(body: CountRequest) -> Any:
        """The student's prompt tokens for the chat, as its answer's usage counts them (the model
        every request reaches first)."""
        chat, _ = read(body)
        return {"input_tokens": len(await student_prompt_ids(service, student_view(chat), chat))}

