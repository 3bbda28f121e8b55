"""OpenAI's Responses API for the server (``POST /v1/responses``, ``client.responses.create``), in
chat completions' terms (which the router, the teachers and the ledger speak): function tools to
chat tools, and an answer back to output items and server-sent events. Input items to chat
messages: ``potstill.responses_format``. Tools: ``function`` tools only (``{type, name,
description, parameters, strict}``); hosted tools (web search, file search, ...) are the provider's
own and a 400 here. An escalation asked with ``stream`` streams its text and its function calls as
the teacher writes them, as chat completions' does (``serve.streaming``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import Counter, Histogram

from potstill.ledger import ServedCall
from potstill.responses_format import ResponsesInputError, chat_messages
from potstill.responses_format import json_type as _json_type
from potstill.serve.formats import responses_form
from potstill.serve.gate import CLIENT_GONE
from potstill.serve.schemas import ResponsesRequest
from potstill.serve.streaming import LiveText, OnAnswer, OnFailure, Piece, first_piece, relay
from potstill.serve.teacher_queue import WAIT_BOUNDED
from potstill.teachers.base import join_fragment
from potstill.tool_calls import unanswered_result


def student_view(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The messages as the student reads them (role and text), as chat completions gives them to it."""
    return [{"role": m["role"], "content": m.get("content") or ""} for m in messages]


def chat_tools(tools: list[Any] | None, tool_choice: Any, parallel: bool | None) -> dict[str, Any] | None:
    """Responses ``tools`` / ``tool_choice`` / ``parallel_tool_calls`` in chat completions' form
    (``ChatRequest.tool_request``'s, choice 'none' kept), None where there are no tools."""
    if not tools:
        if tool_choice not in (None, "auto", "none"):
            raise ResponsesInputError("tool_choice", "only allowed when tools are given")
        return None
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else _json_type(tool)
            raise ResponsesInputError(f"tools.{i}.type", f"{kind!r}: only function tools are served here (hosted "
                                      "tools such as web_search are the provider's own)")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise ResponsesInputError(f"tools.{i}.name", "required, a string")
        out.append({"type": "function", "function": {k: tool[k] for k in ("name", "description", "parameters",
                                                                           "strict") if tool.get(k) is not None}})
    names = [t["function"]["name"] for t in out]
    if isinstance(tool_choice, dict):
        if tool_choice.get("type") != "function":
            raise ResponsesInputError("tool_choice", "only 'none', 'auto', 'required' or a function tool")
        if tool_choice.get("name") not in names:
            raise ResponsesInputError("tool_choice", f"names the function {tool_choice.get('name')!r}, which is not "
                                      "in tools")
        tool_choice = {"type": "function", "function": {"name": tool_choice["name"]}}
    elif tool_choice not in (None, "auto", "none", "required"):
        raise ResponsesInputError("tool_choice", f"{tool_choice!r} is not one of none, auto, required")
    return {"tools": out, "tool_choice": tool_choice, "parallel_tool_calls": parallel}


def output_items(content: str, calls: list[dict[str, Any]] | None, incomplete: bool,
                 msg_id: str | None = None, logprobs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """A routed answer as Responses output items: its text as a message item (``msg_id``, or a new
    id; none where the answer is calls alone; its tokens' ``logprobs`` where asked and given), then
    each tool call as a ``function_call`` item."""
    items: list[dict[str, Any]] = []
    if content or not calls:
        items.append({"type": "message", "id": msg_id or f"msg_{uuid.uuid4().hex[:24]}",
                      "status": "incomplete" if incomplete else "completed", "role": "assistant",
                      "content": [{"type": "output_text", "text": content, "annotations": [],
                                   "logprobs": logprobs or []}]})
    for call in calls or []:
        items.append({"type": "function_call", "id": f"fc_{uuid.uuid4().hex[:24]}", "call_id": call["id"],
                      "name": call["function"]["name"], "arguments": call["function"]["arguments"],
                      "status": "completed"})
    return items


def input_items(input_: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A request's ``input`` (already read by ``chat_messages``) as stored input items, as
    ``GET /v1/responses/{id}/input_items`` lists them: each with an id (the client's, else a new
    one) and a status, a message's text as parts (an assistant's as ``output_text``)."""
    if isinstance(input_, str):
        input_ = [{"type": "message", "role": "user", "content": input_}]
    out = []
    for item in input_:
        kind = item.get("type", "message")
        if kind == "message":
            content = item["content"]
            texts = [content] if isinstance(content, str) else [part["text"] for part in content]
            said = item["role"] == "assistant"
            parts = [{"type": "output_text", "text": t, "annotations": [], "logprobs": []} if said
                     else {"type": "input_text", "text": t} for t in texts]
            out.append({"type": "message", "id": item.get("id") or f"msg_{uuid.uuid4().hex[:24]}",
                        "role": item["role"], "status": "completed", "content": parts})
        elif kind == "function_call":
            out.append({"type": "function_call", "id": item.get("id") or f"fc_{uuid.uuid4().hex[:24]}",
                        **{k: item[k] for k in ("call_id", "name", "arguments")}, "status": "completed"})
        else:  # function_call_output
            out.append({"type": "function_call_output", "id": item.get("id") or f"fco_{uuid.uuid4().hex[:24]}",
                        "call_id": item["call_id"], "output": item["output"], "status": "completed"})
    return out


def _events(after: int | None = None) -> Any:
    """Each event as its server-sent text, numbered; "" for those numbered ``after`` or below."""
    seq = itertools.count()

    def event(kind: str, **fields: Any) -> str:
        n = next(seq)
        if after is not None and n <= after:
            return ""
        return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': n, **fields})}\n\n"

    return event


def events(response: dict[str, Any], after: int | None = None) -> Iterator[str]:
    """The Responses API's server-sent events for one whole answer: each text or arguments as one
    delta (those numbered above ``after``, for a stored response read back from there)."""
    return (e for e in _whole_events(response, _events(after)) if e)


def _whole_events(response: dict[str, Any], event: Any) -> Iterator[str]:
    """``events``' events, each made by ``event`` (which numbers them)."""
    opening = {**response, "status": "in_progress", "output": [], "usage": None}
    yield event("response.created", response=opening)
    yield event("response.in_progress", response=opening)
    for index, item in enumerate(response["output"]):
        if item["type"] == "message":
            part, text = item["content"][0], item["content"][0]["text"]
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            yield event("response.output_item.added", output_index=index,
                        item={**item, "status": "in_progress", "content": []})
            yield event("response.content_part.added", **where, part={**part, "text": "", "logprobs": []})
            yield event("response.output_text.delta", **where, delta=text, logprobs=part["logprobs"])
            yield event("response.output_text.done", **where, text=text, logprobs=part["logprobs"])
            yield event("response.content_part.done", **where, part=part)
        else:
            where = {"item_id": item["id"], "output_index": index}
            yield event("response.output_item.added", output_index=index,
                        item={**item, "status": "in_progress", "arguments": ""})
            yield event("response.function_call_arguments.delta", **where, delta=item["arguments"])
            yield event("response.function_call_arguments.done", **where, name=item["name"],
                        arguments=item["arguments"])
        yield event("response.output_item.done", output_index=index, item=item)
    yield event("response.incomplete" if response["status"] == "incomplete" else "response.completed",
                response=response)


def response_body(body: ResponsesRequest, served: ServedCall, fmt: dict[str, Any] | None, route: dict[str, Any],
                  rid: str | None = None, created: int | None = None, msg_id: str | None = None,
                  stored: bool = False, background: bool = False) -> dict[str, Any]:
    """The Responses object for a routed answer (``route``: the ``potstill`` object the client gets;
    ``stored``: whether the server keeps it)."""
    cut = served.finish_reason == "length"
    return {
        "id": rid or f"resp_{uuid.uuid4().hex[:24]}", "object": "response",
        "created_at": created if created is not None else int(time.time()),
        "status": "incomplete" if cut else "completed", "model": served.model,
        "output": output_items(served.content, served.extra.get("tool_calls"), cut, msg_id, served.logprobs),
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None, "error": None,
        "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
        "temperature": body.temperature, "top_p": body.top_p, "tools": body.tools or [],
        "tool_choice": body.tool_choice or "auto", "parallel_tool_calls": body.parallel_tool_calls is not False,
        "text": {"format": responses_form(fmt)}, "metadata": body.metadata or {}, "top_logprobs": body.top_logprobs,
        "previous_response_id": body.previous_response_id, "store": stored, "background": background,
        "usage": {"input_tokens": served.input_tokens, "output_tokens": served.output_tokens,
                  "total_tokens": served.input_tokens + served.output_tokens,
                  "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                  "output_tokens_details": {"reasoning_tokens": 0}},
        "potstill": route}


def fail_unfinished(service: Any, response: dict[str, Any], why: str) -> None:
    """A background response its stopped server left unanswered that cannot be asked again (kept
    without its request, or refused now): kept as ``failed``, so a client polling it stops instead of
    waiting for an answer nobody is writing."""
    service.ledger.update_response({**response, "status": "failed", "error": {
        "code": "server_error", "message": f"the server stopped before this background response was answered, "
                                           f"and {why}; create it again"}})


def failed_response(opening: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The response a stream that failed after its 200 ends with (``body``: the error, OpenAI's form)."""
    error = body["error"]
    return {**opening, "status": "failed", "error": {
        "code": error.get("code") or error.get("type") or "server_error", "message": error["message"]}}


def live_events(task: asyncio.Future, live_text: LiveText, first: Piece, opening: dict[str, Any], msg_id: str,
                finish: OnAnswer, failed: OnFailure) -> AsyncIterator[str]:
    """The Responses API's events for one live escalation (``relay``): the response opened
    (``opening``); each output item added as the teacher begins it, its message (``msg_id``) at the
    first text, each tool call as a ``function_call`` item at its first fragment, with text and
    arguments as deltas as they come; then the rest of the text, each item done, and the whole
    response (``finish``: logs the answer and returns the response, its items in the order they
    went out); or ``response.failed`` with the error ``failed`` logs and returns."""
    event = _events()
    items: list[dict[str, Any]] = []  # as they went out: message, or function_call with its call index
    calls: dict[int, dict[str, Any]] = {}  # tool call index -> its item's id, output_index, whether done
    joined: dict[int, dict[str, Any]] = {}  # tool call index -> its id, name and arguments so far
    text = {"item_id": msg_id, "content_index": 0}
    start = [event("response.created", response=opening), event("response.in_progress", response=opening)]

    def message() -> list[str]:
        """The message item opened where it is not yet."""
        if any(item["type"] == "message" for item in items):
            return []
        items.append({"type": "message", "id": msg_id})
        text["output_index"] = len(items) - 1
        return [event("response.output_item.added", output_index=len(items) - 1, item={
                    "type": "message", "id": msg_id, "status": "in_progress", "role": "assistant", "content": []}),
                event("response.content_part.added", **text, part={"type": "output_text", "text": "",
                                                                   "annotations": [], "logprobs": []})]

    def call_item(i: int, status: str, arguments: str | None = None) -> dict[str, Any]:
        """Tool call ``i`` as a ``function_call`` item, with its arguments so far (or ``arguments``)."""
        c = joined[i]
        return {"type": "function_call", "id": calls[i]["id"], "call_id": c["id"], "name": c["name"],
                "arguments": c["arguments"] if arguments is None else arguments, "status": status}

    def call_done(i: int, done: dict[str, Any]) -> list[str]:
        where = {"item_id": calls[i]["id"], "output_index": calls[i]["output_index"]}
        calls[i]["done"] = True
        return [event("response.function_call_arguments.done", **where, name=done["name"], arguments=done["arguments"]),
                event("response.output_item.done", output_index=calls[i]["output_index"], item=done)]

    def delta(piece: Piece) -> str:
        out: list[str] = []
        if piece.text or piece.logprobs:
            out += message()
            out.append(event("response.output_text.delta", **text, delta=piece.text, logprobs=list(piece.logprobs)))
        for f in piece.tool_calls:
            i, arguments = f.get("index", 0), (f.get("function") or {}).get("arguments")
            join_fragment(joined, f)
            if i not in calls:
                for j in [j for j in calls if not calls[j].get("done")]:  # one call at a time: the one before is whole
                    out += call_done(j, call_item(j, "completed"))
                calls[i] = {"id": f"fc_{uuid.uuid4().hex[:24]}", "output_index": len(items)}
                items.append({"type": "function_call", "call": i})
                out.append(event("response.output_item.added", output_index=calls[i]["output_index"],
                                 item=call_item(i, "in_progress", arguments="")))
            if arguments:
                out.append(event("response.function_call_arguments.delta", item_id=calls[i]["id"],
                                 output_index=calls[i]["output_index"], delta=arguments))
        return "".join(out)

    def closing(served: ServedCall, response: dict[str, Any], rest: Piece) -> Iterator[str]:
        whole = response["output"]
        said = [i for i in whole if i["type"] == "message"]
        if said or rest.text or rest.logprobs:
            yield from message()
        if rest.text or rest.logprobs:
            yield event("response.output_text.delta", **text, delta=rest.text, logprobs=list(rest.logprobs))
        answered = [i for i in whole if i["type"] == "function_call"]
        output = []
        for item in items:
            if item["type"] == "message":
                done = said[0]
                yield event("response.output_text.done", **text, text=served.content,
                            logprobs=done["content"][0]["logprobs"])
                yield event("response.content_part.done", **text, part=done["content"][0])
                yield event("response.output_item.done", output_index=text["output_index"], item=done)
            else:
                # The call as the teacher's answer holds it (in the order of the calls' indexes),
                # under the id its events went out with.
                i = item["call"]
                done = {**answered[sorted(calls).index(i)], "id": calls[i]["id"]}
                if not calls[i].get("done"):
                    yield from call_done(i, done)
            output.append(done)
        response = {**response, "output": output}
        yield event("response.incomplete" if response["status"] == "incomplete" else "response.completed",
                    response=response)

    def failure(body: dict[str, Any]) -> str:
        return event("response.failed", response=failed_response(opening, body))

    return relay(task, live_text, first, finish, failed, start, delta, closing, failure)


def add_responses_route(app: FastAPI, service: Any, requests: Counter, latency: Histogram, bearer: list,
                        log_error: Any) -> Any:
    """``POST /v1/responses``: routed, logged and metered as a chat completion is; the ledger row's
    request carries the input as ``messages`` too, so watch, redistill and import read it as they
    read a chat request. Returns ``resume``, which the server's start runs."""
    from potstill.serve.app import (ERRORS, RESPONSES, SSE_EVENT, APIError, _format, _live_headers, _owner, _record,
                                    _route_headers, _servable_tools, _shown, _stream_failure, _unknown_model,
                                    error_body)

    s = service.cfg.serve
    running: dict[str, asyncio.Task] = {}  # background responses being answered, by id

    @app.post(RESPONSES, dependencies=bearer,
              responses={**ERRORS, 200: {"content": {"text/event-stream": {"schema": SSE_EVENT}}}})
    async def responses(body: ResponsesRequest, request: Request) -> Any:
        return await respond(body, request.scope.setdefault("state", {}))

    async def resume() -> tuple[int, int]:
        """At start: each background response whose server stopped or was killed while answering it
        (``Ledger.unfinished_background``) is asked again, under its id, from the request kept beside
        it; one kept without it (before migration 11) or that cannot be asked now (its previous
        response deleted since, ...) is kept as failed. Returns (asked again, failed)."""
        left = await asyncio.to_thread(service.ledger.unfinished_background)
        again = 0
        for response in left:
            kept = await asyncio.to_thread(service.ledger.background_request, response["id"])
            try:
                if kept is None:
                    raise APIError(500, "its request was not kept")
                raw = kept["body"].encode()
                state = {"raw_body": raw, "request_id": kept.get("request_id"), "t0": time.perf_counter()}
                await respond(ResponsesRequest.model_validate_json(raw), state, response)
                again += 1
            except Exception as e:  # noqa: BLE001 - one response that cannot be asked again stops no server
                why = e.message if isinstance(e, APIError) else f"asking it again failed ({type(e).__name__})"
                await asyncio.to_thread(fail_unfinished, service, response, why)
        return again, len(left) - again

    async def respond(body: ResponsesRequest, state: dict[str, Any], resumed: dict[str, Any] | None = None) -> Any:
        """A response to ``body``; ``resumed``: the queued background response a stopped server left,
        answered again under its id and creation time."""
        if _owner(service, body.model) is None:
            raise _unknown_model(service, body.model)
        for field, use in (("conversation", "previous_response_id"), ("prompt", "input")):
            if (body.model_extra or {}).get(field) is not None:  # silently dropped, the answer would be wrong
                raise APIError(400, f"{field}: not served here (OpenAI's stored conversations and prompts); "
                               f"use {use}", field)
        try:
            chat_messages(body.input)  # the request's own items, named as it sent them
            tools = chat_tools(body.tools, body.tool_choice, body.parallel_tool_calls)
        except ResponsesInputError as e:
            raise APIError(400, str(e), e.param) from None
        context: list[dict[str, Any]] = []  # the conversation it continues: earlier input and output items
        if body.previous_response_id is not None:
            if not s.store_responses:
                raise APIError(400, "previous_response_id: this server keeps no responses (serve.store_responses "
                               "is false); send the whole conversation in input", "previous_response_id")
            previous = await asyncio.to_thread(service.ledger.stored_response, body.previous_response_id)
            if previous is None:
                raise APIError(400, f"Previous response with id {body.previous_response_id!r} not found.",
                               "previous_response_id", "previous_response_not_found")
            context = previous[1] + previous[0]["output"]
        items = context + input_items(body.input)
        chat = chat_messages(items)
        keep = bool(body.store) and s.store_responses
        if len(chat) > s.max_messages:
            raise APIError(400, f"input: at most {s.max_messages} messages per request", "input")
        fmt = _format(body)
        tools = _servable_tools(service, tools)
        # As chat: the run's instruction replaces a client's system prompt and instructions; the
        # teacher gets the tool turns whole, the student their text.
        teacher_messages = [m for m in chat if m["role"] not in ("system", "developer")]
        messages = student_view(teacher_messages)
        if not any(m["role"] == "user" and m["content"].strip() for m in messages):
            raise APIError(400, "input: needs a user message with text", "input")
        orphan = unanswered_result(teacher_messages)
        if orphan is not None:  # as chat's tool message that answers no call: the teacher would refuse it
            raise APIError(400, f"input: no function_call before the function_call_output with call_id "
                           f"{_shown(teacher_messages[orphan]['tool_call_id'])} has that call_id", "input")
        logprobs = body.logprob_request()
        background = bool((body.model_extra or {}).get("background"))
        if background and body.stream:
            raise APIError(400, "background: a background response is not streamed here; poll "
                           "client.responses.retrieve(id) instead", "stream")
        if background and not keep:
            raise APIError(400, "background: a background response is fetched by its id, so it needs store "
                           "(and serve.store_responses)", "store")
        live_text = LiveText((), logprobs) if body.stream and service.streams() else None
        answering = service.answer(messages, body.max_output_tokens, [],
                                   teacher_messages=teacher_messages if teacher_messages != messages else None,
                                   tools=tools, logprobs=logprobs, response_format=fmt, live_text=live_text)
        # The response's id, in its ledger row too (an operator has either).
        rid = resumed["id"] if resumed else f"resp_{uuid.uuid4().hex[:24]}"
        # The chat with its tool turns' fields (``ServedCall.chat``: redistill learns an agent's turns from it).
        logged = {**body.model_dump(exclude_none=True), "messages": teacher_messages, "endpoint": RESPONSES,
                  "response_id": rid}

        async def _kept(response: dict[str, Any]) -> dict[str, Any]:
            """The response, kept first where asked: a client may name it as soon as it has it (a
            background one with its request, for a server to ask again should this one die first)."""
            if keep:
                queued = response["status"] == "queued"
                request = {"body": (state.get("raw_body") or b"").decode("utf-8", "replace"),
                           "request_id": state.get("request_id")} if queued else None
                await asyncio.to_thread(service.ledger.store_response, response, items, body.previous_response_id,
                                        queued, request)
            return response

        if background:  # answered after the call returns: the client polls retrieve (or cancels)
            created = resumed["created_at"] if resumed else int(time.time())
            queued = {**response_body(body, ServedCall(request={}, answered_by="student", model=service.student_name,
                                                       content=""), fmt, {}, rid, created, stored=True, background=True),
                      "status": "queued", "output": [], "usage": None}
            queued.pop("potstill")
            await _kept(queued)

            async def answer_later() -> None:
                CLIENT_GONE.set(None)  # answered whether its client stays connected or not (this task's own context)
                WAIT_BOUNDED.set(False)  # queued already: it waits for a teacher slot, as a batch line does
                try:
                    served = await answering
                    route = await _record(service, state, served, logged, requests, latency)
                    await _kept(response_body(body, served, fmt, route, rid, created, stored=True, background=True))
                except asyncio.CancelledError:
                    await _kept({**queued, "status": "cancelled"})
                    # every request is a ledger row: this one's says it was never answered
                    await asyncio.to_thread(log_error, state, 400, error_body(
                        400, f"cancelled before it was answered (POST /v1/responses/{rid}/cancel)"))
                except Exception as e:  # noqa: BLE001 - the response fails with its error, as a stream's does
                    await _kept(failed_response(queued, await asyncio.to_thread(_stream_failure, service, state, e,
                                                                                log_error)))
                finally:
                    running.pop(rid, None)

            running[rid] = asyncio.get_running_loop().create_task(answer_later())
            return JSONResponse(queued)
        task, first = await first_piece(answering, live_text) if live_text is not None else (None, None)
        if first is not None:  # the teacher's first piece came before its whole answer: streamed as it is written
            created, msg_id = int(time.time()), f"msg_{uuid.uuid4().hex[:24]}"
            opening = {**response_body(body, ServedCall(request={}, answered_by="teacher", model=service.teacher_name,
                                                        content=""), fmt, {}, rid, created, stored=keep),
                       "status": "in_progress", "output": [], "usage": None}
            opening.pop("potstill")

            async def finish(served: ServedCall) -> dict[str, Any]:
                route = await _record(service, state, served, logged, requests, latency)
                return await _kept(response_body(body, served, fmt, route, rid, created, msg_id, keep))

            async def failed(e: BaseException) -> dict[str, Any]:
                error = await asyncio.to_thread(_stream_failure, service, state, e, log_error)
                await _kept(failed_response(opening, error))  # kept as OpenAI keeps a failed response
                return error

            events_ = live_events(task, live_text, first, opening, msg_id, finish, failed)
            return StreamingResponse(events_, media_type="text/event-stream", headers=_live_headers(live_text))
        served = task.result() if task is not None else await answering
        route = await _record(service, state, served, logged, requests, latency)
        response = await _kept(response_body(body, served, fmt, route, rid, stored=keep))
        headers = _route_headers(served.answered_by, served.reason, served.confidence, served.student)
        if body.stream:
            return StreamingResponse(events(response), media_type="text/event-stream", headers=headers)
        return JSONResponse(response, headers=headers)

    def _stored(response_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        found = service.ledger.stored_response(response_id)
        if found is None:
            why = "" if s.store_responses else " (this server keeps none: serve.store_responses is false)"
            raise APIError(404, f"Response with id {response_id!r} not found{why}.", "response_id")
        return found

    @app.get(RESPONSES + "/{response_id}", dependencies=bearer,
             responses={**ERRORS, 200: {"content": {"text/event-stream": {"schema": SSE_EVENT}}}})
    async def retrieve(response_id: str, stream: bool = False,
                       starting_after: int | None = Query(None, ge=0)) -> Any:
        """A stored response as it was answered (``client.responses.retrieve``); ``stream``: its
        events again, each text in one delta, from after ``starting_after``."""
        response, _ = await asyncio.to_thread(_stored, response_id)
        if stream:
            return StreamingResponse(events(response, starting_after), media_type="text/event-stream")
        return JSONResponse(response)

    @app.post(RESPONSES + "/{response_id}/cancel", dependencies=bearer, responses=ERRORS)
    async def cancel(response_id: str) -> Any:
        """Stop a background response being answered (``client.responses.cancel``): it is kept as
        ``cancelled``; one already answered comes back as it is."""
        response, _ = await asyncio.to_thread(_stored, response_id)
        if not response.get("background"):
            raise APIError(400, "Only background responses can be cancelled.", "response_id")
        task = running.get(response_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            response, _ = await asyncio.to_thread(_stored, response_id)
        return JSONResponse(response)

    @app.delete(RESPONSES + "/{response_id}", dependencies=bearer, responses=ERRORS)
    async def delete(response_id: str) -> Any:
        """Forget a stored response (``client.responses.delete``); responses that continued it keep
        the conversation they read."""
        if not await asyncio.to_thread(service.ledger.delete_response, response_id):
            await asyncio.to_thread(_stored, response_id)  # its 404
        return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})

    @app.get(RESPONSES + "/{response_id}/input_items", dependencies=bearer, responses=ERRORS)
    async def listed_input_items(response_id: str, after: str | None = None,
                                 limit: int = Query(20, ge=1, le=100),
                                 order: Literal["asc", "desc"] = "desc") -> Any:
        """The input items a stored response's model read, earlier turns' included
        (``client.responses.input_items.list``), a page at a time after the item ``after``."""
        _, items = await asyncio.to_thread(_stored, response_id)
        if order == "desc":
            items = items[::-1]
        if after is not None:
            ids = [item["id"] for item in items]
            if after not in ids:
                raise APIError(400, f"after: response {response_id!r} has no input item with id {after!r}", "after")
            items = items[ids.index(after) + 1:]
        page = items[:limit]
        return JSONResponse({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                             "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})

    return resume
