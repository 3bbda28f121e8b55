"""OpenAI's Responses API for the server, in chat completions' terms (which the router, the
teachers and the ledger speak): function tools to chat tools, and an answer back to output items
and server-sent events. Input items to chat messages: ``potstill.responses_format``. Tools:
``function`` tools only (``{type, name, description, parameters, strict}``); hosted tools (web
search, file search, ...) are the provider's own and a 400 here.
"""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

from potstill.responses_format import ResponsesInputError
from potstill.responses_format import json_type as _json_type


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
        if tool_choice.get("type") != "function":
            raise ResponsesInputError("tool_choice", "only 'none', 'auto', 'required' or a function tool")
        if tool_choice.get("name") not in names:
            raise ResponsesInputError("tool_choice", f"names the function {tool_choice.get('name')!r}, which is not "
                                      "in tools")
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
