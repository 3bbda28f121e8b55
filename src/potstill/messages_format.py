"""Anthropic's Messages API conversation in chat completions' terms, for the server
(``serve/messages.py``, ``POST /v1/messages``) and for importing logged Claude traffic
(``potstill import``): text blocks to text, an assistant's ``tool_use`` blocks to its ``tool_calls``,
a user's ``tool_result`` blocks to tool turns (before the turn's text, as Claude reads them).
"""

from __future__ import annotations

import json
from typing import Any

from potstill.responses_format import ResponsesInputError, json_type, utf8


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ResponsesInputError(where, f"expected a string or a list of content blocks, not {json_type(content)}")
    for j, b in enumerate(content):
        if not isinstance(b, dict) or not isinstance(b.get("type"), str):
            raise ResponsesInputError(f"{where}.{j}", "expected a content block (an object with a type)")
    return content


def _text_of(blocks: list[dict[str, Any]], where: str) -> str:
    try:
        return utf8("".join(str(b.get("text", "")) for b in blocks if b["type"] == "text"))
    except ValueError as e:
        raise ResponsesInputError(where, str(e)) from None


def chat_messages(messages: list[Any], drop: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Anthropic ``messages`` as chat messages (the teacher's form: tool calls and tool turns kept);
    ``drop``: block types left out (import: an assistant turn's ``thinking``, which the server refuses)."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise ResponsesInputError(f"{where}.role", "user or assistant (the system prompt is the top-level system)")
        blocks = _blocks(m.get("content"), f"{where}.content")
        allowed = ("text", "tool_result") if m["role"] == "user" else ("text", "tool_use")
        for j, b in enumerate(blocks):
            if b["type"] not in allowed and b["type"] not in drop:
                raise ResponsesInputError(f"{where}.content.{j}", f"a {b['type']!r} block; this server answers text, "
                                          f"so a {m['role']} turn holds {' and '.join(allowed)} blocks")
        text = _text_of(blocks, f"{where}.content")
        if m["role"] == "assistant":
            calls = []
            for j, b in enumerate(blocks):
                if b["type"] != "tool_use":
                    continue
                if not isinstance(b.get("id"), str) or not isinstance(b.get("name"), str) or \
                        not isinstance(b.get("input"), dict):
                    raise ResponsesInputError(f"{where}.content.{j}", "a tool_use block has an id, a name and an "
                                              "input object")
                calls.append({"id": b["id"], "type": "function",
                              "function": {"name": b["name"], "arguments": json.dumps(b["input"])}})
            out.append({"role": "assistant", "content": text if text or not calls else None,
                        **({"tool_calls": calls} if calls else {})})
            continue
        for j, b in enumerate(blocks):  # a user turn: its tool results first, as Claude reads them
            if b["type"] != "tool_result":
                continue
            if not isinstance(b.get("tool_use_id"), str):
                raise ResponsesInputError(f"{where}.content.{j}.tool_use_id", "required, a string")
            inner = b.get("content", "")
            result = _text_of(_blocks(inner, f"{where}.content.{j}.content"), f"{where}.content.{j}.content")
            out.append({"role": "tool", "tool_call_id": b["tool_use_id"], "content": result})
        if text or not any(b["type"] == "tool_result" for b in blocks):
            out.append({"role": "user", "content": text})
    return out
