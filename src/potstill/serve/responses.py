"""OpenAI's Responses API in the terms of chat completions, which the router, the teachers and the
ledger speak: input items to chat messages, function tools to chat tools, and an answer back to
output items and server-sent events.

Input: ``message`` items (string content or text parts), ``function_call`` items (an assistant's
call: ``call_id``, ``name``, ``arguments``) and ``function_call_output`` items (``call_id``,
``output``), as ``client.responses.create`` and the OpenAI Agents SDK send a conversation. A call
becomes an assistant message's ``tool_calls`` entry (consecutive calls, and the assistant text just
before them, one message), an output a ``tool`` message. Tools: ``function`` tools only
(``{type, name, description, parameters, strict}``); hosted tools (web search, file search, ...)
are the provider's own and a 400 here.
"""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

from potstill.serve.schemas import _json_type, _utf8


class ResponsesInputError(ValueError):
    """An input item or tool this server cannot take (a 400): ``param`` names it."""

    def __init__(self, param: str, problem: str) -> None:
        super().__init__(f"{param}: {problem}")
        self.param = param


def _text(content: Any, where: str) -> str:
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") in ("input_text", "output_text", "text")
                    and isinstance(part.get("text"), str)):
                what = f"of type {part.get('type')!r}" if isinstance(part, dict) else f"that is {_json_type(part)}"
                raise ResponsesInputError(f"{where}.{j}", f"a part {what}; this server answers text, so content is "
                                          "a string or a list of input_text parts")
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise ResponsesInputError(where, f"expected a string or a list of input_text parts, not {_json_type(content)}")
    return _utf8(content)


def chat_messages(input_: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``input`` as chat messages: role and text, an assistant's ``tool_calls`` and a tool turn's
    ``tool_call_id`` where the items hold calls (the teacher's form; ``student_view`` drops them)."""
    if isinstance(input_, str):
        return [{"role": "user", "content": _utf8(input_)}]
    out: list[dict[str, Any]] = []
    for i, item in enumerate(input_):
        if not isinstance(item, dict):
            raise ResponsesInputError(f"input.{i}", f"expected an object, not {_json_type(item)}")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("system", "developer", "user", "assistant"):
                raise ResponsesInputError(f"input.{i}.role", f"{role!r} is not one of system, developer, user, "
                                          "assistant")
            out.append({"role": role, "content": _text(item.get("content"), f"input.{i}.content")})
        elif kind == "function_call":
            call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
            for field, value in (("call_id", call_id), ("name", name), ("arguments", arguments)):
                if not isinstance(value, str):
                    raise ResponsesInputError(f"input.{i}.{field}", "required, a string")
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            if out and out[-1]["role"] == "assistant":
                # Calls right after the assistant's text (or its earlier calls) are that turn's.
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise ResponsesInputError(f"input.{i}.call_id", "required, a string")
            out.append({"role": "tool", "tool_call_id": call_id, "content": _text(output, f"input.{i}.output")})
        else:
            raise ResponsesInputError(f"input.{i}", f"an item of type {kind!r}; this server takes message, "
                                      "function_call and function_call_output items")
    return out


def student_view(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The messages as the student reads them (role and text), as chat completions gives them to it."""
    return [{"role": m["role"], "content": m.get("content") or ""} for m in messages]


def chat_tools(tools: list[Any] | None, tool_choice: Any, parallel: bool | None) -> dict[str, Any] | None:
    """Responses ``tools`` / ``tool_choice`` / ``parallel_tool_calls`` in chat completions' form
    (``ChatRequest.tool_request``'s), None where the model may call none (no tools, or choice 'none')."""
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
        if tool_choice.get("type") != "function" or tool_choice.get("name") not in names:
            raise ResponsesInputError("tool_choice", f"names the function {tool_choice.get('name')!r}, which is not "
                                      "in tools" if tool_choice.get("type") == "function" else
                                      "only 'none', 'auto', 'required' or a function tool")
        tool_choice = {"type": "function", "function": {"name": tool_choice["name"]}}
    elif tool_choice not in (None, "auto", "none", "required"):
        raise ResponsesInputError("tool_choice", f"{tool_choice!r} is not one of none, auto, required")
    if tool_choice == "none":
        return None
    return {"tools": out, "tool_choice": tool_choice, "parallel_tool_calls": parallel}


def output_items(content: str, calls: list[dict[str, Any]] | None, incomplete: bool) -> list[dict[str, Any]]:
    """A routed answer as Responses output items: its text as a message item (none where the
    answer is calls alone), then each tool call as a ``function_call`` item."""
    items: list[dict[str, Any]] = []
    if content or not calls:
        items.append({"type": "message", "id": f"msg_{uuid.uuid4().hex[:24]}",
                      "status": "incomplete" if incomplete else "completed", "role": "assistant",
                      "content": [{"type": "output_text", "text": content, "annotations": []}]})
    for call in calls or []:
        items.append({"type": "function_call", "id": f"fc_{uuid.uuid4().hex[:24]}", "call_id": call["id"],
                      "name": call["function"]["name"], "arguments": call["function"]["arguments"],
                      "status": "completed"})
    return items


def events(response: dict[str, Any]):
    """The Responses API's server-sent events for one answer. The route is decided on the whole
    answer, so each text or arguments arrives as one delta."""
    seq = itertools.count()

    def event(kind: str, **fields: Any) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': next(seq), **fields})}\n\n"

    opening = {**response, "status": "in_progress", "output": [], "usage": None}
    yield event("response.created", response=opening)
    yield event("response.in_progress", response=opening)
    for index, item in enumerate(response["output"]):
        if item["type"] == "message":
            part, text = item["content"][0], item["content"][0]["text"]
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            yield event("response.output_item.added", output_index=index,
                        item={**item, "status": "in_progress", "content": []})
            yield event("response.content_part.added", **where, part={**part, "text": ""})
            yield event("response.output_text.delta", **where, delta=text, logprobs=[])
            yield event("response.output_text.done", **where, text=text, logprobs=[])
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
