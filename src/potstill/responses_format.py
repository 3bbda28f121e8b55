"""OpenAI's Responses API input in chat completions' terms, for the server (``serve/responses.py``)
and for importing logged Responses traffic (``potstill import``).

Input: ``message`` items (string content or text parts), ``function_call`` items (an assistant's
call: ``call_id``, ``name``, ``arguments``) and ``function_call_output`` items (``call_id``,
``output``), as ``client.responses.create`` and the OpenAI Agents SDK send a conversation. A call
becomes an assistant message's ``tool_calls`` entry (consecutive calls, and the assistant text just
before them, one message), an output a ``tool`` message.
"""

from __future__ import annotations

from typing import Any


def utf8(text: str) -> str:
    """JSON may escape half of a UTF-16 pair (``"\\ud800"``), which is no character: the tokenizer
    cannot encode it (it failed the whole batch with a 500) and the ledger cannot store it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text holds a lone UTF-16 surrogate (an escape \\ud800-\\udfff without its pair)") from None
    return text


def surrogate_at(value: Any) -> tuple[str, str] | None:
    """Where in a parsed JSON value a string (or an object's key) holds a lone UTF-16 surrogate, as
    a parameter path (``messages.0.content``), and ``utf8``'s words for it; None where none does.
    Walked without recursion: JSON may nest deeper than Python recurses."""
    todo: list[tuple[Any, str]] = [(value, "")]
    while todo:
        x, where = todo.pop()
        if isinstance(x, str):
            try:
                utf8(x)
            except ValueError as e:
                return where, str(e)
        elif isinstance(x, dict):
            for k in x:
                try:
                    utf8(k)
                except ValueError as e:
                    return ".".join(filter(None, (where, k.encode("utf-8", "replace").decode()))), str(e)
            todo.extend((v, f"{where}.{k}" if where else k) for k, v in reversed(x.items()))
        elif isinstance(x, list):
            todo.extend((v, f"{where}.{i}" if where else str(i)) for i, v in reversed(list(enumerate(x))))
    return None


def json_type(v: object) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(v), "null")


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
                what = f"of type {part.get('type')!r}" if isinstance(part, dict) else f"that is {json_type(part)}"
                raise ResponsesInputError(f"{where}.{j}", f"a part {what}; this server answers text, so content is "
                                          "a string or a list of input_text parts")
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise ResponsesInputError(where, f"expected a string or a list of input_text parts, not {json_type(content)}")
    try:
        return utf8(content)
    except ValueError as e:
        raise ResponsesInputError(where, str(e)) from None


def chat_messages(input_: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``input`` as chat messages: role and text, an assistant's ``tool_calls`` and a tool turn's
    ``tool_call_id`` where the items hold calls (the teacher's form; ``student_view`` drops them)."""
    if isinstance(input_, str):
        return [{"role": "user", "content": _text(input_, "input")}]
    out: list[dict[str, Any]] = []
    for i, item in enumerate(input_):
        if not isinstance(item, dict):
            raise ResponsesInputError(f"input.{i}", f"expected an object, not {json_type(item)}")
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




def output_text(response: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """A Responses API ``response`` object's answer: the text of its message items (output_text
    parts) and its ``function_call`` items as chat tool calls."""
    texts, calls = [], []
    for item in response.get("output") or []:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            texts += [p.get("text", "") for p in item.get("content") or []
                      if isinstance(p, dict) and p.get("type") == "output_text"]
        elif item.get("type") == "function_call":
            calls.append({"id": item.get("call_id"), "type": "function",
                          "function": {"name": item.get("name"), "arguments": item.get("arguments")}})
    return "".join(texts), calls
