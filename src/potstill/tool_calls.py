"""Tool calling as a task (``task.type: tools``): the function tools a student learns to call, the
JSON Schema of one call as the student writes it, and the teacher's calls in that form.

A call is written ``{"name": NAME, "arguments": {...}}``: the text the student is trained on and
generates, which serve turns back into OpenAI ``tool_calls``. With ``task.parallel_tool_calls`` an
answer is a list of one or more such calls. With ``task.tool_choice: auto`` an answer may instead be
text for the user, written ``{"content": TEXT}`` (an agent's reply once its tools have answered), and
a chat may hold earlier calls and their results, which the student reads as text (``as_text_turns``).
This module imports nothing of potstill's, so the config can derive ``task.json_schema`` from
``task.tools`` while it loads.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from typing import Any

# OpenAI's rule for a function's name.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_FUNCTION_KEYS = {"name", "description", "parameters", "strict"}


def tools_problem(tools: Any) -> str | None:
    """Why ``tools`` is not a list of OpenAI function tools with distinct names, or None."""
    if not isinstance(tools, list) or not tools:
        return "a tools task needs task.tools: a list of OpenAI function tools ({type: function, function: {name, parameters}})"
    import jsonschema

    names: set[str] = set()
    for i, t in enumerate(tools):
        where = f"task.tools[{i}]"
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
            return f"{where}: expected {{type: function, function: {{name, description, parameters}}}}"
        if set(t) - {"type", "function"}:
            return f"{where}: unknown key(s) {sorted(set(t) - {'type', 'function'})}"
        fn = t["function"]
        if set(fn) - _FUNCTION_KEYS:
            return f"{where}.function: unknown key(s) {sorted(set(fn) - _FUNCTION_KEYS)}"
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            return f"{where}.function.name: {name!r} is not a function name (letters, digits, _ and -, at most 64)"
        if name in names:
            return f"{where}.function.name: {name!r} is declared twice"
        names.add(name)
        params = fn.get("parameters")
        if params is not None:
            if not isinstance(params, dict) or params.get("type") != "object":
                return f"{where}.function.parameters: must be a JSON Schema of type object"
            try:
                jsonschema.validators.validator_for(params).check_schema(params)
            except jsonschema.SchemaError as e:
                return f"{where}.function.parameters: not a valid JSON Schema: {e.message}"
    return None


def tool_names(tools: list[dict[str, Any]] | None) -> list[str]:
    """The functions' names, in order."""
    return [t["function"]["name"] for t in tools or []]


# A reply in words instead of a call (``task.tool_choice: auto``): what the student writes then.
TEXT_ANSWER = {"type": "object", "properties": {"content": {"type": "string", "minLength": 1}},
               "required": ["content"], "additionalProperties": False}


def tools_schema(tools: list[dict[str, Any]], parallel: bool = False, text: bool = False) -> dict[str, Any]:
    """The JSON Schema of one call of one of ``tools``: ``{name, arguments}``, the arguments under
    that function's parameters (any object where it declares none); ``parallel``: of a list of one
    or more such calls; ``text``: or of a reply in words, ``{"content": TEXT}`` (``TEXT_ANSWER``)."""
    branches = [{"type": "object",
                 "properties": {"name": {"const": t["function"]["name"]},
                                "arguments": t["function"].get("parameters") or {"type": "object"}},
                 "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    one = branches[0] if len(branches) == 1 else {"anyOf": branches}
    calls = {"type": "array", "items": one, "minItems": 1} if parallel else one
    if not text:
        return calls
    return {"anyOf": [*(calls["anyOf"] if "anyOf" in calls else [calls]), TEXT_ANSWER]}


def call_text(tool_calls: list[dict[str, Any]], parallel: bool = False) -> str:
    """A teacher's ``tool_calls`` (OpenAI's form) as the text the student learns: each call as
    ``{name, arguments}`` (its arguments parsed; left as the string where they are not JSON, which
    the schema then refuses). ``parallel``: a list of them; else one call alone, and several as a
    list (which a one-call task's schema refuses)."""
    calls = []
    for c in tool_calls:
        fn = c.get("function") or {}
        args = fn.get("arguments")
        try:
            args = json.loads(args) if isinstance(args, str) else args
        except json.JSONDecodeError:
            pass
        calls.append({"name": fn.get("name"), "arguments": args})
    return json.dumps(calls[0] if len(calls) == 1 and not parallel else calls, ensure_ascii=False)


def text_of(parsed: Any) -> str | None:
    """The text of a parsed reply in words (``{"content": TEXT}``), or None for a call or anything else."""
    if isinstance(parsed, dict) and set(parsed) == {"content"} and isinstance(parsed["content"], str):
        return parsed["content"]
    return None


def calls_of(parsed: Any) -> list[dict[str, Any]]:
    """The calls of a parsed answer: one call ``{name, arguments}``, or each of a list of them
    (a parallel tools task's answer); none for a reply in words or anything else."""
    if isinstance(parsed, dict):
        return [] if text_of(parsed) is not None else [parsed]
    if isinstance(parsed, list) and all(isinstance(c, dict) for c in parsed):
        return parsed
    return []


def new_call_id() -> str:
    """A tool call's id as OpenAI makes them: ``call_`` and 24 hex digits, new for every call served."""
    return f"call_{uuid.uuid4().hex[:24]}"


def fresh_ids(calls: Sequence[dict[str, Any]], ids: dict[str, str]) -> list[dict[str, Any]]:
    """``calls`` (OpenAI's ``tool_calls``, or a stream's fragments of them) with each id a new one: a
    teacher's answer served again (from the ledger, or one call shared by identical requests) would
    otherwise give every client the same ids, and an agent's tool results in one thread could no
    longer tell its calls apart. ``ids`` (old id: new id) keeps a stream's fragments and its whole
    answer the same; a fragment without an id (an arguments piece) is left as it is."""
    return [{**c, "id": ids.setdefault(c["id"], new_call_id())} if c.get("id") else c for c in calls]


def as_tool_calls(parsed: Any) -> list[dict[str, Any]]:
    """A student's parsed answer (one call ``{name, arguments}``, or a list of them) as OpenAI's
    ``tool_calls`` (arguments a JSON string)."""
    return [{"id": new_call_id(), "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
            for c in calls_of(parsed)]


def shown_tools(instruction: str, tools: list[dict[str, Any]], parallel: bool = False, text: bool = False) -> str:
    """``instruction`` with the functions and the form of an answer spelt out: how a model that has
    not learnt the tools (the pilot's untrained student) is asked to call them."""
    form = '[{"name": ..., "arguments": {...}}, ...] of the calls' if parallel else '{"name": ..., "arguments": {...}} of the call'
    words = ', or {"content": ...} with your reply where no call is needed' if text else ""
    return ((instruction.strip() + "\n\n") if instruction.strip() else "") + \
        f"Answer with only the JSON {form} to make{words}, to these functions:\n" + \
        json.dumps([t["function"] for t in tools], ensure_ascii=False)


def has_tool_turns(messages: list[dict[str, Any]] | None) -> bool:
    """Whether a chat holds earlier tool calls or their results."""
    return any(m.get("role") == "tool" or m.get("tool_calls") for m in messages or ())


def student_turns(messages: list[dict[str, Any]], whole: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The chat the student reads, of a client's ``messages`` (role and text) and the same chat
    ``whole`` (with its tool fields, as the teacher gets it; None where it holds nothing more): the
    whole chat where it holds tool turns, which the student reads as text (``as_text_turns``), else
    the role-and-text one. Serve answers, tokenises and counts tokens of this one chat."""
    return whole if whole is not None and has_tool_turns(whole) else messages


def call_names(messages: list[dict[str, Any]]) -> dict[str, str | None]:
    """The function each tool call of a chat named, by the call's id (what a tool message answers)."""
    return {str(c.get("id")): (c.get("function") or {}).get("name") for m in messages for c in m.get("tool_calls") or []}


def unanswered_result(messages: list[dict[str, Any]]) -> int | None:
    """The index of the first tool message that answers no call of the assistant turn just before
    it (by its ``tool_call_id``; the turn's other results may come between), else None. OpenAI's
    and Anthropic's APIs refuse such a chat with a 400: a result answers a call the model made."""
    calls: set[Any] = set()
    for i, m in enumerate(messages):
        if m.get("role") == "tool":
            if m.get("tool_call_id") not in calls:
                return i
        elif m.get("role") == "assistant":
            calls = {c.get("id") for c in m.get("tool_calls") or [] if isinstance(c, dict)}
        else:
            calls = set()
    return None


def as_text_turns(messages: list[dict[str, Any]], parallel: bool = False) -> list[dict[str, Any]]:
    """A chat's tool turns as the student reads them, in one form whatever the model's chat template
    makes of tools: an assistant's calls as the text it writes for them (``call_text``; ``parallel``:
    a list, as a parallel task's student writes even one call), and each run of tool results as one
    user turn, a result a line ``Result of NAME: TEXT`` (NAME the call's, found by its id), so a
    template that knows no ``tool`` role renders it, and one that refuses two user turns in a row
    (Gemma's) does after parallel calls; messages without tool fields stay as they are."""
    names = call_names(messages)
    out: list[dict[str, Any]] = []
    results = -1  # the index in ``out`` of the user turn collecting the current run of tool results
    for m in messages:
        if m.get("role") == "assistant" and m.get("tool_calls"):
            out.append({"role": "assistant", "content": call_text(m["tool_calls"], parallel)})
        elif m.get("role") == "tool":
            name = names.get(str(m.get("tool_call_id"))) or m.get("name") or "tool"
            line = f"Result of {name}: {_text(m.get('content'))}"
            if results == len(out) - 1 >= 0:
                out[results] = {"role": "user", "content": out[results]["content"] + "\n" + line}
            else:
                out.append({"role": "user", "content": line})
                results = len(out) - 1
            continue
        else:
            out.append(m)
        results = -1
    return out


def _text(content: Any) -> str:
    if isinstance(content, list):  # OpenAI's text parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def same_tools(asked: list[dict[str, Any]], declared: list[dict[str, Any]]) -> bool:
    """Whether a request's tools are the task's: the same names with the same parameters (their
    descriptions may differ; a student answers by what it learnt, not by reading them)."""
    def key(tools: list[dict[str, Any]]) -> dict[str, str]:
        return {t["function"]["name"]: json.dumps(t["function"].get("parameters") or {"type": "object"},
                                                  sort_keys=True) for t in tools}

    try:
        return key(asked) == key(declared)
    except (KeyError, TypeError):
        return False
